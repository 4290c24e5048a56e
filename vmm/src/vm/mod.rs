//! A virtual machine: the run loop that enters the guest natively and handles every exit
//! (ARCHITECTURE.md §3), composed of parts that each own their state:
//!
//! - the CPU ([`cpu`]): vCPU state, host context, segment mirrors, single steps and
//!   instruction breakpoints;
//! - memory and paging ([`guest_memory`]): guest RAM, the linear space, shadow paging
//!   ([`shadow_backend`]);
//! - code ([`code`]): scan-before-execute, the patch table, fetching and decoding guest
//!   code, the entry hook;
//! - the platform ([`platform`]): devices, clock, timer deadline;
//! - exit statistics ([`stats`]).
//!
//! An exit goes through three stages, each named once: the host's raw exit
//! ([`crate::hostcpu::HostExit`], decoded from the signal), its classification into what
//! it means (`classify.rs`), and its handling (`handle.rs`; what the guest must see goes on
//! to [`crate::vcpu::exit::handle`]). Host page faults are handled in `page_fault.rs`
//! (hidden fault filled, true fault injected, code fetch scanned, write mediated); trap
//! bytes in `trap.rs`; what emulation changed is applied on the host in `effects.rs`.

mod breakpoints;
mod classify;
pub mod code;
pub mod confine;
pub mod context;
pub mod cpu;
pub mod data_breakpoints;
pub mod debug;
mod effects;
pub mod guest_bus;
pub mod guest_memory;
mod handle;
pub mod mirrors;
mod page_fault;
pub mod platform;
pub mod reloads;
pub mod shadow_backend;
mod smp;
pub mod stats;
pub mod stop;
pub mod tc;
mod translate;
mod trap;

use std::io::Write;

use crate::devices::{lock, BusError, Disk, DiskError, ImageFile, Unit};
use crate::firmware::{write_firmware, FirmwareError, MachineLayout};
use crate::hostcpu::timer::{Kicker, TimerError, VcpuTimer};
use crate::hostcpu::{self, ldt::LdtError, HostCpu, HostCpuError};
use crate::loader::linux::{self, LinuxBoot, LinuxLoadError};
use crate::loader::multiboot::{command_line, load_multiboot, BootInfo, LoadError};
use crate::memory::{GuestRam, MemoryError};
use crate::vcpu::exit::GuestExit;
use crate::vcpu::VcpuState;
use crate::x86::eflags;

use code::{Code, CodeError};
use cpu::{Cpu, ALL_SEGMENTS};
use guest_memory::GuestMemory;
use platform::Platform;
use stats::Stats;

pub use crate::hostcpu::seccomp::{RefusedSyscall, SYSCALL_REFUSED_EXIT_STATUS};
pub use code::{EntryHook, HookError};
pub use confine::{MonitorAllowlist, SyscallNeeds};
pub use platform::spawn_stdin_reader;
pub use stop::{StopControl, STOPPED_EXIT_STATUS};
pub use translate::ExecMode;

/// Default guest RAM size.
/// The host exit status of a run the guest ended by resetting the machine (even, so never
/// taken for a debug-exit status, and distinct from the other statuses `vmm run` gives).
pub const RESET_EXIT_STATUS: i32 = 6;

pub const DEFAULT_MEM_SIZE: u64 = 128 << 20;

/// What to run.
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// The kernel image: Multiboot v1, or a Linux bzImage (told apart by content).
    pub kernel: Vec<u8>,
    /// The kernel's path as the user gave it: it names the kernel in messages and is the
    /// first word of its command line, as QEMU and GRUB pass it.
    pub kernel_path: String,
    /// The kernel's arguments (`--append`): a Multiboot kernel's command line after the
    /// path, a Linux kernel's whole command line.
    pub append: String,
    /// A Linux initrd (`--initrd`): its path, for messages, and its bytes.
    pub initrd: Option<(String, Vec<u8>)>,
    /// Where the guest's serial output goes.
    pub serial_out: Box<dyn Write + Send>,
    /// Disk images for the primary IDE channel: the master's, then the slave's.
    pub disks: [Option<DiskImage>; 2],
    /// How guest code is executed.
    pub exec: ExecMode,
    /// Processors (`--smp`): 1 to [`crate::firmware::MAX_CPUS`]; the others wait for
    /// INIT and start-up IPIs from the first.
    pub cpus: u8,
}

