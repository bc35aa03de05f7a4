//! cargo-fuzz target: arbitrary bytes as the RX and TX queues and guest
//! memory of a virtio-vsock device with real Unix sockets behind it,
//! served by the device worker. The harness
//! (`devices::virtio::vsock::fuzzing`) documents the input layout and
//! panics when guest memory is written outside the RX buffers and used
//! rings, or a used length is impossible.
//!
//! Run (needs a nightly toolchain, or RUSTC_BOOTSTRAP=1, and
//! `cargo install cargo-fuzz`):
//!     cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run virtio_vsock -- -max_total_time=300
#![no_main]

use std::sync::OnceLock;

use devices::virtio::vsock::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(Harness::new).run(data);
});
