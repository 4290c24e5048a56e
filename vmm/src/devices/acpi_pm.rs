//! The ACPI fixed-hardware PM block of the PIIX4 at [`pc::PM_BASE`]: the PM1a event block
//! (PM1_STS, PM1_EN), the PM1a control block (SCI_EN, SLP_TYP, SLP_EN) and the PM timer
//! (ACPI 6.5 §4.8.3).
//!
//! The PM timer counts at [`pc::PM_TIMER_HZ`] from the [`Clock`], 24 bits wide, as QEMU's
//! FADT describes it (TMR_VAL_EXT clear); TMR_STS reports bit 23 toggling. Writing SLP_EN
//! with SLP_TYP = [`pc::S5_SLP_TYP`] powers the machine off; other sleep states are not
//! entered (the write is ignored, as a platform without them would). No SCI is raised:
//! the block has no event source a guest enables an interrupt for (no power button, no
//! sleep), and the timer's overflow status is there to be polled.
//!
//! The block starts in ACPI mode (SCI_EN set): there is no SMM firmware to switch it, so
//! the FADT must say so with SMI_CMD = 0.

use super::bus::{PortAction, PortDevice};
use super::clock::Clock;
use super::pc;

/// Offsets in the block.
const PM1_STS: u16 = pc::PM1A_EVT_BLK - pc::PM_BASE;
const PM1_EN: u16 = PM1_STS + 2;
const PM1_CNT: u16 = pc::PM1A_CNT_BLK - pc::PM_BASE;
const PM_TMR: u16 = pc::PM_TMR_BLK - pc::PM_BASE;

// PM1_STS / PM1_EN bits.
const TMR_STS: u16 = 1 << 0;
/// Status bits with an event behind them; the others read 0.
const STS_DEFINED: u16 = TMR_STS | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 15;
/// TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN.
const EN_DEFINED: u16 = 1 << 0 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 10;

// PM1_CNT bits.
const SCI_EN: u16 = 1 << 0;
/// SCI_EN, BM_RLD: read/write. GBL_RLS (bit 2) is write-only and SLP_EN self-clearing.
const CNT_STORED: u16 = SCI_EN | 1 << 1 | SLP_TYP_MASK;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 7 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;

/// The timer's significant bits, and the bit whose toggling sets TMR_STS.
const TMR_MASK: u32 = 0x00ff_ffff;
const TMR_STS_BIT: u32 = 23;

const NS_PER_SEC: u128 = 1_000_000_000;

/// The PM block. Plain state, plus the clock the timer counts.
#[derive(Debug)]
pub struct AcpiPm<C: Clock> {
    clock: C,
    /// PM1_STS bits other than TMR_STS (nothing sets them: no such events).
    status: u16,
    enable: u16,
    control: u16,
    /// How many times timer bit 23 had toggled when TMR_STS was last cleared.
    tmr_toggles_cleared: u64,
}

impl<C: Clock> AcpiPm<C> {
    /// The block in ACPI mode, its timer counting from the clock's origin.
    pub fn new(clock: C) -> Self {
        Self {
            clock,
            status: 0,
            enable: 0,
            control: SCI_EN,
            tmr_toggles_cleared: 0,
        }
    }

