//! One KVM vCPU: register and CPUID setup, and `run`, which returns the
//! reason the vCPU stopped as a `VcpuExit`.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

use crate::{kvm_op, Error, Result};

/// Why a vCPU returned to user space.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    /// The guest halted with no interrupt source (only without in-kernel LAPIC).
    Hlt,
    /// Triple fault or similar: the CPU shut down.
    Shutdown,
    /// KVM_EXIT_SYSTEM_EVENT (shutdown/reset/crash reported by KVM).
    SystemEvent(u32),
    /// KVM could not emulate an instruction or continue.
    InternalError,
    /// VM entry failed; the hardware reason code.
    FailEntry(u64),
    /// The run was interrupted by a signal (EINTR) or `immediate_exit`.
    Interrupted,
    /// Anything else, with KVM's name for it.
    Other(String),
}

pub struct Vcpu {
    fd: VcpuFd,
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd) -> Self {
        Vcpu { fd }
    }

    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<()> {
        self.fd.set_cpuid2(cpuid).map_err(kvm_op("KVM_SET_CPUID2"))
    }

    /// Set MSRs; fails unless KVM accepted every one of them.
    pub fn set_msrs(&self, msrs: &Msrs) -> Result<()> {
        let n = self.fd.set_msrs(msrs).map_err(kvm_op("KVM_SET_MSRS"))?;
        if n != msrs.as_fam_struct_ref().nmsrs as usize {
            let bad = msrs.as_slice().get(n).map(|e| e.index).unwrap_or(0);
            return Err(Error::MsrRejected(bad));
        }
        Ok(())
    }

    pub fn regs(&self) -> Result<kvm_regs> {
        self.fd.get_regs().map_err(kvm_op("KVM_GET_REGS"))
    }

    pub fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        self.fd.set_regs(regs).map_err(kvm_op("KVM_SET_REGS"))
    }

    pub fn sregs(&self) -> Result<kvm_sregs> {
        self.fd.get_sregs().map_err(kvm_op("KVM_GET_SREGS"))
    }

    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<()> {
        self.fd.set_sregs(sregs).map_err(kvm_op("KVM_SET_SREGS"))
    }

    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<()> {
        self.fd.set_fpu(fpu).map_err(kvm_op("KVM_SET_FPU"))
    }

    pub fn lapic(&self) -> Result<kvm_lapic_state> {
        self.fd.get_lapic().map_err(kvm_op("KVM_GET_LAPIC"))
    }

    pub fn set_lapic(&self, lapic: &kvm_lapic_state) -> Result<()> {
        self.fd.set_lapic(lapic).map_err(kvm_op("KVM_SET_LAPIC"))
    }

    /// Make the next (or current) `run` return `Interrupted` at once; used
    /// with a signal to kick a vCPU thread out of the guest.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(on.into());
    }

    /// Enter the guest until the next exit that needs user space.
    pub fn run(&mut self) -> Result<VcpuExit<'_>> {
        use kvm_ioctls::VcpuExit as K;
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                K::IoIn(port, data) => VcpuExit::IoIn(port, data),
                K::IoOut(port, data) => VcpuExit::IoOut(port, data),
                K::MmioRead(addr, data) => VcpuExit::MmioRead(addr, data),
                K::MmioWrite(addr, data) => VcpuExit::MmioWrite(addr, data),
                K::Hlt => VcpuExit::Hlt,
                K::Shutdown => VcpuExit::Shutdown,
                K::SystemEvent(kind, _) => VcpuExit::SystemEvent(kind),
                K::InternalError => VcpuExit::InternalError,
                K::FailEntry(reason, _) => VcpuExit::FailEntry(reason),
                K::Intr => VcpuExit::Interrupted,
                other => VcpuExit::Other(format!("{other:?}")),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VcpuExit::Interrupted)
            }
            Err(e) => Err(Error::Kvm {
                op: "KVM_RUN",
                source: e,
            }),
        }
    }
}
