//! One KVM VM: memory slots, the in-kernel interrupt controllers and PIT,
//! the GSI routing table (interrupt controller pins and MSI messages),
//! irqfds and ioeventfds, and vCPU creation.

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_pit_config, kvm_userspace_memory_region, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::{kvm_op, Error, Result, Vcpu};

/// Number of IOAPIC pins (GSIs 0..24 are the legacy interrupt lines).
pub const IOAPIC_PINS: u32 = 24;

/// One entry of a VM's GSI routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsiRoute {
    /// `gsi` drives `pin` of an in-kernel interrupt controller.
    Irqchip { gsi: u32, chip: IrqChip, pin: u32 },
    /// `gsi` delivers the message-signalled interrupt (`address`, `data`).
    Msi { gsi: u32, address: u64, data: u32 },
}

/// The in-kernel interrupt controllers a route can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqChip {
    PicMaster,
    PicSlave,
    Ioapic,
}

impl GsiRoute {
    /// The routes KVM_CREATE_IRQCHIP installs: GSIs 0..16 to the PICs and
    /// the IOAPIC, 16..24 to the IOAPIC. `KVM_SET_GSI_ROUTING` replaces the
    /// whole table, so a table with MSI routes must start with these.
    pub fn legacy() -> Vec<GsiRoute> {
        let mut routes = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            if gsi < 16 {
                let chip = if gsi < 8 {
                    IrqChip::PicMaster
                } else {
                    IrqChip::PicSlave
                };
                routes.push(GsiRoute::Irqchip {
                    gsi,
                    chip,
                    pin: gsi % 8,
                });
            }
            routes.push(GsiRoute::Irqchip {
                gsi,
                chip: IrqChip::Ioapic,
                pin: gsi,
            });
        }
        routes
    }

    fn to_kvm(self) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry::default();
        match self {
            GsiRoute::Irqchip { gsi, chip, pin } => {
                e.gsi = gsi;
                e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                e.u.irqchip.irqchip = match chip {
                    IrqChip::PicMaster => KVM_IRQCHIP_PIC_MASTER,
                    IrqChip::PicSlave => KVM_IRQCHIP_PIC_SLAVE,
                    IrqChip::Ioapic => KVM_IRQCHIP_IOAPIC,
                };
                e.u.irqchip.pin = pin;
            }
            GsiRoute::Msi { gsi, address, data } => {
                e.gsi = gsi;
                e.type_ = KVM_IRQ_ROUTING_MSI;
                e.u.msi.address_lo = address as u32;
                e.u.msi.address_hi = (address >> 32) as u32;
                e.u.msi.data = data;
            }
        }
        e
    }
}

pub struct Vm {
    fd: VmFd,
    next_slot: u32,
}

// KVM_REINJECT_CONTROL is `_IO(KVMIO, 0x71)` in <linux/kvm.h> although it
// takes a pointer to `struct kvm_reinject_control`; kvm-ioctls has no
// wrapper for it.
vmm_sys_util::ioctl_io_nr!(KVM_REINJECT_CONTROL, 0xAE, 0x71);

/// When the VM is dropped (its vCPUs are gone: the guest is over), PIT
/// tick reinjection is turned off first, and only then is the VM fd closed.
/// Closing a VM whose in-kernel PIT still reinjects makes KVM's teardown
/// (`kvm_free_pit`) unregister the PIT's IRQ-ack and mask notifiers and
/// wait for SRCU grace periods after the irqfds were shut down: 15 to 24 ms
/// of `close()` on this kind of host, the bulk of the time from the guest's
/// reset to Vireo's exit. Turned off here, the ioctl takes ~0.1 ms and the
/// close 1 to 4 ms (docs/bench.md). The guest sees nothing: it has stopped.
impl Drop for Vm {
    fn drop(&mut self) {
        let off = kvm_bindings::kvm_reinject_control {
            pit_reinject: 0,
            ..Default::default()
        };
        // SAFETY: KVM_REINJECT_CONTROL reads one `kvm_reinject_control`
        // from the pointer, which is valid and lives across the call; the
        // fd is this VM's. Failure (no PIT) changes nothing and is ignored.
        let _ =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_REINJECT_CONTROL(), &off) };
    }
}

impl Vm {
    pub(crate) fn new(fd: VmFd, _run_size: usize) -> Self {
        Vm { fd, next_slot: 0 }
    }

