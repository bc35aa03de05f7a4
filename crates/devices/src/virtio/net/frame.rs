//! Frames on the rings (virtio 1.2, 5.1.6): every frame starts with the
//! 12-byte `virtio_net_hdr_v1` (flags, GSO type and sizes, checksum
//! offsets, num_buffers), then the Ethernet frame.
//!
//! - TX: a chain of device-readable buffers the guest filled with one
//!   frame, header first.
//! - RX: chains of device-writable buffers the guest posted. Without
//!   mergeable buffers one chain takes one whole frame; with
//!   VIRTIO_NET_F_MRG_RXBUF a frame may fill several, and the header's
//!   `num_buffers` says how many.
//!
//! Nothing the guest posts is trusted: wrong-direction or out-of-range
//! buffers, a TX frame shorter than its header or longer than
//! `MAX_FRAME_LEN`, are refused (`FrameError`) and the chain completes
//! empty. The header's offload fields are the host kernel's to check (a tap
//! refuses a bad one with EINVAL, counted as a TX error).

use std::ops::Deref;

use virtio_queue::DescriptorChain;

use crate::virtio::chain::{segments, total_len, ChainError, Segments};
use crate::virtio::GuestMemory;

/// `sizeof(struct virtio_net_hdr_v1)`.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest Ethernet frame either way: a 64 KiB GSO segment with its
/// Ethernet and VLAN headers, and some room.
pub const MAX_PACKET_LEN: usize = 65_562;
/// The largest frame with its header.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + MAX_PACKET_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("the chain holds {0} bytes, less than the {VNET_HDR_LEN}-byte header")]
    Short(u64),
    #[error("the chain holds {0} bytes, more than a {MAX_FRAME_LEN}-byte frame")]
    TooBig(u64),
}

/// Parse a TX chain: where the frame (header first) is, and its length.
pub fn parse_tx<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<Segments, FrameError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let segs = segments(chain, mem, false)?;
    let len = total_len(&segs);
    if len < VNET_HDR_LEN as u64 {
        return Err(FrameError::Short(len));
    }
    if len > MAX_FRAME_LEN as u64 {
        return Err(FrameError::TooBig(len));
    }
    Ok(segs)
}

/// An RX chain the guest posted.
#[derive(Debug)]
pub struct RxChain {
    pub head: u16,
    pub segs: Segments,
    /// Bytes it holds (at most what a frame needs counts).
    pub room: u64,
}

/// Parse an RX chain: device-writable buffers with room for at least the
/// header.
pub fn parse_rx<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<RxChain, FrameError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let head = chain.head_index();
    let segs = segments(chain, mem, true)?;
    let room = total_len(&segs);
    if room < VNET_HDR_LEN as u64 {
        return Err(FrameError::Short(room));
    }
    Ok(RxChain { head, segs, room })
}

/// Set the header's `num_buffers` in a frame about to go to the guest.
pub fn set_num_buffers(frame: &mut [u8], n: u16) {
    if let Some(b) = frame.get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
        b.copy_from_slice(&n.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_buffers_lands_in_the_header() {
        let mut f = vec![0xffu8; 20];
        set_num_buffers(&mut f, 0x0203);
        assert_eq!(&f[10..12], &[3, 2]);
        assert_eq!(f[9], 0xff);
        assert_eq!(f[12], 0xff);
        let mut short = vec![0u8; 4];
        set_num_buffers(&mut short, 1);
        assert_eq!(short, [0; 4]);
    }
}
