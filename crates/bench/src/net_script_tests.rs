//! Tests for the network benchmark's guest script and L1 setup: complete,
//! valid busybox `sh`, and the setup starting every server it waits for.

use super::*;

/// A `@NAME@` placeholder left in `s`.
fn placeholder(s: &str) -> Option<&str> {
    s.split('@')
        .skip(1)
        .step_by(2)
        .find(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
}

#[test]
fn guest_script_runs_every_test_against_l1() {
    let s = guest_script();
    assert_eq!(placeholder(&s), None, "{s}");
    for (test, probe) in [
        ("tcp-g2h", "push tcp:$H:5001"),
        ("tcp-h2g", "pull tcp:$H:5002"),
        ("tcp-rr", "rr tcp:$H:5003"),
        ("vsock-g2h", "push vsock:2:5004"),
        ("vsock-h2g", "pull vsock:2:5005"),
    ] {
        assert!(s.contains(&format!("t {test} {probe} ")), "{test} missing");
    }
    assert!(s.contains("H=10.9.0.1") && s.contains("ip addr add 10.9.0.2/24 dev eth0"));
    assert!(s.contains("NET-RES test=$name rep=$rep $r") && s.contains("echo NET-DONE"));
    crate::suite_script::assert_sh_syntax(&s);
}

#[test]
fn l1_setup_makes_the_tap_and_every_server() {
    let s = l1_setup("/rig/bench/vireo-agent", "/tmp/vireo-net/vsock.sock");
    assert_eq!(placeholder(&s), None, "{s}");
    assert!(s.contains("tunctl -t vbench0") && s.contains("10.9.0.1/24 dev vbench0"));
    for server in [
        "sink tcp:5001",
        "source tcp:5002",
        "echo tcp:5003",
        "sink unix:/tmp/vireo-net/vsock.sock_5004",
        "source unix:/tmp/vireo-net/vsock.sock_5005",
        "sink vsock:5004",
        "source vsock:5005",
    ] {
        assert!(s.contains(&format!("\"{server}\"")), "{server} missing");
    }
    // It waits for as many "listening" lines as it starts servers.
    let started = s.matches("\"sink ").count()
        + s.matches("\"source ").count()
        + s.matches("\"echo ").count();
    assert!(s.contains(&format!("!= {started} ]")), "{s}");
    assert!(s.contains("mkdir -p /tmp/vireo-net"));
    crate::suite_script::assert_sh_syntax(&s);
}
