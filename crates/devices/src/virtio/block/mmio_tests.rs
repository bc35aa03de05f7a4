//! End to end through the virtio-mmio transport, as Linux's virtio_mmio
//! driver does it: check the magic and version, negotiate, set up two
//! queues, DRIVER_OK, kick through QueueNotify, find the completions (and
//! InterruptStatus bit 0) and the data on the image; reset and do it again.

use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::test_utils::*;
use super::Block;
use crate::pci::NoHypervisor;
use crate::virtio::transport::mmio::*;
use crate::virtio::transport::pci_common::*;
use crate::BusDevice;

const SIZE: u16 = 16;

struct Mmio {
    dev: VirtioMmioDevice,
    irqfd: EventFd,
}

impl Mmio {
    fn r(&mut self, off: u64) -> u32 {
        self.dev.read_u32(off)
    }
    fn w(&mut self, off: u64, v: u32) {
        self.dev.write_u32(off, v);
    }
    fn reset(&mut self) {
        self.w(REG_STATUS, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.r(REG_STATUS) != 0 {
            assert!(Instant::now() < deadline, "reset never completed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    fn setup_queue(&mut self, q: u32, d: &Driver) {
        self.w(REG_QUEUE_SEL, q);
        assert_eq!(self.r(REG_QUEUE_READY), 0);
        assert!(self.r(REG_QUEUE_NUM_MAX) >= u32::from(SIZE));
        self.w(REG_QUEUE_NUM, u32::from(SIZE));
        for (reg, addr) in [
            (REG_QUEUE_DESC_LOW, d.mock.desc_table_addr().0),
            (REG_QUEUE_DRIVER_LOW, d.mock.avail_addr().0),
            (REG_QUEUE_DEVICE_LOW, d.mock.used_addr().0),
        ] {
            self.w(reg, addr as u32);
            self.w(reg + 4, (addr >> 32) as u32);
        }
        self.w(REG_QUEUE_READY, 1);
        assert_eq!(self.r(REG_QUEUE_READY), 1);
    }
}

#[test]
fn block_through_the_virtio_mmio_transport() {
    let img = TempImage::patterned(1 << 20);
    let mem = memory::create_guest_memory(16).unwrap();
    let block = Block::new(&img.path, false, Some("mmio".into()), 2).unwrap();
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let dev = VirtioMmioDevice::new(
        Box::new(block),
        mem.clone(),
        VirtioMmioResources {
            base: 0xd000_0000,
            irqfd: irqfd.try_clone().unwrap(),
            // No ioeventfds: kicks take the exit path.
            ioevents: std::sync::Arc::new(NoHypervisor),
        },
    )
    .unwrap();
    let mut m = Mmio { dev, irqfd };
    assert_eq!(m.r(REG_MAGIC), MAGIC_VALUE);
    assert_eq!(m.r(REG_VERSION), 2);
    assert_eq!(m.r(REG_DEVICE_ID), 2);

    for round in 0..2u8 {
        m.reset();
        m.w(REG_STATUS, u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER));
        let mut features = 0u64;
        for sel in 0..2 {
            m.w(REG_DEVICE_FEATURES_SEL, sel);
            features |= u64::from(m.r(REG_DEVICE_FEATURES)) << (32 * sel);
        }
        for sel in 0..2 {
            m.w(REG_DRIVER_FEATURES_SEL, sel);
            m.w(REG_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        m.w(REG_STATUS, u32::from(STATUS_FEATURES_OK));
        assert_ne!(m.r(REG_STATUS) as u8 & STATUS_FEATURES_OK, 0);
        let capacity = u64::from(m.r(CONFIG_OFFSET)) | u64::from(m.r(CONFIG_OFFSET + 4)) << 32;
        assert_eq!(capacity, 2048);
        let mut nq = [0u8; 2];
        m.dev.read(CONFIG_OFFSET + 34, &mut nq);
        assert_eq!(u16::from_le_bytes(nq), 2, "num_queues");

        let mut drivers: Vec<Driver> = (0..2u16)
            .map(|q| {
                let base = 0x80_0000 + u64::from(q) * 0x1_0000;
                Driver::at(&mem, base, SIZE, 0x40_0000 + u64::from(q) * 0x10_0000)
            })
            .collect();
        for (q, d) in drivers.iter().enumerate() {
            m.setup_queue(q as u32, d);
        }
        m.w(REG_STATUS, u32::from(STATUS_DRIVER_OK));
        let status = m.r(REG_STATUS) as u8;
        assert_ne!(status & STATUS_DRIVER_OK, 0, "activated");
        assert_eq!(status & STATUS_DEVICE_NEEDS_RESET, 0);

        write_flush_read_id(&mut drivers, &img, round, b"mmio", |q| {
            m.w(REG_QUEUE_NOTIFY, u32::from(q))
        });
        // The interrupt line: used-buffer bit set, irqfd written, ACK clears.
        assert_ne!(m.r(REG_INTERRUPT_STATUS) & INT_USED_BUFFER, 0);
        assert!(m.irqfd.read().unwrap() >= 1);
        m.w(REG_INTERRUPT_ACK, INT_USED_BUFFER);
        assert_eq!(m.r(REG_INTERRUPT_STATUS) & INT_USED_BUFFER, 0);
        for d in &mut drivers {
            vm_memory::Bytes::write_slice(&mem, &[0u8; 0x1000], d.mock.desc_table_addr()).unwrap();
        }
    }
    m.reset();
}
