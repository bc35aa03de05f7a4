//! The 16550 UART on COM1 (vm-superio's model). Output goes to any writer
//! (the terminal, a file, nowhere); input is queued by the VMM's event loop,
//! which waits on `input_ready` when the receive FIFO is full and the guest
//! has not yet drained it.
//!
//! `input_ready` is signalled once per batch of queued input: when the guest
//! empties a FIFO that `enqueue_input` filled. Reads of an already empty
//! receive buffer (a guest polling the data port) signal nothing, so a
//! spinning guest cannot keep the VMM thread busy.

use std::cell::Cell;
use std::io::Write;

use vm_superio::serial::SerialEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// Raises the UART's interrupt line through a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the event loop when the guest has emptied the receive FIFO.
pub struct InputEvents {
    input_ready: EventFd,
    /// Set when input was queued; cleared by the one signal it earns.
    /// vm-superio reports "buffer empty" after every data-port read that
    /// leaves the FIFO empty, including reads of an empty FIFO.
    armed: Cell<bool>,
}

impl SerialEvents for InputEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if self.armed.replace(false) {
            let _ = self.input_ready.write(1);
        }
    }
}

type Uart = vm_superio::Serial<IrqTrigger, InputEvents, Box<dyn Write + Send>>;

pub struct Serial {
    uart: Uart,
}

impl Serial {
    /// `irq` must be registered as the irqfd for the UART's GSI;
    /// `input_ready` is signalled when the receive FIFO empties.
    pub fn new(irq: EventFd, input_ready: EventFd, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::with_events(
                IrqTrigger(irq),
                InputEvents {
                    input_ready,
                    armed: Cell::new(false),
                },
                out,
            ),
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queue bytes for the guest to read; returns how many fit. When any
    /// did, `input_ready` is signalled once the guest has read them all.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        // An error means the interrupt could not be raised; nothing queued.
        let queued = self.uart.enqueue_raw_bytes(&bytes[..n]).unwrap_or_default();
        if queued > 0 {
            self.uart.events().armed.set(true);
        }
        queued
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(&v)) = (u8::try_from(offset), data.first()) {
            // A failed interrupt or output write cannot be reported to the
            // guest; the byte is dropped like on a disconnected line.
            let _ = self.uart.write(off, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer_and_input_is_bounded() {
        let sink = Sink::default();
        let mut s = Serial::new(
            EventFd::new(0).unwrap(),
            EventFd::new(0).unwrap(),
            Box::new(sink.clone()),
        );
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        let cap = s.input_capacity();
        assert_eq!(s.enqueue_input(&vec![b'x'; cap + 10]), cap);
        assert_eq!(s.input_capacity(), 0);
        let mut d = [0u8; 1];
        s.read(0, &mut d);
        assert_eq!(d[0], b'x');
        // Out-of-range offsets are ignored, not a panic.
        s.write(1 << 40, &[1]);
        s.read(1 << 40, &mut d);
    }

    /// The eventfd's counter: how many wakeups the event loop would see.
    fn wakeups(evt: &EventFd) -> u64 {
        evt.read().unwrap_or(0)
    }

    #[test]
    fn polling_an_empty_receive_buffer_wakes_the_vmm_at_most_once() {
        let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(
            EventFd::new(0).unwrap(),
            ready.try_clone().unwrap(),
            Box::new(std::io::sink()),
        );
        let mut d = [0u8; 1];
        // A guest spinning on the data port before any input: no wakeups.
        for _ in 0..10_000 {
            s.read(0, &mut d);
        }
        assert_eq!(wakeups(&ready), 0);
        // Input flows; draining it is one wakeup, however long the guest
        // keeps polling afterwards.
        assert_eq!(s.enqueue_input(b"ab"), 2);
        for expected in [b'a', b'b'] {
            s.read(0, &mut d);
            assert_eq!(d[0], expected);
        }
        for _ in 0..10_000 {
            s.read(0, &mut d);
            assert_eq!(d[0], 0);
        }
        assert_eq!(wakeups(&ready), 1);
        // More input still arrives and earns its own single wakeup.
        assert_eq!(s.enqueue_input(b"c"), 1);
        s.read(0, &mut d);
        assert_eq!(d[0], b'c');
        for _ in 0..100 {
            s.read(0, &mut d);
        }
        assert_eq!(wakeups(&ready), 1);
    }
}
