//! Summary statistics over a metric's samples and the comparison table the
//! boot benchmarks print (median, p10–p90 spread, ratio of medians).

use std::fmt::Write;

/// Median and spread of one metric's samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

/// The `q` quantile (0..=1) of sorted `v`, linearly interpolated.
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Summarizes samples; `None` when there are none (or any is NaN).
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() || samples.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Some(Summary {
        n: v.len(),
        median: quantile(&v, 0.5),
        p10: quantile(&v, 0.1),
        p90: quantile(&v, 0.9),
        min: v[0],
        max: v[v.len() - 1],
    })
}

/// One metric measured for both VMMs.
#[derive(Debug, Clone)]
pub struct MetricRow {
    /// E.g. "spawn -> marker".
    pub name: String,
    /// E.g. "ms" or "MiB".
    pub unit: &'static str,
    pub a: Summary,
    /// `None` where `b` has nothing comparable (shown as "n/a").
    pub b: Option<Summary>,
}

/// A side-by-side comparison of two VMMs, `a` (Vireo) against `b`.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub a_name: String,
    pub b_name: String,
    pub rows: Vec<MetricRow>,
}

/// A number with precision suited to its size.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn cell(s: &Summary) -> (String, String) {
    (
        fmt_num(s.median),
        format!("{}–{}", fmt_num(s.p10), fmt_num(s.p90)),
    )
}

/// Pads `s` on the right to `w` characters (not bytes: the table uses "–").
fn pad(s: &str, w: usize) -> String {
    let len = s.chars().count();
    format!("{s}{}", " ".repeat(w.saturating_sub(len)))
}

impl Comparison {
    /// Renders the table: per metric, each VMM's median and p10–p90 spread,
    /// and the ratio of medians a/b.
    pub fn render(&self) -> String {
        let header = [
            "metric".to_string(),
            format!("{} median", self.a_name),
            format!("{} p10–p90", self.a_name),
            format!("{} median", self.b_name),
            format!("{} p10–p90", self.b_name),
            format!("{}/{}", self.a_name, self.b_name),
        ];
        let mut rows = vec![header];
        for r in &self.rows {
            let (am, asp) = cell(&r.a);
            let (bm, bsp) =
                r.b.as_ref()
                    .map_or(("n/a".to_string(), String::new()), cell);
            let ratio = match r.b {
                Some(b) if b.median > 0.0 => format!("{:.2}", r.a.median / b.median),
                _ => "n/a".to_string(),
            };
            rows.push([format!("{} ({})", r.name, r.unit), am, asp, bm, bsp, ratio]);
        }
        let mut widths = [0usize; 6];
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for (i, row) in rows.iter().enumerate() {
            let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| pad(c, w)).collect();
            let _ = writeln!(out, "  {}", line.join("  ").trim_end());
            if i == 0 {
                let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                let _ = writeln!(out, "  {}", "-".repeat(total));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles() {
        let s = summarize(&[5.0, 1.0, 3.0, 2.0, 4.0]).expect("summary");
        assert_eq!((s.n, s.median, s.min, s.max), (5, 3.0, 1.0, 5.0));
        assert!(
            (s.p10 - 1.4).abs() < 1e-9 && (s.p90 - 4.6).abs() < 1e-9,
            "{s:?}"
        );
        let even = summarize(&[1.0, 2.0, 3.0, 4.0]).expect("summary");
        assert_eq!(even.median, 2.5);
        let one = summarize(&[7.0]).expect("summary");
        assert_eq!((one.median, one.p10, one.p90), (7.0, 7.0, 7.0));
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn table_has_ratio_and_aligned_columns() {
        let s = |x| summarize(&[x]).expect("summary");
        let c = Comparison {
            a_name: "vireo".into(),
            b_name: "qemu".into(),
            rows: vec![
                MetricRow {
                    name: "spawn -> marker".into(),
                    unit: "ms",
                    a: s(5.0),
                    b: Some(s(50.0)),
                },
                MetricRow {
                    name: "peak RSS".into(),
                    unit: "MiB",
                    a: s(3.0),
                    b: Some(s(0.0)),
                },
                MetricRow {
                    name: "api: spawn -> socket".into(),
                    unit: "ms",
                    a: s(1.5),
                    b: None,
                },
            ],
        };
        let t = c.render();
        let col = |l: &str, pat: &str| l.find(pat).map(|b| l[..b].chars().count());
        assert!(t.contains("vireo/qemu"), "{t}");
        assert!(t.contains("0.10"), "{t}");
        assert!(t.contains("n/a"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        // No comparable: "n/a" in b's median column and in the ratio.
        assert_eq!(col(lines[4], "n/a"), col(lines[0], "qemu median"), "{t}");
        assert!(lines[4].trim_end().ends_with("n/a"), "{t}");
        assert_eq!(col(lines[2], "5.00"), col(lines[0], "vireo median"), "{t}");
        assert_eq!(col(lines[2], "50.0"), col(lines[0], "qemu median"), "{t}");
    }
}
