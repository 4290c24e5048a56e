//! The CPU part of a VM: the vCPU's architectural state, the host context it runs with,
//! its segment mirrors, and what the monitor arranges around single guest instructions
//! (a step with the monitor's TF, instruction breakpoints, the RF of the last entry).

use super::breakpoints::Breakpoints;
use super::context;
use super::data_breakpoints::Watched;
use super::mirrors::Mirrors;
use crate::addr::{GuestLinear, GuestPhys};
use crate::hostcpu::ldt::LdtError;
use crate::hostcpu::{GuestContext, HostExit, HostExitKind};
use crate::vcpu::VcpuState;
use crate::x86::{eflags, SegReg};

/// Every segment register, as a dirty mask for [`Cpu::sync_mirrors`].
pub const ALL_SEGMENTS: u8 = 0x3f;

/// What a single step with the monitor's TF undoes once the instruction ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stepping {
    /// An instruction that writes to its own code page runs with the page opened
    /// (writable and executable); the page is closed after it.
    OpenPage(GuestPhys),
    /// The instruction under a breakpoint's trap runs with the trap lifted; it is
    /// pinned again after it.
    Breakpoint(GuestPhys),
    /// A conditional patch site that does not fault now runs with its trap lifted; the
    /// trap is latched again after it.
    PatchSite(GuestPhys),
    /// One instruction for the debugger (a single step, a watchpoint's check, or
    /// resuming over a debugger breakpoint, whose trap at the address given is pinned
    /// again after it).
    Debugger(Option<GuestPhys>),
    /// The instruction an interrupt shadow (STI) covers runs alone while an interrupt
    /// waits, so the interrupt is taken right after it, as on the CPU.
    Shadow,
    /// One instruction while the guest's data breakpoints are enabled (patch mode): its
    /// accesses are checked once it ran ([`super::data_breakpoints`]).
    DataBreakpoints,
}

/// A single step of one guest instruction in progress.
#[derive(Debug, Clone, Copy)]
pub struct SingleStep {
    /// What to undo afterwards.
    pub what: Stepping,
    /// The guest's own TF, restored after the step.
    pub guest_tf: u32,
}

/// The vCPU and everything the monitor keeps beside it.
#[derive(Debug)]
pub struct Cpu {
    /// The architectural state the guest sees (the master copy).
    pub state: VcpuState,
    /// The host context the CPU runs the guest with.
    pub ctx: Box<GuestContext>,
    /// Host LDT mirrors of the segment registers.
    pub mirrors: Mirrors,
    /// A single step in progress.
    pub step: Option<SingleStep>,
    /// Guest instruction breakpoints (DR0–DR3).
    pub breakpoints: Breakpoints,
    /// The guest's data breakpoints and the accesses of the instruction entered, while
    /// any is enabled.
    pub watched: Option<Watched>,
    /// The instruction just stepped hit a guest data breakpoint (DR6 says which): its #DB
    /// trap is due.
    pub data_break: bool,
    /// The linear EIP of the last entry when it was made with EFLAGS.RF set: the first
    /// instruction there does not take an instruction breakpoint.
    pub entry_rf_at: Option<GuestLinear>,
}

impl Cpu {
    /// A vCPU in `state`, nothing installed on the host yet.
    pub fn new(state: VcpuState) -> Self {
        Self {
            state,
            ctx: Box::default(),
            mirrors: Mirrors::default(),
            step: None,
            breakpoints: Breakpoints::default(),
            watched: None,
            data_break: false,
            entry_rf_at: None,
        }
    }

    /// Whether the guest runs at CPL 3.
    pub fn user(&self) -> bool {
        self.state.cpl() == 3
    }

    /// The guest linear address of `offset` in CS.
    pub fn code_linear(&self, offset: u32) -> GuestLinear {
        GuestLinear(self.state.sreg(SegReg::Cs).base).wrapping_add(offset)
    }

    /// Copies the vCPU into the host context for an entry; returns the entry EIP.
    pub fn prepare_entry(&mut self) -> u32 {
        context::load(&self.state, &mut self.ctx);
        self.mirrors.apply(&mut self.ctx);
        let eip = self.state.eip;
        self.entry_rf_at = (self.state.eflags & eflags::RF != 0).then(|| self.code_linear(eip));
        eip
    }

    /// Copies the host context back after `exit` (unless the guest was never entered).
    pub fn take_exit(&mut self, exit: &HostExit, entry_eip: u32) {
        if matches!(exit.kind, HostExitKind::BadEntry(_)) {
            return;
        }
        context::store(&self.ctx, &mut self.state);
        // The instruction after STI or MOV SS has run natively: the shadow is over.
        if self.state.eip != entry_eip {
            self.state.interrupt_shadow = false;
        }
    }

    /// Reinstalls the mirrors of the segment registers in `dirty` (bit `SegReg as u8`),
    /// clamped below `user_clamp` in user mode under paging.
    ///
    /// # Errors
    /// The host refused an LDT write.
    pub fn sync_mirrors(
        &mut self,
        dirty: u8,
        user_clamp: Option<GuestLinear>,
    ) -> Result<(), LdtError> {
        self.mirrors
            .sync(&self.state, dirty, user_clamp, &mut self.ctx)
    }

    /// Starts a single step of the instruction at EIP with the monitor's TF.
    pub fn start_step(&mut self, what: Stepping) {
        self.step = Some(SingleStep {
            what,
            guest_tf: self.state.eflags & eflags::TF,
        });
        self.state.eflags |= eflags::TF;
    }

    /// The register dump printed when a guest fails.
    pub fn dump(&self) -> String {
        self.state.to_string()
    }
}
