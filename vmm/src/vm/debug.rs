//! The debugger's hold on a VM (the gdb stub plugs in here): it stops the guest before
//! its first instruction, on a debugger breakpoint, after a single step, when a watched
//! location changes, or when asked to from another thread; while stopped it reads and
//! writes registers and guest memory through the guest's own address translation.
//!
//! - Breakpoints (software and "hardware" alike) pin a trap byte at the guest-physical
//!   address of the linear one, as the guest's own instruction breakpoints do
//!   ([`super::breakpoints`]): the patch table keeps the original byte, guest reads of
//!   code see the original, and no page is rescanned. Resuming from a breakpoint steps
//!   the instruction with the trap lifted, then pins it again.
//! - Watchpoints (write, read, access) work as hardware data breakpoints do, without
//!   taking the guest's DR0–DR3: while any is set the guest runs one instruction at a
//!   time (one-instruction blocks in translate mode, the monitor's TF in patch mode), the
//!   accesses each instruction will make are recorded before it runs
//!   ([`super::data_breakpoints`]), and one that touches a watched range stops the guest
//!   after the instruction — a write of the value already there included. Writes the
//!   monitor performs for the guest (emulated instructions, deliveries) are caught by
//!   value: the watched bytes are also compared after every exit.
//! - An interrupt request ([`DebugControl::interrupt`]) is a flag the run loop reads at
//!   every exit; the requester kicks the vCPU so that an exit comes soon.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use shadow_paging::{peek, Access};

use super::code::RamCode;
use super::cpu::Stepping;
use super::data_breakpoints::{self, Access as WatchedAccess};
use super::guest_bus::MachineBus;
use super::guest_memory::GuestMemory;
use super::shadow_backend::RamPhys;
use super::{RunOutcome, Vm};
use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::vcpu::{GuestBus, VcpuState};
use crate::x86::{eflags, SegReg};

/// Why the guest stopped for the debugger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugStop {
    /// Before the first guest instruction.
    Start,
    /// The debugger asked (Ctrl-C, or a debugger attaching to a running guest).
    Interrupted,
    /// A debugger breakpoint: EIP is at the instruction, which has not run.
    Breakpoint,
    /// One instruction ran (a single step).
    Step,
    /// A watched location was accessed; EIP is after the instruction that did it.
    Watch {
        /// The watchpoint's first byte.
        addr: GuestLinear,
        /// The watchpoint's kind.
        kind: WatchKind,
    },
}

/// Which accesses a watchpoint stops at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// Writes (gdb's `watch`).
    Write,
    /// Reads (gdb's `rwatch`).
    Read,
    /// Reads and writes (gdb's `awatch`).
    Access,
}

impl WatchKind {
    fn reads(self) -> bool {
        self != Self::Write
    }

    fn writes(self) -> bool {
        self != Self::Read
    }
}

/// What the debugger wants when the guest resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugResume {
    /// Run until the next stop.
    Continue,
    /// Run one instruction.
    Step,
    /// End the run.
    Kill,
    /// Remove every breakpoint and watchpoint and run on without a debugger.
    Detach,
}

/// A request the debugger could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DebugError {
    /// The address does not translate to guest RAM.
    #[error("{addr} does not translate to guest RAM")]
    Unmapped {
        /// The linear address.
        addr: GuestLinear,
    },
    /// The guest's tables forbid a supervisor write there, or the write failed.
    #[error("{addr} cannot be written")]
    NotWritable {
        /// The linear address.
        addr: GuestLinear,
    },
    /// The debugger detached.
    #[error("no debugger is attached")]
    Detached,
    /// A breakpoint's trap could not be placed.
    #[error("no breakpoint can be placed at {addr}")]
    NoBreakpoint {
        /// The linear address.
        addr: GuestLinear,
    },
}

