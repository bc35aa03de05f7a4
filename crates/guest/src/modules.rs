//! Kernel modules: find them in an extracted `lib/modules/<ver>` tree, learn
//! their dependencies and order a set of wanted modules so that every module
//! comes after the ones it needs (the order `insmod` must use).
//!
//! Dependencies come from `modules.dep` when the tree has one (a tree that
//! `depmod` has run on). Debian's kernel packages ship without it (their
//! postinst runs depmod), so otherwise each module's ELF `.modinfo` section
//! is read for its `depends=` line, which is what depmod itself reads.
//! Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are decompressed with
//! the matching host tool when they are copied into an initramfs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::GuestError;

/// Module names treat `-` and `_` as the same character; `_` is canonical.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// One module file and the modules it depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Path relative to the modules dir, e.g. `kernel/drivers/virtio/virtio.ko`.
    pub rel_path: PathBuf,
    /// Canonical names of direct dependencies.
    pub depends: Vec<String>,
}

/// Every module of one kernel, by canonical name.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    pub modules: BTreeMap<String, ModuleInfo>,
}

/// Canonical module name of a file name such as `virtio-rng.ko.xz`.
fn name_of(file: &str) -> Option<String> {
    let base = file.split('/').next_back()?;
    let stem = base.split_once(".ko")?.0;
    let rest = &base[stem.len()..];
    matches!(rest, ".ko" | ".ko.xz" | ".ko.zst" | ".ko.gz").then(|| canonical(stem))
}

impl ModuleIndex {
    /// Parses `modules.dep` text: `path: dep-path dep-path ...` per line.
    pub fn from_modules_dep(text: &str) -> Self {
        let mut modules = BTreeMap::new();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let Some(name) = name_of(path.trim()) else {
                continue;
            };
            let depends = deps.split_whitespace().filter_map(name_of).collect();
            modules.insert(
                name,
                ModuleInfo {
                    rel_path: PathBuf::from(path.trim()),
                    depends,
                },
            );
        }
        ModuleIndex { modules }
    }

    /// Indexes `modules_dir` (an extracted `lib/modules/<ver>`): from its
    /// `modules.dep` if present, else by reading every module's `.modinfo`.
    pub fn load(modules_dir: &Path) -> Result<Self, GuestError> {
        let dep = modules_dir.join("modules.dep");
        if dep.is_file() {
            let text = std::fs::read_to_string(&dep).map_err(|e| GuestError::io(&dep, e))?;
            return Ok(Self::from_modules_dep(&text));
        }
        let mut modules = BTreeMap::new();
        let mut stack = vec![modules_dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| GuestError::io(&dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| GuestError::io(&dir, e))?;
                let path = entry.path();
                let ft = entry.file_type().map_err(|e| GuestError::io(&path, e))?;
                if ft.is_dir() {
                    stack.push(path);
                    continue;
                }
                let fname = entry.file_name().to_string_lossy().into_owned();
                let Some(name) = name_of(&fname) else {
                    continue;
                };
                let data = read_module(&path)?;
                let depends = modinfo_depends(&data).map_err(|why| GuestError::BadModule {
                    path: path.clone(),
                    why,
                })?;
                let rel_path = path
                    .strip_prefix(modules_dir)
                    .unwrap_or(&path)
                    .to_path_buf();
                modules.insert(name, ModuleInfo { rel_path, depends });
            }
        }
        Ok(ModuleIndex { modules })
    }

    /// Orders `wanted` plus all their dependencies so that every module
    /// follows its dependencies; `wanted` order is kept where the
    /// dependencies allow. Returns the order and the wanted names that this
    /// kernel does not have as modules (built in, or absent).
    pub fn load_order(&self, wanted: &[&str]) -> (Vec<String>, Vec<String>) {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut missing = Vec::new();
        for w in wanted {
            let name = canonical(w);
            if !self.modules.contains_key(&name) {
                missing.push(w.to_string());
                continue;
            }
            self.visit(&name, &mut done, &mut BTreeSet::new(), &mut order);
        }
        (order, missing)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        on_path: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        // A dependency cycle cannot load anyway; `on_path` just keeps a
        // malformed modules.dep from recursing forever.
        if done.contains(name) || !on_path.insert(name.to_string()) {
            return;
        }
        if let Some(info) = self.modules.get(name) {
            for dep in &info.depends {
                self.visit(dep, done, on_path, order);
            }
            done.insert(name.to_string());
            order.push(name.to_string());
        }
        on_path.remove(name);
    }
}

