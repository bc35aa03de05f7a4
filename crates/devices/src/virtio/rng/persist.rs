//! What a snapshot needs to rebuild an entropy device: its features, its
//! rate limit and whether it was running. Queue positions belong to the
//! transport's snapshot.

use serde::{Deserialize, Serialize};

use crate::rate_limiter::RateLimiterConfig;

/// Plain, serializable entropy device state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub avail_features: u64,
    pub acked_features: u64,
    pub rate_limiter: RateLimiterConfig,
    /// Whether the device was activated when saved.
    pub activated: bool,
}
