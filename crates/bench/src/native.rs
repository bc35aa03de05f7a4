//! The native boot benchmark: the minimal PVH guest booted on this host's own
//! /dev/kvm by Vireo and by QEMU's microvm machine, run by run alternating,
//! with each VMM's time to the guest's marker, time to exit and peak RSS.

use crate::guest_elf::{minimal_guest_elf, MARKER};
use crate::measure::{measure_run, RunSample, Timeouts, VmmCommand};
use crate::stats::{summarize, Comparison, MetricRow};
use crate::{BenchError, BootBenchOptions};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
            b: sb,
        });
    }
    Ok(Comparison {
        a_name: a.0.to_string(),
        b_name: b.0.to_string(),
        rows,
    })
}

/// Runs `runs` measured rounds of the two commands, each VMM once per round,
/// with the order flipped every round, after one unmeasured warm-up each.
pub(crate) fn alternate(
    first: &VmmCommand,
    second: &VmmCommand,
    runs: usize,
    mut measure: impl FnMut(&VmmCommand) -> Result<RunSample, BenchError>,
) -> Result<(Vec<RunSample>, Vec<RunSample>), BenchError> {
    measure(first)?;
    measure(second)?;
    let (mut a, mut b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for round in 0..runs {
        if round % 2 == 0 {
            a.push(measure(first)?);
            b.push(measure(second)?);
        } else {
            b.push(measure(second)?);
            a.push(measure(first)?);
        }
    }
    Ok((a, b))
}

/// The native part of `vireo bench boot`; returns the printed report.
pub fn run_native(opts: &BootBenchOptions) -> Result<String, BenchError> {
    if opts.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    let elf_bytes = minimal_guest_elf();
    let elf = TempFile::write("guest.elf", &elf_bytes)?;
    let vireo = vireo_command(&opts.vireo, &elf.path);
    let qemu = qemu_command(&find_qemu()?, &qboot_path()?, &elf.path);
    let load_before = host_load();
    let (v, q) = alternate(&vireo, &qemu, opts.runs, |c| {
        measure_run(c, MARKER, TIMEOUTS)
    })?;
    let table = compare_table(
        ("vireo", &v),
        ("qemu", &q),
        ["spawn -> marker", "spawn -> exit", "peak RSS"],
    )?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Native boot: minimal PVH guest ({} bytes: print a marker on COM1, reset via i8042)",
        elf_bytes.len()
    );
    let _ = writeln!(
        out,
        "  host KVM: {}; {} runs per VMM, alternating, after one warm-up each",
        kvm_backend(),
        opts.runs
    );
    let _ = writeln!(out, "  host before: {load_before}; after: {}", host_load());
    let _ = writeln!(out, "  vireo: {}", vireo.display());
    let _ = writeln!(out, "  qemu:  {}", qemu.display());
    out.push('\n');
    out.push_str(&table.render());
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
        let a = VmmCommand {
            name: "a".into(),
            program: "a".into(),
            args: vec![],
        };
        let b = VmmCommand {
            name: "b".into(),
            program: "b".into(),
            args: vec![],
        };
        let mut order = String::new();
        let sample = RunSample {
            marker: Duration::ZERO,
            exit: Duration::ZERO,
            max_rss_kib: 1,
        };
        let (va, vb) = alternate(&a, &b, 4, |c| {
            order.push_str(&c.name);
            Ok(sample)
        })
        .expect("runs");
        assert_eq!(order, "ab".to_string() + "abbaabba");
        assert_eq!((va.len(), vb.len()), (4, 4));
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

    /// The whole native benchmark, with QEMU standing in for Vireo (a script
    /// that takes `vireo run`'s arguments and execs QEMU on the kernel).
    #[test]
    fn run_native_end_to_end_with_a_stand_in() {
        let Some((qemu, qboot)) = qemu_on_kvm() else {
            return;
        };
        // `vireo run --kernel ELF ...`: the ELF is $3.
        let q = qemu_command(&qemu, &qboot, Path::new("KERNEL"));
        let line = q.display().replace("KERNEL", "\"$3\"");
        let script = TempFile::write(
            "stand-in.sh",
            format!("#!/bin/sh\nexec {line}\n").as_bytes(),
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
            "spawn -> marker (ms)",
            "spawn -> exit (ms)",
            "peak RSS (MiB)",
            "vireo/qemu",
            "Firecracker",
        ] {
            assert!(report.contains(want), "missing {want:?} in\n{report}");
        }
    }
}
