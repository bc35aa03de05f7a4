//! The network benchmark behind `vireo bench net`: TCP throughput both
//! ways, TCP request/response latency and vsock throughput both ways,
//! between the guest and L1, on Vireo's virtio-net (a tap) and virtio-vsock
//! against QEMU's virtio-net-pci on the same tap, once with its userspace
//! backend and once with vhost-net, and QEMU's vhost-vsock, all inside one
//! run of the nested rig's L1 machine, boot by boot in rotating order.
//!
//! The guest is the default one (Debian cloud kernel, busybox initramfs)
//! with `vireo-agent` and the guest script ([`crate::net_script`]) added to
//! its initrd; every VMM boots the same kernel, initrd and command line
//! with 1 vCPU and 128 MiB. The servers (`vireo-agent serve`) run in L1 for
//! the whole run; the guest's `vireo-agent probe` times each test itself.
//!
//! Rig numbers are inflated by emulation (L1 is QEMU TCG): compare the
//! ratios, never quote them as native figures.

use crate::native::{find_qemu, host_load, TempFile};
use crate::net_script::{
    guest_script, l1_setup, GUEST_CID, GUEST_MAC, GUEST_SCRIPT_PATH, L1_TAP, TAG,
};
use crate::rig_part::{l1_files, qemu_argv_with, vireo_argv_with, with_l1_context};
use crate::rig_script::{sh_display, ScriptVmm};
use crate::stats::{summarize, Comparison, MetricRow};
use crate::suite_script::{
    guest_notes, initrd_with_script, l1_script, parse_suite_results, L1Plan, RunSamples,
};
use crate::{BenchError, QemuMachine};
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Default measured boots per VMM.
pub const NET_DEFAULT_RUNS: usize = 3;
/// Default repetitions of the whole set of tests per boot.
pub const NET_DEFAULT_REPS: usize = 3;
/// Default bytes per throughput test.
pub const NET_DEFAULT_MIB: u64 = 32;
/// Default request/response round trips.
pub const NET_DEFAULT_RR: u64 = 1000;

/// Where things live inside L1.
const L1_AGENT: &str = "/rig/bench/vireo-agent";
/// Vireo's vsock socket in L1 (the servers listen on `_PORT` beside it).
const L1_VSOCK_UDS: &str = "/tmp/vireo-net/vsock.sock";

/// One boot (guest boot plus one repetition of every test) is killed after
/// this long (times the repetitions).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Allowance for L1's own boot and shutdown.
const L1_OVERHEAD: Duration = Duration::from_secs(300);

/// What `vireo bench net` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetBenchOptions {
    /// Measured boots per VMM.
    pub runs: usize,
    /// Repetitions of the tests per boot; every repetition is a sample.
    pub reps: usize,
    /// MiB per throughput test.
    pub mib: u64,
    /// Round trips in the latency test.
    pub rr: u64,
    /// One unmeasured boot of each VMM before the measured ones.
    pub warmup: bool,
    /// The vireo binary to measure.
    pub vireo: PathBuf,
    /// vireo-agent (the probe and the servers); by default beside `vireo`.
    pub agent: Option<PathBuf>,
    /// QEMU's machine type.
    pub qemu_machine: QemuMachine,
    /// The guest's kernel (every VMM boots the same one).
    pub guest_kernel: guest::GuestKernel,
}

impl Default for NetBenchOptions {
    fn default() -> Self {
        NetBenchOptions {
            runs: NET_DEFAULT_RUNS,
            reps: NET_DEFAULT_REPS,
            mib: NET_DEFAULT_MIB,
            rr: NET_DEFAULT_RR,
            warmup: true,
            vireo: PathBuf::from("vireo"),
            agent: None,
            qemu_machine: QemuMachine::Microvm,
            guest_kernel: guest::GuestKernel::Cloud,
        }
    }
}

/// A test as the tables show it.
struct TestDef {
    key: &'static str,
    title: &'static str,
    /// Round trips (a latency), else a throughput.
    latency: bool,
}

const TESTS: &[TestDef] = &[
    TestDef {
        key: "tcp-g2h",
        title: "TCP guest -> L1",
        latency: false,
    },
    TestDef {
        key: "tcp-h2g",
        title: "TCP L1 -> guest",
        latency: false,
    },
    TestDef {
        key: "tcp-rr",
        title: "TCP 1-byte request/response",
        latency: true,
    },
    TestDef {
        key: "vsock-g2h",
        title: "vsock guest -> L1",
        latency: false,
    },
    TestDef {
        key: "vsock-h2g",
        title: "vsock L1 -> guest",
        latency: false,
    },
];

