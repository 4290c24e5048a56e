//! Translate mode (ARCHITECTURE §5): the run loop's side of the translation cache.
//!
//! Before an entry the block for the guest's EIP is found or translated ([`Vm::tc_enter`])
//! and the CPU is entered at its TC address with the TC's code segment and the vCPU-page
//! segment in place of the guest's CS and reserved register. After the exit the TC
//! address is turned back into guest state ([`Vm::tc_exit`]): a gate exit names its exit
//! stub through the exit slot; any other exit (a fault, a page fault, a timer) lands on
//! an emitted instruction whose side-table entry says where the guest is. From there on
//! the exit is an ordinary guest exit, handled as in patch mode, except the gate exits,
//! handled here ([`Vm::tc_gate_exit`]).
//!
//! Single steps (the guest's TF, the monitor's own steps, a debugger's) run blocks of one
//! guest instruction that are never chained nor looked up; the step trap is the block's
//! exit. The host's TF is never used in this mode.

use iced_x86::Instruction;
use rewriter::translate::{
    CodeReader, CodeSegment, CodeSize, ExitKind, ExitStub, GuestEip, Refusal, SLOT_CONTROL,
    SLOT_EAX, SLOT_ECX, SLOT_EDX, SLOT_EXIT, SLOT_ID, SLOT_LOADED, SLOT_NULL_SELECTOR,
    SLOT_PENDING, SLOT_RELOADS, SLOT_SELECTORS, SLOT_TARGET, SLOT_VBITS, SLOT_VIF,
};
use rewriter::Class;
use shadow_paging::Access;

use super::code::CodePages;
use super::data_breakpoints;
use super::guest_memory::GuestMemory;
use super::handle::Step;
use super::mirrors::{BOUNCE_SELECTOR, SCRATCH_SELECTOR, TC_CODE_SELECTOR};
use super::reloads::Reloads;
use super::stats::ExitReason;
use super::tc::{
    Key, SpaceChange, TcError, TranslationCache, BOUNCE, GATE, VCPU_PAGE, WINDOW_START,
};
use super::{Vm, VmError};
use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::hostcpu::{HostExit, HostExitKind};
use crate::vcpu::emulate::Mediated;
use crate::vcpu::exit::GuestExit;
use crate::vcpu::stack::adjust_sp;
use crate::vcpu::Fault;
use crate::x86::{cr0, eflags, Exception, SegReg};

/// How guest code is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecMode {
    /// From the translation cache: only the translator's output executes.
    #[default]
    Translate,
    /// In place, sensitive instructions patched with trap bytes. Not isolating: guest
    /// code the scanner did not decode the way the CPU does runs as it is.
    Patch,
}

impl std::str::FromStr for ExecMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "translate" => Ok(Self::Translate),
            "patch" => Ok(Self::Patch),
            _ => Err(format!("`{s}`: expected `translate` or `patch`")),
        }
    }
}

impl std::fmt::Display for ExecMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Translate => "translate",
            Self::Patch => "patch",
        })
    }
}

/// si_code of a single-step SIGTRAP, for the step trap a one-instruction block's exit
/// stands for.
const TRAP_TRACE: i32 = 2;

/// A chain or lookup entry the next entry should make: the exit `exit` of block `from`
/// wants the block for `target`.
#[derive(Debug, Clone, Copy)]
struct Link {
    from: usize,
    exit: usize,
    target: u32,
    lookup: bool,
    generation: u64,
}

/// The run loop's translate-mode state.
#[derive(Debug)]
pub struct Translation {
    /// The cache.
    pub tc: TranslationCache,
    link: Option<Link>,
    /// The guest's TF, kept out of the host's EFLAGS while translated code runs.
    guest_tf: u32,
    /// The pinned entries (breakpoints, served entry points) the cache was built with.
    pins: (usize, u32),
    /// Bumped when the cache is flushed: block indices from before are stale.
    generation: u64,
    /// The next entry runs one instruction with FPU instructions native (an FPU
    /// instruction that executes although CR0.TS or CR0.EM is set: WAIT without MP).
    fpu_once: Option<u32>,
    /// The next entry runs one instruction with this segment register rebased to the
    /// bounce pages ([`Vm::tc_window_access`]), if it enters the instruction that asked
    /// for it: the one at this guest EIP and privilege level (an interrupt delivered in
    /// between goes elsewhere, and the access is made again when its instruction runs).
    bounce: Option<Bounce>,
    /// Pages a bounced instruction may have written behind the write protection of
    /// translated code: their blocks go once it ran.
    bounced_writes: Vec<GuestPhys>,
    /// Instructions retranslated to perform their page-table writes in the monitor.
    mediated: MediatedSites,
    /// Divisions retranslated behind a check of their divisor.
    checks: FaultSites,
    /// The loads of data segment registers translated code may perform inline.
    pub reloads: Reloads,
}

impl Translation {
    /// A cache mapped into `mem`'s linear space.
    ///
    /// # Errors
    /// [`TcError`] when the window cannot be set up.
    pub fn new(mem: &mut GuestMemory) -> Result<Self, TcError> {
        Ok(Self {
            tc: TranslationCache::new(&mut mem.space)?,
            link: None,
            guest_tf: 0,
            pins: (0, 0),
            generation: 0,
            fpu_once: None,
            bounce: None,
            bounced_writes: Vec::new(),
            mediated: MediatedSites::default(),
            checks: FaultSites::default(),
            reloads: Reloads::default(),
        })
    }

    fn flush(&mut self) {
        self.tc.flush();
        self.generation += 1;
        self.link = None;
    }
}

/// Guest code as the translator reads it: through the guest's translation for a fetch
/// at the current privilege level, original bytes under pinned trap bytes.
struct Reader<'a> {
    mem: &'a GuestMemory,
    pages: &'a CodePages,
    user: bool,
    /// Guest-physical addresses of the instructions the monitor performs.
    mediated: &'a MediatedSites,
    /// And of the divisions and BOUNDs translated behind a check.
    checks: &'a FaultSites,
}

impl Reader<'_> {
    fn phys(&self, linear: u32) -> Option<GuestPhys> {
        self.mem.code_neighbour_phys(GuestLinear(linear), self.user)
    }
}

