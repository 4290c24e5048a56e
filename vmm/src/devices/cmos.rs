//! The MC146818 RTC and CMOS RAM at ports 0x70 (index) and 0x71 (data).
//!
//! The time registers are computed from a [`WallClock`] on every read, in BCD or binary
//! and 12- or 24-hour form as status register B asks. A guest that sets the clock moves
//! an offset; the host clock is never touched. Other bytes are plain CMOS RAM.

use super::bus::{PortAction, PortDevice};
use super::clock::WallClock;

/// Index port; data is at the next port.
pub const CMOS_BASE: u16 = 0x70;
/// Index and data ports.
pub const CMOS_PORT_LEN: u16 = 2;

const CMOS_SIZE: usize = 128;
/// Bit 7 of the index is the NMI mask on the PC; it does not select a register.
const INDEX_MASK: u8 = 0x7f;
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Register A: 32.768 kHz time base, 1024 Hz periodic rate; UIP never set.
const REG_A_DEFAULT: u8 = 0x26;
/// Register A's update-in-progress bit is read-only.
const REG_A_UIP: u8 = 0x80;
/// Register B: 24-hour mode, BCD.
const REG_B_DEFAULT: u8 = 0x02;
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;
/// Register D: valid RAM and time (battery good).
const REG_D_VRT: u8 = 0x80;
/// 12-hour mode: PM flag in the hours register.
const HOUR_PM: u8 = 0x80;
const SECS_PER_DAY: i64 = 86_400;
/// Memory size bytes (low byte first), as the PC BIOS and QEMU lay them out.
const REG_BASE_MEMORY: u8 = 0x15;
const REG_EXT_MEMORY: u8 = 0x17;
const REG_EXT_MEMORY_POST: u8 = 0x30;
const REG_HIGH_MEMORY: u8 = 0x34;
const BASE_MEMORY_KIB: u64 = 640;
const KIB: u64 = 1024;
const ONE_MIB: u64 = 1 << 20;
const SIXTEEN_MIB: u64 = 16 << 20;
const CHUNK_64K: u64 = 64 << 10;

/// A calendar date and time (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 = Sunday, as the MC146818 counts.
    weekday: u8,
}

/// A calendar or clock field (day, hour, two year digits...): the arithmetic that makes
/// it keeps it below 100, so it always fits a byte.
fn field(v: i64) -> u8 {
    u8::try_from(v).unwrap_or(0)
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = field(doy - (153 * mp + 2) / 5 + 1);
    let month = field(if mp < 10 { mp + 3 } else { mp - 9 });
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(SECS_PER_DAY);
        let rem = secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: field(rem / 3600),
            minute: field(rem / 60 % 60),
            second: field(rem % 60),
            // 1970-01-01 was a Thursday (5 when Sunday is 1).
            weekday: field((days + 4).rem_euclid(7) + 1),
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4).saturating_mul(10).saturating_add(v & 0xf)
}

/// The RTC/CMOS device.
#[derive(Debug, Clone)]
pub struct Cmos<W: WallClock> {
    clock: W,
    index: u8,
    ram: [u8; CMOS_SIZE],
    /// Seconds the guest moved its clock away from the host's.
    offset_secs: i64,
}

impl<W: WallClock> Cmos<W> {
    /// CMOS RAM zeroed except for the RTC status registers, time from `clock`.
    pub fn new(clock: W) -> Self {
        let mut cmos = Self {
            clock,
            index: 0,
            ram: [0; CMOS_SIZE],
            offset_secs: 0,
        };
        for (index, value) in [
            (REG_A, REG_A_DEFAULT),
            (REG_B, REG_B_DEFAULT),
            (REG_D, REG_D_VRT),
        ] {
            cmos.set_ram(index, value);
        }
        cmos
    }

    /// CMOS RAM byte `index` (every register index below is inside the RAM).
    fn ram_byte(&self, index: u8) -> u8 {
        self.ram.get(usize::from(index)).copied().unwrap_or(0)
    }

    /// Sets a CMOS RAM byte (for example the memory size bytes firmware would fill in).
    /// Indexes past the 128-byte RAM are ignored.
    pub fn set_ram(&mut self, index: u8, value: u8) {
        if let Some(b) = self.ram.get_mut(usize::from(index)) {
            *b = value;
        }
    }