/// The VMMs: Vireo, QEMU with its userspace virtio-net, QEMU with
/// vhost-net (both QEMUs with vhost-vsock).
const VMM_NAMES: [&str; 3] = ["vireo", "qemu", "qemu-vhost"];

/// The guest's extra command line: quiet, and run the guest script.
fn cmdline_extra(opts: &NetBenchOptions, reps: usize) -> String {
    let bytes = (opts.mib << 20).to_string();
    let argv = [
        "sh".to_string(),
        GUEST_SCRIPT_PATH.to_string(),
        reps.to_string(),
        bytes.clone(),
        opts.rr.to_string(),
        bytes,
    ];
    format!(
        "{} {}",
        guest::DEFAULT_GUEST_CMDLINE,
        guest::command_param(&argv)
    )
}

fn vireo_vmm(opts: &NetBenchOptions, reps: usize) -> ScriptVmm {
    let mut argv = vireo_argv_with(&cmdline_extra(opts, reps));
    argv.extend(["--cpus".into(), "1".into()]);
    argv.extend(["--net".into(), format!("tap={L1_TAP},mac={GUEST_MAC}")]);
    argv.extend([
        "--vsock".into(),
        format!("cid={GUEST_CID},uds={L1_VSOCK_UDS}"),
    ]);
    ScriptVmm {
        name: VMM_NAMES[0].into(),
        argv,
    }
}

fn qemu_vmm(opts: &NetBenchOptions, reps: usize, vhost: bool) -> ScriptVmm {
    let mut argv = qemu_argv_with(opts.qemu_machine.as_str(), &cmdline_extra(opts, reps));
    argv.extend([
        "-netdev".into(),
        format!(
            "tap,id=n0,ifname={L1_TAP},script=no,downscript=no,vhost={}",
            if vhost { "on" } else { "off" }
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC},romfile="),
        "-device".into(),
        format!("vhost-vsock-pci,guest-cid={GUEST_CID}"),
    ]);
    ScriptVmm {
        name: VMM_NAMES[if vhost { 2 } else { 1 }].into(),
        argv,
    }
}

fn vmms(opts: &NetBenchOptions, reps: usize) -> [ScriptVmm; 3] {
    [
        vireo_vmm(opts, reps),
        qemu_vmm(opts, reps, false),
        qemu_vmm(opts, reps, true),
    ]
}

/// vireo-agent: as asked, else beside the vireo binary.
fn agent_path(opts: &NetBenchOptions) -> Result<PathBuf, BenchError> {
    let path = match &opts.agent {
        Some(p) => p.clone(),
        None => opts.vireo.with_file_name("vireo-agent"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::AgentNotFound { path })
    }
}

