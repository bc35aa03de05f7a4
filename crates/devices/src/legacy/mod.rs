//! Legacy platform devices on I/O ports: the 16550 serial console, the i8042
//! reset line, ACPI sleep/reset registers, pvpanic and Vireo's exit port.

mod exit;
mod i8042;
mod power;
mod pvpanic;
mod serial;

pub use exit::ExitPort;
pub use i8042::I8042;
pub use power::AcpiPower;
pub use pvpanic::PvPanic;
pub use serial::Serial;
