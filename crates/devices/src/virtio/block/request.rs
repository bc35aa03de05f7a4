//! Turning one untrusted descriptor chain into a validated virtio-blk
//! request.
//!
//! The layout is not assumed (VIRTIO_F_VERSION_1 implies ANY_LAYOUT): the
//! chain is a run of device-readable descriptors followed by a run of
//! device-writable ones. The first 16 readable bytes are the header, the
//! rest of the readable bytes are data-out (writes, discard ranges); the
//! last writable byte is the status, the writable bytes before it are
//! data-in (reads, GET_ID).
//!
//! Every descriptor is checked against guest memory, the chain must end
//! cleanly (a last descriptor that still says NEXT means a loop, a bad next
//! index, an unreadable descriptor or a chain that is too long), directions
//! must match the request type, and every disk range must fit in the disk.
//! A request that fails any check is `Rejected` with the status to report
//! and, if one could be found, where to write it.

use std::ops::Deref;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::disk::IOV_MAX;
use super::{SECTOR_SHIFT, SECTOR_SIZE};
use crate::virtio::GuestMemory;

/// Longest chain accepted (the queue size; seg_max is this minus 2).
pub const MAX_DESCRIPTORS: usize = 256;
/// Most data segments per request, advertised as `seg_max` (the chain also
/// holds the header and the status).
pub const SEG_MAX: u32 = MAX_DESCRIPTORS as u32 - 2;
/// Largest data segment the driver should build, advertised as `size_max`.
pub const SIZE_MAX: u32 = 64 << 10;
/// Largest read or write accepted: `seg_max` segments of `size_max` bytes
/// (15.9 MiB, far above Linux's default 1280 KiB requests). Without a cap,
/// descriptors that all name the same few pages (or one indirect table
/// shared by many requests) would make each avail-ring slot cost up to
/// 4 GiB of host I/O.
pub const MAX_REQUEST_BYTES: u32 = SEG_MAX * SIZE_MAX;
/// Size of the request header (type, reserved/ioprio, sector).
pub const HEADER_LEN: u64 = 16;
/// Size of one discard / write-zeroes range.
pub const RANGE_LEN: u64 = 16;
/// Largest DISCARD / WRITE_ZEROES range in sectors (2 GiB - 4 KiB, a multiple
/// of 8 sectors), advertised in the config space.
pub const MAX_ZERO_SECTORS: u32 = 0x3F_FFF8;

/// What the parser needs to know about the disk.
#[derive(Clone, Copy, Debug)]
pub struct DiskInfo {
    pub capacity_sectors: u64,
    pub readonly: bool,
}

/// A piece of guest memory named by a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

#[derive(Clone, Copy, Debug)]
struct Desc {
    seg: Segment,
    writable: bool,
}

/// What a request asks for; offsets and lengths in bytes, already checked
/// against the disk's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Read { offset: u64 },
    Write { offset: u64 },
    Flush,
    GetId,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

/// A validated request. Its data segments (and, for reads and writes, host
/// iovecs for them) are in the `ChainBuf` it was parsed into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    /// Bytes of data-in (Read, GetId) or data-out (Write).
    pub data_len: u32,
    /// Guest address of the status byte.
    pub status: GuestAddress,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("empty descriptor chain")]
    EmptyChain,
    #[error("descriptor chain does not end (loop, bad next index or unreadable descriptor)")]
    BrokenChain,
    #[error("descriptor chain longer than {MAX_DESCRIPTORS}")]
    TooManyDescriptors,
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("no device-writable status byte")]
    NoStatus,
    #[error("request header is {0} bytes, not 16")]
    ShortHeader(u64),
    #[error("{readable} readable and {writable} writable bytes do not fit request type {kind}")]
    WrongLayout {
        kind: u32,
        readable: u64,
        writable: u64,
    },
    #[error("data length {0} is over the {MAX_REQUEST_BYTES}-byte request limit")]
    TooLarge(u64),
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("sector {sector} + {len} bytes reaches past the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("{0} discard/write-zeroes ranges (at most 1)")]
    TooManyRanges(u64),
    #[error("discard/write-zeroes range of {0} sectors is too large")]
    TooManySectors(u32),
    #[error("unsupported discard/write-zeroes flags {0:#x}")]
    UnsupportedFlags(u32),
    #[error("unsupported request type {0}")]
    UnsupportedType(u32),
    #[error("guest memory access failed")]
    Memory,
}