/// Runs the network benchmark in the nested rig and returns the report.
pub fn run_net_bench(opts: &NetBenchOptions) -> Result<String, BenchError> {
    if opts.runs == 0 || opts.reps == 0 || opts.mib == 0 || opts.rr == 0 {
        return Err(BenchError::NoRuns);
    }
    let agent = agent_path(opts)?;
    let g = guest::ensure_guest(opts.guest_kernel)?;
    let qemu_bin = find_qemu()?;
    let with_agent = TempFile::write("net-agent-initrd.cpio", b"")?;
    rig::initrd_with_programs(
        &g.initrd,
        &[(agent.clone(), crate::net_script::GUEST_AGENT_PATH)],
        &with_agent.path,
    )?;
    let initrd = TempFile::write(
        "net-initrd.cpio",
        &initrd_with_script(&with_agent.path, GUEST_SCRIPT_PATH, &guest_script())?,
    )?;
    let mut files = l1_files(&opts.vireo, &qemu_bin, &g.kernel, &initrd.path)?;
    rig::add_executable(&mut files, &agent, L1_AGENT)?;
    if opts.qemu_machine == QemuMachine::Q35 {
        crate::block::add_q35_firmware(&mut files)?;
    }
    let measured = vmms(opts, opts.reps);
    let warm = vmms(opts, 1);
    let script = l1_script(&L1Plan {
        tag: TAG,
        setup: l1_setup(L1_AGENT, L1_VSOCK_UDS),
        vmms: &measured,
        runs: opts.runs,
        warmup: opts.warmup.then_some(&warm[..]),
        timeout: BOOT_TIMEOUT.saturating_mul(u32::try_from(opts.reps).unwrap_or(u32::MAX)),
    });
    let boots = 3 * (opts.runs.saturating_mul(opts.reps) + 1);
    let timeout =
        L1_OVERHEAD + BOOT_TIMEOUT.saturating_mul(u32::try_from(boots).unwrap_or(u32::MAX));
    let out = rig::qemu::run_l1(&rig::qemu::L1Run {
        // One 128 MiB guest at a time, the VMMs, the servers' buffers.
        guest_memory_mib: 128 + 384,
        ..rig::qemu::L1Run::script(script, files, timeout)
    })?;
    let samples =
        parse_suite_results(&out.stdout, TAG, &VMM_NAMES).map_err(|e| with_l1_context(e, &out))?;

    let mut report = String::new();
    let _ = writeln!(
        report,
        "Network benchmark: guest kernel {}, the default guest's busybox initramfs, 1 vCPU, 128 MiB; \
         vireo-agent probes in the guest against vireo-agent servers in L1",
        g.kernel_version
    );
    let _ = writeln!(
        report,
        "  TCP over a tap in L1 ({L1_TAP}, offloads on); {} MiB per throughput test, {} round trips; \
         vsock guest-initiated (Vireo: L1 listens on its Unix socket's _PORT; QEMU: vhost-vsock)",
        opts.mib, opts.rr
    );
    let _ = writeln!(
        report,
        "  inside the nested rig's L1 (QEMU TCG, emulated SVM); {} measured boots per VMM \
         x {} repetitions, rotating order{}; host {}",
        opts.runs,
        opts.reps,
        if opts.warmup {
            ", after one warm-up boot each"
        } else {
            ""
        },
        host_load()
    );
    let _ = writeln!(
        report,
        "  emulation inflates every time: compare the ratios, never quote them as native figures"
    );
    for v in &measured {
        let _ = writeln!(report, "  {}: {}", v.name, sh_display(&v.argv));
    }
    for note in guest_notes(&out.stdout) {
        let _ = writeln!(report, "  guest on {note}");
    }
    report.push_str(&render_tables(&samples)?);
    Ok(report)
}

/// Per-sample values of one test under `f`.
fn values(runs: &[RunSamples], key: &str, f: impl Fn(f64, u64, u64) -> Option<f64>) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| r.get(key))
        .filter_map(|s| f(s.secs, s.bytes, s.ops))
        .collect()
}

/// A reading's value from (seconds, bytes, operations).
type Metric = fn(f64, u64, u64) -> Option<f64>;

fn throughput(secs: f64, bytes: u64, _ops: u64) -> Option<f64> {
    (secs > 0.0).then(|| bytes as f64 / (1024.0 * 1024.0) / secs)
}

fn latency_us(secs: f64, _bytes: u64, ops: u64) -> Option<f64> {
    (ops > 0).then(|| secs / ops as f64 * 1e6)
}

/// The rows comparing Vireo (`v`) with one QEMU (`q`).
fn rows(v: &[RunSamples], q: &[RunSamples]) -> Vec<MetricRow> {
    TESTS
        .iter()
        .filter_map(|t| {
            let (unit, f): (&'static str, Metric) = if t.latency {
                ("µs", latency_us)
            } else {
                ("MiB/s", throughput)
            };
            Some(MetricRow {
                name: t.title.to_string(),
                unit,
                a: summarize(&values(v, t.key, f))?,
                b: summarize(&values(q, t.key, f)),
            })
        })
        .collect()
}

/// Two tables: Vireo against QEMU's userspace virtio-net, and against
/// QEMU with vhost-net.
fn render_tables(samples: &[Vec<RunSamples>]) -> Result<String, BenchError> {
    let [v, q, qv] = samples else {
        return Err(BenchError::NoRuns);
    };
    let mut out = String::new();
    for (name, other, what) in [
        (
            VMM_NAMES[1],
            q,
            "QEMU's userspace virtio-net-pci (tap), vhost-vsock",
        ),
        (
            VMM_NAMES[2],
            qv,
            "QEMU's virtio-net-pci with vhost-net (tap), vhost-vsock",
        ),
    ] {
        let rows = rows(v, other);
        if rows.is_empty() {
            return Err(BenchError::NoRuns);
        }
        let _ = writeln!(out, "\nvireo vs {what}");
        out.push_str(
            &Comparison {
                a_name: VMM_NAMES[0].into(),
                b_name: name.into(),
                rows,
            }
            .render(),
        );
    }
    let _ = writeln!(
        out,
        "  MiB/s: higher is better (ratio above 1: Vireo faster); µs per round trip: lower is better"
    );
    Ok(out)
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
