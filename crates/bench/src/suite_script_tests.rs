//! Tests for the shared suite script and its result parsing; the L1 script
//! runs under the host's busybox `sh` against fake VMMs (skipped without
//! busybox).

use super::*;
use std::path::Path;
use std::process::Command;

const BUSYBOX: &str = TEST_BUSYBOX;

const GOOD: &str = "\
BENCH-BLK vmm=vireo run=warmup test=seq1m-write ns=9000000000 bytes=67108864 ops=64
BENCH-BLK vmm=vireo run=0 test=seq1m-write ns=500000000 bytes=67108864 ops=64\r
BENCH-BLK vmm=qemu run=0 test=seq1m-write ns=250000000 bytes=67108864 ops=64
noise from L1
BENCH-BLK vmm=qemu run=1 test=seq1m-write ns=1000000000 bytes=67108864 ops=64
BENCH-BLK vmm=qemu run=1 test=seq4k-read ns=2000000000 bytes=16777216 ops=4096
BENCH-BLK vmm=vireo run=1 test=seq1m-write ns=400000000 bytes=67108864 ops=64
BENCH-DONE
";

/// Parses block-tagged output for vireo and qemu.
fn parse(out: &str) -> Result<[Vec<RunSamples>; 2], BenchError> {
    let mut r = parse_suite_results(out, "BLK", &["vireo", "qemu"])?;
    assert_eq!(r.len(), 2);
    let q = r.pop().unwrap_or_default();
    let v = r.pop().unwrap_or_default();
    Ok([v, q])
}

#[test]
fn results_are_grouped_per_vmm_and_run_without_warmups() {
    let [v, q] = parse(GOOD).expect("parses");
    assert_eq!(v.len(), 2);
    assert_eq!(q.len(), 2);
    assert_eq!(v[0]["seq1m-write"].secs, 0.5);
    assert_eq!(v[1]["seq1m-write"].secs, 0.4);
    assert_eq!(q[1]["seq4k-read"].ops, 4096);
    assert_eq!(q[1]["seq4k-read"].bytes, 16 << 20);
    assert!(!v[0].contains_key("seq4k-read"));
    // Another tag's lines are not these results.
    let net = parse_suite_results(GOOD, "NET", &["vireo"]).expect("parses");
    assert!(net[0].is_empty());
}

#[test]
fn every_repetition_is_a_sample_of_its_own() {
    let out = "\
BENCH-BLK vmm=vireo run=0 test=seq1m-read rep=0 ns=1000000000 bytes=1 ops=1
BENCH-BLK vmm=vireo run=0 test=dd-start rep=0 ns=3000000000 bytes=0 ops=1
BENCH-BLK vmm=vireo run=0 test=seq1m-read rep=1 ns=2000000000 bytes=1 ops=1
BENCH-BLK vmm=qemu run=0 test=seq1m-read rep=0 ns=1000000000 bytes=1 ops=1
BENCH-DONE
";
    let [v, q] = parse(out).expect("parses");
    assert_eq!(v.len(), 2);
    assert_eq!(q.len(), 1);
    assert_eq!(v[1]["seq1m-read"].secs, 2.0);
    assert_eq!(
        v[0]["dd-start"].secs, 3.0,
        "baseline stays with its repetition"
    );
    assert!(!v[1].contains_key("dd-start"));
}

#[test]
fn failures_and_unfinished_runs_are_errors() {
    let failed = format!("{GOOD}BENCH-FAIL qemu run 1: guest: no /dev/vda\n");
    let err = parse(&failed).expect_err("fails").to_string();
    assert!(err.contains("no /dev/vda"), "{err}");

    let unfinished = GOOD.replace("BENCH-DONE", "");
    let err = parse(&unfinished).expect_err("fails").to_string();
    assert!(err.contains("did not finish"), "{err}");

    let garbled = format!("BENCH-BLK vmm=vireo run=0 test=x ns=abc bytes=1 ops=1\n{GOOD}");
    let err = parse(&garbled).expect_err("fails").to_string();
    assert!(err.contains("unparsable"), "{err}");
}

#[test]
fn guest_notes_come_from_the_first_measured_boot() {
    let out = "BENCH-INFO vmm=vireo run=warmup irq 24: 5 PCI-MSI virtio0-req.0\n\
               BENCH-INFO vmm=vireo run=0 irq 24: 9 PCI-MSI virtio0-req.0\r\n\
               BENCH-INFO vmm=qemu run=0 queues 1 scheduler [none] mq-deadline\n\
               BENCH-INFO vmm=qemu run=1 queues 1\n";
    assert_eq!(
        guest_notes(out),
        [
            "vireo: irq 24: 9 PCI-MSI virtio0-req.0",
            "qemu: queues 1 scheduler [none] mq-deadline"
        ]
    );
}

#[test]
fn result_line_fields() {
    let p = "BENCH-BLK ";
    let l = parse_res_line(
        "x BENCH-BLK vmm=a run=3 test=t ns=1500000000 bytes=10 ops=2 extra=1",
        p,
    )
    .expect("parses");
    assert_eq!(l.vmm, "a");
    assert_eq!(l.run, Some(3));
    assert_eq!(l.sample.secs, 1.5);
    assert!(parse_res_line("BENCH-BLK vmm=a run=x test=t ns=1 bytes=1 ops=1", p).is_none());
    assert!(parse_res_line("BENCH-BLK vmm=a run=1 test=t ns=1 bytes=1", p).is_none());
    assert!(
        parse_res_line("BENCH-BLK vmm=a run=warmup test=t ns=1 bytes=1 ops=1", p)
            .is_some_and(|l| l.run.is_none())
    );
}

fn fake(name: &str, script: &str) -> ScriptVmm {
    ScriptVmm {
        name: name.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
    }
}

