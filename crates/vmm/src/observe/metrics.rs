//! Metrics as JSON lines, the way Firecracker writes them: one object per
//! flush with a `utc_timestamp_ms`, the VMM's state, API request counts
//! and each device's counters (virtio-blk: `block_<drive id>` objects).
//! Flushed on `FlushMetrics`, every `PERIOD` while the VM runs, and when
//! it ends.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// Firecracker's periodic flush interval.
pub const PERIOD: Duration = Duration::from_secs(60);

static SINK: Mutex<Option<File>> = Mutex::new(None);

/// API requests the VMM has served, and those it refused.
pub static API_REQUESTS: AtomicU64 = AtomicU64::new(0);
pub static API_FAULTS: AtomicU64 = AtomicU64::new(0);

/// Write metrics to `path` (appended; a FIFO works too) from now on.
pub fn configure(path: &Path) -> std::io::Result<()> {
    let f = super::open_sink(path)?;
    *devices::bus::lock(&SINK) = Some(f);
    Ok(())
}

/// Whether metrics are being written.
pub fn configured() -> bool {
    devices::bus::lock(&SINK).is_some()
}

/// Count one API request and whether it was refused.
pub fn count_api(status: u16) {
    API_REQUESTS.fetch_add(1, Ordering::Relaxed);
    if status >= 400 {
        API_FAULTS.fetch_add(1, Ordering::Relaxed);
    }
}

/// The line for one flush: `devices` are (name, counters) pairs.
pub fn snapshot(
    state: &str,
    vcpus: usize,
    devices: &[(String, Vec<(&'static str, u64)>)],
) -> Value {
    let mut m = Map::new();
    m.insert("utc_timestamp_ms".into(), json!(super::time::unix_ms()));
    m.insert("vmm".into(), json!({"state": state, "vcpus": vcpus}));
    m.insert(
        "api_server".into(),
        json!({
            "requests": API_REQUESTS.load(Ordering::Relaxed),
            "faults": API_FAULTS.load(Ordering::Relaxed),
        }),
    );
    for (name, counters) in devices {
        let obj: Map<String, Value> = counters
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect();
        m.insert(name.clone(), Value::Object(obj));
    }
    Value::Object(m)
}

/// Append `line` if metrics are configured.
pub fn write(line: &Value) {
    if let Some(f) = devices::bus::lock(&SINK).as_mut() {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_is_one_json_object_per_line() {
        count_api(204);
        count_api(400);
        let v = snapshot(
            "Running",
            2,
            &[("block_rootfs".into(), vec![("reads", 3), ("writes", 1)])],
        );
        assert_eq!(v["vmm"]["state"], "Running");
        assert_eq!(v["block_rootfs"]["reads"], 3);
        assert!(v["api_server"]["requests"].as_u64().unwrap() >= 2);
        assert!(v["api_server"]["faults"].as_u64().unwrap() >= 1);
        assert!(v["utc_timestamp_ms"].as_u64().unwrap() > 1_700_000_000_000);
        assert!(!v.to_string().contains('\n'));
    }
}
