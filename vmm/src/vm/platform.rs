//! The platform part of a VM: the port and MMIO buses and the devices on them, the clock
//! and the host timer deadline that drive the PIT and the local APIC timers, interrupt
//! acknowledgement (the running processor's local APIC first, the 8259 through LINT0),
//! and serial input from the host.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::devices::{
    lock, pc, register_ide, register_pic, register_pit, BusError, Clock, Cmos, CpuSignals,
    DebugExit, DualPic, IdeChannel, IoApic, IsaLine, LapicWindow, Lapics, LocalApic, MmioBus,
    MonotonicClock, Pit, PortBus, PostPort, SerialPort, SharedPins, SystemWallClock, CMOS_BASE,
    CMOS_PORT_LEN, COM1_BASE, COM1_IRQ, DEBUG_EXIT_BASE, DEBUG_EXIT_LEN, ENTRY_LEVEL, ENTRY_MASKED,
    PIT_IRQ, POST_PORT, SERIAL_PORT_LEN,
};
use crate::devices::{
    A20Line, AcpiPm, CgaCrtc, I8042Port, PciHost, Port92, CGA_PORT_LEN, I8042, PCI_PORT_LEN,
};
use crate::devices::{
    FwCfg, ELCR_BASE, FW_CFG_PORT_LEN, PIC_MASTER_BASE, PIC_SLAVE_BASE, PIT_BASE,
    SYSTEM_CONTROL_PORT_B,
};
use crate::firmware::MachineLayout;
use crate::hostcpu::timer::{Kicker, TimerError, VcpuTimer};
use crate::hostcpu::HostCpu;

/// How long a halted vCPU sleeps at most before it looks again for work that may have
/// been signalled without waking it.
const HALT_POLL: Duration = Duration::from_millis(10);

/// The system PIT, counting host monotonic time.
pub type SystemPit = Pit<MonotonicClock, IsaLine>;
/// COM1, writing to wherever the VM's serial output goes.
pub type Com1 = SerialPort<IsaLine, Box<dyn Write + Send>>;
/// The local APIC, its timer counting host monotonic time.
pub type SystemLapic = LocalApic<MonotonicClock>;
/// The local APICs of every processor.
pub type SystemLapics = Lapics<MonotonicClock>;
/// The IOAPIC, delivering to the local APICs.
pub type SystemIoApic = IoApic<Arc<SystemLapics>>;

/// The names the MMIO devices have on the bus and in `--stats`.
pub const LAPIC_MMIO_NAME: &str = "mmio_lapic_accesses";
/// The IOAPIC's name on the MMIO bus.
pub const IOAPIC_MMIO_NAME: &str = "mmio_ioapic_accesses";

/// The `--stats` name of the port device registered at `base`.
pub fn port_device_name(base: u16) -> &'static str {
    match base {
        PIC_MASTER_BASE => "port_pic_master_accesses",
        PIC_SLAVE_BASE => "port_pic_slave_accesses",
        ELCR_BASE => "port_elcr_accesses",
        PIT_BASE => "port_pit_accesses",
        SYSTEM_CONTROL_PORT_B => "port_b_accesses",
        COM1_BASE => "port_com1_accesses",
        DEBUG_EXIT_BASE => "port_debug_exit_accesses",
        POST_PORT => "port_post_accesses",
        CMOS_BASE => "port_cmos_accesses",
        pc::IDE_PRIMARY_BASE | pc::IDE_PRIMARY_CTRL => "port_ide_accesses",
        pc::I8042_DATA | pc::I8042_CMD => "port_i8042_accesses",
        pc::SYSTEM_CONTROL_PORT_A => "port_92_accesses",
        pc::CGA_CRTC_INDEX => "port_cga_crtc_accesses",
        pc::PCI_CONFIG_ADDRESS => "port_pci_accesses",
        pc::PM_BASE => "port_acpi_pm_accesses",
        pc::FW_CFG_PORT_SEL => "port_fw_cfg_accesses",
        _ => "port_other_accesses",
    }
}

/// The primary IDE channel, interrupting through the 8259 and the IOAPIC.
pub type PrimaryIde = IdeChannel<IsaLine>;

