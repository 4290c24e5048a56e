//! The 8254 programmable interval timer (channels 0–2 at 0x40–0x43) and the timer bits of
//! system control port B (0x61).
//!
//! Counters are not stepped: each channel remembers when its count was loaded, and every
//! register read derives the counter and OUT from the [`Clock`]. Channel 0's OUT drives
//! IRQ 0; since nothing runs between exits, the run loop arms a host timer for
//! [`Pit::next_deadline_ns`] and calls [`Pit::poll`] when it fires (or at any exit),
//! which raises IRQ 0 for the rising edges of OUT0 since the previous poll.
//! Channel 2's gate and OUT are wired to port 0x61, which Linux uses to calibrate its TSC.

use std::sync::{Arc, Mutex};

use super::bus::{BusError, PortAction, PortBus, PortDevice};
use super::clock::Clock;
use super::irq::IrqLine;
use super::lock;

/// First PIT port (channel 0 data); 0x43 is the control word register.
pub const PIT_BASE: u16 = 0x40;
/// Ports of the 8254.
pub const PIT_PORT_LEN: u16 = 4;
/// System control port B (speaker gate, channel 2 OUT).
pub const SYSTEM_CONTROL_PORT_B: u16 = 0x61;
/// The PIT's input clock on the PC.
pub const PIT_FREQUENCY_HZ: u64 = 1_193_182;
/// Number of counters.
pub const PIT_CHANNELS: usize = 3;
/// Channel 0's interrupt line.
pub const PIT_IRQ: u8 = 0;

const NS_PER_SEC: u64 = 1_000_000_000;
const CONTROL_OFFSET: u16 = 3;
/// Control word channel field value selecting the read-back command.
const READ_BACK: u8 = 3;
const READ_BACK_LATCH_COUNT_N: u8 = 0x20;
const READ_BACK_LATCH_STATUS_N: u8 = 0x10;
const STATUS_OUT: u8 = 0x80;
const STATUS_NULL_COUNT: u8 = 0x40;
/// Counter range in binary and BCD mode (a written 0 means the full range).
const BINARY_RANGE: u64 = 0x1_0000;
const BCD_RANGE: u64 = 10_000;
/// Port B bits.
const PORT_B_GATE2: u8 = 0x01;
const PORT_B_SPEAKER: u8 = 0x02;
/// Bits of port B that are plain read/write enables (gate, speaker, parity/IOCHK enables).
const PORT_B_WRITABLE: u8 = 0x0f;
const PORT_B_REFRESH: u8 = 0x10;
const PORT_B_OUT2: u8 = 0x20;
/// The DRAM refresh request toggles every 15.085 µs; some code waits on it for delays.
const REFRESH_PERIOD_NS: u64 = 15_085;

/// Byte order of counter accesses (control word bits 5:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Access {
    Lsb = 1,
    Msb = 2,
    /// LSB then MSB; `Word1` is the state between the two bytes.
    #[default]
    Word0 = 3,
    Word1 = 4,
}

impl Access {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word0,
        }
    }

    /// The control-word encoding (status byte bits 5:4).
    fn bits(self) -> u8 {
        match self {
            Access::Lsb => 1,
            Access::Msb => 2,
            Access::Word0 | Access::Word1 => 3,
        }
    }
}

/// One counter. Plain state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PitChannel {
    /// Initial count in binary, 1..=range (0 written means the full range).
    count: u64,
    /// A count was written since the last control word: the counter runs.
    loaded: bool,
    /// When the count was loaded, or counting last resumed.
    load_ns: u64,
    /// Input clocks counted before `load_ns` (the gate paused counting).
    base_ticks: u64,
    gate: bool,
    /// Mode as programmed (0–7); 6 and 7 act as 2 and 3.
    mode: u8,
    bcd: bool,
    rw: Access,
    read_state: Access,
    write_state: Access,
    write_latch: u8,
    latched_count: u16,
    count_latched: Option<Access>,
    status_latched: Option<u8>,
    null_count: bool,
}

/// Input clocks in `ns` nanoseconds.
fn ticks_in(ns: u64) -> u64 {
    u64::try_from(u128::from(ns) * u128::from(PIT_FREQUENCY_HZ) / u128::from(NS_PER_SEC))
        .unwrap_or(u64::MAX)
}

