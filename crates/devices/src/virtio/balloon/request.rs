//! The balloon's requests, from untrusted chains:
//! - inflate and deflate: device-readable buffers of le32 page frame
//!   numbers (4 KiB pages);
//! - statistics: a device-readable buffer of (tag, value) entries;
//! - free page reporting: buffers that each cover one free range of guest
//!   memory (Linux posts them device-writable; either direction is taken).
//!
//! A chain outside guest memory or of the wrong direction is refused as a
//! whole; a chain bigger than the caps below is refused too, so one avail
//! slot costs the host a bounded amount of work.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

use crate::virtio::chain::{gather, segments, total_len, ChainError, Segments};
use crate::virtio::GuestMemory;

/// Most page frame numbers one chain may carry (Linux sends at most 256).
pub const MAX_PFNS: usize = 16 * 1024;
/// Most statistics bytes read from one chain (the spec defines 10 tags).
pub const MAX_STATS_BYTES: usize = 4096;

/// The page frame numbers of an inflate or deflate chain (a trailing
/// partial number is ignored).
pub fn pfns<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<Vec<u32>, ChainError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let buf = read_capped(chain, mem, MAX_PFNS * 4)?;
    Ok(buf
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The bytes of a statistics chain (at most `MAX_STATS_BYTES`).
pub fn stats<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<Vec<u8>, ChainError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    read_capped(chain, mem, MAX_STATS_BYTES)
}

/// The free ranges of a reporting chain, each checked to lie in guest
/// memory.
pub fn free_ranges<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<Segments, ChainError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut ranges = Vec::new();
    for (index, desc) in chain.enumerate() {
        if desc.len() == 0 {
            continue;
        }
        if !mem.check_range(desc.addr(), desc.len() as usize) {
            return Err(ChainError::OutOfRange {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        ranges.push((desc.addr(), desc.len()));
    }
    Ok(ranges)
}

/// The bytes of a device-readable chain, refused (`TooLong`) past `cap`.
fn read_capped<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    cap: usize,
) -> Result<Vec<u8>, ChainError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let segs = segments(chain, mem, false)?;
    let total = total_len(&segs);
    if total > cap as u64 {
        return Err(ChainError::TooLong(total));
    }
    let mut buf = vec![0u8; total as usize];
    let n = gather(mem, &segs, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}
