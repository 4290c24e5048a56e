//! CPUID faulting: with it on, a guest `CPUID` raises #GP (SIGSEGV, trapno 13) so the
//! monitor can answer with the VM's CPU model.

use std::io;

const ARCH_GET_CPUID: libc::c_long = 0x1011;
const ARCH_SET_CPUID: libc::c_long = 0x1012;

/// What went wrong switching CPUID faulting.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The CPU or kernel has no CPUID faulting; CPUID must be rewritten instead.
    #[error("CPUID faulting is not available on this host")]
    Unavailable,
    /// arch_prctl failed otherwise.
    #[error("arch_prctl(ARCH_SET_CPUID) failed")]
    Host(#[source] io::Error),
}

fn arch_prctl(code: libc::c_long, arg: libc::c_long) -> io::Result<libc::c_long> {
    // SAFETY: ARCH_GET_CPUID/ARCH_SET_CPUID take an integer argument and touch no memory.
    let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, code, arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Turns CPUID faulting on or off for the calling thread.
///
/// While it is on, a `CPUID` executed by the *monitor* on this thread also faults; the exit
/// handler emulates those transparently, but it costs a few microseconds each.
///
/// # Errors
/// [`CpuidError::Unavailable`] when the host cannot fault CPUID (ENODEV), else
/// [`CpuidError::Host`].
pub fn set_cpuid_faulting(on: bool) -> Result<(), CpuidError> {
    match arch_prctl(ARCH_SET_CPUID, if on { 0 } else { 1 }) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Err(CpuidError::Unavailable),
        Err(e) => Err(CpuidError::Host(e)),
    }
}

/// Enables CPUID faulting for the calling thread (the vCPU thread).
///
/// # Errors
/// As [`set_cpuid_faulting`].
pub fn enable_cpuid_faulting() -> Result<(), CpuidError> {
    set_cpuid_faulting(true)
}

/// Whether CPUID currently faults on the calling thread.
pub fn cpuid_faulting_enabled() -> bool {
    // ARCH_GET_CPUID returns 1 when CPUID is allowed, 0 when it faults.
    matches!(arch_prctl(ARCH_GET_CPUID, 0), Ok(0))
}

/// Whether this host can fault CPUID at all (probed by switching it on and back off).
pub fn cpuid_faulting_available() -> bool {
    let was_on = cpuid_faulting_enabled();
    match set_cpuid_faulting(true) {
        Ok(()) => set_cpuid_faulting(was_on).is_ok(),
        Err(_) => false,
    }
}
