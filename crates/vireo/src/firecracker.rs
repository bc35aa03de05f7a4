//! Firecracker mode: `vireo --api-sock PATH` (or `--config-file FILE`),
//! the process model Firecracker's users and tools expect. The API socket
//! is served before any guest runs; requests configure the VM and
//! `InstanceStart` boots it; the process ends when the VM does, with the
//! VM's exit status. `--config-file` boots at once (with the API served
//! too unless `--no-api`).

use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver};

use api::models::FullVmConfiguration;
use api::{ApiResponse, ApiServer, ServerLimits, VmmRequest};
use vmm::api_control::{ApiHook, Controller, Preboot};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::cli::FirecrackerArgs;
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

/// The VM `controller.config` describes, built and started.
fn start(controller: &Controller, args: &FirecrackerArgs) -> Result<vmm::Vm, String> {
    let config = vmm::resources::to_vm_config(&controller.config).map_err(|e| e.to_string())?;
    let _ = args.enable_pci; // virtio-mmio arrives with the transport choice.
    vmm::preflight(&config).map_err(|e| e.to_string())?;
    let emulate = match args.emulate {
        rig::EmulateMode::Never => None,
        rig::EmulateMode::Always => Some("--emulate=always".to_string()),
        rig::EmulateMode::Auto => match rig::probe_host_kvm() {
            rig::HostKvm::Unusable(why) => Some(why),
            rig::HostKvm::Usable => None,
        },
    };
    if let Some(why) = emulate {
        return Err(format!(
            "the VM would run in the nested rig ({why}), which Firecracker mode does not \
             support yet (issue 12): use `vireo run`, or --emulate=never for a guest this \
             host's KVM can run"
        ));
    }
    let mut vm = vmm::build(&config).map_err(|e| e.to_string())?;
    vm.start().map_err(|e| e.to_string())?;
    Ok(vm)
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
) -> Result<vmm::Vm, NoStart> {
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
            if let Some(vm) = serve_one(controller, r, args) {
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
) -> Option<vmm::Vm> {
    let response = match controller.preboot(r.request) {
        Preboot::Reply(response) => response,
        Preboot::Start => match start(controller, args) {
            Ok(vm) => {
                controller.set_started();
                let _ = r.reply.send(ApiResponse::no_content());
                return Some(vm);
            }
            Err(e) => ApiResponse::fault(400, &format!("cannot start the microVM: {e}")),
        },
    };
    let _ = r.reply.send(response);
    None
}

pub fn main(args: &FirecrackerArgs) -> ExitCode {
    if args.seccomp_filter.is_some() {
        return fail("--seccomp-filter: seccomp filters are not implemented yet (issue 9)");
    }
    if args.no_api && args.config_file.is_none() {
        return fail(
            "--no-api needs --config-file: without the API nothing could configure the VM",
        );
    }
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
        socket.0 = Some(path);
        let server_wake = match wake.try_clone() {
            Ok(w) => w,
            Err(e) => return fail(format!("eventfd: {e}")),
        };
        if let Err(e) = server.spawn(tx, server_wake) {
            return fail(format!("cannot start the API thread: {e}"));
        }
    } else {
        drop(tx);
    }

    let (mut controller, vm) = match file_config {
        Some(config) => {
            let mut c = Controller::with_config(args.id.clone(), config);
            match start(&c, args) {
                Ok(vm) => {
                    c.set_started();
                    (c, vm)
                }
                Err(e) => return fail(format!("cannot start the microVM: {e}")),
            }
        }
        None => {
            let mut c = Controller::new(args.id.clone());
            match serve_until_start(&mut c, &rx, &wake, sig_fd, args) {
                Ok(vm) => (c, vm),
                Err(NoStart::Signal(sig)) => {
                    eprintln!(
                        "vireo: {}",
                        vmm::ExitReason::Signal(sig).message().unwrap_or_default()
                    );
                    return exit_code(128 + sig);
                }
                Err(NoStart::ApiGone) => return fail("the API server stopped"),
            }
        }
    };
    let mut hook = ApiHook {
        controller: &mut controller,
        requests: &rx,
        wake: &wake,
    };
    let result = vm.run_with(Some(&mut hook));
    drop(socket);
    match result {
        Ok(reason) => {
            if let Some(msg) = reason.message() {
                eprintln!("vireo: {msg}");
            }
            exit_code(reason.exit_code())
        }
        Err(e) => fail(e),
    }
}
