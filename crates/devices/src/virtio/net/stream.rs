//! A virtio-net backend on a Unix stream socket carrying frames the way
//! QEMU's `-netdev stream` and passt do: each Ethernet frame preceded by
//! its length as a 32-bit big-endian number, no virtio-net header. Frames
//! from the guest lose their header on the way out; frames for the guest
//! get a zeroed one (no offloads: such a peer sends and wants whole,
//! checksummed frames, so the device offers none of them).
//!
//! The socket is non-blocking: a frame that does not fit the socket now is
//! kept and finished when it is writable again (the worker calls `flush`),
//! and the next one waits for that (`WouldBlock`).

use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::backend::Backend;
use super::frame::{MAX_PACKET_LEN, VNET_HDR_LEN};

const LEN_PREFIX: usize = 4;

/// Frames over a stream socket; see the module comment.
pub struct StreamBackend {
    sock: UnixStream,
    /// Bytes read and not yet handed out: `rx[rx_off..rx_end]`.
    rx: Vec<u8>,
    rx_off: usize,
    rx_end: usize,
    /// Bytes of frames accepted and not yet written: `tx[tx_off..]`.
    tx: Vec<u8>,
    tx_off: usize,
    /// Kept alive as long as any handle is (the peer process, say).
    keep: Option<Arc<dyn Send + Sync>>,
}

impl StreamBackend {
    /// A backend on `sock` (made non-blocking here); `keep` lives as long
    /// as the backend and its clones.
    pub fn new(sock: UnixStream, keep: Option<Arc<dyn Send + Sync>>) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(StreamBackend {
            sock,
            rx: vec![0; 2 * (LEN_PREFIX + MAX_PACKET_LEN)],
            rx_off: 0,
            rx_end: 0,
            tx: Vec::new(),
            tx_off: 0,
            keep,
        })
    }

    /// The next whole frame in the read buffer, into `buf` after a zeroed
    /// header; Ok(None) if it is not all there yet.
    fn take_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let avail = &self.rx[self.rx_off..self.rx_end];
            let Some(prefix) = avail.get(..LEN_PREFIX) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if len == 0 {
                self.rx_off += LEN_PREFIX;
                continue;
            }
            if len > MAX_PACKET_LEN || VNET_HDR_LEN + len > buf.len() {
                // Out of step with the peer: nothing after this can be
                // trusted to be a frame boundary.
                self.rx_off = self.rx_end;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the peer sent a {len}-byte frame (at most {MAX_PACKET_LEN})"),
                ));
            }
            if avail.len() < LEN_PREFIX + len {
                return Ok(None);
            }
            buf[..VNET_HDR_LEN].fill(0);
            buf[VNET_HDR_LEN..VNET_HDR_LEN + len]
                .copy_from_slice(&avail[LEN_PREFIX..LEN_PREFIX + len]);
            self.rx_off += LEN_PREFIX + len;
            return Ok(Some(VNET_HDR_LEN + len));
        }
    }
}

impl Backend for StreamBackend {
    fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(n) = self.take_frame(buf)? {
                return Ok(n);
            }
            if self.rx_off > 0 {
                self.rx.copy_within(self.rx_off..self.rx_end, 0);
                self.rx_end -= self.rx_off;
                self.rx_off = 0;
            }
            match self.sock.read(&mut self.rx[self.rx_end..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the network backend closed its socket",
                    ))
                }
                Ok(n) => self.rx_end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.flush()?;
        let payload = frame.get(VNET_HDR_LEN..).unwrap_or_default();
        self.tx.clear();
        self.tx_off = 0;
        self.tx
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.tx.extend_from_slice(payload);
        // Accepted: what does not fit now goes when the socket is writable.
        match self.flush() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.tx_off < self.tx.len() {
            match self.sock.write(&self.tx[self.tx_off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.tx_off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn try_clone_box(&self) -> io::Result<Box<dyn Backend>> {
        Ok(Box::new(StreamBackend::new(
            self.sock.try_clone()?,
            self.keep.clone(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn frames_cross_with_length_prefixes_and_lose_or_gain_the_header() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut b = StreamBackend::new(a, None).unwrap();
        let mut buf = vec![0xffu8; VNET_HDR_LEN + MAX_PACKET_LEN];
        assert_eq!(
            b.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // Two frames, the second split across writes, and an empty one.
        let mut bytes = framed(b"first");
        bytes.extend(framed(b""));
        let second = framed(&[7u8; 3000]);
        bytes.extend_from_slice(&second[..100]);
        peer.write_all(&bytes).unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), VNET_HDR_LEN + 5);
        assert_eq!(&buf[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&buf[VNET_HDR_LEN..VNET_HDR_LEN + 5], b"first");
        assert_eq!(
            b.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        peer.write_all(&second[100..]).unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), VNET_HDR_LEN + 3000);
        assert!(buf[VNET_HDR_LEN..VNET_HDR_LEN + 3000]
            .iter()
            .all(|&x| x == 7));

        // Out: the header goes, the prefix comes.
        let mut out = vec![0u8; VNET_HDR_LEN];
        out.extend_from_slice(b"hello");
        b.send(&out).unwrap();
        let mut got = [0u8; 9];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, &framed(b"hello")[..]);

        // A length past any frame is refused, not believed.
        peer.write_all(&(1u32 << 20).to_be_bytes()).unwrap();
        assert_eq!(
            b.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        drop(peer);
        assert_eq!(
            b.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn a_full_socket_keeps_the_frame_and_refuses_the_next() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut b = StreamBackend::new(a, None).unwrap();
        let frame = vec![1u8; VNET_HDR_LEN + 60_000];
        let mut sent = 0;
        let blocked = loop {
            match b.send(&frame) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 10_000, "the socket never filled");
        };
        assert_eq!(blocked.kind(), io::ErrorKind::WouldBlock);
        // The peer drains: every accepted frame arrives whole.
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            let mut len = [0u8; 4];
            while peer.read_exact(&mut len).is_ok() {
                let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
                peer.read_exact(&mut f).unwrap();
                assert!(f.iter().all(|&x| x == 1));
                n += 1;
            }
            n
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while b.flush().is_err() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(b);
        assert_eq!(reader.join().unwrap(), sent);
    }
}
