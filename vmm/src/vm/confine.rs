//! The seccomp wall (ARCHITECTURE.md §2, §9): once the guest runs, every monitor thread is
//! held to the syscalls the run loop and exit path need, plus what each configured part
//! needs ([`SyscallNeeds`]); guest syscalls keep trapping (the guest trap filter, installed
//! before the first guest instruction).
//!
//! Every file the VM uses is opened and every socket bound before the guest runs, so no
//! configuration can open files afterwards, except the kernel proxy's services, which
//! open theirs at their first call (and a policy replaced through the control socket can
//! name new ones). No thread can be started afterwards (`clone` is on no list).
//!
//! A refused syscall does not run: the exit handler writes one line naming it and the VM
//! stops ([`RunOutcome::SyscallRefused`] on the vCPU thread; from any other thread the
//! process exits with [`SYSCALL_REFUSED_EXIT_STATUS`]). The lists below come from `strace
//! -f` of real runs after the wall is up, one configuration at a time.
//!
//! [`RunOutcome::SyscallRefused`]: super::RunOutcome::SyscallRefused

use std::fmt;

use crate::hostcpu::seccomp::{
    install_monitor_allowlist, syscall_name, AllowRule, SYSCALL_REFUSED_EXIT_STATUS,
};
use crate::hostcpu::HostCpuError;

use super::Vm;

/// The parts of a run that need syscalls beyond the run loop's once the guest runs. The
/// engine sets what it owns (the disks); the program around it sets the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyscallNeeds {
    /// IDE disk images are attached (reads).
    pub disk_reads: bool,
    /// A writable IDE disk image is attached (writes and flushes).
    pub disk_writes: bool,
    /// Standard input is a terminal in raw mode, whose settings are restored at the end.
    pub terminal: bool,
    /// The gdb remote stub serves a TCP connection.
    pub gdb_stub: bool,
    /// The kernel proxy serves guest entry points with its services.
    pub kernel_proxy: bool,
    /// The kernel proxy's control socket is served.
    pub control_socket: bool,
    /// The kernel proxy may reach services on service nodes (gRPC over loopback).
    pub service_nodes: bool,
}

impl SyscallNeeds {
    /// What either `self` or `other` needs.
    pub fn union(self, other: Self) -> Self {
        Self {
            disk_reads: self.disk_reads || other.disk_reads,
            disk_writes: self.disk_writes || other.disk_writes,
            terminal: self.terminal || other.terminal,
            gdb_stub: self.gdb_stub || other.gdb_stub,
            kernel_proxy: self.kernel_proxy || other.kernel_proxy,
            control_socket: self.control_socket || other.control_socket,
            service_nodes: self.service_nodes || other.service_nodes,
        }
    }

    /// The parts these needs name, the run loop first (and the checks of a debug build).
    pub fn parts(&self) -> Vec<Part> {
        let mut parts = vec![Part::RunLoop];
        if cfg!(debug_assertions) {
            parts.push(Part::DebugBuild);
        }
        for (on, part) in [
            (self.disk_reads, Part::DiskReads),
            (self.disk_writes, Part::DiskWrites),
            (self.terminal, Part::Terminal),
            (self.gdb_stub, Part::GdbStub),
            (self.kernel_proxy, Part::KernelProxy),
            (self.control_socket, Part::ControlSocket),
            (self.service_nodes, Part::ServiceNodes),
        ] {
            if on {
                parts.push(part);
            }
        }
        parts
    }
}

/// A part of the monitor with syscalls of its own after start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The run loop and exit path, on every run.
    RunLoop,
    /// The checks a debug build of the monitor makes.
    DebugBuild,
    /// Disk image reads.
    DiskReads,
    /// Disk image writes.
    DiskWrites,
    /// The terminal in raw mode.
    Terminal,
    /// The gdb stub.
    GdbStub,
    /// The kernel proxy's services.
    KernelProxy,
    /// The kernel proxy's control socket.
    ControlSocket,
    /// Service nodes.
    ServiceNodes,
}

