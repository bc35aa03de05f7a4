//! A thin seam over KVM: open the hypervisor, create VMs and vCPUs, and turn
//! KVM's exits into Vireo's own `VcpuExit`. This crate knows nothing about
//! devices, boot protocols or configuration; the layers above decide what to
//! do with an exit.

pub mod kick;
mod vcpu;
mod vm;

pub use kvm_bindings::{
    kvm_clock_data, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_segment, kvm_sregs,
    CpuId, Msrs,
};
pub use kvm_ioctls::IoEventAddress;
pub use vcpu::{Vcpu, VcpuExit};
pub use vm::{GsiRoute, IrqChip, Vm, IOAPIC_PINS};

use kvm_ioctls::{Cap, Kvm};

/// Errors from the hypervisor layer; each names the KVM operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("KVM refused to set MSR {0:#x}")]
    MsrRejected(u32),
    #[error("KVM {op} failed: {source}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for mapping a kvm-ioctls error into `Error::Kvm`.
pub(crate) fn kvm_op(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { op, source }
}

/// The capabilities Vireo's VMs rely on.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// An open /dev/kvm.
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    /// Open /dev/kvm and check the API version and the capabilities we need.
    pub fn new() -> Result<Self> {
        let kvm = Kvm::new().map_err(Error::Open)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(Error::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(Error::MissingCap(name));
            }
        }
        Ok(Hypervisor { kvm })
    }

    /// The largest number of vCPUs one VM may have.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// CPUID leaves this host's KVM can offer a guest.
    pub fn supported_cpuid(&self) -> Result<CpuId> {
        self.kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_op("KVM_GET_SUPPORTED_CPUID"))
    }

    /// Create an empty VM.
    pub fn create_vm(&self) -> Result<Vm> {
        let fd = self.kvm.create_vm().map_err(kvm_op("KVM_CREATE_VM"))?;
        Ok(Vm::new(fd, self.kvm.get_vcpu_mmap_size().unwrap_or(0)))
    }
}
