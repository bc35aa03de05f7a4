//! The whole guest-facing PCI surface as a fuzz harness: bytes become a
//! sequence of guest accesses to configuration mechanism #1 (0xCF8/0xCFC),
//! ECAM, the BAR window (virtio common config, ISR, device config, notify,
//! MSI-X table and PBA, out-of-BAR offsets), BAR sizing and moves, the
//! command register, and the VIRTIO_PCI_CAP_PCI_CFG window, with a real
//! virtio-blk device on a real engine behind the transport. Two macro ops
//! keep inputs deep: a complete driver initialisation (reset polled to 0,
//! features, a queue in guest memory, DRIVER_OK) and a request (a chain
//! built from the input, made available and kicked).
//!
//! Checked after every input: nothing panicked, the image's length never
//! changed, and a final reset completes (device_status reads 0) within a
//! bounded time, so no input can hang the device.
//!
//! Input layout: byte 0 picks the engine (Sync, Pool, IoUring) and
//! write-through mode; then ops of one tag byte and its operands (missing
//! operand bytes read as 0).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use crate::bus::{lock, BusDevice};
use crate::pci::config::BarKind;
use crate::pci::{NoHypervisor, PciBarWindow, PciBus, PciConfigIo, PciConfigMmio, SharedPciBus};
use crate::virtio::block::{Block, BlockMetrics, EngineKind};
use crate::virtio::transport::pci_common::*;
use crate::virtio::transport::{VirtioPciDevice, VirtioPciResources};
use crate::virtio::GuestMemory;

/// Where BAR 0 starts (the BAR window starts here too).
pub const BAR: u64 = 0xc000_0000;
const NOTIFY: u64 = 0x3000;
/// Queue 0's rings and the request area, all inside the 16 MiB of RAM.
pub(crate) const DESC: u64 = 0x1000;
pub(crate) const AVAIL: u64 = 0x2000;
pub(crate) const USED: u64 = 0x3000;
pub(crate) const QSIZE: u16 = 16;
const REQ_AREA: u64 = 0x10_0000;
const IMAGE_LEN: u64 = 1 << 20;

/// Reads its operands from the input; past the end everything is 0.
pub(crate) struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }
    pub(crate) fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    pub(crate) fn width(&mut self) -> usize {
        [1, 2, 4, 8][usize::from(self.u8() & 3)]
    }
    pub(crate) fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// One VM's PCI surface.
pub struct Surface {
    mem: GuestMemory,
    cf8: PciConfigIo,
    ecam: PciConfigMmio,
    window: PciBarWindow,
    disk: FuzzDisk,
    avail_idx: u16,
}

impl Surface {
    /// A bus with a virtio-blk device (on `engine`) at 00:01.0, BAR 0 at
    /// `BAR`, memory decoding on; the image is a fresh 1 MiB file.
    pub fn new(engine: EngineKind) -> Surface {
        let (disk, mem, block) = fuzz_block("pci", engine);
        let bus = bus_with(block, &mem);
        let mut s = Surface {
            cf8: PciConfigIo::new(bus.clone()),
            ecam: PciConfigMmio::new(bus.clone()),
            window: PciBarWindow::new(bus.clone(), BAR),
            mem,
            disk,
            avail_idx: 0,
        };
        s.ecam.write(1 << 15 | 4, &[0x6, 0]);
        s
    }

    /// The device's counters: how far inputs got (requests served, refused).
    pub fn metrics(&self) -> &BlockMetrics {
        &self.disk.metrics
    }

    fn bar_write(&mut self, off: u64, value: u64, len: usize) {
        self.window.write(off, &value.to_le_bytes()[..len]);
    }

