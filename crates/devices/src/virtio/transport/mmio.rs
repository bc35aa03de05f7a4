//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): a 4 KiB
//! register block on the MMIO bus per device, one legacy interrupt line
//! (an irqfd on a GSI) and the device configuration at 0x100.
//!
//! The virtio life cycle (feature negotiation, queue checks, DRIVER_OK, the
//! asynchronous reset) is the shared `TransportCore` (`core.rs`); this file
//! holds the register layout, InterruptStatus/InterruptACK and the
//! doorbell: QueueNotify at 0x50, registered as one KVM ioeventfd per queue
//! with the queue index as datamatch, so a kick wakes the device thread
//! without a vCPU exit handler. Where the hypervisor cannot match data the
//! write reaches `write` and kicks the same eventfd.
//!
//! Registers are 32 bits wide and 32-bit aligned; any other access reads 0
//! and writes are dropped. Device configuration accepts any width.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::core::{CoreError, TransportCore, TransportHooks, VirtioTransport};
use super::pci_common::TransportState;
use crate::bus::{lock, BusDevice};
use crate::pci::IoEventRegistrar;
use crate::virtio::{GuestMemory, Interrupt, VirtioDevice};

/// Size of one device's register block.
pub const MMIO_SIZE: u64 = 0x1000;
/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (non-legacy) register layout.
pub const VERSION: u32 = 2;
/// Vendor id reported to the driver ("VIRO").
pub const VENDOR_ID: u32 = 0x4f52_4956;
/// Queues a device may have on this transport.
pub const MAX_QUEUES: usize = 256;

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// Shared memory regions: Vireo's devices have none (length reads all ones).
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG_OFFSET: u64 = 0x100;

/// InterruptStatus bits.
pub const INT_USED_BUFFER: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum VirtioMmioError {
    #[error("virtio-mmio: {0}")]
    Core(#[from] CoreError),
}

/// What the VMM hands a new virtio-mmio device.
pub struct VirtioMmioResources {
    /// Guest address of the register block (the bus puts it there; the
    /// transport needs it for the doorbell ioeventfds).
    pub base: u64,
    /// Written once per interrupt; the VMM registers it as an irqfd on the
    /// device's GSI.
    pub irqfd: EventFd,
    pub ioevents: Arc<dyn IoEventRegistrar>,
}

/// Everything a snapshot of the transport needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioMmioState {
    /// The driver's setup; `config_generation` is the ConfigGeneration
    /// register.
    pub transport: TransportState,
    pub interrupt_status: u32,
}

/// Interrupt state shared between the transport (vCPU threads) and the
/// device's workers (through `MmioInterrupt`).
struct IrqState {
    status: u32,
    config_generation: u8,
    /// Bumped on every reset: an `Interrupt` of an earlier activation
    /// (a worker still finishing) signals nothing.
    epoch: u64,
    irqfd: EventFd,
}

impl IrqState {
    fn raise(&mut self, bit: u32) -> std::io::Result<()> {
        if bit == INT_CONFIG_CHANGE {
            self.config_generation = self.config_generation.wrapping_add(1);
        }
        self.status |= bit;
        self.irqfd.write(1)
    }
}

struct MmioInterrupt {
    shared: Arc<Mutex<IrqState>>,
    epoch: u64,
}

impl MmioInterrupt {
    fn raise(&self, bit: u32) -> std::io::Result<()> {
        let mut s = lock(&self.shared);
        if s.epoch != self.epoch {
            return Ok(());
        }
        s.raise(bit)
    }
}

impl Interrupt for MmioInterrupt {
    fn signal_queue(&self, _queue_index: u16) -> std::io::Result<()> {
        self.raise(INT_USED_BUFFER)
    }

    fn signal_config(&self) -> std::io::Result<()> {
        self.raise(INT_CONFIG_CHANGE)
    }
}

/// The MMIO half of the transport's state: what `TransportHooks` acts on.
struct MmioSide {
    irq: Arc<Mutex<IrqState>>,
    ioevents: Arc<dyn IoEventRegistrar>,
    notify_addr: u64,
    /// Queues registered as ioeventfds (transport indexes).
    ioevent_queues: Vec<u16>,
}

impl TransportHooks for MmioSide {
    fn register_doorbells(&mut self, queues: &[u16], kicks: &[EventFd]) {
        self.unregister_doorbells(kicks);
        for q in queues {
            let Some(kick) = kicks.get(usize::from(*q)) else {
                continue;
            };
            if self
                .ioevents
                .register_mmio_datamatch(self.notify_addr, u32::from(*q), kick)
                .is_ok()
            {
                self.ioevent_queues.push(*q);
            }
        }
    }

    fn unregister_doorbells(&mut self, kicks: &[EventFd]) {
        for q in self.ioevent_queues.drain(..) {
            if let Some(kick) = kicks.get(usize::from(q)) {
                let _ =
                    self.ioevents
                        .unregister_mmio_datamatch(self.notify_addr, u32::from(q), kick);
            }
        }
    }

    fn interrupt(&mut self, _queue_map: Vec<u16>) -> Arc<dyn Interrupt> {
        // One line for every queue: the queue index does not matter.
        let epoch = lock(&self.irq).epoch;
        Arc::new(MmioInterrupt {
            shared: self.irq.clone(),
            epoch,
        })
    }

    fn signal_config(&mut self) {
        let _ = lock(&self.irq).raise(INT_CONFIG_CHANGE);
    }

    fn reset_started(&mut self) {
        let mut s = lock(&self.irq);
        s.epoch = s.epoch.wrapping_add(1);
    }

