//! The native boot benchmark: the minimal PVH guest booted on this host's own
//! /dev/kvm by Vireo and by QEMU's microvm machine, run by run alternating,
//! with each VMM's time to the guest's marker, time to exit and peak RSS.

use crate::guest_elf::{minimal_guest_elf, MARKER};
use crate::measure::{measure_driven, measure_run, RunSample, Timeouts, VmmCommand};
use crate::stats::{summarize, Comparison, MetricRow};
use crate::{BenchError, BootBenchOptions};
use std::fmt::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Deadlines per run, from spawn. QEMU with qboot needs ~50 ms; these only
/// catch a VMM that hangs.
const TIMEOUTS: Timeouts = Timeouts {
    marker: Duration::from_secs(10),
    exit: Duration::from_secs(15),
};

/// Environment variable naming the QEMU binary (default: `qemu-system-x86_64` on PATH).
pub const QEMU_ENV: &str = "VIREO_BENCH_QEMU";
/// Environment variable naming the qboot firmware image.
pub const QBOOT_ENV: &str = "VIREO_BENCH_QBOOT";
const QBOOT_CANDIDATES: &[&str] = &[
    "/usr/share/qemu/qboot.rom",
    "/usr/share/qemu/bios-microvm.bin",
];

/// Reference medians of 20 runs on this kind of machine, from PLATFORM.md:
/// (VMM, ms to marker, MiB peak RSS).
pub const REFERENCE: &[(&str, &str, &str)] = &[
    ("Cloud Hypervisor 53.0", "4.2", "10.4"),
    ("Firecracker 1.16.1", "8.1", "4.0"),
    ("QEMU 10 microvm + qboot", "52", "42"),
];

/// A file in the temp directory, removed on drop.
pub(crate) struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn write(name: &str, bytes: &[u8]) -> Result<Self, BenchError> {
        let path = std::env::temp_dir().join(format!("vireo-bench-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).map_err(|source| BenchError::TempFile {
            path: path.clone(),
            source,
        })?;
        Ok(TempFile { path })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Which KVM this host has: PVM (software, shadow paging) or hardware.
pub fn kvm_backend() -> &'static str {
    if Path::new("/sys/module/kvm_pvm").exists() {
        "kvm_pvm (PVM: no hardware virtualization)"
    } else if Path::new("/sys/module/kvm_intel").exists() {
        "kvm_intel (VMX)"
    } else if Path::new("/sys/module/kvm_amd").exists() {
        "kvm_amd (SVM)"
    } else {
        "unknown KVM backend"
    }
}

/// The host's load average and CPU count, to judge how noisy a run was.
pub fn host_load() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let avg: Vec<&str> = load.split_whitespace().take(3).collect();
    if avg.len() == 3 {
        format!(
            "load average {} {} {} on {cpus} CPUs",
            avg[0], avg[1], avg[2]
        )
    } else {
        format!("{cpus} CPUs, load unknown")
    }
}

/// Finds `name` on PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The QEMU binary: `$VIREO_BENCH_QEMU`, else `qemu-system-x86_64` on PATH.
pub(crate) fn find_qemu() -> Result<PathBuf, BenchError> {
    if let Some(p) = std::env::var_os(QEMU_ENV) {
        return Ok(PathBuf::from(p));
    }
    which("qemu-system-x86_64").ok_or(BenchError::QemuNotFound)
}

pub(crate) fn qboot_path() -> Result<PathBuf, BenchError> {
    if let Some(p) = std::env::var_os(QBOOT_ENV) {
        return Ok(PathBuf::from(p));
    }
    QBOOT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| BenchError::FirmwareNotFound {
            searched: QBOOT_CANDIDATES.join(", "),
        })
}

/// `vireo run` booting `kernel` with the guest's serial on stdout.
pub fn vireo_command(vireo: &Path, kernel: &Path) -> VmmCommand {
    VmmCommand {
        name: "vireo".into(),
        program: vireo.to_path_buf(),
        args: vec![
            "run".into(),
            "--kernel".into(),
            kernel.into(),
            "--emulate=never".into(),
            "--memory".into(),
            "128M".into(),
            "--console".into(),
            "stdio".into(),
        ],
    }
}

