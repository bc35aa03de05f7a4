//! The nested emulation rig: runs Vireo (or any script) inside an emulated
//! L1 machine that has working hardware virtualization.
//!
//! On a host whose /dev/kvm cannot run stock kernels (a PVM backend, or no
//! VMX/SVM at all), QEMU in TCG software emulation boots the default guest's
//! Debian kernel as L1 with `-cpu max` (which exposes AMD SVM); L1's
//! initramfs loads `kvm_amd`, and the inner `vireo` boots the real guest (L2)
//! on L1's /dev/kvm. See [`l1`] for the L1 image, [`qemu`] for the QEMU run
//! and [`nested`] for `vireo run` inside it.
//!
//! Serial ports of L1: ttyS0 carries the guest console (inner vireo's
//! stdin/stdout), ttyS1 is the control channel (L1 kernel messages, the
//! inner stderr, and a final `VIREO_RIG_EXIT=<n>` line).

pub mod l1;
pub mod nested;
pub mod qemu;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use l1::add_executable;

/// A guest initrd: `base` followed by an archive holding each program
/// `(host executable, guest path)` with the shared libraries it needs at
/// their host paths (so a dynamically linked tool runs in a busybox guest).
/// Returns the size written to `out`.
pub fn initrd_with_programs(
    base: &std::path::Path,
    programs: &[(PathBuf, &str)],
    out: &std::path::Path,
) -> Result<u64, RigError> {
    let mut files = Vec::new();
    for (exe, path) in programs {
        add_executable(&mut files, exe, path)?;
    }
    l1::write_combined(base, "", &files, out)
}
pub use nested::{run_nested, run_nested_api, run_nested_with_binary};

/// When `vireo run` uses the rig.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmulateMode {
    /// Only when the host's KVM cannot run stock kernels.
    #[default]
    Auto,
    Always,
    Never,
}

impl FromStr for EmulateMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(EmulateMode::Auto),
            "always" => Ok(EmulateMode::Always),
            "never" => Ok(EmulateMode::Never),
            other => Err(format!(
                "unknown emulate mode {other:?}: expected auto, always or never"
            )),
        }
    }
}

/// Whether this host's /dev/kvm can boot stock guest kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKvm {
    Usable,
    /// Why not: no /dev/kvm, a PVM backend, or no vmx/svm CPU flag.
    Unusable(String),
}

/// Looks at /dev/kvm, /sys/module and /proc/cpuinfo.
pub fn probe_host_kvm() -> HostKvm {
    probe_paths(
        "/dev/kvm".as_ref(),
        "/sys/module".as_ref(),
        "/proc/cpuinfo".as_ref(),
    )
}

fn probe_paths(
    kvm: &std::path::Path,
    sys_module: &std::path::Path,
    cpuinfo: &std::path::Path,
) -> HostKvm {
    if !kvm.exists() {
        return HostKvm::Unusable(format!("no {}", kvm.display()));
    }
    if sys_module.join("kvm_pvm").exists() {
        return HostKvm::Unusable("PVM backend (kvm_pvm loaded)".into());
    }
    let info = std::fs::read_to_string(cpuinfo).unwrap_or_default();
    let has_flag = info
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    if !has_flag {
        return HostKvm::Unusable("the CPU has no vmx/svm flag".into());
    }
    HostKvm::Usable
}

/// What a script run in L1 produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L1Output {
    /// The script's exit status inside L1.
    pub exit_code: i32,
    /// The script's stdout (L1's ttyS0).
    pub stdout: String,
    /// L1's control channel (ttyS1): kernel messages and the script's
    /// stderr, without the exit marker line.
    pub log: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("default guest (the rig's L1 kernel): {0}")]
    Guest(#[from] guest::GuestError),
    #[error(
        "qemu-system-x86_64 is not installed; the nested rig needs it: \
         run `apt-get install qemu-system-x86` as root{0}"
    )]
    NoQemu(String),
    #[error("L1 kernel {kernel_version}: {why}")]
    L1Kernel { kernel_version: String, why: String },
    #[error("cannot find the shared libraries of {}: {why}", path.display())]
    Ldd { path: PathBuf, why: String },
    #[error("cannot start QEMU: {0}")]
    Spawn(std::io::Error),
    #[error("QEMU failed ({status}): {stderr}")]
    Qemu { status: String, stderr: String },
    #[error(
        "the rig's L1 machine ended without reporting an exit status; last control lines:\n{tail}"
    )]
    NoMarker { tail: String },
    #[error("the rig's L1 machine did not finish within {0:?}; QEMU was stopped")]
    Timeout(Duration),
    #[error("interrupted by signal {0}; QEMU was stopped")]
    Interrupted(i32),
    #[error("cannot write the L1 configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Vsock(#[from] devices::virtio::vsock::Error),
}

impl RigError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        RigError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The exit status a CLI should use for this error (128 + signal for
    /// an interruption, 1 otherwise).
    pub fn exit_code(&self) -> i32 {
        match self {
            RigError::Interrupted(sig) => 128 + sig,
            _ => 1,
        }
    }
}

/// Boots L1, runs `script` with busybox `sh` once the KVM modules are
/// loaded (/dev/kvm exists), and returns its status and output. `files`
/// are copied into L1 (host path, absolute L1 path); use [`add_executable`]
/// for dynamically linked programs.
pub fn run_l1_script(
    script: &str,
    files: &[(PathBuf, String)],
    timeout: Duration,
) -> Result<L1Output, RigError> {
    qemu::run_l1(&qemu::L1Run::script(
        script.to_string(),
        files.to_vec(),
        timeout,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulate_mode_parses() {
        assert_eq!("auto".parse(), Ok(EmulateMode::Auto));
        assert_eq!("always".parse(), Ok(EmulateMode::Always));
        assert_eq!("never".parse(), Ok(EmulateMode::Never));
        assert!("sometimes"
            .parse::<EmulateMode>()
            .unwrap_err()
            .contains("auto, always or never"));
    }

    #[test]
    fn probe_explains_why() {
        let dir = std::env::temp_dir().join(format!("vireo-probe-{}", std::process::id()));
        let sysmod = dir.join("module");
        std::fs::create_dir_all(&sysmod).unwrap();
        let kvm = dir.join("kvm");
        let cpuinfo = dir.join("cpuinfo");
        std::fs::write(&cpuinfo, "flags\t\t: fpu sse2 svm lm\n").unwrap();
        assert!(
            matches!(probe_paths(&kvm, &sysmod, &cpuinfo), HostKvm::Unusable(w) if w.contains("no "))
        );
        std::fs::write(&kvm, "").unwrap();
        assert_eq!(probe_paths(&kvm, &sysmod, &cpuinfo), HostKvm::Usable);
        std::fs::create_dir(sysmod.join("kvm_pvm")).unwrap();
        assert!(
            matches!(probe_paths(&kvm, &sysmod, &cpuinfo), HostKvm::Unusable(w) if w.contains("PVM"))
        );
        std::fs::remove_dir(sysmod.join("kvm_pvm")).unwrap();
        std::fs::write(&cpuinfo, "flags\t\t: fpu sse2 lm\n").unwrap();
        assert!(
            matches!(probe_paths(&kvm, &sysmod, &cpuinfo), HostKvm::Unusable(w) if w.contains("vmx/svm"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