/// A disk image file a drive is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    /// The raw image.
    pub path: std::path::PathBuf,
    /// Refuse the guest's writes (also the case when the file is not writable).
    pub read_only: bool,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("mem_size", &self.mem_size)
            .field("kernel_path", &self.kernel_path)
            .field("append", &self.append)
            .field("disks", &self.disks)
            .field("exec", &self.exec)
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

/// Why a VM could not be built or run (monitor-side or user-input failures; guest
/// misbehaviour is a [`RunOutcome`] instead).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Guest RAM or the linear space could not be set up.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// The kernel image was refused.
    #[error("cannot load kernel {name}")]
    Load {
        /// The kernel's name.
        name: String,
        /// What was wrong with it.
        #[source]
        source: LoadError,
    },
    /// The Linux kernel, its command line or its initrd was refused; `name` is the file
    /// at fault (the initrd's when it does not fit).
    #[error("cannot load {name}")]
    LinuxLoad {
        /// The file's name.
        name: String,
        /// What was wrong.
        #[source]
        source: LinuxLoadError,
    },
    /// An initrd was given for a kernel that is not a Linux bzImage.
    #[error("--initrd {name}: only a Linux bzImage kernel takes an initrd")]
    InitrdWithoutLinux {
        /// The initrd's name.
        name: String,
    },
    /// The host CPU cannot run guests on this thread.
    #[error("host CPU set-up")]
    HostCpu(#[from] HostCpuError),
    /// A disk image was refused.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The firmware tables could not describe the machine (a monitor bug).
    #[error("firmware tables")]
    Firmware(#[from] FirmwareError),
    /// The device map is inconsistent (a monitor bug).
    #[error("device map")]
    Bus(#[from] BusError),
    /// A segment mirror could not be installed.
    #[error("installing a segment mirror in the host LDT")]
    Ldt(#[from] LdtError),
    /// The vCPU timer failed.
    #[error("vCPU timer")]
    Timer(#[from] TimerError),
    /// A code page could not be scanned or remapped.
    #[error("scan-before-execute")]
    Code(#[from] CodeError),
    /// The translation cache could not be set up.
    #[error("translation cache")]
    Translation(#[from] tc::TcError),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest wrote to the debug-exit port: the host exit status is `(value << 1) | 1`.
    DebugExit {
        /// The host exit status (low 8 bits are what the process can report).
        status: u32,
    },
    /// The guest stopped in an orderly way without the debug-exit port (halted with
    /// interrupts disabled).
    Shutdown {
        /// Why.
        reason: String,
    },
    /// The guest reset the machine (i8042 pulse, port 0xCF9 or 0x92): the run ends, as
    /// QEMU's does with `-no-reboot`.
    Reset,
    /// The guest broke itself (triple fault) or tried something the monitor stops
    /// (an escape attempt, an unsupported feature); `dump` is the register dump.
    GuestFailure {
        /// What happened.
        reason: String,
        /// The vCPU registers at that point.
        dump: String,
    },
    /// A stop request ([`Vm::stop_handle`], the control socket's `stop`) ended the run.
    Stopped,
    /// The seccomp wall refused a syscall the monitor made ([`confine`]); the exit handler
    /// has already written this diagnostic to stderr.
    SyscallRefused(RefusedSyscall),
}

impl RunOutcome {
    /// The process exit status this outcome maps to: the debug-exit status as QEMU's
    /// isa-debug-exit gives it, 0 for an orderly shutdown, 4 for a guest failure, 6 for a
    /// reset, [`STOPPED_EXIT_STATUS`] for a stop request, [`SYSCALL_REFUSED_EXIT_STATUS`]
    /// for a refused monitor syscall (all even, so never confused with a debug-exit
    /// status).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunOutcome::DebugExit { status } => i32::from(status.to_le_bytes()[0]),
            RunOutcome::Shutdown { .. } => 0,
            RunOutcome::Reset => RESET_EXIT_STATUS,
            RunOutcome::GuestFailure { .. } => 4,
            RunOutcome::Stopped => STOPPED_EXIT_STATUS,
            RunOutcome::SyscallRefused(_) => SYSCALL_REFUSED_EXIT_STATUS,
        }
    }
}

/// What the loader put in memory, by boot protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// A Multiboot v1 kernel.
    Multiboot(BootInfo),
    /// A Linux bzImage, 32-bit boot protocol.
    Linux(LinuxBoot),
}

/// A virtual machine, composed of its parts.
pub struct Vm {
    /// The running vCPU and what the monitor keeps beside it.
    cpu: Cpu,
    /// Every vCPU's state while it does not run, and how the vCPUs share the thread
    /// ([`smp`]).
    vcpus: smp::Vcpus,
    /// Guest RAM, the linear space and shadow paging.
    mem: GuestMemory,
    /// Guest code: scan state, patches, the entry hook.
    code: Code,
    /// Devices and time.
    platform: Platform,
    /// Exit accounting.
    stats: Stats,
    boot: Boot,
    cpuid_faulting: bool,
    /// Print every exit to stderr (`VMM_TRACE=1`).
    trace: bool,
    /// Print vCPU switches and IPI signals to stderr (`VMM_TRACE_SMP=1`).
    trace_smp: bool,
    /// The attached debugger ([`debug`]).
    debug: Option<debug::DebugSession>,
    /// Translate mode's state (`None` in patch mode).
    tc: Option<translate::Translation>,
    /// Ends the run when another thread asks ([`stop`]).
    stop: StopControl,
    /// What the monitor may still do once the guest runs ([`confine`]).
    syscall_needs: SyscallNeeds,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("mem_size", &self.mem.ram.size())
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

/// What the kernel parameter `reservetop` asks an i386 Linux kernel to leave free at the
/// top of its address space: the monitor window of translate mode. Linux keeps this
/// parameter for monitors that live there (VMware's and Xen's did); without it the
/// kernel's fixmap, entry stacks, GDT and IDT land in the window and every access to
/// them is performed by the monitor.
const LINUX_RESERVETOP: &str = "reservetop=64M";
const _: () = assert!(tc::WINDOW_SIZE == 64 << 20);

/// A Linux kernel's command line: the user's, plus `reservetop` in translate mode unless
/// the user gave one.
fn linux_command_line(append: &str, exec: ExecMode) -> String {
    if exec != ExecMode::Translate
        || append
            .split_whitespace()
            .any(|w| w.starts_with("reservetop="))
    {
        return append.to_string();
    }
    if append.trim().is_empty() {
        LINUX_RESERVETOP.to_string()
    } else {
        format!("{append} {LINUX_RESERVETOP}")
    }
}

/// Loads `config`'s kernel into `ram` by the protocol its content names (a bzImage's
/// "HdrS" header, else Multiboot) and gives the vCPU state it starts with.
fn load_kernel(ram: &mut [u8], config: &VmConfig) -> Result<(Boot, VcpuState), VmError> {
    if !linux::is_bzimage(&config.kernel) {
        if let Some((name, _)) = &config.initrd {
            return Err(VmError::InitrdWithoutLinux { name: name.clone() });
        }
        let cmdline = command_line(&config.kernel_path, &config.append);
        let boot =
            load_multiboot(ram, &config.kernel, &cmdline).map_err(|source| VmError::Load {
                name: config.kernel_path.clone(),
                source,
            })?;
        let state = VcpuState::multiboot_entry(boot.entry, boot.eax, boot.ebx);
        return Ok((Boot::Multiboot(boot), state));
    }
    let initrd = config.initrd.as_ref().map(|(_, bytes)| bytes.as_slice());
    let append = linux_command_line(&config.append, config.exec);
    let boot = linux::load_linux(ram, &config.kernel, &append, initrd).map_err(|source| {
        let name = match &config.initrd {
            Some((name, _)) if source.is_initrd() => format!("initrd {name}"),
            _ => format!("kernel {}", config.kernel_path),
        };
        VmError::LinuxLoad { name, source }
    })?;
    let state = VcpuState::linux_entry(
        boot.entry,
        boot.boot_params,
        boot.gdt,
        linux::BOOT_CS,
        linux::BOOT_DS,
    );
    Ok((Boot::Linux(boot), state))
}

impl Vm {
    /// Builds the machine: guest RAM with the firmware data a BIOS leaves (BDA, MP and
    /// ACPI tables), the reserved linear space with RAM mapped 1:1 (paging is off at boot)
    /// without execute permission, the devices, and the kernel loaded as Multiboot says
    /// with the command line "path arguments". The firmware goes first, as on a PC: the
    /// loader keeps out of the memory it reserves.
    ///
    /// # Errors
    /// [`VmError`] naming the input that was refused (memory size, kernel image).
    pub fn new(config: VmConfig) -> Result<Self, VmError> {
        // Opened and checked now: once the guest runs, the monitor may only read and write.
        let mut disks = Vec::new();
        let mut syscall_needs = SyscallNeeds::default();
        for (unit, image) in [Unit::Master, Unit::Slave].into_iter().zip(&config.disks) {
            if let Some(d) = image {
                let file = ImageFile::open(&d.path, d.read_only)?;
                syscall_needs.disk_reads = true;
                syscall_needs.disk_writes |= !file.is_read_only();
                disks.push((unit, file));
            }
        }
        let mut ram = GuestRam::new(config.mem_size)?;
        let layout = MachineLayout {
            cpus: config.cpus,
            ..MachineLayout::pc(ram.size())
        };
        write_firmware(ram.as_mut_slice(), &layout)?;
        let (boot, state) = load_kernel(ram.as_mut_slice(), &config)?;
        // Probed here: CPUID faults in this process once the guest runs.
        let mut mem = GuestMemory::new(ram, shadow_backend::host_has_exec_only())?;
        let tc = match config.exec {
            ExecMode::Translate => Some(translate::Translation::new(&mut mem)?),
            ExecMode::Patch => None,
        };
        let platform = Platform::new(config.serial_out, &layout, state.msr.apic_base)?;
        for (unit, disk) in disks {
            lock(&platform.ide).attach(unit, Box::new(disk));
        }
        Ok(Self {
            vcpus: smp::Vcpus::new(&state, layout.cpus),
            cpu: Cpu::new(state),
            mem,
            code: Code::default(),
            platform,
            stats: Stats::default(),
            boot,
            cpuid_faulting: false,
            trace: std::env::var_os("VMM_TRACE").is_some_and(|v| v == "1"),
            trace_smp: std::env::var_os("VMM_TRACE_SMP").is_some_and(|v| v == "1"),
            debug: None,
            tc,
            stop: StopControl::default(),
            syscall_needs,
        })
    }

    /// Attaches a part that serves guest entry points (the kernel proxy): every entry
    /// point it serves gets the trap now, before the guest runs, and keeps it across
    /// rescans of its page.
    ///
    /// # Errors
    /// What the hook reports, when an entry point cannot be pinned.
    pub fn attach_entry_hook(&mut self, mut hook: Box<dyn EntryHook>) -> Result<(), HookError> {
        hook.pin(&mut self.code.pages.patches, &self.mem.ram)?;
        self.code.hook = Some(hook);
        Ok(())
    }

    /// Where the kernel was loaded and where it starts.
    pub fn boot_info(&self) -> &Boot {
        &self.boot
    }

    /// The exit statistics so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Named counters beside the exit table (`--stats`).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.code.pages.stats;
        let p = self.mem.paging.stats;
        let ports = self.platform.ports.stats();
        let mmio = &self.platform.mmio;
        let unknown: u64 = ports
            .values()
            .map(|p| p.unhandled_reads + p.unhandled_writes)
            .sum();
        let ide = lock(&self.platform.ide).stats();
        let unknown_mmio: u64 = mmio
            .unknown()
            .values()
            .map(|m| m.unhandled_reads + m.unhandled_writes)
            .sum();
        let mut counters = vec![
            ("pages_scanned", c.pages_scanned),
            ("rescans", c.rescans),
            ("code_pages_parked", c.parks),
            ("code_pages_rearmed", c.rearms),
            ("code_size_switches", c.size_switches),
            ("fpu_trap_switches", c.conditional_switches),
            ("fpu_sites_switched", c.conditional_sites),
            ("hidden_page_faults", p.hidden_faults),
            ("pages_prefilled", self.mem.paging.shadow.prefilled()),
            ("true_page_faults", p.true_faults),
            ("page_table_writes_mediated", p.table_writes),
            ("paged_accesses_emulated", p.emulated),
            ("paged_code_writes", p.code_writes),
            ("execute_only_code", u64::from(self.mem.paging.exec_only)),
            ("patched_sites", self.code.pages.patches.len() as u64),
            ("ldt_writes", self.cpu.mirrors.writes),
            ("unknown_port_accesses", unknown),
            ("unknown_mmio_accesses", unknown_mmio),
            ("cpuid_faulting", u64::from(self.cpuid_faulting)),
            ("vcpus", self.vcpus.len() as u64),
            ("vcpu_switches", self.vcpus.switches),
            ("vcpu_pause_yields", self.vcpus.pauses),
            ("ide_commands", ide.commands),
            ("ide_sectors_read", ide.sectors_read),
            ("ide_sectors_written", ide.sectors_written),
            ("ide_errors", ide.errors),
        ];
        // Accesses per device: MMIO devices under their bus name, port devices by what
        // sits at their base (a device spread over two ranges adds up).
        counters.extend(mmio.device_accesses());
        let mut ports: Vec<(&'static str, u64)> = Vec::new();
        for (base, _, n) in self.platform.ports.device_accesses() {
            let name = platform::port_device_name(base);
            match ports.iter_mut().find(|(p, _)| *p == name) {
                Some((_, total)) => *total += n,
                None => ports.push((name, n)),
            }
        }
        counters.extend(ports);
        counters.extend(self.tc_counters());
        counters
    }

    /// Guest accesses no device claimed, by address: `(where, reads, writes)`, ports as
    /// `port 0x…`, memory as `mmio 0x…`. Such accesses float on a PC (reads all ones,
    /// writes dropped); the list shows what a guest looked for that this machine lacks.
    pub fn unclaimed_accesses(&self) -> Vec<(String, u64, u64)> {
        let ports = self.platform.ports.stats().iter().map(|(port, s)| {
            (
                format!("port {port:#06x}"),
                s.unhandled_reads,
                s.unhandled_writes,
            )
        });
        let mmio = self.platform.mmio.unknown().iter().map(|(addr, s)| {
            (
                format!("mmio {addr:#010x}"),
                s.unhandled_reads,
                s.unhandled_writes,
            )
        });
        ports.chain(mmio).collect()
    }

    /// A handle to feed serial input and wake the vCPU from another thread.
    pub fn serial_input(&self) -> platform::SerialInput {
        self.platform.serial_input()
    }

    /// A handle that ends the run from another thread: the run returns
    /// [`RunOutcome::Stopped`] at its next exit.
    pub fn stop_handle(&self) -> StopControl {
        self.stop.clone()
    }

    /// Runs the guest on the calling thread until it stops.
    ///
    /// Before the first guest instruction the seccomp backstop is installed (it is never
    /// lifted: every later thread of the process inherits it) and CPUID faulting is turned
    /// on where the host has it. `on_start` runs next (to start device threads); then every
    /// thread of the process is held to the monitor's syscall allowlist for good
    /// ([`Vm::monitor_allowlist`]); a syscall off it ends the run with
    /// [`RunOutcome::SyscallRefused`].
    ///
    /// # Errors
    /// [`VmError`] for monitor-side failures; guest misbehaviour is a [`RunOutcome`].
    pub fn run(&mut self, on_start: impl FnOnce(Kicker)) -> Result<RunOutcome, VmError> {
        let mut host = HostCpu::new()?;
        hostcpu::seccomp::install_guest_syscall_trap()?;
        // `VMM_CPUID_FAULTING=off` takes the path of hosts without CPUID faulting on a host
        // that has it, so both paths stay tested wherever the tests run.
        let faulting_wanted = std::env::var_os("VMM_CPUID_FAULTING").is_none_or(|v| v != "off");
        self.cpuid_faulting = faulting_wanted && hostcpu::cpuid::enable_cpuid_faulting().is_ok();
        if !self.cpuid_faulting {
            // Without faulting CPUID would answer natively with the host's CPU: rewrite it.
            self.code.pages.also_patch.push(rewriter::Class::Cpuid);
        }
        // INT n traps natively either way (#GP through a host gate of DPL 0, or a seccomp
        // SIGSYS for INT 0x80), but a trap byte is the cheapest exit: measured with
        // `vmm bench`, the SIGSYS path costs ~11,000 cycles more than an INT3 exit.
        self.code.pages.also_patch.push(rewriter::Class::Int);
        if self.vcpus.len() > 1 {
            // A spinner yields to the vCPU it waits for (translate mode exits at PAUSE).
            self.code.pages.also_patch.push(rewriter::Class::Pause);
        }
        let timer = VcpuTimer::new(&host.kicker())?;
        let _stop_aimed = self.stop.aim(host.kicker());
        on_start(host.kicker());
        if self.translating() {
            let (page, len) = Self::tc_vcpu_page();
            self.cpu.mirrors.install_translation(page, len)?;
            self.cpu.mirrors.window = Some(tc::WINDOW_START);
        }
        self.monitor_allowlist().install()?;
        self.cpu.sync_mirrors(ALL_SEGMENTS, None)?;
        let outcome = self.run_loop(&mut host, &timer);
        // A gate exit leaves the vCPU's extended state in the host CPU: the context takes
        // it back for whatever reads it or runs it next.
        host.save_fpu(&mut self.cpu.ctx);
        outcome
    }

    /// The exits and entries of [`Vm::run`], until the run ends.
    fn run_loop(&mut self, host: &mut HostCpu, timer: &VcpuTimer) -> Result<RunOutcome, VmError> {
        loop {
            // At every exit, and after every wait of a halted guest (a kick ends it).
            if self.stop.requested() {
                let _ = timer.disarm();
                return Ok(RunOutcome::Stopped);
            }
            if let Some(refused) = hostcpu::seccomp::refused_syscall() {
                let _ = timer.disarm();
                return Ok(RunOutcome::SyscallRefused(refused));
            }
            if let Some(why) = self.debug_stop_due() {
                if let Some(outcome) = self.debug_stop(why) {
                    let _ = timer.disarm();
                    return Ok(outcome);
                }
            }
            self.platform.sync_apic_base(self.cpu.state.msr.apic_base);
            self.platform.poll();
            if self.vcpus.len() > 1 {
                match self.schedule(host)? {
                    smp::Scheduled::Run => {}
                    smp::Scheduled::Again => continue,
                    smp::Scheduled::Stop(outcome) => {
                        let _ = timer.disarm();
                        return Ok(outcome);
                    }
                }
            }
            if let Some(outcome) = self.inject_interrupt() {
                return Ok(outcome);
            }
            if self.cpu.state.halted {
                if self.cpu.state.eflags & eflags::IF == 0 {
                    return Ok(RunOutcome::Shutdown {
                        reason: format!(
                            "the guest halted with interrupts disabled at {:#010x}",
                            self.cpu.state.eip
                        ),
                    });
                }
                let cpu = self.vcpus.current();
                self.platform
                    .wait_for_event(host, |p| p.wants_cpu(cpu, true));
                continue;
            }
            let s = &self.cpu.state;
            if s.interrupt_shadow
                && s.eflags & eflags::IF != 0
                && self.cpu.step.is_none()
                && self.platform.interrupt_pending()
            {
                // The guest would run on past the shadowed instruction (STI; NOP; CLI)
                // without another exit: step it, and deliver at the next loop.
                self.cpu.start_step(cpu::Stepping::Shadow);
            }
            self.debug_before_entry();
            if !self.translating() {
                self.patch_data_breakpoints();
            }
            self.platform.arm_timer(timer)?;
            let entry_eip = self.cpu.prepare_entry();
            if self.translating() {
                if let Some(step) = self.tc_enter()? {
                    if let Some(outcome) = step? {
                        let _ = timer.disarm();
                        return Ok(outcome);
                    }
                    continue;
                }
            }
            let exit = host.run(&mut self.cpu.ctx);
            self.stats.host_exit(&exit);
            let tc_exit = self.tc_exit(&exit);
            self.cpu.take_exit(&exit, entry_eip);
            let step = match tc_exit {
                Ok(translate::TcExit::Guest) => {
                    if let hostcpu::HostExitKind::Fault { vector, .. } = exit.kind {
                        match vector {
                            crate::x86::Exception::DE => {
                                self.tc_checkable_fault(translate::CheckedFault::Divide)
                            }
                            crate::x86::Exception::BR => {
                                self.tc_checkable_fault(translate::CheckedFault::Bound)
                            }
                            _ => {}
                        }
                    }
                    self.handle(&exit)
                }
                Ok(translate::TcExit::Gate {
                    block, index, stub, ..
                }) => self.tc_gate_exit(block, index, stub),
                Err(reason) => self.failure(reason),
            };
            if let Some(outcome) = step? {
                let _ = timer.disarm();
                return Ok(outcome);
            }
            self.debug_check_watches();
            let user = self.cpu.user();
            self.cpu.breakpoints.sync(
                &self.cpu.state.dr,
                &self.mem,
                user,
                &mut self.code.pages.patches,
            );
            if self.trace {
                eprintln!("vmm:   resume at {:#010x}", self.cpu.state.eip);
            }
        }
    }

    /// Delivers the highest-priority pending interrupt (local APIC, then the 8259 through
    /// LINT0) if the virtual IF allows it.
    fn inject_interrupt(&mut self) -> Option<RunOutcome> {
        let s = &self.cpu.state;
        // Not in the middle of a single step: the frame would capture the monitor's TF.
        if s.eflags & eflags::IF == 0 || s.interrupt_shadow || self.cpu.step.is_some() {
            return None;
        }
        let vector = self.platform.acknowledge_interrupt()?;
        match self.hand_to_vcpu(GuestExit::Interrupt { vector }) {
            Ok(outcome) => outcome,
            Err(e) => Some(RunOutcome::GuestFailure {
                reason: format!("delivering interrupt vector {vector:#x}: {e}"),
                dump: self.cpu.dump(),
            }),
        }
    }

    /// The vCPU registers, for a dump on a guest failure.
    pub fn register_dump(&self) -> String {
        self.cpu.dump()
    }
}
