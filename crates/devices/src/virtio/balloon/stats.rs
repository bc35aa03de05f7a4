//! The guest's memory statistics (virtio 1.2, 5.5.6.3): a buffer of
//! (le16 tag, le64 value) entries; tags the device does not know are
//! skipped, a tag sent twice keeps its last value.

use serde::{Deserialize, Serialize};

/// Bytes of one entry.
pub const ENTRY_LEN: usize = 10;

/// The statistics as the guest last sent them (None: never sent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
    pub oom_kill: Option<u64>,
    pub alloc_stall: Option<u64>,
    pub async_scan: Option<u64>,
    pub direct_scan: Option<u64>,
    pub async_reclaim: Option<u64>,
    pub direct_reclaim: Option<u64>,
}

impl GuestStats {
    /// Apply one (tag, value) entry; false for a tag the spec does not
    /// define.
    pub fn set(&mut self, tag: u16, value: u64) -> bool {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
            _ => return false,
        };
        *slot = Some(value);
        true
    }

    /// Apply every whole entry of `buf` (a trailing partial entry is
    /// ignored); returns how many tags were unknown.
    pub fn update(&mut self, buf: &[u8]) -> usize {
        let mut unknown = 0;
        for e in buf.chunks_exact(ENTRY_LEN) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&e[2..]);
            if !self.set(tag, u64::from_le_bytes(v)) {
                unknown += 1;
            }
        }
        unknown
    }
}
