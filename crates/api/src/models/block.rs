//! `/drives/{drive_id}` (virtio-blk or vhost-user-blk) and `/pmem/{id}`.

use serde::{Deserialize, Serialize};

use super::{check_id, validate_opt, FieldError, RateLimiter, Validate};

/// How the host caches a drive's writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush requests are not forwarded to the host file.
    #[default]
    Unsafe,
    /// Flush requests reach the host file (fdatasync).
    Writeback,
}

/// The I/O engine of a virtio-blk drive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    #[default]
    Sync,
    Async,
}

/// A block device: virtio-blk with `path_on_host` (and optionally
/// `is_read_only`, false when absent), or vhost-user-blk with `socket` and
/// neither of those.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    pub is_root_device: bool,
    #[serde(default)]
    pub cache_type: CacheType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    #[serde(default)]
    pub io_engine: IoEngine,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl Drive {
    /// Whether the guest may only read the drive (`is_read_only`, default false).
    pub fn read_only(&self) -> bool {
        self.is_read_only.unwrap_or(false)
    }
}

impl Validate for Drive {
    fn validate(&self) -> Result<(), FieldError> {
        check_id("drive_id", &self.drive_id)?;
        match &self.socket {
            None => match self.path_on_host.as_deref() {
                None => {
                    return Err(FieldError::new(
                        "path_on_host",
                        "required, unless socket names a vhost-user backend",
                    ))
                }
                Some("") => return Err(FieldError::new("path_on_host", "must not be empty")),
                Some(_) => {}
            },
            Some(_) => {
                for (field, given) in [
                    ("path_on_host", self.path_on_host.is_some()),
                    ("is_read_only", self.is_read_only.is_some()),
                    ("rate_limiter", self.rate_limiter.is_some()),
                ] {
                    if given {
                        return Err(FieldError::new(
                            field,
                            "not allowed for a vhost-user drive (one with socket)",
                        ));
                    }
                }
            }
        }
        validate_opt("rate_limiter", &self.rate_limiter)
    }
}

/// `PATCH /drives/{drive_id}`: a new backing file and/or rate limiter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl Validate for PartialDrive {
    fn validate(&self) -> Result<(), FieldError> {
        check_id("drive_id", &self.drive_id)?;
        validate_opt("rate_limiter", &self.rate_limiter)
    }
}

/// A virtio-pmem device backed by a host file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pmem {
    pub id: String,
    pub path_on_host: String,
    #[serde(default)]
    pub root_device: bool,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl Validate for Pmem {
    fn validate(&self) -> Result<(), FieldError> {
        check_id("id", &self.id)?;
        if self.path_on_host.is_empty() {
            return Err(FieldError::new("path_on_host", "must not be empty"));
        }
        validate_opt("rate_limiter", &self.rate_limiter)
    }
}

/// `PATCH /pmem/{id}`: a new rate limiter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialPmem {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl Validate for PartialPmem {
    fn validate(&self) -> Result<(), FieldError> {
        check_id("id", &self.id)?;
        validate_opt("rate_limiter", &self.rate_limiter)
    }
}
