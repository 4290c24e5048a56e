//! The I/O APIC (82093AA) at [`pc::IOAPIC_BASE`]: 24 input pins, each routed by a
//! redirection-table entry to a vector on the local APIC.
//!
//! Registers are reached indirectly: the guest writes a register index to IOREGSEL
//! (offset 0) and reads or writes it through IOWIN (offset 0x10, 32-bit accesses only).
//! Index 0 is the ID, 1 the version (0x11, 23 as the highest entry), 2 the arbitration
//! ID, and 0x10 + 2n / 0x11 + 2n the low and high halves of entry n.
//!
//! Inputs are driven with [`IoApic::set_pin`]. An edge-triggered pin interrupts on a
//! rising edge while unmasked (an edge while masked is lost, as the 82093AA says); a
//! level-triggered pin interrupts while asserted and sets the entry's remote IRR, which
//! the local APIC's EOI for that vector clears ([`IoApic::eoi`]); a pin still asserted
//! then interrupts again. Fixed and lowest-priority delivery reach the one local APIC
//! through an [`ApicBus`]; other delivery modes (SMI, NMI, INIT, ExtINT) are not modelled.
//! The polarity bit is stored but, as in QEMU, ISA inputs are taken as active high.
//!
//! [`pc::IOAPIC_BASE`]: super::pc::IOAPIC_BASE

use crate::bits::{high32, low32};

use super::irq::InterruptPins;
use super::lapic::{ApicBus, ApicMessage, DeliveryMode};
use super::mmio::MmioDevice;
use super::pc::{IOAPIC_ID, IOAPIC_PINS};

/// IOREGSEL's offset in the window.
pub const IOREGSEL: u32 = 0x00;
/// IOWIN's offset in the window.
pub const IOWIN: u32 = 0x10;
/// Register indices.
pub mod index {
    /// IOAPIC ID (bits 27:24).
    pub const ID: u8 = 0x00;
    /// Version and highest redirection entry.
    pub const VERSION: u8 = 0x01;
    /// Arbitration ID.
    pub const ARBITRATION: u8 = 0x02;
    /// Low half of redirection entry 0; entry n is at 0x10 + 2n.
    pub const REDIRECTION: u8 = 0x10;
}

/// The version register: [`super::pc::IOAPIC_VERSION`] (0x11, the 82093AA), with 23 as the highest
/// entry index.
pub const IOAPIC_VERSION: u32 = super::pc::IOAPIC_VERSION as u32 | ((IOAPIC_PINS as u32 - 1) << 16);

/// Entry bit 12: delivery status (read-only, never pending here).
pub const ENTRY_DELIVERY_PENDING: u64 = 1 << 12;
/// Entry bit 14: remote IRR (read-only): a level interrupt was accepted and not yet ended.
pub const ENTRY_REMOTE_IRR: u64 = 1 << 14;
/// Entry bit 15: level-triggered.
pub const ENTRY_LEVEL: u64 = 1 << 15;
/// Entry bit 16: masked.
pub const ENTRY_MASKED: u64 = 1 << 16;
/// Entry bit 11: logical destination mode.
pub const ENTRY_LOGICAL: u64 = 1 << 11;
/// Writable bits: vector, delivery mode, destination mode, polarity, trigger mode, mask
/// (low half) and the destination (bits 63:56).
const ENTRY_WRITABLE: u64 = 0xff00_0000_0001_afff;

const PINS: usize = IOAPIC_PINS as usize;

/// The IOAPIC's registers, delivering to `B`. Plain state.
#[derive(Debug, Clone)]
pub struct IoApic<B> {
    bus: B,
    id: u8,
    ioregsel: u8,
    entries: [u64; PINS],
    /// The level of each input pin, bit per pin.
    levels: u32,
    /// Requests waiting to be delivered (a level pin asserted, an edge not yet sent).
    irr: u32,
}

impl<B: ApicBus> IoApic<B> {
    /// The reset state: ID [`IOAPIC_ID`], every entry masked, edge-triggered, vector 0.
    pub fn new(bus: B) -> Self {
        Self {
            bus,
            id: IOAPIC_ID,
            ioregsel: 0,
            entries: [ENTRY_MASKED; PINS],
            levels: 0,
            irr: 0,
        }
    }

    /// Redirection entry `pin`, as the guest reads it.
    pub fn entry(&self, pin: u8) -> Option<u64> {
        self.entries.get(usize::from(pin)).copied()
    }

    /// Drives input `pin` (0–23; others are ignored) to `level`.
    pub fn set_pin(&mut self, pin: u8, level: bool) {
        let Some(&entry) = self.entries.get(usize::from(pin)) else {
            return;
        };
        let bit = 1u32 << pin;
        let was = self.levels & bit != 0;
        if level {
            self.levels |= bit;
        } else {
            self.levels &= !bit;
        }
        if entry & ENTRY_LEVEL != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && !was && entry & ENTRY_MASKED == 0 {
            self.irr |= bit;
        }
        self.service();
    }

