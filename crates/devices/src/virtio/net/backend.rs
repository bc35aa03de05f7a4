//! Where a virtio-net device's frames go and come from. Every frame that
//! crosses this trait starts with the 12-byte virtio-net header
//! (`frame::VNET_HDR_LEN`), so a tap with IFF_VNET_HDR passes them through
//! untouched, and a backend without headers (a socketpair, passt's stream
//! socket) adds or strips one.

use std::io;
use std::os::unix::io::RawFd;

/// One queue pair's host side; its fd is non-blocking and polled for
/// readable (a frame waits) and writable (room again after WouldBlock).
pub trait Backend: Send {
    /// The fd the worker polls.
    fn raw_fd(&self) -> RawFd;
    /// Read one frame into `buf`; `WouldBlock` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame; `WouldBlock` when the host side is full.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Whether `send_iovecs` works: frames then go to the host straight
    /// from guest memory, without a copy.
    fn vectored(&self) -> bool {
        false
    }
    /// Write one frame given as iovecs (header first) in one go, like
    /// `send`; only called when `vectored`. The iovecs point into guest
    /// memory, which the caller keeps mapped for the call.
    fn send_iovecs(&mut self, _iov: &[libc::iovec]) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Offloads the guest accepts (`TUN_F_*`), for backends that can hand
    /// over unsegmented frames; others ignore it.
    fn set_offload(&self, _tun_flags: libc::c_uint) -> io::Result<()> {
        Ok(())
    }
    /// Whether this queue pair gets frames (multi-queue: the guest chose
    /// how many pairs it uses).
    fn set_enabled(&self, _enabled: bool) -> io::Result<()> {
        Ok(())
    }
    /// Finish writing what `send` accepted (called when the fd is
    /// writable again); `WouldBlock` if it still cannot.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Whether frames may carry offloads (partial checksums, GSO) both
    /// ways, as a tap with IFF_VNET_HDR can.
    fn offloads(&self) -> bool {
        false
    }
    /// Another handle on the same queue.
    fn try_clone_box(&self) -> io::Result<Box<dyn Backend>>;
}

impl Backend for Box<dyn Backend> {
    fn raw_fd(&self) -> RawFd {
        (**self).raw_fd()
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).recv(buf)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        (**self).send(frame)
    }
    fn vectored(&self) -> bool {
        (**self).vectored()
    }
    fn send_iovecs(&mut self, iov: &[libc::iovec]) -> io::Result<()> {
        (**self).send_iovecs(iov)
    }
    fn set_offload(&self, tun_flags: libc::c_uint) -> io::Result<()> {
        (**self).set_offload(tun_flags)
    }
    fn set_enabled(&self, enabled: bool) -> io::Result<()> {
        (**self).set_enabled(enabled)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
    fn offloads(&self) -> bool {
        (**self).offloads()
    }
    fn try_clone_box(&self) -> io::Result<Box<dyn Backend>> {
        (**self).try_clone_box()
    }
}

/// One `writev` of `iov` to `fd`: a whole frame on a tap or a datagram
/// socket.
pub(crate) fn writev_all(fd: RawFd, iov: &[libc::iovec]) -> io::Result<()> {
    let count = libc::c_int::try_from(iov.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the kernel reads `count` iovecs from `iov`, each naming
    // memory the caller keeps mapped for the call (see `send_iovecs`).
    let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
