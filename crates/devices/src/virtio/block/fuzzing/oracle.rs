//! The fuzz harness's oracle: what the device should do with the chains an
//! input makes available, worked out before the run from guest memory, and
//! the checks of what it did afterwards.
//!
//! The chain walk and the request rules are written again here, from the
//! virtio spec and the rules `request.rs` documents, rather than by calling
//! the parser: a bug in the parser should show up as a disagreement.
//!
//! Coverage maps (`Cover`) count, for every byte of guest memory or of the
//! image, how many intervals touch it; intervals are added as +1/-1 marks
//! and summed once, so a map costs O(intervals + bytes) however long the
//! (guest-controlled) lengths are.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{flat_index, REGIONS};
use crate::virtio::block::request::{MAX_DESCRIPTORS, MAX_REQUEST_BYTES, MAX_ZERO_SECTORS};
use crate::virtio::GuestMemory;

const STATUS_OK: u8 = 0;
const STATUS_IOERR: u8 = 1;
const STATUS_UNSUPP: u8 = 2;
/// GET_ID answers at most this many bytes.
const ID_BYTES: u32 = 20;
/// Where region 0 ends and region 1 begins: the one boundary a descriptor
/// can cross (the other regions are separated by holes).
const BOUNDARY: u64 = REGIONS[1].0;

pub use crate::virtio::fuzz_rings::QueueSpec;

#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    writable: bool,
}

/// The descriptors of one chain, as the split-ring rules yield them.
#[derive(Debug, Default)]
struct Walk {
    descs: Vec<Desc>,
    /// The last descriptor still says NEXT (loop, bad index, unreadable).
    broken: bool,
    /// More than MAX_DESCRIPTORS descriptors.
    too_many: bool,
    /// Indirect tables read on the way: (address, length).
    tables: Vec<(u64, u64)>,
}

/// Walk the chain at `head`: descriptors are read from `table` while the
/// index is below the table size and the chain's budget (the table size)
/// lasts; an INDIRECT descriptor switches once to its table (a length
/// multiple of 16, no nesting); the walk ends where the chain's total length
/// would pass 2^32 bytes.
fn walk(mem: &GuestMemory, table: u64, size: u16, head: u16) -> Walk {
    let mut w = Walk::default();
    let (mut table, mut table_size, mut next, mut budget) = (table, size, head, size);
    let mut indirect = false;
    let mut total: u32 = 0;
    while budget > 0 && next < table_size {
        let Some(at) = table.checked_add(u64::from(next) * 16) else {
            break;
        };
        let mut raw = [0u8; 16];
        if mem.read_slice(&mut raw, GuestAddress(at)).is_err() {
            break;
        }
        let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next_index = u16::from_le_bytes([raw[14], raw[15]]);
        if u32::from(flags) & VRING_DESC_F_INDIRECT != 0 {
            if indirect || !len.is_multiple_of(16) || len / 16 > u32::from(u16::MAX) {
                break;
            }
            w.tables.push((addr, u64::from(len)));
            (table, table_size, next) = (addr, (len / 16) as u16, 0);
            budget = table_size;
            indirect = true;
            continue;
        }
        let Some(t) = total.checked_add(len) else {
            break;
        };
        total = t;
        let has_next = u32::from(flags) & VRING_DESC_F_NEXT != 0;
        if has_next {
            next = next_index;
            budget -= 1;
        } else {
            budget = 0;
        }
        if w.descs.len() == MAX_DESCRIPTORS {
            w.too_many = true;
            break;
        }
        w.descs.push(Desc {
            addr,
            len,
            writable: u32::from(flags) & VRING_DESC_F_WRITE != 0,
        });
        w.broken = has_next;
    }
    w
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read { offset: u64 },
    Write { offset: u64 },
    Flush,
    GetId,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64 },
}

/// What the device must answer for one chain.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Rejected {
        status: Option<u64>,
        code: u8,
    },
    Served {
        kind: Kind,
        data_len: u32,
        status: u64,
    },
}