/// The debugger, consulted by the run loop whenever the guest stops for it.
pub trait Debugger: Send {
    /// The guest stopped for `why`; serve the debugger's requests through `guest` until
    /// it says how to go on.
    fn stopped(&mut self, guest: &mut DebugGuest<'_>, why: DebugStop) -> DebugResume;
}

/// Asks a running guest to stop, from any thread.
#[derive(Debug, Clone, Default)]
pub struct DebugControl {
    interrupt: Arc<AtomicBool>,
}

impl DebugControl {
    /// Asks for a stop at the next exit; the caller kicks the vCPU (the run's
    /// [`crate::hostcpu::timer::Kicker`]) so that one comes soon.
    pub fn interrupt(&self) {
        self.interrupt.store(true, Ordering::SeqCst);
    }

    fn take(&self) -> bool {
        self.interrupt.swap(false, Ordering::SeqCst)
    }
}

/// A debugger breakpoint.
#[derive(Debug, Clone, Copy)]
struct Break {
    lin: GuestLinear,
    phys: GuestPhys,
    /// The trap was pinned for this breakpoint (not already pinned by another owner).
    owned: bool,
}

/// A watchpoint and the bytes last seen there.
#[derive(Debug, Clone)]
struct Watch {
    lin: GuestLinear,
    kind: WatchKind,
    last: Vec<u8>,
}

impl Watch {
    fn len(&self) -> u32 {
        u32::try_from(self.last.len()).unwrap_or(u32::MAX)
    }
}

/// The debugger attached to a VM and what it set.
pub(super) struct DebugSession {
    /// Out of its place while it serves a stop.
    debugger: Option<Box<dyn Debugger>>,
    control: DebugControl,
    stop_at_start: bool,
    breaks: Vec<Break>,
    watches: Vec<Watch>,
    /// A single step the debugger asked for: from where (CS, EIP).
    step_from: Option<(u16, u32)>,
    /// Resumed at this breakpoint: its instruction runs once with the trap lifted.
    skip_at: Option<GuestLinear>,
    /// With watchpoints set: the accesses of the instruction being stepped.
    accesses: Vec<WatchedAccess>,
    /// A stop the last exit produced.
    pub(super) pending: Option<DebugStop>,
}

impl std::fmt::Debug for DebugSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugSession")
            .field("breaks", &self.breaks)
            .field("watches", &self.watches)
            .finish_non_exhaustive()
    }
}

/// The stopped guest as the debugger sees it.
#[derive(Debug)]
pub struct DebugGuest<'a> {
    vm: &'a mut Vm,
}

/// EFLAGS bits a debugger may change: the status flags, DF, TF's neighbour IF.
const WRITABLE_EFLAGS: u32 = 0x0cd5 | eflags::IF;

