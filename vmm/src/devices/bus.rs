//! The port I/O bus: maps port ranges to devices and turns IN/OUT exits into device
//! register accesses.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::debug_exit::ExitRequest;
use super::lock;

/// Number of distinct I/O ports on IA-32 (the port space is 16 bits).
const PORT_SPACE: u32 = 0x1_0000;

/// What the VM should do after a port write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortAction {
    /// Keep running the guest.
    Continue,
    /// Stop the VM; the device asked for it (for example the debug-exit port).
    Exit(ExitRequest),
    /// The guest powered the machine off (ACPI S5 through PM1a control).
    PowerOff,
    /// The guest pulled the reset line (i8042 output port, port 0xCF9, port 0x92).
    Reset,
}

impl PortAction {
    /// Combines the outcomes of the byte writes a wide access was split into: an exit
    /// request wins over continuing.
    fn merge(self, other: PortAction) -> PortAction {
        match self {
            PortAction::Continue => other,
            PortAction::Exit(_) | PortAction::PowerOff | PortAction::Reset => self,
        }
    }
}

/// A device reached through port I/O: a state machine over register offsets.
///
/// `offset` is relative to the base the device was inserted at; `size` is 1, 2 or 4 and
/// never exceeds [`PortDevice::max_access_size`] (the bus splits wider accesses into
/// byte accesses at consecutive ports, as an 8-bit ISA bus does).
pub trait PortDevice {
    /// Reads the register at `offset`. Only the low `size` bytes of the result are used.
    fn read(&mut self, offset: u16, size: u8) -> u32;
    /// Writes `value` (its low `size` bytes) to the register at `offset`.
    fn write(&mut self, offset: u16, size: u8, value: u32) -> PortAction;
    /// The widest access the device decodes itself. Most ISA devices are 8 bits wide.
    fn max_access_size(&self) -> u8 {
        1
    }
}

/// A device shared between the bus and whoever else drives it (the run loop polls the
/// PIT and asks the PIC for vectors while the bus forwards the guest's port accesses).
pub type SharedPortDevice = Arc<Mutex<dyn PortDevice + Send>>;

/// Errors building the port map.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a range already on the bus.
    #[error(
        "port range {base:#06x}+{len:#x} overlaps the device at {existing_base:#06x}+{existing_len:#x}"
    )]
    Overlap {
        /// Base of the rejected range.
        base: u16,
        /// Length of the rejected range.
        len: u16,
        /// Base of the range it collides with.
        existing_base: u16,
        /// Length of the range it collides with.
        existing_len: u16,
    },
    /// The range is empty or runs past port 0xFFFF.
    #[error("port range {base:#06x}+{len:#x} is empty or runs past port 0xffff")]
    InvalidRange {
        /// Base of the rejected range.
        base: u16,
        /// Length of the rejected range.
        len: u16,
    },
    /// The new MMIO range overlaps a range already on the bus.
    #[error("MMIO range {base:#010x}+{len:#x} overlaps the {existing} device")]
    MmioOverlap {
        /// Base of the rejected range.
        base: u32,
        /// Length of the rejected range.
        len: u32,
        /// The device it collides with.
        existing: &'static str,
    },
    /// The MMIO range is empty or runs past 4 GiB.
    #[error("MMIO range {base:#010x}+{len:#x} is empty or runs past 4 GiB")]
    MmioRange {
        /// Base of the rejected range.
        base: u32,
        /// Length of the rejected range.
        len: u32,
    },
}

/// Accesses to ports no device claims, per port. They are not errors (real hardware
/// floats the data bus), but a guest poking at unexpected ports is worth seeing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Reads that returned all ones.
    pub unhandled_reads: u64,
    /// Writes that were dropped.
    pub unhandled_writes: u64,
}

struct Entry {
    len: u16,
    device: SharedPortDevice,
    /// Guest accesses to the device (a wide access split into bytes counts once).
    accesses: std::cell::Cell<u64>,
}

/// Maps port ranges to devices.
#[derive(Default)]
pub struct PortBus {
    /// The devices with their base ports, in insertion order; ranges never overlap.
    entries: Vec<(u16, Entry)>,
    /// Per port, 1 + the index into `entries` of the device claiming it, 0 for none:
    /// every IN and OUT finds its device with one load (empty until a device is
    /// inserted).
    by_port: Vec<u16>,
    stats: BTreeMap<u16, PortStats>,
    invalid_size_accesses: u64,
}

impl fmt::Debug for PortBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<_> = self
            .by_base()
            .into_iter()
            .map(|(base, e)| format!("{base:#06x}+{:#x}", e.len))
            .collect();
        f.debug_struct("PortBus")
            .field("ranges", &ranges)
            .field("stats", &self.stats)
            .field("invalid_size_accesses", &self.invalid_size_accesses)
            .finish()
    }
}

/// The mask selecting the low `size` bytes of a value, or `None` for an access size the
/// I/O instructions cannot produce.
fn size_mask(size: u8) -> Option<u32> {
    match size {
        1 => Some(0xff),
        2 => Some(0xffff),
        4 => Some(0xffff_ffff),
        _ => None,
    }
}

