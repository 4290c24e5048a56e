//! Running guest code on the host CPU: LDT mirrors, entry into compat mode and the exit
//! path through signals, the seccomp backstop, CPUID faulting and the vCPU timer; and the
//! bare round trips an exit is measured against ([`roundtrip`]).
//!
//! # Using it from a run loop
//! ```no_run
//! use vmm::hostcpu::{self, ldt, GuestContext, HostCpu, HostExitKind};
//! use vmm::x86::Exception;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // On the vCPU thread, before the first guest instruction:
//! let mut cpu = HostCpu::new()?;
//! hostcpu::seccomp::install_guest_syscall_trap()?;
//! let _ = hostcpu::cpuid::enable_cpuid_faulting(); // else CPUID must be rewritten
//! ldt::set_ldt_entry(1, &ldt::LdtDescriptor::flat_code32())?;
//! ldt::set_ldt_entry(2, &ldt::LdtDescriptor::flat_data32())?;
//! let mut ctx = GuestContext {
//!     cs: ldt::ldt_selector(1),
//!     ss: ldt::ldt_selector(2),
//!     ds: ldt::ldt_selector(2),
//!     es: ldt::ldt_selector(2),
//!     eip: 0x10_0000,
//!     esp: 0x9_0000,
//!     ..GuestContext::default()
//! };
//! loop {
//!     let exit = cpu.run(&mut ctx);
//!     match exit.kind {
//!         HostExitKind::Fault { vector: Exception::GP, .. } => { /* emulate at ctx.eip */ }
//!         HostExitKind::Async { .. } => { /* timer tick or kick */ }
//!         _ => break,
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod cpuid;
mod entry;
pub mod ldt;
mod regs;
pub mod roundtrip;
pub mod seccomp;
mod signals;
mod syscall_names;
pub mod timer;

use std::cell::Cell;
use std::io;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use entry::{CpuBlock, Landing};
pub use entry::{GuestContext, XsaveArea, XSAVE_AREA_SIZE};
use regs::{low32, low8};

use crate::addr::{GuestLinear, HostAddr};
use crate::x86::{Exception, SegReg};
use timer::{kick_signal, timer_signal, Kicker};

/// The host's 64-bit user code selector (`__USER_CS`). Guest code running with it has
/// escaped compat mode.
pub const HOST_CS64: u16 = 0x33;
/// The host's 32-bit user code selector (`__USER32_CS`), a GDT selector guests can reach.
pub const HOST_CS32: u16 = 0x23;
/// The host's user data selector (`__USER_DS`), the monitor's SS.
pub const HOST_SS64: u16 = 0x2b;

/// Length of the gate trampoline: `jmp qword ptr [rip]` and its 8-byte target.
pub const GATE_TRAMPOLINE_LEN: usize = 14;

/// The gate trampoline's code for the monitor window: 64-bit code that jumps to the
/// monitor's gate. Translated code reaches it with a far jump to [`HOST_CS64`].
pub fn gate_trampoline() -> [u8; GATE_TRAMPOLINE_LEN] {
    let mut code = [0u8; GATE_TRAMPOLINE_LEN];
    code[..6].copy_from_slice(&[0xFF, 0x25, 0, 0, 0, 0]);
    code[6..].copy_from_slice(&entry::gate_entry().to_le_bytes());
    code
}

/// Tells the exit handler where the gate trampoline lies in the low 4 GiB: a signal that
/// interrupts it (the host's 64-bit CS below 4 GiB) is monitor code, not an escape.
pub fn set_gate_trampoline(addr: u32) {
    signals::GATE_TRAMPOLINE.store(u64::from(addr), Ordering::Release);
}

/// si_code of a seccomp SIGSYS.
const SYS_SECCOMP: i32 = 1;

/// EFLAGS bits the guest owns on the host CPU: CF, PF, AF, ZF, SF, TF, DF, OF, RF, AC, ID.
/// IF, IOPL, NT, VM, VIF and VIP are virtual (kept by the vCPU).
pub const GUEST_EFLAGS_MASK: u32 = 0x0025_0dd5;
/// Bits forced on at entry: reserved bit 1 and IF (the host CPU never runs with IF clear at
/// CPL 3).
pub const FORCED_EFLAGS: u32 = 0x0000_0202;

