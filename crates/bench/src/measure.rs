//! Runs one VMM process and measures it: time from spawn to a marker on its
//! stdout, time from spawn to its exit, and its peak RSS from `wait4`.
//!
//! The child's stdout, stderr and a pidfd are polled together so that both
//! moments are taken when they happen, not when a reader gets around to them,
//! and so that a hung VMM is killed at a deadline instead of blocking us.

use crate::BenchError;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Output kept for error messages, per stream.
const KEEP_OUTPUT: usize = 64 * 1024;

/// A VMM invocation to measure.
#[derive(Debug, Clone)]
pub struct VmmCommand {
    /// Short name for tables and errors, e.g. "vireo".
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl VmmCommand {
    /// The command line as one printable string.
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSample {
    /// Spawn to the marker's last byte on stdout.
    pub marker: Duration,
    /// Spawn to process exit.
    pub exit: Duration,
    /// Peak resident set size of the child, KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
}

/// Deadlines for one run, both counted from spawn.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub marker: Duration,
    pub exit: Duration,
}

/// One captured output stream, kept to about its last `KEEP_OUTPUT` bytes.
struct Stream {
    /// `None` once the stream reached EOF (the fd is closed then).
    file: Option<File>,
    buf: Vec<u8>,
}

impl Stream {
    fn new(fd: Option<OwnedFd>) -> Self {
        Stream {
            file: fd.map(File::from),
            buf: Vec::new(),
        }
    }

    fn is_open(&self) -> bool {
        self.file.is_some()
    }

    fn poll_fd(&self) -> libc::pollfd {
        let fd = self.file.as_ref().map_or(-1, |f| f.as_raw_fd());
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }
    }

    /// Reads what is ready (after poll said so, so this does not block).
    fn read_some(&mut self) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut chunk = [0u8; 4096];
        let n = file.read(&mut chunk)?;
        if n == 0 {
            self.file = None;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        if self.buf.len() > KEEP_OUTPUT * 2 {
            self.buf.drain(..self.buf.len() - KEEP_OUTPUT);
        }
        Ok(())
    }
}

/// The last few lines of a VMM's output, on one line, for an error message.
pub fn output_tail(stdout: &[u8], stderr: &[u8]) -> String {
    let mut all = String::from_utf8_lossy(stdout).into_owned();
    if !stderr.is_empty() {
        all.push('\n');
        all.push_str(&String::from_utf8_lossy(stderr));
    }
    let lines: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "(no output)".to_string();
    }
    let start = lines.len().saturating_sub(6);
    let mut tail = lines[start..].join(" | ");
    if tail.len() > 600 {
        let cut = tail.len() - 600;
        let cut = (cut..tail.len())
            .find(|&i| tail.is_char_boundary(i))
            .unwrap_or(0);
        tail = format!("...{}", &tail[cut..]);
    }
    tail
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // it touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "fd out of range"))?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reaps `pid` with `wait4`, returning (wait status, ru_maxrss in KiB).
fn wait4(pid: u32) -> std::io::Result<(i32, u64)> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable and live for the call.
        let ret = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if ret == pid {
            return Ok((status, u64::try_from(usage.ru_maxrss).unwrap_or(0)));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn describe_status(status: i32) -> Option<String> {
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => None,
            code => Some(format!("exit code {code}")),
        }
    } else if libc::WIFSIGNALED(status) {
        Some(format!("killed by signal {}", libc::WTERMSIG(status)))
    } else {
        Some(format!("wait status {status:#x}"))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Kills (if still unreaped) and reaps the child; errors are ignored because
/// this only runs on a path that already reports a better error.
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = wait4(child.id());
}

/// Spawns `cmd`, waits for `marker` on its stdout and for its exit, and
/// returns what was measured. The VMM must exit with status 0.
pub fn measure_run(
    cmd: &VmmCommand,
    marker: &[u8],
    timeouts: Timeouts,
) -> Result<RunSample, BenchError> {
    measure_driven(cmd, marker, timeouts, |_, _| Ok(())).map(|(s, ())| s)
}

