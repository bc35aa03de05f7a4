//! virtio-balloon device and worker tests on a mock driver, over real
//! anonymous guest memory (so a page given back really reads zero again).

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::device::Shared;
use super::release::merge_pfns;
use super::worker::Queues;
use super::*;
use crate::virtio::test_utils::*;
use crate::virtio::{GuestMemory, VirtioDevice};

/// The four queues' drivers, rings apart, data buffers apart.
struct Setup<'a> {
    inflate: Driver<'a>,
    deflate: Driver<'a>,
    stats: Driver<'a>,
    reporting: Driver<'a>,
}

fn setup(mem: &GuestMemory) -> Setup<'_> {
    Setup {
        inflate: Driver::at(mem, 0, 16, 0x10_0000),
        deflate: Driver::at(mem, 0x8000, 16, 0x11_0000),
        stats: Driver::at(mem, 0x10000, 16, 0x12_0000),
        reporting: Driver::at(mem, 0x18000, 16, 0x13_0000),
    }
}

fn worker(
    mem: &GuestMemory,
    s: &Setup,
    stats_s: u16,
) -> (Worker, BalloonHandle, Arc<BalloonMetrics>) {
    let settings = BalloonSettings {
        amount_mib: 0,
        deflate_on_oom: true,
        stats_interval_s: stats_s,
        free_page_reporting: true,
    };
    let dev = Balloon::new(settings, 4).unwrap();
    let handle = dev.handle();
    let metrics = dev.metrics();
    let q = Queues::from_queues(
        s.inflate.queue(),
        s.deflate.queue(),
        Some(s.stats.queue()),
        Some(s.reporting.queue()),
    );
    let shared: Arc<Shared> = handle.shared();
    let w = Worker::new(
        mem.clone(),
        q,
        Arc::new(TestInterrupt::default()),
        shared,
        metrics.clone(),
    )
    .unwrap();
    (w, handle, metrics)
}

/// A buffer holding `pfns` as le32 values.
fn pfn_buffer(d: &mut Driver, pfns: &[u32]) -> (GuestAddress, u32) {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    let a = d.alloc(bytes.len() as u64);
    d.mem.write_slice(&bytes, a).unwrap();
    (a, bytes.len() as u32)
}

/// Fill `pages` pages from `addr` with 0xaa.
fn dirty(mem: &GuestMemory, addr: u64, pages: usize) {
    mem.write_slice(&vec![0xaa; pages * 4096], GuestAddress(addr))
        .unwrap();
}

fn is_zero(mem: &GuestMemory, addr: u64, len: usize) -> bool {
    let mut buf = vec![1u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf.iter().all(|&b| b == 0)
}

#[test]
fn page_numbers_merge_into_sorted_ranges() {
    let mut pfns = vec![10, 11, 3, 12, 4, 11, 100];
    assert_eq!(
        merge_pfns(&mut pfns),
        vec![
            (3 << 12, 2 << 12),
            (10 << 12, 3 << 12),
            (100 << 12, 1 << 12)
        ]
    );
    assert!(merge_pfns(&mut []).is_empty());
}

#[test]
fn inflated_pages_go_back_to_the_host_in_ranges() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    // Pages 0x200..0x210 (crossing into the second region at 0x200) and
    // 0x150..0x152, listed out of order with a duplicate.
    dirty(&mem, 0x1f7 << 12, 25);
    dirty(&mem, 0x150 << 12, 2);
    let mut pfns: Vec<u32> = (0x1f8..0x210).rev().collect();
    pfns.extend([0x151, 0x150, 0x151]);
    let (a, len) = pfn_buffer(&mut s.inflate, &pfns);
    let head = s.inflate.add_chain(&[(a, len, false)]);
    let (mut w, _h, m) = worker(&mem, &s, 0);
    assert!(!w.serve(&|| false));
    assert_eq!(s.inflate.used_idx(), 1);
    assert_eq!(s.inflate.used_len(head), 0);
    assert!(is_zero(&mem, 0x1f8 << 12, 24 * 4096));
    assert!(is_zero(&mem, 0x150 << 12, 2 * 4096));
    // The page before the first range is untouched.
    assert!(!is_zero(&mem, 0x1f7 << 12, 4096));
    assert_eq!(BalloonMetrics::get(&m.inflated_pages), 27);
    assert_eq!(BalloonMetrics::get(&m.released_bytes), 26 * 4096);
    // Two ranges, the first in two regions: three madvise calls, not 26.
    assert_eq!(BalloonMetrics::get(&m.release_calls), 3);
    assert_eq!(BalloonMetrics::get(&m.release_fails), 0);
}

