//! The guest memory and queue layout every virtio fuzz harness shares
//! (block, vsock): arbitrary input bytes become descriptor tables, avail
//! rings and a data area in a small guest memory, queues are built on
//! them, and used rings are read back.
//!
//! Layout: three 64 KiB regions; region 1 starts exactly where region 0
//! ends (a buffer may cross from one into the other), region 2 comes after
//! a 64 KiB hole. Queue q's descriptor table is at `desc_table(q)`, its
//! avail ring at `avail_ring(q)`, its used ring at `used_ring(q)`, all in
//! region 0. Input after the per-queue bytes: per queue 16 * size bytes of
//! descriptor table and 6 + 2 * size bytes of avail ring; the rest is the
//! data area, from `DATA_AREA` to the end of region 1 and then region 2.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{GuestMemory, Interrupt};

/// Guest memory regions: (start, size). Regions 0 and 1 are adjacent.
pub const REGIONS: [(u64, usize); 3] = [(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x3_0000, 0x1_0000)];
/// Total bytes of guest memory.
pub const MEM_LEN: usize = REGIONS[0].1 + REGIONS[1].1 + REGIONS[2].1;
/// Most queues an input sets up.
pub const MAX_QUEUES: usize = 4;
/// Where the data area starts (it runs to the end of region 1, then goes
/// on in region 2).
pub const DATA_AREA: u64 = 0x9000;
/// Folded descriptor addresses fall in [0, FOLD): all regions, the hole
/// and a little past the end.
pub const FOLD: u64 = 0x4_1000;
/// Queue `q`'s descriptor table (room for 256 descriptors).
pub const fn desc_table(q: usize) -> u64 {
    q as u64 * 0x1000
}

/// Queue `q`'s avail ring (room for 256 entries).
pub const fn avail_ring(q: usize) -> u64 {
    0x4000 + q as u64 * 0x400
}

/// Queue `q`'s used ring (room for 256 entries).
pub const fn used_ring(q: usize) -> u64 {
    0x5000 + q as u64 * 0x1000
}

/// Index of guest address `addr` in a flat copy of guest memory (regions in
/// order, holes left out).
pub fn flat_index(addr: u64) -> Option<usize> {
    let mut base = 0usize;
    for (start, size) in REGIONS {
        if addr >= start && addr - start < size as u64 {
            return Some(base + (addr - start) as usize);
        }
        base += size;
    }
    None
}

/// One queue an input sets up.
#[derive(Clone, Copy, Debug)]
pub struct QueueSpec {
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub size: u16,
    pub next_avail: u16,
}

