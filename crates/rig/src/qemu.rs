//! Running the L1 machine under QEMU TCG, and cleaning up after it.
//!
//! One run: write the combined initramfs to a private temp dir, start
//! `qemu-system-x86_64` with ttyS0 routed as asked and ttyS1 into a control
//! log file, wait for it (with an optional timeout) while forwarding
//! SIGINT/SIGTERM/SIGHUP as a kill of QEMU, then read the exit marker from
//! the control log. QEMU gets `PR_SET_PDEATHSIG` so it dies with us even if
//! we are killed with SIGKILL; the temp dir is removed on every path.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use guest::cache::{temp_dir_for, RemoveOnDrop};

use crate::l1::{ensure_base, write_combined, EXIT_MARKER};
use crate::{L1Output, RigError};

const QEMU: &str = "qemu-system-x86_64";

/// Where L1's ttyS0 (the script's stdout, the guest console) goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ttys0 {
    /// Our terminal, both ways (`-chardev stdio,signal=off`).
    Interactive,
    /// Forwarded to our stdout as it arrives.
    Forward,
    /// Collected into `L1Output::stdout`.
    Capture,
    /// Appended to a host file.
    File(PathBuf),
    /// Discarded.
    Off,
}

/// One L1 run.
#[derive(Clone, Debug)]
pub struct L1Run {
    /// Busybox `sh` script run as `/rig/run.sh` once /dev/kvm exists.
    pub script: String,
    /// (host path, absolute L1 path) pairs copied into L1.
    pub files: Vec<(PathBuf, String)>,
    pub timeout: Option<Duration>,
    pub console: Ttys0,
    /// Memory L1 must have free for the VMs it runs itself. L1 gets this
    /// plus 512 MiB plus twice the image size (the initramfs is held
    /// twice while it unpacks).
    pub guest_memory_mib: u64,
    /// L1 vCPUs (at least 2).
    pub cpus: u32,
    /// Forward control-log lines (the inner stderr) to our stderr live.
    pub forward_log: bool,
    /// Host files or block devices given to L1 as virtio-blk drives; drive
    /// N appears in L1 as `/rig/disk-N` (see [`l1_disk_path`]).
    pub drives: Vec<L1Drive>,
    /// A Unix socket, listening, that QEMU connects to as L1's ttyS2: a
    /// byte channel between the host and a program in L1 (the API relay).
    pub control: Option<PathBuf>,
    /// A Unix socket, listening, that QEMU connects to as L1's
    /// virtio-serial port `vireo.vsock`: the vsock relay's channel.
    pub vsock_channel: Option<PathBuf>,
    /// Host taps given to L1 as virtio-net NICs (see [`L1Nic`]).
    pub nics: Vec<L1Nic>,
}

impl L1Run {
    /// A run of `script` alone: its console captured, 2 vCPUs, no drives,
    /// channels or NICs, no room reserved for VMs (set the fields that
    /// differ on the result).
    pub fn script(script: String, files: Vec<(PathBuf, String)>, timeout: Duration) -> L1Run {
        L1Run {
            script,
            files,
            timeout: Some(timeout),
            console: Ttys0::Capture,
            guest_memory_mib: 0,
            cpus: 2,
            forward_log: false,
            drives: Vec::new(),
            control: None,
            vsock_channel: None,
            nics: Vec::new(),
        }
    }
}

/// A host network backend that becomes one of L1's NICs; L1 finds it by
/// `mac`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L1Nic {
    pub backend: L1NicBackend,
    /// Queue pairs (the tap must be multi-queue when more than 1).
    pub queues: u16,
    pub mac: String,
    pub mtu: Option<u16>,
}

/// What an L1 NIC is connected to on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L1NicBackend {
    /// A host tap (QEMU's `-netdev tap`).
    Tap(String),
    /// A listening Unix socket speaking length-prefixed frames, such as
    /// passt's (QEMU's `-netdev stream`).
    Stream(PathBuf),
}

/// The MAC of L1's NIC `n` (L1's own side; guests keep theirs).
pub fn l1_nic_mac(n: usize) -> String {
    format!("52:54:00:76:69:{:02x}", n & 0xff)
}

/// A host disk image passed through to L1 (writes reach the host file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L1Drive {
    pub host: PathBuf,
    pub readonly: bool,
}

/// Where drive `n` of an [`L1Run`] appears inside L1.
pub fn l1_disk_path(n: usize) -> String {
    format!("/rig/disk-{n}")
}