impl Part {
    /// Its name in the listing.
    pub fn name(self) -> &'static str {
        match self {
            Part::RunLoop => "run loop",
            Part::DebugBuild => "debug build",
            Part::DiskReads => "disk reads",
            Part::DiskWrites => "disk writes",
            Part::Terminal => "terminal",
            Part::GdbStub => "gdb stub",
            Part::KernelProxy => "kernel proxy",
            Part::ControlSocket => "control socket",
            Part::ServiceNodes => "service nodes",
        }
    }

    /// What it needs.
    fn needs(self) -> &'static [Need] {
        match self {
            Part::RunLoop => RUN_LOOP,
            Part::DebugBuild => DEBUG_BUILD,
            Part::DiskReads => DISK_READS,
            Part::DiskWrites => DISK_WRITES,
            Part::Terminal => TERMINAL,
            Part::GdbStub => GDB_STUB,
            Part::KernelProxy => KERNEL_PROXY,
            Part::ControlSocket => CONTROL_SOCKET,
            Part::ServiceNodes => SERVICE_NODES,
        }
    }
}

/// One syscall a part needs, maybe only with some values of one argument.
#[derive(Debug)]
struct Need {
    nr: libc::c_long,
    only: Option<Only>,
}

/// Values of one argument, with their names.
#[derive(Debug, Clone, Copy)]
struct Only {
    index: u8,
    arg: &'static str,
    values: &'static [(u32, &'static str)],
}

const fn any(nr: libc::c_long) -> Need {
    Need { nr, only: None }
}

const fn only(nr: libc::c_long, only: Only) -> Need {
    Need {
        nr,
        only: Some(only),
    }
}

// Argument values (linux/prctl.h, asm/prctl.h, asm-generic/ioctls.h).
const PR_SET_NAME: u32 = 15;
const F_GETFD: u32 = 1;
const ARCH_SET_CPUID: u32 = 0x1012;
const TCGETS: u32 = 0x5401;
const TCSETS: u32 = 0x5402;
const FIONBIO: u32 = 0x5421;

/// The run loop and exit path, on every thread of every run.
const RUN_LOOP: &[Need] = &[
    // Serial input (the stdin reader thread), serial output, messages, the statistics
    // files written after the run (created before it); closing files and memfds when the
    // VM is dropped.
    any(libc::SYS_read),
    any(libc::SYS_write),
    any(libc::SYS_close),
    // The allocator, shadow mappings of guest pages, the stacks of threads that end.
    any(libc::SYS_brk),
    any(libc::SYS_mmap),
    any(libc::SYS_munmap),
    any(libc::SYS_mprotect),
    any(libc::SYS_madvise),
    any(libc::SYS_mremap),
    // Segment mirrors.
    any(libc::SYS_modify_ldt),
    // The exit path: returning from exit signals, the vCPU timer, kicks; a monitor fault
    // re-raised with its default action; threads ending (their masks and signal stacks).
    any(libc::SYS_rt_sigreturn),
    any(libc::SYS_rt_sigprocmask),
    any(libc::SYS_rt_sigaction),
    any(libc::SYS_sigaltstack),
    any(libc::SYS_timer_settime),
    any(libc::SYS_timer_delete),
    any(libc::SYS_getpid),
    any(libc::SYS_gettid),
    any(libc::SYS_tgkill),
    // A CPUID the monitor itself executes while CPUID faults: the exit handler switches
    // faulting off around its own CPUID.
    only(
        libc::SYS_arch_prctl,
        Only {
            index: 0,
            arg: "code",
            values: &[(ARCH_SET_CPUID, "ARCH_SET_CPUID")],
        },
    ),
    // Waiting in HLT, locks and condition variables between threads.
    any(libc::SYS_clock_nanosleep),
    any(libc::SYS_futex),
    // Threads started just before the wall finish their start-up under it (their name,
    // rseq and robust list); a thread's first allocation makes its malloc arena, which
    // asks for the CPU count.
    any(libc::SYS_rseq),
    any(libc::SYS_set_robust_list),
    only(
        libc::SYS_prctl,
        Only {
            index: 0,
            arg: "option",
            values: &[(PR_SET_NAME, "PR_SET_NAME")],
        },
    ),
    any(libc::SYS_sched_getaffinity),
    any(libc::SYS_exit),
    any(libc::SYS_exit_group),
];

/// A debug build's standard library checks that a descriptor is open before it closes it.
const DEBUG_BUILD: &[Need] = &[only(
    libc::SYS_fcntl,
    Only {
        index: 1,
        arg: "cmd",
        values: &[(F_GETFD, "F_GETFD")],
    },
)];

