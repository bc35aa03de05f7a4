//! virtio-rng and rate limits through `vireo run`: the stock guest's
//! virtio_rng driver registers /dev/hwrng and reads host entropy from it;
//! a rate-limited entropy device and a rate-limited disk (the one token
//! bucket every device shares) are measurably slower than unlimited ones.
//! One boot checks all of it.

mod common;

use std::path::Path;

use common::run_guest;

/// Seconds (with hundredths) of the guest's uptime, read before and after
/// `cmd`, printed as `key: SECONDS`.
fn timed(key: &str, cmd: &str) -> String {
    format!(
        "t0=$(cut -d' ' -f1 /proc/uptime); {cmd}; t1=$(cut -d' ' -f1 /proc/uptime); \
         echo {key}: $t0 $t1; "
    )
}

fn elapsed(value: &str) -> f64 {
    let v: Vec<f64> = value
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    v[1] - v[0]
}

#[test]
fn hwrng_reads_host_entropy_and_rate_limits_slow_devices_down() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("rng-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (fast, slow) = (dir.join("fast.img"), dir.join("slow.img"));
    for img in [&fast, &slow] {
        std::fs::write(img, vec![0x33u8; 8 << 20]).unwrap();
    }
    let hex = "od -An -tx1 | tr -d ' \\n'";
    let script = format!(
        "echo rng-current: $(cat /sys/class/misc/hw_random/rng_current); \
         echo rng-a: $(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | {hex}); \
         echo rng-b: $(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | {hex}); \
         {}{}{}\
         echo rng-bytes: $(dd if=/dev/hwrng bs=512 count=16 2>/dev/null | wc -c)",
        timed(
            "disk-fast",
            "dd if=/dev/vda of=/dev/null bs=1M count=6 iflag=direct 2>/dev/null"
        ),
        timed(
            "disk-slow",
            "dd if=/dev/vdb of=/dev/null bs=1M count=6 iflag=direct 2>/dev/null"
        ),
        timed(
            "rng-slow",
            "dd if=/dev/hwrng of=/dev/null bs=512 count=16 2>/dev/null"
        ),
    );
    let fast_disk = format!("path={}", fast.display());
    let slow_disk = format!("path={},rate=2M", slow.display());
    let o = run_guest(&[
        "--disk", &fast_disk, "--disk", &slow_disk, "--rng", "rate=2K", "--", "sh", "-c", &script,
    ]);
    o.assert_code(0);
    assert_eq!(o.value("rng-current:"), "virtio_rng.0", "{}", o.dump());
    let (a, b) = (o.value("rng-a:"), o.value("rng-b:"));
    assert_eq!(a.len(), 128, "64 bytes from /dev/hwrng\n{}", o.dump());
    assert_ne!(a, b, "two reads of /dev/hwrng gave the same bytes");
    assert_ne!(a, "00".repeat(64), "{}", o.dump());
    assert_eq!(o.value("rng-bytes:"), "8192", "{}", o.dump());

    // 6 MiB at 2 MiB/s with a 2 MiB bucket: at least 2 s of refills.
    let fast_s = elapsed(o.value("disk-fast:"));
    let slow_s = elapsed(o.value("disk-slow:"));
    assert!(
        slow_s > fast_s && slow_s >= 1.9,
        "rate-limited disk took {slow_s:.2} s, unlimited {fast_s:.2} s\n{}",
        o.dump()
    );
    // 8 KiB at 2 KiB/s with a 2 KiB bucket, after 128 bytes: about 3 s.
    let rng_s = elapsed(o.value("rng-slow:"));
    assert!(
        rng_s >= 2.5,
        "8 KiB from a 2 KiB/s entropy device took {rng_s:.2} s\n{}",
        o.dump()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
