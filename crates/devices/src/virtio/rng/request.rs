//! An entropy request: a descriptor chain of device-writable buffers the
//! device fills with random bytes. Nothing in it is trusted: a chain with a
//! device-readable descriptor, or a buffer outside guest memory, is refused
//! (returned with 0 bytes written); at most `MAX_REQUEST_BYTES` are filled
//! per chain, so one request costs the host a bounded amount of work.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::virtio::GuestMemory;

/// Most bytes filled for one chain; the rest of a bigger chain is left as
/// it is and the used length says how much was filled.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;

/// The guest buffers of one request, in chain order, capped at
/// `MAX_REQUEST_BYTES` in total.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub segments: Vec<(GuestAddress, u32)>,
    pub len: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor {0} is device-readable; an entropy request has only writable buffers")]
    Readable(usize),
    #[error("descriptor {index} ({addr:#x}, {len} bytes) is outside guest memory")]
    OutOfRange { index: usize, addr: u64, len: u32 },
    #[error("the chain has no writable bytes")]
    Empty,
}

/// Parse `chain` into the buffers to fill.
pub fn parse<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<Request, RequestError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut req = Request::default();
    for (index, desc) in chain.enumerate() {
        if !desc.is_write_only() {
            return Err(RequestError::Readable(index));
        }
        let len = desc.len().min(MAX_REQUEST_BYTES - req.len);
        if len == 0 {
            continue;
        }
        if !mem.check_range(desc.addr(), len as usize) {
            return Err(RequestError::OutOfRange {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        req.segments.push((desc.addr(), len));
        req.len += len;
    }
    if req.len == 0 {
        return Err(RequestError::Empty);
    }
    Ok(req)
}
