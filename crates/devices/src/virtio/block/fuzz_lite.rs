//! Fuzz-lite: pseudo-random (fixed seed) device configurations and guest
//! memory layouts through the same harness, and oracle, as the cargo-fuzz
//! target. Every run cycles through the engines (Sync, Pool, IoUring),
//! write-through on and off and 1 to 4 queues. The layouts are mostly
//! well-formed chains (header, data, status; sometimes split headers,
//! indirect tables, data and status in one descriptor, buffers that cross
//! from region 0 into region 1) with a few mutations, so that the deep
//! paths run and most inputs are clean enough for the exact checks (see
//! `fuzzing.rs`). The test also asserts that the checks really ran: clean
//! runs on every engine, data compared, straddling chains served.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::engine::EngineKind;
use super::fuzzing::{
    avail_ring, config_byte, desc_table, Harness, RunStats, DATA_AREA, IMAGE_LEN, MEM_LEN, REGIONS,
};

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const SECTORS: u64 = IMAGE_LEN / 512;
/// End of region 1: the data area is contiguous up to here.
const LOW_END: u64 = REGIONS[1].0 + REGIONS[1].1 as u64;
const HIGH: (u64, u64) = (REGIONS[2].0, REGIONS[2].0 + REGIONS[2].1 as u64);

type RawDesc = (u64, u32, u16, u16);

/// Guest memory being laid out (flat: regions 0 and 1 at their addresses,
/// region 2 right after) and a bump allocator over the data area.
struct Layout {
    mem: Vec<u8>,
    cursor: u64,
}

impl Layout {
    fn index(addr: u64) -> usize {
        if addr >= HIGH.0 {
            (addr - HIGH.0 + LOW_END) as usize
        } else {
            addr as usize
        }
    }

    fn put(&mut self, addr: u64, bytes: &[u8]) {
        let i = Self::index(addr);
        let end = (i + bytes.len()).min(MEM_LEN);
        self.mem[i..end].copy_from_slice(&bytes[..end - i]);
    }

    /// `len` bytes of data area; a buffer may cross from region 0 into
    /// region 1. Runs out by wrapping around (buffers then overlap, which
    /// the oracle treats as a not-clean input).
    fn alloc(&mut self, rng: &mut Rng, len: u64) -> u64 {
        if self.cursor < HIGH.0 && self.cursor + len > LOW_END {
            self.cursor = HIGH.0;
        }
        if self.cursor + len > HIGH.1 {
            self.cursor = DATA_AREA;
        }
        let addr = self.cursor;
        let gap = if rng.chance(20) { rng.below(40) } else { 0 };
        self.cursor += len + gap;
        addr
    }
}

