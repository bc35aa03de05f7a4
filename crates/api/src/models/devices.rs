//! `/vsock`, `/entropy`, `/serial` and `/hotplug/memory`.

use serde::{Deserialize, Serialize};

use super::{validate_opt, FieldError, RateLimiter, TokenBucket, Validate};

/// A virtio-vsock device proxied through Unix sockets at `uds_path`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id; 0 to 2 are reserved.
    pub guest_cid: u32,
    pub uds_path: String,
    /// Deprecated, accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

impl Validate for Vsock {
    fn validate(&self) -> Result<(), FieldError> {
        if self.guest_cid < 3 {
            return Err(FieldError::new(
                "guest_cid",
                format!("must be at least 3, got {}", self.guest_cid),
            ));
        }
        if self.uds_path.is_empty() {
            return Err(FieldError::new("uds_path", "must not be empty"));
        }
        Ok(())
    }
}

/// A virtio-rng device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl Validate for EntropyDevice {
    fn validate(&self) -> Result<(), FieldError> {
        validate_opt("rate_limiter", &self.rate_limiter)
    }
}

/// Where the serial console's output goes, and how fast.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDevice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucket>,
}

impl Validate for SerialDevice {
    fn validate(&self) -> Result<(), FieldError> {
        validate_opt("rate_limiter", &self.rate_limiter)
    }
}

fn default_slot_size_mib() -> u32 {
    128
}

fn default_block_size_mib() -> u32 {
    2
}

/// A virtio-mem device: hot(un)pluggable memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size_mib: Option<u32>,
    #[serde(default = "default_slot_size_mib")]
    pub slot_size_mib: u32,
    #[serde(default = "default_block_size_mib")]
    pub block_size_mib: u32,
}

impl Default for MemoryHotplugConfig {
    fn default() -> Self {
        MemoryHotplugConfig {
            total_size_mib: None,
            slot_size_mib: default_slot_size_mib(),
            block_size_mib: default_block_size_mib(),
        }
    }
}

impl Validate for MemoryHotplugConfig {
    fn validate(&self) -> Result<(), FieldError> {
        if self.slot_size_mib < 128 {
            return Err(FieldError::new(
                "slot_size_mib",
                format!("must be at least 128, got {}", self.slot_size_mib),
            ));
        }
        if self.block_size_mib < 2 {
            return Err(FieldError::new(
                "block_size_mib",
                format!("must be at least 2, got {}", self.block_size_mib),
            ));
        }
        Ok(())
    }
}

/// `PATCH /hotplug/memory`: a new requested size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugSizeUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_size_mib: Option<u32>,
}

impl Validate for MemoryHotplugSizeUpdate {
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// `GET /hotplug/memory`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_size_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugged_size_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_size_mib: Option<u32>,
}
