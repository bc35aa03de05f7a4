//! Vireo's default guest: a stock Debian cloud kernel and a small busybox
//! initramfs, fetched and built on first use and cached afterwards.
//!
//! [`ensure_default_guest`] returns the cached guest or builds it:
//! `apt-get download` the newest `linux-image-*-cloud-amd64-unsigned` and
//! `busybox-static`, unpack them, and write an initramfs (see [`init`]) that
//! loads the virtio and pvpanic modules and runs the command given with
//! [`command_param`]. The [`cpio`], [`modules`] and [`cache`] modules are
//! public because the nested rig builds its L1 image with them.

pub mod apt;
pub mod cache;
pub mod cpio;
pub mod exitport;
pub mod init;
pub mod kernel_package;
pub mod modules;

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use cache::{cache_root, fnv1a, lock, publish, temp_dir_for, RemoveOnDrop};
use cpio::CpioWriter;
use modules::ModuleIndex;

pub use kernel_package::{ensure_kernel_package, KernelPackage};

/// Extra kernel arguments the default guest wants.
pub const DEFAULT_GUEST_CMDLINE: &str = "quiet";

/// Modules the guest loads, in this order where dependencies allow;
/// pvpanic first so a later panic reaches the VMM.
pub const GUEST_MODULES: &[&str] = &[
    "pvpanic-mmio",
    "virtio_ring",
    "virtio",
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "virtio_balloon",
    "virtio_rng",
    "virtio_console",
    "pvpanic",
];

/// The Debian kernel flavour of the default guest.
pub const DEFAULT_FLAVOUR: &str = "cloud-amd64";

/// Which Debian kernel a guest boots: the default guest's cloud kernel, or
/// the standard `amd64` one (the kernel of issue 3's reference measurements
/// and of the rig's L1), with the same busybox initramfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuestKernel {
    #[default]
    Cloud,
    Standard,
}

impl GuestKernel {
    /// The Debian flavour: `linux-image-<abi>-<flavour>-unsigned`.
    pub fn flavour(self) -> &'static str {
        match self {
            GuestKernel::Cloud => DEFAULT_FLAVOUR,
            GuestKernel::Standard => "amd64",
        }
    }
}

impl std::str::FromStr for GuestKernel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cloud" | "cloud-amd64" => Ok(GuestKernel::Cloud),
            "standard" | "amd64" => Ok(GuestKernel::Standard),
            other => Err(format!(
                "unknown guest kernel {other:?}: expected cloud (Debian's cloud-amd64) \
                 or standard (Debian's amd64)"
            )),
        }
    }
}

/// Bump when the build steps change in a way the hash below cannot see.
const RECIPE_VERSION: &str = "guest-recipe-2";
const MANIFEST: &str = "guest.ok";

/// A built default guest; all paths are inside the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultGuest {
    /// The bzImage (`vmlinuz`).
    pub kernel: PathBuf,
    /// The busybox initramfs (uncompressed newc cpio).
    pub initrd: PathBuf,
    /// `uname -r` of the kernel, e.g. `6.1.0-48-cloud-amd64`.
    pub kernel_version: String,
    /// The package's extracted `lib/modules/<kernel_version>`.
    pub modules_dir: PathBuf,
    /// A static busybox binary.
    pub busybox: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{tool}: {why}")]
    Tool { tool: String, why: String },
    #[error(
        "package {package} is unavailable: {why}; refresh the package lists with \
         `apt-get update` (as root) and retry"
    )]
    Unavailable { package: String, why: String },
    #[error("package {package}: {why}")]
    BadPackage { package: String, why: String },
    #[error("kernel module {}: {why}", path.display())]
    BadModule { path: PathBuf, why: String },
    #[error("cached guest {} is unusable ({why}); rebuild it with `vireo guest build`", path.display())]
    BadCache { path: PathBuf, why: String },
}

impl GuestError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        GuestError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The cache directory of the current recipe with `kernel`.
fn guest_dir(kernel: GuestKernel) -> Result<PathBuf, GuestError> {
    let mut wanted = String::new();
    for m in GUEST_MODULES {
        wanted.push_str(m);
        wanted.push(',');
    }
    // The cloud kernel's hash has no flavour part, so caches built before
    // the choice existed stay valid.
    let flavour = match kernel {
        GuestKernel::Cloud => "",
        other => other.flavour(),
    };
    let hash = fnv1a(&[
        RECIPE_VERSION.as_bytes(),
        init::template_identity().as_bytes(),
        &exitport::exit_port_program(init::EXIT_PORT),
        wanted.as_bytes(),
        flavour.as_bytes(),
    ]);
    Ok(cache_root()?.join(format!("guest-{hash:016x}")))
}

