//! Transports that expose a `VirtioDevice` to the guest: virtio-pci, the
//! modern (virtio 1.x) PCI transport (`pci`, with its common configuration
//! registers in `pci_common`), and virtio-mmio (`mmio`, version 2). Both
//! drive the device through one `TransportCore` (`core`): feature
//! negotiation, queue checks, activation and the asynchronous reset.

pub mod core;
pub mod mmio;
pub mod pci;
pub mod pci_common;

#[cfg(test)]
mod fake_device;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(any(test, feature = "fuzzing"))]
pub mod mmio_fuzzing;
#[cfg(test)]
mod mmio_tests;
#[cfg(test)]
mod pci_tests;

pub use self::core::{CoreError, TransportCore, TransportHooks, VirtioTransport};
pub use mmio::{
    VirtioMmioDevice, VirtioMmioError, VirtioMmioResources, VirtioMmioState,
    MMIO_SIZE as VIRTIO_MMIO_SIZE,
};
pub use pci::{
    VirtioPciDevice, VirtioPciError, VirtioPciResources, VirtioPciState,
    BAR_SIZE as VIRTIO_PCI_BAR_SIZE,
};
pub use pci_common::{QueueConfig, TransportState};
