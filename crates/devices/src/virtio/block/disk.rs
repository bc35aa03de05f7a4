//! The disk behind a virtio-blk device: a raw image file or a host block
//! device, opened and checked once, plus the synchronous I/O helpers that the
//! synchronous engine uses for everything and the io_uring engine uses for
//! fallbacks (short transfers, unsupported fallocate modes).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;

use super::engine::StopFlag;
use super::{Error, SECTOR_SHIFT, SECTOR_SIZE};

/// Length of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Most iovecs one preadv/pwritev (or io_uring readv/writev) takes: Linux's
/// UIO_MAXIOV.
pub const IOV_MAX: usize = 1024;

/// Writing zeros by hand (when fallocate cannot zero a range) goes in chunks
/// of this size.
const ZERO_CHUNK: usize = 64 * 1024;

/// An opened disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    readonly: bool,
    capacity_sectors: u64,
    id: [u8; ID_BYTES],
    /// Host filesystem block size (or 4096 for block devices), used as the
    /// discard granularity we advertise.
    host_block_size: u32,
}

impl Disk {
    /// Open `path` (a regular file or a host block device). `id` is what
    /// GET_ID answers (up to 20 bytes); without one, an id is derived from
    /// the file's device and inode numbers, so it is stable across runs.
    pub fn open(path: &Path, readonly: bool, id: Option<&str>) -> Result<Disk, Error> {
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let file_type = meta.file_type();
        if file_type.is_dir() {
            return Err(Error::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        let is_block_device = file_type.is_block_device();
        if !file_type.is_file() && !is_block_device {
            return Err(Error::NotFileOrBlockDevice {
                path: path.to_path_buf(),
            });
        }
        let id_bytes = match id {
            Some(id) => {
                if id.len() > ID_BYTES {
                    return Err(Error::IdTooLong { id: id.to_string() });
                }
                id.as_bytes()
            }
            None => &[],
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(open_err)?;
        lock(&file, readonly).map_err(|source| Error::Locked {
            path: path.to_path_buf(),
            source,
        })?;
        // For a block device the metadata length is 0; seeking to the end
        // gives the size for both kinds.
        let size = file.seek(SeekFrom::End(0)).map_err(|source| Error::Size {
            path: path.to_path_buf(),
            source,
        })?;
        if size < SECTOR_SIZE {
            return Err(Error::TooSmall {
                path: path.to_path_buf(),
                size,
            });
        }
        let mut id_buf = [0u8; ID_BYTES];
        if id.is_some() {
            id_buf[..id_bytes.len()].copy_from_slice(id_bytes);
        } else {
            let derived = format!("{:x}{:x}{:x}", meta.dev(), meta.rdev(), meta.ino());
            let n = derived.len().min(ID_BYTES);
            id_buf[..n].copy_from_slice(&derived.as_bytes()[..n]);
        }
        let host_block_size = if is_block_device {
            4096
        } else {
            (meta.blksize() as u32).clamp(SECTOR_SIZE as u32, 1 << 20)
        };
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            readonly,
            capacity_sectors: size >> SECTOR_SHIFT,
            id: id_buf,
            host_block_size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Size in 512-byte sectors (a trailing partial sector is not exposed).
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Size in bytes that the guest can reach.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors << SECTOR_SHIFT
    }

    /// The GET_ID answer, NUL-padded.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    pub fn host_block_size(&self) -> u32 {
        self.host_block_size
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Read or write the whole of `iovecs` at `offset`, looping over short
    /// transfers. `iovecs` is consumed (advanced) as data moves. Gives up
    /// with ECANCELED between system calls once `stop` is set (the device is
    /// being reset, so nobody waits for the result).
    ///
    /// # Safety
    /// Every iovec must describe memory that stays valid for the whole call:
    /// readable when `write`, writable otherwise (the kernel writes into it).
    pub unsafe fn rw_vectored(
        &self,
        write: bool,
        iovecs: &mut [libc::iovec],
        mut offset: u64,
        stop: &StopFlag,
    ) -> io::Result<u64> {
        let mut total = 0u64;
        let mut start = 0usize;
        while start < iovecs.len() {
            if total > 0 {
                stop.check()?;
            }
            if iovecs[start].iov_len == 0 {
                start += 1;
                continue;
            }
            let rest = &iovecs[start..];
            let count = rest.len().min(IOV_MAX) as libc::c_int;
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: the caller guarantees every iovec is valid for this
            // call; the kernel only reads (pwritev) or writes (preadv) them.
            let n = unsafe {
                if write {
                    libc::pwritev(self.fd(), rest.as_ptr(), count, off)
                } else {
                    libc::preadv(self.fd(), rest.as_ptr(), count, off)
                }
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let n = n as u64;
            total += n;
            offset += n;
            advance_iovecs(iovecs, &mut start, n as usize);
        }
        Ok(total)
    }

    /// fdatasync: data the guest flushed survives the VMM being killed (and
    /// the host losing power, as far as the host storage honours it).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// DISCARD: punch a hole. A file system without hole punching makes the
    /// discard a no-op, which the spec allows.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(FALLOC_PUNCH_HOLE, offset, len) {
            Err(e) if is_unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// WRITE_ZEROES: punch a hole when the guest allows unmapping, else zero
    /// the range in place, else write zeros (checking `stop` between chunks).
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        stop: &StopFlag,
    ) -> io::Result<()> {
        if unmap {
            match self.fallocate(FALLOC_PUNCH_HOLE, offset, len) {
                Err(e) if is_unsupported(&e) => {}
                other => return other,
            }
        }
        self.zero_range_or_write(offset, len, stop)
    }

    /// The WRITE_ZEROES steps after hole punching.
    pub fn zero_range_or_write(&self, offset: u64, len: u64, stop: &StopFlag) -> io::Result<()> {
        match self.fallocate(FALLOC_ZERO_RANGE, offset, len) {
            Err(e) if is_unsupported(&e) => self.write_zero_bytes(offset, len, stop),
            other => other,
        }
    }

    /// Write zeros in chunks; a range can be up to 2 GiB, so a device reset
    /// (`stop`) is honoured between chunks.
    fn write_zero_bytes(&self, mut offset: u64, len: u64, stop: &StopFlag) -> io::Result<()> {
        static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        while offset < end {
            stop.check()?;
            let n = ((end - offset) as usize).min(ZERO_CHUNK);
            let mut iov = [libc::iovec {
                iov_base: ZEROES.as_ptr() as *mut libc::c_void,
                iov_len: n,
            }];
            // SAFETY: the iovec covers `n` bytes of a static buffer, which
            // pwritev only reads.
            unsafe { self.rw_vectored(true, &mut iov, offset, stop)? };
            offset += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            // SAFETY: fallocate on a file descriptor we own; no memory is
            // passed to the kernel.
            let ret = unsafe { libc::fallocate(self.fd(), mode, off, len) };
            if ret == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Take an open-file-description lock on the whole image: shared for a
/// read-only disk, exclusive for a writable one, so two VMs (or two disks of
/// one VM) never write the same image. Released when the file is closed.
/// File systems without OFD locks are served unlocked.
fn lock(file: &File, readonly: bool) -> io::Result<()> {
    let lock = libc::flock {
        l_type: if readonly {
            libc::F_RDLCK
        } else {
            libc::F_WRLCK
        } as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: F_OFD_SETLK reads the flock struct we pass, which lives for
    // the duration of the call; the fd is ours.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(err),
    }
}

/// fallocate mode for DISCARD and WRITE_ZEROES with UNMAP.
pub const FALLOC_PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// fallocate mode for WRITE_ZEROES without UNMAP.
pub const FALLOC_ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// Whether a fallocate error means "this mode is not available here" (so the
/// caller falls back) rather than a real I/O error.
pub fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

/// Skip `n` bytes of `iovecs` from index `*start`, shrinking the first
/// partially used entry in place.
pub fn advance_iovecs(iovecs: &mut [libc::iovec], start: &mut usize, mut n: usize) {
    while n > 0 && *start < iovecs.len() {
        let iov = &mut iovecs[*start];
        if n >= iov.iov_len {
            n -= iov.iov_len;
            iov.iov_len = 0;
            *start += 1;
        } else {
            // `n < iov_len`: the new base stays inside the same buffer.
            iov.iov_base = (iov.iov_base as *mut u8).wrapping_add(n) as *mut libc::c_void;
            iov.iov_len -= n;
            n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_utils::TempImage;
    use super::*;

    /// Zeros written by hand (up to 2 GiB for one request) stop between
    /// chunks once the device is stopping, and so does the remainder of a
    /// vectored transfer.
    #[test]
    fn long_synchronous_work_gives_up_when_stopped() {
        let img = TempImage::patterned(1 << 20);
        let before = img.contents();
        let disk = img.disk(false);
        let stop = StopFlag::new();
        disk.write_zero_bytes(0, 4096, &stop).unwrap();
        assert_eq!(img.read_at(0, 4096), vec![0; 4096]);
        stop.set();
        let e = disk.write_zero_bytes(8192, 1 << 19, &stop).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECANCELED));
        assert!(img.contents()[8192..] == before[8192..]);
        // A transfer's first system call still runs (a stop only cuts a
        // transfer the kernel left short).
        let mut buf = vec![0u8; 512];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        }];
        // SAFETY: `buf` outlives the call.
        let n = unsafe { disk.rw_vectored(false, &mut iov, 4096, &stop) }.unwrap();
        assert_eq!(n, 512);
        assert_eq!(buf, before[4096..4608]);
    }
}
