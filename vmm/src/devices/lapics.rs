//! The local APICs of a machine with several processors, and the APIC bus between them.
//!
//! Every processor has its own [`LocalApic`]; they all answer at the same guest-physical
//! page, each to its own processor, so the page is one [`LapicWindow`] that forwards an
//! access to the APIC of the processor running now ([`Lapics::set_current`]). An ICR write
//! there may send IPIs to other processors: the window routes them once the sender's lock
//! is released (lock order: never two APICs at once). The IOAPIC's messages reach every
//! APIC they address ([`ApicBus`] for `Arc<Lapics>`).
//!
//! Delivery is immediate and in program order: the processors are multiplexed on one host
//! thread, so every processor sees every other's stores and IPIs in one sequential order.
//! Lowest-priority messages go to the first addressed processor (by APIC ID) whose
//! priority is lowest, with no focus processor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::clock::Clock;
use super::lapic::{ApicBus, ApicMessage, DeliveryMode, Ipi, IpiDest, IpiKind, LocalApic};
use super::lock;
use super::mmio::MmioDevice;

/// The local APICs of a machine, one per processor (index = APIC ID).
#[derive(Debug)]
pub struct Lapics<C> {
    cpus: Vec<Arc<Mutex<LocalApic<C>>>>,
    /// The bootstrap processor's, also `cpus[0]`.
    bsp: Arc<Mutex<LocalApic<C>>>,
    /// The processor whose accesses the APIC page sees.
    current: AtomicUsize,
}

impl<C: Clock + Clone> Lapics<C> {
    /// `count` processors' APICs (at least one): the bootstrap processor's as firmware
    /// leaves it ([`LocalApic::new`]), the others at power-up with APIC IDs 1, 2, …
    pub fn new(clock: &C, count: u8) -> Self {
        let bsp = Arc::new(Mutex::new(LocalApic::new(clock.clone())));
        let aps =
            (1..count.max(1)).map(|id| Arc::new(Mutex::new(LocalApic::new_ap(clock.clone(), id))));
        let cpus = std::iter::once(bsp.clone()).chain(aps).collect();
        Self {
            cpus,
            bsp,
            current: AtomicUsize::new(0),
        }
    }

    /// How many processors there are.
    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    /// Never: there is always a bootstrap processor.
    pub fn is_empty(&self) -> bool {
        self.cpus.is_empty()
    }

    /// The APIC of processor `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&Arc<Mutex<LocalApic<C>>>> {
        self.cpus.get(index)
    }

    /// Every APIC, by processor.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Mutex<LocalApic<C>>>> {
        self.cpus.iter()
    }

    /// The processor running now.
    pub fn current_index(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The APIC of the processor running now.
    pub fn current(&self) -> &Arc<Mutex<LocalApic<C>>> {
        // `set_current` keeps the index in range.
        self.cpus.get(self.current_index()).unwrap_or(&self.bsp)
    }

    /// Processor `index` runs from now on (ignored when there is no such processor).
    pub fn set_current(&self, index: usize) {
        if index < self.cpus.len() {
            self.current.store(index, Ordering::Relaxed);
        }
    }

    /// Delivers the IPIs processor `from` sent to the others they address.
    pub fn route(&self, from: usize, ipis: &[Ipi]) {
        for ipi in ipis {
            let targets = self.cpus.iter().enumerate().filter(|&(i, _)| i != from);
            match ipi.dest {
                IpiDest::AllOthers => {
                    for (_, apic) in targets {
                        lock(apic).receive_ipi(ipi);
                    }
                }
                IpiDest::Field { dest, logical } => {
                    let addressed: Vec<_> = targets
                        .filter(|(_, apic)| lock(apic).addressed_by(dest, logical))
                        .map(|(_, apic)| apic)
                        .collect();
                    let lowest = ipi.kind == IpiKind::LowestPriority;
                    for apic in arbitrate(&addressed, lowest) {
                        lock(apic).receive_ipi(ipi);
                    }
                }
            }
        }
    }
}

/// Who takes a message `addressed` APICs match: all of them, or (`lowest`) the first
/// with the lowest processor priority.
fn arbitrate<'a, C: Clock + Clone>(
    addressed: &[&'a Arc<Mutex<LocalApic<C>>>],
    lowest: bool,
) -> Vec<&'a Arc<Mutex<LocalApic<C>>>> {
    if lowest {
        lowest_priority(addressed).into_iter().collect()
    } else {
        addressed.to_vec()
    }
}

/// Of `apics`, the first with the lowest processor priority.
fn lowest_priority<'a, C: Clock + Clone>(
    apics: &[&'a Arc<Mutex<LocalApic<C>>>],
) -> Option<&'a Arc<Mutex<LocalApic<C>>>> {
    apics.iter().copied().min_by_key(|apic| lock(apic).ppr())
}

impl<C: Clock + Clone> ApicBus for Arc<Lapics<C>> {
    fn deliver(&self, msg: &ApicMessage) {
        let addressed: Vec<_> = self
            .cpus
            .iter()
            .filter(|apic| lock(apic).addressed_by(msg.dest, msg.logical))
            .collect();
        let lowest = msg.mode == DeliveryMode::LowestPriority;
        for apic in arbitrate(&addressed, lowest) {
            lock(apic).receive(msg);
        }
    }
}

/// The APIC page as the running processor sees it: its own APIC.
#[derive(Debug)]
pub struct LapicWindow<C>(pub Arc<Lapics<C>>);

impl<C: Clock + Clone> MmioDevice for LapicWindow<C> {
    fn read(&mut self, offset: u32, data: &mut [u8]) {
        lock(self.0.current()).read(offset, data);
    }

