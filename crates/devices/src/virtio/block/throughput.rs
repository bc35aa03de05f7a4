//! A host-side throughput check of the device path without a guest (no
//! vCPU, no interrupts delivered): batches of requests built by the mock
//! driver, served by the worker with each engine. Ignored by default; run
//! with `cargo test --release -p devices throughput -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use super::engine::EngineKind;
use super::metrics::BlockMetrics;
use super::test_utils::*;
use super::QUEUE_SIZE;

const IMG: u64 = 256 << 20;

fn run(engine: EngineKind, write: bool, block: u32, random: bool, total: u64) -> f64 {
    let img = TempImage::patterned(IMG);
    let mem = guest_memory();
    let disk = img.disk(false);
    let mut d = Driver::new(&mem, QUEUE_SIZE);
    let irq = Arc::new(TestInterrupt::default());
    let mut w = d.worker_with(disk, irq, Arc::new(BlockMetrics::default()), engine);
    let sectors = u64::from(block / 512);
    let count = total / u64::from(block);
    // Guest memory is 4 MiB, buffers start at 1 MiB.
    let batch = 32u64.min(count).min((2 << 20) / u64::from(block)).max(1);
    let payload = vec![0xabu8; block as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let start = Instant::now();
    let mut done = 0;
    while done < count {
        d.set_alloc(DATA_START);
        for i in 0..batch {
            let n = done + i;
            let sector = if random {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % (IMG / u64::from(block))) * sectors
            } else {
                (n % (IMG / u64::from(block))) * sectors
            };
            if write {
                d.write(sector, &payload);
            } else {
                d.read(sector, block);
            }
        }
        w.run_once();
        done += batch;
    }
    let secs = start.elapsed().as_secs_f64();
    (count as f64) / secs
}

#[test]
#[ignore]
fn throughput() {
    for engine in ALL_ENGINES {
        for (name, write, block, random, total) in [
            ("seq read 1M", false, 1 << 20, false, 256u64 << 20),
            ("seq write 1M", true, 1 << 20, false, 256 << 20),
            ("rand read 4K", false, 4096, true, 64 << 20),
            ("rand write 4K", true, 4096, true, 64 << 20),
        ] {
            let iops = run(engine, write, block, random, total);
            println!(
                "{engine:?} {name}: {iops:.0} IOPS, {:.0} MiB/s",
                iops * f64::from(block) / f64::from(1 << 20)
            );
        }
    }
}
