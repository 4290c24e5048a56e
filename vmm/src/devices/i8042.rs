//! The i8042 keyboard controller (data port 0x60, status/command port 0x64) with a PS/2
//! keyboard that has no keys pressed and an auxiliary port with nothing attached.
//!
//! The controller answers its commands (command byte, self-test, interface tests,
//! enable/disable of both ports, output port with the reset line and A20, output-line
//! pulses); bytes a guest writes to the data port go to the keyboard, which answers as an
//! MF2 keyboard (ACK, reset completion, identify, LEDs, scanning). Replies queue behind
//! the one-byte output buffer: a read of the data port empties it and the next byte moves
//! in. IRQ 1 (keyboard bytes) and IRQ 12 (auxiliary bytes) follow the output buffer while
//! the command byte enables them, as QEMU's `pc` machine wires them.
//!
//! The power-on state is the one firmware leaves (SeaBIOS in QEMU's `pc` machine):
//! self-test passed, translation on, keyboard interrupt on, auxiliary port disabled, A20 on.

use std::collections::VecDeque;

use super::bus::{PortAction, PortDevice};
use super::irq::IrqLine;
use super::port92::A20Line;
use crate::bits::low8;

// Status register bits.
const STS_OBF: u8 = 0x01;
const STS_SYS: u8 = 0x04;
/// The last write went to the command port.
const STS_CMD: u8 = 0x08;
/// The keyboard inhibit switch: set means not inhibited.
const STS_UNLOCKED: u8 = 0x10;
/// The output buffer holds an auxiliary-port byte.
const STS_AUX_OBF: u8 = 0x20;

// Command byte (controller RAM byte 0) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_AUX_INT: u8 = 0x02;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Output port bits.
const OUT_RESET_N: u8 = 0x01;
const OUT_A20: u8 = 0x02;
const OUT_KBD_OBF: u8 = 0x10;
const OUT_AUX_OBF: u8 = 0x20;
/// Keyboard clock and data lines idle high, undefined bits 2–3 read as 1.
const OUT_IDLE: u8 = 0xcc;

// Controller commands.
const CMD_READ_RAM: u8 = 0x20;
const CMD_WRITE_RAM: u8 = 0x60;
const RAM_SIZE: u8 = 0x20;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT: u8 = 0xc0;
const CMD_READ_OUTPUT: u8 = 0xd0;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_WRITE_KBD_OBUF: u8 = 0xd2;
const CMD_WRITE_AUX_OBUF: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_A20_DISABLE: u8 = 0xdd;
const CMD_A20_ENABLE: u8 = 0xdf;
/// 0xF0–0xFF pulse the output lines whose bits (3:0) are clear; bit 0 is the reset line.
const CMD_PULSE: u8 = 0xf0;

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
/// Input port: bit 7 set, the keyboard is not inhibited.
const INPUT_PORT: u8 = 0x80;

// Keyboard commands and replies.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_DEFAULTS: u8 = 0xf6;
const KBD_RESEND: u8 = 0xfe;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_NAK: u8 = 0xfe;
const KBD_BAT_OK: u8 = 0xaa;
/// An MF2 keyboard's identification: 0xAB, then 0x83 (0x41 when the controller translates).
const KBD_ID: [u8; 2] = [0xab, 0x83];
const KBD_ID_TRANSLATED: u8 = 0x41;
/// What "get scan code set" answers for sets 1–3, untranslated and translated.
const SCANCODE_SET_IDS: [(u8, u8); 3] = [(0x01, 0x43), (0x02, 0x41), (0x03, 0x3f)];

/// Bytes waiting behind the output buffer; more are dropped, as a real keyboard's buffer
/// overruns (a guest that never reads cannot grow the monitor's memory).
const QUEUE_LIMIT: usize = 16;

/// Where a byte in the output buffer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Controller,
    Keyboard,
    Aux,
}

/// The keyboard's state: which command waits for its argument, scanning, scan code set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Keyboard {
    awaiting: Option<u8>,
    scanning: bool,
    scancode_set: u8,
}

impl Keyboard {
    fn new() -> Self {
        Self {
            awaiting: None,
            scanning: true,
            scancode_set: 2,
        }
    }