/// The devices of one VM and the time that drives them.
pub struct Platform {
    /// The port bus the emulator's IN/OUT reach.
    pub ports: PortBus,
    /// The devices at guest-physical addresses without RAM (the local APIC, the IOAPIC).
    pub mmio: MmioBus,
    /// The 8259A pair.
    pub pic: Arc<Mutex<DualPic>>,
    /// The 8254.
    pub pit: Arc<Mutex<SystemPit>>,
    /// COM1.
    pub serial: Arc<Mutex<Com1>>,
    /// The primary IDE channel (drives are attached before the guest runs).
    pub ide: Arc<Mutex<PrimaryIde>>,
    /// The local APICs, one per processor.
    pub lapics: Arc<SystemLapics>,
    /// The IOAPIC.
    pub ioapic: Arc<Mutex<SystemIoApic>>,
    /// The host monotonic time the PIT and the APIC timer count.
    clock: MonotonicClock,
    /// The timer deadline the host timer is armed for.
    armed: Option<u64>,
    /// IA32_APIC_BASE as each local APIC last saw it.
    apic_base: Vec<u64>,
    /// When the running vCPU's time slice ends, when others wait for the thread.
    slice_deadline: Option<u64>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("ports", &self.ports)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// Builds the PC devices: PIC pair, local APIC and IOAPIC, PIT (with port B), COM1,
    /// CMOS/RTC, the primary IDE channel (no drives yet), the debug-exit port at 0xF4, the
    /// POST port, QEMU's fw_cfg and the legacy devices (i8042, port 0x92, CGA CRTC, PCI
    /// host bridge and reset control, ACPI PM block), with a local APIC for each of the
    /// layout's processors. `apic_base` is the bootstrap processor's IA32_APIC_BASE at
    /// reset.
    ///
    /// # Errors
    /// [`BusError`] if two devices claim the same ports or addresses (a monitor bug).
    pub fn new(
        serial_out: Box<dyn Write + Send>,
        layout: &MachineLayout,
        apic_base: u64,
    ) -> Result<Self, BusError> {
        let clock = MonotonicClock::new();
        let pic = Arc::new(Mutex::new(DualPic::new()));
        let lapics = Arc::new(Lapics::new(&clock, layout.cpus));
        let ioapic = Arc::new(Mutex::new(IoApic::new(lapics.clone())));
        let pins: SharedPins = ioapic.clone();
        let pit = Arc::new(Mutex::new(Pit::new(
            clock,
            IsaLine::new(&pic, &pins, PIT_IRQ),
        )));
        let serial = Arc::new(Mutex::new(SerialPort::new(
            IsaLine::new(&pic, &pins, COM1_IRQ),
            serial_out,
        )));
        let mut cmos = Cmos::new(SystemWallClock);
        cmos.set_memory_size(layout.ram_size);
        let mut ports = PortBus::new();
        register_pic(&mut ports, &pic)?;
        register_pit(&mut ports, &pit)?;
        ports.insert(COM1_BASE, SERIAL_PORT_LEN, serial.clone())?;
        ports.insert(
            DEBUG_EXIT_BASE,
            DEBUG_EXIT_LEN,
            Arc::new(Mutex::new(DebugExit::new())),
        )?;
        ports.insert(POST_PORT, 1, Arc::new(Mutex::new(PostPort::new())))?;
        ports.insert(CMOS_BASE, CMOS_PORT_LEN, Arc::new(Mutex::new(cmos)))?;
        let fw_cfg = FwCfg::new(layout);
        ports.insert(
            pc::FW_CFG_PORT_SEL,
            FW_CFG_PORT_LEN,
            Arc::new(Mutex::new(fw_cfg)),
        )?;
        let ide = Arc::new(Mutex::new(IdeChannel::new(IsaLine::new(
            &pic,
            &pins,
            pc::IDE_PRIMARY_IRQ,
        ))));
        register_ide(&mut ports, &ide)?;
        register_legacy(&mut ports, &pic, &pins, clock)?;
        let mut mmio = MmioBus::new();
        mmio.insert(
            pc::LAPIC_BASE,
            pc::LAPIC_LEN,
            LAPIC_MMIO_NAME,
            Arc::new(Mutex::new(LapicWindow(lapics.clone()))),
        )?;
        mmio.insert(
            pc::IOAPIC_BASE,
            pc::IOAPIC_LEN,
            IOAPIC_MMIO_NAME,
            ioapic.clone(),
        )?;
        Ok(Self {
            ports,
            mmio,
            pic,
            pit,
            serial,
            ide,
            apic_base: vec![apic_base; lapics.len()],
            lapics,
            ioapic,
            clock,
            armed: None,
            slice_deadline: None,
        })
    }

