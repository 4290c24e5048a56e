//! The CGA display's CRT controller ports: index (0x3D4), data (0x3D5) and the status
//! register (0x3DA). Text memory at 0xB8000 is ordinary guest RAM; nothing is drawn.
//!
//! The registers read back what was written (cursor shape, cursor location, start
//! address), as a VGA's CRTC in colour mode does and as QEMU's `-vga std` answers; the
//! 6845 of an original CGA made some of them write-only, which no guest relies on.
//! The mono aliases 0x3B4/0x3B5 are not decoded: a colour VGA ignores them too.
//! The status register toggles its retrace bits on every read, so loops waiting for
//! (the end of) vertical retrace finish.

use super::bus::{PortAction, PortDevice};
use crate::bits::low8;

/// Offsets from [`super::pc::CGA_CRTC_INDEX`].
const INDEX: u16 = 0;
const DATA: u16 = 1;
/// The status register's offset ([`super::pc::CGA_STATUS`] − [`super::pc::CGA_CRTC_INDEX`]).
pub const STATUS_OFFSET: u16 = 6;
/// Ports from the index register through the status register.
pub const CGA_PORT_LEN: u16 = STATUS_OFFSET + 1;

/// Status bits: display disabled (horizontal or vertical blanking), vertical retrace.
const STATUS_BLANK: u8 = 0x01;
const STATUS_VRETRACE: u8 = 0x08;

/// The cursor location register, high byte (the low byte follows).
const CURSOR_LOCATION_HIGH: u8 = 0x0e;

/// 80×25 colour text mode (mode 3) as a VGA BIOS programs it: horizontal and vertical
/// timing, a cursor on scan lines 13–14, start address and cursor at 0.
const MODE3: [u8; 0x19] = [
    0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00, 0x00, 0x00,
    0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
];

/// The CRTC. Plain state: the index, the register file, the retrace phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgaCrtc {
    index: u8,
    /// Every index selects a byte, as on QEMU's VGA; those past the CRTC's 0x18 are
    /// scratch.
    regs: [u8; 256],
    retrace: bool,
}

impl CgaCrtc {
    /// The CRTC in 80×25 text mode.
    pub fn new() -> Self {
        let mut regs = [0; 256];
        for (r, m) in regs.iter_mut().zip(MODE3) {
            *r = m;
        }
        Self {
            index: 0,
            regs,
            retrace: false,
        }
    }

    /// CRTC register `reg`.
    pub fn register(&self, reg: u8) -> u8 {
        // Every u8 index selects one of the 256.
        self.regs.get(usize::from(reg)).copied().unwrap_or(0xff)
    }

    /// The cursor's position as a character offset from the start of text memory.
    pub fn cursor(&self) -> u16 {
        u16::from_be_bytes([
            self.register(CURSOR_LOCATION_HIGH),
            self.register(CURSOR_LOCATION_HIGH + 1),
        ])
    }
}

impl Default for CgaCrtc {
    fn default() -> Self {
        Self::new()
    }
}

impl PortDevice for CgaCrtc {
    fn read(&mut self, offset: u16, _size: u8) -> u32 {
        u32::from(match offset {
            INDEX => self.index,
            DATA => self.register(self.index),
            STATUS_OFFSET => {
                self.retrace = !self.retrace;
                if self.retrace {
                    STATUS_BLANK | STATUS_VRETRACE
                } else {
                    0
                }
            }
            // 0x3D6–0x3D9: the CGA's mode and colour registers are write-only; a VGA
            // does not decode them.
            _ => 0xff,
        })
    }

    fn write(&mut self, offset: u16, _size: u8, value: u32) -> PortAction {
        let value = low8(value);
        match offset {
            INDEX => self.index = value,
            DATA => {
                if let Some(r) = self.regs.get_mut(usize::from(self.index)) {
                    *r = value;
                }
            }
            _ => {}
        }
        PortAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::pc::{CGA_CRTC_INDEX, CGA_STATUS};
    use crate::devices::PortBus;

    fn bus() -> (PortBus, Arc<Mutex<CgaCrtc>>) {
        let crtc = Arc::new(Mutex::new(CgaCrtc::new()));
        let mut bus = PortBus::new();
        bus.insert(CGA_CRTC_INDEX, CGA_PORT_LEN, crtc.clone())
            .unwrap();
        (bus, crtc)
    }

    #[test]
    fn status_port_is_where_pc_says() {
        assert_eq!(CGA_CRTC_INDEX + STATUS_OFFSET, CGA_STATUS);
    }

    /// xv6's console: cursor position through registers 14 and 15.
    #[test]
    fn cursor_location_reads_back() {
        let (mut bus, crtc) = bus();
        bus.write(0x3d4, 1, 14);
        bus.write(0x3d5, 1, 0x01);
        bus.write(0x3d4, 1, 15);
        bus.write(0x3d5, 1, 0x40);
        bus.write(0x3d4, 1, 14);
        let pos = bus.read(0x3d5, 1) << 8;
        bus.write(0x3d4, 1, 15);
        assert_eq!(pos | bus.read(0x3d5, 1), 0x140);
        assert_eq!(crtc.lock().unwrap().cursor(), 0x140);
        assert_eq!(bus.read(0x3d4, 1), 15);
    }

    #[test]
    fn word_writes_set_index_then_data() {
        let (mut bus, crtc) = bus();
        bus.write(0x3d4, 2, 0x200a); // cursor start 0x20: cursor off
        bus.write(0x3d4, 2, 0x120c);
        let c = crtc.lock().unwrap();
        assert_eq!(c.register(0x0a), 0x20, "cursor start");
        assert_eq!(c.register(0x0c), 0x12, "start address high");
        assert_eq!(c.register(0x0b), 0x0e, "cursor end as mode 3 sets it");
    }

    #[test]
    fn status_toggles_retrace_so_polling_ends() {
        let (mut bus, _) = bus();
        let seen: Vec<u32> = (0..4).map(|_| bus.read(0x3da, 1)).collect();
        assert_eq!(seen, [0x09, 0x00, 0x09, 0x00]);
        assert_eq!(bus.read(0x3d8, 1), 0xff);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_traffic_never_panics(
            ops in proptest::collection::vec((0u16..CGA_PORT_LEN, proptest::prelude::any::<bool>(), proptest::prelude::any::<u32>(), proptest::sample::select(vec![1u8, 2, 4])), 1..200)
        ) {
            let (mut bus, _) = bus();
            for (off, is_write, v, size) in ops {
                if is_write {
                    proptest::prop_assert_eq!(bus.write(CGA_CRTC_INDEX + off, size, v), PortAction::Continue);
                } else {
                    let _ = bus.read(CGA_CRTC_INDEX + off, size);
                }
            }
        }
    }
}