impl Outcome {
    /// The used-ring length: data bytes written to the guest plus the status
    /// byte; 0 when there is no status byte to write.
    fn used_len(&self) -> u32 {
        match *self {
            Outcome::Rejected { status: None, .. } => 0,
            Outcome::Rejected { .. } => 1,
            Outcome::Served {
                kind: Kind::Read { .. },
                data_len,
                ..
            } => data_len + 1,
            Outcome::Served {
                kind: Kind::GetId,
                data_len,
                ..
            } => data_len.min(ID_BYTES) + 1,
            Outcome::Served { .. } => 1,
        }
    }

    fn status(&self) -> Option<(u64, u8)> {
        match *self {
            Outcome::Rejected { status, code } => status.map(|s| (s, code)),
            Outcome::Served { status, .. } => Some((status, STATUS_OK)),
        }
    }
}

/// Copy `out.len()` bytes of `descs` (in order), starting `skip` bytes in.
fn gather(mem: &GuestMemory, descs: &[Desc], skip: u64, out: &mut [u8]) -> bool {
    let mut i = 0;
    for (_, byte) in segment_bytes(descs, skip, out.len() as u64) {
        match mem.read_obj::<u8>(GuestAddress(byte)) {
            Ok(b) => out[i] = b,
            Err(_) => return false,
        }
        i += 1;
    }
    i == out.len()
}

/// Guest addresses of the `take` bytes of `descs` that start `skip` bytes
/// in, with their position from the start of that range.
fn segment_bytes(descs: &[Desc], skip: u64, take: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    descs
        .iter()
        .flat_map(|d| (0..u64::from(d.len)).map(move |i| d.addr.wrapping_add(i)))
        .skip(skip as usize)
        .take(take as usize)
        .enumerate()
        .map(|(i, a)| (i as u64, a))
}