/// Runs the L1 script under busybox sh with a setup that writes a file;
/// `None` when there is no busybox.
fn run_l1(tag: &str, vmms: &[ScriptVmm], runs: usize) -> Option<String> {
    if !Path::new(BUSYBOX).exists() {
        eprintln!("skipped: no {BUSYBOX}");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("vireo-suite-test-{}-{tag}", std::process::id()));
    let marker = dir.join("setup-ran");
    let script = l1_script(&L1Plan {
        tag: "BLK",
        setup: format!("echo ran > {}", marker.display()),
        vmms,
        runs,
        warmup: Some(vmms),
        timeout: Duration::from_secs(20),
    });
    let out = Command::new(BUSYBOX)
        .args(["sh", "-c", &script])
        .env("BB", BUSYBOX)
        .env("BENCH_DIR", &dir)
        .output()
        .expect("busybox sh runs");
    let setup_ran = marker.exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(setup_ran, "the script runs its setup");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

const GUEST_OK: &str =
    "printf 'boot noise\\r\\nBLK-RES test=seq1m-read ns=5 bytes=64 ops=1\\r\\nBLK-DONE\\r\\n'";

/// The "vmm=NAME run=RUN" of each relayed result, in order.
fn order(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("BENCH-BLK vmm="))
        .map(|l| l.split(" test").next().unwrap_or(""))
        .collect()
}

#[test]
fn l1_script_alternates_and_relays_guest_results() {
    let vmms = [fake("vireo", GUEST_OK), fake("qemu", GUEST_OK)];
    let Some(out) = run_l1("ok", &vmms, 2) else {
        return;
    };
    assert_eq!(
        order(&out),
        [
            "vireo run=warmup",
            "qemu run=warmup",
            "vireo run=0",
            "qemu run=0",
            "qemu run=1",
            "vireo run=1"
        ],
        "{out}"
    );
    let [v, q] = parse(&out).expect("parses");
    assert_eq!((v.len(), q.len()), (2, 2));
    assert_eq!(v[0]["seq1m-read"].bytes, 64);
}

#[test]
fn l1_script_rotates_three_vmms() {
    let vmms = [
        fake("a", GUEST_OK),
        fake("b", GUEST_OK),
        fake("c", GUEST_OK),
    ];
    let Some(out) = run_l1("three", &vmms, 3) else {
        return;
    };
    let measured: Vec<&str> = order(&out)
        .into_iter()
        .filter(|l| !l.ends_with("warmup"))
        .collect();
    assert_eq!(
        measured,
        [
            "a run=0", "b run=0", "c run=0", "b run=1", "c run=1", "a run=1", "c run=2", "a run=2",
            "b run=2"
        ],
        "{out}"
    );
    let r = parse_suite_results(&out, "BLK", &["a", "b", "c"]).expect("parses");
    assert!(r.iter().all(|v| v.len() == 3), "{r:?}");
}

#[test]
fn l1_script_stops_at_a_guest_failure() {
    let vmms = [
        fake("vireo", GUEST_OK),
        fake("qemu", "echo 'BLK-FAIL no /dev/vda'; exit 1"),
    ];
    let Some(out) = run_l1("fail", &vmms, 2) else {
        return;
    };
    assert!(!out.contains("BENCH-DONE"), "{out}");
    assert_eq!(out.matches("BENCH-BLK").count(), 1, "{out}");
    let err = parse(&out).expect_err("fails").to_string();
    assert!(
        err.contains("no /dev/vda") && err.contains("status 1"),
        "{err}"
    );
}

#[test]
fn l1_script_needs_the_done_line() {
    // A VMM that exits 0 without the guest finishing (QEMU at a poweroff)
    // is a failure.
    let a = fake("vireo", "echo 'BLK-RES test=x ns=1 bytes=1 ops=1'");
    let Some(out) = run_l1("nodone", &[a], 1) else {
        return;
    };
    assert!(
        out.contains("BENCH-FAIL vireo run warmup: status 0"),
        "{out}"
    );
}

#[test]
fn a_failed_setup_ends_the_script() {
    if !Path::new(BUSYBOX).exists() {
        return;
    }
    let script = l1_script(&L1Plan {
        tag: "NET",
        setup: "echo 'BENCH-FAIL setup: no tap'; exit 1".into(),
        vmms: &[fake("vireo", GUEST_OK)],
        runs: 1,
        warmup: None,
        timeout: Duration::from_secs(20),
    });
    let out = Command::new(BUSYBOX)
        .args(["sh", "-c", &script])
        .env("BB", BUSYBOX)
        .env(
            "BENCH_DIR",
            std::env::temp_dir().join("vireo-suite-setup-fail"),
        )
        .output()
        .expect("busybox sh runs");
    let out = String::from_utf8_lossy(&out.stdout);
    let err = parse_suite_results(&out, "NET", &["vireo"])
        .expect_err("fails")
        .to_string();
    assert!(err.contains("no tap"), "{err}");
}

#[test]
fn initrd_gets_the_guest_script_appended() {
    let dir = std::env::temp_dir().join(format!("vireo-suite-initrd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let base = dir.join("initrd.cpio");
    std::fs::write(&base, b"BASE-ARCHIVE").expect("write");
    let bytes = initrd_with_script(&base, "/bench/x.sh", "echo X-DONE").expect("builds");
    assert!(bytes.starts_with(b"BASE-ARCHIVE"));
    let rest = String::from_utf8_lossy(&bytes[12..]).into_owned();
    assert!(rest.starts_with("070701"), "a newc archive follows");
    assert!(rest.contains("bench/x.sh") && rest.contains("X-DONE"));
    assert!(initrd_with_script(&dir.join("missing"), "/bench/x.sh", "").is_err());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