/// QEMU's microvm machine booting the PVH ELF `kernel` through qboot.
///
/// Two additions to the plain microvm command line: microvm has no i8042 by
/// default, so `-device i8042` gives the guest its reset path (and QEMU exits
/// through `-no-reboot`); and QEMU 7.2 with `-cpu host` on a PVM host aborts
/// setting MSR_IA32_ARCH_CAPABILITIES, so that feature is turned off (it does
/// not matter to this guest).
pub fn qemu_command(qemu: &Path, qboot: &Path, kernel: &Path) -> VmmCommand {
    let args = [
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "128M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-device",
        "i8042",
        "-no-reboot",
        "-bios",
    ];
    let mut args: Vec<_> = args.iter().map(Into::into).collect();
    args.push(qboot.into());
    args.push("-kernel".into());
    args.push(kernel.into());
    VmmCommand {
        name: "qemu".into(),
        program: qemu.to_path_buf(),
        args,
    }
}

/// The three metrics of a set of samples, as (ms to marker, ms to exit, MiB).
fn columns(samples: &[RunSample]) -> [Vec<f64>; 3] {
    [
        samples
            .iter()
            .map(|s| s.marker.as_secs_f64() * 1e3)
            .collect(),
        samples.iter().map(|s| s.exit.as_secs_f64() * 1e3).collect(),
        samples
            .iter()
            .map(|s| s.max_rss_kib as f64 / 1024.0)
            .collect(),
    ]
}

/// Builds the comparison of `a` against `b` over the three metrics, with
/// metric names given for "marker" and "exit".
pub(crate) fn compare_table(
    a: (&str, &[RunSample]),
    b: (&str, &[RunSample]),
    names: [&str; 3],
) -> Result<Comparison, BenchError> {
    let units = ["ms", "ms", "MiB"];
    let (ca, cb) = (columns(a.1), columns(b.1));
    let mut rows = Vec::new();
    for i in 0..3 {
        let (Some(sa), Some(sb)) = (summarize(&ca[i]), summarize(&cb[i])) else {
            return Err(BenchError::NoRuns);
        };
        rows.push(MetricRow {
            name: names[i].to_string(),
            unit: units[i],
            a: sa,
            b: Some(sb),
        });
    }
    Ok(Comparison {
        a_name: a.0.to_string(),
        b_name: b.0.to_string(),
        rows,
    })
}

/// Runs `runs` measured rounds of `plans`, each once per round, in order on
/// even rounds and in reverse on odd ones, after one unmeasured warm-up
/// each; returns the samples per plan.
pub(crate) fn alternate<P, S, E>(
    plans: &[P],
    runs: usize,
    mut measure: impl FnMut(&P) -> Result<S, E>,
) -> Result<Vec<Vec<S>>, E> {
    for p in plans {
        measure(p)?;
    }
    let mut samples: Vec<Vec<S>> = plans.iter().map(|_| Vec::with_capacity(runs)).collect();
    for round in 0..runs {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..plans.len()).collect()
        } else {
            (0..plans.len()).rev().collect()
        };
        for i in order {
            samples[i].push(measure(&plans[i])?);
        }
    }
    Ok(samples)
}

/// Memory of the benchmark guest, MiB, the same for every VMM.
const GUEST_MIB: u32 = 128;

