//! Device-level tests: real temp files and real guest memory, chains built
//! by a mock driver, served by the worker (synchronously through
//! `run_once`, or by the device thread after `activate`).

use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress};

use super::engine::Engine;
use super::metrics::BlockMetrics;
use super::test_utils::*;
use super::worker::{Worker, WorkerQueue};
use super::*;
use crate::virtio::VirtioDevice;
use virtio_queue::QueueT;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
const IMG: u64 = 1 << 20;

#[test]
fn read_returns_file_data() {
    for engine in ALL_ENGINES {
        println!("engine {engine:?}");
        let img = TempImage::patterned(IMG);
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let irq = Arc::new(TestInterrupt::default());
        let mut w = d.worker_on(img.disk(false), irq.clone(), engine);
        let r = d.read(3, 4096);
        w.run_once();
        assert_eq!(d.status(&r), OK);
        assert_eq!(d.bytes(r.data, 4096), img.read_at(3 * 512, 4096));
        assert_eq!(d.used_len(r.head), 4097);
        assert_eq!(irq.signals(), 1);
    }
}

#[test]
fn read_into_buffer_straddling_two_memory_regions() {
    let img = TempImage::patterned(IMG);
    let mem = guest_memory();
    let mut d = Driver::new(&mem, QUEUE_SIZE);
    let mut w = d.worker(img.disk(false), Arc::new(TestInterrupt::default()));
    d.set_alloc(REGION - 1024);
    let r = d.read(0, 2048);
    w.run_once();
    assert_eq!(d.status(&r), OK);
    assert_eq!(d.bytes(r.data, 2048), img.read_at(0, 2048));
}

#[test]
fn write_lands_in_file_and_flush_succeeds() {
    for engine in ALL_ENGINES {
        println!("engine {engine:?}");
        let img = TempImage::patterned(IMG);
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let metrics = Arc::new(BlockMetrics::default());
        let mut w = d.worker_with(
            img.disk(false),
            Arc::new(TestInterrupt::default()),
            metrics.clone(),
            engine,
        );
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        let wr = d.write(10, &data);
        let fl = d.bare(VIRTIO_BLK_T_FLUSH);
        w.run_once();
        assert_eq!(d.status(&wr), OK);
        assert_eq!(d.used_len(wr.head), 1);
        assert_eq!(d.status(&fl), OK);
        assert_eq!(img.read_at(10 * 512, 8192), data);
        assert_eq!(img.read_at(9 * 512, 512), vec![pattern_byte(9); 512]);
        assert_eq!(BlockMetrics::get(&metrics.write_bytes), 8192);
        assert_eq!(BlockMetrics::get(&metrics.flushes), 1);
    }
}

#[test]
fn get_id_is_nul_padded_and_truncated_to_the_buffer() {
    let img = TempImage::patterned(IMG);
    let mem = guest_memory();
    let mut d = Driver::new(&mem, QUEUE_SIZE);
    let mut w = d.worker(img.disk(false), Arc::new(TestInterrupt::default()));
    let full = d.get_id(20);
    let short = d.get_id(4);
    w.run_once();
    assert_eq!(d.status(&full), OK);
    let mut want = b"test-disk".to_vec();
    want.resize(20, 0);
    assert_eq!(d.bytes(full.data, 20), want);
    assert_eq!(d.used_len(full.head), 21);
    assert_eq!(d.status(&short), OK);
    assert_eq!(d.bytes(short.data, 4), b"test");
}

#[test]
fn default_id_is_derived_from_the_file() {
    let img = TempImage::patterned(IMG);
    let disk = Disk::open(&img.path, false, None).unwrap();
    assert!(disk.id()[0] != 0);
}