    /// The keyboard's answer to `byte` from the host.
    fn command(&mut self, byte: u8, translated: bool) -> Vec<u8> {
        if let Some(cmd) = self.awaiting.take() {
            return match cmd {
                KBD_SCANCODE_SET if byte == 0 => {
                    // The set is 1, 2 or 3 (the command below takes no other).
                    let set = usize::from(self.scancode_set.saturating_sub(1));
                    let (plain, xlated) = SCANCODE_SET_IDS.get(set).copied().unwrap_or_default();
                    vec![KBD_ACK, if translated { xlated } else { plain }]
                }
                KBD_SCANCODE_SET if (1..=3).contains(&byte) => {
                    self.scancode_set = byte;
                    vec![KBD_ACK]
                }
                KBD_SCANCODE_SET => vec![KBD_NAK],
                // LEDs and typematic rate: any argument is accepted.
                _ => vec![KBD_ACK],
            };
        }
        match byte {
            KBD_RESET => {
                *self = Self::new();
                vec![KBD_ACK, KBD_BAT_OK]
            }
            KBD_IDENTIFY => vec![
                KBD_ACK,
                KBD_ID[0],
                if translated {
                    KBD_ID_TRANSLATED
                } else {
                    KBD_ID[1]
                },
            ],
            KBD_ECHO => vec![KBD_ECHO],
            KBD_SET_LEDS | KBD_TYPEMATIC | KBD_SCANCODE_SET => {
                self.awaiting = Some(byte);
                vec![KBD_ACK]
            }
            KBD_ENABLE => {
                self.scanning = true;
                vec![KBD_ACK]
            }
            KBD_DISABLE | KBD_DEFAULTS => {
                self.scanning = byte == KBD_DEFAULTS;
                self.scancode_set = 2;
                vec![KBD_ACK]
            }
            // Set-3 key attribute commands and resend: acknowledged.
            0xf7..=0xfd | KBD_RESEND => vec![KBD_ACK],
            _ => vec![KBD_NAK],
        }
    }
}

/// The controller. Plain state plus the two interrupt lines and the A20 line it drives.
#[derive(Debug)]
pub struct I8042<L: IrqLine> {
    /// Status bits kept as state (SYS flag, command/data); OBF and AUX OBF are derived.
    status: u8,
    /// Controller RAM; byte 0 is the command byte.
    ram: [u8; RAM_SIZE as usize],
    /// The output port as last written (OBF bits are derived when read).
    output_port: u8,
    /// The output buffer.
    obuf: Option<(u8, Source)>,
    /// The last byte read from the data port: an empty buffer reads it again.
    last_read: u8,
    /// Bytes waiting for the output buffer.
    queue: VecDeque<(u8, Source)>,
    /// A controller command waiting for its data byte.
    awaiting: Option<u8>,
    keyboard: Keyboard,
    kbd_irq: L,
    aux_irq: L,
    a20: A20Line,
}

