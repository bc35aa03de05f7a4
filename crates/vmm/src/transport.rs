//! Which virtio transport carries the VM's devices, and virtio-mmio's
//! VMM side: each device gets a 4 KiB register block in the virtio-mmio
//! window and an IOAPIC pin (`SystemAllocator::allocate_virtio_mmio`), an
//! irqfd on that pin, KVM ioeventfds for QueueNotify, and a DSDT entry.
//! The builder holds every transport the same way (`SharedTransport`), for
//! pause and resume.

use std::sync::{Arc, Mutex};

use devices::virtio::transport::{
    VirtioMmioDevice, VirtioMmioError, VirtioMmioResources, VirtioTransport, VIRTIO_MMIO_SIZE,
};
use devices::virtio::VirtioDevice;
use devices::{Bus, BusError};
use memory::allocator::AllocError;
use memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use crate::config::Transport;
use crate::pci::{KvmIoEvents, PciSegment};
use crate::Error;

/// A virtio transport as the VM holds it.
pub type SharedTransport = Arc<Mutex<dyn VirtioTransport>>;

#[derive(Debug, thiserror::Error)]
pub enum MmioSetupError {
    #[error("virtio-mmio resources: {0}")]
    Alloc(#[from] AllocError),
    #[error("{0}")]
    Virtio(#[from] VirtioMmioError),
    #[error("virtio-mmio device at {base:#x}: interrupt (GSI {gsi}): {source}")]
    Irq {
        base: u64,
        gsi: u32,
        #[source]
        source: hypervisor::Error,
    },
    #[error("virtio-mmio irqfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("virtio-mmio bus range: {0}")]
    Bus(#[from] BusError),
}

/// The VM's virtio-mmio devices: what the DSDT must describe.
pub struct MmioDevices {
    vm: Arc<hypervisor::Vm>,
    ioevents: Arc<KvmIoEvents>,
    pub described: Vec<arch::acpi::VirtioMmioDevice>,
}

impl MmioDevices {
    pub fn new(vm: Arc<hypervisor::Vm>) -> Self {
        MmioDevices {
            ioevents: Arc::new(KvmIoEvents::new(vm.clone())),
            vm,
            described: Vec::new(),
        }
    }

    /// Put `device` behind a new virtio-mmio transport on `bus`.
    fn add(
        &mut self,
        pci: &mut PciSegment,
        bus: &mut Bus,
        device: Box<dyn VirtioDevice>,
        mem: &GuestMemory,
    ) -> Result<Arc<Mutex<VirtioMmioDevice>>, MmioSetupError> {
        let (base, gsi) = pci.allocator.allocate_virtio_mmio()?;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(MmioSetupError::EventFd)?;
        self.vm
            .register_irqfd(&irqfd, gsi)
            .map_err(|source| MmioSetupError::Irq { base, gsi, source })?;
        let transport = VirtioMmioDevice::new(
            device,
            mem.clone(),
            VirtioMmioResources {
                base,
                irqfd,
                ioevents: self.ioevents.clone(),
            },
        )?;
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(base, VIRTIO_MMIO_SIZE, transport.clone())?;
        self.described
            .push(arch::acpi::VirtioMmioDevice { base, gsi });
        Ok(transport)
    }
}

/// Put `device` on `transport`: a virtio-pci function on the PCI segment,
/// or a virtio-mmio device on the MMIO bus.
pub fn add_virtio(
    transport: Transport,
    device: Box<dyn VirtioDevice>,
    mem: &GuestMemory,
    pci: &mut PciSegment,
    mmio: &mut MmioDevices,
    bus: &mut Bus,
) -> Result<SharedTransport, Error> {
    Ok(match transport {
        Transport::Pci => pci.add_virtio(device, mem)?.0,
        Transport::Mmio => mmio.add(pci, bus, device, mem)?,
    })
}