/// Like [`measure_run`], and meanwhile runs `drive` on its own thread from
/// the moment of spawn, with that moment and a flag that is set when the
/// run is abandoned (so a driver that waits for the VMM can give up). This
/// is how the VMM's API is driven while the marker and the exit are timed
/// here. What `drive` returns comes back with the sample; its error makes
/// the run fail.
pub fn measure_driven<T: Send + 'static>(
    cmd: &VmmCommand,
    marker: &[u8],
    timeouts: Timeouts,
    drive: impl FnOnce(Instant, &AtomicBool) -> Result<T, String> + Send + 'static,
) -> Result<(RunSample, T), BenchError> {
    let start = Instant::now();
    let mut child = Command::new(&cmd.program)
        .args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            vmm: cmd.name.clone(),
            command: cmd.display(),
            source,
        })?;
    let pidfd = match pidfd_open(child.id()) {
        Ok(fd) => fd,
        Err(source) => {
            kill_and_reap(&mut child);
            return Err(BenchError::PidFd {
                vmm: cmd.name.clone(),
                source,
            });
        }
    };
    let abandon = Arc::new(AtomicBool::new(false));
    let driver = {
        let abandon = Arc::clone(&abandon);
        std::thread::spawn(move || drive(start, &abandon))
    };
    // Joins the driver (telling it to give up first when the run failed).
    let finish = |failed: bool| -> Result<T, String> {
        if failed {
            abandon.store(true, Ordering::Relaxed);
        }
        driver
            .join()
            .unwrap_or_else(|_| Err("the driver thread panicked".to_string()))
    };
    let mut out = Stream::new(child.stdout.take().map(OwnedFd::from));
    let mut err = Stream::new(child.stderr.take().map(OwnedFd::from));

    let mut marker_at: Option<Duration> = None;
    let mut exit_at: Option<Duration> = None;
    let outcome: Result<(), BenchError> = loop {
        if exit_at.is_some() && !out.is_open() && !err.is_open() {
            break Ok(());
        }
        let now = start.elapsed();
        let deadline = match (marker_at, exit_at) {
            // Exited: drain what the pipes still hold, briefly.
            (_, Some(exited)) => exited + Duration::from_millis(500),
            (None, None) => timeouts.marker,
            (Some(_), None) => timeouts.exit,
        };
        if now >= deadline {
            let output = output_tail(&out.buf, &err.buf);
            let vmm = cmd.name.clone();
            break match (marker_at, exit_at) {
                // Pipes held open by some other process: stop draining.
                (_, Some(_)) => Ok(()),
                (None, None) => Err(BenchError::MarkerTimeout {
                    vmm,
                    timeout: timeouts.marker,
                    output,
                }),
                (Some(_), None) => Err(BenchError::ExitTimeout {
                    vmm,
                    timeout: timeouts.exit,
                    output,
                }),
            };
        }
        let wait_ms = (deadline - now).as_millis().clamp(1, 1000) as libc::c_int;
        let mut proc_fd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if exit_at.is_some() {
            proc_fd.fd = -1;
        }
        let mut fds = [out.poll_fd(), err.poll_fd(), proc_fd];
        // SAFETY: `fds` is a valid, writable array of pollfd of the given
        // length; poll ignores entries with negative fds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break Err(BenchError::Poll {
                vmm: cmd.name.clone(),
                source,
            });
        }
        let ready = |i: usize| fds[i].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
        if ready(0) {
            let seen = out.buf.len();
            if let Err(source) = out.read_some() {
                break Err(BenchError::Read {
                    vmm: cmd.name.clone(),
                    source,
                });
            }
            if marker_at.is_none() {
                // Search the new bytes plus an overlap, for a marker split
                // across reads.
                let from = seen.saturating_sub(marker.len()).min(out.buf.len());
                if find(&out.buf[from..], marker) {
                    marker_at = Some(start.elapsed());
                }
            }
        }
        if ready(1) {
            if let Err(source) = err.read_some() {
                break Err(BenchError::Read {
                    vmm: cmd.name.clone(),
                    source,
                });
            }
        }
        if ready(2) {
            exit_at = Some(start.elapsed());
        }
    };
    if let Err(e) = outcome {
        kill_and_reap(&mut child);
        // A driver's failure (say, a refused request) is the better report.
        return Err(match finish(true) {
            Err(details) => BenchError::Driver {
                vmm: cmd.name.clone(),
                details,
            },
            Ok(_) => e,
        });
    }
    // The process has exited (pidfd readable); reap it for status and rusage.
    let reaped = wait4(child.id());
    let output = output_tail(&out.buf, &err.buf);
    let bad_status = reaped
        .as_ref()
        .ok()
        .and_then(|&(st, _)| describe_status(st));
    let driven = finish(reaped.is_err() || bad_status.is_some());
    let (_, max_rss_kib) = reaped.map_err(|source| BenchError::Wait {
        vmm: cmd.name.clone(),
        source,
    })?;
    if let Some(status) = bad_status {
        return Err(BenchError::ExitStatus {
            vmm: cmd.name.clone(),
            status,
            output,
        });
    }
    let driven = driven.map_err(|details| BenchError::Driver {
        vmm: cmd.name.clone(),
        details: format!("{details}. Last output: {output}"),
    })?;
    let (Some(marker), Some(exit)) = (marker_at, exit_at) else {
        return Err(BenchError::NoMarker {
            vmm: cmd.name.clone(),
            output,
        });
    };
    let sample = RunSample {
        marker,
        exit,
        max_rss_kib,
    };
    Ok((sample, driven))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> VmmCommand {
        VmmCommand {
            name: "sh".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    const T: Timeouts = Timeouts {
        marker: Duration::from_secs(5),
        exit: Duration::from_secs(5),
    };

    #[test]
    fn measures_marker_then_exit() {
        let s = measure_run(
            &sh("printf 'hello\\nMARK'; sleep 0.2; echo ER; sleep 0.2"),
            b"MARKER",
            T,
        )
        .expect("run");
        assert!(s.marker >= Duration::from_millis(150), "{s:?}");
        assert!(s.exit >= s.marker + Duration::from_millis(150), "{s:?}");
        assert!(s.max_rss_kib > 0);
    }

    #[test]
    fn marker_timeout_kills() {
        let t = Timeouts {
            marker: Duration::from_millis(300),
            exit: Duration::from_secs(5),
        };
        let begun = Instant::now();
        let e = measure_run(&sh("echo booting; echo oops >&2; sleep 30"), b"MARKER", t)
            .expect_err("no marker");
        assert!(begun.elapsed() < Duration::from_secs(5));
        let msg = e.to_string();
        assert!(
            msg.contains("did not print") && msg.contains("booting | oops"),
            "{msg}"
        );
    }

    #[test]
    fn exit_timeout_kills() {
        let t = Timeouts {
            marker: Duration::from_secs(5),
            exit: Duration::from_millis(300),
        };
        let e = measure_run(&sh("echo MARKER; sleep 30"), b"MARKER", t).expect_err("hangs");
        assert!(matches!(e, BenchError::ExitTimeout { .. }), "{e}");
    }

    #[test]
    fn nonzero_exit_is_an_error() {
        let e =
            measure_run(&sh("echo MARKER; echo bad >&2; exit 3"), b"MARKER", T).expect_err("fails");
        let msg = e.to_string();
        assert!(msg.contains("exit code 3") && msg.contains("bad"), "{msg}");
    }

    #[test]
    fn exit_without_marker_is_an_error() {
        let e = measure_run(&sh("echo nothing"), b"MARKER", T).expect_err("no marker");
        assert!(matches!(e, BenchError::NoMarker { .. }), "{e}");
    }

    #[test]
    fn driver_runs_alongside_and_its_result_comes_back() {
        // The "VMM" waits for a file the driver creates, then prints the marker.
        let flag = std::env::temp_dir().join(format!("vireo-bench-drive-{}", std::process::id()));
        let _ = std::fs::remove_file(&flag);
        let script = format!(
            "while [ ! -e {0} ]; do sleep 0.01; done; echo MARKER; rm {0}",
            flag.display()
        );
        let (s, at) = measure_driven(&sh(&script), b"MARKER", T, move |start, _| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(&flag, b"").map_err(|e| e.to_string())?;
            Ok(start.elapsed())
        })
        .expect("run");
        assert!(
            at >= Duration::from_millis(100) && s.marker >= at,
            "{s:?} {at:?}"
        );
    }

    #[test]
    fn driver_failure_is_reported_and_the_driver_is_told_to_stop() {
        let t = Timeouts {
            marker: Duration::from_millis(300),
            exit: Duration::from_secs(5),
        };
        let begun = Instant::now();
        // The driver waits for the abandon flag: only the timeout path sets it.
        let e = measure_driven(&sh("sleep 30"), b"MARKER", t, |_, abandon| {
            while !abandon.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err::<(), _>("PUT /actions refused".to_string())
        })
        .expect_err("no marker");
        assert!(begun.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(&e, BenchError::Driver { details, .. } if details.contains("refused")),
            "{e}"
        );
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let cmd = VmmCommand {
            name: "x".into(),
            program: "/nonexistent/vmm".into(),
            args: vec![],
        };
        let e = measure_run(&cmd, b"M", T).expect_err("no such program");
        assert!(e.to_string().contains("/nonexistent/vmm"), "{e}");
    }
}
