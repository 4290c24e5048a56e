//! Host page faults in the guest's linear space: where a *hidden* fault is filled and a
//! *true* fault injected (ARCHITECTURE.md §6), and what else a host fault can be.
//!
//! With guest paging off, RAM is mapped 1:1 without execute permission: a fetch is the
//! first execution of a page (scanned, then made executable), a write to a scanned page
//! parks it, and page 0 or an address without RAM is emulated. With paging on, the shadow
//! state decides: fill the mapping (hidden fault), give the guest its #PF (true fault),
//! mediate a write to a page-table page or to scanned code, scan a page before its first
//! execution, or emulate an access no mapping can serve.

use iced_x86::Instruction;
use shadow_paging::{Decision, EmulateReason, HostAccess};

use super::code::fetch::insn_len;
use super::code::PagedFetch;
use super::cpu::Stepping;
use super::guest_bus::MachineBus;
use super::handle::Step;
use super::stats::ExitReason;
use super::{Vm, VmError};
use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::vcpu::emulate::{data_access, mediate, Mediated};
use crate::vcpu::exit::GuestExit;
use crate::vcpu::Fault;
use crate::x86::{pf_error, SegReg};

/// Host page-fault error code bit: protection-key violation (an execute-only page read).
const PF_PK: u32 = 1 << 5;

impl Vm {
    /// A host page fault at linear `lin` with the host's `error_code`.
    pub(super) fn on_page_fault(&mut self, lin: GuestLinear, error_code: u32) -> Step {
        if self.mem.paging.enabled() {
            return self.on_paged_fault(lin, error_code);
        }
        // Paging off: linear is physical.
        let phys = GuestPhys(lin.raw());
        let in_ram = self.mem.in_ram(phys) && lin.raw() >= PAGE_SIZE;
        if error_code & pf_error::I != 0 {
            if !in_ram {
                return self.failure(format!(
                    "instruction fetch from {lin}, where the guest has no RAM"
                ));
            }
            self.stats.exit(ExitReason::CodeFetch);
            self.follow_code_segment()?;
            let entry = self.fetch_entry(lin).map(|e| GuestPhys(e.raw()));
            let size = self.fetch().code_size(lin);
            self.code.pages.on_fetch(
                &self.mem.ram,
                &mut self.mem.space,
                phys.page(),
                entry,
                size,
            )?;
            return Ok(None);
        }
        if error_code & pf_error::W != 0 && in_ram && self.code.pages.is_armed(phys) {
            self.stats.exit(ExitReason::CodeWrite);
            self.code.pages.on_write(&mut self.mem.space, phys)?;
            // An instruction writing to its own page cannot run there once the page is
            // parked: let it run once more with the page open, and stop right after it.
            // In translate mode its write is performed here instead (its page would
            // be write-protected again by its own translation).
            let start = self.cpu.code_linear(self.cpu.state.eip);
            let len = self
                .fetch()
                .decode_at(self.cpu.state.eip)
                .map_or(1, |i| insn_len(&i));
            let last = start.wrapping_add(len - 1);
            let page = lin.page();
            if self.translating() {
                if [start, last].iter().any(|a| a.page() == page) {
                    return self.emulate_write(lin, "its own code page");
                }
                return Ok(None);
            }
            if [start, last].iter().any(|a| a.page() == page) {
                let page = phys.page();
                self.code.pages.open_for_step(&mut self.mem.space, page)?;
                self.cpu.start_step(Stepping::OpenPage(page));
            }
            return Ok(None);
        }
        // Page 0 and addresses without RAM are never mapped: emulate the access.
        self.stats.exit(ExitReason::EmulatedAccess);
        let Some(instr) = self.fetch().decode_at(self.cpu.state.eip) else {
            return self.failure(format!("undecodable instruction accessing {lin}"));
        };
        self.emulate_access(&instr, lin)
    }

    /// Where the guest's code in the page of fetch fault `lin` starts: EIP when it lies
    /// in that page; else (an instruction straddling into the page faults at the page's
    /// first byte, which is not an instruction start) the end of that instruction.
    fn fetch_entry(&self, lin: GuestLinear) -> Option<GuestLinear> {
        let page = lin.page();
        let start = self.cpu.code_linear(self.cpu.state.eip);
        if start.page() == page {
            return Some(start);
        }
        self.fetch()
            .decode_at(self.cpu.state.eip)
            .map(|i| start.wrapping_add(insn_len(&i)))
            .filter(|end| end.page() == page)
    }

