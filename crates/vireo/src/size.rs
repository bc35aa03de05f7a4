//! Parsing memory sizes given on the command line (`512M`, `2G`, `1024`).

/// Parse a size into MiB. A bare number is MiB; K, M, G and T suffixes are
/// binary units (an optional trailing "iB" or "B" is accepted).
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid memory size '{s}': use a whole number of MiB with an optional K, M, G or T suffix, like 512M or 2G")
    };
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift_kib) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 0u32),
        Some('M' | 'm') => (&t[..t.len() - 1], 10),
        Some('G' | 'g') => (&t[..t.len() - 1], 20),
        Some('T' | 't') => (&t[..t.len() - 1], 30),
        Some(c) if c.is_ascii_digit() => (t, 10),
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let kib = n
        .checked_shl(shift_kib)
        .filter(|v| v >> shift_kib == n)
        .ok_or_else(bad)?;
    if kib % 1024 != 0 {
        return Err(format!(
            "invalid memory size '{s}': guest memory must be a whole number of MiB"
        ));
    }
    Ok(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

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
