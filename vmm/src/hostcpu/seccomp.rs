//! The seccomp filters that keep guest code from ever making a host syscall.
//!
//! Compat-mode code can enter the host kernel with `INT 0x80`, `SYSENTER` or `SYSCALL`. The
//! guest trap filter turns every syscall that is not x86-64 or whose instruction pointer is
//! below 4 GiB (where all guest code lives) into SIGSYS, which reaches the monitor as an
//! [`HostExitKind::Syscall`](super::HostExitKind::Syscall) exit.

use seccompiler::sock_filter;

use super::HostCpuError;

// Classic BPF opcodes (linux/filter.h).
/// BPF_LD | BPF_W | BPF_ABS (the first two are zero).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JSET_K: u16 = 0x05 | 0x40;
const BPF_RET_K: u16 = 0x06;

// seccomp return actions (linux/seccomp.h).
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// x32 system calls carry this bit in the number; the monitor never makes them.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Offsets in `struct seccomp_data`: nr, arch, instruction_pointer (u64, little-endian).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_IP_HIGH: u32 = 12;

/// The most syscall numbers [`install_monitor_allowlist`] accepts.
pub const MAX_ALLOWLIST: usize = 248;

const fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The prefix both filters share: trap foreign arches, x32 numbers and any syscall from an
/// instruction pointer below 4 GiB. Leaves the syscall number in the accumulator; falls
/// through only for 64-bit syscalls made from monitor code. `trap_at` is the index of the
/// `RET TRAP` instruction relative to the end of this prefix.
fn guest_prefix(trap_at: u8) -> Vec<sock_filter> {
    // Jump offsets count from the instruction after the jump; prefix length is 6.
    vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 0, 4 + trap_at),
        stmt(BPF_LD_W_ABS, OFF_IP_HIGH),
        jump(BPF_JEQ_K, 0, 2 + trap_at, 0),
        stmt(BPF_LD_W_ABS, OFF_NR),
        jump(BPF_JSET_K, X32_SYSCALL_BIT, trap_at, 0),
    ]
}

/// The guest trap filter: TRAP for guest syscalls, ALLOW for the monitor's.
pub fn guest_syscall_trap_program() -> Vec<sock_filter> {
    let mut p = guest_prefix(1);
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p.push(stmt(BPF_RET_K, SECCOMP_RET_TRAP));
    p
}

/// The monitor allowlist: guest syscalls TRAP as above, listed 64-bit syscalls are allowed,
/// every other syscall kills the process.
pub fn monitor_allowlist_program(allowed: &[u32]) -> Result<Vec<sock_filter>, HostCpuError> {
    // One JEQ per entry, then KILL, ALLOW, TRAP; a BPF jump reaches at most 255 forward and the
    // prefix jumps over all of them plus four.
    if allowed.len() > MAX_ALLOWLIST {
        return Err(HostCpuError::AllowlistTooLong { len: allowed.len() });
    }
    let n = u8::try_from(allowed.len())
        .map_err(|_| HostCpuError::AllowlistTooLong { len: allowed.len() })?;
    let mut p = guest_prefix(n + 2);
    for (i, &nr) in (0u8..).zip(allowed) {
        // From entry i, ALLOW is at distance (n - 1 - i) + 1 (past the remaining JEQs and KILL).
        p.push(jump(BPF_JEQ_K, nr, n - i, 0));
    }
    p.push(stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS));
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p.push(stmt(BPF_RET_K, SECCOMP_RET_TRAP));
    Ok(p)
}

/// Installs the guest trap filter on the calling thread (and threads it creates later).
///
/// Call it on the vCPU thread before the first guest instruction runs; it can never be
/// lifted. It also sets `no_new_privs`.
///
/// # Errors
/// [`HostCpuError::Seccomp`] if the kernel refuses the filter.
pub fn install_guest_syscall_trap() -> Result<(), HostCpuError> {
    seccompiler::apply_filter(&guest_syscall_trap_program()).map_err(HostCpuError::Seccomp)
}

/// Installs the monitor allowlist on the calling thread: every 64-bit syscall made from
/// monitor code whose number is not in `allowed` kills the whole process. Guest syscalls
/// still trap as with [`install_guest_syscall_trap`].
///
/// The list must include everything the monitor, its libraries and the signal return path
/// use on this thread (at least `rt_sigreturn`, `rt_sigprocmask`, `tgkill`, the memory
/// calls behind [`LinearSpace`](crate::memory::LinearSpace), `modify_ldt`, `futex`,
/// `write`, `exit_group`). Meant for the production run loop; test harnesses make
/// syscalls nobody lists.
///
/// # Errors
/// [`HostCpuError::AllowlistTooLong`] past [`MAX_ALLOWLIST`] entries, [`HostCpuError::Seccomp`] if the
/// kernel refuses.
pub fn install_monitor_allowlist(allowed: &[u32]) -> Result<(), HostCpuError> {
    let prog = monitor_allowlist_program(allowed)?;
    seccompiler::apply_filter(&prog).map_err(HostCpuError::Seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the opcodes the filters use.
    fn run(prog: &[sock_filter], nr: u32, arch: u32, ip: u64) -> u32 {
        let mut data = [0u8; 16];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[8..16].copy_from_slice(&ip.to_le_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_JEQ_K | BPF_JSET_K => {
                    let hit = if i.code == BPF_JEQ_K {
                        acc == i.k
                    } else {
                        acc & i.k != 0
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
                BPF_RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    const I386: u32 = 3 | 0x4000_0000;
    const HIGH: u64 = 0x7f00_0000_1000;

    #[test]
    fn guest_filter_traps_guest_syscalls_only() {
        let p = guest_syscall_trap_program();
        assert_eq!(run(&p, 1, I386, 0x10_0000), SECCOMP_RET_TRAP);
        assert_eq!(run(&p, 1, I386, HIGH), SECCOMP_RET_TRAP);
        assert_eq!(run(&p, 1, AUDIT_ARCH_X86_64, 0x10_0000), SECCOMP_RET_TRAP);
        assert_eq!(run(&p, 1, AUDIT_ARCH_X86_64, 0xffff_ffff), SECCOMP_RET_TRAP);
        assert_eq!(
            run(&p, 1 | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64, HIGH),
            SECCOMP_RET_TRAP
        );
        assert_eq!(run(&p, 1, AUDIT_ARCH_X86_64, 1 << 32), SECCOMP_RET_ALLOW);
        assert_eq!(run(&p, 231, AUDIT_ARCH_X86_64, HIGH), SECCOMP_RET_ALLOW);
    }

    #[test]
    fn allowlist_allows_listed_kills_rest_traps_guest() {
        let p = monitor_allowlist_program(&[0, 1, 15]).unwrap();
        for nr in [0, 1, 15] {
            assert_eq!(run(&p, nr, AUDIT_ARCH_X86_64, HIGH), SECCOMP_RET_ALLOW);
        }
        assert_eq!(
            run(&p, 2, AUDIT_ARCH_X86_64, HIGH),
            SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(run(&p, 1, I386, HIGH), SECCOMP_RET_TRAP);
        assert_eq!(run(&p, 1, AUDIT_ARCH_X86_64, 0x1000), SECCOMP_RET_TRAP);
        let empty = monitor_allowlist_program(&[]).unwrap();
        assert_eq!(
            run(&empty, 0, AUDIT_ARCH_X86_64, HIGH),
            SECCOMP_RET_KILL_PROCESS
        );
        assert!(monitor_allowlist_program(&[0; MAX_ALLOWLIST + 1]).is_err());
    }
}
