//! `/balloon`, `/balloon/statistics` and `/balloon/hinting/*`.

use serde::{Deserialize, Serialize};

use super::{FieldError, Validate};

/// A virtio-balloon device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    /// Seconds between statistics refreshes; 0 disables statistics.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    #[serde(default)]
    pub free_page_hinting: bool,
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl Validate for Balloon {
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// `PATCH /balloon`: a new target size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

impl Validate for BalloonUpdate {
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// `PATCH /balloon/statistics`: a new polling interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

impl Validate for BalloonStatsUpdate {
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// `GET /balloon/statistics`: what the guest last reported. The optional
/// counters are present only when the guest sent them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStats {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

/// `PATCH /balloon/hinting/start`: start a free page hinting run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStartCmd {
    #[serde(default)]
    pub acknowledge_on_stop: bool,
}

impl Validate for BalloonStartCmd {
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// `GET /balloon/hinting/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonHintingStatus {
    pub host_cmd: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_cmd: Option<u32>,
}

/// `GET /vm/memory` (Vireo's own resource): where the VM's memory is on
/// the host, measured from the process's mappings, for a host-wide memory
/// manager. Bytes throughout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmMemory {
    /// Guest RAM the VM was given.
    pub guest_ram: u64,
    /// Guest RAM resident in host memory now.
    pub guest_resident: u64,
    /// Guest RAM in host swap.
    pub guest_swapped: u64,
    /// Guest RAM resident in huge pages (transparent or hugetlb).
    pub guest_huge_pages: u64,
    /// The VMM process's whole resident memory.
    pub vmm_resident: u64,
    /// Resident memory that is not guest RAM: the VMM's own cost.
    pub vmm_overhead: u64,
    /// The balloon's target and the size the guest reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_target: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_actual: Option<u64>,
    /// Guest pages KSM merged with others (where the host kernel says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ksm_merging_pages: Option<u64>,
}