impl DebugGuest<'_> {
    /// The vCPU's architectural state (EFLAGS with the virtual IF).
    pub fn state(&self) -> &VcpuState {
        &self.vm.cpu.state
    }

    /// Sets the general registers, EIP and EFLAGS (status flags, DF and IF; the
    /// monitor-owned bits stay). Segment and control registers are not written.
    pub fn set_registers(&mut self, gpr: [u32; 8], eip: u32, flags: u32) {
        let s = &mut self.vm.cpu.state;
        s.gpr = gpr;
        s.eip = eip;
        s.eflags = (s.eflags & !WRITABLE_EFLAGS) | (flags & WRITABLE_EFLAGS);
    }

    /// Reads guest memory at linear `addr`, translated as a supervisor read without
    /// touching accessed bits; trap bytes read as the guest's original bytes.
    ///
    /// # Errors
    /// [`DebugError::Unmapped`] for an address without RAM behind it.
    pub fn read_memory(&self, addr: GuestLinear, buf: &mut [u8]) -> Result<(), DebugError> {
        read_memory(&self.vm.mem, &self.vm.code.pages, addr, buf)
    }

    /// Writes guest memory at linear `addr` as a supervisor write the guest's tables
    /// allow, through the same path as an emulated guest store (scanned code is reverted
    /// and rescanned, page-table writes are mediated). Only RAM is written.
    ///
    /// # Errors
    /// [`DebugError::Unmapped`] or [`DebugError::NotWritable`]; nothing is written then.
    pub fn write_memory(&mut self, addr: GuestLinear, data: &[u8]) -> Result<(), DebugError> {
        for (lin, _) in pages(addr, data.len()) {
            phys_of(&self.vm.mem, lin)?;
        }
        let vm = &mut *self.vm;
        let mut bus = MachineBus::new(
            &mut vm.mem,
            &mut vm.code.pages,
            &mut vm.platform.ports,
            &mut vm.platform.mmio,
        );
        let written = bus.write_linear(addr, data, false);
        if written.is_err() || bus.failure.is_some() {
            return Err(DebugError::NotWritable { addr });
        }
        Ok(())
    }

    /// Sets a breakpoint at linear `addr` (translated now).
    ///
    /// # Errors
    /// [`DebugError`] when the address has no RAM behind it or the trap cannot be placed.
    pub fn add_breakpoint(&mut self, addr: GuestLinear) -> Result<(), DebugError> {
        let session = self.vm.debug.as_mut().ok_or(DebugError::Detached)?;
        if session.breaks.iter().any(|b| b.lin == addr) {
            return Ok(());
        }
        let phys = phys_of(&self.vm.mem, addr)?;
        let patches = &mut self.vm.code.pages.patches;
        let owned = !patches.is_entry(phys.raw());
        if owned
            && patches
                .pin_entry(&mut RamCode(&self.vm.mem.ram), phys.raw())
                .is_err()
        {
            return Err(DebugError::NoBreakpoint { addr });
        }
        session.breaks.push(Break {
            lin: addr,
            phys,
            owned,
        });
        Ok(())
    }

    /// Removes the breakpoint at `addr`; `false` when there was none.
    pub fn remove_breakpoint(&mut self, addr: GuestLinear) -> bool {
        let Some(session) = self.vm.debug.as_mut() else {
            return false;
        };
        let Some(i) = session.breaks.iter().position(|b| b.lin == addr) else {
            return false;
        };
        let b = session.breaks.remove(i);
        let shared = session.breaks.iter().any(|o| o.phys == b.phys);
        if b.owned && !shared {
            self.vm
                .code
                .pages
                .patches
                .unpin_entry(&mut RamCode(&self.vm.mem.ram), b.phys.raw());
        }
        true
    }

    /// Watches `len` bytes at `addr` for the accesses `kind` names.
    ///
    /// # Errors
    /// [`DebugError::Unmapped`] when they are not all in RAM now.
    pub fn add_watchpoint(
        &mut self,
        addr: GuestLinear,
        len: usize,
        kind: WatchKind,
    ) -> Result<(), DebugError> {
        let mut last = vec![0; len];
        self.read_memory(addr, &mut last)?;
        let session = self.vm.debug.as_mut().ok_or(DebugError::Detached)?;
        session.watches.push(Watch {
            lin: addr,
            kind,
            last,
        });
        Ok(())
    }

    /// Removes the watchpoint of `kind` over `len` bytes at `addr`; `false` when there
    /// was none.
    pub fn remove_watchpoint(&mut self, addr: GuestLinear, len: usize, kind: WatchKind) -> bool {
        let Some(session) = self.vm.debug.as_mut() else {
            return false;
        };
        let before = session.watches.len();
        session
            .watches
            .retain(|w| !(w.lin == addr && w.last.len() == len && w.kind == kind));
        session.watches.len() != before
    }
}

/// The page-bounded pieces of `len` bytes at `addr`: (start, length).
fn pages(addr: GuestLinear, len: usize) -> impl Iterator<Item = (GuestLinear, usize)> {
    let mut at = addr;
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let in_page = usize::try_from(PAGE_SIZE - (at.raw() % PAGE_SIZE)).unwrap_or(left);
        let n = in_page.min(left);
        let piece = (at, n);
        at = at.wrapping_add(u32::try_from(n).unwrap_or(PAGE_SIZE));
        left -= n;
        Some(piece)
    })
}

/// The guest-physical RAM address of linear `lin` for a supervisor read (no accessed bits
/// set), or `lin` itself with paging off.
fn phys_of(mem: &GuestMemory, lin: GuestLinear) -> Result<GuestPhys, DebugError> {
    let phys = if mem.paging.enabled() {
        peek(
            &RamPhys(&mem.ram),
            mem.paging.shadow.context(),
            lin,
            Access::read(false),
        )
        .and_then(|t| t.phys.below_4g())
    } else {
        Some(GuestPhys(lin.raw()))
    };
    phys.filter(|p| mem.in_ram(*p))
        .ok_or(DebugError::Unmapped { addr: lin })
}

