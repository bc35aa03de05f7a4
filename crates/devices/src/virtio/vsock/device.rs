//! `Vsock`: the virtio-vsock device model the transport drives. Three
//! queues (RX, TX, event), a config space holding the guest's CID, and the
//! host side (`muxer.rs`) on a Unix socket bound when the device is made,
//! so a bad path fails before anything boots.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;

use super::metrics::VsockMetrics;
use super::muxer::{HostConnector, Muxer, UdsConnector};
use super::persist::VsockState;
use super::worker::Worker;
use crate::virtio::device_thread::{DeviceThread, DeviceThreads, StopFlag};
use crate::virtio::{
    device_type, ActivateError, ActiveQueue, GuestMemory, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The lowest CID a guest may have (0-2 are reserved for the hypervisor,
/// the local loopback and the host).
pub const MIN_GUEST_CID: u64 = 3;

const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors setting up a vsock device (never raised by the guest).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vsock guest cid {0}: must be 3 or more (0-2 are reserved)")]
    BadCid(u64),
    #[error("vsock socket {0}: already exists; remove it or choose another path")]
    PathExists(PathBuf),
    #[error("vsock socket {path}: cannot listen: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    connector: Arc<dyn HostConnector>,
    avail_features: u64,
    acked_features: u64,
    metrics: Arc<VsockMetrics>,
    threads: DeviceThreads,
}

impl Vsock {
    /// A device for guest `cid` whose host side listens on `uds_path`
    /// (which must not exist yet; it is removed again with the device).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, Error> {
        if guest_cid < MIN_GUEST_CID || guest_cid > u64::from(u32::MAX) {
            return Err(Error::BadCid(guest_cid));
        }
        if std::fs::symlink_metadata(uds_path).is_ok() {
            return Err(Error::PathExists(uds_path.to_path_buf()));
        }
        let listener = UnixListener::bind(uds_path).map_err(|source| Error::Bind {
            path: uds_path.to_path_buf(),
            source,
        })?;
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            connector: Arc::new(UdsConnector {
                uds_path: uds_path.to_path_buf(),
            }),
            avail_features: VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX,
            acked_features: 0,
            metrics: Arc::new(VsockMetrics::default()),
            threads: DeviceThreads::default(),
        })
    }

    /// Reach host ports through `connector` instead of `PATH_<port>`
    /// (the nested rig's relay).
    pub fn with_connector(mut self, connector: Arc<dyn HostConnector>) -> Self {
        self.connector = connector;
        self
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    pub fn is_active(&self) -> bool {
        self.threads.is_running()
    }

    /// The state a snapshot records.
    pub fn save(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid,
            uds_path: self.uds_path.clone(),
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            activated: self.threads.is_running(),
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// `struct virtio_vsock_config { le64 guest_cid; }`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 3 {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                need: 3,
            });
        }
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut rings = Vec::with_capacity(3);
        let mut kicks = Vec::with_capacity(3);
        for (i, mut aq) in queues.into_iter().enumerate() {
            if !aq.queue.ready() || !aq.queue.is_valid(&mem) {
                return Err(ActivateError::Other(format!(
                    "virtio-vsock queue {i}: not ready, or rings outside guest memory"
                )));
            }
            aq.queue.set_event_idx(event_idx);
            rings.push(aq.queue);
            kicks.push(aq.kick);
        }
        self.threads.join_all();
        let listener = self.listener.try_clone().map_err(ActivateError::Worker)?;
        let metrics = self.metrics.clone();
        let muxer = Muxer::new(
            self.guest_cid,
            listener,
            self.connector.clone(),
            metrics.clone(),
        )
        .map_err(ActivateError::Worker)?;
        let mut rings = rings.into_iter();
        let (Some(rx), Some(tx)) = (rings.next(), rings.next()) else {
            return Err(ActivateError::QueueCount { got: 0, need: 3 });
        };
        let path = self.uds_path.display().to_string();
        let thread = DeviceThread::spawn("vireo-vsock", StopFlag::new(), move |control| {
            let worker = Worker::new(mem, rx, tx, interrupt, muxer, metrics);
            if let Err(e) = worker.run(&kicks, &control) {
                eprintln!("vireo: virtio-vsock {path}: device thread stopped: {e}");
            }
        })
        .map_err(ActivateError::Worker)?;
        self.threads.start(thread);
        Ok(())
    }

    /// Every connection goes with the worker (host sockets see EOF); the
    /// listener stays, so host programs can connect again once the driver
    /// is back.
    fn reset(&mut self) {
        self.threads.stop();
        self.acked_features = 0;
    }

    fn reset_done(&mut self) -> bool {
        self.threads.done()
    }

    fn pause(&mut self) {
        self.threads.pause_logged("virtio-vsock", PAUSE_TIMEOUT);
    }

    fn resume(&mut self) {
        self.threads.resume();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let m = &self.metrics;
        let get = VsockMetrics::get;
        vec![
            ("conns_added", get(&m.connections)),
            ("conns_refused", get(&m.refused)),
            ("rst_sent", get(&m.rst_sent)),
            ("rx_bytes_count", get(&m.rx_bytes)),
            ("tx_bytes_count", get(&m.tx_bytes)),
            ("bad_packets", get(&m.bad_packets)),
            ("bad_host_requests", get(&m.bad_host_requests)),
            ("interrupts", get(&m.interrupts)),
        ]
    }
}
