//! Token-bucket rate limiters shared by drives, network interfaces, pmem,
//! the entropy device and the serial console.

use serde::{Deserialize, Serialize};

use super::{validate_opt, FieldError, Validate};

/// A token bucket: `size` tokens refilled every `refill_time` milliseconds,
/// with an optional one-time initial burst.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

impl Validate for TokenBucket {
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// Independent limits on bytes (`bandwidth`) and operations (`ops`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// This limiter with `patch` applied (Firecracker's PATCH): a bucket
    /// the patch names replaces ours, one it leaves out stays.
    pub fn patched(&self, patch: &RateLimiter) -> RateLimiter {
        RateLimiter {
            bandwidth: patch.bandwidth.clone().or_else(|| self.bandwidth.clone()),
            ops: patch.ops.clone().or_else(|| self.ops.clone()),
        }
    }
}

/// `old` (if any) patched by `patch` (if any).
pub fn patch_limiter(
    old: &Option<RateLimiter>,
    patch: &Option<RateLimiter>,
) -> Option<RateLimiter> {
    match (old, patch) {
        (Some(o), Some(p)) => Some(o.patched(p)),
        (None, Some(p)) => Some(p.clone()),
        (o, None) => o.clone(),
    }
}

impl Validate for RateLimiter {
    fn validate(&self) -> Result<(), FieldError> {
        validate_opt("bandwidth", &self.bandwidth)?;
        validate_opt("ops", &self.ops)
    }
}
