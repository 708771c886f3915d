//! Per-round samples, medians over rounds, and the Markdown report.

use std::fmt::Write as _;

use crate::load::{Outcome, Workload};
use crate::variants::Variant;

/// One variant's numbers for one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The proxy process's CPU time per request, in microseconds.
    pub cpu_us_per_request: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Time to the first response body byte (a stream's first token).
    pub first_byte_p50_ms: f64,
    pub first_byte_p99_ms: f64,
    /// Response body chunks per request, as the client received them.
    pub chunks_per_request: f64,
}

impl Sample {
    pub fn new(cpu_us: u64, outcome: &Outcome) -> Sample {
        let mut lat = outcome.latencies_us.clone();
        lat.sort_unstable();
        let n = lat.len().max(1) as f64;
        let pct = |p: f64| percentile(&lat, p) as f64 / 1000.0;
        let mut first = outcome.first_byte_us.clone();
        first.sort_unstable();
        let first_pct = |p: f64| percentile(&first, p) as f64 / 1000.0;
        Sample {
            cpu_us_per_request: cpu_us as f64 / n,
            requests_per_second: n / outcome.elapsed.as_secs_f64().max(1e-9),
            p50_ms: pct(50.0),
            p90_ms: pct(90.0),
            p99_ms: pct(99.0),
            first_byte_p50_ms: first_pct(50.0),
            first_byte_p99_ms: first_pct(99.0),
            chunks_per_request: outcome.chunks as f64 / n,
        }
    }
}

/// The nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median (mean of the middle two for an even count; 0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One workload's results: `samples[i][r]` is variant `variants[i]` in round `r`.
#[derive(Debug, Clone)]
pub struct SetResult {
    pub workload: Workload,
    pub requests_per_round: usize,
    pub variants: Vec<Variant>,
    pub samples: Vec<Vec<Sample>>,
}

impl SetResult {
    fn column(&self, variant: Variant) -> Option<&[Sample]> {
        let i = self.variants.iter().position(|v| *v == variant)?;
        Some(&self.samples[i])
    }

    fn median_of(&self, variant: Variant, f: impl Fn(&Sample) -> f64) -> Option<f64> {
        Some(median(
            &self.column(variant)?.iter().map(f).collect::<Vec<_>>(),
        ))
    }

    /// Median over rounds of `variant`'s CPU per request minus no filter's in
    /// the same round.
    pub fn added_cpu(&self, variant: Variant) -> Option<f64> {
        self.added(variant, Variant::NoFilter, |s| s.cpu_us_per_request)
    }

    /// Median over rounds of `variant`'s `f` minus `base`'s in the same
    /// round.
    pub fn added(&self, variant: Variant, base: Variant, f: fn(&Sample) -> f64) -> Option<f64> {
        let base = self.column(base)?;
        let it = self.column(variant)?;
        let diffs: Vec<f64> = base.iter().zip(it).map(|(b, s)| f(s) - f(b)).collect();
        Some(median(&diffs))
    }

    /// `variant`'s added CPU over the minimal filter's (for drainpipe: the
    /// 1.5 target).
    pub fn over_minimal(&self, variant: Variant) -> Option<f64> {
        let d = self.added_cpu(variant)?;
        let m = self.added_cpu(Variant::Minimal)?;
        (m > 0.0).then_some(d / m)
    }

    pub fn markdown(&self, out: &mut String) {
        let rounds = self.samples.first().map_or(0, Vec::len);
        let _ = writeln!(
            out,
            "## {}: {} requests per round, {} rounds\n",
            self.workload.title(),
            self.requests_per_round,
            rounds
        );
        out.push_str("Medians over rounds. First byte: time to the first response body byte (a stream's first token).\n\n");
        out.push_str("| variant | CPU µs/request | requests/s | p50 ms | p90 ms | p99 ms | first byte p50 ms | first byte p99 ms | chunks/response | CPU µs/chunk |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for &v in &self.variants {
            let m = |f: fn(&Sample) -> f64| self.median_of(v, f).unwrap_or(0.0);
            let chunks = m(|s| s.chunks_per_request);
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {:.1} | {:.2} |",
                v.label(),
                m(|s| s.cpu_us_per_request),
                m(|s| s.requests_per_second),
                m(|s| s.p50_ms),
                m(|s| s.p90_ms),
                m(|s| s.p99_ms),
                m(|s| s.first_byte_p50_ms),
                m(|s| s.first_byte_p99_ms),
                chunks,
                m(|s| s.cpu_us_per_request / s.chunks_per_request.max(1.0)),
            );
        }
        out.push_str("\nCPU µs/request by round:\n\n| round |");
        for v in &self.variants {
            let _ = write!(out, " {} |", v.label());
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(self.variants.len()));
        out.push('\n');
        for r in 0..rounds {
            let _ = write!(out, "| {} |", r + 1);
            for col in &self.samples {
                let _ = write!(out, " {:.1} |", col[r].cpu_us_per_request);
            }
            out.push('\n');
        }
        out.push_str("\nAdded CPU per request over Envoy without a filter (median of per-round differences):\n\n");
        if let Some(m) = self.added_cpu(Variant::Minimal) {
            let _ = writeln!(out, "- minimal filter: {m:.1} µs");
        }
        if let Some(d) = self.added_cpu(Variant::Drainpipe) {
            let _ = writeln!(out, "- drainpipe: {d:.1} µs");
        }
        let candidates = self
            .variants
            .iter()
            .copied()
            .filter(|v| matches!(v, Variant::Candidate(_)));
        for c in candidates.clone() {
            if let Some(a) = self.added_cpu(c) {
                let _ = writeln!(out, "- {}: {a:.1} µs", c.label());
            }
        }
        if let Some(r) = self.over_minimal(Variant::Drainpipe) {
            let _ = writeln!(
                out,
                "- drainpipe's added CPU / the minimal filter's: **{r:.2}** (target: at most 1.5)"
            );
        }
        for c in candidates {
            if let Some(r) = self.over_minimal(c) {
                let _ = writeln!(
                    out,
                    "- {}: added CPU / the minimal filter's: {r:.2}",
                    c.label()
                );
            }
        }
        if matches!(self.workload, Workload::Tokens { .. }) {
            self.first_byte_markdown(out);
        }
        let total = |v| self.median_of(v, |s| s.cpu_us_per_request);
        if let (Some(d), Some(n)) = (total(Variant::Drainpipe), total(Variant::NoFilter)) {
            if n > 0.0 {
                let _ = writeln!(
                    out,
                    "- Envoy with drainpipe / Envoy without a filter, total CPU: {:.2}",
                    d / n
                );
            }
        }
        if let (Some(s), Some(d)) = (total(Variant::Shim), total(Variant::Drainpipe)) {
            if d > 0.0 {
                let _ = writeln!(
                    out,
                    "- shim with drainpipe / Envoy with drainpipe, total CPU: {:.2}",
                    s / d
                );
            }
        }
        out.push('\n');
    }
}

