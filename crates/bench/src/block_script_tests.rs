//! Tests for the block benchmark's scripts and result parsing; the L1 script
//! runs under the host's busybox `sh` against fake VMMs (skipped without
//! busybox).

use super::*;
use std::path::Path;
use std::process::Command;

const BUSYBOX: &str = "/usr/bin/busybox";

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

#[test]
fn results_are_grouped_per_vmm_and_run_without_warmups() {
    let [v, q] = parse_block_results(GOOD, ["vireo", "qemu"]).expect("parses");
    assert_eq!(v.len(), 2);
    assert_eq!(q.len(), 2);
    assert_eq!(v[0]["seq1m-write"].secs, 0.5);
    assert_eq!(v[1]["seq1m-write"].secs, 0.4);
    assert_eq!(q[1]["seq4k-read"].ops, 4096);
    assert_eq!(q[1]["seq4k-read"].bytes, 16 << 20);
    assert!(!v[0].contains_key("seq4k-read"));
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
    let [v, q] = parse_block_results(out, ["vireo", "qemu"]).expect("parses");
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
    let err = parse_block_results(&failed, ["vireo", "qemu"])
        .expect_err("fails")
        .to_string();
    assert!(err.contains("no /dev/vda"), "{err}");

    let unfinished = GOOD.replace("BENCH-DONE", "");
    let err = parse_block_results(&unfinished, ["vireo", "qemu"])
        .expect_err("fails")
        .to_string();
    assert!(err.contains("did not finish"), "{err}");

    let garbled = format!("BENCH-BLK vmm=vireo run=0 test=x ns=abc bytes=1 ops=1\n{GOOD}");
    let err = parse_block_results(&garbled, ["vireo", "qemu"])
        .expect_err("fails")
        .to_string();
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
    let l = parse_blk_line("x BENCH-BLK vmm=a run=3 test=t ns=1500000000 bytes=10 ops=2 extra=1")
        .expect("parses");
    assert_eq!(l.vmm, "a");
    assert_eq!(l.run, Some(3));
    assert_eq!(l.sample.secs, 1.5);
    assert!(parse_blk_line("BENCH-BLK vmm=a run=x test=t ns=1 bytes=1 ops=1").is_none());
    assert!(parse_blk_line("BENCH-BLK vmm=a run=1 test=t ns=1 bytes=1").is_none());
    assert!(
        parse_blk_line("BENCH-BLK vmm=a run=warmup test=t ns=1 bytes=1 ops=1")
            .is_some_and(|l| l.run.is_none())
    );
}

#[test]
fn guest_script_is_complete_and_valid_sh() {
    let s = guest_script();
    assert!(!s.contains("@NOW_FN@") && s.contains("now() {"), "{s}");
    for test in [
        "seq1m-write",
        "seq1m-read",
        "seq4k-write",
        "seq4k-read",
        "rnd4k-read",
        "rnd4k-write",
        "dd-start",
    ] {
        assert!(s.contains(&format!("t {test} ")), "{test} missing");
    }
    assert!(s.contains("oflag=direct") && s.contains("iflag=direct"));
    if !Path::new(BUSYBOX).exists() {
        eprintln!("skipped the syntax check: no {BUSYBOX}");
        return;
    }
    let out = Command::new(BUSYBOX)
        .args(["sh", "-n", "-c", &s])
        .output()
        .expect("busybox runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fake(name: &str, script: &str) -> ScriptVmm {
    ScriptVmm {
        name: name.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
    }
}

/// Runs the L1 script under busybox sh; `None` when there is no busybox.
fn run_l1(tag: &str, first: &ScriptVmm, second: &ScriptVmm, runs: usize) -> Option<String> {
    if !Path::new(BUSYBOX).exists() {
        eprintln!("skipped: no {BUSYBOX}");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("vireo-blk-test-{}-{tag}", std::process::id()));
    let image = dir.join("disk.img");
    let script = l1_script(&L1Plan {
        first,
        second,
        runs,
        warmup: Some((first, second)),
        timeout: Duration::from_secs(20),
        image: &image.to_string_lossy(),
        image_mib: 1,
    });
    let out = Command::new(BUSYBOX)
        .args(["sh", "-c", &script])
        .env("BB", BUSYBOX)
        .env("BENCH_DIR", &dir)
        .output()
        .expect("busybox sh runs");
    let made_image = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(made_image, 1 << 20, "the script creates the image");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

const GUEST_OK: &str =
    "printf 'boot noise\\r\\nBLK-RES test=seq1m-read ns=5 bytes=64 ops=1\\r\\nBLK-DONE\\r\\n'";

#[test]
fn l1_script_alternates_and_relays_guest_results() {
    let a = fake("vireo", GUEST_OK);
    let b = fake("qemu", GUEST_OK);
    let Some(out) = run_l1("ok", &a, &b, 2) else {
        return;
    };
    let order: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("BENCH-BLK vmm="))
        .map(|l| l.split(" test").next().unwrap_or(""))
        .collect();
    assert_eq!(
        order,
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
    let [v, q] = parse_block_results(&out, ["vireo", "qemu"]).expect("parses");
    assert_eq!((v.len(), q.len()), (2, 2));
    assert_eq!(v[0]["seq1m-read"].bytes, 64);
}

#[test]
fn l1_script_stops_at_a_guest_failure() {
    let a = fake("vireo", GUEST_OK);
    let b = fake("qemu", "echo 'BLK-FAIL no /dev/vda'; exit 1");
    let Some(out) = run_l1("fail", &a, &b, 2) else {
        return;
    };
    assert!(!out.contains("BENCH-DONE"), "{out}");
    assert_eq!(out.matches("BENCH-BLK").count(), 1, "{out}");
    let err = parse_block_results(&out, ["vireo", "qemu"])
        .expect_err("fails")
        .to_string();
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
    let Some(out) = run_l1("nodone", &a, &a, 1) else {
        return;
    };
    assert!(
        out.contains("BENCH-FAIL vireo run warmup: status 0"),
        "{out}"
    );
}
