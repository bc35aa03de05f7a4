//! The part of the i8042 keyboard controller Linux uses to reset the machine
//! (`reboot=k`): command 0xFE on port 0x64 pulses the CPU reset line.

use std::sync::Arc;

use crate::{BusDevice, VmEvent, VmEventSink};

const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    events: Arc<dyn VmEventSink>,
}

impl I8042 {
    pub fn new(events: Arc<dyn VmEventSink>) -> Self {
        I8042 { events }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status and data both read as 0: buffers empty, so `kb_wait` ends.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.events.raise(VmEvent::Reset);
        }
    }
}
