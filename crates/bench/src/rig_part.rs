//! The rig boot benchmark: the default Debian guest (kernel + busybox
//! initramfs) booted by Vireo and by QEMU microvm inside the nested rig's L1
//! machine, to the point where the guest's init runs `echo` of a marker.
//!
//! Both VMMs and the guest are copied into L1 (`rig::run_l1_script`), where
//! [`crate::rig_script`] alternates the boots and takes the readings. Times in
//! the rig are inflated by emulation: only the ratios mean anything.

use crate::native::{compare_table, find_qemu, qboot_path};
use crate::rig_script::{l1_script, parse_results, sh_display, ScriptVmm, RIG_MARKER};
use crate::{BenchError, BootBenchOptions};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Rounds in the rig (each boot takes seconds of emulated time), at most.
pub const RIG_MAX_RUNS: usize = 5;

/// One boot is killed after this long.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Allowance for L1's own boot and shutdown.
const L1_OVERHEAD: Duration = Duration::from_secs(300);

/// Where things live inside L1.
pub(crate) const L1_VIREO: &str = "/rig/bench/vireo";
pub(crate) const L1_QEMU: &str = "/rig/bench/qemu/qemu-system-x86_64";
pub(crate) const L1_QEMU_DATA: &str = "/rig/bench/qemu/share";
pub(crate) const L1_KERNEL: &str = "/rig/bench/guest/vmlinuz";
pub(crate) const L1_INITRD: &str = "/rig/bench/guest/initrd.cpio";

/// QEMU data files microvm needs to boot a bzImage through qboot; the
/// option ROMs are looked up in `-L` even though qboot loads the kernel.
const QEMU_DATA_FILES: &[&str] = &["linuxboot_dma.bin", "linuxboot.bin", "pvh.bin"];

/// The guest's command line after Vireo's defaults: the default guest's
/// extras and the command that prints the marker.
fn guest_cmdline_extra() -> String {
    let argv = ["echo".to_string(), RIG_MARKER.to_string()];
    format!(
        "{} {}",
        guest::DEFAULT_GUEST_CMDLINE,
        guest::command_param(&argv)
    )
}

fn vireo_argv() -> Vec<String> {
    vireo_argv_with(&guest_cmdline_extra())
}

/// `vireo run` of the default guest inside L1 with `cmdline_extra` after
/// Vireo's default command line (shared with the block benchmark).
pub(crate) fn vireo_argv_with(cmdline_extra: &str) -> Vec<String> {
    [
        L1_VIREO,
        "run",
        "--kernel",
        L1_KERNEL,
        "--initrd",
        L1_INITRD,
        "--cmdline",
        cmdline_extra,
        "--emulate=never",
        "--memory",
        "128M",
        "--console",
        "stdio",
    ]
    .map(String::from)
    .to_vec()
}

/// QEMU microvm with the same kernel, initrd and full command line as Vireo.
fn qemu_argv() -> Vec<String> {
    qemu_argv_with("microvm", &guest_cmdline_extra())
}

/// QEMU's `machine` booting the default guest inside L1 with the same
/// kernel, initrd and full command line as [`vireo_argv_with`]. A microvm
/// variant boots through qboot and gets an i8042 (microvm has none unless
/// asked, and the guest resets through it); any other machine keeps its
/// own firmware, looked up in the `-L` directory.
pub(crate) fn qemu_argv_with(machine: &str, cmdline_extra: &str) -> Vec<String> {
    let append = format!("{} {cmdline_extra}", vmm::config::DEFAULT_CMDLINE);
    let mut argv: Vec<String> = [
        L1_QEMU,
        "-L",
        L1_QEMU_DATA,
        "-M",
        machine,
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "128M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
    ]
    .map(String::from)
    .to_vec();
    if machine.starts_with("microvm") {
        argv.extend(["-device".into(), "i8042".into()]);
    }
    argv.push("-no-reboot".into());
    if machine.starts_with("microvm") {
        argv.extend(["-bios".into(), format!("{L1_QEMU_DATA}/qboot.rom")]);
    }
    argv.extend(
        [
            "-kernel", L1_KERNEL, "-initrd", L1_INITRD, "-append", &append,
        ]
        .map(String::from),
    );
    argv
}

