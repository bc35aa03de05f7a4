//! The nested rig on its own, without booting a guest: L1 comes up with a
//! usable /dev/kvm, a dynamically linked program copied in with
//! `rig::add_executable` runs there, and the script's stdout, stderr and
//! exit status come back. About 5 s.

use std::time::Duration;

#[test]
fn l1_runs_a_copied_program_with_kvm_available() {
    let mut files = Vec::new();
    let vireo = std::path::Path::new(env!("CARGO_BIN_EXE_vireo"));
    rig::add_executable(&mut files, vireo, "/rig/bin/vireo-copy").expect("add_executable");
    assert!(
        files.len() > 1,
        "a dynamic binary brings its libraries: {files:?}"
    );

    let script = "test -c /dev/kvm && echo kvm: yes\n\
                  echo svm: $(grep -cw svm /proc/cpuinfo)\n\
                  /rig/bin/vireo-copy host\n\
                  echo to-the-log >&2\n\
                  exit 7\n";
    let out = rig::run_l1_script(script, &files, Duration::from_secs(240)).expect("L1 run");
    let dump = format!("{out:#?}");
    assert_eq!(out.exit_code, 7, "{dump}");
    assert!(out.stdout.contains("kvm: yes"), "{dump}");
    assert!(!out.stdout.contains("svm: 0"), "{dump}");
    // Inside L1, vireo's own probe sees hardware virtualization it can use.
    assert!(out.stdout.contains("direct:"), "{dump}");
    assert!(out.log.contains("to-the-log"), "{dump}");
    assert!(!out.log.contains("VIREO_RIG_EXIT"), "{dump}");
}

/// L1 dying (here: its kernel panics) is an error that shows the end of
/// L1's control log, not a hang or a made-up status.
#[test]
fn l1_death_is_reported_with_the_control_log_tail() {
    let err = rig::run_l1_script(
        "echo last words >&2; echo c > /proc/sysrq-trigger; sleep 60",
        &[],
        Duration::from_secs(240),
    )
    .expect_err("a panicking L1 cannot report a status");
    let msg = err.to_string();
    assert!(matches!(err, rig::RigError::NoMarker { .. }), "{msg}");
    assert!(msg.contains("Kernel panic"), "{msg}");
}

/// A run past its timeout is stopped, and its QEMU does not linger.
#[test]
fn timeout_stops_qemu() {
    let start = std::time::Instant::now();
    let err =
        rig::run_l1_script("sleep 600", &[], Duration::from_secs(2)).expect_err("must time out");
    assert!(matches!(err, rig::RigError::Timeout(_)), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
}
