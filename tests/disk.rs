//! virtio-blk through `vireo run --disk`: the stock guest kernel's own
//! virtio_pci and virtio_blk drivers read and write real image files that
//! the test makes. On a PVM host the boots go through the nested rig, which
//! hands each image to its L1 machine as a drive, so guest writes, flushes
//! and discards reach the host file the test inspects.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ext4_image, run_guest, vireo, QUICK_TIMEOUT};

fn scratch_dir(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("disk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Read a file out of an ext4 image on the host with debugfs.
fn debugfs_cat(img: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat /{file}")])
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn ext4_read_write_two_disks_serial_and_readonly() {
    let dir = scratch_dir("ext4");
    let img = ext4_image(&dir, 64, &[("greeting.txt", "hello from the host\n")]);
    let raw = dir.join("raw.img");
    std::fs::write(&raw, vec![0x5au8; 4 << 20]).unwrap();
    let raw_before = sha(&raw);
    let script = "mkdir -p /mnt; mount /dev/vda /mnt && cat /mnt/greeting.txt; \
        echo written-by-guest > /mnt/new.txt; umount /mnt; \
        echo serial-a: $(cat /sys/block/vda/serial); echo serial-b: $(cat /sys/block/vdb/serial); \
        echo ro-a: $(cat /sys/block/vda/ro); echo ro-b: $(cat /sys/block/vdb/ro); \
        echo first-b: $(dd if=/dev/vdb bs=4 count=1 2>/dev/null); \
        if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null; then echo write-b: ok; else echo write-b: refused; fi; \
        sync";
    let disk_a = format!("path={},id=data-a", img.display());
    let disk_b = format!("path={},readonly=on,id=data-b", raw.display());
    let o = run_guest(&[
        "--cpus", "2", "--disk", &disk_a, "--disk", &disk_b, "--", "sh", "-c", script,
    ]);
    o.assert_code(0);
    assert!(o.stdout.contains("hello from the host"), "{}", o.dump());
    assert_eq!(o.value("serial-a:"), "data-a", "{}", o.dump());
    assert_eq!(o.value("serial-b:"), "data-b", "{}", o.dump());
    assert_eq!(o.value("ro-a:"), "0", "{}", o.dump());
    assert_eq!(o.value("ro-b:"), "1", "{}", o.dump());
    assert_eq!(o.value("first-b:"), "ZZZZ", "{}", o.dump());
    assert_eq!(o.value("write-b:"), "refused", "{}", o.dump());
    // What the guest wrote is in the host file; the read-only image is untouched.
    assert_eq!(
        debugfs_cat(&img, "new.txt"),
        "written-by-guest\n",
        "{}",
        o.dump()
    );
    assert!(sha(&raw) == raw_before, "the read-only image changed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Data the guest flushed survives the VMM being SIGKILLed. (On the rig
/// path the kill takes the whole emulated L1 machine down with it, page
/// cache and all, so only data that was really flushed to the host file
/// can be found.)
#[test]
fn flushed_data_survives_sigkill() {
    let dir = scratch_dir("kill");
    let img = dir.join("raw.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let nonce = format!("VIREO-DURABLE-{}", std::process::id());
    let script = format!(
        "printf '%s' {nonce} > /tmp/p; dd if=/tmp/p of=/dev/vda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null \
         && echo FLUSHED-MARKER; sleep 600"
    );
    let disk = format!("path={}", img.display());
    let mut vm = common::spawn(&["run", "--disk", &disk, "--", "sh", "-c", &script]);
    vm.wait_for("FLUSHED-MARKER", common::BOOT_TIMEOUT);
    vm.stop_with(libc::SIGKILL, Duration::from_secs(10));
    // Give the rig's QEMU (PR_SET_PDEATHSIG) a moment to be gone too.
    std::thread::sleep(Duration::from_millis(500));
    let data = std::fs::read(&img).unwrap();
    let at = 2048 * 512;
    assert_eq!(
        &data[at..at + nonce.len()],
        nonce.as_bytes(),
        "flushed data missing from the host file after SIGKILL"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn discard_makes_the_image_sparse_again() {
    let dir = scratch_dir("discard");
    let img = dir.join("full.img");
    std::fs::write(&img, vec![0xabu8; 32 << 20]).unwrap();
    let before = std::fs::metadata(&img).unwrap().blocks();
    let disk = format!("path={}", img.display());
    let o = run_guest(&[
        "--disk", &disk, "--", "sh", "-c",
        "echo max-discard: $(cat /sys/block/vda/queue/discard_max_bytes); blkdiscard /dev/vda && sync && echo discarded",
    ]);
    o.assert_code(0);
    assert!(o.stdout.contains("discarded"), "{}", o.dump());
    let after = std::fs::metadata(&img).unwrap().blocks();
    assert!(
        after * 4 < before,
        "allocated 512-byte blocks went from {before} to {after}: discard did not punch holes\n{}",
        o.dump()
    );
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        32 << 20,
        "size must not change"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_disks_fail_at_start() {
    let dir = scratch_dir("bad");
    for (spec, needle) in [
        (
            "path=/nonexistent/disk.img".to_string(),
            "/nonexistent/disk.img",
        ),
        (
            format!("path={}", dir.display()),
            "not a regular file or block device",
        ),
        ("path=".to_string(), "path=FILE"),
    ] {
        let o = vireo(&["run", "--disk", &spec, "--", "true"], QUICK_TIMEOUT);
        assert_ne!(o.code, Some(0), "{}", o.dump());
        assert!(o.stderr.contains(needle), "{}", o.dump());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same disk through virtio-mmio: the guest finds the device in the
/// DSDT (LNRO0005, no `virtio_mmio.device=` argument), binds virtio_mmio
/// and virtio_blk, reads what the host wrote and writes what the host then
/// finds; once chosen with `--transport mmio`, once by `pci=off`.
#[test]
fn virtio_mmio_disk_by_flag_and_by_pci_off() {
    let dir = scratch_dir("mmio");
    let img = dir.join("raw.img");
    let mut data = vec![0u8; 4 << 20];
    data[..8].copy_from_slice(b"HOSTDATA");
    std::fs::write(&img, &data).unwrap();
    let script = "echo driver: $(basename $(readlink /sys/block/vda/device/driver)); \
        echo bus: $(basename $(readlink -f /sys/block/vda/device/..)); \
        echo first: $(dd if=/dev/vda bs=8 count=1 2>/dev/null); \
        printf GUESTMMIO | dd of=/dev/vda bs=512 seek=8 conv=notrunc,fsync 2>/dev/null; \
        echo pci-devices: $(ls /sys/bus/pci/devices 2>/dev/null | wc -l)";
    let disk = format!("path={},id=mmio-disk", img.display());
    for how in [
        &["--transport", "mmio"][..],
        &["--cmdline", "quiet pci=off"][..],
    ] {
        let mut args = how.to_vec();
        args.extend(["--disk", &disk, "--", "sh", "-c", script]);
        let o = run_guest(&args);
        o.assert_code(0);
        assert_eq!(o.value("driver:"), "virtio_blk", "{}", o.dump());
        assert!(o.value("bus:").starts_with("LNRO0005"), "{}", o.dump());
        assert_eq!(o.value("first:"), "HOSTDATA", "{}", o.dump());
        let written = std::fs::read(&img).unwrap();
        assert_eq!(&written[4096..4096 + 9], b"GUESTMMIO", "{}", o.dump());
        std::fs::write(&img, &data).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