    /// PM timer ticks since the clock's origin (all bits: the register shows the low 24).
    fn ticks(&self) -> u64 {
        let t = u128::from(self.clock.now_ns()) * u128::from(pc::PM_TIMER_HZ) / NS_PER_SEC;
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// The PM timer register.
    pub fn timer(&self) -> u32 {
        // The mask keeps 24 bits: the truncation is the register's width.
        u32::try_from(self.ticks() & u64::from(TMR_MASK)).unwrap_or(0)
    }

    fn pm1_status(&self) -> u16 {
        let toggles = self.ticks() >> TMR_STS_BIT;
        let tmr = if toggles != self.tmr_toggles_cleared {
            TMR_STS
        } else {
            0
        };
        self.status | tmr
    }

    /// The 16-bit register at `offset` holding byte `offset`, and the byte's shift in it.
    fn register(&self, offset: u16) -> Option<(u16, u32)> {
        let (reg, value) = match offset & !1 {
            PM1_STS => (PM1_STS, self.pm1_status()),
            PM1_EN => (PM1_EN, self.enable),
            PM1_CNT => (PM1_CNT, self.control),
            _ => return None,
        };
        Some((value, 8 * u32::from(offset - reg)))
    }

    /// Byte `offset` of the block, the timer's bytes from `timer` (one sample per access,
    /// so a dword read is never torn across a carry).
    fn read_byte(&self, offset: u16, timer: u32) -> u8 {
        if (PM_TMR..PM_TMR + 4).contains(&offset) {
            let byte = timer
                .to_le_bytes()
                .get(usize::from(offset - PM_TMR))
                .copied();
            return byte.unwrap_or(0xff);
        }
        match self.register(offset) {
            Some((value, shift)) => (value >> shift).to_le_bytes()[0],
            // PM1_CNT's second word and the gap before the timer: nothing decodes them.
            None => 0xff,
        }
    }

    fn write_byte(&mut self, offset: u16, byte: u8) -> PortAction {
        let shift = 8 * u32::from(offset & 1);
        let bits = u16::from(byte) << shift;
        let lane = 0xffu16 << shift;
        match offset & !1 {
            PM1_STS => {
                if bits & TMR_STS != 0 {
                    self.tmr_toggles_cleared = self.ticks() >> TMR_STS_BIT;
                }
                self.status &= !(bits & STS_DEFINED);
            }
            PM1_EN => self.enable = (self.enable & !lane) | (bits & lane & EN_DEFINED),
            PM1_CNT => {
                self.control = (self.control & !lane) | (bits & lane & CNT_STORED);
                if bits & SLP_EN != 0 && (bits & SLP_TYP_MASK) >> SLP_TYP_SHIFT == pc::S5_SLP_TYP {
                    return PortAction::PowerOff;
                }
            }
            // The timer is read-only.
            _ => {}
        }
        PortAction::Continue
    }
}

impl<C: Clock> PortDevice for AcpiPm<C> {
    fn read(&mut self, offset: u16, size: u8) -> u32 {
        let timer = self.timer();
        (0..u16::from(size)).fold(0, |v, i| {
            v | u32::from(self.read_byte(offset + i, timer)) << (8 * u32::from(i))
        })
    }

    fn write(&mut self, offset: u16, size: u8, value: u32) -> PortAction {
        let mut action = PortAction::Continue;
        for (i, byte) in (0..u16::from(size)).zip(value.to_le_bytes()) {
            if let PortAction::PowerOff = self.write_byte(offset + i, byte) {
                action = PortAction::PowerOff;
            }
        }
        action
    }