impl RequestError {
    /// The status byte the driver sees.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::UnsupportedType(_) | RequestError::UnsupportedFlags(_) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A refused request: the error, and where its status byte goes if the chain
/// has a usable one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub error: RequestError,
    pub status: Option<GuestAddress>,
}

/// Reusable buffers for one request, so parsing allocates nothing once warm.
#[derive(Debug, Default)]
pub struct ChainBuf {
    descs: Vec<Desc>,
    /// Guest memory of the request's data (data-in or data-out).
    pub data: Vec<Segment>,
    /// Host addresses of `data`, for reads and writes.
    pub iovecs: Vec<libc::iovec>,
}

impl ChainBuf {
    pub fn new() -> Self {
        ChainBuf {
            descs: Vec::with_capacity(MAX_DESCRIPTORS),
            data: Vec::with_capacity(MAX_DESCRIPTORS),
            iovecs: Vec::with_capacity(MAX_DESCRIPTORS),
        }
    }
}

/// Parse and validate the chain into `buf`.
pub fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    disk: DiskInfo,
    buf: &mut ChainBuf,
) -> Result<Request, Rejected>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    buf.descs.clear();
    buf.data.clear();
    buf.iovecs.clear();

    let mut too_many = false;
    let mut broken = false;
    let mut outside = None;
    let mut direction = false;
    let mut seen_writable = false;
    for desc in chain {
        if buf.descs.len() == MAX_DESCRIPTORS {
            too_many = true;
            break;
        }
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        let writable = desc.is_write_only();
        if writable {
            seen_writable = true;
        } else if seen_writable {
            direction = true;
        }
        if outside.is_none() && !mem.check_range(seg.addr, seg.len as usize) {
            outside = Some(RequestError::OutsideMemory {
                addr: seg.addr.raw_value(),
                len: seg.len,
            });
        }
        broken = desc.has_next();
        buf.descs.push(Desc { seg, writable });
    }

    let last = buf.descs.last().copied();
    let status = match last {
        Some(d) if d.writable && d.seg.len > 0 && !broken && !too_many => {
            let addr = d.seg.addr.checked_add(u64::from(d.seg.len) - 1);
            addr.filter(|a| mem.check_range(*a, 1))
        }
        _ => None,
    };
    let reject = |error| Rejected { error, status };

    if last.is_none() {
        return Err(reject(RequestError::EmptyChain));
    }
    if too_many {
        return Err(reject(RequestError::TooManyDescriptors));
    }
    if broken {
        return Err(reject(RequestError::BrokenChain));
    }
    if let Some(e) = outside {
        return Err(reject(e));
    }
    if direction {
        return Err(reject(RequestError::ReadableAfterWritable));
    }
    let status_addr = status.ok_or_else(|| reject(RequestError::NoStatus))?;

    let readable: u64 = buf
        .descs
        .iter()
        .filter(|d| !d.writable)
        .map(|d| u64::from(d.seg.len))
        .sum();
    let writable: u64 = buf
        .descs
        .iter()
        .filter(|d| d.writable)
        .map(|d| u64::from(d.seg.len))
        .sum();
    if readable < HEADER_LEN {
        return Err(reject(RequestError::ShortHeader(readable)));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    gather(mem, readable_segs(&buf.descs), &mut header).map_err(reject)?;
    let req_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());

    let layout = |want_readable: Option<u64>, want_writable: Option<u64>| {
        let ok = want_readable.is_none_or(|r| r == readable)
            && want_writable.is_none_or(|w| w == writable);
        if ok {
            Ok(())
        } else {
            Err(reject(RequestError::WrongLayout {
                kind: req_type,
                readable,
                writable,
            }))
        }
    };
    let range = |len: u64| {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|off| off.checked_add(len).map(|end| (off, end)))
            .filter(|(_, end)| *end <= disk.capacity_sectors << SECTOR_SHIFT)
            .map(|(off, _)| off)
            .ok_or_else(|| reject(RequestError::OutOfRange { sector, len }))
    };

    let (kind, data_len) = match req_type {
        VIRTIO_BLK_T_IN => {
            layout(Some(HEADER_LEN), None)?;
            let len = writable - 1;
            aligned(len).map_err(reject)?;
            let offset = range(len)?;
            sub_range(writable_segs(&buf.descs), 0, len, &mut buf.data).map_err(reject)?;
            (RequestKind::Read { offset }, len)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.readonly {
                return Err(reject(RequestError::ReadOnly));
            }
            layout(None, Some(1))?;
            let len = readable - HEADER_LEN;
            aligned(len).map_err(reject)?;
            let offset = range(len)?;
            sub_range(readable_segs(&buf.descs), HEADER_LEN, len, &mut buf.data).map_err(reject)?;
            (RequestKind::Write { offset }, len)
        }
        VIRTIO_BLK_T_FLUSH => {
            layout(Some(HEADER_LEN), Some(1))?;
            (RequestKind::Flush, 0)
        }
        VIRTIO_BLK_T_GET_ID => {
            layout(Some(HEADER_LEN), None)?;
            let len = writable - 1;
            sub_range(writable_segs(&buf.descs), 0, len, &mut buf.data).map_err(reject)?;
            (RequestKind::GetId, len)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if disk.readonly {
                return Err(reject(RequestError::ReadOnly));
            }
            layout(None, Some(1))?;
            let ranges_len = readable - HEADER_LEN;
            if ranges_len != RANGE_LEN {
                return Err(reject(
                    if ranges_len.is_multiple_of(RANGE_LEN) && ranges_len > 0 {
                        RequestError::TooManyRanges(ranges_len / RANGE_LEN)
                    } else {
                        RequestError::WrongLayout {
                            kind: req_type,
                            readable,
                            writable,
                        }
                    },
                ));
            }
            let mut raw = [0u8; RANGE_LEN as usize];
            gather_from(mem, readable_segs(&buf.descs), HEADER_LEN, &mut raw).map_err(reject)?;
            let range_sector = u64::from_le_bytes(raw[0..8].try_into().unwrap());
            let num_sectors = u32::from_le_bytes(raw[8..12].try_into().unwrap());
            let flags = u32::from_le_bytes(raw[12..16].try_into().unwrap());
            let is_discard = req_type == VIRTIO_BLK_T_DISCARD;
            let allowed = if is_discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return Err(reject(RequestError::UnsupportedFlags(flags)));
            }
            if num_sectors > MAX_ZERO_SECTORS {
                return Err(reject(RequestError::TooManySectors(num_sectors)));
            }
            let len = u64::from(num_sectors) << SECTOR_SHIFT;
            let offset = range_sector
                .checked_mul(SECTOR_SIZE)
                .filter(|off| {
                    off.checked_add(len)
                        .is_some_and(|end| end <= disk.capacity_sectors << SECTOR_SHIFT)
                })
                .ok_or_else(|| {
                    reject(RequestError::OutOfRange {
                        sector: range_sector,
                        len,
                    })
                })?;
            let kind = if is_discard {
                RequestKind::Discard { offset, len }
            } else {
                RequestKind::WriteZeroes {
                    offset,
                    len,
                    unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                }
            };
            (kind, 0)
        }
        other => return Err(reject(RequestError::UnsupportedType(other))),
    };

    if matches!(kind, RequestKind::Read { .. } | RequestKind::Write { .. }) {
        map_iovecs(mem, &buf.data, &mut buf.iovecs).map_err(reject)?;
    }
    Ok(Request {
        kind,
        // Fits: the chain's total length is below 2^32 (virtio-queue stops
        // a chain before its length overflows a u32).
        data_len: u32::try_from(data_len).map_err(|_| reject(RequestError::Memory))?,
        status: status_addr,
    })
}

