//! QEMU's firmware-configuration device (fw_cfg), traditional I/O interface: a 16-bit
//! write to the selector port ([`super::pc::FW_CFG_PORT_SEL`]) picks an item and restarts it;
//! byte reads from the data port ([`super::pc::FW_CFG_PORT_DATA`]) return its bytes one by one.
//! Guests written against QEMU (kvm-unit-tests' start-up, SeaBIOS-aware kernels) read the
//! CPU count, the RAM size and the file directory from it.
//!
//! As in QEMU: an unknown selector, or a read past an item's end, gives zeros; byte
//! writes to the data port are ignored (writable items are gone since QEMU 2.4); a byte
//! read at the selector port reads data too. There is no DMA interface (ID bit 1 clear).

use std::collections::BTreeMap;

use super::bus::{PortAction, PortDevice};
use crate::bits::low16;
use crate::firmware::{e820, MachineLayout};

/// The selector and data ports.
pub const FW_CFG_PORT_LEN: u16 = 2;

/// Item selectors (QEMU's `fw_cfg_keys.h`).
pub const FW_CFG_SIGNATURE: u16 = 0x0000;
/// Interface ID: bit 0 traditional I/O interface, bit 1 DMA.
pub const FW_CFG_ID: u16 = 0x0001;
/// RAM size in bytes (u64, little-endian).
pub const FW_CFG_RAM_SIZE: u16 = 0x0003;
/// Processors at boot (u16, little-endian).
pub const FW_CFG_NB_CPUS: u16 = 0x0005;
/// Most processors the machine can have (u16, little-endian).
pub const FW_CFG_MAX_CPUS: u16 = 0x000f;
/// The file directory: a big-endian count, then 64-byte entries.
pub const FW_CFG_FILE_DIR: u16 = 0x0019;
/// The first file's selector.
pub const FW_CFG_FILE_FIRST: u16 = 0x0020;
/// The interface ID this device reports: the traditional interface only.
pub const FW_CFG_ID_TRADITIONAL: u32 = 1 << 0;
/// A file name's field in a directory entry, NUL-padded.
pub const FW_CFG_FILE_NAME_LEN: usize = 56;
/// Selector bit 15: an architecture-specific item (none here).
const ARCH_LOCAL: u16 = 0x8000;
/// Selector bit 14: the write channel, ignored by reads.
const WRITE_CHANNEL: u16 = 0x4000;
const SIGNATURE: &[u8; 4] = b"QEMU";

/// The device: its items and the read position in the selected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwCfg {
    /// Items by selector (without the write-channel bit).
    items: BTreeMap<u16, Vec<u8>>,
    /// File names in directory order, with their selectors.
    files: Vec<(String, u16)>,
    /// The selected item, `None` for a selector that names none.
    selected: Option<u16>,
    /// The next byte of the selected item to read.
    offset: usize,
}

/// Why a file could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FwCfgError {
    /// The name does not fit the directory entry (55 bytes and a NUL) or repeats one.
    #[error("fw_cfg file name {name:?} is empty, longer than 55 bytes or already used")]
    BadName {
        /// The name.
        name: String,
    },
}

impl FwCfg {
    /// The items a machine of `layout` has: signature, ID, RAM size, CPU counts, and the
    /// file `etc/e820` with the PC's memory map in QEMU's layout.
    pub fn new(layout: &MachineLayout) -> Self {
        let mut d = Self {
            items: BTreeMap::new(),
            files: Vec::new(),
            selected: Some(FW_CFG_SIGNATURE),
            offset: 0,
        };
        d.items.insert(FW_CFG_SIGNATURE, SIGNATURE.to_vec());
        d.items
            .insert(FW_CFG_ID, FW_CFG_ID_TRADITIONAL.to_le_bytes().to_vec());
        d.items
            .insert(FW_CFG_RAM_SIZE, layout.ram_size.to_le_bytes().to_vec());
        let cpus = u16::from(layout.cpus).to_le_bytes().to_vec();
        d.items.insert(FW_CFG_NB_CPUS, cpus.clone());
        d.items.insert(FW_CFG_MAX_CPUS, cpus);
        let e820 = e820::fw_cfg_bytes(&e820::pc_e820(layout.ram_size));
        // The name is a fixed, valid one.
        let _ = d.add_file("etc/e820", e820);
        d
    }

