//! The Firecracker-compatible API, natively on this host's /dev/kvm with
//! the minimal PVH guest (a few hundred bytes the bench crate builds, which
//! even a PVM-backed KVM runs): the process model (socket served before
//! any guest, configure, InstanceStart), the state errors, pause and
//! resume (a paused guest prints nothing), stalled and concurrent clients
//! while the VM runs, `vireo ctl`, and `--no-api --config-file`.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::client::{request, Reply};
use common::QUICK_TIMEOUT;

const MARKER: &str = "VIREO-BENCH-MARKER";
const T: Duration = Duration::from_secs(20);

fn have_kvm() -> bool {
    let ok = Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("skipped: this host has no /dev/kvm");
    }
    ok
}

fn scratch(name: &str) -> PathBuf {
    let p =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// The minimal guest made to print its marker for ever: the reset at its
/// end becomes a short delay loop and a jump back to the start.
fn looping_guest() -> PathBuf {
    let mut elf = bench::minimal_guest_elf();
    // done: mov al, 0xfe; out 0x64, al; hlt; jmp halt
    let tail = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];
    let at = (0..elf.len() - tail.len())
        .find(|&i| elf[i..i + tail.len()] == tail)
        .expect("the guest's reset sequence");
    // mov ecx, 0x100000; loop $; jmp <code + 1> (the `mov esi, msg`).
    let new = [0xb9, 0x00, 0x00, 0x10, 0x00, 0xe2, 0xfe, 0xeb, 0xe4];
    elf[at..at + new.len()].copy_from_slice(&new);
    let p = scratch("looping.elf");
    std::fs::write(&p, &elf).unwrap();
    p
}

fn minimal_guest() -> PathBuf {
    let p = scratch("minimal.elf");
    std::fs::write(&p, bench::minimal_guest_elf()).unwrap();
    p
}

/// A `vireo --api-sock` process, killed when dropped.
struct Vmm {
    child: std::process::Child,
    sock: PathBuf,
    /// VMs take turns (see `common::vm_turn`); released after the child.
    _turn: common::Turn,
}

impl Vmm {
    fn start(name: &str) -> Vmm {
        Vmm::start_with(name, &["--emulate=never"])
    }

