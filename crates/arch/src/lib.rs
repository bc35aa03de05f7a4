//! x86_64 platform setup for booting Linux: where things go in guest memory
//! (`boot`), what the vCPUs look like (`cpuid`, `msr`, `regs`) and how the
//! platform is described to the guest (`acpi`).

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod msr;
pub mod regs;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {what} into guest memory at {addr:#x}")]
    GuestWrite { what: &'static str, addr: u64 },
    #[error("boot configuration failed: {0}")]
    BootConfig(#[from] linux_loader::configurator::Error),
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::Error),
    #[error("cannot build CPUID: {0}")]
    Cpuid(String),
}

pub type Result<T> = std::result::Result<T, Error>;
