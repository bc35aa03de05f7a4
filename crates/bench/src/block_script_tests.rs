//! Tests for the block benchmark's guest script and L1 setup (the shared
//! suite script has its own tests); the shell runs under the host's busybox
//! (skipped without it).

use super::*;
use std::path::Path;
use std::process::Command;

use crate::suite_script::TEST_BUSYBOX as BUSYBOX;

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
    crate::suite_script::assert_sh_syntax(&s);
}

#[test]
fn l1_setup_creates_the_image() {
    if !Path::new(BUSYBOX).exists() {
        eprintln!("skipped: no {BUSYBOX}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vireo-blk-setup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let image = dir.join("disk image.img");
    let out = Command::new(BUSYBOX)
        .args(["sh", "-c", &l1_setup(&image.to_string_lossy(), 1)])
        .env("BB", BUSYBOX)
        .env("D", &dir)
        .output()
        .expect("busybox sh runs");
    let made = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(made, 1 << 20, "the setup creates the image");
}
