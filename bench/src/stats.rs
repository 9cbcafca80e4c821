//! Latency percentiles over every recorded bundle (no sampling, no histogram
//! buckets: runs are bounded, so all values fit in memory).

use std::time::Duration;

/// Recorded durations, in nanoseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    nanos: Vec<u64>,
}

/// Summary of [`Latencies`], in milliseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.nanos
            .push(d.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    /// Nearest-rank percentiles.
    pub fn summary(&self) -> LatencySummary {
        if self.nanos.is_empty() {
            return LatencySummary::default();
        }
        let mut sorted = self.nanos.clone();
        sorted.sort_unstable();
        let ms = |n: u64| n as f64 / 1e6;
        let rank = |p: f64| {
            let r = (p * sorted.len() as f64).ceil() as usize;
            sorted[r.clamp(1, sorted.len()) - 1]
        };
        LatencySummary {
            count: sorted.len(),
            p50_ms: ms(rank(0.50)),
            p99_ms: ms(rank(0.99)),
            max_ms: ms(*sorted.last().unwrap_or(&0)),
            mean_ms: sorted.iter().map(|&n| n as f64).sum::<f64>() / sorted.len() as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        assert_eq!(Latencies::default().summary().count, 0);
    }
}
