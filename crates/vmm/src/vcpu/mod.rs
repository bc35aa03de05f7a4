//! A vCPU thread's one job: run its vCPU, hand port and MMIO exits to the
//! buses, and report anything that ends the VM to the `ExitNotifier`.
//!
//! A string port instruction (`rep insb`, `rep outsw`, ...) exits once with
//! many accesses; each goes to the bus on its own, in order, as on hardware,
//! so a device sees `count` one-byte writes rather than one wide one.

use std::sync::Arc;
use std::thread::JoinHandle;

use devices::thread::ThreadPanicSink;
use devices::Bus;
use hypervisor::{Vcpu, VcpuExit};

use crate::exit::{ExitNotifier, ExitReason};

pub mod control;

pub use control::VcpuControl;

/// KVM_SYSTEM_EVENT_* types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// The buses a vCPU routes accesses to.
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// Start vCPU `id` on its own thread named `vcpu<id>`, paused and stopped
/// through `control`. A panic on it (a device's bus handler, say) ends the
/// VM with `ExitReason::ThreadPanicked`.
pub fn spawn(
    id: u8,
    mut vcpu: Vcpu,
    buses: Arc<Buses>,
    exit: Arc<ExitNotifier>,
    control: Arc<VcpuControl>,
) -> std::io::Result<JoinHandle<()>> {
    spawn_loop(id, exit, control, move || run_once(id, &mut vcpu, &buses))
}

/// Tells the control a vCPU thread has left its loop, also when it
/// unwinds from a panic.
struct Finished(Arc<VcpuControl>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// The vCPU thread: `step` until the VM has an exit reason or `control`
/// stops it, under the panic guard that reports to `exit`.
fn spawn_loop<F>(
    id: u8,
    exit: Arc<ExitNotifier>,
    control: Arc<VcpuControl>,
    mut step: F,
) -> std::io::Result<JoinHandle<()>>
where
    F: FnMut() -> Option<ExitReason> + Send + 'static,
{
    let sink: Arc<dyn ThreadPanicSink> = exit.clone();
    devices::thread::spawn_with_sink(format!("vcpu{id}"), sink, move || {
        let _finished = Finished(control.clone());
        while exit.reason().is_none() && control.checkpoint() {
            if let Some(reason) = step() {
                exit.exit(reason);
            }
        }
    })
}

/// Run until one exit is handled; Some(reason) if the VM must stop.
fn run_once(id: u8, vcpu: &mut Vcpu, buses: &Buses) -> Option<ExitReason> {
    handle_exit(id, vcpu.run(), buses)
}

/// Port reads: `data` is `data.len() / size` reads of `size` bytes.
fn pio_in(bus: &Bus, port: u16, size: usize, data: &mut [u8]) {
    for access in data.chunks_mut(size.max(1)) {
        bus.read(u64::from(port), access);
    }
}

/// Port writes: `data` is `data.len() / size` writes of `size` bytes.
fn pio_out(bus: &Bus, port: u16, size: usize, data: &[u8]) {
    for access in data.chunks(size.max(1)) {
        bus.write(u64::from(port), access);
    }
}

/// Act on one exit; Some(reason) if the VM must stop.
fn handle_exit(
    id: u8,
    exit: hypervisor::Result<VcpuExit<'_>>,
    buses: &Buses,
) -> Option<ExitReason> {
    let failed = |detail: String| Some(ExitReason::VcpuFailed { vcpu: id, detail });
    match exit {
        Ok(VcpuExit::IoIn { port, size, data }) => {
            pio_in(&buses.pio, port, size, data);
            None
        }
        Ok(VcpuExit::IoOut { port, size, data }) => {
            pio_out(&buses.pio, port, size, data);
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

#[cfg(test)]
mod tests {
    use super::*;
    use devices::BusDevice;
    use std::sync::Mutex;

    /// Records every access; reads return 0x10, 0x11, ... in turn.
    #[derive(Default)]
    struct Recorder {
        accesses: Vec<(char, u64, Vec<u8>)>,
        next: u8,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for b in data.iter_mut() {
                *b = 0x10 + self.next;
                self.next += 1;
            }
            self.accesses.push(('r', offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.accesses.push(('w', offset, data.to_vec()));
        }
    }

    fn buses_with(port: u64, dev: Arc<Mutex<Recorder>>) -> Buses {
        let mut pio = Bus::new();
        pio.insert(port, 8, dev).unwrap();
        Buses {
            pio,
            mmio: Bus::new(),
        }
    }

    #[test]
    fn string_port_io_is_split_into_single_accesses() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let buses = buses_with(0x3f8, dev.clone());
        // `rep outsb` of "hi!" to the data port: three 1-byte writes.
        let exit = Ok(VcpuExit::IoOut {
            port: 0x3f8,
            size: 1,
            data: b"hi!",
        });
        assert_eq!(handle_exit(0, exit, &buses), None);
        // `rep insw` with count 2 from port 0x3fa: two 2-byte reads whose
        // results land in order.
        let mut data = [0u8; 4];
        let exit = Ok(VcpuExit::IoIn {
            port: 0x3fa,
            size: 2,
            data: &mut data,
        });
        assert_eq!(handle_exit(0, exit, &buses), None);
        assert_eq!(data, [0x10, 0x11, 0x12, 0x13]);
        let d = dev.lock().unwrap();
        assert_eq!(
            d.accesses,
            vec![
                ('w', 0, b"h".to_vec()),
                ('w', 0, b"i".to_vec()),
                ('w', 0, b"!".to_vec()),
                ('r', 2, vec![0x10, 0x11]),
                ('r', 2, vec![0x12, 0x13]),
            ]
        );
    }

    /// A device model with a bug: any access panics.
    struct Broken;
    impl BusDevice for Broken {
        fn read(&mut self, _offset: u64, _data: &mut [u8]) {
            panic!("broken device read");
        }
        fn write(&mut self, offset: u64, _data: &[u8]) {
            panic!("broken device write at {offset}");
        }
    }

    #[test]
    fn a_panic_while_handling_an_exit_ends_the_vm() {
        let mut pio = Bus::new();
        pio.insert(0x500, 4, Arc::new(Mutex::new(Broken))).unwrap();
        let buses = Arc::new(Buses {
            pio,
            mmio: Bus::new(),
        });
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let control = Arc::new(VcpuControl::default());
        // The vCPU loop as `spawn` runs it, with a guest that writes to the
        // broken device's port on its first exit.
        let t = spawn_loop(3, exit.clone(), control.clone(), move || {
            let exit = Ok(VcpuExit::IoOut {
                port: 0x502,
                size: 1,
                data: &[1],
            });
            handle_exit(3, exit, &buses)
        })
        .unwrap();
        while !t.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The thread counts as finished although it unwound.
        assert!(control.stop(std::slice::from_ref(&t), std::time::Duration::ZERO));
        t.join().unwrap();
        assert_eq!(
            exit.reason(),
            Some(ExitReason::ThreadPanicked {
                thread: "vcpu3".into(),
                message: "broken device write at 2".into()
            })
        );
        assert_eq!(exit.reason().unwrap().exit_code(), 1);
    }

    #[test]
    fn a_plain_port_access_is_one_bus_access() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let buses = buses_with(0x600, dev.clone());
        let exit = Ok(VcpuExit::IoOut {
            port: 0x604,
            size: 4,
            data: &[1, 2, 3, 4],
        });
        assert_eq!(handle_exit(0, exit, &buses), None);
        assert_eq!(
            dev.lock().unwrap().accesses,
            vec![('w', 4, vec![1, 2, 3, 4])]
        );
    }
}
