//! What a snapshot needs to rebuild a balloon: its features, settings,
//! target and the size the guest last reported. Queue positions belong to
//! the transport's snapshot.

use serde::{Deserialize, Serialize};

use super::device::BalloonSettings;

/// Plain, serializable balloon state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonState {
    pub avail_features: u64,
    pub acked_features: u64,
    pub settings: BalloonSettings,
    pub target_pages: u32,
    pub actual_pages: u32,
    /// Whether the device was activated when saved.
    pub activated: bool,
}
