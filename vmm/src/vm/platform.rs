//! The platform part of a VM: the port bus and the devices on it, the clock and the host
//! timer deadline that drive the PIT, interrupt acknowledgement, and serial input from
//! the host.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::devices::{
    lock, register_pic, register_pit, BusError, Clock, Cmos, DebugExit, DualPic, MmioBus,
    MonotonicClock, PicLine, Pit, PortBus, PostPort, SerialPort, SystemWallClock, CMOS_BASE,
    CMOS_PORT_LEN, COM1_BASE, COM1_IRQ, DEBUG_EXIT_BASE, DEBUG_EXIT_LEN, PIT_IRQ, POST_PORT,
    SERIAL_PORT_LEN,
};
use crate::devices::{pc, FwCfg, FW_CFG_PORT_LEN};
use crate::firmware::MachineLayout;
use crate::hostcpu::timer::{Kicker, TimerError, VcpuTimer};
use crate::hostcpu::HostCpu;

/// How long a halted vCPU sleeps at most before it looks again for work that may have
/// been signalled without waking it.
const HALT_POLL: Duration = Duration::from_millis(10);

/// The system PIT, counting host monotonic time.
pub type SystemPit = Pit<MonotonicClock, PicLine>;
/// COM1, writing to wherever the VM's serial output goes.
pub type Com1 = SerialPort<PicLine, Box<dyn Write + Send>>;

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
    /// The host monotonic time the PIT counts.
    clock: MonotonicClock,
    /// The PIT deadline the host timer is armed for.
    armed: Option<u64>,
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
    /// Builds the PC devices: PIC pair, PIT (with port B), COM1, CMOS/RTC, the
    /// debug-exit port at 0xF4, the POST port and QEMU's fw_cfg.
    ///
    /// # Errors
    /// [`BusError`] if two devices claim the same ports (a monitor bug).
    pub fn new(serial_out: Box<dyn Write + Send>, ram_size: u64) -> Result<Self, BusError> {
        let clock = MonotonicClock::new();
        let pic = Arc::new(Mutex::new(DualPic::new()));
        let pit = Arc::new(Mutex::new(Pit::new(clock, PicLine::new(&pic, PIT_IRQ))));
        let serial = Arc::new(Mutex::new(SerialPort::new(
            PicLine::new(&pic, COM1_IRQ),
            serial_out,
        )));
        let mut cmos = Cmos::new(SystemWallClock);
        cmos.set_memory_size(ram_size);
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
        let fw_cfg = FwCfg::new(&MachineLayout::pc(ram_size));
        ports.insert(
            pc::FW_CFG_PORT_SEL,
            FW_CFG_PORT_LEN,
            Arc::new(Mutex::new(fw_cfg)),
        )?;
        Ok(Self {
            ports,
            mmio: MmioBus::new(),
            pic,
            pit,
            serial,
            clock,
            armed: None,
        })
    }

    /// Advances the PIT to the clock's present (raising IRQ 0 on the PIC for its edges).
    pub fn poll(&self) {
        lock(&self.pit).poll(self.clock.now_ns());
    }

    /// The vector of the highest-priority pending PIC interrupt, acknowledged.
    pub fn acknowledge_interrupt(&self) -> Option<u8> {
        lock(&self.pic).acknowledge()
    }

    /// Sleeps until the PIT's next edge or an interrupt request, without spinning.
    pub fn wait_for_event(&self, cpu: &HostCpu) {
        loop {
            self.poll();
            if lock(&self.pic).has_pending() || cpu.take_pending() {
                return;
            }
            let now = self.clock.now_ns();
            let nap = match lock(&self.pit).next_deadline_ns() {
                Some(d) if d <= now => return,
                Some(d) => Duration::from_nanos(d - now).min(HALT_POLL),
                None => HALT_POLL,
            };
            // A kick (serial input) interrupts the sleep with EINTR.
            std::thread::sleep(nap);
        }
    }

    /// Arms the host timer for the PIT's next edge, when that changed.
    ///
    /// # Errors
    /// The host refused the timer.
    pub fn arm_timer(&mut self, timer: &VcpuTimer) -> Result<(), TimerError> {
        let deadline = lock(&self.pit).next_deadline_ns();
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
    std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let took = input.feed(rest);
                    rest = &rest[took..];
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
