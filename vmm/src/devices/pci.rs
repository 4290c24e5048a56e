//! PCI configuration mechanism #1 (CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC–0xCFF)
//! with one device, an i440FX host bridge at 00:00.0, and the PIIX reset control register
//! that shares the decode (0xCF9).
//!
//! Only a dword access to 0xCF8 is CONFIG_ADDRESS (PCI Local Bus spec 3.0 §3.2.2.3.2);
//! other accesses to 0xCF8–0xCFB are ordinary I/O, of which only the byte at 0xCF9, the
//! reset control register, is decoded. Every bus, device and function other than 00:00.0
//! reads all ones: an empty slot. The host bridge's identity (vendor, device, revision,
//! class, subsystem) is what QEMU's `pc` machine shows at 00:00.0.

use super::bus::{PortAction, PortDevice};
use super::pc::{PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA, RESET_CONTROL};
use crate::bits::low8;

/// Ports from CONFIG_ADDRESS through the last CONFIG_DATA byte.
pub const PCI_PORT_LEN: u16 = 8;
const DATA_OFFSET: u16 = PCI_CONFIG_DATA - PCI_CONFIG_ADDRESS;
const RESET_CONTROL_OFFSET: u16 = RESET_CONTROL - PCI_CONFIG_ADDRESS;

/// CONFIG_ADDRESS bits: enable (31), bus (23:16), device (15:11), function (10:8),
/// register (7:2). Bits 30:24 are reserved and 1:0 read as 0.
const ADDRESS_ENABLE: u32 = 1 << 31;
const ADDRESS_WRITABLE: u32 = 0x80ff_fffc;

/// Reset control register bits (PIIX RC): system reset select (hard), reset CPU, full reset.
const RC_SYSTEM_RESET: u8 = 0x02;
const RC_RESET_CPU: u8 = 0x04;
const RC_FULL_RESET: u8 = 0x08;

/// Configuration space registers of a type 0 header.
const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
const COMMAND: usize = 0x04;
const REVISION: usize = 0x08;
const CLASS_PROG_IF: usize = 0x09;
const CACHE_LINE_SIZE: usize = 0x0c;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const INTERRUPT_LINE: usize = 0x3c;

/// The 82441FX (i440FX PMC) identity, as QEMU presents it.
const INTEL: u16 = 0x8086;
const I440FX: u16 = 0x1237;
const I440FX_REVISION: u8 = 0x02;
/// Class 06 (bridge), subclass 00 (host), programming interface 00.
const CLASS_HOST_BRIDGE: [u8; 3] = [0x00, 0x00, 0x06];
/// QEMU's default subsystem IDs (Red Hat / QEMU).
const SUBSYSTEM_VENDOR: u16 = 0x1af4;
const SUBSYSTEM: u16 = 0x1100;
/// Memory space and bus master on, as the chip comes out of reset.
const COMMAND_RESET: u16 = 0x0006;
/// Command bits a guest can change: I/O, memory, bus master, SERR#, interrupt disable.
const COMMAND_WRITABLE: u16 = 0x0507;

/// Programmable attribute map registers: 0x59 (BIOS area, high nibble only) and
/// 0x5A–0x5F (0xC0000–0xEFFFF, two ranges each). Writes read back; the monitor's low
/// memory is RAM whatever they say.
const PAM0: usize = 0x59;
const PAM_LAST: usize = 0x5f;
/// Read and write go to DRAM, which is what the monitor's 0xC0000–0xFFFFF is.
const PAM_RAM: u8 = 0x33;
/// The SMRAM control register: D_OPEN (6), D_CLS (5), D_LCK (4), G_SMRAME (3), and the
/// fixed compatible-SMRAM base segment 010 (0xA0000) in bits 2:0.
const SMRAM: usize = 0x72;
const SMRAM_RESET: u8 = 0x02;
const SMRAM_WRITABLE: u8 = 0x78;
const SMRAM_D_OPEN: u8 = 0x40;
const SMRAM_D_LCK: u8 = 0x10;
/// Chipset registers firmware programs and reads back (DRAM timing and row boundaries,
/// cache and error control); they change nothing in the monitor.
const PLAIN_REGISTERS: [std::ops::RangeInclusive<usize>; 3] =
    [0x50..=0x58, 0x60..=0x68, 0x70..=0x71];