impl SetResult {
    /// Time to first byte added by each filter, over Envoy without one and
    /// over the minimal filter (medians of the per-round differences).
    fn first_byte_markdown(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nTime to first token added (ms; median over rounds of the per-round difference of p50, and of p99):\n\n\
             | variant | over no filter: p50 | over no filter: p99 | over the minimal filter: p50 | over the minimal filter: p99 |\n\
             |---|---:|---:|---:|---:|"
        );
        for &v in self.variants.iter().filter(|v| **v != Variant::NoFilter) {
            let cell = |base, f: fn(&Sample) -> f64| {
                self.added(v, base, f)
                    .map_or(String::new(), |d| format!("{d:+.3}"))
            };
            let minimal = |f| match v {
                Variant::Minimal => String::new(),
                _ => cell(Variant::Minimal, f),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                v.label(),
                cell(Variant::NoFilter, |s| s.first_byte_p50_ms),
                cell(Variant::NoFilter, |s| s.first_byte_p99_ms),
                minimal(|s| s.first_byte_p50_ms),
                minimal(|s| s.first_byte_p99_ms),
            );
        }
    }
}

/// Resident memory of each proxy at checkpoints, in KiB.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// Checkpoint names, in order.
    pub checkpoints: Vec<String>,
    /// `(variant, KiB at each checkpoint)`.
    pub rows: Vec<(Variant, Vec<u64>)>,
}

impl Memory {
    pub fn markdown(&self, requests_per_variant: usize, out: &mut String) {
        let _ = writeln!(
            out,
            "## Memory (VmRSS, MiB), {requests_per_variant} requests per proxy in all\n"
        );
        out.push_str("| variant |");
        for c in &self.checkpoints {
            let _ = write!(out, " {c} |");
        }
        out.push_str(" change, first to last |\n|---|");
        out.push_str(&"---:|".repeat(self.checkpoints.len() + 1));
        out.push('\n');
        for (v, kib) in &self.rows {
            let _ = write!(out, "| {} |", v.label());
            for k in kib {
                let _ = write!(out, " {:.1} |", *k as f64 / 1024.0);
            }
            let change = match (kib.first(), kib.last()) {
                (Some(&a), Some(&b)) => (b as f64 - a as f64) / 1024.0,
                _ => 0.0,
            };
            let _ = writeln!(out, " {change:+.1} |");
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 90.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    fn sample(cpu: f64) -> Sample {
        Sample {
            cpu_us_per_request: cpu,
            requests_per_second: 1.0,
            p50_ms: 1.0,
            p90_ms: 1.0,
            p99_ms: 1.0,
            first_byte_p50_ms: 1.0,
            first_byte_p99_ms: 1.0,
            chunks_per_request: 1.0,
        }
    }

    #[test]
    fn added_cpu_pairs_rounds_and_takes_the_median() {
        let set = SetResult {
            workload: Workload::Unary,
            requests_per_round: 10,
            variants: vec![Variant::NoFilter, Variant::Minimal, Variant::Drainpipe],
            samples: vec![
                vec![sample(40.0), sample(50.0), sample(40.0)],
                vec![sample(50.0), sample(60.0), sample(49.0)],
                vec![sample(55.0), sample(65.0), sample(58.0)],
            ],
        };
        assert_eq!(set.added_cpu(Variant::Minimal), Some(10.0));
        assert_eq!(set.added_cpu(Variant::Drainpipe), Some(15.0));
        assert_eq!(set.over_minimal(Variant::Drainpipe), Some(1.5));
        assert_eq!(set.added_cpu(Variant::Shim), None);
        let mut md = String::new();
        set.markdown(&mut md);
        assert!(md.contains("| Envoy, drainpipe | 58.0 |"), "{md}");
        assert!(md.contains("**1.50**"), "{md}");
    }

    #[test]
    fn sample_from_outcome() {
        let outcome = Outcome {
            latencies_us: vec![1000, 3000, 2000, 4000],
            first_byte_us: vec![500, 700, 600, 800],
            chunks: 8,
            errors: 0,
            first_error: None,
            elapsed: Duration::from_secs(2),
        };
        let s = Sample::new(400, &outcome);
        assert_eq!(s.cpu_us_per_request, 100.0);
        assert_eq!(s.requests_per_second, 2.0);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.p99_ms, 4.0);
        assert_eq!(s.first_byte_p50_ms, 0.6);
        assert_eq!(s.first_byte_p99_ms, 0.8);
        assert_eq!(s.chunks_per_request, 2.0);
    }
}
