//! Firecracker mode: `vireo --api-sock PATH` (or `--config-file FILE`),
//! the process model Firecracker's users and tools expect. The API socket
//! is served before any guest runs; requests configure the VM and
//! `InstanceStart` boots it; the process ends when the VM does, with the
//! VM's exit status. `--config-file` boots at once (with the API served
//! too unless `--no-api`).

use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use api::models::FullVmConfiguration;
use api::{ApiRequest, ApiResponse, ApiServer, ServerLimits, VmmRequest};
use vmm::api_control::{note_request, ApiHook, Controller, Preboot};
use vmm::observe::logger::{self, Level, LogOptions};
use vmm::observe::metrics;
use vmm::vlog;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::cli::FirecrackerArgs;
use crate::relay::{self, Relay};
use crate::{exit_code, fail};

/// Firecracker's default socket, used when invoked as `firecracker`.
const DEFAULT_SOCKET: &str = "/run/firecracker.socket";

/// Removes the API socket when the process is done with it, so the next
/// run with the same path can bind it (Firecracker refuses an existing
/// path, and so does Vireo).
struct SocketFile(Option<PathBuf>);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn read_config_file(path: &Path) -> Result<FullVmConfiguration, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("config file {}: {e}", path.display()))?;
    FullVmConfiguration::from_json(&bytes)
        .map_err(|e| format!("config file {}: {e}", path.display()))
}

/// A started VM: here, or inside the nested rig behind the relay.
enum Started {
    Local(Box<vmm::Vm>),
    Rig(RigVm),
}

/// A VM running inside the nested rig.
struct RigVm {
    relay: Relay,
    /// Written when the rig ends; `result` then holds its exit status.
    done: EventFd,
    result: Receiver<Result<i32, rig::RigError>>,
    _dir: guest::cache::RemoveOnDrop,
}

/// How long a VM in the rig may take to start (L1 boots first).
const RIG_START_TIMEOUT: Duration = Duration::from_secs(600);

fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Whether the VM must run inside the nested rig, and why.
fn rig_reason(args: &FirecrackerArgs) -> Option<String> {
    match args.emulate {
        rig::EmulateMode::Never => None,
        rig::EmulateMode::Always => Some("--emulate=always".to_string()),
        rig::EmulateMode::Auto => match rig::probe_host_kvm() {
            rig::HostKvm::Unusable(why) => Some(why),
            rig::HostKvm::Usable => None,
        },
    }
}

/// The VM `controller.config` describes, built and started.
fn start(
    controller: &Controller,
    args: &FirecrackerArgs,
    sig_fd: RawFd,
) -> Result<Started, String> {
    let config = vmm::resources::to_vm_config(&controller.config, args.enable_pci)
        .map_err(|e| e.to_string())?;
    vmm::preflight(&config).map_err(|e| e.to_string())?;
    if rig_reason(args).is_some() {
        return start_in_rig(&config, &args.id, sig_fd).map(Started::Rig);
    }
    start_here(&config).map(|vm| Started::Local(Box::new(vm)))
}

fn start_here(config: &vmm::VmConfig) -> Result<vmm::Vm, String> {
    let mut vm = vmm::build(config).map_err(|e| e.to_string())?;
    vm.start().map_err(|e| e.to_string())?;
    Ok(vm)
}

/// Boot L1 with a vireo that runs `config` and serves the relay; return
/// once that VM runs.
fn start_in_rig(config: &vmm::VmConfig, id: &str, sig_fd: RawFd) -> Result<RigVm, String> {
    let dir = guest::cache::temp_dir_for(&std::env::temp_dir().join("vireo-relay"))
        .map_err(|e| e.to_string())?;
    let cleanup = guest::cache::RemoveOnDrop(Some(dir.clone()));
    let sock = dir.join("relay.sock");
    let listener = UnixListener::bind(&sock).map_err(io_err("relay socket"))?;
    let done = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
    let done_writer = done.try_clone().map_err(io_err("eventfd"))?;
    let (tx, result) = mpsc::channel();
    let (config, id) = (config.clone(), id.to_string());
    std::thread::Builder::new()
        .name("vireo-rig".into())
        .spawn(move || {
            let _ = tx.send(rig::run_nested_api(&config, &sock, &id));
            let _ = done_writer.write(1);
        })
        .map_err(io_err("cannot start the rig thread"))?;
    // Waiting ends when the rig does, or on SIGINT/SIGTERM (left pending
    // for the caller, which then stops).
    let alive = || done.read().is_err() && !readable(sig_fd);
    let relay = match Relay::connect(&listener, RIG_START_TIMEOUT, alive) {
        Ok(r) => r,
        Err(e) => {
            let detail = match result.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(code)) => {
                    format!("{e} (its vireo exited with status {code}; its log is above)")
                }
                Ok(Err(rig_err)) => format!("{e}: {rig_err}"),
                Err(_) => e,
            };
            return Err(detail);
        }
    };
    Ok(RigVm {
        relay,
        done,
        result,
        _dir: cleanup,
    })
}

