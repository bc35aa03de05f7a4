//! The block-device benchmark behind `vireo bench block`: guest `dd` with
//! O_DIRECT against a raw 128 MiB image served by Vireo's virtio-blk
//! (virtio-pci) and by QEMU's virtio-blk-pci, both inside one run of the
//! nested rig's L1 machine, alternating boot by boot.
//!
//! The guest is the default one (Debian cloud kernel, busybox initramfs)
//! with an extra archive appended to its initrd that holds the guest script
//! ([`crate::block_script`]); both VMMs boot the same kernel, initrd and
//! command line and serve the same image file, which lives in L1's RAM
//! (tmpfs), so L1's own emulated disk never enters the timings. Only the
//! in-guest `dd` times count (QEMU's firmware and boot time do not).
//!
//! Rig times are inflated by emulation: compare the ratios, never quote
//! them as native figures.

use crate::block_script::{guest_script, l1_setup, GUEST_SCRIPT_PATH, TAG};
use crate::native::{find_qemu, host_load, TempFile};
use crate::rig_part::{l1_files, qemu_argv_with, vireo_argv_with, with_l1_context, L1_QEMU_DATA};
use crate::rig_script::{sh_display, ScriptVmm};
use crate::stats::{summarize, Comparison, MetricRow};
use crate::suite_script::{
    guest_notes, initrd_with_script, l1_script, parse_suite_results, L1Plan, RunSamples,
};
use crate::BenchError;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Default measured boots per VMM.
pub const BLOCK_DEFAULT_RUNS: usize = 3;
/// Default random 4 KiB operations per random test (each is one `dd`).
pub const BLOCK_DEFAULT_RANDOM_OPS: usize = 200;
/// Default repetitions of the whole set of tests per boot.
pub const BLOCK_DEFAULT_REPS: usize = 3;
/// The warm-up boots run the tests once, with this many random operations.
const WARMUP_RANDOM_OPS: usize = 20;

/// The image both VMMs serve, inside L1 (tmpfs).
const L1_IMAGE: &str = "/tmp/vireo-blk/disk.img";
const IMAGE_MIB: u64 = 128;

/// QEMU's machine for the benchmark.
///
/// The default is microvm with a PCIe host bridge (GPEX, described to the
/// guest by ACPI), so the stock kernel's virtio_pci driver finds the disk
/// and uses MSI-X, like with Vireo (Debian's kernel cannot take virtio-mmio
/// devices from its command line, and the default guest loads no
/// virtio_mmio module); it boots through qboot like the boot benchmark.
/// q35 (SeaBIOS) is the machine of issue 3's QEMU reference points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QemuMachine {
    #[default]
    Microvm,
    Q35,
}

impl QemuMachine {
    /// The `-M` value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            QemuMachine::Microvm => "microvm,pcie=on",
            QemuMachine::Q35 => "q35",
        }
    }
}

impl std::str::FromStr for QemuMachine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "microvm" => Ok(QemuMachine::Microvm),
            "q35" => Ok(QemuMachine::Q35),
            other => Err(format!(
                "unknown QEMU machine {other:?}: expected microvm or q35"
            )),
        }
    }
}

/// SeaBIOS and the option ROM q35 loads, (file, directories to look in).
const Q35_FIRMWARE: &[(&str, &[&str])] = &[
    ("bios-256k.bin", &["/usr/share/qemu", "/usr/share/seabios"]),
    ("kvmvapic.bin", &["/usr/share/qemu"]),
];