    /// The local APIC ended level-triggered `vector`: entries with that vector drop their
    /// remote IRR, and a pin still asserted interrupts again.
    pub fn eoi(&mut self, vector: u8) {
        for e in &mut self.entries {
            if e.to_le_bytes()[0] == vector && *e & ENTRY_LEVEL != 0 {
                *e &= !ENTRY_REMOTE_IRR;
            }
        }
        self.service();
    }

    /// Sends every deliverable request: unmasked, and for a level pin without a remote IRR.
    fn service(&mut self) {
        for (pin, e) in self.entries.iter_mut().enumerate() {
            let bit = 1u32 << pin;
            if self.irr & bit == 0 || *e & ENTRY_MASKED != 0 {
                continue;
            }
            let level = *e & ENTRY_LEVEL != 0;
            if level {
                if *e & ENTRY_REMOTE_IRR != 0 {
                    continue;
                }
                *e |= ENTRY_REMOTE_IRR;
            } else {
                self.irr &= !bit;
            }
            let low = e.to_le_bytes();
            self.bus.deliver(&ApicMessage {
                vector: low[0],
                mode: DeliveryMode::from_bits(u32::from(low[1]) << 8),
                level,
                dest: low[7],
                logical: *e & ENTRY_LOGICAL != 0,
            });
        }
    }

    fn read_window(&self) -> u32 {
        match self.ioregsel {
            index::ID | index::ARBITRATION => u32::from(self.id) << 24,
            index::VERSION => IOAPIC_VERSION,
            sel => Self::entry_half(sel)
                .and_then(|(pin, high)| Some((*self.entries.get(pin)?, high)))
                .map_or(0, |(e, high)| if high { high32(e) } else { low32(e) }),
        }
    }

    fn write_window(&mut self, v: u32) {
        match self.ioregsel {
            index::ID => self.id = (v >> 24).to_le_bytes()[0] & 0xf,
            index::VERSION | index::ARBITRATION => {}
            sel => {
                let Some((entry, high)) = Self::entry_half(sel)
                    .and_then(|(pin, high)| Some((self.entries.get_mut(pin)?, high)))
                else {
                    return;
                };
                let old = *entry;
                let merged = if high {
                    (old & 0xffff_ffff) | (u64::from(v) << 32)
                } else {
                    (old & !0xffff_ffff) | u64::from(v)
                };
                let mut e = (merged & ENTRY_WRITABLE) | (old & ENTRY_REMOTE_IRR);
                if e & ENTRY_LEVEL == 0 {
                    // An edge entry has no remote IRR (Linux clears a stuck one this way).
                    e &= !ENTRY_REMOTE_IRR;
                }
                *entry = e;
                self.service();
            }
        }
    }

    /// The entry and half (`true`: high) register index `sel` names.
    fn entry_half(sel: u8) -> Option<(usize, bool)> {
        let i = usize::from(sel.checked_sub(index::REDIRECTION)?);
        (i / 2 < PINS).then_some((i / 2, i % 2 == 1))
    }
}

impl<B: ApicBus> InterruptPins for IoApic<B> {
    fn set_pin(&mut self, pin: u8, level: bool) {
        IoApic::set_pin(self, pin, level);
    }
}