fn from_dir(dir: &Path) -> Result<Option<DefaultGuest>, GuestError> {
    let manifest = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&manifest) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(GuestError::io(&manifest, e)),
    };
    let kernel_version = text
        .lines()
        .find_map(|l| l.strip_prefix("kernel_version="))
        .filter(|v| !v.is_empty() && !v.contains('/'))
        .ok_or_else(|| GuestError::BadCache {
            path: dir.into(),
            why: format!("{MANIFEST} names no kernel_version"),
        })?
        .to_string();
    let g = DefaultGuest {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.cpio"),
        modules_dir: dir.join("modules").join(&kernel_version),
        busybox: dir.join("busybox"),
        kernel_version,
    };
    for p in [&g.kernel, &g.initrd, &g.modules_dir, &g.busybox] {
        if !p.exists() {
            return Err(GuestError::BadCache {
                path: dir.into(),
                why: format!("{} is missing", p.display()),
            });
        }
    }
    Ok(Some(g))
}

/// The default guest, built on first use (downloads about 30 MB) and cached.
pub fn ensure_default_guest() -> Result<DefaultGuest, GuestError> {
    ensure_guest(GuestKernel::Cloud)
}

/// The default guest's initramfs with `kernel`, built on first use and
/// cached (each kernel in its own directory).
pub fn ensure_guest(kernel: GuestKernel) -> Result<DefaultGuest, GuestError> {
    let dir = guest_dir(kernel)?;
    if let Some(g) = from_dir(&dir)? {
        return Ok(g);
    }
    let _lock = lock(&dir)?;
    // Another process may have built it while we waited for the lock.
    if let Some(g) = from_dir(&dir)? {
        return Ok(g);
    }
    build_into(&dir, kernel)
}

/// Builds the default guest again (`vireo guest build`): picks the newest
/// kernel apt offers now and rewrites the initramfs.
pub fn rebuild_default_guest() -> Result<DefaultGuest, GuestError> {
    let dir = guest_dir(GuestKernel::Cloud)?;
    let _lock = lock(&dir)?;
    build_into(&dir, GuestKernel::Cloud)
}

fn build_into(dir: &Path, kernel: GuestKernel) -> Result<DefaultGuest, GuestError> {
    eprintln!(
        "vireo: building the guest ({} kernel) in {}",
        kernel.flavour(),
        dir.display()
    );
    let root = cache_root()?;
    let debs = root.join("debs");
    let fetch = || -> Result<_, GuestError> {
        let kernel_pkg = apt::newest_kernel(kernel.flavour())?;
        let kernel_deb = apt::download(&kernel_pkg, &debs)?;
        let busybox_deb = apt::download("busybox-static", &debs)?;
        Ok((kernel_pkg, kernel_deb, busybox_deb))
    };
    // Missing or stale package lists are the usual cause of an unavailable
    // package; as root, refresh them once and try again.
    let (kernel_pkg, kernel_deb, busybox_deb) = match fetch() {
        Err(GuestError::Unavailable { .. }) if apt::is_root() => {
            apt::update()?;
            fetch()?
        }
        other => other?,
    };

    if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
        cache::sweep_stale(parent, &name.to_string_lossy());
    }
    let tmp = temp_dir_for(dir)?;
    let mut cleanup = RemoveOnDrop(Some(tmp.clone()));
    let x = tmp.join("x");
    apt::extract(&kernel_deb, &x)?;
    apt::extract(&busybox_deb, &x)?;

    let x_modules = unpacked(&x, "lib/modules", &kernel_pkg)?;
    let kernel_version = only_subdir(&x_modules, &kernel_pkg)?;
    let vmlinuz = x.join(format!("boot/vmlinuz-{kernel_version}"));
    rename(&vmlinuz, &tmp.join("vmlinuz"))?;
    std::fs::create_dir(tmp.join("modules")).map_err(|e| GuestError::io(&tmp, e))?;
    let modules_dir = tmp.join("modules").join(&kernel_version);
    rename(&x_modules.join(&kernel_version), &modules_dir)?;
    rename(
        &unpacked(&x, "bin/busybox", "busybox-static")?,
        &tmp.join("busybox"),
    )?;
    std::fs::remove_dir_all(&x).map_err(|e| GuestError::io(&x, e))?;

    let index = ModuleIndex::load(&modules_dir)?;
    let (order, missing) = index.load_order(GUEST_MODULES);
    for m in &missing {
        eprintln!("vireo: warning: kernel {kernel_version} has no module {m} (built in or absent); skipping it");
    }
    let initrd = tmp.join("initrd.cpio");
    let size = write_initrd(&initrd, &tmp.join("busybox"), &modules_dir, &index, &order)?;
    eprintln!(
        "vireo: guest initramfs: {} modules, {} KiB",
        order.len(),
        size.div_ceil(1024)
    );
    let manifest = tmp.join(MANIFEST);
    std::fs::write(
        &manifest,
        format!("kernel_version={kernel_version}\npackage={kernel_pkg}\n"),
    )
    .map_err(|e| GuestError::io(&manifest, e))?;
    publish(&tmp, dir)?;
    cleanup.disarm();
    eprintln!("vireo: default guest ready: kernel {kernel_version}");
    from_dir(dir)?.ok_or_else(|| GuestError::BadCache {
        path: dir.into(),
        why: "vanished right after it was built".into(),
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), GuestError> {
    std::fs::rename(from, to).map_err(|e| GuestError::io(from, e))
}

/// `rel` inside an unpacked package tree `x`, at `/rel` or, for packages
/// built for a merged /usr (Debian 13 on), at `/usr/rel`.
pub(crate) fn unpacked(x: &Path, rel: &str, package: &str) -> Result<PathBuf, GuestError> {
    [x.join(rel), x.join("usr").join(rel)]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| GuestError::BadPackage {
            package: package.into(),
            why: format!("it has neither /{rel} nor /usr/{rel}"),
        })
}

