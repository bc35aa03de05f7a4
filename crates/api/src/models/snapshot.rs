//! `PUT /snapshot/create` and `PUT /snapshot/load`.

use serde::{Deserialize, Serialize};

use super::{check_id, FieldError, Validate};

/// A full snapshot holds all of guest memory; a diff only what changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    #[default]
    Full,
    Diff,
}

/// The body of `PUT /snapshot/create`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    pub snapshot_path: String,
    pub mem_file_path: String,
    #[serde(default)]
    pub snapshot_type: SnapshotType,
}

impl Validate for SnapshotCreateParams {
    fn validate(&self) -> Result<(), FieldError> {
        if self.snapshot_path.is_empty() {
            return Err(FieldError::new("snapshot_path", "must not be empty"));
        }
        if self.mem_file_path.is_empty() {
            return Err(FieldError::new("mem_file_path", "must not be empty"));
        }
        Ok(())
    }
}

/// Where restored guest memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// A memory file, mapped privately.
    File,
    /// A userfaultfd handler listening on a Unix socket.
    Uffd,
}

/// The memory source of a snapshot load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: String,
}

/// A new TAP device for an interface of the restored VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// A new Unix socket path for the restored VM's vsock device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}

/// Huge pages of the restored VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotHugePages {
    /// Whatever the snapshot recorded.
    #[default]
    Snapshot,
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// The body of `PUT /snapshot/load`. Exactly one of `mem_backend` and the
/// deprecated `mem_file_path` is given; [`SnapshotLoadParams::memory_backend`]
/// resolves either into one value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated: same as a `File` memory backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Deprecated spelling of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    #[serde(default)]
    pub clock_realtime: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<SnapshotHugePages>,
}

impl SnapshotLoadParams {
    /// The memory backend, the deprecated `mem_file_path` read as `File`.
    /// Only meaningful on a validated value.
    pub fn memory_backend(&self) -> Option<MemoryBackend> {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(b), _) => Some(b.clone()),
            (None, Some(p)) => Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: p.clone(),
            }),
            (None, None) => None,
        }
    }

    /// Whether dirty pages are tracked, either spelling counted.
    pub fn dirty_page_tracking(&self) -> bool {
        self.track_dirty_pages || self.enable_diff_snapshots == Some(true)
    }
}

impl Validate for SnapshotLoadParams {
    fn validate(&self) -> Result<(), FieldError> {
        if self.snapshot_path.is_empty() {
            return Err(FieldError::new("snapshot_path", "must not be empty"));
        }
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "mem_file_path",
                    "not allowed together with mem_backend",
                ))
            }
            (None, None) => {
                return Err(FieldError::new(
                    "mem_backend",
                    "one of mem_backend and mem_file_path is required",
                ))
            }
            (Some(b), None) if b.backend_path.is_empty() => {
                return Err(FieldError::new(
                    "mem_backend.backend_path",
                    "must not be empty",
                ))
            }
            _ => {}
        }
        if self.huge_pages == Some(SnapshotHugePages::Hugetlbfs2M)
            && self.memory_backend().map(|b| b.backend_type) != Some(MemoryBackendType::Uffd)
        {
            return Err(FieldError::new(
                "huge_pages",
                "2M huge pages need a Uffd memory backend",
            ));
        }
        for (i, o) in self.network_overrides.iter().enumerate() {
            check_id(&format!("network_overrides[{i}].iface_id"), &o.iface_id)?;
        }
        Ok(())
    }
}
