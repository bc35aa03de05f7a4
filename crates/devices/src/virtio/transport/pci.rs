//! The virtio-pci modern transport (virtio 1.x, 4.1): a PCI function
//! (vendor 0x1af4, device 0x1040 + type, revision 1) whose one memory BAR
//! holds the common configuration, the ISR byte, the device configuration,
//! the queue doorbells and the MSI-X table and PBA, each described by a
//! virtio vendor capability.
//!
//! The virtio life cycle (feature negotiation, queue checks, DRIVER_OK,
//! the asynchronous reset) is the shared `TransportCore` (`core.rs`); this
//! file holds what is PCI's own: configuration space and capabilities, the
//! BAR layout, MSI-X (interrupts go out on the queue's or the config
//! vector, held pending while masked) and the doorbells' ioeventfds, which
//! follow BAR 0 when the guest moves it.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::core::{CoreError, TransportCore, TransportHooks, VirtioTransport};
use super::pci_common::*;
use crate::bus::lock;
use crate::pci::config::{BarKind, ConfigError, ConfigSpace, ConfigSpaceState, PciIds};
use crate::pci::msix::{MsixLayout, MsixState};
use crate::pci::{IoEventRegistrar, MsiRouter, Msix, MsixError, PciDevice, MSIX_NO_VECTOR};
use crate::virtio::{device_type, GuestMemory, Interrupt, VirtioDevice};

/// PCI vendor id of virtio devices, and the modern device id base.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem id: modern-only devices use 0x40 or higher.
const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x40;

/// The BAR (always BAR 0) and its layout.
pub const BAR_INDEX: usize = 0;
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const ISR_LEN: u64 = 4;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_LEN: u64 = 0x1000;
/// Each queue's doorbell is `queue index * NOTIFY_MULTIPLIER` into the
/// notify region, so each has its own address (and ioeventfd).
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Queues the layout has room for: one MSI-X vector each plus config.
pub const MAX_QUEUES: usize = ((MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) / 16) as usize - 1;

/// Virtio PCI capability (vendor specific, id 0x09) types.
const PCI_CAP_ID_VENDOR: u8 = 0x09;
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

