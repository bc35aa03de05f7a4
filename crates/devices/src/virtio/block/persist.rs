//! What a snapshot needs to rebuild a block device: the disk it serves, the
//! negotiated features and whether it was running. Queue positions belong to
//! the transport's snapshot; guest memory is saved by the VMM.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::engine::EngineKind;

/// Plain, serializable block device state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub path: PathBuf,
    pub readonly: bool,
    pub id: Option<String>,
    pub num_queues: u16,
    /// Checked on restore: the image must still have this size.
    pub capacity_sectors: u64,
    pub avail_features: u64,
    pub acked_features: u64,
    pub engine: EngineKind,
    /// Whether the device was activated when saved (the transport
    /// re-activates it with the restored queues).
    pub activated: bool,
}
