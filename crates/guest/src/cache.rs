//! The on-disk artifact cache shared by the guest and rig crates.
//!
//! Layout: `$XDG_CACHE_HOME/vireo` (or `$HOME/.cache/vireo`) holds `debs/`
//! (downloaded packages, by file name) and one directory per built artifact,
//! named after a hash of the recipe that built it, so a changed recipe builds
//! afresh next to the old one. Builds are safe to run from parallel
//! processes: a builder holds an exclusive `flock` on `<name>.lock`, builds
//! into a temporary directory beside the target and renames it into place,
//! so a finished directory is never seen half-written.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::GuestError;

/// The vireo cache root (created if missing): `$XDG_CACHE_HOME/vireo`, else
/// `$HOME/.cache/vireo`, else (no HOME, as in some service environments) a
/// per-user directory under the system temp dir.
pub fn cache_root() -> Result<PathBuf, GuestError> {
    let root = match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) if Path::new(&x).is_absolute() => PathBuf::from(x).join("vireo"),
        _ => match std::env::var_os("HOME") {
            Some(h) if Path::new(&h).is_absolute() => PathBuf::from(h).join(".cache/vireo"),
            // SAFETY: getuid has no preconditions and cannot fail.
            _ => std::env::temp_dir().join(format!("vireo-cache-{}", unsafe { libc::getuid() })),
        },
    };
    std::fs::create_dir_all(&root).map_err(|e| GuestError::io(&root, e))?;
    // In a shared temp dir, someone else could have made it first and
    // planted artifacts: only use a directory we own.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&root).map_err(|e| GuestError::io(&root, e))?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        return Err(GuestError::io(
            &root,
            std::io::Error::other(format!(
                "owned by uid {}, not by us (uid {uid}); set XDG_CACHE_HOME",
                meta.uid()
            )),
        ));
    }
    Ok(root)
}

/// 64-bit FNV-1a: a small stable hash for recipe identities (std's hasher
/// is not guaranteed stable across Rust releases).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xffu8]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// An exclusive lock held until dropped (the kernel drops it too if the
/// process dies).
pub struct CacheLock {
    _file: File,
}

/// Takes an exclusive `flock` on `<target>.lock`, creating it, for building
/// `target`. Tells the user when it has to wait for another process.
pub fn lock(target: &Path) -> Result<CacheLock, GuestError> {
    let mut name = target.as_os_str().to_owned();
    name.push(".lock");
    let path = Path::new(&name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| GuestError::io(path, e))?;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file`, which outlives the call.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "vireo: waiting for another vireo process that is building {}",
            target.display()
        );
        loop {
            // SAFETY: as above.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(GuestError::io(path, err));
            }
        }
    }
    Ok(CacheLock { _file: file })
}

/// A fresh, empty directory beside `target` to build into.
pub fn temp_dir_for(target: &Path) -> Result<PathBuf, GuestError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let parent = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".tmp-{name}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(GuestError::io(&tmp, e)),
        }
    }
}

/// Removes leftovers of [`temp_dir_for`] in `dir` whose names start with
/// `.tmp-{stem}-` and whose creating process is gone (killed before it
/// could clean up). Best effort: errors are ignored.
pub fn sweep_stale(dir: &Path, stem: &str) {
    let prefix = format!(".tmp-{stem}");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        // `<more of the name>-<pid>-<n>`: the pid is the second-last field.
        let Some(pid) = rest.rsplit('-').nth(1).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 0 || pid == std::process::id() as i32 {
            continue;
        }
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Moves a finished build `tmp` to `target`, replacing an older `target`.
/// Call with the lock held.
pub fn publish(tmp: &Path, target: &Path) -> Result<(), GuestError> {
    if target.exists() {
        // Swap the two in one step, so `target` never goes missing.
        if exchange(tmp, target).is_ok() {
            let _ = std::fs::remove_dir_all(tmp);
            return Ok(());
        }
        // A filesystem without RENAME_EXCHANGE: two renames.
        let old = temp_dir_for(target)?;
        std::fs::remove_dir(&old).map_err(|e| GuestError::io(&old, e))?;
        std::fs::rename(target, &old).map_err(|e| GuestError::io(target, e))?;
        std::fs::rename(tmp, target).map_err(|e| GuestError::io(target, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, target).map_err(|e| GuestError::io(target, e))?;
    }
    Ok(())
}

/// Atomically exchanges two paths (`renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive
    // the call; renameat2 does not keep them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes a directory tree when dropped unless disarmed: cleans up a
/// half-built temp dir on every error path.
pub struct RemoveOnDrop(pub Option<PathBuf>);

impl RemoveOnDrop {
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable_and_separates_parts() {
        assert_eq!(fnv1a(&[b"a"]), fnv1a(&[b"a"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        // Pinned so an accidental change of the function shows up here.
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn publish_replaces_and_lock_is_reentrant_across_opens_after_drop() {
        let base = std::env::temp_dir().join(format!("vireo-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let target = base.join("art");
        for round in 0..2 {
            let _l = lock(&target).unwrap();
            assert!(base.join("art.lock").is_file());
            let tmp = temp_dir_for(&target).unwrap();
            std::fs::write(tmp.join("v"), format!("{round}")).unwrap();
            publish(&tmp, &target).unwrap();
            assert!(!tmp.exists());
        }
        assert_eq!(std::fs::read_to_string(target.join("v")).unwrap(), "1");
        let leftovers: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());

        // A leftover of a process that no longer exists is swept; ours and
        // unrelated names are kept. Pid 0x7fff_fff0 is above pid_max.
        let dead = base.join(".tmp-art-2147483632-0");
        let mine = temp_dir_for(&target).unwrap();
        let other = base.join(".tmp-other-2147483632-0");
        for d in [&dead, &other] {
            std::fs::create_dir(d).unwrap();
        }
        sweep_stale(&base, "art");
        assert!(!dead.exists());
        assert!(mine.exists());
        assert!(other.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