impl<L: IrqLine> I8042<L> {
    /// The controller as firmware leaves it, raising IRQ 1 on `kbd_irq` and IRQ 12 on
    /// `aux_irq`, driving `a20` from its output port.
    pub fn new(kbd_irq: L, aux_irq: L, a20: A20Line) -> Self {
        let mut ram = [0; RAM_SIZE as usize];
        ram[0] = CTR_KBD_INT | CTR_AUX_DISABLE | CTR_XLATE;
        Self {
            status: STS_SYS | STS_UNLOCKED,
            ram,
            output_port: OUT_IDLE | OUT_A20 | OUT_RESET_N,
            obuf: None,
            last_read: 0,
            queue: VecDeque::new(),
            awaiting: None,
            keyboard: Keyboard::new(),
            kbd_irq,
            aux_irq,
            a20,
        }
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    /// The status register.
    pub fn status(&self) -> u8 {
        let mut s = self.status;
        match self.obuf {
            Some((_, Source::Aux)) => s |= STS_OBF | STS_AUX_OBF,
            Some(_) => s |= STS_OBF,
            None => {}
        }
        s
    }

    fn push(&mut self, byte: u8, source: Source) {
        if self.queue.len() < QUEUE_LIMIT {
            self.queue.push_back((byte, source));
        }
    }

    /// Moves the first byte whose port is enabled into an empty output buffer and sets
    /// the interrupt lines to match.
    fn refill(&mut self) {
        if self.obuf.is_none() {
            let ctr = self.ctr();
            let eligible = |s: Source| match s {
                Source::Controller => true,
                Source::Keyboard => ctr & CTR_KBD_DISABLE == 0,
                Source::Aux => ctr & CTR_AUX_DISABLE == 0,
            };
            if let Some(i) = self.queue.iter().position(|&(_, s)| eligible(s)) {
                self.obuf = self.queue.remove(i);
            }
        }
        let ctr = self.ctr();
        let (kbd, aux) = match self.obuf {
            Some((_, Source::Aux)) => (false, ctr & CTR_AUX_INT != 0),
            Some(_) => (ctr & CTR_KBD_INT != 0, false),
            None => (false, false),
        };
        self.kbd_irq.set_level(kbd);
        self.aux_irq.set_level(aux);
    }

    fn read_data(&mut self) -> u8 {
        if let Some((byte, _)) = self.obuf.take() {
            self.last_read = byte;
        }
        self.refill();
        self.last_read
    }

    fn output_port_value(&self) -> u8 {
        let mut v = self.output_port & !(OUT_KBD_OBF | OUT_AUX_OBF);
        match self.obuf {
            Some((_, Source::Aux)) => v |= OUT_AUX_OBF,
            Some(_) => v |= OUT_KBD_OBF,
            None => {}
        }
        v
    }

    /// Writes the output port: bit 1 drives A20, bit 0 low holds the CPU in reset.
    fn write_output_port(&mut self, value: u8) -> PortAction {
        self.output_port = value;
        self.a20.set(value & OUT_A20 != 0);
        if value & OUT_RESET_N == 0 {
            PortAction::Reset
        } else {
            PortAction::Continue
        }
    }

    fn write_command(&mut self, cmd: u8) -> PortAction {
        self.status |= STS_CMD;
        self.awaiting = None;
        let mut action = PortAction::Continue;
        match cmd {
            CMD_READ_RAM..=0x3f => {
                let byte = self.ram.get(usize::from(cmd - CMD_READ_RAM)).copied();
                self.push(byte.unwrap_or(0), Source::Controller);
            }
            CMD_WRITE_RAM..=0x7f
            | CMD_WRITE_OUTPUT
            | CMD_WRITE_KBD_OBUF
            | CMD_WRITE_AUX_OBUF
            | CMD_WRITE_AUX => self.awaiting = Some(cmd),
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ram[0] &= !CTR_AUX_DISABLE,
            CMD_AUX_TEST | CMD_KBD_TEST => self.push(INTERFACE_OK, Source::Controller),
            CMD_SELF_TEST => {
                self.status |= STS_SYS;
                self.push(SELF_TEST_OK, Source::Controller);
            }
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ram[0] &= !CTR_KBD_DISABLE,
            CMD_READ_INPUT => self.push(INPUT_PORT, Source::Controller),
            CMD_READ_OUTPUT => self.push(self.output_port_value(), Source::Controller),
            CMD_A20_DISABLE => action = self.write_output_port(self.output_port & !OUT_A20),
            CMD_A20_ENABLE => action = self.write_output_port(self.output_port | OUT_A20),
            // A pulse ends with the lines high again; only the reset line's matters.
            CMD_PULSE..=0xff if cmd & OUT_RESET_N == 0 => action = PortAction::Reset,
            // Other commands (vendor diagnostics, password, test inputs) are not answered.
            _ => {}
        }
        self.refill();
        action
    }

    fn write_data(&mut self, byte: u8) -> PortAction {
        self.status &= !STS_CMD;
        let mut action = PortAction::Continue;
        match self.awaiting.take() {
            Some(cmd @ CMD_WRITE_RAM..=0x7f) => {
                if let Some(b) = self.ram.get_mut(usize::from(cmd - CMD_WRITE_RAM)) {
                    *b = byte;
                }
                if cmd == CMD_WRITE_RAM {
                    // The system flag follows the command byte's.
                    self.status = (self.status & !STS_SYS) | (byte & CTR_SYS);
                }
            }
            Some(CMD_WRITE_OUTPUT) => action = self.write_output_port(byte),
            Some(CMD_WRITE_KBD_OBUF) => self.push(byte, Source::Keyboard),
            Some(CMD_WRITE_AUX_OBUF) => self.push(byte, Source::Aux),
            // Nothing is attached to the auxiliary port: every byte is refused.
            Some(_) => self.push(KBD_NAK, Source::Aux),
            None => {
                // Sending to the keyboard re-enables its interface.
                self.ram[0] &= !CTR_KBD_DISABLE;
                let translated = self.ctr() & CTR_XLATE != 0;
                for reply in self.keyboard.command(byte, translated) {
                    self.push(reply, Source::Keyboard);
                }
            }
        }
        self.refill();
        action
    }

    /// A read of the data port (`data`) or the status port.
    pub fn read_port(&mut self, data: bool) -> u8 {
        if data {
            self.read_data()
        } else {
            self.status()
        }
    }

    /// A write to the data port (`data`) or the command port.
    pub fn write_port(&mut self, data: bool, value: u8) -> PortAction {
        if data {
            self.write_data(value)
        } else {
            self.write_command(value)
        }
    }
}

/// One of the controller's ports on the bus: 0x60 and 0x64 are not adjacent, so each is
/// registered on its own ([`super::pc::I8042_DATA`], [`super::pc::I8042_CMD`]).
#[derive(Debug)]
pub struct I8042Port<L: IrqLine> {
    controller: std::sync::Arc<std::sync::Mutex<I8042<L>>>,
    data: bool,
}

impl<L: IrqLine> I8042Port<L> {
    /// The data port (0x60) of `controller`.
    pub fn data(controller: &std::sync::Arc<std::sync::Mutex<I8042<L>>>) -> Self {
        Self {
            controller: std::sync::Arc::clone(controller),
            data: true,
        }
    }

