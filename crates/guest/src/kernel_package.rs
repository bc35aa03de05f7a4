//! Another Debian kernel flavour, unpacked into the cache: its bzImage and
//! modules only. The rig uses it for L1 when the default guest's cloud
//! kernel lacks a module L1 needs (the standard `amd64` flavour has more).

use std::path::{Path, PathBuf};

use crate::apt;
use crate::cache::{cache_root, lock, publish, sweep_stale, temp_dir_for, RemoveOnDrop};
use crate::GuestError;

const MANIFEST: &str = "kernel.ok";

/// An unpacked kernel package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPackage {
    /// e.g. `linux-image-6.1.0-48-amd64-unsigned`.
    pub package: String,
    pub kernel: PathBuf,
    pub kernel_version: String,
    pub modules_dir: PathBuf,
}

fn from_dir(dir: &Path, package: &str) -> Option<KernelPackage> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
    let kernel_version = text
        .lines()
        .find_map(|l| l.strip_prefix("kernel_version="))
        .filter(|v| !v.is_empty() && !v.contains('/'))?
        .to_string();
    let k = KernelPackage {
        package: package.to_string(),
        kernel: dir.join("vmlinuz"),
        modules_dir: dir.join("modules").join(&kernel_version),
        kernel_version,
    };
    (k.kernel.is_file() && k.modules_dir.is_dir()).then_some(k)
}

/// The newest `linux-image-<abi>-<flavour>-unsigned` apt offers, fetched
/// and unpacked on first use (cached by package name).
pub fn ensure_kernel_package(flavour: &str) -> Result<KernelPackage, GuestError> {
    let package = apt::newest_kernel(flavour)?;
    let root = cache_root()?;
    let dir = root.join(format!("kernel-{package}"));
    if let Some(k) = from_dir(&dir, &package) {
        return Ok(k);
    }
    let _lock = lock(&dir)?;
    if let Some(k) = from_dir(&dir, &package) {
        return Ok(k);
    }
    let deb = apt::download(&package, &root.join("debs"))?;
    sweep_stale(&root, &format!("kernel-{package}"));
    let tmp = temp_dir_for(&dir)?;
    let mut cleanup = RemoveOnDrop(Some(tmp.clone()));
    let x = tmp.join("x");
    apt::extract(&deb, &x)?;
    let x_modules = crate::unpacked(&x, "lib/modules", &package)?;
    let kernel_version = crate::only_subdir(&x_modules, &package)?;
    let rename = |from: PathBuf, to: PathBuf| {
        std::fs::rename(&from, &to).map_err(|e| GuestError::io(&from, e))
    };
    rename(
        x.join(format!("boot/vmlinuz-{kernel_version}")),
        tmp.join("vmlinuz"),
    )?;
    std::fs::create_dir(tmp.join("modules")).map_err(|e| GuestError::io(&tmp, e))?;
    rename(
        x_modules.join(&kernel_version),
        tmp.join("modules").join(&kernel_version),
    )?;
    std::fs::remove_dir_all(&x).map_err(|e| GuestError::io(&x, e))?;
    let manifest = tmp.join(MANIFEST);
    std::fs::write(&manifest, format!("kernel_version={kernel_version}\n"))
        .map_err(|e| GuestError::io(&manifest, e))?;
    publish(&tmp, &dir)?;
    cleanup.disarm();
    from_dir(&dir, &package).ok_or_else(|| GuestError::BadCache {
        path: dir.clone(),
        why: "vanished right after it was built".into(),
    })
}