#[test]
fn discard_punches_a_hole() {
    for engine in ALL_ENGINES {
        println!("engine {engine:?}");
        let img = TempImage::patterned(IMG);
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let mut w = d.worker_on(img.disk(false), Arc::new(TestInterrupt::default()), engine);
        let before = img.blocks();
        let r = d.zero_range(VIRTIO_BLK_T_DISCARD, 0, 1024, 0);
        w.run_once();
        assert_eq!(d.status(&r), OK);
        assert!(img.blocks() < before, "{} -> {}", before, img.blocks());
        assert_eq!(img.read_at(0, 4096), vec![0; 4096]);
        assert_eq!(std::fs::metadata(&img.path).unwrap().len(), IMG);
    }
}

#[test]
fn write_zeroes_zeroes_and_unmaps_when_allowed() {
    for engine in ALL_ENGINES {
        println!("engine {engine:?}");
        let img = TempImage::patterned(IMG);
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let mut w = d.worker_on(img.disk(false), Arc::new(TestInterrupt::default()), engine);
        let before = img.blocks();
        let keep = d.zero_range(VIRTIO_BLK_T_WRITE_ZEROES, 8, 8, 0);
        w.run_once();
        assert_eq!(d.status(&keep), OK);
        assert_eq!(img.read_at(8 * 512, 4096), vec![0; 4096]);
        assert_eq!(img.read_at(16 * 512, 512), vec![pattern_byte(16); 512]);
        let unmap = d.zero_range(
            VIRTIO_BLK_T_WRITE_ZEROES,
            64,
            512,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        );
        w.run_once();
        assert_eq!(d.status(&unmap), OK);
        assert_eq!(img.read_at(64 * 512, 512 * 512), vec![0; 512 * 512]);
        assert!(img.blocks() < before);
    }
}

