//! `vireo-agent offloads IFACE`: the offloads a NIC has on, from the
//! kernel's ethtool interface (SIOCETHTOOL with the classic get commands),
//! printed as `name=on|off` words like `ethtool -k` (busybox has no
//! ethtool).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The ethtool get commands (linux/ethtool.h) and `ethtool -k`'s names.
const FEATURES: &[(u32, &str)] = &[
    (0x14, "rx-checksumming"),
    (0x16, "tx-checksumming"),
    (0x18, "scatter-gather"),
    (0x1e, "tcp-segmentation-offload"),
    (0x23, "generic-segmentation-offload"),
    (0x2b, "generic-receive-offload"),
];

/// struct ethtool_value.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// One feature's state.
fn get(sock: &OwnedFd, iface: &str, cmd: u32) -> io::Result<bool> {
    // SAFETY: ifreq is plain data; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let mut value = EthtoolValue { cmd, data: 0 };
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL reads the command from and writes the result to
    // `value`, which outlives the call; `req` names the interface.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data != 0)
}

/// `name=on|off` for every feature of `iface`.
pub fn offloads(iface: &str) -> io::Result<String> {
    // SAFETY: creating a socket has no memory effects.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut words = Vec::new();
    for (cmd, name) in FEATURES {
        let on = get(&sock, iface, *cmd)?;
        words.push(format!("{name}={}", if on { "on" } else { "off" }));
    }
    Ok(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loopback device has checksumming and scatter-gather on.
    #[test]
    fn loopback_offloads() {
        let s = offloads("lo").expect("ethtool on lo");
        assert!(s.contains("tx-checksumming=on"), "{s}");
        assert!(s.contains("scatter-gather=on"), "{s}");
        assert_eq!(s.split(' ').count(), FEATURES.len(), "{s}");
        assert!(offloads("no-such-nic0").is_err());
    }
}
