//! Parsing memory sizes given on the command line (`512M`, `2G`, `1024`).

/// A number with an optional binary-unit suffix (K, M, G, T, each with an
/// optional "iB" or "B") in bytes; a bare number is `bare_unit` bytes.
/// None when it does not parse or overflows.
fn scaled(s: &str, bare_unit: u64) -> Option<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, unit) = match t.chars().last()? {
        'K' | 'k' => (&t[..t.len() - 1], 1u64 << 10),
        'M' | 'm' => (&t[..t.len() - 1], 1 << 20),
        'G' | 'g' => (&t[..t.len() - 1], 1 << 30),
        'T' | 't' => (&t[..t.len() - 1], 1 << 40),
        c if c.is_ascii_digit() => (t, bare_unit),
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// Parse a size into MiB. A bare number is MiB; K, M, G and T suffixes are
/// binary units (an optional trailing "iB" or "B" is accepted).
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let bytes = scaled(s, 1 << 20).ok_or_else(|| {
        format!("invalid memory size '{s}': use a whole number of MiB with an optional K, M, G or T suffix, like 512M or 2G")
    })?;
    if bytes % (1 << 20) != 0 {
        return Err(format!(
            "invalid memory size '{s}': guest memory must be a whole number of MiB"
        ));
    }
    Ok(bytes >> 20)
}

/// Parse a byte count: a bare number is bytes; K, M, G and T suffixes are
/// binary units (an optional trailing "iB" or "B" is accepted). `what`
/// names the value in the error.
pub fn parse_bytes(s: &str, what: &str) -> Result<u64, String> {
    scaled(s, 1).ok_or_else(|| {
        format!("invalid {what} '{s}': use a whole number of bytes with an optional K, M, G or T suffix, like 4096 or 10M")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("4096", "rate"), Ok(4096));
        assert_eq!(parse_bytes("10M", "rate"), Ok(10 << 20));
        assert_eq!(parse_bytes("1KiB", "rate"), Ok(1024));
        assert_eq!(parse_bytes("2g", "rate"), Ok(2 << 30));
        for bad in ["", "M", "1.5M", "-1", "99999999999T", "5X"] {
            let e = parse_bytes(bad, "disk rate").unwrap_err();
            assert!(e.contains("invalid disk rate"), "{e}");
        }
    }

    #[test]
    fn units() {
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("512MiB"), Ok(512));
        assert_eq!(parse_mib("2G"), Ok(2048));
        assert_eq!(parse_mib("2g"), Ok(2048));
        assert_eq!(parse_mib("1024"), Ok(1024));
        assert_eq!(parse_mib("2048K"), Ok(2));
        assert_eq!(parse_mib("1T"), Ok(1 << 20));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "12Q",
            "",
            "M",
            "-1G",
            "1.5G",
            "1000K",
            "99999999999999999999T",
        ] {
            assert!(parse_mib(s).is_err(), "{s}");
        }
        assert!(parse_mib("12Q").unwrap_err().contains("12Q"));
    }
}
