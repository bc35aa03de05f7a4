//! The virtio-pci common configuration structure (virtio 1.x, 4.1.4.3):
//! feature negotiation windows, device status, and per-queue setup, as
//! plain serializable state plus the register decoding. What a register
//! write *does* beyond storing a value (status transitions, queue enable
//! checks, vectors) is decided by the transport in `pci.rs`.

use serde::{Deserialize, Serialize};

use crate::pci::MSIX_NO_VECTOR;

/// Length of `struct virtio_pci_common_cfg` (without the 1.2 additions).
pub const COMMON_CFG_LEN: u64 = 0x38;

pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
pub const DEVICE_FEATURE: u64 = 0x04;
pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub const DRIVER_FEATURE: u64 = 0x0c;
pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
pub const NUM_QUEUES: u64 = 0x12;
pub const DEVICE_STATUS: u64 = 0x14;
pub const CONFIG_GENERATION: u64 = 0x15;
pub const QUEUE_SELECT: u64 = 0x16;
pub const QUEUE_SIZE: u64 = 0x18;
pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
pub const QUEUE_ENABLE: u64 = 0x1c;
pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
pub const QUEUE_DESC: u64 = 0x20;
pub const QUEUE_DRIVER: u64 = 0x28;
pub const QUEUE_DEVICE: u64 = 0x30;

/// Device status bits (virtio 1.x, 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// One queue as the driver set it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub max_size: u16,
    pub size: u16,
    pub enabled: bool,
    pub msix_vector: u16,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueConfig {
    pub fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            enabled: false,
            msix_vector: MSIX_NO_VECTOR,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// The common configuration state (a snapshot needs all of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_status: u8,
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    /// What the driver wrote into the driver feature windows.
    pub driver_features: u64,
    pub config_msix_vector: u16,
    pub config_generation: u8,
    pub queue_select: u16,
    pub queues: Vec<QueueConfig>,
    /// The device was activated (DRIVER_OK accepted).
    pub activated: bool,
}

impl TransportState {
    /// The state after a reset, for queues of these maximum sizes.
    pub fn new(queue_max_sizes: &[u16]) -> Self {
        TransportState {
            device_status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_msix_vector: MSIX_NO_VECTOR,
            config_generation: 0,
            queue_select: 0,
            queues: queue_max_sizes
                .iter()
                .map(|m| QueueConfig::new(*m))
                .collect(),
            activated: false,
        }
    }

    /// The selected queue, if it exists.
    pub fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    pub fn selected_mut(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// The 32-bit register at dword-aligned `offset`; `device_features` is
    /// what the device offers.
    pub fn read_dword(&self, offset: u64, device_features: u64) -> u32 {
        let q = self.selected().copied();
        let qf = |f: fn(&QueueConfig) -> u32| q.as_ref().map(f).unwrap_or(0);
        let word = |v: u64, sel: u32| match sel {
            0 => v as u32,
            1 => (v >> 32) as u32,
            _ => 0,
        };
        match offset {
            DEVICE_FEATURE_SELECT => self.device_feature_select,
            DEVICE_FEATURE => word(device_features, self.device_feature_select),
            DRIVER_FEATURE_SELECT => self.driver_feature_select,
            DRIVER_FEATURE => word(self.driver_features, self.driver_feature_select),
            CONFIG_MSIX_VECTOR => {
                u32::from(self.config_msix_vector) | (self.queues.len() as u32) << 16
            }
            DEVICE_STATUS => {
                u32::from(self.device_status)
                    | u32::from(self.config_generation) << 8
                    | u32::from(self.queue_select) << 16
            }
            QUEUE_SIZE => qf(|q| u32::from(q.size) | u32::from(q.msix_vector) << 16),
            // queue_notify_off is the queue index (see the notify capability).
            QUEUE_ENABLE => {
                let notify_off = if q.is_some() {
                    u32::from(self.queue_select) << 16
                } else {
                    0
                };
                qf(|q| u32::from(q.enabled)) | notify_off
            }
            0x20 => qf(|q| q.desc as u32),
            0x24 => qf(|q| (q.desc >> 32) as u32),
            0x28 => qf(|q| q.driver as u32),
            0x2c => qf(|q| (q.driver >> 32) as u32),
            0x30 => qf(|q| q.device as u32),
            0x34 => qf(|q| (q.device >> 32) as u32),
            _ => 0,
        }
    }

    /// A guest read of any width inside the structure (bytes past it read 0).
    pub fn read(&self, offset: u64, data: &mut [u8], device_features: u64) {
        for (i, b) in data.iter_mut().enumerate() {
            let Some(o) = offset.checked_add(i as u64).filter(|o| *o < COMMON_CFG_LEN) else {
                *b = 0;
                continue;
            };
            let dword = self.read_dword(o & !3, device_features);
            *b = (dword >> ((o & 3) * 8)) as u8;
        }
    }
}

/// A decoded write to the common configuration structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonWrite {
    DeviceFeatureSelect(u32),
    DriverFeatureSelect(u32),
    DriverFeature(u32),
    ConfigMsixVector(u16),
    DeviceStatus(u8),
    QueueSelect(u16),
    QueueSize(u16),
    QueueMsixVector(u16),
    QueueEnable(u16),
    /// (which address: 0 desc, 1 driver, 2 device; value; mask of the bits written)
    QueueAddress(usize, u64, u64),
}

/// Decode a guest write: each field must be written at its own offset with
/// its own width (64-bit addresses also as two 32-bit halves). Anything
/// else is not a register write and is dropped.
pub fn decode_write(offset: u64, data: &[u8]) -> Option<CommonWrite> {
    let v = match data.len() {
        1 => u64::from(data[0]),
        2 => u64::from(u16::from_le_bytes([data[0], data[1]])),
        4 => u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]])),
        8 => u64::from_le_bytes(data.try_into().ok()?),
        _ => return None,
    };
    use CommonWrite::*;
    Some(match (offset, data.len()) {
        (DEVICE_FEATURE_SELECT, 4) => DeviceFeatureSelect(v as u32),
        (DRIVER_FEATURE_SELECT, 4) => DriverFeatureSelect(v as u32),
        (DRIVER_FEATURE, 4) => DriverFeature(v as u32),
        (CONFIG_MSIX_VECTOR, 2) => ConfigMsixVector(v as u16),
        (DEVICE_STATUS, 1) => DeviceStatus(v as u8),
        (QUEUE_SELECT, 2) => QueueSelect(v as u16),
        (QUEUE_SIZE, 2) => QueueSize(v as u16),
        (QUEUE_MSIX_VECTOR, 2) => QueueMsixVector(v as u16),
        (QUEUE_ENABLE, 2) => QueueEnable(v as u16),
        (QUEUE_DESC..=0x37, 8) if offset.is_multiple_of(8) => {
            QueueAddress(((offset - QUEUE_DESC) / 8) as usize, v, u64::MAX)
        }
        (QUEUE_DESC..=0x37, 4) if offset.is_multiple_of(4) => {
            let which = ((offset - QUEUE_DESC) / 8) as usize;
            if offset.is_multiple_of(8) {
                QueueAddress(which, v, 0xffff_ffff)
            } else {
                QueueAddress(which, v << 32, 0xffff_ffff_0000_0000)
            }
        }
        _ => return None,
    })
}
