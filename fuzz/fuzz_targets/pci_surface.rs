//! The whole guest-facing PCI surface (configuration mechanisms, BARs,
//! MSI-X, virtio-pci registers) with a real virtio-blk device behind it;
//! see `devices::virtio::transport::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::virtio::transport::fuzzing::fuzz_one(data);
});