fn header(req_type: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// Split `len` bytes into 1 to 3 pieces (each possibly cut at odd sizes).
fn pieces(rng: &mut Rng, len: u64) -> Vec<u64> {
    let n = if len < 2 { 1 } else { 1 + rng.below(3) };
    let mut out = Vec::new();
    let mut left = len;
    for i in 0..n {
        let take = if i + 1 == n || left == 0 {
            left
        } else {
            1 + rng.below(left)
        };
        out.push(take);
        left -= take;
    }
    out.retain(|l| *l > 0);
    if out.is_empty() {
        out.push(0);
    }
    out
}

/// A plausible sector range: mostly inside the disk, sometimes past it.
fn sector_for(rng: &mut Rng, sectors: u64) -> u64 {
    match rng.below(20) {
        0 => SECTORS - sectors + 1 + rng.below(2),
        1 => u64::MAX - rng.below(3),
        _ => rng.below(SECTORS - sectors + 1),
    }
}

/// The descriptors (address, length, writable) of one request.
fn request(rng: &mut Rng, l: &mut Layout) -> Vec<(u64, u32, bool)> {
    let mut descs = Vec::new();
    let readable = |rng: &mut Rng, l: &mut Layout, bytes: &[u8], split: bool| {
        let parts = if split {
            pieces(rng, bytes.len() as u64)
        } else {
            vec![bytes.len() as u64]
        };
        let mut off = 0usize;
        let mut out = Vec::new();
        for p in parts {
            let a = l.alloc(rng, p);
            l.put(a, &bytes[off..off + p as usize]);
            out.push((a, p as u32, false));
            off += p as usize;
        }
        out
    };
    let kind = rng.below(100);
    let (req_type, sectors) = match kind {
        0..=29 => (0, rng.below(9)),
        30..=59 => (1, rng.below(9)),
        60..=67 => (4, 0),
        68..=72 => (8, 0),
        73..=81 => (11, 0),
        82..=92 => (13, 0),
        93..=95 => (2 + rng.below(3) as u32 * 5, 0), // unsupported types
        _ => (rng.next() as u32, rng.below(3)),
    };
    let sector = sector_for(rng, sectors.max(1));
    let h = header(req_type, sector);
    let mut data_out: Vec<u8> = Vec::new();
    match req_type {
        1 => data_out = (0..sectors * 512).map(|_| rng.next() as u8).collect(),
        11 | 13 => {
            let n = rng.below(17);
            let start = sector_for(rng, n.max(1));
            let flags: u32 = match rng.below(10) {
                0..=6 => 0,
                7 | 8 => 1,
                _ => 2,
            };
            let mut r = [0u8; 16];
            r[0..8].copy_from_slice(&start.to_le_bytes());
            r[8..12].copy_from_slice(&(n as u32).to_le_bytes());
            r[12..16].copy_from_slice(&flags.to_le_bytes());
            data_out.extend_from_slice(&r);
        }
        _ => {}
    }
    // Header and data-out: one descriptor, or split.
    if rng.chance(20) {
        let mut all = h.to_vec();
        all.extend_from_slice(&data_out);
        let split = rng.chance(50);
        descs.extend(readable(rng, l, &all, split));
    } else {
        let split = rng.chance(15);
        descs.extend(readable(rng, l, &h, split));
        if !data_out.is_empty() {
            let split = rng.chance(40);
            descs.extend(readable(rng, l, &data_out, split));
        }
    }
    // Data-in and status: status alone, or the last byte of the data.
    let data_in = match req_type {
        0 => sectors * 512,
        8 => [20, 20, 0, 7, 33][rng.below(5) as usize],
        _ => 0,
    };
    let together = data_in > 0 && rng.chance(25);
    let parts = pieces(rng, data_in + u64::from(together));
    for p in parts.iter().filter(|p| **p > 0) {
        let a = l.alloc(rng, *p);
        descs.push((a, *p as u32, true));
    }
    if !together {
        let a = l.alloc(rng, 1);
        l.put(a, &[0xee]);
        descs.push((a, 1, true));
    }
    descs
}

/// Write `descs` as a linked chain into the table at `table` (flat memory),
/// starting at entry `first`.
fn link(l: &mut Layout, table: u64, first: u16, size: u16, descs: &[(u64, u32, bool)]) {
    for (j, &(addr, len, writable)) in descs.iter().enumerate() {
        let k = first + j as u16;
        let more = j + 1 < descs.len();
        let flags = if writable { WRITE } else { 0 } | if more { NEXT } else { 0 };
        let next = if more { (k + 1) % size.max(1) } else { 0 };
        put_desc(l, table, k, (addr, len, flags, next));
    }
}

fn put_desc(l: &mut Layout, table: u64, k: u16, (addr, len, flags, next): RawDesc) {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    l.put(table + 16 * u64::from(k), &raw);
}

/// One input for the given configuration.
fn input(
    rng: &mut Rng,
    engine: EngineKind,
    write_through: bool,
    queues: usize,
    readonly: bool,
) -> Vec<u8> {
    let fold = rng.chance(3);
    let mut out = vec![config_byte(
        engine,
        write_through,
        readonly,
        rng.chance(50),
        fold,
        queues,
    )];
    let mut l = Layout {
        mem: vec![0u8; MEM_LEN],
        // Often just below the region 0/1 boundary, so buffers straddle it.
        cursor: if rng.chance(60) {
            REGIONS[1].0 - 16 * rng.below(0x100) - rng.below(16)
        } else {
            DATA_AREA + rng.below(0x8000)
        },
    };
    let mut sizes = Vec::new();
    for q in 0..queues {
        let size_sel = if rng.chance(90) {
            rng.below(6) as u8
        } else {
            rng.next() as u8
        };
        let size = 1u16 << (size_sel % 9);
        let next_avail: u16 = if rng.chance(75) { 0 } else { rng.next() as u16 };
        out.push(size_sel);
        out.extend_from_slice(&next_avail.to_le_bytes());
        sizes.push(size);
        let table = desc_table(q);
        let mut heads = Vec::new();
        let mut k = 0u16;
        let chains = 1 + rng.below(u64::from(size).min(12));
        while heads.len() < chains as usize && k < size {
            let descs = request(rng, &mut l);
            let room = size - k;
            if rng.chance(10) || descs.len() > usize::from(room) {
                // Indirect: one entry in the ring's table, the chain in its
                // own table in the data area.
                let n = descs.len() as u16;
                let itable = l.alloc(rng, 16 * u64::from(n));
                link(&mut l, itable, 0, n, &descs);
                put_desc(&mut l, table, k, (itable, 16 * u32::from(n), INDIRECT, 0));
                heads.push(k);
                k += 1;
            } else {
                link(&mut l, table, k, size, &descs);
                heads.push(k);
                k += descs.len() as u16;
            }
        }
        // A few mutations, so the rejection paths run too.
        if rng.chance(15) {
            let i = rng.below(u64::from(k.max(1))) as u16;
            let at = Layout::index(table + 16 * u64::from(i));
            let field = rng.below(4) as usize;
            let (off, width) = [(0, 8), (8, 4), (12, 2), (14, 2)][field];
            let pos = at + off + rng.below(width) as usize;
            l.mem[pos] ^= 1 << rng.below(8);
        }
        // Avail ring: flags, idx, ring[size], used_event.
        let avail = avail_ring(q);
        let count = if rng.chance(95) {
            heads.len() as u16
        } else {
            rng.next() as u16
        };
        l.put(avail, &(rng.below(2) as u16).to_le_bytes());
        l.put(avail + 2, &next_avail.wrapping_add(count).to_le_bytes());
        for (j, head) in heads.iter().enumerate() {
            let slot = next_avail.wrapping_add(j as u16) % size;
            let head = if rng.chance(2) {
                rng.next() as u16
            } else {
                *head
            };
            l.put(avail + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        }
        let used_event = avail + 4 + 2 * u64::from(size);
        l.put(used_event, &(rng.below(4) as u16).to_le_bytes());
    }
    for (q, size) in sizes.iter().enumerate() {
        let t = desc_table(q) as usize;
        out.extend_from_slice(&l.mem[t..t + 16 * usize::from(*size)]);
        let a = avail_ring(q) as usize;
        out.extend_from_slice(&l.mem[a..a + 6 + 2 * usize::from(*size)]);
    }
    out.extend_from_slice(&l.mem[DATA_AREA as usize..]);
    // Trailing zeros carry nothing (memory starts zeroed).
    let zeros = [0u8; 256];
    let blocks = out.chunks(256).rposition(|c| *c != zeros[..c.len()]);
    out.truncate(blocks.map_or(0, |b| (b + 1) * 256).max(1 + 3 * queues));
    out
}

#[derive(Default)]
struct Totals {
    runs: u64,
    clean: u64,
    used: u64,
    chains_checked: u64,
    data_in_checked: u64,
    modifying_checked: u64,
    straddling: u64,
    served: u64,
}

impl Totals {
    fn add(&mut self, s: &RunStats) {
        self.runs += 1;
        self.clean += u64::from(s.clean);
        self.used += u64::from(s.used);
        self.chains_checked += u64::from(s.checked.chains);
        self.data_in_checked += u64::from(s.checked.data_in);
        self.modifying_checked += u64::from(s.checked.modifying);
        self.straddling += u64::from(s.checked.straddling);
        self.served += s.served + s.modifying;
    }
}

const ENGINES: [EngineKind; 3] = [EngineKind::Sync, EngineKind::Pool, EngineKind::IoUring];

#[test]
fn random_layouts_pass_the_oracle_on_every_engine_and_mode() {
    let harness = Harness::new();
    let mut rng = Rng(0x5eed_b10c_d15c_0002);
    // Per engine actually used, per write-through mode.
    let mut totals: Vec<[Totals; 2]> = (0..3).map(|_| Default::default()).collect();
    let mut multi_queue_clean = 0u64;
    // VIREO_FUZZ_SEEDS=fuzz/corpus/virtio_blk saves the first layouts as a
    // seed corpus for the cargo-fuzz target.
    let seeds = std::env::var_os("VIREO_FUZZ_SEEDS").map(std::path::PathBuf::from);
    if let Some(dir) = &seeds {
        let _ = std::fs::create_dir_all(dir);
    }
    for iter in 0..1200u64 {
        let engine = ENGINES[(iter % 3) as usize];
        let write_through = (iter / 3) % 2 == 1;
        let queues = 1 + ((iter / 6) % 4) as usize;
        let readonly = rng.chance(12);
        let input = input(&mut rng, engine, write_through, queues, readonly);
        if let Some(dir) = &seeds {
            if iter < 300 {
                let _ = std::fs::write(dir.join(format!("fuzz-lite-{iter:04}")), &input);
            }
        }
        let stats = harness.run(&input);
        let kind = stats.engine.expect("input long enough");
        let e = ENGINES
            .iter()
            .position(|k| *k == kind)
            .expect("known engine");
        totals[e][usize::from(write_through)].add(&stats);
        if stats.clean && queues > 1 && stats.checked.chains > 0 {
            multi_queue_clean += 1;
        }
    }
    for (e, modes) in totals.iter().enumerate() {
        for (wt, t) in modes.iter().enumerate() {
            println!(
                "{:?} write-through={}: {} runs, {} clean, {} used, {} chains checked, \
                 {} data-in checked, {} image changes checked, {} straddling, {} served",
                ENGINES[e],
                wt == 1,
                t.runs,
                t.clean,
                t.used,
                t.chains_checked,
                t.data_in_checked,
                t.modifying_checked,
                t.straddling,
                t.served
            );
            // io_uring may be missing on the host (the engine falls back to
            // the pool); every engine that did run must have been checked.
            if t.runs > 0 {
                assert!(t.clean * 2 > t.runs, "too few clean inputs: {}", t.clean);
                assert!(t.chains_checked > t.runs, "too few chains checked");
                assert!(t.data_in_checked > 50, "too few reads checked");
                assert!(t.modifying_checked > 50, "too few image changes checked");
                assert!(t.straddling > 20, "too few straddling chains");
            }
        }
    }
    assert!(
        totals[0][0].runs > 0 && totals[1][0].runs > 0,
        "engines missing"
    );
    assert!(
        multi_queue_clean > 100,
        "multi-queue runs: {multi_queue_clean}"
    );
}

/// Pure noise (no structure) through the same harness.
#[test]
fn random_bytes_never_panic() {
    let harness = Harness::new();
    let mut rng = Rng(42);
    for _ in 0..400 {
        let len = rng.below(20_000) as usize;
        let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        harness.run(&input);
    }
}
