//! End to end through the virtio-pci transport, as a guest driver would do
//! it: negotiate features, read the config, set up two queues, DRIVER_OK,
//! ring the doorbells, find the completions on the used rings; then reset
//! and do it again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH};

use super::test_utils::*;
use super::Block;
use crate::bus::lock;
use crate::pci::bus::{bar_read, bar_write};
use crate::pci::config::{self, BarKind};
use crate::pci::{NoHypervisor, PciBus, PciConfigMmio, SharedPciBus};
use crate::virtio::transport::pci_common::*;
use crate::virtio::transport::{VirtioPciDevice, VirtioPciResources};
use crate::BusDevice;

const BAR: u64 = 0xc000_0000;
const DEVICE_CFG: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const SIZE: u16 = 16;

struct Pci {
    bus: SharedPciBus,
}

impl Pci {
    fn read(&self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        assert!(bar_read(&self.bus, BAR + off, &mut b[..len]));
        u64::from_le_bytes(b)
    }
    fn write(&self, off: u64, value: u64, len: usize) {
        assert!(bar_write(&self.bus, BAR + off, &value.to_le_bytes()[..len]));
    }
    fn status(&self) -> u8 {
        self.read(DEVICE_STATUS, 1) as u8
    }
}

fn wait_used(d: &Driver, n: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.used_idx() < n {
        assert!(Instant::now() < deadline, "timed out waiting for {n} used");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn block_through_the_virtio_pci_transport() {
    let img = TempImage::patterned(1 << 20);
    let mem = memory::create_guest_memory(16).unwrap();
    let block = Block::new(&img.path, false, Some("e2e".into()), 2).unwrap();
    let vectors = VirtioPciDevice::msix_vectors(&block);
    let dev = VirtioPciDevice::new(
        Box::new(block),
        mem.clone(),
        VirtioPciResources {
            bar_kind: BarKind::Memory32,
            bar_addr: BAR,
            gsis: (0..u32::from(vectors)).map(|v| 24 + v).collect(),
            msi_router: Arc::new(NoHypervisor),
            ioevents: Arc::new(NoHypervisor),
        },
    )
    .unwrap();
    let bus = Arc::new(Mutex::new(PciBus::new()));
    lock(&bus).add_device(Arc::new(Mutex::new(dev))).unwrap();
    let mut ecam = PciConfigMmio::new(bus.clone());
    ecam.write(1 << 15 | config::COMMAND as u64, &[0x6, 0]);
    let pci = Pci { bus };

    for round in 0..2u8 {
        pci.write(DEVICE_STATUS, 0, 1);
        pci.write(
            DEVICE_STATUS,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
            1,
        );
        let mut features = 0u64;
        for sel in 0..2 {
            pci.write(DEVICE_FEATURE_SELECT, sel, 4);
            features |= pci.read(DEVICE_FEATURE, 4) << (32 * sel);
        }
        for sel in 0..2 {
            pci.write(DRIVER_FEATURE_SELECT, sel, 4);
            pci.write(DRIVER_FEATURE, features >> (32 * sel) & 0xffff_ffff, 4);
        }
        pci.write(DEVICE_STATUS, u64::from(STATUS_FEATURES_OK), 1);
        assert_ne!(pci.status() & STATUS_FEATURES_OK, 0);
        assert_eq!(pci.read(DEVICE_CFG, 8), 2048, "capacity");
        assert_eq!(pci.read(DEVICE_CFG + 34, 2), 2, "num_queues");
        assert_eq!(pci.read(NUM_QUEUES, 2), 2);

        let drivers: Vec<Driver> = (0..2u16)
            .map(|q| {
                let base = 0x80_0000 + u64::from(q) * 0x1_0000;
                Driver::at(&mem, base, SIZE, 0x40_0000 + u64::from(q) * 0x10_0000)
            })
            .collect();
        for (q, d) in drivers.iter().enumerate() {
            pci.write(QUEUE_SELECT, q as u64, 2);
            pci.write(QUEUE_SIZE, u64::from(SIZE), 2);
            pci.write(QUEUE_DESC, d.mock.desc_table_addr().0, 8);
            pci.write(QUEUE_DRIVER, d.mock.avail_addr().0, 8);
            pci.write(QUEUE_DEVICE, d.mock.used_addr().0, 8);
            pci.write(QUEUE_MSIX_VECTOR, q as u64, 2);
            pci.write(QUEUE_ENABLE, 1, 2);
        }
        pci.write(DEVICE_STATUS, u64::from(STATUS_DRIVER_OK), 1);
        assert_ne!(pci.status() & STATUS_DRIVER_OK, 0, "activated");
        assert_eq!(pci.status() & STATUS_DEVICE_NEEDS_RESET, 0);

        let mut drivers = drivers;
        let data = vec![round + 1; 4096];
        let w = drivers[0].write(16, &data);
        let f = drivers[0].bare(VIRTIO_BLK_T_FLUSH);
        let r = drivers[1].read(3, 1024);
        let id = drivers[1].get_id(20);
        pci.write(NOTIFY, 1, 2);
        pci.write(NOTIFY + 4, 1, 2);
        wait_used(&drivers[0], 2);
        wait_used(&drivers[1], 2);
        let ok = VIRTIO_BLK_S_OK as u8;
        assert_eq!(drivers[0].status(&w), ok);
        assert_eq!(drivers[0].status(&f), ok);
        assert_eq!(drivers[1].status(&r), ok);
        assert_eq!(drivers[1].bytes(r.data, 1024), img.read_at(3 * 512, 1024));
        assert_eq!(&drivers[1].bytes(id.data, 3), b"e2e");
        assert_eq!(img.read_at(16 * 512, 4096), data);
        // Zero the rings for the next round's fresh drivers.
        for d in &drivers {
            vm_memory::Bytes::write_slice(&mem, &[0u8; 0x1000], d.mock.desc_table_addr()).unwrap();
        }
    }
    pci.write(DEVICE_STATUS, 0, 1);
    assert_eq!(pci.status(), 0);
}