    fn start_with(name: &str, extra: &[&str]) -> Vmm {
        let turn = common::vm_turn();
        let sock = scratch(&format!("{name}.sock"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_vireo"))
            .args(["--api-sock", sock.to_str().unwrap(), "--id", name])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start vireo");
        let deadline = Instant::now() + QUICK_TIMEOUT;
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "the API socket never accepted");
            std::thread::sleep(Duration::from_millis(5));
        }
        Vmm {
            child,
            sock,
            _turn: turn,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        request(&self.sock, method, path, body, T)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn ok(&self, method: &str, path: &str, body: &str) {
        let r = self.call(method, path, Some(body));
        assert_eq!(r.status, 204, "{method} {path} {body}: {}", r.body);
    }

    /// Expect 400 with a fault message containing `needle`.
    fn refused(&self, method: &str, path: &str, body: Option<&str>, needle: &str) {
        let r = self.call(method, path, body);
        assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let msg = j["fault_message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{method} {path}: {msg}");
    }

    /// PUT /boot-source and /serial: `kernel`, console output to `console`.
    fn boot_source(&self, kernel: &Path, console: &Path) {
        self.ok(
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
        );
        self.ok(
            "PUT",
            "/serial",
            &format!(r#"{{"serial_out_path": "{}"}}"#, console.display()),
        );
    }

    fn state(&self) -> String {
        let r = self.call("GET", "/", None);
        assert_eq!(r.status, 200);
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        j["state"].as_str().unwrap().to_string()
    }

    /// SIGTERM, and the exit status.
    fn stop(self) -> Option<i32> {
        // SAFETY: signalling our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait(T)
    }

    /// Wait for the process to end by itself; its exit status.
    fn wait(mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                Instant::now() < deadline,
                "vireo did not end in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Wait until the console file grows past `than`.
fn grows(p: &Path, than: u64) -> bool {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if size(p) > than {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A tap for one test, removed at the end.
struct Tap(String);

impl Tap {
    fn new() -> Tap {
        let name = format!("vapi{}", std::process::id() % 100_000);
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = std::process::Command::new("ip")
            .args(["tuntap", "add", &name, "mode", "tap"])
            .status()
            .expect("iproute2's ip");
        assert!(ok.success(), "cannot make tap {name}");
        Tap(name)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

#[test]
fn configure_start_pause_resume_and_state_errors() {
    if !have_kvm() {
        return;
    }
    let log = scratch("lifecycle.log");
    let metrics = scratch("lifecycle.metrics");
    let vmm = Vmm::start_with(
        "lifecycle",
        &[
            "--emulate=never",
            "--log-path",
            log.to_str().unwrap(),
            "--level",
            "Debug",
            "--show-level",
            "--metrics-path",
            metrics.to_str().unwrap(),
        ],
    );
    let console = scratch("lifecycle.console");
    let kernel = looping_guest();

    // Before boot.
    assert_eq!(vmm.state(), "Not started");
    vmm.refused(
        "PATCH",
        "/vm",
        Some(r#"{"state": "Paused"}"#),
        "before starting",
    );
    vmm.refused(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "boot source",
    );
    vmm.refused(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 0, "mem_size_mib": 64}"#),
        "vcpu_count",
    );
    vmm.refused(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": 3}"#),
        "kernel_image_path",
    );
    vmm.refused("PUT", "/nothing-here", Some("{}"), "Invalid request");
    vmm.boot_source(&kernel, &console);
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
    );
    let disk_a = scratch("lifecycle-a.img");
    let disk_b = scratch("lifecycle-b.img");
    std::fs::write(&disk_a, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&disk_b, vec![0u8; 2 << 20]).unwrap();
    vmm.ok(
        "PUT",
        "/drives/data",
        &format!(
            r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
            disk_a.display()
        ),
    );
    // A NIC on a tap made here; PATCH is for a running VM (Firecracker's
    // "post-boot only").
    let tap = Tap::new();
    vmm.ok(
        "PUT",
        "/network-interfaces/eth0",
        &format!(
            r#"{{"iface_id": "eth0", "host_dev_name": "{}",
                 "tx_rate_limiter": {{"bandwidth": {{"size": 100000, "refill_time": 1000}}}}}}"#,
            tap.0
        ),
    );
    vmm.refused(
        "PATCH",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 50, "refill_time": 1000}}}"#),
        "running VM",
    );
    let cfg = vmm.call("GET", "/vm/config", None);
    assert!(cfg.body.contains("\"vcpu_count\":2"), "{}", cfg.body);

    // Boot.
    vmm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(vmm.state(), "Running");
    let deadline = Instant::now() + T;
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains(MARKER)
    {
        assert!(
            Instant::now() < deadline,
            "no marker on the console after InstanceStart"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // After boot: pre-boot resources and a second start are refused.
    vmm.refused(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "after starting",
    );
    vmm.refused(
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path": "{}"}}"#,
            kernel.display()
        )),
        "after starting",
    );

    // A running VM's drive gets a new backing file; a missing one is
    // refused and changes nothing.
    vmm.ok(
        "PATCH",
        "/drives/data",
        &format!(
            r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
            disk_b.display()
        ),
    );
    let cfg = vmm.call("GET", "/vm/config", None);
    assert!(cfg.body.contains("lifecycle-b.img"), "{}", cfg.body);
    vmm.refused(
        "PATCH",
        "/drives/data",
        Some(r#"{"drive_id": "data", "path_on_host": "/nonexistent/x.img"}"#),
        "cannot open",
    );
    vmm.refused(
        "PATCH",
        "/drives/nope",
        Some(r#"{"drive_id": "nope", "path_on_host": "/tmp/x"}"#),
        "does not exist",
    );

    // The running NIC's limiters change (the device takes them at once;
    // devices/src/virtio/net/tests.rs shows their effect on traffic); a
    // bucket a PATCH leaves out stays.
    vmm.ok(
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 50, "refill_time": 1000}}}"#,
    );
    let cfg = vmm.call("GET", "/vm/config", None);
    let v: serde_json::Value = serde_json::from_str(&cfg.body).unwrap();
    let tx = &v["network-interfaces"][0]["tx_rate_limiter"];
    assert_eq!(tx["bandwidth"]["size"], 100000, "{}", cfg.body);
    assert_eq!(tx["ops"]["size"], 50, "{}", cfg.body);
    vmm.ok(
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 5000, "refill_time": 100}},
            "tx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#,
    );
    let cfg = vmm.call("GET", "/vm/config", None);
    let v: serde_json::Value = serde_json::from_str(&cfg.body).unwrap();
    let nic = &v["network-interfaces"][0];
    assert_eq!(
        nic["rx_rate_limiter"]["bandwidth"]["size"], 5000,
        "{}",
        cfg.body
    );
    assert_eq!(
        nic["tx_rate_limiter"]["bandwidth"]["size"], 0,
        "{}",
        cfg.body
    );
    assert_eq!(nic["tx_rate_limiter"]["ops"]["size"], 50, "{}", cfg.body);
    vmm.refused(
        "PATCH",
        "/network-interfaces/eth9",
        Some(r#"{"iface_id": "eth9", "rx_rate_limiter": {}}"#),
        "does not exist",
    );

    // Pause: the guest stops printing; resume: it goes on.
    for _ in 0..2 {
        vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
        assert_eq!(vmm.state(), "Paused");
        let at_pause = size(&console);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(size(&console), at_pause, "a paused guest printed");
        // Pausing twice is fine.
        vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
        vmm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
        assert_eq!(vmm.state(), "Running");
        assert!(grows(&console, at_pause), "a resumed guest printed nothing");
    }

    // `vireo ctl` drives the same socket.
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--api-sock", vmm.sock.to_str().unwrap()];
        all.extend_from_slice(args);
        common::vireo(&all, QUICK_TIMEOUT)
    };
    let info = ctl(&["info"]);
    info.assert_code(0);
    assert!(info.stdout.contains("\"Running\""), "{}", info.dump());
    ctl(&["pause"]).assert_code(0);
    assert_eq!(vmm.state(), "Paused");
    ctl(&["resume"]).assert_code(0);
    let again = ctl(&["start"]);
    again.assert_code(1);
    assert!(again.stderr.contains("after starting"), "{}", again.dump());