    /// Set up the x86 platform pieces KVM provides: TSS and identity-map
    /// pages (needed by VMX; placed just below 4 GiB), the in-kernel PIC,
    /// IOAPIC and LAPICs, and the PIT.
    pub fn setup_platform(&self, tss_addr: u64) -> Result<()> {
        self.fd
            .set_identity_map_address(tss_addr - 0x1000)
            .map_err(kvm_op("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .set_tss_address(tss_addr as usize)
            .map_err(kvm_op("KVM_SET_TSS_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(kvm_op("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(kvm_op("KVM_CREATE_PIT2"))
    }

    /// The VM's kvm-clock (KVM_GET_CLOCK): the guest's clock, in ns.
    pub fn clock(&self) -> Result<kvm_bindings::kvm_clock_data> {
        self.fd.get_clock().map_err(kvm_op("KVM_GET_CLOCK"))
    }

    /// Set the VM's kvm-clock to `clock.clock` ns (KVM_SET_CLOCK), as read
    /// by `clock`: the guest's clock then carries on from that value. The
    /// flags are cleared, so KVM does not add the host time that passed.
    pub fn set_clock(&self, clock: &kvm_bindings::kvm_clock_data) -> Result<()> {
        let data = kvm_bindings::kvm_clock_data {
            clock: clock.clock,
            ..Default::default()
        };
        self.fd.set_clock(&data).map_err(kvm_op("KVM_SET_CLOCK"))
    }

    /// Map host memory at `host_addr` into the guest at `guest_addr`.
    ///
    /// # Safety
    /// `host_addr..host_addr+size` must stay a valid mapping for the VM's
    /// whole life.
    pub unsafe fn map_memory(&mut self, guest_addr: u64, size: u64, host_addr: u64) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot: self.next_slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller guarantees the mapping outlives the VM.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(kvm_op("KVM_SET_USER_MEMORY_REGION"))?;
        self.next_slot += 1;
        Ok(())
    }

    /// Inject an interrupt on `gsi` whenever `evt` is written.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(kvm_op("KVM_IRQFD"))
    }

    /// Stop injecting on `gsi` when `evt` is written.
    pub fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .unregister_irqfd(evt, gsi)
            .map_err(kvm_op("KVM_IRQFD (deassign)"))
    }

    /// Replace the VM's whole GSI routing table with `routes` (include
    /// `GsiRoute::legacy()` to keep the interrupt controller pins working).
    pub fn set_gsi_routing(&self, routes: &[GsiRoute]) -> Result<()> {
        let entries: Vec<kvm_irq_routing_entry> = routes.iter().map(|r| r.to_kvm()).collect();
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| Error::Kvm {
            op: "KVM_SET_GSI_ROUTING",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(kvm_op("KVM_SET_GSI_ROUTING"))
    }

    /// Signal `evt` (without a vCPU exit) whenever the guest writes to the
    /// port or MMIO address `addr`.
    pub fn register_ioevent(&self, evt: &EventFd, addr: IoEventAddress) -> Result<()> {
        self.fd
            .register_ioevent(evt, &addr, kvm_ioctls::NoDatamatch)
            .map_err(kvm_op("KVM_IOEVENTFD"))
    }

    /// Undo `register_ioevent` for the same `evt` and `addr`.
    pub fn unregister_ioevent(&self, evt: &EventFd, addr: IoEventAddress) -> Result<()> {
        self.fd
            .unregister_ioevent(evt, &addr, kvm_ioctls::NoDatamatch)
            .map_err(kvm_op("KVM_IOEVENTFD (deassign)"))
    }

    /// Signal `evt` whenever the guest writes the 32-bit `value` to `addr`
    /// (other values and widths go on to a vCPU exit).
    pub fn register_ioevent_datamatch(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        value: u32,
    ) -> Result<()> {
        let op = "KVM_IOEVENTFD (datamatch)";
        self.fd
            .register_ioevent(evt, &addr, value)
            .map_err(kvm_op(op))
    }

    /// Undo `register_ioevent_datamatch` for the same `evt`, `addr` and `value`.
    pub fn unregister_ioevent_datamatch(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        value: u32,
    ) -> Result<()> {
        let op = "KVM_IOEVENTFD (datamatch, deassign)";
        self.fd
            .unregister_ioevent(evt, &addr, value)
            .map_err(kvm_op(op))
    }

    /// Create vCPU number `id`.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu> {
        let fd = self.fd.create_vcpu(id).map_err(kvm_op("KVM_CREATE_VCPU"))?;
        Ok(Vcpu::new(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_routes_match_kvm_defaults() {
        let r = GsiRoute::legacy();
        // 16 GSIs with a PIC and an IOAPIC route, 8 with only the IOAPIC.
        assert_eq!(r.len(), 16 * 2 + 8);
        assert!(r.contains(&GsiRoute::Irqchip {
            gsi: 9,
            chip: IrqChip::PicSlave,
            pin: 1
        }));
        assert!(r.contains(&GsiRoute::Irqchip {
            gsi: 23,
            chip: IrqChip::Ioapic,
            pin: 23
        }));
        let e = GsiRoute::Msi {
            gsi: 30,
            address: 0x1_fee0_0000,
            data: 0x41,
        }
        .to_kvm();
        // SAFETY: the entry was built as an MSI route.
        let msi = unsafe { e.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_0000, 1, 0x41)
        );
    }

    /// Runs only where /dev/kvm can be opened.
    #[test]
    fn msi_routing_irqfd_and_ioeventfd_round_trip() {
        let Ok(hv) = crate::Hypervisor::new() else {
            eprintln!("no usable /dev/kvm: skipped");
            return;
        };
        let vm = hv.create_vm().unwrap();
        vm.setup_platform(0xfeff_c000).unwrap();
        let mut routes = GsiRoute::legacy();
        routes.push(GsiRoute::Msi {
            gsi: 24,
            address: 0xfee0_0000,
            data: 0x30,
        });
        vm.set_gsi_routing(&routes).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_irqfd(&evt, 24).unwrap();
        vm.unregister_irqfd(&evt, 24).unwrap();
        let addr = IoEventAddress::Mmio(0xc000_3000);
        vm.register_ioevent(&evt, addr).unwrap();
        vm.unregister_ioevent(&evt, addr).unwrap();
        vm.register_ioevent_datamatch(&evt, addr, 1).unwrap();
        vm.unregister_ioevent_datamatch(&evt, addr, 1).unwrap();
    }
}
