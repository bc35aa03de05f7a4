//! Rootless networking through passt (Debian's `passt` package, the same
//! user-mode network backend podman and libvirt use with QEMU): a process
//! that speaks the guest's Ethernet frames on one side and ordinary
//! sockets on the other, so the guest gets an address, a gateway and DNS
//! by DHCP, and its connections leave as the VMM user's own, with no root,
//! no tap and no bridge. Host ports can be forwarded into the guest.
//!
//! Vireo starts passt in the foreground with one end of a socket pair
//! (`--fd`), speaks the stream framing of `stream.rs` on the other, and
//! stops passt with the VM (also if Vireo itself is killed: passt gets
//! PR_SET_PDEATHSIG). The nested rig starts it on a listening socket
//! instead (`--socket`), which L1's NIC connects to.

use std::io;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::stream::StreamBackend;

/// The MTU a guest on passt gets unless told otherwise: passt's own
/// default, so TCP moves in 64 KiB frames without segmentation offloads.
pub const DEFAULT_MTU: u16 = 65_520;

/// A host port forwarded to a guest port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    #[serde(default)]
    pub udp: bool,
    pub host: u16,
    pub guest: u16,
}

impl Forward {
    /// Parse `[tcp:|udp:]HOST:GUEST` (or a single port for both).
    pub fn parse(s: &str) -> Result<Forward, String> {
        let (udp, ports) = match s.split_once(':') {
            Some(("udp", rest)) => (true, rest),
            Some(("tcp", rest)) => (false, rest),
            _ => (false, s),
        };
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("forward {s:?}: {p:?} is not a port (1 to 65535)"))
        };
        let (host, guest) = match ports.split_once(':') {
            Some((h, g)) => (port(h)?, port(g)?),
            None => (port(ports)?, port(ports)?),
        };
        Ok(Forward { udp, host, guest })
    }

    fn args(&self) -> [String; 2] {
        let flag = if self.udp { "-u" } else { "-t" };
        [flag.to_string(), format!("{}:{}", self.host, self.guest)]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error(
        "user networking needs passt, which is not installed (Debian: apt install passt): {0}"
    )]
    Missing(#[source] io::Error),
    #[error("passt: {0}")]
    Io(#[source] io::Error),
    #[error("passt exited at start ({status}): {messages}")]
    Exited { status: String, messages: String },
    #[error("passt did not create its socket {0} in time")]
    NoSocket(PathBuf),
}

/// A running passt, stopped when the last handle goes (its listening
/// socket, if any, removed).
pub struct Passt {
    child: Mutex<Child>,
    socket: Option<PathBuf>,
}

impl Drop for Passt {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// The last lines passt wrote (its chatter about syslog left out), for
/// the error when it fails to start.
fn collect_messages(err: std::process::ChildStderr) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = lines.clone();
    let _ = std::thread::Builder::new()
        .name("vireo-passt-log".into())
        .spawn(move || {
            use std::io::BufRead;
            for line in io::BufReader::new(err).lines().map_while(Result::ok) {
                if line.trim().is_empty() || line.contains("to syslog") {
                    continue;
                }
                if let Ok(mut l) = keep.lock() {
                    if l.len() == 20 {
                        l.remove(0);
                    }
                    l.push(line);
                }
            }
        });
    lines
}

fn passt_command(forwards: &[Forward]) -> Command {
    let mut cmd = Command::new("passt");
    cmd.args(["--foreground", "--quiet"]);
    for f in forwards {
        cmd.args(f.args());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn spawn(mut cmd: Command, socket: Option<&Path>) -> Result<Arc<Passt>, PasstError> {
    // SAFETY: the closure only calls prctl, which is async-signal-safe:
    // passt dies with the thread that started it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            PasstError::Missing(e)
        } else {
            PasstError::Io(e)
        }
    })?;
    let messages = child.stderr.take().map(collect_messages);
    // A bad option or a host it cannot work with ends it at once.
    std::thread::sleep(Duration::from_millis(50));
    if let Ok(Some(status)) = child.try_wait() {
        std::thread::sleep(Duration::from_millis(50));
        let messages = messages
            .and_then(|m| m.lock().ok().map(|l| l.join("; ")))
            .unwrap_or_default();
        return Err(PasstError::Exited {
            status: status.to_string(),
            messages,
        });
    }
    Ok(Arc::new(Passt {
        child: Mutex::new(child),
        socket: socket.map(Path::to_path_buf),
    }))
}

