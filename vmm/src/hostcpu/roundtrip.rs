//! Bare round trips between the monitor's 64-bit code and compat-mode code, timed with
//! the TSC: what one gate exit costs beside the signal exit it replaces and the far
//! call/return it is built from (`vmm bench` prints the three side by side).
//!
//! - [`RoundTrip::Gate`], an empty gate exit: compat code that does what a translated
//!   block's exit stub does (store the exit slot, far-jump through a pointer to the
//!   trampoline) and nothing else, run by [`HostCpu::run`], which returns
//!   [`HostExitKind::Gate`]; the monitor answers with nothing and enters it again. One
//!   trip is the entry (extended state, segments, `iretq`), the stub, the trampoline, the
//!   gate's register stores and the landing.
//! - [`RoundTrip::Signal`], a bare signal round trip: compat code runs INT3, the host
//!   delivers SIGTRAP to a handler that returns at once, `rt_sigreturn` goes back to the
//!   compat code. No monitor work.
//! - [`RoundTrip::FarCall`], a bare far call/return: 64-bit code calls compat code through
//!   an m16:32 pointer to the host's 32-bit code selector, which returns at once with a
//!   far return. No kernel, no monitor work.
//!
//! [`RoundTrips::new`] maps the code below 2 GiB (compat code and the far calls' return
//! addresses are 32 bits), takes LDT entries 1 and 2, installs the calling thread's
//! seccomp backstop and names its trampoline as the gate's: it belongs in a process of its
//! own (`vmm bench` runs it in a child).

use std::io;
use std::marker::PhantomData;
use std::ptr::NonNull;

use iced_x86::code_asm::{
    dword_ptr, fword_ptr, r12, r13, r14, r15, rbp, rbx, rcx, rdi, rdx, rsi, rsp, CodeAssembler,
};
use iced_x86::IcedError;

use super::ldt::{self, ldt_selector, LdtDescriptor, LdtError};
use super::{gate_trampoline, seccomp, GuestContext, HostCpu, HostCpuError, HostExitKind};
use super::{HOST_CS32, HOST_CS64};

/// One kind of round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoundTrip {
    /// An empty gate exit and the entry back.
    Gate,
    /// INT3 in compat code, a handler that returns at once, and back.
    Signal,
    /// A far call from 64-bit code into compat code and its far return.
    FarCall,
}

impl RoundTrip {
    /// Every round trip, in the order `vmm bench` prints them.
    pub const ALL: [RoundTrip; 3] = [Self::Gate, Self::Signal, Self::FarCall];

    /// Its name in `BENCH` lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gate => "gate_round_trip",
            Self::Signal => "signal_round_trip",
            Self::FarCall => "far_call_return",
        }
    }

    /// What is timed, for people.
    pub fn label(self) -> &'static str {
        match self {
            Self::Gate => "gate exit, empty: entry, stub, trampoline, gate, landing",
            Self::Signal => "signal: compat INT3 -> SIGTRAP -> handler -> sigreturn",
            Self::FarCall => "far call + far return, 64-bit -> compat -> 64-bit",
        }
    }
}

