//! The guest-facing virtio-mmio surface as a fuzz harness, a sibling of
//! the PCI one (`fuzzing.rs`) sharing its input reader, its virtio-blk
//! set-up and its request builder: bytes become 32-bit register accesses
//! (and every other width and offset, which must be dropped), device
//! configuration accesses at any width, resets, and the same two macro ops
//! (a full driver initialisation, a request kicked through QueueNotify).
//!
//! Checked after every input: nothing panicked, the image's length never
//! changed, and a final reset completes (Status reads 0) within a bounded
//! time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::fuzzing::{
    clear_rings, engine_of, fuzz_block, queue_request, wait_used, FuzzDisk, GuestSurface, Input,
    AVAIL, DESC, QSIZE, USED,
};
use super::mmio::*;
use super::pci_common::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use crate::bus::BusDevice;
use crate::pci::NoHypervisor;
use crate::virtio::block::EngineKind;
use crate::virtio::GuestMemory;

/// One virtio-mmio device with a virtio-blk behind it.
pub struct MmioSurface {
    mem: GuestMemory,
    dev: VirtioMmioDevice,
    irqfd: EventFd,
    disk: FuzzDisk,
    avail_idx: u16,
}

impl MmioSurface {
    pub fn new(engine: EngineKind) -> MmioSurface {
        let (disk, mem, block) = fuzz_block("mmio", engine);
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).expect("irqfd");
        let dev = VirtioMmioDevice::new(
            Box::new(block),
            mem.clone(),
            VirtioMmioResources {
                base: 0xd000_0000,
                irqfd: irqfd.try_clone().expect("irqfd"),
                ioevents: Arc::new(NoHypervisor),
            },
        )
        .expect("virtio-mmio device");
        MmioSurface {
            mem,
            dev,
            irqfd,
            disk,
            avail_idx: 0,
        }
    }

    fn w(&mut self, off: u64, v: u32) {
        self.dev.write_u32(off, v);
    }

    fn r(&mut self, off: u64) -> u32 {
        self.dev.read_u32(off)
    }

    /// A read or write of any width at `off`, as the input says.
    fn access(&mut self, off: u64, inp: &mut Input) {
        let w = inp.width();
        let v = inp.u64().to_le_bytes();
        if inp.u8() & 1 == 0 {
            let mut b = [0u8; 8];
            self.dev.read(off, &mut b[..w]);
        } else {
            self.dev.write(off, &v[..w]);
        }
    }

    fn init_driver(&mut self, inp: &mut Input) {
        assert!(self.reset(), "reset never completed");
        clear_rings(&self.mem);
        self.w(REG_STATUS, u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER));
        let mut features = 0u64;
        for sel in 0..2 {
            self.w(REG_DEVICE_FEATURES_SEL, sel);
            features |= u64::from(self.r(REG_DEVICE_FEATURES)) << (32 * sel);
        }
        let features = features & !(u64::from(inp.u32()) & 0x2fff_ffff);
        for sel in 0..2 {
            self.w(REG_DRIVER_FEATURES_SEL, sel);
            self.w(REG_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        self.w(REG_STATUS, u32::from(STATUS_FEATURES_OK));
        self.w(REG_QUEUE_SEL, 0);
        self.w(REG_QUEUE_NUM, u32::from(QSIZE));
        for (reg, addr) in [
            (REG_QUEUE_DESC_LOW, DESC),
            (REG_QUEUE_DRIVER_LOW, AVAIL),
            (REG_QUEUE_DEVICE_LOW, USED),
        ] {
            self.w(reg, addr as u32);
            self.w(reg + 4, 0);
        }
        self.w(REG_QUEUE_READY, 1);
        self.w(REG_STATUS, u32::from(STATUS_DRIVER_OK));
    }
}

impl GuestSurface for MmioSurface {
    /// Write a reset and poll Status until it reads 0; false if it never
    /// does (a hang).
    fn reset(&mut self) -> bool {
        self.w(REG_STATUS, 0);
        self.avail_idx = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.r(REG_STATUS) != 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    fn disk(&self) -> &FuzzDisk {
        &self.disk
    }

    fn step(&mut self, tag: u8, inp: &mut Input) {
        match tag {
            0..=3 => {
                // A register, right width and alignment.
                let off = u64::from(inp.u8() % 0x40) * 4;
                let v = inp.u32();
                if inp.u8() & 1 == 0 {
                    self.r(off);
                } else {
                    self.w(off, v);
                }
            }
            4 | 5 => {
                // Anywhere in (and past) the block, any width.
                let off = u64::from(inp.u16()) % (MMIO_SIZE + 0x10);
                self.access(off, inp);
            }
            6 => {
                // Device configuration.
                let off = CONFIG_OFFSET + u64::from(inp.u8());
                self.access(off, inp);
            }
            7 => {
                // The interrupt line: read, acknowledge, drain.
                let s = self.r(REG_INTERRUPT_STATUS);
                self.w(REG_INTERRUPT_ACK, s & u32::from(inp.u8()));
                let _ = self.irqfd.read();
            }
            8 => self.init_driver(inp),
            9 | 10 => {
                queue_request(&self.mem, &mut self.avail_idx, inp);
                self.w(REG_QUEUE_NOTIFY, 0);
                wait_used(&self.mem, self.avail_idx);
            }
            _ => assert!(self.reset(), "reset never completed"),
        }
    }
}

/// The cargo-fuzz entry: byte 0 picks the engine.
pub fn fuzz_one(data: &[u8]) {
    MmioSurface::new(engine_of(data)).run(data.get(1..).unwrap_or(&[]));
}

#[cfg(test)]
mod tests {
    use super::super::fuzzing::fuzz_lite_on_every_engine;
    use super::*;

    #[test]
    fn random_mmio_access_sequences_never_panic_hang_or_resize_the_image() {
        fuzz_lite_on_every_engine("MMIO", |e| Box::new(MmioSurface::new(e)));
    }
}