    fn bar_read(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.window.read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// A complete, valid driver initialisation of queue 0 (rings zeroed).
    fn init_driver(&mut self, inp: &mut Input) {
        if !self.reset() {
            panic!("reset never completed");
        }
        clear_rings(&self.mem);
        self.bar_write(
            DEVICE_STATUS,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
            1,
        );
        let mut features = 0u64;
        for sel in 0..2 {
            self.bar_write(DEVICE_FEATURE_SELECT, sel, 4);
            features |= self.bar_read(DEVICE_FEATURE, 4) << (32 * sel);
        }
        // Drop some offered features (FLUSH, EVENT_IDX, ...) but keep VERSION_1.
        let features = features & !(u64::from(inp.u32()) & 0x2fff_ffff);
        for sel in 0..2 {
            self.bar_write(DRIVER_FEATURE_SELECT, sel, 4);
            self.bar_write(DRIVER_FEATURE, features >> (32 * sel) & 0xffff_ffff, 4);
        }
        self.bar_write(DEVICE_STATUS, u64::from(STATUS_FEATURES_OK), 1);
        self.bar_write(QUEUE_SELECT, 0, 2);
        self.bar_write(QUEUE_SIZE, u64::from(QSIZE), 2);
        self.bar_write(QUEUE_DESC, DESC, 8);
        self.bar_write(QUEUE_DRIVER, AVAIL, 8);
        self.bar_write(QUEUE_DEVICE, USED, 8);
        self.bar_write(QUEUE_MSIX_VECTOR, u64::from(inp.u8() & 3), 2);
        self.bar_write(QUEUE_ENABLE, 1, 2);
        self.bar_write(DEVICE_STATUS, u64::from(STATUS_DRIVER_OK), 1);
    }

    /// A chain of 1 to 4 descriptors from the input on queue 0, kicked.
    fn request(&mut self, inp: &mut Input) {
        queue_request(&self.mem, &mut self.avail_idx, inp);
        self.bar_write(NOTIFY, 0, 2);
        wait_used(&self.mem, self.avail_idx);
    }
}

impl GuestSurface for Surface {
    /// Write a reset and poll device_status until it reads 0; false if it
    /// never does (a hang).
    fn reset(&mut self) -> bool {
        // Put BAR 0 back where the window reaches it, decoding on.
        self.ecam.write(1 << 15 | 0x10, &(BAR as u32).to_le_bytes());
        self.ecam.write(1 << 15 | 4, &[0x6, 0]);
        self.bar_write(DEVICE_STATUS, 0, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.bar_read(DEVICE_STATUS, 1) != 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        self.avail_idx = 0;
        true
    }

    fn disk(&self) -> &FuzzDisk {
        &self.disk
    }

    fn step(&mut self, tag: u8, inp: &mut Input) {
        match tag {
            0 => {
                let a = 0x8000_0000
                    | u32::from(inp.u16()) << 2 & 0xfffc
                    | (u32::from(inp.u8() & 3)) << 11;
                self.cf8.write(0, &a.to_le_bytes());
            }
            1 => {
                let (w, off) = (inp.width().min(4), u64::from(inp.u8() & 3));
                let v = inp.u32();
                if inp.u8() & 1 == 0 {
                    let mut b = [0u8; 4];
                    self.cf8.read(4 + off, &mut b[..w]);
                } else {
                    self.cf8.write(4 + off, &v.to_le_bytes()[..w]);
                }
            }
            2 | 3 => {
                let dev = u64::from(inp.u8() % 3);
                let off = dev << 15 | u64::from(inp.u16() & 0xfff);
                let w = inp.width().min(4);
                let v = inp.u32();
                if inp.u8() & 1 == 0 {
                    let mut b = [0u8; 4];
                    self.ecam.read(off, &mut b[..w]);
                } else {
                    self.ecam.write(off, &v.to_le_bytes()[..w]);
                }
            }
            4 | 5 => {
                let off = match inp.u8() % 4 {
                    0 => u64::from(inp.u8() % 0x38),
                    1 => 0x1000 + u64::from(inp.u8() & 7),
                    2 => 0x2000 + u64::from(inp.u8()),
                    _ => u64::from(inp.u16()),
                };
                let w = inp.width();
                let v = inp.u64();
                if inp.u8() & 1 == 0 {
                    self.bar_read(off, w);
                } else {
                    self.bar_write(off, v, w);
                }
            }
            6 => {
                // MSI-X table and PBA.
                let off = 0x4000 + u64::from(inp.u16() % 0x2100);
                let v = inp.u32();
                if inp.u8() & 1 == 0 {
                    self.bar_read(off & !3, 4);
                } else {
                    self.bar_write(off & !3, u64::from(v), 4);
                }
            }
            7 => {
                // BAR 0 sizing, or a move (and back), or decoding toggled.
                let v = match inp.u8() % 3 {
                    0 => 0xffff_ffff,
                    1 => (BAR as u32).wrapping_add(u32::from(inp.u8()) << 15),
                    _ => BAR as u32,
                };
                self.ecam.write(1 << 15 | 0x10, &v.to_le_bytes());
                let cmd = [0x6u8, 0x0, 0x2][usize::from(inp.u8() % 3)];
                self.ecam.write(1 << 15 | 4, &[cmd, 0]);
            }
            8 => self.init_driver(inp),
            9 | 10 => self.request(inp),
            _ => {
                if !self.reset() {
                    panic!("reset never completed");
                }
            }
        }
    }
}

/// A guest-facing surface the harnesses drive (PCI: `Surface`, MMIO:
/// `MmioSurface`): op 8 is a driver initialisation, ops 9 and 10 a request.
pub(crate) trait GuestSurface {
    /// Run the op `tag` (0 to 11) with its operands from `inp`.
    fn step(&mut self, tag: u8, inp: &mut Input);
    /// Reset the device and poll until it is done; false if it never is.
    fn reset(&mut self) -> bool;
    fn disk(&self) -> &FuzzDisk;