impl PortBus {
    /// An empty bus: every port reads as all ones.
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims ports `base..base + len` for `device`.
    ///
    /// # Errors
    /// [`BusError::Overlap`] if any port is already claimed, [`BusError::InvalidRange`] if
    /// the range is empty or leaves the 16-bit port space.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        device: SharedPortDevice,
    ) -> Result<(), BusError> {
        if len == 0 || u32::from(base) + u32::from(len) > PORT_SPACE {
            return Err(BusError::InvalidRange { base, len });
        }
        let end = u32::from(base) + u32::from(len);
        let last = u16::try_from(end - 1).unwrap_or(u16::MAX);
        // The range claiming the highest port of the new one, if any: of the ranges it
        // overlaps, the one starting last.
        if let Some((existing_base, e)) = (base..=last).rev().find_map(|p| self.find(p)) {
            return Err(BusError::Overlap {
                base,
                len,
                existing_base,
                existing_len: e.len,
            });
        }
        let Ok(tag) = u16::try_from(self.entries.len() + 1) else {
            // Every port claimed by a device of its own is 65,536 entries: one more
            // cannot be told apart, and cannot fit without overlapping.
            return Err(BusError::InvalidRange { base, len });
        };
        self.entries.push((
            base,
            Entry {
                len,
                device,
                accesses: std::cell::Cell::new(0),
            },
        ));
        if self.by_port.is_empty() {
            self.by_port = vec![0; PORT_SPACE as usize];
        }
        let start = usize::from(base);
        if let Some(ports) = self.by_port.get_mut(start..start + usize::from(len)) {
            ports.fill(tag);
        }
        Ok(())
    }

    /// The device claiming `port`, with its base.
    fn find(&self, port: u16) -> Option<(u16, &Entry)> {
        let tag = *self.by_port.get(usize::from(port))?;
        let (base, e) = self.entries.get(usize::from(tag).checked_sub(1)?)?;
        Some((*base, e))
    }

    /// Handles `IN` of `size` bytes (1, 2 or 4) from `port`.
    ///
    /// Unclaimed ports read as all ones and are counted in [`PortBus::stats`]. An access
    /// that straddles devices is split into byte accesses, like on the ISA bus.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let Some(mask) = size_mask(size) else {
            self.invalid_size_accesses += 1;
            return u32::MAX;
        };
        if let Some((base, e)) = self.find(port) {
            let offset = port - base;
            if u32::from(offset) + u32::from(size) <= u32::from(e.len) {
                e.accesses.set(e.accesses.get() + 1);
                let mut dev = lock(&e.device);
                if size <= dev.max_access_size() {
                    return dev.read(offset, size) & mask;
                }
                let mut value = 0;
                for i in 0..u16::from(size) {
                    value |= (dev.read(offset + i, 1) & 0xff) << (8 * i);
                }
                return value;
            }
        }
        let mut value = 0;
        for i in 0..u16::from(size) {
            value |= (self.read_byte(port.wrapping_add(i)) & 0xff) << (8 * i);
        }
        value
    }

    fn read_byte(&mut self, port: u16) -> u32 {
        match self.find(port) {
            Some((base, e)) => {
                e.accesses.set(e.accesses.get() + 1);
                lock(&e.device).read(port - base, 1)
            }
            None => {
                self.stats.entry(port).or_default().unhandled_reads += 1;
                0xff
            }
        }
    }

    /// Handles `OUT` of the low `size` bytes (1, 2 or 4) of `value` to `port`.
    ///
    /// Writes to unclaimed ports are dropped and counted in [`PortBus::stats`]. The result
    /// says whether a device asked the VM to stop.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> PortAction {
        let Some(mask) = size_mask(size) else {
            self.invalid_size_accesses += 1;
            return PortAction::Continue;
        };
        let value = value & mask;
        if let Some((base, e)) = self.find(port) {
            let offset = port - base;
            if u32::from(offset) + u32::from(size) <= u32::from(e.len) {
                e.accesses.set(e.accesses.get() + 1);
                let mut dev = lock(&e.device);
                if size <= dev.max_access_size() {
                    return dev.write(offset, size, value);
                }
                let mut action = PortAction::Continue;
                for i in 0..u16::from(size) {
                    let byte = (value >> (8 * i)) & 0xff;
                    action = action.merge(dev.write(offset + i, 1, byte));
                }
                return action;
            }
        }
        let mut action = PortAction::Continue;
        for i in 0..u16::from(size) {
            let byte = (value >> (8 * i)) & 0xff;
            action = action.merge(self.write_byte(port.wrapping_add(i), byte));
        }
        action
    }

    fn write_byte(&mut self, port: u16, value: u32) -> PortAction {
        match self.find(port) {
            Some((base, e)) => {
                e.accesses.set(e.accesses.get() + 1);
                lock(&e.device).write(port - base, 1, value)
            }
            None => {
                self.stats.entry(port).or_default().unhandled_writes += 1;
                PortAction::Continue
            }
        }
    }

    /// Guest accesses per device range, as `(base, length, accesses)`, by base port.
    pub fn device_accesses(&self) -> impl Iterator<Item = (u16, u16, u64)> + '_ {
        self.by_base()
            .into_iter()
            .map(|(base, e)| (base, e.len, e.accesses.get()))
    }

    /// The devices with their base ports, lowest first.
    fn by_base(&self) -> Vec<(u16, &Entry)> {
        let mut all: Vec<_> = self.entries.iter().map(|(base, e)| (*base, e)).collect();
        all.sort_unstable_by_key(|(base, _)| *base);
        all
    }

    /// Accesses to unclaimed ports, per port (ports never touched are absent).
    pub fn stats(&self) -> &BTreeMap<u16, PortStats> {
        &self.stats
    }

    /// Accesses with a size other than 1, 2 or 4 (only a decoder bug produces them).
    pub fn invalid_size_accesses(&self) -> u64 {
        self.invalid_size_accesses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records accesses so tests can see how the bus split and routed them.
    #[derive(Default)]
    struct Recorder {
        regs: [u8; 8],
        log: Vec<(char, u16, u8, u32)>,
        width: u8,
    }

    impl PortDevice for Recorder {
        fn read(&mut self, offset: u16, size: u8) -> u32 {
            self.log.push(('r', offset, size, 0));
            let mut v = 0u32;
            for i in 0..usize::from(size) {
                v |= u32::from(self.regs[usize::from(offset) + i]) << (8 * i);
            }
            v
        }
        fn write(&mut self, offset: u16, size: u8, value: u32) -> PortAction {
            self.log.push(('w', offset, size, value));
            for i in 0..usize::from(size) {
                self.regs[usize::from(offset) + i] = value.to_le_bytes()[i];
            }
            PortAction::Continue
        }
        fn max_access_size(&self) -> u8 {
            self.width
        }
    }

    fn recorder(width: u8) -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder {
            width,
            ..Default::default()
        }))
    }

    #[test]
    fn overlapping_ranges_are_rejected() {
        let mut bus = PortBus::new();
        bus.insert(0x3f8, 8, recorder(1)).unwrap();
        assert_eq!(
            bus.insert(0x3ff, 1, recorder(1)),
            Err(BusError::Overlap {
                base: 0x3ff,
                len: 1,
                existing_base: 0x3f8,
                existing_len: 8
            })
        );
        assert_eq!(
            bus.insert(0x3f0, 9, recorder(1)),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9,
                existing_base: 0x3f8,
                existing_len: 8
            })
        );
        // Adjacent ranges on both sides are fine.
        bus.insert(0x3f0, 8, recorder(1)).unwrap();
        bus.insert(0x400, 1, recorder(1)).unwrap();
        assert_eq!(
            bus.insert(0xffff, 2, recorder(1)),
            Err(BusError::InvalidRange {
                base: 0xffff,
                len: 2
            })
        );
        assert_eq!(
            bus.insert(0x10, 0, recorder(1)),
            Err(BusError::InvalidRange { base: 0x10, len: 0 })
        );
        bus.insert(0xffff, 1, recorder(1)).unwrap();
    }

    #[test]
    fn unknown_ports_read_all_ones_and_are_counted() {
        let mut bus = PortBus::new();
        assert_eq!(bus.read(0x1234, 1), 0xff);
        assert_eq!(bus.read(0x1234, 2), 0xffff);
        assert_eq!(bus.read(0x1234, 4), 0xffff_ffff);
        assert_eq!(bus.write(0x1234, 1, 7), PortAction::Continue);
        let s = bus.stats()[&0x1234];
        assert_eq!(s.unhandled_reads, 1 + 1 + 1);
        assert_eq!(s.unhandled_writes, 1);
        // The wide reads touched the following ports too.
        assert_eq!(bus.stats()[&0x1237].unhandled_reads, 1);
        assert_eq!(bus.read(0x1234, 3), u32::MAX);
        assert_eq!(bus.invalid_size_accesses(), 1);
    }

    #[test]
    fn accesses_reach_the_device_at_its_offset() {
        let mut bus = PortBus::new();
        let dev = recorder(4);
        bus.insert(0x100, 8, dev.clone()).unwrap();
        bus.write(0x102, 2, 0xdead_beef);
        assert_eq!(bus.read(0x102, 2), 0xbeef);
        assert_eq!(bus.read(0x100, 4), 0xbeef_0000);
        let log = &dev.lock().unwrap().log;
        assert_eq!(log[0], ('w', 2, 2, 0xbeef));
    }

    #[test]
    fn wide_accesses_to_byte_devices_are_split() {
        let mut bus = PortBus::new();
        let dev = recorder(1);
        bus.insert(0x100, 4, dev.clone()).unwrap();
        bus.write(0x100, 4, 0x4433_2211);
        assert_eq!(dev.lock().unwrap().regs[..4], [0x11, 0x22, 0x33, 0x44]);
        assert_eq!(bus.read(0x101, 2), 0x3322);
        // Straddling the end of the device: the byte past it floats high.
        assert_eq!(bus.read(0x102, 4), 0xffff_4433);
        assert_eq!(bus.stats()[&0x104].unhandled_reads, 1);
    }
}
