//! Vireo's exit port: one byte written here ends the VM, and `vireo run`
//! exits with that byte as its status. The default guest's init uses it
//! (through /dev/port) to hand back the status of `vireo run -- CMD`.

use std::sync::Arc;

use crate::{BusDevice, VmEvent, VmEventSink};

pub struct ExitPort {
    events: Arc<dyn VmEventSink>,
}

impl ExitPort {
    pub fn new(events: Arc<dyn VmEventSink>) -> Self {
        ExitPort { events }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&status) = data.first() {
            self.events.raise(VmEvent::Exit(status));
        }
    }
}
