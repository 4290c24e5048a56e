//! The cascaded 8259A programmable interrupt controllers of the PC/AT.
//!
//! The model follows the Intel 8259A data sheet (and QEMU's `i8259.c` where the data
//! sheet leaves room): ICW1–ICW4 initialisation, OCW1 (mask), OCW2 (EOI, rotation),
//! OCW3 (IRR/ISR read select, poll, special mask), auto-EOI, edge/level triggering
//! (ICW1.LTIM or the ELCR), fully nested priority with rotation, and the cascade of the
//! slave onto master input 2.

use std::sync::{Arc, Mutex};

use super::bus::{BusError, PortAction, PortBus, PortDevice};
use super::lock;

/// Master command/data ports 0x20–0x21.
pub const PIC_MASTER_BASE: u16 = 0x20;
/// Slave command/data ports 0xA0–0xA1.
pub const PIC_SLAVE_BASE: u16 = 0xa0;
/// Edge/level control registers 0x4D0 (master) and 0x4D1 (slave).
pub const ELCR_BASE: u16 = 0x4d0;
/// The master input the slave's output is wired to.
pub const PIC_CASCADE_IRQ: u8 = 2;

/// Ports per controller (command at offset 0, data at offset 1).
const PIC_PORT_LEN: u16 = 2;
/// ELCR ports (one per controller).
const ELCR_PORT_LEN: u16 = 2;
/// Inputs per controller.
const LINES: u8 = 8;
/// `get_priority` result meaning "no bit set".
const NO_PRIORITY: u8 = 8;
/// The input a controller reports when an INTA finds no request (spurious interrupt).
const SPURIOUS_LINE: u8 = 7;

// Command-port bit layout (8259A data sheet).
const ICW1: u8 = 0x10;
const ICW1_IC4: u8 = 0x01;
const ICW1_SNGL: u8 = 0x02;
const ICW1_LTIM: u8 = 0x08;
const OCW3: u8 = 0x08;
const OCW3_RIS: u8 = 0x01;
const OCW3_RR: u8 = 0x02;
const OCW3_P: u8 = 0x04;
const OCW3_SMM: u8 = 0x20;
const OCW3_ESMM: u8 = 0x40;
const ICW4_AEOI: u8 = 0x02;
const ICW4_SFNM: u8 = 0x10;
/// Poll-mode result flag: an interrupt was pending.
const POLL_PENDING: u8 = 0x80;
/// ICW2 supplies the vector's top five bits; the input number fills the rest.
const VECTOR_BASE_MASK: u8 = 0xf8;
/// ELCR bits that exist: IRQ 0, 1, 2 (master) and 8, 13 (slave) are always edge.
const ELCR_MASK_MASTER: u8 = 0xf8;
const ELCR_MASK_SLAVE: u8 = 0xde;

/// Which initialisation command word the data port expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum InitState {
    /// Initialised: data-port writes are OCW1.
    #[default]
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A. Plain state, printable and comparable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pic8259 {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register (OCW1).
    pub imr: u8,
    /// Input levels seen last, for edge detection.
    pub last_level: u8,
    /// Edge/level control register (1 = level).
    pub elcr: u8,
    elcr_mask: u8,
    /// Vector of input 0 (ICW2, low three bits clear).
    pub vector_base: u8,
    /// The input that currently has the lowest priority, plus one (rotation state).
    priority_add: u8,
    init_state: InitState,
    icw4_needed: bool,
    single: bool,
    level_triggered: bool,
    /// Reads of the command port return ISR (else IRR).
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
}

impl Pic8259 {
    fn new(elcr_mask: u8) -> Self {
        Self {
            elcr_mask,
            ..Default::default()
        }
    }

    /// ICW1 resets everything but the ELCR (and level inputs that stay asserted).
    fn init_reset(&mut self) {
        let keep_level = self.irr & self.elcr;
        *self = Self {
            irr: keep_level,
            elcr: self.elcr,
            elcr_mask: self.elcr_mask,
            ..Default::default()
        };
    }

