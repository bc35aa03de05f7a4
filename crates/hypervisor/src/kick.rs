//! Kicking a vCPU thread out of KVM_RUN: a real-time signal whose handler
//! sets `immediate_exit` in the kvm_run of the vCPU that thread runs.
//!
//! `Vcpu::run` marks its kvm_run as the thread's for the length of the
//! call. A signal that arrives while the thread is in the guest ends
//! KVM_RUN with EINTR; one that arrives just before the ioctl enters the
//! guest sets `immediate_exit`, so KVM_RUN returns at once: either way the
//! thread gets back to its loop and sees why it was kicked. `Vcpu::run`
//! clears the flag after such a return. A kick that lands while the thread
//! is outside `run` marks nothing; the caller's loop checks its state
//! before every entry, and callers that wait for a kicked thread kick again
//! on a short timeout (see the VMM's vCPU control).

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// The kvm_run of the vCPU this thread runs (null when none).
    static CURRENT: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal: SIGRTMIN, as other rust-vmm VMMs use.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_signum: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let run = CURRENT.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is this thread's vCPU's kvm_run mapping, registered
        // by `set_current` and cleared before that mapping goes away; a
        // single volatile byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 1) };
    }
}

/// The outcome of installing the handler: Err(errno) if it failed.
static INSTALL: OnceLock<Result<(), i32>> = OnceLock::new();

/// Install the kick signal's handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    let done = INSTALL
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()));
    done.map_err(std::io::Error::from_raw_os_error)
}

/// Mark `run` as the kvm_run of this thread's vCPU (null: none).
pub(crate) fn set_current(run: *mut kvm_run) {
    CURRENT.with(|c| c.set(run));
}

/// Send the kick signal to a vCPU thread that has not been joined yet
/// (after making sure the handler is installed: the signal's default
/// action would end the process).
pub fn kick_thread<T>(thread: &JoinHandle<T>) {
    if install_kick_handler().is_err() {
        return;
    }
    // SAFETY: the pthread_t comes from a JoinHandle that is still held, so
    // the thread has not been joined and its id is not reused; a thread
    // that already returned makes pthread_kill fail harmlessly.
    unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
}
