//! Tests of the virtio-mmio transport with a fake device and ioeventfd
//! registrar: the register layout, negotiation, activation, interrupts,
//! the asynchronous reset, and bad accesses that must never panic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::fake_device::{FakeDevice, Seen, FEATURE_A};
use super::mmio::*;
use super::pci_common::*;
use crate::bus::BusDevice;
use crate::pci::IoEventRegistrar;
use crate::virtio::{device_type, VIRTIO_F_VERSION_1};

const BASE: u64 = 0xd000_0000;
/// Records datamatch registrations as (addr, value).
#[derive(Default)]
struct FakeIoEvents(Mutex<Vec<(u64, u32)>>);

impl IoEventRegistrar for FakeIoEvents {
    fn register_mmio(&self, _addr: u64, _evt: &EventFd) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
    fn unregister_mmio(&self, _addr: u64, _evt: &EventFd) -> std::io::Result<()> {
        Ok(())
    }
    fn register_mmio_datamatch(
        &self,
        addr: u64,
        value: u32,
        _evt: &EventFd,
    ) -> std::io::Result<()> {
        self.0.lock().unwrap().push((addr, value));
        Ok(())
    }
    fn unregister_mmio_datamatch(
        &self,
        addr: u64,
        value: u32,
        _evt: &EventFd,
    ) -> std::io::Result<()> {
        self.0.lock().unwrap().retain(|r| *r != (addr, value));
        Ok(())
    }
}

struct Rig {
    dev: VirtioMmioDevice,
    seen: Arc<Mutex<Seen>>,
    reset_done: Arc<AtomicBool>,
    irqfd: EventFd,
    ioevents: Arc<FakeIoEvents>,
}

fn rig() -> Rig {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mem = memory::create_guest_memory(16).unwrap();
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let ioevents = Arc::new(FakeIoEvents::default());
    let fake = FakeDevice::new(seen.clone());
    let reset_done = fake.reset_done.clone();
    let dev = VirtioMmioDevice::new(
        Box::new(fake),
        mem,
        VirtioMmioResources {
            base: BASE,
            irqfd: irqfd.try_clone().unwrap(),
            ioevents: ioevents.clone(),
        },
    )
    .unwrap();
    Rig {
        dev,
        seen,
        reset_done,
        irqfd,
        ioevents,
    }
}