/// Sector reads from the disk images (opened before the guest runs).
const DISK_READS: &[Need] = &[any(libc::SYS_pread64)];

/// Sector writes and FLUSH CACHE on a writable disk image.
const DISK_WRITES: &[Need] = &[any(libc::SYS_pwrite64), any(libc::SYS_fdatasync)];

/// The terminal's settings put back (the end of the run, Ctrl-A x, a terminating signal).
const TERMINAL: &[Need] = &[only(
    libc::SYS_ioctl,
    Only {
        index: 1,
        arg: "request",
        values: &[(TCGETS, "TCGETS"), (TCSETS, "TCSETS")],
    },
)];

/// The stub's one gdb connection (the listener is bound before the guest runs).
const GDB_STUB: &[Need] = &[
    any(libc::SYS_accept4),
    any(libc::SYS_setsockopt),
    any(libc::SYS_recvfrom),
    any(libc::SYS_sendto),
    // gdbstub peeks for Ctrl-C with a non-blocking read.
    only(
        libc::SYS_ioctl,
        Only {
            index: 1,
            arg: "request",
            values: &[(FIONBIO, "FIONBIO")],
        },
    ),
];

/// The kernel proxy's services: the file-backed ones (block `file` and `cow`, tty
/// `logfile`, the security log) open their files at their first call and again after
/// one failed, probe them with a stat, and read and write them positionally.
const KERNEL_PROXY: &[Need] = &[
    any(libc::SYS_openat),
    any(libc::SYS_statx),
    any(libc::SYS_pread64),
    any(libc::SYS_pwrite64),
    any(libc::SYS_fdatasync),
];

/// The control socket's clients (the socket is bound before the guest runs); replies go
/// out through a clone of the stream.
const CONTROL_SOCKET: &[Need] = &[
    any(libc::SYS_accept4),
    any(libc::SYS_setsockopt),
    any(libc::SYS_fcntl),
    any(libc::SYS_recvfrom),
    any(libc::SYS_sendto),
];

/// gRPC to service nodes: a TCP connection per service, driven by a single-threaded
/// runtime on the vCPU thread.
const SERVICE_NODES: &[Need] = &[
    any(libc::SYS_socket),
    any(libc::SYS_connect),
    any(libc::SYS_getsockopt),
    any(libc::SYS_setsockopt),
    any(libc::SYS_fcntl),
    any(libc::SYS_epoll_create1),
    any(libc::SYS_epoll_ctl),
    any(libc::SYS_epoll_wait),
    any(libc::SYS_eventfd2),
    any(libc::SYS_recvfrom),
    any(libc::SYS_sendto),
    any(libc::SYS_writev),
];

/// One syscall of a [`MonitorAllowlist`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedSyscall {
    /// The 64-bit syscall number.
    pub nr: u32,
    /// Its name.
    pub name: &'static str,
    /// When set, the syscall is allowed only with these values of one argument.
    pub only: Option<AllowedValues>,
    /// The parts that need it.
    pub parts: Vec<Part>,
}

/// The values one argument of an [`AllowedSyscall`] may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedValues {
    /// Which argument (0 to 5).
    pub index: u8,
    /// Its name.
    pub arg: &'static str,
    /// The values, with their names.
    pub values: Vec<(u32, &'static str)>,
}

/// The syscalls every monitor thread is held to once the guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorAllowlist {
    needs: SyscallNeeds,
    entries: Vec<AllowedSyscall>,
}

