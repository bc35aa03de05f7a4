//! The io_uring engine: readv/writev/fsync(DATASYNC)/fallocate submitted in
//! batches, completions announced on an eventfd registered with the ring.
//!
//! Created only after probing that the kernel lets us set up a ring and
//! supports each opcode we use; anything else makes the caller fall back to
//! the thread-pool engine.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring, Probe};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Completion, Op, StopFlag};
use crate::virtio::block::disk::{Disk, FALLOC_PUNCH_HOLE, FALLOC_ZERO_RANGE};

/// user_data of cancel requests: above every token (tokens are u32), so
/// their completions are told apart from the operations'.
const CANCEL_USER_DATA: u64 = 1 << 32;

pub struct UringEngine {
    disk: Arc<Disk>,
    ring: IoUring,
    event: EventFd,
    in_flight: usize,
    stop: StopFlag,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl UringEngine {
    /// Set up a ring for `depth` operations in flight; fails if the host
    /// cannot (or lacks an opcode we need).
    pub fn new(disk: Arc<Disk>, depth: u32, stop: StopFlag) -> io::Result<Self> {
        let entries = depth.clamp(8, 4096).next_power_of_two();
        // A completion queue twice the submission queue (the default) never
        // overflows: the worker keeps at most `depth` operations in flight.
        let ring = IoUring::new(entries)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [
            opcode::Readv::CODE,
            opcode::Writev::CODE,
            opcode::Fsync::CODE,
            opcode::Fallocate::CODE,
            opcode::AsyncCancel::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::from_raw_os_error(libc::ENOSYS));
            }
        }
        let event = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        Ok(UringEngine {
            disk,
            ring,
            event,
            in_flight: 0,
            stop,
        })
    }

    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    pub fn stop_flag(&self) -> &StopFlag {
        &self.stop
    }

    /// Ask the kernel to cancel the operations `tokens`. Those not started
    /// complete with -ECANCELED; those already running finish normally.
    pub fn cancel(&mut self, tokens: impl Iterator<Item = u32>) {
        for token in tokens {
            let entry = opcode::AsyncCancel::new(u64::from(token))
                .build()
                .user_data(CANCEL_USER_DATA);
            // SAFETY: a cancel request references no memory.
            if unsafe { self.push_entry(&entry) }.is_err() {
                break;
            }
        }
        let _ = self.submit();
    }

    /// Queue one entry, handing the queue to the kernel first if it is full.
    ///
    /// # Safety
    /// Whatever memory `entry` references must stay valid until its
    /// completion is reaped.
    unsafe fn push_entry(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller keeps what the entry references valid.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// # Safety
    /// See `Engine::push`: the iovecs and the memory they point to must stay
    /// valid until the completion is reaped.
    pub unsafe fn push(
        &mut self,
        token: u32,
        op: Op,
        iovecs: &mut [libc::iovec],
    ) -> io::Result<()> {
        let fd = types::Fd(self.disk.fd());
        let iov_len =
            u32::try_from(iovecs.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let entry = match op {
            Op::Read { offset } => opcode::Readv::new(fd, iovecs.as_ptr(), iov_len)
                .offset(offset)
                .build(),
            Op::Write { offset } => opcode::Writev::new(fd, iovecs.as_ptr(), iov_len)
                .offset(offset)
                .build(),
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Discard { offset, len } => opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(FALLOC_PUNCH_HOLE)
                .build(),
            Op::WriteZeroes { offset, len, unmap } => opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(if unmap {
                    FALLOC_PUNCH_HOLE
                } else {
                    FALLOC_ZERO_RANGE
                })
                .build(),
        }
        .user_data(u64::from(token));
        // SAFETY: the entry only references `iovecs` (and the memory it
        // points to), which the caller keeps valid until completion.
        unsafe { self.push_entry(&entry) }?;
        self.in_flight += 1;
        Ok(())
    }

    pub fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        // The eventfd is never read: the worker polls it edge-triggered.
        for cqe in self.ring.completion() {
            if cqe.user_data() == CANCEL_USER_DATA {
                continue;
            }
            self.in_flight = self.in_flight.saturating_sub(1);
            out.push(Completion {
                token: cqe.user_data() as u32,
                result: cqe.result(),
            });
        }
    }

    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Nothing else can be done; the operations still finish
                // in the kernel before the ring is torn down.
                Err(_) => return,
            }
            self.reap(out);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}
