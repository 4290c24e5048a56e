//! The exit signal handler and the per-thread alternate signal stack.
//!
//! Every exit signal runs `vmm_hostcpu_signal_entry` on the vCPU thread's altstack with all
//! signals masked. Its assembly prologue finds the thread's [`CpuBlock`] from RSP (the
//! altstack is aligned to its size and registered in [`VCPU_TABLE`]), restores the host FS
//! base (the guest may have loaded FS; Rust TLS and errno live behind FS) and records the
//! live DS/ES/FS/GS selectors, which the 64-bit sigcontext does not carry.
//! Only then does Rust run.

use std::ffi::c_void;
use std::io;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::entry::{entry_window, landing_pad, CpuBlock, Landing, OFF_HOST_FSBASE, OFF_SEL_DS};
use super::regs::{greg, low16, low32, low8, reg64, reg_index};
use super::seccomp::{
    record_refused, syscall_name, AUDIT_ARCH_X86_64, REFUSED_DATA, SYSCALL_REFUSED_EXIT_STATUS,
};
use super::timer::{kick_signal, timer_signal};
use super::{cpuid, GATE_TRAMPOLINE_LEN, HOST_CS64, HOST_SS64, SYS_SECCOMP};

/// Where the gate trampoline lies in the monitor window (0: none).
pub(crate) static GATE_TRAMPOLINE: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Size and alignment of a vCPU thread's altstack region (its lowest page is a guard; the
/// page above the region is another).
pub(crate) const ALTSTACK_SIZE: usize = 64 * 1024;
/// `and rsp` with this aligns down to an altstack boundary (a sign-extended imm32).
const ALTSTACK_ALIGN_MASK: i32 = -(1 << 16);
const _: () = assert!(ALTSTACK_SIZE == 1 << 16);
const GUARD_SIZE: usize = 4096;
/// How many vCPU threads can exist at once.
pub(crate) const MAX_VCPUS: usize = 16;

/// One registered vCPU thread: the base of its altstack region and its block.
#[repr(C)]
pub(crate) struct Slot {
    altstack: AtomicUsize,
    block: AtomicPtr<CpuBlock>,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    altstack: AtomicUsize::new(0),
    block: AtomicPtr::new(std::ptr::null_mut()),
};

/// Read by the handler prologue without locks or TLS.
pub(crate) static VCPU_TABLE: [Slot; MAX_VCPUS] = [EMPTY_SLOT; MAX_VCPUS];
static TABLE_LOCK: Mutex<()> = Mutex::new(());

/// Registers a vCPU thread; returns its slot index, or `None` when the table is full.
pub(crate) fn register(altstack: usize, block: *mut CpuBlock) -> Option<usize> {
    let _g = TABLE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (i, slot) = VCPU_TABLE
        .iter()
        .enumerate()
        .find(|(_, s)| s.altstack.load(Ordering::Acquire) == 0)?;
    // Block first: the prologue trusts the block of a slot whose base matches.
    slot.block.store(block, Ordering::Release);
    slot.altstack.store(altstack, Ordering::Release);
    Some(i)
}

/// Forgets slot `i` (the thread's altstack must already be disabled).
// reason: `i` is only ever an index `register` returned, found by searching this table.
// Skipping an index out of range would leave the real slot naming a freed block, which the
// prologue would trust as soon as a new altstack were mapped at the same base: a panic is
// the safer end for that monitor bug.
#[allow(clippy::indexing_slicing)]
pub(crate) fn unregister(i: usize) {
    let _g = TABLE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let slot = &VCPU_TABLE[i];
    slot.altstack.store(0, Ordering::Release);
    slot.block.store(std::ptr::null_mut(), Ordering::Release);
}