    /// Advances the PIT and the APIC timers to the clock's present (raising their
    /// interrupts), and hands the IOAPIC the EOIs of level-triggered vectors the guest
    /// wrote to a local APIC since the last poll.
    pub fn poll(&self) {
        let now = self.clock.now_ns();
        let pit_owes = {
            let mut pit = lock(&self.pit);
            pit.poll(now);
            pit.owed() > 0
        };
        if pit_owes && self.irq0_vectors() == (None, None) {
            lock(&self.pit).drop_owed();
        }
        for apic in self.lapics.iter() {
            let eois = {
                let mut apic = lock(apic);
                apic.poll(now);
                apic.take_level_eois()
            };
            // The APIC's lock is released: the IOAPIC locks it to deliver.
            for vector in eois {
                lock(&self.ioapic).eoi(vector);
            }
        }
    }

    /// The clock's present, in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// The host timer also fires at `deadline` (the end of a vCPU's time slice).
    pub fn set_slice_deadline(&mut self, deadline: Option<u64>) {
        self.slice_deadline = deadline;
    }

    /// Processor `index` runs from now on: the APIC page is its APIC.
    pub fn set_current_cpu(&self, index: usize) {
        self.lapics.set_current(index);
    }

    /// What IPIs asked of processor `index` (NMI, INIT, start-up) since the last call.
    pub fn take_signals(&self, index: usize) -> CpuSignals {
        self.lapics
            .get(index)
            .map(|apic| lock(apic).take_signals())
            .unwrap_or_default()
    }

    /// Whether processor `index` has an interrupt waiting (once its IF allows it), or an
    /// NMI, INIT or start-up IPI.
    pub fn wants_cpu(&self, index: usize, if_set: bool) -> bool {
        let Some(apic) = self.lapics.get(index) else {
            return false;
        };
        if lock(apic).has_signals() {
            return true;
        }
        if_set && self.interrupt_waits(apic)
    }

    /// Whether an interrupt waits at `apic`'s processor: the APIC's own, or the 8259's
    /// through LINT0.
    fn interrupt_waits(&self, apic: &Mutex<SystemLapic>) -> bool {
        let accepts_pic = {
            let apic = lock(apic);
            if apic.pending_vector().is_some() {
                return true;
            }
            apic.accepts_pic()
        };
        accepts_pic && lock(&self.pic).has_pending()
    }

    /// The guest wrote IA32_APIC_BASE (or may have): the local APIC follows its EN bit.
    pub fn sync_apic_base(&mut self, apic_base: u64) {
        let cpu = self.lapics.current_index();
        if let Some(seen) = self.apic_base.get_mut(cpu) {
            if *seen != apic_base {
                *seen = apic_base;
                lock(self.lapics.current()).set_apic_base(apic_base);
            }
        }
    }

    /// The vector to deliver, acknowledged: the local APIC's highest deliverable one, else
    /// the 8259's if LINT0 lets it through (virtual-wire mode).
    ///
    /// When that is IRQ 0's, the PIT raises the next tick it owes (see `Pit::poll`).
    pub fn acknowledge_interrupt(&self) -> Option<u8> {
        let pit_owes = lock(&self.pit).owed() > 0;
        let (pic_irq0, ioapic_irq0) = if pit_owes {
            self.irq0_vectors()
        } else {
            (None, None)
        };
        let from_apic = {
            let mut lapic = lock(self.lapics.current());
            lapic.acknowledge().ok_or_else(|| lapic.accepts_pic())
        };
        let (vector, irq0) = match from_apic {
            Ok(v) => (v, ioapic_irq0 == Some(v)),
            Err(true) => {
                let v = lock(&self.pic).acknowledge()?;
                (v, pic_irq0 == Some(v))
            }
            Err(false) => return None,
        };
        if irq0 {
            lock(&self.pit).acknowledged();
        }
        Some(vector)
    }

