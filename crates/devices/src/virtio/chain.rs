//! Descriptor chains as buffers: the (address, length) pieces of a chain,
//! checked to lie inside guest memory and to go the direction the device
//! expects, and copies between them and host buffers. Shared by the
//! devices whose requests are byte streams over a chain (vsock, net).
//!
//! Nothing here trusts the guest: a piece outside guest memory, or one of
//! the wrong direction, refuses the whole chain (`ChainError`).

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::GuestMemory;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor {0} is device-writable where the device reads")]
    Writable(usize),
    #[error("descriptor {0} is device-readable where the device writes")]
    Readable(usize),
    #[error("descriptor {index} ({addr:#x}, {len} bytes) is outside guest memory")]
    OutOfRange { index: usize, addr: u64, len: u32 },
    #[error("guest memory access failed")]
    Memory,
    #[error("the chain holds {0} bytes, more than the device takes in one request")]
    TooLong(u64),
}

/// Buffers in guest memory: (address, length) pieces in order.
pub type Segments = Vec<(GuestAddress, u32)>;

/// Walk a chain's descriptors: the (address, length) of each non-empty
/// one, checked to be inside guest memory and device-writable if
/// `writable`, else device-readable.
pub fn segments<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    writable: bool,
) -> Result<Segments, ChainError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut segs = Vec::new();
    for (index, desc) in chain.enumerate() {
        if desc.is_write_only() != writable {
            return Err(if writable {
                ChainError::Readable(index)
            } else {
                ChainError::Writable(index)
            });
        }
        segs.extend(piece(index, &desc, mem)?);
    }
    Ok(segs)
}

/// A descriptor's (address, length), None if empty, checked to be inside
/// guest memory.
fn piece(
    index: usize,
    desc: &virtio_queue::desc::split::Descriptor,
    mem: &GuestMemory,
) -> Result<Option<(GuestAddress, u32)>, ChainError> {
    if desc.len() == 0 {
        return Ok(None);
    }
    if !mem.check_range(desc.addr(), desc.len() as usize) {
        return Err(ChainError::OutOfRange {
            index,
            addr: desc.addr().0,
            len: desc.len(),
        });
    }
    Ok(Some((desc.addr(), desc.len())))
}

/// Walk a request chain: its device-readable descriptors, then its
/// device-writable ones (a readable one after a writable one refuses the
/// chain), each checked to be inside guest memory.
pub fn request_segments<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
) -> Result<(Segments, Segments), ChainError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    for (index, desc) in chain.enumerate() {
        if !desc.is_write_only() && !writable.is_empty() {
            return Err(ChainError::Readable(index));
        }
        let p = piece(index, &desc, mem)?;
        if desc.is_write_only() {
            writable.extend(p);
        } else {
            readable.extend(p);
        }
    }
    Ok((readable, writable))
}

/// The bytes `segs` hold in total.
pub fn total_len(segs: &[(GuestAddress, u32)]) -> u64 {
    segs.iter().map(|&(_, l)| u64::from(l)).sum()
}

/// Split `segs` at byte `at`: (the first `at` bytes, the rest).
pub fn split_at(segs: &[(GuestAddress, u32)], at: usize) -> (Segments, Segments) {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut left = at as u64;
    for &(addr, len) in segs {
        let take = left.min(u64::from(len));
        if take > 0 {
            head.push((addr, take as u32));
        }
        if u64::from(len) > take {
            tail.push((GuestAddress(addr.0 + take), len - take as u32));
        }
        left -= take;
    }
    (head, tail)
}

/// Read `segs` (inside guest memory, checked) into `out`, in order, until
/// either runs out; returns the bytes read.
pub fn gather(
    mem: &GuestMemory,
    segs: &[(GuestAddress, u32)],
    out: &mut [u8],
) -> Result<usize, ChainError> {
    let mut at = 0usize;
    for &(addr, len) in segs {
        let n = (len as usize).min(out.len() - at);
        if n == 0 {
            break;
        }
        mem.read_slice(&mut out[at..at + n], addr)
            .map_err(|_| ChainError::Memory)?;
        at += n;
    }
    Ok(at)
}

/// Write `data` into `segs`, in order, as much as fits; returns the bytes
/// written.
pub fn scatter(
    mem: &GuestMemory,
    segs: &[(GuestAddress, u32)],
    data: &[u8],
) -> Result<usize, ChainError> {
    let mut at = 0usize;
    for &(addr, len) in segs {
        let n = (len as usize).min(data.len() - at);
        if n == 0 {
            break;
        }
        mem.write_slice(&data[at..at + n], addr)
            .map_err(|_| ChainError::Memory)?;
        at += n;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_at_cuts_inside_a_segment() {
        let segs = [(GuestAddress(0x1000), 30), (GuestAddress(0x2000), 30)];
        let (h, t) = split_at(&segs, 44);
        assert_eq!(
            h,
            vec![(GuestAddress(0x1000), 30), (GuestAddress(0x2000), 14)]
        );
        assert_eq!(t, vec![(GuestAddress(0x200e), 16)]);
        assert_eq!(total_len(&segs), 60);
        let (h, t) = split_at(&segs, 0);
        assert!(h.is_empty());
        assert_eq!(t.len(), 2);
    }
}
