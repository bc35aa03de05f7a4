//! What a snapshot needs to rebuild a network device: its settings, the
//! features the driver accepted and whether it was running. Queue
//! positions belong to the transport's snapshot; the tap is reopened by
//! name (or the name a restore overrides it with).

use serde::{Deserialize, Serialize};

use crate::rate_limiter::RateLimiterConfig;

/// Plain, serializable network device state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub tap: String,
    pub mac: [u8; 6],
    pub mtu: Option<u16>,
    pub queue_pairs: u16,
    pub rx_rate_limiter: RateLimiterConfig,
    pub tx_rate_limiter: RateLimiterConfig,
    pub avail_features: u64,
    pub acked_features: u64,
    /// Whether the device was activated when saved.
    pub activated: bool,
}
