//! ACPI hardware-reduced power registers (FADT sleep control/status and reset
//! registers): S5 through the sleep control register powers off, the reset
//! value in the reset register resets.

use std::sync::Arc;

use memory::layout::{ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE};

use crate::{BusDevice, VmEvent, VmEventSink};

const SLEEP_CONTROL: u64 = 0;
const RESET: u64 = 2;
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

pub struct AcpiPower {
    events: Arc<dyn VmEventSink>,
}

impl AcpiPower {
    pub fn new(events: Arc<dyn VmEventSink>) -> Self {
        AcpiPower { events }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            SLEEP_CONTROL
                if v & SLP_EN != 0 && (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK == ACPI_S5_SLEEP_TYPE =>
            {
                self.events.raise(VmEvent::PowerOff)
            }
            RESET if v == ACPI_RESET_VALUE => self.events.raise(VmEvent::Reset),
            _ => {}
        }
    }
}
