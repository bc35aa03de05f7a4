//! Runs the block benchmark without the `vireo` CLI (which exposes the same
//! thing as `vireo bench block`):
//!
//! ```text
//! cargo run --release -p bench --example block_bench -- VIREO_BINARY [RUNS] [RANDOM_OPS] [--reps=N] [--no-warmup] [--qemu-aio=threads|io_uring]
//!     [--qemu-machine=microvm|q35]
//! ```

fn main() {
    let mut opts = bench::BlockBenchOptions::default();
    let mut positional = 0;
    for arg in std::env::args().skip(1) {
        if arg == "--no-warmup" {
            opts.warmup = false;
            continue;
        }
        if let Some(reps) = arg.strip_prefix("--reps=") {
            opts.reps = reps.parse().unwrap_or_else(|e| {
                eprintln!("error: --reps must be a number, got {reps:?}: {e}");
                std::process::exit(2);
            });
            continue;
        }
        if let Some(m) = arg.strip_prefix("--qemu-machine=") {
            opts.qemu_machine = m.parse().unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(2);
            });
            continue;
        }
        if let Some(aio) = arg.strip_prefix("--qemu-aio=") {
            opts.qemu_aio = aio.parse().unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(2);
            });
            continue;
        }
        let number = |what: &str| -> usize {
            arg.parse().unwrap_or_else(|e| {
                eprintln!("error: {what} must be a number, got {arg:?}: {e}");
                std::process::exit(2);
            })
        };
        match positional {
            0 => opts.vireo = arg.clone().into(),
            1 => opts.runs = number("RUNS"),
            _ => opts.random_ops = number("RANDOM_OPS"),
        }
        positional += 1;
    }
    match bench::run_block_bench(&opts) {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
