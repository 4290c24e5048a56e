//! Emulated platform devices reached through port I/O.
//!
//! Each device is a state machine over register offsets (see [`PortDevice`]), generic over
//! how it raises its interrupt ([`IrqLine`]) and, where it has output, where that output
//! goes. The run loop owns one [`PortBus`] that maps port ranges to devices; IN/OUT exits
//! are forwarded to [`PortBus::read`] and [`PortBus::write`].
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

mod bus;
mod clock;
mod cmos;
mod debug_exit;
mod irq;
mod pic;
mod pit;
mod post;
mod serial;

pub use bus::{BusError, PortAction, PortBus, PortDevice, PortStats, SharedPortDevice};
pub use clock::{Clock, MonotonicClock, SystemWallClock, WallClock};
pub use cmos::{Cmos, CMOS_BASE, CMOS_PORT_LEN};
pub use debug_exit::{DebugExit, ExitRequest, DEBUG_EXIT_BASE, DEBUG_EXIT_LEN};
pub use irq::{IrqLine, PicLine};
pub use pic::{register_pic, DualPic, ELCR_BASE, PIC_CASCADE_IRQ, PIC_MASTER_BASE, PIC_SLAVE_BASE};
pub use pit::{
    register_pit, Pit, PIT_BASE, PIT_CHANNELS, PIT_FREQUENCY_HZ, PIT_IRQ, PIT_PORT_LEN,
    SYSTEM_CONTROL_PORT_B,
};
pub use post::{PostPort, POST_PORT};
pub use serial::{SerialPort, COM1_BASE, COM1_IRQ, SERIAL_PORT_LEN};