#[test]
fn read_only_disk_refuses_writes_discard_and_write_zeroes() {
    for engine in ALL_ENGINES {
        println!("engine {engine:?}");
        let img = TempImage::patterned(IMG);
        let orig = img.contents();
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let mut w = d.worker_on(img.disk(true), Arc::new(TestInterrupt::default()), engine);
        let wr = d.write(0, &[1u8; 512]);
        let di = d.zero_range(VIRTIO_BLK_T_DISCARD, 0, 8, 0);
        let wz = d.zero_range(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0);
        let rd = d.read(0, 512);
        let fl = d.bare(VIRTIO_BLK_T_FLUSH);
        w.run_once();
        assert_eq!(d.status(&wr), IOERR);
        assert_eq!(d.status(&di), IOERR);
        assert_eq!(d.status(&wz), IOERR);
        assert_eq!(d.status(&rd), OK);
        assert_eq!(d.status(&fl), OK);
        assert_eq!(img.contents(), orig);
        let block = Block::new(&img.path, true, None, 1).unwrap();
        assert_ne!(block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    }
}

#[test]
fn unsupported_type_and_flags_answer_unsupp() {
    for engine in ALL_ENGINES {
        println!("engine {engine:?}");
        let img = TempImage::patterned(IMG);
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let mut w = d.worker_on(img.disk(false), Arc::new(TestInterrupt::default()), engine);
        let t = d.bare(VIRTIO_BLK_T_SCSI_CMD);
        let z = d.bare(VIRTIO_BLK_T_ZONE_REPORT);
        let unmap_discard = d.zero_range(VIRTIO_BLK_T_DISCARD, 0, 8, 1);
        let bad_flag = d.zero_range(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 2);
        w.run_once();
        for r in [t, z, unmap_discard, bad_flag] {
            assert_eq!(d.status(&r), UNSUPP);
            assert_eq!(d.used_len(r.head), 1);
        }
    }
}

/// Every malformed request fails with IOERR, never touches the image, and
/// the device goes on serving the next request.
#[test]
fn malformed_requests_fail_and_leave_the_image_alone() {
    for engine in ALL_ENGINES {
        println!("engine {engine:?}");
        let img = TempImage::patterned(IMG);
        let orig = img.contents();
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let mut w = d.worker_on(img.disk(false), Arc::new(TestInterrupt::default()), engine);
        let sectors = IMG / 512;
        let mut bad = vec![
            d.write(sectors, &[1; 512]),        // starts past the end
            d.write(sectors - 1, &[1; 1024]),   // reaches past the end
            d.write(u64::MAX / 256, &[1; 512]), // sector * 512 overflows
            d.write(u64::MAX, &[1; 512]),       // sector * 512 overflows
            d.write(0, &[1; 100]),              // not a multiple of 512
            d.read(sectors, 512),               // read past the end
            d.zero_range(VIRTIO_BLK_T_WRITE_ZEROES, sectors - 4, 8, 0),
            d.zero_range(VIRTIO_BLK_T_DISCARD, u64::MAX, 8, 0),
            d.zero_range(VIRTIO_BLK_T_DISCARD, 0, u32::MAX, 0), // too many sectors
        ];
        // Data descriptor outside guest memory.
        let h = d.header(VIRTIO_BLK_T_OUT, 0);
        let s = d.status_byte();
        let head = d.add_chain(&[
            (h, 16, false),
            (GuestAddress(4 * REGION), 512, false),
            (s, 1, true),
        ]);
        bad.push(Req {
            head,
            data: s,
            status: s,
        });
        // Address + length wraps around the address space.
        let h = d.header(VIRTIO_BLK_T_IN, 0);
        let s = d.status_byte();
        let head = d.add_chain(&[
            (h, 16, false),
            (GuestAddress(u64::MAX - 10), 512, true),
            (s, 1, true),
        ]);
        bad.push(Req {
            head,
            data: s,
            status: s,
        });
        // Read whose data descriptor is device-readable (wrong direction).
        let h = d.header(VIRTIO_BLK_T_IN, 0);
        let data = d.alloc(512);
        let s = d.status_byte();
        let head = d.add_chain(&[(h, 16, false), (data, 512, false), (s, 1, true)]);
        bad.push(Req {
            head,
            data,
            status: s,
        });
        // Write whose data is device-writable (wrong direction).
        let h = d.header(VIRTIO_BLK_T_OUT, 0);
        let data = d.alloc(512);
        let s = d.status_byte();
        let head = d.add_chain(&[(h, 16, false), (data, 512, true), (s, 1, true)]);
        bad.push(Req {
            head,
            data,
            status: s,
        });
        // Readable descriptor after a writable one.
        let h = d.header(VIRTIO_BLK_T_OUT, 0);
        let data = d.alloc(512);
        let s = d.status_byte();
        let head = d.add_chain(&[
            (h, 16, false),
            (s, 1, true),
            (data, 512, false),
            (s, 1, true),
        ]);
        bad.push(Req {
            head,
            data,
            status: s,
        });
        // Header shorter than 16 bytes.
        let h = d.header(VIRTIO_BLK_T_IN, 0);
        let s = d.status_byte();
        let head = d.add_chain(&[(h, 8, false), (s, 1, true)]);
        bad.push(Req {
            head,
            data: s,
            status: s,
        });
        // Two discard ranges (max_discard_seg is 1).
        let h = d.header(VIRTIO_BLK_T_DISCARD, 0);
        let data = d.alloc(32);
        let s = d.status_byte();
        let head = d.add_chain(&[(h, 16, false), (data, 32, false), (s, 1, true)]);
        bad.push(Req {
            head,
            data,
            status: s,
        });
        let good = d.read(1, 512);

        w.run_once();
        for (i, r) in bad.iter().enumerate() {
            assert_eq!(d.status(r), IOERR, "request {i}");
            assert_eq!(d.used_len(r.head), 1, "request {i}");
        }
        assert_eq!(d.status(&good), OK);
        assert_eq!(img.contents(), orig);
    }
}

/// Chains with no usable status byte are returned with length 0.
#[test]
fn broken_chains_are_returned_without_status() {
    for engine in ALL_ENGINES {
        println!("engine {engine:?}");
        let img = TempImage::patterned(IMG);
        let orig = img.contents();
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let mut w = d.worker_on(img.disk(false), Arc::new(TestInterrupt::default()), engine);
        let next = VRING_DESC_F_NEXT as u16;
        let wr = VRING_DESC_F_WRITE as u16;
        let h = d.header(VIRTIO_BLK_T_OUT, 0);
        let s = d.status_byte();
        // A loop: i -> i+1 -> i.
        let i = d.next_index();
        d.put_raw(&[(h.0, 16, next, i + 1), (s.0, 1, wr | next, i)]);
        d.make_available(i);
        // A next index beyond the queue.
        let idx = d.put_raw(&[(h.0, 16, next, 300)]);
        d.make_available(idx[0]);
        // Last descriptor is readable: no status.
        let idx = d.put_raw(&[(h.0, 16, 0, 0)]);
        d.make_available(idx[0]);
        // Status descriptor of length 0.
        let i = d.next_index();
        d.put_raw(&[(h.0, 16, next, i + 1), (s.0, 0, wr, 0)]);
        d.make_available(i);
        // A chain through an indirect table outside memory.
        let idx = d.put_raw(&[(4 * REGION, 64, VRING_DESC_F_INDIRECT as u16, 0)]);
        d.make_available(idx[0]);
        // A head index beyond the queue size.
        d.make_available(QUEUE_SIZE + 5);
        let good = d.read(2, 512);
        w.run_once();
        assert_eq!(d.status(&good), OK);
        for i in 0..d.used_idx() {
            let (id, len) = d.used(i);
            if id != u32::from(good.head) {
                assert_eq!(len, 0, "used entry {i} (head {id})");
            }
        }
        // Five broken chains and the good one; the bad head index cannot be put
        // on the used ring.
        assert_eq!(d.used_idx(), 6);
        assert_eq!(mem.read_obj::<u8>(s).unwrap(), 0xff);
        assert_eq!(img.contents(), orig);
    }
}

#[test]
fn too_long_chain_fails() {
    let img = TempImage::patterned(IMG);
    let mem = guest_memory();
    let mut d = Driver::new(&mem, QUEUE_SIZE);
    let mut w = d.worker(img.disk(false), Arc::new(TestInterrupt::default()));
    // An indirect table of 300 descriptors (more than MAX_DESCRIPTORS).
    let table = d.alloc(300 * 16);
    let h = d.header(VIRTIO_BLK_T_IN, 0);
    let s = d.status_byte();
    for i in 0..300u64 {
        let (addr, len, flags) = match i {
            0 => (h.0, 16, 0),
            299 => (s.0, 1, VRING_DESC_F_WRITE),
            _ => (d.alloc(512).0, 512, VRING_DESC_F_WRITE),
        };
        let flags = flags as u16 | if i < 299 { VRING_DESC_F_NEXT as u16 } else { 0 };
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
        mem.write_slice(&raw, table.unchecked_add(i * 16)).unwrap();
    }
    let idx = d.put_raw(&[(table.0, 300 * 16, VRING_DESC_F_INDIRECT as u16, 0)]);
    d.make_available(idx[0]);
    w.run_once();
    assert_eq!(d.used_len(idx[0]), 0);
    assert_eq!(mem.read_obj::<u8>(s).unwrap(), 0xff);
}

#[test]
fn indirect_chain_is_served() {
    let img = TempImage::patterned(IMG);
    let mem = guest_memory();
    let mut d = Driver::new(&mem, QUEUE_SIZE);
    let mut w = d.worker(img.disk(false), Arc::new(TestInterrupt::default()));
    let table = d.alloc(48);
    let h = d.header(VIRTIO_BLK_T_IN, 5);
    let data = d.alloc(1024);
    let s = d.status_byte();
    let entries = [
        (h.0, 16u32, VRING_DESC_F_NEXT as u16, 1u16),
        (
            data.0,
            1024,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            2,
        ),
        (s.0, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, (a, l, f, n)) in entries.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&a.to_le_bytes());
        raw[8..12].copy_from_slice(&l.to_le_bytes());
        raw[12..14].copy_from_slice(&f.to_le_bytes());
        raw[14..16].copy_from_slice(&n.to_le_bytes());
        mem.write_slice(&raw, table.unchecked_add(i as u64 * 16))
            .unwrap();
    }
    let idx = d.put_raw(&[(table.0, 48, VRING_DESC_F_INDIRECT as u16, 0)]);
    d.make_available(idx[0]);
    w.run_once();
    assert_eq!(mem.read_obj::<u8>(s).unwrap(), OK);
    assert_eq!(d.bytes(data, 1024), img.read_at(5 * 512, 1024));
}