    /// A host page fault at `lin` while guest paging is on: the shadow state decides.
    fn on_paged_fault(&mut self, lin: GuestLinear, error_code: u32) -> Step {
        let access = HostAccess::from_host_error_code(u64::from(error_code));
        let user = self.cpu.user();
        let decision = self.mem.with_host(|shadow, host, _| {
            let mut mem = super::shadow_backend::RamPhys(host.ram);
            shadow.on_host_fault(&mut mem, host, lin, access, user)
        })?;
        if self.trace {
            eprintln!("vmm: paging: {lin} {access:?} user={user}: {decision:?}");
        }
        match decision {
            Decision::HiddenFault(_) => {
                self.mem.paging.stats.hidden_faults += 1;
                self.stats.exit(ExitReason::HiddenPageFault);
                let site = self.cpu.code_linear(self.cpu.state.eip);
                self.stats.site(site, ExitReason::HiddenPageFault.name());
                Ok(None)
            }
            Decision::TrueFault(pf) => {
                self.mem.paging.stats.true_faults += 1;
                self.stats.exit(ExitReason::GuestPageFault);
                let fault = Fault::page_fault(pf.cr2, pf.error_code.0);
                self.hand_to_vcpu(GuestExit::Exception(fault))
            }
            Decision::Mediate { translation } => {
                let frame = translation
                    .frame()
                    .below_4g()
                    .unwrap_or(GuestPhys(u32::MAX));
                let shadow = &self.mem.paging.shadow;
                if shadow.is_watched(frame) && !shadow.is_page_table(frame) {
                    self.stats.exit(ExitReason::DescriptorWrite);
                    let site = self.cpu.code_linear(self.cpu.state.eip);
                    self.stats.site(site, ExitReason::DescriptorWrite.name());
                    return self.descriptor_table_write(frame);
                }
                self.stats.exit(ExitReason::TableWrite);
                let site = self.cpu.code_linear(self.cpu.state.eip);
                self.stats.site(site, ExitReason::TableWrite.name());
                self.emulate_write(lin, "a page-table page")
            }
            Decision::CodeWrite { gpa, .. } => {
                self.stats.exit(ExitReason::CodeWrite);
                self.mem.paging.stats.code_writes += 1;
                self.code.pages.revert_physical(&self.mem.ram, gpa);
                self.mem
                    .with_host(|shadow, host, _| shadow.unmark_code(host, gpa))?;
                // An instruction writing into its own page would fault on its next fetch
                // and write again forever: do its write here instead.
                let eip_lin = self.cpu.code_linear(self.cpu.state.eip);
                let len = self
                    .fetch()
                    .decode_at(self.cpu.state.eip)
                    .map_or(1, |i| insn_len(&i));
                let own_page = [eip_lin, eip_lin.wrapping_add(len - 1)].iter().any(|&a| {
                    self.mem
                        .code_phys(a, user)
                        .is_some_and(|p| p.page() == gpa.page())
                });
                if own_page {
                    return self.emulate_write(lin, "its own code page");
                }
                Ok(None)
            }
            Decision::ScanFirst { gpa, translation } => {
                self.stats.exit(ExitReason::CodeFetch);
                self.scan_paged(lin, gpa, translation.lin)
            }
            Decision::Emulate { reason, .. } => {
                self.mem.paging.stats.emulated += 1;
                self.stats.exit(ExitReason::EmulatedAccess);
                if reason == EmulateReason::FetchFromPageTable {
                    return self.failure(format!(
                        "the guest executes code at {lin} in a page it uses as a page table; \
                         the monitor cannot patch it without corrupting the table"
                    ));
                }
                if error_code & PF_PK == 0 && reason == EmulateReason::ReadPatchedCode {
                    // Not reachable with protection keys; listed for completeness.
                    return self.failure(format!("unexpected read fault on code at {lin}"));
                }
                let Some(instr) = self.fetch().decode_at(self.cpu.state.eip) else {
                    return self.failure(format!("undecodable instruction accessing {lin}"));
                };
                self.emulate_access(&instr, lin)
            }
        }
    }