impl CodeReader for Reader<'_> {
    fn fetch(&self, linear: u32, buf: &mut [u8]) -> Option<u64> {
        let phys = self.phys(linear)?;
        if u64::from(linear) >= u64::from(WINDOW_START) && !self.mem.paging.enabled() {
            return None;
        }
        let got = self.pages.read_original(&self.mem.ram, phys, buf);
        (got == buf.len()).then(|| u64::from(phys.page().raw()))
    }

    fn stop_before(&self, linear: u32) -> bool {
        self.phys(linear)
            .is_some_and(|p| self.pages.patches.is_entry(p.raw()))
    }

    fn mediated(&self, phys: u64) -> bool {
        u32::try_from(phys).is_ok_and(|p| self.mediated.marked.contains_key(&p))
    }

    fn fault_checked(&self, phys: u64) -> bool {
        u32::try_from(phys).is_ok_and(|p| self.checks.checked.contains_key(&p))
    }
}

/// Adaptive retranslation of instructions that keep faulting (ARCHITECTURE §5b): a DIV
/// or IDIV that keeps raising #DE, or a BOUND that keeps raising #BR, costs a host signal
/// each time; after [`CHECK_AFTER`] of them it is translated behind an inline check of
/// its divisor or its bounds, which leaves through the gate for the monitor to raise the
/// exception. The check costs a few instructions where nothing faults, so a site keeps
/// it.
#[derive(Debug, Default)]
pub(super) struct FaultSites {
    /// #DE or #BR raised natively, by instruction (guest-physical address), until
    /// checked.
    faults: foldhash::HashMap<u32, u32>,
    /// The instructions translated with the check, and what they raised.
    checked: foldhash::HashMap<u32, CheckedFault>,
}

/// What a checked instruction raised before it was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CheckedFault {
    /// #DE: a DIV or IDIV.
    Divide,
    /// #BR: a BOUND.
    Bound,
}

impl FaultSites {
    /// The instruction at guest-physical `at` raised `fault` natively: whether that made
    /// it one to check.
    fn faulted(&mut self, at: u32, fault: CheckedFault) -> bool {
        if self.checked.contains_key(&at) || !counted_to(&mut self.faults, at, CHECK_AFTER) {
            return false;
        }
        self.checked.insert(at, fault);
        true
    }

    /// How many instructions are checked for `fault`.
    fn count(&self, fault: CheckedFault) -> u64 {
        self.checked.values().filter(|f| **f == fault).count() as u64
    }
}

/// Counts one more fault of the instruction at `at` in `faults`: whether that makes
/// `after` of them (the count is then forgotten).
fn counted_to(faults: &mut foldhash::HashMap<u32, u32>, at: u32, after: u32) -> bool {
    let count = faults.entry(at).or_default();
    *count += 1;
    if *count < after {
        return false;
    }
    faults.remove(&at);
    true
}

/// Native #DE or #BR an instruction raises before it is translated behind a check.
const CHECK_AFTER: u32 = 4;

/// Adaptive retranslation of page-table writers (ARCHITECTURE §5b): an instruction whose
/// writes keep landing on pages the monitor mediates takes a host fault for each; after
/// [`MEDIATED_AFTER`] of them it is retranslated into an exit through the gate, where the
/// monitor performs the write and its mediation. One that then mostly writes other pages
/// (a memset or copy that sometimes fills a page table) runs natively again, for good.
#[derive(Debug, Default)]
pub(super) struct MediatedSites {
    /// Mediated writes by instruction (guest-physical address), until marked.
    faults: foldhash::HashMap<u32, u32>,
    /// The instructions the translator turns into exits, with how many of their exits
    /// wrote a page table and how many did not.
    marked: foldhash::HashMap<u32, (u32, u32)>,
    /// Instructions marked once that mostly wrote other pages: never marked again.
    declined: foldhash::HashSet<u32>,
    /// Instructions marked so far.
    retranslated: u64,
}

impl MediatedSites {
    /// A host fault's write by the instruction at guest-physical `at` was mediated:
    /// whether that made it one the monitor performs.
    fn faulted(&mut self, at: u32) -> bool {
        if self.declined.contains(&at) || !counted_to(&mut self.faults, at, MEDIATED_AFTER) {
            return false;
        }
        self.marked.insert(at, (0, 0));
        self.retranslated += 1;
        true
    }

    /// The monitor performed the instruction at `at`; `table`: it wrote a page table.
    /// Whether it now mostly writes other pages and was put back to native code.
    fn performed(&mut self, at: u32, table: bool) -> bool {
        let Some(counts) = self.marked.get_mut(&at) else {
            return false;
        };
        if table {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
        counts.1 > counts.0.saturating_add(MEDIATED_PLAIN_SLACK) && self.unmark(at, true)
    }

    /// The instruction at `at` is no longer one the monitor performs; `for_good`: nor
    /// will it be again. Whether it was one.
    fn unmark(&mut self, at: u32, for_good: bool) -> bool {
        if for_good {
            self.declined.insert(at);
        }
        self.marked.remove(&at).is_some()
    }
}

/// Mediated host faults an instruction takes before it is retranslated.
const MEDIATED_AFTER: u32 = 4;
/// Exits of a marked instruction that write no page table, beyond those that do, after
/// which it runs natively again.
const MEDIATED_PLAIN_SLACK: u32 = 8;

/// Where an entry goes.
enum Entry {
    /// Into the TC at this address.
    Run(u32),
    /// Not entered: the exit was handled (a fault raised, a pinned site served).
    Handled(Step),
}

impl Vm {
    /// The translate-mode state, when the VM runs in translate mode.
    pub(super) fn translating(&self) -> bool {
        self.tc.is_some()
    }

    /// The code segment as the translator sees it.
    fn code_segment(&self) -> CodeSegment {
        let cs = self.cpu.state.sreg(SegReg::Cs);
        CodeSegment {
            base: cs.base,
            limit: cs.limit,
            size: if cs.db {
                CodeSize::Bits32
            } else {
                CodeSize::Bits16
            },
        }
    }

