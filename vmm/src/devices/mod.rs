//! Emulated platform devices reached through port I/O and MMIO.
//!
//! Each device is a state machine over register offsets (see [`PortDevice`]), generic over
//! how it raises its interrupt ([`IrqLine`]) and, where it has output, where that output
//! goes. The run loop owns one [`PortBus`] that maps port ranges to devices; IN/OUT exits
//! are forwarded to [`PortBus::read`] and [`PortBus::write`].
//!
//! How the run loop drives the platform:
//! - IN/OUT exit: [`PortBus::read`] / [`PortBus::write`]; a write returning
//!   [`PortAction::Exit`] ends the run with [`ExitRequest::status`] as the host status.
//! - Interrupts: ISA devices drive [`IsaLine`]s, which raise both the 8259 input
//!   ([`DualPic`]) and the IOAPIC pin the IRQ is routed to ([`IoApic`], delivering to the
//!   [`LocalApic`]). Before entering the guest, if its virtual IF is set, take the vector
//!   from [`LocalApic::acknowledge`], else — when [`LocalApic::accepts_pic`] (LINT0 in
//!   ExtINT mode, or the APIC globally disabled) — from [`DualPic::acknowledge`], and
//!   deliver it through the guest IDT. After each exit hand the vectors of
//!   [`LocalApic::take_level_eois`] to [`IoApic::eoi`].
//! - Time: arm the host timer for the earlier of [`Pit::next_deadline_ns`] and
//!   [`LocalApic::next_deadline_ns`] (same clock) and call [`Pit::poll`] and
//!   [`LocalApic::poll`] after every exit and timer signal; a guest HLT sleeps until that
//!   deadline or host input.
//! - Input: bytes read from stdin go to [`SerialPort::enqueue_input`]; keep what did not fit.
//!
//! Lock order: a device's own lock, then the PIC's, then the IOAPIC's, then the local
//! APIC's (devices raise interrupts while the bus holds their lock; the IOAPIC delivers
//! into the local APIC). The PIC and the local APIC lock nothing else: never access a bus,
//! lock the PIT or the IOAPIC while holding either.
//!
//! Typical platform assembly (single vCPU thread):
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use vmm::devices::*;
//!
//! let clock = MonotonicClock::new();
//! let pic = Arc::new(Mutex::new(DualPic::new()));
//! let serial = Arc::new(Mutex::new(SerialPort::new(PicLine::new(&pic, COM1_IRQ), Vec::new())));
//! let pit = Arc::new(Mutex::new(Pit::new(clock.clone(), PicLine::new(&pic, PIT_IRQ))));
//! let mut bus = PortBus::new();
//! register_pic(&mut bus, &pic).unwrap();
//! register_pit(&mut bus, &pit).unwrap();
//! bus.insert(COM1_BASE, SERIAL_PORT_LEN, serial.clone()).unwrap();
//! bus.insert(DEBUG_EXIT_BASE, DEBUG_EXIT_LEN, Arc::new(Mutex::new(DebugExit::new()))).unwrap();
//! bus.insert(POST_PORT, 1, Arc::new(Mutex::new(PostPort::new()))).unwrap();
//! bus.insert(CMOS_BASE, CMOS_PORT_LEN, Arc::new(Mutex::new(Cmos::new(SystemWallClock)))).unwrap();
//!
//! // An OUT to 0xF4 asks the VM to stop:
//! let action = bus.write(DEBUG_EXIT_BASE, 1, 0x10);
//! assert_eq!(action, PortAction::Exit(ExitRequest { status: 0x21 }));
//! ```

mod acpi_pm;
mod bus;
mod cga;
mod clock;
mod cmos;
mod debug_exit;
pub mod disk;
mod fw_cfg;
mod i8042;
pub mod ide;
pub mod ioapic;
mod irq;
pub mod lapic;
pub mod lapics;
mod mmio;
pub mod pc;
mod pci;
mod pic;
mod pit;
mod port92;
mod post;
mod serial;

