//! PCI: configuration space (`config`), MSI-X (`msix`), and the bus with its
//! host bridge and guest access paths (`bus`): configuration mechanism #1
//! through ports 0xCF8/0xCFC, ECAM through MMIO, and BAR accesses routed to
//! the owning function by the BARs' current addresses.
//!
//! The VMM provides two hooks so devices never depend on the hypervisor:
//! `MsiRouter` (program an MSI route for a GSI and attach an irqfd to it) and
//! `IoEventRegistrar` (KVM ioeventfds, so a guest write to a doorbell address
//! signals an eventfd without a vCPU exit handler).

pub mod bus;
pub mod config;
pub mod msix;

use std::io;

use vmm_sys_util::eventfd::EventFd;

pub use bus::{
    PciBarWindow, PciBus, PciConfigIo, PciConfigMmio, PciError, PciHostBridge, SharedPciBus,
    SharedPciDevice,
};
pub use config::{Bar, BarKind, ConfigError, ConfigSpace, ConfigSpaceState, PciIds};
pub use msix::{Msix, MsixError, MsixLayout, MsixState, MSIX_NO_VECTOR};

/// One PCI function as the bus sees it.
pub trait PciDevice: Send {
    /// The function's configuration space.
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// A guest configuration read at `offset` (0..4096; beyond 256 reads 0).
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// A guest configuration write; devices with capabilities that have side
    /// effects (MSI-X enable and mask) override this and look at the result.
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }

    /// A guest read at `offset` within BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A guest write at `offset` within BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// BAR `bar` stopped decoding at `from` and/or started at `to` (the guest
    /// moved it or toggled memory decoding). Devices with ioeventfds in the
    /// BAR move them here.
    fn bar_moved(&mut self, _bar: usize, _from: Option<u64>, _to: Option<u64>) {}
}

/// An MSI message: what the device writes, and where, to interrupt a CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// Delivers MSI vectors; the VMM implements it with KVM GSI routing and
/// irqfds. Each vector owns one GSI (from the VMM's allocator) and one
/// irqfd; a device interrupts by writing its irqfd.
pub trait MsiRouter: Send + Sync {
    /// Route `gsi` to `msg` and make writes to `irqfd` inject it. Called
    /// again when the guest changes the message; must be idempotent. The
    /// route and the irqfd change together or not at all: on error the
    /// vector is as it was before the call, so the caller may retry.
    fn enable_vector(&self, gsi: u32, msg: MsiMessage, irqfd: &EventFd) -> io::Result<()>;
    /// Stop delivering `gsi` (MSI-X disabled, device gone). On error the
    /// vector is still set up and a later call retries.
    fn disable_vector(&self, gsi: u32, irqfd: &EventFd) -> io::Result<()>;
}

/// Registers doorbell eventfds with the hypervisor (KVM ioeventfd): a guest
/// write of any size and value to `addr` signals `evt` without a vCPU exit
/// handler running.
pub trait IoEventRegistrar: Send + Sync {
    fn register_mmio(&self, addr: u64, evt: &EventFd) -> io::Result<()>;
    fn unregister_mmio(&self, addr: u64, evt: &EventFd) -> io::Result<()>;
    /// Like `register_mmio`, for 32-bit writes of `value` only (virtio-mmio's
    /// QueueNotify, one eventfd per queue index). Unsupported unless the
    /// registrar says otherwise; the write then exits to the vCPU thread.
    fn register_mmio_datamatch(&self, _addr: u64, _value: u32, _evt: &EventFd) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn unregister_mmio_datamatch(&self, _addr: u64, _value: u32, _evt: &EventFd) -> io::Result<()> {
        Ok(())
    }
}

/// A router that delivers nothing and an ioevent registrar that registers
/// nothing: for tests, and for VMs without a hypervisor behind them.
pub struct NoHypervisor;

impl MsiRouter for NoHypervisor {
    fn enable_vector(&self, _gsi: u32, _msg: MsiMessage, _irqfd: &EventFd) -> io::Result<()> {
        Ok(())
    }
    fn disable_vector(&self, _gsi: u32, _irqfd: &EventFd) -> io::Result<()> {
        Ok(())
    }
}

impl IoEventRegistrar for NoHypervisor {
    fn register_mmio(&self, _addr: u64, _evt: &EventFd) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn unregister_mmio(&self, _addr: u64, _evt: &EventFd) -> io::Result<()> {
        Ok(())
    }
}