/// The request rules (see `request.rs`), in the order the parser applies
/// them, since the order decides which status code a bad chain gets.
fn expect(mem: &GuestMemory, w: &Walk, capacity_sectors: u64, readonly: bool) -> Outcome {
    let status = match w.descs.last() {
        Some(d) if d.writable && d.len > 0 && !w.broken && !w.too_many => d
            .addr
            .checked_add(u64::from(d.len) - 1)
            .filter(|a| mem.check_range(GuestAddress(*a), 1)),
        _ => None,
    };
    let reject = |code| Outcome::Rejected { status, code };
    let ioerr = reject(STATUS_IOERR);
    if w.descs.is_empty() || w.too_many || w.broken {
        return ioerr;
    }
    if w.descs
        .iter()
        .any(|d| !mem.check_range(GuestAddress(d.addr), d.len as usize))
    {
        return ioerr;
    }
    let first_writable = w.descs.iter().position(|d| d.writable);
    if let Some(i) = first_writable {
        if w.descs[i..].iter().any(|d| !d.writable) {
            return ioerr;
        }
    }
    let Some(status_addr) = status else {
        return ioerr;
    };
    let split = first_writable.unwrap_or(w.descs.len());
    let (rd, wr) = w.descs.split_at(split);
    let readable: u64 = rd.iter().map(|d| u64::from(d.len)).sum();
    let writable: u64 = wr.iter().map(|d| u64::from(d.len)).sum();
    let mut header = [0u8; 16];
    if readable < 16 || !gather(mem, rd, 0, &mut header) {
        return ioerr;
    }
    let req_type = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let cap = capacity_sectors * 512;
    let in_disk = |sector: u64, len: u64| {
        sector
            .checked_mul(512)
            .filter(|off| off.checked_add(len).is_some_and(|end| end <= cap))
    };
    let sized = |len: u64| len <= u64::from(MAX_REQUEST_BYTES) && len.is_multiple_of(512);
    let served = |kind, data_len: u64| Outcome::Served {
        kind,
        data_len: data_len as u32,
        status: status_addr,
    };
    match req_type {
        0 => {
            let len = writable - 1;
            match in_disk(sector, len) {
                Some(offset) if readable == 16 && sized(len) => served(Kind::Read { offset }, len),
                _ => ioerr,
            }
        }
        1 => {
            let len = readable - 16;
            match in_disk(sector, len) {
                Some(offset) if !readonly && writable == 1 && sized(len) => {
                    served(Kind::Write { offset }, len)
                }
                _ => ioerr,
            }
        }
        4 if readable == 16 && writable == 1 => served(Kind::Flush, 0),
        8 if readable == 16 => served(Kind::GetId, writable - 1),
        4 | 8 => ioerr,
        11 | 13 => {
            let mut range = [0u8; 16];
            if readonly || writable != 1 || readable != 32 || !gather(mem, rd, 16, &mut range) {
                return ioerr;
            }
            let start = u64::from_le_bytes(range[0..8].try_into().expect("8 bytes"));
            let sectors = u32::from_le_bytes(range[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(range[12..16].try_into().expect("4 bytes"));
            let allowed = if req_type == 11 { 0 } else { 1 };
            if flags & !allowed != 0 {
                return reject(STATUS_UNSUPP);
            }
            let len = u64::from(sectors) * 512;
            match in_disk(start, len) {
                Some(offset) if sectors <= MAX_ZERO_SECTORS => {
                    let kind = if req_type == 11 {
                        Kind::Discard { offset, len }
                    } else {
                        Kind::WriteZeroes { offset, len }
                    };
                    served(kind, 0)
                }
                _ => ioerr,
            }
        }
        _ => reject(STATUS_UNSUPP),
    }
}

/// Intervals over a flat space (guest memory or the image), to ask how
/// many of them cover a byte.
#[derive(Default)]
struct Cover {
    intervals: Vec<(u64, u64)>,
}

/// A `Cover` swept once: where one or more intervals lie, and where two or
/// more do (both sorted and merged).
struct Coverage {
    any: Vec<(u64, u64)>,
    multi: Vec<(u64, u64)>,
}

impl Cover {
    /// Count `[start, end)` of the flat space.
    fn add_flat(&mut self, start: u64, end: u64) {
        if start < end {
            self.intervals.push((start, end));
        }
    }

    /// Count the guest bytes `[addr, addr + len)` (the parts in memory).
    fn add_guest(&mut self, addr: u64, len: u64) {
        let end = addr.saturating_add(len);
        let mut base = 0u64;
        for (start, size) in REGIONS {
            let rend = start + size as u64;
            let (s, e) = (addr.max(start), end.min(rend));
            if s < e {
                self.add_flat(base + s - start, base + e - start);
            }
            base += size as u64;
        }
    }

    fn sweep(self) -> Coverage {
        let mut events: Vec<(u64, i32)> = Vec::with_capacity(2 * self.intervals.len());
        for (s, e) in self.intervals {
            events.push((s, 1));
            events.push((e, -1));
        }
        // Ends before starts at the same position: [a, b) and [b, c) do
        // not overlap.
        events.sort_unstable();
        let mut out = Coverage {
            any: Vec::new(),
            multi: Vec::new(),
        };
        let mut depth = 0i32;
        let mut any_start = 0;
        let mut multi_start = 0;
        for (pos, delta) in events {
            let was = depth;
            depth += delta;
            if was == 0 && depth == 1 {
                any_start = pos;
            }
            if was == 1 && depth == 0 && pos > any_start {
                push_merged(&mut out.any, any_start, pos);
            }
            if was == 1 && depth == 2 {
                multi_start = pos;
            }
            if was == 2 && depth == 1 && pos > multi_start {
                push_merged(&mut out.multi, multi_start, pos);
            }
        }
        out
    }
}

fn push_merged(list: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    match list.last_mut() {
        Some(last) if last.1 >= start => last.1 = last.1.max(end),
        _ => list.push((start, end)),
    }
}

fn contains(list: &[(u64, u64)], x: u64) -> bool {
    let i = list.partition_point(|(_, e)| *e <= x);
    list.get(i).is_some_and(|(s, _)| *s <= x)
}

fn range_overlaps(list: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = list.partition_point(|(_, e)| *e <= start);
    list.get(i).is_some_and(|(s, _)| *s < end)
}

impl Coverage {
    /// How many intervals cover byte `x`: 0, 1, or 2 for two or more.
    fn count(&self, x: usize) -> u32 {
        let x = x as u64;
        if contains(&self.multi, x) {
            2
        } else {
            u32::from(contains(&self.any, x))
        }
    }

    /// Whether two or more intervals cover any byte of `[at, at + n)`.
    fn multi_overlaps(&self, at: usize, n: usize) -> bool {
        range_overlaps(&self.multi, at as u64, (at + n) as u64)
    }

    /// Whether any interval covers a byte of `[at, at + n)`.
    fn any_overlaps(&self, at: usize, n: usize) -> bool {
        range_overlaps(&self.any, at as u64, (at + n) as u64)
    }

    /// Whether `[start, end)` lies wholly under the intervals.
    fn covers(&self, start: usize, end: usize) -> bool {
        let i = self.any.partition_point(|(_, e)| *e <= start as u64);
        self.any
            .get(i)
            .is_some_and(|(s, e)| *s <= start as u64 && *e >= end as u64)
    }

    /// Whether any byte is covered by both.
    fn overlaps(&self, other: &Coverage) -> bool {
        let (a, b) = (&self.any, &other.any);
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            if a[i].0 < b[j].1 && b[j].0 < a[i].1 {
                return true;
            }
            if a[i].1 <= b[j].1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        false
    }
}

/// The `take` bytes of `descs` that start `skip` bytes in, as pieces
/// (position in that range, flat index, length). The descriptors must be in
/// guest memory, so each is contiguous in the flat copy.
fn flat_pieces(descs: &[Desc], mut skip: u64, mut take: u64) -> Vec<(u64, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for d in descs {
        let len = u64::from(d.len);
        if take == 0 {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(take);
        let at = flat_index(d.addr + skip).expect("descriptor in memory");
        out.push((pos, at, n as usize));
        pos += n;
        take -= n;
        skip = 0;
    }
    out
}

/// Start offsets of the 64-byte blocks where `a` and `b` differ (slice
/// comparison is a memcmp, fast even in debug builds).
fn differing_blocks<'a>(a: &'a [u8], b: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    a.chunks(64)
        .zip(b.chunks(64))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i * 64)
}

/// A chain the device pops: which queue, which head, what it should do.
#[derive(Debug)]
struct Instance {
    queue: usize,
    head: u16,
    walk: Walk,
    outcome: Outcome,
}

/// What one run is expected to do; see the harness's module comment.
pub struct Plan {
    queues: Vec<QueueSpec>,
    instances: Vec<Instance>,
    /// No byte a chain may write is a byte the device reads (rings, indirect
    /// tables, readable buffers): the device's view does not depend on the
    /// order it serves chains in, so the exact checks apply.
    pub clean: bool,
    /// Guest bytes the chains may write (flat), with multiplicity.
    writable: Coverage,
}

/// What the exact checks covered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checked {
    /// Chains whose used entry was checked.
    pub chains: u32,
    /// Reads and GET_IDs whose data was compared with the image / the id.
    pub data_in: u32,
    /// Writes, discards and write-zeroes whose effect on the image was
    /// compared.
    pub modifying: u32,
    /// Served chains with a descriptor crossing from region 0 into region 1.
    pub straddling: u32,
}