    /// Prepares an entry in translate mode: the block for EIP (translated if needed) and
    /// the host context that runs it. `None` when the guest was not entered this time
    /// (the step says what the loop does next).
    pub(super) fn tc_enter(&mut self) -> Result<Option<Step>, VmError> {
        self.tc_sync()?;
        match self.tc_entry()? {
            Entry::Run(tc_addr) => {
                let user = self.cpu.user();
                // The run loop offered the interrupts just before this entry: with IF
                // set, outside an interrupt shadow and a step, whatever was deliverable
                // was delivered (clearing IF), so none is pending; the devices' locks
                // need not be taken to say so.
                let s = &self.cpu.state;
                let offered =
                    s.eflags & eflags::IF != 0 && !s.interrupt_shadow && self.cpu.step.is_none();
                let pending = !offered && self.platform.interrupt_pending();
                let watched = self.guest_watch();
                let reloads = self.publish_reloads()?;
                let Some(t) = self.tc.as_mut() else {
                    return Ok(None);
                };
                let ctx = &mut self.cpu.ctx;
                ctx.eip = tc_addr;
                ctx.cs = TC_CODE_SELECTOR;
                if user {
                    ctx.fs = SCRATCH_SELECTOR;
                } else {
                    ctx.gs = SCRATCH_SELECTOR;
                }
                self.cpu.watched = watched;
                // The virtual IF inline CLI/STI work on, and whether an STI must exit.
                let vif = u8::from(self.cpu.state.eflags & eflags::IF != 0);
                t.tc.set_slot_u8(SLOT_VIF, vif);
                t.tc.set_slot_u8(SLOT_PENDING, u8::from(pending));
                // What an inline PUSHFD adds to the host's image: the bits the host runs
                // clear that the guest may have set.
                let vbits = eflags::IOPL | eflags::NT | eflags::AC | eflags::TF;
                t.tc.set_slot(SLOT_VBITS, self.cpu.state.eflags & vbits);
                // What an inline POPFD compares the image's ID with.
                t.tc.set_slot(SLOT_ID, self.cpu.state.eflags & eflags::ID);
                // What reads of segment registers read.
                for (slot, reg) in (SLOT_SELECTORS..).step_by(4).zip(SegReg::ALL) {
                    t.tc.set_slot(slot, u32::from(self.cpu.state.sreg(reg).selector));
                }
                // The loads of data segment registers that need no exit.
                for (slot, (neg, host)) in (SLOT_RELOADS..).step_by(8).zip(reloads) {
                    t.tc.set_slot(slot, neg);
                    t.tc.set_slot(slot + 4, host);
                }
                t.tc.set_slot(SLOT_NULL_SELECTOR, 0);
                // What reads of control registers read (CPL 0).
                let s = &self.cpu.state;
                for (slot, value) in (SLOT_CONTROL..)
                    .step_by(4)
                    .zip([s.cr0, s.cr2, s.cr3, s.cr4])
                {
                    t.tc.set_slot(slot, value);
                }
                t.tc.set_slot(SLOT_LOADED, 0);
                t.tc.set_slot(SLOT_LOADED + 4, 0);
                t.guest_tf = self.cpu.state.eflags & eflags::TF;
                ctx.eflags &= !eflags::TF;
                let here = (self.cpu.state.eip, user);
                if let Some(Bounce { seg, .. }) =
                    t.bounce.take().filter(|b| (b.eip, b.user) == here)
                {
                    let sel = BOUNCE_SELECTOR;
                    match seg {
                        SegReg::Ds => ctx.ds = sel,
                        SegReg::Es => ctx.es = sel,
                        SegReg::Fs => ctx.fs = sel,
                        SegReg::Gs => ctx.gs = sel,
                        SegReg::Ss => ctx.ss = sel,
                        SegReg::Cs => {}
                    }
                }
                Ok(None)
            }
            Entry::Handled(step) => Ok(Some(step)),
        }
    }

    /// Another vCPU runs from now on: what was arranged for the last one's next entry
    /// (a bounced access) is dropped; it is arranged again if that vCPU faults again.
    pub(super) fn tc_vcpu_switched(&mut self) {
        if let Some(t) = self.tc.as_mut() {
            t.bounce = None;
            t.reloads.forget();
        }
    }

    /// Drops blocks of pages written since the last entry, and the whole cache when the
    /// pinned entries changed (blocks must stop before every one of them).
    fn tc_sync(&mut self) -> Result<(), VmError> {
        let bounced = self
            .tc
            .as_mut()
            .map(|t| std::mem::take(&mut t.bounced_writes))
            .unwrap_or_default();
        for page in bounced {
            if self.code.pages.is_armed(page) {
                self.code.pages.revert_physical(&self.mem.ram, page);
                self.mem
                    .with_host(|shadow, host, _| shadow.unmark_code(host, page.page()))?;
            }
        }
        let written = self.code.pages.take_written();
        let pins = {
            let p = &self.code.pages.patches;
            p.entries().fold((0usize, 0u32), |(n, x), a| {
                (n + 1, x ^ a.rotate_left(u32::try_from(n % 32).unwrap_or(0)))
            })
        };
        let Some(t) = self.tc.as_mut() else {
            return Ok(());
        };
        for page in written {
            t.tc.invalidate_page(page);
        }
        if pins != t.pins {
            t.pins = pins;
            t.flush();
            let paging = self.mem.paging.enabled();
            self.code
                .pages
                .forget_translated(&mut self.mem.space, paging)?;
        }
        Ok(())
    }

    /// The key of the block for the guest's state now, with the physical page of `phys`.
    fn tc_key(&self, phys: GuestPhys) -> Key {
        let s = &self.cpu.state;
        let fpu_once = self.tc.as_ref().is_some_and(|t| {
            t.fpu_once == Some(s.eip)
                || t.bounce
                    .is_some_and(|b| (b.eip, b.user) == (s.eip, self.cpu.user()))
        });
        Key {
            eip: s.eip,
            cs: self.code_segment(),
            stack32: s.sreg(SegReg::Ss).db,
            user: self.cpu.user(),
            exit_fpu: s.cr0 & (cr0::TS | cr0::EM) != 0 && !fpu_once,
            inline_if: s.cpl() == 0,
            exit_pause: self.vcpus.len() > 1,
            selectors: if super::tc::SELECTOR_IMMEDIATES {
                SegReg::ALL.map(|r| s.sreg(r).selector)
            } else {
                [0; 6]
            },
            gs_rebase: self.gs_rebase().is_some(),
            single: self.cpu.step.is_some()
                || s.eflags & eflags::TF != 0
                || fpu_once
                || data_breakpoints::any_enabled(&s.dr),
            paging: self.mem.paging.enabled(),
            segment_loads: self.mem.paging.enabled() && s.protected() && !s.v86(),
            phys: phys.page().raw(),
        }
    }

