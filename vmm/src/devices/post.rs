//! The POST diagnostic port 0x80. Firmware writes progress codes there and kernels write
//! to it as a short I/O delay; it must accept writes silently.

use super::bus::{PortAction, PortDevice};

/// The POST code port.
pub const POST_PORT: u16 = 0x80;

/// Remembers the last POST code written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PostPort {
    last: u8,
}

impl PostPort {
    /// A port that reads back zero until written.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last code written.
    pub fn last_code(&self) -> u8 {
        self.last
    }
}

impl PortDevice for PostPort {
    fn read(&mut self, _offset: u16, _size: u8) -> u32 {
        u32::from(self.last)
    }

    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> PortAction {
        self.last = (value & 0xff) as u8;
        PortAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::PortBus;

    #[test]
    fn remembers_last_code() {
        let mut bus = PortBus::new();
        let dev = Arc::new(Mutex::new(PostPort::new()));
        bus.insert(POST_PORT, 1, dev.clone()).unwrap();
        assert_eq!(bus.read(POST_PORT, 1), 0);
        assert_eq!(bus.write(POST_PORT, 1, 0x5a), PortAction::Continue);
        assert_eq!(bus.write(POST_PORT, 1, 0xa5), PortAction::Continue);
        assert_eq!(bus.read(POST_PORT, 1), 0xa5);
        assert_eq!(dev.lock().unwrap().last_code(), 0xa5);
        assert!(bus.stats().is_empty());
    }
}
