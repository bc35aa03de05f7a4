//! One KVM VM: memory slots, the in-kernel interrupt controllers and PIT,
//! irqfds and ioeventfds, and vCPU creation.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::{kvm_op, Result, Vcpu};

pub struct Vm {
    fd: VmFd,
    next_slot: u32,
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

    /// Signal `evt` (without a vCPU exit) whenever the guest writes to the
    /// port or MMIO address `addr`.
    pub fn register_ioevent(&self, evt: &EventFd, addr: IoEventAddress) -> Result<()> {
        self.fd
            .register_ioevent(evt, &addr, kvm_ioctls::NoDatamatch)
            .map_err(kvm_op("KVM_IOEVENTFD"))
    }

    /// Create vCPU number `id`.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu> {
        let fd = self.fd.create_vcpu(id).map_err(kvm_op("KVM_CREATE_VCPU"))?;
        Ok(Vcpu::new(fd))
    }
}
