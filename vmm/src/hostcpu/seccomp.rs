//! The seccomp filters: the guest trap filter that keeps guest code from ever making a host
//! syscall, and the monitor allowlist (the wall) that holds monitor code to the syscalls it
//! needs once the guest runs.
//!
//! Compat-mode code can enter the host kernel with `INT 0x80`, `SYSENTER` or `SYSCALL`. Both
//! filters turn every syscall that is not x86-64 or whose instruction pointer is below
//! 4 GiB (where all guest code lives) into SIGSYS, which reaches the monitor as an
//! [`HostExitKind::Syscall`](super::HostExitKind::Syscall) exit.
//!
//! The allowlist then lets listed 64-bit syscalls from monitor code through (some only with
//! given values of one argument) and traps every other one as well, with
//! [`REFUSED_DATA`] in the SIGSYS's `si_errno` so the handler tells it apart from a
//! guest's: it says which syscall was refused and where, and stops the VM (see
//! [`refused_syscall`]).

use std::sync::atomic::{AtomicU64, Ordering};

use seccompiler::sock_filter;

pub use super::syscall_names::{syscall_name, syscall_number};
use super::HostCpuError;

// Classic BPF opcodes (linux/filter.h).
/// BPF_LD | BPF_W | BPF_ABS (the first two are zero).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JSET_K: u16 = 0x05 | 0x40;
const BPF_RET_K: u16 = 0x06;

// seccomp return actions (linux/seccomp.h).
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

/// SECCOMP_RET_DATA of the SIGSYS for a monitor syscall the allowlist refuses; the kernel
/// hands it to the handler in `si_errno`. Guest syscalls trap with 0.
pub(crate) const REFUSED_DATA: u16 = 1;

/// The process exit status when the wall refused a monitor syscall (even, so never taken
/// for a guest's debug-exit status).
pub const SYSCALL_REFUSED_EXIT_STATUS: i32 = 10;

/// The x86-64 ABI in `seccomp_data.arch` and a SIGSYS's `si_arch`.
pub(crate) const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// x32 system calls carry this bit in the number; the monitor never makes them.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Offsets in `struct seccomp_data`: nr, arch, instruction_pointer (u64), args[6] (u64 each),
// little-endian.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_IP_HIGH: u32 = 12;
const OFF_ARGS: u32 = 16;

/// How many arguments a syscall has.
const SYSCALL_ARGS: u8 = 6;

/// One syscall the monitor allowlist lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// The 64-bit syscall number.
    pub nr: u32,
    /// When set, only with these values of one argument.
    pub only: Option<ArgValues>,
}

/// Values one syscall argument may take. Only the argument's low 32 bits are compared:
/// enough for the `int` and `unsigned int` arguments this is meant for (a `prctl` option,
/// an `ioctl` request), whose upper bits the kernel ignores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgValues {
    /// Which argument (0 to 5).
    pub index: u8,
    /// The values allowed.
    pub values: Vec<u32>,
}

impl AllowRule {
    /// `nr` with any arguments.
    pub fn any(nr: u32) -> Self {
        Self { nr, only: None }
    }

    /// `nr` only when argument `index` is one of `values`.
    pub fn only(nr: u32, index: u8, values: &[u32]) -> Self {
        Self {
            nr,
            only: Some(ArgValues {
                index,
                values: values.to_vec(),
            }),
        }
    }
}

/// A place in a program being assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The next instruction.
    Next,
    /// A label.
    At(Label),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// `RET TRAP`, data 0: a guest syscall.
    Guest,
    /// `RET ALLOW`.
    Allow,
    /// `RET TRAP`, data [`REFUSED_DATA`]: a monitor syscall not on the list.
    Refused,
    /// The argument check of rule `i`.
    Check(usize),
}

/// A classic-BPF program with symbolic forward jumps.
#[derive(Debug, Default)]
struct Assembler {
    code: Vec<(sock_filter, Target, Target)>,
    labels: Vec<(Label, usize)>,
}