fn read_memory(
    mem: &GuestMemory,
    code: &super::code::CodePages,
    addr: GuestLinear,
    buf: &mut [u8],
) -> Result<(), DebugError> {
    let mut rest = buf;
    for (lin, n) in pages(addr, rest.len()) {
        let phys = phys_of(mem, lin)?;
        let at = n.min(rest.len());
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut(at);
        rest = tail;
        let got = code.read_original(&mem.ram, phys, piece);
        if got != n {
            return Err(DebugError::Unmapped { addr: lin });
        }
    }
    Ok(())
}

impl Vm {
    /// Attaches a debugger: it is consulted at every stop until the run ends or it
    /// detaches. With `stop_at_start` the guest stops before its first instruction.
    /// Returns the handle that asks a running guest to stop.
    pub fn attach_debugger(
        &mut self,
        debugger: Box<dyn Debugger>,
        stop_at_start: bool,
    ) -> DebugControl {
        let control = DebugControl::default();
        self.debug = Some(DebugSession {
            debugger: Some(debugger),
            control: control.clone(),
            stop_at_start,
            breaks: Vec::new(),
            watches: Vec::new(),
            step_from: None,
            skip_at: None,
            accesses: Vec::new(),
            pending: None,
        });
        control
    }

    /// A debugger breakpoint's trap fired at linear `site`: the guest stops with EIP at
    /// the instruction. `false`: no debugger breakpoint there.
    pub(super) fn debug_breakpoint_trap(&mut self, site: GuestLinear) -> bool {
        let Some(session) = self.debug.as_mut() else {
            return false;
        };
        if !session.breaks.iter().any(|b| b.lin == site) {
            return false;
        }
        let s = &mut self.cpu.state;
        s.eip = s.eip.wrapping_sub(1);
        session.pending = Some(DebugStop::Breakpoint);
        true
    }

    /// A debugger step ended at this exit (`stepped`: by its own trap). It is over when
    /// the instruction ran; an exit before it ran (a shadow page filled) steps again.
    pub(super) fn debug_step_done(&mut self, stepped: bool, phys: Option<GuestPhys>) {
        if let Some(phys) = phys {
            if self
                .code
                .pages
                .patches
                .pin_entry(&mut RamCode(&self.mem.ram), phys.raw())
                .is_err()
            {
                if let Some(session) = self.debug.as_mut() {
                    session.breaks.retain(|b| b.phys != phys);
                }
            }
        }
        let here = (self.cpu.state.sreg(SegReg::Cs).selector, self.cpu.state.eip);
        let Some(session) = self.debug.as_mut() else {
            return;
        };
        if let Some(from) = session.step_from {
            if stepped || from != here {
                session.step_from = None;
                session.pending.get_or_insert(DebugStop::Step);
            }
        }
    }

    /// A single step (any: the debugger's, or one of the monitor's while watchpoints are
    /// set) ended; `stepped`: its instruction ran. An access it made that a watchpoint
    /// covers is a stop.
    pub(super) fn debug_step_watches(&mut self, stepped: bool) {
        let Some(session) = self.debug.as_mut() else {
            return;
        };
        let accesses = std::mem::take(&mut session.accesses);
        if !stepped {
            return;
        }
        let hit = session.watches.iter().find(|w| {
            data_breakpoints::touched(
                w.lin.raw(),
                w.len(),
                w.kind.reads(),
                w.kind.writes(),
                &accesses,
            )
        });
        if let Some(w) = hit {
            session.pending = Some(DebugStop::Watch {
                addr: w.lin,
                kind: w.kind,
            });
        }
    }

