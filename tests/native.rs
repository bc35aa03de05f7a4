//! Tests that need no guest kernel: bad input is refused with one clear line
//! before anything boots, and the minimal PVH guest (a few hundred bytes that
//! the bench crate builds) boots directly on this host's /dev/kvm, which
//! works even on a PVM-backed KVM since its handful of instructions are
//! emulated cheaply. That exercises the direct path end to end: ELF/PVH
//! loading, vCPU setup, the serial console, reset through the i8042, the
//! console file, config files and signals.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{vireo, QUICK_TIMEOUT};

const MARKER: &str = "VIREO-BENCH-MARKER";

fn have_kvm() -> bool {
    let ok = Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("path: skipped, this host has no /dev/kvm");
    }
    ok
}

/// Test files live in Cargo's per-target scratch directory, not /tmp.
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("native-{}-{name}", std::process::id()));
    std::fs::write(&p, data).unwrap();
    p
}

/// Written once: tests run in parallel and must not rewrite a file another
/// test is booting.
fn minimal_guest() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| scratch("minimal.elf", &bench::minimal_guest_elf()))
        .clone()
}

/// The minimal guest with its reset replaced by NOPs: it prints the marker
/// and then halts forever, so only a signal can end the VM.
fn halting_guest() -> PathBuf {
    let mut elf = bench::minimal_guest_elf();
    let reset = [0xb0, 0xfe, 0xe6, 0x64]; // mov al, 0xfe; out 0x64, al
    let at: Vec<usize> = (0..elf.len() - 3)
        .filter(|&i| elf[i..i + 4] == reset)
        .collect();
    assert_eq!(at.len(), 1, "reset sequence not found exactly once");
    elf[at[0]..at[0] + 4].fill(0x90);
    scratch("halting.elf", &elf)
}

/// Fails quickly and non-zero, with exactly one error line, which
/// mentions `needle`, and no panic.
fn assert_refused(args: &[&str], needle: &str) {
    let o = vireo(args, QUICK_TIMEOUT);
    assert!(
        matches!(o.code, Some(c) if c != 0),
        "must fail\n{}",
        o.dump()
    );
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.to_lowercase().contains("error"))
        .collect();
    assert_eq!(errors.len(), 1, "want one error line\n{}", o.dump());
    assert!(
        errors[0].contains(needle),
        "the error should mention {needle:?}\n{}",
        o.dump()
    );
    assert!(!o.stderr.contains("panicked"), "{}", o.dump());
}

#[test]
fn minimal_pvh_guest_boots_directly_and_resets() {
    if !have_kvm() {
        return;
    }
    let elf = minimal_guest();
    let args = [
        "run",
        "--kernel",
        elf.to_str().unwrap(),
        "--emulate=never",
        "--memory",
        "64M",
    ];
    let o = vireo(&args, QUICK_TIMEOUT);
    assert!(o.stdout.contains(MARKER), "marker missing\n{}", o.dump());
    o.assert_code(0);
}

#[test]
fn console_file_receives_guest_output() {
    if !have_kvm() {
        return;
    }
    let elf = minimal_guest();
    let log = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("native-{}-console.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let console = format!("file={}", log.display());
    let args = [
        "run",
        "--kernel",
        elf.to_str().unwrap(),
        "--emulate=never",
        "--console",
        &console,
    ];
    let o = vireo(&args, QUICK_TIMEOUT);
    o.assert_code(0);
    assert!(!o.stdout.contains(MARKER), "{}", o.dump());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(MARKER), "console file: {text}");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn config_file_produces_the_same_vm() {
    if !have_kvm() {
        return;
    }
    let json = format!(
        r#"{{"kernel": "{}", "vcpus": 1, "memory_mib": 64, "console": {{"mode": "stdio"}}}}"#,
        minimal_guest().display()
    );
    let cfg = scratch("vm.json", json.as_bytes());
    let o = vireo(
        &["run", "--config", cfg.to_str().unwrap(), "--emulate=never"],
        QUICK_TIMEOUT,
    );
    assert!(o.stdout.contains(MARKER), "{}", o.dump());
    o.assert_code(0);
}

#[test]
fn sigterm_and_sigint_stop_the_vm_cleanly() {
    if !have_kvm() {
        return;
    }
    let elf = halting_guest();
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut vm = common::spawn(&["run", "--kernel", elf.to_str().unwrap(), "--emulate=never"]);
        // Wait for the marker, so the signal reaches a running VM.
        vm.wait_for(MARKER, QUICK_TIMEOUT);
        let (code, stderr) = vm.stop_with(sig, Duration::from_secs(20));
        assert_eq!(code, Some(128 + sig), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}

#[test]
fn bad_input_is_refused_with_one_clear_line() {
    let elf = minimal_guest();
    let elf = elf.to_str().unwrap();
    let not_kernel = scratch("not-a-kernel", &[0x42; 8192]);
    let dir = std::env::temp_dir();
    let bad_json = scratch("bad.json", b"{\"kernel\": 3");
    let unknown_field = scratch("unknown.json", b"{\"kernel\": \"/k\", \"cpus\": 2}");
    let long_cmdline = "x".repeat(3000);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "--kernel", "/nonexistent/vmlinuz"],
            "/nonexistent/vmlinuz",
        ),
        (
            vec!["run", "--kernel", dir.to_str().unwrap()],
            "not a regular file",
        ),
        (
            vec!["run", "--kernel", not_kernel.to_str().unwrap()],
            "not a Linux kernel",
        ),
        (
            vec!["run", "--kernel", elf, "--initrd", "/nonexistent/initrd"],
            "initrd",
        ),
        (vec!["run", "--kernel", elf, "--memory", "12Q"], "12Q"),
        (
            vec!["run", "--kernel", elf, "--memory", "100T"],
            "more than this host has",
        ),
        (vec!["run", "--kernel", elf, "--memory", "4M"], "too small"),
        (vec!["run", "--kernel", elf, "--cpus", "0"], "'0'"),
        (vec!["run", "--kernel", elf, "--cpus", "1000"], "'1000'"),
        (vec!["run", "--kernel", elf, "--console", "tty9"], "tty9"),
        (
            vec![
                "run",
                "--kernel",
                elf,
                "--console",
                "file=/nonexistent/dir/log",
            ],
            "/nonexistent/dir/log",
        ),
        (
            vec!["run", "--kernel", elf, "--emulate", "sometimes"],
            "sometimes",
        ),
        (
            vec!["run", "--config", bad_json.to_str().unwrap()],
            "bad.json",
        ),
        (
            vec!["run", "--config", unknown_field.to_str().unwrap()],
            "cpus",
        ),
        // Without --kernel the default guest is used; bad flags still fail first.
        (vec!["run", "--memory", "12Q"], "12Q"),
        (vec!["run", "--cpus", "1000"], "1000"),
        (
            vec!["run", "--kernel", elf, "--cmdline", &long_cmdline],
            "command line",
        ),
    ];
    for (args, needle) in cases {
        assert_refused(&args, needle);
    }
}
