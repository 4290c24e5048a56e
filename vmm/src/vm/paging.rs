//! The run loop's side of shadow paging (ARCHITECTURE.md §5–§6): host page faults while
//! guest paging is on go to the shadow state, and each of its decisions is acted on here;
//! control-register writes, INVLPG and privilege changes keep the shadow state in step.

use shadow_paging::{peek, Access, Decision, EmulateReason, HostAccess, PdpteFault};

use super::exits::{machine_bus, Before, Step};
use super::guest_bus::MachineBus;
use super::shadow::{user_limit, HostSpace, RamPhys};
use super::stats::ExitReason;
use super::{Vm, VmError};
use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::memory::Prot;
use crate::vcpu::emulate::{mediate, Mediated};
use crate::vcpu::exit::Exit as VExit;
use crate::vcpu::{Effects, Fault};

/// Host page-fault error code bit: protection-key violation (an execute-only page read).
const PF_PK: u32 = 1 << 5;

fn page_of(a: u32) -> u32 {
    a & !(PAGE_SIZE - 1)
}

impl Vm {
    /// Runs `f` with the host mapper; a failed host call is a monitor error that stops
    /// the VM (the host address space no longer matches the shadow state).
    fn with_host<T>(
        &mut self,
        f: impl FnOnce(&mut shadow_paging::ShadowState, &mut HostSpace<'_>, &RamPhys<'_>) -> T,
    ) -> Result<T, VmError> {
        let ram = &self.ram;
        let (out, err) = self
            .paging
            .with_host(ram, &mut self.space, |s, h| f(s, h, &RamPhys(ram)));
        match err {
            Some(e) => Err(VmError::Memory(e)),
            None => Ok(out),
        }
    }

    /// The guest-physical address of linear `lin` for an instruction fetch, without
    /// setting accessed bits (for decoding), or `lin` itself with paging off.
    pub(super) fn code_phys(&self, lin: u32) -> Option<u32> {
        if !self.paging.enabled() {
            return Some(lin);
        }
        let user = self.state.cpl() == 3;
        let ctx = self.paging.shadow.context();
        let mem = RamPhys(&self.ram);
        let t = peek(&mem, ctx, GuestLinear(lin), Access::fetch(user))
            .or_else(|| peek(&mem, ctx, GuestLinear(lin), Access::read(user)))?;
        let p = u32::try_from(t.phys.raw()).ok()?;
        (u64::from(p) < self.ram.size()).then_some(p)
    }

