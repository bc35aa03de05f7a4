//! Boots the default guest through `vireo run` (directly, or inside the
//! nested rig on hosts whose /dev/kvm cannot run stock kernels) and checks
//! what the guest sees and how vireo exits; plus bad inputs that must fail
//! fast with one clear error line. Each boot costs about 10 s in the rig,
//! so checks that can share a boot do.

mod common;

use std::time::{Duration, Instant};

use common::{is_running, run_guest, vireo_signalled, Outcome, BOOT_TIMEOUT};

/// MemTotal in MiB from a `MemTotal: N kB` line.
fn mem_total_mib(o: &Outcome) -> u64 {
    let v = o.value("MemTotal:");
    let kb: u64 = v
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad MemTotal {v:?}\n{}", o.dump()));
    kb / 1024
}

/// The guest reports at least 75% of the memory asked for (the kernel keeps
/// the rest), and never more.
fn assert_memory(o: &Outcome, asked_mib: u64) {
    let seen = mem_total_mib(o);
    assert!(
        seen <= asked_mib && seen * 4 >= asked_mib * 3,
        "MemTotal {seen} MiB is not close to --memory {asked_mib}M\n{}",
        o.dump()
    );
}

const PROBE: &str = "echo nproc: $(nproc); echo cpuinfo: $(grep -c ^processor /proc/cpuinfo); \
                     grep MemTotal /proc/meminfo; echo cmdline: $(cat /proc/cmdline); \
                     echo clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)";

#[test]
fn one_vcpu_memory_cmdline_and_exit_status() {
    let script = format!("{PROBE}; exit 3");
    let o = run_guest(&[
        "--cpus",
        "1",
        "--memory",
        "256M",
        "--cmdline",
        "vireo.test=xyz",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    // `sh -c 'exit 3'` in the guest: vireo exits 3.
    o.assert_code(3);
    assert_eq!(o.value("nproc:"), "1", "{}", o.dump());
    assert_eq!(o.value("cpuinfo:"), "1", "{}", o.dump());
    assert_memory(&o, 256);
    let cmdline = o.value("cmdline:");
    assert!(
        cmdline.split_whitespace().any(|w| w == "vireo.test=xyz"),
        "--cmdline missing from /proc/cmdline\n{}",
        o.dump()
    );
}

/// Two vCPUs, and 3.5 GiB of memory: more than fits below the 32-bit hole
/// (3 GiB), so the guest only sees it all if RAM continues at 4 GiB.
#[test]
fn two_vcpus_memory_above_the_hole_and_kvm_clock() {
    let o = run_guest(&["--cpus", "2", "--memory", "3584M", "--", "sh", "-c", PROBE]);
    o.assert_code(0);
    assert_eq!(o.value("nproc:"), "2", "{}", o.dump());
    assert_eq!(o.value("cpuinfo:"), "2", "{}", o.dump());
    assert_memory(&o, 3584);
    assert_eq!(o.value("clocksource:"), "kvm-clock", "{}", o.dump());
}

#[test]
fn poweroff_exits_zero() {
    run_guest(&["--", "poweroff", "-f"]).assert_code(0);
}

#[test]
fn reboot_exits_zero() {
    run_guest(&["--", "reboot", "-f"]).assert_code(0);
}

#[test]
fn guest_panic_exits_nonzero_with_a_clear_line() {
    // The console goes to a file here, which also checks --console file=.
    let console = std::env::temp_dir().join(format!("vireo-panic-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&console);
    let console_arg = format!("file={}", console.display());
    let o = run_guest(&[
        "--console",
        &console_arg,
        "--",
        "sh",
        "-c",
        "echo panicking now; echo c > /proc/sysrq-trigger",
    ]);
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    assert!(
        matches!(o.code, Some(c) if c != 0),
        "a panic must not exit 0\n{}",
        o.dump()
    );
    assert!(
        o.stderr
            .lines()
            .any(|l| l.starts_with("vireo:") && l.contains("panic")),
        "no line on stderr says the guest panicked\n{}",
        o.dump()
    );
    assert!(
        log.contains("panicking now") && log.contains("Kernel panic"),
        "the console file lacks the guest's output\n{log}\n{}",
        o.dump()
    );
    assert!(
        !o.stdout.contains("panicking now"),
        "console output leaked to stdout\n{}",
        o.dump()
    );
}

/// SIGTERM while the guest runs ends vireo promptly with a failure status,
/// and leaves no QEMU (or other child) running.
#[test]
fn sigterm_stops_vireo_and_leaves_no_children() {
    // Build what the run needs first, so the signal lands while the VM (or
    // the rig's QEMU) runs and not during a first-use download.
    guest::ensure_default_guest().expect("default guest");
    if matches!(rig::probe_host_kvm(), rig::HostKvm::Unusable(_)) {
        rig::l1::ensure_base().expect("rig L1 image");
    }
    let (o, children) = vireo_signalled(
        &["run", "--", "sleep", "600"],
        BOOT_TIMEOUT,
        Duration::from_secs(8),
        libc::SIGTERM,
    );
    assert!(
        o.code != Some(0),
        "SIGTERM must not look like success\n{}",
        o.dump()
    );
    assert!(
        o.elapsed < Duration::from_secs(60),
        "vireo took {:?} to stop\n{}",
        o.elapsed,
        o.dump()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in children {
        while is_running(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !is_running(pid),
            "child {pid} of vireo survived it\n{}",
            o.dump()
        );
    }
}