pub use acpi_pm::AcpiPm;
pub use bus::{BusError, PortAction, PortBus, PortDevice, PortStats, SharedPortDevice};
pub use cga::{CgaCrtc, CGA_PORT_LEN};
pub use clock::{Clock, MonotonicClock, SystemWallClock, WallClock};
pub use cmos::{Cmos, CMOS_BASE, CMOS_PORT_LEN};
pub use debug_exit::{DebugExit, ExitRequest, DEBUG_EXIT_BASE, DEBUG_EXIT_LEN};
pub use disk::{Disk, DiskError, ImageFile, MemDisk, SECTOR_SIZE};
pub use fw_cfg::{FwCfg, FwCfgError, FW_CFG_PORT_LEN};
pub use i8042::{I8042Port, I8042};
pub use ide::{register_ide, IdeChannel, IdeStats, Unit};
pub use ioapic::{IoApic, ENTRY_LEVEL, ENTRY_MASKED};
pub use irq::{InterruptPins, IrqLine, IsaLine, PicLine, SharedPins};
pub use lapic::{
    ApicBus, ApicMessage, CpuSignals, DeliveryMode, Ipi, IpiDest, IpiKind, LocalApic,
    APIC_BASE_ENABLE, LAPIC_TIMER_HZ,
};
pub use lapics::{LapicWindow, Lapics};
pub use mmio::{MmioBus, MmioDevice, MmioStats, SharedMmioDevice};
pub use pci::{HostBridge, PciHost, PCI_PORT_LEN};
pub use pic::{
    register_pic, DualPic, Pic8259, ELCR_BASE, PIC_CASCADE_IRQ, PIC_MASTER_BASE, PIC_SLAVE_BASE,
};
pub use pit::{
    register_pit, Pit, PitChannel, PIT_BASE, PIT_CHANNELS, PIT_FREQUENCY_HZ, PIT_IRQ, PIT_PORT_LEN,
    SYSTEM_CONTROL_PORT_B,
};
pub use port92::{A20Line, Port92};
pub use post::{PostPort, POST_PORT};
pub use serial::{SerialPort, COM1_BASE, COM1_IRQ, SERIAL_PORT_LEN};

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a shared device. A lock poisoned by a panic elsewhere still guards a consistent
/// state machine (device state is plain data changed register by register), so it is
/// taken over rather than propagated: the one place the engine says so.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::clock::fake::FakeClock;
    use super::*;
    use crate::addr::GuestPhys;

    /// The timer path end to end: the guest programs PIC and PIT through the bus, the run
    /// loop polls the PIT at its deadline and takes the vector from the PIC.
    #[test]
    fn timer_tick_reaches_the_cpu_as_a_vector() {
        let clock = FakeClock::default();
        let pic = Arc::new(Mutex::new(DualPic::new()));
        let pit = Arc::new(Mutex::new(Pit::new(
            clock.clone(),
            PicLine::new(&pic, PIT_IRQ),
        )));
        let mut bus = PortBus::new();
        register_pic(&mut bus, &pic).unwrap();
        register_pit(&mut bus, &pit).unwrap();
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0xfe),
        ] {
            bus.write(port, 1, v);
        }
        bus.write(0x43, 1, 0x34);
        bus.write(0x40, 1, 0x9c);
        bus.write(0x40, 1, 0x2e); // 11932: 100 Hz
        assert!(!pic.lock().unwrap().has_pending());
        let deadline = pit.lock().unwrap().next_deadline_ns().unwrap();
        clock.set(deadline);
        assert_eq!(pit.lock().unwrap().poll(deadline), 1);
        assert_eq!(pic.lock().unwrap().acknowledge(), Some(0x20));
        bus.write(0x20, 1, 0x20);
        assert!(!pic.lock().unwrap().has_pending());
    }

    /// The APIC path end to end: with the 8259 masked, the PIT's IRQ 0 reaches the CPU
    /// through IOAPIC pin 2 and the local APIC; a level-triggered COM1 entry keeps its
    /// remote IRR until the EOI the run loop forwards.
    #[test]
    fn isa_interrupts_reach_the_cpu_through_the_ioapic() {
        let clock = FakeClock::default();
        let pic = Arc::new(Mutex::new(DualPic::new()));
        let lapic = Arc::new(Mutex::new(LocalApic::new(clock.clone())));
        let ioapic = Arc::new(Mutex::new(IoApic::new(lapic.clone())));
        let pins: SharedPins = ioapic.clone();
        let pit = Arc::new(Mutex::new(Pit::new(
            clock.clone(),
            IsaLine::new(&pic, &pins, PIT_IRQ),
        )));
        let serial = Arc::new(Mutex::new(SerialPort::new(
            IsaLine::new(&pic, &pins, COM1_IRQ),
            Vec::new(),
        )));
        let mut ports = PortBus::new();
        register_pic(&mut ports, &pic).unwrap();
        register_pit(&mut ports, &pit).unwrap();
        ports.insert(COM1_BASE, SERIAL_PORT_LEN, serial).unwrap();
        let mut mmio = MmioBus::new();
        mmio.insert(pc::LAPIC_BASE, pc::LAPIC_LEN, "lapic", lapic.clone())
            .unwrap();
        mmio.insert(pc::IOAPIC_BASE, pc::IOAPIC_LEN, "ioapic", ioapic.clone())
            .unwrap();
        let entry = |mmio: &mut MmioBus, pin: u32, low: u32| {
            let sel = pc::IOAPIC_BASE;
            let win = GuestPhys(sel.raw() + 0x10);
            mmio.write(sel, &(0x10 + 2 * pin).to_le_bytes());
            mmio.write(win, &low.to_le_bytes());
        };
        // Both 8259s masked; pin 2 to vector 0x70, pin 4 level-triggered to 0x74.
        ports.write(0x21, 1, 0xff);
        ports.write(0xa1, 1, 0xff);
        entry(&mut mmio, 2, 0x70);
        entry(&mut mmio, 4, 0x74 | (1 << 15));
        ports.write(0x43, 1, 0x34);
        ports.write(0x40, 1, 0x9c);
        ports.write(0x40, 1, 0x2e);
        let deadline = pit.lock().unwrap().next_deadline_ns().unwrap();
        clock.set(deadline);
        pit.lock().unwrap().poll(deadline);
        assert!(!pic.lock().unwrap().has_pending());
        assert_eq!(lapic.lock().unwrap().acknowledge(), Some(0x70));
        let eoi = GuestPhys(pc::LAPIC_BASE.raw() + 0xb0);
        mmio.write(eoi, &0u32.to_le_bytes());
        assert!(lapic.lock().unwrap().take_level_eois().is_empty());

        ports.write(COM1_BASE + 1, 1, 0x02); // THR empty interrupt
        assert_eq!(lapic.lock().unwrap().acknowledge(), Some(0x74));
        let remote_irr =
            |io: &Arc<Mutex<IoApic<_>>>| io.lock().unwrap().entry(4).unwrap() & (1 << 14);
        assert_ne!(remote_irr(&ioapic), 0);
        mmio.write(eoi, &0u32.to_le_bytes());
        let eois = lapic.lock().unwrap().take_level_eois();
        assert_eq!(eois, [0x74]);
        for v in eois {
            ioapic.lock().unwrap().eoi(v);
        }
        assert_eq!(remote_irr(&ioapic), 0);
    }

    proptest::proptest! {
        /// Whatever a guest writes to and reads from whichever ports, the platform answers
        /// without panicking, and only the debug-exit port asks the VM to stop.
        #[test]
        fn arbitrary_port_traffic_is_survived(
            ops in proptest::collection::vec(
                (0u16..0x500, proptest::sample::select(vec![1u8, 2, 4]), proptest::prelude::any::<u32>(), proptest::prelude::any::<bool>(), 0u64..50_000_000),
                1..200,
            )
        ) {
            let clock = FakeClock::default();
            let pic = Arc::new(Mutex::new(DualPic::new()));
            let pit = Arc::new(Mutex::new(Pit::new(clock.clone(), PicLine::new(&pic, PIT_IRQ))));
            let serial = Arc::new(Mutex::new(SerialPort::new(PicLine::new(&pic, COM1_IRQ), Vec::new())));
            let mut bus = PortBus::new();
            register_pic(&mut bus, &pic).unwrap();
            register_pit(&mut bus, &pit).unwrap();
            bus.insert(COM1_BASE, SERIAL_PORT_LEN, serial.clone()).unwrap();
            bus.insert(DEBUG_EXIT_BASE, DEBUG_EXIT_LEN, Arc::new(Mutex::new(DebugExit::new()))).unwrap();
            bus.insert(POST_PORT, 1, Arc::new(Mutex::new(PostPort::new()))).unwrap();
            let cmos = Cmos::new(clock::fake::FakeWallClock::default());
            bus.insert(CMOS_BASE, CMOS_PORT_LEN, Arc::new(Mutex::new(cmos))).unwrap();
            for (port, size, value, is_write, dt) in ops {
                clock.advance(dt);
                if is_write {
                    let action = bus.write(port, size, value);
                    let hits_exit = u32::from(port) + u32::from(size) > u32::from(DEBUG_EXIT_BASE)
                        && port < DEBUG_EXIT_BASE + DEBUG_EXIT_LEN;
                    proptest::prop_assert_eq!(matches!(action, PortAction::Exit(_)), hits_exit);
                } else {
                    let v = bus.read(port, size);
                    if size < 4 {
                        proptest::prop_assert!(v < 1 << (8 * u32::from(size)));
                    }
                }
                serial.lock().unwrap().enqueue_input(b"k");
                let now = clock.now_ns();
                pit.lock().unwrap().poll(now);
                let _ = pit.lock().unwrap().next_deadline_ns();
                let mut p = pic.lock().unwrap();
                if p.has_pending() {
                    proptest::prop_assert!(p.acknowledge().is_some());
                }
            }
        }
    }
}
