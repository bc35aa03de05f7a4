//! Tests of the virtio-pci transport through the PCI bus, with a fake
//! device, MSI router and ioeventfd registrar.

use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::fake_device::{FakeDevice, Seen, FEATURE_A};
use super::pci::*;
use super::pci_common::*;
use crate::bus::{lock, BusDevice};
use crate::pci::config::{self, capabilities, BarKind};
use crate::pci::msix::tests::FakeRouter;
use crate::pci::{IoEventRegistrar, PciBus, PciConfigMmio, SharedPciBus, MSIX_NO_VECTOR};
use crate::virtio::{GuestMemory, VIRTIO_F_VERSION_1};

const BAR: u64 = 0xc000_0000;
#[derive(Default)]
struct FakeIoEvents(Mutex<Vec<u64>>);

impl IoEventRegistrar for FakeIoEvents {
    fn register_mmio(&self, addr: u64, _evt: &EventFd) -> std::io::Result<()> {
        self.0.lock().unwrap().push(addr);
        Ok(())
    }
    fn unregister_mmio(&self, addr: u64, _evt: &EventFd) -> std::io::Result<()> {
        self.0.lock().unwrap().retain(|a| *a != addr);
        Ok(())
    }
}

struct Rig {
    bus: SharedPciBus,
    ecam: PciConfigMmio,
    seen: Arc<Mutex<Seen>>,
    ioevents: Arc<FakeIoEvents>,
    router: Arc<FakeRouter>,
    dev: Arc<Mutex<VirtioPciDevice>>,
    mem: GuestMemory,
}

fn rig() -> Rig {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mem = memory::create_guest_memory(16).unwrap();
    let ioevents = Arc::new(FakeIoEvents::default());
    let router = Arc::new(FakeRouter::default());
    let device = Box::new(FakeDevice::new(seen.clone()));
    assert_eq!(VirtioPciDevice::msix_vectors(&*device), 3);
    let dev = VirtioPciDevice::new(
        device,
        mem.clone(),
        VirtioPciResources {
            bar_kind: BarKind::Memory32,
            bar_addr: BAR,
            gsis: vec![24, 25, 26],
            msi_router: router.clone(),
            ioevents: ioevents.clone(),
        },
    )
    .unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let bus = Arc::new(Mutex::new(PciBus::new()));
    assert_eq!(lock(&bus).add_device(dev.clone()).unwrap(), 1);
    let mut ecam = PciConfigMmio::new(bus.clone());
    // Enable memory decoding, as the guest's pci_enable_device does.
    ecam.write(1 << 15 | config::COMMAND as u64, &[0x6, 0]);
    Rig {
        bus,
        ecam,
        seen,
        ioevents,
        router,
        dev,
        mem,
    }
}

impl Rig {
    fn cfg_read(&mut self, reg: usize, len: usize) -> u32 {
        let mut b = [0u8; 4];
        self.ecam.read(1 << 15 | reg as u64, &mut b[..len]);
        u32::from_le_bytes(b)
    }
    fn caps(&mut self) -> Vec<(u8, usize)> {
        let space: Vec<u8> = (0..256).map(|o| self.cfg_read(o, 1) as u8).collect();
        capabilities(|o| space.get(o).copied().unwrap_or(0))
    }
    fn cfg_write(&mut self, reg: usize, data: &[u8]) {
        self.ecam.write(1 << 15 | reg as u64, data);
    }
    fn read(&self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        assert!(crate::pci::bus::bar_read(
            &self.bus,
            BAR + off,
            &mut b[..len]
        ));
        u64::from_le_bytes(b)
    }
    fn write(&self, off: u64, value: u64, len: usize) {
        let b = value.to_le_bytes();
        assert!(crate::pci::bus::bar_write(&self.bus, BAR + off, &b[..len]));
    }
    fn status(&self) -> u8 {
        self.read(DEVICE_STATUS, 1) as u8
    }
    fn negotiate(&self, features: u64) -> bool {
        self.write(
            DEVICE_STATUS,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
            1,
        );
        for sel in 0..2 {
            self.write(DRIVER_FEATURE_SELECT, sel, 4);
            self.write(DRIVER_FEATURE, features >> (32 * sel) & 0xffff_ffff, 4);
        }
        self.write(DEVICE_STATUS, u64::from(STATUS_FEATURES_OK), 1);
        self.status() & STATUS_FEATURES_OK != 0
    }
    /// Set up queue `q` with rings at `base` (a valid layout for size 16).
    fn setup_queue(&self, q: u16, base: u64) {
        self.write(QUEUE_SELECT, u64::from(q), 2);
        self.write(QUEUE_SIZE, 16, 2);
        self.write(QUEUE_DESC, base, 4);
        self.write(QUEUE_DESC + 4, 0, 4);
        self.write(QUEUE_DRIVER, base + 0x100, 8);
        self.write(QUEUE_DEVICE, base + 0x200, 8);
        self.write(QUEUE_MSIX_VECTOR, u64::from(q), 2);
        self.write(QUEUE_ENABLE, 1, 2);
    }
    fn activate(&self) {
        assert!(self.negotiate(VIRTIO_F_VERSION_1 | FEATURE_A));
        self.setup_queue(0, 0x10_0000);
        self.setup_queue(1, 0x11_0000);
        self.write(DEVICE_STATUS, u64::from(STATUS_DRIVER_OK), 1);
    }
}

