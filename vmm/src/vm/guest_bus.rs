//! The machine as the emulator sees it: guest memory through the guest's eyes, and the
//! port bus.
//!
//! With paging off a linear address is a physical one. Reads of code return the bytes
//! the guest wrote, not the trap bytes the rewriter planted; a write to a scanned code
//! page first reverts the page's patches, as a native write would (see [`CodePages`]).
//! Physical addresses with no RAM behind them read as all ones and ignore writes, as an
//! unclaimed bus cycle does on a PC.
//!
//! With paging on, every access is translated through the guest's tables as the CPU
//! would (setting accessed and dirty bits; a forbidden access is the guest's #PF). A
//! write to scanned code reverts its patches first; a write to a page-table page drops
//! the shadow mappings derived from the entries it changed.

use shadow_paging::{walk, Access};

use super::code::{CodePages, RamCode};
use super::guest_memory::GuestMemory;
use super::shadow_backend::{Paging, RamPhys};
use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::devices::{MmioBus, PortAction, PortBus};
use crate::memory::{GuestRam, LinearSpace};
use crate::vcpu::{Fault, GuestBus};

/// Why an emulated access could not be completed by the monitor itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusFailure {
    /// The host mapping of a code page could not be changed.
    Map(String),
}

/// Borrowed view of the machine for one emulated instruction or event delivery.
#[derive(Debug)]
pub struct MachineBus<'a> {
    /// Guest RAM.
    pub ram: &'a GuestRam,
    /// The host mapping of the guest's linear space.
    pub space: &'a mut LinearSpace,
    /// Scan state of guest code.
    pub code: &'a mut CodePages,
    /// Shadow paging.
    pub paging: &'a mut Paging,
    /// The port bus.
    pub ports: &'a mut PortBus,
    /// The devices at guest-physical addresses without RAM.
    pub mmio: &'a mut MmioBus,
    /// Set when a device asked the VM to stop.
    pub exit_request: Option<PortAction>,
    /// Set when the monitor failed to complete an access.
    pub failure: Option<BusFailure>,
}

impl<'a> MachineBus<'a> {
    /// The machine as one emulated instruction or event delivery sees it, built from the
    /// memory part, the code part's pages and the platform's port and MMIO buses.
    pub fn new(
        mem: &'a mut GuestMemory,
        code: &'a mut CodePages,
        ports: &'a mut PortBus,
        mmio: &'a mut MmioBus,
    ) -> Self {
        let GuestMemory { ram, space, paging } = mem;
        Self {
            ram,
            space,
            code,
            paging,
            ports,
            mmio,
            exit_request: None,
            failure: None,
        }
    }
}