/// The single directory name under `dir` (the kernel version).
pub(crate) fn only_subdir(dir: &Path, package: &str) -> Result<String, GuestError> {
    let bad = |why: String| GuestError::BadPackage {
        package: package.into(),
        why,
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| bad(format!("no lib/modules in the package ({e})")))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.len() {
        1 => Ok(names.remove(0)),
        n => Err(bad(format!(
            "expected one kernel version in lib/modules, found {n}"
        ))),
    }
}

/// Writes the guest initramfs and returns its size in bytes.
fn write_initrd(
    path: &Path,
    busybox: &Path,
    modules_dir: &Path,
    index: &ModuleIndex,
    order: &[String],
) -> Result<u64, GuestError> {
    let file = File::create(path).map_err(|e| GuestError::io(path, e))?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    let io = |e| GuestError::io(path, e);
    w.busybox_base(&["/lib/modules"], busybox).map_err(io)?;
    w.file("/init", 0o755, init::init_script(order).as_bytes())
        .map_err(io)?;
    w.file("/etc/shrc", 0o644, init::SHRC.as_bytes())
        .map_err(io)?;
    w.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .map_err(io)?;
    w.file("/etc/group", 0o644, b"root:x:0:\n").map_err(io)?;
    let exit_program = exitport::exit_port_program(init::EXIT_PORT);
    w.file(init::EXIT_PROGRAM, 0o755, &exit_program)
        .map_err(io)?;
    for m in order {
        let info = &index.modules[m];
        let data = modules::read_module(&modules_dir.join(&info.rel_path))?;
        w.file(&format!("/lib/modules/{m}.ko"), 0o644, &data)
            .map_err(io)?;
    }
    let (_, size) = w.finish().map_err(io)?;
    Ok(size)
}

/// Quotes one word for a POSIX shell.
pub fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// Standard base64 (RFC 4648, with padding, no line breaks).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The kernel parameter that makes the default guest run `argv` instead of a
/// shell: `vireo.cmd=<base64 of the shell-quoted words>`.
pub fn command_param(argv: &[String]) -> String {
    let words: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    format!("vireo.cmd={}", base64(words.join(" ").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn command_param_quotes_and_encodes() {
        let argv: Vec<String> = ["sh", "-c", "echo 'hi there'; exit 3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = command_param(&argv);
        let b64 = p.strip_prefix("vireo.cmd=").unwrap();
        assert!(!b64.contains(char::is_whitespace));
        assert_eq!(b64, base64(br#"'sh' '-c' 'echo '\''hi there'\''; exit 3'"#));
    }

    /// The quoting survives a real shell: `sh -c` of the decoded text sees
    /// the original words.
    #[test]
    fn quoted_words_round_trip_through_sh() {
        let argv: Vec<String> = ["printf", "%s|", "a b", "it's", "$HOME", "", "\\n"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let words: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(words.join(" "))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "a b|it's|$HOME||\\n|"
        );
    }
}