    /// The status/command port (0x64) of `controller`.
    pub fn command(controller: &std::sync::Arc<std::sync::Mutex<I8042<L>>>) -> Self {
        Self {
            controller: std::sync::Arc::clone(controller),
            data: false,
        }
    }
}

impl<L: IrqLine> PortDevice for I8042Port<L> {
    fn read(&mut self, _offset: u16, _size: u8) -> u32 {
        u32::from(super::lock(&self.controller).read_port(self.data))
    }

    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> PortAction {
        super::lock(&self.controller).write_port(self.data, low8(value))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::irq::fake::FakeLine;
    use crate::devices::pc::{I8042_CMD, I8042_DATA};
    use crate::devices::PortBus;

    struct Rig {
        bus: PortBus,
        kbd: FakeLine,
        aux: FakeLine,
        a20: A20Line,
    }

    fn rig() -> Rig {
        let (kbd, aux, a20) = (FakeLine::default(), FakeLine::default(), A20Line::new());
        let c = Arc::new(Mutex::new(I8042::new(
            kbd.clone(),
            aux.clone(),
            a20.clone(),
        )));
        let mut bus = PortBus::new();
        bus.insert(I8042_DATA, 1, Arc::new(Mutex::new(I8042Port::data(&c))))
            .unwrap();
        bus.insert(I8042_CMD, 1, Arc::new(Mutex::new(I8042Port::command(&c))))
            .unwrap();
        Rig { bus, kbd, aux, a20 }
    }

    impl Rig {
        fn cmd(&mut self, c: u8) -> PortAction {
            self.bus.write(I8042_CMD, 1, c.into())
        }
        fn data(&mut self, d: u8) -> PortAction {
            self.bus.write(I8042_DATA, 1, d.into())
        }
        fn status(&mut self) -> u32 {
            self.bus.read(I8042_CMD, 1)
        }
        /// The next output byte, checking OBF was set.
        fn next(&mut self) -> u32 {
            assert_ne!(self.status() & 1, 0, "output buffer empty");
            self.bus.read(I8042_DATA, 1)
        }
    }

    #[test]
    fn firmware_state_as_seabios_leaves_it() {
        let mut r = rig();
        assert_eq!(r.status(), 0x14);
        r.cmd(0x20);
        assert_eq!(r.status(), 0x1d);
        assert_eq!(r.next(), 0x61);
        assert_eq!(r.status() & 1, 0, "reading the byte empties the buffer");
        r.cmd(0xd0);
        assert_eq!(r.next(), 0xcf);
        assert!(r.a20.is_enabled());
    }

    #[test]
    fn self_test_and_interface_tests() {
        let mut r = rig();
        r.cmd(0xaa);
        assert_eq!(r.next(), 0x55);
        r.cmd(0xab);
        assert_eq!(r.next(), 0x00);
        r.cmd(0xa9);
        assert_eq!(r.next(), 0x00);
        // An empty buffer reads the last byte again, without OBF.
        assert_eq!(r.bus.read(I8042_DATA, 1), 0x00);
        assert_eq!(r.status() & 1, 0);
    }

    #[test]
    fn command_byte_round_trip_and_port_enables() {
        let mut r = rig();
        r.cmd(0x60);
        r.data(0x47);
        r.cmd(0x20);
        assert_eq!(r.next(), 0x47);
        r.cmd(0xad);
        r.cmd(0xa7);
        r.cmd(0x20);
        assert_eq!(r.next(), 0x77);
        r.cmd(0xae);
        r.cmd(0xa8);
        r.cmd(0x20);
        assert_eq!(r.next(), 0x47);
        // Controller RAM beyond the command byte.
        r.cmd(0x65);
        r.data(0x99);
        r.cmd(0x25);
        assert_eq!(r.next(), 0x99);
    }

    #[test]
    fn output_port_drives_a20_and_reset() {
        let mut r = rig();
        r.cmd(0xd1);
        assert_eq!(r.data(0xcd), PortAction::Continue);
        assert!(!r.a20.is_enabled());
        r.cmd(0xd0);
        assert_eq!(r.next() & 0x03, 0x01);
        r.cmd(0xdf);
        assert!(r.a20.is_enabled());
        r.cmd(0xd1);
        assert_eq!(r.data(0xce), PortAction::Reset);
        assert_eq!(r.cmd(0xfe), PortAction::Reset);
        assert_eq!(r.cmd(0xf0), PortAction::Reset);
        assert_eq!(r.cmd(0xff), PortAction::Continue);
        assert_eq!(r.cmd(0xfd), PortAction::Continue);
    }

    #[test]
    fn keyboard_answers_with_no_keys_pressed() {
        let mut r = rig();
        r.data(0xff);
        assert_eq!((r.next(), r.next()), (0xfa, 0xaa));
        assert_eq!(r.status() & 1, 0);
        r.data(0xf2);
        assert_eq!([r.next(), r.next(), r.next()], [0xfa, 0xab, 0x41]);
        r.data(0xed);
        assert_eq!(r.next(), 0xfa);
        r.data(0x07);
        assert_eq!(r.next(), 0xfa);
        r.data(0xf0);
        r.data(0x00);
        assert_eq!([r.next(), r.next(), r.next()], [0xfa, 0xfa, 0x41]);
        r.data(0xf4);
        assert_eq!(r.next(), 0xfa);
        r.data(0xee);
        assert_eq!(r.next(), 0xee);
        r.data(0x12);
        assert_eq!(r.next(), 0xfe);
        // Untranslated: the identify's second byte is the MF2 code.
        r.cmd(0x60);
        r.data(0x01);
        r.data(0xf2);
        assert_eq!([r.next(), r.next(), r.next()], [0xfa, 0xab, 0x83]);
    }

    #[test]
    fn irq1_follows_the_output_buffer_and_the_enable() {
        let mut r = rig();
        r.data(0xf4);
        assert!(r.kbd.level.load(std::sync::atomic::Ordering::SeqCst));
        r.next();
        assert!(!r.kbd.level.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(r.kbd.rising_edges(), 1);
        // Command byte without the keyboard interrupt: no IRQ 1.
        r.cmd(0x60);
        r.data(0x60);
        r.data(0xf4);
        assert_eq!(r.kbd.rising_edges(), 1);
        r.next();
        // Aux loopback raises IRQ 12 when enabled.
        r.cmd(0x60);
        r.data(0x02);
        r.cmd(0xd3);
        r.data(0x5a);
        assert_eq!(r.status() & 0x21, 0x21);
        assert_eq!(r.aux.rising_edges(), 1);
        assert_eq!(r.next(), 0x5a);
    }

    #[test]
    fn disabled_keyboard_bytes_wait_and_controller_replies_pass() {
        let mut r = rig();
        r.cmd(0xd2);
        r.data(0x33);
        r.next();
        r.cmd(0xad);
        r.cmd(0xd2);
        r.data(0x34);
        assert_eq!(r.status() & 1, 0);
        r.cmd(0xaa);
        assert_eq!(r.next(), 0x55);
        r.cmd(0xae);
        assert_eq!(r.next(), 0x34);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut r = rig();
        for _ in 0..1000 {
            r.data(0xf2);
        }
        let mut n = 0;
        while r.status() & 1 != 0 {
            r.bus.read(I8042_DATA, 1);
            n += 1;
        }
        assert!(n <= QUEUE_LIMIT + 1, "{n}");
    }

    proptest::proptest! {
        /// Arbitrary traffic to both ports: no panic, reset only from the output port or a
        /// pulse command, the status register's input-buffer bit never stuck.
        #[test]
        fn arbitrary_traffic_never_panics(
            ops in proptest::collection::vec((proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>(), proptest::prelude::any::<u8>()), 1..300)
        ) {
            let mut r = rig();
            for (is_write, data, v) in ops {
                let port = if data { I8042_DATA } else { I8042_CMD };
                if is_write {
                    let _ = r.bus.write(port, 1, v.into());
                } else {
                    let got = r.bus.read(port, 1);
                    proptest::prop_assert!(got <= 0xff);
                }
                proptest::prop_assert_eq!(r.status() & 0x02, 0);
            }
        }
    }
}