impl Assembler {
    fn stmt(&mut self, code: u16, k: u32) {
        self.code
            .push((insn(code, 0, 0, k), Target::Next, Target::Next));
    }

    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.code.push((insn(code, 0, 0, k), jt, jf));
    }

    fn label(&mut self, label: Label) {
        self.labels.push((label, self.code.len()));
    }

    /// The program with every jump resolved; `None` when a jump is backwards (a bug) or
    /// farther than the 255 instructions a conditional jump reaches.
    fn finish(self) -> Option<Vec<sock_filter>> {
        let at = |t: Target, from: usize| -> Option<u8> {
            match t {
                Target::Next => Some(0),
                Target::At(label) => {
                    let (_, to) = self.labels.iter().find(|(l, _)| *l == label)?;
                    u8::try_from(to.checked_sub(from + 1)?).ok()
                }
            }
        };
        self.code
            .iter()
            .enumerate()
            .map(|(i, (insn, jt, jf))| {
                Some(sock_filter {
                    code: insn.code,
                    jt: at(*jt, i)?,
                    jf: at(*jf, i)?,
                    k: insn.k,
                })
            })
            .collect()
    }
}

/// The prefix both filters share: guest syscalls (foreign arch, x32 numbers, instruction
/// pointer below 4 GiB) go to [`Label::Guest`]. Leaves the syscall number in the
/// accumulator.
fn guest_prefix(a: &mut Assembler) {
    let guest = Target::At(Label::Guest);
    a.stmt(BPF_LD_W_ABS, OFF_ARCH);
    a.jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, Target::Next, guest);
    a.stmt(BPF_LD_W_ABS, OFF_IP_HIGH);
    a.jump(BPF_JEQ_K, 0, guest, Target::Next);
    a.stmt(BPF_LD_W_ABS, OFF_NR);
    a.jump(BPF_JSET_K, X32_SYSCALL_BIT, guest, Target::Next);
}

/// One classic-BPF instruction.
const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The guest trap filter, written out rather than assembled so that building it cannot
/// fail: [`guest_prefix`] (each jump to `Guest` counts the instructions it skips), then
/// `RET ALLOW` and, at `Guest`, `RET TRAP`. A test checks it against the assembled form.
const GUEST_TRAP_PROGRAM: [sock_filter; 8] = [
    insn(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
    insn(BPF_JEQ_K, 0, 5, AUDIT_ARCH_X86_64),
    insn(BPF_LD_W_ABS, 0, 0, OFF_IP_HIGH),
    insn(BPF_JEQ_K, 3, 0, 0),
    insn(BPF_LD_W_ABS, 0, 0, OFF_NR),
    insn(BPF_JSET_K, 1, 0, X32_SYSCALL_BIT),
    insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    insn(BPF_RET_K, 0, 0, SECCOMP_RET_TRAP),
];

/// The guest trap filter: TRAP for guest syscalls, ALLOW for the monitor's.
pub fn guest_syscall_trap_program() -> Vec<sock_filter> {
    GUEST_TRAP_PROGRAM.to_vec()
}

/// The monitor allowlist: guest syscalls TRAP as above; monitor syscalls that a rule
/// allows are allowed, every other one traps with [`REFUSED_DATA`].
///
/// # Errors
/// [`HostCpuError::AllowlistTooLong`] when the rules need jumps longer than classic BPF
/// has (about 240 syscalls), or a rule names an argument past the sixth.
pub fn monitor_allowlist_program(rules: &[AllowRule]) -> Result<Vec<sock_filter>, HostCpuError> {
    let too_long = HostCpuError::AllowlistTooLong { len: rules.len() };
    let mut a = Assembler::default();
    guest_prefix(&mut a);
    let allow = Target::At(Label::Allow);
    for (i, rule) in rules.iter().enumerate() {
        let to = if rule.only.is_some() {
            Target::At(Label::Check(i))
        } else {
            allow
        };
        a.jump(BPF_JEQ_K, rule.nr, to, Target::Next);
    }
    a.label(Label::Refused);
    a.stmt(BPF_RET_K, SECCOMP_RET_TRAP | u32::from(REFUSED_DATA));
    for (i, rule) in rules.iter().enumerate() {
        let Some(only) = &rule.only else { continue };
        if only.index >= SYSCALL_ARGS {
            return Err(too_long);
        }
        a.label(Label::Check(i));
        a.stmt(BPF_LD_W_ABS, OFF_ARGS + 8 * u32::from(only.index));
        for &v in &only.values {
            a.jump(BPF_JEQ_K, v, allow, Target::Next);
        }
        a.stmt(BPF_RET_K, SECCOMP_RET_TRAP | u32::from(REFUSED_DATA));
    }
    a.label(Label::Allow);
    a.stmt(BPF_RET_K, SECCOMP_RET_ALLOW);
    a.label(Label::Guest);
    a.stmt(BPF_RET_K, SECCOMP_RET_TRAP);
    a.finish().ok_or(too_long)
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

/// Holds every thread of the process to `rules` for good (guest syscalls still trap as
/// with [`install_guest_syscall_trap`]), after installing the exit signal handler that
/// reports a refused syscall.
///
/// A refused syscall does not run. The handler writes one line to stderr naming it
/// (number, name, instruction pointer) and records it ([`refused_syscall`]); on a vCPU
/// thread the syscall then fails with EPERM and the run loop stops the VM, on any other
/// thread the process exits with [`SYSCALL_REFUSED_EXIT_STATUS`]. The rules must
/// therefore admit what the handlers themselves use: `write`, `rt_sigreturn`,
/// `exit_group`, and for monitor faults `rt_sigaction`, `getpid`, `gettid`, `tgkill`
/// (and `arch_prctl(ARCH_SET_CPUID)` where CPUID faults).
///
/// # Errors
/// [`HostCpuError::AllowlistTooLong`] as for [`monitor_allowlist_program`];
/// [`HostCpuError::Signals`] when the handler cannot be installed;
/// [`HostCpuError::Seccomp`] if the kernel refuses the filter.
pub fn install_monitor_allowlist(rules: &[AllowRule]) -> Result<(), HostCpuError> {
    let prog = monitor_allowlist_program(rules)?;
    super::signals::install_handlers().map_err(HostCpuError::Signals)?;
    seccompiler::apply_filter_all_threads(&prog).map_err(HostCpuError::Seccomp)
}

/// A monitor syscall the wall refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedSyscall {
    /// The syscall number.
    pub nr: u32,
    /// The address of the instruction after the `syscall` that made it.
    pub rip: u64,
}

impl RefusedSyscall {
    /// The syscall's name (`"?"` for a number the table does not know).
    pub fn name(&self) -> &'static str {
        syscall_name(self.nr).unwrap_or("?")
    }
}