impl MonitorAllowlist {
    /// The allowlist for a run with `needs`: the run loop's syscalls and those of each
    /// part named, ordered by number. A syscall two parts need with different argument
    /// values allows the values of both; one any part needs without condition has none.
    pub fn for_needs(needs: SyscallNeeds) -> Self {
        let mut entries: Vec<AllowedSyscall> = Vec::new();
        for part in needs.parts() {
            for need in part.needs() {
                // Syscall numbers are small and non-negative; the tables name real ones.
                let Ok(nr) = u32::try_from(need.nr) else {
                    continue;
                };
                let only = need.only.map(|o| AllowedValues {
                    index: o.index,
                    arg: o.arg,
                    values: o.values.to_vec(),
                });
                match entries.iter_mut().find(|e| e.nr == nr) {
                    Some(e) => {
                        if !e.parts.contains(&part) {
                            e.parts.push(part);
                        }
                        e.only = match (e.only.take(), only) {
                            (Some(mut have), Some(more)) if have.index == more.index => {
                                for v in more.values {
                                    if !have.values.contains(&v) {
                                        have.values.push(v);
                                    }
                                }
                                Some(have)
                            }
                            _ => None,
                        };
                    }
                    None => entries.push(AllowedSyscall {
                        nr,
                        name: syscall_name(nr).unwrap_or("?"),
                        only,
                        parts: vec![part],
                    }),
                }
            }
        }
        entries.sort_by_key(|e| e.nr);
        Self { needs, entries }
    }

    /// What it was made for.
    pub fn needs(&self) -> SyscallNeeds {
        self.needs
    }

    /// The syscalls, by number.
    pub fn entries(&self) -> &[AllowedSyscall] {
        &self.entries
    }

    /// Whether the syscall called `name` is on the list (with or without conditions).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.name == name)
    }

    /// The seccomp rules.
    pub fn rules(&self) -> Vec<AllowRule> {
        self.entries
            .iter()
            .map(|e| match &e.only {
                None => AllowRule::any(e.nr),
                Some(o) => {
                    let values: Vec<u32> = o.values.iter().map(|&(v, _)| v).collect();
                    AllowRule::only(e.nr, o.index, &values)
                }
            })
            .collect()
    }

    /// Holds every thread of the process to the list for good; a syscall off it stops
    /// the VM (see the module). Guest syscalls still trap.
    ///
    /// # Errors
    /// [`HostCpuError`] if the filter or its signal handler cannot be installed.
    pub fn install(&self) -> Result<(), HostCpuError> {
        install_monitor_allowlist(&self.rules())
    }
}

