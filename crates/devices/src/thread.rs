//! Threads that cannot die silently. `spawn` and `spawn_with_sink` start a
//! named thread that runs its closure under `catch_unwind`; if it panics, the
//! thread's name and the panic message go to a `ThreadPanicSink` (the VMM,
//! which ends the VM with that reason) instead of the thread vanishing and
//! leaving the VM hung.
//!
//! Devices start their threads deep inside `activate`, far from the VMM, so
//! `spawn` uses a process-wide sink: the VMM registers it once when it
//! builds the VM (`set_panic_sink`; one VM per process). A thread takes the
//! sink registered when it starts; with none registered, a panic is only
//! printed. Callers that hold a sink (vCPU threads) pass it explicitly;
//! `guard` wraps a body for callers that build their own thread.

use std::any::Any;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Where panics of guarded threads are reported; implemented by the VMM.
pub trait ThreadPanicSink: Send + Sync {
    fn thread_panicked(&self, thread: &str, message: &str);
}

/// Linux keeps at most 15 bytes of a thread's name.
const OS_NAME_MAX: usize = 15;

static PANIC_SINK: Mutex<Option<Arc<dyn ThreadPanicSink>>> = Mutex::new(None);

/// Make `sink` the receiver of panics in threads started by `spawn` from
/// now on (replacing any earlier one).
pub fn set_panic_sink(sink: Arc<dyn ThreadPanicSink>) {
    *crate::bus::lock(&PANIC_SINK) = Some(sink);
}

fn current_sink() -> Option<Arc<dyn ThreadPanicSink>> {
    crate::bus::lock(&PANIC_SINK).clone()
}

/// Start thread `name` running `f`; a panic in it is reported to the
/// process-wide sink (see the module comment).
pub fn spawn<F>(name: impl Into<String>, f: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    start(name.into(), current_sink(), f)
}

/// Start thread `name` running `f`; a panic in it is reported to `sink`.
pub fn spawn_with_sink<F>(
    name: impl Into<String>,
    sink: Arc<dyn ThreadPanicSink>,
    f: F,
) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    start(name.into(), Some(sink), f)
}

/// `f` as a thread body for `std::thread::Builder::spawn` that reports a
/// panic as thread `name` to the process-wide sink (taken now, when the
/// thread is being started). For callers that build their own thread.
pub fn guard<F>(name: String, f: F) -> impl FnOnce() + Send + 'static
where
    F: FnOnce() + Send + 'static,
{
    guarded(name, current_sink(), f)
}

fn guarded<F>(
    name: String,
    sink: Option<Arc<dyn ThreadPanicSink>>,
    f: F,
) -> impl FnOnce() + Send + 'static
where
    F: FnOnce() + Send + 'static,
{
    move || {
        // The closure's state is dropped in the unwind; nothing outlives it
        // in a broken state but the report.
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
            let message = panic_message(payload.as_ref());
            match sink {
                Some(sink) => sink.thread_panicked(&name, &message),
                None => eprintln!("vireo: thread {name} panicked: {message}"),
            }
        }
    }
}

fn start<F>(
    name: String,
    sink: Option<Arc<dyn ThreadPanicSink>>,
    f: F,
) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(os_name(&name).to_string())
        .spawn(guarded(name, sink, f))
}

/// The longest prefix of `name` that fits the OS limit, on a char boundary.
fn os_name(name: &str) -> &str {
    let mut end = name.len().min(OS_NAME_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// A panic payload as one line of text.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(no message)"
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String)>>);

    impl ThreadPanicSink for Recorder {
        fn thread_panicked(&self, thread: &str, message: &str) {
            self.0
                .lock()
                .unwrap()
                .push((thread.to_string(), message.to_string()));
        }
    }

    #[test]
    fn a_panicking_thread_reports_its_name_and_message() {
        let sink = Arc::new(Recorder::default());
        let t = spawn_with_sink("vireo-blk-rootdisk", sink.clone(), || {
            let queue = 3;
            panic!("descriptor chain\nloops on queue {queue}");
        })
        .unwrap();
        // The panic was caught at the thread boundary: the join succeeds.
        t.join().unwrap();
        assert_eq!(
            sink.0.lock().unwrap().as_slice(),
            &[(
                "vireo-blk-rootdisk".to_string(),
                "descriptor chain loops on queue 3".to_string()
            )]
        );
    }

    #[test]
    fn a_thread_that_returns_reports_nothing_and_gets_an_os_name() {
        let sink = Arc::new(Recorder::default());
        let t = spawn_with_sink("vireo-blk-a-very-long-id", sink.clone(), || {
            assert_eq!(std::thread::current().name(), Some("vireo-blk-a-ver"));
        })
        .unwrap();
        t.join().unwrap();
        assert!(sink.0.lock().unwrap().is_empty());
        assert_eq!(os_name("vcpu0"), "vcpu0");
        assert_eq!(os_name("ééééééééé"), "ééééééé");
    }

    #[test]
    fn spawn_reports_to_the_registered_sink() {
        let sink = Arc::new(Recorder::default());
        set_panic_sink(sink.clone());
        spawn("vireo-test-io", || panic!("boom"))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            sink.0.lock().unwrap().as_slice(),
            &[("vireo-test-io".to_string(), "boom".to_string())]
        );
    }

    #[test]
    fn guard_wraps_a_body_for_a_thread_built_elsewhere() {
        let sink = Arc::new(Recorder::default());
        let body = guarded("vireo-blk-x".into(), Some(sink.clone()), || panic!("ring"));
        std::thread::spawn(body).join().unwrap();
        assert_eq!(sink.0.lock().unwrap()[0].1, "ring");
    }

    #[test]
    fn payloads_without_text_still_give_a_line() {
        assert_eq!(panic_message(&42u32), "(no message)");
        assert_eq!(panic_message(&String::from("a  b")), "a b");
    }
}