impl std::fmt::Display for RefusedSyscall {
    /// The line the SIGSYS handler writes, without the `vmm: ` prefix and the newline.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seccomp wall: refused monitor syscall {} ({}) at 0x{:016x}",
            self.nr,
            self.name(),
            self.rip
        )
    }
}

/// The first refused syscall, packed so one atomic holds it: the number plus one in the
/// low 16 bits (0: none), the address above (user addresses have 47 bits). Written by the
/// SIGSYS handler, so a plain atomic.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Records a refused syscall; the first one wins. Async-signal-safe.
pub(crate) fn record_refused(nr: u32, rip: u64) {
    let nr = u64::from(nr).min(0xfffe) + 1;
    let _ = REFUSED.compare_exchange(0, (rip << 16) | nr, Ordering::AcqRel, Ordering::Acquire);
}

/// The monitor syscall the wall refused in this process, if it refused one. Once set it
/// stays set: every run loop of the process stops.
pub fn refused_syscall() -> Option<RefusedSyscall> {
    let v = REFUSED.load(Ordering::Acquire);
    let nr = u32::try_from((v & 0xffff).checked_sub(1)?).ok()?;
    Some(RefusedSyscall { nr, rip: v >> 16 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the opcodes the filters use.
    fn run(prog: &[sock_filter], nr: u32, arch: u32, ip: u64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[8..16].copy_from_slice(&ip.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
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
    const NO_ARGS: [u64; 6] = [0; 6];
    const REFUSED: u32 = SECCOMP_RET_TRAP | REFUSED_DATA as u32;

    #[test]
    fn guest_filter_traps_guest_syscalls_only() {
        let p = guest_syscall_trap_program();
        let r = |nr, arch, ip| run(&p, nr, arch, ip, NO_ARGS);
        assert_eq!(r(1, I386, 0x10_0000), SECCOMP_RET_TRAP);
        assert_eq!(r(1, I386, HIGH), SECCOMP_RET_TRAP);
        assert_eq!(r(1, AUDIT_ARCH_X86_64, 0x10_0000), SECCOMP_RET_TRAP);
        assert_eq!(r(1, AUDIT_ARCH_X86_64, 0xffff_ffff), SECCOMP_RET_TRAP);
        assert_eq!(
            r(1 | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64, HIGH),
            SECCOMP_RET_TRAP
        );
        assert_eq!(r(1, AUDIT_ARCH_X86_64, 1 << 32), SECCOMP_RET_ALLOW);
        assert_eq!(r(231, AUDIT_ARCH_X86_64, HIGH), SECCOMP_RET_ALLOW);
    }

    #[test]
    fn written_guest_filter_is_the_assembled_one() {
        let mut a = Assembler::default();
        guest_prefix(&mut a);
        a.stmt(BPF_RET_K, SECCOMP_RET_ALLOW);
        a.label(Label::Guest);
        a.stmt(BPF_RET_K, SECCOMP_RET_TRAP);
        assert_eq!(a.finish().unwrap(), guest_syscall_trap_program());
    }

    #[test]
    fn allowlist_allows_listed_refuses_rest_traps_guest() {
        let rules = [AllowRule::any(0), AllowRule::any(1), AllowRule::any(15)];
        let p = monitor_allowlist_program(&rules).unwrap();
        let r = |nr, arch, ip| run(&p, nr, arch, ip, NO_ARGS);
        for nr in [0, 1, 15] {
            assert_eq!(r(nr, AUDIT_ARCH_X86_64, HIGH), SECCOMP_RET_ALLOW);
        }
        assert_eq!(r(2, AUDIT_ARCH_X86_64, HIGH), REFUSED);
        // Guest syscalls trap with data 0, listed or not.
        assert_eq!(r(1, I386, HIGH), SECCOMP_RET_TRAP);
        assert_eq!(r(1, AUDIT_ARCH_X86_64, 0x1000), SECCOMP_RET_TRAP);
        assert_eq!(r(2, AUDIT_ARCH_X86_64, 0x1000), SECCOMP_RET_TRAP);
        let empty = monitor_allowlist_program(&[]).unwrap();
        assert_eq!(run(&empty, 0, AUDIT_ARCH_X86_64, HIGH, NO_ARGS), REFUSED);
    }

    #[test]
    fn argument_rules_compare_the_low_half_of_one_argument() {
        let rules = [
            AllowRule::any(1),
            AllowRule::only(16, 1, &[0x5401, 0x5402]),
            AllowRule::only(157, 0, &[15]),
            AllowRule::any(60),
        ];
        let p = monitor_allowlist_program(&rules).unwrap();
        let r = |nr, args| run(&p, nr, AUDIT_ARCH_X86_64, HIGH, args);
        assert_eq!(r(16, [0, 0x5401, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
        assert_eq!(r(16, [0, 0x5402, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
        assert_eq!(r(16, [0, 0x1_0000_5402, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
        assert_eq!(r(16, [0x5401, 0x5403, 0, 0, 0, 0]), REFUSED);
        assert_eq!(r(157, [15, 0, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
        assert_eq!(r(157, [22, 0, 0, 0, 0, 0]), REFUSED);
        // Rules after an argument rule still match.
        assert_eq!(r(60, NO_ARGS), SECCOMP_RET_ALLOW);
        assert_eq!(r(61, NO_ARGS), REFUSED);
        assert!(monitor_allowlist_program(&[AllowRule::only(16, 6, &[1])]).is_err());
    }

    #[test]
    fn lists_too_long_for_bpf_jumps_are_refused() {
        let fits: Vec<AllowRule> = (0..200).map(AllowRule::any).collect();
        assert!(monitor_allowlist_program(&fits).is_ok());
        let long: Vec<AllowRule> = (0..300).map(AllowRule::any).collect();
        assert!(matches!(
            monitor_allowlist_program(&long),
            Err(HostCpuError::AllowlistTooLong { len: 300 })
        ));
    }

    #[test]
    fn refusals_read_as_the_handler_writes_them() {
        let r = RefusedSyscall {
            nr: 257,
            rip: 0x7f12_3456_789a,
        };
        assert_eq!(
            r.to_string(),
            "seccomp wall: refused monitor syscall 257 (openat) at 0x00007f123456789a"
        );
    }
}