/// A read or write length the device serves: whole sectors, within the cap.
fn aligned(len: u64) -> Result<(), RequestError> {
    if len > u64::from(MAX_REQUEST_BYTES) {
        Err(RequestError::TooLarge(len))
    } else if len.is_multiple_of(SECTOR_SIZE) {
        Ok(())
    } else {
        Err(RequestError::Unaligned(len))
    }
}

fn readable_segs(descs: &[Desc]) -> impl Iterator<Item = Segment> + '_ {
    descs.iter().filter(|d| !d.writable).map(|d| d.seg)
}

/// The writable descriptors; the parser has checked they come last.
fn writable_segs(descs: &[Desc]) -> impl Iterator<Item = Segment> + '_ {
    descs.iter().filter(|d| d.writable).map(|d| d.seg)
}

/// Append to `out` the part of `segs` that starts `skip` bytes in and is
/// `take` bytes long.
fn sub_range(
    segs: impl Iterator<Item = Segment>,
    mut skip: u64,
    mut take: u64,
    out: &mut Vec<Segment>,
) -> Result<(), RequestError> {
    for seg in segs {
        if take == 0 {
            break;
        }
        let len = u64::from(seg.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let addr = seg.addr.checked_add(skip).ok_or(RequestError::Memory)?;
        let n = (len - skip).min(take);
        skip = 0;
        take -= n;
        // n <= seg.len, so it fits a u32.
        out.push(Segment {
            addr,
            len: n as u32,
        });
    }
    if take == 0 {
        Ok(())
    } else {
        Err(RequestError::Memory)
    }
}

/// Copy the first `out.len()` bytes of `segs` into `out`.
fn gather(
    mem: &GuestMemory,
    segs: impl Iterator<Item = Segment>,
    out: &mut [u8],
) -> Result<(), RequestError> {
    gather_from(mem, segs, 0, out)
}

/// Copy `out.len()` bytes of `segs`, starting `skip` bytes in, into `out`.
fn gather_from(
    mem: &GuestMemory,
    segs: impl Iterator<Item = Segment>,
    mut skip: u64,
    out: &mut [u8],
) -> Result<(), RequestError> {
    let mut done = 0usize;
    for seg in segs {
        if done == out.len() {
            break;
        }
        let len = u64::from(seg.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let addr = seg.addr.checked_add(skip).ok_or(RequestError::Memory)?;
        let n = ((len - skip) as usize).min(out.len() - done);
        skip = 0;
        mem.read_slice(&mut out[done..done + n], addr)
            .map_err(|_| RequestError::Memory)?;
        done += n;
    }
    if done == out.len() {
        Ok(())
    } else {
        Err(RequestError::Memory)
    }
}

/// Copy `data` into the guest memory named by `segs` (as much as fits);
/// returns the number of bytes written.
pub fn scatter(mem: &GuestMemory, segs: &[Segment], data: &[u8]) -> Result<u32, RequestError> {
    let mut done = 0usize;
    for seg in segs {
        if done == data.len() {
            break;
        }
        let n = (seg.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], seg.addr)
            .map_err(|_| RequestError::Memory)?;
        done += n;
    }
    Ok(done as u32)
}

/// Host iovecs for `segs` (a segment that spans two memory regions becomes
/// two iovecs).
fn map_iovecs(
    mem: &GuestMemory,
    segs: &[Segment],
    out: &mut Vec<libc::iovec>,
) -> Result<(), RequestError> {
    for seg in segs {
        for slice in GuestMemoryBackend::get_slices(mem, seg.addr, seg.len as usize) {
            let slice = slice.map_err(|_| RequestError::Memory)?;
            // The guard is a no-op for plain mmap regions (it only matters
            // for Xen grant mappings), so the pointer stays valid after it
            // drops for as long as `mem` keeps the region mapped.
            let ptr = slice.ptr_guard_mut().as_ptr();
            out.push(libc::iovec {
                iov_base: ptr as *mut libc::c_void,
                iov_len: slice.len(),
            });
        }
    }
    if out.len() > IOV_MAX {
        return Err(RequestError::TooManyDescriptors);
    }
    Ok(())
}
