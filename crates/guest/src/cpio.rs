//! A small writer for "newc" cpio archives, the format Linux unpacks as an
//! initramfs.
//!
//! Only what an initramfs needs: directories, regular files (from bytes or
//! streamed from a host file), symlinks and character device nodes. Every
//! archive ends with the `TRAILER!!!` entry and is padded to 512 bytes, so
//! several archives can be concatenated and the kernel unpacks them in order
//! (later entries win). The reader in `tests` parses archives back to check
//! the writer.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes one newc archive to `W`. Call [`CpioWriter::finish`] to write the
/// trailer; dropping the writer without it leaves a truncated archive.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// A directory; parents are not created implicitly.
    /// The skeleton every busybox initramfs of ours starts with: the usual
    /// top-level directories plus `extra_dirs`, /dev/console, the busybox
    /// binary at /bin/busybox and /bin/sh pointing at it.
    pub fn busybox_base(&mut self, extra_dirs: &[&str], busybox: &Path) -> io::Result<()> {
        const DIRS: [&str; 8] = [
            "/bin", "/dev", "/etc", "/proc", "/root", "/sys", "/tmp", "/lib",
        ];
        for d in DIRS.iter().chain(extra_dirs) {
            self.dir(d, 0o755)?;
        }
        self.char_dev("/dev/console", 0o600, 5, 1)?;
        self.file_from_host("/bin/busybox", busybox)?;
        self.symlink("/bin/sh", "busybox")
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.header(path, S_IFDIR | (perm & 0o7777), 2, 0, (0, 0))?;
        Ok(())
    }

    /// A regular file with the given contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| too_big(path))?;
        self.header(path, S_IFREG | (perm & 0o7777), 1, size, (0, 0))?;
        self.write_all(data)?;
        self.pad4()
    }

    /// A regular file streamed from `host` (symlinks followed). The
    /// permission bits are taken from the host file.
    pub fn file_from_host(&mut self, path: &str, host: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut f = File::open(host)?;
        let meta = f.metadata()?;
        let size = u32::try_from(meta.len()).map_err(|_| too_big(path))?;
        let perm = meta.permissions().mode() & 0o7777;
        self.header(path, S_IFREG | perm, 1, size, (0, 0))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut left = u64::from(size);
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while it was being archived", host.display()),
                ));
            }
            self.write_all(&buf[..n])?;
            left -= n as u64;
        }
        self.pad4()
    }

    /// A symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let size = u32::try_from(target.len()).map_err(|_| too_big(path))?;
        self.header(path, S_IFLNK | 0o777, 1, size, (0, 0))?;
        self.write_all(target.as_bytes())?;
        self.pad4()
    }

    /// A character device node, e.g. `/dev/console` (5, 1).
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(path, S_IFCHR | (perm & 0o7777), 1, 0, (major, minor))
    }

    /// Writes the trailer, pads the archive to 512 bytes and returns the
    /// output and the total size in bytes.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.next_ino = 0;
        self.header(TRAILER, 0, 1, 0, (0, 0))?;
        let rem = self.written % 512;
        if rem != 0 {
            let pad = vec![0u8; (512 - rem) as usize];
            self.write_all(&pad)?;
        }
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn header(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        filesize: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
        if name.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry name {name:?} contains NUL"),
            ));
        }
        let ino = self.next_ino;
        if ino != 0 {
            self.next_ino += 1;
        }
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime: fixed so archives are reproducible
            filesize, 0, // devmajor
            0, // devminor
            rdev.0, rdev.1, namesize, 0, // check
        ];
        let mut hdr = String::with_capacity(110 + name.len());
        hdr.push_str(MAGIC);
        for f in fields {
            hdr.push_str(&format!("{f:08X}"));
        }
        hdr.push_str(name);
        self.write_all(hdr.as_bytes())?;
        self.write_all(&[0])?;
        self.pad4()
    }

    fn pad4(&mut self) -> io::Result<()> {
        let rem = self.written % 4;
        if rem != 0 {
            let pad = [0u8; 3];
            self.write_all(&pad[..(4 - rem) as usize])?;
        }
        Ok(())
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }
}

fn too_big(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{path}: newc cpio entries are limited to 4 GiB"),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed entry: (name, mode, rdev major, rdev minor, data).
    pub(crate) type Entry = (String, u32, u32, u32, Vec<u8>);

    /// Parses every archive in `data` (concatenated archives allowed).
    pub(crate) fn parse(data: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
        let align = |p: usize| (p + 3) & !3;
        while pos + 110 <= data.len() {
            if data[pos..].iter().take(4).all(|&b| b == 0) {
                pos += 4;
                continue;
            }
            assert_eq!(&data[pos..pos + 6], MAGIC.as_bytes(), "magic at {pos}");
            let field = |i: usize| hex(&data[pos + 6 + i * 8..pos + 14 + i * 8]);
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_start = pos + 110;
            let name = std::str::from_utf8(&data[name_start..name_start + namesize as usize - 1])
                .unwrap()
                .to_string();
            let data_start = align(name_start + namesize as usize);
            let body = data[data_start..data_start + size as usize].to_vec();
            pos = align(data_start + size as usize);
            if name == TRAILER {
                continue;
            }
            out.push((name, mode, rmaj, rmin, body));
        }
        out
    }

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/bin", 0o755).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        w.file("/empty", 0o644, b"").unwrap();
        let (buf, n) = w.finish().unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(buf.len() % 512, 0);
        buf
    }

    #[test]
    fn writes_entries_that_parse_back() {
        let e = parse(&sample());
        let names: Vec<_> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["bin", "init", "bin/sh", "dev/console", "empty"]);
        assert_eq!(e[0].1, S_IFDIR | 0o755);
        assert_eq!(e[1].1, S_IFREG | 0o755);
        assert_eq!(e[1].4, b"#!/bin/sh\necho hi\n");
        assert_eq!(e[2].1 & 0o170000, S_IFLNK);
        assert_eq!(e[2].4, b"busybox");
        assert_eq!((e[3].1 & 0o170000, e[3].2, e[3].3), (S_IFCHR, 5, 1));
        assert!(e[4].4.is_empty());
    }

    #[test]
    fn concatenated_archives_parse_in_order() {
        let mut both = sample();
        let mut w = CpioWriter::new(Vec::new());
        w.file("/extra", 0o600, b"x").unwrap();
        both.extend(w.finish().unwrap().0);
        let e = parse(&both);
        assert_eq!(e.last().unwrap().0, "extra");
        assert_eq!(e.len(), 6);
    }

    #[test]
    fn host_file_is_streamed_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vireo-cpio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("blob");
        let data: Vec<u8> = (0..200_001u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
        let mut w = CpioWriter::new(Vec::new());
        w.file_from_host("/blob", &p).unwrap();
        let e = parse(&w.finish().unwrap().0);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(e[0].1, S_IFREG | 0o750);
        assert_eq!(e[0].4, data);
    }

    /// Cross-check with GNU cpio when it is installed.
    #[test]
    fn gnu_cpio_lists_the_archive() {
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            eprintln!("cpio not installed; skipping cross-check");
            return;
        };
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            listed.lines().collect::<Vec<_>>(),
            ["bin", "init", "bin/sh", "dev/console", "empty"]
        );
    }
}