impl QueueSpec {
    pub fn avail_len(&self) -> u64 {
        6 + 2 * u64::from(self.size)
    }
    pub fn used_len(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    /// Chains the device put on this queue's used ring.
    pub fn used(&self, mem: &GuestMemory) -> u16 {
        let idx: u16 = mem
            .read_obj(GuestAddress(self.used_ring + 2))
            .expect("used ring in memory");
        idx.wrapping_sub(self.next_avail)
    }

    /// (head, len) of the `i`th entry this run added to the used ring.
    pub fn used_entry(&self, mem: &GuestMemory, i: u16) -> (u32, u32) {
        let slot = u64::from(self.next_avail.wrapping_add(i) % self.size);
        let at = self.used_ring + 4 + 8 * slot;
        let id: u32 = mem.read_obj(GuestAddress(at)).expect("used ring in memory");
        let len: u32 = mem
            .read_obj(GuestAddress(at + 4))
            .expect("used ring in memory");
        (id, len)
    }

    /// A ready queue on this layout.
    pub fn queue(&self, event_idx: bool) -> Queue {
        let mut queue = Queue::new(256).expect("queue");
        queue.set_size(self.size);
        queue.set_desc_table_address(Some(self.desc_table as u32), Some(0));
        queue.set_avail_ring_address(Some(self.avail_ring as u32), Some(0));
        queue.set_used_ring_address(Some(self.used_ring as u32), Some(0));
        queue.set_next_avail(self.next_avail);
        queue.set_next_used(self.next_avail);
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        queue
    }
}

/// The harness's guest memory.
pub fn memory() -> GuestMemory {
    let ranges: Vec<_> = REGIONS
        .iter()
        .map(|&(start, size)| (GuestAddress(start), size))
        .collect();
    GuestMemory::from_ranges(&ranges).expect("guest memory")
}

/// Lay `input` out in `mem` for `queues` queues: three bytes per queue
/// (size 1 << (b % 9), next_avail LE), then the sections (module comment).
/// `fold` folds descriptor addresses into [0, FOLD) so short inputs reach
/// memory. None when the input is too short for the queue bytes.
pub fn load(mem: &GuestMemory, input: &[u8], queues: usize, fold: bool) -> Option<Vec<QueueSpec>> {
    if input.len() < 3 * queues {
        return None;
    }
    let specs: Vec<QueueSpec> = input[..3 * queues]
        .chunks_exact(3)
        .enumerate()
        .map(|(q, b)| QueueSpec {
            desc_table: desc_table(q),
            avail_ring: avail_ring(q),
            used_ring: used_ring(q),
            size: 1 << (b[0] % 9),
            next_avail: u16::from_le_bytes([b[1], b[2]]),
        })
        .collect();
    // Fresh memory: zero, then the input's sections.
    let zeros = vec![0u8; REGIONS[0].1];
    for (start, len) in REGIONS {
        mem.write_slice(&zeros[..len], GuestAddress(start))
            .expect("region writable");
    }
    let mut rest = &input[3 * queues..];
    let mut section = |addr: u64, len: usize| {
        let n = rest.len().min(len);
        mem.write_slice(&rest[..n], GuestAddress(addr))
            .expect("section in memory");
        rest = &rest[n..];
    };
    for q in &specs {
        section(q.desc_table, 16 * usize::from(q.size));
        section(q.avail_ring, q.avail_len() as usize);
    }
    section(
        DATA_AREA,
        (REGIONS[1].0 + REGIONS[1].1 as u64 - DATA_AREA) as usize,
    );
    section(REGIONS[2].0, REGIONS[2].1);
    for q in &specs {
        if fold {
            for i in 0..u64::from(q.size) {
                let at = GuestAddress(q.desc_table + 16 * i);
                let addr: u64 = mem.read_obj(at).expect("table in memory");
                mem.write_obj(addr % FOLD, at).expect("table in memory");
            }
        }
        // The used index starts where the queue's next_used does.
        mem.write_obj(q.next_avail, GuestAddress(q.used_ring + 2))
            .expect("used ring in memory");
    }
    Some(specs)
}

/// A flat copy of guest memory (see `flat_index`).
pub fn snapshot(mem: &GuestMemory) -> Vec<u8> {
    let mut out = vec![0u8; MEM_LEN];
    let mut base = 0;
    for (start, size) in REGIONS {
        mem.read_slice(&mut out[base..base + size], GuestAddress(start))
            .expect("region readable");
        base += size;
    }
    out
}

/// An `Interrupt` that does nothing.
pub struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn signal_queue(&self, _queue_index: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config(&self) -> std::io::Result<()> {
        Ok(())
    }
}

const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;

/// Flat bytes a device may write: every queue's used ring (if
/// `used_rings`), and every buffer a descriptor of the queues
/// `device_writes` (or of an indirect table one of them names) marks
/// device-writable.
pub fn writable(
    mem: &GuestMemory,
    specs: &[QueueSpec],
    device_writes: &[usize],
    used_rings: bool,
) -> Vec<bool> {
    let mut allowed = vec![false; MEM_LEN];
    // Mark [addr, addr + len) region by region (no per-byte walk over the
    // huge lengths a fuzzer writes).
    let mut mark = |addr: u64, len: u64| {
        let end = addr.saturating_add(len);
        let mut base = 0usize;
        for (start, size) in REGIONS {
            let (lo, hi) = (addr.max(start), end.min(start + size as u64));
            if lo < hi {
                let from = base + (lo - start) as usize;
                allowed[from..from + (hi - lo) as usize].fill(true);
            }
            base += size;
        }
    };
    if used_rings {
        for q in specs {
            mark(q.used_ring, q.used_len());
        }
    }
    // A descriptor past the end of the address space reads as empty (the
    // device cannot use it either).
    let desc = |table: u64, i: u64| -> (u64, u32, u16) {
        let Some(at) = table
            .checked_add(16 * i)
            .filter(|a| a.checked_add(16).is_some())
        else {
            return (0, 0, 0);
        };
        let addr: u64 = mem.read_obj(GuestAddress(at)).unwrap_or(0);
        let len: u32 = mem.read_obj(GuestAddress(at + 8)).unwrap_or(0);
        let flags: u16 = mem.read_obj(GuestAddress(at + 12)).unwrap_or(0);
        (addr, len, flags)
    };
    let mut seen = std::collections::HashSet::new();
    for q in device_writes.iter().filter_map(|&i| specs.get(i)) {
        for i in 0..u64::from(q.size) {
            let (addr, len, flags) = desc(q.desc_table, i);
            if flags & VRING_DESC_F_INDIRECT != 0 {
                // A table must lie in guest memory (at most 8192 entries
                // in the two adjacent regions); each one is walked once.
                if !seen.insert((addr, len)) {
                    continue;
                }
                for j in 0..u64::from(len / 16).min(8192) {
                    let (a, l, f) = desc(addr, j);
                    if f & VRING_DESC_F_WRITE != 0 {
                        mark(a, u64::from(l));
                    }
                }
            } else if flags & VRING_DESC_F_WRITE != 0 {
                mark(addr, u64::from(len));
            }
        }
    }
    allowed
}

/// Whether any byte of queue `q`'s used ring is marked in `map` (a
/// `writable` map without used rings): the guest pointed a buffer at it,
/// so what reads back there is data, not the device's used entries.
pub fn used_ring_covered(map: &[bool], q: &QueueSpec) -> bool {
    (0..q.used_len()).any(|i| flat_index(q.used_ring + i).is_some_and(|f| map[f]))
}

/// The fuzz-lite loop device tests share: `rounds` inputs, every other one
/// `seed` and the rest random bytes, each with up to 15 random bytes
/// changed, from a xorshift generator started at `start` (so a failure
/// repeats), each given to `run`.
#[cfg(test)]
pub fn fuzz_lite(seed: &[u8], rounds: usize, start: u64, mut run: impl FnMut(&[u8])) {
    let mut x = start;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..rounds {
        let mut input = if round % 2 == 0 {
            seed.to_vec()
        } else {
            (0..(rnd() % 2000) as usize).map(|_| rnd() as u8).collect()
        };
        for _ in 0..(rnd() % 16) {
            if input.is_empty() {
                break;
            }
            let at = (rnd() as usize) % input.len();
            input[at] = rnd() as u8;
        }
        run(&input);
    }
}