#[test]
fn pages_outside_guest_memory_and_bad_chains_are_refused() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    dirty(&mem, 0x180 << 12, 1);
    // A frame past the end of RAM next to a good one.
    let (a, len) = pfn_buffer(&mut s.inflate, &[0x180, 0xfff_ffff]);
    s.inflate.add_chain(&[(a, len, false)]);
    // A device-writable buffer where the device reads.
    let (b, blen) = pfn_buffer(&mut s.inflate, &[0x181]);
    s.inflate.add_chain(&[(b, blen, true)]);
    // A buffer outside guest memory.
    s.inflate
        .add_chain(&[(GuestAddress(2 * REGION - 2), 64, false)]);
    // More frame numbers than one request may carry.
    let big = s.inflate.alloc((request::MAX_PFNS * 4 + 4) as u64);
    s.inflate
        .add_chain(&[(big, (request::MAX_PFNS * 4 + 4) as u32, false)]);
    let (mut w, _h, m) = worker(&mem, &s, 0);
    w.serve(&|| false);
    assert_eq!(s.inflate.used_idx(), 4);
    assert!(is_zero(&mem, 0x180 << 12, 4096));
    assert_eq!(BalloonMetrics::get(&m.bad_chains), 3);
    assert_eq!(BalloonMetrics::get(&m.release_fails), 1);
    assert_eq!(BalloonMetrics::get(&m.released_bytes), 4096);
}

#[test]
fn deflated_pages_are_counted_and_usable_again() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let (a, len) = pfn_buffer(&mut s.deflate, &[0x150, 0x151]);
    s.deflate.add_chain(&[(a, len, false)]);
    let (mut w, _h, m) = worker(&mem, &s, 0);
    w.serve(&|| false);
    assert_eq!(s.deflate.used_idx(), 1);
    assert_eq!(BalloonMetrics::get(&m.deflated_pages), 2);
    assert_eq!(BalloonMetrics::get(&m.released_bytes), 0);
}

#[test]
fn statistics_are_read_held_and_handed_back_when_due() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let mut buf = Vec::new();
    for (tag, v) in [
        (4u16, 1000u64),
        (5, 4096),
        (6, 2000),
        (42, 7),
        (0, 3),
        (15, 9),
    ] {
        buf.extend(tag.to_le_bytes());
        buf.extend(v.to_le_bytes());
    }
    let a = s.stats.alloc(buf.len() as u64);
    mem.write_slice(&buf, a).unwrap();
    s.stats.add_chain(&[(a, buf.len() as u32, false)]);
    let (mut w, h, m) = worker(&mem, &s, 1);
    w.serve(&|| false);
    // Held: the driver gets it back only when new statistics are wanted.
    assert_eq!(s.stats.used_idx(), 0);
    let st = h.stats();
    assert_eq!(st.free_memory, Some(1000));
    assert_eq!(st.total_memory, Some(4096));
    assert_eq!(st.available_memory, Some(2000));
    assert_eq!(st.swap_in, Some(3));
    assert_eq!(st.direct_reclaim, Some(9));
    assert_eq!(st.disk_caches, None);
    assert_eq!(BalloonMetrics::get(&m.stats_updates), 1);
    w.request_stats();
    w.signal();
    assert_eq!(s.stats.used_idx(), 1);
    // Nothing held any more: a second request does nothing.
    w.request_stats();
    assert_eq!(s.stats.used_idx(), 1);
}

