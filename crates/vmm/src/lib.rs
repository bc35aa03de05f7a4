//! Vireo's VM lifecycle: the configuration value (`config`), building a VM
//! from it (`builder`), the vCPU threads (`vcpu`), the VMM thread's event
//! loop (`event_loop`), the console's host side (`console`) and why a VM
//! ended (`exit`).

pub mod api_control;
pub mod builder;
pub mod config;
pub mod console;
pub mod event_loop;
pub mod exit;
pub mod lifecycle;
pub mod memory_usage;
pub mod observe;
pub mod pci;
pub mod resources;
pub mod transport;
pub mod vcpu;

use std::path::PathBuf;

pub use builder::{build, preflight, Vm};
pub use config::{ConsoleConfig, VmConfig};
pub use exit::ExitReason;
pub use lifecycle::RunState;

/// Everything that can stop a VM from being built or run, with the context
/// a user needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}", path = path.display())]
    Load {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: arch::boot::LoadError,
    },
    #[error("the kernel command line is {len} bytes; Linux keeps at most {max} (a long `-- CMD` counts, base64-encoded)")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("{requested} vCPUs requested; this host allows 1 to {max} per VM")]
    Vcpus { requested: usize, max: usize },
    #[error(transparent)]
    Memory(#[from] memory::Error),
    #[error("console file {path}: {source}")]
    ConsoleFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("KVM: {0}")]
    Hypervisor(#[from] hypervisor::Error),
    #[error("boot setup: {0}")]
    Arch(#[from] arch::Error),
    #[error("device setup: {0}")]
    Bus(#[from] devices::BusError),
    #[error("PCI setup: {0}")]
    Pci(#[from] pci::PciSetupError),
    #[error("virtio-mmio setup: {0}")]
    VirtioMmio(#[from] transport::MmioSetupError),
    #[error(transparent)]
    Disk(#[from] devices::virtio::block::Error),
    #[error(transparent)]
    Vsock(#[from] devices::virtio::vsock::Error),
    #[error("balloon: {0}")]
    Balloon(String),
    #[error(transparent)]
    Net(#[from] devices::virtio::net::Error),
    #[error("net {tap}: {reason}")]
    NetConfig { tap: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Build the VM described by `config` and run it to its end.
pub fn run(config: &VmConfig) -> Result<ExitReason, Error> {
    build(config)?.run()
}