    /// Run a whole input and check the invariants (module comment).
    fn run(&mut self, data: &[u8]) {
        let mut inp = Input::new(data);
        let mut ops = 0;
        while ops < 256 && !inp.done() {
            let tag = inp.u8() % 12;
            self.step(tag, &mut inp);
            ops += 1;
        }
        assert!(self.reset(), "the final reset never completed");
        assert_image_len(&self.disk().image);
    }
}

/// The image behind a harness's virtio-blk and the device's counters (how
/// deep inputs got); the image is removed on drop.
pub(crate) struct FuzzDisk {
    pub(crate) image: PathBuf,
    pub(crate) metrics: Arc<BlockMetrics>,
}

impl Drop for FuzzDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.image);
    }
}

/// A fresh 1 MiB image, 16 MiB of guest memory and a virtio-blk device on
/// `engine` over the image.
pub(crate) fn fuzz_block(what: &str, engine: EngineKind) -> (FuzzDisk, GuestMemory, Block) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let image = std::env::temp_dir().join(format!("vireo-{what}-fuzz-{}-{n}", std::process::id()));
    let file = std::fs::File::create(&image).expect("fuzz image");
    file.set_len(IMAGE_LEN).expect("fuzz image size");
    let mem = memory::create_guest_memory(16).expect("guest memory");
    let mut block = Block::new(&image, false, Some("fuzz".into()), 2).expect("block device");
    block.set_engine(engine);
    let metrics = block.metrics();
    (FuzzDisk { image, metrics }, mem, block)
}

/// After an input: the image kept its length.
pub(crate) fn assert_image_len(image: &std::path::Path) {
    let len = std::fs::metadata(image).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, IMAGE_LEN, "the image changed size");
}

/// The engine byte 0 of a cargo-fuzz input picks.
pub(crate) fn engine_of(data: &[u8]) -> EngineKind {
    match data.first().copied().unwrap_or(0) % 3 {
        0 => EngineKind::Sync,
        1 => EngineKind::Pool,
        _ => EngineKind::IoUring,
    }
}

/// Queue 0's rings zeroed, as a driver initialisation leaves them.
pub(crate) fn clear_rings(mem: &GuestMemory) {
    let _ = mem.write_slice(&[0u8; 0x3000], GuestAddress(DESC));
}

/// Write a chain of 1 to 4 descriptors from the input into queue 0 (at
/// `DESC`, `AVAIL`) and make it available; the caller kicks.
pub(crate) fn queue_request(mem: &GuestMemory, avail_idx: &mut u16, inp: &mut Input) {
    let header = REQ_AREA;
    let req_type = [0u32, 1, 4, 8, 11, 13, inp.u32()][usize::from(inp.u8() % 7)];
    let sector = u64::from(inp.u16()) % (IMAGE_LEN / 512 + 4);
    let _ = mem.write_obj(req_type, GuestAddress(header));
    let _ = mem.write_obj(sector, GuestAddress(header + 8));
    let n = 1 + u16::from(inp.u8() % 4).max(2);
    let head = avail_idx.wrapping_mul(4) % QSIZE;
    // Mostly well-formed chains (directions matching the type, a status
    // byte last); `chaos` lets some through with anything.
    let chaos = inp.u8() < 48;
    let data_writable = matches!(req_type, 0 | 8);
    for k in 0..n {
        let sel = inp.u8();
        let last = k == n - 1 && k > 0;
        let (addr, len) = match k {
            0 => (header, 16),
            _ if last && !(chaos && sel & 1 != 0) => (REQ_AREA + 0x100, 1),
            _ => {
                let len = [512u32, 4096, 0x1_0000, inp.u32()][usize::from(sel >> 6)];
                let addr = match sel & 0x30 {
                    0x30 => inp.u64(),
                    // Straddles the end of RAM.
                    0x20 => (16 << 20) - 256,
                    _ => REQ_AREA + 0x1000 * u64::from(1 + (sel & 7)),
                };
                (addr, len)
            }
        };
        let writable = if last { true } else { k > 0 && data_writable };
        let mut flags = if chaos {
            u16::from(inp.u8() & 7)
        } else if writable {
            2 // WRITE
        } else {
            0
        };
        if k + 1 < n {
            flags |= 1; // NEXT
        }
        let next = (head + k + 1) % QSIZE;
        let at = GuestAddress(DESC + 16 * u64::from((head + k) % QSIZE));
        let _ = mem.write_obj(addr, at);
        let _ = mem.write_obj(len, GuestAddress(at.0 + 8));
        let _ = mem.write_obj(flags, GuestAddress(at.0 + 12));
        let _ = mem.write_obj(next, GuestAddress(at.0 + 14));
    }
    let slot = AVAIL + 4 + 2 * u64::from(*avail_idx % QSIZE);
    let _ = mem.write_obj(head, GuestAddress(slot));
    *avail_idx = avail_idx.wrapping_add(1);
    let _ = mem.write_obj(*avail_idx, GuestAddress(AVAIL + 2));
}

