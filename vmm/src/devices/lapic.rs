//! The local APIC in xAPIC mode: a register page at [`pc::LAPIC_BASE`] (SDM Vol. 3A
//! ch. 10, "Advanced Programmable Interrupt Controller").
//!
//! The bootstrap processor's APIC is as firmware hands it to an OS (SeaBIOS under QEMU):
//! globally enabled in IA32_APIC_BASE, software-enabled with spurious vector 0xFF, LINT0
//! in ExtINT mode and LINT1 as NMI — the MP specification's virtual-wire mode, so a guest
//! that only programs the 8259 keeps receiving its interrupts. An application processor's
//! is in its power-up state ([`LocalApic::new_ap`]). IPIs to other processors leave
//! through [`LocalApic::take_outbox`] (the APICs of a machine are in `lapics.rs`); what an
//! IPI asks of the processor itself (NMI, INIT, start-up) waits in
//! [`LocalApic::take_signals`].
//!
//! What the run loop asks of it:
//! - [`LocalApic::accept`]: a fixed interrupt arrives (IOAPIC, self-IPI, timer);
//! - [`LocalApic::pending_vector`] / [`LocalApic::acknowledge`]: the highest vector
//!   the processor priority lets through, moved from IRR to ISR;
//! - [`LocalApic::accepts_pic`]: whether the 8259's INTR reaches the CPU (LINT0 unmasked
//!   in ExtINT mode, or the APIC globally disabled);
//! - [`LocalApic::next_deadline_ns`] / [`LocalApic::poll`]: the LVT timer, counted from
//!   the [`Clock`];
//! - [`LocalApic::take_level_eois`]: the vectors of level-triggered interrupts the guest
//!   ended with an EOI, for the IOAPIC's remote IRR. They are collected rather than
//!   forwarded so the APIC never calls into the IOAPIC while the bus holds its lock (the
//!   IOAPIC locks the APIC to deliver).
//!
//! The timer counts a 1 GHz bus clock through the divide configuration, the rate QEMU's
//! APIC gives guests, so a guest calibrates the same machine under both.
//!
//! [`pc::LAPIC_BASE`]: super::pc::LAPIC_BASE

use std::sync::{Arc, Mutex};

use super::clock::Clock;
use super::lock;
use super::mmio::MmioDevice;

/// The timer's input clock (the APIC bus clock before the divider), in Hz.
pub const LAPIC_TIMER_HZ: u64 = 1_000_000_000;

/// Register offsets in the APIC page (SDM Vol. 3A Table 10-1).
pub mod reg {
    /// Local APIC ID.
    pub const ID: u32 = 0x20;
    /// Local APIC version.
    pub const VERSION: u32 = 0x30;
    /// Task priority.
    pub const TPR: u32 = 0x80;
    /// Arbitration priority.
    pub const APR: u32 = 0x90;
    /// Processor priority.
    pub const PPR: u32 = 0xa0;
    /// End of interrupt.
    pub const EOI: u32 = 0xb0;
    /// Remote read.
    pub const RRD: u32 = 0xc0;
    /// Logical destination.
    pub const LDR: u32 = 0xd0;
    /// Destination format.
    pub const DFR: u32 = 0xe0;
    /// Spurious interrupt vector.
    pub const SVR: u32 = 0xf0;
    /// In-service register, eight words.
    pub const ISR: u32 = 0x100;
    /// Trigger mode register, eight words.
    pub const TMR: u32 = 0x180;
    /// Interrupt request register, eight words.
    pub const IRR: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// Interrupt command, low word (writing it sends the IPI).
    pub const ICR_LOW: u32 = 0x300;
    /// Interrupt command, high word (destination).
    pub const ICR_HIGH: u32 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u32 = 0x330;
    /// LVT performance counters.
    pub const LVT_PERF: u32 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x370;
    /// Timer initial count.
    pub const TIMER_INITIAL: u32 = 0x380;
    /// Timer current count.
    pub const TIMER_CURRENT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

/// The version register: [`super::pc::LAPIC_VERSION`] (0x14, an integrated APIC) with six LVT
/// entries, as QEMU's APIC reports.
pub const LAPIC_VERSION: u32 = super::pc::LAPIC_VERSION as u32 | (5 << 16);

/// SVR bit 8: the APIC is software-enabled.
pub const SVR_ENABLE: u32 = 1 << 8;
/// LVT and ICR bit 12: delivery status (send pending).
pub const DELIVERY_PENDING: u32 = 1 << 12;
/// LVT bit 16: masked.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer bit 17: periodic mode.
pub const TIMER_PERIODIC: u32 = 1 << 17;

/// ESR bit 5: a fixed IPI with a vector below 16 was sent.
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// ESR bit 6: an interrupt with a vector below 16 was received.
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
/// ESR bit 7: a reserved register was accessed.
pub const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

/// IA32_APIC_BASE bit 11: the APIC is globally enabled.
pub const APIC_BASE_ENABLE: u64 = 1 << 11;

/// How much time a periodic timer's owed periods may cover (see [`LocalApic::poll`]).
const BACKLOG_NS: u64 = 1_000_000_000;
/// The most periods a periodic timer may owe.
const MAX_BACKLOG: u64 = 1000;

const LVT_ENTRIES: usize = 6;
const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_LINT1: usize = 4;
const LVT_ERROR: usize = 5;
/// Writable bits of each LVT entry, in register order (timer, thermal, performance,
/// LINT0, LINT1, error): vector, delivery mode where the entry has one, polarity and
/// trigger mode on the LINT pins, mask, and the timer's periodic bit (no TSC-deadline
/// mode: CPUID does not report it).
const LVT_WRITABLE: [u32; LVT_ENTRIES] = [
    0x0003_00ff,
    0x0001_07ff,
    0x0001_07ff,
    0x0001_a7ff,
    0x0001_a7ff,
    0x0001_00ff,
];
/// ICR low writable bits: vector, delivery mode, destination mode, level, trigger mode,
/// destination shorthand.
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;
/// Delivery mode field values (LVT, ICR, IOAPIC redirection entries).
const MODE_FIXED: u8 = 0;
const MODE_LOWEST_PRIORITY: u8 = 1;
const MODE_NMI: u8 = 4;
const MODE_INIT: u8 = 5;
const MODE_STARTUP: u8 = 6;
const MODE_EXTINT: u8 = 7;
/// The reset state firmware leaves: LINT0 ExtINT, LINT1 NMI, both level-triggered
/// (SeaBIOS writes 0x8700 and 0x8400).
const LINT0_VIRTUAL_WIRE: u32 = 0x8700;
const LINT1_NMI: u32 = 0x8400;
/// The spurious vector after reset and the software-enabled SVR firmware leaves.
const SVR_RESET: u32 = 0xff;

/// How an interrupt message is delivered (the 3-bit delivery mode of an ICR or an IOAPIC
/// redirection entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// To the vector, at every destination.
    Fixed,
    /// To the vector, at the destination of lowest priority (with one CPU: that CPU).
    LowestPriority,
    /// Anything else (SMI, NMI, INIT, start-up, ExtINT): not delivered by this model.
    Other(u8),
}

