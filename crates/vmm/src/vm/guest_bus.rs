//! The machine as the emulator sees it: guest memory through the guest's eyes, and the
//! port bus.
//!
//! With paging off a linear address is a physical one. Reads of code return the bytes
//! the guest wrote, not the trap bytes the rewriter planted; a write to a scanned code
//! page first reverts the page's patches, as a native write would (see [`CodePages`]).
//! Physical addresses with no RAM behind them read as all ones and ignore writes, as an
//! unclaimed bus cycle does on a PC.

use super::code::{CodePages, RamCode};
use crate::addr::{GuestLinear, PAGE_SIZE};
use crate::devices::{ExitRequest, PortAction, PortBus};
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
    /// The port bus.
    pub ports: &'a mut PortBus,
    /// Set when a device asked the VM to stop.
    pub exit_request: Option<ExitRequest>,
    /// Set when the monitor failed to complete an access.
    pub failure: Option<BusFailure>,
}

impl MachineBus<'_> {
    fn chunks(addr: GuestLinear, len: usize) -> impl Iterator<Item = (u32, usize, usize)> {
        // Split at page boundaries and at the 4 GiB wrap: (linear, offset in buffer, len).
        let mut done = 0usize;
        let mut lin = addr.raw();
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let room = (PAGE_SIZE - (lin & (PAGE_SIZE - 1))) as usize;
            let n = room.min(len - done);
            let item = (lin, done, n);
            done += n;
            lin = lin.wrapping_add(n as u32);
            Some(item)
        })
    }
}

impl GuestBus for MachineBus<'_> {
    fn read_linear(&mut self, addr: GuestLinear, buf: &mut [u8], _user: bool) -> Result<(), Fault> {
        for (lin, off, n) in Self::chunks(addr, buf.len()) {
            let dst = &mut buf[off..off + n];
            let got = self.code.read_original(self.ram, lin, dst);
            dst[got..].fill(0xff);
        }
        Ok(())
    }

    fn write_linear(&mut self, addr: GuestLinear, data: &[u8], _user: bool) -> Result<(), Fault> {
        for (lin, off, n) in Self::chunks(addr, data.len()) {
            if self.code.is_armed(lin) {
                if let Err(e) = self.code.on_write(self.space, lin) {
                    self.failure = Some(BusFailure::Map(e.to_string()));
                }
            }
            let _ =
                rewriter::CodeMemoryMut::write(&mut RamCode(self.ram), lin, &data[off..off + n]);
        }
        Ok(())
    }

    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        self.ports.read(port, size)
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        if let PortAction::Exit(req) = self.ports.write(port, size, value) {
            self.exit_request.get_or_insert(req);
        }
    }

    fn host_tsc(&mut self) -> u64 {
        // SAFETY: RDTSC has no memory effects; every x86-64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
}

/// Reads up to 15 bytes of original guest code at `lin` (paging off).
pub fn fetch_code(ram: &GuestRam, code: &CodePages, lin: u32) -> ([u8; 15], usize) {
    let mut buf = [0u8; 15];
    let n = code.read_original(ram, lin, &mut buf);
    (buf, n)
}