const CONFIG_SPACE: usize = 256;

/// The i440FX host bridge's configuration space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBridge {
    config: [u8; CONFIG_SPACE],
    /// Bits a guest can write, per byte.
    writable: [u8; CONFIG_SPACE],
}

impl HostBridge {
    /// The host bridge as it comes out of reset.
    pub fn new() -> Self {
        let mut config = [0u8; CONFIG_SPACE];
        let mut writable = [0u8; CONFIG_SPACE];
        let put16 = |c: &mut [u8; CONFIG_SPACE], at: usize, v: u16| {
            if let Some(field) = c.get_mut(at..at + 2) {
                field.copy_from_slice(&v.to_le_bytes());
            }
        };
        put16(&mut config, VENDOR_ID, INTEL);
        put16(&mut config, DEVICE_ID, I440FX);
        put16(&mut config, COMMAND, COMMAND_RESET);
        put16(&mut writable, COMMAND, COMMAND_WRITABLE);
        config[REVISION] = I440FX_REVISION;
        config[CLASS_PROG_IF..CLASS_PROG_IF + 3].copy_from_slice(&CLASS_HOST_BRIDGE);
        writable[CACHE_LINE_SIZE] = 0xff;
        put16(&mut config, SUBSYSTEM_VENDOR_ID, SUBSYSTEM_VENDOR);
        put16(&mut config, SUBSYSTEM_ID, SUBSYSTEM);
        writable[INTERRUPT_LINE] = 0xff;
        for reg in PAM0..=PAM_LAST {
            let mask = if reg == PAM0 { PAM_RAM & 0xf0 } else { PAM_RAM };
            if let (Some(c), Some(w)) = (config.get_mut(reg), writable.get_mut(reg)) {
                (*c, *w) = (mask, mask);
            }
        }
        config[SMRAM] = SMRAM_RESET;
        writable[SMRAM] = SMRAM_WRITABLE;
        for reg in PLAIN_REGISTERS.into_iter().flatten() {
            if let Some(w) = writable.get_mut(reg) {
                *w = 0xff;
            }
        }
        Self { config, writable }
    }

    /// Configuration byte `reg`.
    pub fn config_byte(&self, reg: u8) -> u8 {
        self.byte(usize::from(reg))
    }

    /// Configuration byte `reg`; past the space (which a `u8` register cannot reach), 0.
    fn byte(&self, reg: usize) -> u8 {
        self.config.get(reg).copied().unwrap_or(0)
    }

