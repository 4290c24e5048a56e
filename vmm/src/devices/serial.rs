//! The COM1 16550A UART, built on vm-superio's `Serial`.

use std::io::Write;

use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::{Serial, Trigger};

use super::bus::{PortAction, PortDevice};

/// COM1's base port.
pub const COM1_BASE: u16 = 0x3f8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u8 = 4;
/// Registers of a 16550 (offsets 0–7).
pub const SERIAL_PORT_LEN: u16 = 8;

/// A 16550A UART: transmitted bytes go to `W`, received bytes are queued by the monitor
/// with [`SerialPort::enqueue_input`], interrupts go out through `T`.
pub struct SerialPort<T: Trigger, W: Write> {
    uart: Serial<T, NoEvents, W>,
    output_errors: u64,
}

impl<T: Trigger, W: Write> std::fmt::Debug for SerialPort<T, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialPort")
            .field("state", &self.uart.state())
            .field("output_errors", &self.output_errors)
            .finish()
    }
}

impl<T: Trigger, W: Write> SerialPort<T, W> {
    /// A UART in its reset state writing to `out` and interrupting through `trigger`.
    pub fn new(trigger: T, out: W) -> Self {
        Self {
            uart: Serial::new(trigger, out),
            output_errors: 0,
        }
    }

    /// Queues host input (for example stdin) for the guest to read, raising the
    /// receive interrupt if the guest enabled it. Returns how many bytes fit in the
    /// receive FIFO; the caller keeps the rest and retries when the guest has read some.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        // The only other error is a failing trigger, which ours never are.
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Where transmitted bytes went.
    pub fn output(&self) -> &W {
        self.uart.writer()
    }

    /// Bytes the output writer refused. The guest cannot be blocked on a console, so a
    /// failing output loses bytes rather than stopping the VM.
    pub fn output_errors(&self) -> u64 {
        self.output_errors
    }
}

impl<T: Trigger, W: Write> PortDevice for SerialPort<T, W> {
    fn read(&mut self, offset: u16, _size: u8) -> u32 {
        u8::try_from(offset).map_or(0xff, |o| u32::from(self.uart.read(o)))
    }

    fn write(&mut self, offset: u16, _size: u8, value: u32) -> PortAction {
        if let Ok(o) = u8::try_from(offset) {
            if let Err(SerialError::IOError(_)) = self.uart.write(o, (value & 0xff) as u8) {
                self.output_errors += 1;
            }
        }
        PortAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::irq::fake::FakeLine;
    use crate::devices::{register_pic, DualPic, PicLine, PortBus};

    const THR: u16 = COM1_BASE;
    const IER: u16 = COM1_BASE + 1;
    const IIR: u16 = COM1_BASE + 2;
    const LCR: u16 = COM1_BASE + 3;
    const LSR: u16 = COM1_BASE + 5;
    const IER_RDA: u32 = 0x01;
    const IER_THRE: u32 = 0x02;
    const LSR_DATA_READY: u32 = 0x01;
    const LSR_THR_EMPTY: u32 = 0x20;
    const IIR_NONE: u32 = 0x01;
    const IIR_RDA: u32 = 0x04;

    #[test]
    fn transmits_to_the_writer() {
        let line = FakeLine::default();
        let uart = Arc::new(Mutex::new(SerialPort::new(line, Vec::new())));
        let mut bus = PortBus::new();
        bus.insert(COM1_BASE, SERIAL_PORT_LEN, uart.clone())
            .unwrap();
        // Divisor latch programming must not transmit anything.
        bus.write(LCR, 1, 0x80);
        bus.write(THR, 1, 0x01);
        bus.write(LCR, 1, 0x03);
        assert_ne!(bus.read(LSR, 1) & LSR_THR_EMPTY, 0);
        for b in b"hi\n" {
            bus.write(THR, 1, u32::from(*b));
        }
        assert_eq!(uart.lock().unwrap().output(), b"hi\n");
    }

    #[test]
    fn transmit_interrupt_when_enabled() {
        let line = FakeLine::default();
        let uart = Arc::new(Mutex::new(SerialPort::new(line.clone(), Vec::new())));
        let mut bus = PortBus::new();
        bus.insert(COM1_BASE, SERIAL_PORT_LEN, uart).unwrap();
        bus.write(THR, 1, u32::from(b'a'));
        assert_eq!(line.rising_edges(), 0);
        bus.write(IER, 1, IER_THRE);
        assert_eq!(line.rising_edges(), 1);
    }

    #[test]
    fn received_bytes_interrupt_through_the_pic() {
        let pic = Arc::new(Mutex::new(DualPic::new()));
        let uart = Arc::new(Mutex::new(SerialPort::new(
            PicLine::new(&pic, COM1_IRQ),
            Vec::new(),
        )));
        let mut bus = PortBus::new();
        register_pic(&mut bus, &pic).unwrap();
        bus.insert(COM1_BASE, SERIAL_PORT_LEN, uart.clone())
            .unwrap();
        // PIC: vector base 0x20, IRQ 4 unmasked.
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0xef),
        ] {
            bus.write(port, 1, v);
        }
        bus.write(IER, 1, IER_RDA);
        assert_eq!(uart.lock().unwrap().enqueue_input(b"ok"), 2);
        assert_eq!(pic.lock().unwrap().acknowledge(), Some(0x24));
        assert_eq!(bus.read(IIR, 1) & 0x0f, IIR_RDA);
        assert_ne!(bus.read(LSR, 1) & LSR_DATA_READY, 0);
        assert_eq!(bus.read(THR, 1), u32::from(b'o'));
        assert_eq!(bus.read(THR, 1), u32::from(b'k'));
        assert_eq!(bus.read(LSR, 1) & LSR_DATA_READY, 0);
        assert_eq!(bus.read(IIR, 1) & 0x0f, IIR_NONE);
    }

    #[test]
    fn full_fifo_takes_nothing() {
        let mut uart = SerialPort::new(FakeLine::default(), Vec::new());
        let cap = uart.input_capacity();
        assert_eq!(uart.enqueue_input(&vec![b'x'; cap + 10]), cap);
        assert_eq!(uart.enqueue_input(b"y"), 0);
    }

    /// A writer that always fails, like a closed terminal.
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("closed"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_errors_are_counted_not_fatal() {
        let mut uart = SerialPort::new(FakeLine::default(), Broken);
        assert_eq!(uart.write(0, 1, u32::from(b'a')), PortAction::Continue);
        assert_eq!(uart.output_errors(), 1);
    }
}