/// QEMU option values separate fields with `,`; a literal comma is `,,`.
fn qemu_escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Finds `qemu-system-x86_64` on PATH, installing it with apt when we are
/// root.
pub fn find_qemu() -> Result<PathBuf, RigError> {
    if let Some(p) = which(QEMU) {
        return Ok(p);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RigError::NoQemu(String::new()));
    }
    eprintln!("vireo: {QEMU} is missing; installing qemu-system-x86 with apt-get");
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "qemu-system-x86",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| RigError::io(Path::new("stderr"), e))?,
        ))
        .status();
    match status {
        Ok(s) if s.success() => which(QEMU).ok_or_else(|| {
            RigError::NoQemu("; apt-get installed it but it is still not on PATH".into())
        }),
        Ok(s) => Err(RigError::NoQemu(format!(
            " (apt-get install failed with {s}; try `apt-get update` first)"
        ))),
        Err(e) => Err(RigError::NoQemu(format!(" (cannot run apt-get: {e})"))),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Boots L1 with `run` and waits for it.
pub fn run_l1(run: &L1Run) -> Result<L1Output, RigError> {
    let qemu = find_qemu()?;
    let base = ensure_base()?;
    // Runs killed with SIGKILL leave their image behind; remove those.
    guest::cache::sweep_stale(&std::env::temp_dir(), "vireo-rig");
    guest::cache::sweep_stale(&std::env::temp_dir(), "vireo-nested");
    let tmp = temp_dir_for(&std::env::temp_dir().join("vireo-rig"))?;
    let _cleanup = RemoveOnDrop(Some(tmp.clone()));
    let initrd = tmp.join("l1.cpio");
    let size = write_combined(&base.base_cpio, &run.script, &run.files, &initrd)?;
    let ctl = tmp.join("control.log");
    std::fs::write(&ctl, b"").map_err(|e| RigError::io(&ctl, e))?;

    let memory = run.guest_memory_mib + 512 + 2 * size.div_ceil(1 << 20);
    let mut cmd = Command::new(&qemu);
    cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"])
        .arg("-smp")
        .arg(run.cpus.max(2).to_string())
        .arg("-m")
        .arg(memory.to_string())
        // `-display none` rather than `-nographic`: with -nographic QEMU tells
        // SeaBIOS to use COM1 as its console, which would land in ttyS0.
        .args(["-display", "none", "-nodefaults", "-no-reboot"])
        .arg("-kernel")
        .arg(&base.kernel)
        .arg("-initrd")
        .arg(&initrd)
        // nosoftlockup: L1's vCPUs are host threads under TCG; on a loaded
        // 2-core host one may not run for tens of seconds, which L1's soft
        // lockup detector reports as a stuck CPU (CI saw it fire in KVM_RUN
        // with the backtrace of an ordinary timer injection). Those reports
        // are false alarms here, and with softlockup_panic they killed runs.
        .args([
            "-append",
            "console=ttyS1 quiet loglevel=1 panic=-1 nosoftlockup rdinit=/init",
        ]);
    let con = match &run.console {
        Ttys0::Interactive | Ttys0::Forward | Ttys0::Capture => "stdio,id=con,signal=off".into(),
        Ttys0::File(p) => format!("file,id=con,append=on,path={}", chardev_path(p)?),
        Ttys0::Off => "null,id=con".into(),
    };
    cmd.args(["-chardev", &con, "-serial", "chardev:con"]);
    cmd.arg("-chardev")
        .arg(format!("file,id=ctl,path={}", chardev_path(&ctl)?))
        .args(["-serial", "chardev:ctl"]);
    if let Some(sock) = &run.control {
        cmd.arg("-chardev")
            .arg(format!("socket,id=relay,path={}", chardev_path(sock)?))
            .args(["-serial", "chardev:relay"]);
    }
    if let Some(sock) = &run.vsock_channel {
        cmd.args(["-device", "virtio-serial-pci,id=vser0"]);
        cmd.arg("-chardev")
            .arg(format!("socket,id=vsk,path={}", chardev_path(sock)?));
        cmd.arg("-device").arg(format!(
            "virtserialport,bus=vser0.0,chardev=vsk,name={}",
            devices::virtio::vsock::relay::PORT_NAME
        ));
    }
    for (n, nic) in run.nics.iter().enumerate() {
        let mut netdev = match &nic.backend {
            L1NicBackend::Tap(tap) => {
                format!("tap,id=nic{n},ifname={tap},script=no,downscript=no")
            }
            L1NicBackend::Stream(sock) => format!(
                "stream,id=nic{n},server=off,addr.type=unix,addr.path={}",
                chardev_path(sock)?
            ),
        };
        let mut device = format!("virtio-net-pci,netdev=nic{n},mac={}", nic.mac);
        if nic.queues > 1 {
            netdev.push_str(&format!(",queues={}", nic.queues));
            device.push_str(&format!(",mq=on,vectors={}", 2 * nic.queues + 2));
        }
        if let Some(mtu) = nic.mtu {
            device.push_str(&format!(",host_mtu={mtu}"));
        }
        cmd.arg("-netdev").arg(netdev).arg("-device").arg(device);
    }
    for (n, d) in run.drives.iter().enumerate() {
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=none,id=disk{n},discard=unmap,readonly={}",
            qemu_escape(&d.host),
            if d.readonly { "on" } else { "off" }
        ));
        cmd.arg("-device").arg(format!(
            "virtio-blk-pci,drive=disk{n},serial=vireo-disk-{n}"
        ));
    }
    match run.console {
        Ttys0::Interactive => cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit()),
        Ttys0::Forward | Ttys0::Capture => cmd.stdin(Stdio::null()).stdout(Stdio::piped()),
        _ => cmd.stdin(Stdio::null()).stdout(Stdio::null()),
    };
    cmd.stderr(Stdio::piped());
    // SAFETY: the closure only calls prctl, which is async-signal-safe; it
    // makes the kernel kill QEMU if the thread that started it dies.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let _signals = SignalGuard::install();
    let mut child = cmd.spawn().map_err(RigError::Spawn)?;
    let stdout_thread = child.stdout.take().map(|out| {
        let forward = run.console == Ttys0::Forward;
        std::thread::spawn(move || pump(out, forward))
    });
    let stderr_thread = child
        .stderr
        .take()
        .map(|err| std::thread::spawn(move || pump(err, false)));
    let tail_stop = std::sync::Arc::new(AtomicBool::new(false));
    let tail_thread = run.forward_log.then(|| {
        let stop = tail_stop.clone();
        let path = ctl.clone();
        // QEMU keeps an interactive terminal in raw mode, where "\n" does
        // not return the cursor to the left edge.
        let crlf = run.console == Ttys0::Interactive;
        std::thread::spawn(move || tail_log(&path, &stop, crlf))
    });

    let waited = wait(&mut child, run.timeout);
    tail_stop.store(true, Ordering::SeqCst);
    let stdout = stdout_thread.map(join).unwrap_or_default();
    let stderr = stderr_thread.map(join).unwrap_or_default();
    if let Some(t) = tail_thread {
        let _ = t.join();
    }
    let status = waited?;
    let log_bytes = std::fs::read(&ctl).map_err(|e| RigError::io(&ctl, e))?;
    let log_text = String::from_utf8_lossy(&log_bytes).replace('\r', "");
    let (exit_code, log) = split_marker(&log_text);
    match exit_code {
        Some(code) => Ok(L1Output {
            exit_code: code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            log,
        }),
        None if !status.success() => Err(RigError::Qemu {
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        }),
        None => Err(RigError::NoMarker {
            tail: tail_lines(&log, 15),
        }),
    }
}

