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

/// Written once: tests run in parallel and must not rewrite a file another
/// test is booting.
fn minimal_guest() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| scratch("minimal.elf", &bench::minimal_guest_elf()))
        .clone()
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

#[test]
fn sigterm_and_sigint_stop_the_vm_cleanly() {
    if !std::path::Path::new("/dev/kvm").exists() {
        return;
    }
    let elf = halting_guest();
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vireo"))
            .args(["run", "--kernel", elf.to_str().unwrap(), "--emulate=never"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the marker, so the signal reaches a running VM.
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("VIREO-BENCH-MARKER") {
            let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
            assert!(n > 0, "vireo ended before the marker");
            seen.extend_from_slice(&buf[..n]);
        }
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not stop vireo"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(128 + sig), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}
