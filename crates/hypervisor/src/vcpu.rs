//! One KVM vCPU: register and CPUID setup, and `run`, which returns the
//! reason the vCPU stopped as a `VcpuExit`.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_run, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

use crate::{kvm_op, Error, Result};

/// Why a vCPU returned to user space.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// A port read: `data` holds `data.len() / size` accesses of `size`
    /// bytes (1, 2 or 4) to `port`, more than one for `rep ins`.
    IoIn {
        port: u16,
        size: usize,
        data: &'a mut [u8],
    },
    /// A port write: `data.len() / size` accesses of `size` bytes, more
    /// than one for `rep outs`.
    IoOut {
        port: u16,
        size: usize,
        data: &'a [u8],
    },
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

    /// Enter the guest until the next exit that needs user space. The
    /// calling thread becomes this vCPU's thread for `crate::kick`: a kick
    /// signal to it makes this call return `Interrupted`.
    pub fn run(&mut self) -> Result<VcpuExit<'_>> {
        use kvm_ioctls::VcpuExit as K;
        // kvm-ioctls hands over a port exit's data (`count * size` bytes)
        // but not the access size, which stays in kvm_run's `io` struct.
        // Keep a pointer to read it while the data slice is borrowed.
        let run: *mut kvm_run = self.fd.get_kvm_run();
        // Marked only while this call runs, so the kick handler never sees
        // a kvm_run that may be gone; a kick in between finds the VMM's
        // own check before the next entry (see crate::kick).
        crate::kick::set_current(run);
        let result = self.fd.run();
        crate::kick::set_current(std::ptr::null_mut());
        match result {
            Ok(exit) => Ok(match exit {
                K::IoIn(port, data) => {
                    // SAFETY: kvm-ioctls returned an I/O exit, so the kernel
                    // filled kvm_run's `io` member; see `io_exit_size`.
                    let raw = unsafe { io_exit_size(run) };
                    match access_size(raw, data.len()) {
                        Some(size) => VcpuExit::IoIn { port, size, data },
                        None => bad_io_exit(port, raw, data.len()),
                    }
                }
                K::IoOut(port, data) => {
                    // SAFETY: as for IoIn.
                    let raw = unsafe { io_exit_size(run) };
                    match access_size(raw, data.len()) {
                        Some(size) => VcpuExit::IoOut { port, size, data },
                        None => bad_io_exit(port, raw, data.len()),
                    }
                }
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
                // A kick (see crate::kick) may have set immediate_exit;
                // the next run must enter the guest again.
                // SAFETY: `run` is this vCPU's kvm_run mapping, alive as
                // long as the fd; KVM_RUN has returned, so only this thread
                // (and its kick handler, which writes the same byte) use it.
                unsafe {
                    std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 0)
                };
                Ok(VcpuExit::Interrupted)
            }
            Err(e) => Err(Error::Kvm {
                op: "KVM_RUN",
                source: e,
            }),
        }
    }
}

/// The access size of the port I/O exit KVM just reported.
///
/// # Safety
/// `run` must point to this vCPU's mapped kvm_run and the last KVM_RUN must
/// have returned KVM_EXIT_IO, so that `io` is the union member the kernel
/// wrote. The read goes through the raw pointer (no reference is made) and
/// touches only the `io` struct, which lies outside the data area the
/// exit's slice covers (`io.data_offset` is past the struct).
unsafe fn io_exit_size(run: *const kvm_run) -> u8 {
    // SAFETY: the caller's guarantees; the mapping outlives the vCPU fd.
    unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*run).__bindgen_anon_1.io.size)) }
}

/// Check a port exit's access size against its data length: the size is
/// 1, 2 or 4 and the data a whole, non-zero number of accesses.
pub(crate) fn access_size(size: u8, len: usize) -> Option<usize> {
    let size = usize::from(size);
    (matches!(size, 1 | 2 | 4) && len > 0 && len.is_multiple_of(size)).then_some(size)
}

