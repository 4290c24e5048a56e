//! The primary IDE channel: an ATA controller with a master and a slave drive in PIO mode
//! (ATA/ATAPI-6, T13 1410D), over the command block at [`pc::IDE_PRIMARY_BASE`] (data,
//! error/features, sector count, LBA low/mid/high, device, status/command) and the control
//! block at [`pc::IDE_PRIMARY_CTRL`] (alternate status / device control).
//!
//! The controller is a state machine over those registers. Every command runs to its end
//! while the guest's port write is handled: a read puts the first block of sectors in the
//! drive's buffer and raises DRQ; the guest drains the buffer through the data port (16 or
//! 32 bits wide, `rep insw/insl` included) and the next block follows. The drive never
//! shows BSY to a guest outside a software reset. Transfers move at most one block
//! ([`MAX_MULTIPLE`] sectors) per data-port access, so no guest value makes the monitor loop.
//!
//! Where the ATA standard leaves a choice (the drive's geometry, the power-on multiple
//! setting, what an absent slave reads as), QEMU's `ide-hd` on a PIIX channel is followed,
//! so a guest sees the same drives under both.

use std::sync::{Arc, Mutex};

use super::bus::{BusError, PortAction, PortBus, PortDevice};
use super::disk::{Disk, SECTOR_SIZE};
use super::irq::IrqLine;
use super::lock;
use super::pc::{IDE_PRIMARY_BASE, IDE_PRIMARY_CTRL};

/// Ports of the command block.
pub const IDE_COMMAND_PORTS: u16 = 8;
/// Ports of the control block (alternate status / device control).
pub const IDE_CONTROL_PORTS: u16 = 1;
/// The most sectors one DRQ block of READ/WRITE MULTIPLE carries (IDENTIFY word 47), and
/// the power-on multiple setting (as QEMU's drives have it).
pub const MAX_MULTIPLE: u8 = 16;

/// Command block register offsets.
mod reg {
    pub const DATA: u16 = 0;
    /// Error (read) / features (write).
    pub const ERROR: u16 = 1;
    pub const COUNT: u16 = 2;
    pub const LBA_LOW: u16 = 3;
    pub const LBA_MID: u16 = 4;
    pub const LBA_HIGH: u16 = 5;
    pub const DEVICE: u16 = 6;
    /// Status (read) / command (write).
    pub const STATUS: u16 = 7;
}

/// Status register bits.
pub mod status {
    /// Busy: the drive owns the registers.
    pub const BSY: u8 = 0x80;
    /// Device ready.
    pub const DRDY: u8 = 0x40;
    /// Device fault.
    pub const DF: u8 = 0x20;
    /// Device seek complete (obsolete, still set by drives and by QEMU).
    pub const DSC: u8 = 0x10;
    /// Data request: the data port holds or wants the next word.
    pub const DRQ: u8 = 0x08;
    /// Error: the error register says what.
    pub const ERR: u8 = 0x01;
}

/// Error register bits.
pub mod error {
    /// Uncorrectable data error.
    pub const UNC: u8 = 0x40;
    /// ID not found: an address outside the medium.
    pub const IDNF: u8 = 0x10;
    /// Command aborted.
    pub const ABRT: u8 = 0x04;
    /// Diagnostic code after a reset or EXECUTE DEVICE DIAGNOSTIC: device 0 passed,
    /// device 1 passed or absent.
    pub const DIAGNOSTIC_PASSED: u8 = 0x01;
}

/// Device register bits.
mod device {
    /// Bits 7 and 5, obsolete, read as one.
    pub const OBSOLETE: u8 = 0xa0;
    /// LBA addressing (else CHS).
    pub const LBA: u8 = 0x40;
    /// DEV: the slave is selected.
    pub const DEV: u8 = 0x10;
    /// LBA bits 27:24, or the CHS head.
    pub const HEAD: u8 = 0x0f;
}

/// Device control register bits.
mod control {
    /// High-order byte: reads return the previously written (LBA48 high) bytes.
    pub const HOB: u8 = 0x80;
    /// Software reset of both drives.
    pub const SRST: u8 = 0x04;
    /// Interrupts disabled.
    pub const NIEN: u8 = 0x02;
}

/// ATA command opcodes.
pub mod cmd {
    /// RECALIBRATE (0x10; 0x11–0x1F are its obsolete aliases).
    pub const RECALIBRATE: u8 = 0x10;
    /// READ SECTORS.
    pub const READ_SECTORS: u8 = 0x20;
    /// READ SECTORS without retries (obsolete alias).
    pub const READ_SECTORS_NORETRY: u8 = 0x21;
    /// READ SECTORS EXT (LBA48).
    pub const READ_SECTORS_EXT: u8 = 0x24;
    /// READ MULTIPLE EXT (LBA48).
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    /// WRITE SECTORS.
    pub const WRITE_SECTORS: u8 = 0x30;
    /// WRITE SECTORS without retries (obsolete alias).
    pub const WRITE_SECTORS_NORETRY: u8 = 0x31;
    /// WRITE SECTORS EXT (LBA48).
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    /// WRITE MULTIPLE EXT (LBA48).
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    /// READ VERIFY SECTORS.
    pub const READ_VERIFY: u8 = 0x40;
    /// READ VERIFY SECTORS without retries (obsolete alias).
    pub const READ_VERIFY_NORETRY: u8 = 0x41;
    /// READ VERIFY SECTORS EXT (LBA48).
    pub const READ_VERIFY_EXT: u8 = 0x42;
    /// SEEK.
    pub const SEEK: u8 = 0x70;
    /// EXECUTE DEVICE DIAGNOSTIC.
    pub const EXECUTE_DIAGNOSTIC: u8 = 0x90;
    /// INITIALIZE DEVICE PARAMETERS: the CHS translation.
    pub const INITIALIZE_PARAMETERS: u8 = 0x91;
    /// READ MULTIPLE.
    pub const READ_MULTIPLE: u8 = 0xc4;
    /// WRITE MULTIPLE.
    pub const WRITE_MULTIPLE: u8 = 0xc5;
    /// SET MULTIPLE MODE.
    pub const SET_MULTIPLE: u8 = 0xc6;
    /// STANDBY IMMEDIATE, IDLE IMMEDIATE, STANDBY, IDLE, CHECK POWER MODE, SLEEP, and
    /// their obsolete 0x94–0x99 aliases.
    pub const STANDBY_IMMEDIATE: u8 = 0xe0;
    /// IDLE IMMEDIATE.
    pub const IDLE_IMMEDIATE: u8 = 0xe1;
    /// STANDBY.
    pub const STANDBY: u8 = 0xe2;
    /// IDLE.
    pub const IDLE: u8 = 0xe3;
    /// CHECK POWER MODE.
    pub const CHECK_POWER_MODE: u8 = 0xe5;
    /// SLEEP.
    pub const SLEEP: u8 = 0xe6;
    /// FLUSH CACHE.
    pub const FLUSH_CACHE: u8 = 0xe7;
    /// FLUSH CACHE EXT.
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    /// IDENTIFY DEVICE.
    pub const IDENTIFY: u8 = 0xec;
    /// SET FEATURES.
    pub const SET_FEATURES: u8 = 0xef;
}

/// The largest sector count of an LBA28 command (a count register of 0).
const LBA28_MAX_COUNT: u32 = 256;
/// The largest sector count of an LBA48 command (count registers of 0).
const LBA48_MAX_COUNT: u32 = 65_536;
/// The most sectors IDENTIFY reports as LBA28-addressable (words 60–61).
const LBA28_MAX_SECTORS: u64 = 0x0fff_ffff;
/// Bytes of the drive's transfer buffer: one DRQ block of the largest multiple setting.
const BUFFER_LEN: usize = MAX_MULTIPLE as usize * SECTOR_SIZE;
/// IDENTIFY DEVICE strings.
const MODEL: &str = "VMM HARDDISK";
const FIRMWARE: &str = env!("CARGO_PKG_VERSION");

/// A drive position on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Device 0.
    Master,
    /// Device 1.
    Slave,
}

impl Unit {
    fn index(self) -> usize {
        match self {
            Unit::Master => 0,
            Unit::Slave => 1,
        }
    }

    /// The drive the device register's DEV bit selects.
    fn selected_by(device: u8) -> Self {
        if device & device::DEV == 0 {
            Unit::Master
        } else {
            Unit::Slave
        }
    }
}

/// A CHS translation: cylinders, heads, sectors per track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads (1–16).
    pub heads: u8,
    /// Sectors per track (1–255).
    pub sectors: u8,
}