impl DeliveryMode {
    /// The mode encoded in bits 10:8 of `word`.
    pub fn from_bits(word: u32) -> Self {
        match field8(word, 8) & 7 {
            MODE_FIXED => DeliveryMode::Fixed,
            MODE_LOWEST_PRIORITY => DeliveryMode::LowestPriority,
            m => DeliveryMode::Other(m),
        }
    }
}

/// An interrupt message on the APIC bus (from the IOAPIC, or an IPI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicMessage {
    /// The vector.
    pub vector: u8,
    /// How it is delivered.
    pub mode: DeliveryMode,
    /// Level-triggered (the TMR bit is set and the EOI goes back to the IOAPIC).
    pub level: bool,
    /// The destination field: an APIC ID, or a logical destination.
    pub dest: u8,
    /// `dest` is a logical destination.
    pub logical: bool,
}

/// Where the IOAPIC sends its interrupt messages.
pub trait ApicBus {
    /// Delivers `msg` to the local APICs it addresses.
    fn deliver(&self, msg: &ApicMessage);
}

impl<C: Clock + Clone> ApicBus for Arc<Mutex<LocalApic<C>>> {
    fn deliver(&self, msg: &ApicMessage) {
        lock(self).receive(msg);
    }
}

/// Eight bits of `word` starting at bit `shift`.
fn field8(word: u32, shift: u32) -> u8 {
    (word >> shift).to_le_bytes()[0]
}

/// A 256-bit vector set (IRR, ISR, TMR), as the eight registers show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct VectorSet([u32; 8]);

impl VectorSet {
    fn word_bit(vector: u8) -> (usize, u32) {
        (usize::from(vector >> 5), 1 << (vector & 31))
    }
    fn set(&mut self, vector: u8) {
        let (w, b) = Self::word_bit(vector);
        if let Some(word) = self.0.get_mut(w) {
            *word |= b;
        }
    }
    fn clear(&mut self, vector: u8) {
        let (w, b) = Self::word_bit(vector);
        if let Some(word) = self.0.get_mut(w) {
            *word &= !b;
        }
    }
    fn contains(&self, vector: u8) -> bool {
        let (w, b) = Self::word_bit(vector);
        self.word(w) & b != 0
    }
    /// Register `i` of the eight (a vector's `word_bit` is always one of them).
    fn word(&self, i: usize) -> u32 {
        self.0.get(i).copied().unwrap_or(0)
    }
    /// The highest vector in the set.
    fn highest(&self) -> Option<u8> {
        (0u8..8).zip(self.0).rev().find_map(|(w, word)| {
            // leading_zeros of a non-zero u32 is below 32.
            (word != 0).then(|| w * 32 + (31 - field8(word.leading_zeros(), 0)))
        })
    }
    fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
}

/// The LVT timer: a down-counter at the bus clock through the divider, kept as the time
/// the count next reaches zero rather than stepped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Timer {
    initial: u32,
    /// The divide configuration register (bits 0, 1, 3).
    divide_config: u32,
    /// When the count reaches zero next; `None` when stopped or a one-shot has fired.
    next_zero_ns: Option<u64>,
    /// Periods of a periodic timer that reached zero while its vector was already
    /// requested, each still owed to the processor (see [`LocalApic::poll`]).
    backlog: u64,
}

impl Timer {
    /// The divider the configuration selects: 2, 4, … 128, or 1 for 0b1011.
    fn divisor(&self) -> u64 {
        let code = (self.divide_config & 3) | ((self.divide_config >> 1) & 4);
        if code == 7 {
            1
        } else {
            2 << code
        }
    }

