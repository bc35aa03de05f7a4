//! Test helpers every virtio device's tests share: guest memory, a mock
//! driver that builds descriptor chains in guest memory (on virtio-queue's
//! `MockSplitQueue`) and reads the used ring back, and an `Interrupt` that
//! counts signals. Device-specific request builders live beside each
//! device (`impl Driver` blocks in its own `test_utils.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::{GuestMemory, Interrupt};

/// Where test data buffers start (the queue's rings live below).
pub const DATA_START: u64 = 0x10_0000;
/// Guest memory: two adjacent 2 MiB regions (a buffer may straddle them).
pub const REGION: u64 = 0x20_0000;

pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

/// Counts signals per queue; `wait` blocks until a count is reached.
#[derive(Default)]
pub struct TestInterrupt {
    pub count: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

impl TestInterrupt {
    pub fn signals(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn wait_for(&self, n: usize) -> bool {
        let mut guard = self.lock.lock().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.signals() < n {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self.cond.wait_timeout(guard, deadline - now).unwrap().0;
        }
        true
    }
}

impl Interrupt for TestInterrupt {
    fn signal_queue(&self, _queue_index: u16) -> std::io::Result<()> {
        let _g = self.lock.lock().unwrap();
        self.count.fetch_add(1, Ordering::SeqCst);
        self.cond.notify_all();
        Ok(())
    }
    fn signal_config(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The driver side of one queue.
pub struct Driver<'a> {
    pub mem: &'a GuestMemory,
    pub mock: MockSplitQueue<'a, GuestMemory>,
    size: u16,
    next_desc: u16,
    next_data: u64,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestMemory, size: u16) -> Self {
        Self::at(mem, 0, size, DATA_START)
    }

    /// A queue whose rings start at `base`, with data buffers from
    /// `data_start` on.
    pub fn at(mem: &'a GuestMemory, base: u64, size: u16, data_start: u64) -> Self {
        Driver {
            mem,
            mock: MockSplitQueue::create(mem, GuestAddress(base), size),
            size,
            next_desc: 0,
            next_data: data_start,
        }
    }

    pub fn queue(&self) -> Queue {
        self.mock.create_queue::<Queue>().unwrap()
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Reserve `len` bytes of guest memory for buffers.
    pub fn alloc(&mut self, len: u64) -> GuestAddress {
        let a = GuestAddress(self.next_data);
        self.next_data = (self.next_data + len + 15) & !15;
        a
    }

    /// Put the next buffers at `addr` (e.g. to straddle a region boundary).
    pub fn set_alloc(&mut self, addr: u64) {
        self.next_data = addr;
    }

    /// The table index the next `put_raw` descriptor gets.
    pub fn next_index(&self) -> u16 {
        self.next_desc
    }

    /// Write descriptors as given (flags and next untouched) at the next
    /// free table slots; returns their indexes.
    pub fn put_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> Vec<u16> {
        let mut idx = Vec::new();
        for &(addr, len, flags, next) in descs {
            let i = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let d = SplitDescriptor::new(addr, len, flags, next);
            self.mock
                .desc_table()
                .store(i, RawDescriptor::from(d))
                .unwrap();
            idx.push(i);
        }
        idx
    }

    /// Chain `(addr, len, device_writable)` descriptors in order and make
    /// the chain available; returns the head index.
    pub fn add_chain(&mut self, descs: &[(GuestAddress, u32, bool)]) -> u16 {
        let first = self.next_desc;
        let n = descs.len() as u16;
        let raw: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(k, &(a, len, w))| {
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                let next = (first + k as u16 + 1) % self.size;
                if (k as u16) + 1 < n {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                (a.0, len, flags, next)
            })
            .collect();
        let idx = self.put_raw(&raw);
        self.make_available(idx[0]);
        idx[0]
    }

    pub fn make_available(&mut self, head: u16) {
        let avail = self.mock.avail();
        let i = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(i % self.size))
            .unwrap()
            .store(head);
        avail.idx().store(i.wrapping_add(1));
    }

    pub fn bytes(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, addr).unwrap();
        v
    }

    pub fn used_idx(&self) -> u16 {
        self.mock.used().idx().load()
    }

    /// (head, len) of used entry `i`.
    pub fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(i % self.size))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    /// The used entry for `head` (panics if absent).
    pub fn used_len(&self, head: u16) -> u32 {
        (0..self.used_idx())
            .map(|i| self.used(i))
            .find(|(id, _)| *id == u32::from(head))
            .unwrap_or_else(|| panic!("head {head} not used"))
            .1
    }
}

/// Wait (up to 10 s) until `d`'s used ring has `n` entries.
pub fn wait_used(d: &Driver, n: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.used_idx() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {n} used"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