    /// Scans guest-physical page `gpa` for a fetch at linear `lin` (the page the guest
    /// reaches it through is `page_lin`), then marks it as code.
    fn scan_paged(&mut self, lin: GuestLinear, gpa: GuestPhys, page_lin: GuestLinear) -> Step {
        self.follow_code_segment()?;
        let user = self.cpu.user();
        let entry = self
            .fetch_entry(lin)
            .map(|e| GuestPhys(gpa.raw() | e.page_offset()));
        let next = self
            .mem
            .code_neighbour_phys(page_lin.wrapping_add(PAGE_SIZE), user)
            .map(GuestPhys::page);
        let prev = page_lin
            .raw()
            .checked_sub(PAGE_SIZE)
            .and_then(|p| self.mem.code_neighbour_phys(GuestLinear(p), user))
            .map(GuestPhys::page);
        let fetch = PagedFetch {
            entry,
            prev,
            next,
            linear: page_lin,
            size: self.fetch().code_size(page_lin),
        };
        let scan = self.code.pages.scan_physical(&self.mem.ram, gpa, fetch)?;
        let exec_only = scan.patched && self.mem.paging.exec_only;
        self.mem
            .with_host(|shadow, host, _| shadow.mark_code(host, gpa, exec_only))?;
        if let Some(stale) = scan.stale_next {
            self.code.pages.revert_physical(&self.mem.ram, stale);
            self.mem
                .with_host(|shadow, host, _| shadow.unmark_code(host, stale))?;
        }
        Ok(None)
    }

    /// Keeps scanned code executable only for the code size it was scanned with: called
    /// whenever the code segment may have changed (every emulated instruction and
    /// delivered event, every fetch fault). When CS changed size (or, in 16-bit code, the
    /// IP its base gives a page), pages scanned for the other size stop being executable,
    /// so their next fetch faults and rescans them for the size that runs them.
    pub(super) fn follow_code_segment(&mut self) -> Result<(), VmError> {
        if self.translating() {
            return Ok(());
        }
        let cs = self.cpu.state.sreg(SegReg::Cs);
        let pages = self.code.pages.other_size_pages(cs.db, cs.base);
        if pages.is_empty() {
            return Ok(());
        }
        if !self.mem.paging.enabled() {
            return Ok(self.code.pages.park_for_size(&mut self.mem.space, &pages)?);
        }
        for &page in &pages {
            self.code.pages.revert_physical(&self.mem.ram, page);
        }
        self.mem.with_host(|shadow, host, _| {
            for &page in &pages {
                shadow.unmark_code(host, page);
            }
        })?;
        Ok(())
    }

    /// Decodes the instruction at EIP and performs its write through the bus (write
    /// mediation).
    fn emulate_write(&mut self, lin: GuestLinear, what: &str) -> Step {
        let Some(instr) = self.fetch().decode_at(self.cpu.state.eip) else {
            return self.failure(format!("undecodable instruction writing {lin}"));
        };
        let site = self.cpu.code_linear(self.cpu.state.eip);
        let result = match self.mediate_write(&instr) {
            Ok(r) => r,
            Err(e) => return self.failure(e),
        };
        if matches!(result, Ok(Mediated::Done)) {
            self.tc_mediated_write(site);
        }
        match result {
            Ok(Mediated::Done) => Ok(None),
            Ok(Mediated::Unsupported) => self.failure(format!(
                "write to {lin} ({what}) by `{instr}`: this instruction form is not mediated"
            )),
            Err(fault) => self.hand_to_vcpu(GuestExit::Exception(fault)),
        }
    }

    /// Performs `instr`, at EIP, through the bus: its writes are mediated. `Err` is a
    /// monitor failure.
    pub(super) fn mediate_write(
        &mut self,
        instr: &Instruction,
    ) -> Result<Result<Mediated, Fault>, String> {
        let mut bus = MachineBus::new(
            &mut self.mem,
            &mut self.code.pages,
            &mut self.platform.ports,
            &mut self.platform.mmio,
        );
        let result = mediate(&mut self.cpu.state, &mut bus, instr);
        if let Some(f) = bus.failure.take() {
            return Err(format!("monitor failure during a mediated write: {f:?}"));
        }
        Ok(result)
    }

    /// Emulates the access of `instr` to linear `lin`, which has no host mapping.
    pub(super) fn emulate_access(&mut self, instr: &Instruction, lin: GuestLinear) -> Step {
        let mut bus = MachineBus::new(
            &mut self.mem,
            &mut self.code.pages,
            &mut self.platform.ports,
            &mut self.platform.mmio,
        );
        let result = data_access(&mut self.cpu.state, &mut bus, instr).map(|m| m == Mediated::Done);
        if let Some(f) = bus.failure.take() {
            return self.failure(format!("monitor failure during an emulated access: {f:?}"));
        }
        match result {
            Ok(true) => Ok(None),
            Ok(false) => self.failure(format!(
                "access to {lin} (page 0, no RAM, or patched code) by `{instr}`: only moves, \
                 read-modify-write and string stores are emulated there"
            )),
            Err(fault) => self.hand_to_vcpu(GuestExit::Exception(fault)),
        }
    }
}
