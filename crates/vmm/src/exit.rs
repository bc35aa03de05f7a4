//! Why a VM stopped. The first reason reported wins; reporting it also wakes
//! the event loop through an eventfd.

use std::sync::Mutex;

use devices::thread::ThreadPanicSink;
use devices::{VmEvent, VmEventSink};
use vmm_sys_util::eventfd::EventFd;

/// The end of a VM's life, as the CLI reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI power off.
    PowerOff,
    /// The guest reset the machine (i8042 or ACPI reset register).
    Reset,
    /// The guest wrote this status to Vireo's exit port.
    GuestExit(u8),
    /// The guest kernel reported a panic through pvpanic.
    GuestPanic,
    /// A vCPU shut down (triple fault).
    TripleFault { vcpu: u8 },
    /// KVM could not run a vCPU any further.
    VcpuFailed { vcpu: u8, detail: String },
    /// A VMM thread (vCPU, device worker) panicked; the VM cannot go on.
    ThreadPanicked { thread: String, message: String },
    /// SIGINT or SIGTERM reached the VMM.
    Signal(i32),
    /// The user quit from the console (Ctrl-A x).
    ConsoleQuit,
}

impl ExitReason {
    /// The process exit status `vireo run` uses for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Reset | ExitReason::ConsoleQuit => 0,
            ExitReason::GuestExit(status) => i32::from(*status),
            ExitReason::GuestPanic
            | ExitReason::TripleFault { .. }
            | ExitReason::VcpuFailed { .. }
            | ExitReason::ThreadPanicked { .. } => 1,
            ExitReason::Signal(sig) => 128 + sig,
        }
    }

    /// One line for the user when the reason is not a normal end; None when
    /// the guest simply powered off, reset or exited.
    pub fn message(&self) -> Option<String> {
        match self {
            ExitReason::PowerOff | ExitReason::Reset | ExitReason::GuestExit(_) => None,
            ExitReason::GuestPanic => Some("the guest kernel panicked".into()),
            ExitReason::TripleFault { vcpu } => Some(format!(
                "the guest crashed: vCPU {vcpu} shut down (triple fault)"
            )),
            ExitReason::VcpuFailed { vcpu, detail } => {
                Some(format!("vCPU {vcpu} stopped: {detail}"))
            }
            ExitReason::ThreadPanicked { thread, message } => {
                Some(format!("thread {thread} panicked: {message}"))
            }
            ExitReason::Signal(sig) => Some(format!(
                "received {}, VM stopped",
                if *sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                }
            )),
            ExitReason::ConsoleQuit => Some("console quit (Ctrl-A x), VM stopped".into()),
        }
    }
}

pub struct ExitNotifier {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitNotifier {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitNotifier {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Record `reason` unless one was already recorded, and wake the loop.
    pub fn exit(&self, reason: ExitReason) {
        let mut r = devices::bus::lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
            let _ = self.evt.write(1);
        }
    }

    pub fn reason(&self) -> Option<ExitReason> {
        devices::bus::lock(&self.reason).clone()
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl VmEventSink for ExitNotifier {
    fn raise(&self, event: VmEvent) {
        self.exit(match event {
            VmEvent::PowerOff => ExitReason::PowerOff,
            VmEvent::Reset => ExitReason::Reset,
            VmEvent::Panic => ExitReason::GuestPanic,
            VmEvent::Exit(status) => ExitReason::GuestExit(status),
        });
    }
}

/// A panicked thread ends the VM: its vCPUs cannot be trusted to make
/// progress (a device worker that died leaves its queues unserved).
impl ThreadPanicSink for ExitNotifier {
    fn thread_panicked(&self, thread: &str, message: &str) {
        self.exit(ExitReason::ThreadPanicked {
            thread: thread.to_string(),
            message: message.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins() {
        let n = ExitNotifier::new().unwrap();
        n.raise(VmEvent::Exit(3));
        n.raise(VmEvent::PowerOff);
        assert_eq!(n.reason(), Some(ExitReason::GuestExit(3)));
        assert_eq!(n.reason().unwrap().exit_code(), 3);
        assert_eq!(n.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn crashes_are_nonzero_with_a_message() {
        for r in [ExitReason::GuestPanic, ExitReason::TripleFault { vcpu: 0 }] {
            assert_ne!(r.exit_code(), 0);
            assert!(r.message().is_some());
        }
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::Reset.exit_code(), 0);
    }

    #[test]
    fn a_panicked_device_thread_ends_the_vm_with_its_name() {
        let n = Arc::new(ExitNotifier::new().unwrap());
        let sink: Arc<dyn ThreadPanicSink> = n.clone();
        devices::thread::spawn_with_sink("vireo-blk-x", sink, || panic!("worker bug"))
            .unwrap()
            .join()
            .unwrap();
        let reason = n.reason().expect("the VM was told to stop");
        assert_eq!(
            reason,
            ExitReason::ThreadPanicked {
                thread: "vireo-blk-x".into(),
                message: "worker bug".into()
            }
        );
        assert_eq!(reason.exit_code(), 1);
        assert_eq!(
            reason.message().unwrap(),
            "thread vireo-blk-x panicked: worker bug"
        );
        // The event loop was woken.
        assert_eq!(n.eventfd().read().unwrap(), 1);
    }
}