/// A port exit the kernel should never produce; ends the VM rather than
/// guessing how to split it.
fn bad_io_exit(port: u16, size: u8, len: usize) -> VcpuExit<'static> {
    VcpuExit::Other(format!(
        "port {port:#x} I/O exit with {len} bytes in {size}-byte accesses"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_sizes_must_divide_the_data() {
        assert_eq!(access_size(1, 1), Some(1));
        assert_eq!(access_size(1, 4096), Some(1));
        assert_eq!(access_size(2, 6), Some(2));
        assert_eq!(access_size(4, 4), Some(4));
        assert_eq!(access_size(4, 6), None);
        assert_eq!(access_size(3, 3), None);
        assert_eq!(access_size(8, 8), None);
        assert_eq!(access_size(0, 0), None);
        assert_eq!(access_size(1, 0), None);
    }

    /// A real-mode guest runs `rep outsb` (3 bytes to port 0x3f8) and
    /// `rep insw` (2 words from port 0x510), then halts. Every port exit must
    /// carry the instruction's access size, and its data a whole number of
    /// accesses. KVM batches a string instruction into one exit with
    /// `count > 1`; some hosts (PVM) exit once per access. Runs only where
    /// /dev/kvm can be opened.
    #[test]
    fn string_port_exits_carry_the_access_size() {
        let Ok(hv) = crate::Hypervisor::new() else {
            eprintln!("no usable /dev/kvm: skipped");
            return;
        };
        let mut vm = hv.create_vm().unwrap();
        const SIZE: usize = 0x10000;
        // SAFETY: a fresh anonymous mapping; checked for failure below.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(host, libc::MAP_FAILED);
        // SAFETY: the mapping is SIZE bytes, ours, and not otherwise used.
        let mem = unsafe { std::slice::from_raw_parts_mut(host.cast::<u8>(), SIZE) };
        #[rustfmt::skip]
        let code = [
            0xbe, 0x00, 0x11, // mov si, 0x1100
            0xb9, 0x03, 0x00, // mov cx, 3
            0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xf3, 0x6e,       // rep outsb
            0xbf, 0x00, 0x12, // mov di, 0x1200
            0xb9, 0x02, 0x00, // mov cx, 2
            0xba, 0x10, 0x05, // mov dx, 0x510
            0xf3, 0x6d,       // rep insw
            0xf4,             // hlt
        ];
        mem[0x1000..0x1000 + code.len()].copy_from_slice(&code);
        mem[0x1100..0x1103].copy_from_slice(b"abc");
        // SAFETY: the mapping is never unmapped while the VM lives (the
        // test leaks it).
        unsafe { vm.map_memory(0, SIZE as u64, host as u64) }.unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.sregs().unwrap();
        for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es] {
            seg.base = 0;
            seg.selector = 0;
        }
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.regs().unwrap();
        regs.rip = 0x1000;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();

        let mut written = Vec::new();
        let mut next_word = 0x1110u16;
        for _ in 0..100 {
            match vcpu.run().unwrap() {
                VcpuExit::IoOut { port, size, data } => {
                    assert_eq!((port, size), (0x3f8, 1));
                    written.extend_from_slice(data);
                }
                VcpuExit::IoIn { port, size, data } => {
                    assert_eq!((port, size), (0x510, 2));
                    assert!(data.len().is_multiple_of(2));
                    for w in data.chunks_mut(2) {
                        w.copy_from_slice(&next_word.to_le_bytes());
                        next_word += 1;
                    }
                }
                VcpuExit::Hlt => break,
                VcpuExit::Interrupted => {}
                other => panic!("unexpected exit {other:?}"),
            }
        }
        assert_eq!(written, b"abc");
        assert_eq!(&mem[0x1200..0x1204], &[0x10, 0x11, 0x11, 0x11]);
    }
}
