//! The feature bits a virtio-net device offers, and what the accepted ones
//! mean for the tap.

use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::virtio::VIRTIO_F_VERSION_1;

pub const CSUM: u32 = vn::VIRTIO_NET_F_CSUM;
pub const GUEST_CSUM: u32 = vn::VIRTIO_NET_F_GUEST_CSUM;
pub const CTRL_GUEST_OFFLOADS: u32 = vn::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS;
pub const MTU: u32 = vn::VIRTIO_NET_F_MTU;
pub const MAC: u32 = vn::VIRTIO_NET_F_MAC;
pub const GUEST_TSO4: u32 = vn::VIRTIO_NET_F_GUEST_TSO4;
pub const GUEST_TSO6: u32 = vn::VIRTIO_NET_F_GUEST_TSO6;
pub const GUEST_UFO: u32 = vn::VIRTIO_NET_F_GUEST_UFO;
pub const HOST_TSO4: u32 = vn::VIRTIO_NET_F_HOST_TSO4;
pub const HOST_TSO6: u32 = vn::VIRTIO_NET_F_HOST_TSO6;
pub const HOST_UFO: u32 = vn::VIRTIO_NET_F_HOST_UFO;
pub const MRG_RXBUF: u32 = vn::VIRTIO_NET_F_MRG_RXBUF;
pub const STATUS: u32 = vn::VIRTIO_NET_F_STATUS;
pub const CTRL_VQ: u32 = vn::VIRTIO_NET_F_CTRL_VQ;
pub const MQ: u32 = vn::VIRTIO_NET_F_MQ;

/// Feature `n` as a mask.
pub const fn bit(n: u32) -> u64 {
    1 << n
}

/// The guest-side offloads (what the device may hand the guest).
const GUEST_OFFLOADS: [u32; 4] = [GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_UFO];

/// What a device with `mtu` (if set) and `queue_pairs` pairs offers:
/// mergeable RX buffers, link status, its MAC, a control queue (the number
/// of queue pairs when there are several), and, on a backend that carries
/// them (`offloads`), checksum and segmentation offloads both ways, also
/// switchable at run time.
pub fn offered(mtu: Option<u16>, queue_pairs: u16, offloads: bool) -> u64 {
    let mut f = VIRTIO_F_VERSION_1 | bit(VIRTIO_RING_F_EVENT_IDX);
    for n in [MRG_RXBUF, STATUS, MAC, CTRL_VQ] {
        f |= bit(n);
    }
    if offloads {
        for n in [CSUM, HOST_TSO4, HOST_TSO6, HOST_UFO, CTRL_GUEST_OFFLOADS]
            .into_iter()
            .chain(GUEST_OFFLOADS)
        {
            f |= bit(n);
        }
    }
    if mtu.is_some() {
        f |= bit(MTU);
    }
    if queue_pairs > 1 {
        f |= bit(MQ);
    }
    f
}

/// The guest offload bits among `features`.
pub fn guest_offloads(features: u64) -> u64 {
    GUEST_OFFLOADS
        .iter()
        .map(|&n| bit(n))
        .filter(|b| features & b != 0)
        .fold(0, |a, b| a | b)
}

/// The tap's `TUN_F_*` flags for guest offloads `offloads`: what the guest
/// takes unchecksummed or unsegmented. Segmentation needs checksum
/// offload too (the kernel refuses TSO without CSUM).
pub fn tun_offload_flags(offloads: u64) -> libc::c_uint {
    if offloads & bit(GUEST_CSUM) == 0 {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (n, tun) in [
        (GUEST_TSO4, libc::TUN_F_TSO4),
        (GUEST_TSO6, libc::TUN_F_TSO6),
        (GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if offloads & bit(n) != 0 {
            flags |= tun;
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_follow_the_settings() {
        let one = offered(None, 1, true);
        assert_ne!(one & VIRTIO_F_VERSION_1, 0);
        assert_eq!(one & bit(MQ), 0);
        assert_eq!(one & bit(MTU), 0);
        assert_ne!(one & bit(MRG_RXBUF), 0);
        let more = offered(Some(9000), 4, true);
        assert_ne!(more & bit(MQ), 0);
        assert_ne!(more & bit(MTU), 0);
        let plain = offered(None, 1, false);
        assert_eq!(guest_offloads(plain), 0);
        assert_eq!(
            plain & (bit(CSUM) | bit(HOST_TSO4) | bit(CTRL_GUEST_OFFLOADS)),
            0
        );
        assert_ne!(plain & bit(MRG_RXBUF), 0);
    }

    #[test]
    fn tap_offloads_need_checksums_first() {
        assert_eq!(tun_offload_flags(bit(GUEST_TSO4)), 0);
        assert_eq!(tun_offload_flags(bit(GUEST_CSUM)), libc::TUN_F_CSUM);
        assert_eq!(
            tun_offload_flags(bit(GUEST_CSUM) | bit(GUEST_TSO4) | bit(GUEST_TSO6)),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        let acked = offered(None, 1, true);
        assert_eq!(
            guest_offloads(acked),
            bit(GUEST_CSUM) | bit(GUEST_TSO4) | bit(GUEST_TSO6) | bit(GUEST_UFO)
        );
        assert_eq!(guest_offloads(bit(HOST_TSO4)), 0);
    }
}
