//! The guest as the kernel proxy sees it at a bound entry point: the vCPU registers and
//! guest memory through the engine's [`GuestBus`], so guest buffers are reached through
//! the guest's own translation (its page tables once paging is on).

use crate::{AccessError, GuestAccess, Reg};

use vmm::addr::{GuestLinear, PAGE_SIZE};
use vmm::vcpu::state::gpr;
use vmm::vcpu::{GuestBus, VcpuState};
use vmm::x86::{cr0, SegReg};

/// The guest stopped at a bound entry point.
#[derive(Debug)]
pub struct VcpuGuest<'a, B: GuestBus + ?Sized> {
    state: &'a VcpuState,
    bus: &'a mut B,
    /// Bytes of guest RAM: with paging off a linear address at or above it has nothing
    /// behind it (the bus would read it as all ones, as a PC's open bus does).
    ram_size: u64,
}

impl<'a, B: GuestBus + ?Sized> VcpuGuest<'a, B> {
    /// The guest whose registers are `state` and whose memory `bus` reaches.
    pub fn new(state: &'a VcpuState, bus: &'a mut B, ram_size: u64) -> Self {
        Self {
            state,
            bus,
            ram_size,
        }
    }

    /// Checks that `[addr, addr + len)` has memory behind it, page by page, as the
    /// guest's translation gives it.
    fn check(&mut self, addr: u32, len: u32, user: bool) -> Result<(), AccessError> {
        let end = u64::from(addr) + u64::from(len);
        if end > 1 << 32 {
            return Err(AccessError::Wraps {
                addr,
                len: u64::from(len),
            });
        }
        if self.state.cr0 & cr0::PG == 0 {
            // Paging off: linear is physical; only RAM is memory.
            if len > 0 && end > self.ram_size {
                let first_bad = u32::try_from(self.ram_size.max(u64::from(addr))).unwrap_or(addr);
                return Err(AccessError::Unmapped { addr: first_bad });
            }
            return Ok(());
        }
        // Paging on: touch one byte of every page so the bus's walk reports the first
        // page the caller may not read.
        let mut page = u64::from(addr);
        let mut byte = [0u8; 1];
        while let Ok(at) = u32::try_from(page) {
            if page >= end {
                break;
            }
            if let Err(fault) = self.bus.read_linear(GuestLinear(at), &mut byte, user) {
                return Err(fault_to_access(fault, at, user));
            }
            page = (page & !u64::from(PAGE_SIZE - 1)) + u64::from(PAGE_SIZE);
        }
        Ok(())
    }
}

/// What a #PF on a proxy access means for the call: a present page refused to a user
/// caller is a supervisor page; otherwise there is no mapping.
fn fault_to_access(fault: vmm::vcpu::Fault, at: u32, user: bool) -> AccessError {
    const PF_PRESENT: u32 = 1;
    let addr = fault.cr2.map_or(at, |c| c.raw());
    match fault.error_code {
        Some(code) if user && code & PF_PRESENT != 0 => AccessError::Supervisor { addr },
        _ => AccessError::Unmapped { addr },
    }
}

impl<B: GuestBus + ?Sized> GuestAccess for VcpuGuest<'_, B> {
    fn reg(&self, reg: Reg) -> u32 {
        let i = match reg {
            Reg::Eax => gpr::EAX,
            Reg::Ecx => gpr::ECX,
            Reg::Edx => gpr::EDX,
            Reg::Ebx => gpr::EBX,
            Reg::Esp => gpr::ESP,
            Reg::Ebp => gpr::EBP,
            Reg::Esi => gpr::ESI,
            Reg::Edi => gpr::EDI,
        };
        self.state.gpr[i]
    }

    fn user_caller(&self) -> bool {
        self.state.cpl() == 3
    }

    fn read_stack_u32(&mut self, esp_offset: u32) -> Result<u32, AccessError> {
        let esp = self.state.gpr[gpr::ESP].wrapping_add(esp_offset);
        let linear = self.state.sreg(SegReg::Ss).base.wrapping_add(esp);
        let bytes = self.read_buffer(linear, 4, self.user_caller())?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn read_buffer(&mut self, ptr: u32, len: u32, user: bool) -> Result<Vec<u8>, AccessError> {
        self.check(ptr, len, user)?;
        let mut buf = vec![0u8; len as usize];
        self.bus
            .read_linear(GuestLinear(ptr), &mut buf, user)
            .map_err(|f| fault_to_access(f, ptr, user))?;
        Ok(buf)
    }

    fn write_buffer(&mut self, ptr: u32, data: &[u8], user: bool) -> Result<(), AccessError> {
        let len = u32::try_from(data.len()).map_err(|_| AccessError::Wraps {
            addr: ptr,
            len: data.len() as u64,
        })?;
        // Checked in full first: nothing is written unless all of it can be.
        self.check(ptr, len, user)?;
        self.bus
            .write_linear(GuestLinear(ptr), data, user)
            .map_err(|f| fault_to_access(f, ptr, user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::vcpu::testbus::TestBus;

    #[test]
    fn buffers_past_ram_are_unmapped_and_ranges_never_wrap() {
        let state = VcpuState::flat_protected(0x10_0000, 0x08, 0x10);
        let mut bus = TestBus::new();
        bus.write_linear(GuestLinear(0x8000), b"hello", false)
            .unwrap();
        let mut g = VcpuGuest::new(&state, &mut bus, 0x10_0000);
        assert_eq!(g.read_buffer(0x8000, 5, false).unwrap(), b"hello");
        assert_eq!(
            g.read_buffer(0xffff_0000, 16, false),
            Err(AccessError::Unmapped { addr: 0xffff_0000 })
        );
        assert_eq!(
            g.read_buffer(0x000f_fff0, 0x20, false),
            Err(AccessError::Unmapped { addr: 0x10_0000 })
        );
        assert!(matches!(
            g.write_buffer(0xffff_fff0, &[0; 32], false),
            Err(AccessError::Wraps { .. })
        ));
        assert!(g.write_buffer(0x000f_fff0, &[7; 0x20], false).is_err());
        let mut probe = [0u8; 1];
        bus.read_linear(GuestLinear(0x000f_fff0), &mut probe, false)
            .unwrap();
        assert_eq!(probe[0], 0, "a refused write writes nothing");
    }

    #[test]
    fn with_paging_on_the_bus_translation_decides() {
        let mut state = VcpuState::flat_protected(0x10_0000, 0x08, 0x10);
        state.cr0 |= cr0::PG;
        let mut bus = TestBus::new();
        bus.unmapped.push((0x5000, 0x6000));
        let mut g = VcpuGuest::new(&state, &mut bus, 0x10_0000);
        assert_eq!(
            g.read_buffer(0x4ff0, 0x20, false),
            Err(AccessError::Unmapped { addr: 0x5000 })
        );
        assert!(g.read_buffer(0x6000, 0x20, false).is_ok());
    }
}