#[test]
fn many_requests_complete_with_one_interrupt_per_batch() {
    for engine in ALL_ENGINES {
        println!("engine {engine:?}");
        let img = TempImage::patterned(IMG);
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let irq = Arc::new(TestInterrupt::default());
        let mut w = d.worker_on(img.disk(false), irq.clone(), engine);
        let reqs: Vec<_> = (0..50).map(|i| d.read(i, 512)).collect();
        w.run_once();
        assert!(reqs.iter().all(|r| d.status(r) == OK));
        assert_eq!(d.used_idx(), 50);
        assert_eq!(irq.signals(), 1);
    }
}

/// With EVENT_IDX the device signals only when the used index passes the
/// driver's used_event.
#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let _ = VIRTIO_RING_F_EVENT_IDX;
    let img = TempImage::patterned(IMG);
    let mem = guest_memory();
    let mut d = Driver::new(&mem, QUEUE_SIZE);
    let irq = Arc::new(TestInterrupt::default());
    let disk = img.disk(false);
    let mut queue = d.queue();
    queue.set_event_idx(true);
    let mut w = Worker::new(
        mem.clone(),
        disk.clone(),
        vec![WorkerQueue {
            index: 0,
            queue,
            kick: None,
        }],
        irq.clone(),
        Engine::new(disk, EngineKind::Sync, 256),
        Arc::new(BlockMetrics::default()),
        false,
    );
    // used_event lives right after the avail ring.
    let used_event = d
        .mock
        .avail_addr()
        .unchecked_add(4 + 2 * u64::from(QUEUE_SIZE));
    mem.write_obj(9u16, used_event).unwrap();
    d.read(0, 512);
    w.run_once();
    assert_eq!(irq.signals(), 0);
    for i in 0..9 {
        d.read(i, 512);
    }
    w.run_once();
    assert_eq!(d.used_idx(), 10);
    assert_eq!(irq.signals(), 1);
    // The device also published avail_event (after the used ring) so the
    // driver knows when to kick.
    let avail_event = d
        .mock
        .used_addr()
        .unchecked_add(4 + 8 * u64::from(QUEUE_SIZE));
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 10);
}