/// Upper bound of the XSAVE components the monitor saves: everything the host enabled
/// except AMX tile state (bits 17, 18), which would need permission and 8 KiB.
const XCR0_EXCLUDED: u64 = (1 << 17) | (1 << 18);
/// XCR0 bit of the AVX upper halves.
const XCR0_AVX: u64 = 1 << 2;
/// XCR0 bit of the AVX-512 opmask registers.
const XCR0_OPMASK: u64 = 1 << 5;
/// XCR0 bit of the protection-key rights register.
const XCR0_PKRU: u64 = 1 << 9;
/// `AT_HWCAP2` bit for a kernel that lets user code use RD/WRFSBASE.
const HWCAP2_FSGSBASE: u64 = 1 << 1;

/// Why the host CPU cannot run guests on this thread.
#[derive(Debug, thiserror::Error)]
pub enum HostCpuError {
    /// The kernel does not allow RD/WRFSBASE from user mode.
    #[error("the host kernel does not enable FSGSBASE; the exit path needs WRFSBASE")]
    NoFsgsbase,
    /// The CPU or kernel lacks XSAVE.
    #[error("the host has no OS-enabled XSAVE")]
    NoXsave,
    /// The host's extended state does not fit [`XsaveArea`].
    #[error(
        "the host's XSAVE image needs {size} bytes, more than {}",
        XSAVE_AREA_SIZE
    )]
    XsaveTooLarge {
        /// Bytes needed.
        size: usize,
    },
    /// This thread already has a `HostCpu`.
    #[error("this thread already has a HostCpu")]
    AlreadyOnThread,
    /// Too many vCPU threads.
    #[error("at most {} vCPU threads are supported", signals::MAX_VCPUS)]
    TooManyVcpus,
    /// sigaltstack, sigaction or the signal mask could not be set up.
    #[error("cannot set up exit signal handling")]
    Signals(#[source] io::Error),
    /// The seccomp filter was refused.
    #[error("cannot install the seccomp filter")]
    Seccomp(#[source] seccompiler::Error),
    /// The monitor allowlist is longer than one BPF program can express.
    #[error("{len} allowlisted syscalls is more than the filter supports")]
    AllowlistTooLong {
        /// The list's length.
        len: usize,
    },
}

/// Why the guest could not be entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadEntry {
    /// A selector in the context is not an LDT selector with RPL 3 (or null, for data).
    Selector {
        /// Which register.
        reg: SegReg,
        /// The refused selector.
        sel: u16,
    },
    /// Loading the segments or the `iretq` faulted (a mirror not present, wrong type, ...).
    Faulted {
        /// The x86 vector.
        vector: u8,
        /// The error code (the selector for segment faults).
        error_code: u32,
    },
}

/// What ended a guest run, as the host reports it (signal, vector, error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostExitKind {
    /// A guest exception other than a page fault: #GP (vector 13) for privileged
    /// instructions, `INT n`, CPUID with faulting on; #BP (3, EIP after the INT3); #UD (6);
    /// #DE (0); #DB (1); ...
    Fault {
        /// The x86 vector (`trapno`).
        vector: u8,
        /// The error code the CPU pushed (0 where the vector has none).
        error_code: u32,
    },
    /// A page fault on the host's mapping of the guest linear space. The P bit reflects the
    /// *host* page table; compute the guest's error code from the guest page tables.
    PageFault {
        /// The faulting linear address (CR2).
        addr: GuestLinear,
        /// The host error code (W = bit 1, U = bit 2, I = bit 4).
        error_code: u32,
    },
    /// A syscall instruction trapped by the seccomp filter (SIGSYS); EIP is after the
    /// instruction and EAX holds the number again.
    Syscall {
        /// The syscall number as the host kernel decoded it.
        nr: i32,
    },
    /// The vCPU timer or a kick; the guest can be resumed as is.
    Async {
        /// [`timer::timer_signal`] or [`timer::kick_signal`].
        signo: i32,
    },
    /// Guest code ran with the host's 64-bit code selector: stop the VM.
    Escape {
        /// Where it was caught.
        rip: HostAddr,
    },
    /// The guest was not entered (or not completely); the context is unchanged.
    BadEntry(BadEntry),
    /// Any other signal in guest context (for instance one sent with kill).
    Signal,
    /// Translated code left through the gate: the registers are in the context, EIP
    /// holds nothing (the exit slot of the vCPU page says which exit was taken).
    Gate,
}

