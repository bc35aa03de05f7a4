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

impl Validate for RateLimiter {
    fn validate(&self) -> Result<(), FieldError> {
        validate_opt("bandwidth", &self.bandwidth)?;
        validate_opt("ops", &self.ops)
    }
}
