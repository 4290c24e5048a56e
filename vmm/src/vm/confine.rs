//! Confinement of the monitor process once a guest runs (ARCHITECTURE.md §2, §9):
//! guest syscalls trap (the guest trap filter, installed before the first guest
//! instruction) and every monitor thread is held to the syscalls the run loop, the device
//! threads and the exit path need. Anything else kills the process: a monitor that makes
//! an unexpected syscall after the guest started is compromised or broken.

use seccompiler::apply_filter_all_threads;

use crate::hostcpu::seccomp::monitor_allowlist_program;
use crate::hostcpu::HostCpuError;

/// What the monitor may still do once the guest runs.
const MONITOR_SYSCALLS: &[libc::c_long] = &[
    // Serial console, statistics files, terminal mode.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_ioctl,
    libc::SYS_fcntl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // Memory: the shadow and code mappings, the allocator.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    // Segment mirrors.
    libc::SYS_modify_ldt,
    // The exit path, the vCPU timer and kicks.
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_timer_settime,
    libc::SYS_timer_gettime,
    libc::SYS_timer_delete,
    libc::SYS_tgkill,
    libc::SYS_gettid,
    libc::SYS_getpid,
    // Sleeping in HLT, locks between the vCPU and device threads.
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_restart_syscall,
    libc::SYS_getrandom,
    // A device thread that is still starting when the filter lands (its runtime set-up).
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    // Positional I/O on disk images: the IDE drives (devices::disk), and the kernel proxy's
    // file-backed disk and console services (the proxy crate's engine module) ...
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    // ... the control socket's thread (bound before the guest runs) ...
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    // ... and service nodes over loopback gRPC (a single-threaded client runtime).
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    // Ending.
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Holds every thread of the process to [`MONITOR_SYSCALLS`] (guest syscalls still trap).
///
/// # Errors
/// [`HostCpuError::Seccomp`] if the kernel refuses the filter.
pub fn install_monitor_allowlist() -> Result<(), HostCpuError> {
    // Syscall numbers are small and non-negative: none is lost.
    let list: Vec<u32> = MONITOR_SYSCALLS
        .iter()
        .filter_map(|&n| u32::try_from(n).ok())
        .collect();
    let program = monitor_allowlist_program(&list)?;
    apply_filter_all_threads(&program).map_err(HostCpuError::Seccomp)
}