    // Metrics on FlushMetrics: one JSON object per line.
    vmm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let lines = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(last["vmm"]["state"], "Running", "{lines}");
    assert!(
        last["api_server"]["requests"].as_u64().unwrap() > 10,
        "{lines}"
    );
    // Requests refused in the VMM (state errors); malformed ones are
    // answered by the API thread itself.
    assert!(
        last["api_server"]["faults"].as_u64().unwrap() >= 4,
        "{lines}"
    );

    // SIGTERM ends it like `vireo run`, and the socket goes away.
    let sock = vmm.sock.clone();
    assert_eq!(vmm.stop(), Some(128 + libc::SIGTERM));
    assert!(!sock.exists(), "the API socket was left behind");
    // The log has the lifecycle and, at Debug, each request.
    let text = std::fs::read_to_string(&log).unwrap();
    for needle in [
        ":INFO] API server listening on",
        ":INFO] the microVM started",
        ":DEBUG] API request PatchVm",
        ":INFO] VM ended: Signal(15)",
        "[lifecycle:",
    ] {
        assert!(text.contains(needle), "no {needle:?} in the log:\n{text}");
    }
    // A final metrics line when the VM ended.
    assert!(std::fs::read_to_string(&metrics).unwrap().lines().count() >= 2);
}

#[test]
fn stalled_and_concurrent_clients_while_the_vm_runs() {
    if !have_kvm() {
        return;
    }
    let vmm = Vmm::start("clients");
    let kernel = looping_guest();
    let console = scratch("clients.console");
    vmm.boot_source(&kernel, &console);
    vmm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);

    // A client that sends half a request and stalls, one that sends
    // garbage, and idle keep-alive connections.
    let mut stalled = UnixStream::connect(&vmm.sock).unwrap();
    stalled
        .write_all(b"PATCH /vm HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"sta")
        .unwrap();
    let mut garbage = UnixStream::connect(&vmm.sock).unwrap();
    garbage.write_all(&[0xff; 300]).unwrap();
    let idle: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&vmm.sock).unwrap())
        .collect();

    // Meanwhile many clients at once are all served.
    let sock = vmm.sock.clone();
    let workers: Vec<_> = (0..16)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let r = if i % 2 == 0 {
                        request(&sock, "GET", "/", None, T).unwrap()
                    } else {
                        request(&sock, "GET", "/machine-config", None, T).unwrap()
                    };
                    assert_eq!(r.status, 200, "{}", r.body);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // A body over the limit is refused; the VM keeps running.
    let big = format!(r#"{{"kernel_image_path": "{}"}}"#, "x".repeat(60_000));
    let r = vmm.call("PUT", "/boot-source", Some(&big));
    assert!(
        r.status == 413 || r.status == 400,
        "{}: {}",
        r.status,
        r.body
    );
    assert_eq!(vmm.state(), "Running");
    let before = size(&console);
    assert!(
        grows(&console, before),
        "the guest stopped while clients misbehaved"
    );
    drop((stalled, garbage, idle));
}