/// Adds q35's firmware to the files for L1's QEMU data directory.
pub(crate) fn add_q35_firmware(files: &mut Vec<(PathBuf, String)>) -> Result<(), BenchError> {
    for (name, dirs) in Q35_FIRMWARE {
        let found = dirs
            .iter()
            .map(|d| std::path::Path::new(d).join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| BenchError::FirmwareNotFound {
                searched: dirs
                    .iter()
                    .map(|d| format!("{d}/{name}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        files.push((found, format!("{L1_QEMU_DATA}/{name}")));
    }
    Ok(())
}

/// One boot (guest boot plus one repetition of every test) is killed after
/// this long (times the repetitions).
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// Allowance for L1's own boot and shutdown.
const L1_OVERHEAD: Duration = Duration::from_secs(300);

/// What `vireo bench block` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockBenchOptions {
    /// Measured boots per VMM (default [`BLOCK_DEFAULT_RUNS`]).
    pub runs: usize,
    /// The vireo binary to measure.
    pub vireo: PathBuf,
    /// Random 4 KiB operations per random test; 0 skips the random tests.
    pub random_ops: usize,
    /// Repetitions of the whole set of tests per boot (default
    /// [`BLOCK_DEFAULT_REPS`]); every repetition is a sample.
    pub reps: usize,
    /// One unmeasured boot of each VMM before the measured ones.
    pub warmup: bool,
    /// QEMU's I/O backend for the image.
    pub qemu_aio: QemuAio,
    /// QEMU's machine type.
    pub qemu_machine: QemuMachine,
    /// The guest's kernel (both VMMs boot the same one).
    pub guest_kernel: guest::GuestKernel,
}

/// QEMU's `aio=` for the image (both with `cache=writeback`, QEMU's
/// default; the image is on tmpfs, which has no O_DIRECT for `aio=native`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QemuAio {
    /// QEMU's default: a pool of worker threads doing preadv/pwritev.
    #[default]
    Threads,
    /// io_uring, like Vireo's own engine.
    IoUring,
}

impl QemuAio {
    fn as_str(self) -> &'static str {
        match self {
            QemuAio::Threads => "threads",
            QemuAio::IoUring => "io_uring",
        }
    }
}

impl std::str::FromStr for QemuAio {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "threads" => Ok(QemuAio::Threads),
            "io_uring" | "io-uring" => Ok(QemuAio::IoUring),
            other => Err(format!(
                "unknown QEMU aio backend {other:?}: expected threads or io_uring"
            )),
        }
    }
}

impl Default for BlockBenchOptions {
    fn default() -> Self {
        BlockBenchOptions {
            runs: BLOCK_DEFAULT_RUNS,
            vireo: PathBuf::from("vireo"),
            random_ops: BLOCK_DEFAULT_RANDOM_OPS,
            reps: BLOCK_DEFAULT_REPS,
            warmup: true,
            qemu_aio: QemuAio::Threads,
            qemu_machine: QemuMachine::Microvm,
            guest_kernel: guest::GuestKernel::Cloud,
        }
    }
}

/// A test the guest runs, as the tables show it.
struct TestDef {
    key: &'static str,
    title: &'static str,
    /// Show IOPS (4 KiB tests).
    iops: bool,
    /// Reference medians from issue 3 (seconds), if any.
    reference: &'static str,
}

const TESTS: &[TestDef] = &[
    TestDef {
        key: "seq1m-write",
        title: "sequential write, 64 MiB in 1 MiB blocks (dd oflag=direct)",
        iops: false,
        reference: "0.23 s QEMU q35, 0.55 s Firecracker",
    },
    TestDef {
        key: "seq1m-read",
        title: "sequential read, 64 MiB in 1 MiB blocks (dd iflag=direct)",
        iops: false,
        reference: "0.18 s Cloud Hypervisor and QEMU, 0.55 s Firecracker",
    },
    TestDef {
        key: "seq4k-write",
        title: "sequential write, 16 MiB in 4 KiB blocks (dd oflag=direct)",
        iops: true,
        reference: "2.1 s Firecracker, 3.0 s QEMU",
    },
    TestDef {
        key: "seq4k-read",
        title: "sequential read, 16 MiB in 4 KiB blocks (dd iflag=direct)",
        iops: true,
        reference: "1.3 s Cloud Hypervisor, 2.1 s Firecracker, 2.9 s QEMU",
    },
    TestDef {
        key: "rnd4k-read",
        title: "random 4 KiB reads, one `dd iflag=direct` per read",
        iops: true,
        reference: "",
    },
    TestDef {
        key: "rnd4k-write",
        title: "random 4 KiB writes, one `dd oflag=direct` per write",
        iops: true,
        reference: "",
    },
];

/// The baseline the random tests are corrected by: the same loop with a
/// `dd` that does no disk I/O.
const DD_START: &str = "dd-start";

/// The guest's extra command line: quiet, and run the guest script.
fn cmdline_extra(random_ops: usize, reps: usize) -> String {
    let argv = [
        "sh".to_string(),
        GUEST_SCRIPT_PATH.to_string(),
        random_ops.to_string(),
        reps.to_string(),
    ];
    format!(
        "{} {}",
        guest::DEFAULT_GUEST_CMDLINE,
        guest::command_param(&argv)
    )
}

fn vireo_vmm(random_ops: usize, reps: usize) -> ScriptVmm {
    let mut argv = vireo_argv_with(&cmdline_extra(random_ops, reps));
    argv.extend(["--cpus".into(), "1".into()]);
    argv.extend(["--disk".into(), format!("path={L1_IMAGE}")]);
    ScriptVmm {
        name: "vireo".into(),
        argv,
    }
}