    fn max_access_size(&self) -> u8 {
        4
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::clock::fake::FakeClock;
    use crate::devices::PortBus;

    fn bus() -> (PortBus, FakeClock) {
        let clock = FakeClock::default();
        let mut bus = PortBus::new();
        bus.insert(
            pc::PM_BASE,
            pc::PM_BLOCK_LEN,
            Arc::new(Mutex::new(AcpiPm::new(clock.clone()))),
        )
        .unwrap();
        (bus, clock)
    }

    #[test]
    fn timer_counts_at_3_579545_mhz_in_24_bits() {
        let (mut bus, clock) = bus();
        assert_eq!(bus.read(pc::PM_TMR_BLK, 4), 0);
        clock.set(1_000_000_000);
        assert_eq!(bus.read(pc::PM_TMR_BLK, 4), 3_579_545);
        clock.set(10_000_000);
        assert_eq!(bus.read(pc::PM_TMR_BLK, 4), 35_795);
        // 2^24 ticks is 4.687 s: the register wraps, the top byte stays 0.
        clock.set(5_000_000_000);
        let v = bus.read(pc::PM_TMR_BLK, 4);
        assert_eq!(v, (5 * 3_579_545) & 0xff_ffff);
        assert_eq!(bus.read(pc::PM_TMR_BLK + 3, 1), 0);
        assert_eq!(bus.read(pc::PM_TMR_BLK, 2), v & 0xffff);
    }

    /// A clock that moves on by one PM timer tick every time it is read.
    struct Ticking(std::sync::atomic::AtomicU64);

    impl Clock for Ticking {
        fn now_ns(&self) -> u64 {
            self.0.fetch_add(280, std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn a_dword_read_is_one_sample() {
        // 255 ticks: the next one carries into the second byte.
        let mut pm = AcpiPm::new(Ticking(std::sync::atomic::AtomicU64::new(71_400)));
        let v = pm.read(PM_TMR, 4);
        assert!(v == 0xff || v == 0x100, "{v:#x}");
    }

    #[test]
    fn tmr_sts_sets_when_bit23_toggles_and_clears_by_writing_one() {
        let (mut bus, clock) = bus();
        assert_eq!(bus.read(pc::PM1A_EVT_BLK, 2), 0);
        // 2^23 ticks: 2.343 s.
        clock.set(2_344_000_000);
        assert_eq!(bus.read(pc::PM1A_EVT_BLK, 2), 1);
        bus.write(pc::PM1A_EVT_BLK, 2, 0);
        assert_eq!(bus.read(pc::PM1A_EVT_BLK, 2), 1, "writing 0 leaves it");
        bus.write(pc::PM1A_EVT_BLK, 2, 1);
        assert_eq!(bus.read(pc::PM1A_EVT_BLK, 2), 0);
        clock.advance(2_344_000_000);
        assert_eq!(bus.read(pc::PM1A_EVT_BLK, 1), 1);
    }

    #[test]
    fn enable_and_control_keep_their_defined_bits() {
        let (mut bus, _) = bus();
        bus.write(pc::PM1A_EVT_BLK + 2, 2, 0xffff);
        assert_eq!(bus.read(pc::PM1A_EVT_BLK + 2, 2), 0x0721);
        assert_eq!(bus.read(pc::PM1A_EVT_BLK, 4) >> 16, 0x0721);
        assert_eq!(bus.read(pc::PM1A_CNT_BLK, 2), 1, "ACPI mode: SCI_EN");
        // S1 with SLP_EN: not entered; SLP_EN reads 0, SLP_TYP keeps.
        assert_eq!(bus.write(pc::PM1A_CNT_BLK, 2, 0x2401), PortAction::Continue);
        assert_eq!(bus.read(pc::PM1A_CNT_BLK, 2), 0x0401);
        // PM1_CNT's unused bytes float.
        assert_eq!(bus.read(pc::PM1A_CNT_BLK + 2, 2), 0xffff);
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut bus, _) = bus();
        let s5 = u32::from(pc::S5_SLP_TYP) << 10;
        // SLP_TYP first, then SLP_EN, as ACPICA writes them.
        assert_eq!(bus.write(pc::PM1A_CNT_BLK, 2, s5 | 1), PortAction::Continue);
        assert_eq!(
            bus.write(pc::PM1A_CNT_BLK, 2, s5 | 1 << 13 | 1),
            PortAction::PowerOff
        );
        // The high byte alone carries both fields.
        assert_eq!(
            bus.write(pc::PM1A_CNT_BLK + 1, 1, (s5 | 1 << 13) >> 8),
            PortAction::PowerOff
        );
        // A dword write at the event block reaching PM1_CNT does not: PM1_CNT is at +4.
        assert_eq!(
            bus.write(pc::PM1A_EVT_BLK, 4, 0xffff_ffff),
            PortAction::Continue
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_traffic_never_panics(
            ops in proptest::collection::vec((0u16..pc::PM_BLOCK_LEN, proptest::prelude::any::<bool>(), proptest::prelude::any::<u32>(), proptest::sample::select(vec![1u8, 2, 4]), 0u64..10_000_000_000), 1..200)
        ) {
            let (mut bus, clock) = bus();
            let mut last = 0;
            for (off, is_write, v, size, dt) in ops {
                clock.advance(dt);
                let port = pc::PM_BASE + off;
                if is_write {
                    let _ = bus.write(port, size, v);
                } else {
                    let _ = bus.read(port, size);
                }
                let t = bus.read(pc::PM_TMR_BLK, 4);
                proptest::prop_assert!(t <= 0xff_ffff);
                let elapsed = t.wrapping_sub(last) & 0xff_ffff;
                let expected = u32::try_from(u128::from(dt) * 3_579_545 / 1_000_000_000 % (1 << 24)).unwrap();
                proptest::prop_assert!(elapsed.abs_diff(expected) <= 1 || elapsed.abs_diff(expected) >= (1 << 24) - 1);
                last = t;
            }
        }
    }
}
