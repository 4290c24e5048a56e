//! The MMIO bus: maps guest-physical ranges with no RAM behind them (the local APIC page,
//! the IOAPIC) to devices. Those ranges are never shadow-mapped, so a guest access
//! faults; the monitor decodes the instruction and the emulator's access lands here
//! (ARCHITECTURE.md §7).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use super::bus::BusError;
use super::lock;
use crate::addr::GuestPhys;

/// A device reached through memory-mapped registers: a state machine over register
/// offsets, as [`super::PortDevice`] is for ports.
///
/// `offset` is relative to the base the device was inserted at; `data` is the access,
/// 1, 2, 4 or 8 bytes, little-endian, never crossing the device's range.
pub trait MmioDevice {
    /// Reads `data.len()` bytes of the registers at `offset`.
    fn read(&mut self, offset: u32, data: &mut [u8]);
    /// Writes `data` to the registers at `offset`.
    fn write(&mut self, offset: u32, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (the run loop asks the
/// local APIC for vectors while the bus forwards the guest's accesses).
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice + Send>>;

/// Accesses to an MMIO address no device claims. Not errors (such reads float to all
/// ones, writes are dropped, as on a PC), but worth seeing in `--stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmioStats {
    /// Reads that returned all ones.
    pub unhandled_reads: u64,
    /// Writes that were dropped.
    pub unhandled_writes: u64,
}

struct Entry {
    len: u32,
    name: &'static str,
    device: SharedMmioDevice,
    accesses: u64,
}

/// Maps guest-physical ranges to devices; ranges never overlap.
#[derive(Default)]
pub struct MmioBus {
    /// Keyed by base address.
    ranges: BTreeMap<u32, Entry>,
    /// Unclaimed accesses, per address.
    unknown: BTreeMap<u32, MmioStats>,
}

impl fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<_> = self
            .ranges
            .iter()
            .map(|(base, e)| format!("{} {base:#010x}+{:#x}", e.name, e.len))
            .collect();
        f.debug_struct("MmioBus")
            .field("ranges", &ranges)
            .field("unknown", &self.unknown)
            .finish()
    }
}

impl MmioBus {
    /// An empty bus: every address reads as all ones.
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `base..base + len` for `device`, called `name` in statistics.
    ///
    /// # Errors
    /// [`BusError::MmioOverlap`] if any byte is already claimed, [`BusError::MmioRange`]
    /// if the range is empty or runs past 4 GiB.
    pub fn insert(
        &mut self,
        base: GuestPhys,
        len: u32,
        name: &'static str,
        device: SharedMmioDevice,
    ) -> Result<(), BusError> {
        let base = base.raw();
        if len == 0 || u64::from(base) + u64::from(len) > 1 << 32 {
            return Err(BusError::MmioRange { base, len });
        }
        // No overflow: the range ends at 4 GiB at the latest.
        let last = base + (len - 1);
        if let Some((&eb, e)) = self.ranges.range(..=last).next_back() {
            if u64::from(eb) + u64::from(e.len) > u64::from(base) {
                return Err(BusError::MmioOverlap {
                    base,
                    len,
                    existing: e.name,
                });
            }
        }
        self.ranges.insert(
            base,
            Entry {
                len,
                name,
                device,
                accesses: 0,
            },
        );
        Ok(())
    }

    /// The device whose range holds all of `addr..addr + len`, counted as accessed, and
    /// the offset of `addr` in it.
    fn claim(&mut self, addr: u32, len: usize) -> Option<(&Entry, u32)> {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let (&base, e) = self.ranges.range_mut(..=addr).next_back()?;
        if u64::from(addr) + u64::from(len) > u64::from(base) + u64::from(e.len) {
            return None;
        }
        e.accesses += 1;
        Some((e, addr - base))
    }