impl Plan {
    /// Work out the run before it happens: the chains each queue will pop
    /// (none when the avail index is more than a queue size ahead), and what
    /// each should do.
    pub fn new(
        mem: &GuestMemory,
        queues: &[QueueSpec],
        capacity_sectors: u64,
        readonly: bool,
    ) -> Plan {
        let mut instances = Vec::new();
        for (qi, q) in queues.iter().enumerate() {
            let avail_idx: u16 = mem
                .read_obj(GuestAddress(q.avail_ring + 2))
                .expect("avail ring in memory");
            let pending = avail_idx.wrapping_sub(q.next_avail);
            if pending > q.size {
                continue;
            }
            for k in 0..pending {
                let slot = q.next_avail.wrapping_add(k) % q.size;
                let head: u16 = mem
                    .read_obj(GuestAddress(q.avail_ring + 4 + 2 * u64::from(slot)))
                    .expect("avail ring in memory");
                let walk = walk(mem, q.desc_table, q.size, head);
                let outcome = expect(mem, &walk, capacity_sectors, readonly);
                instances.push(Instance {
                    queue: qi,
                    head,
                    walk,
                    outcome,
                });
            }
        }
        let mut read = Cover::default();
        let mut written = Cover::default();
        for q in queues {
            read.add_guest(q.desc_table, 16 * u64::from(q.size));
            read.add_guest(q.avail_ring, q.avail_len());
            read.add_guest(q.used_ring, q.used_len());
        }
        for inst in &instances {
            for &(addr, len) in &inst.walk.tables {
                read.add_guest(addr, len);
            }
            for d in &inst.walk.descs {
                let cover = if d.writable { &mut written } else { &mut read };
                cover.add_guest(d.addr, u64::from(d.len));
            }
        }
        let read = read.sweep();
        let writable = written.sweep();
        let clean = !read.overlaps(&writable);
        Plan {
            queues: queues.to_vec(),
            instances,
            clean,
            writable,
        }
    }

