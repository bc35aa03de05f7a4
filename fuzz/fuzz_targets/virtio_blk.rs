//! cargo-fuzz target: arbitrary bytes as the device configuration (engine,
//! write-through, read-only, 1 to 4 queues) and guest memory for a
//! virtio-blk device, served by the device worker. The harness
//! (`devices::virtio::block::fuzzing`) documents the input layout and
//! panics when its oracle sees a wrong used entry, guest memory written
//! outside the chains' writable buffers, or an image change no served
//! request asked for.
//!
//! Run (needs a nightly toolchain, or RUSTC_BOOTSTRAP=1, and
//! `cargo install cargo-fuzz`):
//!     cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run virtio_blk -- -max_total_time=300
#![no_main]

use std::sync::OnceLock;

use devices::virtio::block::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    // `run` checks the invariants and puts the image back itself.
    HARNESS.get_or_init(Harness::new).run(data);
});
