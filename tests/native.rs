//! Tests that need no guest kernel: bad input is refused with one clear line
//! before anything boots, and the minimal PVH guest (a few hundred bytes that
//! the bench crate builds) boots directly on this host's /dev/kvm — which
//! works even on a PVM-backed KVM, since its handful of instructions are
//! emulated cheaply. That exercises the direct path end to end: ELF/PVH
//! loading, vCPU setup, the serial console and reset through the i8042.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn vireo(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vireo");
    // Nothing here may hang: give each run a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("vireo {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vireo-native-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn minimal_guest() -> PathBuf {
    scratch("minimal.elf", &bench::minimal_guest_elf())
}

/// Fails with a non-zero status and exactly one line on stderr that
/// contains `needle`.
fn assert_refused(args: &[&str], needle: &str) {
    let out = vireo(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{args:?} should fail");
    let first = stderr.lines().next().unwrap_or("");
    assert!(
        first.contains(needle),
        "{args:?}: expected '{needle}' in the first stderr line, got:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
}

#[test]
fn minimal_pvh_guest_boots_directly_and_resets() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("path: skipped, this host has no /dev/kvm");
        return;
    }
    eprintln!("path: direct (/dev/kvm), minimal PVH guest");
    let elf = minimal_guest();
    let out = vireo(&[
        "run",
        "--kernel",
        elf.to_str().unwrap(),
        "--emulate=never",
        "--memory",
        "64M",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("VIREO-BENCH-MARKER"),
        "marker missing; stdout: {stdout}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "a guest reset exits 0");
}

#[test]
fn console_file_receives_guest_output() {
    if !std::path::Path::new("/dev/kvm").exists() {
        return;
    }
    let elf = minimal_guest();
    let log = std::env::temp_dir().join(format!("vireo-console-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let console = format!("file={}", log.display());
    let out = vireo(&[
        "run",
        "--kernel",
        elf.to_str().unwrap(),
        "--emulate=never",
        "--console",
        &console,
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("VIREO-BENCH-MARKER"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("VIREO-BENCH-MARKER"), "console file: {text}");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn config_file_produces_the_same_vm() {
    if !std::path::Path::new("/dev/kvm").exists() {
        return;
    }
    let elf = minimal_guest();
    let json = format!(
        r#"{{"kernel": "{}", "vcpus": 1, "memory_mib": 64, "console": {{"mode": "stdio"}}}}"#,
        elf.display()
    );
    let cfg = scratch("vm.json", json.as_bytes());
    let out = vireo(&["run", "--config", cfg.to_str().unwrap(), "--emulate=never"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("VIREO-BENCH-MARKER"));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn bad_input_is_refused_with_one_clear_line() {
    let elf = minimal_guest();
    let elf = elf.to_str().unwrap();
    let not_kernel = scratch("not-a-kernel", &[0x42; 8192]);
    let dir = std::env::temp_dir();
    let bad_json = scratch("bad.json", b"{\"kernel\": 3");
    let unknown_field = scratch("unknown.json", b"{\"kernel\": \"/k\", \"cpus\": 2}");
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
    ];
    for (args, needle) in cases {
        assert_refused(&args, needle);
    }
}
