//! A Linux tap device as a virtio-net backend: opened with IFF_VNET_HDR so
//! every frame read or written carries the 12-byte virtio-net header
//! (checksum and segmentation offload information crosses unchanged), one
//! file per queue pair (IFF_MULTI_QUEUE when there are several), all
//! non-blocking. The offloads the guest accepts are set on it with
//! TUNSETOFFLOAD, so the host kernel hands over large segments unsplit.
//!
//! An existing tap is attached to (the user created it and gave it
//! addresses; the VMM refuses a missing one before boot); a missing one
//! is created here only for the nested rig's inner taps, and lives as long
//! as the VM.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};

use super::backend::Backend;
use super::frame::VNET_HDR_LEN;

/// Add a port to a bridge (linux/sockios.h; libc does not have it).
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Frames a bridged tap queues for its reader (`join_bridge`).
const BRIDGED_TXQUEUELEN: libc::c_int = 10_000;

/// Longest interface name the kernel takes (IFNAMSIZ minus the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?}: must be 1 to 15 bytes of letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded?)")]
    OpenTun(#[source] io::Error),
    #[error(
        "tap {name}: cannot attach: {source} (it must be a tap, not a tun; creating one needs \
         CAP_NET_ADMIN; a multi-queue tap needs queues=N on every user, and vice versa)"
    )]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap {name}: {what}: {source}")]
    Setup {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Whether `name` is a valid interface name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `struct ifreq`: the interface name and a 24-byte union, of which the
/// ioctls here use the flags (a short) or an int (ifindex, MTU).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        let n = name.len().min(MAX_NAME_LEN);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        req
    }

    fn with_flags(name: &str, flags: libc::c_int) -> IfReq {
        let mut req = IfReq::new(name);
        req.data[..2].copy_from_slice(&(flags as libc::c_short).to_ne_bytes());
        req
    }

    fn with_int(name: &str, value: libc::c_int) -> IfReq {
        let mut req = IfReq::new(name);
        req.data[..4].copy_from_slice(&value.to_ne_bytes());
        req
    }

    fn flags(&self) -> libc::c_int {
        libc::c_int::from(libc::c_short::from_ne_bytes([self.data[0], self.data[1]]))
    }
}

/// Bring interface `name` up (with `mtu`, if given) and make it a port of
/// bridge `bridge` (the nested rig's L1 joins the inner VM's tap to its
/// own NIC this way).
pub fn join_bridge(name: &str, bridge: &str, mtu: Option<u16>) -> io::Result<()> {
    // SAFETY: a plain socket call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nothing else owns.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let ioctl = |request, req: &mut IfReq| {
        // SAFETY: each request used here reads or writes one ifreq.
        ioctl_result(unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut IfReq) })
    };
    if let Some(mtu) = mtu {
        ioctl(
            libc::SIOCSIFMTU,
            &mut IfReq::with_int(name, libc::c_int::from(mtu)),
        )?;
    }
    // A deep queue: under emulation the VMM reading the tap is often
    // descheduled for milliseconds, and a tap drops what its queue cannot
    // hold (the kernel default is 1000 frames).
    ioctl(
        libc::SIOCSIFTXQLEN,
        &mut IfReq::with_int(name, BRIDGED_TXQUEUELEN),
    )?;
    let mut req = IfReq::new(name);
    ioctl(libc::SIOCGIFFLAGS, &mut req)?;
    let up = req.flags() | libc::IFF_UP;
    ioctl(libc::SIOCSIFFLAGS, &mut IfReq::with_flags(name, up))?;
    let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    ioctl(
        SIOCBRADDIF,
        &mut IfReq::with_int(bridge, index as libc::c_int),
    )
}

/// One queue of a tap device.
#[derive(Debug)]
pub struct Tap {
    name: String,
    file: File,
}

impl Tap {
    /// Open (or create) tap `name` with `queues` queues: one `Tap` per
    /// queue, each with the virtio-net header on.
    pub fn open(name: &str, queues: usize) -> Result<Vec<Tap>, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut taps = Vec::with_capacity(queues);
        for _ in 0..queues.max(1) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(TapError::OpenTun)?;
            let mut req = IfReq::with_flags(name, flags);
            // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is
            // (name and flags at the kernel's offsets, padded to its size).
            let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            if r < 0 {
                return Err(TapError::Attach {
                    name: name.to_string(),
                    source: io::Error::last_os_error(),
                });
            }
            let tap = Tap {
                name: name.to_string(),
                file,
            };
            let hdr_len = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one c_int from the pointer.
            let r = unsafe { libc::ioctl(tap.fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
            tap.check(r, "setting the virtio-net header size")?;
            taps.push(tap);
        }
        Ok(taps)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn check(&self, r: libc::c_int, what: &'static str) -> Result<(), TapError> {
        if r < 0 {
            Err(TapError::Setup {
                name: self.name.clone(),
                what,
                source: io::Error::last_os_error(),
            })
        } else {
            Ok(())
        }
    }

    /// Another handle on the same queue (for the control queue's offload
    /// and queue-pair commands).
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            name: self.name.clone(),
            file: self.file.try_clone()?,
        })
    }
}

fn ioctl_result(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

impl Backend for Tap {
    fn raw_fd(&self) -> RawFd {
        self.fd()
    }

    /// One frame, header first; WouldBlock when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// One frame, header first.
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the kernel reads `frame.len()` bytes from `frame`.
        let n = unsafe { libc::write(self.fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn vectored(&self) -> bool {
        true
    }

    fn send_iovecs(&mut self, iov: &[libc::iovec]) -> io::Result<()> {
        super::backend::writev_all(self.fd(), iov)
    }

    /// Tell the tap which offloads the reader (the guest) accepts.
    fn set_offload(&self, tun_flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        ioctl_result(unsafe {
            libc::ioctl(self.fd(), libc::TUNSETOFFLOAD, tun_flags as libc::c_ulong)
        })
    }

    /// Attach or detach this queue of a multi-queue tap (a detached queue
    /// gets no frames).
    fn set_enabled(&self, enabled: bool) -> io::Result<()> {
        let flag = if enabled {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        let mut req = IfReq::with_flags("", flag);
        // SAFETY: TUNSETQUEUE reads one ifreq (only its flags).
        match ioctl_result(unsafe { libc::ioctl(self.fd(), libc::TUNSETQUEUE, &mut req) }) {
            // The kernel refuses to attach an attached queue or detach a
            // detached one: it already is as asked.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }

    fn offloads(&self) -> bool {
        true
    }

    fn try_clone_box(&self) -> io::Result<Box<dyn Backend>> {
        Ok(Box::new(self.try_clone()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        assert!(valid_name("tap0"));
        assert!(valid_name("vireo-tap.1_x"));
        assert!(valid_name("a23456789012345"));
        assert!(!valid_name(""));
        assert!(!valid_name("a234567890123456"));
        assert!(!valid_name("tap 0"));
        assert!(!valid_name("tap/0"));
        assert!(matches!(
            Tap::open("bad name", 1),
            Err(TapError::BadName(_))
        ));
    }
}
