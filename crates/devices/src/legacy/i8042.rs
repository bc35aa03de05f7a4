//! The i8042 keyboard controller, as much of it as Linux's i8042 and atkbd
//! drivers use: the controller commands (self test, command byte, port
//! tests, output port, CPU reset), a keyboard that answers its commands
//! (reset, identify, LEDs, typematic, scan-code set, enable), and
//! key-press injection for Ctrl-Alt-Del (`send_ctrl_alt_del`, what the
//! API's `SendCtrlAltDel` does): a stock guest reboots, and with
//! `reboot=k` resets through command 0xFE here, which ends the VM.
//!
//! Port 0x60 is the data port, 0x64 status (read) and command (write).
//! Bytes for the guest wait in a small output queue; whenever the output
//! buffer fills and the command byte enables keyboard interrupts, the
//! device pulses IRQ 1 (an irqfd on the IOAPIC pin). There is no mouse
//! (aux) port: its commands answer "no device".

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::{BusDevice, VmEvent, VmEventSink};

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// Status register bits.
const SR_OBF: u8 = 1 << 0; // output buffer full
const SR_SYS: u8 = 1 << 2; // system flag (self test passed)
const SR_CMD: u8 = 1 << 3; // last write was a command
const SR_UNLOCKED: u8 = 1 << 4; // keyboard not inhibited by the keylock

/// Command byte bits.
const CB_KBD_INT: u8 = 1 << 0;
const CB_SYS: u8 = 1 << 2;
const CB_AUX_DISABLE: u8 = 1 << 5;
const CB_XLATE: u8 = 1 << 6;

/// Controller commands.
const CMD_READ_CB: u8 = 0x20;
const CMD_WRITE_CB: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT: u8 = 0xd0;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_WRITE_AUX_OUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

/// Keyboard commands and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
/// An MF2 keyboard's identity.
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Most bytes queued for the guest; a guest that never reads loses the
/// newest, not the host's memory.
const QUEUE_MAX: usize = 64;

/// Ctrl, Alt and Delete pressed then released, in scan-code set 2 (what
/// the keyboard sends) and set 1 (what the guest reads with the command
/// byte's translation bit on, Linux's default).
const CAD_SET2: &[u8] = &[
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
const CAD_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// What the next data-port write means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    /// The parameter of a controller command.
    Controller(u8),
    /// The parameter of a keyboard command.
    Keyboard(u8),
}

pub struct I8042 {
    events: Arc<dyn VmEventSink>,
    /// IRQ 1 (None: no interrupt wired, e.g. in unit tests).
    irq: Option<EventFd>,
    command_byte: u8,
    output_port: u8,
    pending: Pending,
    last_was_command: bool,
    out: VecDeque<u8>,
}

impl I8042 {
    /// The reset-only controller (no interrupt line).
    pub fn new(events: Arc<dyn VmEventSink>) -> Self {
        I8042 {
            events,
            irq: None,
            command_byte: CB_KBD_INT | CB_SYS | CB_AUX_DISABLE | CB_XLATE,
            output_port: 0x01,
            pending: Pending::None,
            last_was_command: false,
            out: VecDeque::new(),
        }
    }

    /// With the keyboard interrupt on `irq` (IRQ 1).
    pub fn with_irq(events: Arc<dyn VmEventSink>, irq: EventFd) -> Self {
        I8042 {
            irq: Some(irq),
            ..I8042::new(events)
        }
    }

    /// Press and release Ctrl-Alt-Del.
    pub fn send_ctrl_alt_del(&mut self) {
        let codes = if self.command_byte & CB_XLATE != 0 {
            CAD_SET1
        } else {
            CAD_SET2
        };
        // Whole or not at all: a cut sequence would leave keys held down.
        if QUEUE_MAX - self.out.len() < codes.len() {
            return;
        }
        for &c in codes {
            self.push(c);
        }
    }

    fn push(&mut self, byte: u8) {
        if self.out.len() < QUEUE_MAX {
            self.out.push_back(byte);
        }
        if self.out.len() == 1 {
            self.interrupt();
        }
    }