#[test]
fn identity_bar_and_capabilities() {
    let mut r = rig();
    assert_eq!(r.cfg_read(0, 4), 0x1042_1af4);
    assert_eq!(r.cfg_read(config::REVISION_ID, 1), 1);
    assert_eq!(r.cfg_read(config::SUBSYSTEM_ID, 2), 0x40);
    // BAR sizing, with decoding off as Linux does it.
    r.cfg_write(config::COMMAND, &[0, 0]);
    r.cfg_write(config::BAR0, &[0xff; 4]);
    assert_eq!(r.cfg_read(config::BAR0, 4), !(BAR_SIZE as u32 - 1));
    r.cfg_write(config::BAR0, &(BAR as u32).to_le_bytes());
    r.cfg_write(config::COMMAND, &[0x6, 0]);
    // The capability chain: MSI-X, then common, ISR, device, notify.
    let caps = r.caps();
    let ids: Vec<u8> = caps.iter().map(|c| c.0).collect();
    assert_eq!(ids, vec![0x11, 0x09, 0x09, 0x09, 0x09, 0x09]);
    let types: Vec<(u32, u32, u32)> = caps[1..5]
        .iter()
        .map(|(_, o)| {
            (
                r.cfg_read(o + 3, 1),
                r.cfg_read(o + 8, 4),
                r.cfg_read(o + 12, 4),
            )
        })
        .collect();
    assert_eq!(
        types,
        vec![
            (1, 0, 0x38),
            (3, 0x1000, 4),
            (4, 0x2000, 0x1000),
            (2, 0x3000, 8)
        ]
    );
    assert_eq!(r.cfg_read(caps[4].1 + 16, 4), 4, "notify_off_multiplier");
    assert_eq!(r.cfg_read(caps[0].1 + 2, 2), 2, "MSI-X table size - 1");
    assert_eq!(r.read(NUM_QUEUES, 2), 2);
    assert_eq!(r.read(0x2003, 1), 3, "device config goes to the device");
    // The PCI_CFG window: read num_queues through configuration space.
    let pci_cfg = caps[5].1;
    assert_eq!(r.cfg_read(pci_cfg + 3, 1), 5);
    r.cfg_write(pci_cfg + 8, &(NUM_QUEUES as u32).to_le_bytes());
    r.cfg_write(pci_cfg + 12, &2u32.to_le_bytes());
    assert_eq!(r.cfg_read(pci_cfg + 16, 2), 2);
    // ...and write queue_select through it.
    r.cfg_write(pci_cfg + 8, &(QUEUE_SELECT as u32).to_le_bytes());
    r.cfg_write(pci_cfg + 16, &1u16.to_le_bytes());
    assert_eq!(r.read(QUEUE_SELECT, 2), 1);
    // A misaligned or oversized window does nothing.
    r.cfg_write(pci_cfg + 8, &0x7fffu32.to_le_bytes());
    r.cfg_write(pci_cfg + 12, &4u32.to_le_bytes());
    r.cfg_write(pci_cfg + 16, &[0xff; 4]);
    assert_eq!(r.cfg_read(pci_cfg + 16, 4), 0xffff_ffff);
}

