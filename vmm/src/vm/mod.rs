//! A virtual machine: guest RAM and its host mapping, the vCPU, the PC devices, and the
//! run loop that enters the guest natively and handles every exit (ARCHITECTURE.md §3).

mod access;
mod breakpoints;
pub mod code;
mod confine;
pub mod context;
mod entry_hook;
mod exits;
pub mod guest_bus;
pub mod mirrors;
mod paging;
mod platform;
pub mod shadow;
pub mod stats;

use std::io::Write;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::devices::{BusError, Clock, MonotonicClock};
use crate::hostcpu::timer::{Kicker, TimerError, VcpuTimer};
use crate::hostcpu::{self, ldt::LdtError, GuestContext, HostCpu, HostCpuError};
use crate::loader::multiboot::{load_multiboot, BootInfo, LoadError};
use crate::memory::{GuestRam, LinearSpace, MemoryError, Prot};
use crate::vcpu::state::eflags;
use crate::vcpu::VcpuState;

use code::{CodeError, CodePages};
use mirrors::Mirrors;
use platform::Platform;
use shadow::Paging;
use stats::Stats;

pub use entry_hook::{EntryHook, HookError};
pub use platform::spawn_stdin_reader;

/// Default guest RAM size.
pub const DEFAULT_MEM_SIZE: u64 = 128 << 20;

/// How long a halted vCPU sleeps at most before it looks again for work that may have
/// been signalled without waking it.
const HALT_POLL: Duration = Duration::from_millis(10);

/// What to run.
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// The kernel image (Multiboot v1).
    pub kernel: Vec<u8>,
    /// Where the kernel came from, for messages.
    pub kernel_name: String,
    /// The kernel command line.
    pub cmdline: String,
    /// Where the guest's serial output goes.
    pub serial_out: Box<dyn Write + Send>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("mem_size", &self.mem_size)
            .field("kernel_name", &self.kernel_name)
            .field("cmdline", &self.cmdline)
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
    /// The host CPU cannot run guests on this thread.
    #[error("host CPU set-up")]
    HostCpu(#[from] HostCpuError),
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
    /// The guest broke itself (triple fault) or tried something the monitor stops
    /// (an escape attempt, an unsupported feature); `dump` is the register dump.
    GuestFailure {
        /// What happened.
        reason: String,
        /// The vCPU registers at that point.
        dump: String,
    },
}

impl RunOutcome {
    /// The process exit status this outcome maps to: the debug-exit status as QEMU's
    /// isa-debug-exit gives it, 0 for an orderly shutdown, 4 for a guest failure (even, so
    /// never confused with a debug-exit status).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunOutcome::DebugExit { status } => (*status & 0xff) as i32,
            RunOutcome::Shutdown { .. } => 0,
            RunOutcome::GuestFailure { .. } => 4,
        }
    }
}

