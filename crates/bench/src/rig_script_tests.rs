//! Tests for the L1 benchmark script: result parsing, and the script itself
//! run by the host's busybox `sh` against fake VMMs (skipped without busybox).

use super::*;
use std::path::Path;
use std::process::Command;

const BUSYBOX: &str = "/usr/bin/busybox";

fn vmm(name: &str, script: &str) -> ScriptVmm {
    ScriptVmm {
        name: name.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
    }
}

/// Runs the generated script under busybox sh; `None` when there is no busybox.
fn run_script(
    tag: &str,
    first: &ScriptVmm,
    second: &ScriptVmm,
    runs: usize,
    timeout_s: u64,
) -> Option<String> {
    if !Path::new(BUSYBOX).exists() {
        eprintln!("skipped: no {BUSYBOX}");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("vireo-bench-test-{}-{tag}", std::process::id()));
    let script = l1_script(first, second, runs, Duration::from_secs(timeout_s));
    let out = Command::new(BUSYBOX)
        .args(["sh", "-c", &script])
        .env("BB", BUSYBOX)
        .env("BENCH_DIR", &dir)
        .output()
        .expect("busybox sh runs");
    let _ = std::fs::remove_dir_all(&dir);
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn parses_runs_and_skips_warmups_and_noise() {
    let out = "\
[    1.0] kernel noise\n\
BENCH-RUN name=vireo-warmup rc=0 killed=0 marker_us=900 exit_us=950 maxrss_kib=10\n\
BENCH-RUN name=vireo rc=0 killed=0 marker_us=1000 exit_us=1500 maxrss_kib=2048\n\
\x1b[0mBENCH-RUN name=qemu rc=0 killed=0 marker_us=3000 exit_us=4000 maxrss_kib=40960\r\n\
BENCH-DONE\n";
    let [v, q] = parse_results(out, ["vireo", "qemu"]).expect("parses");
    assert_eq!(
        v,
        vec![RunSample {
            marker: Duration::from_micros(1000),
            exit: Duration::from_micros(1500),
            max_rss_kib: 2048
        }]
    );
    assert_eq!(q[0].max_rss_kib, 40960);
}

#[test]
fn failed_or_unfinished_runs_are_errors() {
    let out = "BENCH-RUN name=qemu rc=9 killed=1 marker_us=-1 exit_us=5 maxrss_kib=3\n\
BENCH-FAIL qemu stderr: could not open /dev/kvm\nBENCH-DONE\n";
    let e = parse_results(out, ["vireo", "qemu"])
        .expect_err("failed run")
        .to_string();
    assert!(
        e.contains("could not open /dev/kvm") && e.contains("qemu failed"),
        "{e}"
    );
    let e = parse_results("", ["vireo", "qemu"])
        .expect_err("no output")
        .to_string();
    assert!(e.contains("did not finish"), "{e}");
}

#[test]
fn quoting_survives_the_shell() {
    assert_eq!(sh_quote("it's"), r"'it'\''s'");
    let argv = ["/x/vireo", "--cmdline", "quiet a=b", "--memory", "128M", ""].map(String::from);
    assert_eq!(
        sh_display(&argv),
        "/x/vireo --cmdline 'quiet a=b' --memory 128M ''"
    );
}

#[test]
fn script_measures_fake_vmms() {
    let a = vmm(
        "alpha",
        "echo booting; sleep 0.2; echo VIREO-RIG-MARKER; sleep 0.2",
    );
    let b = vmm("beta", "echo 'x y'; echo VIREO-RIG-MARKER");
    let Some(out) = run_script("ok", &a, &b, 2, 10) else {
        return;
    };
    let [sa, sb] = parse_results(&out, ["alpha", "beta"]).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!((sa.len(), sb.len()), (2, 2), "{out}");
    for s in &sa {
        assert!(s.marker >= Duration::from_millis(150), "{s:?}");
        assert!(s.exit >= s.marker + Duration::from_millis(150), "{s:?}");
        // A shell and a sleep: a few MiB at most (busybox time's 4x is undone).
        assert!(s.max_rss_kib > 0 && s.max_rss_kib < 3000, "{s:?}\n{out}");
    }
    let order: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("name=").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(
        order,
        [
            "alpha-warmup",
            "beta-warmup",
            "alpha",
            "beta",
            "beta",
            "alpha"
        ]
    );
}

#[test]
fn script_kills_a_hung_vmm_and_reports_it() {
    let a = vmm("alpha", "echo stuck-here; echo oops >&2; sleep 30");
    let b = vmm("beta", "echo VIREO-RIG-MARKER");
    let started = std::time::Instant::now();
    let Some(out) = run_script("hang", &a, &b, 1, 1) else {
        return;
    };
    assert!(started.elapsed() < Duration::from_secs(20), "{out}");
    let e = parse_results(&out, ["alpha", "beta"])
        .expect_err("hung")
        .to_string();
    assert!(
        e.contains("stuck-here") && e.contains("oops") && e.contains("killed=1"),
        "{e}"
    );
    // The first failure ends the script: beta never ran.
    assert!(!out.contains("name=beta"), "{out}");
}
