//! A vCPU thread's one job: run its vCPU, hand port and MMIO exits to the
//! buses, and report anything that ends the VM to the `ExitNotifier`.

use std::sync::Arc;
use std::thread::JoinHandle;

use devices::Bus;
use hypervisor::{Vcpu, VcpuExit};

use crate::exit::{ExitNotifier, ExitReason};

/// KVM_SYSTEM_EVENT_* types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// The buses a vCPU routes accesses to.
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// Start vCPU `id` on its own thread named `vcpu<id>`.
pub fn spawn(
    id: u8,
    mut vcpu: Vcpu,
    buses: Arc<Buses>,
    exit: Arc<ExitNotifier>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            while exit.reason().is_none() {
                if let Some(reason) = run_once(id, &mut vcpu, &buses) {
                    exit.exit(reason);
                }
            }
        })
}

/// Run until one exit is handled; Some(reason) if the VM must stop.
fn run_once(id: u8, vcpu: &mut Vcpu, buses: &Buses) -> Option<ExitReason> {
    let failed = |detail: String| Some(ExitReason::VcpuFailed { vcpu: id, detail });
    match vcpu.run() {
        Ok(VcpuExit::IoIn(port, data)) => {
            buses.pio.read(u64::from(port), data);
            None
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            buses.pio.write(u64::from(port), data);
            None
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            buses.mmio.read(addr, data);
            None
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            buses.mmio.write(addr, data);
            None
        }
        Ok(VcpuExit::Interrupted) | Ok(VcpuExit::Hlt) => None,
        Ok(VcpuExit::Shutdown) => Some(ExitReason::TripleFault { vcpu: id }),
        Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN)) => Some(ExitReason::PowerOff),
        Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_RESET)) => Some(ExitReason::Reset),
        Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_CRASH)) => Some(ExitReason::GuestPanic),
        Ok(VcpuExit::SystemEvent(kind)) => failed(format!("unknown KVM system event {kind}")),
        Ok(VcpuExit::InternalError) => failed("KVM internal error (emulation failed)".into()),
        Ok(VcpuExit::FailEntry(reason)) => {
            failed(format!("VM entry failed (hardware reason {reason:#x})"))
        }
        Ok(VcpuExit::Other(what)) => failed(format!("unexpected exit {what}")),
        Err(e) => failed(e.to_string()),
    }
}