impl Geometry {
    /// The default translation of a drive of `total` sectors: 16 heads and 63 sectors per
    /// track, as many cylinders as fit (2 to 16383), as QEMU guesses it for an image
    /// without a partition table (and ATA-6 Annex B for large drives).
    pub fn for_capacity(total: u64) -> Self {
        let cylinders = (total / (16 * 63)).clamp(2, 16_383);
        Self {
            cylinders: u16::try_from(cylinders).unwrap_or(16_383),
            heads: 16,
            sectors: 63,
        }
    }

    /// Sectors the translation addresses.
    pub fn capacity(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }
}

/// The command block registers as one drive holds them. Writes reach both drives; each
/// keeps its own copy because results (status, error, addresses) are per drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskFile {
    /// Features (written) register.
    pub features: u8,
    /// Sector count.
    pub count: u8,
    /// LBA low (sector number).
    pub lba_low: u8,
    /// LBA mid (cylinder low).
    pub lba_mid: u8,
    /// LBA high (cylinder high).
    pub lba_high: u8,
    /// The values written before the current ones: the high-order bytes of an LBA48
    /// command, read back with HOB set.
    pub hob_features: u8,
    /// Previous sector count.
    pub hob_count: u8,
    /// Previous LBA low.
    pub hob_lba_low: u8,
    /// Previous LBA mid.
    pub hob_lba_mid: u8,
    /// Previous LBA high.
    pub hob_lba_high: u8,
    /// Device register (bits 7 and 5 read as one).
    pub device: u8,
    /// Status.
    pub status: u8,
    /// Error.
    pub error: u8,
}

impl TaskFile {
    /// The registers after power-on or a reset: the ATA signature (count 1, LBA 1 / 0 / 0;
    /// an absent device shows 0xFF in LBA mid and high, as QEMU's does), diagnostics passed.
    fn after_reset(present: bool) -> Self {
        let lba = if present { 0 } else { 0xff };
        Self {
            count: 1,
            lba_low: 1,
            lba_mid: lba,
            lba_high: lba,
            device: device::OBSOLETE,
            status: status::DRDY | status::DSC,
            error: error::DIAGNOSTIC_PASSED,
            ..Self::default()
        }
    }
}

/// How a command names its sectors, which is also how the registers are written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addressing {
    Chs,
    Lba28,
    Lba48,
}

/// A READ or WRITE in progress: where the next block starts and how much is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SectorRun {
    next: u64,
    remaining: u32,
    /// Sectors per DRQ block: 1, or the multiple setting.
    per_block: u32,
    addressing: Addressing,
}

impl SectorRun {
    /// Sectors in the next block.
    fn block(&self) -> u32 {
        self.remaining.min(self.per_block)
    }
}

/// The data phase of one drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    Idle,
    /// The guest reads `buffer[pos..len]`; a read command continues with `then`.
    ToHost {
        pos: usize,
        len: usize,
        then: Option<SectorRun>,
    },
    /// The guest writes `buffer[pos..len]`, which then goes to the disk at `run.next`.
    FromHost {
        pos: usize,
        len: usize,
        run: SectorRun,
    },
}

/// What the controller has done, for `--stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdeStats {
    /// Commands the drives executed (aborted ones included).
    pub commands: u64,
    /// Sectors read from the disks.
    pub sectors_read: u64,
    /// Sectors written to the disks.
    pub sectors_written: u64,
    /// Commands that ended with ERR.
    pub errors: u64,
}

/// A drive with its medium.
struct Drive {
    disk: Box<dyn Disk>,
    /// The default translation (IDENTIFY words 1, 3, 6).
    default_geometry: Geometry,
    /// The translation INITIALIZE DEVICE PARAMETERS chose (words 54–58).
    geometry: Geometry,
    /// READ/WRITE MULTIPLE block size; 0 when disabled.
    multiple: u8,
    serial: String,
}

/// One position on the channel: its registers whether or not a drive is there.
struct Slot {
    regs: TaskFile,
    drive: Option<Drive>,
    transfer: Transfer,
    buffer: Box<[u8]>,
}

impl Slot {
    fn empty() -> Self {
        Self {
            regs: TaskFile::after_reset(false),
            drive: None,
            transfer: Transfer::Idle,
            buffer: vec![0; BUFFER_LEN].into_boxed_slice(),
        }
    }
}

/// The primary IDE channel: two drive positions, the device control register and the
/// channel's interrupt line (IRQ 14).
pub struct IdeChannel<L> {
    slots: [Slot; 2],
    selected: Unit,
    control: u8,
    /// The drive's INTRQ: set when a command or block completes, cleared by a read of the
    /// status register or a new command. The line shows it unless nIEN is set.
    intrq: bool,
    irq: L,
    stats: IdeStats,
}

impl<L> std::fmt::Debug for IdeChannel<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdeChannel")
            .field("master", &self.slots[0].regs)
            .field("slave", &self.slots[1].regs)
            .field("selected", &self.selected)
            .field("control", &self.control)
            .field("intrq", &self.intrq)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// `text` as an IDENTIFY string of `words` words: space-padded, two characters per word,
/// the first in the high byte.
fn put_string(block: &mut [u16; 256], first: usize, words: usize, text: &str) {
    let mut bytes = text.bytes().chain(std::iter::repeat(b' '));
    for w in block.iter_mut().skip(first).take(words) {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *w = u16::from_be_bytes([hi, lo]);
    }
}