impl Rig {
    fn r(&mut self, off: u64) -> u32 {
        self.dev.read_u32(off)
    }
    fn w(&mut self, off: u64, v: u32) {
        self.dev.write_u32(off, v);
    }
    fn negotiate(&mut self, features: u64) {
        self.w(REG_STATUS, u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER));
        for sel in 0..2 {
            self.w(REG_DRIVER_FEATURES_SEL, sel);
            self.w(REG_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        self.w(REG_STATUS, u32::from(STATUS_FEATURES_OK));
    }
    fn setup_queue(&mut self, q: u32, base: u64) {
        self.w(REG_QUEUE_SEL, q);
        self.w(REG_QUEUE_NUM, 16);
        for (reg, addr) in [
            (REG_QUEUE_DESC_LOW, base),
            (REG_QUEUE_DRIVER_LOW, base + 0x1000),
            (REG_QUEUE_DEVICE_LOW, base + 0x2000),
        ] {
            self.w(reg, addr as u32);
            self.w(reg + 4, (addr >> 32) as u32);
        }
        self.w(REG_QUEUE_READY, 1);
    }
    fn activate(&mut self) {
        self.negotiate(VIRTIO_F_VERSION_1 | FEATURE_A);
        self.setup_queue(0, 0x10_0000);
        self.setup_queue(1, 0x20_0000);
        self.w(REG_STATUS, u32::from(STATUS_DRIVER_OK));
    }
}

#[test]
fn identification_registers() {
    let mut t = rig();
    assert_eq!(t.r(REG_MAGIC), 0x7472_6976);
    assert_eq!(t.r(REG_VERSION), 2);
    assert_eq!(t.r(REG_DEVICE_ID), device_type::BLOCK);
    assert_eq!(t.r(REG_VENDOR_ID), VENDOR_ID);
    t.w(REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(t.r(REG_DEVICE_FEATURES), FEATURE_A as u32);
    t.w(REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(t.r(REG_DEVICE_FEATURES), 1);
    t.w(REG_DEVICE_FEATURES_SEL, 2);
    assert_eq!(t.r(REG_DEVICE_FEATURES), 0);
    t.w(REG_QUEUE_SEL, 1);
    assert_eq!(t.r(REG_QUEUE_NUM_MAX), 16);
    t.w(REG_QUEUE_SEL, 2);
    assert_eq!(t.r(REG_QUEUE_NUM_MAX), 0, "no such queue");
    // Device configuration at 0x100, any width.
    let mut b = [0u8; 2];
    t.dev.read(CONFIG_OFFSET + 4, &mut b);
    assert_eq!(b, [4, 5]);
}

#[test]
fn features_ok_is_refused_without_version_1_or_for_unoffered_features() {
    let mut t = rig();
    t.negotiate(FEATURE_A);
    assert_eq!(t.r(REG_STATUS) as u8 & STATUS_FEATURES_OK, 0);
    t.w(REG_STATUS, 0);
    t.negotiate(VIRTIO_F_VERSION_1 | 1 << 7);
    assert_eq!(t.r(REG_STATUS) as u8 & STATUS_FEATURES_OK, 0);
    t.w(REG_STATUS, 0);
    t.negotiate(VIRTIO_F_VERSION_1);
    assert_ne!(t.r(REG_STATUS) as u8 & STATUS_FEATURES_OK, 0);
    assert_eq!(t.seen.lock().unwrap().acked, Some(VIRTIO_F_VERSION_1));
}

#[test]
fn driver_ok_activates_with_datamatch_doorbells_and_one_interrupt_line() {
    let mut t = rig();
    t.activate();
    let status = t.r(REG_STATUS) as u8;
    assert_ne!(status & STATUS_DRIVER_OK, 0);
    assert_eq!(status & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(t.seen.lock().unwrap().activations, 1);
    let mut regs = t.ioevents.0.lock().unwrap().clone();
    regs.sort();
    assert_eq!(regs, vec![(BASE + 0x50, 0), (BASE + 0x50, 1)]);
    // A kick that reached the transport signals that queue's eventfd.
    t.w(REG_QUEUE_NOTIFY, 1);
    t.w(REG_QUEUE_NOTIFY, 7);
    assert_eq!(t.seen.lock().unwrap().queues[1].kick.read().unwrap(), 1);
    assert!(t.seen.lock().unwrap().queues[0].kick.read().is_err());
    // Used buffer: bit 0 and one irqfd write; config change: bit 1.
    let irq = t.seen.lock().unwrap().interrupt.clone().unwrap();
    irq.signal_queue(0).unwrap();
    assert_eq!(t.r(REG_INTERRUPT_STATUS), INT_USED_BUFFER);
    assert_eq!(t.irqfd.read().unwrap(), 1);
    let generation = t.r(REG_CONFIG_GENERATION);
    irq.signal_config().unwrap();
    assert_eq!(
        t.r(REG_INTERRUPT_STATUS),
        INT_USED_BUFFER | INT_CONFIG_CHANGE
    );
    assert_eq!(t.r(REG_CONFIG_GENERATION), generation + 1);
    t.w(REG_INTERRUPT_ACK, INT_USED_BUFFER);
    assert_eq!(t.r(REG_INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    t.w(REG_INTERRUPT_ACK, INT_CONFIG_CHANGE);
    assert_eq!(t.r(REG_INTERRUPT_STATUS), 0);
    // Queue setup is frozen after DRIVER_OK.
    t.w(REG_QUEUE_SEL, 0);
    t.w(REG_QUEUE_READY, 0);
    assert_eq!(t.r(REG_QUEUE_READY), 1);
    let state = t.dev.state();
    assert_eq!(state.transport.queues[0].desc, 0x10_0000);
    let copy: VirtioMmioState = state.clone();
    assert_eq!(copy.interrupt_status, 0);
}

#[test]
fn a_bad_queue_sets_device_needs_reset() {
    let mut t = rig();
    t.negotiate(VIRTIO_F_VERSION_1);
    t.w(REG_QUEUE_SEL, 0);
    t.w(REG_QUEUE_NUM, 3); // not a power of two
    t.w(REG_QUEUE_READY, 1);
    assert_eq!(t.r(REG_QUEUE_READY), 0);
    assert_ne!(t.r(REG_STATUS) as u8 & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_ne!(t.r(REG_INTERRUPT_STATUS) & INT_CONFIG_CHANGE, 0);
    assert_eq!(t.irqfd.read().unwrap(), 1);
}

#[test]
fn reset_is_asynchronous_and_ignores_writes_until_done() {
    let mut t = rig();
    t.activate();
    let old_irq = t.seen.lock().unwrap().interrupt.clone().unwrap();
    t.reset_done.store(false, Ordering::Release);
    t.w(REG_STATUS, 0);
    assert_eq!(t.seen.lock().unwrap().resets, 1);
    assert!(t.ioevents.0.lock().unwrap().is_empty(), "doorbells down");
    let busy = t.r(REG_STATUS);
    assert_ne!(busy, 0, "status reads its old value while resetting");
    // Writes other than polling are dropped meanwhile.
    t.w(REG_STATUS, u32::from(STATUS_ACKNOWLEDGE));
    t.w(REG_QUEUE_SEL, 1);
    t.dev.write(CONFIG_OFFSET, &[1]);
    assert_eq!(t.seen.lock().unwrap().config_writes, 0);
    // A worker still finishing signals nothing.
    old_irq.signal_queue(0).unwrap();
    assert!(t.irqfd.read().is_err());
    assert_eq!(t.r(REG_STATUS), busy);
    t.reset_done.store(true, Ordering::Release);
    assert_eq!(t.r(REG_STATUS), 0);
    assert_eq!(t.r(REG_INTERRUPT_STATUS), 0);
    t.w(REG_QUEUE_SEL, 0);
    assert_eq!(t.r(REG_QUEUE_READY), 0);
    // And the device comes up again.
    t.activate();
    assert_ne!(t.r(REG_STATUS) as u8 & STATUS_DRIVER_OK, 0);
    assert_eq!(t.seen.lock().unwrap().activations, 2);
    assert_eq!(t.ioevents.0.lock().unwrap().len(), 2);
}

#[test]
fn queue_ready_zero_disables_a_queue_before_driver_ok() {
    let mut t = rig();
    t.negotiate(VIRTIO_F_VERSION_1);
    t.setup_queue(0, 0x10_0000);
    assert_eq!(t.r(REG_QUEUE_READY), 1);
    t.w(REG_QUEUE_READY, 0);
    assert_eq!(t.r(REG_QUEUE_READY), 0);
}

#[test]
fn bad_accesses_never_panic() {
    let mut t = rig();
    t.activate();
    for off in (0..MMIO_SIZE + 8).step_by(1) {
        for len in [1usize, 2, 3, 4, 8] {
            let mut b = vec![0u8; len];
            t.dev.read(off, &mut b);
            if !(off == REG_STATUS && len == 4) {
                t.dev.write(off, &vec![0xff; len]);
            }
        }
    }
    // Wrong widths of registers read 0.
    let mut b = [0xaau8; 2];
    t.dev.read(REG_MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    t.dev.read(u64::MAX, &mut b);
    t.dev.write(u64::MAX - 1, &b);
    t.w(REG_QUEUE_SEL, u32::MAX);
    assert_eq!(t.r(REG_QUEUE_NUM_MAX), 0);
    t.w(REG_QUEUE_NUM, u32::MAX);
    t.w(REG_QUEUE_READY, 1);
    t.w(REG_STATUS, 0x1_0000);
    t.w(REG_STATUS, 0);
    assert_eq!(t.r(REG_STATUS), 0);
}
