//! Debian packages through the ordinary apt clients: pick the newest cloud
//! kernel package, download `.deb` files into the cache (`apt-get download`
//! needs no root) and unpack them with `dpkg-deb -x`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cache::{temp_dir_for, RemoveOnDrop};
use crate::GuestError;

/// Runs `cmd`, returning stdout; a missing tool or a failure becomes an
/// error naming the command.
fn run(cmd: &mut Command, what: &str) -> Result<String, GuestError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| GuestError::Tool {
            tool: tool.clone(),
            why: format!(
                "cannot run it ({e}) to {what}: the default guest is built from Debian packages, \
                 so this needs a Debian-like host with apt and dpkg (or pass --kernel and --initrd)"
            ),
        })?;
    if !out.status.success() {
        return Err(GuestError::Tool {
            tool,
            why: format!(
                "failed to {what} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `6.1.0-48` from `linux-image-6.1.0-48-cloud-amd64-unsigned` (flavour
/// `cloud-amd64`), as numbers.
fn abi_numbers(package: &str, flavour: &str) -> Option<Vec<u64>> {
    let ver = package
        .strip_prefix("linux-image-")?
        .strip_suffix("-unsigned")?
        .strip_suffix(flavour)?
        .strip_suffix('-')?;
    ver.split(['.', '-']).map(|p| p.parse().ok()).collect()
}

/// The `flavour` kernel packages in `apt-cache search` output, highest ABI
/// first.
pub fn pick_newest(search_output: &str, flavour: &str) -> Vec<String> {
    let mut found: Vec<(Vec<u64>, String)> = search_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| abi_numbers(p, flavour).map(|v| (v, p.to_string())))
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, p)| p).collect()
}

/// The candidate version apt would install for `package`, and the size of
/// its .deb in bytes; `None` when apt knows the name but has no candidate.
pub fn candidate(package: &str) -> Result<Option<(String, u64)>, GuestError> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| GuestError::Tool {
            tool: "apt-cache".into(),
            why: format!("cannot run it ({e}); the default guest needs a Debian-like host"),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    match field("Version:") {
        Some(v) if out.status.success() => {
            let size = field("Size:").and_then(|s| s.parse().ok()).unwrap_or(0);
            Ok(Some((v, size)))
        }
        _ => Ok(None),
    }
}

/// The newest `linux-image-<abi>-<flavour>-unsigned` that apt can fetch
/// (flavour `cloud-amd64` or `amd64`).
pub fn newest_kernel(flavour: &str) -> Result<String, GuestError> {
    let out = run(
        Command::new("apt-cache").args([
            "search",
            "--names-only",
            &format!("^linux-image-[0-9.-]+-{flavour}-unsigned$"),
        ]),
        &format!("search the apt lists for a {flavour} kernel"),
    )?;
    for package in pick_newest(&out, flavour) {
        if candidate(&package)?.is_some() {
            return Ok(package);
        }
    }
    Err(GuestError::Unavailable {
        package: format!("linux-image-<abi>-{flavour}-unsigned"),
        why: "no such package in the apt lists".into(),
    })
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

/// Downloads the candidate `.deb` of `package` into `debs` (reusing a file
/// already there) and returns its path.
pub fn download(package: &str, debs: &Path) -> Result<PathBuf, GuestError> {
    let (version, size) = candidate(package)?.ok_or_else(|| GuestError::Unavailable {
        package: package.into(),
        why: "apt has no installable version of it".into(),
    })?;
    // apt-get download names files <pkg>_<version with ':' as %3a>_<arch>.deb.
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    if let Some(found) = find_deb(debs, &prefix)? {
        return Ok(found);
    }
    std::fs::create_dir_all(debs).map_err(|e| GuestError::io(debs, e))?;
    eprintln!("vireo: downloading {package} {version} ({})", human(size));
    crate::cache::sweep_stale(debs, package);
    let tmp = temp_dir_for(&debs.join(package))?;
    let _cleanup = RemoveOnDrop(Some(tmp.clone()));
    let mut cmd = Command::new("apt-get");
    cmd.arg("download").arg("-q");
    // apt drops to the `_apt` user for downloads, which cannot write into a
    // root-owned cache dir and warns; as root, download as root directly.
    if is_root() {
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    let status = cmd
        .arg(format!("{package}={version}"))
        .current_dir(&tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| GuestError::Tool {
            tool: "apt-get".into(),
            why: format!("cannot run it ({e}); the default guest needs a Debian-like host"),
        })?;
    if !status.success() {
        return Err(GuestError::Unavailable {
            package: package.into(),
            why: format!("`apt-get download {package}={version}` failed ({status})"),
        });
    }
    let got = find_deb(&tmp, &prefix)?.ok_or_else(|| GuestError::Unavailable {
        package: package.into(),
        why: "apt-get download reported success but wrote no .deb".into(),
    })?;
    let name = got.file_name().unwrap_or_default().to_owned();
    let dest = debs.join(name);
    std::fs::rename(&got, &dest).map_err(|e| GuestError::io(&dest, e))?;
    Ok(dest)
}

/// Whether we run as root (and so may run `apt-get update`).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Refreshes the package lists (`apt-get update`), showing apt's progress.
pub fn update() -> Result<(), GuestError> {
    eprintln!("vireo: refreshing the apt package lists (apt-get update)");
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| GuestError::io(Path::new("stderr"), e))?;
    let status = Command::new("apt-get")
        .args(["update", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .map_err(|e| GuestError::Tool {
            tool: "apt-get".into(),
            why: format!("cannot run it ({e})"),
        })?;
    if !status.success() {
        return Err(GuestError::Tool {
            tool: "apt-get".into(),
            why: format!("`apt-get update` failed ({status})"),
        });
    }
    Ok(())
}

fn find_deb(dir: &Path, prefix: &str) -> Result<Option<PathBuf>, GuestError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(GuestError::io(dir, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(".deb") {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Unpacks a `.deb`'s data into `dest` with `dpkg-deb -x`.
pub fn extract(deb: &Path, dest: &Path) -> Result<(), GuestError> {
    let name = deb.file_name().unwrap_or_default().to_string_lossy();
    eprintln!("vireo: unpacking {name}");
    run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest),
        &format!("unpack {}", deb.display()),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_abi_wins_numerically() {
        let out = "\
linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-48-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.10.0-1-cloud-amd64-unsigned - newer
linux-image-cloud-amd64 - meta package
linux-image-6.1.0-47-cloud-amd64-unsigned-dbg - not a match
";
        assert_eq!(
            pick_newest(out, "cloud-amd64"),
            [
                "linux-image-6.10.0-1-cloud-amd64-unsigned",
                "linux-image-6.1.0-48-cloud-amd64-unsigned",
                "linux-image-6.1.0-9-cloud-amd64-unsigned",
            ]
        );
        assert!(pick_newest("", "cloud-amd64").is_empty());
        // The standard flavour does not pick up cloud kernels.
        let mixed = "linux-image-6.1.0-48-cloud-amd64-unsigned - x\n\
                     linux-image-6.1.0-47-amd64-unsigned - y\n";
        assert_eq!(
            pick_newest(mixed, "amd64"),
            ["linux-image-6.1.0-47-amd64-unsigned"]
        );
    }
}