/// A virtual machine with one vCPU.
pub struct Vm {
    ram: GuestRam,
    space: LinearSpace,
    code: CodePages,
    paging: Paging,
    mirrors: Mirrors,
    stats: Stats,
    state: VcpuState,
    ctx: Box<GuestContext>,
    platform: Platform,
    clock: MonotonicClock,
    boot: BootInfo,
    /// The PIT deadline the host timer is armed for.
    armed: Option<u64>,
    cpuid_faulting: bool,
    /// Print every exit to stderr (`VMM_TRACE=1`).
    trace: bool,
    /// A single step in progress (see [`exits::SingleStep`]).
    step: Option<exits::SingleStep>,
    /// Guest instruction breakpoints (DR0–DR3).
    breakpoints: breakpoints::Breakpoints,
    /// The linear EIP of the last entry when it was made with EFLAGS.RF set: the first
    /// instruction there does not take an instruction breakpoint.
    entry_rf_at: Option<u32>,
    /// The part serving bound guest entry points (the kernel proxy), when one is attached.
    entry_hook: Option<Box<dyn EntryHook>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("mem_size", &self.ram.size())
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A device poisoned by a panic elsewhere is still a consistent state machine.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Vm {
    /// Builds the machine: guest RAM, the reserved linear space with RAM mapped 1:1
    /// (paging is off at boot) without execute permission, the devices, and the kernel
    /// loaded as Multiboot says.
    ///
    /// # Errors
    /// [`VmError`] naming the input that was refused (memory size, kernel image).
    pub fn new(config: VmConfig) -> Result<Self, VmError> {
        let mut ram = GuestRam::new(config.mem_size)?;
        let boot = load_multiboot(ram.as_mut_slice(), &config.kernel, &config.cmdline).map_err(
            |source| VmError::Load {
                name: config.kernel_name.clone(),
                source,
            },
        )?;
        let mut space = LinearSpace::reserve()?;
        // Page 0 stays unmapped: guest accesses to it are emulated.
        let len = u32::try_from(ram.size() - u64::from(PAGE_SIZE)).unwrap_or(u32::MAX);
        space.map(
            GuestLinear(PAGE_SIZE),
            &ram,
            GuestPhys(PAGE_SIZE),
            len,
            Prot::RW,
        )?;
        let clock = MonotonicClock::new();
        let platform = Platform::new(clock, config.serial_out, ram.size())?;
        let state = VcpuState::multiboot_entry(boot.entry, boot.eax, boot.ebx);
        Ok(Self {
            ram,
            space,
            code: CodePages::default(),
            // Probed here: CPUID faults in this process once the guest runs.
            paging: Paging::new(shadow::host_has_exec_only()),
            mirrors: Mirrors::default(),
            stats: Stats::default(),
            state,
            ctx: Box::default(),
            platform,
            clock,
            boot,
            armed: None,
            cpuid_faulting: false,
            trace: std::env::var_os("VMM_TRACE").is_some_and(|v| v == "1"),
            step: None,
            breakpoints: breakpoints::Breakpoints::default(),
            entry_rf_at: None,
            entry_hook: None,
        })
    }

    /// Attaches a part that serves guest entry points (the kernel proxy): every entry
    /// point it serves gets the trap now, before the guest runs, and keeps it across
    /// rescans of its page.
    ///
    /// # Errors
    /// What the hook reports, when an entry point cannot be pinned.
    pub fn attach_entry_hook(&mut self, mut hook: Box<dyn EntryHook>) -> Result<(), HookError> {
        hook.pin(&mut self.code.patches, &self.ram)?;
        self.entry_hook = Some(hook);
        Ok(())
    }

    /// Where the kernel was loaded and where it starts.
    pub fn boot_info(&self) -> &BootInfo {
        &self.boot
    }

    /// The exit statistics so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Named counters beside the exit table (`--stats`).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.code.stats;
        let p = self.paging.stats;
        let ports = self.platform.ports.stats();
        let unknown: u64 = ports
            .values()
            .map(|p| p.unhandled_reads + p.unhandled_writes)
            .sum();
        vec![
            ("pages_scanned", c.pages_scanned),
            ("rescans", c.rescans),
            ("code_pages_parked", c.parks),
            ("code_pages_rearmed", c.rearms),
            ("fpu_trap_switches", c.conditional_switches),
            ("fpu_sites_switched", c.conditional_sites),
            ("hidden_page_faults", p.hidden_faults),
            ("true_page_faults", p.true_faults),
            ("page_table_writes_mediated", p.table_writes),
            ("paged_accesses_emulated", p.emulated),
            ("paged_code_writes", p.code_writes),
            ("execute_only_code", u64::from(self.paging.exec_only)),
            ("patched_sites", self.code.patches.len() as u64),
            ("ldt_writes", self.mirrors.writes),
            ("unknown_port_accesses", unknown),
            ("cpuid_faulting", u64::from(self.cpuid_faulting)),
        ]
    }

    /// A handle to feed serial input and wake the vCPU from another thread.
    pub fn serial_input(&self) -> platform::SerialInput {
        self.platform.serial_input()
    }