    /// The vectors IRQ 0 (the PIT) arrives with: through the 8259 (unmasked there, and
    /// some APIC lets the 8259 through), and through IOAPIC pin 2 (unmasked,
    /// edge-triggered).
    fn irq0_vectors(&self) -> (Option<u8>, Option<u8>) {
        let pic = {
            let pic = lock(&self.pic);
            (pic.master.imr & (1 << PIT_IRQ) == 0).then_some(pic.master.vector_base | PIT_IRQ)
        };
        let pic = pic.filter(|_| self.lapics.iter().any(|a| lock(a).accepts_pic()));
        let ioapic = lock(&self.ioapic)
            .entry(pc::isa_irq_to_gsi(PIT_IRQ))
            .filter(|e| e & (ENTRY_MASKED | ENTRY_LEVEL) == 0)
            .map(|e| e.to_le_bytes()[0]);
        (pic, ioapic)
    }

    /// Whether an interrupt waits for the CPU (once its IF allows it).
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_waits(self.lapics.current())
    }

    /// The earliest time a timer (the PIT's channel 0, the APIC timer) needs a poll.
    fn next_deadline_ns(&self) -> Option<u64> {
        let pit = lock(&self.pit).next_deadline_ns();
        let apics = self
            .lapics
            .iter()
            .filter_map(|a| lock(a).next_deadline_ns());
        pit.into_iter()
            .chain(apics)
            .chain(self.slice_deadline)
            .min()
    }

    /// Sleeps until the next timer deadline or until `ready` (asked after every poll)
    /// says a processor has work, without spinning.
    pub fn wait_for_event(&self, cpu: &HostCpu, ready: impl Fn(&Self) -> bool) {
        loop {
            self.poll();
            if ready(self) || cpu.take_pending() {
                return;
            }
            let now = self.clock.now_ns();
            let nap = match self.next_deadline_ns() {
                Some(d) if d <= now => return,
                Some(d) => Duration::from_nanos(d - now).min(HALT_POLL),
                None => HALT_POLL,
            };
            // A kick (serial input) interrupts the sleep with EINTR.
            std::thread::sleep(nap);
        }
    }

    /// Arms the host timer for the next timer deadline, when that changed.
    ///
    /// # Errors
    /// The host refused the timer.
    pub fn arm_timer(&mut self, timer: &VcpuTimer) -> Result<(), TimerError> {
        let deadline = self.next_deadline_ns();
        if deadline == self.armed {
            return Ok(());
        }
        self.armed = deadline;
        match deadline {
            None => timer.disarm(),
            Some(d) => {
                let now = self.clock.now_ns();
                // A zero value would disarm the timer: fire "now" as 1 µs.
                let delay = Duration::from_nanos(d.saturating_sub(now).max(1_000));
                timer.arm(delay, Duration::ZERO)
            }
        }
    }

    /// A handle that feeds COM1 from another thread.
    pub fn serial_input(&self) -> SerialInput {
        SerialInput {
            serial: self.serial.clone(),
        }
    }
}

/// The legacy PC devices: the i8042 and port 0x92 (one A20 line), the CGA CRTC, PCI
/// configuration mechanism #1 with the host bridge and reset control, the ACPI PM block.
fn register_legacy(
    ports: &mut PortBus,
    pic: &Arc<Mutex<DualPic>>,
    pins: &SharedPins,
    clock: MonotonicClock,
) -> Result<(), BusError> {
    let a20 = A20Line::new();
    let i8042 = Arc::new(Mutex::new(I8042::new(
        IsaLine::new(pic, pins, pc::KBD_IRQ),
        IsaLine::new(pic, pins, pc::AUX_IRQ),
        a20.clone(),
    )));
    ports.insert(
        pc::I8042_DATA,
        1,
        Arc::new(Mutex::new(I8042Port::data(&i8042))),
    )?;
    ports.insert(
        pc::I8042_CMD,
        1,
        Arc::new(Mutex::new(I8042Port::command(&i8042))),
    )?;
    ports.insert(
        pc::SYSTEM_CONTROL_PORT_A,
        1,
        Arc::new(Mutex::new(Port92::new(a20))),
    )?;
    ports.insert(
        pc::CGA_CRTC_INDEX,
        CGA_PORT_LEN,
        Arc::new(Mutex::new(CgaCrtc::new())),
    )?;
    ports.insert(
        pc::PCI_CONFIG_ADDRESS,
        PCI_PORT_LEN,
        Arc::new(Mutex::new(PciHost::new())),
    )?;
    ports.insert(
        pc::PM_BASE,
        pc::PM_BLOCK_LEN,
        Arc::new(Mutex::new(AcpiPm::new(clock))),
    )
}