/// Whether `fd` has something to read now.
fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling one valid descriptor, without waiting.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// How the pre-boot phase ended without a VM.
enum NoStart {
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The API thread went away.
    ApiGone,
}

/// Wait until a request is queued or a signal arrives.
fn wait_preboot(wake: &EventFd, sig_fd: RawFd) -> Option<i32> {
    let mut fds = [
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: sig_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: polling two valid descriptors in a local array.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
    if n > 0 && fds[1].revents != 0 {
        return vmm::event_loop::read_signal(sig_fd);
    }
    let _ = wake.read();
    None
}

/// Serve pre-boot requests until one starts the VM.
fn serve_until_start(
    controller: &mut Controller,
    requests: &Receiver<VmmRequest>,
    wake: &EventFd,
    sig_fd: RawFd,
    args: &FirecrackerArgs,
) -> Result<Started, NoStart> {
    loop {
        if let Some(sig) = wait_preboot(wake, sig_fd) {
            return Err(NoStart::Signal(sig));
        }
        loop {
            let r = match requests.try_recv() {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Err(NoStart::ApiGone),
            };
            if let Some(vm) = serve_one(controller, r, args, sig_fd) {
                return Ok(vm);
            }
        }
    }
}

/// One pre-boot request; the VM if it was a successful InstanceStart.
fn serve_one(
    controller: &mut Controller,
    r: VmmRequest,
    args: &FirecrackerArgs,
    sig_fd: RawFd,
) -> Option<Started> {
    let request = r.request.clone();
    let response = match controller.preboot(r.request) {
        Preboot::Reply(response) => response,
        Preboot::Start => match start(controller, args, sig_fd) {
            Ok(vm) => {
                controller.set_started();
                vlog!(Level::Info, "the microVM started");
                let ok = ApiResponse::no_content();
                note_request(&request, &ok);
                let _ = r.reply.send(ok);
                return Some(vm);
            }
            Err(e) => {
                vlog!(Level::Error, "cannot start the microVM: {e}");
                ApiResponse::fault(400, &format!("cannot start the microVM: {e}"))
            }
        },
    };
    note_request(&request, &response);
    let _ = r.reply.send(response);
    None
}

/// `--log-path`, `--level`, `--metrics-path`: start the log and metrics.
fn observe(args: &FirecrackerArgs) -> Result<(), String> {
    let level = match &args.level {
        Some(l) => Level::parse(l)?,
        None => Level::Info,
    };
    if let Some(path) = &args.log_path {
        let opts = LogOptions {
            level,
            show_level: args.show_level,
            show_origin: args.show_log_origin,
            id: args.id.clone(),
        };
        logger::configure(path, opts).map_err(|e| format!("--log-path {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.metrics_path {
        metrics::configure(path).map_err(|e| format!("--metrics-path {}: {e}", path.display()))?;
    }
    Ok(())
}

pub fn main(args: &FirecrackerArgs) -> ExitCode {
    if args.seccomp_filter.is_some() {
        return fail("--seccomp-filter: seccomp filters are not implemented yet (issue 9)");
    }
    if args.no_api && args.config_file.is_none() && args.vm_config.is_none() {
        return fail(
            "--no-api needs --config-file: without the API nothing could configure the VM",
        );
    }
    if let Err(e) = observe(args) {
        return fail(e);
    }
    if args.boot_timer {
        eprintln!("vireo: warning: --boot-timer is not implemented yet; ignored");
    }
    vlog!(
        Level::Info,
        "Vireo {} in Firecracker mode",
        env!("CARGO_PKG_VERSION")
    );
    let file_config = match &args.config_file {
        Some(p) => match read_config_file(p) {
            Ok(c) => Some(c),
            Err(e) => return fail(e),
        },
        None => None,
    };
    // SIGINT and SIGTERM go to a signalfd, in every thread (the API
    // thread, started next, inherits the mask), so they end the VMM
    // cleanly in any phase.
    let sig_fd = match vmm::event_loop::signal_fd() {
        Ok(fd) => fd,
        Err(e) => return fail(e),
    };
    let (tx, rx) = mpsc::channel();
    let wake = match EventFd::new(EFD_NONBLOCK) {
        Ok(e) => e,
        Err(e) => return fail(format!("eventfd: {e}")),
    };
    let mut socket = SocketFile(None);
    if !args.no_api {
        let path = args
            .api_sock
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let server = match ApiServer::bind(&path) {
            Ok(s) => s.with_limits(ServerLimits {
                max_body_bytes: args.http_api_max_payload_size,
                ..ServerLimits::default()
            }),
            Err(e) => return fail(e),
        };
        vlog!(Level::Info, "API server listening on {}", path.display());
        socket.0 = Some(path);
        let server_wake = match wake.try_clone() {
            Ok(w) => w,
            Err(e) => return fail(format!("eventfd: {e}")),
        };
        if let Err(e) = server.spawn(tx.clone(), server_wake) {
            return fail(format!("cannot start the API thread: {e}"));
        }
    }

    let (mut controller, started) = if let Some(path) = &args.vm_config {
        // The inner side of a nested run: the host already converted the
        // configuration and serves the API; requests come over the relay.
        let c = Controller::new(args.id.clone());
        match read_vm_config(path).and_then(|config| start_here(&config)) {
            Ok(vm) => (c, Started::Local(Box::new(vm))),
            Err(e) => return fail(format!("cannot start the microVM: {e}")),
        }
    } else if let Some(config) = file_config {
        let c = Controller::with_config(args.id.clone(), config);
        match start(&c, args, sig_fd) {
            Ok(s) => (c, s),
            Err(e) => return fail(format!("cannot start the microVM: {e}")),
        }
    } else {
        let mut c = Controller::new(args.id.clone());
        match serve_until_start(&mut c, &rx, &wake, sig_fd, args) {
            Ok(s) => (c, s),
            Err(NoStart::Signal(sig)) => return signalled(sig),
            Err(NoStart::ApiGone) => return fail("the API server stopped"),
        }
    };
    controller.set_started();
    if let Some(tty) = &args.control_tty {
        let relay_wake = match wake.try_clone() {
            Ok(w) => w,
            Err(e) => return fail(format!("eventfd: {e}")),
        };
        if let Err(e) = relay::serve_tty(tty, tx.clone(), relay_wake) {
            return fail(format!("control tty {}: {e}", tty.display()));
        }
    }
    drop(tx);
    let code = match started {
        Started::Local(vm) => {
            let mut hook = ApiHook::new(&mut controller, &rx, &wake);
            match vm.run_with(Some(&mut hook)) {
                Ok(reason) => {
                    if let Some(msg) = reason.message() {
                        eprintln!("vireo: {msg}");
                    }
                    exit_code(reason.exit_code())
                }
                Err(e) => fail(e),
            }
        }
        Started::Rig(mut rig_vm) => serve_rig(&mut controller, &mut rig_vm, &rx, &wake, sig_fd),
    };
    drop(socket);
    code
}

fn signalled(sig: i32) -> ExitCode {
    eprintln!(
        "vireo: {}",
        vmm::ExitReason::Signal(sig).message().unwrap_or_default()
    );
    exit_code(128 + sig)
}

fn read_vm_config(path: &Path) -> Result<vmm::VmConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("VM config {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("VM config {}: {e}", path.display()))
}

/// The host side of a VM in the rig: answer what the configuration
/// answers, relay the rest, until the rig ends or a signal arrives.
fn serve_rig(
    controller: &mut Controller,
    vm: &mut RigVm,
    requests: &Receiver<VmmRequest>,
    wake: &EventFd,
    sig_fd: RawFd,
) -> ExitCode {
    loop {
        let mut fds = [wake.as_raw_fd(), sig_fd, vm.done.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: polling three valid descriptors in a local array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if n < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            if let Some(sig) = vmm::event_loop::read_signal(sig_fd) {
                return signalled(sig);
            }
        }
        if fds[2].revents != 0 {
            return match vm.result.recv() {
                Ok(Ok(code)) => exit_code(code),
                Ok(Err(e)) => {
                    eprintln!("vireo: error: {e}");
                    exit_code(e.exit_code())
                }
                Err(_) => fail("the rig thread stopped"),
            };
        }
        if fds[0].revents != 0 {
            let _ = wake.read();
            while let Ok(r) = requests.try_recv() {
                let response = match &r.request {
                    // A host path means nothing inside L1, whose drives
                    // were fixed when it booted.
                    ApiRequest::PatchDrive(p) if p.path_on_host.is_some() => ApiResponse::fault(
                        400,
                        "changing a drive's backing file of a VM in the nested rig is not \
                         supported: L1's drives are fixed when it boots",
                    ),
                    req => controller.common(req).unwrap_or_else(|| vm.relay.call(req)),
                };
                note_request(&r.request, &response);
                let _ = r.reply.send(response);
            }
        }
    }
}
