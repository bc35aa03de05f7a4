//! The shared harness of the integration tests: runs the real `vireo`
//! binary with a timeout, captures its stdout, stderr and exit status, and
//! says once per test binary which path the boots take (directly on this
//! host's /dev/kvm, or inside the nested emulation rig).

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Generous bound for one boot through the rig (about 10 to 15 s each when
/// run alone; tests run in parallel on a 2-core machine, and the first one
/// may also fetch and build the default guest).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Bound for commands that must fail before booting anything.
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(30);

/// What one `vireo` run did.
#[derive(Debug)]
pub struct Outcome {
    pub args: Vec<String>,
    /// `None` when it was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// A readable dump for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "vireo {:?}\nexit: {:?} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// Asserts the exit status, showing everything on failure.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit status\n{}",
            self.dump()
        );
        self
    }

    /// Stdout lines without the carriage returns the serial console adds.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .collect()
    }

    /// The value after `key` on the stdout line that starts with it.
    pub fn value(&self, key: &str) -> &str {
        self.lines()
            .into_iter()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no line starting with {key:?}\n{}", self.dump()))
    }
}

static BANNER: Once = Once::new();

/// Writes a line straight to stderr: libtest captures `eprintln!` of
/// passing tests, and these lines should show in every run.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Prints (once) whether boots run directly or in the rig, and why.
pub fn announce_path() {
    BANNER.call_once(|| {
        let line = match rig::probe_host_kvm() {
            rig::HostKvm::Usable => {
                "boot tests: direct path (this host's /dev/kvm runs stock kernels)".to_string()
            }
            rig::HostKvm::Unusable(why) => {
                format!("boot tests: emulated path (nested rig: QEMU TCG + KVM), because {why}")
            }
        };
        say(&line);
    });
}

/// The VMs a test binary boots take turns: on this project's 2-core
/// hosts each stock guest runs in the nested rig (2 emulated CPUs), and two
/// at once starve each other. Under such load guests were seen to die
/// mid-run (a triple fault in the rig, with no panic on the console).
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    /// This thread's turn (held while it has any `Turn`: a test may start
    /// `vireo ctl` or a second VM while its own VM runs) and how many
    /// `Turn`s it holds.
    static HELD: std::cell::RefCell<Option<std::sync::MutexGuard<'static, ()>>> =
        const { std::cell::RefCell::new(None) };
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// This thread's turn to run a VM, until the last `Turn` it holds is
/// dropped. Only the thread that runs the test may take one: a second
/// thread of the same test would wait for the first.
pub struct Turn(std::marker::PhantomData<*const ()>);

pub fn vm_turn() -> Turn {
    if DEPTH.with(|d| d.get()) == 0 {
        let guard = TURN.lock().unwrap_or_else(|e| e.into_inner());
        HELD.with(|h| *h.borrow_mut() = Some(guard));
    }
    DEPTH.with(|d| d.set(d.get() + 1));
    Turn(std::marker::PhantomData)
}

impl Drop for Turn {
    fn drop(&mut self) {
        let left = DEPTH.with(|d| {
            let n = d.get().saturating_sub(1);
            d.set(n);
            n
        });
        if left == 0 {
            HELD.with(|h| drop(h.borrow_mut().take()));
        }
    }
}

/// Runs `vireo ARGS` with no stdin and waits at most `timeout`; a run that
/// takes longer is killed (its QEMU dies with it) and fails the test.
pub fn vireo(args: &[&str], timeout: Duration) -> Outcome {
    run_vireo(args, timeout, None).0
}

/// Like [`vireo`], but sends `signal` to vireo after `after`; also returns
/// the pids of vireo's child processes (the rig's QEMU) at that moment.
pub fn vireo_signalled(
    args: &[&str],
    timeout: Duration,
    after: Duration,
    signal: i32,
) -> (Outcome, Vec<i32>) {
    run_vireo(args, timeout, Some((after, signal)))
}

/// Pids of the processes whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // "pid (comm) state ppid ...": comm may hold spaces.
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Whether `pid` is still running (a zombie awaiting its reaper counts as
/// gone).
pub fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.get(s.rfind(')')? + 2..).map(|r| !r.starts_with('Z')))
        .unwrap_or(false)
}

