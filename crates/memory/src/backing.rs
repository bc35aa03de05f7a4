//! How guest RAM is backed on the host: private anonymous memory with
//! transparent huge pages advised (the default), hugetlb huge pages (2 MiB
//! or 1 GiB, reserved by the host beforehand), a memfd shared mapping (so
//! other processes can map guest RAM), KSM merging and prefaulting.
//!
//! Whatever gives guest pages back to the host (the balloon, free page
//! reporting) asks [`MemoryBacking::discard`] how: MADV_DONTNEED drops
//! private pages, MADV_REMOVE frees a memfd's; huge pages go only whole.

use std::fs::File;
use std::os::unix::io::FromRawFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::{Error, GuestMemory};

/// A hugetlb page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePageSize {
    #[serde(rename = "2M")]
    Size2M,
    #[serde(rename = "1G")]
    Size1G,
}

impl HugePageSize {
    pub fn bytes(self) -> u64 {
        match self {
            HugePageSize::Size2M => 2 << 20,
            HugePageSize::Size1G => 1 << 30,
        }
    }

    /// The host's pool for this size, under /sys/kernel/mm/hugepages.
    pub fn sysfs_dir(self) -> String {
        format!(
            "/sys/kernel/mm/hugepages/hugepages-{}kB",
            self.bytes() >> 10
        )
    }

    /// The MAP_HUGE_* / MFD_HUGE_* size bits.
    fn size_bits(self) -> libc::c_int {
        (self.bytes().trailing_zeros() as libc::c_int) << libc::MAP_HUGE_SHIFT
    }
}

impl std::str::FromStr for HugePageSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "2M" | "2m" | "2MB" => Ok(HugePageSize::Size2M),
            "1G" | "1g" | "1GB" => Ok(HugePageSize::Size1G),
            _ => Err(format!("unknown huge page size '{s}' (use 2M or 1G)")),
        }
    }
}

/// The backing options (`--memory size=..,hugepages=..,mergeable=on,...`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBacking {
    /// hugetlb pages instead of normal ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<HugePageSize>,
    /// Marked MADV_MERGEABLE, so KSM may share identical pages.
    #[serde(default, skip_serializing_if = "is_false")]
    pub mergeable: bool,
    /// Populated at start (no first-touch faults later).
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefault: bool,
    /// A memfd mapped shared (another process can map guest RAM).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
    /// Do not advise transparent huge pages (`thp=off`; Firecracker's
    /// `huge_pages: "None"`): a tiny guest stays small, at the cost of
    /// TLB reach.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_thp: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How to give guest pages back to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discard {
    /// The madvise advice.
    pub advice: libc::c_int,
    /// Only whole, aligned units of this many bytes can go.
    pub granule: u64,
}

impl MemoryBacking {
    /// How pages of this backing are given back.
    pub fn discard(&self) -> Discard {
        Discard {
            advice: if self.shared {
                libc::MADV_REMOVE
            } else {
                libc::MADV_DONTNEED
            },
            granule: self.hugepages.map_or(4096, HugePageSize::bytes),
        }
    }

    /// Check what can be checked before mapping: the options' shape, then
    /// enough free huge pages in this host's pool.
    pub fn check(&self, mib: u64) -> Result<(), Error> {
        self.check_shape(mib)?;
        self.check_pool(mib)
    }

    /// What holds on any host: a size in whole huge pages, KSM only on
    /// private memory.
    pub fn check_shape(&self, mib: u64) -> Result<(), Error> {
        if self.mergeable && self.shared {
            return Err(Error::Map(
                mib,
                "mergeable=on needs private memory (KSM does not merge shared mappings); drop shared=on".into(),
            ));
        }
        let Some(size) = self.hugepages else {
            return Ok(());
        };
        if self.mergeable {
            return Err(Error::Map(
                mib,
                "mergeable=on does nothing on huge pages (KSM merges only normal pages); drop one of them".into(),
            ));
        }
        let bytes = mib << 20;
        if !bytes.is_multiple_of(size.bytes()) {
            return Err(Error::HugePages(format!(
                "{mib} MiB is not a whole number of {size:?} huge pages"
            )));
        }
        Ok(())
    }