    /// The GS base GS-relative operands can be rebased onto: at CPL 3 with flat DS and SS
    /// (base 0) and a present 4 GiB expand-up GS, where i386 C libraries keep their TLS
    /// at negative offsets that wrap past 4 GiB (each such access would otherwise hit the
    /// clamp of the user mirrors and be performed by the monitor).
    fn gs_rebase(&self) -> Option<u32> {
        let s = &self.cpu.state;
        let (ds, ss, gs) = (s.sreg(SegReg::Ds), s.sreg(SegReg::Ss), s.sreg(SegReg::Gs));
        let flat = |seg: &crate::vcpu::state::Segment| seg.present && seg.base == 0;
        let whole = gs.present && gs.limit == u32::MAX && !gs.is_expand_down() && !gs.is_code();
        (self.cpu.user() && flat(ds) && flat(ss) && whole).then_some(gs.base)
    }

    /// The fault an instruction fetch at `lin` raises, or a stop when it reaches no
    /// memory the monitor can fetch from.
    fn fetch_fault(&mut self, lin: u32) -> Step {
        let user = self.cpu.user();
        if self.mem.paging.enabled() {
            let ctx = *self.mem.paging.shadow.context();
            let mut ram = super::shadow_backend::RamPhys(&self.mem.ram);
            match shadow_paging::walk(&mut ram, &ctx, GuestLinear(lin), Access::fetch(user)) {
                Err(pf) => {
                    self.mem.paging.stats.true_faults += 1;
                    self.stats.exit(ExitReason::GuestPageFault);
                    let fault = Fault::page_fault(pf.cr2, pf.error_code.0);
                    return self.hand_to_vcpu(GuestExit::Exception(fault));
                }
                Ok(t) => {
                    if let Some(p) = t.phys.below_4g() {
                        if !self.mem.in_ram(p) {
                            return self.failure(format!(
                                "instruction fetch from {}, guest-physical {p}, where the guest has no RAM",
                                GuestLinear(lin)
                            ));
                        }
                    }
                }
            }
        }
        self.failure(format!(
            "instruction fetch from {}, where the guest has no RAM",
            GuestLinear(lin)
        ))
    }

    /// Finds or translates the block for EIP.
    fn tc_entry(&mut self) -> Result<Entry, VmError> {
        let eip = self.cpu.state.eip;
        let cs = self.code_segment();
        let lin = cs.base.wrapping_add(eip);
        let user = self.cpu.user();
        if eip > cs.limit {
            return Ok(Entry::Handled(
                self.hand_to_vcpu(GuestExit::Exception(Fault::gp0())),
            ));
        }
        // The fetch of the entry sets the accessed bits, as the CPU's would.
        let phys = if self.mem.paging.enabled() {
            let ctx = *self.mem.paging.shadow.context();
            let mut ram = super::shadow_backend::RamPhys(&self.mem.ram);
            shadow_paging::walk(&mut ram, &ctx, GuestLinear(lin), Access::fetch(user))
                .ok()
                .and_then(|t| t.phys.below_4g())
                .filter(|p| self.mem.in_ram(*p))
        } else {
            self.mem.code_phys(GuestLinear(lin), user)
        };
        let Some(phys) = phys else {
            return Ok(Entry::Handled(self.fetch_fault(lin)));
        };
        // A pinned entry (breakpoint, served entry point) is served before its
        // instruction runs, unless the monitor is stepping over it right now.
        let pinned = self.code.pages.patches.is_entry(phys.raw());
        if pinned && self.cpu.step.is_none() {
            let s = &mut self.cpu.state;
            s.eip = s.eip.wrapping_add(1);
            let before = self.cpu.state.eip;
            let step = self.on_trap_byte(GuestLinear(lin));
            if self.cpu.state.eip == before {
                // No owner moved EIP back: nothing claimed the site. Run it.
                self.cpu.state.eip = eip;
            } else {
                return Ok(Entry::Handled(step));
            }
        }
        let key = self.tc_key(phys);
        let gs_base = self.gs_rebase();
        let paging = key.paging;
        let Some(t) = self.tc.as_mut() else {
            return Ok(Entry::Handled(Ok(None)));
        };
        if let Some(base) = gs_base {
            t.tc.rebase_gs(base);
        }
        let mut found = t.tc.find(&key);
        if let Some(i) = found {
            // A block straddling into the next linear page depends on that page's
            // mapping too.
            let stale = t.tc.block(i).block.pages.iter().skip(1).any(|p| {
                self.mem
                    .code_neighbour_phys(GuestLinear(p.linear), user)
                    .is_none_or(|now| u64::from(now.page().raw()) != p.phys)
            });
            if stale {
                found = None;
            }
        }
        let i = match found {
            Some(i) => i,
            None => {
                t.tc.make_room(&mut self.mem.space)?;
                let reader = Reader {
                    mem: &self.mem,
                    pages: &self.code.pages,
                    user,
                    mediated: &t.mediated,
                    checks: &t.checks,
                };
                let before = t.tc.stats.flushes;
                let result = t.tc.translate(&reader, key);
                if t.tc.stats.flushes != before {
                    t.generation += 1;
                    t.link = None;
                    self.code
                        .pages
                        .forget_translated(&mut self.mem.space, paging)?;
                }
                match result {
                    Ok(Ok(i)) => {
                        if self.block_in_g_pages(i) {
                            let pge = self.mem.paging.shadow.context().pge();
                            if let Some(t) = self.tc.as_mut() {
                                t.tc.set_global(i, pge);
                            }
                        }
                        let Some(t) = self.tc.as_mut() else {
                            return Ok(Entry::Handled(Ok(None)));
                        };
                        for page in t.tc.pages_of(i) {
                            let new = self.code.pages.arm_translated(
                                &mut self.mem.space,
                                page,
                                paging,
                            )?;
                            if new && paging {
                                self.mem.with_host(|shadow, host, _| {
                                    shadow.mark_code(host, page, false)
                                })?;
                            }
                        }
                        i
                    }
                    Ok(Err(Refusal::Fetch { linear })) => {
                        return Ok(Entry::Handled(self.fetch_fault(linear)))
                    }
                    Ok(Err(Refusal::SegmentLimit { .. })) => {
                        return Ok(Entry::Handled(
                            self.hand_to_vcpu(GuestExit::Exception(Fault::gp0())),
                        ))
                    }
                    Ok(Err(e)) => {
                        return Ok(Entry::Handled(self.failure(format!(
                            "the translator refused {}: {e}",
                            GuestLinear(lin)
                        ))))
                    }
                    Err(e) => {
                        return Ok(Entry::Handled(
                            self.failure(format!("translation cache: {e}")),
                        ))
                    }
                }
            }
        };
        let Some(t) = self.tc.as_mut() else {
            return Ok(Entry::Handled(Ok(None)));
        };
        t.tc.prepare_table(i, &key);
        if let Some(link) = t.link.take() {
            if link.generation == t.generation && link.target == eip && !pinned && !key.single {
                if link.lookup {
                    t.tc.enter_lookup(i, &key);
                } else {
                    t.tc.chain(link.from, link.exit, i, &key);
                }
            }
        }
        t.fpu_once = None;
        Ok(Entry::Run(t.tc.block(i).block.entry()))
    }