std::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl vmm_hostcpu_signal_entry",
    ".type vmm_hostcpu_signal_entry,@function",
    // rdi = signo, rsi = siginfo, rdx = ucontext; RSP = 8 mod 16.
    "vmm_hostcpu_signal_entry:",
    // The kernel delivers the signal with the interrupted RFLAGS.AC, and the host runs
    // with CR0.AM set: a guest at CPL 3 with AC set would make every misaligned access
    // of the monitor raise #AC. Clear it before any compiled code runs (CLAC is
    // privileged); sigreturn gives the guest its own AC back.
    "pushfq",
    "and dword ptr [rsp], {not_ac}",
    "popfq",
    "mov rax, rsp",
    "and rax, {align_mask}",
    "lea r10, [rip + {table}]",
    "mov ecx, {slots}",
    "2:",
    "cmp [r10], rax",
    "je 3f",
    "add r10, {slot_size}",
    "dec ecx",
    "jnz 2b",
    // Not a vCPU altstack: this thread never ran guest code, its FS is its own.
    "sub rsp, 8",
    "call {foreign}",
    "add rsp, 8",
    "ret",
    "3:",
    "mov rcx, [r10 + 8]",
    // Keep the interrupted FS base: a signal that only marks work pending must return to
    // code that may already run with the guest's (the entry sequence). GS is never used
    // by the monitor and stays as the guest left it.
    "rdfsbase r8",
    "push r8",
    "push rcx",
    "sub rsp, 8",
    "mov rax, [rcx + {host_fsbase}]",
    "wrfsbase rax",
    "mov word ptr [rcx + {sel}], ds",
    "mov word ptr [rcx + {sel} + 2], es",
    "mov word ptr [rcx + {sel} + 4], fs",
    "mov word ptr [rcx + {sel} + 6], gs",
    "call {vcpu}",
    "add rsp, 8",
    "pop rcx",
    "pop r8",
    "wrfsbase r8",
    "ret",
    ".size vmm_hostcpu_signal_entry, . - vmm_hostcpu_signal_entry",
    align_mask = const ALTSTACK_ALIGN_MASK,
    not_ac = const !(1i32 << 18),
    table = sym VCPU_TABLE,
    slots = const MAX_VCPUS,
    slot_size = const std::mem::size_of::<Slot>(),
    host_fsbase = const OFF_HOST_FSBASE,
    sel = const OFF_SEL_DS,
    foreign = sym on_foreign_signal,
    vcpu = sym on_vcpu_signal,
);

extern "C" {
    fn vmm_hostcpu_signal_entry(signo: libc::c_int, info: *mut libc::siginfo_t, uc: *mut c_void);
}

/// The signals that end a guest run.
pub(crate) fn exit_signals() -> [libc::c_int; 8] {
    [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGTRAP,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGSYS,
        timer_signal(),
        kick_signal(),
    ]
}