    /// Nanoseconds `ticks` timer ticks take.
    fn ns(&self, ticks: u64) -> u64 {
        let ns = u128::from(ticks) * u128::from(self.divisor()) * 1_000_000_000
            / u128::from(LAPIC_TIMER_HZ);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// Whole timer ticks in `ns` nanoseconds.
    fn ticks(&self, ns: u64) -> u64 {
        let t = u128::from(ns) * u128::from(LAPIC_TIMER_HZ)
            / (u128::from(self.divisor()) * 1_000_000_000);
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    fn period_ns(&self) -> u64 {
        self.ns(u64::from(self.initial)).max(1)
    }

    /// The most periods owed at once: a second's worth, and never more than
    /// [`MAX_BACKLOG`] (a very short period is not worth replaying).
    fn max_backlog(&self) -> u64 {
        (BACKLOG_NS / self.period_ns()).min(MAX_BACKLOG)
    }

    /// The current-count register at `now`.
    fn current(&self, now: u64, periodic: bool) -> u32 {
        let Some(zero) = self.next_zero_ns else {
            return 0;
        };
        let left_ns = if now < zero {
            zero - now
        } else if periodic && self.initial != 0 {
            let period = self.period_ns();
            period - (now - zero) % period
        } else {
            return 0;
        };
        u32::try_from(self.ticks(left_ns)).map_or(self.initial, |t| t.min(self.initial))
    }
}

/// The local APIC's registers. Plain state, with the clock that drives its timer.
#[derive(Debug, Clone)]
pub struct LocalApic<C> {
    clock: C,
    /// IA32_APIC_BASE.EN: cleared, the APIC is gone until reset (P6 family).
    globally_enabled: bool,
    id: u8,
    tpr: u8,
    ldr: u8,
    /// DFR bits 31:28 (0xF flat, 0x0 cluster).
    dfr_model: u8,
    svr: u32,
    irr: VectorSet,
    isr: VectorSet,
    tmr: VectorSet,
    /// The ESR as last latched by a write to it.
    esr: u32,
    /// Errors since that write.
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt: [u32; LVT_ENTRIES],
    timer: Timer,
    /// Level-triggered vectors the guest sent an EOI for, not yet taken by the run loop.
    level_eois: VectorSet,
    /// IPIs sent to other processors, not yet routed.
    outbox: Vec<Ipi>,
    /// What IPIs asked of this processor, not yet taken by the run loop.
    signals: CpuSignals,
}

/// An interprocessor interrupt's delivery mode (ICR bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiKind {
    /// A vector, at every destination.
    Fixed,
    /// A vector, at one destination (the lowest-priority one).
    LowestPriority,
    /// A non-maskable interrupt.
    Nmi,
    /// INIT (asserted): the processor resets and waits for a start-up IPI.
    Init,
    /// Start-up: a processor waiting after INIT starts in real mode at vector × 4 KiB.
    Startup,
}

/// Where an IPI goes, besides its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiDest {
    /// The ICR's destination field: an APIC ID (0xFF broadcast), or a logical destination.
    Field {
        /// The destination field.
        dest: u8,
        /// Logical (else physical) destination mode.
        logical: bool,
    },
    /// The "all excluding self" shorthand (and the others of "all including self").
    AllOthers,
}

/// An IPI sent to other processors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipi {
    /// The delivery mode.
    pub kind: IpiKind,
    /// The vector (fixed, lowest priority) or the start-up page number.
    pub vector: u8,
    /// Level-triggered (fixed and lowest priority).
    pub level: bool,
    /// The destinations.
    pub dest: IpiDest,
}

/// What IPIs asked of the processor this APIC belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSignals {
    /// An NMI is due.
    pub nmi: bool,
    /// INIT arrived: the processor resets and waits for a start-up IPI.
    pub init: bool,
    /// The vector of the last start-up IPI.
    pub startup: Option<u8>,
}

impl<C: Clock + Clone> LocalApic<C> {
    /// The APIC as firmware leaves it for an OS: ID 0, software-enabled (SVR 0x1FF),
    /// LINT0 ExtINT (virtual wire), LINT1 NMI, other LVT entries masked.
    pub fn new(clock: C) -> Self {
        let mut apic = Self::power_up(clock);
        apic.svr = SVR_ENABLE | SVR_RESET;
        apic.lvt[LVT_LINT0] = LINT0_VIRTUAL_WIRE;
        apic.lvt[LVT_LINT1] = LINT1_NMI;
        apic
    }

    /// The power-up state (SDM Vol. 3A §10.4.7.1): software-disabled, every LVT masked.
    fn power_up(clock: C) -> Self {
        Self {
            clock,
            globally_enabled: true,
            id: 0,
            tpr: 0,
            ldr: 0,
            dfr_model: 0xf,
            svr: SVR_RESET,
            irr: VectorSet::default(),
            isr: VectorSet::default(),
            tmr: VectorSet::default(),
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [LVT_MASKED; LVT_ENTRIES],
            timer: Timer::default(),
            level_eois: VectorSet::default(),
            outbox: Vec::new(),
            signals: CpuSignals::default(),
        }
    }

    /// An application processor's APIC at power-up (software-disabled, every LVT
    /// masked), with the local APIC ID `id`.
    pub fn new_ap(clock: C, id: u8) -> Self {
        let mut apic = Self::power_up(clock);
        apic.id = id;
        apic
    }

    /// The local APIC ID.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// IPIs sent to other processors since the last call, oldest first.
    pub fn take_outbox(&mut self) -> Vec<Ipi> {
        std::mem::take(&mut self.outbox)
    }

    /// What IPIs asked of this processor since the last call.
    pub fn take_signals(&mut self) -> CpuSignals {
        std::mem::take(&mut self.signals)
    }

    /// Whether an NMI, INIT or start-up IPI waits for the processor.
    pub fn has_signals(&self) -> bool {
        self.signals != CpuSignals::default()
    }

    /// An IPI another processor sent arrives here (its addressing is the sender's
    /// business: see `lapics.rs`). INIT resets the APIC to its power-up state, keeping
    /// its ID (SDM Vol. 3A §10.4.7.3).
    pub fn receive_ipi(&mut self, ipi: &Ipi) {
        if !self.globally_enabled {
            return;
        }
        match ipi.kind {
            IpiKind::Fixed | IpiKind::LowestPriority => {
                if ipi.vector < 16 {
                    self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
                } else {
                    self.accept(ipi.vector, ipi.level);
                }
            }
            IpiKind::Nmi => self.signals.nmi = true,
            IpiKind::Init => {
                let (id, outbox) = (self.id, std::mem::take(&mut self.outbox));
                *self = Self::power_up(self.clock.clone());
                self.id = id;
                self.outbox = outbox;
                self.signals.init = true;
            }
            IpiKind::Startup => self.signals.startup = Some(ipi.vector),
        }
    }

    fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// The processor priority (SDM §10.8.3.1): the TPR, or the class of the highest
    /// vector in service if that is higher.
    pub fn ppr(&self) -> u8 {
        let isr_class = self.isr.highest().unwrap_or(0) & 0xf0;
        if self.tpr & 0xf0 >= isr_class {
            self.tpr
        } else {
            isr_class
        }
    }

    /// A fixed interrupt arrives: `vector` is requested (IRR), level-triggered or edge
    /// (TMR). Vectors 0–15 are illegal and only logged in the ESR. Accepted also while
    /// software-disabled: the request is held until the APIC is enabled again.
    pub fn accept(&mut self, vector: u8, level: bool) {
        if !self.globally_enabled {
            return;
        }
        if vector < 16 {
            self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        self.irr.set(vector);
        if level {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
    }

    /// Accepts `msg` if it is addressed to this APIC (an APIC ID or broadcast in physical
    /// mode, a logical destination matching the LDR under the DFR model).
    pub fn receive(&mut self, msg: &ApicMessage) {
        if !matches!(msg.mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority)
            || !self.addressed_by(msg.dest, msg.logical)
        {
            return;
        }
        self.accept(msg.vector, msg.level);
    }

    /// Whether a message with destination field `dest` reaches this APIC.
    pub fn addressed_by(&self, dest: u8, logical: bool) -> bool {
        if !logical {
            return dest == self.id || dest == 0xff;
        }
        if self.dfr_model == 0xf {
            dest & self.ldr != 0
        } else {
            // Cluster model: the high nibble names the cluster, the low one its members.
            dest >> 4 == self.ldr >> 4 && dest & self.ldr & 0xf != 0
        }
    }

    /// The vector the CPU would take now: the highest requested one whose priority class
    /// is above the processor priority, if the APIC is enabled.
    pub fn pending_vector(&self) -> Option<u8> {
        if !self.globally_enabled || !self.software_enabled() {
            return None;
        }
        let v = self.irr.highest()?;
        (v & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// The interrupt-acknowledge cycle: the pending vector moves from IRR to ISR.
    /// A periodic timer that owes periods requests its vector again at once; it is
    /// delivered after this one's EOI.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending_vector()?;
        self.irr.clear(v);
        self.isr.set(v);
        let timer = self.lvt[LVT_TIMER];
        if self.timer.backlog > 0 && field8(timer, 0) == v && timer & LVT_MASKED == 0 {
            self.timer.backlog -= 1;
            self.irr.set(v);
        }
        Some(v)
    }

    /// Whether the 8259's INTR reaches the CPU: through LINT0 when it is unmasked in
    /// ExtINT mode, or directly when the APIC is globally disabled.
    pub fn accepts_pic(&self) -> bool {
        let lint0 = self.lvt[LVT_LINT0];
        !self.globally_enabled || (lint0 & LVT_MASKED == 0 && field8(lint0, 8) & 7 == MODE_EXTINT)
    }

    /// Level-triggered vectors the guest has ended since the last call, lowest first.
    pub fn take_level_eois(&mut self) -> Vec<u8> {
        if self.level_eois.is_empty() {
            return Vec::new();
        }
        let set = std::mem::take(&mut self.level_eois);
        (0..=255u8).filter(|&v| set.contains(v)).collect()
    }

    /// When the timer next reaches zero, in the clock's nanoseconds.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.timer.next_zero_ns
    }

    /// Advances the timer to `now_ns`: a count that reached zero raises the timer vector
    /// (unless masked) and a periodic count reloads. Returns how many times it reached
    /// zero.
    ///
    /// A period that ends while the timer's vector is still requested would merge into
    /// the same IRR bit and be lost. A kernel counts its ticks (Linux's jiffies), and its
    /// clocksource watchdog compares that count with the TSC, which runs on while the
    /// host does not run this processor (a loaded host, another vCPU's slice): lose
    /// enough ticks and the kernel declares the TSC unstable. So each such period is
    /// owed and requested again as soon as the previous one is acknowledged (the
    /// "delay" lost-tick policy of KVM's and QEMU's timers), up to a second's worth.
    pub fn poll(&mut self, now_ns: u64) -> u64 {
        let Some(zero) = self.timer.next_zero_ns else {
            return 0;
        };
        if now_ns < zero {
            return 0;
        }
        let lvt = self.lvt[LVT_TIMER];
        let periodic = lvt & TIMER_PERIODIC != 0 && self.timer.initial != 0;
        let expiries = if periodic {
            let period = self.timer.period_ns();
            let n = 1 + (now_ns - zero) / period;
            self.timer.next_zero_ns = Some(zero.saturating_add(n.saturating_mul(period)));
            n
        } else {
            self.timer.next_zero_ns = None;
            1
        };
        if lvt & LVT_MASKED == 0 {
            let vector = field8(lvt, 0);
            let merged = if self.irr.contains(vector) {
                expiries
            } else {
                expiries - 1
            };
            if periodic {
                self.timer.backlog = self
                    .timer
                    .backlog
                    .saturating_add(merged)
                    .min(self.timer.max_backlog());
            }
            self.accept(vector, false);
        }
        expiries
    }

    /// Timer periods owed to the processor (see [`LocalApic::poll`]).
    pub fn timer_backlog(&self) -> u64 {
        self.timer.backlog
    }

    /// IA32_APIC_BASE was written: clearing EN removes the APIC until reset (the P6
    /// family cannot enable it again; neither does QEMU), returning it to its power-up
    /// state.
    pub fn set_apic_base(&mut self, value: u64) {
        if self.globally_enabled && value & APIC_BASE_ENABLE == 0 {
            *self = Self {
                globally_enabled: false,
                ..Self::power_up(self.clock.clone())
            };
        }
    }

    /// Whether IA32_APIC_BASE.EN is still set.
    pub fn globally_enabled(&self) -> bool {
        self.globally_enabled
    }

    /// Logs an error in the ESR; the error LVT raises its vector if unmasked.
    fn error(&mut self, bits: u32) {
        let new = bits & !self.esr_pending != 0;
        self.esr_pending |= bits;
        let lvt = self.lvt[LVT_ERROR];
        if new && lvt & LVT_MASKED == 0 && field8(lvt, 0) >= 16 {
            self.irr.set(field8(lvt, 0));
            self.tmr.clear(field8(lvt, 0));
        }
    }

    /// End of interrupt: the highest vector in service is done.
    fn eoi(&mut self) {
        let Some(v) = self.isr.highest() else {
            return;
        };
        self.isr.clear(v);
        if self.tmr.contains(v) {
            self.level_eois.set(v);
        }
    }

    /// ICR low written: the IPI is sent at once (its delivery status never stays
    /// pending). What reaches this processor is taken here; what goes to others waits in
    /// the outbox. INIT level de-assert, SMI and the reserved modes do nothing.
    fn send_ipi(&mut self) {
        let icr = self.icr_low;
        let vector = field8(icr, 0);
        let level = icr & (1 << 15) != 0;
        let assert = icr & (1 << 14) != 0;
        let dest_field = field8(self.icr_high, 24);
        let logical = icr & (1 << 11) != 0;
        let (to_self, others) = match (icr >> 18) & 3 {
            0 => (
                self.addressed_by(dest_field, logical),
                Some(IpiDest::Field {
                    dest: dest_field,
                    logical,
                }),
            ),
            1 => (true, None),
            2 => (true, Some(IpiDest::AllOthers)),
            _ => (false, Some(IpiDest::AllOthers)),
        };
        let kind = match field8(icr, 8) & 7 {
            MODE_FIXED => IpiKind::Fixed,
            MODE_LOWEST_PRIORITY => IpiKind::LowestPriority,
            MODE_NMI => IpiKind::Nmi,
            MODE_INIT if assert || !level => IpiKind::Init,
            MODE_STARTUP => IpiKind::Startup,
            _ => return,
        };
        if matches!(kind, IpiKind::Fixed | IpiKind::LowestPriority) && vector < 16 {
            self.error(ESR_SEND_ILLEGAL_VECTOR);
            if to_self {
                self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
            }
            return;
        }
        if to_self {
            match kind {
                IpiKind::Fixed | IpiKind::LowestPriority => self.accept(vector, level),
                IpiKind::Nmi => self.signals.nmi = true,
                // A processor does not INIT or start itself up this way.
                IpiKind::Init | IpiKind::Startup => {}
            }
        }
        if let Some(dest) = others {
            self.outbox.push(Ipi {
                kind,
                vector,
                level,
                dest,
            });
        }
    }

    fn read_register(&mut self, reg: u32) -> u32 {
        let now = self.clock.now_ns();
        match reg {
            reg::ID => u32::from(self.id) << 24,
            reg::VERSION => LAPIC_VERSION,
            reg::TPR => u32::from(self.tpr),
            // No arbitration cycles on a bus this model does not have.
            reg::APR => 0,
            reg::PPR => u32::from(self.ppr()),
            reg::EOI | reg::RRD => 0,
            reg::LDR => u32::from(self.ldr) << 24,
            reg::DFR => (u32::from(self.dfr_model) << 28) | 0x0fff_ffff,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr.word(Self::word_index(reg - reg::ISR)),
            0x180..=0x1f0 => self.tmr.word(Self::word_index(reg - reg::TMR)),
            0x200..=0x270 => self.irr.word(Self::word_index(reg - reg::IRR)),
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr_low,
            reg::ICR_HIGH => self.icr_high,
            0x320..=0x370 => self
                .lvt
                .get(Self::word_index(reg - reg::LVT_TIMER))
                .copied()
                .unwrap_or(0),
            reg::TIMER_INITIAL => self.timer.initial,
            reg::TIMER_CURRENT => self
                .timer
                .current(now, self.lvt[LVT_TIMER] & TIMER_PERIODIC != 0),
            reg::TIMER_DIVIDE => self.timer.divide_config,
            _ => {
                self.error(ESR_ILLEGAL_REGISTER);
                0
            }
        }
    }

    fn word_index(delta: u32) -> usize {
        usize::try_from(delta >> 4).unwrap_or(0)
    }

    fn write_register(&mut self, reg: u32, v: u32) {
        let now = self.clock.now_ns();
        match reg {
            reg::ID => self.id = field8(v, 24),
            reg::TPR => self.tpr = field8(v, 0),
            reg::EOI => self.eoi(),
            reg::LDR => self.ldr = field8(v, 24),
            reg::DFR => self.dfr_model = field8(v, 28),
            reg::SVR => {
                self.svr = v & (SVR_ENABLE | 0xff);
                if !self.software_enabled() {
                    // Software-disabled: every LVT entry is masked (SDM §10.4.7.2).
                    self.lvt.iter_mut().for_each(|e| *e |= LVT_MASKED);
                    self.timer.backlog = 0;
                }
            }
            reg::ESR => {
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            reg::ICR_LOW => {
                self.icr_low = v & ICR_LOW_WRITABLE;
                self.send_ipi();
            }
            reg::ICR_HIGH => self.icr_high = v & 0xff00_0000,
            0x320..=0x370 => {
                let i = Self::word_index(reg - reg::LVT_TIMER);
                let forced = if self.software_enabled() {
                    0
                } else {
                    LVT_MASKED
                };
                // Delivery status and LINT remote IRR are read-only (zero here).
                if let (Some(entry), Some(writable)) = (self.lvt.get_mut(i), LVT_WRITABLE.get(i)) {
                    *entry = (v & writable) | forced;
                }
                if i == LVT_TIMER {
                    // Owed periods belong to the timer as it was programmed.
                    self.timer.backlog = 0;
                }
            }
            reg::TIMER_INITIAL => {
                self.timer.initial = v;
                self.timer.backlog = 0;
                self.timer.next_zero_ns =
                    (v != 0).then(|| now.saturating_add(self.timer.ns(u64::from(v))));
            }
            reg::TIMER_DIVIDE => {
                // The count runs on from where it is, at the new rate.
                let left = self
                    .timer
                    .next_zero_ns
                    .map(|z| self.timer.ticks(z.saturating_sub(now)));
                self.timer.divide_config = v & 0xb;
                if let Some(ticks) = left {
                    self.timer.next_zero_ns = Some(now.saturating_add(self.timer.ns(ticks)));
                }
            }
            // Read-only registers.
            reg::VERSION | reg::APR | reg::PPR | reg::RRD | reg::TIMER_CURRENT => {}
            0x100..=0x270 => {}
            _ => self.error(ESR_ILLEGAL_REGISTER),
        }
    }
}

impl<C: Clock + Clone> MmioDevice for LocalApic<C> {
    /// Registers are 32 bits wide at 16-byte boundaries; a narrower read sees the bytes
    /// of that dword, and the rest of each 16-byte slot reads as zero.
    fn read(&mut self, offset: u32, data: &mut [u8]) {
        let within = usize::try_from(offset & 0xf).unwrap_or(0);
        let value = self.read_register(offset & 0xff0).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = value.get(within + i).copied().unwrap_or(0);
        }
    }

    /// Only aligned 32-bit writes reach a register (SDM §10.4.1); others are dropped.
    fn write(&mut self, offset: u32, data: &[u8]) {
        let Some(&bytes) = data.first_chunk::<4>() else {
            return;
        };
        if offset & 0xf != 0 {
            return;
        }
        self.write_register(offset & 0xff0, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::clock::fake::FakeClock;

    fn apic() -> (LocalApic<FakeClock>, FakeClock) {
        let clock = FakeClock::default();
        (LocalApic::new(clock.clone()), clock)
    }

    fn rd(a: &mut LocalApic<FakeClock>, reg: u32) -> u32 {
        let mut b = [0; 4];
        a.read(reg, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(a: &mut LocalApic<FakeClock>, reg: u32, v: u32) {
        a.write(reg, &v.to_le_bytes());
    }

    /// A fixed self-IPI of `vector`.
    fn self_ipi(a: &mut LocalApic<FakeClock>, vector: u8) {
        wr(a, reg::ICR_LOW, (1 << 18) | u32::from(vector));
    }

    #[test]
    fn reset_state_is_virtual_wire() {
        let (mut a, _) = apic();
        assert_eq!(rd(&mut a, reg::ID), 0);
        assert_eq!(rd(&mut a, reg::VERSION), 0x0005_0014);
        assert_eq!(rd(&mut a, reg::SVR), 0x1ff);
        assert_eq!(rd(&mut a, reg::LVT_LINT0), 0x8700);
        assert_eq!(rd(&mut a, reg::LVT_LINT1), 0x8400);
        assert_eq!(rd(&mut a, reg::LVT_TIMER), LVT_MASKED);
        assert_eq!(rd(&mut a, reg::DFR), 0xffff_ffff);
        assert!(a.accepts_pic());
        assert_eq!(a.pending_vector(), None);
    }

    #[test]
    fn registers_read_back_their_writable_bits() {
        let (mut a, _) = apic();
        for (reg, written, read) in [
            (reg::ID, 0xffff_ffff, 0xff00_0000),
            (reg::TPR, 0x1234_5678, 0x78),
            (reg::LDR, 0x0123_4567, 0x0100_0000),
            (reg::DFR, 0x0fff_ffff, 0x0fff_ffff),
            (reg::SVR, 0xffff_ffff, 0x1ff),
            (reg::ICR_HIGH, 0xffff_ffff, 0xff00_0000),
            (reg::LVT_TIMER, 0xffff_ffff, 0x0003_00ff),
            (reg::LVT_LINT0, 0xffff_ffff, 0x0001_a7ff),
            (reg::LVT_ERROR, 0xffff_ffff, 0x0001_00ff),
            (reg::TIMER_DIVIDE, 0xffff_ffff, 0xb),
            (reg::VERSION, 0, 0x0005_0014),
        ] {
            wr(&mut a, reg, written);
            assert_eq!(rd(&mut a, reg), read, "register {reg:#x}");
        }
    }

    #[test]
    fn narrow_and_unaligned_accesses_are_harmless() {
        let (mut a, _) = apic();
        let mut b = [0u8; 2];
        a.read(reg::SVR, &mut b);
        assert_eq!(b, [0xff, 0x01]);
        a.write(reg::TPR, &[0x20]);
        a.write(reg::TPR + 4, &0x30u32.to_le_bytes());
        assert_eq!(rd(&mut a, reg::TPR), 0);
    }

    #[test]
    fn priority_and_eoi_order_with_nested_vectors() {
        let (mut a, _) = apic();
        self_ipi(&mut a, 0x41);
        self_ipi(&mut a, 0x52);
        assert_eq!(rd(&mut a, reg::IRR + 0x20), (1 << 1) | (1 << 18));
        assert_eq!(a.acknowledge(), Some(0x52));
        assert_eq!(rd(&mut a, reg::PPR), 0x50);
        // 0x41 waits: its class is below the one in service.
        assert_eq!(a.acknowledge(), None);
        self_ipi(&mut a, 0x61);
        assert_eq!(a.acknowledge(), Some(0x61));
        assert_eq!(rd(&mut a, reg::ISR + 0x30), 1 << 1);
        wr(&mut a, reg::EOI, 0);
        assert_eq!(rd(&mut a, reg::ISR + 0x30), 0);
        assert_eq!(rd(&mut a, reg::ISR + 0x20), 1 << 18);
        wr(&mut a, reg::EOI, 0);
        assert_eq!(a.acknowledge(), Some(0x41));
        wr(&mut a, reg::EOI, 0);
        assert_eq!(rd(&mut a, reg::PPR), 0);
        assert!(a.take_level_eois().is_empty());
    }

    #[test]
    fn task_priority_holds_back_lower_classes() {
        let (mut a, _) = apic();
        wr(&mut a, reg::TPR, 0x57);
        self_ipi(&mut a, 0x5f);
        assert_eq!(rd(&mut a, reg::PPR), 0x57);
        assert_eq!(a.pending_vector(), None);
        wr(&mut a, reg::TPR, 0x4f);
        assert_eq!(a.acknowledge(), Some(0x5f));
    }

    #[test]
    fn software_disable_holds_requests_and_masks_the_lvt() {
        let (mut a, _) = apic();
        self_ipi(&mut a, 0x40);
        wr(&mut a, reg::SVR, 0xff);
        assert_eq!(a.pending_vector(), None);
        assert_eq!(rd(&mut a, reg::LVT_LINT0), 0x8700 | LVT_MASKED);
        assert!(!a.accepts_pic());
        wr(&mut a, reg::LVT_LINT0, 0x700);
        assert_eq!(rd(&mut a, reg::LVT_LINT0), 0x700 | LVT_MASKED);
        wr(&mut a, reg::SVR, 0x1ff);
        assert_eq!(a.acknowledge(), Some(0x40));
        wr(&mut a, reg::LVT_LINT0, 0x700);
        assert!(a.accepts_pic());
    }

    #[test]
    fn esr_latches_errors_on_write() {
        let (mut a, _) = apic();
        wr(&mut a, reg::ESR, 0);
        assert_eq!(rd(&mut a, reg::ESR), 0);
        assert_eq!(rd(&mut a, 0x3f0), 0);
        self_ipi(&mut a, 3);
        assert_eq!(rd(&mut a, reg::ESR), 0, "not visible before the next write");
        wr(&mut a, reg::ESR, 0);
        assert_eq!(
            rd(&mut a, reg::ESR),
            ESR_ILLEGAL_REGISTER | ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR
        );
        wr(&mut a, reg::ESR, 0);
        assert_eq!(rd(&mut a, reg::ESR), 0);
        assert_eq!(a.pending_vector(), None);
    }

    #[test]
    fn error_lvt_raises_its_vector() {
        let (mut a, _) = apic();
        wr(&mut a, reg::LVT_ERROR, 0xfe);
        let _ = rd(&mut a, 0x3f0);
        assert_eq!(a.acknowledge(), Some(0xfe));
    }

    #[test]
    fn icr_delivery_status_clears_and_destinations_match() {
        let (mut a, _) = apic();
        self_ipi(&mut a, 0x80);
        assert_eq!(rd(&mut a, reg::ICR_LOW) & DELIVERY_PENDING, 0);
        assert_eq!(a.acknowledge(), Some(0x80));
        // Physical destination 1 is another (absent) CPU; 0 is this one.
        wr(&mut a, reg::ICR_HIGH, 1 << 24);
        wr(&mut a, reg::ICR_LOW, 0x90);
        assert_eq!(a.pending_vector(), None);
        wr(&mut a, reg::ICR_HIGH, 0);
        wr(&mut a, reg::ICR_LOW, 0x90);
        assert_eq!(a.pending_vector(), Some(0x90));
        // Logical flat: LDR bit 0 set.
        wr(&mut a, reg::LDR, 1 << 24);
        wr(&mut a, reg::ICR_HIGH, 2 << 24);
        wr(&mut a, reg::ICR_LOW, (1 << 11) | 0xa0);
        assert_eq!(a.pending_vector(), Some(0x90));
        wr(&mut a, reg::ICR_HIGH, 3 << 24);
        wr(&mut a, reg::ICR_LOW, (1 << 11) | 0xa0);
        assert_eq!(a.pending_vector(), Some(0xa0));
        // All excluding self, INIT, start-up: nothing here.
        wr(&mut a, reg::ICR_LOW, (3 << 18) | 0xb0);
        wr(&mut a, reg::ICR_LOW, (3 << 18) | 0x4500);
        wr(&mut a, reg::ICR_LOW, (3 << 18) | 0x4608);
        assert_eq!(a.pending_vector(), Some(0xa0));
    }

    #[test]
    fn level_triggered_eois_are_collected_for_the_ioapic() {
        let (mut a, _) = apic();
        a.receive(&ApicMessage {
            vector: 0x31,
            mode: DeliveryMode::Fixed,
            level: true,
            dest: 0,
            logical: false,
        });
        assert_eq!(rd(&mut a, reg::TMR + 0x10), 1 << 17);
        assert_eq!(a.acknowledge(), Some(0x31));
        wr(&mut a, reg::EOI, 0);
        assert_eq!(a.take_level_eois(), [0x31]);
        assert!(a.take_level_eois().is_empty());
    }

    #[test]
    fn one_shot_timer_counts_down_and_fires_once() {
        for (divide, divisor) in [(0xb, 1), (0x0, 2), (0x3, 16), (0xa, 128)] {
            let (mut a, clock) = apic();
            wr(&mut a, reg::TIMER_DIVIDE, divide);
            wr(&mut a, reg::LVT_TIMER, 0xe0);
            wr(&mut a, reg::TIMER_INITIAL, 1000);
            let period = 1000 * divisor;
            assert_eq!(a.next_deadline_ns(), Some(period));
            clock.set(period / 4);
            assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 750, "divide {divide:#x}");
            assert_eq!(a.poll(period / 4), 0);
            clock.set(period);
            assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 0);
            assert_eq!(a.poll(period), 1);
            assert_eq!(a.acknowledge(), Some(0xe0));
            assert_eq!(a.next_deadline_ns(), None);
            assert_eq!(a.poll(10 * period), 0);
        }
    }

    #[test]
    fn periodic_timer_reloads_and_replays_late_periods() {
        let (mut a, clock) = apic();
        wr(&mut a, reg::TIMER_DIVIDE, 0x1); // by 4
        wr(&mut a, reg::LVT_TIMER, TIMER_PERIODIC | 0xe1);
        wr(&mut a, reg::TIMER_INITIAL, 250);
        assert_eq!(a.next_deadline_ns(), Some(1000));
        assert_eq!(a.poll(1000), 1);
        assert_eq!(a.next_deadline_ns(), Some(2000));
        assert_eq!(a.timer_backlog(), 0);
        clock.set(2500);
        assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 125);
        // Three more periods end before the first is taken: each is owed.
        assert_eq!(a.poll(4500), 3);
        assert_eq!(a.next_deadline_ns(), Some(5000));
        assert_eq!(a.timer_backlog(), 3);
        // Each acknowledge requests the next; it waits for the EOI of the one in service.
        for owed in (0..3).rev() {
            assert_eq!(a.acknowledge(), Some(0xe1));
            assert_eq!(a.timer_backlog(), owed);
            assert_eq!(a.acknowledge(), None, "held back by the vector in service");
            wr(&mut a, reg::EOI, 0);
        }
        assert_eq!(a.acknowledge(), Some(0xe1));
        wr(&mut a, reg::EOI, 0);
        assert_eq!(a.acknowledge(), None);
        wr(&mut a, reg::TIMER_INITIAL, 0);
        assert_eq!(a.next_deadline_ns(), None);
    }

    #[test]
    fn owed_periods_are_bounded_and_dropped_on_reprogramming() {
        let (mut a, _clock) = apic();
        wr(&mut a, reg::TIMER_DIVIDE, 0xb); // by 1: the count is in nanoseconds
        wr(&mut a, reg::LVT_TIMER, TIMER_PERIODIC | 0xe2);
        // A 4 ms period (HZ=250).
        wr(&mut a, reg::TIMER_INITIAL, 4_000_000);
        // Ten seconds without a poll (the host stopped the monitor): a second is owed.
        assert_eq!(a.poll(10_000_000_000), 2500);
        assert_eq!(a.timer_backlog(), 250);
        // A 1 µs period owes at most a thousand.
        wr(&mut a, reg::TIMER_INITIAL, 1000);
        assert_eq!(a.timer_backlog(), 0);
        a.poll(20_000_000_000);
        assert_eq!(a.timer_backlog(), 1000);
        // Reprogramming the LVT, or masking it, drops what the old timer owed.
        wr(&mut a, reg::LVT_TIMER, TIMER_PERIODIC | 0xe2);
        assert_eq!(a.timer_backlog(), 0);
        a.poll(30_000_000_000);
        wr(&mut a, reg::SVR, 0xff);
        assert_eq!(a.timer_backlog(), 0);
        // One-shot expiries are never owed.
        wr(&mut a, reg::SVR, SVR_ENABLE | 0xff);
        wr(&mut a, reg::LVT_TIMER, 0xe2);
        wr(&mut a, reg::TIMER_INITIAL, 1000);
        a.poll(40_000_000_000);
        wr(&mut a, reg::TIMER_INITIAL, 1000);
        a.poll(50_000_000_000);
        assert_eq!(a.timer_backlog(), 0);
    }

    #[test]
    fn masked_timer_counts_without_interrupting() {
        let (mut a, clock) = apic();
        wr(&mut a, reg::LVT_TIMER, LVT_MASKED | 0xe0);
        wr(&mut a, reg::TIMER_INITIAL, 100);
        clock.set(500);
        assert_eq!(a.poll(500), 1);
        assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 0);
        assert_eq!(a.pending_vector(), None);
    }

    #[test]
    fn divide_change_keeps_the_count() {
        let (mut a, clock) = apic();
        wr(&mut a, reg::TIMER_DIVIDE, 0xb);
        wr(&mut a, reg::TIMER_INITIAL, 1000);
        clock.set(400);
        wr(&mut a, reg::TIMER_DIVIDE, 0x0);
        assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 600);
        assert_eq!(a.next_deadline_ns(), Some(400 + 1200));
    }

    #[test]
    fn global_disable_is_final_and_hands_interrupts_to_the_pic() {
        let (mut a, _) = apic();
        wr(&mut a, reg::LVT_LINT0, LVT_MASKED | 0x700);
        assert!(!a.accepts_pic());
        self_ipi(&mut a, 0x40);
        a.set_apic_base(0xfee0_0000);
        assert!(!a.globally_enabled());
        assert!(a.accepts_pic());
        assert_eq!(a.pending_vector(), None);
        a.set_apic_base(0xfee0_0000 | APIC_BASE_ENABLE);
        assert!(!a.globally_enabled());
        self_ipi(&mut a, 0x40);
        assert_eq!(a.pending_vector(), None);
    }

    proptest::proptest! {
        /// Whatever a guest writes to and reads from the page, at whatever time, the APIC
        /// answers without panicking and only ever hands out vectors of 16 and above.
        #[test]
        fn arbitrary_register_traffic_is_survived(
            ops in proptest::collection::vec(
                (0u32..0x1000, proptest::sample::select(vec![1usize, 2, 4, 8]),
                 proptest::prelude::any::<u32>(), proptest::prelude::any::<bool>(), 0u64..1_000_000),
                1..300,
            )
        ) {
            let (mut a, clock) = apic();
            for (offset, size, value, is_write, dt) in ops {
                clock.advance(dt);
                let offset = offset.min(0x1000 - u32::try_from(size).unwrap());
                if is_write {
                    let bytes = u64::from(value).to_le_bytes();
                    a.write(offset, &bytes[..size]);
                } else {
                    let mut buf = [0u8; 8];
                    a.read(offset, &mut buf[..size]);
                }
                a.poll(clock.now_ns());
                if let Some(v) = a.acknowledge() {
                    proptest::prop_assert!(v >= 16);
                }
                let _ = a.take_level_eois();
                let _ = a.next_deadline_ns();
            }
        }
    }
}
