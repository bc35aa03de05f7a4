//! Runs the boot benchmark without the `vireo` CLI (which exposes the same
//! thing as `vireo bench boot`):
//!
//! ```text
//! cargo run --release -p bench --example boot_bench -- [VIREO_BINARY] [RUNS] [--rig]
//! ```

fn main() {
    let mut opts = bench::BootBenchOptions::default();
    let mut positional = 0;
    for arg in std::env::args().skip(1) {
        if arg == "--rig" {
            opts.rig = true;
            continue;
        }
        match positional {
            0 => opts.vireo = arg.into(),
            _ => match arg.parse() {
                Ok(n) => opts.runs = n,
                Err(e) => {
                    eprintln!("error: RUNS must be a number, got {arg:?}: {e}");
                    std::process::exit(2);
                }
            },
        }
        positional += 1;
    }
    match bench::run_boot_bench(&opts) {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