    /// Turns the host context of an exit from translated code back into guest state.
    /// Returns the exit to handle: unchanged, or `None` for a gate exit (handled by
    /// [`Vm::tc_gate_exit`], whose stub is returned).
    pub(super) fn tc_exit(&mut self, exit: &HostExit) -> Result<TcExit, String> {
        self.take_inline_loads()?;
        let Some(t) = self.tc.as_mut() else {
            return Ok(TcExit::Guest);
        };
        if matches!(
            exit.kind,
            HostExitKind::BadEntry(_) | HostExitKind::Escape { .. }
        ) {
            return Ok(TcExit::Guest);
        }
        // Inline CLI/STI/POPFD may have changed the virtual IF, and POPFD IOPL, NT and AC.
        let s = &mut self.cpu.state;
        if t.tc.slot_u8(SLOT_VIF) != 0 {
            s.eflags |= eflags::IF;
        } else {
            s.eflags &= !eflags::IF;
        }
        let popped = eflags::IOPL | eflags::NT | eflags::AC;
        s.eflags = (s.eflags & !popped) | (t.tc.slot(SLOT_VBITS) & popped);
        let ctx = &mut self.cpu.ctx;
        // Not entered at all (a pending timer): the context still holds the entry.
        if let HostExitKind::Async { .. } = exit.kind {
            if exit.signo == 0 || exit.cs != TC_CODE_SELECTOR {
                ctx.eip = self.cpu.state.eip;
                ctx.eflags |= t.guest_tf;
                return Ok(TcExit::Guest);
            }
        }
        ctx.eflags |= t.guest_tf;
        let rip = ctx.eip;
        let at_gate =
            matches!(exit.kind, HostExitKind::Gate) || rip == GATE || rip == GATE.wrapping_add(1);
        if at_gate {
            let slot = t.tc.slot(SLOT_EXIT);
            let Some((block, index, stub)) = t.tc.exit_for(slot) else {
                return Err(format!(
                    "an exit reached the gate with exit slot {slot:#010x}, which names no exit stub"
                ));
            };
            ctx.eip = match stub.guest {
                GuestEip::At(e) | GuestEip::AtPushed(e) | GuestEip::AtPopped(e) => e,
                GuestEip::TargetSlot => t.tc.slot(SLOT_TARGET),
            };
            return Ok(TcExit::Gate { block, index, stub });
        }
        let Some((block, entry)) = t.tc.at(rip) else {
            return Err(format!(
                "the CPU stopped at {rip:#010x}, outside every translated block"
            ));
        };
        let Some(entry) = entry.copied() else {
            return Err(format!(
                "the CPU stopped at {rip:#010x}, between the instructions of a translated block"
            ));
        };
        let fault = matches!(
            exit.kind,
            HostExitKind::Fault { .. } | HostExitKind::PageFault { .. }
        );
        if fault
            && !entry.can_fault
            && !matches!(
                exit.kind,
                HostExitKind::Fault {
                    vector: Exception::BP | Exception::OF,
                    ..
                }
            )
        {
            let key = t.tc.block(block).key;
            return Err(format!(
                "translated code faulted at {rip:#010x} in an instruction that touches only monitor state ({:?}): {:?} of the block for guest EIP {:#010x} ({:?}); host CS {:#x} SS {:#x} DS {:#x} ES {:#x} FS {:#x} GS {:#x}",
                exit.kind,
                entry,
                key.eip,
                key,
                ctx.cs,
                ctx.ss,
                ctx.ds,
                ctx.es,
                ctx.fs,
                ctx.gs
            ));
        }
        if entry.restore_scratch {
            ctx.ecx = t.tc.slot(SLOT_ECX);
            ctx.edx = t.tc.slot(SLOT_EDX);
        }
        if entry.restore_eax {
            ctx.eax = t.tc.slot(SLOT_EAX);
        }
        let stack32 = self.cpu.state.sreg(SegReg::Ss).db;
        ctx.eip = match entry.guest {
            GuestEip::At(e) => e,
            GuestEip::TargetSlot => t.tc.slot(SLOT_TARGET),
            // The translation's own push is taken back ...
            GuestEip::AtPushed(e) => {
                ctx.esp = adjust_sp(ctx.esp, 4, stack32);
                e
            }
            // ... and so is the POPFD's stack adjustment.
            GuestEip::AtPopped(e) => {
                ctx.esp = adjust_sp(ctx.esp, 4u32.wrapping_neg(), stack32);
                e
            }
        };
        if let HostExitKind::PageFault { error_code, .. } = exit.kind {
            if error_code & crate::x86::pf_error::I != 0 {
                return Err(format!(
                    "an instruction fetch from guest memory at {:#x}: only the translation cache executes",
                    exit.addr.raw()
                ));
            }
        }
        Ok(TcExit::Guest)
    }