    fn write(&mut self, offset: u32, data: &[u8]) {
        let from = self.0.current_index();
        let sent = {
            let mut apic = lock(self.0.current());
            apic.write(offset, data);
            apic.take_outbox()
        };
        self.0.route(from, &sent);
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock::fake::FakeClock;
    use super::super::lapic::reg;
    use super::*;

    fn machine(n: u8) -> (Arc<Lapics<FakeClock>>, LapicWindow<FakeClock>) {
        let lapics = Arc::new(Lapics::new(&FakeClock::default(), n));
        (lapics.clone(), LapicWindow(lapics))
    }

    fn wr(w: &mut LapicWindow<FakeClock>, reg: u32, v: u32) {
        w.write(reg, &v.to_le_bytes());
    }

    fn rd(w: &mut LapicWindow<FakeClock>, reg: u32) -> u32 {
        let mut b = [0; 4];
        w.read(reg, &mut b);
        u32::from_le_bytes(b)
    }

    /// Processor `cpu` software-enables its APIC, as an OS does on every processor.
    fn enable(lapics: &Lapics<FakeClock>, w: &mut LapicWindow<FakeClock>, cpu: usize) {
        lapics.set_current(cpu);
        wr(w, reg::SVR, 0x1ff);
    }

    fn send(w: &mut LapicWindow<FakeClock>, dest: u8, low: u32) {
        wr(w, reg::ICR_HIGH, u32::from(dest) << 24);
        wr(w, reg::ICR_LOW, low);
    }

    fn pending(lapics: &Lapics<FakeClock>, cpu: usize) -> Option<u8> {
        lock(lapics.get(cpu).unwrap()).pending_vector()
    }

    #[test]
    fn each_processor_sees_its_own_apic_id() {
        let (lapics, mut w) = machine(3);
        for cpu in 0..3u32 {
            lapics.set_current(cpu as usize);
            assert_eq!(rd(&mut w, reg::ID) >> 24, cpu);
        }
        lapics.set_current(7);
        assert_eq!(lapics.current_index(), 2, "no processor 7");
    }

    #[test]
    fn fixed_ipis_by_physical_id_logical_mask_and_shorthands() {
        let (lapics, mut w) = machine(4);
        for cpu in 0..4 {
            enable(&lapics, &mut w, cpu);
            wr(&mut w, reg::LDR, 1 << (24 + cpu));
        }
        lapics.set_current(0);
        // Physical destination 2.
        send(&mut w, 2, 0x40);
        assert_eq!(
            (0..4).map(|c| pending(&lapics, c)).collect::<Vec<_>>(),
            [None, None, Some(0x40), None]
        );
        lock(lapics.get(2).unwrap()).acknowledge();
        // Logical, flat model: processors 1 and 3.
        send(&mut w, 0b1010, (1 << 11) | 0x41);
        assert_eq!(
            (0..4).map(|c| pending(&lapics, c)).collect::<Vec<_>>(),
            [None, Some(0x41), None, Some(0x41)]
        );
        // All excluding self, sent by processor 3.
        lapics.set_current(3);
        send(&mut w, 0, (3 << 18) | 0x50);
        assert_eq!(pending(&lapics, 0), Some(0x50));
        assert_eq!(pending(&lapics, 2), Some(0x50));
        assert_eq!(pending(&lapics, 3), Some(0x41), "not to itself");
        // All including self.
        lapics.set_current(0);
        send(&mut w, 0, (2 << 18) | 0x60);
        assert!((0..4).all(|c| pending(&lapics, c) == Some(0x60)));
    }

    #[test]
    fn init_resets_the_target_and_startup_carries_the_page() {
        let (lapics, mut w) = machine(2);
        enable(&lapics, &mut w, 1);
        lapics.set_current(0);
        // INIT assert (level, assert), then INIT de-assert, which does nothing.
        send(&mut w, 1, 0x0000_c500);
        send(&mut w, 1, 0x0000_8500);
        {
            let mut ap = lock(lapics.get(1).unwrap());
            assert!(ap.take_signals().init);
            assert_eq!(ap.id(), 1, "INIT keeps the APIC ID");
        }
        lapics.set_current(1);
        assert_eq!(
            rd(&mut w, reg::SVR),
            0xff,
            "back to power-up: software-disabled"
        );
        lapics.set_current(0);
        send(&mut w, 1, 0x0000_0608);
        let signals = lock(lapics.get(1).unwrap()).take_signals();
        assert_eq!(signals.startup, Some(8));
        assert!(!signals.init);
        assert!(!lock(lapics.get(0).unwrap()).has_signals());
    }

    #[test]
    fn nmi_to_another_and_to_self() {
        let (lapics, mut w) = machine(2);
        lapics.set_current(0);
        send(&mut w, 1, 0x400);
        assert!(lock(lapics.get(1).unwrap()).take_signals().nmi);
        send(&mut w, 0, (1 << 18) | 0x400);
        assert!(lock(lapics.get(0).unwrap()).take_signals().nmi);
        assert!(!lock(lapics.get(1).unwrap()).has_signals());
    }

    #[test]
    fn ioapic_messages_reach_the_addressed_processors() {
        let (lapics, mut w) = machine(3);
        for cpu in 0..3 {
            enable(&lapics, &mut w, cpu);
        }
        let msg = |dest, mode| ApicMessage {
            vector: 0x30,
            mode,
            level: false,
            dest,
            logical: false,
        };
        lapics.deliver(&msg(1, DeliveryMode::Fixed));
        assert_eq!(pending(&lapics, 1), Some(0x30));
        assert_eq!(pending(&lapics, 0), None);
        lapics.deliver(&msg(0xff, DeliveryMode::LowestPriority));
        assert_eq!(
            pending(&lapics, 0),
            Some(0x30),
            "lowest priority: one processor"
        );
        assert_eq!(pending(&lapics, 2), None);
    }
}