    fn interrupt(&self) {
        if self.command_byte & CB_KBD_INT != 0 {
            if let Some(irq) = &self.irq {
                let _ = irq.write(1);
            }
        }
    }

    fn status(&self) -> u8 {
        let mut s = SR_UNLOCKED;
        if !self.out.is_empty() {
            s |= SR_OBF;
        }
        if self.command_byte & CB_SYS != 0 {
            s |= SR_SYS;
        }
        if self.last_was_command {
            s |= SR_CMD;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.out.pop_front().unwrap_or(0);
        // The next byte fills the output buffer again.
        if !self.out.is_empty() {
            self.interrupt();
        }
        byte
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.pending = Pending::None;
        match cmd {
            CMD_READ_CB => self.push(self.command_byte),
            CMD_WRITE_CB | CMD_WRITE_OUTPUT | CMD_WRITE_AUX_OUT | CMD_WRITE_AUX => {
                self.pending = Pending::Controller(cmd)
            }
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST => self.push(0x00),
            // No aux port: its test reports a clock line stuck low.
            CMD_AUX_TEST => self.push(0x01),
            CMD_READ_OUTPUT => self.push(self.output_port),
            CMD_KBD_DISABLE | CMD_KBD_ENABLE | CMD_AUX_DISABLE | CMD_AUX_ENABLE => {}
            CMD_RESET_CPU => self.events.raise(VmEvent::Reset),
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.last_was_command = false;
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::Controller(CMD_WRITE_CB) => self.command_byte = byte,
            Pending::Controller(CMD_WRITE_OUTPUT) => {
                self.output_port = byte;
                // Bit 0 low holds the CPU in reset.
                if byte & 1 == 0 {
                    self.events.raise(VmEvent::Reset);
                }
            }
            // Bytes for a mouse that is not there are dropped.
            Pending::Controller(_) => {}
            Pending::Keyboard(KBD_SCANCODE_SET) if byte == 0 => {
                self.push(KBD_ACK);
                self.push(0x02);
            }
            Pending::Keyboard(_) => self.push(KBD_ACK),
            Pending::None => self.keyboard_command(byte),
        }
    }

    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            KBD_RESET => {
                self.out.clear();
                self.push(KBD_ACK);
                self.push(KBD_BAT_OK);
            }
            KBD_IDENTIFY => {
                self.push(KBD_ACK);
                self.push(KBD_ID[0]);
                self.push(KBD_ID[1]);
            }
            KBD_ECHO => self.push(KBD_ECHO),
            KBD_SET_LEDS | KBD_TYPEMATIC | KBD_SCANCODE_SET => {
                self.push(KBD_ACK);
                self.pending = Pending::Keyboard(cmd);
            }
            // Enable, disable, set defaults, and the rest: acknowledged.
            _ => self.push(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status(),
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else {
            return;
        };
        match offset {
            DATA_OFFSET => self.data(byte),
            COMMAND_OFFSET => self.command(byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Events(Mutex<Vec<VmEvent>>);
    impl VmEventSink for Events {
        fn raise(&self, e: VmEvent) {
            self.0.lock().unwrap().push(e);
        }
    }

    fn dev() -> (I8042, Arc<Events>, EventFd) {
        let events = Arc::new(Events::default());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let d = I8042::with_irq(events.clone(), irq.try_clone().unwrap());
        (d, events, irq)
    }

    fn out(d: &mut I8042, port: u64, b: u8) {
        d.write(port, &[b]);
    }

    fn input(d: &mut I8042, port: u64) -> u8 {
        let mut b = [0u8];
        d.read(port, &mut b);
        b[0]
    }

    /// Everything queued for the guest, as the driver reads it.
    fn drain(d: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        while input(d, COMMAND_OFFSET) & SR_OBF != 0 {
            v.push(input(d, DATA_OFFSET));
        }
        v
    }

    /// What Linux's i8042 probe and atkbd's detection do, in order.
    #[test]
    fn linux_probe_sequence_finds_a_keyboard() {
        let (mut d, _, irq) = dev();
        assert_eq!(input(&mut d, COMMAND_OFFSET) & SR_OBF, 0, "starts empty");
        out(&mut d, COMMAND_OFFSET, CMD_READ_CB);
        let cb = drain(&mut d)[0];
        assert_ne!(cb & CB_XLATE, 0);
        out(&mut d, COMMAND_OFFSET, CMD_SELF_TEST);
        assert_eq!(drain(&mut d), [0x55]);
        out(&mut d, COMMAND_OFFSET, CMD_WRITE_CB);
        out(&mut d, DATA_OFFSET, cb & !CB_KBD_INT);
        out(&mut d, COMMAND_OFFSET, CMD_KBD_TEST);
        assert_eq!(drain(&mut d), [0x00]);
        out(&mut d, COMMAND_OFFSET, CMD_AUX_TEST);
        assert_ne!(drain(&mut d), [0x00], "no aux port");
        // Interrupts on again; the keyboard answers its commands.
        out(&mut d, COMMAND_OFFSET, CMD_WRITE_CB);
        out(&mut d, DATA_OFFSET, cb);
        let _ = irq.read();
        out(&mut d, DATA_OFFSET, KBD_IDENTIFY);
        assert_eq!(irq.read().unwrap(), 1, "IRQ 1 raised");
        assert_eq!(drain(&mut d), [KBD_ACK, 0xab, 0x83]);
        out(&mut d, DATA_OFFSET, KBD_SET_LEDS);
        out(&mut d, DATA_OFFSET, 0x02);
        assert_eq!(drain(&mut d), [KBD_ACK, KBD_ACK]);
        out(&mut d, DATA_OFFSET, KBD_SCANCODE_SET);
        out(&mut d, DATA_OFFSET, 0);
        assert_eq!(drain(&mut d), [KBD_ACK, KBD_ACK, 0x02]);
        out(&mut d, DATA_OFFSET, KBD_RESET);
        assert_eq!(drain(&mut d), [KBD_ACK, KBD_BAT_OK]);
    }

    #[test]
    fn ctrl_alt_del_follows_the_translation_bit() {
        let (mut d, _, irq) = dev();
        d.send_ctrl_alt_del();
        assert!(irq.read().is_ok());
        assert_eq!(drain(&mut d), CAD_SET1);
        out(&mut d, COMMAND_OFFSET, CMD_WRITE_CB);
        out(&mut d, DATA_OFFSET, CB_KBD_INT | CB_SYS);
        d.send_ctrl_alt_del();
        assert_eq!(drain(&mut d), CAD_SET2);
    }

    #[test]
    fn reset_through_the_command_port_and_the_output_port() {
        let (mut d, events, _) = dev();
        out(&mut d, COMMAND_OFFSET, CMD_RESET_CPU);
        out(&mut d, COMMAND_OFFSET, CMD_WRITE_OUTPUT);
        out(&mut d, DATA_OFFSET, 0xfe);
        assert_eq!(*events.0.lock().unwrap(), [VmEvent::Reset, VmEvent::Reset]);
    }

    #[test]
    fn ctrl_alt_del_is_queued_whole_or_not_at_all() {
        let (mut d, _, _) = dev();
        for _ in 0..20 {
            d.send_ctrl_alt_del();
        }
        let got = drain(&mut d);
        assert_eq!(got.len() % CAD_SET1.len(), 0);
        assert!(got.chunks(CAD_SET1.len()).all(|c| c == CAD_SET1));
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_queue() {
        let (mut d, _, _) = dev();
        for _ in 0..1000 {
            out(&mut d, DATA_OFFSET, KBD_IDENTIFY);
            // Odd widths and offsets are harmless.
            d.write(2, &[1, 2, 3, 4]);
            d.read(1, &mut [0u8; 4]);
            d.write(DATA_OFFSET, &[]);
        }
        assert_eq!(drain(&mut d).len(), QUEUE_MAX);
    }
}