impl MachineBus<'_> {
    fn chunks(addr: GuestLinear, len: usize) -> impl Iterator<Item = (GuestLinear, usize, usize)> {
        // Split at page boundaries and at the 4 GiB wrap: (linear, offset in buffer, len).
        let mut done = 0usize;
        let mut lin = addr;
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let room = PAGE_SIZE - lin.page_offset();
            // A chunk never exceeds a page: `n` fits in 32 bits.
            let n = room.min(u32::try_from(len - done).unwrap_or(room));
            let item = (lin, done, n as usize);
            done += n as usize;
            lin = lin.wrapping_add(n);
            Some(item)
        })
    }

    /// The guest-physical address `lin` translates to for this access, with paging on;
    /// `Ok(None)` above 4 GiB (PAE), where nothing answers (reads all ones, writes
    /// ignored).
    fn translate(&mut self, lin: GuestLinear, access: Access) -> Result<Option<GuestPhys>, Fault> {
        let ctx = *self.paging.shadow.context();
        let t = walk(&mut RamPhys(self.ram), &ctx, lin, access)
            .map_err(|pf| Fault::page_fault(pf.cr2, pf.error_code.0))?;
        Ok(t.phys.below_4g())
    }

    /// Whether `phys` is guest RAM (everything else is MMIO or nothing).
    fn is_ram(&self, phys: GuestPhys) -> bool {
        u64::from(phys.raw()) < self.ram.size()
    }

    fn write_paged(&mut self, lin: GuestLinear, data: &[u8], user: bool) -> Result<(), Fault> {
        let Some(phys) = self.translate(lin, Access::write(user))? else {
            return Ok(());
        };
        if !self.is_ram(phys) {
            self.mmio.write(phys, data);
            return Ok(());
        }
        let page = phys.page();
        if matches!(
            self.paging.shadow.page_use(page),
            shadow_paging::PageUse::Code { .. }
        ) {
            self.code.revert_physical(self.ram, page);
            let ((), err) = self
                .paging
                .with_host(self.ram, self.space, |s, h| s.unmark_code(h, page));
            self.keep(err);
            self.paging.stats.code_writes += 1;
        }
        let _ = rewriter::CodeMemoryMut::write(&mut RamCode(self.ram), phys.raw(), data);
        if self.paging.shadow.is_watched(page) {
            // At most a page (a chunk of one access).
            let len = u32::try_from(data.len()).unwrap_or(PAGE_SIZE);
            self.paging.descriptor_writes.push((phys, len));
        }
        if self.paging.shadow.is_page_table(page) {
            // At most a page (a chunk of one access).
            let len = u32::try_from(data.len()).unwrap_or(PAGE_SIZE);
            let ram = self.ram;
            let (_, err) = self.paging.with_host(ram, self.space, |s, h| {
                s.table_updated(&RamPhys(ram), h, phys, len)
            });
            self.keep(err);
            self.paging.stats.table_writes += 1;
            self.paging.forget_limits_read_from(page);
        }
        Ok(())
    }

    /// Keeps the first failed host call: the run loop stops the VM with it.
    fn keep(&mut self, err: Option<crate::memory::MemoryError>) {
        if let Some(e) = err {
            self.failure.get_or_insert(BusFailure::Map(e.to_string()));
        }
    }
}

impl GuestBus for MachineBus<'_> {
    fn read_linear(&mut self, addr: GuestLinear, buf: &mut [u8], user: bool) -> Result<(), Fault> {
        let paged = self.paging.enabled();
        for (lin, off, n) in Self::chunks(addr, buf.len()) {
            let phys = if paged {
                self.translate(lin, Access::read(user))?
            } else {
                Some(GuestPhys(lin.raw()))
            };
            let Some(dst) = buf.get_mut(off..off + n) else {
                break;
            };
            match phys {
                Some(p) if self.is_ram(p) => {
                    let got = self.code.read_original(self.ram, p, dst);
                    dst.get_mut(got..).unwrap_or_default().fill(0xff);
                }
                Some(p) => self.mmio.read(p, dst),
                None => dst.fill(0xff),
            }
        }
        Ok(())
    }

    fn write_linear(&mut self, addr: GuestLinear, data: &[u8], user: bool) -> Result<(), Fault> {
        if self.paging.enabled() {
            // Translate every page first: a faulting access writes nothing.
            for (lin, _, _) in Self::chunks(addr, data.len()) {
                self.translate(lin, Access::write(user))?;
            }
            for (lin, off, n) in Self::chunks(addr, data.len()) {
                let Some(part) = data.get(off..off + n) else {
                    break;
                };
                self.write_paged(lin, part, user)?;
            }
            return Ok(());
        }
        for (lin, off, n) in Self::chunks(addr, data.len()) {
            // Paging off: linear is physical.
            let phys = GuestPhys(lin.raw());
            let Some(part) = data.get(off..off + n) else {
                break;
            };
            if !self.is_ram(phys) {
                self.mmio.write(phys, part);
                continue;
            }
            if self.code.is_armed(phys) {
                if let Err(e) = self.code.on_write(self.space, phys) {
                    self.failure = Some(BusFailure::Map(e.to_string()));
                }
            }
            let _ = rewriter::CodeMemoryMut::write(&mut RamCode(self.ram), phys.raw(), part);
        }
        Ok(())
    }

    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        self.ports.read(port, size)
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        let action = self.ports.write(port, size, value);
        if action != PortAction::Continue {
            self.exit_request.get_or_insert(action);
        }
    }

    fn host_tsc(&mut self) -> u64 {
        // SAFETY: RDTSC has no memory effects; every x86-64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
}