/// Why the round trips cannot be set up or timed.
#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    /// No memory below 2 GiB, or its protection could not be set.
    #[error("cannot map the round trips' code below 2 GiB")]
    Map(#[source] io::Error),
    /// The code could not be assembled.
    #[error("cannot assemble the round trips' code: {0}")]
    Assemble(String),
    /// The code segment or data segment could not be installed.
    #[error("cannot install the round trips' LDT entries")]
    Ldt(#[from] LdtError),
    /// The host CPU layer refused (seccomp, signals, a second `HostCpu` on the thread).
    #[error(transparent)]
    HostCpu(#[from] HostCpuError),
    /// The bare SIGTRAP handler could not be installed or removed.
    #[error("cannot set the bare SIGTRAP handler")]
    Handler(#[source] io::Error),
    /// The empty exit did not come back through the gate.
    #[error("the empty gate exit came back as {0:?}, not through the gate")]
    NotGate(HostExitKind),
}

impl From<IcedError> for RoundTripError {
    fn from(e: IcedError) -> Self {
        Self::Assemble(e.to_string())
    }
}

/// LDT entries of the compat code and its data.
const LDT_CODE: u16 = 1;
const LDT_DATA: u16 = 2;

// The layout of the mapping: one page of code (and the far pointers it reads through
// CS), one page of data, the stack.
/// The exit stub.
const STUB: usize = 0x000;
/// `retf` for the far call.
const FAR_RETURN: usize = 0x040;
/// `int3; dec ecx; jnz; retf` for the signal trips.
const INT3_LOOP: usize = 0x080;
/// m16:32 pointer to the trampoline at the host's 64-bit selector.
const GATE_POINTER: usize = 0x100;
/// m16:32 pointer to [`FAR_RETURN`] at the host's 32-bit selector.
const FAR_RETURN_POINTER: usize = 0x110;
/// m16:32 pointer to [`INT3_LOOP`] at the host's 32-bit selector.
const INT3_LOOP_POINTER: usize = 0x118;
/// The gate trampoline; its `jmp [rip]` target (6 bytes in) is 8-byte aligned.
const TRAMPOLINE: usize = 0x202;
const _: () = assert!((TRAMPOLINE + 6).is_multiple_of(8));
/// The 64-bit routine that makes the far calls.
const CALLER: usize = 0x300;
const CODE_LEN: usize = 0x1000;
/// The exit slot the stub stores to.
const SLOT: usize = 0x1000;
/// The stack fills the rest, 64 KiB from 0x2000: room for a signal frame with the
/// host's extended state.
const MAPPING_LEN: usize = 0x12000;
/// The initial stack pointer, with room left above it.
const STACK_TOP: usize = MAPPING_LEN - 64;

/// The 64-bit routine at [`CALLER`]: `(far calls to make, stack top below 4 GiB, the far
/// pointer, ECX for the callee)`.
type Caller = extern "sysv64" fn(u64, u64, u64, u64);

/// The round trips' code and stack, and the LDT entries it runs with. Bound to the
/// thread that made it (its seccomp backstop and `HostCpu` are per thread).
#[derive(Debug)]
pub struct RoundTrips {
    base: NonNull<u8>,
    _thread_bound: PhantomData<*mut ()>,
}

impl RoundTrips {
    /// Maps and writes the code, installs the LDT entries and the calling thread's
    /// seccomp backstop (for good: the process should be one of its own).
    ///
    /// # Errors
    /// [`RoundTripError`] says which part the host refused.
    pub fn new() -> Result<Self, RoundTripError> {
        let base = map_low(MAPPING_LEN).map_err(RoundTripError::Map)?;
        let trips = Self {
            base,
            _thread_bound: PhantomData,
        };
        let code = trips.code()?;
        // SAFETY: the mapping is MAPPING_LEN bytes, read-write, and referenced by nothing
        // else yet; the code page's bytes fit its first CODE_LEN bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), base.as_ptr(), code.len());
        }
        // SAFETY: the first page of our own mapping; nothing writes it from now on.
        let rx = unsafe {
            libc::mprotect(
                base.as_ptr().cast(),
                CODE_LEN,
                libc::PROT_READ | libc::PROT_EXEC,
            )
        };
        if rx != 0 {
            return Err(RoundTripError::Map(io::Error::last_os_error()));
        }
        ldt::set_ldt_entry(LDT_CODE, &LdtDescriptor::flat_code32())?;
        ldt::set_ldt_entry(LDT_DATA, &LdtDescriptor::flat_data32())?;
        seccomp::install_guest_syscall_trap()?;
        super::set_gate_trampoline(trips.addr32(TRAMPOLINE));
        Ok(trips)
    }

    /// TSC cycles `n` round trips of `trip` took.
    ///
    /// # Errors
    /// For [`RoundTrip::Gate`], a `HostCpu` cannot be made on this thread (there is one
    /// already) or an exit did not come through the gate; for [`RoundTrip::Signal`], the
    /// handler could not be set.
    pub fn time(&self, trip: RoundTrip, n: u32) -> Result<u64, RoundTripError> {
        match trip {
            RoundTrip::Gate => self.gate(n),
            RoundTrip::Signal => self.signal(n),
            RoundTrip::FarCall => Ok(self.far_calls(u64::from(n), FAR_RETURN_POINTER, 0)),
        }
    }

    /// The address of `offset` in the mapping, which lies below 2 GiB.
    fn addr(&self, offset: usize) -> u64 {
        self.base.as_ptr() as usize as u64 + offset as u64
    }

    /// The same as a compat-mode address.
    fn addr32(&self, offset: usize) -> u32 {
        u32::try_from(self.addr(offset)).unwrap_or(u32::MAX)
    }

    /// The code page's bytes.
    fn code(&self) -> Result<Vec<u8>, RoundTripError> {
        let mut page = vec![0xCC_u8; CODE_LEN];
        let mut put = |at: usize, bytes: &[u8]| -> Result<(), RoundTripError> {
            page.get_mut(at..at + bytes.len())
                .ok_or_else(|| RoundTripError::Assemble(format!("{at:#x} does not fit")))?
                .copy_from_slice(bytes);
            Ok(())
        };
        // What a translated block's exit stub does: `mov [slot], <stub>; jmp far cs:[ptr]`.
        let mut a = CodeAssembler::new(32)?;
        a.mov(dword_ptr(self.addr(SLOT)), self.addr32(STUB))?;
        a.jmp(fword_ptr(self.addr(GATE_POINTER)).cs())?;
        put(STUB, &a.assemble(self.addr(STUB))?)?;

        let mut a = CodeAssembler::new(32)?;
        a.retf()?;
        put(FAR_RETURN, &a.assemble(self.addr(FAR_RETURN))?)?;

        let mut a = CodeAssembler::new(32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.int3()?;
        a.dec(iced_x86::code_asm::ecx)?;
        a.jnz(top)?;
        a.retf()?;
        put(INT3_LOOP, &a.assemble(self.addr(INT3_LOOP))?)?;

        for (at, target, selector) in [
            (GATE_POINTER, TRAMPOLINE, HOST_CS64),
            (FAR_RETURN_POINTER, FAR_RETURN, HOST_CS32),
            (INT3_LOOP_POINTER, INT3_LOOP, HOST_CS32),
        ] {
            put(at, &self.addr32(target).to_le_bytes())?;
            put(at + 4, &selector.to_le_bytes())?;
        }
        put(TRAMPOLINE, &gate_trampoline())?;

        // The far calls: the upper halves of the legacy registers do not survive compat
        // mode, so everything kept across it lives in R12-R15 or on the host stack.
        let mut a = CodeAssembler::new(64)?;
        for r in [rbx, rbp, r12, r13, r14, r15] {
            a.push(r)?;
        }
        a.mov(r12, rsp)?;
        a.mov(r13, rdi)?;
        a.mov(r14, rdx)?;
        a.mov(r15, rcx)?;
        a.mov(rsp, rsi)?;
        let mut again = a.create_label();
        let mut done = a.create_label();
        a.test(r13, r13)?;
        a.jz(done)?;
        a.set_label(&mut again)?;
        a.mov(rcx, r15)?;
        a.call(fword_ptr(r14))?;
        a.dec(r13)?;
        a.jnz(again)?;
        a.set_label(&mut done)?;
        a.mov(rsp, r12)?;
        for r in [r15, r14, r13, r12, rbp, rbx] {
            a.pop(r)?;
        }
        a.ret()?;
        let caller = a.assemble(self.addr(CALLER))?;
        if CALLER + caller.len() > CODE_LEN {
            return Err(RoundTripError::Assemble("the caller does not fit".into()));
        }
        put(CALLER, &caller)?;
        Ok(page)
    }

    /// TSC cycles of `calls` far calls through the pointer at `pointer`, the callee seeing
    /// `ecx` in ECX.
    fn far_calls(&self, calls: u64, pointer: usize, ecx: u32) -> u64 {
        // SAFETY: CALLER holds the routine assembled in `code`, a SysV function that keeps
        // every callee-saved register (RBX and RBP on the host stack, R12-R15 untouched by
        // compat code) and returns with the host stack it was called with.
        let caller = unsafe {
            std::mem::transmute::<*const u8, Caller>(self.base.as_ptr().add(CALLER).cast_const())
        };
        let t0 = tsc();
        caller(
            calls,
            self.addr(STACK_TOP),
            self.addr(pointer),
            u64::from(ecx),
        );
        tsc().wrapping_sub(t0)
    }

    /// `n` INT3s in compat code, each answered by a handler that returns at once.
    fn signal(&self, n: u32) -> Result<u64, RoundTripError> {
        let previous = set_sigtrap(return_at_once).map_err(RoundTripError::Handler)?;
        let cycles = if n == 0 {
            0
        } else {
            self.far_calls(1, INT3_LOOP_POINTER, n)
        };
        restore_sigtrap(&previous).map_err(RoundTripError::Handler)?;
        Ok(cycles)
    }

    /// `n` empty gate exits, each entered again at once.
    fn gate(&self, n: u32) -> Result<u64, RoundTripError> {
        let mut cpu = HostCpu::new()?;
        let stub = self.addr32(STUB);
        let mut ctx = GuestContext {
            cs: ldt_selector(LDT_CODE),
            ss: ldt_selector(LDT_DATA),
            ds: ldt_selector(LDT_DATA),
            es: ldt_selector(LDT_DATA),
            eip: stub,
            esp: self.addr32(STACK_TOP),
            ..GuestContext::default()
        };
        let t0 = tsc();
        for _ in 0..n {
            ctx.eip = stub;
            let exit = cpu.run(&mut ctx);
            if exit.kind != HostExitKind::Gate {
                return Err(RoundTripError::NotGate(exit.kind));
            }
        }
        Ok(tsc().wrapping_sub(t0))
    }
}

impl Drop for RoundTrips {
    fn drop(&mut self) {
        super::set_gate_trampoline(0);
        let _ = ldt::clear_ldt_entry(LDT_CODE);
        let _ = ldt::clear_ldt_entry(LDT_DATA);
        // SAFETY: our own mapping; no code runs from it any more (`time` borrows self).
        unsafe { libc::munmap(self.base.as_ptr().cast(), MAPPING_LEN) };
    }
}

fn tsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// An anonymous read-write mapping of `len` bytes below 2 GiB.
fn map_low(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping where the kernel chooses.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))
}

extern "C" fn return_at_once(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Makes `handler` SIGTRAP's handler (on the interrupted stack, which the compat code's
/// is); returns the action it replaced.
fn set_sigtrap(
    handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) -> io::Result<libc::sigaction> {
    // SAFETY: sigaction is plain data; zeroed is a valid empty mask and no flags.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both point to live sigaction values; the handler follows the SA_SIGINFO
    // convention and touches nothing.
    if unsafe { libc::sigaction(libc::SIGTRAP, &sa, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
}

fn restore_sigtrap(old: &libc::sigaction) -> io::Result<()> {
    // SAFETY: `old` is the action sigaction returned.
    if unsafe { libc::sigaction(libc::SIGTRAP, old, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