    /// Adds a file at the next free selector and lists it in the directory.
    ///
    /// # Errors
    /// [`FwCfgError::BadName`] for an empty, too long or repeated name.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty()
            || name.len() >= FW_CFG_FILE_NAME_LEN
            || self.files.iter().any(|(n, _)| n == name)
        {
            return Err(FwCfgError::BadName { name: name.into() });
        }
        let count = u16::try_from(self.files.len()).unwrap_or(u16::MAX);
        let key = FW_CFG_FILE_FIRST.saturating_add(count);
        self.items.insert(key, data);
        self.files.push((name.into(), key));
        // QEMU lists the directory sorted by name.
        self.files.sort();
        self.items.insert(FW_CFG_FILE_DIR, self.directory());
        Ok(key)
    }

    /// The file directory item: a big-endian count, then per file its size (u32 BE),
    /// selector (u16 BE), a reserved u16 and the NUL-padded name.
    fn directory(&self) -> Vec<u8> {
        let count = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        let mut d = count.to_be_bytes().to_vec();
        for (name, key) in &self.files {
            let size = self.items.get(key).map_or(0, Vec::len);
            d.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
            d.extend_from_slice(&key.to_be_bytes());
            d.extend_from_slice(&[0, 0]);
            let mut field = [0u8; FW_CFG_FILE_NAME_LEN];
            // Names were checked to fit with their NUL when the file was added.
            for (f, b) in field.iter_mut().zip(name.bytes()) {
                *f = b;
            }
            d.extend_from_slice(&field);
        }
        d
    }

    /// Selects the item `key` and restarts it.
    pub fn select(&mut self, key: u16) {
        let key = key & !WRITE_CHANNEL;
        self.selected = (key & ARCH_LOCAL == 0 && self.items.contains_key(&key)).then_some(key);
        self.offset = 0;
    }

    /// The next byte of the selected item, 0 past its end or without one.
    pub fn read_data(&mut self) -> u8 {
        let byte = self
            .selected
            .and_then(|k| self.items.get(&k))
            .and_then(|item| item.get(self.offset).copied());
        match byte {
            Some(b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }
}

impl PortDevice for FwCfg {
    fn read(&mut self, _offset: u16, size: u8) -> u32 {
        // QEMU decodes only byte reads, at either port; wider ones change nothing.
        if size == 1 {
            u32::from(self.read_data())
        } else {
            u32::MAX
        }
    }

    fn write(&mut self, offset: u16, size: u8, value: u32) -> PortAction {
        if offset == 0 && size == 2 {
            self.select(low16(value));
        }
        // Anything else (byte writes to the data port) is ignored, as QEMU does.
        PortAction::Continue
    }

    fn max_access_size(&self) -> u8 {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bits::low8;
    use crate::devices::{pc, PortBus};
    use std::sync::{Arc, Mutex};

    fn bus(ram: u64) -> PortBus {
        let mut bus = PortBus::new();
        let dev = FwCfg::new(&MachineLayout::pc(ram));
        bus.insert(
            pc::FW_CFG_PORT_SEL,
            FW_CFG_PORT_LEN,
            Arc::new(Mutex::new(dev)),
        )
        .unwrap();
        bus
    }

    fn read(bus: &mut PortBus, key: u16, len: usize) -> Vec<u8> {
        bus.write(pc::FW_CFG_PORT_SEL, 2, u32::from(key));
        (0..len)
            .map(|_| low8(bus.read(pc::FW_CFG_PORT_DATA, 1)))
            .collect()
    }

    #[test]
    fn signature_id_ram_and_cpus() {
        let mut b = bus(128 << 20);
        assert_eq!(read(&mut b, FW_CFG_SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(read(&mut b, FW_CFG_ID, 4), [1, 0, 0, 0]);
        assert_eq!(
            read(&mut b, FW_CFG_RAM_SIZE, 8),
            (128u64 << 20).to_le_bytes()
        );
        assert_eq!(read(&mut b, FW_CFG_NB_CPUS, 2), [1, 0]);
        assert_eq!(read(&mut b, FW_CFG_MAX_CPUS, 2), [1, 0]);
        // The write channel bit does not change what a read selects.
        assert_eq!(read(&mut b, FW_CFG_SIGNATURE | WRITE_CHANNEL, 4), b"QEMU");
    }

    #[test]
    fn unknown_selectors_read_zeros() {
        let mut b = bus(64 << 20);
        for key in [0x0002, 0x0018, 0x3fff, 0x8000, 0x8003, 0xffff] {
            assert_eq!(read(&mut b, key, 4), [0; 4], "{key:#x}");
        }
    }

    #[test]
    fn directory_lists_etc_e820_in_qemus_layout() {
        let mut b = bus(64 << 20);
        let dir = read(&mut b, FW_CFG_FILE_DIR, 4 + 64);
        assert_eq!(u32::from_be_bytes(dir[0..4].try_into().unwrap()), 1);
        let size = u32::from_be_bytes(dir[4..8].try_into().unwrap());
        let key = u16::from_be_bytes([dir[8], dir[9]]);
        assert_eq!(&dir[12..20], b"etc/e820");
        assert!(dir[20..68].iter().all(|&c| c == 0));
        assert_eq!(key, FW_CFG_FILE_FIRST);
        let map = e820::pc_e820(64 << 20);
        assert_eq!(size as usize, map.len() * e820::FW_CFG_ENTRY_LEN);
        assert_eq!(read(&mut b, key, size as usize), e820::fw_cfg_bytes(&map));
    }

    #[test]
    fn reading_advances_and_selecting_restarts() {
        let mut b = bus(64 << 20);
        assert_eq!(read(&mut b, FW_CFG_SIGNATURE, 2), b"QE");
        assert_eq!(low8(b.read(pc::FW_CFG_PORT_DATA, 1)), b'M');
        // A byte read at the selector port reads data, as QEMU's combined decoder does.
        assert_eq!(low8(b.read(pc::FW_CFG_PORT_SEL, 1)), b'U');
        assert_eq!(b.read(pc::FW_CFG_PORT_DATA, 1), 0);
        // Byte and data-port writes neither select nor disturb.
        b.write(pc::FW_CFG_PORT_SEL, 2, u32::from(FW_CFG_ID));
        b.write(pc::FW_CFG_PORT_DATA, 1, 0x55);
        b.write(pc::FW_CFG_PORT_SEL, 1, 0x03);
        assert_eq!(
            b.read(pc::FW_CFG_PORT_SEL, 2),
            0xffff,
            "word reads are not decoded"
        );
        assert_eq!(low8(b.read(pc::FW_CFG_PORT_DATA, 1)), 1);
    }

    #[test]
    fn file_names_are_checked() {
        let mut d = FwCfg::new(&MachineLayout::pc(64 << 20));
        assert!(d.add_file("etc/e820", vec![]).is_err());
        assert!(d.add_file("", vec![]).is_err());
        assert!(d.add_file(&"x".repeat(56), vec![]).is_err());
        assert_eq!(d.add_file("a/first", vec![7]), Ok(FW_CFG_FILE_FIRST + 1));
        d.select(FW_CFG_FILE_DIR);
        let count: Vec<u8> = (0..4).map(|_| d.read_data()).collect();
        assert_eq!(count, [0, 0, 0, 2]);
        let first: Vec<u8> = (0..64).map(|_| d.read_data()).collect();
        assert_eq!(&first[8..15], b"a/first", "sorted by name");
    }

    proptest::proptest! {
        /// Whatever the guest selects and reads, the device answers without panicking.
        #[test]
        fn arbitrary_traffic(ops in proptest::collection::vec((proptest::prelude::any::<u16>(), 0u8..3, 0u16..2), 0..200)) {
            let mut d = FwCfg::new(&MachineLayout::pc(64 << 20));
            for (v, op, offset) in ops {
                match op {
                    0 => { d.write(offset, 2, u32::from(v)); }
                    1 => { d.read(offset, 1); }
                    _ => { d.read(offset, 2); }
                }
            }
        }
    }
}
