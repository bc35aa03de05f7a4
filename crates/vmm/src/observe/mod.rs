//! What a running Vireo tells its operator, in Firecracker's shapes: the
//! log (`logger`: a file or FIFO with levels, `--log-path` / `PUT /logger`)
//! and metrics (`metrics`: JSON lines on `FlushMetrics`, periodically and
//! at the end, `--metrics-path` / `PUT /metrics`).

pub mod logger;
pub mod metrics;
pub mod time;