/// The result of [`HostCpu::run`]: the host's raw exit, decoded from the signal facts
/// ([`HostExitKind`]) and the facts themselves. What it means for the guest is decided by
/// the run loop (`vm/classify.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostExit {
    /// What happened.
    pub kind: HostExitKind,
    /// The host signal (0 when the guest was not entered).
    pub signo: i32,
    /// Its si_code.
    pub si_code: i32,
    /// `uc_mcontext` trapno (the x86 vector of a fault; stale for sent signals).
    pub trapno: u64,
    /// `uc_mcontext` err (the error code; stale for sent signals).
    pub err: u64,
    /// si_addr: the fault address, or the syscall's address for SIGSYS.
    pub addr: HostAddr,
    /// The interrupted CS.
    pub cs: u16,
    /// The interrupted RIP (full 64 bits).
    pub rip: HostAddr,
}

impl HostExit {
    /// The single-step trap (#DB, SIGTRAP with `si_code`) that a step the monitor ran
    /// without the host's TF stands for.
    pub fn step_trap(si_code: i32) -> Self {
        Self {
            kind: HostExitKind::Fault {
                vector: Exception::DB,
                error_code: 0,
            },
            signo: libc::SIGTRAP,
            si_code,
            trapno: u64::from(Exception::DB),
            err: 0,
            addr: HostAddr(0),
            cs: 0,
            rip: HostAddr(0),
        }
    }

    pub(crate) fn not_entered(kind: HostExitKind, signo: i32) -> Self {
        Self {
            kind,
            signo,
            si_code: 0,
            trapno: 0,
            err: 0,
            addr: HostAddr(0),
            cs: 0,
            rip: HostAddr(0),
        }
    }
}

