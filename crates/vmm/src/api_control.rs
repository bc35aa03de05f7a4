//! The VMM side of the REST API: what each request does to the VM.
//!
//! The API server (crate `api`) parses and validates requests on its own
//! thread and hands each one over a channel as a `VmmRequest`. Before the
//! guest starts, `Controller::preboot` builds up the Firecracker-shaped
//! configuration (`FullVmConfiguration`); `InstanceStart` turns it into a
//! `VmConfig` (`resources::to_vm_config`), builds and starts the VM. From
//! then on the VMM thread's event loop serves requests through `ApiHook`
//! with the running VM at hand (`Controller::runtime`). Status codes and
//! messages follow Firecracker's: 204 on success, 400 with a fault message
//! for a request that cannot be carried out in the current state.

use devices::virtio::balloon::{BalloonHandle, PAGES_PER_MIB};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::mpsc::Receiver;

use api::models::{
    ActionType, Drive, FirecrackerVersion, FullVmConfiguration, InstanceInfo, InstanceState,
    VmState,
};
use api::{ApiRequest, ApiResponse, VmmRequest};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::builder::Vm;
use crate::event_loop::LoopHook;
use crate::lifecycle::RunState;
use crate::observe::logger::{self, Level, LogOptions};
use crate::observe::metrics;

/// Firecracker's words for a request in the wrong phase.
const AFTER_START: &str = "The requested operation is not supported after starting the microVM.";
const BEFORE_START: &str = "The requested operation is not supported before starting the microVM.";

/// What a pre-boot request asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Preboot {
    /// Answer this.
    Reply(ApiResponse),
    /// `InstanceStart`: build and start the VM from `config`, then answer
    /// 204 (or 400 with why it could not start).
    Start,
}

/// The API's view of one VMM process: its id and the configuration.
pub struct Controller {
    id: String,
    /// The configuration as requests built it (also `GET /vm/config`).
    pub config: FullVmConfiguration,
    started: bool,
}

fn bad(msg: impl std::fmt::Display) -> ApiResponse {
    ApiResponse::fault(400, &msg.to_string())
}

fn not_yet(what: &str, issue: u32) -> ApiResponse {
    bad(format!(
        "{what} is not supported by this version of Vireo yet (issue {issue})"
    ))
}

impl Controller {
    pub fn new(id: impl Into<String>) -> Self {
        Controller {
            id: id.into(),
            config: FullVmConfiguration::default(),
            started: false,
        }
    }

    /// A controller for a VM configured by a file and started at once.
    pub fn with_config(id: impl Into<String>, config: FullVmConfiguration) -> Self {
        Controller {
            config,
            ..Controller::new(id)
        }
    }

    /// Mark the VM as started (after a successful `Start`).
    pub fn set_started(&mut self) {
        self.started = true;
    }