    fn reset_finished(&mut self) {
        lock(&self.irq).status = 0;
    }
}

/// A virtio device on virtio-mmio.
pub struct VirtioMmioDevice {
    core: TransportCore,
    side: MmioSide,
}

impl VirtioMmioDevice {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        res: VirtioMmioResources,
    ) -> Result<Self, VirtioMmioError> {
        let core = TransportCore::new(device, mem, MAX_QUEUES)?;
        Ok(VirtioMmioDevice {
            core,
            side: MmioSide {
                irq: Arc::new(Mutex::new(IrqState {
                    status: 0,
                    config_generation: 0,
                    epoch: 0,
                    irqfd: res.irqfd,
                })),
                ioevents: res.ioevents,
                notify_addr: res.base.saturating_add(REG_QUEUE_NOTIFY),
                ioevent_queues: Vec::new(),
            },
        })
    }

    pub fn state(&self) -> VirtioMmioState {
        let s = lock(&self.side.irq);
        let mut transport = self.core.state().clone();
        transport.config_generation = s.config_generation;
        VirtioMmioState {
            transport,
            interrupt_status: s.status,
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        self.core.poll_reset(&mut self.side);
        let state = self.core.state();
        let q = state.selected();
        let word = |v: u64, sel: u32| match sel {
            0 => v as u32,
            1 => (v >> 32) as u32,
            _ => 0,
        };
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.core.device().device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => word(
                self.core.device().avail_features(),
                state.device_feature_select,
            ),
            REG_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => q.map_or(0, |q| u32::from(q.enabled)),
            REG_INTERRUPT_STATUS => lock(&self.side.irq).status,
            REG_STATUS => u32::from(state.device_status),
            REG_SHM_LEN_LOW..=REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => u32::from(lock(&self.side.irq).config_generation),
            // Write-only registers, reserved offsets.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        // Until a reset is done the driver must only poll Status.
        if self.core.poll_reset(&mut self.side) {
            return;
        }
        let core = &mut self.core;
        let addr_half = |which: usize, high: bool| {
            if high {
                (which, u64::from(v) << 32, 0xffff_ffff_0000_0000)
            } else {
                (which, u64::from(v), 0xffff_ffff)
            }
        };
        let address = match offset {
            REG_QUEUE_DESC_LOW => Some(addr_half(0, false)),
            REG_QUEUE_DESC_HIGH => Some(addr_half(0, true)),
            REG_QUEUE_DRIVER_LOW => Some(addr_half(1, false)),
            REG_QUEUE_DRIVER_HIGH => Some(addr_half(1, true)),
            REG_QUEUE_DEVICE_LOW => Some(addr_half(2, false)),
            REG_QUEUE_DEVICE_HIGH => Some(addr_half(2, true)),
            _ => None,
        };
        if let Some((which, value, mask)) = address {
            core.write_queue_address(which, value, mask);
            return;
        }
        match offset {
            REG_DEVICE_FEATURES_SEL => core.state_mut().device_feature_select = v,
            REG_DRIVER_FEATURES_SEL => core.state_mut().driver_feature_select = v,
            REG_DRIVER_FEATURES => core.write_driver_features(v),
            // A selector past u16 selects no queue, like any missing one.
            REG_QUEUE_SEL => core.state_mut().queue_select = u16::try_from(v).unwrap_or(u16::MAX),
            REG_QUEUE_NUM => core.write_queue_size(u16::try_from(v).unwrap_or(0)),
            REG_QUEUE_READY => match v {
                1 => core.enable_queue(&mut self.side),
                0 => core.disable_queue(),
                _ => {}
            },
            // A doorbell that reached us (no ioeventfd): kick by hand.
            REG_QUEUE_NOTIFY => core.kick(u64::from(v)),
            REG_INTERRUPT_ACK => lock(&self.side.irq).status &= !v,
            REG_STATUS => {
                if let Ok(status) = u8::try_from(v) {
                    core.write_status(status, &mut self.side);
                }
            }
            // Read-only registers, reserved offsets.
            _ => {}
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl VirtioMmioDevice {
    /// A driver's 32-bit register read (tests and fuzzing).
    pub fn read_u32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// A driver's 32-bit register write (tests and fuzzing).
    pub fn write_u32(&mut self, offset: u64, v: u32) {
        self.write(offset, &v.to_le_bytes());
    }
}

impl BusDevice for VirtioMmioDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            match offset.checked_add(data.len() as u64) {
                Some(end) if end <= MMIO_SIZE => {
                    self.core.device().read_config(offset - CONFIG_OFFSET, data)
                }
                _ => data.fill(0),
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if let Some(end) = offset.checked_add(data.len() as u64) {
                if end <= MMIO_SIZE && !self.core.poll_reset(&mut self.side) {
                    self.core
                        .device_mut()
                        .write_config(offset - CONFIG_OFFSET, data);
                }
            }
            return;
        }
        let Ok(word) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset.is_multiple_of(4) {
            self.write_reg(offset, u32::from_le_bytes(word));
        }
    }
}

impl VirtioTransport for VirtioMmioDevice {
    fn core(&self) -> &TransportCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut TransportCore {
        &mut self.core
    }

    fn signal_config_change(&self) -> std::io::Result<()> {
        lock(&self.side.irq).raise(INT_CONFIG_CHANGE)
    }
}

impl Drop for VirtioMmioDevice {
    fn drop(&mut self) {
        self.side.unregister_doorbells(self.core.kicks());
    }
}
