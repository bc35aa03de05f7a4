//! Guest physical memory: the fixed x86_64 address map Vireo uses and the
//! anonymous host mappings that back guest RAM.
//!
//! RAM starts at 0. Everything above `MMIO_32_START` (3 GiB) up to 4 GiB is the
//! 32-bit hole (IOAPIC, LAPIC, future PCI BARs and ECAM, KVM's TSS pages);
//! RAM beyond 3 GiB continues at 4 GiB.

pub mod allocator;
pub mod backing;
pub mod layout;

use vm_memory::{GuestAddress, GuestMemoryMmap};

pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest memory size {0} MiB is too small (at least {min} MiB)", min = layout::MIN_MEMORY_MIB)]
    TooSmall(u64),
    #[error("guest memory size {requested} MiB is more than this host has ({host} MiB)")]
    MoreThanHost { requested: u64, host: u64 },
    #[error("cannot map {0} MiB of guest memory: {1}")]
    Mmap(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("cannot map {0} MiB of guest memory: {1}")]
    Map(u64, String),
    #[error("huge pages: {0}")]
    HugePages(String),
}

/// The guest RAM ranges (start, length) for `mib` MiB of memory.
pub fn ram_ranges(mib: u64) -> Vec<(GuestAddress, usize)> {
    let size = mib << 20;
    let low = size.min(layout::MMIO_32_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        ranges.push((GuestAddress(layout::RAM_64_START), (size - low) as usize));
    }
    ranges
}

/// Total RAM of this host in MiB.
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysinfo only writes into the struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    (info.totalram as u64).saturating_mul(info.mem_unit as u64) >> 20
}

/// Check a requested size against the minimum and the host's RAM.
pub fn check_size(mib: u64) -> Result<(), Error> {
    if mib < layout::MIN_MEMORY_MIB {
        return Err(Error::TooSmall(mib));
    }
    let host = host_memory_mib();
    if mib > host {
        return Err(Error::MoreThanHost {
            requested: mib,
            host,
        });
    }
    Ok(())
}

/// Allocate guest RAM (anonymous, private, not reserved up front, THP
/// advised).
pub fn create_guest_memory(mib: u64) -> Result<GuestMemory, Error> {
    create_guest_memory_with(mib, &backing::MemoryBacking::default())
}

/// Allocate guest RAM backed as `backing` says.
pub fn create_guest_memory_with(
    mib: u64,
    backing: &backing::MemoryBacking,
) -> Result<GuestMemory, Error> {
    check_size(mib)?;
    backing::map(&ram_ranges(mib), backing, mib)
}

/// Keep guest RAM out of the VMM's core dumps (the guest's secrets are not
/// the VMM's to dump). The flag also keeps the kernel from merging a guest
/// RAM mapping with its neighbours, so each entry of /proc/self/smaps is
/// either guest RAM or not, which the memory accounting relies on.
pub fn exclude_from_dumps(mem: &GuestMemory) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for r in mem.iter() {
        // SAFETY: the range is exactly one mapping this process owns;
        // MADV_DONTDUMP changes only how a core dump treats it.
        unsafe { libc::madvise(r.as_ptr().cast(), r.len() as usize, libc::MADV_DONTDUMP) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(512), vec![(GuestAddress(0), 512 << 20)]);
    }

    #[test]
    fn memory_above_3g_moves_past_the_hole() {
        let r = ram_ranges(4096);
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[1], (GuestAddress(4 << 30), 1 << 30));
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(check_size(1), Err(Error::TooSmall(1))));
        assert!(matches!(
            check_size(1 << 40),
            Err(Error::MoreThanHost { .. })
        ));
        assert!(check_size(64).is_ok());
    }
}