    /// Reads `data.len()` bytes at `addr`. An access no single device claims whole
    /// reads as all ones and is counted by address.
    pub fn read(&mut self, addr: GuestPhys, data: &mut [u8]) {
        let addr = addr.raw();
        match self.claim(addr, data.len()) {
            Some((e, offset)) => lock(&e.device).read(offset, data),
            None => {
                self.unknown.entry(addr).or_default().unhandled_reads += 1;
                data.fill(0xff);
            }
        }
    }

    /// Writes `data` at `addr`. An access no single device claims whole is dropped and
    /// counted by address.
    pub fn write(&mut self, addr: GuestPhys, data: &[u8]) {
        let addr = addr.raw();
        match self.claim(addr, data.len()) {
            Some((e, offset)) => lock(&e.device).write(offset, data),
            None => self.unknown.entry(addr).or_default().unhandled_writes += 1,
        }
    }

    /// Accesses per device name.
    pub fn device_accesses(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.ranges.values().map(|e| (e.name, e.accesses))
    }

    /// Accesses to unclaimed addresses, per address (addresses never touched are absent).
    pub fn unknown(&self) -> &BTreeMap<u32, MmioStats> {
        &self.unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sixteen bytes of registers that read back what was written.
    #[derive(Default)]
    struct Scratch([u8; 16]);

    impl MmioDevice for Scratch {
        fn read(&mut self, offset: u32, data: &mut [u8]) {
            let o = usize::try_from(offset).unwrap();
            data.copy_from_slice(&self.0[o..o + data.len()]);
        }
        fn write(&mut self, offset: u32, data: &[u8]) {
            let o = usize::try_from(offset).unwrap();
            self.0[o..o + data.len()].copy_from_slice(data);
        }
    }

    fn scratch() -> SharedMmioDevice {
        Arc::new(Mutex::new(Scratch::default()))
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let mut bus = MmioBus::new();
        bus.insert(GuestPhys(0xfee0_0000), 16, "scratch", scratch())
            .unwrap();
        bus.write(GuestPhys(0xfee0_0004), &0x1234_5678u32.to_le_bytes());
        let mut word = [0; 2];
        bus.read(GuestPhys(0xfee0_0006), &mut word);
        assert_eq!(u16::from_le_bytes(word), 0x1234);
        assert_eq!(bus.device_accesses().collect::<Vec<_>>(), [("scratch", 2)]);
        assert!(bus.unknown().is_empty());
    }

    #[test]
    fn unclaimed_and_straddling_accesses_float_and_are_counted() {
        let mut bus = MmioBus::new();
        bus.insert(GuestPhys(0x1000), 16, "scratch", scratch())
            .unwrap();
        let mut dword = [0; 4];
        bus.read(GuestPhys(0x100e), &mut dword);
        assert_eq!(dword, [0xff; 4]);
        bus.write(GuestPhys(0x2000), &[1]);
        assert_eq!(bus.unknown()[&0x100e].unhandled_reads, 1);
        assert_eq!(bus.unknown()[&0x2000].unhandled_writes, 1);
    }

    #[test]
    fn overlaps_and_empty_ranges_are_refused() {
        let mut bus = MmioBus::new();
        bus.insert(GuestPhys(0x1000), 0x100, "a", scratch())
            .unwrap();
        assert!(matches!(
            bus.insert(GuestPhys(0x10ff), 1, "b", scratch()),
            Err(BusError::MmioOverlap { existing: "a", .. })
        ));
        assert!(bus
            .insert(GuestPhys(0x0f00), 0x101, "c", scratch())
            .is_err());
        assert!(bus.insert(GuestPhys(0x2000), 0, "d", scratch()).is_err());
        bus.insert(GuestPhys(0xffff_f000), 0x1000, "top", scratch())
            .unwrap();
        assert!(bus
            .insert(GuestPhys(0xffff_ff00), 0x200, "e", scratch())
            .is_err());
        bus.insert(GuestPhys(0x1100), 0x100, "adjacent", scratch())
            .unwrap();
    }
}