    fn is_level(&self, line: u8) -> bool {
        self.level_triggered || self.elcr & (1 << line) != 0
    }

    fn set_line(&mut self, line: u8, level: bool) {
        let bit = 1u8 << line;
        if self.is_level(line) {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && self.last_level & bit == 0 {
            // Edge mode latches the rising edge; the request stays until acknowledged.
            self.irr |= bit;
        }
        if level {
            self.last_level |= bit;
        } else {
            self.last_level &= !bit;
        }
    }

    /// Priority (0 = highest) of the highest-priority bit in `mask`, under rotation.
    fn priority(&self, mask: u8) -> u8 {
        if mask == 0 {
            return NO_PRIORITY;
        }
        (0..LINES)
            .find(|p| mask & (1 << ((p + self.priority_add) & 7)) != 0)
            .unwrap_or(NO_PRIORITY)
    }

    /// The input the controller would interrupt for, given its state.
    fn pending_line(&self, is_master: bool) -> Option<u8> {
        let req = self.priority(self.irr & !self.imr);
        if req == NO_PRIORITY {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            // Special mask mode: masked in-service levels do not block lower ones.
            in_service &= !self.imr;
        }
        if self.special_fully_nested && is_master {
            // The slave may interrupt again while one of its inputs is in service.
            in_service &= !(1 << PIC_CASCADE_IRQ);
        }
        (req < self.priority(in_service)).then_some((req + self.priority_add) & 7)
    }

    /// The INTA cycle for `line`: move it to in service (unless auto-EOI) and drop an
    /// edge request.
    fn ack(&mut self, line: u8) {
        let bit = 1u8 << line;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (line + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        if !self.is_level(line) {
            self.irr &= !bit;
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & ICW1 != 0 {
            self.init_reset();
            self.icw4_needed = value & ICW1_IC4 != 0;
            self.single = value & ICW1_SNGL != 0;
            self.level_triggered = value & ICW1_LTIM != 0;
            self.init_state = InitState::Icw2;
        } else if value & OCW3 != 0 {
            if value & OCW3_P != 0 {
                self.poll = true;
            }
            if value & OCW3_RR != 0 {
                self.read_isr = value & OCW3_RIS != 0;
            }
            if value & OCW3_ESMM != 0 {
                self.special_mask = value & OCW3_SMM != 0;
            }
        } else {
            self.write_ocw2(value);
        }
    }

    fn write_ocw2(&mut self, value: u8) {
        let line = value & 7;
        match value >> 5 {
            // Clear / set rotate in auto-EOI mode.
            0 => self.rotate_on_auto_eoi = false,
            4 => self.rotate_on_auto_eoi = true,
            // Non-specific EOI, optionally rotating.
            cmd @ (1 | 5) => {
                let p = self.priority(self.isr);
                if p != NO_PRIORITY {
                    let served = (p + self.priority_add) & 7;
                    self.isr &= !(1 << served);
                    if cmd == 5 {
                        self.priority_add = (served + 1) & 7;
                    }
                }
            }
            // Specific EOI.
            3 => self.isr &= !(1 << line),
            // Set priority: `line` becomes the lowest.
            6 => self.priority_add = (line + 1) & 7,
            // Rotate on specific EOI.
            7 => {
                self.isr &= !(1 << line);
                self.priority_add = (line + 1) & 7;
            }
            // 2: no operation.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_state {
            InitState::Ready => self.imr = value,
            InitState::Icw2 => {
                self.vector_base = value & VECTOR_BASE_MASK;
                self.init_state = match (self.single, self.icw4_needed) {
                    (false, _) => InitState::Icw3,
                    (true, true) => InitState::Icw4,
                    (true, false) => InitState::Ready,
                };
            }
            // ICW3 describes the wiring, which is fixed on the PC.
            InitState::Icw3 => {
                self.init_state = if self.icw4_needed {
                    InitState::Icw4
                } else {
                    InitState::Ready
                };
            }
            InitState::Icw4 => {
                self.auto_eoi = value & ICW4_AEOI != 0;
                self.special_fully_nested = value & ICW4_SFNM != 0;
                self.init_state = InitState::Ready;
            }
        }
    }
}

/// The master/slave 8259A pair of the PC/AT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DualPic {
    /// The master (IRQ 0–7, the CPU's INTR).
    pub master: Pic8259,
    /// The slave (IRQ 8–15, cascaded on master IRQ 2).
    pub slave: Pic8259,
}

impl Default for DualPic {
    fn default() -> Self {
        Self::new()
    }
}

/// Which register block a port adapter exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PicPorts {
    Master,
    Slave,
    Elcr,
}

impl DualPic {
    /// Both controllers in their power-on state (all inputs edge-triggered, unmasked,
    /// vector base 0 until the guest initialises them).
    pub fn new() -> Self {
        Self {
            master: Pic8259::new(ELCR_MASK_MASTER),
            slave: Pic8259::new(ELCR_MASK_SLAVE),
        }
    }