/// Per-request deadline when driving the API.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `s` as a JSON string literal (quoted and escaped).
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The API requests that configure and boot `kernel`, in order: the same
/// machine as `vireo run` (1 vCPU, 128 MiB), console on stdout (no
/// `/serial`, so the marker is timed on the pipe like the other runs).
pub(crate) fn api_requests(kernel: &Path) -> Vec<(&'static str, String)> {
    let kernel = json_string(&kernel.to_string_lossy());
    vec![
        (
            "/boot-source",
            format!(r#"{{"kernel_image_path": {kernel}}}"#),
        ),
        (
            "/machine-config",
            format!(r#"{{"vcpu_count": 1, "mem_size_mib": {GUEST_MIB}}}"#),
        ),
        (
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.to_string(),
        ),
    ]
}

/// A Firecracker config file with the same machine as [`api_requests`].
pub(crate) fn config_file_json(kernel: &Path) -> String {
    format!(
        r#"{{"boot-source": {{"kernel_image_path": {}}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": {GUEST_MIB}}}}}"#,
        json_string(&kernel.to_string_lossy())
    )
}

/// `vireo --api-sock SOCKET`: Firecracker's process model, configured over
/// the API by [`drive_api`].
pub fn vireo_api_command(vireo: &Path, socket: &Path) -> VmmCommand {
    VmmCommand {
        name: "vireo-api".into(),
        program: vireo.to_path_buf(),
        args: vec![
            "--api-sock".into(),
            socket.into(),
            "--id".into(),
            "bench".into(),
            "--emulate=never".into(),
        ],
    }
}

/// `vireo --no-api --config-file CONFIG`: Firecracker's config-file boot.
pub fn vireo_config_file_command(vireo: &Path, config: &Path) -> VmmCommand {
    VmmCommand {
        name: "vireo-config-file".into(),
        program: vireo.to_path_buf(),
        args: vec![
            "--no-api".into(),
            "--config-file".into(),
            config.into(),
            "--emulate=never".into(),
        ],
    }
}

/// When, from spawn, the API socket first accepted a connection and the
/// first configuration request was sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ApiTimes {
    pub accepting: Duration,
    pub first_request: Duration,
}

/// Polls `socket` until it accepts a connection, then sends `requests` as
/// PUTs, each of which must answer 204; runs on the measuring thread's side.
pub(crate) fn drive_api(
    socket: &Path,
    requests: &[(&'static str, String)],
    start: Instant,
    abandon: &AtomicBool,
) -> Result<ApiTimes, String> {
    loop {
        if UnixStream::connect(socket).is_ok() {
            break;
        }
        if abandon.load(Ordering::Relaxed) || start.elapsed() > TIMEOUTS.marker {
            return Err(format!(
                "the API socket {} never accepted a connection",
                socket.display()
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let accepting = start.elapsed();
    let first_request = start.elapsed();
    for (path, body) in requests {
        let reply = api::client::request(socket, "PUT", path, Some(body), REQUEST_TIMEOUT)
            .map_err(|e| format!("PUT {path}: {e}"))?;
        if reply.status != 204 {
            return Err(format!(
                "PUT {path} {body}: {} {}",
                reply.status, reply.body
            ));
        }
    }
    Ok(ApiTimes {
        accepting,
        first_request,
    })
}

/// One way of running a VMM in the native benchmark.
pub(crate) enum Plan {
    /// A command line that boots at once.
    Boot(VmmCommand),
    /// A process configured and started over its API socket.
    Api {
        cmd: VmmCommand,
        socket: PathBuf,
        requests: Vec<(&'static str, String)>,
    },
}

/// What one run of a [`Plan`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub run: RunSample,
    pub api: Option<ApiTimes>,
}

fn measure_plan(plan: &Plan) -> Result<Sample, BenchError> {
    match plan {
        Plan::Boot(cmd) => measure_run(cmd, MARKER, TIMEOUTS).map(|run| Sample { run, api: None }),
        Plan::Api {
            cmd,
            socket,
            requests,
        } => {
            // Left behind only by a killed run; Vireo refuses an existing path.
            let _ = std::fs::remove_file(socket);
            let (socket, requests) = (socket.clone(), requests.clone());
            measure_driven(cmd, MARKER, TIMEOUTS, move |start, abandon| {
                drive_api(&socket, &requests, start, abandon)
            })
            .map(|(run, api)| Sample {
                run,
                api: Some(api),
            })
        }
    }
}

/// Milliseconds of `f` over the samples that have it.
fn ms(samples: &[Sample], f: impl Fn(&Sample) -> Option<Duration>) -> Vec<f64> {
    samples
        .iter()
        .filter_map(f)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect()
}

fn mib(samples: &[Sample]) -> Vec<f64> {
    samples
        .iter()
        .map(|s| s.run.max_rss_kib as f64 / 1024.0)
        .collect()
}

fn metric_row(
    name: &str,
    unit: &'static str,
    a: &[f64],
    b: Option<&[f64]>,
) -> Result<MetricRow, BenchError> {
    let a = summarize(a).ok_or(BenchError::NoRuns)?;
    let b = match b {
        Some(b) => Some(summarize(b).ok_or(BenchError::NoRuns)?),
        None => None,
    };
    Ok(MetricRow {
        name: name.to_string(),
        unit,
        a,
        b,
    })
}

/// The native table: Vireo's three ways of booting (`vireo run`, the API,
/// the config file) against QEMU's one, row by row; QEMU has no API, so
/// its rows repeat its config-free boot, or show n/a.
pub(crate) fn native_table(
    run: &[Sample],
    qemu: &[Sample],
    api: &[Sample],
    file: &[Sample],
) -> Result<Comparison, BenchError> {
    let marker = |s: &Sample| Some(s.run.marker);
    let exit = |s: &Sample| Some(s.run.exit);
    let (q_marker, q_exit, q_rss) = (ms(qemu, marker), ms(qemu, exit), mib(qemu));
    let rows = vec![
        metric_row(
            "run: spawn -> marker",
            "ms",
            &ms(run, marker),
            Some(&q_marker),
        )?,
        metric_row("run: spawn -> exit", "ms", &ms(run, exit), Some(&q_exit))?,
        metric_row("run: peak RSS", "MiB", &mib(run), Some(&q_rss))?,
        metric_row(
            "api: spawn -> socket accepts",
            "ms",
            &ms(api, |s| s.api.map(|a| a.accepting)),
            None,
        )?,
        metric_row(
            "api: 1st request -> marker",
            "ms",
            &ms(api, |s| {
                s.api.map(|a| s.run.marker.saturating_sub(a.first_request))
            }),
            Some(&q_marker),
        )?,
        metric_row(
            "api: spawn -> marker",
            "ms",
            &ms(api, marker),
            Some(&q_marker),
        )?,
        metric_row("api: spawn -> exit", "ms", &ms(api, exit), Some(&q_exit))?,
        metric_row("api: peak RSS", "MiB", &mib(api), Some(&q_rss))?,
        metric_row(
            "config-file: spawn -> marker",
            "ms",
            &ms(file, marker),
            Some(&q_marker),
        )?,
        metric_row(
            "config-file: spawn -> exit",
            "ms",
            &ms(file, exit),
            Some(&q_exit),
        )?,
        metric_row("config-file: peak RSS", "MiB", &mib(file), Some(&q_rss))?,
    ];
    Ok(Comparison {
        a_name: "vireo".into(),
        b_name: "qemu".into(),
        rows,
    })
}

/// What each row of [`native_table`] measures, printed under it.
const ROW_LEGEND: &[&str] = &[
    "run:         `vireo run --kernel ELF` (flags only); spawn -> marker is the marker's last byte on the VMM's stdout",
    "api:         `vireo --api-sock S`: spawn -> socket accepts is the first successful connect(2);",
    "             1st request -> marker runs from sending PUT /boot-source (then /machine-config and",
    "             /actions InstanceStart) to the marker on stdout (no /serial: console on stdout)",
    "config-file: `vireo --no-api --config-file vm.json` (Firecracker's config-file boot, console on stdout)",
    "exit:        spawn -> the process's exit (pidfd readable); peak RSS: ru_maxrss from wait4",
    "qemu:        microvm + qboot, flags only, no API: its column repeats its spawn -> marker / exit /",
    "             RSS on every row of that kind, n/a where nothing compares",
];

/// The native part of `vireo bench boot`; returns the printed report.
pub fn run_native(opts: &BootBenchOptions) -> Result<String, BenchError> {
    if opts.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    let elf_bytes = minimal_guest_elf();
    let elf = TempFile::write("guest.elf", &elf_bytes)?;
    let config = TempFile::write("vm.json", config_file_json(&elf.path).as_bytes())?;
    let socket = std::env::temp_dir().join(format!("vireo-bench-{}-api.sock", std::process::id()));
    let plans = [
        Plan::Boot(vireo_command(&opts.vireo, &elf.path)),
        Plan::Boot(qemu_command(&find_qemu()?, &qboot_path()?, &elf.path)),
        Plan::Api {
            cmd: vireo_api_command(&opts.vireo, &socket),
            socket: socket.clone(),
            requests: api_requests(&elf.path),
        },
        Plan::Boot(vireo_config_file_command(&opts.vireo, &config.path)),
    ];
    let load_before = host_load();
    let measured = alternate(&plans, opts.runs, measure_plan);
    let _ = std::fs::remove_file(&socket);
    let samples = measured?;
    let table = native_table(&samples[0], &samples[1], &samples[2], &samples[3])?;
    let shown: Vec<String> = plans
        .iter()
        .map(|p| match p {
            Plan::Boot(c) => format!("{}: {}", c.name, c.display()),
            Plan::Api { cmd, requests, .. } => {
                let puts: Vec<String> = requests
                    .iter()
                    .map(|(path, body)| format!("PUT {path} {body}"))
                    .collect();
                format!("{}: {}; then {}", cmd.name, cmd.display(), puts.join("; "))
            }
        })
        .collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Native boot: minimal PVH guest ({} bytes: print a marker on COM1, reset via i8042)",
        elf_bytes.len()
    );
    let _ = writeln!(
        out,
        "  host KVM: {}; {} runs of each of {} ways, alternating (order reversed every other round), after one warm-up each",
        kvm_backend(),
        opts.runs,
        plans.len()
    );
    let _ = writeln!(out, "  host before: {load_before}; after: {}", host_load());
    for line in &shown {
        let _ = writeln!(out, "  {line}");
    }
    out.push('\n');
    out.push_str(&table.render());
    out.push('\n');
    for line in ROW_LEGEND {
        let _ = writeln!(out, "  {line}");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "  Reference medians (PLATFORM.md, 20 runs, same kind of machine):"
    );
    for (name, ms, mib) in REFERENCE {
        let _ = writeln!(
            out,
            "    {name:<26} {ms:>5} ms to marker  {mib:>5} MiB peak RSS"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternation_flips_order_each_round() {
        let mut order = String::new();
        let samples = alternate(&["a", "b"], 4, |c| {
            order.push_str(c);
            Ok::<_, ()>(c.to_string())
        })
        .expect("runs");
        assert_eq!(order, "ab".to_string() + "abbaabba");
        assert_eq!(samples, vec![vec!["a"; 4], vec!["b"; 4]]);

        order.clear();
        let samples = alternate(&["a", "b", "c"], 3, |c| {
            order.push_str(c);
            Ok::<_, ()>(())
        })
        .expect("runs");
        assert_eq!(order, "abc".to_string() + "abc" + "cba" + "abc");
        assert_eq!(samples.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3]);
        // The first error stops the benchmark.
        let mut n = 0;
        let r = alternate(&["a", "b"], 3, |_| {
            n += 1;
            if n == 3 {
                Err("boom")
            } else {
                Ok(())
            }
        });
        assert_eq!((r, n), (Err("boom"), 3));
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("/tmp/g.elf"), r#""/tmp/g.elf""#);
        assert_eq!(json_string("a\"b\\c\nd"), r#""a\"b\\c\u000ad""#);
        assert_eq!(json_string("é"), "\"é\"");
    }

    #[test]
    fn api_requests_and_config_file_describe_the_same_machine() {
        let k = Path::new("/tmp/a \"b\".elf");
        let reqs = api_requests(k);
        let paths: Vec<&str> = reqs.iter().map(|r| r.0).collect();
        assert_eq!(paths, ["/boot-source", "/machine-config", "/actions"]);
        assert_eq!(reqs[0].1, r#"{"kernel_image_path": "/tmp/a \"b\".elf"}"#);
        assert_eq!(reqs[1].1, r#"{"vcpu_count": 1, "mem_size_mib": 128}"#);
        assert!(reqs[2].1.contains("InstanceStart"));
        let cfg = config_file_json(k);
        assert_eq!(
            cfg,
            r#"{"boot-source": {"kernel_image_path": "/tmp/a \"b\".elf"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#
        );
    }

    fn sample(marker_ms: u64, exit_ms: u64, api: Option<(u64, u64)>) -> Sample {
        let ms = Duration::from_millis;
        Sample {
            run: RunSample {
                marker: ms(marker_ms),
                exit: ms(exit_ms),
                max_rss_kib: 2048,
            },
            api: api.map(|(a, f)| ApiTimes {
                accepting: ms(a),
                first_request: ms(f),
            }),
        }
    }

    #[test]
    fn native_table_rows_and_comparables() {
        let run = [sample(5, 20, None)];
        let qemu = [sample(50, 70, None)];
        let api = [sample(9, 30, Some((2, 3)))];
        let file = [sample(6, 25, None)];
        let t = native_table(&run, &qemu, &api, &file).expect("table");
        let row = |name: &str| {
            t.rows
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("no row {name}"))
        };
        assert_eq!(t.rows.len(), 11);
        assert_eq!(row("api: spawn -> socket accepts").a.median, 2.0);
        assert!(row("api: spawn -> socket accepts").b.is_none());
        // From the first request (3 ms) to the marker (9 ms).
        let first = row("api: 1st request -> marker");
        assert_eq!(first.a.median, 6.0);
        assert_eq!(first.b.map(|b| b.median), Some(50.0));
        assert_eq!(row("api: spawn -> exit").a.median, 30.0);
        assert_eq!(
            row("config-file: spawn -> exit").b.map(|b| b.median),
            Some(70.0)
        );
        assert_eq!(row("config-file: peak RSS").a.median, 2.0);
        // A missing API reading leaves that row empty: an error, not a 0.
        let no_api = [sample(9, 30, None)];
        assert!(native_table(&run, &qemu, &no_api, &file).is_err());
    }

    #[test]
    fn api_driver_gives_up_when_abandoned() {
        let sock =
            std::env::temp_dir().join(format!("vireo-bench-{}-none.sock", std::process::id()));
        let abandon = AtomicBool::new(true);
        let e = drive_api(&sock, &[], Instant::now(), &abandon).expect_err("no socket");
        assert!(e.contains("never accepted"), "{e}");
    }

    #[test]
    fn commands_name_the_kernel() {
        let v = vireo_command(Path::new("/bin/vireo"), Path::new("/tmp/g.elf"));
        assert_eq!(
            v.display(),
            "/bin/vireo run --kernel /tmp/g.elf --emulate=never --memory 128M --console stdio"
        );
        let q = qemu_command(
            Path::new("qemu"),
            Path::new("/q.rom"),
            Path::new("/tmp/g.elf"),
        );
        assert!(
            q.display().ends_with("-bios /q.rom -kernel /tmp/g.elf"),
            "{}",
            q.display()
        );
    }

    /// QEMU and its qboot firmware, when they and /dev/kvm exist here;
    /// otherwise None, with a note saying why the test is skipped.
    fn qemu_on_kvm() -> Option<(PathBuf, PathBuf)> {
        let (Ok(qemu), Ok(qboot)) = (find_qemu(), qboot_path()) else {
            eprintln!("skipped: no qemu-system-x86_64 or qboot firmware on this host");
            return None;
        };
        if !Path::new("/dev/kvm").exists() {
            eprintln!("skipped: no /dev/kvm");
            return None;
        }
        Some((qemu, qboot))
    }

    /// Boots the guest image on a real VMM: QEMU microvm on /dev/kvm, when
    /// both exist here (skipped, with a note, otherwise).
    #[test]
    fn qemu_boots_minimal_guest() {
        let Some((qemu, qboot)) = qemu_on_kvm() else {
            return;
        };
        eprintln!("host KVM: {}", kvm_backend());
        let elf = TempFile::write("test-guest.elf", &minimal_guest_elf()).expect("temp file");
        let s = measure_run(&qemu_command(&qemu, &qboot, &elf.path), MARKER, TIMEOUTS)
            .expect("QEMU boots the minimal guest, prints the marker and exits 0");
        assert!(s.marker <= s.exit && s.max_rss_kib > 0, "{s:?}");
    }

    /// A stand-in for Vireo that runs QEMU: `run --kernel ELF ...` and
    /// `--no-api --config-file F` exec QEMU on the kernel at once;
    /// `--api-sock S` serves a toy API (204 to everything) and execs QEMU on
    /// the /boot-source kernel at `PUT /actions`.
    const STAND_IN: &str = r#"
import json, os, socket, sys
args = sys.argv[1:]
def boot(kernel):
    cmd = [kernel if a == "KERNEL" else a for a in QEMU]
    os.execvp(cmd[0], cmd)
if args[0] == "run":
    boot(args[2])
if "--config-file" in args:
    with open(args[args.index("--config-file") + 1]) as f:
        boot(json.load(f)["boot-source"]["kernel_image_path"])
path = args[args.index("--api-sock") + 1]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(8)
kernel = None
while True:
    c, _ = srv.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        d = c.recv(4096)
        if not d:
            break
        data += d
    if not data:
        c.close()
        continue
    head, _, body = data.partition(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    while len(body) < n:
        body += c.recv(4096)
    target = head.split(b" ")[1]
    c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    c.close()
    if target == b"/boot-source":
        kernel = json.loads(body)["kernel_image_path"]
    if target == b"/actions":
        os.unlink(path)
        boot(kernel)
"#;

    /// The whole native benchmark, with QEMU standing in for Vireo (a
    /// Python script taking each of Vireo's command lines; see
    /// [`STAND_IN`]).
    #[test]
    fn run_native_end_to_end_with_a_stand_in() {
        let Some((qemu, qboot)) = qemu_on_kvm() else {
            return;
        };
        let Some(python) = which("python3") else {
            eprintln!("skipped: no python3 for the stand-in");
            return;
        };
        let q = qemu_command(&qemu, &qboot, Path::new("KERNEL"));
        let mut argv = vec![q.program.to_string_lossy().into_owned()];
        argv.extend(q.args.iter().map(|a| a.to_string_lossy().into_owned()));
        let argv: Vec<String> = argv.iter().map(|a| json_string(a)).collect();
        let script = TempFile::write(
            "stand-in.py",
            format!(
                "#!{}\nQEMU = [{}]\n{STAND_IN}",
                python.display(),
                argv.join(", ")
            )
            .as_bytes(),
        )
        .expect("temp file");
        let mut perms = std::fs::metadata(&script.path).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&script.path, perms).expect("chmod");
        let opts = BootBenchOptions {
            runs: 2,
            vireo: script.path.clone(),
            rig: false,
        };
        let report = run_native(&opts).expect("benchmark runs");
        for want in [
            "run: spawn -> marker (ms)",
            "run: spawn -> exit (ms)",
            "run: peak RSS (MiB)",
            "api: spawn -> socket accepts (ms)",
            "api: 1st request -> marker (ms)",
            "config-file: spawn -> exit (ms)",
            "PUT /actions",
            "vireo/qemu",
            "Firecracker",
        ] {
            assert!(report.contains(want), "missing {want:?} in\n{report}");
        }
    }
}
