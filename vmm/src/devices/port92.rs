//! System control port A (0x92): fast A20 gate (bit 1) and fast reset (bit 0), and the
//! one A20 line it shares with the i8042's output port.
//!
//! Each of the two devices keeps its own register bit, which is what it reads back (as on
//! the chipset and in QEMU); a write to either drives the A20 line. The monitor does not
//! model the 1 MiB wrap-around of A20 off: guest memory is always addressed with A20 on.
//! The line's state is kept so that it can be seen and saved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::bus::{PortAction, PortDevice};
use crate::bits::low8;

/// The fast-reset bit: writing it set resets the machine.
const FAST_RESET: u8 = 0x01;
/// The A20 gate bit.
const A20_ENABLE: u8 = 0x02;

/// The A20 gate line, driven by the i8042 output port and port 0x92; clones share it.
#[derive(Debug, Clone)]
pub struct A20Line(Arc<AtomicBool>);

impl A20Line {
    /// A line with A20 enabled, as firmware leaves it for a protected-mode kernel.
    pub fn new() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    /// Whether address bit 20 is passed through.
    pub fn is_enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Drives the line.
    pub fn set(&self, enabled: bool) {
        self.0.store(enabled, Ordering::Relaxed);
    }
}

impl Default for A20Line {
    fn default() -> Self {
        Self::new()
    }
}

/// System control port A. Plain state: the register and the line it drives.
#[derive(Debug, Clone)]
pub struct Port92 {
    /// The register as read back; the fast-reset bit always reads 0.
    value: u8,
    a20: A20Line,
}

impl Port92 {
    /// The port with A20 on, driving `a20`.
    pub fn new(a20: A20Line) -> Self {
        Self {
            value: A20_ENABLE,
            a20,
        }
    }
}

impl PortDevice for Port92 {
    fn read(&mut self, _offset: u16, _size: u8) -> u32 {
        u32::from(self.value)
    }

    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> PortAction {
        let value = low8(value);
        self.value = value & !FAST_RESET;
        self.a20.set(value & A20_ENABLE != 0);
        if value & FAST_RESET != 0 {
            PortAction::Reset
        } else {
            PortAction::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a20_bit_reads_back_and_drives_the_line() {
        let line = A20Line::new();
        let mut p = Port92::new(line.clone());
        assert_eq!(p.read(0, 1), 0x02);
        assert_eq!(p.write(0, 1, 0x00), PortAction::Continue);
        assert_eq!(p.read(0, 1), 0x00);
        assert!(!line.is_enabled());
        assert_eq!(p.write(0, 1, 0xf2), PortAction::Continue);
        assert_eq!(p.read(0, 1), 0xf2);
        assert!(line.is_enabled());
    }

    #[test]
    fn bit0_is_a_fast_reset_and_reads_zero() {
        let line = A20Line::new();
        let mut p = Port92::new(line);
        assert_eq!(p.write(0, 1, 0x03), PortAction::Reset);
        assert_eq!(p.read(0, 1), 0x02);
    }

    proptest::proptest! {
        /// Any byte: bit 0 decides the reset, bit 0 never reads back.
        #[test]
        fn arbitrary_writes_never_panic(values in proptest::collection::vec(proptest::prelude::any::<u32>(), 1..50)) {
            let line = A20Line::new();
            let mut p = Port92::new(line.clone());
            for v in values {
                let action = p.write(0, 1, v);
                proptest::prop_assert_eq!(action == PortAction::Reset, v & 1 != 0);
                proptest::prop_assert_eq!(p.read(0, 1) & 1, 0);
                proptest::prop_assert_eq!(line.is_enabled(), v & 2 != 0);
            }
        }
    }
}