/// Installs the exit handler for every exit signal (process-wide; idempotent).
///
/// No SA_RESTART: a timer or kick must interrupt a monitor blocked in a syscall (a guest
/// HLT waits for the next event that way).
pub(crate) fn install_handlers() -> io::Result<()> {
    for sig in exit_signals() {
        // SAFETY: sigaction is plain data; zero is a valid start. The handler is the
        // assembly entry above, which follows the SA_SIGINFO calling convention.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = vmm_hostcpu_signal_entry as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: sa_mask is a field of the live local.
        unsafe { libc::sigfillset(&mut sa.sa_mask) };
        // SAFETY: `sa` is a valid sigaction; the old action is not needed.
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes sure the calling thread can receive the exit signals.
pub(crate) fn unblock_exit_signals() -> io::Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live local for all three calls.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in exit_signals() {
            libc::sigaddset(&mut set, sig);
        }
    }
    // SAFETY: `set` is initialised; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// An altstack region aligned to its size, between PROT_NONE guard pages: its own lowest
/// page, and the page above it. A handler that overruns the stack faults instead of
/// writing over whatever the host placed next to it.
#[derive(Debug)]
pub(crate) struct AltStack {
    base: usize,
}

impl AltStack {
    /// Maps the region and makes it the calling thread's signal stack.
    pub(crate) fn new() -> io::Result<Self> {
        let base = map_aligned_region()?;
        let stack = Self { base };
        let ss = libc::stack_t {
            ss_sp: (base + GUARD_SIZE) as *mut c_void,
            ss_flags: 0,
            ss_size: ALTSTACK_SIZE - GUARD_SIZE,
        };
        // SAFETY: `ss` describes memory this value owns for its whole life; Drop disables
        // the altstack before unmapping it.
        if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The aligned base the handler prologue compares against.
    pub(crate) fn base(&self) -> usize {
        self.base
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let off = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disabling the calling thread's altstack (HostCpu is !Send, so this is the
        // thread that installed it); then the region is unused and can be unmapped.
        unsafe {
            libc::sigaltstack(&off, std::ptr::null_mut());
            libc::munmap(self.base as *mut c_void, ALTSTACK_SIZE + GUARD_SIZE);
        }
    }
}

/// Maps an [`ALTSTACK_SIZE`]-aligned region of that size plus the guard page above it,
/// and makes both guard pages PROT_NONE.
fn map_aligned_region() -> io::Result<usize> {
    let len = 2 * ALTSTACK_SIZE + GUARD_SIZE;
    // SAFETY: a fresh anonymous mapping chosen by the kernel.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = p as usize;
    let base = (start + ALTSTACK_SIZE - 1) & !(ALTSTACK_SIZE - 1);
    let tail = base + ALTSTACK_SIZE + GUARD_SIZE;
    // SAFETY: the head and tail trimmed here are parts of the mapping just made (`base` is at
    // most ALTSTACK_SIZE - 1 past `start`, so `tail` lies inside it); both guard pages lie
    // inside the kept region.
    let guarded = unsafe {
        if base > start {
            libc::munmap(p, base - start);
        }
        if start + len > tail {
            libc::munmap(tail as *mut c_void, start + len - tail);
        }
        libc::mprotect(base as *mut c_void, GUARD_SIZE, libc::PROT_NONE) == 0
            && libc::mprotect(
                (base + ALTSTACK_SIZE) as *mut c_void,
                GUARD_SIZE,
                libc::PROT_NONE,
            ) == 0
    };
    if !guarded {
        let e = io::Error::last_os_error();
        // SAFETY: the kept region, referenced by nothing yet.
        unsafe { libc::munmap(base as *mut c_void, ALTSTACK_SIZE + GUARD_SIZE) };
        return Err(e);
    }
    Ok(base)
}

// Fields of the kernel's siginfo_t on x86-64.
const SI_CODE_OFFSET: usize = 8;
const SI_ADDR_OFFSET: usize = 16;
const SI_SYSCALL_OFFSET: usize = 24;

/// # Safety
/// `info` points to a kernel-provided siginfo_t (128 bytes).
unsafe fn siginfo_i32(info: *const libc::siginfo_t, off: usize) -> i32 {
    // SAFETY: the offset lies within the 128-byte siginfo the kernel wrote.
    unsafe { info.cast::<u8>().add(off).cast::<i32>().read_unaligned() }
}

/// # Safety
/// As [`siginfo_i32`].
unsafe fn siginfo_u64(info: *const libc::siginfo_t, off: usize) -> u64 {
    // SAFETY: the offset lies within the 128-byte siginfo the kernel wrote.
    unsafe { info.cast::<u8>().add(off).cast::<u64>().read_unaligned() }
}

fn is_async(signo: libc::c_int) -> bool {
    signo == timer_signal() || signo == kick_signal()
}

fn is_fault_signal(signo: libc::c_int) -> bool {
    matches!(
        signo,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
    )
}

/// Where the handler's registers sit in `gregs`. Constants, so the compiler checks every
/// access against the array's length: none can fail at run time, and none costs a check
/// on the exit path.
mod gr {
    use super::reg_index;

    pub(super) const RAX: usize = reg_index(libc::REG_RAX);
    pub(super) const RBX: usize = reg_index(libc::REG_RBX);
    pub(super) const RCX: usize = reg_index(libc::REG_RCX);
    pub(super) const RDX: usize = reg_index(libc::REG_RDX);
    pub(super) const RSI: usize = reg_index(libc::REG_RSI);
    pub(super) const RDI: usize = reg_index(libc::REG_RDI);
    pub(super) const RBP: usize = reg_index(libc::REG_RBP);
    pub(super) const RSP: usize = reg_index(libc::REG_RSP);
    pub(super) const RIP: usize = reg_index(libc::REG_RIP);
    pub(super) const EFL: usize = reg_index(libc::REG_EFL);
    /// CS in bits 0-15, SS in bits 48-63 (with UC_SIGCONTEXT_SS).
    pub(super) const CSGSFS: usize = reg_index(libc::REG_CSGSFS);
    pub(super) const ERR: usize = reg_index(libc::REG_ERR);
    pub(super) const TRAPNO: usize = reg_index(libc::REG_TRAPNO);
}

const CPUID_OPCODE: [u8; 2] = [0x0f, 0xa2];
const TRAP_GP: i64 = 13;

/// Rust half of the handler for a thread with a registered block; FS/GS are the host's.
///
/// # Safety
/// Called only by the prologue with the kernel's siginfo/ucontext and the thread's live
/// block.
unsafe extern "C" fn on_vcpu_signal(
    signo: libc::c_int,
    info: *mut libc::siginfo_t,
    uc: *mut c_void,
    block: *mut CpuBlock,
) {
    // SAFETY: the kernel passes a valid ucontext for SA_SIGINFO handlers; nothing else
    // references it while the handler runs.
    let uc = unsafe { &mut *uc.cast::<libc::ucontext_t>() };
    // SAFETY: the prologue found `block` in the table; it outlives the registration. Only
    // its atomics are touched through shared references here, because the monitor may hold
    // `&CpuBlock` (HostCpu::take_pending) at the interrupted point.
    let shared = unsafe { &*block };
    // SAFETY: `info` is the kernel's siginfo.
    let si_code = unsafe { siginfo_i32(info, SI_CODE_OFFSET) };
    let g = &mut uc.uc_mcontext.gregs;
    let rip = reg64(g[gr::RIP]);
    let cs = low16(reg64(g[gr::CSGSFS]));
    let gate = GATE_TRAMPOLINE.load(Ordering::Relaxed);
    let in_gate = gate != 0 && (gate..gate + GATE_TRAMPOLINE_LEN as u64).contains(&rip);
    let in_monitor = cs == HOST_CS64 && (rip >= 1 << 32 || in_gate);

    if in_monitor {
        let running = shared.running.load(Ordering::Relaxed);
        if running && entry_window().contains(&rip) {
            let landing = if is_async(signo) {
                Some(Landing::AsyncInWindow)
            } else if is_fault_signal(signo) && si_code > 0 {
                Some(Landing::EntryFault)
            } else {
                None
            };
            if let Some(landing) = landing {
                // SAFETY: inside the entry sequence `HostCpu::run` holds no reference to
                // the block (it passed a raw pointer to the assembly); `shared` is not used
                // again on this path.
                let b = unsafe { &mut *block };
                record_raw(b, uc, info, signo, si_code);
                b.landing = landing;
                redirect(uc, b);
                return;
            }
        }
        if is_async(signo) {
            shared.pending_signo.store(signo, Ordering::Relaxed);
            shared.pending.store(1, Ordering::Release);
            return;
        }
        // SAFETY: `info` is the kernel's siginfo.
        if let Some(nr) = unsafe { refused_syscall_nr(signo, si_code, info, rip) } {
            // The syscall did not run: it fails with EPERM, and the run loop, seeing the
            // refusal recorded, stops the VM with the diagnostic.
            report_refused(nr, rip);
            g[gr::RAX] = -i64::from(libc::EPERM);
            return;
        }
        if signo == libc::SIGSEGV
            && g[gr::TRAPNO] == TRAP_GP
            && is_cpuid_at(rip)
            && emulate_monitor_cpuid(g)
        {
            return;
        }
        die(signo, si_code, rip);
        return;
    }

    if !shared.running.load(Ordering::Relaxed) {
        die(signo, si_code, rip);
        return;
    }
    // SAFETY: guest code runs only inside the assembly called by `HostCpu::run`, which holds
    // no reference to the block meanwhile.
    let b = unsafe { &mut *block };
    if b.ctx.is_null() {
        die(signo, si_code, rip);
        return;
    }
    // SAFETY: while `running`, `ctx` is the context `HostCpu::run` entered with, borrowed
    // mutably for the whole run and not touched by the monitor until landing.
    let ctx = unsafe { &mut *b.ctx };
    ctx.eax = low32(reg64(g[gr::RAX]));
    ctx.ebx = low32(reg64(g[gr::RBX]));
    ctx.ecx = low32(reg64(g[gr::RCX]));
    ctx.edx = low32(reg64(g[gr::RDX]));
    ctx.esi = low32(reg64(g[gr::RSI]));
    ctx.edi = low32(reg64(g[gr::RDI]));
    ctx.ebp = low32(reg64(g[gr::RBP]));
    ctx.esp = low32(reg64(g[gr::RSP]));
    ctx.eip = low32(rip);
    ctx.eflags = low32(reg64(g[gr::EFL]));
    ctx.cs = cs;
    ctx.ss = low16(reg64(g[gr::CSGSFS]) >> 48);
    [ctx.ds, ctx.es, ctx.fs, ctx.gs] = b.guest_sel;
    record_raw(b, uc, info, signo, si_code);
    b.landing = Landing::Guest;
    redirect(uc, b);
}

fn record_raw(
    b: &mut CpuBlock,
    uc: &libc::ucontext_t,
    info: *const libc::siginfo_t,
    signo: libc::c_int,
    si_code: i32,
) {
    let g = &uc.uc_mcontext.gregs;
    b.raw.signo = signo;
    b.raw.si_code = si_code;
    b.raw.trapno = reg64(g[gr::TRAPNO]);
    b.raw.err = reg64(g[gr::ERR]);
    b.raw.rip = reg64(g[gr::RIP]);
    b.raw.cs = low16(reg64(g[gr::CSGSFS]));
    // SAFETY: `info` is the kernel's siginfo; si_addr and the SIGSYS syscall number are at
    // fixed offsets (meaningless but readable for other signals).
    unsafe {
        b.raw.addr = siginfo_u64(info, SI_ADDR_OFFSET);
        b.raw.syscall_nr = siginfo_i32(info, SI_SYSCALL_OFFSET);
    }
}

/// uc_flags bits (asm/ucontext.h): the frame carries SS, and sigreturn must restore it as is.
const UC_SIGCONTEXT_SS: libc::c_ulong = 0x2;
const UC_STRICT_RESTORE_SS: libc::c_ulong = 0x4;
/// RFLAGS for the monitor after landing: IF (the host forces it anyway) and reserved bit 1;
/// DF, TF and AC clear as Rust code expects.
const HOST_RFLAGS: i64 = 0x202;

/// Rewrites the frame so that sigreturn lands on the landing pad on the monitor's stack.
fn redirect(uc: &mut libc::ucontext_t, b: &CpuBlock) {
    let g = &mut uc.uc_mcontext.gregs;
    g[gr::RIP] = greg(landing_pad());
    g[gr::RSP] = greg(b.host_rsp);
    g[gr::EFL] = HOST_RFLAGS;
    g[gr::CSGSFS] = (i64::from(HOST_SS64) << 48) | i64::from(HOST_CS64);
    uc.uc_flags |= UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS;
}

/// Whether the monitor instruction at `rip` (which just raised #GP) is a CPUID.
fn is_cpuid_at(rip: u64) -> bool {
    // SAFETY: `rip` is in monitor code, mapped and readable (it was being executed); a #GP
    // is raised only after the whole instruction was fetched, so both bytes are mapped.
    unsafe { std::ptr::read_unaligned(rip as *const [u8; 2]) == CPUID_OPCODE }
}

/// Answers a CPUID the monitor itself executed while CPUID faulting is on (std and
/// libraries probe features lazily). Returns false if faulting could not be switched.
fn emulate_monitor_cpuid(g: &mut [libc::greg_t; 23]) -> bool {
    if cpuid::set_cpuid_faulting(false).is_err() {
        return false;
    }
    let leaf = low32(reg64(g[gr::RAX]));
    let sub = low32(reg64(g[gr::RCX]));
    // CPUID is unprivileged and faulting is off for this thread right now.
    let r = std::arch::x86_64::__cpuid_count(leaf, sub);
    let restored = cpuid::set_cpuid_faulting(true).is_ok();
    g[gr::RAX] = i64::from(r.eax);
    g[gr::RBX] = i64::from(r.ebx);
    g[gr::RCX] = i64::from(r.ecx);
    g[gr::RDX] = i64::from(r.edx);
    g[gr::RIP] += 2;
    restored
}

/// Rust half of the handler on threads that never run guest code.
///
/// # Safety
/// Called only by the prologue with the kernel's siginfo/ucontext.
unsafe extern "C" fn on_foreign_signal(
    signo: libc::c_int,
    info: *mut libc::siginfo_t,
    uc: *mut c_void,
) {
    if is_async(signo) {
        // A timer or kick aimed at a vCPU that is gone; nothing to do.
        return;
    }
    // SAFETY: kernel-provided siginfo and ucontext.
    let (si_code, rip) = unsafe {
        (
            siginfo_i32(info, SI_CODE_OFFSET),
            reg64((*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs[gr::RIP]),
        )
    };
    // SAFETY: `info` is the kernel's siginfo.
    if let Some(nr) = unsafe { refused_syscall_nr(signo, si_code, info, rip) } {
        // No run loop here to stop the VM in order: say why and end the process.
        report_refused(nr, rip);
        // SAFETY: exit_group ends the process; it is on every allowlist.
        unsafe { libc::syscall(libc::SYS_exit_group, SYSCALL_REFUSED_EXIT_STATUS) };
        return;
    }
    die(signo, si_code, rip);
}

const SI_ERRNO_OFFSET: usize = 4;
/// `_sigsys._arch` in the kernel's siginfo_t on x86-64.
const SI_ARCH_OFFSET: usize = 28;

/// The number of the monitor syscall this signal reports the wall refused: a seccomp
/// SIGSYS carrying [`REFUSED_DATA`], for a 64-bit syscall made above 4 GiB. Guest
/// syscalls trap with data 0, from below 4 GiB or with the 32-bit ABI.
///
/// # Safety
/// `info` points to the kernel's siginfo_t for `signo`.
unsafe fn refused_syscall_nr(
    signo: libc::c_int,
    si_code: i32,
    info: *const libc::siginfo_t,
    rip: u64,
) -> Option<u32> {
    if signo != libc::SIGSYS || si_code != SYS_SECCOMP || rip < 1 << 32 {
        return None;
    }
    // SAFETY: a seccomp SIGSYS fills si_errno and the _sigsys fields.
    let (data, nr, arch) = unsafe {
        (
            siginfo_i32(info, SI_ERRNO_OFFSET),
            siginfo_i32(info, SI_SYSCALL_OFFSET),
            siginfo_i32(info, SI_ARCH_OFFSET),
        )
    };
    let arch = u32::from_ne_bytes(arch.to_ne_bytes());
    if data != i32::from(REFUSED_DATA) || arch != AUDIT_ARCH_X86_64 {
        return None;
    }
    u32::try_from(nr).ok()
}

/// Writes the one line that says which monitor syscall the wall refused, and records it
/// for the run loop. Async-signal-safe: a stack buffer and a raw write.
fn report_refused(nr: u32, rip: u64) {
    record_refused(nr, rip);
    write_stderr(refused_line(nr, rip).as_bytes());
}

/// The line [`report_refused`] writes: what [`super::seccomp::RefusedSyscall`] displays,
/// with the `vmm: ` prefix and a newline.
fn refused_line(nr: u32, rip: u64) -> MsgBuf {
    let mut msg = MsgBuf::default();
    msg.push(b"vmm: seccomp wall: refused monitor syscall ");
    msg.push_dec(i64::from(nr));
    msg.push(b" (");
    msg.push(syscall_name(nr).unwrap_or("?").as_bytes());
    msg.push(b") at 0x");
    msg.push_hex(rip);
    msg.push(b"\n");
    msg
}

/// A fault in monitor code is a monitor bug: say so, restore the default action and
/// re-raise, so the process dies with the original signal instead of swallowing it.
fn die(signo: libc::c_int, si_code: i32, rip: u64) {
    let mut msg = MsgBuf::default();
    msg.push(b"vmm: fatal signal ");
    msg.push_dec(i64::from(signo));
    msg.push(b" (si_code ");
    msg.push_dec(i64::from(si_code));
    msg.push(b") in monitor code at 0x");
    msg.push_hex(rip);
    msg.push(b"\n");
    write_stderr(msg.as_bytes());
    // SAFETY: async-signal-safe calls with valid arguments.
    unsafe {
        libc::signal(signo, libc::SIG_DFL);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), signo);
    }
}

/// One raw write to stderr: async-signal-safe, and a short or failed write is left as it
/// is (the handler has nowhere else to report).
fn write_stderr(bytes: &[u8]) {
    // SAFETY: `bytes` is a live slice of `bytes.len()` readable bytes.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// A fixed buffer for formatting without allocating (the handler must not allocate).
struct MsgBuf {
    buf: [u8; 128],
    len: usize,
}

impl Default for MsgBuf {
    fn default() -> Self {
        Self {
            buf: [0; 128],
            len: 0,
        }
    }
}

impl MsgBuf {
    /// Appends `s`, or as much of it as fits.
    fn push(&mut self, s: &[u8]) {
        let room = self.buf.get_mut(self.len..).unwrap_or_default();
        let n = room.len().min(s.len());
        for (d, &c) in room.iter_mut().zip(s) {
            *d = c;
        }
        self.len += n;
    }

    fn push_dec(&mut self, v: i64) {
        if v < 0 {
            self.push(b"-");
        }
        // u64::MAX has 20 digits: the loop always ends on `n == 0`.
        let mut digits = [0u8; 20];
        let mut n = v.unsigned_abs();
        let mut start = digits.len();
        for d in digits.iter_mut().rev() {
            *d = b'0' + low8(n % 10);
            n /= 10;
            start -= 1;
            if n == 0 {
                break;
            }
        }
        self.push(digits.get(start..).unwrap_or_default());
    }

    fn push_hex(&mut self, v: u64) {
        for byte in v.to_be_bytes() {
            self.push(&[hex_digit(byte >> 4), hex_digit(byte & 0xf)]);
        }
    }

    /// What was written so far.
    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

/// The lower-case hex digit for the low nibble of `nib`.
fn hex_digit(nib: u8) -> u8 {
    match nib & 0xf {
        n @ 0..=9 => b'0' + n,
        n => b'a' + (n - 10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mappings of this process: start, end, permissions.
    fn maps() -> Vec<(usize, usize, String)> {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .map(|l| {
                let mut w = l.split_whitespace();
                let (a, b) = w.next().unwrap().split_once('-').unwrap();
                let perms = w.next().unwrap().to_string();
                (
                    usize::from_str_radix(a, 16).unwrap(),
                    usize::from_str_radix(b, 16).unwrap(),
                    perms,
                )
            })
            .collect()
    }

    /// The permissions of the page at `addr`.
    fn perms_at(maps: &[(usize, usize, String)], addr: usize) -> Option<String> {
        maps.iter()
            .find(|(a, b, _)| (*a..*b).contains(&addr))
            .map(|m| m.2.clone())
    }

    fn formatted(f: impl FnOnce(&mut MsgBuf)) -> String {
        let mut m = MsgBuf::default();
        f(&mut m);
        String::from_utf8(m.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn message_numbers_read_as_written() {
        assert_eq!(formatted(|m| m.push_dec(0)), "0");
        assert_eq!(formatted(|m| m.push_dec(11)), "11");
        assert_eq!(formatted(|m| m.push_dec(-4)), "-4");
        assert_eq!(formatted(|m| m.push_dec(i64::MAX)), i64::MAX.to_string());
        assert_eq!(formatted(|m| m.push_dec(i64::MIN)), i64::MIN.to_string());
        assert_eq!(formatted(|m| m.push_hex(0)), "0000000000000000");
        assert_eq!(
            formatted(|m| m.push_hex(0x7f12_3456_89ab_cdef)),
            "7f12345689abcdef"
        );
        assert_eq!(formatted(|m| m.push_hex(u64::MAX)), "ffffffffffffffff");
    }

    #[test]
    fn messages_longer_than_the_buffer_are_cut() {
        let long = formatted(|m| {
            for _ in 0..20 {
                m.push(b"vmm: ");
                m.push_hex(u64::MAX);
            }
        });
        assert_eq!(long.len(), 128);
        assert!(long.starts_with("vmm: ffffffffffffffffvmm: "));
        let mut full = MsgBuf::default();
        full.push(&[b'x'; 130]);
        full.push_dec(-1);
        assert_eq!(full.as_bytes(), &[b'x'; 128][..]);
    }

    #[test]
    fn refusal_line_is_what_the_run_loop_reports() {
        for (nr, rip) in [(257, 0x7f12_3456_789a), (u32::MAX, 1 << 32)] {
            let r = crate::hostcpu::seccomp::RefusedSyscall { nr, rip };
            let line = refused_line(nr, rip);
            assert_eq!(line.as_bytes(), format!("vmm: {r}\n").as_bytes());
        }
    }

    #[test]
    fn slots_are_taken_and_given_back() {
        // An unaligned base: the prologue compares aligned stack pointers, so no signal
        // can ever match this slot while the test holds it.
        let i = register(1, std::ptr::null_mut()).unwrap();
        assert_eq!(VCPU_TABLE[i].altstack.load(Ordering::Acquire), 1);
        unregister(i);
        assert_eq!(VCPU_TABLE[i].altstack.load(Ordering::Acquire), 0);
    }

    #[test]
    fn altstack_lies_between_guard_pages() {
        let stack = AltStack::new().unwrap();
        let base = stack.base();
        assert_eq!(base % ALTSTACK_SIZE, 0);
        let m = maps();
        assert_eq!(perms_at(&m, base).as_deref(), Some("---p"), "lower guard");
        assert_eq!(
            perms_at(&m, base + ALTSTACK_SIZE).as_deref(),
            Some("---p"),
            "upper guard"
        );
        for page in (base + GUARD_SIZE..base + ALTSTACK_SIZE).step_by(GUARD_SIZE) {
            assert_eq!(perms_at(&m, page).as_deref(), Some("rw-p"), "{page:#x}");
        }
        // The signal stack the kernel uses is the part between the guards.
        let mut cur: libc::stack_t = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: 0,
            ss_size: 0,
        };
        // SAFETY: queries the calling thread's altstack into a live local.
        assert_eq!(unsafe { libc::sigaltstack(std::ptr::null(), &mut cur) }, 0);
        assert_eq!(cur.ss_sp as usize, base + GUARD_SIZE);
        assert_eq!(cur.ss_size, ALTSTACK_SIZE - GUARD_SIZE);
    }
}
