//! A queue as a device thread serves it: popping chains with notification
//! suppression, adding used entries and signalling the driver once per
//! batch (or not at all when EVENT_IDX says it does not want it yet).
//! Shared by the device workers that serve plain queues (rng, vsock).
//!
//! A turn goes `begin` (suppress kicks), `pop` until None, `signal`. `pop`
//! returns None only with notifications enabled again and the ring seen
//! empty after that, so a chain made available meanwhile is never missed;
//! a ring that claims chains but yields none (an avail index more than a
//! queue size ahead) is left alone until the next kick rather than spun on.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{GuestMemory, Interrupt};

pub struct ServedQueue {
    /// The queue's index, for `Interrupt::signal_queue`.
    pub index: u16,
    pub queue: Queue,
    /// Used entries added since the last signal.
    added: bool,
}

impl ServedQueue {
    pub fn new(index: u16, queue: Queue) -> Self {
        ServedQueue {
            index,
            queue,
            added: false,
        }
    }

    /// Start a turn: no kicks while the device is popping anyway.
    pub fn begin(&mut self, mem: &GuestMemory) {
        let _ = self.queue.disable_notification(mem);
    }

    /// The next available chain; see the module comment.
    pub fn pop<'m>(&mut self, mem: &'m GuestMemory) -> Option<DescriptorChain<&'m GuestMemory>> {
        if let Some(chain) = self.queue.pop_descriptor_chain(mem) {
            return Some(chain);
        }
        if let Ok(true) = self.queue.enable_notification(mem) {
            if let Some(chain) = self.queue.pop_descriptor_chain(mem) {
                self.begin(mem);
                return Some(chain);
            }
        }
        None
    }

    /// Put the last popped chain back (served later).
    pub fn undo_pop(&mut self) {
        self.queue.go_to_previous_position();
    }

    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) {
        if self.queue.add_used(mem, head, len).is_ok() {
            self.added = true;
        }
    }

    /// Signal the driver if used entries were added and it wants to know;
    /// returns whether an interrupt was raised.
    pub fn signal(&mut self, mem: &GuestMemory, interrupt: &dyn Interrupt) -> bool {
        if !std::mem::take(&mut self.added) {
            return false;
        }
        if self.queue.needs_notification(mem).unwrap_or(true) {
            let _ = interrupt.signal_queue(self.index);
            return true;
        }
        false
    }
}