#[test]
fn config_file_without_api_boots_and_exits_with_the_guest() {
    if !have_kvm() {
        return;
    }
    let kernel = minimal_guest();
    let console = scratch("file.console");
    let cfg = scratch("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}},
                "serial": {{"serial_out_path": "{}"}}}}"#,
            kernel.display(),
            console.display()
        ),
    )
    .unwrap();
    let o = common::vireo(
        &[
            "--no-api",
            "--config-file",
            cfg.to_str().unwrap(),
            "--emulate=never",
        ],
        QUICK_TIMEOUT,
    );
    // The minimal guest prints its marker and resets: exit status 0.
    o.assert_code(0);
    assert!(std::fs::read_to_string(&console).unwrap().contains(MARKER));

    // Bad process input: one clear line each.
    let o = common::vireo(&["--no-api"], QUICK_TIMEOUT);
    assert_eq!(o.code, Some(1), "{}", o.dump());
    assert!(o.stderr.contains("--config-file"), "{}", o.dump());
    std::fs::write(
        &cfg,
        r#"{"boot-source": {"kernel_image_path": "/k"}, "cpus": 3}"#,
    )
    .unwrap();
    let o = common::vireo(
        &["--no-api", "--config-file", cfg.to_str().unwrap()],
        QUICK_TIMEOUT,
    );
    assert_eq!(o.code, Some(1), "{}", o.dump());
    assert!(o.stderr.contains("cpus"), "{}", o.dump());
    // An existing socket path is refused, not reused.
    let taken = scratch("taken.sock");
    std::fs::write(&taken, "").unwrap();
    let o = common::vireo(&["--api-sock", taken.to_str().unwrap()], QUICK_TIMEOUT);
    assert_eq!(o.code, Some(1), "{}", o.dump());
    assert!(o.stderr.contains("exists"), "{}", o.dump());
}

