//! Benchmarks behind `vireo bench boot` and `vireo bench block`.
//!
//! * [`minimal_guest_elf`] builds a tiny PVH guest that prints a marker on
//!   COM1 and resets; it runs even on this project's PVM hosts.
//! * [`run_boot_bench`] boots it with Vireo and with QEMU microvm on the
//!   host's /dev/kvm and prints a comparison table (`native`), and optionally
//!   compares the two booting the default Debian guest inside the nested rig
//!   (`rig_part`).
//!
//! * [`run_net_bench`] compares TCP and vsock throughput and TCP latency
//!   on Vireo's virtio-net and virtio-vsock against QEMU's (userspace and
//!   vhost-net, vhost-vsock) inside the nested rig (`net`, `net_script`).
//! * The block and net benchmarks share one L1 script that boots a guest
//!   test suite with each VMM in turn (`suite_script`).
//!
//! * [`run_block_bench`] compares guest `dd` throughput and IOPS on
//!   Vireo's virtio-blk against QEMU's inside the nested rig (`block`,
//!   `block_script`).
//!
//! Module map: `guest_elf` (the guest image), `measure` (one timed VMM run),
//! `stats` (medians, spreads, the table), `native` and `rig_part` (the two
//! benchmarks).

mod block;
mod block_script;
mod guest_elf;
mod measure;
mod native;
mod net;
mod net_script;
mod rig_part;
mod rig_script;
mod stats;
mod suite_script;

pub use block::{
    run_block_bench, BlockBenchOptions, QemuAio, QemuMachine, BLOCK_DEFAULT_RANDOM_OPS,
    BLOCK_DEFAULT_REPS, BLOCK_DEFAULT_RUNS,
};
pub use guest_elf::{minimal_guest_elf, MARKER};
pub use measure::{RunSample, VmmCommand};
pub use net::{
    run_net_bench, NetBenchOptions, NET_DEFAULT_MIB, NET_DEFAULT_REPS, NET_DEFAULT_RR,
    NET_DEFAULT_RUNS,
};
pub use rig_part::RIG_MAX_RUNS;

use std::path::PathBuf;
use std::time::Duration;

/// Default number of measured runs per VMM.
pub const DEFAULT_RUNS: usize = 20;

/// What `vireo bench boot` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootBenchOptions {
    /// Measured runs per VMM (default [`DEFAULT_RUNS`]).
    pub runs: usize,
    /// The vireo binary to measure.
    pub vireo: PathBuf,
    /// Also run the nested-rig comparison.
    pub rig: bool,
}

impl Default for BootBenchOptions {
    fn default() -> Self {
        BootBenchOptions {
            runs: DEFAULT_RUNS,
            vireo: PathBuf::from("vireo"),
            rig: false,
        }
    }
}

/// Why a benchmark could not produce its table.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark needs at least one run per VMM")]
    NoRuns,
    #[error("vireo-agent not found at {path} (build it with `cargo build --release`, or pass --agent PATH)")]
    AgentNotFound { path: PathBuf },
    #[error("cannot write temporary file {path}: {source}")]
    TempFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the benchmark's guest initrd from {path}: {source}")]
    Initrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {vmm} (`{command}`): {source}")]
    Spawn {
        vmm: String,
        command: String,
        source: std::io::Error,
    },
    #[error("cannot watch the {vmm} process (pidfd_open): {source}")]
    PidFd { vmm: String, source: std::io::Error },
    #[error("poll failed while watching {vmm}: {source}")]
    Poll { vmm: String, source: std::io::Error },
    #[error("cannot read {vmm}'s output: {source}")]
    Read { vmm: String, source: std::io::Error },
    #[error("cannot reap {vmm}: {source}")]
    Wait { vmm: String, source: std::io::Error },
    #[error("{vmm} did not print the guest's marker within {timeout:?}; killed it. Last output: {output}")]
    MarkerTimeout {
        vmm: String,
        timeout: Duration,
        output: String,
    },
    #[error("{vmm} printed the marker but did not exit within {timeout:?} of starting; killed it. Last output: {output}")]
    ExitTimeout {
        vmm: String,
        timeout: Duration,
        output: String,
    },
    #[error("{vmm} failed ({status}). Last output: {output}")]
    ExitStatus {
        vmm: String,
        status: String,
        output: String,
    },
    #[error("driving {vmm} failed: {details}")]
    Driver { vmm: String, details: String },
    #[error("{vmm} exited without printing the guest's marker. Last output: {output}")]
    NoMarker { vmm: String, output: String },
    #[error("rig: {0}")]
    Rig(#[from] rig::RigError),
    #[error("default guest: {0}")]
    Guest(#[from] guest::GuestError),
    #[error("the rig benchmark failed inside L1: {details}")]
    RigRun { details: String },
    #[error(
        "qemu-system-x86_64 not found on PATH (install qemu-system-x86, or set {})",
        native::QEMU_ENV
    )]
    QemuNotFound,
    #[error(
        "qboot firmware not found (looked at {searched}; install qemu-system-data, or set {})",
        native::QBOOT_ENV
    )]
    FirmwareNotFound { searched: String },
}

/// Runs the boot benchmark and returns the tables to print.
/// The native part always runs; the rig part (minutes: it boots the
/// emulated L1 machine) only with `opts.rig`.
pub fn run_boot_bench(opts: &BootBenchOptions) -> Result<String, BenchError> {
    let mut report = native::run_native(opts)?;
    if opts.rig {
        report.push('\n');
        report.push_str(&rig_part::run_rig(opts)?);
    }
    Ok(report)
}
