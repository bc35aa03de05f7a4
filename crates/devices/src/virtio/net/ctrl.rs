//! The control queue (virtio 1.2, 5.1.6.5): commands the driver sends
//! besides frames. Each chain carries `{ u8 class; u8 command; data }` in
//! device-readable buffers and a device-writable ack byte. Served:
//! - MQ / VQ_PAIRS_SET: how many queue pairs the guest uses; the tap queues
//!   past that are detached, so no frame waits on a ring nobody reads;
//! - GUEST_OFFLOADS / SET: the offloads the guest takes now (ethtool -K),
//!   set on the tap.
//!
//! Anything else, or a command whose data is short or out of range, is
//! answered VIRTIO_NET_ERR; a chain with no room for the ack completes
//! empty.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};

use virtio_queue::QueueT;

use super::backend::Backend;
use super::features;
use crate::virtio::chain::{gather, request_segments, scatter};
use crate::virtio::served_queue::ServedQueue;
use crate::virtio::GuestMemory;

/// Longest command read (the two we serve carry at most 8 bytes).
const MAX_COMMAND: usize = 64;

/// A command as the driver sent it.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    QueuePairs(u16),
    GuestOffloads(u64),
    Other { class: u8, command: u8 },
    Malformed,
}

/// Decode a command from its readable bytes.
pub fn decode(bytes: &[u8]) -> Command {
    let (Some(&class), Some(&command)) = (bytes.first(), bytes.get(1)) else {
        return Command::Malformed;
    };
    let data = &bytes[2..];
    match (u32::from(class), u32::from(command)) {
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) => data
            .get(..2)
            .map(|b| Command::QueuePairs(u16::from_le_bytes([b[0], b[1]])))
            .unwrap_or(Command::Malformed),
        (VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET) => data
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(|b| Command::GuestOffloads(u64::from_le_bytes(b)))
            .unwrap_or(Command::Malformed),
        _ => Command::Other { class, command },
    }
}

/// The control queue and what its commands act on.
pub struct Ctrl {
    pub queue: ServedQueue,
    /// One handle per queue pair, in order.
    pub backends: Vec<Box<dyn Backend>>,
    /// The features the driver accepted.
    pub acked: u64,
    /// Commands answered, and those answered with an error.
    pub commands: u64,
    pub failed: u64,
}

impl Ctrl {
    /// Carry out one command; true for VIRTIO_NET_OK.
    pub fn execute(&mut self, cmd: &Command) -> bool {
        match *cmd {
            Command::QueuePairs(n) => {
                let pairs = self.backends.len();
                if self.acked & features::bit(features::MQ) == 0 || n == 0 || usize::from(n) > pairs
                {
                    return false;
                }
                self.backends
                    .iter()
                    .enumerate()
                    .all(|(i, b)| pairs == 1 || b.set_enabled(i < usize::from(n)).is_ok())
            }
            Command::GuestOffloads(offloads) => {
                if self.acked & features::bit(features::CTRL_GUEST_OFFLOADS) == 0
                    || offloads & !features::guest_offloads(self.acked) != 0
                {
                    return false;
                }
                let flags = features::tun_offload_flags(offloads);
                self.backends
                    .first()
                    .is_some_and(|b| b.set_offload(flags).is_ok())
            }
            Command::Other { .. } | Command::Malformed => false,
        }
    }

    /// Serve every command on the queue; does not signal.
    pub fn serve(&mut self, mem: &GuestMemory) {
        let mut budget = self.queue.queue.size();
        self.queue.begin(mem);
        while budget > 0 {
            let Some(chain) = self.queue.pop(mem) else {
                return;
            };
            budget -= 1;
            let head = chain.head_index();
            let used = match request_segments(chain, mem) {
                Ok((readable, writable)) => {
                    let mut buf = [0u8; MAX_COMMAND];
                    let cmd = match gather(mem, &readable, &mut buf) {
                        Ok(n) => decode(&buf[..n]),
                        Err(_) => Command::Malformed,
                    };
                    let ok = self.execute(&cmd);
                    self.commands += 1;
                    if !ok {
                        self.failed += 1;
                    }
                    let ack = if ok { VIRTIO_NET_OK } else { VIRTIO_NET_ERR } as u8;
                    scatter(mem, &writable, &[ack]).unwrap_or(0) as u32
                }
                Err(_) => {
                    self.failed += 1;
                    0
                }
            };
            self.queue.add_used(mem, head, used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_decode_from_their_bytes() {
        assert_eq!(decode(&[4, 0, 3, 0]), Command::QueuePairs(3));
        assert_eq!(decode(&[4, 0, 3]), Command::Malformed);
        let mut off = vec![5, 0];
        off.extend_from_slice(&0x86u64.to_le_bytes());
        assert_eq!(decode(&off), Command::GuestOffloads(0x86));
        assert_eq!(decode(&off[..9]), Command::Malformed);
        assert_eq!(
            decode(&[0, 1, 1]),
            Command::Other {
                class: 0,
                command: 1
            }
        );
        assert_eq!(decode(&[4]), Command::Malformed);
        assert_eq!(decode(&[]), Command::Malformed);
    }
}