use vm_memory::Address;

/// Every engine through the same requests, served by `run_once`.
#[test]
fn all_engines_serve_every_request_type() {
    for engine in ALL_ENGINES {
        let img = TempImage::patterned(IMG);
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let metrics = Arc::new(BlockMetrics::default());
        let irq = Arc::new(TestInterrupt::default());
        let mut w = d.worker_with(img.disk(false), irq, metrics.clone(), engine);
        let data = vec![0x77u8; 65536];
        let wr = d.write(100, &data);
        let rd = d.read(50, 8192);
        let fl = d.bare(VIRTIO_BLK_T_FLUSH);
        let id = d.get_id(20);
        let di = d.zero_range(VIRTIO_BLK_T_DISCARD, 512, 256, 0);
        let wz = d.zero_range(VIRTIO_BLK_T_WRITE_ZEROES, 1024, 8, 0);
        let bad = d.read(IMG / 512, 512);
        w.run_once();
        for r in [wr, rd, fl, id, di, wz] {
            assert_eq!(d.status(&r), OK, "{engine:?}");
        }
        assert_eq!(d.status(&bad), IOERR);
        assert_eq!(img.read_at(100 * 512, 65536), data);
        assert_eq!(d.bytes(rd.data, 8192), img.read_at(50 * 512, 8192));
        assert_eq!(img.read_at(512 * 512, 256 * 512), vec![0; 256 * 512]);
        assert_eq!(img.read_at(1024 * 512, 8 * 512), vec![0; 8 * 512]);
        assert_eq!(BlockMetrics::get(&metrics.io_errors), 0);
        assert_eq!(BlockMetrics::get(&metrics.invalid_requests), 1);
    }
}