    /// Up to 15 bytes of original guest code at linear `lin`, through the guest's
    /// translation page by page.
    pub(super) fn read_code(&self, lin: u32) -> ([u8; 15], usize) {
        let mut buf = [0u8; 15];
        let mut done = 0;
        while done < buf.len() {
            let at = lin.wrapping_add(done as u32);
            let Some(phys) = self.code_phys(at) else {
                break;
            };
            let room = (PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize;
            let n = room.min(buf.len() - done);
            let got = self
                .code
                .read_original(&self.ram, phys, &mut buf[done..done + n]);
            done += got;
            if got < n {
                break;
            }
        }
        (buf, done)
    }

    /// A host page fault at `lin` while guest paging is on.
    pub(super) fn on_paged_fault(&mut self, lin: u32, error_code: u32) -> Step {
        let access = HostAccess::from_host_error_code(u64::from(error_code));
        let user = self.state.cpl() == 3;
        let decision = self.with_host(|shadow, host, _| {
            let mut mem = RamPhys(host.ram);
            shadow.on_host_fault(&mut mem, host, GuestLinear(lin), access, user)
        })?;
        if self.trace {
            eprintln!("vmm: paging: {lin:#010x} {access:?} user={user}: {decision:?}");
        }
        match decision {
            Decision::HiddenFault(_) => {
                self.paging.stats.hidden_faults += 1;
                self.stats.exit(ExitReason::HiddenPageFault);
                Ok(None)
            }
            Decision::TrueFault(pf) => {
                self.paging.stats.true_faults += 1;
                self.stats.exit(ExitReason::GuestPageFault);
                let fault = Fault::page_fault(GuestLinear(pf.cr2.raw()), pf.error_code.0);
                self.handle(VExit::Exception(fault))
            }
            Decision::Mediate { .. } => {
                self.stats.exit(ExitReason::TableWrite);
                self.emulate_write(lin, "a page-table page")
            }
            Decision::CodeWrite { gpa, .. } => {
                self.stats.exit(ExitReason::CodeWrite);
                self.paging.stats.code_writes += 1;
                self.code.revert_physical(&self.ram, gpa.raw());
                self.with_host(|shadow, host, _| shadow.unmark_code(host, gpa))?;
                // An instruction writing into its own page would fault on its next fetch
                // and write again forever: do its write here instead.
                let eip_lin = self.code_linear(self.state.eip);
                let own_page = self
                    .code_phys(eip_lin)
                    .is_some_and(|p| page_of(p) == gpa.raw());
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
                self.paging.stats.emulated += 1;
                self.stats.exit(ExitReason::EmulatedAccess);
                if reason == EmulateReason::FetchFromPageTable {
                    return self.failure(format!(
                        "the guest executes code at {lin:#010x} in a page it uses as a page table; \
                         the monitor cannot patch it without corrupting the table"
                    ));
                }
                if error_code & PF_PK == 0 && reason == EmulateReason::ReadPatchedCode {
                    // Not reachable with protection keys; listed for completeness.
                    return self.failure(format!("unexpected read fault on code at {lin:#010x}"));
                }
                let Some(instr) = self.decode_at(self.state.eip) else {
                    return self.failure(format!("undecodable instruction accessing {lin:#010x}"));
                };
                self.emulate_access(&instr, lin)
            }
        }
    }

    /// A #GP at CPL 3 with paging on may be the clamp of the user segment mirrors, not the
    /// guest's own segment limit: the access reaches above the highest user directory
    /// entry. The guest then gets the #PF its page tables give a user access there.
    pub(super) fn clamp_violation(&mut self, instr: &iced_x86::Instruction) -> Option<Fault> {
        let limit = self.paging.user_clamp?;
        if !self.paging.enabled() || self.state.cpl() != 3 {
            return None;
        }
        let info = iced_x86::InstructionInfoFactory::new()
            .info(instr)
            .used_memory()
            .to_vec();
        for m in info {
            let seg = crate::vcpu::SegReg::from_iced(m.segment())?;
            let cache = self.state.sreg(seg);
            let off = m.virtual_address(0, |reg, _, _| {
                if reg.is_segment_register() {
                    Some(0)
                } else {
                    Some(u64::from(crate::vcpu::emulate::operands::read_gpr(
                        &self.state,
                        reg,
                    )))
                }
            })? as u32;
            let size = m.memory_size().size().max(1) as u32;
            let lin = cache.base.wrapping_add(off);
            let last = lin.wrapping_add(size - 1);
            // Within the guest's own segment, beyond the clamp: the mirror refused it.
            if !cache.contains(off, size) || (lin < limit && last < limit) {
                continue;
            }
            let write = matches!(
                m.access(),
                iced_x86::OpAccess::Write
                    | iced_x86::OpAccess::ReadWrite
                    | iced_x86::OpAccess::CondWrite
                    | iced_x86::OpAccess::ReadCondWrite
            );
            let at = if lin >= limit { lin } else { limit };
            let access = if write {
                Access::write(true)
            } else {
                Access::read(true)
            };
            let ctx = *self.paging.shadow.context();
            if let Err(pf) =
                shadow_paging::walk(&mut RamPhys(&self.ram), &ctx, GuestLinear(at), access)
            {
                return Some(Fault::page_fault(
                    GuestLinear(pf.cr2.raw()),
                    pf.error_code.0,
                ));
            }
        }
        None
    }

    /// Decodes the instruction at EIP and performs its write through the bus.
    fn emulate_write(&mut self, lin: u32, what: &str) -> Step {
        let Some(instr) = self.decode_at(self.state.eip) else {
            return self.failure(format!("undecodable instruction writing {lin:#010x}"));
        };
        let mut bus = machine_bus!(self);
        let result = mediate(&mut self.state, &mut bus, &instr);
        if let Some(f) = bus.failure.take() {
            return self.failure(format!("monitor failure during a mediated write: {f:?}"));
        }
        match result {
            Ok(Mediated::Done) => Ok(None),
            Ok(Mediated::Unsupported) => self.failure(format!(
                "write to {lin:#010x} ({what}) by `{instr}`: this instruction form is not mediated"
            )),
            Err(fault) => self.handle(VExit::Exception(fault)),
        }
    }

    /// Scans guest-physical page `gpa` for a fetch at linear `lin` (the page the guest
    /// reaches it through is `page_lin`), then marks it as code.
    fn scan_paged(&mut self, lin: u32, gpa: GuestPhys, page_lin: GuestLinear) -> Step {
        let page = page_of(lin);
        // An instruction that straddles into the page faults at the page's first byte,
        // which is not an instruction start; the page's code starts where it ends.
        let start = self.code_linear(self.state.eip);
        let entry_lin = if page_of(start) == page {
            Some(start)
        } else {
            self.decode_at(self.state.eip)
                .map(|i| start.wrapping_add(i.len() as u32))
                .filter(|end| page_of(*end) == page)
        };
        let entry = entry_lin.map(|e| gpa.raw() | (e & (PAGE_SIZE - 1)));
        let next = self.code_phys(page_lin.raw().wrapping_add(PAGE_SIZE));
        let prev = page_lin
            .raw()
            .checked_sub(PAGE_SIZE)
            .and_then(|p| self.code_phys(p));
        let scan = self.code.scan_physical(
            &self.ram,
            gpa.raw(),
            entry,
            prev.map(page_of),
            next.map(page_of),
        )?;
        let exec_only = scan.patched && self.paging.exec_only;
        self.with_host(|shadow, host, _| shadow.mark_code(host, gpa, exec_only))?;
        if let Some(stale) = scan.stale_next {
            self.code.revert_physical(&self.ram, stale);
            self.with_host(|shadow, host, _| shadow.unmark_code(host, GuestPhys(stale)))?;
        }
        Ok(None)
    }

    /// Brings the shadow state in step with what an emulated instruction changed:
    /// CR0/CR3/CR4/EFER, INVLPG, and the privilege level (user mappings and segment
    /// clamps). Returns a stop when the guest state cannot continue.
    pub(super) fn apply_paging(&mut self, effects: &Effects, before: Before) -> Step {
        let ctx = *self.paging.shadow.context();
        let was_on = self.paging.enabled();
        let (cr0, cr3, cr4, efer) = (
            self.state.cr0,
            self.state.cr3,
            self.state.cr4,
            self.state.msr.efer,
        );
        let mut result: Result<(), PdpteFault> = Ok(());
        if efer != ctx.efer {
            self.with_host(|shadow, host, _| shadow.write_efer(host, efer))?;
        }
        if cr0 != ctx.cr0 || cr4 != ctx.cr4 || effects.paging_mode_changed {
            result = self.with_host(|shadow, host, mem| {
                shadow
                    .write_cr4(mem, host, cr4)
                    .and_then(|()| shadow.write_cr0(mem, host, cr0))
            })?;
        }
        if result.is_ok() && (effects.cr3_written || cr3 != self.paging.shadow.context().cr3) {
            result = self.with_host(|shadow, host, mem| shadow.write_cr3(mem, host, cr3))?;
        }
        if let Err(e) = result {
            // A PDPTE with reserved bits: the MOV to CR0/CR3/CR4 faults with #GP(0) and
            // changes nothing (SDM Vol. 3A §4.4.1).
            if self.trace {
                eprintln!(
                    "vmm: PDPTE {} = {:#x} at {} has reserved bits: #GP(0)",
                    e.index, e.value, e.gpa
                );
            }
            self.state.eip = before.eip;
            self.state.cr0 = before.cr0;
            self.state.cr3 = before.cr3;
            self.state.cr4 = before.cr4;
            let restored = self.with_host(|shadow, host, mem| {
                shadow
                    .write_cr4(mem, host, before.cr4)
                    .and_then(|()| shadow.write_cr0(mem, host, before.cr0))
                    .and_then(|()| shadow.write_cr3(mem, host, before.cr3))
            })?;
            if restored.is_err() {
                return self.failure(
                    "the guest's previous PAE roots no longer load after a refused PDPTE load"
                        .to_string(),
                );
            }
            return self.handle(VExit::Exception(Fault::gp0()));
        }
        let now_on = self.paging.enabled();
        if now_on && !was_on {
            self.enter_paging()?;
        } else if was_on && !now_on {
            self.leave_paging()?;
        }
        if let (Some(lin), true) = (effects.invlpg, now_on) {
            self.with_host(|shadow, host, _| shadow.invlpg(host, lin))?;
        }
        if effects.cpl_changed || now_on != was_on {
            self.privilege_changed()?;
        }
        Ok(None)
    }

    /// The virtual CPL (or the paging mode) changed: user mode sees only user rights,
    /// and its segments are clamped below the kernel's part of the address space.
    fn privilege_changed(&mut self) -> Result<(), VmError> {
        let user = self.state.cpl() == 3 && self.paging.enabled();
        let clamp = if user {
            let limit = user_limit(&self.ram, self.paging.shadow.context());
            let lin = GuestLinear(limit.unwrap_or(u32::MAX));
            self.with_host(|shadow, host, _| shadow.enter_user_mode(host, lin))?;
            limit
        } else {
            self.paging.shadow.leave_user_mode();
            None
        };
        if clamp != self.paging.user_clamp {
            self.paging.user_clamp = clamp;
            self.mirrors.sync(&self.state, 0x3f, clamp, &mut self.ctx)?;
        }
        Ok(())
    }

    /// CR0.PG went on: the 1:1 RAM mapping goes, shadow mappings fill in on demand;
    /// pages scanned so far keep their patches as scanned guest-physical pages.
    fn enter_paging(&mut self) -> Result<(), VmError> {
        let len = self.ram_linear_len();
        self.space.unmap(GuestLinear(PAGE_SIZE), len)?;
        let scanned = self.code.enter_paging(&self.ram);
        let exec_only = self.paging.exec_only;
        let patched: Vec<(u32, bool)> = scanned
            .into_iter()
            .map(|p| (p, exec_only && self.code.patches.is_patched(p)))
            .collect();
        self.with_host(|shadow, host, _| {
            for (page, eo) in patched {
                shadow.mark_code(host, GuestPhys(page), eo);
            }
        })?;
        Ok(())
    }

    /// CR0.PG went off: back to RAM mapped 1:1, writable, not executable, nothing
    /// scanned.
    fn leave_paging(&mut self) -> Result<(), VmError> {
        self.with_host(|shadow, host, _| {
            shadow.flush_all(host);
        })?;
        self.code.leave_paging(&self.ram);
        let len = self.ram_linear_len();
        self.space.map(
            GuestLinear(PAGE_SIZE),
            &self.ram,
            GuestPhys(PAGE_SIZE),
            len,
            Prot::RW,
        )?;
        Ok(())
    }

    fn ram_linear_len(&self) -> u32 {
        u32::try_from(self.ram.size() - u64::from(PAGE_SIZE)).unwrap_or(!(PAGE_SIZE - 1))
    }
}