    /// The exact checks, for a clean plan: `before`/`after` are guest memory
    /// (flat), `image`/`original` the disk after and before. Panics with
    /// what differs.
    pub fn check(
        &self,
        mem: &GuestMemory,
        before: &[u8],
        after: &[u8],
        image: &[u8],
        original: &[u8],
        disk_id: &[u8; 20],
    ) -> Checked {
        let mut checked = Checked::default();
        self.check_memory(before, after);
        checked.chains = self.check_used(mem);

        // The image: bytes no served request names keep their value; bytes
        // exactly one names get what that request puts there.
        let mut names = Cover::default();
        for inst in &self.instances {
            if let Some((off, len)) = modified_range(&inst.outcome) {
                names.add_flat(off, off.saturating_add(len));
            }
        }
        let names = names.sweep();
        for block in differing_blocks(image, original) {
            for i in block..(block + 64).min(image.len()) {
                let (now, was) = (image[i], original[i]);
                assert!(
                    names.count(i) > 0 || now == was,
                    "image byte {i:#x} changed ({was:#04x} -> {now:#04x}) though no served \
                     write, discard or write-zeroes names it"
                );
            }
        }
        for inst in &self.instances {
            let Outcome::Served { kind, data_len, .. } = inst.outcome else {
                continue;
            };
            if inst
                .walk
                .descs
                .iter()
                .any(|d| d.addr < BOUNDARY && d.addr.saturating_add(u64::from(d.len)) > BOUNDARY)
            {
                checked.straddling += 1;
            }
            let (rd, wr): (Vec<Desc>, Vec<Desc>) =
                inst.walk.descs.iter().partition(|d| !d.writable);
            let len = u64::from(data_len);
            match kind {
                Kind::Write { offset } => {
                    for (pos, at, n) in flat_pieces(&rd, 16, len) {
                        let img = (offset + pos) as usize;
                        let src = &before[at..at + n];
                        if names.multi_overlaps(img, n) {
                            // Another request names some of these bytes:
                            // compare only the ones this write alone names.
                            for (k, want) in src.iter().enumerate() {
                                if names.count(img + k) == 1 {
                                    assert_eq!(image[img + k], *want, "image byte {:#x}", img + k);
                                }
                            }
                        } else {
                            assert!(
                                image[img..img + n] == *src,
                                "image {img:#x}+{n:#x} differs from the data of the write \
                                 (queue {}, head {})",
                                inst.queue,
                                inst.head
                            );
                        }
                    }
                    checked.modifying += 1;
                }
                Kind::Discard { offset, len } | Kind::WriteZeroes { offset, len } => {
                    let zero_only = matches!(kind, Kind::WriteZeroes { .. });
                    let range = offset as usize..(offset + len) as usize;
                    let zeros = vec![0u8; range.len()];
                    if image[range.clone()] != *zeros {
                        for at in range {
                            if names.count(at) == 1 {
                                let ok =
                                    image[at] == 0 || (!zero_only && image[at] == original[at]);
                                assert!(
                                    ok,
                                    "image byte {at:#x} after {kind:?} is {:#04x}",
                                    image[at]
                                );
                            }
                        }
                    }
                    checked.modifying += 1;
                }
                Kind::Read { offset } => {
                    if names.any_overlaps(offset as usize, len as usize) {
                        continue;
                    }
                    let want = &original[offset as usize..(offset + len) as usize];
                    if self.data_in_matches(&wr, want, after) {
                        checked.data_in += 1;
                    }
                }
                Kind::GetId => {
                    let n = data_len.min(ID_BYTES) as usize;
                    if self.data_in_matches(&wr, &disk_id[..n], after) {
                        checked.data_in += 1;
                    }
                }
                Kind::Flush => {}
            }
        }
        checked
    }