#[test]
fn reported_free_ranges_go_back_to_the_host() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    dirty(&mem, 0x160 << 12, 8);
    dirty(&mem, 0x170 << 12, 1);
    let head = s.reporting.add_chain(&[
        (GuestAddress(0x160 << 12), 8 * 4096, true),
        (GuestAddress(0x170 << 12), 4096, true),
    ]);
    // A range that runs past the end of RAM: the whole chain is refused.
    s.reporting
        .add_chain(&[(GuestAddress(2 * REGION - 4096), 8192, true)]);
    let (mut w, _h, m) = worker(&mem, &s, 0);
    w.serve(&|| false);
    assert_eq!(s.reporting.used_idx(), 2);
    assert_eq!(s.reporting.used_len(head), 0);
    assert!(is_zero(&mem, 0x160 << 12, 8 * 4096));
    assert!(is_zero(&mem, 0x170 << 12, 4096));
    assert_eq!(BalloonMetrics::get(&m.reported_bytes), 9 * 4096);
    assert_eq!(BalloonMetrics::get(&m.bad_chains), 1);
}

#[test]
fn config_space_carries_the_target_and_the_drivers_actual_size() {
    let settings = BalloonSettings {
        amount_mib: 2,
        ..Default::default()
    };
    let mut dev = Balloon::new(settings, 4).unwrap();
    let h = dev.handle();
    let mut c = [0u8; 8];
    dev.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes(c[..4].try_into().unwrap()), 512);
    // The driver writes `actual`; a write to num_pages is ignored.
    dev.write_config(4, &300u32.to_le_bytes());
    dev.write_config(0, &7u32.to_le_bytes());
    assert_eq!(h.actual_pages(), 300);
    assert_eq!(h.target_pages(), 512);
    dev.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes(c[4..].try_into().unwrap()), 300);
    // Past the end reads zeros.
    let mut tail = [0xffu8; 4];
    dev.read_config(14, &mut tail);
    assert_eq!(tail, [0; 4]);
    // A target past the VM's memory is refused; the old one stays.
    assert!(h.set_target_mib(5).unwrap_err().contains("larger than"));
    h.set_target_mib(4).unwrap();
    assert_eq!(h.target_pages(), 1024);
    // Too big at creation: refused.
    let e = Balloon::new(
        BalloonSettings {
            amount_mib: 9,
            ..Default::default()
        },
        4,
    )
    .err()
    .unwrap();
    assert!(e.contains("larger than"), "{e}");
}

#[test]
fn features_and_queues_follow_the_settings() {
    let plain = Balloon::new(BalloonSettings::default(), 64).unwrap();
    assert_eq!(plain.queue_max_sizes().len(), 2);
    let f = plain.avail_features();
    for bit in [
        features::STATS_VQ,
        features::DEFLATE_ON_OOM,
        features::PAGE_REPORTING,
    ] {
        assert_eq!(f & (1 << bit), 0, "bit {bit}");
    }
    let all = Balloon::new(
        BalloonSettings {
            amount_mib: 0,
            deflate_on_oom: true,
            stats_interval_s: 5,
            free_page_reporting: true,
        },
        64,
    )
    .unwrap();
    assert_eq!(all.queue_max_sizes().len(), 4);
    let f = all.avail_features();
    for bit in [
        features::STATS_VQ,
        features::DEFLATE_ON_OOM,
        features::PAGE_REPORTING,
    ] {
        assert_ne!(f & (1 << bit), 0, "bit {bit}");
    }
    // Statistics cannot be switched on or off at run time.
    assert!(plain.handle().set_stats_interval(3).is_err());
    assert!(all.handle().set_stats_interval(0).is_err());
    assert!(all.handle().set_stats_interval(2).is_ok());
    assert_eq!(all.handle().stats_interval_s(), 2);
}
