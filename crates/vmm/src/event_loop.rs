//! The VMM thread's loop while a VM runs: wait on the exit eventfd, SIGINT and
//! SIGTERM (through a signalfd), console input and the serial device's
//! "receive FIFO drained" event. Later requests from the API join this loop.

use std::os::unix::io::{AsRawFd, RawFd};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::builder::Vm;
use crate::config::ConsoleConfig;
use crate::console::{self, EscapeFilter, RawTerminal};
use crate::exit::ExitReason;
use crate::Error;

const TOKEN_EXIT: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;
const TOKEN_STDIN: u64 = 2;
const TOKEN_INPUT_READY: u64 = 3;
const TOKEN_HOOK: u64 = 4;
const TOKEN_HOOK_TIMER: u64 = 5;

/// Another event source the loop serves while the VM runs (the API): the
/// loop calls `ready` with the VM whenever `fd` is readable, `on_timer`
/// whenever `timer` is, and `finished` once the VM has ended.
pub trait LoopHook {
    fn fd(&self) -> RawFd;
    fn ready(&mut self, vm: &mut Vm);
    fn timer(&self) -> Option<RawFd> {
        None
    }
    fn on_timer(&mut self, _vm: &mut Vm) {}
    fn finished(&mut self, _vm: &mut Vm, _reason: &ExitReason) {}
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Block SIGINT/SIGTERM in this thread (and the threads it starts later)
/// and return a signalfd that receives them. Threads started before keep
/// their own mask: call this before starting any.
pub fn signal_fd() -> Result<RawFd, Error> {
    // SAFETY: sigset operations on a local, zeroed set.
    let fd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(io("signalfd")(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// The signal a signalfd from `signal_fd` has for us, if any.
pub fn read_signal(fd: RawFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data; read fills it.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading into a buffer of exactly `size` bytes.
    let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    (n as usize == size).then_some(info.ssi_signo as i32)
}

fn read_stdin(buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a valid buffer.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Vm {
    /// Start the vCPUs and run until the VM ends; returns why it ended.
    pub fn run(self) -> Result<ExitReason, Error> {
        self.run_with(None)
    }

    /// `run`, also serving `hook`'s events. The vCPU threads are stopped
    /// and joined before it returns.
    pub fn run_with(mut self, mut hook: Option<&mut dyn LoopHook>) -> Result<ExitReason, Error> {
        let result = self.event_loop(&mut hook);
        self.stop_vcpus();
        if let (Some(h), Ok(reason)) = (hook, &result) {
            h.finished(&mut self, reason);
        }
        result
    }

    fn event_loop(&mut self, hook: &mut Option<&mut dyn LoopHook>) -> Result<ExitReason, Error> {
        let sig_fd = signal_fd()?;
        let epoll = Epoll::new().map_err(io("epoll"))?;
        let add = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(io("epoll_ctl"))
        };
        add(self.exit.eventfd().as_raw_fd(), TOKEN_EXIT)?;
        add(sig_fd, TOKEN_SIGNAL)?;
        add(self.serial_input_ready.as_raw_fd(), TOKEN_INPUT_READY)?;
        if let Some(h) = hook.as_deref() {
            add(h.fd(), TOKEN_HOOK)?;
            if let Some(t) = h.timer() {
                add(t, TOKEN_HOOK_TIMER)?;
            }
        }
        let interactive = self.config.console == ConsoleConfig::Stdio;
        let mut stdin = StdinWatch {
            open: interactive && add(libc::STDIN_FILENO, TOKEN_STDIN).is_ok(),
            watched: true,
        };
        let _raw = if interactive {
            RawTerminal::enable()
        } else {
            None
        };

        self.start()?;

        let mut escape = EscapeFilter::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            if let Some(reason) = self.exit.reason() {
                // SAFETY: closing the signalfd we opened.
                unsafe { libc::close(sig_fd) };
                return Ok(reason);
            }
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("epoll_wait")(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_SIGNAL => {
                        if let Some(sig) = read_signal(sig_fd) {
                            self.exit.exit(ExitReason::Signal(sig));
                        }
                    }
                    TOKEN_HOOK => {
                        if let Some(h) = hook.as_deref_mut() {
                            h.ready(self);
                        }
                    }
                    TOKEN_HOOK_TIMER => {
                        if let Some(h) = hook.as_deref_mut() {
                            h.on_timer(self);
                        }
                    }
                    TOKEN_INPUT_READY => {
                        // The UART signals once per batch of input it was
                        // given, not per guest read (see legacy/serial.rs).
                        let _ = self.serial_input_ready.read();
                        self.flush_input(&mut pending);
                        if pending.is_empty() {
                            stdin.watch(&epoll);
                        }
                    }
                    TOKEN_STDIN => {
                        let mut buf = [0u8; 64];
                        match read_stdin(&mut buf) {
                            Ok(0) | Err(_) => {
                                // End of input: the guest keeps running.
                                stdin.unwatch(&epoll);
                                stdin.open = false;
                            }
                            Ok(n) => {
                                if escape.feed(&buf[..n], &mut pending) {
                                    self.exit.exit(ExitReason::ConsoleQuit);
                                }
                                self.flush_input(&mut pending);
                                if !pending.is_empty() {
                                    // FIFO full: wait until the guest drains it.
                                    stdin.unwatch(&epoll);
                                }
                            }
                        }
                    }
                    _ => {
                        let _ = self.exit.eventfd().read();
                    }
                }
            }
        }
    }

    /// Move queued keyboard input into the UART's receive FIFO.
    fn flush_input(&self, pending: &mut Vec<u8>) {
        if pending.is_empty() {
            return;
        }
        let n = devices::bus::lock(&self.serial).enqueue_input(pending);
        pending.drain(..n);
    }
}

/// Whether stdin is in the epoll set: taken out while the UART's FIFO is
/// full, put back (once) when the guest has drained it.
struct StdinWatch {
    /// stdin is a console input that has not reached end of file.
    open: bool,
    watched: bool,
}

impl StdinWatch {
    fn watch(&mut self, epoll: &Epoll) {
        if self.open && !self.watched {
            self.watched = epoll
                .ctl(
                    ControlOperation::Add,
                    libc::STDIN_FILENO,
                    EpollEvent::new(EventSet::IN, TOKEN_STDIN),
                )
                .is_ok();
        }
    }

    fn unwatch(&mut self, epoll: &Epoll) {
        if self.open && self.watched {
            let _ = epoll.ctl(
                ControlOperation::Delete,
                libc::STDIN_FILENO,
                EpollEvent::default(),
            );
            self.watched = false;
        }
    }
}

/// Whether the console is interactive (for callers that pick a path early).
pub fn console_is_interactive(cfg: &ConsoleConfig) -> bool {
    *cfg == ConsoleConfig::Stdio && console::stdin_is_tty()
}
