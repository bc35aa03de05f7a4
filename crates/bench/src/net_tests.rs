//! Tests for the network benchmark's VMM command lines and tables.

use super::*;
use crate::suite_script::TestSample;

fn sample(secs: f64, bytes: u64, ops: u64) -> TestSample {
    TestSample { secs, bytes, ops }
}

fn boot(g2h_secs: f64, rr_secs: f64) -> RunSamples {
    let mut r = RunSamples::new();
    r.insert("tcp-g2h".into(), sample(g2h_secs, 32 << 20, 1));
    r.insert("tcp-rr".into(), sample(rr_secs, 1000, 1000));
    r
}

#[test]
fn vmms_share_the_tap_mac_and_cid() {
    let opts = NetBenchOptions::default();
    let [v, q, qv] = vmms(&opts, 2);
    assert_eq!(
        [v.name.as_str(), q.name.as_str(), qv.name.as_str()],
        VMM_NAMES
    );
    let has = |vmm: &ScriptVmm, w: &str| vmm.argv.iter().any(|a| a.contains(w));
    assert!(has(&v, "tap=vbench0,mac=02:76:69:72:65:01"));
    assert!(has(&v, "cid=3,uds=/tmp/vireo-net/vsock.sock"));
    assert!(has(&q, "ifname=vbench0,script=no,downscript=no,vhost=off"));
    assert!(has(&qv, "ifname=vbench0,script=no,downscript=no,vhost=on"));
    for qemu in [&q, &qv] {
        assert!(has(
            qemu,
            "virtio-net-pci,netdev=n0,mac=02:76:69:72:65:01,romfile="
        ));
        assert!(has(qemu, "vhost-vsock-pci,guest-cid=3"));
        assert!(has(qemu, "-smp") && has(qemu, "microvm,pcie=on"));
    }
    // The guest script gets reps, bytes, round trips, bytes.
    let words = ["sh", GUEST_SCRIPT_PATH, "2", "33554432", "1000", "33554432"];
    let param = guest::command_param(&words.map(String::from));
    for vmm in [&v, &q, &qv] {
        assert!(has(vmm, &param), "{:?}", vmm.argv);
    }
}

#[test]
fn tables_compare_vireo_with_each_qemu() {
    let v = vec![boot(1.0, 0.1), boot(1.0, 0.1)];
    let q = vec![boot(2.0, 0.2)];
    let qv = vec![boot(0.5, 0.05)];
    let t = render_tables(&[v, q, qv]).expect("tables");
    assert!(
        t.contains("vireo/qemu") && t.contains("vireo/qemu-vhost"),
        "{t}"
    );
    // 32 MiB in 1 s = 32 MiB/s; twice QEMU's; half of vhost's.
    let g2h: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("TCP guest -> L1"))
        .collect();
    assert_eq!(g2h.len(), 2, "{t}");
    assert!(
        g2h[0].contains("32.0") && g2h[0].trim_end().ends_with("2.00"),
        "{t}"
    );
    assert!(g2h[1].trim_end().ends_with("0.50"), "{t}");
    // 0.1 s / 1000 round trips = 100 µs.
    let rr: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("request/response"))
        .collect();
    assert!(rr[0].contains("(µs)") && rr[0].contains("100"), "{t}");
    // Tests nobody ran have no row.
    assert!(!t.contains("vsock guest"), "{t}");
}

#[test]
fn no_samples_is_an_error() {
    assert!(render_tables(&[vec![], vec![], vec![]]).is_err());
    assert!(render_tables(&[vec![]]).is_err());
}

#[test]
fn a_missing_agent_is_named() {
    let opts = NetBenchOptions {
        vireo: PathBuf::from("/nonexistent/vireo"),
        ..NetBenchOptions::default()
    };
    let e = run_net_bench(&opts).expect_err("no agent").to_string();
    assert!(e.contains("/nonexistent/vireo-agent"), "{e}");
}
