//! Holding a device worker still while the VM is paused.
//!
//! The VMM asks (`request`), wakes the worker its own way, and waits
//! (`wait_parked`). The worker notices `requested` between steps, finishes
//! the I/O it has in flight (completing it on the used rings, so the state a
//! snapshot sees is consistent), then calls `park`, which blocks until
//! `release`. While parked the worker touches neither guest memory nor the
//! rings. Shared by every device that runs its own worker thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct PauseGate {
    /// Fast path for the worker's checks.
    requested: AtomicBool,
    /// Whether the worker is parked.
    parked: Mutex<bool>,
    changed: Condvar,
}

impl PauseGate {
    /// Ask the worker to park (the caller then wakes it).
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Whether a pause is asked for: the worker stops taking new work.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Wait until the worker has parked; false if `timeout` passed first.
    pub fn wait_parked(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut parked = crate::bus::lock(&self.parked);
        while !*parked {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            parked = self
                .changed
                .wait_timeout(parked, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Worker side: block while a pause is asked for.
    pub fn park(&self) {
        let mut parked = crate::bus::lock(&self.parked);
        *parked = true;
        self.changed.notify_all();
        while self.requested() {
            parked = self
                .changed
                .wait(parked)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *parked = false;
        self.changed.notify_all();
    }

    /// End the pause: a parked worker carries on.
    pub fn release(&self) {
        let _parked = crate::bus::lock(&self.parked);
        self.requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_worker_parks_until_released() {
        let gate = Arc::new(PauseGate::default());
        assert!(!gate.wait_parked(Duration::from_millis(10)));
        gate.request();
        let g = gate.clone();
        let worker = std::thread::spawn(move || {
            assert!(g.requested());
            g.park();
        });
        assert!(gate.wait_parked(Duration::from_secs(5)));
        assert!(!worker.is_finished());
        gate.release();
        worker.join().unwrap();
        assert!(!gate.requested());
    }
}