    /// Before an entry: arms the single step the debugger needs (its own step, a
    /// watchpoint, or resuming over a breakpoint).
    pub(super) fn debug_before_entry(&mut self) {
        let watching = self.debug.as_ref().is_some_and(|s| !s.watches.is_empty());
        let accesses = if watching {
            self.instruction_accesses(self.translating())
        } else {
            Vec::new()
        };
        let Some(session) = self.debug.as_mut() else {
            return;
        };
        session.accesses = accesses;
        // The monitor's own step goes first (its instruction is watched too); ours is
        // armed at the entry after it.
        if self.cpu.step.is_some() {
            return;
        }
        let need = session.step_from.is_some() || !session.watches.is_empty();
        let eip = self.cpu.code_linear(self.cpu.state.eip);
        let skip = session.skip_at.take().filter(|at| *at == eip);
        if !need && skip.is_none() {
            return;
        }
        let lifted = skip.and_then(|at| session.breaks.iter().find(|b| b.lin == at).copied());
        match lifted {
            Some(b) => {
                self.code
                    .pages
                    .patches
                    .unpin_entry(&mut RamCode(&self.mem.ram), b.phys.raw());
                self.cpu.start_step(Stepping::Debugger(Some(b.phys)));
            }
            None => self.cpu.start_step(Stepping::Debugger(None)),
        }
    }

    /// After an exit was handled: a location under a write or access watchpoint that
    /// changed is a stop (the monitor's own writes for the guest; the guest's are seen
    /// by their accesses too).
    pub(super) fn debug_check_watches(&mut self) {
        let Some(session) = self.debug.as_mut() else {
            return;
        };
        for w in &mut session.watches {
            let mut now = vec![0; w.last.len()];
            if read_memory(&self.mem, &self.code.pages, w.lin, &mut now).is_ok() && now != w.last {
                w.last = now;
                if w.kind.writes() {
                    session.pending.get_or_insert(DebugStop::Watch {
                        addr: w.lin,
                        kind: w.kind,
                    });
                }
            }
        }
    }

    /// Whether the debugger wants a stop now, and why: a stop the last exit produced, or
    /// an interrupt request. Not while the monitor's own single step is under way.
    pub(super) fn debug_stop_due(&mut self) -> Option<DebugStop> {
        if self.cpu.step.is_some() {
            return None;
        }
        let session = self.debug.as_mut()?;
        if let Some(why) = session.pending.take() {
            return Some(why);
        }
        if session.stop_at_start {
            session.stop_at_start = false;
            return Some(DebugStop::Start);
        }
        session.control.take().then_some(DebugStop::Interrupted)
    }

    /// Hands the stopped guest to the debugger; `Some` ends the run (killed).
    pub(super) fn debug_stop(&mut self, why: DebugStop) -> Option<RunOutcome> {
        let session = self.debug.as_mut()?;
        session.step_from = None;
        let mut debugger = session.debugger.take()?;
        let resume = debugger.stopped(&mut DebugGuest { vm: self }, why);
        let session = self.debug.as_mut()?;
        session.debugger = Some(debugger);
        let eip = self.cpu.code_linear(self.cpu.state.eip);
        match resume {
            DebugResume::Kill => {
                return Some(RunOutcome::Shutdown {
                    reason: "the debugger killed the guest".to_string(),
                })
            }
            DebugResume::Detach => {
                let session = self.debug.take()?;
                for b in session.breaks {
                    if b.owned {
                        self.code
                            .pages
                            .patches
                            .unpin_entry(&mut RamCode(&self.mem.ram), b.phys.raw());
                    }
                }
                return None;
            }
            DebugResume::Step => {
                let cs = self.cpu.state.sreg(SegReg::Cs).selector;
                session.step_from = Some((cs, self.cpu.state.eip));
            }
            DebugResume::Continue => {}
        }
        if session.breaks.iter().any(|b| b.lin == eip) {
            session.skip_at = Some(eip);
        }
        // Memory the debugger wrote is the new baseline of the watchpoints.
        for w in &mut session.watches {
            let _ = read_memory(&self.mem, &self.code.pages, w.lin, &mut w.last);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_stop_at_page_ends() {
        let v: Vec<_> = pages(GuestLinear(0x1ffe), 5).collect();
        assert_eq!(v, vec![(GuestLinear(0x1ffe), 2), (GuestLinear(0x2000), 3)]);
        assert_eq!(pages(GuestLinear(0xffff_fffe), 2).count(), 1);
        assert_eq!(pages(GuestLinear(0), 0).count(), 0);
    }
}
