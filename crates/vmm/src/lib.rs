//! Vireo's VM lifecycle: configuration, building a VM, vCPU threads and the
//! event loop that ends the VM.

pub mod config;

pub use config::{ConsoleConfig, VmConfig};