    /// Handles a gate exit: `stub` of block `block` was taken (EIP is the guest's
    /// already).
    pub(super) fn tc_gate_exit(&mut self, block: usize, index: usize, stub: ExitStub) -> Step {
        let single = self
            .tc
            .as_ref()
            .is_some_and(|t| t.tc.block(block).key.single);
        match stub.kind {
            ExitKind::Direct { .. } | ExitKind::IndirectMiss => {
                self.stats.exit(ExitReason::TranslationExit);
                let stepping = self.cpu.step.is_some() || self.cpu.state.eflags & eflags::TF != 0;
                // A data breakpoint the instruction's accesses hit: the #DB trap after it
                // (with a single step's BS too when one is due).
                let dr6 = self.cpu.watched.take().map_or(0, |w| w.hits());
                if single && dr6 != 0 {
                    self.cpu.state.dr[6] |= dr6;
                    if !stepping {
                        self.stats.exit(ExitReason::GuestException);
                        return self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::DB)));
                    }
                    // The step's trap ends the monitor's step first; the #DB follows.
                    self.cpu.data_break = true;
                }
                if single && stepping {
                    // One guest instruction ran: that is the step's trap.
                    let trap = HostExit::step_trap(TRAP_TRACE);
                    return self.handle(&trap);
                }
                let eip = self.cpu.state.eip;
                if let Some(t) = self.tc.as_mut() {
                    t.link = Some(Link {
                        from: block,
                        exit: index,
                        target: eip,
                        lookup: stub.kind == ExitKind::IndirectMiss,
                        generation: t.generation,
                    });
                }
                Ok(None)
            }
            ExitKind::InterruptWindow | ExitKind::InterruptDue => {
                // An inline STI or POPFD set IF with an interrupt waiting. After STI it is
                // taken after the instruction the STI's shadow covers; after POPFD (no
                // shadow) the loop delivers it before the next instruction.
                if self.finish_step(false)? {
                    return Ok(None);
                }
                let sti = stub.kind == ExitKind::InterruptWindow;
                self.stats.exit(ExitReason::RewriteTrap);
                let site = self.cpu.code_linear(self.cpu.state.eip);
                let class = if sti { Class::Sti } else { Class::Popf };
                self.stats.site(site, class.name());
                if sti {
                    self.cpu.state.interrupt_shadow = true;
                }
                Ok(None)
            }
            kind => {
                if self.finish_step(false)? {
                    return Ok(None);
                }
                let decoded = self
                    .tc
                    .as_ref()
                    .and_then(|t| t.tc.block(block).block.side.instruction(&stub).copied());
                self.tc_emulate(kind, decoded)
            }
        }
    }

    /// An exit for an instruction that may not run from the TC: emulate it, or raise
    /// what the CPU would.
    /// `decoded` is the instruction as the translator decoded it, when the stub kept it.
    fn tc_emulate(&mut self, kind: ExitKind, decoded: Option<Instruction>) -> Step {
        let eip = self.cpu.state.eip;
        let site = self.cpu.code_linear(eip);
        let instr = decoded
            .filter(|i| i.ip() == u64::from(eip))
            .or_else(|| self.fetch().decode_at(eip));
        match kind {
            ExitKind::Undefined => {
                self.stats.exit(ExitReason::GuestException);
                let (bytes, n) = self.fetch().read(site);
                let _ = bytes;
                // 15 bytes that decode to nothing longer than the limit: #GP(0) for an
                // encoding past 15 bytes; #UD otherwise.
                let too_long = n == 15 && instr.is_none() && self.too_long(site);
                let fault = if too_long {
                    Fault::gp0()
                } else {
                    Fault::new(Exception::UD)
                };
                self.hand_to_vcpu(GuestExit::Exception(fault))
            }
            ExitKind::Mediated => {
                self.stats.exit(ExitReason::TableWrite);
                self.stats.site(site, ExitReason::TableWrite.name());
                let Some(instr) = instr else {
                    return self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::UD)));
                };
                let tables_before = self.mem.paging.stats.table_writes;
                let descriptors_before = self.mem.paging.descriptor_writes.len();
                let result = self.mediate_write(&instr);
                // Writes to watched descriptor tables count as page-table writes here.
                let table = self.mem.paging.stats.table_writes != tables_before
                    || self.mem.paging.descriptor_writes.len() != descriptors_before;
                let phys = self.mem.code_phys(site, self.cpu.user());
                match result {
                    Err(e) => self.failure(e),
                    Ok(Ok(Mediated::Done)) => {
                        self.tc_sites(phys, |t, at| t.mediated.performed(at, table));
                        Ok(None)
                    }
                    Ok(Err(fault)) => self.hand_to_vcpu(GuestExit::Exception(fault)),
                    Ok(Ok(Mediated::Unsupported)) => {
                        // Other code now lies there (the page was rewritten): it runs
                        // translated again, and its writes fault as before.
                        self.tc_sites(phys, |t, at| t.mediated.unmark(at, false));
                        Ok(None)
                    }
                }
            }
            ExitKind::SegmentOverride => {
                self.stats.exit(ExitReason::EmulatedAccess);
                let Some(instr) = instr else {
                    return self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::UD)));
                };
                self.emulate_access(&instr, site)
            }
            ExitKind::Sensitive(class) => {
                self.stats.exit(match class {
                    Class::In | Class::Out | Class::Ins | Class::Outs => ExitReason::PortIo,
                    Class::Cpuid => ExitReason::Cpuid,
                    _ => ExitReason::RewriteTrap,
                });
                self.stats.site(site, class.name());
                let Some(original) = instr else {
                    return self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::UD)));
                };
                if class == Class::Fpu {
                    return self.tc_fpu(&original);
                }
                if class == Class::Privileged {
                    // SMM, VMX, SVM, SMX and 64-bit-only system instructions: this vCPU
                    // has none of those features, so each raises #UD (at the host's CPL
                    // 3 they fault natively, which patch mode relies on).
                    return self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::UD)));
                }
                self.hand_to_vcpu(GuestExit::Patched { original })
            }
            ExitKind::DivideError => {
                // The inline check found the divisor zero: what the DIV raises.
                self.stats.exit(ExitReason::GuestException);
                self.stats.site(site, "divide_check");
                self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::DE)))
            }
            ExitKind::BoundRange => {
                // The inline check found the index outside the bounds: what the BOUND
                // raises.
                self.stats.exit(ExitReason::GuestException);
                self.stats.site(site, "bound_check");
                self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::BR)))
            }
            ExitKind::Unsupported => {
                // What the translator does not reproduce (RSM, GETSEC, MOV from a test
                // register, transactional memory) raises #UD at the host's CPL 3 and
                // outside SMM, SMX and RTM, as on this vCPU, which has none of them.
                self.stats.exit(ExitReason::GuestException);
                self.hand_to_vcpu(GuestExit::Exception(Fault::new(Exception::UD)))
            }
            ExitKind::Pause => {
                // The spin-wait hint: past it, and another vCPU runs if one can.
                self.stats.exit(ExitReason::RewriteTrap);
                self.stats.site(site, Class::Pause.name());
                self.pause_yield(instr.map_or(2, |i| i.len()));
                Ok(None)
            }
            ExitKind::Direct { .. }
            | ExitKind::IndirectMiss
            | ExitKind::InterruptWindow
            | ExitKind::InterruptDue => Ok(None),
        }
    }

    /// Whether the bytes at `site` are a run of prefixes longer than an instruction may
    /// be (#GP rather than #UD).
    fn too_long(&self, site: GuestLinear) -> bool {
        let (bytes, n) = self.fetch().read(site);
        bytes.iter().take(n).all(|b| {
            matches!(
                b,
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3
            )
        })
    }

    /// An FPU instruction that exited because CR0.TS or CR0.EM was set when its block
    /// was translated: raise what CR0 says now; if nothing is due any more, the next
    /// entry translates it to run natively.
    fn tc_fpu(&mut self, original: &Instruction) -> Step {
        let fault = rewriter::fpu_kind(original.code())
            .and_then(|kind| crate::vcpu::fpu::device_fault(self.cpu.state.cr0, kind));
        match fault {
            Some(fault) => self.hand_to_vcpu(GuestExit::Exception(fault)),
            None => {
                if let Some(t) = self.tc.as_mut() {
                    t.fpu_once = (self.cpu.state.cr0 & (cr0::TS | cr0::EM) != 0)
                        .then_some(self.cpu.state.eip);
                }
                Ok(None)
            }
        }
    }

    /// Whether every linear page block `i` came from is mapped with PTE.G (global while
    /// CR4.PGE is set).
    fn block_in_g_pages(&self, i: usize) -> bool {
        let Some(t) = self.tc.as_ref() else {
            return false;
        };
        let ctx = *self.mem.paging.shadow.context();
        if !self.mem.paging.enabled() {
            return false;
        }
        let user = self.cpu.user();
        let ram = super::shadow_backend::RamPhys(&self.mem.ram);
        t.tc.block(i).block.pages.iter().all(|p| {
            shadow_paging::resolve(&ram, &ctx, GuestLinear(p.linear), Access::fetch(user))
                .is_some_and(|tr| tr.global)
        })
    }

    /// Translate mode: paging or the address space changed: the paging mode
    /// (`mode_changed`: every translation goes), CR3, or the page holding `invlpg`.
    pub(super) fn tc_address_space_changed(
        &mut self,
        mode_changed: bool,
        invlpg: Option<GuestLinear>,
    ) -> Result<(), VmError> {
        // The descriptors behind the reload records may map elsewhere now.
        self.reloads_after_space_change(mode_changed);
        let Some(t) = self.tc.as_mut() else {
            return Ok(());
        };
        if mode_changed {
            t.flush();
            self.code
                .pages
                .forget_translated(&mut self.mem.space, true)?;
            return Ok(());
        }
        let ctx = *self.mem.paging.shadow.context();
        let change = match invlpg {
            // INVLPG also drops the large page that covers the address.
            Some(lin) => {
                let span = ctx.mode.pde_span();
                let first = lin.raw() & !(span - 1);
                SpaceChange::Pages {
                    first,
                    last: first + (span - PAGE_SIZE),
                }
            }
            None => SpaceChange::Cr3,
        };
        let ram = super::shadow_backend::RamPhys(&self.mem.ram);
        t.tc.address_space_changed(change, |linear, phys, user| {
            shadow_paging::peek(&ram, &ctx, GuestLinear(linear), Access::fetch(user))
                .is_some_and(|tr| tr.frame().raw() == phys)
        });
        t.link = None;
        Ok(())
    }

    /// Translate mode: CR4.PGE was toggled, the rest of the paging mode unchanged (Linux
    /// flushes its global TLB entries so). Translations stay; blocks of G pages are global
    /// or not with PGE, and every chain and lookup entry, global ones included, is undone
    /// (the next exit at each redoes it).
    pub(super) fn tc_global_pages_changed(&mut self) -> Result<(), VmError> {
        self.reloads_after_space_change(false);
        let pge = self.mem.paging.shadow.context().pge();
        let Some(t) = self.tc.as_mut() else {
            return Ok(());
        };
        t.tc.reassess_global(pge);
        t.tc.address_space_changed(SpaceChange::All, |_, _, _| false);
        t.link = None;
        Ok(())
    }

    /// The guest instruction at EIP raised #DE or #BR natively in translated code:
    /// after [`CHECK_AFTER`] of them it is translated behind a check of its divisor or
    /// its bounds.
    pub(super) fn tc_checkable_fault(&mut self, fault: CheckedFault) {
        let site = self.cpu.code_linear(self.cpu.state.eip);
        let phys = self.mem.code_phys(site, self.cpu.user());
        self.tc_sites(phys, |t, at| t.checks.faulted(at, fault));
    }

    /// A host fault's write by the instruction at `site` was mediated: after
    /// [`MEDIATED_AFTER`] of them the instruction is retranslated into an exit through
    /// the gate.
    pub(super) fn tc_mediated_write(&mut self, site: GuestLinear) {
        let phys = self.mem.code_phys(site, self.cpu.user());
        self.tc_sites(phys, |t, at| t.mediated.faulted(at));
    }

    /// Applies `change` to the adaptively retranslated sites (mediated writes, divisor
    /// checks) for the instruction at guest-physical `phys`; when it says the
    /// instruction is to be translated otherwise (native code to monitor, or back), the
    /// blocks holding it go, and the next entry there translates it anew.
    fn tc_sites(
        &mut self,
        phys: Option<GuestPhys>,
        change: impl FnOnce(&mut Translation, u32) -> bool,
    ) {
        let (Some(phys), Some(t)) = (phys, self.tc.as_mut()) else {
            return;
        };
        if change(t, phys.raw()) {
            t.tc.invalidate_page(phys.page());
            t.link = None;
        }
    }

    /// Counters of the translation cache for `--stats`.
    pub(super) fn tc_counters(&self) -> Vec<(&'static str, u64)> {
        let Some(t) = self.tc.as_ref() else {
            return Vec::new();
        };
        let s = t.tc.stats;
        vec![
            ("tc_blocks_translated", s.blocks),
            ("tc_bytes", s.bytes),
            ("tc_chains", s.chains),
            ("tc_unchains", s.unchains),
            ("tc_lookup_misses", s.lookups_missed),
            ("tc_monitor_hits", s.hits),
            ("tc_invalidations", s.invalidations),
            ("tc_flushes", s.flushes),
            ("tc_table_clears", s.table_clears),
            ("tc_gs_moves", s.gs_moves),
            ("tc_sites_mediated", t.mediated.retranslated),
            ("tc_sites_declined", t.mediated.declined.len() as u64),
            ("tc_divisions_checked", t.checks.count(CheckedFault::Divide)),
            ("tc_bounds_checked", t.checks.count(CheckedFault::Bound)),
            ("segment_reload_records", t.reloads.stats.recorded),
            ("segment_reloads_written", t.reloads.stats.written),
            ("segment_loads_inline_seen", t.reloads.stats.inline_loads),
            ("segment_reloads_inline", t.reloads.stats.hits),
            ("descriptor_frame_writes", t.reloads.stats.frame_writes),
            (
                "descriptor_frames_given_up",
                t.reloads.stats.frames_given_up,
            ),
        ]
    }

    /// The vCPU page's linear address and its segment length (for the mirrors).
    pub(super) fn tc_vcpu_page() -> (u32, u32) {
        (VCPU_PAGE, TranslationCache::vcpu_page_len())
    }

    /// A #GP(0) from an access the guest's own segment allows but whose linear range
    /// reaches the monitor window (the mirrors stop below it): the access to perform.
    pub(super) fn window_access(&self, instr: &Instruction) -> Option<WindowAccess> {
        if !self.translating() {
            return None;
        }
        let state = &self.cpu.state;
        self.memory_operands(instr)
            .into_iter()
            .find_map(|(seg, off, size, access)| {
                let cache = state.sreg(seg);
                if !cache.contains(off, size) {
                    return None;
                }
                let lin = u64::from(cache.base) + u64::from(off);
                let last = lin + u64::from(size) - 1;
                let reaches = last >= u64::from(WINDOW_START) || cache.is_expand_down();
                let write = !matches!(
                    access,
                    iced_x86::OpAccess::Read | iced_x86::OpAccess::CondRead
                );
                reaches.then_some(WindowAccess {
                    seg,
                    lin: GuestLinear(cache.base).wrapping_add(off),
                    size,
                    write,
                })
            })
    }

    /// Performs a guest access to the monitor window. Plain RAM is mapped at the
    /// bounce pages and the instruction runs once natively with its segment rebased
    /// there (any instruction form, one exit); MMIO, page tables, translated code and
    /// string instructions (which walk on) are emulated through the guest bus.
    pub(super) fn tc_window_access(&mut self, instr: &Instruction, a: WindowAccess) -> Step {
        let user = self.cpu.user();
        let bus_path = instr.has_rep_prefix()
            || instr.has_repe_prefix()
            || instr.has_repne_prefix()
            || instr.is_string_instruction()
            || !self.mem.paging.enabled()
            || matches!(a.seg, SegReg::Cs)
            || a.seg == self.reserved_segment(user);
        if bus_path {
            return self.emulate_access(instr, a.lin);
        }
        let last = a.lin.wrapping_add(a.size - 1);
        let lins: Vec<GuestLinear> = if last.page() == a.lin.page() || last < a.lin {
            vec![a.lin]
        } else {
            vec![a.lin, last]
        };
        let access = if a.write {
            Access::write(user)
        } else {
            Access::read(user)
        };
        let mut pages = Vec::new();
        for lin in lins {
            let ctx = *self.mem.paging.shadow.context();
            let mut ram = super::shadow_backend::RamPhys(&self.mem.ram);
            match shadow_paging::walk(&mut ram, &ctx, lin, access) {
                Err(pf) => {
                    self.mem.paging.stats.true_faults += 1;
                    let fault = Fault::page_fault(pf.cr2, pf.error_code.0);
                    return self.hand_to_vcpu(GuestExit::Exception(fault));
                }
                Ok(t) => match t.phys.below_4g().filter(|p| self.mem.in_ram(*p)) {
                    Some(p) => pages.push(p),
                    // MMIO (the local APIC and IOAPIC fixmaps) or nothing.
                    None => return self.emulate_access(instr, a.lin),
                },
            }
        }
        let table = pages
            .iter()
            .any(|p| self.mem.paging.shadow.is_page_table(p.page()));
        if table && a.write {
            return self.emulate_access(instr, a.lin);
        }
        super::tc::map_bounce(&mut self.mem.space, &self.mem.ram, &pages, a.write)?;
        let base = self.cpu.state.sreg(a.seg).base;
        let rebased = base.wrapping_add(BOUNCE).wrapping_sub(a.lin.page().raw());
        // SS takes only writable data segments; the bounce pages' own protection keeps
        // a read a read.
        self.cpu
            .mirrors
            .set_bounce(rebased, a.write || a.seg == SegReg::Ss)?;
        if let Some(t) = self.tc.as_mut() {
            t.bounce = Some(Bounce {
                seg: a.seg,
                eip: self.cpu.state.eip,
                user: self.cpu.user(),
            });
            if a.write {
                t.bounced_writes = pages;
            }
        }
        Ok(None)
    }

    /// The segment register translations reserve at this privilege level.
    fn reserved_segment(&self, user: bool) -> SegReg {
        if user {
            SegReg::Fs
        } else {
            SegReg::Gs
        }
    }
}

/// A pending run of one instruction through the bounce segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounce {
    seg: SegReg,
    eip: u32,
    user: bool,
}

/// One guest access to the monitor window: through `seg`, at `lin`, `size` bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowAccess {
    seg: SegReg,
    lin: GuestLinear,
    size: u32,
    write: bool,
}

/// What an exit from translated code is, once turned back into guest state.
#[derive(Debug, Clone, Copy)]
pub(super) enum TcExit {
    /// An ordinary guest exit (fault, page fault, timer): handle it as in patch mode.
    Guest,
    /// A gate exit through `stub` of `block`.
    Gate {
        block: usize,
        index: usize,
        stub: ExitStub,
    },
}
