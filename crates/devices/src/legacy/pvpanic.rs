//! pvpanic: the guest kernel's pvpanic driver (ACPI id QEMU0001) writes here
//! when it panics. Reading returns the events we support.

use std::sync::Arc;

use crate::{BusDevice, VmEvent, VmEventSink};

const PVPANIC_PANICKED: u8 = 1 << 0;
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    events: Arc<dyn VmEventSink>,
}

impl PvPanic {
    pub fn new(events: Arc<dyn VmEventSink>) -> Self {
        PvPanic { events }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first().is_some_and(|v| v & PVPANIC_PANICKED != 0) {
            self.events.raise(VmEvent::Panic);
        }
    }
}