impl fmt::Display for MonitorAllowlist {
    /// One line per syscall: number, name, the argument values it is limited to, and the
    /// parts that need it; a heading first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "once the guest runs, every monitor thread is held to these {} syscalls; any \
             other stops the VM (exit status {SYSCALL_REFUSED_EXIT_STATUS})",
            self.entries.len()
        )?;
        let only: Vec<String> = self
            .entries
            .iter()
            .map(|e| {
                e.only.as_ref().map_or(String::new(), |o| {
                    let names: Vec<&str> = o.values.iter().map(|&(_, n)| n).collect();
                    format!("{} {}", o.arg, names.join(" | "))
                })
            })
            .collect();
        let width = only.iter().map(String::len).max().unwrap_or(0).max(9) + 2;
        writeln!(
            f,
            "{:>4}  {:<18}{:<width$}needed by",
            "nr", "syscall", "only with"
        )?;
        for (e, only) in self.entries.iter().zip(&only) {
            let parts: Vec<&str> = e.parts.iter().map(|p| p.name()).collect();
            writeln!(
                f,
                "{:>4}  {:<18}{only:<width$}{}",
                e.nr,
                e.name,
                parts.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Vm {
    /// Adds what the parts around the engine need once the guest runs (the terminal, the
    /// gdb stub, the kernel proxy ...) to what the engine's own parts need.
    pub fn add_syscall_needs(&mut self, needs: SyscallNeeds) {
        self.syscall_needs = self.syscall_needs.union(needs);
    }

    /// The allowlist [`Vm::run`] holds every monitor thread to once the guest runs.
    pub fn monitor_allowlist(&self) -> MonitorAllowlist {
        MonitorAllowlist::for_needs(self.syscall_needs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(needs: SyscallNeeds) -> Vec<&'static str> {
        MonitorAllowlist::for_needs(needs)
            .entries()
            .iter()
            .map(|e| e.name)
            .collect()
    }

    #[test]
    fn a_plain_run_opens_nothing_and_talks_to_nobody() {
        let plain = names(SyscallNeeds::default());
        for needed in [
            "read",
            "write",
            "mmap",
            "modify_ldt",
            "rt_sigreturn",
            "futex",
        ] {
            assert!(plain.contains(&needed), "{needed} missing: {plain:?}");
        }
        for never in [
            "openat", "open", "socket", "connect", "accept4", "execve", "clone", "clone3", "fork",
            "ptrace", "ioctl", "pread64", "pwrite64", "kill", "setuid",
        ] {
            assert!(!plain.contains(&never), "{never} on the plain list");
        }
    }

    #[test]
    fn each_part_adds_its_own_syscalls() {
        let plain = names(SyscallNeeds::default());
        let with = |needs: SyscallNeeds| {
            let all = names(needs);
            let mut extra: Vec<&str> = all.into_iter().filter(|n| !plain.contains(n)).collect();
            extra.sort_unstable();
            extra
        };
        let ro = SyscallNeeds {
            disk_reads: true,
            ..Default::default()
        };
        assert_eq!(with(ro), ["pread64"]);
        let rw = SyscallNeeds {
            disk_writes: true,
            ..ro
        };
        assert_eq!(with(rw), ["fdatasync", "pread64", "pwrite64"]);
        let api = SyscallNeeds {
            kernel_proxy: true,
            control_socket: true,
            ..Default::default()
        };
        let api = with(api);
        for n in ["accept4", "openat", "recvfrom", "sendto"] {
            assert!(api.contains(&n), "{n} missing: {api:?}");
        }
        assert!(!api.contains(&"socket") && !api.contains(&"connect"));
        let nodes = with(SyscallNeeds {
            service_nodes: true,
            ..Default::default()
        });
        assert!(nodes.contains(&"socket") && nodes.contains(&"connect"));
    }

    #[test]
    fn argument_limits_merge_and_are_listed() {
        let list = MonitorAllowlist::for_needs(SyscallNeeds {
            terminal: true,
            gdb_stub: true,
            ..Default::default()
        });
        let ioctl = list.entries().iter().find(|e| e.name == "ioctl").unwrap();
        let only = ioctl.only.as_ref().unwrap();
        assert_eq!(only.index, 1);
        assert_eq!(
            only.values,
            [(TCGETS, "TCGETS"), (TCSETS, "TCSETS"), (FIONBIO, "FIONBIO")]
        );
        assert_eq!(ioctl.parts, [Part::Terminal, Part::GdbStub]);
        let text = list.to_string();
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == [
                        "16",
                        "ioctl",
                        "request",
                        "TCGETS",
                        "|",
                        "TCSETS",
                        "|",
                        "FIONBIO",
                        "terminal,",
                        "gdb",
                        "stub"
                    ]),
            "{text}"
        );
        // A part that needs a syscall without condition lifts the condition.
        let both = MonitorAllowlist::for_needs(SyscallNeeds {
            disk_reads: true,
            kernel_proxy: true,
            ..Default::default()
        });
        let pread = both.entries().iter().find(|e| e.name == "pread64").unwrap();
        assert_eq!(pread.parts, [Part::DiskReads, Part::KernelProxy]);
        assert!(both.rules().len() == both.entries().len());
    }

    #[test]
    fn argument_values_are_the_kernels() {
        assert_eq!(u64::from(TCGETS), libc::TCGETS);
        assert_eq!(u64::from(TCSETS), libc::TCSETS);
        assert_eq!(u64::from(FIONBIO), libc::FIONBIO);
        assert_eq!(i32::try_from(PR_SET_NAME), Ok(libc::PR_SET_NAME));
        assert_eq!(i32::try_from(F_GETFD), Ok(libc::F_GETFD));
    }

    #[test]
    fn a_refusal_ends_the_run_with_its_own_status() {
        let refused =
            super::super::RunOutcome::SyscallRefused(crate::hostcpu::seccomp::RefusedSyscall {
                nr: 41,
                rip: 1 << 40,
            });
        assert_eq!(refused.exit_code(), SYSCALL_REFUSED_EXIT_STATUS);
        assert_eq!(SYSCALL_REFUSED_EXIT_STATUS, 10);
    }

    #[test]
    fn every_list_fits_one_filter() {
        let all = SyscallNeeds {
            disk_reads: true,
            disk_writes: true,
            terminal: true,
            gdb_stub: true,
            kernel_proxy: true,
            control_socket: true,
            service_nodes: true,
        };
        let list = MonitorAllowlist::for_needs(all);
        assert!(crate::hostcpu::seccomp::monitor_allowlist_program(&list.rules()).is_ok());
        assert!(list.entries().iter().all(|e| e.name != "?"));
    }
}
