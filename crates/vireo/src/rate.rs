//! The rate-limit keys every device flag shares (`--disk`, `--rng`, later
//! `--net`): `rate=SIZE` (bytes per second, K/M/G suffixes) and `ops=N`
//! (operations per second), each bucket holding one second's worth, which
//! become the device's `RateLimiterConfig` (Firecracker's token buckets).

use vmm::config::RateLimiterConfig;

use crate::size;

/// The keys this module understands, for help texts and errors.
pub const KEYS: &str = "rate=BYTES_PER_SEC,ops=OPS_PER_SEC";

/// Collects `rate=` and `ops=` while a device spec is parsed.
#[derive(Default)]
pub struct RateKeys {
    bytes: u64,
    ops: u64,
    seen: bool,
}

impl RateKeys {
    /// Take `key=value` if it is a rate key: Some(result) when it was one.
    pub fn take(&mut self, device: &str, key: &str, value: &str) -> Option<Result<(), String>> {
        let parsed = match key {
            "rate" => size::parse_bytes(value, &format!("{device} rate")).map(|n| self.bytes = n),
            "ops" => value
                .parse::<u64>()
                .map(|n| self.ops = n)
                .map_err(|_| format!("invalid {device} ops '{value}': give operations per second")),
            _ => return None,
        };
        self.seen = true;
        Some(parsed.and_then(|()| match (key, self.bytes, self.ops) {
            ("rate", 0, _) | ("ops", _, 0) => Err(format!(
                "invalid {device} {key}: 0 would block the device; leave the key out for no limit"
            )),
            _ => Ok(()),
        }))
    }

    /// The limiter the keys describe (None when no key was given).
    pub fn config(&self) -> Option<RateLimiterConfig> {
        self.seen
            .then(|| RateLimiterConfig::per_second(self.bytes, self.ops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_make_a_per_second_limiter() {
        let mut k = RateKeys::default();
        assert!(k.take("disk", "path", "/x").is_none());
        assert_eq!(k.config(), None);
        assert_eq!(k.take("disk", "rate", "8M"), Some(Ok(())));
        assert_eq!(k.take("disk", "ops", "100"), Some(Ok(())));
        let c = k.config().unwrap();
        assert_eq!(c.bandwidth.unwrap().size, 8 << 20);
        assert_eq!(c.bandwidth.unwrap().refill_time, 1000);
        assert_eq!(c.ops.unwrap().size, 100);
        for (key, value) in [("rate", "0"), ("rate", "fast"), ("ops", "0"), ("ops", "-3")] {
            let mut k = RateKeys::default();
            let e = k.take("rng", key, value).unwrap().unwrap_err();
            assert!(e.contains("rng"), "{e}");
        }
    }
}