fn qemu_vmm(random_ops: usize, reps: usize, aio: QemuAio, machine: QemuMachine) -> ScriptVmm {
    let mut argv = qemu_argv_with(machine.as_str(), &cmdline_extra(random_ops, reps));
    argv.extend([
        "-drive".into(),
        format!(
            "file={L1_IMAGE},format=raw,if=none,id=blk0,cache=writeback,aio={}",
            aio.as_str()
        ),
        "-device".into(),
        "virtio-blk-pci,drive=blk0".into(),
    ]);
    ScriptVmm {
        name: "qemu".into(),
        argv,
    }
}

/// Runs the block benchmark in the nested rig and returns the report.
pub fn run_block_bench(opts: &BlockBenchOptions) -> Result<String, BenchError> {
    if opts.runs == 0 || opts.reps == 0 {
        return Err(BenchError::NoRuns);
    }
    let g = guest::ensure_guest(opts.guest_kernel)?;
    let qemu_bin = find_qemu()?;
    let initrd = TempFile::write(
        "blk-initrd.cpio",
        &initrd_with_script(&g.initrd, GUEST_SCRIPT_PATH, &guest_script())?,
    )?;
    let mut files = l1_files(&opts.vireo, &qemu_bin, &g.kernel, &initrd.path)?;
    if opts.qemu_machine == QemuMachine::Q35 {
        add_q35_firmware(&mut files)?;
    }
    let (ops, reps) = (opts.random_ops, opts.reps);
    let (aio, machine) = (opts.qemu_aio, opts.qemu_machine);
    let (vireo, qemu) = (vireo_vmm(ops, reps), qemu_vmm(ops, reps, aio, machine));
    let warm_ops = ops.min(WARMUP_RANDOM_OPS);
    let (warm_vireo, warm_qemu) = (vireo_vmm(warm_ops, 1), qemu_vmm(warm_ops, 1, aio, machine));
    let vmms = [vireo, qemu];
    let warmups = [warm_vireo, warm_qemu];
    let script = l1_script(&L1Plan {
        tag: TAG,
        setup: l1_setup(L1_IMAGE, IMAGE_MIB),
        vmms: &vmms,
        runs: opts.runs,
        warmup: opts.warmup.then_some(&warmups[..]),
        timeout: BOOT_TIMEOUT.saturating_mul(u32::try_from(reps).unwrap_or(u32::MAX)),
    });
    let boots = u32::try_from(2 * opts.runs.saturating_mul(reps) + 2).unwrap_or(u32::MAX);
    let timeout = L1_OVERHEAD + BOOT_TIMEOUT.saturating_mul(boots);
    let out = rig::qemu::run_l1(&rig::qemu::L1Run {
        // One 128 MiB guest at a time, the image in tmpfs, and room for
        // L1's page cache and the VMMs themselves.
        guest_memory_mib: 128 + IMAGE_MIB + 256,
        ..rig::qemu::L1Run::script(script, files, timeout)
    })?;
    let mut parsed = parse_suite_results(&out.stdout, TAG, &["vireo", "qemu"])
        .map_err(|e| with_l1_context(e, &out))?;
    let (q, v) = (
        parsed.pop().unwrap_or_default(),
        parsed.pop().unwrap_or_default(),
    );

    let mut report = String::new();
    let _ = writeln!(
        report,
        "Block benchmark: guest kernel {}, the default guest's busybox initramfs, 1 vCPU, 128 MiB, \
         guest dd with O_DIRECT on /dev/vda",
        g.kernel_version
    );
    let _ = writeln!(
        report,
        "  disk: a raw {IMAGE_MIB} MiB image in L1's tmpfs, served by each VMM's virtio-blk over PCI"
    );
    let _ = writeln!(
        report,
        "  inside the nested rig's L1 (QEMU TCG, emulated SVM); {} measured boots per VMM \
         x {reps} repetitions of every test, alternating{}; host {}",
        opts.runs,
        if opts.warmup {
            ", after one warm-up boot each"
        } else {
            ""
        },
        host_load()
    );
    let _ = writeln!(
        report,
        "  times are inflated by emulation: compare the ratios, never quote them as native times"
    );
    let _ = writeln!(report, "  vireo: {}", sh_display(&vmms[0].argv));
    let _ = writeln!(report, "  qemu:  {}", sh_display(&vmms[1].argv));
    for note in guest_notes(&out.stdout) {
        let _ = writeln!(report, "  guest on {note}");
    }
    report.push_str(&render_tables(&v, &q, opts.random_ops)?);
    Ok(report)
}

