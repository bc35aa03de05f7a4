//! The transport-independent half of every virtio transport: the device, its
//! guest memory, the driver-visible setup (`TransportState`), one kick
//! eventfd per queue, and the rules of the virtio life cycle (virtio 1.2,
//! 2.1 and 3.1):
//! - feature negotiation: FEATURES_OK is refused (the bit stays clear) for a
//!   feature the device did not offer or without VERSION_1, and the driver
//!   features are frozen after it;
//! - queue setup: size and ring addresses are writable only before
//!   DRIVER_OK and while the queue is disabled; enabling checks them
//!   (`build_queue`), a bad queue sets DEVICE_NEEDS_RESET;
//! - DRIVER_OK: build the enabled queues and `VirtioDevice::activate` with
//!   their kick eventfds and the transport's `Interrupt`;
//! - reset (status 0): asynchronous. `VirtioDevice::reset` is called at once,
//!   device_status keeps reading its old value and writes other than status
//!   polling are ignored until `VirtioDevice::reset_done`; then every
//!   register returns to its initial value.
//!
//! What differs between transports (how interrupts reach the guest, where
//! doorbells live, what registers look like) is behind `TransportHooks`,
//! which the PCI and MMIO transports implement.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::pci_common::{
    QueueConfig, TransportState, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use crate::virtio::{ActiveQueue, GuestMemory, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

/// VIRTIO_RING_F_EVENT_IDX.
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(
        "virtio device type {device_type}: {queues} queues (the transport supports 1 to {max})"
    )]
    QueueCount {
        device_type: u32,
        queues: usize,
        max: usize,
    },
    #[error("virtio device type {device_type}: queue {queue} maximum size {size} is not a power of two up to 32768")]
    QueueMaxSize {
        device_type: u32,
        queue: usize,
        size: u16,
    },
    #[error("cannot create a queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// What a transport does at the points of the life cycle that depend on it.
pub trait TransportHooks {
    /// DRIVER_OK: put the doorbells of `queues` (transport indexes) where the
    /// guest writes them (KVM ioeventfds), signalling `kicks[queue]`.
    fn register_doorbells(&mut self, queues: &[u16], kicks: &[EventFd]);
    /// Take every doorbell registered by `register_doorbells` down again.
    fn unregister_doorbells(&mut self, kicks: &[EventFd]);
    /// The `Interrupt` the device is activated with; `queue_map` maps the
    /// position of a queue in the activated list to its transport index.
    fn interrupt(&mut self, queue_map: Vec<u16>) -> Arc<dyn Interrupt>;
    /// Tell the driver the configuration (here: DEVICE_NEEDS_RESET) changed.
    fn signal_config(&mut self);
    /// A reset began: stop delivering interrupts (a worker still finishing
    /// must signal nothing).
    fn reset_started(&mut self);
    /// The reset finished: interrupt state back to its initial value.
    fn reset_finished(&mut self);
}

/// A virtio device on some transport, as the VMM holds it (pause, resume,
/// configuration changes) without knowing which transport carries it.
pub trait VirtioTransport: Send {
    fn core(&self) -> &TransportCore;
    fn core_mut(&mut self) -> &mut TransportCore;
    /// Tell the driver the device configuration changed (e.g. a resize).
    fn signal_config_change(&self) -> std::io::Result<()>;

    /// The device behind the transport.
    fn device(&self) -> &dyn VirtioDevice {
        self.core().device()
    }

    fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.core_mut().device_mut()
    }
}

/// The device behind a transport and the virtio life cycle around it.
pub struct TransportCore {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    state: TransportState,
    /// One doorbell eventfd per queue, for the transport's whole life.
    kicks: Vec<EventFd>,
    /// A reset was written and the device has not finished it yet.
    resetting: bool,
}

