//! What a running Vireo tells its operator, in Firecracker's shapes: the
//! log (`logger`: a file or FIFO with levels, `--log-path` / `PUT /logger`)
//! and metrics (`metrics`: JSON lines on `FlushMetrics`, periodically and
//! at the end, `--metrics-path` / `PUT /metrics`).

pub mod logger;
pub mod metrics;
pub mod time;

/// Open a log or metrics destination: a file (appended, created) or a
/// FIFO. Non-blocking and read-write, as Firecracker opens them, so a FIFO
/// without a reader neither blocks the open nor, once full, the VMM: a
/// line that does not fit is dropped.
pub(crate) fn open_sink(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}