    /// Records the guest's RAM size where PC firmware leaves it and some kernels look:
    /// base memory (0x15–0x16, KiB), extended memory above 1 MiB (0x17–0x18 and
    /// 0x30–0x31, KiB, at most 65535) and memory above 16 MiB (0x34–0x35, 64 KiB units).
    pub fn set_memory_size(&mut self, ram_bytes: u64) {
        let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX).to_le_bytes();
        let base_kib = (ram_bytes / KIB).min(BASE_MEMORY_KIB);
        let ext_kib = ram_bytes.saturating_sub(ONE_MIB) / KIB;
        let above_16m = ram_bytes.saturating_sub(SIXTEEN_MIB) / CHUNK_64K;
        for (index, value) in [
            (REG_BASE_MEMORY, clamp(base_kib)),
            (REG_EXT_MEMORY, clamp(ext_kib)),
            (REG_EXT_MEMORY_POST, clamp(ext_kib)),
            (REG_HIGH_MEMORY, clamp(above_16m)),
        ] {
            self.set_ram(index, value[0]);
            self.set_ram(index + 1, value[1]);
        }
    }

    fn now(&self) -> DateTime {
        DateTime::from_unix(self.clock.unix_seconds().saturating_add(self.offset_secs))
    }

    fn encode(&self, v: u8) -> u8 {
        if self.ram_byte(REG_B) & REG_B_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.ram_byte(REG_B) & REG_B_BINARY != 0 {
            v
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.ram_byte(REG_B) & REG_B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | if hour >= 12 { HOUR_PM } else { 0 }
    }

    fn decode_hour(&self, raw: u8) -> u8 {
        if self.ram_byte(REG_B) & REG_B_24H != 0 {
            return self.decode(raw);
        }
        let h12 = self.decode(raw & !HOUR_PM) % 12;
        if raw & HOUR_PM != 0 {
            h12 + 12
        } else {
            h12
        }
    }

    fn read_register(&mut self, index: u8) -> u8 {
        let t = self.now();
        match index {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hour(t.hour),
            REG_WEEKDAY => self.encode(t.weekday),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(field(t.year.rem_euclid(100))),
            REG_CENTURY => self.encode(field(t.year.div_euclid(100).clamp(0, 99))),
            // Register C (interrupt flags) reads and clears; no RTC interrupts are raised.
            REG_C => self
                .ram
                .get_mut(usize::from(REG_C))
                .map_or(0, std::mem::take),
            _ => self.ram.get(usize::from(index)).copied().unwrap_or(0xff),
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        let mut t = self.now();
        let v = self.decode(value);
        match index {
            REG_SECONDS => t.second = v.min(59),
            REG_MINUTES => t.minute = v.min(59),
            REG_HOURS => t.hour = self.decode_hour(value).min(23),
            REG_DAY => t.day = v.clamp(1, 31),
            REG_MONTH => t.month = v.clamp(1, 12),
            REG_YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(v.min(99)),
            REG_CENTURY => t.year = i64::from(v.min(99)) * 100 + t.year.rem_euclid(100),
            // The weekday is derived from the date.
            REG_WEEKDAY => return,
            REG_A => {
                if let Some(a) = self.ram.get_mut(usize::from(REG_A)) {
                    *a = (*a & REG_A_UIP) | (value & !REG_A_UIP);
                }
                return;
            }
            // C and D are read-only.
            REG_C | REG_D => return,
            _ => {
                if let Some(b) = self.ram.get_mut(usize::from(index)) {
                    *b = value;
                }
                return;
            }
        }
        self.offset_secs = t.to_unix().saturating_sub(self.clock.unix_seconds());
    }
}

impl<W: WallClock> PortDevice for Cmos<W> {
    fn read(&mut self, offset: u16, _size: u8) -> u32 {
        if offset == 0 {
            // The index port is write-only on the PC.
            return 0xff;
        }
        u32::from(self.read_register(self.index))
    }

    fn write(&mut self, offset: u16, _size: u8, value: u32) -> PortAction {
        let value = (value & 0xff) as u8;
        if offset == 0 {
            self.index = value & INDEX_MASK;
        } else {
            self.write_register(self.index, value);
        }
        PortAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::clock::fake::FakeWallClock;
    use crate::devices::PortBus;

    /// 2024-02-29 13:45:07 UTC, a Thursday.
    const LEAP_DAY: i64 = 1_709_214_307;

    fn rig() -> (PortBus, FakeWallClock) {
        let clock = FakeWallClock::default();
        clock.0.store(LEAP_DAY, Ordering::SeqCst);
        let mut bus = PortBus::new();
        bus.insert(
            CMOS_BASE,
            CMOS_PORT_LEN,
            Arc::new(Mutex::new(Cmos::new(clock.clone()))),
        )
        .unwrap();
        (bus, clock)
    }

    fn reg(bus: &mut PortBus, index: u8) -> u32 {
        // Linux sets the NMI-disable bit in the index; it must not matter.
        bus.write(CMOS_BASE, 1, u32::from(index | 0x80));
        bus.read(CMOS_BASE + 1, 1)
    }

    #[test]
    fn time_in_bcd_24h() {
        let (mut bus, _) = rig();
        let got: Vec<u32> = [0, 2, 4, 6, 7, 8, 9, 0x32]
            .iter()
            .map(|&i| reg(&mut bus, i))
            .collect();
        assert_eq!(got, vec![0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
        assert_eq!(reg(&mut bus, REG_A) & 0x80, 0);
        assert_eq!(reg(&mut bus, REG_D), 0x80);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (mut bus, _) = rig();
        bus.write(CMOS_BASE, 1, u32::from(REG_B));
        bus.write(CMOS_BASE + 1, 1, u32::from(REG_B_BINARY));
        assert_eq!(reg(&mut bus, REG_HOURS), 0x81); // 1 PM
        assert_eq!(reg(&mut bus, REG_MINUTES), 45);
    }

    #[test]
    fn guest_can_set_the_clock_and_it_keeps_running() {
        let (mut bus, clock) = rig();
        bus.write(CMOS_BASE, 1, u32::from(REG_YEAR));
        bus.write(CMOS_BASE + 1, 1, 0x99);
        bus.write(CMOS_BASE, 1, u32::from(REG_CENTURY));
        bus.write(CMOS_BASE + 1, 1, 0x19);
        clock.0.fetch_add(10, Ordering::SeqCst);
        assert_eq!(reg(&mut bus, REG_YEAR), 0x99);
        assert_eq!(reg(&mut bus, REG_CENTURY), 0x19);
        assert_eq!(reg(&mut bus, REG_SECONDS), 0x17);
        // 1999 had no Feb 29: the date rolls to March 1.
        assert_eq!(reg(&mut bus, REG_MONTH), 0x03);
        assert_eq!(reg(&mut bus, REG_DAY), 0x01);
    }

    #[test]
    fn plain_ram_round_trips() {
        let (mut bus, _) = rig();
        bus.write(CMOS_BASE, 1, 0x40);
        bus.write(CMOS_BASE + 1, 1, 0xab);
        assert_eq!(reg(&mut bus, 0x40), 0xab);
        assert_eq!(reg(&mut bus, 0x7f), 0);
    }

    #[test]
    fn memory_size_bytes() {
        let mut cmos = Cmos::new(FakeWallClock::default());
        cmos.set_memory_size(32 << 20);
        let word = |c: &mut Cmos<FakeWallClock>, i: u8| {
            u16::from(c.read_register(i)) | u16::from(c.read_register(i + 1)) << 8
        };
        assert_eq!(word(&mut cmos, 0x15), 640);
        assert_eq!(word(&mut cmos, 0x17), 31 * 1024);
        assert_eq!(word(&mut cmos, 0x30), 31 * 1024);
        assert_eq!(word(&mut cmos, 0x34), 256); // 16 MiB in 64 KiB units
        cmos.set_memory_size(1 << 30);
        assert_eq!(word(&mut cmos, 0x17), 0xffff);
    }

    #[test]
    fn calendar_conversion_round_trips() {
        for secs in [0, LEAP_DAY, -86_400, 4_102_444_800, 951_782_400] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
        }
        assert_eq!(DateTime::from_unix(0).weekday, 5);
    }
}
