//! virtio-vsock packets (virtio 1.2, 5.10.6): the 44-byte header every
//! packet starts with, read from a TX chain the guest filled or written
//! into an RX chain the guest posted, and the payload around it.
//!
//! virtio-bindings has no vsock definitions, so the header layout and the
//! constants are spelled out here from the spec.
//!
//! Nothing the guest writes is trusted: a TX chain whose header is short,
//! whose buffers are not device-readable or lie outside guest memory, or
//! whose `len` disagrees with the bytes the chain carries or exceeds
//! `MAX_PAYLOAD`, is refused as a whole (`PacketError`); the muxer then
//! resets the connection it named, if any.

use std::ops::Deref;

use crate::virtio::chain::{gather, scatter, segments, split_at, total_len, ChainError, Segments};
use crate::virtio::GuestMemory;
use virtio_queue::DescriptorChain;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// Most payload bytes in one packet, either way (Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE is 64 KiB too).
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;

/// `type`: only stream sockets are supported.
pub const TYPE_STREAM: u16 = 1;

/// `op` values.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `flags` of a SHUTDOWN: which directions the sender is done with.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// Byte offsets in the header.
mod off {
    pub const SRC_CID: usize = 0;
    pub const DST_CID: usize = 8;
    pub const SRC_PORT: usize = 16;
    pub const DST_PORT: usize = 20;
    pub const LEN: usize = 24;
    pub const TYPE: usize = 28;
    pub const OP: usize = 30;
    pub const FLAGS: usize = 32;
    pub const BUF_ALLOC: usize = 36;
    pub const FWD_CNT: usize = 40;
}

/// A packet header, host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(off::SRC_CID),
            dst_cid: u64_at(off::DST_CID),
            src_port: u32_at(off::SRC_PORT),
            dst_port: u32_at(off::DST_PORT),
            len: u32_at(off::LEN),
            type_: u16_at(off::TYPE),
            op: u16_at(off::OP),
            flags: u32_at(off::FLAGS),
            buf_alloc: u32_at(off::BUF_ALLOC),
            fwd_cnt: u32_at(off::FWD_CNT),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[off::SRC_CID..off::SRC_CID + 8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[off::DST_CID..off::DST_CID + 8].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[off::SRC_PORT..off::SRC_PORT + 4].copy_from_slice(&self.src_port.to_le_bytes());
        b[off::DST_PORT..off::DST_PORT + 4].copy_from_slice(&self.dst_port.to_le_bytes());
        b[off::LEN..off::LEN + 4].copy_from_slice(&self.len.to_le_bytes());
        b[off::TYPE..off::TYPE + 2].copy_from_slice(&self.type_.to_le_bytes());
        b[off::OP..off::OP + 2].copy_from_slice(&self.op.to_le_bytes());
        b[off::FLAGS..off::FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        b[off::BUF_ALLOC..off::BUF_ALLOC + 4].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[off::FWD_CNT..off::FWD_CNT + 4].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("the chain holds {0} bytes, less than a {HDR_LEN}-byte header")]
    ShortHeader(usize),
    #[error("header len {len} but the chain carries {carried} payload bytes")]
    LenMismatch { len: u32, carried: u64 },
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooBig(u32),
    #[error("the RX buffer has {0} bytes, less than a header")]
    ShortBuffer(u64),
}

/// A packet the guest sent: its header and where its payload is.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TxPacket {
    pub hdr: Header,
    /// Payload pieces in guest memory, `hdr.len` bytes in total.
    pub payload: Segments,
}

/// Parse a TX chain: the header from its first 44 bytes (which may span
/// descriptors), the payload from the rest.
pub fn parse_tx<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<TxPacket, PacketError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let segs = segments(chain, mem, false)?;
    let total = total_len(&segs);
    if total < HDR_LEN as u64 {
        return Err(PacketError::ShortHeader(total as usize));
    }
    let (hdr_segs, payload) = split_at(&segs, HDR_LEN);
    let mut raw = [0u8; HDR_LEN];
    gather(mem, &hdr_segs, &mut raw)?;
    let hdr = Header::from_bytes(&raw);
    if hdr.len > MAX_PAYLOAD {
        return Err(PacketError::TooBig(hdr.len));
    }
    let carried = total - HDR_LEN as u64;
    // The driver may post a buffer bigger than the data (Linux does not,
    // but the spec does not forbid it); less than `len` is a lie.
    if carried < u64::from(hdr.len) {
        return Err(PacketError::LenMismatch {
            len: hdr.len,
            carried,
        });
    }
    let (payload, _) = split_at(&payload, hdr.len as usize);
    Ok(TxPacket { hdr, payload })
}

/// An RX chain the guest posted: writable buffers for a header and up to
/// `payload_room` payload bytes.
#[derive(Debug, Default)]
pub struct RxBuffer {
    pub hdr: Segments,
    pub payload: Segments,
}

impl RxBuffer {
    pub fn payload_room(&self) -> u32 {
        let room: u64 = self.payload.iter().map(|&(_, l)| u64::from(l)).sum();
        room.min(u64::from(MAX_PAYLOAD)) as u32
    }
}

/// Parse an RX chain the guest posted.
pub fn parse_rx<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<RxBuffer, PacketError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let segs = segments(chain, mem, true)?;
    let total = total_len(&segs);
    if total < HDR_LEN as u64 {
        return Err(PacketError::ShortBuffer(total));
    }
    let (hdr, payload) = split_at(&segs, HDR_LEN);
    Ok(RxBuffer { hdr, payload })
}

/// Fill an RX buffer with `hdr` and `payload` (which must fit:
/// `payload.len() <= buf.payload_room()`); returns the used length.
pub fn write_rx(
    mem: &GuestMemory,
    buf: &RxBuffer,
    hdr: &Header,
    payload: &[u8],
) -> Result<u32, PacketError> {
    scatter(mem, &buf.hdr, &hdr.to_bytes())?;
    let n = scatter(mem, &buf.payload, payload)?;
    Ok((HDR_LEN + n) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_the_spec_layout() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1025,
            dst_port: 52,
            len: 9,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 77,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[20..24], &52u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[40..44], &77u32.to_le_bytes());
        assert_eq!(Header::from_bytes(&b), h);
    }
}