impl TransportCore {
    /// A core for `device` with at most `max_queues` queues, each of a
    /// valid maximum size.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        max_queues: usize,
    ) -> Result<Self, CoreError> {
        let dtype = device.device_type();
        let max_sizes = device.queue_max_sizes();
        if max_sizes.is_empty() || max_sizes.len() > max_queues {
            return Err(CoreError::QueueCount {
                device_type: dtype,
                queues: max_sizes.len(),
                max: max_queues,
            });
        }
        for (queue, size) in max_sizes.iter().enumerate() {
            if Queue::new(*size).is_err() {
                return Err(CoreError::QueueMaxSize {
                    device_type: dtype,
                    queue,
                    size: *size,
                });
            }
        }
        let kicks = (0..max_sizes.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(CoreError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TransportCore {
            device,
            mem,
            state: TransportState::new(&max_sizes),
            kicks,
            resetting: false,
        })
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        &*self.device
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        &mut *self.device
    }

    pub fn state(&self) -> &TransportState {
        &self.state
    }

    /// Registers with no life-cycle rule of their own (selectors).
    pub fn state_mut(&mut self) -> &mut TransportState {
        &mut self.state
    }

    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// A doorbell write that reached the transport (no ioeventfd): kick
    /// `queue` by hand. Unknown queues are ignored.
    pub fn kick(&self, queue: u64) {
        if let Some(k) = usize::try_from(queue).ok().and_then(|q| self.kicks.get(q)) {
            let _ = k.write(1);
        }
    }

    /// Transport indexes of the enabled queues.
    pub fn enabled_queues(&self) -> Vec<u16> {
        (0..self.state.queues.len() as u16)
            .filter(|q| self.state.queues[usize::from(*q)].enabled)
            .collect()
    }

    fn setting_up(&self) -> bool {
        self.state.device_status & STATUS_DRIVER_OK == 0
    }

    /// The selected queue, if it may still be set up.
    fn configurable_queue(&mut self) -> Option<&mut QueueConfig> {
        let setting_up = self.setting_up();
        self.state
            .selected_mut()
            .filter(|q| !q.enabled && setting_up)
    }

    /// The driver wrote the driver-features window `driver_feature_select`.
    pub fn write_driver_features(&mut self, v: u32) {
        // Features are fixed once FEATURES_OK is set.
        if self.state.device_status & STATUS_FEATURES_OK != 0 {
            return;
        }
        let shift = match self.state.driver_feature_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let f = &mut self.state.driver_features;
        *f = (*f & !(0xffff_ffffu64 << shift)) | u64::from(v) << shift;
    }

    /// The driver wrote the selected queue's size (checked on enable).
    pub fn write_queue_size(&mut self, v: u16) {
        if let Some(q) = self.configurable_queue() {
            q.size = v;
        }
    }

    /// The driver wrote the bits `mask` of ring address `which` (0
    /// descriptors, 1 driver area, 2 device area) of the selected queue.
    pub fn write_queue_address(&mut self, which: usize, v: u64, mask: u64) {
        if let Some(q) = self.configurable_queue() {
            let a = match which {
                0 => &mut q.desc,
                1 => &mut q.driver,
                _ => &mut q.device,
            };
            *a = (*a & !mask) | (v & mask);
        }
    }

    /// The driver enabled the selected queue: check its setup.
    pub fn enable_queue(&mut self, hooks: &mut dyn TransportHooks) {
        if !self.setting_up() {
            return;
        }
        let Some(q) = self.state.selected().copied() else {
            return;
        };
        if q.enabled {
            return;
        }
        if build_queue(&q, &self.mem, false).is_some() {
            if let Some(q) = self.state.selected_mut() {
                q.enabled = true;
            }
        } else {
            self.needs_reset(hooks);
        }
    }

    /// The driver disabled the selected queue before DRIVER_OK (virtio-mmio
    /// QueueReady 0); after it, queues stay as they are until a reset.
    pub fn disable_queue(&mut self) {
        if !self.setting_up() {
            return;
        }
        if let Some(q) = self.state.selected_mut() {
            q.enabled = false;
        }
    }

    /// The driver wrote device_status.
    pub fn write_status(&mut self, v: u8, hooks: &mut dyn TransportHooks) {
        if v == 0 {
            self.begin_reset(hooks);
            return;
        }
        let old = self.state.device_status;
        // The driver only ever adds bits; it cannot clear them but by reset.
        let mut new = old | v;
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let f = self.state.driver_features;
            let offered = self.device.avail_features();
            if f & !offered != 0 || f & VIRTIO_F_VERSION_1 == 0 {
                new &= !STATUS_FEATURES_OK;
            } else {
                self.device.ack_features(f);
            }
        }
        if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            if new & STATUS_FEATURES_OK == 0 {
                new &= !STATUS_DRIVER_OK;
            } else {
                self.state.device_status = new;
                if !self.activate(hooks) {
                    self.needs_reset(hooks);
                }
                return;
            }
        }
        self.state.device_status = new;
    }

    /// Enter DEVICE_NEEDS_RESET and tell the driver.
    fn needs_reset(&mut self, hooks: &mut dyn TransportHooks) {
        self.state.device_status |= STATUS_DEVICE_NEEDS_RESET;
        hooks.signal_config();
    }

    /// DRIVER_OK: build the enabled queues, register their doorbells and
    /// start the device. False if anything is wrong.
    fn activate(&mut self, hooks: &mut dyn TransportHooks) -> bool {
        let event_idx = self.state.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::new();
        let mut queue_map = Vec::new();
        for (i, q) in self.state.queues.iter().enumerate() {
            if !q.enabled {
                continue;
            }
            let Some(queue) = build_queue(q, &self.mem, event_idx) else {
                return false;
            };
            let Ok(kick) = self.kicks[i].try_clone() else {
                return false;
            };
            queues.push(ActiveQueue { queue, kick });
            queue_map.push(i as u16);
        }
        hooks.register_doorbells(&queue_map, &self.kicks);
        let interrupt = hooks.interrupt(queue_map);
        match self.device.activate(self.mem.clone(), queues, interrupt) {
            Ok(()) => {
                self.state.activated = true;
                true
            }
            Err(e) => {
                // The driver sees DEVICE_NEEDS_RESET; the host's operator
                // needs to know why.
                eprintln!(
                    "vireo: virtio device (type {}) cannot start: {e}",
                    self.device.device_type()
                );
                hooks.unregister_doorbells(&self.kicks);
                false
            }
        }
    }

    /// Device reset: tell the device to stop, drop the doorbells and the
    /// interrupts, and finish at once if the device is already done.
    fn begin_reset(&mut self, hooks: &mut dyn TransportHooks) {
        if self.state.device_status != 0 || self.state.activated {
            self.device.reset();
        }
        hooks.unregister_doorbells(&self.kicks);
        hooks.reset_started();
        self.resetting = true;
        self.poll_reset(hooks);
    }

    /// If a reset is pending and the device has finished it, complete it.
    /// Returns whether a reset is still pending (the driver may then only
    /// poll device_status; transports drop its other writes).
    pub fn poll_reset(&mut self, hooks: &mut dyn TransportHooks) -> bool {
        if self.resetting && self.device.reset_done() {
            self.finish_reset(hooks);
        }
        self.resetting
    }

    /// Return every register to its initial value.
    fn finish_reset(&mut self, hooks: &mut dyn TransportHooks) {
        self.resetting = false;
        for k in &self.kicks {
            let _ = k.read();
        }
        let max: Vec<u16> = self.state.queues.iter().map(|q| q.max_size).collect();
        let generation = self.state.config_generation;
        self.state = TransportState::new(&max);
        self.state.config_generation = generation;
        hooks.reset_finished();
    }
}

/// A `Queue` from the driver's setup, or None if the size is not a power of
/// two up to the maximum, a ring address is misaligned, or a ring is not in
/// guest memory.
pub fn build_queue(q: &QueueConfig, mem: &GuestMemory, event_idx: bool) -> Option<Queue> {
    let mut queue = Queue::new(q.max_size).ok()?;
    queue.try_set_size(q.size).ok()?;
    queue
        .try_set_desc_table_address(GuestAddress(q.desc))
        .ok()?;
    queue
        .try_set_avail_ring_address(GuestAddress(q.driver))
        .ok()?;
    queue
        .try_set_used_ring_address(GuestAddress(q.device))
        .ok()?;
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    queue.is_valid(mem).then_some(queue)
}