/// Start passt for one NIC; the backend that talks to it.
pub fn start(forwards: &[Forward]) -> Result<StreamBackend, PasstError> {
    let (ours, theirs) = UnixStream::pair().map_err(PasstError::Io)?;
    // passt gets its end as fd 3 (no close-on-exec there).
    let theirs = OwnedFd::from(theirs);
    let fd = theirs.as_raw_fd();
    let mut cmd = passt_command(forwards);
    cmd.args(["--fd", "3"]);
    // SAFETY: dup2 is async-signal-safe; it leaves fd 3 open across exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let passt = spawn(cmd, None)?;
    drop(theirs);
    let keep: Arc<dyn Send + Sync> = passt;
    StreamBackend::new(ours, Some(keep)).map_err(PasstError::Io)
}

/// Start passt listening on `socket` (for a peer that connects, such as
/// the rig's L1 NIC); returns once the socket exists.
pub fn start_listening(forwards: &[Forward], socket: &Path) -> Result<Arc<Passt>, PasstError> {
    let mut cmd = passt_command(forwards);
    cmd.arg("--socket").arg(socket).arg("--one-off");
    let passt = spawn(cmd, Some(socket))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err(PasstError::NoSocket(socket.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(passt)
}

#[cfg(test)]
mod tests {
    use super::super::backend::Backend;
    use super::super::frame::{MAX_FRAME_LEN, VNET_HDR_LEN};
    use super::*;

    /// An ARP request from the guest for `target` (a virtio-net header,
    /// then the Ethernet frame).
    fn arp_request(mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&mac);
        f.extend_from_slice(&sender);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f
    }

    #[test]
    fn a_real_passt_answers_the_guest_through_the_stream_framing() {
        let mut b = start(&[Forward::parse("tcp:1:1").unwrap()]).unwrap();
        let mac = [0x02, 0, 0, 0, 0, 9];
        // Whatever addresses passt gave the guest, it answers ARP for
        // another one on the link (its gateway proxy).
        b.send(&arp_request(mac, [192, 0, 2, 2], [192, 0, 2, 1]))
            .unwrap();
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let deadline = Instant::now() + Duration::from_secs(10);
        let reply = loop {
            match b.recv(&mut buf) {
                Ok(n) => {
                    let f = &buf[VNET_HDR_LEN..n];
                    // An ARP reply to our MAC.
                    if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] {
                        break f.to_vec();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "passt never answered");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("recv: {e}"),
            }
        };
        assert_eq!(&reply[..6], &mac, "the reply goes to the guest");
        assert_eq!(
            &reply[28..32],
            &[192, 0, 2, 1],
            "it answers for the asked address"
        );
        assert_eq!(&buf[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        // Dropping the backend stops passt.
        drop(b);
    }

    #[test]
    fn forwards_parse() {
        let f = |host, guest, udp| Forward { udp, host, guest };
        assert_eq!(Forward::parse("8080:80"), Ok(f(8080, 80, false)));
        assert_eq!(Forward::parse("tcp:22:2222"), Ok(f(22, 2222, false)));
        assert_eq!(Forward::parse("udp:53:5353"), Ok(f(53, 5353, true)));
        assert_eq!(Forward::parse("443"), Ok(f(443, 443, false)));
        for bad in ["", "0:80", "80:", "x:80", "65536:1", "tcp:", "udp:1:2:3"] {
            assert!(Forward::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(f(1, 2, true).args(), ["-u".to_string(), "1:2".to_string()]);
    }
}