/// Per-boot values of one metric of one test; `None` for a boot that lacks
/// the test (a random test when random_ops is 0).
fn per_run(runs: &[RunSamples], f: impl Fn(&RunSamples) -> Option<f64>) -> Vec<f64> {
    runs.iter().filter_map(f).collect()
}

/// A comparison row over per-boot values, or `None` when either side has no
/// values.
fn row(name: &str, unit: &'static str, a: &[f64], b: &[f64]) -> Option<MetricRow> {
    Some(MetricRow {
        name: name.to_string(),
        unit,
        a: summarize(a)?,
        b: Some(summarize(b)?),
    })
}

/// Throughput of a reading in MiB/s.
fn mib_per_s(secs: f64, bytes: u64) -> Option<f64> {
    (secs > 0.0).then(|| bytes as f64 / (1024.0 * 1024.0) / secs)
}

/// Operations per second, optionally after taking `base_secs` off the time.
fn iops(secs: f64, ops: u64, base_secs: f64) -> Option<f64> {
    let t = secs - base_secs;
    (t > 0.0).then(|| ops as f64 / t)
}

/// The rows of one test: time, MiB/s, IOPS; for the random tests also the
/// IOPS net of the cost of starting one `dd` per operation.
fn test_rows(def: &TestDef, v: &[RunSamples], q: &[RunSamples]) -> Vec<MetricRow> {
    let get = |r: &RunSamples| r.get(def.key).copied();
    let mut rows = Vec::new();
    let time = |r: &RunSamples| get(r).map(|s| s.secs);
    let tput = |r: &RunSamples| get(r).and_then(|s| mib_per_s(s.secs, s.bytes));
    let ops = |r: &RunSamples| get(r).and_then(|s| iops(s.secs, s.ops, 0.0));
    let net = |r: &RunSamples| {
        let base = r.get(DD_START)?;
        get(r).and_then(|s| iops(s.secs, s.ops, base.secs))
    };
    rows.extend(row("time", "s", &per_run(v, time), &per_run(q, time)));
    rows.extend(row(
        "throughput",
        "MiB/s",
        &per_run(v, tput),
        &per_run(q, tput),
    ));
    if def.iops {
        rows.extend(row("IOPS", "op/s", &per_run(v, ops), &per_run(q, ops)));
    }
    if def.key.starts_with("rnd") {
        rows.extend(row(
            "IOPS net of dd start",
            "op/s",
            &per_run(v, net),
            &per_run(q, net),
        ));
    }
    rows
}

/// All tables of the report: one per test, then the cost of starting `dd`.
fn render_tables(
    v: &[RunSamples],
    q: &[RunSamples],
    random_ops: usize,
) -> Result<String, BenchError> {
    let mut out = String::new();
    let mut any = false;
    for def in TESTS {
        let rows = test_rows(def, v, q);
        if rows.is_empty() {
            continue;
        }
        any = true;
        let _ = writeln!(out, "\n{}", def.title);
        if def.key.starts_with("rnd") {
            let _ = writeln!(
                out,
                "  {random_ops} operations at pseudo-random 4 KiB offsets (same sequence for both VMMs); \
                 each starts a busybox dd, so the raw IOPS include process start-up"
            );
        }
        let table = Comparison {
            a_name: "vireo".into(),
            b_name: "qemu".into(),
            rows,
        };
        out.push_str(&table.render());
        if !def.reference.is_empty() {
            let _ = writeln!(
                out,
                "  reference (issue 3, such a rig with Debian's standard kernel): {}",
                def.reference
            );
        }
    }
    let start = |r: &RunSamples| {
        let s = r.get(DD_START)?;
        (s.ops > 0).then(|| s.secs / s.ops as f64 * 1e3)
    };
    if let Some(r) = row(
        "one dd start, no I/O",
        "ms",
        &per_run(v, start),
        &per_run(q, start),
    ) {
        let _ = writeln!(out, "\nbaseline: starting one busybox dd in the guest");
        let _ = writeln!(
            out,
            "  no disk I/O: a ratio far from 1 means the host was busier during one VMM's boots"
        );
        out.push_str(
            &Comparison {
                a_name: "vireo".into(),
                b_name: "qemu".into(),
                rows: vec![r],
            }
            .render(),
        );
    }
    if !any {
        return Err(BenchError::NoRuns);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "block_tests.rs"]
mod tests;
