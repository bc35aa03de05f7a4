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

/// A drive given to L1 shows up as /rig/disk-N, and L1's writes reach the
/// host file (this is how `--disk` reaches the inner vireo).
#[test]
fn drives_reach_l1_and_writes_reach_the_host() {
    let img = std::env::temp_dir().join(format!("vireo-rig-drive-{}.img", std::process::id()));
    let mut data = b"from-the-host".to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&img, &data).unwrap();
    let run = rig::qemu::L1Run {
        script: "head -c 13 /rig/disk-0; echo\n\
                 printf from-L1 | dd of=/rig/disk-0 bs=512 seek=1 conv=notrunc,fsync 2>/dev/null\n"
            .into(),
        files: Vec::new(),
        timeout: Some(Duration::from_secs(240)),
        console: rig::qemu::Ttys0::Capture,
        guest_memory_mib: 0,
        cpus: 2,
        forward_log: false,
        drives: vec![rig::qemu::L1Drive {
            host: img.clone(),
            readonly: false,
        }],
        control: None,
        vsock_channel: None,
        nics: Vec::new(),
    };
    let out = rig::qemu::run_l1(&run);
    let after = std::fs::read(&img).unwrap();
    let _ = std::fs::remove_file(&img);
    let out = out.expect("L1 run");
    assert_eq!(out.exit_code, 0, "{out:#?}");
    assert!(out.stdout.contains("from-the-host"), "{out:#?}");
    assert_eq!(&after[512..519], b"from-L1", "{out:#?}");
}