/// Uptime lines the guest printed (its clock, in seconds).
fn uptimes(console: &Path) -> Vec<f64> {
    std::fs::read_to_string(console)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("up "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn wait_uptimes(console: &Path, n: usize, timeout: Duration) -> Vec<f64> {
    let deadline = Instant::now() + timeout;
    loop {
        let u = uptimes(console);
        if u.len() >= n {
            return u;
        }
        assert!(
            Instant::now() < deadline,
            "only {} uptime lines after {timeout:?}",
            u.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PUT the default guest running `script` (boot args `extra` added),
/// 1 vCPU and 256 MiB, its console to `console`.
fn put_stock_guest(vmm: &Vmm, script: &str, extra: &str, console: &Path) {
    let g = guest::ensure_default_guest().expect("default guest");
    let cmd = guest::command_param(&["sh".into(), "-c".into(), script.into()]);
    vmm.ok(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "initrd_path": "{}",
                 "boot_args": "console=ttyS0 reboot=k panic=1 {extra}quiet {cmd}"}}"#,
            g.kernel.display(),
            g.initrd.display()
        ),
    );
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 256}"#,
    );
    vmm.ok(
        "PUT",
        "/serial",
        &format!(r#"{{"serial_out_path": "{}"}}"#, console.display()),
    );
}

/// InstanceStart, which on the rig's path waits for the L1 machine.
fn start_instance(vmm: &Vmm) {
    let t0 = Instant::now();
    let start = request(
        &vmm.sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        common::BOOT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(start.status, 204, "{}", start.body);
    eprintln!("InstanceStart answered after {:.1?}", t0.elapsed());
}

/// A stock Debian guest (the default guest) driven through the API on
/// whichever path this host needs (here: the nested rig, with the socket on
/// the host and requests relayed into L1), in Firecracker's getting-started
/// shape: boot args with `pci=off` and a root drive, which the guest's
/// stock virtio_mmio driver finds through ACPI. Configure, start, read the
/// console (the drive's file, and the transport it came through), pause
/// (the console and the guest's clock stop), resume, and Ctrl-Alt-Del,
/// after which the guest reboots and Vireo exits 0.
#[test]
fn a_stock_guest_through_the_api_pauses_with_its_clock_and_reboots_on_ctrl_alt_del() {
    common::announce_path();
    // Built (on first use) before the VMM starts.
    guest::ensure_default_guest().expect("default guest");
    let vmm = Vmm::start_with("stock", &[]);
    let console = scratch("stock.console");
    let dir = scratch("rootfs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = common::ext4_image(&dir, 16, &[("hello", "hello from the root drive")]);
    // Exit status 7 if the loop ever ends: Ctrl-Alt-Del must end it first.
    let script = "mkdir -p /mnt; mount -t ext4 /dev/vda /mnt && cat /mnt/hello; echo; \
                  echo dev $(readlink -f /sys/block/vda); \
                  i=0; while [ $i -lt 600 ]; do echo up $(cut -d' ' -f1 /proc/uptime); \
                  sleep 0.3; i=$((i+1)); done; exit 7";
    put_stock_guest(&vmm, script, "pci=off ", &console);
    vmm.ok(
        "PUT",
        "/drives/rootfs",
        &format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true,
                 "is_read_only": false}}"#,
            rootfs.display()
        ),
    );
    start_instance(&vmm);
    assert_eq!(vmm.state(), "Running");
    wait_uptimes(&console, 3, common::BOOT_TIMEOUT);
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(text.contains("hello from the root drive"), "{text}");
    // The drive came through virtio-mmio, described by ACPI (LNRO0005).
    let dev = text
        .lines()
        .find_map(|l| l.strip_prefix("dev "))
        .unwrap_or_default();
    assert!(dev.contains("LNRO0005"), "vda is not on virtio-mmio: {dev}");

    vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(vmm.state(), "Paused");
    let before = uptimes(&console);
    let paused = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(uptimes(&console), before, "a paused guest printed");
    vmm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let pause_len = paused.elapsed().as_secs_f64();
    let after = wait_uptimes(&console, before.len() + 2, common::BOOT_TIMEOUT);
    let (last_before, first_after) = (before[before.len() - 1], after[before.len()]);
    // The guest's clock stood still while paused: the step across the
    // pause is about one loop turn, not the pause's length.
    assert!(
        first_after - last_before < pause_len - 1.0,
        "the guest's clock ran on during a {pause_len:.1}s pause: {last_before} -> {first_after}"
    );
    // Ctrl-Alt-Del reaches the guest's keyboard: the kernel reboots
    // (reboot=k), which ends the VM with status 0.
    // `vireo ctl shutdown` sends it and waits for the VMM to be gone.
    let sock = vmm.sock.to_str().unwrap().to_string();
    let down = common::vireo(
        &["ctl", "--api-sock", &sock, "shutdown"],
        common::BOOT_TIMEOUT,
    );
    down.assert_code(0);
    assert!(down.stdout.contains("stopped"), "{}", down.dump());
    assert_eq!(vmm.wait(common::BOOT_TIMEOUT), Some(0));
    assert!(
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .contains("reboot: Restarting system"),
        "the guest did not reboot"
    );
}

/// Firecracker's config-file boot without an API, on this host's path (the
/// nested rig here): the stock guest boots from the file, and its
/// command's exit status becomes Vireo's.
#[test]
fn a_config_file_boots_a_stock_guest_without_an_api() {
    common::announce_path();
    let g = guest::ensure_default_guest().expect("default guest");
    let console = scratch("nocfg.console");
    let cmd = guest::command_param(&[
        "sh".into(),
        "-c".into(),
        "echo from-config-file; exit 3".into(),
    ]);
    let cfg = scratch("stock-vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}",
                                  "boot_args": "console=ttyS0 reboot=k panic=1 quiet {cmd}"}},
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 256}},
                "serial": {{"serial_out_path": "{}"}}}}"#,
            g.kernel.display(),
            g.initrd.display(),
            console.display()
        ),
    )
    .unwrap();
    let o = common::vireo(
        &["--no-api", "--config-file", cfg.to_str().unwrap()],
        common::BOOT_TIMEOUT,
    );
    o.assert_code(3);
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(text.contains("from-config-file"), "{text}\n{}", o.dump());
}