    /// Compare the first `want.len()` writable bytes of a chain with `want`,
    /// unless another chain may write them too; returns whether it compared.
    fn data_in_matches(&self, wr: &[Desc], want: &[u8], after: &[u8]) -> bool {
        let pieces = flat_pieces(wr, 0, want.len() as u64);
        if pieces
            .iter()
            .any(|&(_, at, n)| self.writable.multi_overlaps(at, n))
        {
            return false;
        }
        for (pos, at, n) in pieces {
            let pos = pos as usize;
            assert!(
                after[at..at + n] == want[pos..pos + n],
                "data-in bytes {pos}..{} (guest memory index {at:#x}) are wrong",
                pos + n
            );
        }
        true
    }

    /// Guest memory changed only in the chains' writable bytes and in the
    /// used rings; status bytes that only one chain may write hold its code.
    fn check_memory(&self, before: &[u8], after: &[u8]) {
        let mut used = Cover::default();
        for q in &self.queues {
            used.add_guest(q.used_ring, q.used_len());
        }
        let used = used.sweep();
        for block in differing_blocks(before, after) {
            let end = (block + 64).min(before.len());
            if self.writable.covers(block, end) || used.covers(block, end) {
                continue;
            }
            for i in block..end {
                let (b, a) = (before[i], after[i]);
                assert!(
                    b == a || self.writable.count(i) > 0 || used.count(i) > 0,
                    "guest memory index {i:#x} changed ({b:#04x} -> {a:#04x}) outside every \
                     device-writable buffer and used ring"
                );
            }
        }
        for inst in &self.instances {
            if let Some((addr, code)) = inst.outcome.status() {
                let i = flat_index(addr).expect("status byte in memory");
                if self.writable.count(i) == 1 {
                    assert_eq!(
                        after[i], code,
                        "status of queue {} head {} ({:?})",
                        inst.queue, inst.head, inst.outcome
                    );
                }
            }
        }
    }

    /// Every popped chain with a valid head is on its queue's used ring once,
    /// with the used length its outcome implies (in any order: async engines
    /// complete out of order). Returns the number of entries checked.
    fn check_used(&self, mem: &GuestMemory) -> u32 {
        let mut total = 0;
        for (qi, q) in self.queues.iter().enumerate() {
            let mut want: Vec<(u32, u32)> = self
                .instances
                .iter()
                .filter(|i| i.queue == qi && i.head < q.size)
                .map(|i| (u32::from(i.head), i.outcome.used_len()))
                .collect();
            let used_idx: u16 = mem
                .read_obj(GuestAddress(q.used_ring + 2))
                .expect("used ring in memory");
            assert_eq!(
                used_idx.wrapping_sub(q.next_avail),
                want.len() as u16,
                "queue {qi}: used index"
            );
            let mut got: Vec<(u32, u32)> = (0..want.len() as u16)
                .map(|k| {
                    let slot = u64::from(q.next_avail.wrapping_add(k) % q.size);
                    let at = GuestAddress(q.used_ring + 4 + 8 * slot);
                    let id: u32 = mem.read_obj(at).expect("used ring in memory");
                    let len: u32 = mem
                        .read_obj(GuestAddress(at.0 + 4))
                        .expect("used ring in memory");
                    (id, len)
                })
                .collect();
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "queue {qi}: used entries (head, len)");
            total += want.len() as u32;
        }
        total
    }
}

/// The image range a served request changes.
fn modified_range(outcome: &Outcome) -> Option<(u64, u64)> {
    match *outcome {
        Outcome::Served {
            kind: Kind::Write { offset },
            data_len,
            ..
        } => Some((offset, u64::from(data_len))),
        Outcome::Served {
            kind: Kind::Discard { offset, len } | Kind::WriteZeroes { offset, len },
            ..
        } => Some((offset, len)),
        _ => None,
    }
}