/// QEMU parses `,` in chardev options: such paths cannot be passed.
fn chardev_path(p: &Path) -> Result<String, RigError> {
    let s = p.to_string_lossy().into_owned();
    if s.contains(',') {
        return Err(RigError::Config(format!(
            "{s}: QEMU cannot take a path with a comma here"
        )));
    }
    Ok(s)
}

fn join(h: JoinHandle<Vec<u8>>) -> Vec<u8> {
    h.join().unwrap_or_default()
}

/// Reads `r` to the end, copying to our stdout as it comes when `forward`,
/// otherwise collecting it.
fn pump(mut r: impl Read, forward: bool) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let stdout = std::io::stdout();
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if forward => {
                let mut out = stdout.lock();
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
            }
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    all
}

/// Follows the control log, printing complete lines (but the exit marker)
/// to our stderr, until `stop` is set; then prints what is left.
fn tail_log(path: &Path, stop: &AtomicBool, crlf: bool) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return;
    };
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            print_log_line(&line, crlf);
        }
        if stopping {
            if !pending.is_empty() {
                print_log_line(&pending, crlf);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn print_log_line(line: &[u8], crlf: bool) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']);
    if text.starts_with(EXIT_MARKER) || is_noise(text) {
        return;
    }
    if crlf {
        eprint!("{text}\r\n");
    } else {
        eprintln!("{text}");
    }
}

/// L1 kernel lines every run prints, which tell the user nothing.
fn is_noise(line: &str) -> bool {
    line.trim_end().ends_with("reboot: Power down")
}

/// The status from the last marker line, and the log without marker lines.
fn split_marker(log: &str) -> (Option<i32>, String) {
    let mut code = None;
    let mut rest = String::new();
    for line in log.lines() {
        if let Some(v) = line.trim().strip_prefix(EXIT_MARKER) {
            if let Ok(n) = v.trim().parse() {
                code = Some(n);
                continue;
            }
        }
        if !is_noise(line) {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    (code, rest)
}

/// The last `n` non-empty lines of the control log; a kernel panic or oops
/// line earlier in the log (its stack dump follows it) is put first.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let tail = &lines[start..];
    if tail.is_empty() {
        return "(the control log is empty)".into();
    }
    let headline = lines[..start].iter().find(|l| {
        ["Kernel panic", "BUG:", "Oops:", "Out of memory"]
            .iter()
            .any(|k| l.contains(k))
    });
    match headline {
        Some(h) => format!("{h}\n...\n{}", tail.join("\n")),
        None => tail.join("\n"),
    }
}

/// Waits for QEMU, killing it on timeout or when we are signalled.
fn wait(
    child: &mut Child,
    timeout: Option<Duration>,
) -> Result<std::process::ExitStatus, RigError> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => {
                stop(child);
                return Err(RigError::io(Path::new(QEMU), e));
            }
        }
        let sig = SIGNALLED.swap(0, Ordering::SeqCst);
        if sig != 0 {
            stop(child);
            return Err(RigError::Interrupted(sig));
        }
        if let Some(t) = timeout.filter(|t| start.elapsed() > *t) {
            stop(child);
            return Err(RigError::Timeout(t));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM (QEMU restores the terminal and exits), then SIGKILL after 2 s.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; `pid` is our
        // child, not yet reaped, so the id cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last SIGINT/SIGTERM/SIGHUP received while a rig run was active.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Active runs and the handlers to restore when the last one ends.
static HANDLERS: Mutex<(usize, Vec<libc::sigaction>)> = Mutex::new((0, Vec::new()));

/// Routes SIGINT/SIGTERM/SIGHUP to [`SIGNALLED`] while any run is active
/// (runs may overlap in threads); the old handlers come back after.
struct SignalGuard;

impl SignalGuard {
    fn install() -> SignalGuard {
        let mut h = HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
        if h.0 == 0 {
            SIGNALLED.store(0, Ordering::SeqCst);
            let mut old = Vec::new();
            for sig in SIGNALS {
                // SAFETY: a zeroed sigaction is a valid "default" value; we
                // fill in a handler that only stores to an atomic, which is
                // async-signal-safe, and keep the old action to restore.
                unsafe {
                    let mut act: libc::sigaction = std::mem::zeroed();
                    act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                    act.sa_flags = libc::SA_RESTART;
                    libc::sigemptyset(&mut act.sa_mask);
                    let mut prev: libc::sigaction = std::mem::zeroed();
                    libc::sigaction(sig, &act, &mut prev);
                    old.push(prev);
                }
            }
            h.1 = old;
        }
        h.0 += 1;
        SignalGuard
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        let mut h = HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
        h.0 -= 1;
        if h.0 == 0 {
            for (sig, prev) in SIGNALS.iter().zip(h.1.drain(..)) {
                // SAFETY: restores an action previously returned by sigaction.
                unsafe { libc::sigaction(*sig, &prev, std::ptr::null_mut()) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_split_from_the_log() {
        let (code, rest) = split_marker("a\nVIREO_RIG_EXIT=3\n[    2.2] reboot: Power down\nb\n");
        assert_eq!(code, Some(3));
        assert_eq!(rest, "a\nb\n");
        assert_eq!(split_marker("VIREO_RIG_EXIT=x\n").0, None);
        assert_eq!(split_marker("").0, None);
    }

    #[test]
    fn tail_keeps_the_last_non_empty_lines() {
        assert_eq!(tail_lines("1\n\n2\n3\n", 2), "2\n3");
        assert!(tail_lines("", 3).contains("empty"));
        let log = "Kernel panic - not syncing: x\n1\n2\n3\n";
        assert_eq!(
            tail_lines(log, 2),
            "Kernel panic - not syncing: x\n...\n2\n3"
        );
        assert_eq!(tail_lines(log, 4), log.trim_end());
    }

    #[test]
    fn drive_paths_escape_commas() {
        assert_eq!(qemu_escape(Path::new("/tmp/a,b.img")), "/tmp/a,,b.img");
        assert_eq!(l1_disk_path(1), "/rig/disk-1");
    }

    #[test]
    fn commas_are_refused_in_chardev_paths() {
        assert!(chardev_path(Path::new("/tmp/a,b")).is_err());
        assert_eq!(chardev_path(Path::new("/tmp/ab")).unwrap(), "/tmp/ab");
    }
}