    /// Runs the guest on the calling thread until it stops.
    ///
    /// Before the first guest instruction the seccomp backstop is installed (it is never
    /// lifted: every later thread of the process inherits it) and CPUID faulting is turned
    /// on where the host has it. `on_start` runs next (to start device threads); then every
    /// thread of the process is held to the monitor's syscall allowlist for good.
    ///
    /// # Errors
    /// [`VmError`] for monitor-side failures; guest misbehaviour is a [`RunOutcome`].
    pub fn run(&mut self, on_start: impl FnOnce(Kicker)) -> Result<RunOutcome, VmError> {
        let mut cpu = HostCpu::new()?;
        hostcpu::seccomp::install_guest_syscall_trap()?;
        self.cpuid_faulting = hostcpu::cpuid::enable_cpuid_faulting().is_ok();
        if !self.cpuid_faulting {
            // Without faulting CPUID would answer natively with the host's CPU: rewrite it.
            self.code.also_patch.push(rewriter::Class::Cpuid);
        }
        // INT n traps natively either way (#GP through a host gate of DPL 0, or a seccomp
        // SIGSYS for INT 0x80), but a trap byte is the cheapest exit: measured with
        // `vmm bench`, the SIGSYS path costs ~11,000 cycles more than an INT3 exit.
        self.code.also_patch.push(rewriter::Class::Int);
        let timer = VcpuTimer::new(&cpu.kicker())?;
        on_start(cpu.kicker());
        confine::install_monitor_allowlist()?;
        self.mirrors.sync(&self.state, 0x3f, None, &mut self.ctx)?;
        loop {
            self.platform.poll(&self.clock);
            if let Some(outcome) = self.inject_interrupt() {
                return Ok(outcome);
            }
            if self.state.halted {
                if self.state.eflags & eflags::IF == 0 {
                    return Ok(RunOutcome::Shutdown {
                        reason: format!(
                            "the guest halted with interrupts disabled at {:#010x}",
                            self.state.eip
                        ),
                    });
                }
                self.wait_for_event(&cpu);
                continue;
            }
            self.arm_timer(&timer)?;
            context::load(&self.state, &mut self.ctx);
            self.mirrors.apply(&mut self.ctx);
            let entry_eip = self.state.eip;
            self.entry_rf_at = (self.state.eflags & eflags::RF != 0).then(|| {
                self.state
                    .sreg(crate::vcpu::SegReg::Cs)
                    .base
                    .wrapping_add(entry_eip)
            });
            let exit = cpu.run(&mut self.ctx);
            if !matches!(exit.kind, hostcpu::ExitKind::BadEntry(_)) {
                context::store(&self.ctx, &mut self.state);
                // The instruction after STI or MOV SS has run natively: the shadow is over.
                if self.state.eip != entry_eip {
                    self.state.interrupt_shadow = false;
                }
            }
            if let Some(outcome) = self.handle_exit(exit)? {
                let _ = timer.disarm();
                return Ok(outcome);
            }
            self.sync_breakpoints();
            if self.trace {
                eprintln!("vmm:   resume at {:#010x}", self.state.eip);
            }
        }
    }

    /// Delivers the highest-priority pending PIC interrupt if the virtual IF allows it.
    fn inject_interrupt(&mut self) -> Option<RunOutcome> {
        // Not in the middle of a single step: the frame would capture the monitor's TF.
        if self.state.eflags & eflags::IF == 0 || self.state.interrupt_shadow || self.step.is_some()
        {
            return None;
        }
        let vector = lock(&self.platform.pic).acknowledge()?;
        match self.handle(crate::vcpu::exit::Exit::Interrupt { vector }) {
            Ok(outcome) => outcome,
            Err(e) => Some(RunOutcome::GuestFailure {
                reason: format!("delivering interrupt vector {vector:#x}: {e}"),
                dump: dump(&self.state),
            }),
        }
    }

    /// Sleeps until the PIT's next edge or an interrupt request, without spinning.
    fn wait_for_event(&mut self, cpu: &HostCpu) {
        loop {
            self.platform.poll(&self.clock);
            if lock(&self.platform.pic).has_pending() || cpu.take_pending() {
                return;
            }
            let now = self.clock.now_ns();
            let nap = match lock(&self.platform.pit).next_deadline_ns() {
                Some(d) if d <= now => return,
                Some(d) => Duration::from_nanos(d - now).min(HALT_POLL),
                None => HALT_POLL,
            };
            // A kick (serial input) interrupts the sleep with EINTR.
            std::thread::sleep(nap);
        }
    }

    /// Arms the host timer for the PIT's next edge, when that changed.
    fn arm_timer(&mut self, timer: &VcpuTimer) -> Result<(), VmError> {
        let deadline = lock(&self.platform.pit).next_deadline_ns();
        if deadline == self.armed {
            return Ok(());
        }
        self.armed = deadline;
        match deadline {
            None => timer.disarm()?,
            Some(d) => {
                let now = self.clock.now_ns();
                // A zero value would disarm the timer: fire "now" as 1 µs.
                let delay = Duration::from_nanos(d.saturating_sub(now).max(1_000));
                timer.arm(delay, Duration::ZERO)?;
            }
        }
        Ok(())
    }

    /// The vCPU registers, for a dump on a guest failure.
    pub fn register_dump(&self) -> String {
        dump(&self.state)
    }
}

/// The vCPU register dump printed when a guest fails.
pub fn dump(s: &VcpuState) -> String {
    s.to_string()
}