/// ISR bits.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("virtio-pci: {0}")]
    Core(#[from] CoreError),
    #[error("virtio-pci BAR: {0}")]
    Config(#[from] ConfigError),
    #[error("virtio-pci MSI-X: {0}")]
    Msix(#[from] MsixError),
}

/// What the VMM hands a new virtio-pci function.
pub struct VirtioPciResources {
    /// BAR 0: its width and guest address (naturally aligned, `BAR_SIZE`).
    pub bar_kind: BarKind,
    pub bar_addr: u64,
    /// One GSI per MSI-X vector (`VirtioPciDevice::msix_vectors`).
    pub gsis: Vec<u32>,
    pub msi_router: Arc<dyn MsiRouter>,
    pub ioevents: Arc<dyn IoEventRegistrar>,
}

/// Everything a snapshot of the transport needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    pub transport: TransportState,
    pub config: ConfigSpaceState,
    pub msix: MsixState,
    pub isr: u8,
}

/// Interrupt state shared between the transport (vCPU threads) and the
/// device's workers (through `PciInterrupt`).
struct InterruptState {
    msix: Msix,
    isr: u8,
    config_vector: u16,
    queue_vectors: Vec<u16>,
    config_generation: u8,
}

/// The `Interrupt` an activated device gets: the queue indexes it sees are
/// positions in the list of queues it was handed.
struct PciInterrupt {
    shared: Arc<Mutex<InterruptState>>,
    /// Position in the activated queue list -> transport queue index.
    queue_map: Vec<u16>,
}

impl Interrupt for PciInterrupt {
    fn signal_queue(&self, queue_index: u16) -> std::io::Result<()> {
        let Some(q) = self.queue_map.get(usize::from(queue_index)) else {
            return Ok(());
        };
        let mut s = lock(&self.shared);
        s.isr |= ISR_QUEUE;
        let vector = s
            .queue_vectors
            .get(usize::from(*q))
            .copied()
            .unwrap_or(MSIX_NO_VECTOR);
        s.msix.signal(vector)
    }

    fn signal_config(&self) -> std::io::Result<()> {
        signal_config(&self.shared)
    }
}

fn signal_config(shared: &Mutex<InterruptState>) -> std::io::Result<()> {
    let mut s = lock(shared);
    s.isr |= ISR_CONFIG;
    s.config_generation = s.config_generation.wrapping_add(1);
    let vector = s.config_vector;
    s.msix.signal(vector)
}

/// A virtio device on PCI.
pub struct VirtioPciDevice {
    config: ConfigSpace,
    msix_cap: usize,
    /// The VIRTIO_PCI_CAP_PCI_CFG capability: a window into BAR 0 through
    /// configuration space (bar, offset, length, then 4 data bytes).
    pci_cfg_cap: usize,
    core: TransportCore,
    side: PciSide,
}

/// The PCI half of the transport's state: what `TransportHooks` acts on.
struct PciSide {
    interrupt: Arc<Mutex<InterruptState>>,
    ioevents: Arc<dyn IoEventRegistrar>,
    /// Where BAR 0 decodes now, and where the doorbells are registered.
    bar_addr: Option<u64>,
    ioevents_at: Option<u64>,
    /// Queues registered as ioeventfds (transport indexes).
    ioevent_queues: Vec<u16>,
}

fn doorbell(base: u64, queue: u16) -> u64 {
    base + NOTIFY_OFFSET + u64::from(queue) * u64::from(NOTIFY_MULTIPLIER)
}

impl TransportHooks for PciSide {
    fn register_doorbells(&mut self, queues: &[u16], kicks: &[EventFd]) {
        self.unregister_doorbells(kicks);
        let Some(base) = self.bar_addr else {
            return;
        };
        for q in queues {
            let Some(kick) = kicks.get(usize::from(*q)) else {
                continue;
            };
            // Without an ioeventfd the doorbell still works: the write exits
            // to the vCPU thread and `write_bar` signals the same eventfd.
            if self
                .ioevents
                .register_mmio(doorbell(base, *q), kick)
                .is_ok()
            {
                self.ioevent_queues.push(*q);
            }
        }
        self.ioevents_at = Some(base);
    }

    fn unregister_doorbells(&mut self, kicks: &[EventFd]) {
        if let Some(base) = self.ioevents_at.take() {
            for q in self.ioevent_queues.drain(..) {
                if let Some(kick) = kicks.get(usize::from(q)) {
                    let _ = self.ioevents.unregister_mmio(doorbell(base, q), kick);
                }
            }
        }
    }

    fn interrupt(&mut self, queue_map: Vec<u16>) -> Arc<dyn Interrupt> {
        Arc::new(PciInterrupt {
            shared: self.interrupt.clone(),
            queue_map,
        })
    }

    fn signal_config(&mut self) {
        let _ = signal_config(&self.interrupt);
    }

    /// Clear the queue and config vectors at once.
    fn reset_started(&mut self) {
        let mut s = lock(&self.interrupt);
        s.config_vector = MSIX_NO_VECTOR;
        s.queue_vectors.fill(MSIX_NO_VECTOR);
    }

    /// MSI-X (PCI function state) stays.
    fn reset_finished(&mut self) {
        let mut s = lock(&self.interrupt);
        s.isr = 0;
        s.config_vector = MSIX_NO_VECTOR;
        s.queue_vectors.fill(MSIX_NO_VECTOR);
    }
}

fn pci_class(device_type: u32) -> (u8, u8, u8) {
    match device_type {
        device_type::NET => (0x02, 0x00, 0x00),
        device_type::BLOCK => (0x01, 0x80, 0x00),
        device_type::CONSOLE => (0x07, 0x80, 0x00),
        _ => (0xff, 0x00, 0x00),
    }
}

/// A virtio PCI capability: (cfg_type, offset, length) in BAR 0, plus any
/// extra bytes (the notify multiplier).
fn add_virtio_cap(
    config: &mut ConfigSpace,
    cfg_type: u8,
    offset: u64,
    length: u64,
    extra: &[u8],
) -> Result<usize, ConfigError> {
    // cap_len, cfg_type, bar, id, padding[2], offset, length (+ extra).
    let mut body = vec![(16 + extra.len()) as u8, cfg_type, BAR_INDEX as u8, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    config.add_capability(PCI_CAP_ID_VENDOR, &body, &[])
}

/// VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and the data bytes are
/// writable by the driver.
fn add_pci_cfg_cap(config: &mut ConfigSpace) -> Result<usize, ConfigError> {
    let mut body = vec![20u8, CAP_PCI_CFG, BAR_INDEX as u8];
    body.resize(18, 0);
    let mut wmask = vec![0u8; 18];
    wmask[2] = 0xff;
    wmask[6..18].fill(0xff);
    config.add_capability(PCI_CAP_ID_VENDOR, &body, &wmask)
}

impl VirtioPciDevice {
    /// MSI-X vectors (and so GSIs) a device needs: one per queue plus one
    /// for configuration changes.
    pub fn msix_vectors(device: &dyn VirtioDevice) -> u16 {
        (device.queue_max_sizes().len().min(MAX_QUEUES) + 1) as u16
    }

    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        res: VirtioPciResources,
    ) -> Result<Self, VirtioPciError> {
        let dtype = device.device_type();
        let vectors = Self::msix_vectors(&*device);
        let core = TransportCore::new(device, mem, MAX_QUEUES)?;
        let queue_count = core.kicks().len();
        let mut config = ConfigSpace::new(PciIds {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(dtype as u16),
            revision: 1,
            class: pci_class(dtype),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        config.add_bar(BAR_INDEX, res.bar_kind, BAR_SIZE, res.bar_addr)?;
        let layout = MsixLayout {
            vectors,
            table_bar: BAR_INDEX as u8,
            table_offset: MSIX_TABLE_OFFSET as u32,
            pba_bar: BAR_INDEX as u8,
            pba_offset: MSIX_PBA_OFFSET as u32,
        };
        let msix_cap = layout.add_capability(&mut config)?;
        let queues = queue_count as u64;
        add_virtio_cap(
            &mut config,
            CAP_COMMON_CFG,
            COMMON_OFFSET,
            COMMON_CFG_LEN,
            &[],
        )?;
        add_virtio_cap(&mut config, CAP_ISR_CFG, ISR_OFFSET, ISR_LEN, &[])?;
        add_virtio_cap(
            &mut config,
            CAP_DEVICE_CFG,
            DEVICE_CFG_OFFSET,
            DEVICE_CFG_LEN,
            &[],
        )?;
        add_virtio_cap(
            &mut config,
            CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            (queues * u64::from(NOTIFY_MULTIPLIER)).min(NOTIFY_LEN),
            &NOTIFY_MULTIPLIER.to_le_bytes(),
        )?;
        let pci_cfg_cap = add_pci_cfg_cap(&mut config)?;
        let msix = Msix::new(vectors, res.gsis, res.msi_router)?;
        Ok(VirtioPciDevice {
            config,
            msix_cap,
            pci_cfg_cap,
            core,
            side: PciSide {
                interrupt: Arc::new(Mutex::new(InterruptState {
                    msix,
                    isr: 0,
                    config_vector: MSIX_NO_VECTOR,
                    queue_vectors: vec![MSIX_NO_VECTOR; queue_count],
                    config_generation: 0,
                })),
                ioevents: res.ioevents,
                bar_addr: None,
                ioevents_at: None,
                ioevent_queues: Vec::new(),
            },
        })
    }

    pub fn state(&self) -> VirtioPciState {
        let s = lock(&self.side.interrupt);
        let mut transport = self.core.state().clone();
        transport.config_msix_vector = s.config_vector;
        transport.config_generation = s.config_generation;
        for (q, v) in transport.queues.iter_mut().zip(&s.queue_vectors) {
            q.msix_vector = *v;
        }
        VirtioPciState {
            transport,
            config: self.config.state(),
            msix: s.msix.state(),
            isr: s.isr,
        }
    }

    /// The guest address of queue `queue`'s doorbell, if BAR 0 decodes.
    pub fn notify_address(&self, queue: u16) -> Option<u64> {
        Some(doorbell(self.side.bar_addr?, queue))
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        self.core.poll_reset(&mut self.side);
        let mut view = self.core.state().clone();
        {
            let s = lock(&self.side.interrupt);
            view.config_msix_vector = s.config_vector;
            view.config_generation = s.config_generation;
            let sel = usize::from(view.queue_select);
            if let (Some(q), Some(v)) = (view.queues.get_mut(sel), s.queue_vectors.get(sel)) {
                q.msix_vector = *v;
            }
        }
        view.read(offset, data, self.core.device().avail_features());
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        // Until a reset is done the driver must only poll device_status.
        if self.core.poll_reset(&mut self.side) {
            return;
        }
        let Some(w) = decode_write(offset, data) else {
            return;
        };
        let core = &mut self.core;
        match w {
            CommonWrite::DeviceFeatureSelect(v) => core.state_mut().device_feature_select = v,
            CommonWrite::DriverFeatureSelect(v) => core.state_mut().driver_feature_select = v,
            CommonWrite::DriverFeature(v) => core.write_driver_features(v),
            CommonWrite::ConfigMsixVector(v) => {
                let mut s = lock(&self.side.interrupt);
                s.config_vector = checked_vector(v, s.msix.vectors());
            }
            CommonWrite::DeviceStatus(v) => core.write_status(v, &mut self.side),
            CommonWrite::QueueSelect(v) => core.state_mut().queue_select = v,
            CommonWrite::QueueMsixVector(v) => {
                let q = usize::from(core.state().queue_select);
                let mut s = lock(&self.side.interrupt);
                let n = s.msix.vectors();
                if let Some(slot) = s.queue_vectors.get_mut(q) {
                    *slot = checked_vector(v, n);
                }
            }
            CommonWrite::QueueSize(v) => core.write_queue_size(v),
            CommonWrite::QueueAddress(which, v, mask) => core.write_queue_address(which, v, mask),
            // The driver must not write 0 (virtio 1.2, 4.1.4.3.2).
            CommonWrite::QueueEnable(1) => core.enable_queue(&mut self.side),
            CommonWrite::QueueEnable(_) => {}
        }
    }

    fn read_bar0(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_CFG_LEN => self.read_common(o, data),
            o if (ISR_OFFSET..ISR_OFFSET + ISR_LEN).contains(&o) => {
                data.fill(0);
                // Reading the ISR clears it.
                let mut s = lock(&self.side.interrupt);
                data[0] = std::mem::take(&mut s.isr);
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.core.device().read_config(o - DEVICE_CFG_OFFSET, data);
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.side.interrupt)
                    .msix
                    .read_table(o - MSIX_TABLE_OFFSET, data);
            }
            o if o >= MSIX_PBA_OFFSET => {
                lock(&self.side.interrupt)
                    .msix
                    .read_pba(o - MSIX_PBA_OFFSET, data);
            }
            _ => data.fill(0),
        }
    }

    fn write_bar0(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_CFG_LEN => self.write_common(o, data),
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.core
                    .device_mut()
                    .write_config(o - DEVICE_CFG_OFFSET, data);
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + NOTIFY_LEN).contains(&o) => {
                // A doorbell that reached us (no ioeventfd): kick by hand.
                self.core
                    .kick((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER));
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.side.interrupt)
                    .msix
                    .write_table(o - MSIX_TABLE_OFFSET, data);
            }
            // ISR and PBA are read-only.
            _ => {}
        }
    }
}