    fn write_byte(&mut self, reg: usize, value: u8) {
        let locked = self.config[SMRAM] & SMRAM_D_LCK != 0;
        let (Some(byte), Some(&writable)) = (self.config.get_mut(reg), self.writable.get(reg))
        else {
            return;
        };
        let mask = if reg == SMRAM && locked {
            // Locked: D_OPEN is forced closed and D_LCK stays set until reset.
            writable & !(SMRAM_D_OPEN | SMRAM_D_LCK)
        } else {
            writable
        };
        *byte = (*byte & !mask) | (value & mask);
        if reg == SMRAM && self.config[SMRAM] & SMRAM_D_LCK != 0 {
            self.config[SMRAM] &= !SMRAM_D_OPEN;
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

/// Configuration mechanism #1 and the reset control register. Plain state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHost {
    address: u32,
    bridge: HostBridge,
    reset_control: u8,
}

impl PciHost {
    /// Bus 0 with the host bridge, CONFIG_ADDRESS cleared.
    pub fn new() -> Self {
        Self {
            address: 0,
            bridge: HostBridge::new(),
            reset_control: 0,
        }
    }

    /// The host bridge.
    pub fn bridge(&self) -> &HostBridge {
        &self.bridge
    }

    /// The configuration register CONFIG_ADDRESS selects, if it selects 00:00.0 with the
    /// enable bit set (bus 0, device 0, function 0 are bits 23:8).
    fn selected_register(&self) -> Option<usize> {
        let enabled = self.address & ADDRESS_ENABLE != 0;
        let bus_dev_fn = (self.address >> 8) & 0xffff;
        (enabled && bus_dev_fn == 0).then_some(usize::from(low8(self.address & 0xfc)))
    }

    fn read_data(&self, offset: u16, size: u8) -> u32 {
        let Some(reg) = self.selected_register() else {
            return u32::MAX;
        };
        let start = reg + usize::from(offset - DATA_OFFSET);
        (0..usize::from(size)).fold(0, |v, i| {
            v | u32::from(self.bridge.byte(start + i)) << (8 * i)
        })
    }

    fn write_data(&mut self, offset: u16, size: u8, value: u32) {
        let Some(reg) = self.selected_register() else {
            return;
        };
        let start = reg + usize::from(offset - DATA_OFFSET);
        for (i, byte) in value
            .to_le_bytes()
            .into_iter()
            .take(size.into())
            .enumerate()
        {
            self.bridge.write_byte(start + i, byte);
        }
    }

    fn write_reset_control(&mut self, value: u8) -> PortAction {
        self.reset_control = value & (RC_SYSTEM_RESET | RC_FULL_RESET);
        // A soft reset (SRST clear) is an INIT, which also restarts the CPU at the reset
        // vector: for the monitor, as for QEMU, both end the run.
        if value & RC_RESET_CPU != 0 {
            PortAction::Reset
        } else {
            PortAction::Continue
        }
    }
}

impl Default for PciHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PortDevice for PciHost {
    fn read(&mut self, offset: u16, size: u8) -> u32 {
        match (offset, size) {
            (0, 4) => self.address,
            (RESET_CONTROL_OFFSET, 1) => u32::from(self.reset_control),
            (DATA_OFFSET.., _) => self.read_data(offset, size),
            _ => u32::MAX,
        }
    }

    fn write(&mut self, offset: u16, size: u8, value: u32) -> PortAction {
        match (offset, size) {
            (0, 4) => self.address = value & ADDRESS_WRITABLE,
            (RESET_CONTROL_OFFSET, 1) => return self.write_reset_control(low8(value)),
            (DATA_OFFSET.., _) => self.write_data(offset, size, value),
            _ => {}
        }
        PortAction::Continue
    }

    fn max_access_size(&self) -> u8 {
        4
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::PortBus;

    fn bus() -> (PortBus, Arc<Mutex<PciHost>>) {
        let host = Arc::new(Mutex::new(PciHost::new()));
        let mut bus = PortBus::new();
        bus.insert(PCI_CONFIG_ADDRESS, PCI_PORT_LEN, host.clone())
            .unwrap();
        (bus, host)
    }

    fn config_read(bus: &mut PortBus, bdf: u32, reg: u32) -> u32 {
        bus.write(0xcf8, 4, 0x8000_0000 | bdf << 8 | reg);
        bus.read(0xcfc, 4)
    }

    #[test]
    fn host_bridge_identity_as_qemu_pc() {
        let (mut bus, _) = bus();
        assert_eq!(config_read(&mut bus, 0, 0x00), 0x1237_8086);
        assert_eq!(config_read(&mut bus, 0, 0x08), 0x0600_0002);
        assert_eq!(config_read(&mut bus, 0, 0x0c), 0x0000_0000);
        assert_eq!(config_read(&mut bus, 0, 0x2c), 0x1100_1af4);
        assert_eq!(config_read(&mut bus, 0, 0x10), 0, "no BARs");
    }

    #[test]
    fn config_address_reads_back_without_reserved_bits() {
        let (mut bus, _) = bus();
        bus.write(0xcf8, 4, 0xffff_ffff);
        assert_eq!(bus.read(0xcf8, 4), 0x80ff_fffc);
        // Byte and word accesses to 0xCF8 are not CONFIG_ADDRESS.
        bus.write(0xcf8, 1, 0);
        bus.write(0xcfa, 2, 0);
        assert_eq!(bus.read(0xcf8, 4), 0x80ff_fffc);
        assert_eq!(bus.read(0xcf8, 1), 0xff);
    }

    #[test]
    fn other_functions_and_buses_are_empty() {
        let (mut bus, _) = bus();
        for bdf in [1, 8, 0x100, 0xff00, 0xfff8] {
            assert_eq!(config_read(&mut bus, bdf, 0), u32::MAX, "{bdf:#x}");
        }
        // The enable bit clear: no configuration cycle.
        bus.write(0xcf8, 4, 0);
        assert_eq!(bus.read(0xcfc, 4), u32::MAX);
    }

    #[test]
    fn byte_and_word_data_accesses_select_by_port() {
        let (mut bus, _) = bus();
        bus.write(0xcf8, 4, 0x8000_0008);
        assert_eq!(bus.read(0xcfe, 2), 0x0600);
        assert_eq!(bus.read(0xcfc, 1), 0x02);
        assert_eq!(bus.read(0xcfd, 2), 0x0000);
        bus.write(0xcf8, 4, 0x8000_0000);
        assert_eq!(bus.read(0xcfe, 2), 0x1237);
        assert_eq!(bus.read(0xcfd, 1), 0x80);
    }

    #[test]
    fn writable_registers_as_the_chip() {
        let (mut bus, host) = bus();
        bus.write(0xcf8, 4, 0x8000_0004);
        bus.write(0xcfc, 2, 0xffff);
        assert_eq!(bus.read(0xcfc, 2), 0x0507);
        bus.write(0xcfc, 4, 0xffff_0000);
        assert_eq!(bus.read(0xcfc, 4), 0, "status is read-only here");
        // Identity is read-only.
        bus.write(0xcf8, 4, 0x8000_0000);
        bus.write(0xcfc, 4, 0);
        assert_eq!(bus.read(0xcfc, 4), 0x1237_8086);
        // PAM registers read back, within their defined bits.
        bus.write(0xcf8, 4, 0x8000_0058);
        bus.write(0xcfc, 4, 0xffff_ffff);
        assert_eq!(bus.read(0xcfc, 4), 0x3333_30ff);
        bus.write(0xcf8, 4, 0x8000_005c);
        bus.write(0xcfc, 4, 0x1100_0110);
        assert_eq!(bus.read(0xcfc, 4), 0x1100_0110);
        // Unimplemented chipset registers read 0.
        bus.write(0xcf8, 4, 0x8000_0080);
        bus.write(0xcfc, 4, 0xffff_ffff);
        assert_eq!(bus.read(0xcfc, 4), 0);
        assert_eq!(host.lock().unwrap().bridge().config_byte(0x5d), 0x01);
    }

    #[test]
    fn smram_lock_closes_and_sticks() {
        let (mut bus, _) = bus();
        bus.write(0xcf8, 4, 0x8000_0070);
        assert_eq!(bus.read(0xcfe, 1), 0x02);
        bus.write(0xcfe, 1, 0xff);
        assert_eq!(bus.read(0xcfe, 1), 0x3a, "D_LCK set closes D_OPEN");
        bus.write(0xcfe, 1, 0x40);
        assert_eq!(
            bus.read(0xcfe, 1),
            0x12,
            "D_LCK sticks; D_OPEN stays closed"
        );
    }

    #[test]
    fn reset_control_resets_on_bit2_only() {
        let (mut bus, _) = bus();
        assert_eq!(bus.read(0xcf9, 1), 0);
        assert_eq!(bus.write(0xcf9, 1, 0x02), PortAction::Continue);
        assert_eq!(bus.read(0xcf9, 1), 0x02);
        assert_eq!(bus.write(0xcf9, 1, 0x06), PortAction::Reset);
        assert_eq!(bus.write(0xcf9, 1, 0x04), PortAction::Reset);
        // A dword at 0xCF8 never touches it.
        assert_eq!(bus.write(0xcf8, 4, 0xffff_ffff), PortAction::Continue);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_traffic_never_panics(
            ops in proptest::collection::vec((0u16..PCI_PORT_LEN, proptest::prelude::any::<bool>(), proptest::prelude::any::<u32>(), proptest::sample::select(vec![1u8, 2, 4])), 1..300)
        ) {
            let (mut bus, _) = bus();
            for (off, is_write, v, size) in ops {
                let port = PCI_CONFIG_ADDRESS + off;
                if is_write {
                    let action = bus.write(port, size, v);
                    let resets = port == RESET_CONTROL && size == 1 && v & 4 != 0;
                    if !resets {
                        proptest::prop_assert_eq!(action, PortAction::Continue);
                    }
                } else {
                    let got = bus.read(port, size);
                    if size < 4 {
                        proptest::prop_assert!(got < 1 << (8 * u32::from(size)));
                    }
                }
                // The identity never changes.
                bus.write(0xcf8, 4, 0x8000_0000);
                proptest::prop_assert_eq!(bus.read(0xcfc, 4), 0x1237_8086);
            }
        }
    }
}
