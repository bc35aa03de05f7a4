//! A fake `VirtioDevice` for the transport tests (PCI and MMIO): two queues
//! of 16, one feature besides VERSION_1, a config space whose bytes are
//! their offsets, and a record of what the transport did to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::virtio::{
    device_type, ActivateError, ActiveQueue, GuestMemory, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

pub const FEATURE_A: u64 = 1 << 5;

#[derive(Default)]
pub struct Seen {
    pub acked: Option<u64>,
    pub activations: usize,
    pub resets: usize,
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Option<Arc<dyn Interrupt>>,
    pub fail_activate: bool,
    pub config_writes: usize,
}

pub struct FakeDevice {
    pub seen: Arc<Mutex<Seen>>,
    /// While false, a reset stays pending.
    pub reset_done: Arc<AtomicBool>,
}

impl FakeDevice {
    pub fn new(seen: Arc<Mutex<Seen>>) -> Self {
        FakeDevice {
            seen,
            reset_done: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![16, 16]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | FEATURE_A
    }
    fn ack_features(&mut self, features: u64) {
        self.seen.lock().unwrap().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset.saturating_add(i as u64).try_into().unwrap_or(0);
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        self.seen.lock().unwrap().config_writes += 1;
    }
    fn activate(
        &mut self,
        _mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), ActivateError> {
        let mut s = self.seen.lock().unwrap();
        if s.fail_activate {
            return Err(ActivateError::Other("told to fail".into()));
        }
        s.activations += 1;
        s.queues = queues;
        s.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        let mut s = self.seen.lock().unwrap();
        s.resets += 1;
        s.queues.clear();
        s.interrupt = None;
    }
    fn reset_done(&mut self) -> bool {
        self.reset_done.load(Ordering::Acquire)
    }
}