/// The shortest time in which `ticks` input clocks have elapsed (inverse of `ticks_in`).
fn ns_for(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * u128::from(NS_PER_SEC)).div_ceil(u128::from(PIT_FREQUENCY_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn bcd_to_bin(v: u16) -> u64 {
    (0..4)
        .rev()
        .fold(0, |acc, i| acc * 10 + u64::from((v >> (4 * i)) & 0xf))
}

/// The 16 bits a counter reads back as: a count of 0x10000 (the full period) reads as 0,
/// as on the 8254.
fn low16(v: u64) -> u16 {
    (v & 0xffff) as u16
}

fn bin_to_bcd(v: u64) -> u16 {
    (0..4).fold(0u16, |acc, i| {
        acc | u16::try_from((v / 10u64.pow(i)) % 10).unwrap_or(0) << (4 * i)
    })
}

impl PitChannel {
    fn new(gate: bool) -> Self {
        Self {
            gate,
            ..Default::default()
        }
    }

    fn mode(&self) -> u8 {
        if self.mode >= 6 {
            self.mode - 4
        } else {
            self.mode
        }
    }

    fn range(&self) -> u64 {
        if self.bcd {
            BCD_RANGE
        } else {
            BINARY_RANGE
        }
    }

    /// Modes 1 and 5 use the gate as a trigger; the others count only while it is high.
    fn gate_pauses(&self) -> bool {
        !matches!(self.mode(), 1 | 5)
    }

    /// Input clocks counted since the count was loaded.
    fn ticks(&self, now: u64) -> u64 {
        if !self.loaded {
            return 0;
        }
        let running = if self.gate || !self.gate_pauses() {
            ticks_in(now.saturating_sub(self.load_ns))
        } else {
            0
        };
        self.base_ticks.saturating_add(running)
    }

    /// The counting element's value (binary).
    fn counter(&self, now: u64) -> u64 {
        let range = self.range();
        if !self.loaded {
            return self.count % range;
        }
        let d = self.ticks(now);
        let n = self.count.max(1);
        let v = match self.mode() {
            2 => n - d % n,
            // Mode 3 decrements by two each clock.
            3 => n - (d.saturating_mul(2)) % n,
            _ => n + range - d % range,
        };
        v % range
    }

    fn out(&self, now: u64) -> bool {
        let mode = self.mode();
        if !self.loaded {
            // After a control word OUT is low in mode 0 and high otherwise.
            return mode != 0;
        }
        if !self.gate && matches!(mode, 2 | 3) {
            return true;
        }
        let d = self.ticks(now);
        let n = self.count.max(1);
        match mode {
            0 | 1 => d >= n,
            // Low for one clock before each reload.
            2 => d % n != n - 1,
            // High for the first half (rounded up) of each period.
            3 => d % n < n.div_ceil(2),
            // Modes 4 and 5: a one-clock low strobe at terminal count.
            _ => d != n,
        }
    }

    /// Rising edges of OUT among input clocks `(from, to]`.
    fn rising_edges(&self, from: u64, to: u64) -> u64 {
        if !self.loaded || to <= from {
            return 0;
        }
        let n = self.count.max(1);
        match self.mode() {
            2 | 3 => to / n - from / n,
            m => {
                let at = if m >= 4 { n + 1 } else { n };
                u64::from(from < at && at <= to)
            }
        }
    }

    /// The input clock of the first rising edge after `after`, if any.
    fn next_edge(&self, after: u64) -> Option<u64> {
        if !self.loaded {
            return None;
        }
        let n = self.count.max(1);
        match self.mode() {
            2 | 3 => Some((after / n + 1).saturating_mul(n)),
            m => {
                let at = if m >= 4 { n + 1 } else { n };
                (after < at).then_some(at)
            }
        }
    }

    fn latch_count(&mut self, now: u64) {
        if self.count_latched.is_none() {
            let v = self.counter(now);
            self.latched_count = if self.bcd { bin_to_bcd(v) } else { low16(v) };
            self.count_latched = Some(self.rw);
        }
    }

    fn latch_status(&mut self, now: u64) {
        if self.status_latched.is_none() {
            let mut status = (self.rw.bits() << 4) | (self.mode << 1) | u8::from(self.bcd);
            if self.out(now) {
                status |= STATUS_OUT;
            }
            if self.null_count {
                status |= STATUS_NULL_COUNT;
            }
            self.status_latched = Some(status);
        }
    }

    fn control(&mut self, value: u8) {
        let gate = self.gate;
        *self = Self {
            gate,
            count: self.count,
            rw: Access::from_bits(value >> 4),
            read_state: Access::from_bits(value >> 4),
            write_state: Access::from_bits(value >> 4),
            mode: (value >> 1) & 7,
            bcd: value & 1 != 0,
            null_count: true,
            ..Default::default()
        };
    }

    fn load(&mut self, raw: u16, now: u64) {
        // Digits above 9 in a BCD count are undefined on the part; keep the count in range.
        let value = if self.bcd {
            bcd_to_bin(raw) % BCD_RANGE
        } else {
            u64::from(raw)
        };
        self.count = if value == 0 { self.range() } else { value };
        self.loaded = true;
        self.load_ns = now;
        self.base_ticks = 0;
        self.null_count = false;
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(status) = self.status_latched.take() {
            return status;
        }
        if let Some(state) = self.count_latched {
            let [lo, hi] = self.latched_count.to_le_bytes();
            return match state {
                Access::Lsb => {
                    self.count_latched = None;
                    lo
                }
                Access::Msb | Access::Word1 => {
                    self.count_latched = None;
                    hi
                }
                Access::Word0 => {
                    self.count_latched = Some(Access::Word1);
                    lo
                }
            };
        }
        let v = self.counter(now);
        let [lo, hi] = (if self.bcd { bin_to_bcd(v) } else { low16(v) }).to_le_bytes();
        match self.read_state {
            Access::Lsb => lo,
            Access::Msb => hi,
            Access::Word0 => {
                self.read_state = Access::Word1;
                lo
            }
            Access::Word1 => {
                self.read_state = Access::Word0;
                hi
            }
        }
    }

    /// Writes a count byte; the count loads once all its bytes are written.
    fn write(&mut self, value: u8, now: u64) {
        match self.write_state {
            Access::Lsb => self.load(u16::from(value), now),
            Access::Msb => self.load(u16::from(value) << 8, now),
            Access::Word0 => {
                self.write_latch = value;
                self.write_state = Access::Word1;
            }
            Access::Word1 => {
                self.load(u16::from_le_bytes([self.write_latch, value]), now);
                self.write_state = Access::Word0;
            }
        }
    }

    fn set_gate(&mut self, gate: bool, now: u64) {
        if gate == self.gate {
            return;
        }
        if self.gate_pauses() {
            if gate {
                if matches!(self.mode(), 2 | 3) {
                    // A rising gate reloads the counter in the periodic modes.
                    self.base_ticks = 0;
                }
                self.load_ns = now;
            } else {
                self.base_ticks = self.ticks(now);
            }
        } else if gate {
            // Modes 1 and 5: a rising gate (re)triggers the count.
            self.base_ticks = 0;
            self.load_ns = now;
        }
        self.gate = gate;
    }
}

/// The 8254 with its clock and channel 0's interrupt line.
#[derive(Debug)]
pub struct Pit<C: Clock, L: IrqLine> {
    clock: C,
    irq: L,
    channels: [PitChannel; PIT_CHANNELS],
    /// Channel 0 input clocks already reported by `poll` (relative to its load).
    polled_ticks: u64,
    /// Channel 0 edges from before a reprogramming, not reported yet.
    pending_edges: u64,
    last_poll_ns: u64,
    /// Channel 0 edges raised on IRQ 0 that no interrupt-acknowledge has taken yet
    /// (see [`Pit::acknowledged`]).
    unacked: u64,
    /// Port B enables (gate 2, speaker, parity/IOCHK enables).
    port_b: u8,
}

impl<C: Clock, L: IrqLine> Pit<C, L> {
    /// A PIT with no counts loaded. Channels 0 and 1 are gated on, as on the PC; channel 2
    /// follows port 0x61 bit 0 (off at reset).
    pub fn new(clock: C, irq: L) -> Self {
        Self {
            clock,
            irq,
            channels: [
                PitChannel::new(true),
                PitChannel::new(true),
                PitChannel::new(false),
            ],
            polled_ticks: 0,
            pending_edges: 0,
            last_poll_ns: 0,
            unacked: 0,
            port_b: 0,
        }
    }

    /// Raises IRQ 0 for the rising edges of channel 0's OUT since the previous poll and
    /// returns how many there were.
    ///
    /// Several edges between polls, or an edge while the previous one still waits in the
    /// PIC's or the APIC's request register, are one request there; a kernel that counts
    /// its ticks would lose the others (see `lapic.rs` for why that matters). So every
    /// edge is counted until an interrupt-acknowledge takes it ([`Pit::acknowledged`]),
    /// which raises the next one owed: the "reinject" policy of KVM's PIT. At most a
    /// second's worth is owed, and nothing is while IRQ 0 reaches no processor
    /// ([`Pit::drop_owed`]).
    pub fn poll(&mut self, now_ns: u64) -> u64 {
        let ch = &self.channels[0];
        let d = ch.ticks(now_ns);
        let edges = self.pending_edges + ch.rising_edges(self.polled_ticks, d);
        self.polled_ticks = self.polled_ticks.max(d);
        self.pending_edges = 0;
        self.last_poll_ns = now_ns;
        if edges > 0 {
            // IRQ 0 is edge-triggered on the PC (the ELCR cannot make it level), so a pulse
            // is what the PIC sees of OUT0 rising; programming the counter, which moves OUT0
            // to its initial state, is not an interrupt.
            self.irq.pulse();
            self.unacked = self.unacked.saturating_add(edges).min(self.max_unacked());
        }
        edges
    }

    /// The most edges owed at once: a second of channel 0's periods, at most 1000.
    fn max_unacked(&self) -> u64 {
        let period = ns_for(self.channels[0].count).max(1);
        (NS_PER_SEC / period).clamp(1, 1000)
    }

    /// A processor acknowledged IRQ 0 (through the PIC or the IOAPIC): one edge is taken,
    /// and the next one owed is raised at once. It waits in the request register until
    /// the guest ends the one in service.
    pub fn acknowledged(&mut self) {
        self.unacked = self.unacked.saturating_sub(1);
        if self.unacked > 0 {
            self.irq.pulse();
        }
    }

    /// IRQ 0 reaches no processor (masked at the PIC and the IOAPIC): its edges are
    /// lost, as on the hardware, and none is owed.
    pub fn drop_owed(&mut self) {
        self.unacked = 0;
    }

    /// Edges raised and not yet acknowledged (see [`Pit::poll`]).
    pub fn owed(&self) -> u64 {
        self.unacked
    }

    /// When channel 0's OUT next rises, in the clock's nanoseconds: the run loop arms its
    /// host timer for it and calls [`Pit::poll`]. `None` when channel 0 will not interrupt
    /// (no count loaded, or a one-shot that already fired). A time at or before the last
    /// poll means "poll now".
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.pending_edges > 0 {
            return Some(self.last_poll_ns);
        }
        let ch = &self.channels[0];
        if !ch.gate && ch.gate_pauses() {
            return None;
        }
        let edge = ch.next_edge(self.polled_ticks)?;
        Some(
            ch.load_ns
                .saturating_add(ns_for(edge.saturating_sub(ch.base_ticks))),
        )
    }

    /// A channel's state, for inspection (`index` 0–2).
    pub fn channel(&self, index: usize) -> Option<&PitChannel> {
        self.channels.get(index)
    }

    /// Channel 0 is being reprogrammed: keep its edges so far for the next poll.
    fn retire_channel0(&mut self, now: u64) {
        // What the old programming owed goes with it.
        self.unacked = 0;
        let ch = &self.channels[0];
        self.pending_edges += ch.rising_edges(self.polled_ticks, ch.ticks(now));
        self.polled_ticks = 0;
    }

    fn read_port(&mut self, offset: u16) -> u8 {
        let now = self.clock.now_ns();
        match self.channels.get_mut(usize::from(offset)) {
            Some(ch) => ch.read(now),
            // The control word register is write-only.
            None => 0xff,
        }
    }

    fn write_port(&mut self, offset: u16, value: u8) {
        let now = self.clock.now_ns();
        if offset == CONTROL_OFFSET {
            let channel = value >> 6;
            if channel == READ_BACK {
                for (i, ch) in self.channels.iter_mut().enumerate() {
                    if value & (2 << i) == 0 {
                        continue;
                    }
                    if value & READ_BACK_LATCH_COUNT_N == 0 {
                        ch.latch_count(now);
                    }
                    if value & READ_BACK_LATCH_STATUS_N == 0 {
                        ch.latch_status(now);
                    }
                }
                return;
            }
            let index = usize::from(channel);
            if (value >> 4) & 3 == 0 {
                if let Some(ch) = self.channels.get_mut(index) {
                    ch.latch_count(now);
                }
                return;
            }
            if index == 0 {
                self.retire_channel0(now);
            }
            if let Some(ch) = self.channels.get_mut(index) {
                ch.control(value);
            }
            return;
        }
        let index = usize::from(offset);
        if index == 0 {
            // Retire before a possible load changes the counting origin.
            let ch = &self.channels[0];
            if ch.write_state != Access::Word0 {
                self.retire_channel0(now);
            }
        }
        if let Some(ch) = self.channels.get_mut(index) {
            ch.write(value, now);
        }
    }

    fn read_port_b(&self) -> u8 {
        let now = self.clock.now_ns();
        let mut v = self.port_b;
        if (now / REFRESH_PERIOD_NS) % 2 == 1 {
            v |= PORT_B_REFRESH;
        }
        if self.channels[2].out(now) {
            v |= PORT_B_OUT2;
        }
        v
    }

    fn write_port_b(&mut self, value: u8) {
        let now = self.clock.now_ns();
        self.port_b = value & PORT_B_WRITABLE;
        self.channels[2].set_gate(value & PORT_B_GATE2 != 0, now);
    }

    /// Whether the guest has the PC speaker sounding (gate 2 and speaker data enabled).
    pub fn speaker_enabled(&self) -> bool {
        self.port_b & (PORT_B_GATE2 | PORT_B_SPEAKER) == PORT_B_GATE2 | PORT_B_SPEAKER
    }
}

/// Bus adapter for 0x40–0x43.
struct PitPorts<C: Clock, L: IrqLine> {
    pit: Arc<Mutex<Pit<C, L>>>,
}

impl<C: Clock, L: IrqLine> PortDevice for PitPorts<C, L> {
    fn read(&mut self, offset: u16, _size: u8) -> u32 {
        u32::from(lock(&self.pit).read_port(offset))
    }

    fn write(&mut self, offset: u16, _size: u8, value: u32) -> PortAction {
        let mut pit = lock(&self.pit);
        pit.write_port(offset, (value & 0xff) as u8);
        PortAction::Continue
    }
}

/// Bus adapter for port 0x61.
struct PortB<C: Clock, L: IrqLine> {
    pit: Arc<Mutex<Pit<C, L>>>,
}

impl<C: Clock, L: IrqLine> PortDevice for PortB<C, L> {
    fn read(&mut self, _offset: u16, _size: u8) -> u32 {
        u32::from(lock(&self.pit).read_port_b())
    }

    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> PortAction {
        let mut pit = lock(&self.pit);
        pit.write_port_b((value & 0xff) as u8);
        PortAction::Continue
    }
}

/// Puts the PIT (0x40–0x43) and system control port B (0x61) on `bus`.
///
/// # Errors
/// [`BusError::Overlap`] if one of those ports is already claimed.
pub fn register_pit<C, L>(bus: &mut PortBus, pit: &Arc<Mutex<Pit<C, L>>>) -> Result<(), BusError>
where
    C: Clock + Send + 'static,
    L: IrqLine + Send + 'static,
{
    bus.insert(
        PIT_BASE,
        PIT_PORT_LEN,
        Arc::new(Mutex::new(PitPorts {
            pit: Arc::clone(pit),
        })),
    )?;
    bus.insert(
        SYSTEM_CONTROL_PORT_B,
        1,
        Arc::new(Mutex::new(PortB {
            pit: Arc::clone(pit),
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::clock::fake::FakeClock;
    use crate::devices::irq::fake::FakeLine;

    const CH0: u16 = 0x40;
    const CH2: u16 = 0x42;
    const CTRL: u16 = 0x43;

    struct Rig {
        bus: PortBus,
        pit: Arc<Mutex<Pit<FakeClock, FakeLine>>>,
        clock: FakeClock,
        line: FakeLine,
    }

    fn rig() -> Rig {
        let clock = FakeClock::default();
        let line = FakeLine::default();
        let pit = Arc::new(Mutex::new(Pit::new(clock.clone(), line.clone())));
        let mut bus = PortBus::new();
        register_pit(&mut bus, &pit).unwrap();
        Rig {
            bus,
            pit,
            clock,
            line,
        }
    }

    fn read16(bus: &mut PortBus, port: u16) -> u32 {
        let lo = bus.read(port, 1);
        lo | bus.read(port, 1) << 8
    }

    #[test]
    fn late_ticks_are_owed_and_raised_one_per_acknowledge() {
        let mut r = rig();
        r.bus.write(CTRL, 1, 0x34);
        r.bus.write(CH0, 1, 11932 & 0xff);
        r.bus.write(CH0, 1, 11932 >> 8);
        let period = ns_for(11932);
        let mut pit = r.pit.lock().unwrap();
        // Three periods before the CPU takes any: one edge on the line, three owed.
        assert_eq!(pit.poll(3 * period), 3);
        assert_eq!(r.line.rising_edges(), 1);
        assert_eq!(pit.owed(), 3);
        // Each acknowledge raises the next; the last one raises nothing more.
        pit.acknowledged();
        assert_eq!(r.line.rising_edges(), 2);
        pit.acknowledged();
        assert_eq!(r.line.rising_edges(), 3);
        pit.acknowledged();
        assert_eq!(r.line.rising_edges(), 3);
        assert_eq!(pit.owed(), 0);
        // An edge while the last one waits is owed too.
        assert_eq!(pit.poll(4 * period), 1);
        assert_eq!(pit.poll(5 * period), 1);
        assert_eq!(pit.owed(), 2);
        // IRQ 0 masked everywhere: what was owed is lost, as the hardware loses it.
        pit.drop_owed();
        assert_eq!(pit.owed(), 0);
        // A second's worth at most (whole periods of 10.00015 ms: 99), and nothing once
        // reprogrammed.
        assert_eq!(pit.poll(1000 * period), 995);
        assert_eq!(pit.owed(), 99);
        drop(pit);
        r.bus.write(CTRL, 1, 0x34);
        assert_eq!(r.pit.lock().unwrap().owed(), 0);
    }

    #[test]
    fn mode2_periodic_irq_timing() {
        let mut r = rig();
        // Linux's PIT clockevent: mode 2, LATCH = 1193182/100 rounded = 11932 (10 ms).
        let latch = 11932u32;
        r.bus.write(CTRL, 1, 0x34);
        r.bus.write(CH0, 1, latch & 0xff);
        r.bus.write(CH0, 1, latch >> 8);
        let mut pit = r.pit.lock().unwrap();
        let deadline = pit.next_deadline_ns().unwrap();
        // 11932 clocks at 1.193182 MHz: 10_000_150.9 ns, rounded up to the first
        // nanosecond at which the last clock has elapsed.
        assert_eq!(deadline, 10_000_151);
        assert_eq!(pit.poll(deadline - 1), 0);
        assert_eq!(r.line.rising_edges(), 0);
        assert_eq!(pit.poll(deadline), 1);
        assert_eq!(r.line.rising_edges(), 1);
        // Next period; three periods late counts three edges but one interrupt.
        assert_eq!(pit.next_deadline_ns(), Some(ns_for(2 * 11932)));
        assert_eq!(pit.poll(deadline * 4 + 10), 3);
        assert_eq!(r.line.rising_edges(), 2);
        assert!(pit.next_deadline_ns().unwrap() > deadline * 4);
    }

    #[test]
    fn mode0_is_one_shot() {
        let mut r = rig();
        r.clock.set(5_000);
        r.bus.write(CTRL, 1, 0x30);
        r.bus.write(CH0, 1, 100);
        r.bus.write(CH0, 1, 0);
        let mut pit = r.pit.lock().unwrap();
        let d = pit.next_deadline_ns().unwrap();
        assert_eq!(d, 5_000 + ns_for(100));
        assert_eq!(pit.poll(d), 1);
        assert_eq!(pit.next_deadline_ns(), None);
        assert_eq!(pit.poll(d + NS_PER_SEC), 0);
        assert_eq!(r.line.rising_edges(), 1);
    }

    /// Linux's i8253 clockevent in one-shot state: mode 4, then a delta per event.
    #[test]
    fn mode4_strobe_fires_once_a_clock_after_terminal_count() {
        let mut r = rig();
        r.bus.write(CTRL, 1, 0x38);
        r.bus.write(CH0, 1, 50);
        r.bus.write(CH0, 1, 0);
        let mut pit = r.pit.lock().unwrap();
        assert_eq!(pit.next_deadline_ns(), Some(ns_for(51)));
        assert_eq!(pit.poll(ns_for(51) - 1), 0);
        assert_eq!(pit.poll(ns_for(51)), 1);
        assert_eq!(pit.next_deadline_ns(), None);
        drop(pit);
        // The next event re-arms by writing a new count.
        r.clock.set(ns_for(100));
        r.bus.write(CH0, 1, 10);
        r.bus.write(CH0, 1, 0);
        assert_eq!(
            r.pit.lock().unwrap().next_deadline_ns(),
            Some(ns_for(100) + ns_for(11))
        );
    }

    #[test]
    fn invalid_bcd_digits_stay_in_range() {
        let mut r = rig();
        r.bus.write(CTRL, 1, 0x35); // mode 2, BCD
        r.bus.write(CH0, 1, 0xff);
        r.bus.write(CH0, 1, 0xff);
        // No period longer than the BCD counter's 10000 states.
        let deadline = r.pit.lock().unwrap().next_deadline_ns().unwrap();
        assert!(deadline <= ns_for(BCD_RANGE), "{deadline}");
        r.clock.set(ns_for(3));
        let v = read16(&mut r.bus, CH0);
        assert!(v <= 0x9999 && (v & 0xf) <= 9, "{v:#x}");
    }

    #[test]
    fn mode3_square_wave_counts_and_fires() {
        let mut r = rig();
        r.bus.write(CTRL, 1, 0x36);
        r.bus.write(CH0, 1, 0);
        r.bus.write(CH0, 1, 0); // 65536: the 18.2 Hz BIOS tick
        let d = r.pit.lock().unwrap().next_deadline_ns().unwrap();
        assert_eq!(d, ns_for(BINARY_RANGE));
        assert_eq!(r.pit.lock().unwrap().poll(d), 1);
        // Counting down by two: 1000 clocks after load the counter is 65536-2000.
        r.clock.set(ns_for(1000));
        r.bus.write(CTRL, 1, 0x00); // latch channel 0
        assert_eq!(read16(&mut r.bus, CH0), 0x1_0000 - 2000);
    }

    #[test]
    fn latch_freezes_the_count_until_read() {
        let mut r = rig();
        r.bus.write(CTRL, 1, 0x34);
        r.bus.write(CH0, 1, 0x00);
        r.bus.write(CH0, 1, 0x10); // 4096
        r.clock.set(ns_for(96));
        r.bus.write(CTRL, 1, 0x00);
        r.clock.set(ns_for(1000));
        assert_eq!(read16(&mut r.bus, CH0), 4000);
        // Unlatched: live value.
        assert_eq!(read16(&mut r.bus, CH0), 3096);
    }

    #[test]
    fn read_back_latches_status_and_count() {
        let mut r = rig();
        r.bus.write(CTRL, 1, 0xb0); // channel 2, lo/hi, mode 0
                                    // Status before a count: null count set, OUT low.
        r.bus.write(CTRL, 1, 0xe8); // read-back status only, channel 2
        assert_eq!(r.bus.read(CH2, 1), 0x70);
        r.bus.write(0x61, 1, 0x01); // gate on
        r.bus.write(CH2, 1, 0x34);
        r.bus.write(CH2, 1, 0x12);
        r.clock.set(ns_for(0x34));
        r.bus.write(CTRL, 1, 0xc8); // read-back count and status, channel 2
        assert_eq!(r.bus.read(CH2, 1), 0x30); // status first: no null count, OUT low
        assert_eq!(read16(&mut r.bus, CH2), 0x1200);
    }

    #[test]
    fn bcd_counts() {
        let mut r = rig();
        r.bus.write(CTRL, 1, 0x31); // mode 0, BCD
        r.bus.write(CH0, 1, 0x00);
        r.bus.write(CH0, 1, 0x10); // 1000 decimal
        r.clock.set(ns_for(1));
        assert_eq!(read16(&mut r.bus, CH0), 0x0999);
        assert_eq!(r.pit.lock().unwrap().next_deadline_ns(), Some(ns_for(1000)));
    }

    /// Linux's `pit_calibrate_tsc`: gate on, speaker off, channel 2 mode 0 with a 50 ms
    /// count, then spin on port 0x61 bit 5 (OUT2).
    #[test]
    fn linux_tsc_calibration_sees_out2_rise() {
        let mut r = rig();
        let v = r.bus.read(0x61, 1);
        r.bus.write(0x61, 1, (v & !0x02) | 0x01);
        r.bus.write(CTRL, 1, 0xb0);
        let latch = 1_193_182 / 20;
        r.bus.write(CH2, 1, latch & 0xff);
        r.bus.write(CH2, 1, latch >> 8);
        assert_eq!(r.bus.read(0x61, 1) & 0x20, 0);
        r.clock.advance(49_000_000);
        assert_eq!(r.bus.read(0x61, 1) & 0x20, 0);
        r.clock.advance(1_000_000);
        assert_eq!(r.bus.read(0x61, 1) & 0x23, 0x21);
        assert_eq!(r.line.rising_edges(), 0, "channel 2 does not raise IRQ 0");
    }

    #[test]
    fn gate_low_pauses_channel2() {
        let mut r = rig();
        r.bus.write(0x61, 1, 0x01);
        r.bus.write(CTRL, 1, 0xb0);
        r.bus.write(CH2, 1, 0xe8);
        r.bus.write(CH2, 1, 0x03); // 1000
        r.clock.set(ns_for(100));
        r.bus.write(0x61, 1, 0x00);
        r.clock.set(ns_for(5000));
        r.bus.write(CTRL, 1, 0x80);
        assert_eq!(read16(&mut r.bus, CH2), 900);
        assert_eq!(r.bus.read(0x61, 1) & 0x20, 0);
        r.bus.write(0x61, 1, 0x01);
        r.clock.set(ns_for(5000) + ns_for(900) + 1);
        assert_ne!(r.bus.read(0x61, 1) & 0x20, 0);
    }

    #[test]
    fn reprogramming_keeps_edges_already_due() {
        let mut r = rig();
        r.bus.write(CTRL, 1, 0x34);
        r.bus.write(CH0, 1, 100);
        r.bus.write(CH0, 1, 0);
        r.clock.set(ns_for(250));
        // Switched off (Linux's clockevent shutdown) before the run loop polled.
        r.bus.write(CTRL, 1, 0x30);
        let mut pit = r.pit.lock().unwrap();
        assert!(pit.next_deadline_ns().is_some());
        assert_eq!(pit.poll(ns_for(300)), 2);
        assert_eq!(pit.next_deadline_ns(), None);
    }

    #[test]
    fn control_port_reads_float_and_bad_channel_latch_is_ignored() {
        let mut r = rig();
        assert_eq!(r.bus.read(CTRL, 1), 0xff);
        r.bus.write(CTRL, 1, 0xc0); // read-back with no channel selected
        assert_eq!(r.pit.lock().unwrap().poll(NS_PER_SEC), 0);
    }
}
