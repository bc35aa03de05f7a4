//! virtio-vsock through `vireo run --vsock cid=N,uds=PATH`: the stock
//! guest's vmw_vsock_virtio_transport driver and its AF_VSOCK sockets
//! (driven by `vireo-agent`, added to the default guest's initrd) talk to
//! host programs over Unix sockets with Firecracker's conventions. On a PVM
//! host the boot goes through the nested rig, whose vsock relay carries the
//! host's sockets into L1. One boot checks both directions with data
//! integrity, 32 concurrent connections, a refused port, a host program
//! that disconnects in the middle, and a CONNECT to a port nobody serves.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{vireo, BOOT_TIMEOUT, QUICK_TIMEOUT};

const ECHO_PORT: u32 = 5000;
/// Connections the guest's echo server takes before it exits.
const HOST_CONNECTIONS: usize = 34;

fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vsock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(7) % 251) as u8
}

fn data(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64).map(|i| pattern(i + seed)).collect()
}

/// Connect to the device's socket and ask for a guest port (Firecracker's
/// handshake); returns the stream and the "OK" line.
fn connect(uds: &Path, port: u32) -> (UnixStream, String) {
    let mut s = UnixStream::connect(uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    writeln!(s, "CONNECT {port}").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] != b'\n' => line.push(b[0]),
            _ => break,
        }
    }
    (s, String::from_utf8_lossy(&line).into_owned())
}

/// Send `payload` on a connected stream and read the whole echo back.
fn echo_round(mut s: UnixStream, payload: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&payload).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

#[test]
fn vsock_both_directions_many_connections_refusals_and_disconnects() {
    let dir = scratch("main");
    let uds = dir.join("v.sock");
    // The guest-initiated side: an echo server on host port 6000.
    let l6000 = UnixListener::bind(format!("{}_6000", uds.display())).unwrap();
    let host_echo = std::thread::spawn(move || {
        let (mut s, _) = l6000.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        std::io::copy(&mut s, &mut w).unwrap()
    });

    let initrd = common::agent_initrd(&dir);
    let script = format!(
        "vireo-agent vsock-echo {ECHO_PORT} {HOST_CONNECTIONS} & \
         sleep 0.5; echo VSOCK-READY; wait $!; \
         vireo-agent vsock-send 2 6000 8388608; \
         vireo-agent vsock-send 2 6001 16; \
         echo VSOCK-DONE"
    );
    let vsock = format!("cid=3,uds={}", uds.display());
    let initrd_s = initrd.display().to_string();
    let mut vm = common::spawn(&[
        "run", "--cpus", "2", "--initrd", &initrd_s, "--vsock", &vsock, "--", "sh", "-c", &script,
    ]);
    vm.wait_for("VSOCK-READY", BOOT_TIMEOUT);

    // A port nobody listens on: the handshake gets no OK, the socket closes.
    let (_, line) = connect(&uds, 7777);
    assert_eq!(line, "", "CONNECT to a closed guest port answered {line:?}");

    // Host to guest: 8 MiB echoed back intact.
    let (s, line) = connect(&uds, ECHO_PORT);
    assert!(line.starts_with("OK "), "handshake answered {line:?}");
    let hostport: u32 = line[3..].parse().unwrap();
    assert!(hostport >= 1 << 30, "{line}");
    let big = data(8 << 20, 0);
    let back = echo_round(s, big.clone());
    assert!(
        back == big,
        "8 MiB echo differs ({} bytes back)",
        back.len()
    );

    // A host program that disconnects in the middle.
    let (mut s, line) = connect(&uds, ECHO_PORT);
    assert!(line.starts_with("OK "), "{line}");
    s.write_all(&data(1 << 20, 1)).unwrap();
    drop(s);

    // 32 at once.
    let conns: Vec<_> = (0..32)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let (s, line) = connect(&uds, ECHO_PORT);
                assert!(line.starts_with("OK "), "conn {i}: {line}");
                let payload = data(64 << 10, i);
                echo_round(s, payload.clone()) == payload
            })
        })
        .collect();
    let ok = conns
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|&ok| ok)
        .count();
    assert_eq!(ok, 32, "echo of concurrent connections");

    vm.wait_for("VSOCK-DONE", BOOT_TIMEOUT);
    let seen = vm.seen.clone();
    // The command ended: the VM exits by itself (SIGTERM only if not).
    std::thread::sleep(Duration::from_secs(2));
    let (_, stderr) = vm.stop_with(libc::SIGTERM, Duration::from_secs(60));
    let all = format!("{seen}\n--- stderr ---\n{stderr}");
    assert!(
        seen.contains(&format!("served {HOST_CONNECTIONS} connections")),
        "{all}"
    );
    assert!(seen.contains("vsock-send 6000: ok 8388608"), "{all}");
    assert!(seen.contains("vsock-send 6001: refused"), "{all}");
    assert_eq!(host_echo.join().unwrap(), 8 << 20);
    assert!(!uds.exists(), "the vsock socket outlived the VM");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_vsock_settings_fail_before_boot() {
    let dir = scratch("bad");
    let taken = dir.join("taken.sock");
    std::fs::write(&taken, b"").unwrap();
    for (spec, needle) in [
        ("cid=2,uds=/tmp/x.sock".to_string(), "reserved"),
        (format!("cid=3,uds={}", taken.display()), "already exists"),
        ("cid=3".to_string(), "uds=PATH"),
    ] {
        let o = vireo(&["run", "--vsock", &spec, "--", "true"], QUICK_TIMEOUT);
        assert_ne!(o.code, Some(0), "{}", o.dump());
        assert!(o.stderr.contains(needle), "{spec}: {}", o.dump());
        assert!(!o.stdout.contains("Linux version"), "booted: {}", o.dump());
    }
    assert!(taken.exists(), "an existing file was removed");
    let _ = std::fs::remove_dir_all(&dir);
}