    /// Enough free huge pages in this host's pool (on the nested path this
    /// is L1's, which the rig reserves).
    pub fn check_pool(&self, mib: u64) -> Result<(), Error> {
        let Some(size) = self.hugepages else {
            return Ok(());
        };
        let need = (mib << 20) / size.bytes();
        let dir = size.sysfs_dir();
        let free = std::fs::read_to_string(format!("{dir}/free_hugepages"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        match free {
            None => Err(Error::HugePages(format!(
                "this host has no {size:?} huge page pool ({dir} is missing)"
            ))),
            Some(f) if f < need => Err(Error::HugePages(format!(
                "{mib} MiB of guest memory needs {need} free {size:?} huge pages and the host has {f}; \
                 reserve them first, for example: echo {} > {dir}/nr_hugepages",
                need + current(&dir).unwrap_or(0) - f
            ))),
            Some(_) => Ok(()),
        }
    }
}

fn current(dir: &str) -> Option<u64> {
    std::fs::read_to_string(format!("{dir}/nr_hugepages"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Map `ranges` with `backing`, then advise and populate as it asks.
pub fn map(
    ranges: &[(GuestAddress, usize)],
    backing: &MemoryBacking,
    mib: u64,
) -> Result<GuestMemory, Error> {
    backing.check(mib)?;
    let huge = backing
        .hugepages
        .map_or(0, |h| libc::MAP_HUGETLB | h.size_bits());
    let file = if backing.shared {
        Some(Arc::new(memfd(backing, mib)?))
    } else {
        None
    };
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for &(base, len) in ranges {
        let mut b =
            MmapRegionBuilder::<()>::new(len).with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        b = match &file {
            Some(f) => b
                .with_file_offset(FileOffset::from_arc(f.clone(), offset))
                .with_mmap_flags(libc::MAP_SHARED),
            None => {
                // Normal pages are not reserved up front; hugetlb ones are
                // (mmap fails now rather than the guest at first touch).
                let reserve = if huge == 0 { libc::MAP_NORESERVE } else { 0 };
                b.with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | reserve | huge)
            }
        };
        b = b.with_hugetlbfs(backing.hugepages.is_some());
        let region = b.build().map_err(|e| Error::Map(mib, e.to_string()))?;
        let region = GuestRegionMmap::new(region, base)
            .ok_or_else(|| Error::Map(mib, "a region wraps the guest address space".into()))?;
        regions.push(region);
        offset += len as u64;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Map(mib, e.to_string()))?;
    advise(&mem, backing, mib)?;
    Ok(mem)
}

/// One memfd for all of guest RAM, sized, with huge pages if asked.
fn memfd(backing: &MemoryBacking, mib: u64) -> Result<File, Error> {
    let mut flags = libc::MFD_CLOEXEC;
    if let Some(h) = backing.hugepages {
        flags |= libc::MFD_HUGETLB | h.size_bits() as libc::c_uint;
    }
    // SAFETY: a NUL-terminated name and flags; returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"vireo-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::Map(
            mib,
            format!("memfd_create: {}", std::io::Error::last_os_error()),
        ));
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(mib << 20)
        .map_err(|e| Error::Map(mib, format!("sizing the memfd: {e}")))?;
    Ok(file)
}

/// Advise each region: THP (for normal pages), KSM, DONTDUMP; prefault.
fn advise(mem: &GuestMemory, backing: &MemoryBacking, mib: u64) -> Result<(), Error> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for r in mem.iter() {
        let (ptr, len) = (r.as_ptr().cast::<libc::c_void>(), r.len() as usize);
        let madvise = |advice| {
            // SAFETY: the range is exactly one mapping this process owns;
            // these advices change how the kernel backs it, never its
            // contents.
            unsafe { libc::madvise(ptr, len, advice) == 0 }
        };
        // Out of the VMM's core dumps; see `exclude_from_dumps`.
        madvise(libc::MADV_DONTDUMP);
        if backing.hugepages.is_none() && !backing.shared && !backing.no_thp {
            // Best effort: a host with THP off ignores it.
            madvise(libc::MADV_HUGEPAGE);
        }
        if backing.mergeable && !madvise(libc::MADV_MERGEABLE) {
            return Err(Error::Map(
                mib,
                format!(
                    "mergeable=on: the host refused KSM ({}); is CONFIG_KSM set?",
                    std::io::Error::last_os_error()
                ),
            ));
        }
        if backing.prefault && !madvise(libc::MADV_POPULATE_WRITE) {
            return Err(Error::Map(
                mib,
                format!(
                    "prefault=on: cannot populate guest memory ({})",
                    std::io::Error::last_os_error()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    /// The smaps entry of the mapping that starts at `ptr`.
    fn smaps_of(ptr: *const u8) -> String {
        let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{:x}-", ptr as usize);
        let mut out = String::new();
        for line in text.lines() {
            let is_header = line.split_whitespace().next().is_some_and(|w| {
                w.split_once('-')
                    .is_some_and(|(a, _)| u64::from_str_radix(a, 16).is_ok())
            });
            if is_header && !out.is_empty() {
                break;
            }
            if line.starts_with(&head) || !out.is_empty() {
                out.push_str(line);
                out.push('\n');
            }
        }
        assert!(!out.is_empty(), "no mapping at {ptr:?}");
        out
    }

    fn flags(smaps: &str) -> Vec<String> {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    fn one(mib: u64, backing: MemoryBacking) -> Result<GuestMemory, Error> {
        map(&[(GuestAddress(0), (mib << 20) as usize)], &backing, mib)
    }

    #[test]
    fn the_default_is_private_with_huge_pages_advised_and_no_dumps() {
        let mem = one(8, MemoryBacking::default()).unwrap();
        let s = smaps_of(mem.iter().next().unwrap().as_ptr());
        let f = flags(&s);
        assert!(f.contains(&"dd".to_string()), "{s}");
        // hg: MADV_HUGEPAGE (where the host has THP at all).
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            assert!(f.contains(&"hg".to_string()), "{s}");
        }
        assert!(!f.contains(&"sh".to_string()), "{s}");
    }

    fn rss_kb(smaps: &str) -> u64 {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    #[test]
    fn thp_off_leaves_the_advice_out() {
        let backing = MemoryBacking {
            no_thp: true,
            ..Default::default()
        };
        let mem = one(4, backing).unwrap();
        let s = smaps_of(mem.iter().next().unwrap().as_ptr());
        assert!(!flags(&s).contains(&"hg".to_string()), "{s}");
    }

    #[test]
    fn mergeable_and_prefault_show_in_the_mapping() {
        let backing = MemoryBacking {
            mergeable: true,
            prefault: true,
            ..Default::default()
        };
        let mem = one(4, backing).unwrap();
        let s = smaps_of(mem.iter().next().unwrap().as_ptr());
        assert!(flags(&s).contains(&"mg".to_string()), "KSM: {s}");
        // Prefaulted: all 4 MiB resident before any guest touch.
        assert_eq!(rss_kb(&s), 4096, "{s}");
    }

    #[test]
    fn shared_memory_is_a_memfd_and_is_discarded_with_remove() {
        let backing = MemoryBacking {
            shared: true,
            ..Default::default()
        };
        let mem = one(4, backing).unwrap();
        mem.write_slice(&[7u8; 16], GuestAddress(4096)).unwrap();
        let s = smaps_of(mem.iter().next().unwrap().as_ptr());
        assert!(flags(&s).contains(&"sh".to_string()), "{s}");
        assert!(s.contains("memfd:vireo-guest-ram"), "{s}");
        assert_eq!(backing.discard().advice, libc::MADV_REMOVE);
        // KSM merges only private memory: refused, not silently ignored.
        let both = MemoryBacking {
            mergeable: true,
            ..backing
        };
        let e = one(4, both).err().unwrap().to_string();
        assert!(e.contains("private"), "{e}");
        let huge_ksm = MemoryBacking {
            mergeable: true,
            hugepages: Some(HugePageSize::Size2M),
            ..Default::default()
        };
        let e = huge_ksm.check_shape(4).err().unwrap().to_string();
        assert!(e.contains("KSM"), "{e}");
    }

    #[test]
    fn huge_pages_map_when_reserved_and_are_refused_clearly_when_not() {
        let size = HugePageSize::Size2M;
        let free: u64 = std::fs::read_to_string(format!("{}/free_hugepages", size.sysfs_dir()))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let backing = MemoryBacking {
            hugepages: Some(size),
            ..Default::default()
        };
        // More than the pool has: one clear line, nothing mapped.
        let too_many = (free + 1) * 2;
        let e = one(too_many, backing).err().unwrap().to_string();
        assert!(e.contains("huge pages"), "{e}");
        assert!(one(3, backing)
            .err()
            .unwrap()
            .to_string()
            .contains("whole number"));
        if free >= 2 {
            let mem = one(4, backing).unwrap();
            let s = smaps_of(mem.iter().next().unwrap().as_ptr());
            assert!(s.contains("KernelPageSize:     2048 kB"), "{s}");
            assert_eq!(backing.discard().granule, 2 << 20);
        } else {
            eprintln!("(no free 2M huge pages here: only the refusal was checked)");
        }
    }
}