fn run_vireo(
    args: &[&str],
    timeout: Duration,
    signal: Option<(Duration, i32)>,
) -> (Outcome, Vec<i32>) {
    announce_path();
    // Every run but `vireo ctl` (a client of a VM that holds the turn)
    // may boot a guest: it waits for its turn.
    let _turn = (args.first() != Some(&"ctl")).then(vm_turn);
    let mut signal = signal;
    let mut children = Vec::new();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the vireo binary");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for vireo") {
            break Some(s);
        }
        if let Some((after, sig)) = signal.filter(|(after, _)| start.elapsed() > *after) {
            let pid = i32::try_from(child.id()).expect("pid fits i32");
            children = children_of(pid);
            say(&format!(
                "  sending signal {sig} to vireo after {after:?}; its children: {children:?}"
            ));
            // SAFETY: kill has no memory-safety preconditions; `pid` is our
            // child and not yet reaped.
            unsafe { libc::kill(pid, sig) };
            signal = None;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let outcome = Outcome {
        args,
        code: status.and_then(|s| s.code()),
        stdout: String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned(),
        elapsed: start.elapsed(),
    };
    assert!(
        status.is_some(),
        "vireo did not finish within {timeout:?} and was killed\n{}",
        outcome.dump()
    );
    say(&format!(
        "  vireo {:?}: exit {:?} in {:.1?}",
        outcome.args, outcome.code, outcome.elapsed
    ));
    (outcome, children)
}

/// `vireo run ARGS` booting the default guest, with the boot timeout.
pub fn run_guest(args: &[&str]) -> Outcome {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    vireo(&all, BOOT_TIMEOUT)
}

/// A `vireo` process whose stdout a test reads while it runs (to act when
/// the guest prints a marker).
pub struct Running {
    pub child: std::process::Child,
    stdout: std::process::ChildStdout,
    /// Everything read from stdout so far.
    pub seen: String,
    /// Declared last: released after the VM is gone.
    _turn: Turn,
}

/// Start `vireo ARGS` with no stdin, stdout and stderr piped.
pub fn spawn(args: &[&str]) -> Running {
    spawn_with(env!("CARGO_BIN_EXE_vireo"), args)
}

/// [`spawn`] through another program that runs vireo (`ip netns exec`).
pub fn spawn_with(program: &str, args: &[&str]) -> Running {
    announce_path();
    let turn = vm_turn();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the vireo binary");
    let stdout = child.stdout.take().expect("piped stdout");
    Running {
        child,
        stdout,
        seen: String::new(),
        _turn: turn,
    }
}

/// A test that fails while its VM runs must not leave the VM (and the
/// rig's QEMU) running behind it.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    /// Read what is left of stdout (after vireo ended) into `seen`.
    pub fn read_rest(&mut self) {
        let mut rest = Vec::new();
        let _ = self.stdout.read_to_end(&mut rest);
        self.seen.push_str(&String::from_utf8_lossy(&rest));
    }

    /// Read stdout until `marker` shows; panics if vireo ends first or
    /// `timeout` passes (a blocked read is bounded by vireo's own end).
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while !self.seen.contains(marker) {
            assert!(
                Instant::now() < deadline,
                "no {marker:?} within {timeout:?}: {}",
                self.seen
            );
            let n = self.stdout.read(&mut buf).unwrap_or(0);
            if n == 0 {
                let status = self.child.wait();
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                panic!(
                    "vireo ended ({status:?}) before {marker:?}: {}\n--- stderr ---\n{stderr}",
                    self.seen
                );
            }
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// Send `signal` and wait (at most `timeout`) for vireo to end; returns
    /// its exit code (None if killed by a signal) and its stderr.
    pub fn stop_with(mut self, signal: i32, timeout: Duration) -> (Option<i32>, String) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: signalling our own, not yet reaped, child.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for vireo") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "signal {signal} did not stop vireo"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        (status.code(), stderr)
    }
}

/// An ext4 image of `mib` MiB holding `files` (made with mkfs.ext4 -d).
pub fn ext4_image(dir: &std::path::Path, mib: u64, files: &[(&str, &str)]) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (name, text) in files {
        std::fs::write(root.join(name), text).unwrap();
    }
    let img = dir.join("ext4.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .output()
        .expect("mkfs.ext4 (e2fsprogs) must be installed");
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
    img
}

/// The default guest's initrd with `vireo-agent` added as
/// /bin/vireo-agent, written into `dir`.
pub fn agent_initrd(dir: &std::path::Path) -> std::path::PathBuf {
    let initrd = dir.join("initrd.cpio");
    let g = guest::ensure_default_guest().unwrap();
    rig::initrd_with_programs(
        &g.initrd,
        &[(
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_vireo-agent")),
            "/bin/vireo-agent",
        )],
        &initrd,
    )
    .unwrap();
    initrd
}
