//! The VM's PCI segment: the bus with its host bridge, the configuration
//! and BAR-window devices to put on the port and MMIO buses, the resource
//! allocator (BAR addresses, MSI GSIs), and the KVM side of the devices'
//! interrupt and doorbell hooks: `KvmMsiRouter` (GSI routing table + irqfds)
//! and `KvmIoEvents` (ioeventfds).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::pci::{
    BarKind, IoEventRegistrar, MsiMessage, MsiRouter, PciBarWindow, PciBus, PciConfigIo,
    PciConfigMmio, SharedPciBus,
};
use devices::virtio::transport::{
    VirtioPciDevice, VirtioPciError, VirtioPciResources, VIRTIO_PCI_BAR_SIZE,
};
use devices::virtio::VirtioDevice;
use devices::{Bus, BusError};
use hypervisor::{GsiRoute, IoEventAddress};
use memory::allocator::{AllocError, MmioWindow, SystemAllocator};
use memory::{layout, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum PciSetupError {
    #[error("PCI resources: {0}")]
    Alloc(#[from] AllocError),
    #[error("virtio-pci device: {0}")]
    Virtio(#[from] VirtioPciError),
    #[error("PCI bus: {0}")]
    Pci(#[from] devices::pci::PciError),
    #[error("PCI bus ranges: {0}")]
    Bus(#[from] BusError),
}

/// The KVM operations `KvmMsiRouter` uses: a seam so tests can make any of
/// them fail.
pub(crate) trait IrqRouting: Send + Sync {
    /// Replace the whole GSI routing table.
    fn set_gsi_routing(&self, routes: &[GsiRoute]) -> io::Result<()>;
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> io::Result<()>;
    fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> io::Result<()>;
}

impl IrqRouting for hypervisor::Vm {
    fn set_gsi_routing(&self, routes: &[GsiRoute]) -> io::Result<()> {
        hypervisor::Vm::set_gsi_routing(self, routes).map_err(io::Error::other)
    }
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> io::Result<()> {
        hypervisor::Vm::register_irqfd(self, evt, gsi).map_err(io::Error::other)
    }
    fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> io::Result<()> {
        hypervisor::Vm::unregister_irqfd(self, evt, gsi).map_err(io::Error::other)
    }
}

/// MSI delivery through KVM: keeps the VM's GSI routing table (the legacy
/// interrupt controller pins plus one MSI route per enabled vector) and
/// attaches each vector's irqfd to its GSI.
///
/// A GSI is in `msi_routes` exactly when KVM has its route and its irqfd:
/// each call changes both or, on failure, neither (it rolls back what it
/// did), so a vector that failed to set up is retried by the next call
/// rather than mistaken for a working one. A rollback that itself fails can
/// leave a route without an irqfd in KVM's table; nothing signals that GSI,
/// and the next successful push replaces the table.
pub struct KvmMsiRouter {
    vm: Arc<dyn IrqRouting>,
    msi_routes: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl KvmMsiRouter {
    pub fn new(vm: Arc<hypervisor::Vm>) -> Self {
        Self::with_routing(vm)
    }

    pub(crate) fn with_routing(vm: Arc<dyn IrqRouting>) -> Self {
        KvmMsiRouter {
            vm,
            msi_routes: Mutex::new(BTreeMap::new()),
        }
    }

    fn push(&self, msi: &BTreeMap<u32, MsiMessage>) -> io::Result<()> {
        let mut routes = GsiRoute::legacy();
        routes.extend(msi.iter().map(|(gsi, m)| GsiRoute::Msi {
            gsi: *gsi,
            address: m.address,
            data: m.data,
        }));
        self.vm.set_gsi_routing(&routes)
    }

    #[cfg(test)]
    fn routed(&self) -> BTreeMap<u32, MsiMessage> {
        lock(&self.msi_routes).clone()
    }
}

impl MsiRouter for KvmMsiRouter {
    fn enable_vector(&self, gsi: u32, msg: MsiMessage, irqfd: &EventFd) -> io::Result<()> {
        let mut msi = lock(&self.msi_routes);
        let old = msi.get(&gsi).copied();
        if old == Some(msg) {
            return Ok(());
        }
        let mut next = msi.clone();
        next.insert(gsi, msg);
        // KVM_SET_GSI_ROUTING replaces the table or leaves it alone.
        self.push(&next)?;
        if old.is_none() {
            if let Err(e) = self.vm.register_irqfd(irqfd, gsi) {
                // Take the route back out: the vector stays not set up.
                let _ = self.push(&msi);
                return Err(e);
            }
        }
        *msi = next;
        Ok(())
    }

    fn disable_vector(&self, gsi: u32, irqfd: &EventFd) -> io::Result<()> {
        let mut msi = lock(&self.msi_routes);
        if !msi.contains_key(&gsi) {
            return Ok(());
        }
        // Still registered if this fails: the entry stays, a retry works.
        self.vm.unregister_irqfd(irqfd, gsi)?;
        msi.remove(&gsi);
        // If this fails the old route lingers without an irqfd (harmless).
        self.push(&msi)
    }
}

/// Doorbells through KVM ioeventfds.
pub struct KvmIoEvents {
    vm: Arc<hypervisor::Vm>,
}

impl KvmIoEvents {
    pub fn new(vm: Arc<hypervisor::Vm>) -> Self {
        KvmIoEvents { vm }
    }
}

impl IoEventRegistrar for KvmIoEvents {
    fn register_mmio(&self, addr: u64, evt: &EventFd) -> io::Result<()> {
        self.vm
            .register_ioevent(evt, IoEventAddress::Mmio(addr))
            .map_err(io::Error::other)
    }

    fn unregister_mmio(&self, addr: u64, evt: &EventFd) -> io::Result<()> {
        self.vm
            .unregister_ioevent(evt, IoEventAddress::Mmio(addr))
            .map_err(io::Error::other)
    }

    fn register_mmio_datamatch(&self, addr: u64, value: u32, evt: &EventFd) -> io::Result<()> {
        self.vm
            .register_ioevent_datamatch(evt, IoEventAddress::Mmio(addr), value)
            .map_err(io::Error::other)
    }

    fn unregister_mmio_datamatch(&self, addr: u64, value: u32, evt: &EventFd) -> io::Result<()> {
        self.vm
            .unregister_ioevent_datamatch(evt, IoEventAddress::Mmio(addr), value)
            .map_err(io::Error::other)
    }
}

/// Segment 0 of a VM, with what it needs to add devices.
pub struct PciSegment {
    pub bus: SharedPciBus,
    pub allocator: SystemAllocator,
    msi: Arc<dyn MsiRouter>,
    ioevents: Arc<dyn IoEventRegistrar>,
}

impl PciSegment {
    /// A segment for a VM with `ram_mib` MiB of RAM whose interrupts and
    /// doorbells go through KVM.
    pub fn new(vm: Arc<hypervisor::Vm>, ram_mib: u64) -> Result<Self, PciSetupError> {
        Ok(Self::with_hooks(
            ram_mib,
            Arc::new(KvmMsiRouter::new(vm.clone())),
            Arc::new(KvmIoEvents::new(vm)),
        )?)
    }

    /// A segment with other interrupt and doorbell hooks (tests).
    pub fn with_hooks(
        ram_mib: u64,
        msi: Arc<dyn MsiRouter>,
        ioevents: Arc<dyn IoEventRegistrar>,
    ) -> Result<Self, AllocError> {
        Ok(PciSegment {
            bus: Arc::new(Mutex::new(PciBus::new())),
            allocator: SystemAllocator::new(ram_mib)?,
            msi,
            ioevents,
        })
    }

    /// Put the configuration mechanisms and the BAR windows on the buses:
    /// ports 0xCF8..0xD00 on `pio`; ECAM and both BAR windows on `mmio`.
    pub fn attach(&self, pio: &mut Bus, mmio: &mut Bus) -> Result<(), BusError> {
        pio.insert(
            u64::from(layout::PCI_CONFIG_IO_PORT),
            layout::PCI_CONFIG_IO_PORT_SIZE,
            Arc::new(Mutex::new(PciConfigIo::new(self.bus.clone()))),
        )?;
        mmio.insert(
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(self.bus.clone()))),
        )?;
        mmio.insert(
            layout::PCI_MMIO_32_START,
            layout::PCI_MMIO_32_SIZE,
            Arc::new(Mutex::new(PciBarWindow::new(
                self.bus.clone(),
                layout::PCI_MMIO_32_START,
            ))),
        )?;
        let (start, size) = self.allocator.mmio64_window();
        mmio.insert(
            start,
            size,
            Arc::new(Mutex::new(PciBarWindow::new(self.bus.clone(), start))),
        )?;
        Ok(())
    }

    /// Put `device` on the bus behind a virtio-pci transport: allocate its
    /// BAR (below 4 GiB) and one GSI per MSI-X vector. Returns the transport
    /// (shared with the bus) and its slot.
    pub fn add_virtio(
        &mut self,
        device: Box<dyn VirtioDevice>,
        mem: &GuestMemory,
    ) -> Result<(Arc<Mutex<VirtioPciDevice>>, u8), PciSetupError> {
        let vectors = VirtioPciDevice::msix_vectors(&*device);
        let gsis = self.allocator.allocate_gsis(usize::from(vectors))?;
        let bar_addr = self.allocator.allocate_mmio(
            MmioWindow::Below4G,
            VIRTIO_PCI_BAR_SIZE,
            VIRTIO_PCI_BAR_SIZE,
        )?;
        let transport = VirtioPciDevice::new(
            device,
            mem.clone(),
            VirtioPciResources {
                bar_kind: BarKind::Memory32,
                bar_addr,
                gsis,
                msi_router: self.msi.clone(),
                ioevents: self.ioevents.clone(),
            },
        )?;
        let transport = Arc::new(Mutex::new(transport));
        let slot = lock(&self.bus).add_device(transport.clone())?;
        Ok((transport, slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::pci::NoHypervisor;
    use devices::virtio::{ActivateError, ActiveQueue, Interrupt};

    struct Nothing;
    impl VirtioDevice for Nothing {
        fn device_type(&self) -> u32 {
            devices::virtio::device_type::BLOCK
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![256; 2]
        }
        fn avail_features(&self) -> u64 {
            devices::virtio::VIRTIO_F_VERSION_1
        }
        fn ack_features(&mut self, _features: u64) {}
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _mem: GuestMemory,
            _queues: Vec<ActiveQueue>,
            _interrupt: Arc<dyn Interrupt>,
        ) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn devices_get_a_slot_a_bar_and_gsis_and_answer_on_the_buses() {
        let mem = memory::create_guest_memory(64).unwrap();
        let mut seg =
            PciSegment::with_hooks(64, Arc::new(NoHypervisor), Arc::new(NoHypervisor)).unwrap();
        let (mut pio, mut mmio) = (Bus::new(), Bus::new());
        seg.attach(&mut pio, &mut mmio).unwrap();
        let (_, a) = seg.add_virtio(Box::new(Nothing), &mem).unwrap();
        let (_, b) = seg.add_virtio(Box::new(Nothing), &mem).unwrap();
        assert_eq!((a, b), (1, 2));
        // Config mechanism #1 sees the second device's ids.
        let addr = 0x8000_0000u32 | u32::from(b) << 11;
        pio.write(0xcf8, &addr.to_le_bytes());
        let mut id = [0u8; 4];
        pio.read(0xcfc, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1042_1af4);
        // Its BAR follows the first one's, and after memory decoding is
        // enabled through ECAM, the BAR window routes to it.
        let ecam = layout::PCI_ECAM_START + (u64::from(b) << 15);
        let mut bar = [0u8; 4];
        mmio.read(ecam + 0x10, &mut bar);
        let bar = u64::from(u32::from_le_bytes(bar));
        assert_eq!(bar, layout::PCI_MMIO_32_START + VIRTIO_PCI_BAR_SIZE);
        mmio.write(ecam + 4, &[2, 0]);
        let mut nq = [0u8; 2];
        assert!(mmio.read(bar + 0x12, &mut nq));
        assert_eq!(u16::from_le_bytes(nq), 2);
        // 3 vectors each: GSIs 24..30 are taken.
        assert_eq!(seg.allocator.allocate_gsi().unwrap(), 30);
    }

    /// Runs only where /dev/kvm can be opened.
    #[test]
    fn kvm_msi_router_routes_and_unroutes() {
        let Ok(hv) = hypervisor::Hypervisor::new() else {
            eprintln!("no usable /dev/kvm: skipped");
            return;
        };
        let vm = hv.create_vm().unwrap();
        vm.setup_platform(layout::KVM_TSS_START).unwrap();
        let vm = Arc::new(vm);
        let router = KvmMsiRouter::new(vm.clone());
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x30,
        };
        router.enable_vector(24, msg, &fd).unwrap();
        router.enable_vector(24, msg, &fd).unwrap();
        router
            .enable_vector(24, MsiMessage { data: 0x31, ..msg }, &fd)
            .unwrap();
        router.disable_vector(24, &fd).unwrap();
        router.disable_vector(24, &fd).unwrap();
        let io = KvmIoEvents::new(vm);
        io.register_mmio(0xc000_3000, &fd).unwrap();
        io.unregister_mmio(0xc000_3000, &fd).unwrap();
    }

    /// KVM's side as a model: the routing table and the registered irqfds,
    /// with failures to inject.
    #[derive(Default)]
    struct FakeKvm {
        table: Mutex<Vec<GsiRoute>>,
        irqfds: Mutex<Vec<u32>>,
        fail_register: Mutex<u32>,
        fail_unregister: Mutex<u32>,
    }

    impl FakeKvm {
        fn msi_gsis(&self) -> Vec<u32> {
            let table = self.table.lock().unwrap();
            table
                .iter()
                .filter_map(|r| match r {
                    GsiRoute::Msi { gsi, .. } => Some(*gsi),
                    GsiRoute::Irqchip { .. } => None,
                })
                .collect()
        }
        fn irqfds(&self) -> Vec<u32> {
            self.irqfds.lock().unwrap().clone()
        }
        fn take_failure(counter: &Mutex<u32>) -> bool {
            let mut n = counter.lock().unwrap();
            let fail = *n > 0;
            *n = n.saturating_sub(1);
            fail
        }
    }

    impl IrqRouting for FakeKvm {
        fn set_gsi_routing(&self, routes: &[GsiRoute]) -> io::Result<()> {
            *self.table.lock().unwrap() = routes.to_vec();
            Ok(())
        }
        fn register_irqfd(&self, _evt: &EventFd, gsi: u32) -> io::Result<()> {
            if Self::take_failure(&self.fail_register) {
                return Err(io::Error::other("injected KVM_IRQFD failure"));
            }
            self.irqfds.lock().unwrap().push(gsi);
            Ok(())
        }
        fn unregister_irqfd(&self, _evt: &EventFd, gsi: u32) -> io::Result<()> {
            if Self::take_failure(&self.fail_unregister) {
                return Err(io::Error::other("injected KVM_IRQFD deassign failure"));
            }
            self.irqfds.lock().unwrap().retain(|g| *g != gsi);
            Ok(())
        }
    }

    #[test]
    fn a_failed_irqfd_registration_rolls_the_route_back_and_is_retried() {
        let kvm = Arc::new(FakeKvm::default());
        let router = KvmMsiRouter::with_routing(kvm.clone());
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x30,
        };
        *kvm.fail_register.lock().unwrap() = 1;
        assert!(router.enable_vector(24, msg, &fd).is_err());
        // Neither half is left behind: no route, no irqfd, not set up.
        assert!(kvm.msi_gsis().is_empty());
        assert!(kvm.irqfds().is_empty());
        assert!(router.routed().is_empty());
        // The same call again really sets the vector up (before, it found
        // the message recorded and returned Ok with no irqfd behind it).
        router.enable_vector(24, msg, &fd).unwrap();
        assert_eq!(kvm.msi_gsis(), vec![24]);
        assert_eq!(kvm.irqfds(), vec![24]);
        assert_eq!(router.routed().get(&24), Some(&msg));
        // A legacy-only table is still pushed in full.
        assert!(kvm.table.lock().unwrap().len() > 24);
    }

    #[test]
    fn a_failed_irqfd_unregistration_keeps_the_vector_until_a_retry() {
        let kvm = Arc::new(FakeKvm::default());
        let router = KvmMsiRouter::with_routing(kvm.clone());
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x31,
        };
        router.enable_vector(25, msg, &fd).unwrap();
        *kvm.fail_unregister.lock().unwrap() = 1;
        assert!(router.disable_vector(25, &fd).is_err());
        assert_eq!(kvm.msi_gsis(), vec![25]);
        assert_eq!(kvm.irqfds(), vec![25]);
        assert_eq!(router.routed().get(&25), Some(&msg));
        router.disable_vector(25, &fd).unwrap();
        assert!(kvm.msi_gsis().is_empty());
        assert!(kvm.irqfds().is_empty());
        assert!(router.routed().is_empty());
    }
}
