//! What a run measured: the JSON record and the readable summary.

use std::fmt;

use crate::procfs::{self, ProcError, ProcSample};
use crate::stats::LatencySummary;
use crate::workload::WorkloadSpec;

/// One load run (one scenario against one target).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    /// Scenario name given with `--label`.
    pub label: String,
    /// `kv-echo`, `python-map`, `echo` or `loopback`.
    pub target: String,
    /// Pool (or echo server) address.
    pub pool: String,
    pub workload: WorkloadSpec,
    /// Encoded bytes of one element on the wire.
    pub element_bytes: usize,
    pub workers: usize,
    pub in_flight: usize,
    /// Elements and bundles sent and verified in the measured phase.
    pub elements: u64,
    pub bundles: u64,
    /// Element bytes sent (the same again came back).
    pub bytes: u64,
    pub seconds: f64,
    pub elements_per_sec: f64,
    /// Megabytes (10^6 bytes) of element data per second, one direction.
    pub mb_per_sec: f64,
    /// Bundle round trips: request sent → response and every `is_last` received.
    pub bundle_latency: LatencySummary,
    /// StartWorker → control stream connected, per worker (echo, loopback: connect and
    /// open the stream), in milliseconds.
    pub connect_ms: Vec<f64>,
    /// The pool's process tree over the measured phase (`--pool-pid`).
    pub pool_usage: Option<PoolUsage>,
    /// CPU seconds of the driver itself over the measured phase.
    pub driver_cpu_seconds: f64,
    /// Whether `--max-seconds` stopped the run before all elements were sent.
    pub truncated: bool,
    /// Bundles that failed or whose output differed from the input.
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
}

/// CPU and memory of the pool process tree.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolUsage {
    pub pid: u32,
    /// CPU seconds used during the measured phase.
    pub cpu_seconds: f64,
    /// The same per million elements.
    pub cpu_seconds_per_million: f64,
    /// Lifetime peak RSS (VmHWM) at the end, MB (10^6 bytes): start a fresh
    /// pool per scenario for a per-scenario peak.
    pub peak_rss_mb: f64,
    /// RSS at the end, MB.
    pub rss_mb: f64,
    pub processes: usize,
}

impl PoolUsage {
    pub fn between(pid: u32, before: &ProcSample, after: &ProcSample, elements: u64) -> Self {
        let cpu = (after.cpu_seconds - before.cpu_seconds).max(0.0);
        PoolUsage {
            pid,
            cpu_seconds: cpu,
            cpu_seconds_per_million: if elements == 0 {
                0.0
            } else {
                cpu * 1e6 / elements as f64
            },
            peak_rss_mb: after.peak_rss_bytes as f64 / 1e6,
            rss_mb: after.rss_bytes as f64 / 1e6,
            processes: after.processes,
        }
    }
}

/// Readings at the start of a measured phase: the pool tree (`--pool-pid`) and
/// the driver's own CPU time.
#[derive(Debug, Clone, Copy)]
pub struct UsageStart {
    pool: Option<(u32, ProcSample)>,
    driver_cpu_seconds: f64,
}

impl UsageStart {
    pub fn begin(pool_pid: Option<u32>) -> Result<Self, ProcError> {
        let pool = match pool_pid {
            Some(pid) => Some((pid, procfs::sample_tree(pid)?)),
            None => None,
        };
        Ok(UsageStart {
            pool,
            driver_cpu_seconds: procfs::self_cpu_seconds()?,
        })
    }

    /// Ends the phase: the pool's usage over it (per `elements`) and the
    /// driver's CPU seconds.
    pub fn finish(self, elements: u64) -> Result<(Option<PoolUsage>, f64), ProcError> {
        let driver = procfs::self_cpu_seconds()? - self.driver_cpu_seconds;
        let pool = match self.pool {
            Some((pid, before)) => Some(PoolUsage::between(
                pid,
                &before,
                &procfs::sample_tree(pid)?,
                elements,
            )),
            None => None,
        };
        Ok((pool, driver))
    }
}

/// The last line of a summary: verified, or the errors.
pub(crate) fn verdict(
    f: &mut fmt::Formatter<'_>,
    errors: u64,
    samples: &[String],
    verified: impl fmt::Display,
) -> fmt::Result {
    if errors == 0 {
        write!(f, "  verified    {verified}")
    } else {
        write!(f, "  ERRORS      {errors} bundle(s): {samples:?}")
    }
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.errors == 0
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.workload;
        writeln!(
            f,
            "{} [{}] {} elements of {} B (key {} B, value {} B), {} bundles, {} worker(s), {} in flight{}",
            self.label,
            self.target,
            self.elements,
            self.element_bytes,
            w.key_size,
            w.value_size,
            self.bundles,
            self.workers,
            self.in_flight,
            if self.truncated {
                " (stopped by --max-seconds)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  throughput  {:>12.0} elements/s  {:>9.1} MB/s  ({:.3} s)",
            self.elements_per_sec, self.mb_per_sec, self.seconds
        )?;
        let l = &self.bundle_latency;
        writeln!(
            f,
            "  bundle      p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  mean {:.3} ms",
            l.p50_ms, l.p99_ms, l.max_ms, l.mean_ms
        )?;
        let connect: Vec<String> = self.connect_ms.iter().map(|c| format!("{c:.2}")).collect();
        writeln!(f, "  connect     {} ms", connect.join(", "))?;
        if let Some(p) = &self.pool_usage {
            writeln!(
                f,
                "  pool        {:.2} CPU s ({:.2} per million elements), peak RSS {:.1} MB, RSS {:.1} MB, {} process(es)",
                p.cpu_seconds, p.cpu_seconds_per_million, p.peak_rss_mb, p.rss_mb, p.processes
            )?;
        }
        writeln!(f, "  driver      {:.2} CPU s", self.driver_cpu_seconds)?;
        verdict(
            f,
            self.errors,
            &self.error_samples,
            format_args!("all {} bytes identical", self.bytes),
        )
    }
}
