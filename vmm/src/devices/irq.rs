//! How devices raise interrupts: through an [`IrqLine`], which the platform wires to an
//! input of the 8259 PIC.

use std::sync::{Arc, Mutex};

use super::lock;
use super::pic::DualPic;

/// An interrupt request line a device drives.
pub trait IrqLine {
    /// Drives the line high (`true`) or low.
    fn set_level(&self, level: bool);

    /// A low-high-low pulse: one edge for an edge-triggered input.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// One input of the [`DualPic`] (IRQ 0–15).
#[derive(Debug, Clone)]
pub struct PicLine {
    pic: Arc<Mutex<DualPic>>,
    irq: u8,
}

impl PicLine {
    /// The line for `irq` (0–15; other numbers are ignored by the PIC).
    pub fn new(pic: &Arc<Mutex<DualPic>>, irq: u8) -> Self {
        Self {
            pic: Arc::clone(pic),
            irq,
        }
    }

    /// The IRQ number this line drives.
    pub fn irq(&self) -> u8 {
        self.irq
    }
}

impl IrqLine for PicLine {
    fn set_level(&self, level: bool) {
        lock(&self.pic).set_irq(self.irq, level);
    }
}

impl vm_superio::Trigger for PicLine {
    type E = std::convert::Infallible;

    /// The UART's interrupt on the ISA bus is edge-triggered at the PIC; vm-superio only
    /// signals when a new interrupt condition arises, which is exactly one edge.
    fn trigger(&self) -> Result<(), Self::E> {
        self.pulse();
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;

    use super::IrqLine;

    /// Records the level and counts rising edges.
    #[derive(Debug, Clone, Default)]
    pub struct FakeLine {
        pub level: Arc<AtomicBool>,
        pub rising: Arc<AtomicU32>,
    }

    impl FakeLine {
        pub fn rising_edges(&self) -> u32 {
            self.rising.load(Ordering::SeqCst)
        }
    }

    impl IrqLine for FakeLine {
        fn set_level(&self, level: bool) {
            if level && !self.level.swap(true, Ordering::SeqCst) {
                self.rising.fetch_add(1, Ordering::SeqCst);
            }
            if !level {
                self.level.store(false, Ordering::SeqCst);
            }
        }
    }

    impl vm_superio::Trigger for FakeLine {
        type E = std::convert::Infallible;
        fn trigger(&self) -> Result<(), Self::E> {
            self.pulse();
            Ok(())
        }
    }
}