    /// Drives input `irq` (0–15) to `level`. Numbers above 15 are ignored, and so is 2:
    /// that input carries the slave's output (ISA cards wired to IRQ 2 reach IRQ 9).
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            PIC_CASCADE_IRQ => return,
            0..=7 => self.master.set_line(irq, level),
            8..=15 => self.slave.set_line(irq - LINES, level),
            _ => return,
        }
        self.update_cascade();
    }

    /// The slave's INT output is the master's input 2.
    fn update_cascade(&mut self) {
        let slave_out = self.slave.pending_line(false).is_some();
        self.master.set_line(PIC_CASCADE_IRQ, slave_out);
    }

    /// Whether the master asserts INTR: an unmasked request with priority over everything
    /// in service.
    pub fn has_pending(&self) -> bool {
        self.master.pending_line(true).is_some()
    }

    /// The interrupt-acknowledge cycle: returns the vector to deliver and moves the
    /// request into service.
    ///
    /// `None` if INTR is not asserted: the CPU samples INTR when it can take an interrupt
    /// and runs no INTA cycle if it is low. On hardware a request withdrawn *during* the
    /// INTA cycle gives the spurious IRQ 7 vector; here nothing runs between the sample and
    /// the acknowledge, so that race cannot happen and `None` is the faithful answer.
    /// The cascade keeps its real spurious case: the master latches the slave's edge on
    /// input 2, so if the slave's request has gone by the INTA (masked, or a level input
    /// deasserted) the slave answers with its IRQ 15 vector and sets nothing in service,
    /// while the master's IRQ 2 stays in service, which is why drivers send the master an
    /// EOI for a spurious IRQ 15.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let line = self.master.pending_line(true)?;
        let vector = if line == PIC_CASCADE_IRQ {
            let slave_line = match self.slave.pending_line(false) {
                Some(l) => {
                    self.slave.ack(l);
                    l
                }
                None => SPURIOUS_LINE,
            };
            self.slave.vector_base | slave_line
        } else {
            self.master.vector_base | line
        };
        self.master.ack(line);
        self.update_cascade();
        Some(vector)
    }

    /// A poll-mode read (OCW3.P): acknowledges like INTA and reports `0x80 | input`, or 0.
    fn poll_read(&mut self, slave: bool) -> u8 {
        let chip = if slave {
            &mut self.slave
        } else {
            &mut self.master
        };
        let line = chip.pending_line(!slave);
        if let Some(l) = line {
            chip.ack(l);
            if slave {
                // The master saw the cascade request; a poll of the slave consumes it.
                self.master.irr &= !(1 << PIC_CASCADE_IRQ);
            }
        }
        self.update_cascade();
        line.map_or(0, |l| POLL_PENDING | l)
    }

    fn chip(&mut self, slave: bool) -> &mut Pic8259 {
        if slave {
            &mut self.slave
        } else {
            &mut self.master
        }
    }

    fn read_port(&mut self, ports: PicPorts, offset: u16) -> u8 {
        let slave = match ports {
            PicPorts::Elcr => {
                return if offset == 0 {
                    self.master.elcr
                } else {
                    self.slave.elcr
                };
            }
            PicPorts::Master => false,
            PicPorts::Slave => true,
        };
        if self.chip(slave).poll {
            self.chip(slave).poll = false;
            return self.poll_read(slave);
        }
        let chip = self.chip(slave);
        match (offset, chip.read_isr) {
            (0, true) => chip.isr,
            (0, false) => chip.irr,
            _ => chip.imr,
        }
    }

    fn write_port(&mut self, ports: PicPorts, offset: u16, value: u8) {
        let slave = match ports {
            PicPorts::Elcr => {
                let chip = if offset == 0 {
                    &mut self.master
                } else {
                    &mut self.slave
                };
                chip.elcr = value & chip.elcr_mask;
                self.update_cascade();
                return;
            }
            PicPorts::Master => false,
            PicPorts::Slave => true,
        };
        let chip = self.chip(slave);
        if offset == 0 {
            chip.write_command(value);
        } else {
            chip.write_data(value);
        }
        self.update_cascade();
    }
}