impl<B: ApicBus> MmioDevice for IoApic<B> {
    /// IOREGSEL reads back; IOWIN answers 32-bit reads only; the rest reads as zero.
    fn read(&mut self, offset: u32, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => u32::from(self.ioregsel),
            IOWIN if data.len() == 4 => self.read_window(),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u32, data: &[u8]) {
        match offset {
            IOREGSEL => {
                if let Some(&sel) = data.first() {
                    self.ioregsel = sel;
                }
            }
            IOWIN => {
                if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                    self.write_window(u32::from_le_bytes(bytes));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records the messages the IOAPIC sends.
    #[derive(Debug, Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<ApicMessage>>>);

    impl ApicBus for Recorder {
        fn deliver(&self, msg: &ApicMessage) {
            self.0.lock().unwrap().push(*msg);
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<u8> {
            self.0.lock().unwrap().drain(..).map(|m| m.vector).collect()
        }
    }

    fn ioapic() -> (IoApic<Recorder>, Recorder) {
        let r = Recorder::default();
        (IoApic::new(r.clone()), r)
    }

    fn write_reg(io: &mut IoApic<Recorder>, sel: u8, v: u32) {
        io.write(IOREGSEL, &[sel]);
        io.write(IOWIN, &v.to_le_bytes());
    }

    fn read_reg(io: &mut IoApic<Recorder>, sel: u8) -> u32 {
        io.write(IOREGSEL, &[sel]);
        let mut b = [0; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    fn low(pin: u8) -> u8 {
        index::REDIRECTION + 2 * pin
    }

    #[test]
    fn identification_registers() {
        let (mut io, _) = ioapic();
        assert_eq!(read_reg(&mut io, index::VERSION), 0x0017_0011);
        assert_eq!(read_reg(&mut io, index::ID), 0);
        assert_eq!(read_reg(&mut io, index::ARBITRATION), 0);
        write_reg(&mut io, index::ID, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, index::ID), 0x0f00_0000);
        write_reg(&mut io, index::VERSION, 0);
        assert_eq!(read_reg(&mut io, index::VERSION), 0x0017_0011);
        let mut b = [0; 1];
        io.read(IOREGSEL, &mut b);
        assert_eq!(b, [index::VERSION]);
        assert_eq!(read_reg(&mut io, 0x40), 0, "past the last entry");
    }

    #[test]
    fn redirection_entries_read_back_without_read_only_bits() {
        let (mut io, _) = ioapic();
        for pin in 0..IOAPIC_PINS {
            assert_eq!(read_reg(&mut io, low(pin)), 0x0001_0000);
        }
        write_reg(&mut io, low(23), 0xffff_ffff);
        write_reg(&mut io, low(23) + 1, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, low(23)), 0x0001_afff);
        assert_eq!(read_reg(&mut io, low(23) + 1), 0xff00_0000);
        // A 16-bit IOWIN access does nothing.
        io.write(IOREGSEL, &[low(5)]);
        io.write(IOWIN, &[0x30, 0]);
        assert_eq!(read_reg(&mut io, low(5)), 0x0001_0000);
    }

    #[test]
    fn edge_pins_deliver_rising_edges_while_unmasked() {
        let (mut io, r) = ioapic();
        io.set_pin(2, true);
        io.set_pin(2, false);
        write_reg(&mut io, low(2), 0x30);
        assert!(r.take().is_empty(), "an edge while masked is lost");
        io.set_pin(2, true);
        io.set_pin(2, true);
        io.set_pin(2, false);
        assert_eq!(r.take(), [0x30]);
        io.set_pin(2, true);
        io.set_pin(2, false);
        assert_eq!(r.take(), [0x30]);
        write_reg(&mut io, low(2), 0x30 | 1 << 16);
        io.set_pin(2, true);
        assert!(r.take().is_empty());
    }

    #[test]
    fn level_pins_hold_remote_irr_until_eoi() {
        let (mut io, r) = ioapic();
        write_reg(&mut io, low(9), 0x41 | (1 << 15));
        io.set_pin(9, true);
        let m = r.0.lock().unwrap().clone();
        assert_eq!(m.len(), 1);
        assert!(m[0].level);
        r.take();
        assert_ne!(read_reg(&mut io, low(9)) & (1 << 14), 0);
        io.eoi(0x41);
        assert_eq!(r.take(), [0x41], "still asserted: interrupts again");
        io.set_pin(9, false);
        io.eoi(0x41);
        assert_eq!(read_reg(&mut io, low(9)) & (1 << 14), 0);
        assert!(r.take().is_empty());
        // Masked while asserted: delivered when unmasked.
        write_reg(&mut io, low(9), 0x41 | (1 << 15) | (1 << 16));
        io.set_pin(9, true);
        assert!(r.take().is_empty());
        write_reg(&mut io, low(9), 0x41 | (1 << 15));
        assert_eq!(r.take(), [0x41]);
        // Switching to edge drops the remote IRR.
        write_reg(&mut io, low(9), 0x41);
        assert_eq!(read_reg(&mut io, low(9)) & (1 << 14), 0);
    }

    #[test]
    fn messages_carry_destination_and_mode() {
        let (mut io, r) = ioapic();
        write_reg(&mut io, low(4) + 1, 0x0300_0000);
        write_reg(&mut io, low(4), 0x0000_0950);
        io.set_pin(4, true);
        let m = r.0.lock().unwrap()[0];
        assert_eq!(
            m,
            ApicMessage {
                vector: 0x50,
                mode: DeliveryMode::LowestPriority,
                level: false,
                dest: 3,
                logical: true,
            }
        );
    }

    proptest::proptest! {
        /// Arbitrary register traffic and pin changes never panic.
        #[test]
        fn arbitrary_traffic_is_survived(
            ops in proptest::collection::vec(
                (0u32..0x20, proptest::sample::select(vec![1usize, 2, 4, 8]),
                 proptest::prelude::any::<u32>(), 0u8..4, 0u8..32),
                1..300,
            )
        ) {
            let (mut io, r) = ioapic();
            for (offset, size, value, what, pin) in ops {
                let offset = offset.min(0x20 - u32::try_from(size).unwrap());
                match what {
                    0 => io.write(offset, &u64::from(value).to_le_bytes()[..size]),
                    1 => { let mut b = [0u8; 8]; io.read(offset, &mut b[..size]); }
                    2 => io.set_pin(pin, value & 1 != 0),
                    _ => io.eoi(value.to_le_bytes()[0]),
                }
                r.take();
            }
        }
    }
}