thread_local! {
    static HOSTCPU_ON_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// The host CPU state of one vCPU thread: its altstack, exit handler registration and the
/// monitor state saved across guest runs. Bound to the thread that created it.
#[derive(Debug)]
pub struct HostCpu {
    block: NonNull<CpuBlock>,
    /// Owned only to be disabled and unmapped on drop.
    _altstack: signals::AltStack,
    slot: usize,
    kicker: Kicker,
    _thread_bound: PhantomData<*mut ()>,
}

impl HostCpu {
    /// Prepares the calling thread to run guest code: checks FSGSBASE and XSAVE, installs
    /// the altstack and the exit signal handlers, unblocks the exit signals.
    ///
    /// Run guest code only after [`seccomp::install_guest_syscall_trap`].
    ///
    /// # Errors
    /// [`HostCpuError`] says what the host lacks or refused.
    pub fn new() -> Result<Self, HostCpuError> {
        if HOSTCPU_ON_THREAD.with(|c| c.get()) {
            return Err(HostCpuError::AlreadyOnThread);
        }
        // SAFETY: getauxval has no preconditions.
        if unsafe { libc::getauxval(libc::AT_HWCAP2) } & HWCAP2_FSGSBASE == 0 {
            return Err(HostCpuError::NoFsgsbase);
        }
        let mask = xsave_mask()?;
        let fsbase = entry::read_fs_base();
        // PKRU is user-writable XSAVE state: where it exists the monitor's own value must
        // come back with a full XRSTOR rather than the light MXCSR/FCW path.
        let light_fpu = mask & XCR0_PKRU == 0;
        let features = entry::FpuFeatures {
            avx: mask & XCR0_AVX != 0,
            opmask: mask & XCR0_OPMASK != 0,
            // Leaf 0xD exists: xsave_mask checked OSXSAVE.
            xsaveopt: std::arch::x86_64::__cpuid_count(0xd, 1).eax & 1 != 0,
        };
        let block = NonNull::from(Box::leak(Box::new(CpuBlock::new(
            mask, fsbase, light_fpu, features,
        ))));
        let altstack = match signals::AltStack::new() {
            Ok(a) => a,
            Err(e) => {
                free_block(block);
                return Err(HostCpuError::Signals(e));
            }
        };
        let Some(slot) = signals::register(altstack.base(), block.as_ptr()) else {
            drop(altstack);
            free_block(block);
            return Err(HostCpuError::TooManyVcpus);
        };
        let cpu = Self {
            block,
            _altstack: altstack,
            slot,
            kicker: Kicker::for_current_thread(),
            _thread_bound: PhantomData,
        };
        HOSTCPU_ON_THREAD.with(|c| c.set(true));
        signals::install_handlers().map_err(HostCpuError::Signals)?;
        signals::unblock_exit_signals().map_err(HostCpuError::Signals)?;
        Ok(cpu)
    }

    /// A handle other threads can use to interrupt this vCPU, and to aim a
    /// [`timer::VcpuTimer`] at it.
    pub fn kicker(&self) -> Kicker {
        self.kicker
    }

    /// Whether a timer or kick signal arrived while the monitor ran; clears the mark.
    /// [`HostCpu::run`] checks it too, so a run loop need not.
    pub fn take_pending(&self) -> bool {
        self.block_ref().pending.swap(0, Ordering::AcqRel) != 0
    }

    fn block_ref(&self) -> &CpuBlock {
        // SAFETY: the block lives until Drop; the handler only writes its atomics and the
        // landing fields, and only while `run` holds `&mut self`.
        unsafe { self.block.as_ref() }
    }

    /// Completes `ctx`'s extended state in [`GuestContext::fpu`] if a gate exit left it in
    /// the CPU (see [`HostCpu::run`]). Call it before reading `ctx.fpu`, before running
    /// another context whose state should not replace this one's unsaved (a vCPU
    /// switch), and before dropping the `HostCpu` if `ctx` is to run again.
    pub fn save_fpu(&self, ctx: &mut GuestContext) {
        let block = self.block.as_ptr();
        // SAFETY: this thread's live block, not inside a run (`run` holds `&mut self`);
        // the state in the CPU is `ctx`'s, whose exclusive borrow we hold.
        unsafe {
            if (*block).fpu_live == ctx as *mut GuestContext as usize as u64 {
                entry::spill_fpu(block, Some(&mut ctx.fpu));
            }
        }
    }

    /// Runs the guest from `ctx` until the next exit and stores the guest's registers,
    /// selectors and extended state back into `ctx` (for a guest exit).
    ///
    /// After a gate exit the extended state stays in the CPU (the monitor's code changes
    /// only XMM0-7 and MXCSR, which are put aside) and `ctx.fpu` is stale until
    /// [`HostCpu::save_fpu`]. Running another context first drops that state: call
    /// `save_fpu` before switching contexts. Resuming is calling
    /// `run` again, with `ctx.eip` wherever the monitor wants the guest to continue.
    ///
    /// Returns at once with [`HostExitKind::Async`] if a timer or kick arrived since the last
    /// run, and with [`HostExitKind::BadEntry`] if `ctx` names selectors the guest may not run
    /// with. `ctx.eflags` is sanitised first (see [`GUEST_EFLAGS_MASK`]).
    ///
    /// On return the monitor has its FS base, MXCSR and x87 control word back and an empty
    /// x87 stack; vector registers hold nothing it needs (they are caller-saved). DS, ES, FS
    /// and GS keep the guest's selectors, which 64-bit code ignores for addressing; this
    /// saves about 50 ns per segment load on every exit. Dropping the `HostCpu` resets them
    /// to null.
    pub fn run(&mut self, ctx: &mut GuestContext) -> HostExit {
        if let Err(bad) = check_selectors(ctx) {
            return HostExit::not_entered(HostExitKind::BadEntry(bad), 0);
        }
        if self.take_pending() {
            let signo = self.block_ref().pending_signo.load(Ordering::Relaxed);
            return HostExit::not_entered(HostExitKind::Async { signo }, signo);
        }
        ctx.eflags = (ctx.eflags & GUEST_EFLAGS_MASK) | FORCED_EFLAGS;
        let ctx_ptr: *mut GuestContext = ctx;
        let block = self.block.as_ptr();
        // SAFETY: this thread's live block, outside a run. State another context left in
        // the CPU was not saved: it is dropped, and this context's comes in whole.
        unsafe {
            let live = (*block).fpu_live;
            if live != 0 && live != ctx_ptr as usize as u64 {
                debug_assert!(false, "a context's extended state was left in the CPU");
                entry::spill_fpu(block, None);
            }
        }
        entry::GATE_BLOCK.store(block as usize as u64, Ordering::Release);
        // SAFETY: `block` is this thread's live block; the handler writes it only during
        // `enter`, which we are about to call with `&mut self` held.
        unsafe {
            (*block).ctx = ctx_ptr;
            (*block).landing = Landing::EarlyPending;
            (*block).running.store(true, Ordering::Release);
        }
        // SAFETY: `block` is registered for this thread (HostCpu is !Send) and its ctx is
        // `ctx_ptr`, derived from the exclusive borrow `ctx`; the selectors were checked.
        unsafe { entry::enter(block, ctx_ptr) };
        // SAFETY: the guest run is over; the handler touches only atomics from now on.
        let (landing, raw) = unsafe {
            (*block).running.store(false, Ordering::Release);
            (*block).ctx = std::ptr::null_mut();
            if !matches!((*block).landing, Landing::Guest | Landing::Gate) {
                // The entry stopped part-way: the FS base saved at landing may not be the
                // guest's, so the next entry reloads FS and GS from their selectors.
                (*block).seg_gen = u64::MAX;
            }
            ((*block).landing, (*block).raw)
        };
        match landing {
            Landing::EarlyPending => {
                self.take_pending();
                let signo = self.block_ref().pending_signo.load(Ordering::Relaxed);
                HostExit::not_entered(HostExitKind::Async { signo }, signo)
            }
            Landing::Gate => HostExit {
                kind: HostExitKind::Gate,
                signo: 0,
                si_code: 0,
                trapno: 0,
                err: 0,
                addr: HostAddr(0),
                cs: ctx.cs,
                rip: HostAddr(0),
            },
            Landing::AsyncInWindow => {
                HostExit::not_entered(HostExitKind::Async { signo: raw.signo }, raw.signo)
            }
            Landing::EntryFault | Landing::Guest => {
                let kind = if landing == Landing::EntryFault {
                    HostExitKind::BadEntry(BadEntry::Faulted {
                        vector: low8(raw.trapno),
                        error_code: low32(raw.err),
                    })
                } else {
                    decode(&raw)
                };
                HostExit {
                    kind,
                    signo: raw.signo,
                    si_code: raw.si_code,
                    trapno: raw.trapno,
                    err: raw.err,
                    addr: HostAddr(raw.addr),
                    cs: raw.cs,
                    rip: HostAddr(raw.rip),
                }
            }
        }
    }
}

impl Drop for HostCpu {
    fn drop(&mut self) {
        signals::unregister(self.slot);
        HOSTCPU_ON_THREAD.with(|c| c.set(false));
        // SAFETY: our own block; no run is in progress (`&mut self`). A context's state
        // still in the CPU is dropped (its owner had `save_fpu` to keep it).
        let fsbase = unsafe {
            entry::spill_fpu(self.block.as_ptr(), None);
            self.block.as_ref().host_fsbase
        };
        entry::reset_data_segments(fsbase);
        // The handler can no longer find the block (unregistered above); the altstack field
        // is disabled and unmapped when the fields drop after this body.
        free_block(self.block);
    }
}

fn free_block(block: NonNull<CpuBlock>) {
    // SAFETY: `block` came from Box::leak in `new` and is no longer registered.
    drop(unsafe { Box::from_raw(block.as_ptr()) });
}

/// Decodes a guest exit from the raw signal facts.
fn decode(raw: &entry::RawExit) -> HostExitKind {
    if raw.cs == HOST_CS64 {
        return HostExitKind::Escape {
            rip: HostAddr(raw.rip),
        };
    }
    if raw.signo == timer_signal() || raw.signo == kick_signal() {
        return HostExitKind::Async { signo: raw.signo };
    }
    if raw.signo == libc::SIGSYS && raw.si_code == SYS_SECCOMP {
        return HostExitKind::Syscall { nr: raw.syscall_nr };
    }
    let fault = matches!(
        raw.signo,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
    );
    // si_code > 0: generated by the CPU, not sent by a process.
    if fault && raw.si_code > 0 && raw.trapno < 32 {
        if raw.trapno == u64::from(Exception::PF) {
            if let Some(addr) = HostAddr(raw.addr).guest_linear() {
                return HostExitKind::PageFault {
                    addr,
                    error_code: low32(raw.err),
                };
            }
            return HostExitKind::Signal;
        }
        return HostExitKind::Fault {
            vector: low8(raw.trapno),
            error_code: low32(raw.err),
        };
    }
    HostExitKind::Signal
}

/// CS and SS must be LDT mirrors at RPL 3; data selectors LDT mirrors at RPL 3 or null.
/// GDT selectors would run the guest with the host's own segments.
fn check_selectors(ctx: &GuestContext) -> Result<(), BadEntry> {
    let ldt_rpl3 = |s: u16| s & 7 == 7;
    for (reg, sel, may_be_null) in [
        (SegReg::Cs, ctx.cs, false),
        (SegReg::Ss, ctx.ss, false),
        (SegReg::Ds, ctx.ds, true),
        (SegReg::Es, ctx.es, true),
        (SegReg::Fs, ctx.fs, true),
        (SegReg::Gs, ctx.gs, true),
    ] {
        if !(ldt_rpl3(sel) || (may_be_null && sel & !3 == 0)) {
            return Err(BadEntry::Selector { reg, sel });
        }
    }
    Ok(())
}

/// A CPUID register value as a size (lossless on the 64-bit host).
fn u32_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The XSAVE component mask (XCR0 minus AMX), after checking the image fits.
fn xsave_mask() -> Result<u64, HostCpuError> {
    // With CPUID faulting already on, the exit handler emulates this CPUID.
    let leaf1 = std::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 27) == 0 {
        return Err(HostCpuError::NoXsave);
    }
    let xcr0: u64;
    // SAFETY: OSXSAVE is set, so XGETBV(0) is allowed at CPL 3.
    unsafe {
        let (lo, hi): (u32, u32);
        std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
        xcr0 = u64::from(hi) << 32 | u64::from(lo);
    }
    let mask = xcr0 & !XCR0_EXCLUDED;
    // Standard format: component i lives at CPUID(0xD, i).EBX, size EAX; x87/SSE in the
    // 576-byte legacy region and header.
    let mut size = 576usize;
    for i in 2..63 {
        if mask & (1 << i) != 0 {
            // Leaf 0xD exists when OSXSAVE is set.
            let c = std::arch::x86_64::__cpuid_count(0xd, i);
            size = size.max(u32_usize(c.ebx) + u32_usize(c.eax));
        }
    }
    if size > XSAVE_AREA_SIZE {
        return Err(HostCpuError::XsaveTooLarge { size });
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(signo: i32, si_code: i32, trapno: u64, err: u64) -> entry::RawExit {
        entry::RawExit {
            signo,
            si_code,
            trapno,
            err,
            addr: 0x1234,
            rip: 0x10_0000,
            cs: 0x0f,
            syscall_nr: 4,
        }
    }

    #[test]
    fn exits_are_decoded_from_signal_facts() {
        assert_eq!(
            decode(&raw(libc::SIGSEGV, 0x80, 13, 0)),
            HostExitKind::Fault {
                vector: 13,
                error_code: 0
            }
        );
        assert_eq!(
            decode(&raw(libc::SIGSEGV, 1, 14, 6)),
            HostExitKind::PageFault {
                addr: GuestLinear(0x1234),
                error_code: 6
            }
        );
        assert_eq!(
            decode(&raw(libc::SIGSYS, 1, 0, 0)),
            HostExitKind::Syscall { nr: 4 }
        );
        assert_eq!(decode(&raw(libc::SIGSEGV, 0, 13, 0)), HostExitKind::Signal);
        let t = timer_signal();
        assert_eq!(decode(&raw(t, -2, 0, 0)), HostExitKind::Async { signo: t });
        let mut esc = raw(libc::SIGSEGV, 0x80, 13, 0);
        esc.cs = HOST_CS64;
        assert_eq!(
            decode(&esc),
            HostExitKind::Escape {
                rip: HostAddr(0x10_0000)
            }
        );
    }

    #[test]
    fn selectors_must_be_ldt_rpl3() {
        let ok = GuestContext {
            cs: 0x0f,
            ss: 0x17,
            ds: 0x17,
            es: 0,
            fs: 3,
            gs: 0x1f,
            ..Default::default()
        };
        assert_eq!(check_selectors(&ok), Ok(()));
        let host = GuestContext {
            cs: HOST_CS64,
            ..ok.clone()
        };
        assert_eq!(
            check_selectors(&host),
            Err(BadEntry::Selector {
                reg: SegReg::Cs,
                sel: HOST_CS64
            })
        );
        let rpl0 = GuestContext {
            ds: 0x14,
            ..ok.clone()
        };
        assert_eq!(
            check_selectors(&rpl0),
            Err(BadEntry::Selector {
                reg: SegReg::Ds,
                sel: 0x14
            })
        );
        let null_ss = GuestContext { ss: 0, ..ok };
        assert!(check_selectors(&null_ss).is_err());
    }

    #[test]
    fn eflags_mask_keeps_only_guest_bits() {
        // IF, IOPL, NT, VM, VIF, VIP are virtual.
        for bit in [9, 12, 13, 14, 17, 19, 20] {
            assert_eq!(GUEST_EFLAGS_MASK & (1 << bit), 0, "bit {bit}");
        }
        for bit in [0, 2, 4, 6, 7, 8, 10, 11, 16, 18, 21] {
            assert_ne!(GUEST_EFLAGS_MASK & (1 << bit), 0, "bit {bit}");
        }
    }
}
