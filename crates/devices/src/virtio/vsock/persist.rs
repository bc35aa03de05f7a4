//! What a snapshot needs to rebuild a vsock device. Connections do not
//! survive a snapshot (as with Firecracker): on restore the device sends
//! the guest a transport-reset event and guest sockets reconnect.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Plain, serializable vsock device state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    pub avail_features: u64,
    pub acked_features: u64,
    pub activated: bool,
}
