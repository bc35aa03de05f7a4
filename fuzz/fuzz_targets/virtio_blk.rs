//! cargo-fuzz target: arbitrary bytes as guest memory and queue parameters
//! for a virtio-blk queue, served by the device worker. The harness
//! (`devices::virtio::block::fuzzing`) documents the input layout and
//! panics if a read-only image changes.
//!
//! Run (needs a nightly toolchain and `cargo install cargo-fuzz`):
//!     cd fuzz && cargo +nightly fuzz run virtio_blk -- -max_total_time=300
#![no_main]

use std::sync::OnceLock;

use devices::virtio::block::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(Harness::new);
    harness.run(data);
    harness.restore_rw();
});
