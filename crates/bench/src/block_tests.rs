//! Tests for the block benchmark's command lines, guest initrd and tables.

use super::*;
use crate::suite_script::TestSample;

fn arg_after<'a>(argv: &'a [String], flag: &str) -> &'a str {
    let i = argv.iter().position(|a| a == flag).expect("flag present");
    &argv[i + 1]
}

#[test]
fn both_vmms_boot_the_same_guest_on_the_same_image() {
    let v = vireo_vmm(100, 3).argv;
    let q = qemu_vmm(100, 3, QemuAio::Threads, QemuMachine::Microvm).argv;
    let cmdline = arg_after(&v, "--cmdline");
    assert_eq!(
        arg_after(&q, "-append"),
        format!("{} {cmdline}", vmm::config::DEFAULT_CMDLINE)
    );
    assert!(cmdline.contains("vireo.cmd="), "{cmdline}");
    assert_eq!(arg_after(&v, "--disk"), format!("path={L1_IMAGE}"));
    assert!(arg_after(&q, "-drive").starts_with(&format!("file={L1_IMAGE},format=raw")));
    assert_eq!(arg_after(&q, "-device"), "i8042");
    assert!(q.iter().any(|a| a.starts_with("virtio-blk-pci")), "{q:?}");
    assert_eq!(arg_after(&q, "-M"), "microvm,pcie=on");
    assert_eq!(arg_after(&v, "--cpus"), arg_after(&q, "-smp"));
    assert_eq!(arg_after(&v, "--initrd"), arg_after(&q, "-initrd"));
    assert!(v.iter().any(|a| a == "--emulate=never"));
}

#[test]
fn qemu_aio_and_machine_choices() {
    assert_eq!("threads".parse(), Ok(QemuAio::Threads));
    assert_eq!("io_uring".parse(), Ok(QemuAio::IoUring));
    assert!("native".parse::<QemuAio>().is_err());
    let q = qemu_vmm(0, 1, QemuAio::IoUring, QemuMachine::Q35).argv;
    assert!(arg_after(&q, "-drive").ends_with(",aio=io_uring"), "{q:?}");
    assert_eq!(arg_after(&q, "-M"), "q35");
    assert_eq!("q35".parse(), Ok(QemuMachine::Q35));
    assert_eq!("microvm".parse(), Ok(QemuMachine::Microvm));
    assert!("pc".parse::<QemuMachine>().is_err());
}

fn sample(secs: f64, bytes: u64, ops: u64) -> TestSample {
    TestSample { secs, bytes, ops }
}

fn boot(seq1m_write: f64, rnd_read: Option<f64>, dd_start: f64) -> RunSamples {
    let mut r = RunSamples::new();
    r.insert("seq1m-write".into(), sample(seq1m_write, 64 << 20, 64));
    r.insert("seq4k-read".into(), sample(2.0, 16 << 20, 4096));
    if let Some(t) = rnd_read {
        r.insert("rnd4k-read".into(), sample(t, 100 * 4096, 100));
        r.insert(DD_START.into(), sample(dd_start, 0, 100));
    }
    r
}

#[test]
fn tables_show_time_throughput_iops_and_ratios() {
    let v = [boot(0.5, Some(0.6), 0.4), boot(0.25, Some(0.6), 0.4)];
    let q = [boot(1.0, Some(1.4), 0.4), boot(1.0, Some(1.4), 0.4)];
    let out = render_tables(&v, &q, 100).expect("renders");
    // Sequential 1 MiB write: medians 0.375 s vs 1.0 s.
    assert!(
        out.contains("sequential write, 64 MiB in 1 MiB blocks"),
        "{out}"
    );
    assert!(out.contains("0.23 s QEMU q35"), "{out}");
    let time_row = out
        .lines()
        .find(|l| l.trim_start().starts_with("time (s)"))
        .expect("time row");
    assert!(
        time_row.contains("0.38") && time_row.ends_with("0.38"),
        "{time_row}"
    );
    // 16 MiB in 4 KiB blocks in 2 s: 8 MiB/s, 2048 IOPS.
    assert!(out.contains("2048"), "{out}");
    // Random reads: 100 ops in 0.6 s, 0.2 s net of dd start: 500 IOPS net,
    // QEMU 100 net: ratio 5.
    let net = out
        .lines()
        .find(|l| l.contains("IOPS net of dd start"))
        .expect("net row");
    assert!(net.contains("500") && net.ends_with("5.00"), "{net}");
    assert!(out.contains("one dd start, no I/O (ms)"), "{out}");
    // Tests nobody ran are left out.
    assert!(!out.contains("random 4 KiB writes"), "{out}");
}

#[test]
fn tables_without_random_tests_or_samples() {
    let v = [boot(0.5, None, 0.0)];
    let q = [boot(1.0, None, 0.0)];
    let out = render_tables(&v, &q, 0).expect("renders");
    assert!(
        !out.contains("random") && !out.contains("dd start"),
        "{out}"
    );
    assert!(matches!(
        render_tables(&[], &[], 0),
        Err(BenchError::NoRuns)
    ));
}

#[test]
fn rates_refuse_non_positive_times() {
    assert_eq!(mib_per_s(0.5, 1 << 20), Some(2.0));
    assert_eq!(mib_per_s(0.0, 1 << 20), None);
    assert_eq!(iops(2.0, 100, 1.0), Some(100.0));
    assert_eq!(iops(1.0, 100, 1.5), None);
}

#[test]
fn zero_runs_is_an_error_before_any_work() {
    let opts = BlockBenchOptions {
        runs: 0,
        ..BlockBenchOptions::default()
    };
    assert!(matches!(run_block_bench(&opts), Err(BenchError::NoRuns)));
    let opts = BlockBenchOptions {
        reps: 0,
        ..BlockBenchOptions::default()
    };
    assert!(matches!(run_block_bench(&opts), Err(BenchError::NoRuns)));
}