#[test]
fn feature_negotiation() {
    let r = rig();
    r.write(DEVICE_FEATURE_SELECT, 0, 4);
    assert_eq!(r.read(DEVICE_FEATURE, 4), FEATURE_A);
    r.write(DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(r.read(DEVICE_FEATURE, 4), 1, "VERSION_1 is bit 32");
    r.write(DEVICE_FEATURE_SELECT, 7, 4);
    assert_eq!(r.read(DEVICE_FEATURE, 4), 0);
    // A feature the device did not offer: FEATURES_OK stays clear.
    assert!(!r.negotiate(VIRTIO_F_VERSION_1 | 1 << 3));
    assert_eq!(lock(&r.seen).acked, None);
    // Without VERSION_1: refused too (legacy is not offered).
    r.write(DEVICE_STATUS, 0, 1);
    assert!(!r.negotiate(FEATURE_A));
    r.write(DEVICE_STATUS, 0, 1);
    assert!(r.negotiate(VIRTIO_F_VERSION_1 | FEATURE_A));
    assert_eq!(lock(&r.seen).acked, Some(VIRTIO_F_VERSION_1 | FEATURE_A));
    // Frozen after FEATURES_OK.
    r.write(DRIVER_FEATURE_SELECT, 0, 4);
    r.write(DRIVER_FEATURE, 0, 4);
    assert_eq!(r.read(DRIVER_FEATURE, 4), FEATURE_A);
    // DRIVER_OK without FEATURES_OK is ignored.
    r.write(DEVICE_STATUS, 0, 1);
    r.write(DEVICE_STATUS, u64::from(STATUS_DRIVER_OK), 1);
    assert_eq!(r.status() & STATUS_DRIVER_OK, 0);
    assert_eq!(lock(&r.seen).activations, 0);
}

#[test]
fn queue_setup_is_validated() {
    let r = rig();
    assert!(r.negotiate(VIRTIO_F_VERSION_1));
    // A queue that does not exist reads as size 0 and ignores writes.
    r.write(QUEUE_SELECT, 9, 2);
    assert_eq!(r.read(QUEUE_SIZE, 2), 0);
    r.write(QUEUE_SIZE, 8, 2);
    r.write(QUEUE_ENABLE, 1, 2);
    assert_eq!(r.read(QUEUE_ENABLE, 2), 0);
    r.write(QUEUE_SELECT, 1, 2);
    assert_eq!(r.read(QUEUE_SIZE, 2), 16);
    assert_eq!(r.read(QUEUE_NOTIFY_OFF, 2), 1);
    // Vectors past the table read back as NO_VECTOR.
    r.write(QUEUE_MSIX_VECTOR, 3, 2);
    assert_eq!(r.read(QUEUE_MSIX_VECTOR, 2), u64::from(MSIX_NO_VECTOR));
    r.write(CONFIG_MSIX_VECTOR, 2, 2);
    assert_eq!(r.read(CONFIG_MSIX_VECTOR, 2), 2);
    // 64-bit addresses as two halves and whole.
    r.write(QUEUE_DESC, 0x1234_5000, 4);
    r.write(QUEUE_DESC + 4, 0x1, 4);
    assert_eq!(r.read(QUEUE_DESC, 8), 0x1_1234_5000);
    // Each bad setup puts the device in NEEDS_RESET instead of enabling.
    let bad: [(u16, u64); 5] = [
        (12, 0x10_0000),        // not a power of two
        (32, 0x10_0000),        // above the maximum
        (0, 0x10_0000),         // zero
        (16, 0x10_0008),        // descriptor table misaligned
        (16, 0x4000_0000_0000), // outside guest memory
    ];
    for (size, desc) in bad {
        r.write(DEVICE_STATUS, 0, 1);
        assert!(r.negotiate(VIRTIO_F_VERSION_1));
        r.write(QUEUE_SELECT, 0, 2);
        r.write(QUEUE_SIZE, u64::from(size), 2);
        r.write(QUEUE_DESC, desc, 8);
        r.write(QUEUE_DRIVER, 0x10_1000, 8);
        r.write(QUEUE_DEVICE, 0x10_2000, 8);
        r.write(QUEUE_ENABLE, 1, 2);
        assert_eq!(r.read(QUEUE_ENABLE, 2), 0, "size {size} desc {desc:#x}");
        assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    }
    // Odd widths and offsets are not register writes.
    r.write(DEVICE_STATUS, 0, 1);
    r.write(QUEUE_SELECT, 1, 4);
    r.write(QUEUE_SIZE - 1, 0xffff, 2);
    assert_eq!(r.read(QUEUE_SELECT, 2), 0);
    assert_eq!(r.read(QUEUE_SIZE, 2), 16);
}

#[test]
fn driver_ok_activates_with_doorbells_and_interrupts() {
    let mut r = rig();
    r.activate();
    assert_eq!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    {
        let s = lock(&r.seen);
        assert_eq!(s.activations, 1);
        assert_eq!(s.queues.len(), 2);
        assert_eq!(s.queues[1].queue.desc_table(), 0x11_0000);
    }
    assert_eq!(
        *r.ioevents.0.lock().unwrap(),
        vec![BAR + 0x3000, BAR + 0x3004]
    );
    // A doorbell write that reaches the transport kicks the queue anyway.
    r.write(0x3004, 1, 2);
    assert_eq!(lock(&r.seen).queues[1].kick.read().unwrap(), 1);
    // Queue 1 uses vector 1. MSI-X off: the interrupt is dropped.
    let interrupt = lock(&r.seen).interrupt.clone().unwrap();
    interrupt.signal_queue(1).unwrap();
    // Program vector 1, enable MSI-X; the vector is still masked: pending.
    r.write(0x4000 + 16, 0xfee0_0000, 4);
    r.write(0x4000 + 24, 0x31, 4);
    let cap = r.caps()[0].1;
    r.cfg_write(cap + 2, &0x8000u16.to_le_bytes());
    interrupt.signal_queue(1).unwrap();
    assert_eq!(r.read(0x6000, 8), 0b10, "pending bit of vector 1");
    assert_eq!(r.read(0x1000, 1), 1, "ISR queue bit");
    assert_eq!(r.read(0x1000, 1), 0, "ISR clears on read");
    // Unmask: delivered, pending cleared, routed to GSI 25.
    r.write(0x4000 + 28, 0, 4);
    assert_eq!(r.read(0x6000, 8), 0);
    {
        let st = lock(&r.dev).state();
        assert!(st.msix.enabled);
        assert!(st.transport.activated);
        assert_eq!(st.transport.queues[1].msix_vector, 1);
    }
    assert_eq!(r.router.routes.lock().unwrap()[0].0, 25);
    // The guest moves the BAR: the doorbells follow it.
    r.cfg_write(config::BAR0, &0xc010_0000u32.to_le_bytes());
    assert_eq!(
        *r.ioevents.0.lock().unwrap(),
        vec![0xc010_3000, 0xc010_3004]
    );
    assert_eq!(lock(&r.dev).notify_address(1), Some(0xc010_3004));
    // Config change: the generation moves.
    let generation = lock(&r.dev).state().transport.config_generation;
    interrupt.signal_config().unwrap();
    assert_eq!(
        lock(&r.dev).state().transport.config_generation,
        generation.wrapping_add(1)
    );
}

#[test]
fn reset_returns_to_initial_state_and_reactivates() {
    let r = rig();
    r.activate();
    r.write(DEVICE_STATUS, 0, 1);
    assert_eq!(r.status(), 0);
    {
        let s = lock(&r.seen);
        assert_eq!(s.resets, 1);
        assert!(s.queues.is_empty());
    }
    assert!(r.ioevents.0.lock().unwrap().is_empty());
    r.write(QUEUE_SELECT, 0, 2);
    assert_eq!(r.read(QUEUE_ENABLE, 2), 0);
    assert_eq!(r.read(QUEUE_SIZE, 2), 16);
    assert_eq!(r.read(QUEUE_MSIX_VECTOR, 2), u64::from(MSIX_NO_VECTOR));
    let fresh = TransportState::new(&[16, 16]);
    let mut st = lock(&r.dev).state().transport;
    st.config_generation = 0;
    assert_eq!(st, fresh);
    // The driver can go again.
    r.activate();
    assert_eq!(lock(&r.seen).activations, 2);
    assert_eq!(r.ioevents.0.lock().unwrap().len(), 2);
}

#[test]
fn failed_activation_needs_reset() {
    let r = rig();
    lock(&r.seen).fail_activate = true;
    r.activate();
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(r.ioevents.0.lock().unwrap().is_empty());
    // Queue setup is frozen after DRIVER_OK.
    r.write(QUEUE_SELECT, 0, 2);
    r.write(QUEUE_SIZE, 8, 2);
    assert_eq!(r.read(QUEUE_SIZE, 2), 16);
}

#[test]
fn any_guest_access_is_harmless() {
    let mut r = rig();
    r.activate();
    let _ = &r.mem;
    // Every offset of the BAR and of config space, every width, junk
    // values: no panic, and the VMM-side state stays consistent.
    for len in [1usize, 2, 4, 8] {
        for off in (0..BAR_SIZE).step_by(3) {
            if off + len as u64 > BAR_SIZE {
                break;
            }
            let mut b = [0u8; 8];
            crate::pci::bus::bar_read(&r.bus, BAR + off, &mut b[..len]);
            if !(DEVICE_STATUS..DEVICE_STATUS + 1).contains(&off) {
                crate::pci::bus::bar_write(&r.bus, BAR + off, &[0xa5; 8][..len]);
            }
        }
        for reg in 0..0x1000usize {
            r.cfg_read(reg, len.min(4));
            if reg != config::COMMAND && !(config::BAR0..config::BAR0 + 4).contains(&reg) {
                r.cfg_write(reg, &[0x5a; 4][..len.min(4)]);
            }
        }
    }
    let mut dev = lock(&r.dev);
    let mut b = [0u8; 8];
    crate::pci::PciDevice::read_bar(&mut *dev, 3, 0, &mut b);
    crate::pci::PciDevice::read_bar(&mut *dev, 0, u64::MAX - 2, &mut b);
    crate::pci::PciDevice::write_bar(&mut *dev, 0, u64::MAX - 2, &b);
    assert_eq!(b, [0xff; 8]);
}