/// tmpfs has no FALLOC_FL_ZERO_RANGE: WRITE_ZEROES falls back to writing
/// zeros (from every engine).
#[test]
fn write_zeroes_falls_back_where_zero_range_is_unsupported() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        println!("no /dev/shm, skipped");
        return;
    }
    for engine in ALL_ENGINES {
        let img = TempImage::patterned(IMG);
        let path = shm.join(img.path.file_name().unwrap());
        std::fs::copy(&img.path, &path).unwrap();
        let disk = Arc::new(Disk::open(&path, false, None).unwrap());
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let irq = Arc::new(TestInterrupt::default());
        let mut w = d.worker_with(disk, irq, Arc::new(BlockMetrics::default()), engine);
        let wz = d.zero_range(VIRTIO_BLK_T_WRITE_ZEROES, 16, 16, 0);
        let di = d.zero_range(VIRTIO_BLK_T_DISCARD, 64, 16, 0);
        w.run_once();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(d.status(&wz), OK, "{engine:?}");
        assert_eq!(d.status(&di), OK, "{engine:?}");
        assert_eq!(bytes[16 * 512..32 * 512], [0; 16 * 512]);
        assert_eq!(bytes[64 * 512..80 * 512], [0; 16 * 512]);
        assert_eq!(bytes[32 * 512], pattern_byte(32));
    }
}

