//! Emulated devices and the buses that route guest port and MMIO accesses to
//! them. Devices never reach into the VMM: when the guest does something that
//! concerns the whole VM (power off, reset, panic), a device raises a
//! `VmEvent` through the `VmEventSink` it was given.

pub mod bus;
pub mod legacy;
pub mod pci;
pub mod rate_limiter;
pub mod thread;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};

/// A VM-wide request from the guest, raised by a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// ACPI S5 power off.
    PowerOff,
    /// Reset through the i8042 or the ACPI reset register.
    Reset,
    /// The guest kernel reported a panic (pvpanic).
    Panic,
    /// The guest asked to end the VM with this status (Vireo's exit port).
    Exit(u8),
}

/// Where devices send `VmEvent`s; implemented by the VMM.
pub trait VmEventSink: Send + Sync {
    fn raise(&self, event: VmEvent);
}