impl VirtioPciDevice {
    fn touches_pci_cfg_data(&self, offset: usize, len: usize) -> bool {
        let data = self.pci_cfg_cap + 16;
        offset < data + 4 && offset.saturating_add(len) > data
    }

    /// The BAR 0 access the PCI_CFG capability describes: 1, 2 or 4 bytes,
    /// aligned, inside the BAR; None for anything else.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_cap;
        let bar = self.config.read_u32(cap + 4) as u8;
        let offset = u64::from(self.config.read_u32(cap + 8));
        let len = self.config.read_u32(cap + 12) as usize;
        (usize::from(bar) == BAR_INDEX
            && matches!(len, 1 | 2 | 4)
            && offset.is_multiple_of(len as u64)
            && offset + len as u64 <= BAR_SIZE)
            .then_some((offset, len))
    }
}

/// A vector the guest asked for, or NO_VECTOR if the table has no such entry
/// (the driver reads it back to find out).
fn checked_vector(v: u16, vectors: u16) -> u16 {
    if v < vectors {
        v
    } else {
        MSIX_NO_VECTOR
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        if self.touches_pci_cfg_data(offset, data.len()) {
            if let Some((bar_offset, len)) = self.pci_cfg_window() {
                let mut window = [0u8; 4];
                self.read_bar0(bar_offset, &mut window[..len]);
                self.config.set_bytes(self.pci_cfg_cap + 16, &window);
            }
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let control = self.msix_cap + 2;
        let end = offset.saturating_add(data.len());
        if offset < control + 2 && end > control {
            let value = self.config.read_u16(control);
            lock(&self.side.interrupt).msix.set_control(value);
        }
        if self.touches_pci_cfg_data(offset, data.len()) {
            if let Some((bar_offset, len)) = self.pci_cfg_window() {
                let mut window = [0u8; 4];
                self.config.read(self.pci_cfg_cap + 16, &mut window);
                self.write_bar0(bar_offset, &window[..len]);
            }
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != BAR_INDEX || offset.saturating_add(data.len() as u64) > BAR_SIZE {
            data.fill(0xff);
            return;
        }
        self.read_bar0(offset, data);
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == BAR_INDEX && offset.saturating_add(data.len() as u64) <= BAR_SIZE {
            self.write_bar0(offset, data);
        }
    }

    fn bar_moved(&mut self, bar: usize, _from: Option<u64>, to: Option<u64>) {
        if bar != BAR_INDEX {
            return;
        }
        self.side.bar_addr = to;
        if self.core.state().activated {
            // Move the doorbells: off the old address, onto the new one.
            let active = self.core.enabled_queues();
            self.side.register_doorbells(&active, self.core.kicks());
        }
    }
}

impl VirtioTransport for VirtioPciDevice {
    fn core(&self) -> &TransportCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut TransportCore {
        &mut self.core
    }

    fn signal_config_change(&self) -> std::io::Result<()> {
        signal_config(&self.side.interrupt)
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.side.unregister_doorbells(self.core.kicks());
    }
}