/// The image shrinking under a running device turns reads past its new end
/// into IOERR instead of garbage or a hang.
#[test]
fn read_past_a_truncated_image_fails() {
    for engine in ALL_ENGINES {
        let img = TempImage::patterned(IMG);
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let irq = Arc::new(TestInterrupt::default());
        let mut w = d.worker_with(
            img.disk(false),
            irq,
            Arc::new(BlockMetrics::default()),
            engine,
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .unwrap()
            .set_len(IMG / 2 + 1024)
            .unwrap();
        let beyond = d.read(IMG / 512 - 8, 4096);
        let partly = d.read(IMG / 1024, 4096);
        w.run_once();
        assert_eq!(d.status(&beyond), IOERR, "{engine:?}");
        assert_eq!(d.status(&partly), IOERR, "{engine:?}");
    }
}

/// The layout is not assumed: header and data may share a descriptor, the
/// header may be split, data and status may share one.
#[test]
fn any_layout_is_accepted() {
    let img = TempImage::patterned(IMG);
    let mem = guest_memory();
    let mut d = Driver::new(&mem, QUEUE_SIZE);
    let mut w = d.worker(img.disk(false), Arc::new(TestInterrupt::default()));
    // Write: header + 512 bytes of data in one readable descriptor.
    let buf = d.alloc(16 + 512);
    let mut bytes = vec![0u8; 16 + 512];
    bytes[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    bytes[8..16].copy_from_slice(&7u64.to_le_bytes());
    bytes[16..].fill(0x3c);
    mem.write_slice(&bytes, buf).unwrap();
    let s1 = d.status_byte();
    let w1 = d.add_chain(&[(buf, 16 + 512, false), (s1, 1, true)]);
    // Read: header split 10 + 6, data and status in one writable descriptor.
    let h = d.header(VIRTIO_BLK_T_IN, 7);
    let out = d.alloc(513);
    let r1 = d.add_chain(&[
        (h, 10, false),
        (h.unchecked_add(10), 6, false),
        (out, 513, true),
    ]);
    w.run_once();
    assert_eq!(mem.read_obj::<u8>(s1).unwrap(), OK);
    assert_eq!(img.read_at(7 * 512, 512), vec![0x3c; 512]);
    assert_eq!(d.used_len(w1), 1);
    assert_eq!(d.bytes(out, 512), vec![0x3c; 512]);
    assert_eq!(mem.read_obj::<u8>(out.unchecked_add(512)).unwrap(), OK);
    assert_eq!(d.used_len(r1), 513);
}

/// Many requests in flight at once on two queues, served by a real device
/// thread (kicks and engine completions through its epoll): every engine
/// completes them all, writes land where they should, and reads return the
/// right bytes, including data written by the previous batch on the other
/// queue.
#[test]
fn many_concurrent_requests_complete_with_correct_data() {
    use crate::virtio::ActiveQueue;
    use std::time::{Duration, Instant};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const WRITES: u64 = 40;
    const READS: u64 = 40;
    const LATE_WRITES: u64 = 20;
    fn data(q: u64, i: u64) -> Vec<u8> {
        (0..4096u64)
            .map(|k| (k * 31 + q * 977 + i * 13 + k / 512) as u8)
            .collect()
    }
    fn wait(d: &Driver, n: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.used_idx() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
    for engine in ALL_ENGINES {
        println!("engine {engine:?}");
        let img = TempImage::patterned(IMG);
        let mem = guest_memory();
        let mut drivers = [
            Driver::new(&mem, QUEUE_SIZE),
            Driver::at(&mem, 0x8_0000, QUEUE_SIZE, REGION + DATA_START),
        ];
        let mut block = Block::new(&img.path, false, None, 2).unwrap();
        block.set_engine(engine);
        block.ack_features(block.avail_features());
        let mut kicks = Vec::new();
        let queues = drivers
            .iter()
            .map(|d| {
                let kick = EventFd::new(EFD_NONBLOCK).unwrap();
                kicks.push(kick.try_clone().unwrap());
                ActiveQueue {
                    queue: d.queue(),
                    kick,
                }
            })
            .collect();
        let irq = Arc::new(TestInterrupt::default());
        block.activate(mem.clone(), queues, irq).unwrap();

        // Batch 1: each queue writes 4 KiB blocks of distinct data into
        // sectors 0..640 and reads 4 KiB blocks from 1024.. (untouched).
        let mut first = Vec::new();
        for (q, d) in drivers.iter_mut().enumerate() {
            let q = q as u64;
            let mut reqs = Vec::new();
            for i in 0..WRITES.max(READS) {
                if i < WRITES {
                    reqs.push((d.write((q * WRITES + i) * 8, &data(q, i)), None));
                }
                if i < READS {
                    let sector = 1024 + ((q * READS + i) * 7) % 1000;
                    reqs.push((d.read(sector, 4096), Some(sector)));
                }
            }
            first.push(reqs);
        }
        for k in &kicks {
            k.write(1).unwrap();
        }
        for (q, d) in drivers.iter().enumerate() {
            let n = (WRITES + READS) as u16;
            assert!(wait(d, n), "{engine:?} queue {q}: {} of {n}", d.used_idx());
            for (r, read) in &first[q] {
                assert_eq!(d.status(r), OK, "{engine:?} queue {q}");
                if let Some(sector) = read {
                    assert_eq!(
                        d.bytes(r.data, 4096),
                        img.read_at(sector * 512, 4096),
                        "{engine:?} queue {q} sector {sector}"
                    );
                }
            }
        }
        for q in 0..2 {
            for i in 0..WRITES {
                let at = (q * WRITES + i) * 8 * 512;
                assert_eq!(img.read_at(at, 4096), data(q, i), "{engine:?}");
            }
        }

        // Batch 2: each queue reads back what the other queue wrote, writes
        // more into 640..960 and flushes.
        let mut second = Vec::new();
        for (q, d) in drivers.iter_mut().enumerate() {
            let q = q as u64;
            let other = 1 - q;
            let mut reqs = Vec::new();
            for i in 0..READS.max(LATE_WRITES) {
                if i < READS {
                    let r = d.read((other * WRITES + i) * 8, 4096);
                    reqs.push((r, Some(data(other, i))));
                }
                if i < LATE_WRITES {
                    let sector = 640 + (q * LATE_WRITES + i) * 8;
                    reqs.push((d.write(sector, &data(q + 2, i)), None));
                }
            }
            reqs.push((d.bare(VIRTIO_BLK_T_FLUSH), None));
            second.push(reqs);
        }
        for k in &kicks {
            k.write(1).unwrap();
        }
        for (q, d) in drivers.iter().enumerate() {
            let n = (WRITES + READS + READS + LATE_WRITES + 1) as u16;
            assert!(wait(d, n), "{engine:?} queue {q}: {} of {n}", d.used_idx());
            for (r, want) in &second[q] {
                assert_eq!(d.status(r), OK, "{engine:?} queue {q}");
                if let Some(want) = want {
                    assert_eq!(&d.bytes(r.data, 4096), want, "{engine:?} queue {q}");
                }
            }
        }
        for q in 0..2 {
            for i in 0..LATE_WRITES {
                let at = (640 + (q * LATE_WRITES + i) * 8) * 512;
                assert_eq!(img.read_at(at, 4096), data(q + 2, i), "{engine:?}");
            }
        }
        assert_eq!(img.read_at(1023 * 512, 512), vec![pattern_byte(1023); 512]);
        block.reset();
        assert!(!block.is_active());
    }
}

/// Requests are capped at seg_max x size_max bytes: one byte-sector over
/// fails with IOERR before any I/O, exactly at the cap is served, both
/// with descriptors that all name the same guest buffer.
#[test]
fn requests_over_the_size_cap_fail_before_any_io() {
    use super::request::{MAX_REQUEST_BYTES, SEG_MAX, SIZE_MAX};
    let img = TempImage::empty();
    std::fs::File::create(&img.path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, QUEUE_SIZE);
    let metrics = Arc::new(BlockMetrics::default());
    let irq = Arc::new(TestInterrupt::default());
    let mut w = d.worker_with(img.disk(false), irq, metrics.clone(), EngineKind::Sync);
    let buf = d.alloc(2 * u64::from(SIZE_MAX));
    let chain = |d: &mut Driver, last_len: u32| {
        let header = d.header(VIRTIO_BLK_T_IN, 0);
        let status = d.status_byte();
        let mut descs = vec![(header, 16, false)];
        descs.extend((1..SEG_MAX).map(|_| (buf, SIZE_MAX, true)));
        descs.push((buf, last_len, true));
        descs.push((status, 1, true));
        (d.add_chain(&descs), status)
    };
    // Each chain fills the whole descriptor table: one at a time.
    let status = |a| mem.read_obj::<u8>(a).unwrap();
    let (at_cap, at_cap_status) = chain(&mut d, SIZE_MAX);
    w.run_once();
    assert_eq!(status(at_cap_status), OK);
    assert_eq!(d.used_len(at_cap), MAX_REQUEST_BYTES + 1);
    let (over, over_status) = chain(&mut d, SIZE_MAX + 512);
    w.run_once();
    assert_eq!(status(over_status), IOERR);
    assert_eq!(d.used(1), (u32::from(over), 1));
    assert_eq!(BlockMetrics::get(&metrics.invalid_requests), 1);
    assert_eq!(
        BlockMetrics::get(&metrics.read_bytes),
        u64::from(MAX_REQUEST_BYTES)
    );
}
