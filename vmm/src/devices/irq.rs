//! How devices raise interrupts: through an [`IrqLine`], which the platform wires to an
//! input of the 8259 PIC ([`PicLine`]) or, as on a PC, to both the 8259 and the IOAPIC
//! pin the ISA IRQ is routed to ([`IsaLine`]).

use std::sync::{Arc, Mutex};

use super::lock;
use super::pc;
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

/// A controller with numbered interrupt inputs (the IOAPIC's global system interrupts).
pub trait InterruptPins {
    /// Drives input `pin` to `level`; pins the controller does not have are ignored.
    fn set_pin(&mut self, pin: u8, level: bool);
}

/// The IOAPIC as an ISA line sees it.
pub type SharedPins = Arc<Mutex<dyn InterruptPins + Send>>;

/// An ISA interrupt line: it drives the 8259 input `irq` and the IOAPIC pin
/// [`pc::isa_irq_to_gsi`]`(irq)` together, so the guest may take the interrupt from
/// either controller (whichever it unmasked).
#[derive(Clone)]
pub struct IsaLine {
    pic: Arc<Mutex<DualPic>>,
    ioapic: SharedPins,
    irq: u8,
}

impl std::fmt::Debug for IsaLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsaLine").field("irq", &self.irq).finish()
    }
}

impl IsaLine {
    /// ISA IRQ `irq` (0–15) of a PC with this PIC pair and IOAPIC.
    pub fn new(pic: &Arc<Mutex<DualPic>>, ioapic: &SharedPins, irq: u8) -> Self {
        Self {
            pic: Arc::clone(pic),
            ioapic: Arc::clone(ioapic),
            irq,
        }
    }

    /// The ISA IRQ number this line drives.
    pub fn irq(&self) -> u8 {
        self.irq
    }
}

impl IrqLine for IsaLine {
    /// The PIC first, then the IOAPIC, each lock released before the next is taken.
    fn set_level(&self, level: bool) {
        lock(&self.pic).set_irq(self.irq, level);
        lock(&self.ioapic).set_pin(pc::isa_irq_to_gsi(self.irq), level);
    }
}

impl vm_superio::Trigger for IsaLine {
    type E = std::convert::Infallible;

    /// One edge, as for [`PicLine`].
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
