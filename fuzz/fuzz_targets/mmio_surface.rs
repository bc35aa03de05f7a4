//! The guest-facing virtio-mmio surface (registers at every width and
//! offset, device configuration, resets) with a real virtio-blk device
//! behind it; see `devices::virtio::transport::mmio_fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::virtio::transport::mmio_fuzzing::fuzz_one(data);
});
