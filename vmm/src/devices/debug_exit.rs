//! QEMU's isa-debug-exit device: a write ends the run with a status derived from the
//! value, so a test kernel reports its result the same way under both monitors.

use super::bus::{PortAction, PortDevice};

/// Base port, as QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
pub const DEBUG_EXIT_BASE: u16 = 0xf4;
/// Ports claimed, as QEMU's `iosize=0x04`.
pub const DEBUG_EXIT_LEN: u16 = 4;

/// A request to stop the VM with a host exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitRequest {
    /// The status the monitor process should exit with. As with QEMU, the host keeps
    /// only its low 8 bits.
    pub status: u32,
}

/// The debug-exit device. It has no state of its own beyond what was last requested.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebugExit {
    last: Option<ExitRequest>,
}

impl DebugExit {
    /// A device that has not been written yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last exit requested, if any.
    pub fn last_request(&self) -> Option<ExitRequest> {
        self.last
    }
}

impl PortDevice for DebugExit {
    /// Reads float, as on QEMU (which has no read handler).
    fn read(&mut self, _offset: u16, _size: u8) -> u32 {
        u32::MAX
    }

    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> PortAction {
        // QEMU computes `(val << 1) | 1` so that status 0 can never mean success by accident.
        let req = ExitRequest {
            status: (value << 1) | 1,
        };
        self.last = Some(req);
        PortAction::Exit(req)
    }

    /// QEMU's device accepts 1-, 2- and 4-byte writes and sees the whole value.
    fn max_access_size(&self) -> u8 {
        4
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::PortBus;

    #[test]
    fn exit_status_is_value_shifted_with_low_bit_set() {
        let mut bus = PortBus::new();
        let dev = Arc::new(Mutex::new(DebugExit::new()));
        bus.insert(DEBUG_EXIT_BASE, DEBUG_EXIT_LEN, dev.clone())
            .unwrap();
        assert_eq!(
            bus.write(0xf4, 1, 0),
            PortAction::Exit(ExitRequest { status: 1 })
        );
        assert_eq!(
            bus.write(0xf4, 1, 0x31),
            PortAction::Exit(ExitRequest { status: 0x63 })
        );
        assert_eq!(
            bus.write(0xf4, 4, 0x1234_5678),
            PortAction::Exit(ExitRequest {
                status: 0x2468_acf1
            })
        );
        assert_eq!(
            bus.write(0xf4, 2, 0xffff),
            PortAction::Exit(ExitRequest { status: 0x1_ffff })
        );
        assert_eq!(
            dev.lock().unwrap().last_request(),
            Some(ExitRequest { status: 0x1_ffff })
        );
        // Any port of the range counts, as on QEMU.
        assert_eq!(
            bus.write(0xf7, 1, 2),
            PortAction::Exit(ExitRequest { status: 5 })
        );
    }
}