    fn info(&self, state: InstanceState) -> ApiResponse {
        ApiResponse::ok_json(&InstanceInfo {
            app_name: "vireo".into(),
            id: self.id.clone(),
            state,
            vmm_version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    /// Requests answered from the configuration alone, the same way in
    /// both phases (and by the host side of a nested run); None for the rest.
    pub fn common(&self, req: &ApiRequest) -> Option<ApiResponse> {
        Some(match req {
            ApiRequest::GetVersion => ApiResponse::ok_json(&FirecrackerVersion {
                firecracker_version: env!("CARGO_PKG_VERSION").into(),
            }),
            ApiRequest::GetVmConfig => ApiResponse::ok_json(&self.config),
            ApiRequest::GetMachineConfig => {
                ApiResponse::ok_json(&self.config.machine_config.clone().unwrap_or_default())
            }
            ApiRequest::StartBalloonHinting(_)
            | ApiRequest::DescribeBalloonHinting
            | ApiRequest::StopBalloonHinting => not_yet("balloon free page hinting", 7),
            ApiRequest::PutMmds(_)
            | ApiRequest::PatchMmds(_)
            | ApiRequest::GetMmds
            | ApiRequest::PutMmdsConfig(_) => bad("MMDS is not supported by Vireo"),
            ApiRequest::GetMemoryHotplug | ApiRequest::PatchMemoryHotplug(_) => {
                not_yet("memory hotplug (virtio-mem)", 7)
            }
            ApiRequest::CreateSnapshot(_) | ApiRequest::LoadSnapshot(_) => not_yet("snapshots", 8),
            ApiRequest::PatchPmem(_) => bad("virtio-pmem is not supported by Vireo"),
            _ => return None,
        })
    }

    /// Serve one request before the guest starts.
    pub fn preboot(&mut self, req: ApiRequest) -> Preboot {
        if let Some(r) = self.common(&req) {
            return Preboot::Reply(r);
        }
        let done = Preboot::Reply(ApiResponse::no_content());
        let c = &mut self.config;
        match req {
            ApiRequest::DescribeInstance => {
                return Preboot::Reply(self.info(InstanceState::NotStarted))
            }
            ApiRequest::CreateSyncAction(a) => match a.action_type {
                ActionType::InstanceStart => return Preboot::Start,
                ActionType::SendCtrlAltDel => return Preboot::Reply(bad(BEFORE_START)),
                ActionType::FlushMetrics => return Preboot::Reply(flush_metrics(None)),
            },
            ApiRequest::PutBootSource(b) => c.boot_source = Some(b),
            ApiRequest::PutMachineConfig(m) => c.machine_config = Some(m),
            ApiRequest::PatchMachineConfig(u) => {
                let base = c.machine_config.clone().unwrap_or_default();
                match u.apply(&base) {
                    Ok(m) => c.machine_config = Some(m),
                    Err(e) => {
                        return Preboot::Reply(bad(format!(
                            "invalid machine configuration: {}: {}",
                            e.field, e.reason
                        )))
                    }
                }
            }
            ApiRequest::PutDrive(d) => put_drive(&mut c.drives, d),
            ApiRequest::PatchDrive(p) => {
                let Some(d) = c.drives.iter_mut().find(|d| d.drive_id == p.drive_id) else {
                    return Preboot::Reply(bad(format!(
                        "drive {:?} does not exist; PUT /drives/{0} first",
                        p.drive_id
                    )));
                };
                if let Some(path) = p.path_on_host {
                    d.path_on_host = Some(path);
                }
                if p.rate_limiter.is_some() {
                    d.rate_limiter = p.rate_limiter;
                }
            }
            // Post-boot only, as in Firecracker: before boot, PUT the
            // interface with its limiters.
            ApiRequest::PatchNetworkInterface(p) => {
                return Preboot::Reply(bad(format!(
                    "network interface {}: PATCH is for a running VM; before starting, \
                     PUT /network-interfaces/{0} with its rate limiters",
                    p.iface_id
                )));
            }
            ApiRequest::PutSerial(s) => c.serial = Some(s),
            ApiRequest::PutLogger(l) => {
                let opts = LogOptions {
                    level: level_of(l.level),
                    show_level: l.show_level,
                    show_origin: l.show_log_origin,
                    id: self.id.clone(),
                };
                if let Some(path) = &l.log_path {
                    if let Err(e) = logger::configure(std::path::Path::new(path), opts) {
                        return Preboot::Reply(bad(format!("log_path {path}: {e}")));
                    }
                }
                c.logger = Some(l);
            }
            ApiRequest::PutMetrics(m) => {
                if let Err(e) = metrics::configure(std::path::Path::new(&m.metrics_path)) {
                    return Preboot::Reply(bad(format!("metrics_path {}: {e}", m.metrics_path)));
                }
                c.metrics = Some(m);
            }
            // Stored so GET /vm/config shows them; InstanceStart refuses
            // what Vireo cannot build yet, naming the field.
            ApiRequest::PutNetworkInterface(n) => {
                c.network_interfaces.retain(|x| x.iface_id != n.iface_id);
                c.network_interfaces.push(n);
            }
            ApiRequest::PutVsock(v) => c.vsock = Some(v),
            ApiRequest::PutBalloon(b) => {
                let mem = c
                    .machine_config
                    .as_ref()
                    .map_or(crate::config::default_memory_mib(), |m| {
                        m.mem_size_mib as u64
                    });
                if u64::from(b.amount_mib) > mem {
                    return Preboot::Reply(bad(format!(
                        "balloon.amount_mib: {} MiB is larger than the VM's {mem} MiB of memory",
                        b.amount_mib
                    )));
                }
                c.balloon = Some(b)
            }
            ApiRequest::PutEntropy(e) => c.entropy = Some(e),
            ApiRequest::PutCpuConfig(cc) => {
                c.cpu_config = Some(api::models::CpuConfigSource::Inline(cc))
            }
            ApiRequest::PutMemoryHotplug(m) => c.memory_hotplug = Some(m),
            ApiRequest::PutPmem(p) => {
                c.pmem.retain(|x| x.id != p.id);
                c.pmem.push(p);
            }
            ApiRequest::DescribeBalloonConfig => {
                return Preboot::Reply(match &c.balloon {
                    Some(b) => ApiResponse::ok_json(b),
                    None => bad(NO_BALLOON),
                })
            }
            ApiRequest::PatchBalloon(u) => match c.balloon.as_mut() {
                Some(b) => b.amount_mib = u.amount_mib,
                None => return Preboot::Reply(bad(NO_BALLOON)),
            },
            ApiRequest::PatchBalloonStatsInterval(u) => match c.balloon.as_mut() {
                Some(b) => b.stats_polling_interval_s = u.stats_polling_interval_s,
                None => return Preboot::Reply(bad(NO_BALLOON)),
            },
            ApiRequest::GetVmMemory => {
                return Preboot::Reply(bad("memory accounting is for a running VM: start it first"))
            }
            ApiRequest::DescribeBalloonStats => {
                return Preboot::Reply(bad(
                    "balloon statistics come from the running guest: start the VM first",
                ))
            }
            ApiRequest::PatchVm(_) => return Preboot::Reply(bad(BEFORE_START)),
            // Answered by `common`.
            _ => {}
        }
        done
    }

    /// Serve one request while the VM runs.
    pub fn runtime(&mut self, req: ApiRequest, vm: &mut Vm) -> ApiResponse {
        if let Some(r) = self.common(&req) {
            return r;
        }
        match req {
            ApiRequest::DescribeInstance => self.info(match vm.state() {
                RunState::Running => InstanceState::Running,
                RunState::Paused => InstanceState::Paused,
            }),
            ApiRequest::PatchVm(v) => {
                crate::vlog!(Level::Info, "VM state change requested: {:?}", v.state);
                let result = match v.state {
                    VmState::Paused => vm.pause(),
                    VmState::Resumed => vm.resume(),
                };
                match result {
                    Ok(()) => ApiResponse::no_content(),
                    Err(e) => ApiResponse::fault(500, &e.to_string()),
                }
            }
            ApiRequest::CreateSyncAction(a) => match a.action_type {
                ActionType::InstanceStart => bad(AFTER_START),
                ActionType::FlushMetrics => flush_metrics(Some(vm)),
                ActionType::SendCtrlAltDel => {
                    crate::vlog!(Level::Info, "sending Ctrl-Alt-Del");
                    vm.send_ctrl_alt_del();
                    ApiResponse::no_content()
                }
            },
            ApiRequest::PatchNetworkInterface(p) => {
                let rx = p
                    .rx_rate_limiter
                    .as_ref()
                    .map(crate::resources::rate_limiter);
                let tx = p
                    .tx_rate_limiter
                    .as_ref()
                    .map(crate::resources::rate_limiter);
                match vm.patch_net_rate_limiters(&p.iface_id, rx.as_ref(), tx.as_ref()) {
                    Ok(_) => {
                        crate::vlog!(
                            Level::Info,
                            "network interface {}: new rate limiters",
                            p.iface_id
                        );
                        if let Some(n) = self
                            .config
                            .network_interfaces
                            .iter_mut()
                            .find(|n| n.iface_id == p.iface_id)
                        {
                            patch_interface(n, &p);
                        }
                        ApiResponse::no_content()
                    }
                    Err(e) => bad(format!("network interface {}: {e}", p.iface_id)),
                }
            }
            ApiRequest::PatchDrive(p) => {
                if p.rate_limiter.is_some() {
                    return bad("drives.rate_limiter: block rate limiting is not supported by this version of Vireo yet");
                }
                let Some(path) = p.path_on_host else {
                    return ApiResponse::no_content();
                };
                match vm.replace_drive(&p.drive_id, std::path::Path::new(&path)) {
                    Ok(()) => {
                        crate::vlog!(Level::Info, "drive {} now backed by {path}", p.drive_id);
                        if let Some(d) = self
                            .config
                            .drives
                            .iter_mut()
                            .find(|d| d.drive_id == p.drive_id)
                        {
                            d.path_on_host = Some(path);
                        }
                        ApiResponse::no_content()
                    }
                    Err(e) => bad(format!("drive {}: {e}", p.drive_id)),
                }
            }
            // From the VM itself (a nested VM's controller in L1 holds no
            // Firecracker configuration).
            ApiRequest::DescribeBalloonConfig => match (&vm.config.balloon, vm.balloon()) {
                (Some(b), Some(h)) => ApiResponse::ok_json(&api::models::Balloon {
                    amount_mib: h.target_pages() / PAGES_PER_MIB,
                    deflate_on_oom: b.deflate_on_oom,
                    stats_polling_interval_s: h.stats_interval_s(),
                    free_page_hinting: false,
                    free_page_reporting: b.free_page_reporting,
                }),
                _ => bad(NO_BALLOON),
            },
            ApiRequest::PatchBalloon(u) => {
                let Some(h) = vm.balloon() else {
                    return bad(NO_BALLOON);
                };
                match h.set_target_mib(u.amount_mib) {
                    Ok(()) => {
                        crate::vlog!(Level::Info, "balloon target: {} MiB", u.amount_mib);
                        if let Some(b) = self.config.balloon.as_mut() {
                            b.amount_mib = u.amount_mib;
                        }
                        ApiResponse::no_content()
                    }
                    Err(e) => bad(e),
                }
            }
            ApiRequest::PatchBalloonStatsInterval(u) => {
                let Some(h) = vm.balloon() else {
                    return bad(NO_BALLOON);
                };
                match h.set_stats_interval(u.stats_polling_interval_s) {
                    Ok(()) => {
                        if let Some(b) = self.config.balloon.as_mut() {
                            b.stats_polling_interval_s = u.stats_polling_interval_s;
                        }
                        ApiResponse::no_content()
                    }
                    Err(e) => bad(e),
                }
            }
            ApiRequest::GetVmMemory => match vm.memory_usage() {
                Ok(u) => {
                    let page = u64::from(devices::virtio::balloon::PAGES_PER_MIB);
                    let mib_bytes = |pages: u32| u64::from(pages) * (1 << 20) / page;
                    ApiResponse::ok_json(&api::models::VmMemory {
                        guest_ram: u.guest_ram,
                        guest_resident: u.guest_resident,
                        guest_swapped: u.guest_swapped,
                        guest_huge_pages: u.guest_huge,
                        vmm_resident: u.process_resident,
                        vmm_overhead: u.overhead(),
                        balloon_target: vm.balloon().map(|h| mib_bytes(h.target_pages())),
                        balloon_actual: vm.balloon().map(|h| mib_bytes(h.actual_pages())),
                        ksm_merging_pages: u.ksm_merging_pages,
                    })
                }
                Err(e) => {
                    ApiResponse::fault(500, &format!("cannot read the process's memory maps: {e}"))
                }
            },
            ApiRequest::DescribeBalloonStats => match vm.balloon() {
                None => bad(NO_BALLOON),
                Some(h) if h.stats_interval_s() == 0 => {
                    bad("balloon statistics are not enabled (stats_polling_interval_s is 0)")
                }
                Some(h) => ApiResponse::ok_json(&balloon_stats(h)),
            },
            _ => bad(AFTER_START),
        }
    }
}

const NO_BALLOON: &str = "there is no balloon device: PUT /balloon before starting the VM";

/// The balloon's size and the guest's last statistics, as Firecracker
/// reports them.
fn balloon_stats(h: &BalloonHandle) -> api::models::BalloonStats {
    let s = h.stats();
    let (target, actual) = (h.target_pages(), h.actual_pages());
    api::models::BalloonStats {
        target_pages: target,
        actual_pages: actual,
        target_mib: target / PAGES_PER_MIB,
        actual_mib: actual / PAGES_PER_MIB,
        swap_in: s.swap_in,
        swap_out: s.swap_out,
        major_faults: s.major_faults,
        minor_faults: s.minor_faults,
        free_memory: s.free_memory,
        total_memory: s.total_memory,
        available_memory: s.available_memory,
        disk_caches: s.disk_caches,
        hugetlb_allocations: s.hugetlb_allocations,
        hugetlb_failures: s.hugetlb_failures,
        oom_kill: s.oom_kill,
        alloc_stall: s.alloc_stall,
        async_scan: s.async_scan,
        direct_scan: s.direct_scan,
        async_reclaim: s.async_reclaim,
        direct_reclaim: s.direct_reclaim,
    }
}

/// A network interface's configuration with a PATCH's rate limiters
/// applied (buckets the PATCH leaves out stay).
fn patch_interface(
    n: &mut api::models::NetworkInterface,
    p: &api::models::PartialNetworkInterface,
) {
    use api::models::patch_limiter;
    n.rx_rate_limiter = patch_limiter(&n.rx_rate_limiter, &p.rx_rate_limiter);
    n.tx_rate_limiter = patch_limiter(&n.tx_rate_limiter, &p.tx_rate_limiter);
}

/// Firecracker's log levels as the logger's.
pub fn level_of(l: api::models::LogLevel) -> Level {
    use api::models::LogLevel as L;
    match l {
        L::Off => Level::Off,
        L::Error => Level::Error,
        L::Warning => Level::Warn,
        L::Info => Level::Info,
        L::Debug => Level::Debug,
        L::Trace => Level::Trace,
    }
}

/// FlushMetrics: one metrics line now (before boot, with no VM yet).
fn flush_metrics(vm: Option<&Vm>) -> ApiResponse {
    if !metrics::configured() {
        return bad("FlushMetrics: metrics are not configured (PUT /metrics or --metrics-path)");
    }
    let line = match vm {
        Some(vm) => vm.metrics(),
        None => metrics::snapshot("Not started", 0, &[]),
    };
    metrics::write(&line);
    ApiResponse::no_content()
}

/// PUT /drives/{id}: replace the drive with that id, or add it at the end.
fn put_drive(drives: &mut Vec<Drive>, d: Drive) {
    match drives.iter_mut().find(|x| x.drive_id == d.drive_id) {
        Some(slot) => *slot = d,
        None => drives.push(d),
    }
}

/// Serves the API from the VM's event loop: the server writes `wake` after
/// each request it queues. `metrics_timer` (when metrics are written)
/// fires every `metrics::PERIOD`.
pub struct ApiHook<'a> {
    pub controller: &'a mut Controller,
    pub requests: &'a Receiver<VmmRequest>,
    pub wake: &'a EventFd,
    pub metrics_timer: Option<TimerFd>,
}

impl<'a> ApiHook<'a> {
    pub fn new(
        controller: &'a mut Controller,
        requests: &'a Receiver<VmmRequest>,
        wake: &'a EventFd,
    ) -> Self {
        let metrics_timer = TimerFd::new().ok().and_then(|mut t| {
            t.reset(metrics::PERIOD, Some(metrics::PERIOD)).ok()?;
            Some(t)
        });
        ApiHook {
            controller,
            requests,
            wake,
            metrics_timer,
        }
    }
}

/// Log and count one request and its answer.
pub fn note_request(req: &ApiRequest, response: &ApiResponse) {
    metrics::count_api(response.status);
    let mut text = format!("{req:?}");
    text.truncate(200);
    crate::vlog!(Level::Debug, "API request {text}: {}", response.status);
}

impl LoopHook for ApiHook<'_> {
    fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    fn ready(&mut self, vm: &mut Vm) {
        let _ = self.wake.read();
        while let Ok(r) = self.requests.try_recv() {
            let request = r.request.clone();
            let response = self.controller.runtime(r.request, vm);
            note_request(&request, &response);
            let _ = r.reply.send(response);
        }
    }

    fn timer(&self) -> Option<RawFd> {
        self.metrics_timer.as_ref().map(|t| t.as_raw_fd())
    }

    fn on_timer(&mut self, vm: &mut Vm) {
        if let Some(t) = &mut self.metrics_timer {
            let _ = t.wait();
        }
        metrics::write(&vm.metrics());
    }

    fn finished(&mut self, vm: &mut Vm, reason: &crate::ExitReason) {
        crate::vlog!(Level::Info, "VM ended: {reason:?}");
        metrics::write(&vm.metrics());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::{parse_request, Method};

    fn req(method: Method, path: &str, body: &str) -> ApiRequest {
        parse_request(method.as_str(), path, body.as_bytes()).unwrap()
    }

    fn reply(c: &mut Controller, method: Method, path: &str, body: &str) -> ApiResponse {
        match c.preboot(req(method, path, body)) {
            Preboot::Reply(r) => r,
            Preboot::Start => panic!("unexpected start"),
        }
    }

    #[test]
    fn preboot_requests_build_the_configuration() {
        let mut c = Controller::new("vm-1");
        let ok = |r: ApiResponse| assert_eq!(r.status, 204, "{r:?}");
        ok(reply(
            &mut c,
            Method::Put,
            "/boot-source",
            r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#,
        ));
        ok(reply(
            &mut c,
            Method::Put,
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
        ));
        ok(reply(
            &mut c,
            Method::Patch,
            "/machine-config",
            r#"{"mem_size_mib": 512}"#,
        ));
        ok(reply(
            &mut c,
            Method::Put,
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/a", "is_root_device": true, "is_read_only": false}"#,
        ));
        // PUT again replaces, PATCH changes the path.
        ok(reply(
            &mut c,
            Method::Put,
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/b", "is_root_device": true, "is_read_only": false}"#,
        ));
        ok(reply(
            &mut c,
            Method::Patch,
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/c"}"#,
        ));
        assert_eq!(c.config.drives.len(), 1);
        let vm = crate::resources::to_vm_config(&c.config, true).unwrap();
        assert_eq!((vm.vcpus, vm.memory_mib), (2, 512));
        assert_eq!(vm.disks[0].path, std::path::PathBuf::from("/c"));

        let info = reply(&mut c, Method::Get, "/", "");
        assert_eq!(info.status, 200);
        assert!(info.body.unwrap().contains("\"Not started\""));
        let cfg = reply(&mut c, Method::Get, "/vm/config", "");
        assert!(cfg.body.unwrap().contains("\"mem_size_mib\":512"));
        let start = req(
            Method::Put,
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        );
        assert_eq!(c.preboot(start), Preboot::Start);
    }

    #[test]
    fn wrong_phase_and_unknown_drives_get_400_with_a_reason() {
        let mut c = Controller::new("x");
        for (m, path, body, needle) in [
            (
                Method::Patch,
                "/vm",
                r#"{"state": "Paused"}"#,
                "before starting",
            ),
            (
                Method::Put,
                "/actions",
                r#"{"action_type": "SendCtrlAltDel"}"#,
                "before starting",
            ),
            (
                Method::Patch,
                "/drives/nope",
                r#"{"drive_id": "nope", "path_on_host": "/x"}"#,
                "does not exist",
            ),
            (Method::Get, "/balloon", "", "PUT /balloon"),
            (
                Method::Put,
                "/balloon",
                r#"{"amount_mib": 9999, "deflate_on_oom": false}"#,
                "larger than",
            ),
            (Method::Get, "/balloon/statistics", "", "start the VM"),
            (Method::Get, "/vm/memory", "", "running VM"),
            (Method::Patch, "/balloon/hinting/start", "", "issue 7"),
            (
                Method::Put,
                "/snapshot/create",
                r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#,
                "issue 8",
            ),
        ] {
            let r = reply(&mut c, m, path, body);
            assert_eq!(r.status, 400, "{path}");
            let body = r.body.unwrap();
            assert!(
                body.contains("fault_message") && body.contains(needle),
                "{path}: {body}"
            );
        }
    }
}