/// Reads a module file, decompressing `.xz`, `.zst` or `.gz` with the host
/// tool of that name.
pub fn read_module(path: &Path) -> Result<Vec<u8>, GuestError> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => Some(("xz", "xz-utils")),
        Some("zst") => Some(("zstd", "zstd")),
        Some("gz") => Some(("gzip", "gzip")),
        _ => None,
    };
    let Some((tool, package)) = tool else {
        return std::fs::read(path).map_err(|e| GuestError::io(path, e));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| GuestError::Tool {
            tool: tool.into(),
            why: format!(
                "cannot run it to decompress {} ({e}); install it with `apt-get install {package}`",
                path.display()
            ),
        })?;
    if !out.status.success() {
        return Err(GuestError::BadModule {
            path: path.into(),
            why: format!(
                "{tool} -dc failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// The `depends=` list of a module's `.modinfo` ELF section.
pub fn modinfo_depends(elf: &[u8]) -> Result<Vec<String>, String> {
    let modinfo = elf_section(elf, ".modinfo")?;
    for entry in modinfo.split(|&b| b == 0) {
        if let Some(v) = entry.strip_prefix(b"depends=") {
            let v = String::from_utf8_lossy(v);
            return Ok(v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(canonical)
                .collect());
        }
    }
    Ok(Vec::new())
}

/// Finds a section by name in a little-endian ELF64 file.
fn elf_section<'a>(elf: &'a [u8], want: &str) -> Result<&'a [u8], String> {
    let get = |off: usize, len: usize| -> Result<&'a [u8], String> {
        off.checked_add(len)
            .and_then(|end| elf.get(off..end))
            .ok_or_else(|| format!("truncated ELF (offset {off}, length {len})"))
    };
    let rd = |off: usize, len: usize| -> Result<u64, String> {
        let b = get(off, len)?;
        let mut v = 0u64;
        for (i, byte) in b.iter().enumerate() {
            v |= u64::from(*byte) << (8 * i);
        }
        Ok(v)
    };
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    let shoff = rd(0x28, 8)? as usize;
    let shentsize = rd(0x3a, 2)? as usize;
    let shnum = rd(0x3c, 2)? as usize;
    let shstrndx = rd(0x3e, 2)? as usize;
    let sh = |i: usize| -> Result<(u64, usize, usize), String> {
        let base = i
            .checked_mul(shentsize)
            .and_then(|x| x.checked_add(shoff))
            .ok_or("section header table out of range")?;
        Ok((
            rd(base, 4)?,
            rd(base + 0x18, 8)? as usize,
            rd(base + 0x20, 8)? as usize,
        ))
    };
    let (_, str_off, str_size) = sh(shstrndx)?;
    let strtab = get(str_off, str_size)?;
    for i in 0..shnum {
        let (name_off, off, size) = sh(i)?;
        let name = strtab
            .get(name_off as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == want.as_bytes() {
            return get(off, size);
        }
    }
    Err(format!("no {want} section"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/misc/pvpanic/pvpanic-mmio.ko: kernel/drivers/misc/pvpanic/pvpanic.ko
kernel/drivers/misc/pvpanic/pvpanic.ko:
";

    fn pos(order: &[String], m: &str) -> usize {
        order
            .iter()
            .position(|x| x == m)
            .unwrap_or_else(|| panic!("{m} not in {order:?}"))
    }

    #[test]
    fn dependencies_come_first() {
        let idx = ModuleIndex::from_modules_dep(DEP);
        let (order, missing) =
            idx.load_order(&["pvpanic-mmio", "virtio_pci", "virtio_net", "virtio_rng"]);
        assert!(missing.is_empty());
        assert_eq!(&order[..2], ["pvpanic", "pvpanic_mmio"]);
        assert!(pos(&order, "virtio_ring") < pos(&order, "virtio"));
        for d in ["virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev"] {
            assert!(pos(&order, d) < pos(&order, "virtio_pci"));
        }
        assert!(pos(&order, "failover") < pos(&order, "net_failover"));
        assert!(pos(&order, "net_failover") < pos(&order, "virtio_net"));
        // Each module once.
        let set: BTreeSet<_> = order.iter().collect();
        assert_eq!(set.len(), order.len());
        assert_eq!(order.len(), 11);
    }

    #[test]
    fn missing_modules_are_reported_not_fatal() {
        let idx = ModuleIndex::from_modules_dep(DEP);
        let (order, missing) = idx.load_order(&["virtio_ring", "virtio_balloon"]);
        assert_eq!(order, ["virtio_ring"]);
        assert_eq!(missing, ["virtio_balloon"]);
    }

    #[test]
    fn names_are_canonical() {
        assert_eq!(
            name_of("a/b/virtio-rng.ko.xz").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(name_of("x.ko").as_deref(), Some("x"));
        assert_eq!(name_of("modules.order"), None);
        assert_eq!(name_of("x.kobj"), None);
        let idx = ModuleIndex::from_modules_dep(DEP);
        assert_eq!(
            idx.modules["virtio_net"].rel_path,
            PathBuf::from("kernel/drivers/net/virtio_net.ko.xz")
        );
    }

    #[test]
    fn cycles_do_not_recurse_forever() {
        let idx = ModuleIndex::from_modules_dep("a.ko: b.ko\nb.ko: a.ko\n");
        let (order, _) = idx.load_order(&["a"]);
        assert_eq!(order, ["b", "a"]);
    }

    #[test]
    fn modinfo_of_a_built_elf_is_read() {
        // A minimal ELF64 with a section name table and a .modinfo section.
        let modinfo = b"license=GPL\0depends=virtio,virtio-ring\0name=x\0";
        let shstr = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shstr_off = elf.len();
        elf.extend_from_slice(shstr);
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut e = vec![0u8; 64];
            e[0..4].copy_from_slice(&name.to_le_bytes());
            e[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            e[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&e);
        };
        sh(0, 0, 0);
        sh(1, modinfo_off, modinfo.len());
        sh(10, shstr_off, shstr.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(modinfo_depends(&elf).unwrap(), ["virtio", "virtio_ring"]);
        assert!(modinfo_depends(b"not elf").is_err());
    }
}