/// A stock guest with a balloon through the API (the nested rig here)
/// that fills 120 MiB of its memory (resident on the host), frees it and
/// then prints its MemTotal (see `fill_then_report`); returns the VMM, its
/// console file and the guest RAM resident when the guest was full.
fn balloon_guest(name: &str, balloon: &str) -> (Vmm, PathBuf, u64) {
    common::announce_path();
    guest::ensure_default_guest().expect("default guest");
    let vmm = Vmm::start_with(name, &[]);
    let console = scratch(&format!("{name}.console"));
    put_stock_guest(&vmm, &fill_then_report(120), "", &console);
    vmm.ok("PUT", "/balloon", balloon);
    start_instance(&vmm);
    wait_console(&console, "FILLED");
    let filled = vmm.guest_resident();
    assert!(
        filled > 120 * MIB,
        "guest RAM resident after filling: {filled}"
    );
    wait_console(&console, "FREED");
    (vmm, console, filled)
}

/// The guest fills a tmpfs with `mib` MiB, so those pages are resident
/// on the host, then frees them; then it prints its MemTotal (KiB) every
/// half second as "mem N".
fn fill_then_report(mib: u32) -> String {
    format!(
        "mkdir -p /mnt/f; mount -t tmpfs -o size=220m tmpfs /mnt/f; \
         dd if=/dev/zero of=/mnt/f/x bs=1M count={mib} 2>/dev/null; echo FILLED; sleep 4; \
         rm /mnt/f/x; echo FREED; \
         while :; do echo mem $(sed -n 's/^MemTotal: *\\([0-9]*\\).*/\\1/p' /proc/meminfo); sleep 0.5; done"
    )
}

