//! Pausing, resuming and stopping the vCPU threads of a VM.
//!
//! Every vCPU thread passes `checkpoint` before each entry into the guest.
//! While the VM runs that is one uncontended lock. To pause, the VMM thread
//! sets the wanted state and kicks each vCPU thread out of KVM_RUN
//! (`hypervisor::kick`); each thread then parks in `checkpoint` and counts
//! itself parked. `pause` returns once every live thread is parked, kicking
//! again every few milliseconds in case a kick landed before a thread's
//! first KVM_RUN (where it is lost). `resume` releases them. `stop` makes
//! `checkpoint` return false, so the threads leave their loops and can be
//! joined.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often `pause` and `stop` kick threads that have not reacted yet.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    Run,
    Pause,
    Stop,
}

struct State {
    wanted: Wanted,
    /// vCPU threads parked in `checkpoint`.
    parked: usize,
    /// vCPU threads that have left their loop.
    finished: usize,
}

/// Shared by the VMM thread and the vCPU threads of one VM.
pub struct VcpuControl {
    state: Mutex<State>,
    changed: Condvar,
    /// `wanted == Run`, readable without the lock: the check before every
    /// guest entry (a vCPU exit's hot path) is one atomic load. A thread
    /// that read it just before a pause is caught by the pause's kicks.
    running: AtomicBool,
}

impl Default for VcpuControl {
    fn default() -> Self {
        VcpuControl {
            state: Mutex::new(State {
                wanted: Wanted::Run,
                parked: 0,
                finished: 0,
            }),
            changed: Condvar::new(),
            running: AtomicBool::new(true),
        }
    }
}

impl VcpuControl {
    fn lock(&self) -> MutexGuard<'_, State> {
        devices::bus::lock(&self.state)
    }

    /// vCPU side, before each guest entry: parks while paused; false when
    /// the thread must leave its loop.
    pub fn checkpoint(&self) -> bool {
        if self.running.load(Ordering::Acquire) {
            return true;
        }
        let mut s = self.lock();
        if s.wanted == Wanted::Run {
            return true;
        }
        if s.wanted == Wanted::Pause {
            s.parked += 1;
            self.changed.notify_all();
            while s.wanted == Wanted::Pause {
                s = self
                    .changed
                    .wait(s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            s.parked -= 1;
            self.changed.notify_all();
        }
        s.wanted != Wanted::Stop
    }

    /// vCPU side: the thread has left its loop (for any reason).
    pub fn finished(&self) {
        self.lock().finished += 1;
        self.changed.notify_all();
    }

    /// Park every vCPU thread in `threads`; true once all are parked or
    /// have finished, false if `timeout` passed first.
    pub fn pause<T>(&self, threads: &[JoinHandle<T>], timeout: Duration) -> bool {
        let mut s = self.lock();
        if s.wanted == Wanted::Run {
            s.wanted = Wanted::Pause;
            self.running.store(false, Ordering::Release);
        }
        self.wait_for(s, threads, timeout, |s| {
            s.parked + s.finished >= threads.len()
        })
    }

    /// Let parked vCPU threads run again.
    pub fn resume(&self) {
        let mut s = self.lock();
        if s.wanted == Wanted::Pause {
            s.wanted = Wanted::Run;
            self.running.store(true, Ordering::Release);
            self.changed.notify_all();
        }
    }

    /// Whether the vCPUs are (being) held parked.
    pub fn is_paused(&self) -> bool {
        self.lock().wanted == Wanted::Pause
    }

    /// Make every vCPU thread leave its loop (parked ones too); true once
    /// all have, false if `timeout` passed first.
    pub fn stop<T>(&self, threads: &[JoinHandle<T>], timeout: Duration) -> bool {
        let mut s = self.lock();
        s.wanted = Wanted::Stop;
        self.running.store(false, Ordering::Release);
        self.changed.notify_all();
        self.wait_for(s, threads, timeout, |s| s.finished >= threads.len())
    }

    fn wait_for<T>(
        &self,
        mut s: MutexGuard<'_, State>,
        threads: &[JoinHandle<T>],
        timeout: Duration,
        done: impl Fn(&State) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&s) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            for t in threads {
                hypervisor::kick::kick_thread(t);
            }
            let wait = KICK_INTERVAL.min(deadline - now);
            s = self
                .changed
                .wait_timeout(s, wait)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Threads that loop like vCPU threads (without KVM) pause, stay
    /// still while paused, resume and stop.
    #[test]
    fn pause_parks_every_thread_and_resume_releases_them() {
        hypervisor::kick::install_kick_handler().unwrap();
        let control = Arc::new(VcpuControl::default());
        let steps = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (c, n) = (control.clone(), steps.clone());
                std::thread::spawn(move || {
                    while c.checkpoint() {
                        n.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    c.finished();
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        assert!(control.pause(&threads, Duration::from_secs(5)));
        assert!(control.is_paused());
        let at_pause = steps.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            steps.load(Ordering::Relaxed),
            at_pause,
            "a paused thread ran"
        );
        control.resume();
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            steps.load(Ordering::Relaxed) > at_pause,
            "resume released nobody"
        );
        // Stop from a paused state too.
        assert!(control.pause(&threads, Duration::from_secs(5)));
        assert!(control.stop(&threads, Duration::from_secs(5)));
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn pause_times_out_on_a_thread_that_never_checks_in() {
        let control = VcpuControl::default();
        let stuck = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(300)));
        hypervisor::kick::install_kick_handler().unwrap();
        let t0 = Instant::now();
        assert!(!control.pause(std::slice::from_ref(&stuck), Duration::from_millis(50)));
        assert!(t0.elapsed() < Duration::from_millis(250));
        stuck.join().unwrap();
    }
}