/// The files L1 needs: both VMMs with their libraries, QEMU's firmware, and
/// the guest (shared with the block benchmark).
pub(crate) fn l1_files(
    vireo: &Path,
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
) -> Result<Vec<(PathBuf, String)>, BenchError> {
    let mut files = Vec::new();
    rig::add_executable(&mut files, vireo, L1_VIREO)?;
    rig::add_executable(&mut files, qemu, L1_QEMU)?;
    let qboot = qboot_path()?;
    files.push((qboot.clone(), format!("{L1_QEMU_DATA}/qboot.rom")));
    let data_dir = qboot.parent().map(Path::to_path_buf).unwrap_or_default();
    for name in QEMU_DATA_FILES {
        let p = data_dir.join(name);
        if p.is_file() {
            files.push((p, format!("{L1_QEMU_DATA}/{name}")));
        }
    }
    files.push((kernel.to_path_buf(), L1_KERNEL.to_string()));
    files.push((initrd.to_path_buf(), L1_INITRD.to_string()));
    Ok(files)
}

/// The rig part of `vireo bench boot`; returns the printed report.
pub fn run_rig(opts: &BootBenchOptions) -> Result<String, BenchError> {
    let runs = opts.runs.min(RIG_MAX_RUNS);
    if runs == 0 {
        return Err(BenchError::NoRuns);
    }
    let g = guest::ensure_default_guest()?;
    let qemu = find_qemu()?;
    let files = l1_files(&opts.vireo, &qemu, &g.kernel, &g.initrd)?;
    let vireo = ScriptVmm {
        name: "vireo".into(),
        argv: vireo_argv(),
    };
    let qemu_vmm = ScriptVmm {
        name: "qemu".into(),
        argv: qemu_argv(),
    };
    let script = l1_script(&vireo, &qemu_vmm, runs, BOOT_TIMEOUT);
    let boots = u32::try_from(2 * runs + 2).unwrap_or(u32::MAX);
    let timeout = L1_OVERHEAD + BOOT_TIMEOUT.saturating_mul(boots);
    let out = rig::run_l1_script(&script, &files, timeout)?;
    let [v, q] =
        parse_results(&out.stdout, ["vireo", "qemu"]).map_err(|e| with_l1_context(e, &out))?;
    let table = compare_table(
        ("vireo", &v),
        ("qemu", &q),
        ["start -> guest init marker", "start -> exit", "peak RSS"],
    )?;

    let mut report = String::new();
    let _ = writeln!(
        report,
        "Rig boot: default guest (kernel {}, busybox initramfs) to its init running `echo {RIG_MARKER}`",
        g.kernel_version
    );
    let _ = writeln!(
        report,
        "  inside the nested rig's L1 (QEMU TCG, emulated SVM); {runs} runs per VMM, alternating, after one warm-up each"
    );
    let _ = writeln!(
        report,
        "  times are inflated by emulation: compare the ratios, never quote them as native times"
    );
    let _ = writeln!(report, "  vireo: {}", sh_display(&vireo.argv));
    let _ = writeln!(report, "  qemu:  {}", sh_display(&qemu_vmm.argv));
    for info in out
        .stdout
        .lines()
        .filter_map(|l| l.split_once("BENCH-INFO "))
    {
        let _ = writeln!(report, "  note: {}", info.1.trim());
    }
    report.push('\n');
    report.push_str(&table.render());
    Ok(report)
}

/// Adds the L1 script's exit status and the tail of L1's control log to a
/// failure found in the script's output.
pub(crate) fn with_l1_context(e: BenchError, out: &rig::L1Output) -> BenchError {
    match e {
        BenchError::RigRun { details } => BenchError::RigRun {
            details: format!(
                "{details} (L1 script exit status {}; L1 log tail: {})",
                out.exit_code,
                log_tail(&out.log)
            ),
        },
        other => other,
    }
}

fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_machines_get_their_firmware() {
        let micro = qemu_argv_with("microvm,pcie=on", "quiet");
        assert!(micro
            .windows(2)
            .any(|w| w[0] == "-device" && w[1] == "i8042"));
        assert!(micro.iter().any(|a| a.ends_with("/qboot.rom")));
        let q35 = qemu_argv_with("q35", "quiet");
        assert!(!q35.iter().any(|a| a == "i8042" || a == "-bios"), "{q35:?}");
        assert_eq!(
            q35.last().map(String::as_str),
            Some("console=ttyS0 reboot=k panic=1 quiet")
        );
    }

    #[test]
    fn both_vmms_get_the_same_guest_command_line() {
        let v = vireo_argv();
        let q = qemu_argv();
        let cmdline = &v[v.iter().position(|a| a == "--cmdline").expect("--cmdline") + 1];
        let append = &q[q.iter().position(|a| a == "-append").expect("-append") + 1];
        assert_eq!(
            *append,
            format!("{} {cmdline}", vmm::config::DEFAULT_CMDLINE)
        );
        assert!(cmdline.contains("vireo.cmd="), "{cmdline}");
        // The marker must not appear literally on the command line, or a
        // kernel echoing its command line would fake it.
        assert!(!append.contains(RIG_MARKER));
    }
}