/// After a kick: wait (briefly) for the completion, like a driver.
pub(crate) fn wait_used(mem: &GuestMemory, avail_idx: u16) {
    // Like a driver, wait (briefly) for the completion, so requests
    // reach the disk before a later op resets the device.
    let deadline = Instant::now() + Duration::from_millis(2);
    while Instant::now() < deadline {
        let used: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap_or(0);
        if used == avail_idx {
            break;
        }
        std::thread::yield_now();
    }
}

/// A PCI bus with `block` behind the virtio-pci transport at 00:01.0, BAR 0
/// at `BAR` (memory decoding still off), on test doubles for KVM.
pub fn bus_with(block: Block, mem: &GuestMemory) -> SharedPciBus {
    let vectors = VirtioPciDevice::msix_vectors(&block);
    let dev = VirtioPciDevice::new(
        Box::new(block),
        mem.clone(),
        VirtioPciResources {
            bar_kind: BarKind::Memory32,
            bar_addr: BAR,
            gsis: (0..u32::from(vectors)).map(|v| 24 + v).collect(),
            msi_router: Arc::new(NoHypervisor),
            ioevents: Arc::new(NoHypervisor),
        },
    )
    .expect("virtio-pci device");
    let bus = Arc::new(Mutex::new(PciBus::new()));
    lock(&bus)
        .add_device(Arc::new(Mutex::new(dev)))
        .expect("slot");
    bus
}

/// The cargo-fuzz entry: byte 0 picks the engine.
pub fn fuzz_one(data: &[u8]) {
    Surface::new(engine_of(data)).run(data.get(1..).unwrap_or(&[]));
}

/// Fuzz-lite: `iterations` seeded inputs biased towards driver inits and
/// requests, spread over `targets`; returns (reads, writes, refused).
#[cfg(test)]
pub(crate) fn fuzz_lite(targets: &mut [Box<dyn GuestSurface>], iterations: u64) -> (u64, u64, u64) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..iterations {
        // A driver init, then a mix of requests (mostly well-formed:
        // the chaos byte, 10th of the op, high) and random register
        // accesses, BAR moves and resets.
        let mut data = vec![8u8, 0, 0, 0, 0, 0];
        if next() % 8 == 0 {
            data.clear();
        }
        for _ in 0..(next() % 40) {
            let kind = next() % 10;
            if kind < 6 {
                data.push(9);
                data.extend((0..8).map(|_| next() as u8));
                data.push(if next() % 5 == 0 { 0 } else { 200 });
                data.extend((0..8).map(|_| (next() as u8) & 0xcf));
            } else {
                data.extend((0..12).map(|_| next() as u8));
            }
        }
        let n = targets.len();
        targets[(i as usize) % n].run(&data);
    }
    let m = |f: fn(&BlockMetrics) -> &std::sync::atomic::AtomicU64| {
        targets
            .iter()
            .map(|s| BlockMetrics::get(f(&s.disk().metrics)))
            .sum::<u64>()
    };
    (
        m(|m| &m.reads),
        m(|m| &m.writes),
        m(|m| &m.invalid_requests),
    )
}

/// Iterations of a fuzz-lite test: 400, or `VIREO_PCI_FUZZ_ITERATIONS`.
#[cfg(test)]
pub(crate) fn fuzz_lite_iterations() -> u64 {
    std::env::var("VIREO_PCI_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

/// The fuzz-lite test of a surface: `fuzz_lite` over one surface per
/// engine, asserting that requests really reached the disk.
#[cfg(test)]
pub(crate) fn fuzz_lite_on_every_engine(
    what: &str,
    make: impl Fn(EngineKind) -> Box<dyn GuestSurface>,
) {
    let iterations = fuzz_lite_iterations();
    let mut surfaces: Vec<Box<dyn GuestSurface>> =
        [EngineKind::Sync, EngineKind::Pool, EngineKind::IoUring]
            .into_iter()
            .map(make)
            .collect();
    let (reads, writes, invalid) = fuzz_lite(&mut surfaces, iterations);
    println!("{iterations} inputs through the {what} surface: {reads} reads, {writes} writes, {invalid} refused requests");
    // The generator must reach the device, not stop at the transport.
    assert!(reads > 0 && writes > 0 && invalid > 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_access_sequences_never_panic_hang_or_resize_the_image() {
        fuzz_lite_on_every_engine("PCI", |e| Box::new(Surface::new(e)));
    }
}
