//! The API's JSON bodies, one module per resource group. Field names,
//! required fields and defaults follow the Firecracker API; every struct
//! rejects unknown fields. Range checks that serde's types cannot express
//! live in each type's [`Validate`] impl and name the offending field.

pub mod balloon;
pub mod block;
pub mod boot;
pub mod devices;
pub mod instance;
pub mod machine;
pub mod net;
pub mod observability;
pub mod rate_limiter;
pub mod snapshot;
pub mod vm_config;

pub use balloon::{
    Balloon, BalloonHintingStatus, BalloonStartCmd, BalloonStats, BalloonStatsUpdate,
    BalloonUpdate, VmMemory,
};
pub use block::{CacheType, Drive, IoEngine, PartialDrive, PartialPmem, Pmem};
pub use boot::BootSource;
pub use devices::{
    EntropyDevice, MemoryHotplugConfig, MemoryHotplugSizeUpdate, MemoryHotplugStatus, SerialDevice,
    Vsock,
};
pub use instance::{
    ActionType, FirecrackerVersion, InstanceActionInfo, InstanceInfo, InstanceState, Vm, VmState,
};
pub use machine::{
    ArmRegisterModifier, CpuConfig, CpuTemplate, CpuidLeafModifier, CpuidRegister,
    CpuidRegisterModifier, HugePages, MachineConfigUpdate, MachineConfiguration, MsrModifier,
    VcpuFeatures,
};
pub use net::{MmdsConfig, MmdsVersion, NetworkInterface, PartialNetworkInterface};
pub use observability::{LogLevel, Logger, Metrics};
pub use rate_limiter::{patch_limiter, RateLimiter, TokenBucket};
pub use snapshot::{
    MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotCreateParams, SnapshotHugePages,
    SnapshotLoadParams, SnapshotType, VsockOverride,
};
pub use vm_config::{CpuConfigSource, FullVmConfiguration};

use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A value out of range: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error, its field placed under `parent` (`drives[0].drive_id`).
    pub fn within(self, parent: &str) -> FieldError {
        let field = if self.field.is_empty() {
            parent.to_string()
        } else {
            format!("{parent}.{}", self.field)
        };
        FieldError {
            field,
            reason: self.reason,
        }
    }
}

/// Checks a parsed body beyond what its types enforce.
pub trait Validate {
    fn validate(&self) -> Result<(), FieldError>;
}

/// Parses `body` as a `T` and validates it. Serde errors carry the path of
/// the field at fault (`rate_limiter.bandwidth.size: invalid type ...`).
pub fn parse_json<T: DeserializeOwned + Validate>(
    resource: &'static str,
    body: &[u8],
) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        ApiError::InvalidBody { resource, message }
    })?;
    de.end().map_err(|e| ApiError::InvalidBody {
        resource,
        message: e.to_string(),
    })?;
    value.validate().map_err(|e| ApiError::InvalidField {
        resource,
        field: e.field,
        reason: e.reason,
    })?;
    Ok(value)
}

/// Ids of drives, interfaces and pmem devices: non-empty, at most 64
/// characters of ASCII letters, digits and `_` (Firecracker's rule).
pub fn check_id(field: &str, id: &str) -> Result<(), FieldError> {
    if id.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if id.len() > 64 {
        return Err(FieldError::new(field, "must be at most 64 characters"));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(FieldError::new(
            field,
            "must contain only ASCII letters, digits and '_'",
        ));
    }
    Ok(())
}

fn validate_opt<T: Validate>(field: &str, value: &Option<T>) -> Result<(), FieldError> {
    match value {
        Some(v) => v.validate().map_err(|e| e.within(field)),
        None => Ok(()),
    }
}

fn validate_all<T: Validate>(field: &str, values: &[T]) -> Result<(), FieldError> {
    for (i, v) in values.iter().enumerate() {
        v.validate()
            .map_err(|e| e.within(&format!("{field}[{i}]")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
