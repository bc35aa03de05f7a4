//! Giving guest pages back to the host. Page frame numbers are sorted and
//! merged into contiguous ranges first, so a balloon of N MiB costs a few
//! `madvise` calls, not N * 256. How depends on the RAM's backing
//! (`memory::backing::Discard`): MADV_DONTNEED for private memory (the
//! process's resident size falls at once and a later guest touch gets a
//! fresh zero page), MADV_REMOVE for a shared memfd; with huge pages only
//! whole, aligned huge pages inside a range go.

use vm_memory::{GuestAddress, GuestMemoryBackend};

pub use memory::backing::Discard;

use super::PAGE_SHIFT;
use crate::virtio::GuestMemory;

/// Sort and merge page frame numbers into (guest address, bytes) ranges;
/// duplicates count once.
pub fn merge_pfns(pfns: &mut [u32]) -> Vec<(u64, u64)> {
    pfns.sort_unstable();
    let page = 1u64 << PAGE_SHIFT;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut last: Option<u32> = None;
    for &pfn in pfns.iter() {
        if last == Some(pfn) {
            continue;
        }
        let addr = u64::from(pfn) << PAGE_SHIFT;
        match ranges.last_mut() {
            Some((start, len)) if *start + *len == addr => *len += page,
            _ => ranges.push((addr, page)),
        }
        last = Some(pfn);
    }
    ranges
}

/// What one release did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub bytes: u64,
    pub calls: u64,
    /// Bytes not released: outside guest RAM, or the host refused.
    pub refused: u64,
}

/// Give `len` bytes of guest memory at `addr` back to the host the way
/// `discard` says; only the whole `discard.granule` units inside the range
/// go (huge pages cannot be split). A range (or the part of it) outside
/// guest RAM is refused, never touched.
pub fn release(mem: &GuestMemory, addr: u64, len: u64, discard: Discard, out: &mut Released) {
    let g = discard.granule.max(1);
    let start = addr.div_ceil(g).saturating_mul(g);
    let end = (addr.saturating_add(len) / g) * g;
    if end <= start {
        return;
    }
    let (addr, len) = (start, end - start);
    let Ok(len_usize) = usize::try_from(len) else {
        out.refused += len;
        return;
    };
    if len == 0 {
        return;
    }
    if !mem.check_range(GuestAddress(addr), len_usize) {
        out.refused += len;
        return;
    }
    for slice in mem.get_slices(GuestAddress(addr), len_usize) {
        let Ok(slice) = slice else {
            out.refused += len;
            return;
        };
        let ptr = slice.ptr_guard_mut().as_ptr();
        // SAFETY: `ptr..ptr + len` is a part of the guest RAM mapping this
        // process owns (checked above); MADV_DONTNEED / MADV_REMOVE only
        // drop its pages (later reads see zeros), they never unmap them. The guest gave
        // these pages up, so no device is using them either.
        let rc = unsafe { libc::madvise(ptr.cast(), slice.len(), discard.advice) };
        out.calls += 1;
        if rc == 0 {
            out.bytes += slice.len() as u64;
        } else {
            out.refused += slice.len() as u64;
        }
    }
}

/// Release every range of `ranges` (guest addresses and bytes).
pub fn release_all(mem: &GuestMemory, ranges: &[(u64, u64)], discard: Discard) -> Released {
    let mut out = Released::default();
    for &(addr, len) in ranges {
        release(mem, addr, len, discard, &mut out);
    }
    out
}