/// Feeds bytes into COM1's receiver from another thread.
#[derive(Clone)]
pub struct SerialInput {
    serial: Arc<Mutex<Com1>>,
}

impl std::fmt::Debug for SerialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialInput")
    }
}

impl SerialInput {
    /// Queues as much of `bytes` as the receive FIFO takes; returns how many it took.
    pub fn feed(&self, bytes: &[u8]) -> usize {
        lock(&self.serial).enqueue_input(bytes)
    }
}

/// Reads the host's standard input on a thread of its own and feeds it to COM1, kicking
/// the vCPU so the receive interrupt is delivered promptly. Ends at end of input.
pub fn spawn_stdin_reader(input: SerialInput, vcpu: Kicker) -> std::io::Result<()> {
    spawn_serial_reader(input, vcpu, std::io::stdin())
}

/// [`spawn_stdin_reader`] for any byte source, such as a terminal whose escape keys the
/// source handles itself. Ends at end of input or at a read error.
pub fn spawn_serial_reader(
    input: SerialInput,
    vcpu: Kicker,
    mut source: impl Read + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                let n = match source.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut rest = buf.get(..n).unwrap_or_default();
                while !rest.is_empty() {
                    let took = input.feed(rest);
                    rest = rest.get(took..).unwrap_or_default();
                    let _ = vcpu.kick();
                    if took == 0 {
                        // The FIFO is full: the guest has not drained it yet.
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::GuestPhys;

    /// A one-processor PC whose 8259 pair is initialised at vectors 0x20/0x28 with every
    /// input masked, and whose PIT interrupts every 20 ms (mode 2).
    fn pc_with_pit() -> Platform {
        let mut p = Platform::new(Box::new(std::io::sink()), &MachineLayout::pc(1 << 20), 0)
            .expect("the PC's devices fit");
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0xff),
        ] {
            p.ports.write(port, 1, v);
        }
        let count: u32 = 23_864; // 20 ms at 1.193182 MHz
        p.ports.write(0x43, 1, 0x34);
        p.ports.write(0x40, 1, count & 0xff);
        p.ports.write(0x40, 1, count >> 8);
        p
    }

    /// Ticks the platform polled too late to deliver one by one are taken one per
    /// acknowledge, each after the previous one's EOI.
    fn owed_ticks_are_taken(p: &mut Platform, vector: u8, eoi: impl Fn(&mut Platform)) {
        std::thread::sleep(Duration::from_millis(110));
        p.poll();
        let owed = lock(&p.pit).owed();
        assert!(owed >= 5, "five periods went by: {owed} owed");
        for left in (0..owed).rev() {
            assert_eq!(p.acknowledge_interrupt(), Some(vector));
            assert_eq!(p.acknowledge_interrupt(), None, "in service until its EOI");
            assert_eq!(lock(&p.pit).owed(), left);
            eoi(p);
        }
        assert_eq!(p.acknowledge_interrupt(), None, "nothing more is owed");
    }

    #[test]
    fn owed_pit_ticks_come_through_the_8259() {
        let mut p = pc_with_pit();
        p.ports.write(0x21, 1, 0xfe);
        let eoi = |p: &mut Platform| {
            p.ports.write(0x20, 1, 0x20);
        };
        owed_ticks_are_taken(&mut p, 0x20, eoi);
    }

    #[test]
    fn owed_pit_ticks_come_through_the_ioapic() {
        let mut p = pc_with_pit();
        // IOAPIC pin 2 to vector 0x30, edge-triggered, physical destination 0.
        let (sel, win) = (pc::IOAPIC_BASE, GuestPhys(pc::IOAPIC_BASE.raw() + 0x10));
        p.mmio.write(sel, &0x14u32.to_le_bytes());
        p.mmio.write(win, &0x30u32.to_le_bytes());
        let eoi = |p: &mut Platform| {
            p.mmio
                .write(GuestPhys(pc::LAPIC_BASE.raw() + 0xb0), &0u32.to_le_bytes());
        };
        owed_ticks_are_taken(&mut p, 0x30, eoi);
    }

    #[test]
    fn nothing_is_owed_while_irq0_reaches_no_processor() {
        let p = pc_with_pit();
        std::thread::sleep(Duration::from_millis(50));
        p.poll();
        assert_eq!(lock(&p.pit).owed(), 0);
        assert_eq!(p.acknowledge_interrupt(), None);
    }
}