/// Bus adapter exposing one register block of a shared [`DualPic`].
struct PicPortAdapter {
    pic: Arc<Mutex<DualPic>>,
    ports: PicPorts,
}

impl PortDevice for PicPortAdapter {
    fn read(&mut self, offset: u16, _size: u8) -> u32 {
        let mut pic = lock(&self.pic);
        u32::from(pic.read_port(self.ports, offset))
    }

    fn write(&mut self, offset: u16, _size: u8, value: u32) -> PortAction {
        let mut pic = lock(&self.pic);
        pic.write_port(self.ports, offset, (value & 0xff) as u8);
        PortAction::Continue
    }
}

/// Puts the PIC pair's ports (0x20–0x21, 0xA0–0xA1, ELCR 0x4D0–0x4D1) on `bus`.
///
/// # Errors
/// [`BusError::Overlap`] if one of those ports is already claimed.
pub fn register_pic(bus: &mut PortBus, pic: &Arc<Mutex<DualPic>>) -> Result<(), BusError> {
    for (base, len, ports) in [
        (PIC_MASTER_BASE, PIC_PORT_LEN, PicPorts::Master),
        (PIC_SLAVE_BASE, PIC_PORT_LEN, PicPorts::Slave),
        (ELCR_BASE, ELCR_PORT_LEN, PicPorts::Elcr),
    ] {
        bus.insert(
            base,
            len,
            Arc::new(Mutex::new(PicPortAdapter {
                pic: Arc::clone(pic),
                ports,
            })),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER_CMD: u16 = 0x20;
    const MASTER_DATA: u16 = 0x21;
    const SLAVE_CMD: u16 = 0xa0;
    const SLAVE_DATA: u16 = 0xa1;
    const EOI: u32 = 0x20;

    fn platform() -> (PortBus, Arc<Mutex<DualPic>>) {
        let pic = Arc::new(Mutex::new(DualPic::new()));
        let mut bus = PortBus::new();
        register_pic(&mut bus, &pic).unwrap();
        (bus, pic)
    }

    /// Linux's `init_8259A` (arch/x86/kernel/i8259.c), auto_eoi = 0.
    fn linux_init(bus: &mut PortBus) {
        bus.write(MASTER_DATA, 1, 0xff);
        bus.write(SLAVE_DATA, 1, 0xff);
        bus.write(MASTER_CMD, 1, 0x11); // ICW1: edge, cascade, ICW4
        bus.write(MASTER_DATA, 1, 0x30); // ICW2: ISA_IRQ_VECTOR(0)
        bus.write(MASTER_DATA, 1, 1 << 2); // ICW3: slave on IR2
        bus.write(MASTER_DATA, 1, 0x01); // ICW4: 8086, normal EOI
        bus.write(SLAVE_CMD, 1, 0x11);
        bus.write(SLAVE_DATA, 1, 0x38);
        bus.write(SLAVE_DATA, 1, 0x02); // cascade identity
        bus.write(SLAVE_DATA, 1, 0x01);
        // Linux then restores its cached masks.
        bus.write(MASTER_DATA, 1, 0xfb);
        bus.write(SLAVE_DATA, 1, 0xff);
    }

    /// xv6's `picinit` (picirq.c): auto-EOI on the master, OCW3 selecting IRR reads.
    fn xv6_init(bus: &mut PortBus) {
        bus.write(MASTER_DATA, 1, 0xff);
        bus.write(SLAVE_DATA, 1, 0xff);
        bus.write(MASTER_CMD, 1, 0x11);
        bus.write(MASTER_DATA, 1, 32);
        bus.write(MASTER_DATA, 1, 1 << 2);
        bus.write(MASTER_DATA, 1, 0x3); // ICW4: auto-EOI
        bus.write(SLAVE_CMD, 1, 0x11);
        bus.write(SLAVE_DATA, 1, 40);
        bus.write(SLAVE_DATA, 1, 2);
        bus.write(SLAVE_DATA, 1, 0x3);
        bus.write(MASTER_CMD, 1, 0x68); // OCW3: clear special mask, read IRR
        bus.write(MASTER_CMD, 1, 0x0a);
        bus.write(SLAVE_CMD, 1, 0x68);
        bus.write(SLAVE_CMD, 1, 0x0a);
        bus.write(MASTER_DATA, 1, 0xfb);
    }

    #[test]
    fn linux_init_sets_bases_masks_and_normal_eoi() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        assert_eq!(bus.read(MASTER_DATA, 1), 0xfb);
        assert_eq!(bus.read(SLAVE_DATA, 1), 0xff);
        let mut p = pic.lock().unwrap();
        assert_eq!(p.master.vector_base, 0x30);
        assert_eq!(p.slave.vector_base, 0x38);
        // A masked line latches but does not interrupt.
        p.set_irq(0, true);
        assert!(!p.has_pending());
        assert_eq!(p.master.irr & 1, 1);
        drop(p);
        // Unmask IRQ 0: the latched edge is delivered.
        bus.write(MASTER_DATA, 1, 0xfa);
        let mut p = pic.lock().unwrap();
        assert!(p.has_pending());
        assert_eq!(p.acknowledge(), Some(0x30));
        assert_eq!(p.master.isr, 1);
        assert_eq!(p.master.irr & 1, 0);
        // In service: a new edge on the same line waits for the EOI.
        p.set_irq(0, false);
        p.set_irq(0, true);
        assert!(!p.has_pending());
        drop(p);
        bus.write(MASTER_CMD, 1, EOI);
        let mut p = pic.lock().unwrap();
        assert_eq!(p.master.isr, 0);
        assert_eq!(p.acknowledge(), Some(0x30));
    }

    /// Linux's `mask_and_ack_8259A` and `i8259A_irq_real`: mask, check ISR through OCW3,
    /// specific EOI to the slave and to the master's cascade input.
    #[test]
    fn linux_mask_and_ack_of_a_slave_irq() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        bus.write(SLAVE_DATA, 1, !(1 << 6)); // IRQ 14
        pic.lock().unwrap().set_irq(14, true);
        assert_eq!(pic.lock().unwrap().acknowledge(), Some(0x3e));
        bus.read(SLAVE_DATA, 1);
        bus.write(SLAVE_DATA, 1, 0xff);
        bus.write(SLAVE_CMD, 1, 0x0b);
        assert_eq!(bus.read(SLAVE_CMD, 1) & (1 << 6), 1 << 6, "the IRQ is real");
        bus.write(SLAVE_CMD, 1, 0x0a);
        bus.write(SLAVE_CMD, 1, 0x60 + 6);
        bus.write(MASTER_CMD, 1, 0x60 + 2);
        let p = pic.lock().unwrap();
        assert_eq!((p.master.isr, p.slave.isr), (0, 0));
    }

    #[test]
    fn xv6_init_uses_auto_eoi() {
        let (mut bus, pic) = platform();
        xv6_init(&mut bus);
        bus.write(MASTER_DATA, 1, 0xfb & !(1 << 1)); // unmask the keyboard
        let mut p = pic.lock().unwrap();
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(33));
        // Auto-EOI: nothing stays in service.
        assert_eq!(p.master.isr, 0);
        p.set_irq(1, false);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(33));
        assert_eq!(p.acknowledge(), None);
    }

    #[test]
    fn priority_and_nesting() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        bus.write(MASTER_DATA, 1, 0x00);
        let mut p = pic.lock().unwrap();
        p.set_irq(4, true);
        p.set_irq(3, true);
        // IRQ 3 outranks IRQ 4.
        assert_eq!(p.acknowledge(), Some(0x33));
        // IRQ 4 has lower priority than 3 in service.
        assert!(!p.has_pending());
        // IRQ 1 outranks 3: nests.
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(0x31));
        assert_eq!(p.master.isr, 0b1010);
        drop(p);
        // Non-specific EOI clears the highest-priority in-service level (1).
        bus.write(MASTER_CMD, 1, EOI);
        assert_eq!(pic.lock().unwrap().master.isr, 0b1000);
        // OCW3 read ISR.
        bus.write(MASTER_CMD, 1, 0x0b);
        assert_eq!(bus.read(MASTER_CMD, 1), 0b1000);
        bus.write(MASTER_CMD, 1, 0x0a);
        assert_eq!(bus.read(MASTER_CMD, 1), 0b1_0000);
        // Specific EOI for 3, then 4 goes through.
        bus.write(MASTER_CMD, 1, 0x63);
        assert_eq!(pic.lock().unwrap().acknowledge(), Some(0x34));
    }

    #[test]
    fn masking_holds_requests() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        bus.write(MASTER_DATA, 1, 0xff);
        pic.lock().unwrap().set_irq(5, true);
        assert!(!pic.lock().unwrap().has_pending());
        bus.write(MASTER_DATA, 1, !(1 << 5));
        assert_eq!(pic.lock().unwrap().acknowledge(), Some(0x35));
    }

    #[test]
    fn cascade_delivers_slave_vectors_and_needs_two_eois() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        bus.write(SLAVE_DATA, 1, !(1 << 4)); // unmask IRQ 12
        let mut p = pic.lock().unwrap();
        p.set_irq(12, true);
        assert!(p.has_pending());
        assert_eq!(p.acknowledge(), Some(0x3c));
        assert_eq!(p.master.isr, 1 << 2);
        assert_eq!(p.slave.isr, 1 << 4);
        // Another slave input waits: the master's IRQ 2 is in service.
        p.set_irq(9, true);
        drop(p);
        bus.write(SLAVE_DATA, 1, !(1 << 4 | 1 << 1));
        assert!(!pic.lock().unwrap().has_pending());
        bus.write(SLAVE_CMD, 1, EOI);
        assert!(!pic.lock().unwrap().has_pending());
        bus.write(MASTER_CMD, 1, EOI);
        assert_eq!(pic.lock().unwrap().acknowledge(), Some(0x39));
    }

    #[test]
    fn spurious_slave_interrupt_gives_irq15_vector() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        bus.write(SLAVE_DATA, 1, !(1 << 3));
        pic.lock().unwrap().set_irq(11, true);
        // The slave request disappears before INTA (masked); the master latched IRQ 2.
        bus.write(SLAVE_DATA, 1, 0xff);
        let mut p = pic.lock().unwrap();
        assert!(p.has_pending());
        assert_eq!(p.acknowledge(), Some(0x3f));
        assert_eq!(p.slave.isr, 0);
        assert_eq!(p.master.isr, 1 << 2);
    }

    #[test]
    fn level_triggered_lines_follow_the_input() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        bus.write(SLAVE_DATA, 1, !(1 << 3));
        bus.write(ELCR_BASE + 1, 1, 0xff);
        // IRQ 8 and 13 cannot be level-triggered.
        assert_eq!(bus.read(ELCR_BASE + 1, 1), 0xde);
        bus.write(ELCR_BASE, 1, 0x07);
        assert_eq!(bus.read(ELCR_BASE, 1), 0x00);
        let mut p = pic.lock().unwrap();
        p.set_irq(11, true);
        assert!(p.has_pending());
        p.set_irq(11, false);
        // The slave's request follows the level...
        assert_eq!(p.slave.irr, 0);
        // ...but the master latched the cascade edge: the INTA finds the slave idle.
        assert_eq!(p.acknowledge(), Some(0x3f));
        drop(p);
        bus.write(MASTER_CMD, 1, EOI);
        let mut p = pic.lock().unwrap();
        assert!(!p.has_pending());
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), Some(0x3b));
        drop(p);
        // Still asserted after EOI: interrupts again.
        bus.write(SLAVE_CMD, 1, EOI);
        bus.write(MASTER_CMD, 1, EOI);
        assert_eq!(pic.lock().unwrap().acknowledge(), Some(0x3b));
    }

    #[test]
    fn poll_mode_acknowledges() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        bus.write(MASTER_DATA, 1, 0x00);
        pic.lock().unwrap().set_irq(6, true);
        bus.write(MASTER_CMD, 1, 0x0c); // OCW3 poll
        assert_eq!(bus.read(MASTER_CMD, 1), 0x86);
        assert_eq!(pic.lock().unwrap().master.isr, 1 << 6);
        bus.write(MASTER_CMD, 1, 0x0c);
        assert_eq!(bus.read(MASTER_CMD, 1), 0x00);
    }

    #[test]
    fn rotation_makes_served_line_lowest() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        bus.write(MASTER_DATA, 1, 0x00);
        let mut p = pic.lock().unwrap();
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(0x31));
        p.master.write_command(0xa0); // rotate on non-specific EOI
        p.set_irq(1, false);
        p.set_irq(1, true);
        p.set_irq(5, true);
        // Line 1 is now lowest priority: 5 wins.
        assert_eq!(p.acknowledge(), Some(0x35));
        p.master.write_command(0xc7); // set priority: 7 lowest, 0 highest again
        p.master.write_command(0x20);
        assert_eq!(p.acknowledge(), Some(0x31));
    }

    #[test]
    fn special_mask_mode_lets_lower_priorities_through() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        bus.write(MASTER_DATA, 1, 0x00);
        pic.lock().unwrap().set_irq(3, true);
        pic.lock().unwrap().set_irq(1, true);
        assert_eq!(pic.lock().unwrap().acknowledge(), Some(0x31));
        assert!(!pic.lock().unwrap().has_pending());
        bus.write(MASTER_DATA, 1, 0x02); // mask the in-service line
        assert!(!pic.lock().unwrap().has_pending());
        bus.write(MASTER_CMD, 1, 0x68); // set special mask
        assert_eq!(pic.lock().unwrap().acknowledge(), Some(0x33));
    }

    #[test]
    fn reinitialisation_clears_state_and_irq_numbers_are_checked() {
        let (mut bus, pic) = platform();
        linux_init(&mut bus);
        let before = pic.lock().unwrap().clone();
        pic.lock().unwrap().set_irq(200, true);
        pic.lock().unwrap().set_irq(PIC_CASCADE_IRQ, true);
        assert_eq!(*pic.lock().unwrap(), before);
        pic.lock().unwrap().set_irq(0, true);
        bus.write(MASTER_CMD, 1, 0x11);
        let p = pic.lock().unwrap();
        assert_eq!(p.master.irr, 0);
        assert_eq!(p.master.imr, 0);
    }
}
