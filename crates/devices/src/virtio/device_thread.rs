//! The device-side handle of a virtio device's worker thread, shared by
//! every device that runs one (block, rng, ...): how the device starts it,
//! stops it without waiting (`reset`), reports when it is gone
//! (`reset_done`), and holds it still while the VM is paused.
//!
//! The worker gets a `WorkerControl`: the wake eventfd it polls with its
//! queues, the stop flag it checks between steps and the pause gate it
//! parks on. The device keeps a `DeviceThreads`: the running worker and at
//! most one that was told to stop and may still be finishing.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::pause::PauseGate;

/// Set once when a device stops; everything serving that device looks at it
/// between steps of long work.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Err(ECANCELED) once set: for `?` between the steps of long work.
    pub fn check(&self) -> io::Result<()> {
        if self.is_set() {
            Err(io::Error::from_raw_os_error(libc::ECANCELED))
        } else {
            Ok(())
        }
    }
}

/// What a worker thread is controlled by.
pub struct WorkerControl {
    /// Written by the device to wake the worker for a stop or a pause; the
    /// flags say which.
    pub wake: EventFd,
    pub stop: StopFlag,
    pub pause: Arc<PauseGate>,
}

impl WorkerControl {
    /// Stop taking work off the rings: the device is stopping or pausing.
    pub fn holding(&self) -> bool {
        self.stop.is_set() || self.pause.requested()
    }
}

/// Wait on a worker's epoll set; a signal's interruption is a wake-up
/// with no events (Ok(0)).
pub fn wait_events(
    epoll: &vmm_sys_util::epoll::Epoll,
    timeout_ms: i32,
    events: &mut [vmm_sys_util::epoll::EpollEvent],
) -> io::Result<usize> {
    match epoll.wait(timeout_ms, events) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        other => other,
    }
}

/// A running worker thread, as its device holds it.
pub struct DeviceThread {
    wake: EventFd,
    stop: StopFlag,
    pause: Arc<PauseGate>,
    thread: JoinHandle<()>,
}

impl DeviceThread {
    /// Start thread `name` running `body` with its controls; `stop` is the
    /// flag the worker (and whatever serves it, like an I/O engine) sees.
    /// A panic in it ends the VM with a reason (`crate::thread`).
    pub fn spawn<F>(name: &str, stop: StopFlag, body: F) -> io::Result<DeviceThread>
    where
        F: FnOnce(WorkerControl) + Send + 'static,
    {
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let pause = Arc::new(PauseGate::default());
        let control = WorkerControl {
            wake: wake.try_clone()?,
            stop: stop.clone(),
            pause: pause.clone(),
        };
        let thread = crate::thread::spawn(name, move || body(control))?;
        Ok(DeviceThread {
            wake,
            stop,
            pause,
            thread,
        })
    }

    /// Tell the worker to stop (it leaves the rings alone from now on).
    fn signal_stop(&self) {
        self.stop.set();
        let _ = self.wake.write(1);
        // A paused worker must wake up to see the stop.
        self.pause.release();
    }

    /// Wake the worker for a look at what the device left for it (new
    /// settings); it carries on as before.
    pub fn nudge(&self) {
        let _ = self.wake.write(1);
    }

    /// Ask the worker to park and wait up to `timeout` until it has.
    pub fn park(&self, timeout: Duration) -> bool {
        self.pause.request();
        let _ = self.wake.write(1);
        self.pause.wait_parked(timeout)
    }

    /// Let a parked worker carry on.
    pub fn unpark(&self) {
        self.pause.release();
    }
}

/// A device's worker threads: the running one and one that may still be
/// stopping.
#[derive(Default)]
pub struct DeviceThreads {
    running: Option<DeviceThread>,
    stopping: Option<DeviceThread>,
}

impl DeviceThreads {
    /// The running worker, if the device is activated.
    pub fn running(&self) -> Option<&DeviceThread> {
        self.running.as_ref()
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Make `thread` the running worker. Any earlier worker is stopped and
    /// waited for first (activation after reset), so two never share the
    /// rings.
    pub fn start(&mut self, thread: DeviceThread) {
        self.stop();
        self.join_stopping();
        self.running = Some(thread);
    }

    /// Wait for earlier workers to be gone, before building a new one.
    pub fn join_all(&mut self) {
        self.stop();
        self.join_stopping();
    }

    /// Tell the running worker to stop; does not wait (see `done`).
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.signal_stop();
            // At most one worker stops at a time.
            self.join_stopping();
            self.stopping = Some(running);
        }
    }

    /// Whether no stopped worker is still running (joining it if it ended).
    pub fn done(&mut self) -> bool {
        match &self.stopping {
            Some(t) if !t.thread.is_finished() => false,
            _ => {
                self.join_stopping();
                true
            }
        }
    }

    /// Pause: park the running worker; false if it did not park within
    /// `timeout` (the pause goes on without it).
    pub fn pause(&self, timeout: Duration) -> bool {
        self.running.as_ref().is_none_or(|t| t.park(timeout))
    }

    /// `pause` for a device's `VirtioDevice::pause`: a worker that does not
    /// park in `timeout` is reported (as `device`), and the pause goes on.
    pub fn pause_logged(&self, device: &str, timeout: Duration) {
        if !self.pause(timeout) {
            eprintln!("vireo: {device}: the device thread did not pause in {timeout:?}");
        }
    }

    pub fn resume(&self) {
        if let Some(t) = &self.running {
            t.unpark();
        }
    }

    fn join_stopping(&mut self) {
        if let Some(t) = self.stopping.take() {
            let _ = t.thread.join();
        }
    }
}

impl Drop for DeviceThreads {
    /// A device going away takes its worker with it.
    fn drop(&mut self) {
        self.stop();
        self.join_stopping();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    /// A worker that waits on its wake eventfd and parks or stops.
    fn worker(c: WorkerControl) {
        loop {
            let mut fd = libc::pollfd {
                fd: c.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut fd, 1, -1) };
            let _ = c.wake.read();
            if c.stop.is_set() {
                return;
            }
            if c.pause.requested() {
                c.pause.park();
            }
        }
    }

    #[test]
    fn a_worker_parks_resumes_and_stops_without_blocking_the_device() {
        let mut threads = DeviceThreads::default();
        assert!(threads.done() && !threads.is_running());
        let t = DeviceThread::spawn("vireo-test-dev", StopFlag::new(), worker).unwrap();
        threads.start(t);
        assert!(threads.is_running());
        assert!(threads.pause(Duration::from_secs(5)));
        threads.resume();
        threads.stop();
        assert!(!threads.is_running());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !threads.done() {
            assert!(std::time::Instant::now() < deadline, "worker never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_paused_worker_still_sees_a_stop() {
        let mut threads = DeviceThreads::default();
        let stop = StopFlag::new();
        threads.start(DeviceThread::spawn("vireo-test-dev", stop.clone(), worker).unwrap());
        assert!(threads.pause(Duration::from_secs(5)));
        threads.join_all();
        assert!(stop.is_set());
        assert!(threads.done());
    }
}
