//! cargo-fuzz target: arbitrary bytes as the RX and TX queues and guest
//! memory of a virtio-net device on a real socket pair, with its control queue,
//! served by the device worker. The harness
//! (`devices::virtio::net::fuzzing`) documents the input layout and
//! panics when guest memory is written outside the RX and control buffers and used
//! rings, or a used length is impossible.
//!
//! Run (needs a nightly toolchain, or RUSTC_BOOTSTRAP=1, and
//! `cargo install cargo-fuzz`):
//!     cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run virtio_net -- -max_total_time=300
#![no_main]

use std::sync::OnceLock;

use devices::virtio::net::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(Harness::new).run(data);
});