/// The 16-bit words `[n, n+1, ...]` of `value`, low word first.
fn words_of(value: u64) -> [u16; 4] {
    let b = value.to_le_bytes();
    [
        u16::from_le_bytes([b[0], b[1]]),
        u16::from_le_bytes([b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
    ]
}

impl Drive {
    fn new(disk: Box<dyn Disk>, unit: Unit) -> Self {
        let geometry = Geometry::for_capacity(disk.sectors());
        Self {
            disk,
            default_geometry: geometry,
            geometry,
            multiple: MAX_MULTIPLE,
            serial: format!("VMM0000{}", unit.index() + 1),
        }
    }

    /// The IDENTIFY DEVICE data (ATA/ATAPI-6 Table 27), with its integrity word.
    fn identify(&self, unit: Unit) -> [u16; 256] {
        let total = self.disk.sectors();
        let mut w = [0u16; 256];
        w[0] = 0x0040; // fixed device
        w[1] = self.default_geometry.cylinders;
        w[3] = u16::from(self.default_geometry.heads);
        w[6] = u16::from(self.default_geometry.sectors);
        put_string(&mut w, 10, 10, &self.serial);
        put_string(&mut w, 23, 4, FIRMWARE);
        put_string(&mut w, 27, 20, MODEL);
        w[47] = 0x8000 | u16::from(MAX_MULTIPLE);
        w[48] = 0x0001; // doubleword I/O
        w[49] = 0x0200; // LBA supported (no DMA)
        w[50] = 0x4000;
        w[51] = 0x0200; // PIO mode 2 timing (obsolete)
        w[53] = 0x0003; // words 54-58 and 64-70 valid
        w[54] = self.geometry.cylinders;
        w[55] = u16::from(self.geometry.heads);
        w[56] = u16::from(self.geometry.sectors);
        let [lo, hi, _, _] = words_of(self.geometry.capacity());
        (w[57], w[58]) = (lo, hi);
        if self.multiple != 0 {
            w[59] = 0x0100 | u16::from(self.multiple);
        }
        let [lo, hi, _, _] = words_of(total.min(LBA28_MAX_SECTORS));
        (w[60], w[61]) = (lo, hi);
        w[64] = 0x0003; // PIO modes 3 and 4
        for t in &mut w[65..=68] {
            *t = 120; // cycle times, ns
        }
        w[80] = 0x007e; // ATA-1 to ATA/ATAPI-6
        w[82] = 0x4000; // NOP
        w[83] = 0x4000 | 0x2000 | 0x1000 | 0x0400; // FLUSH CACHE (EXT), 48-bit addresses
        w[84] = 0x4000;
        w[85] = 0x4000;
        w[86] = 0x2000 | 0x1000 | 0x0400;
        w[87] = 0x4000;
        w[93] = 0x4000
            | match unit {
                Unit::Master => 0x0009, // device 0: jumper, diagnostics passed
                Unit::Slave => 0x0100,
            };
        w[100..104].copy_from_slice(&words_of(total));
        // Word 255: signature A5h, and a checksum byte that makes the 512 bytes sum to 0.
        let sum = w[..255]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .fold(0xa5u8, u8::wrapping_add);
        w[255] = u16::from_le_bytes([0xa5, sum.wrapping_neg()]);
        w
    }
}

impl<L: IrqLine> IdeChannel<L> {
    /// A channel with no drives attached; its interrupt goes to `irq`.
    pub fn new(irq: L) -> Self {
        Self {
            slots: [Slot::empty(), Slot::empty()],
            selected: Unit::Master,
            control: 0,
            intrq: false,
            irq,
            stats: IdeStats::default(),
        }
    }

    /// Puts a drive holding `disk` at `unit`, replacing any there, in its power-on state.
    pub fn attach(&mut self, unit: Unit, disk: Box<dyn Disk>) {
        let slot = self.slot_mut(unit);
        slot.drive = Some(Drive::new(disk, unit));
        slot.regs = TaskFile::after_reset(true);
        slot.transfer = Transfer::Idle;
    }

    /// Whether a drive is attached at `unit`.
    pub fn has_drive(&self, unit: Unit) -> bool {
        self.slot(unit).drive.is_some()
    }

    /// What the drives have done so far.
    pub fn stats(&self) -> IdeStats {
        self.stats
    }

    /// The registers of the drive at `unit`.
    pub fn task_file(&self, unit: Unit) -> TaskFile {
        self.slot(unit).regs
    }

    /// The position at `unit`.
    fn slot(&self, unit: Unit) -> &Slot {
        let [master, slave] = &self.slots;
        match unit {
            Unit::Master => master,
            Unit::Slave => slave,
        }
    }

    fn slot_mut(&mut self, unit: Unit) -> &mut Slot {
        let [master, slave] = &mut self.slots;
        match unit {
            Unit::Master => master,
            Unit::Slave => slave,
        }
    }

    /// The selected position.
    fn current(&self) -> &Slot {
        self.slot(self.selected)
    }

    fn current_mut(&mut self) -> &mut Slot {
        self.slot_mut(self.selected)
    }

    /// The selected drive; `None` when the position is empty (commands to it abort).
    fn drive(&mut self) -> Option<&mut Drive> {
        self.current_mut().drive.as_mut()
    }

    fn no_drives(&self) -> bool {
        self.slots.iter().all(|s| s.drive.is_none())
    }

    /// Whether the selected position answers status and error reads. An absent slave does
    /// not (the master does not answer for it on QEMU's channel either): they read 0.
    fn selected_answers(&self) -> bool {
        !self.no_drives() && (self.selected == Unit::Master || self.current().drive.is_some())
    }

    fn update_line(&self) {
        self.irq
            .set_level(self.intrq && self.control & control::NIEN == 0);
    }

    fn raise(&mut self) {
        self.intrq = true;
        self.update_line();
    }

    fn lower(&mut self) {
        self.intrq = false;
        self.update_line();
    }

    // ---- Register reads and writes ----

    fn read_register(&mut self, offset: u16) -> u8 {
        let hob = self.control & control::HOB != 0;
        let answers = self.selected_answers();
        let none = self.no_drives();
        let r = self.current().regs;
        let pick = |cur: u8, prev: u8| {
            if none {
                0
            } else if hob {
                prev
            } else {
                cur
            }
        };
        match offset {
            // An 8-bit read of the data port moves no data (QEMU reads it as 0xFF).
            reg::DATA => 0xff,
            reg::ERROR => {
                if answers {
                    r.error
                } else {
                    0
                }
            }
            reg::COUNT => pick(r.count, r.hob_count),
            reg::LBA_LOW => pick(r.lba_low, r.hob_lba_low),
            reg::LBA_MID => pick(r.lba_mid, r.hob_lba_mid),
            reg::LBA_HIGH => pick(r.lba_high, r.hob_lba_high),
            reg::DEVICE => {
                if none {
                    0
                } else {
                    r.device
                }
            }
            _ => {
                let v = if answers { r.status } else { 0 };
                // Reading the status register acknowledges the interrupt.
                self.lower();
                v
            }
        }
    }

    fn write_register(&mut self, offset: u16, value: u8) {
        if offset == reg::STATUS {
            self.control &= !control::HOB;
            self.lower();
            self.execute(value);
            return;
        }
        // The command block belongs to the drive while it is busy or moving data.
        if self.current().regs.status & (status::BSY | status::DRQ) != 0 {
            return;
        }
        self.control &= !control::HOB;
        for slot in &mut self.slots {
            let r = &mut slot.regs;
            match offset {
                reg::ERROR => (r.hob_features, r.features) = (r.features, value),
                reg::COUNT => (r.hob_count, r.count) = (r.count, value),
                reg::LBA_LOW => (r.hob_lba_low, r.lba_low) = (r.lba_low, value),
                reg::LBA_MID => (r.hob_lba_mid, r.lba_mid) = (r.lba_mid, value),
                reg::LBA_HIGH => (r.hob_lba_high, r.lba_high) = (r.lba_high, value),
                reg::DEVICE => r.device = value | device::OBSOLETE,
                // Byte writes to the data port move no data.
                _ => {}
            }
        }
        if offset == reg::DEVICE {
            self.selected = Unit::selected_by(value);
        }
    }

    /// The alternate status register: the status without acknowledging the interrupt.
    pub fn read_alt_status(&self) -> u8 {
        if self.selected_answers() {
            self.current().regs.status
        } else {
            0
        }
    }

    /// The device control register: nIEN gates the interrupt line; SRST holds both drives
    /// in reset (BSY) until it is cleared again.
    pub fn write_control(&mut self, value: u8) {
        let was_reset = self.control & control::SRST != 0;
        let reset = value & control::SRST != 0;
        self.control = value;
        if reset && !was_reset {
            for slot in &mut self.slots {
                slot.regs.status |= status::BSY;
                slot.transfer = Transfer::Idle;
            }
        } else if was_reset && !reset {
            for slot in &mut self.slots {
                slot.regs = TaskFile::after_reset(slot.drive.is_some());
                slot.transfer = Transfer::Idle;
            }
            self.selected = Unit::Master;
        }
        self.update_line();
    }

    // ---- The data port ----

    /// Reads `size` (2 or 4) bytes of a device-to-host transfer. Outside one, or past its
    /// end, the port reads 0 and nothing moves (as on QEMU).
    fn read_data(&mut self, size: usize) -> u32 {
        let slot = self.current_mut();
        let Transfer::ToHost { pos, len, then } = slot.transfer else {
            return 0;
        };
        if slot.regs.status & status::DRQ == 0 || pos + size > len {
            return 0;
        }
        let mut bytes = [0u8; 4];
        let (Some(to), Some(from)) = (bytes.get_mut(..size), slot.buffer.get(pos..pos + size))
        else {
            return 0;
        };
        to.copy_from_slice(from);
        let pos = pos + size;
        slot.transfer = Transfer::ToHost { pos, len, then };
        if pos == len {
            slot.regs.status &= !status::DRQ;
            slot.transfer = Transfer::Idle;
            if let Some(run) = then {
                self.read_block(run);
            }
        }
        u32::from_le_bytes(bytes)
    }

    /// Writes `size` (2 or 4) bytes of a host-to-device transfer; ignored outside one.
    fn write_data(&mut self, size: usize, value: u32) {
        let slot = self.current_mut();
        let Transfer::FromHost { pos, len, run } = slot.transfer else {
            return;
        };
        if slot.regs.status & status::DRQ == 0 || pos + size > len {
            return;
        }
        let bytes = value.to_le_bytes();
        let (Some(to), Some(from)) = (slot.buffer.get_mut(pos..pos + size), bytes.get(..size))
        else {
            return;
        };
        to.copy_from_slice(from);
        let pos = pos + size;
        slot.transfer = Transfer::FromHost { pos, len, run };
        if pos == len {
            slot.regs.status &= !status::DRQ;
            slot.transfer = Transfer::Idle;
            self.write_block(run);
        }
    }

    // ---- Commands ----

    fn execute(&mut self, command: u8) {
        let slot = self.current();
        let present = slot.drive.is_some();
        // Commands to an absent slave go nowhere: no drive answers them.
        if self.selected == Unit::Slave && !present {
            return;
        }
        if slot.regs.status & (status::BSY | status::DRQ) != 0 {
            return;
        }
        self.stats.commands += 1;
        if !present {
            return self.abort();
        }
        match command {
            cmd::IDENTIFY => self.identify(),
            cmd::READ_SECTORS | cmd::READ_SECTORS_NORETRY => self.start_read(false, false),
            cmd::READ_SECTORS_EXT => self.start_read(true, false),
            cmd::READ_MULTIPLE => self.start_read(false, true),
            cmd::READ_MULTIPLE_EXT => self.start_read(true, true),
            cmd::WRITE_SECTORS | cmd::WRITE_SECTORS_NORETRY => self.start_write(false, false),
            cmd::WRITE_SECTORS_EXT => self.start_write(true, false),
            cmd::WRITE_MULTIPLE => self.start_write(false, true),
            cmd::WRITE_MULTIPLE_EXT => self.start_write(true, true),
            cmd::READ_VERIFY | cmd::READ_VERIFY_NORETRY => self.verify(false),
            cmd::READ_VERIFY_EXT => self.verify(true),
            cmd::SET_MULTIPLE => self.set_multiple(),
            cmd::INITIALIZE_PARAMETERS => self.initialize_parameters(),
            cmd::SET_FEATURES => self.set_features(),
            cmd::FLUSH_CACHE | cmd::FLUSH_CACHE_EXT => self.flush(),
            cmd::EXECUTE_DIAGNOSTIC => self.diagnostic(),
            cmd::CHECK_POWER_MODE | 0x98 => {
                self.current_mut().regs.count = 0xff; // active or idle
                self.complete();
            }
            cmd::STANDBY_IMMEDIATE
            | cmd::IDLE_IMMEDIATE
            | cmd::STANDBY
            | cmd::IDLE
            | cmd::SLEEP
            | 0x94..=0x97
            | 0x99
            | cmd::SEEK
            | cmd::RECALIBRATE..=0x1f => self.complete(),
            _ => self.abort(),
        }
    }

    /// Ends a command without data: ready, no error, interrupt.
    fn complete(&mut self) {
        let r = &mut self.current_mut().regs;
        r.status = status::DRDY | status::DSC;
        r.error = 0;
        self.raise();
    }

    /// Ends a command with ERR and `bits` in the error register, and an interrupt.
    fn fail(&mut self, bits: u8, fault: bool) {
        let slot = self.current_mut();
        slot.transfer = Transfer::Idle;
        slot.regs.status = status::DRDY | status::ERR | if fault { status::DF } else { 0 };
        slot.regs.error = bits;
        self.stats.errors += 1;
        self.raise();
    }

    fn abort(&mut self) {
        self.fail(error::ABRT, false);
    }

    fn identify(&mut self) {
        let unit = self.selected;
        let Some(words) = self.drive().map(|d| d.identify(unit)) else {
            return self.abort();
        };
        let slot = self.current_mut();
        for (chunk, w) in slot.buffer.chunks_exact_mut(2).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        self.begin_to_host(SECTOR_SIZE, None);
    }

    /// Makes `buffer[..len]` readable through the data port, with an interrupt.
    fn begin_to_host(&mut self, len: usize, then: Option<SectorRun>) {
        let slot = self.current_mut();
        slot.transfer = Transfer::ToHost { pos: 0, len, then };
        slot.regs.status = status::DRDY | status::DSC | status::DRQ;
        slot.regs.error = 0;
        self.raise();
    }

    /// The sectors the registers name: the first one and how many, or `None` when a CHS
    /// address lies outside the translation.
    fn decode(&self, lba48: bool) -> (Option<u64>, u32, Addressing) {
        let slot = self.current();
        let r = &slot.regs;
        if lba48 {
            let lba = u64::from_le_bytes([
                r.lba_low,
                r.lba_mid,
                r.lba_high,
                r.hob_lba_low,
                r.hob_lba_mid,
                r.hob_lba_high,
                0,
                0,
            ]);
            let count = u32::from(u16::from_le_bytes([r.count, r.hob_count]));
            let count = if count == 0 { LBA48_MAX_COUNT } else { count };
            return (Some(lba), count, Addressing::Lba48);
        }
        let count = if r.count == 0 {
            LBA28_MAX_COUNT
        } else {
            u32::from(r.count)
        };
        if r.device & device::LBA != 0 {
            let lba =
                u32::from_le_bytes([r.lba_low, r.lba_mid, r.lba_high, r.device & device::HEAD]);
            return (Some(u64::from(lba)), count, Addressing::Lba28);
        }
        let g = slot
            .drive
            .as_ref()
            .map_or(Geometry::for_capacity(0), |d| d.geometry);
        let cylinder = u64::from(u16::from_le_bytes([r.lba_mid, r.lba_high]));
        let head = r.device & device::HEAD;
        let sector = r.lba_low;
        let lba = (sector != 0
            && sector <= g.sectors
            && head < g.heads
            && u64::from(g.cylinders) > cylinder)
            .then(|| {
                (cylinder * u64::from(g.heads) + u64::from(head)) * u64::from(g.sectors)
                    + u64::from(sector - 1)
            });
        (lba, count, Addressing::Chs)
    }

    /// Writes `lba` back to the address registers in the command's form (after each block
    /// the registers name the next sector; after an error, the sector in error).
    fn set_address(&mut self, lba: u64, addressing: Addressing) {
        let slot = self.current_mut();
        let g = slot
            .drive
            .as_ref()
            .map_or(Geometry::for_capacity(0), |d| d.geometry);
        let r = &mut slot.regs;
        let b = lba.to_le_bytes();
        match addressing {
            Addressing::Lba48 => {
                (r.lba_low, r.lba_mid, r.lba_high) = (b[0], b[1], b[2]);
                (r.hob_lba_low, r.hob_lba_mid, r.hob_lba_high) = (b[3], b[4], b[5]);
            }
            Addressing::Lba28 => {
                (r.lba_low, r.lba_mid, r.lba_high) = (b[0], b[1], b[2]);
                r.device = (r.device & !device::HEAD) | (b[3] & device::HEAD);
            }
            Addressing::Chs => {
                let per_cylinder = u64::from(g.heads) * u64::from(g.sectors);
                let cylinder = (lba / per_cylinder).to_le_bytes();
                let rest = lba % per_cylinder;
                let head = (rest / u64::from(g.sectors)).to_le_bytes()[0];
                let sector = (rest % u64::from(g.sectors) + 1).to_le_bytes()[0];
                (r.lba_mid, r.lba_high, r.lba_low) = (cylinder[0], cylinder[1], sector);
                r.device = (r.device & !device::HEAD) | (head & device::HEAD);
            }
        }
    }

    /// The run a READ/WRITE (MULTIPLE) command asks for, or the error that ends it.
    fn sector_run(&mut self, lba48: bool, multiple: bool) -> Option<SectorRun> {
        let per_block = if multiple {
            match self.drive().map_or(0, |d| d.multiple) {
                0 => {
                    self.abort();
                    return None;
                }
                m => u32::from(m),
            }
        } else {
            1
        };
        let (lba, count, addressing) = self.decode(lba48);
        let Some(next) = lba else {
            self.fail(error::IDNF | error::ABRT, false);
            return None;
        };
        Some(SectorRun {
            next,
            remaining: count,
            per_block,
            addressing,
        })
    }

    fn start_read(&mut self, lba48: bool, multiple: bool) {
        if let Some(run) = self.sector_run(lba48, multiple) {
            self.read_block(run);
        }
    }

    /// Whether sectors `lba..lba + count` exist; if not the command fails with IDNF, the
    /// registers naming the first missing sector.
    fn in_range(&mut self, lba: u64, count: u32, addressing: Addressing) -> bool {
        let Some(total) = self.drive().map(|d| d.disk.sectors()) else {
            self.abort();
            return false;
        };
        if lba.saturating_add(u64::from(count)) <= total {
            return true;
        }
        self.set_address(lba.max(total), addressing);
        self.fail(error::IDNF, false);
        false
    }

    /// Reads the next block of `run` into the buffer and offers it to the guest.
    fn read_block(&mut self, run: SectorRun) {
        let n = run.block();
        if !self.in_range(run.next, n, run.addressing) {
            return;
        }
        let len = n as usize * SECTOR_SIZE;
        let slot = self.current_mut();
        let (Some(drive), Some(buffer)) = (slot.drive.as_mut(), slot.buffer.get_mut(..len)) else {
            return self.abort();
        };
        if drive.disk.read_sectors(run.next, buffer).is_err() {
            self.set_address(run.next, run.addressing);
            return self.fail(error::UNC, false);
        }
        self.stats.sectors_read += u64::from(n);
        let rest = SectorRun {
            next: run.next + u64::from(n),
            remaining: run.remaining - n,
            ..run
        };
        self.set_address(rest.next, run.addressing);
        self.current_mut().regs.count = rest.remaining.to_le_bytes()[0];
        self.begin_to_host(len, (rest.remaining > 0).then_some(rest));
    }

    fn start_write(&mut self, lba48: bool, multiple: bool) {
        if self.drive().is_none_or(|d| d.disk.is_read_only()) {
            return self.abort();
        }
        if let Some(run) = self.sector_run(lba48, multiple) {
            // The first block is asked for without an interrupt.
            self.want_block(run);
        }
    }

    /// Asks the guest for the next block of `run`.
    fn want_block(&mut self, run: SectorRun) {
        let slot = self.current_mut();
        let len = run.block() as usize * SECTOR_SIZE;
        slot.transfer = Transfer::FromHost { pos: 0, len, run };
        slot.regs.status = status::DRDY | status::DSC | status::DRQ;
        slot.regs.error = 0;
    }

    /// Stores the block the guest wrote, then asks for the next one or completes; either
    /// way with an interrupt.
    fn write_block(&mut self, run: SectorRun) {
        let n = run.block();
        if !self.in_range(run.next, n, run.addressing) {
            return;
        }
        let len = n as usize * SECTOR_SIZE;
        let slot = self.current_mut();
        let (Some(drive), Some(buffer)) = (slot.drive.as_mut(), slot.buffer.get(..len)) else {
            return self.abort();
        };
        if drive.disk.write_sectors(run.next, buffer).is_err() {
            self.set_address(run.next, run.addressing);
            return self.fail(error::ABRT, true);
        }
        self.stats.sectors_written += u64::from(n);
        let rest = SectorRun {
            next: run.next + u64::from(n),
            remaining: run.remaining - n,
            ..run
        };
        self.set_address(rest.next, run.addressing);
        self.current_mut().regs.count = rest.remaining.to_le_bytes()[0];
        if rest.remaining > 0 {
            self.want_block(rest);
            self.raise();
        } else {
            self.complete();
        }
    }

    fn verify(&mut self, lba48: bool) {
        let (lba, count, addressing) = self.decode(lba48);
        match lba {
            None => self.fail(error::IDNF | error::ABRT, false),
            Some(lba) => {
                if self.in_range(lba, count, addressing) {
                    self.complete();
                }
            }
        }
    }

    /// SET MULTIPLE MODE: a power of two up to [`MAX_MULTIPLE`]; 0 turns READ/WRITE
    /// MULTIPLE off.
    fn set_multiple(&mut self) {
        let count = self.current().regs.count;
        if count > MAX_MULTIPLE || (count != 0 && !count.is_power_of_two()) {
            return self.abort();
        }
        let Some(drive) = self.drive() else {
            return self.abort();
        };
        drive.multiple = count;
        self.complete();
    }

    /// INITIALIZE DEVICE PARAMETERS: the CHS translation is `count` sectors per track and
    /// `device.HEAD + 1` heads, with as many cylinders as the medium fills.
    fn initialize_parameters(&mut self) {
        let r = self.current().regs;
        if r.count == 0 {
            return self.abort();
        }
        let heads = (r.device & device::HEAD) + 1;
        let Some(drive) = self.drive() else {
            return self.abort();
        };
        let cylinders = drive.disk.sectors() / (u64::from(heads) * u64::from(r.count));
        drive.geometry = Geometry {
            cylinders: u16::try_from(cylinders).unwrap_or(u16::MAX),
            heads,
            sectors: r.count,
        };
        self.complete();
    }

    /// SET FEATURES: the subcommands guests send at start-up. Write cache, look-ahead,
    /// power management and acoustics settings are accepted and change nothing; a PIO
    /// transfer mode is accepted, a DMA one is not (the drives have no DMA).
    fn set_features(&mut self) {
        let r = self.current().regs;
        let ok = match r.features {
            0x02 | 0x82 | 0x55 | 0xaa | 0x66 | 0xcc | 0x05 | 0x85 | 0x42 | 0xc2 => true,
            // Set transfer mode: PIO default (00000 xxx) or PIO flow control (00001 xxx).
            0x03 => r.count >> 3 <= 1 && r.count & 7 <= 4,
            _ => false,
        };
        if ok {
            self.complete();
        } else {
            self.abort();
        }
    }

    fn flush(&mut self) {
        if self.drive().is_some_and(|d| d.disk.flush().is_ok()) {
            self.complete();
        } else {
            self.fail(error::ABRT, true);
        }
    }

    /// EXECUTE DEVICE DIAGNOSTIC: the signature and the diagnostic code, no ERR.
    fn diagnostic(&mut self) {
        let slot = self.current_mut();
        slot.regs = TaskFile {
            features: slot.regs.features,
            ..TaskFile::after_reset(true)
        };
        self.raise();
    }
}

impl<L: IrqLine> PortDevice for IdeChannel<L> {
    /// The command block: the data port 16 or 32 bits wide, the others a byte each.
    fn read(&mut self, offset: u16, size: u8) -> u32 {
        if offset == reg::DATA && size > 1 {
            return self.read_data(usize::from(size));
        }
        let mut value = 0;
        for i in 0..u16::from(size) {
            value |= u32::from(self.read_register(offset + i)) << (8 * i);
        }
        value
    }

    fn write(&mut self, offset: u16, size: u8, value: u32) -> PortAction {
        if offset == reg::DATA && size > 1 {
            self.write_data(usize::from(size), value);
            return PortAction::Continue;
        }
        for (i, byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            let i = u16::try_from(i).unwrap_or(0);
            self.write_register(offset + i, *byte);
        }
        PortAction::Continue
    }

    fn max_access_size(&self) -> u8 {
        4
    }
}

/// The control block port, on the same channel.
struct ControlPort<L> {
    channel: Arc<Mutex<IdeChannel<L>>>,
}

impl<L: IrqLine> PortDevice for ControlPort<L> {
    fn read(&mut self, _offset: u16, _size: u8) -> u32 {
        u32::from(lock(&self.channel).read_alt_status())
    }

    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> PortAction {
        lock(&self.channel).write_control(value.to_le_bytes()[0]);
        PortAction::Continue
    }
}

/// Puts the channel's command block and control port on `bus`.
///
/// # Errors
/// [`BusError::Overlap`] if one of those ports is already claimed.
pub fn register_ide<L: IrqLine + Send + 'static>(
    bus: &mut PortBus,
    channel: &Arc<Mutex<IdeChannel<L>>>,
) -> Result<(), BusError> {
    bus.insert(IDE_PRIMARY_BASE, IDE_COMMAND_PORTS, channel.clone())?;
    bus.insert(
        IDE_PRIMARY_CTRL,
        IDE_CONTROL_PORTS,
        Arc::new(Mutex::new(ControlPort {
            channel: Arc::clone(channel),
        })),
    )
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::devices::disk::MemDisk;
    use crate::devices::irq::fake::FakeLine;

    const DATA: u16 = IDE_PRIMARY_BASE;
    const FEATURES: u16 = IDE_PRIMARY_BASE + 1;
    const COUNT: u16 = IDE_PRIMARY_BASE + 2;
    const LBA_LOW: u16 = IDE_PRIMARY_BASE + 3;
    const LBA_MID: u16 = IDE_PRIMARY_BASE + 4;
    const LBA_HIGH: u16 = IDE_PRIMARY_BASE + 5;
    const DEVICE: u16 = IDE_PRIMARY_BASE + 6;
    const COMMAND: u16 = IDE_PRIMARY_BASE + 7;
    const CTRL: u16 = IDE_PRIMARY_CTRL;
    const READY: u32 = (status::DRDY | status::DSC) as u32;
    const READY_DRQ: u32 = READY | status::DRQ as u32;
    const FAILED: u32 = (status::DRDY | status::ERR) as u32;

    /// The byte at `offset` of sector `lba` of the test pattern.
    fn pattern(lba: u64, offset: usize) -> u8 {
        (lba.to_le_bytes()[0] ^ lba.to_le_bytes()[3])
            .wrapping_add(offset.to_le_bytes()[0].wrapping_mul(7))
    }

    fn patterned(sectors: u64) -> MemDisk {
        let mut d = MemDisk::new(sectors);
        for (i, b) in d.data.iter_mut().enumerate() {
            *b = pattern((i / SECTOR_SIZE) as u64, i % SECTOR_SIZE);
        }
        d
    }

    /// A huge disk that stores nothing: reads give the pattern, writes are counted.
    struct Huge {
        sectors: u64,
        writes: Arc<Mutex<Vec<u64>>>,
    }

    impl Disk for Huge {
        fn sectors(&self) -> u64 {
            self.sectors
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = pattern(lba + (i / SECTOR_SIZE) as u64, i % SECTOR_SIZE);
            }
            Ok(())
        }
        fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> io::Result<()> {
            let mut w = self.writes.lock().unwrap();
            for i in 0..buf.len() / SECTOR_SIZE {
                w.push(lba + i as u64);
            }
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A disk shared with the test, to look at after the guest wrote.
    #[derive(Clone)]
    struct Shared(Arc<Mutex<MemDisk>>);

    impl Disk for Shared {
        fn sectors(&self) -> u64 {
            self.0.lock().unwrap().sectors()
        }
        fn is_read_only(&self) -> bool {
            self.0.lock().unwrap().is_read_only()
        }
        fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
            self.0.lock().unwrap().read_sectors(lba, buf)
        }
        fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> io::Result<()> {
            self.0.lock().unwrap().write_sectors(lba, buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.lock().unwrap().flush()
        }
    }

    struct Rig {
        bus: PortBus,
        ide: Arc<Mutex<IdeChannel<FakeLine>>>,
        line: FakeLine,
    }

    impl Rig {
        fn new(master: Option<Box<dyn Disk>>, slave: Option<Box<dyn Disk>>) -> Self {
            let line = FakeLine::default();
            let mut channel = IdeChannel::new(line.clone());
            if let Some(d) = master {
                channel.attach(Unit::Master, d);
            }
            if let Some(d) = slave {
                channel.attach(Unit::Slave, d);
            }
            let ide = Arc::new(Mutex::new(channel));
            let mut bus = PortBus::new();
            register_ide(&mut bus, &ide).unwrap();
            Self { bus, ide, line }
        }

        fn with(disk: impl Disk + 'static) -> Self {
            Self::new(Some(Box::new(disk)), None)
        }

        fn out(&mut self, port: u16, value: u32) {
            assert_eq!(self.bus.write(port, 1, value), PortAction::Continue);
        }

        fn status(&mut self) -> u32 {
            self.bus.read(COMMAND, 1)
        }

        fn alt_status(&mut self) -> u32 {
            self.bus.read(CTRL, 1)
        }

        fn error(&mut self) -> u32 {
            self.bus.read(FEATURES, 1)
        }

        /// An LBA28 command on the selected drive (`device` bit 4 picks it).
        fn lba28(&mut self, slave: bool, command: u8, lba: u32, count: u8) {
            let b = lba.to_le_bytes();
            let dev = 0xe0 | if slave { 0x10 } else { 0 } | u32::from(b[3] & 0x0f);
            self.out(DEVICE, dev);
            self.out(COUNT, count.into());
            self.out(LBA_LOW, b[0].into());
            self.out(LBA_MID, b[1].into());
            self.out(LBA_HIGH, b[2].into());
            self.out(COMMAND, command.into());
        }

        /// An LBA48 command: high-order bytes first, as the protocol wants.
        fn lba48(&mut self, command: u8, lba: u64, count: u16) {
            let b = lba.to_le_bytes();
            let c = count.to_le_bytes();
            self.out(DEVICE, 0x40);
            for (port, hi, lo) in [
                (COUNT, c[1], c[0]),
                (LBA_LOW, b[3], b[0]),
                (LBA_MID, b[4], b[1]),
                (LBA_HIGH, b[5], b[2]),
            ] {
                self.out(port, hi.into());
                self.out(port, lo.into());
            }
            self.out(COMMAND, command.into());
        }

        /// Reads `bytes` through the data port, `width` bytes at a time.
        fn read_data(&mut self, bytes: usize, width: u8) -> Vec<u8> {
            let mut v = Vec::new();
            for _ in 0..bytes / usize::from(width) {
                let x = self.bus.read(DATA, width);
                v.extend_from_slice(&x.to_le_bytes()[..usize::from(width)]);
            }
            v
        }

        fn write_data(&mut self, bytes: &[u8]) {
            for w in bytes.chunks_exact(2) {
                self.bus
                    .write(DATA, 2, u16::from_le_bytes([w[0], w[1]]).into());
            }
        }

        fn identify(&mut self, slave: bool) -> Vec<u16> {
            self.out(DEVICE, if slave { 0xb0 } else { 0xa0 });
            self.out(COMMAND, cmd::IDENTIFY.into());
            assert_eq!(self.status(), READY_DRQ);
            self.read_data(SECTOR_SIZE, 2)
                .chunks_exact(2)
                .map(|w| u16::from_le_bytes([w[0], w[1]]))
                .collect()
        }
    }

    fn expected(lba: u64, sectors: usize) -> Vec<u8> {
        (0..sectors * SECTOR_SIZE)
            .map(|i| pattern(lba + (i / SECTOR_SIZE) as u64, i % SECTOR_SIZE))
            .collect()
    }

    fn string(words: &[u16]) -> String {
        words
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .map(char::from)
            .collect::<String>()
            .trim_end()
            .to_string()
    }

    #[test]
    fn identify_describes_the_drive() {
        let mut rig = Rig::with(MemDisk::new(2048));
        let w = rig.identify(false);
        assert_eq!(rig.line.rising_edges(), 1);
        assert_eq!(rig.status(), READY, "DRQ ends with the block");
        assert_eq!(rig.bus.read(DATA, 2), 0, "no data outside a transfer");
        assert_eq!(string(&w[27..47]), MODEL);
        assert_eq!(string(&w[10..20]), "VMM00001");
        assert!(!string(&w[23..27]).is_empty());
        assert_eq!((w[1], w[3], w[6]), (2, 16, 63), "QEMU's geometry for 1 MiB");
        assert_eq!(u32::from(w[57]) | u32::from(w[58]) << 16, 2 * 16 * 63);
        assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, 2048);
        assert_eq!(&w[100..104], &[2048, 0, 0, 0]);
        assert_ne!(w[49] & 0x0200, 0, "LBA");
        assert_ne!(w[83] & 0x0400, 0, "48-bit addresses");
        assert_eq!(w[47] & 0xff, u16::from(MAX_MULTIPLE));
        assert_eq!(w[59], 0x0100 | u16::from(MAX_MULTIPLE));
        let sum = w
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .fold(0u8, u8::wrapping_add);
        assert_eq!((w[255] & 0xff, sum), (0xa5, 0), "integrity word");
    }

    #[test]
    fn a_big_drive_caps_its_lba28_capacity_and_geometry() {
        let sectors = 5u64 << 32;
        let mut rig = Rig::with(Huge {
            sectors,
            writes: Arc::default(),
        });
        let w = rig.identify(false);
        assert_eq!((w[60], w[61]), (0xffff, 0x0fff));
        assert_eq!(&w[100..104], &[0, 0, 5, 0]);
        assert_eq!((w[1], w[3], w[6]), (16_383, 16, 63));
    }

    #[test]
    fn read_sectors_block_by_block_with_an_interrupt_each() {
        let mut rig = Rig::with(patterned(64));
        rig.lba28(false, cmd::READ_SECTORS, 5, 2);
        assert_eq!(rig.line.rising_edges(), 1);
        assert_eq!(rig.alt_status(), READY_DRQ);
        assert!(rig.line.level.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(rig.status(), READY_DRQ, "reading status acknowledges");
        assert!(!rig.line.level.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(rig.read_data(SECTOR_SIZE, 2), expected(5, 1));
        assert_eq!(rig.line.rising_edges(), 2, "the second sector interrupts");
        assert_eq!(rig.status(), READY_DRQ);
        assert_eq!(
            rig.read_data(SECTOR_SIZE, 4),
            expected(6, 1),
            "32-bit reads"
        );
        assert_eq!(rig.status(), READY);
        assert_eq!(
            rig.line.rising_edges(),
            2,
            "no interrupt after the last block"
        );
        assert_eq!(
            rig.bus.read(LBA_LOW, 1),
            7,
            "the registers name the next sector"
        );
        assert_eq!(rig.ide.lock().unwrap().stats().sectors_read, 2);
    }

    #[test]
    fn a_count_of_zero_reads_256_sectors() {
        let mut rig = Rig::with(patterned(300));
        rig.lba28(false, cmd::READ_SECTORS, 1, 0);
        for lba in 1..=256 {
            assert_eq!(rig.status(), READY_DRQ, "sector {lba}");
            assert_eq!(rig.read_data(SECTOR_SIZE, 4), expected(lba, 1));
        }
        assert_eq!(rig.status(), READY);
    }

    #[test]
    fn lba48_uses_the_high_order_bytes() {
        let mut rig = Rig::with(Huge {
            sectors: 5 << 32,
            writes: Arc::default(),
        });
        let lba = (4 << 32) | 0x1234_5678;
        rig.lba48(cmd::READ_SECTORS_EXT, lba, 1);
        assert_eq!(rig.status(), READY_DRQ);
        assert_eq!(rig.read_data(SECTOR_SIZE, 2), expected(lba, 1));
        // The next address, low bytes then (with HOB) the high ones.
        let next = (lba + 1).to_le_bytes();
        assert_eq!(rig.bus.read(LBA_LOW, 1), u32::from(next[0]));
        assert_eq!(rig.bus.read(LBA_HIGH, 1), u32::from(next[2]));
        rig.out(CTRL, u32::from(control::HOB));
        assert_eq!(rig.bus.read(LBA_LOW, 1), u32::from(next[3]));
        assert_eq!(rig.bus.read(LBA_MID, 1), u32::from(next[4]));
        rig.out(CTRL, 0);
        // An LBA28 command sees only 28 bits of the same registers.
        rig.lba28(false, cmd::READ_SECTORS, 0x0fff_ffff, 1);
        assert_eq!(rig.read_data(SECTOR_SIZE, 2), expected(0x0fff_ffff, 1));
    }

    #[test]
    fn write_then_read_back() {
        let disk = Shared(Arc::new(Mutex::new(MemDisk::new(16))));
        let mut rig = Rig::with(disk.clone());
        rig.lba28(false, cmd::WRITE_SECTORS, 3, 2);
        assert_eq!(
            rig.line.rising_edges(),
            0,
            "the first block is asked for silently"
        );
        assert_eq!(rig.alt_status(), READY_DRQ);
        rig.write_data(&[0xa5; SECTOR_SIZE]);
        assert_eq!(rig.line.rising_edges(), 1);
        assert_eq!(rig.status(), READY_DRQ);
        for _ in 0..SECTOR_SIZE / 4 {
            rig.bus.write(DATA, 4, 0x0302_0100);
        }
        assert_eq!(rig.line.rising_edges(), 2, "the last block interrupts");
        assert_eq!(rig.status(), READY);
        let d = disk.0.lock().unwrap().data.clone();
        assert!(d[3 * SECTOR_SIZE..4 * SECTOR_SIZE]
            .iter()
            .all(|&b| b == 0xa5));
        assert_eq!(&d[4 * SECTOR_SIZE..4 * SECTOR_SIZE + 4], &[0, 1, 2, 3]);
        assert_eq!(d[5 * SECTOR_SIZE], 0, "nothing past the run");
        rig.lba28(false, cmd::READ_SECTORS, 4, 1);
        assert_eq!(&rig.read_data(4, 2)[..], &[0, 1, 2, 3]);
        rig.out(COMMAND, cmd::FLUSH_CACHE.into());
        assert_eq!(disk.0.lock().unwrap().flushes, 0, "no command while DRQ");
        rig.read_data(SECTOR_SIZE - 4, 2);
        rig.out(COMMAND, cmd::FLUSH_CACHE.into());
        assert_eq!(disk.0.lock().unwrap().flushes, 1);
    }

    #[test]
    fn multiple_mode_moves_blocks() {
        let huge = Huge {
            sectors: 1 << 20,
            writes: Arc::default(),
        };
        let writes = huge.writes.clone();
        let mut rig = Rig::with(huge);
        rig.out(COUNT, 4);
        rig.out(COMMAND, cmd::SET_MULTIPLE.into());
        assert_eq!(rig.status(), READY);
        assert_eq!(rig.identify(false)[59], 0x0104);
        rig.lba28(false, cmd::READ_MULTIPLE, 100, 6);
        assert_eq!(rig.read_data(4 * SECTOR_SIZE, 4), expected(100, 4));
        assert_eq!(rig.status(), READY_DRQ);
        assert_eq!(
            rig.read_data(2 * SECTOR_SIZE, 2),
            expected(104, 2),
            "a short last block"
        );
        assert_eq!(rig.status(), READY);
        let edges = rig.line.rising_edges();
        rig.lba48(cmd::WRITE_MULTIPLE_EXT, 1 << 19, 5);
        rig.write_data(&[0; 4 * SECTOR_SIZE]);
        assert_eq!(rig.line.rising_edges(), edges + 1);
        assert_eq!(rig.status(), READY_DRQ);
        rig.write_data(&[0; SECTOR_SIZE]);
        assert_eq!(rig.status(), READY);
        assert_eq!(
            *writes.lock().unwrap(),
            ((1 << 19)..(1 << 19) + 5).collect::<Vec<u64>>()
        );
    }

    #[test]
    fn set_multiple_takes_powers_of_two_up_to_the_maximum() {
        let mut rig = Rig::with(MemDisk::new(64));
        for (count, ok) in [(3, false), (32, false), (16, true), (1, true), (0, true)] {
            rig.out(COUNT, count);
            rig.out(COMMAND, cmd::SET_MULTIPLE.into());
            let want = if ok { READY } else { FAILED };
            assert_eq!(rig.status(), want, "count {count}");
        }
        assert_eq!(rig.error(), 0);
        // Multiple mode is off now: READ MULTIPLE aborts.
        rig.lba28(false, cmd::READ_MULTIPLE, 0, 1);
        assert_eq!(
            (rig.status(), rig.error()),
            (FAILED, u32::from(error::ABRT))
        );
    }

    #[test]
    fn sectors_outside_the_medium_give_idnf() {
        let mut rig = Rig::with(patterned(8));
        rig.lba28(false, cmd::READ_SECTORS, 8, 1);
        assert_eq!(rig.line.rising_edges(), 1);
        assert_eq!(
            (rig.status(), rig.error()),
            (FAILED, u32::from(error::IDNF))
        );
        assert_eq!(rig.bus.read(DATA, 2), 0);
        // A run that starts inside: the sectors that exist, then the error.
        rig.lba28(false, cmd::READ_SECTORS, 7, 2);
        assert_eq!(rig.read_data(SECTOR_SIZE, 2), expected(7, 1));
        assert_eq!(
            (rig.status(), rig.error()),
            (FAILED, u32::from(error::IDNF))
        );
        assert_eq!(rig.bus.read(LBA_LOW, 1), 8, "the first missing sector");
        rig.lba28(false, cmd::READ_VERIFY, 0, 9);
        assert_eq!(rig.error(), u32::from(error::IDNF));
        rig.lba28(false, cmd::READ_VERIFY, 0, 8);
        assert_eq!(rig.status(), READY);
        // A write past the end takes the data, then fails.
        rig.lba28(false, cmd::WRITE_SECTORS, 100, 1);
        rig.write_data(&[0; SECTOR_SIZE]);
        assert_eq!(
            (rig.status(), rig.error()),
            (FAILED, u32::from(error::IDNF))
        );
        assert_eq!(rig.ide.lock().unwrap().stats().errors, 4);
    }

    #[test]
    fn chs_addresses_follow_the_translation() {
        let mut rig = Rig::with(patterned(4096));
        // Cylinder 1, head 2, sector 3 of 16 heads x 63 sectors.
        let chs = |rig: &mut Rig, c: u16, h: u8, s: u8| {
            rig.out(DEVICE, 0xa0 | u32::from(h));
            rig.out(COUNT, 1);
            rig.out(LBA_LOW, s.into());
            rig.out(LBA_MID, c.to_le_bytes()[0].into());
            rig.out(LBA_HIGH, c.to_le_bytes()[1].into());
            rig.out(COMMAND, cmd::READ_SECTORS.into());
        };
        chs(&mut rig, 1, 2, 3);
        assert_eq!(
            rig.read_data(SECTOR_SIZE, 2),
            expected((16 + 2) * 63 + 2, 1)
        );
        assert_eq!(rig.bus.read(LBA_LOW, 1), 4, "the next sector, in CHS");
        chs(&mut rig, 0, 0, 0);
        assert_eq!(rig.status(), FAILED, "sector numbers start at 1");
        // INITIALIZE DEVICE PARAMETERS: 4 heads, 32 sectors per track.
        rig.out(DEVICE, 0xa3);
        rig.out(COUNT, 32);
        rig.out(COMMAND, cmd::INITIALIZE_PARAMETERS.into());
        assert_eq!(rig.status(), READY);
        let w = rig.identify(false);
        assert_eq!((w[54], w[55], w[56]), (32, 4, 32));
        assert_eq!((w[1], w[3], w[6]), (4, 16, 63), "the default stays");
        chs(&mut rig, 1, 2, 3);
        assert_eq!(rig.read_data(SECTOR_SIZE, 2), expected((4 + 2) * 32 + 2, 1));
    }

    #[test]
    fn nien_keeps_the_line_low() {
        let mut rig = Rig::with(patterned(8));
        rig.out(CTRL, u32::from(control::NIEN));
        rig.lba28(false, cmd::READ_SECTORS, 0, 1);
        assert_eq!(rig.line.rising_edges(), 0);
        assert_eq!(rig.read_data(SECTOR_SIZE, 2), expected(0, 1));
        // A pending interrupt shows once nIEN is cleared, unless acknowledged first.
        rig.out(CTRL, 0);
        assert_eq!(rig.line.rising_edges(), 1);
        rig.out(CTRL, u32::from(control::NIEN));
        rig.out(COMMAND, cmd::IDLE_IMMEDIATE.into());
        rig.status();
        rig.out(CTRL, 0);
        assert_eq!(rig.line.rising_edges(), 1);
        rig.out(COMMAND, cmd::IDLE_IMMEDIATE.into());
        assert_eq!(rig.line.rising_edges(), 2);
    }

    #[test]
    fn software_reset_restores_the_signature() {
        let mut rig = Rig::new(Some(Box::new(patterned(8))), Some(Box::new(patterned(8))));
        rig.lba28(true, cmd::READ_SECTORS, 0, 4);
        assert_eq!(rig.status(), READY_DRQ);
        let edges = rig.line.rising_edges();
        rig.out(CTRL, u32::from(control::SRST | control::NIEN));
        assert_ne!(rig.alt_status() & u32::from(status::BSY), 0);
        rig.out(COMMAND, cmd::IDENTIFY.into());
        assert_ne!(
            rig.alt_status() & u32::from(status::BSY),
            0,
            "no commands in reset"
        );
        rig.out(CTRL, u32::from(control::NIEN));
        assert_eq!(rig.bus.read(DEVICE, 1), 0xa0, "the master is selected");
        assert_eq!(rig.status(), READY);
        assert_eq!(rig.error(), u32::from(error::DIAGNOSTIC_PASSED));
        let sig: Vec<u32> = [COUNT, LBA_LOW, LBA_MID, LBA_HIGH]
            .iter()
            .map(|&p| rig.bus.read(p, 1))
            .collect();
        assert_eq!(sig, [1, 1, 0, 0]);
        assert_eq!(rig.bus.read(DATA, 2), 0, "the transfer is gone");
        assert_eq!(rig.line.rising_edges(), edges);
    }

    #[test]
    fn an_absent_slave_reads_as_on_qemu() {
        let mut rig = Rig::with(patterned(8));
        rig.out(DEVICE, 0xb0);
        assert_eq!(rig.status(), 0);
        assert_eq!(rig.alt_status(), 0);
        rig.out(COMMAND, cmd::IDENTIFY.into());
        assert_eq!(
            (rig.status(), rig.error()),
            (0, 0),
            "the command goes nowhere"
        );
        assert_eq!(rig.line.rising_edges(), 0);
        rig.out(COUNT, 0x55);
        assert_eq!(rig.bus.read(COUNT, 1), 0x55, "the registers still latch");
        assert_eq!(rig.bus.read(DEVICE, 1), 0xb0);
        rig.out(DEVICE, 0xa0);
        assert_eq!(rig.status(), READY);
        // No drive at all: the channel reads 0.
        let mut none = Rig::new(None, None);
        for port in FEATURES..=COMMAND {
            assert_eq!(none.bus.read(port, 1), 0, "port {port:#x}");
        }
        none.out(COMMAND, cmd::IDENTIFY.into());
        assert_eq!(none.bus.read(DATA, 2), 0);
    }

    #[test]
    fn the_slave_answers_for_itself() {
        let mut rig = Rig::new(
            Some(Box::new(MemDisk::new(8))),
            Some(Box::new(patterned(4096))),
        );
        let w = rig.identify(true);
        assert_eq!(&w[100..102], &[4096, 0]);
        assert_eq!(string(&w[10..20]), "VMM00002");
        rig.lba28(true, cmd::READ_SECTORS, 4000, 1);
        assert_eq!(rig.read_data(SECTOR_SIZE, 4), expected(4000, 1));
        rig.out(DEVICE, 0xa0);
        assert_eq!(rig.bus.read(DATA, 2), 0, "the master has no transfer");
    }

    #[test]
    fn a_read_only_disk_refuses_writes() {
        let mut d = patterned(8);
        d.read_only = true;
        let disk = Shared(Arc::new(Mutex::new(d)));
        let mut rig = Rig::with(disk.clone());
        rig.lba28(false, cmd::WRITE_SECTORS, 0, 1);
        assert_eq!(
            (rig.status(), rig.error()),
            (FAILED, u32::from(error::ABRT))
        );
        rig.write_data(&[0; SECTOR_SIZE]);
        assert_eq!(disk.0.lock().unwrap().data, patterned(8).data);
    }

    #[test]
    fn unknown_commands_abort_and_start_up_commands_succeed() {
        let mut rig = Rig::with(MemDisk::new(8));
        for c in [0x00, 0x08, 0xa0, 0xa1, 0xc8, 0xca, 0xff] {
            rig.out(COMMAND, c);
            assert_eq!(
                (rig.status(), rig.error()),
                (FAILED, u32::from(error::ABRT)),
                "{c:#x}"
            );
        }
        for c in [
            cmd::RECALIBRATE,
            0x1f,
            cmd::STANDBY_IMMEDIATE,
            cmd::IDLE,
            cmd::FLUSH_CACHE_EXT,
            cmd::SEEK,
        ] {
            rig.out(COMMAND, c.into());
            assert_eq!((rig.status(), rig.error()), (READY, 0), "{c:#x}");
        }
        rig.out(COMMAND, cmd::CHECK_POWER_MODE.into());
        assert_eq!(rig.bus.read(COUNT, 1), 0xff);
        for (feature, count, ok) in [
            (0x02, 0, true),
            (0x03, 0x0c, true),
            (0x03, 0x45, false),
            (0x77, 0, false),
        ] {
            rig.out(FEATURES, feature);
            rig.out(COUNT, count);
            rig.out(COMMAND, cmd::SET_FEATURES.into());
            assert_eq!(
                rig.status(),
                if ok { READY } else { FAILED },
                "{feature:#x}/{count:#x}"
            );
        }
        rig.out(COMMAND, cmd::EXECUTE_DIAGNOSTIC.into());
        assert_eq!((rig.status(), rig.error()), (READY, 1));
    }

    #[test]
    fn registers_are_the_drives_while_it_moves_data() {
        let mut rig = Rig::with(patterned(8));
        rig.lba28(false, cmd::READ_SECTORS, 2, 1);
        rig.out(LBA_LOW, 0x77);
        rig.out(DEVICE, 0xb0);
        assert_eq!(rig.bus.read(LBA_LOW, 1), 3, "ignored while DRQ");
        rig.out(COMMAND, cmd::IDENTIFY.into());
        assert_eq!(rig.read_data(SECTOR_SIZE, 2), expected(2, 1), "ignored too");
        assert_eq!(rig.bus.read(DATA, 1), 0xff, "a byte read moves nothing");
    }

    proptest::proptest! {
        /// Whatever the guest does on the channel's ports, the controller answers without
        /// panicking, each access returns at once, and DRQ always has data behind it.
        #[test]
        fn arbitrary_port_traffic_is_survived(
            ops in proptest::collection::vec(
                (
                    proptest::sample::select(vec![0u16, 1, 2, 3, 4, 5, 6, 7, 8]),
                    proptest::sample::select(vec![1u8, 2, 4]),
                    proptest::prelude::any::<u32>(),
                    proptest::prelude::any::<bool>(),
                ),
                1..400,
            ),
            commands in proptest::collection::vec(
                proptest::sample::select(vec![
                    0x20u32, 0x24, 0x29, 0x30, 0x34, 0x39, 0x40, 0x91, 0xc4, 0xc5, 0xc6, 0xec,
                    0xef, 0xe7, 0x90, 0x10, 0x12,
                ]),
                0..50,
            ),
        ) {
            let mut rig = Rig::new(Some(Box::new(patterned(40))), Some(Box::new(MemDisk::new(3))));
            let mut commands = commands.into_iter();
            for (reg, size, value, is_write) in ops {
                let port = if reg == 8 { CTRL } else { IDE_PRIMARY_BASE + reg };
                // Mostly real commands, so data phases are reached.
                let value = match (reg, commands.next()) {
                    (7, Some(c)) => c,
                    _ => value,
                };
                if is_write {
                    rig.bus.write(port, size, value);
                } else {
                    let v = rig.bus.read(port, size);
                    if size < 4 {
                        proptest::prop_assert!(v < 1 << (8 * u32::from(size)));
                    }
                }
                let ide = rig.ide.lock().unwrap();
                for slot in &ide.slots {
                    let drq = slot.regs.status & status::DRQ != 0;
                    let moving = !matches!(slot.transfer, Transfer::Idle);
                    proptest::prop_assert!(drq == moving || slot.regs.status & status::BSY != 0);
                }
            }
        }
    }
}