fn wait_console(console: &Path, marker: &str) {
    let deadline = Instant::now() + common::BOOT_TIMEOUT;
    while !std::fs::read_to_string(console)
        .unwrap_or_default()
        .contains(marker)
    {
        assert!(Instant::now() < deadline, "no {marker:?} on the console");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The guest's last printed MemTotal, in KiB.
fn guest_mem_total(console: &Path) -> u64 {
    std::fs::read_to_string(console)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("mem "))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

impl Vmm {
    fn json(&self, path: &str) -> serde_json::Value {
        let r = self.call("GET", path, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    fn guest_resident(&self) -> u64 {
        self.json("/vm/memory")["guest_resident"].as_u64().unwrap()
    }

    /// Wait until the balloon's actual size (as the guest reports it) is
    /// `mib`.
    fn wait_balloon(&self, mib: u64) {
        let deadline = Instant::now() + common::BOOT_TIMEOUT;
        loop {
            let s = self.json("/balloon/statistics");
            if s["actual_mib"].as_u64() == Some(mib) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "balloon never reached {mib} MiB: {s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

const MIB: u64 = 1 << 20;

/// Inflating the balloon gives the guest's pages back to the host (the
/// VMM's resident guest RAM falls by about the balloon's size) and takes
/// them from the guest (its MemTotal falls to match); the statistics agree
/// with the guest's own numbers; deflating returns the memory; a target
/// larger than the VM is refused with the VM unharmed.
#[test]
fn the_balloon_inflates_and_deflates_a_stock_guest() {
    let (vmm, console, _) = balloon_guest(
        "balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1}"#,
    );
    std::thread::sleep(Duration::from_secs(1));
    let total_before = guest_mem_total(&console);
    let resident_before = vmm.guest_resident();

    vmm.ok("PATCH", "/balloon", r#"{"amount_mib": 80}"#);
    vmm.wait_balloon(80);
    std::thread::sleep(Duration::from_secs(2));
    let resident_after = vmm.guest_resident();
    let total_after = guest_mem_total(&console);
    eprintln!(
        "balloon 80 MiB: guest RAM resident {} -> {} MiB, guest MemTotal {} -> {} MiB",
        resident_before / MIB,
        resident_after / MIB,
        total_before / 1024,
        total_after / 1024
    );
    assert!(
        resident_before.saturating_sub(resident_after) >= 64 * MIB,
        "inflating by 80 MiB released only {} MiB",
        resident_before.saturating_sub(resident_after) / MIB
    );
    let dropped_kib = total_before.saturating_sub(total_after);
    assert!(
        (78 * 1024..=82 * 1024).contains(&dropped_kib),
        "guest MemTotal fell by {dropped_kib} KiB for an 80 MiB balloon"
    );
    // The statistics are the guest's: its total memory, as it printed it.
    let stats = vmm.json("/balloon/statistics");
    let st_total = stats["total_memory"].as_u64().unwrap();
    assert!(
        st_total.abs_diff(total_after * 1024) <= 2 * MIB,
        "statistics total {st_total} vs the guest's MemTotal {total_after} KiB: {stats}"
    );
    assert!(stats["free_memory"].as_u64().is_some(), "{stats}");
    assert_eq!(stats["target_mib"].as_u64(), Some(80), "{stats}");
    assert_eq!(vmm.json("/balloon")["amount_mib"].as_u64(), Some(80));
    let mem = vmm.json("/vm/memory");
    assert_eq!(mem["guest_ram"].as_u64(), Some(256 * MIB), "{mem}");
    assert_eq!(mem["balloon_actual"].as_u64(), Some(80 * MIB), "{mem}");
    assert!(mem["vmm_overhead"].as_u64().unwrap() > 0, "{mem}");

    // Bad targets: refused, the balloon unchanged.
    vmm.refused(
        "PATCH",
        "/balloon",
        Some(r#"{"amount_mib": 300}"#),
        "larger than",
    );
    vmm.refused(
        "PATCH",
        "/balloon/statistics",
        Some(r#"{"stats_polling_interval_s": 0}"#),
        "cannot be turned off",
    );
    assert_eq!(vmm.json("/balloon")["amount_mib"].as_u64(), Some(80));

    // Deflating gives the guest its memory back.
    vmm.ok("PATCH", "/balloon", r#"{"amount_mib": 0}"#);
    vmm.wait_balloon(0);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(guest_mem_total(&console), total_before);
    vmm.stop();
}

/// With free page reporting, memory the guest frees goes back to the host
/// by itself, without any balloon target.
#[test]
fn free_page_reporting_returns_freed_guest_memory() {
    let (vmm, _, filled) = balloon_guest(
        "reporting",
        r#"{"amount_mib": 0, "deflate_on_oom": true, "free_page_reporting": true}"#,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = vmm.guest_resident();
        if filled.saturating_sub(now) >= 96 * MIB {
            eprintln!(
                "free page reporting: guest RAM resident {} -> {} MiB",
                filled / MIB,
                now / MIB
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "freed 120 MiB in the guest; resident guest RAM only went {} -> {} MiB",
            filled / MIB,
            now / MIB
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = vmm.call("GET", "/balloon/statistics", None);
    assert_eq!(r.status, 400, "statistics are off here: {}", r.body);
    vmm.stop();
}

/// Guest RAM on 2 MiB hugetlb pages (Firecracker's `huge_pages: "2M"`):
/// on the rig's path L1 reserves them; the stock guest boots on them and
/// the VM's memory accounting shows them.
#[test]
fn a_stock_guest_boots_on_huge_pages() {
    common::announce_path();
    guest::ensure_default_guest().expect("default guest");
    let vmm = Vmm::start_with("huge", &[]);
    let console = scratch("huge.console");
    put_stock_guest(&vmm, "echo HUGE-UP; sleep 600", "", &console);
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 256, "huge_pages": "2M"}"#,
    );
    start_instance(&vmm);
    wait_console(&console, "HUGE-UP");
    let mem = vmm.json("/vm/memory");
    let huge = mem["guest_huge_pages"].as_u64().unwrap();
    let resident = mem["guest_resident"].as_u64().unwrap();
    eprintln!(
        "huge pages: {} MiB of guest RAM resident, all in 2 MiB pages: {}",
        resident / MIB,
        huge / MIB
    );
    assert!(huge >= 16 * MIB, "{mem}");
    assert_eq!(huge % (2 * MIB), 0, "{mem}");
    assert_eq!(huge, resident, "guest RAM not all in huge pages: {mem}");
    vmm.stop();
}
