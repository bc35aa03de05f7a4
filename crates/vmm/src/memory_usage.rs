//! Host memory accounting of one VM, measured rather than guessed: the
//! process's mappings (`/proc/self/smaps`) that lie inside guest RAM give
//! its resident and swapped bytes; `/proc/self/smaps_rollup` the whole
//! process's; the difference is the VMM's own overhead. KSM's count comes
//! from `/proc/self/ksm_stat` where the kernel has it.

use std::io::BufRead;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use memory::GuestMemory;

/// What the guest RAM of `mem` and this process use on the host (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub guest_ram: u64,
    pub guest_resident: u64,
    pub guest_swapped: u64,
    /// Guest RAM resident in huge pages (transparent or hugetlb).
    pub guest_huge: u64,
    pub process_resident: u64,
    pub ksm_merging_pages: Option<u64>,
}

impl Usage {
    /// Resident memory that is not guest RAM.
    pub fn overhead(&self) -> u64 {
        self.process_resident.saturating_sub(self.guest_resident)
    }
}

/// Measure now.
pub fn measure(mem: &GuestMemory) -> std::io::Result<Usage> {
    let ranges: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| {
            let start = r.as_ptr() as u64;
            (start, start + r.len())
        })
        .collect();
    let guest_ram = ranges.iter().map(|(s, e)| e - s).sum();
    let ranges = merge_adjacent(ranges);
    let smaps = std::fs::File::open("/proc/self/smaps")?;
    let t = guest_totals(std::io::BufReader::new(smaps), &ranges);
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup")?;
    // Rss leaves hugetlb pages out; they are resident all the same.
    let process_resident = ["Rss:", "Private_Hugetlb:", "Shared_Hugetlb:"]
        .iter()
        .map(|k| field_kb(&rollup, k).unwrap_or(0) * 1024)
        .sum();
    let ksm_merging_pages = std::fs::read_to_string("/proc/self/ksm_stat")
        .ok()
        .and_then(|s| field_kb(&s, "ksm_merging_pages"));
    Ok(Usage {
        guest_ram,
        guest_resident: t.resident,
        guest_swapped: t.swapped,
        guest_huge: t.huge,
        process_resident,
        ksm_merging_pages,
    })
}

/// Host ranges with touching ones joined: two guest RAM regions mapped
/// side by side (RAM above 3 GiB) may be one kernel mapping.
fn merge_adjacent(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    out
}

/// Bytes of the smaps entries inside guest RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestTotals {
    /// Rss plus hugetlb pages (which Rss leaves out).
    pub resident: u64,
    pub swapped: u64,
    /// Transparent and hugetlb huge pages.
    pub huge: u64,
}

/// Sum the smaps entries inside `ranges`.
pub fn guest_totals(smaps: impl BufRead, ranges: &[(u64, u64)]) -> GuestTotals {
    let mut t = GuestTotals::default();
    let mut inside = false;
    for line in smaps.lines().map_while(Result::ok) {
        if let Some((start, end)) = mapping_range(&line) {
            inside = ranges.iter().any(|&(s, e)| start >= s && end <= e);
            continue;
        }
        if !inside {
            continue;
        }
        let kb = |key| field_kb(&line, key).map(|v| v * 1024);
        if let Some(b) = kb("Rss:") {
            t.resident += b;
        } else if let Some(b) = kb("Swap:") {
            t.swapped += b;
        } else if let Some(b) = kb("AnonHugePages:") {
            t.huge += b;
        } else if let Some(b) = kb("Private_Hugetlb:").or_else(|| kb("Shared_Hugetlb:")) {
            t.resident += b;
            t.huge += b;
        }
    }
    t
}

/// The address range of an smaps header line ("start-end perms ...").
fn mapping_range(line: &str) -> Option<(u64, u64)> {
    let first = line.split_whitespace().next()?;
    let (s, e) = first.split_once('-')?;
    let start = u64::from_str_radix(s, 16).ok()?;
    let end = u64::from_str_radix(e, 16).ok()?;
    Some((start, end))
}

/// The number after `key` on the first line that starts with it.
fn field_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r-xp 00000000 08:01 123 /usr/bin/vireo
Rss:                 400 kB
Swap:                  0 kB
7f0000000000-7f0000200000 rw-p 00000000 00:00 0
Rss:                1024 kB
Swap:                 16 kB
7f0000200000-7f0000400000 rw-p 00000000 00:00 0
Rss:                   8 kB
Swap:                  0 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0
Rss:                 512 kB
Swap:                  4 kB
7f0000600000-7f0000a00000 rw-p 00000000 00:0f 9 /anon_hugepage (deleted)
Rss:                   0 kB
Private_Hugetlb:    4096 kB
";

    #[test]
    fn only_mappings_inside_guest_ram_count() {
        // Guest RAM is the two mappings from 7f0000000000 to 7f0000400000
        // (split by the kernel, as madvise and THP do).
        let ranges = [(0x7f00_0000_0000, 0x7f00_0040_0000)];
        let t = guest_totals(SMAPS.as_bytes(), &ranges);
        assert_eq!(t.resident, (1024 + 8) * 1024);
        assert_eq!(t.swapped, 16 * 1024);
        assert_eq!(t.huge, 0);
        // A hugetlb mapping: its pages count as resident and huge.
        let t = guest_totals(SMAPS.as_bytes(), &[(0x7f00_0060_0000, 0x7f00_00a0_0000)]);
        assert_eq!((t.resident, t.huge), (4 << 20, 4 << 20));
    }

    #[test]
    fn regions_mapped_side_by_side_count_as_one() {
        let merged = merge_adjacent(vec![
            (0x7f00_0020_0000, 0x7f00_0040_0000),
            (0x7f00_0000_0000, 0x7f00_0020_0000),
        ]);
        assert_eq!(merged, vec![(0x7f00_0000_0000, 0x7f00_0040_0000)]);
        // One kernel mapping across both regions is inside the merged range.
        let t = guest_totals(SMAPS.as_bytes(), &merged);
        assert_eq!(t.resident, (1024 + 8) * 1024);
        assert_eq!(merge_adjacent(vec![(0, 1), (2, 3)]), vec![(0, 1), (2, 3)]);
    }

    #[test]
    fn this_process_measures_its_own_guest_memory() {
        let mem = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 8 << 20)]).unwrap();
        memory::exclude_from_dumps(&mem);
        let before = measure(&mem).unwrap();
        assert_eq!(before.guest_ram, 8 << 20);
        vm_memory::Bytes::write_slice(&mem, &vec![1u8; 4 << 20], vm_memory::GuestAddress(0))
            .unwrap();
        let after = measure(&mem).unwrap();
        assert!(
            after.guest_resident >= before.guest_resident + (4 << 20) - (64 << 10),
            "{before:?} -> {after:?}"
        );
        assert!(after.process_resident >= after.guest_resident);
    }
}
