//! Process-wide operational metrics, exposed in the Prometheus / OpenMetrics
//! text format on `--metrics-port` (see [`crate::admin`]).
//!
//! One registry per process ([`global`]): the pool, its harnesses, the
//! expansion service and the Kafka transforms all count into it, whether or
//! not an HTTP port serves it (updates are a few atomic operations, so they
//! are always on). Label values are plain strings so any module can report
//! without depending on another's types; keep them few and fixed (transform
//! kinds, directions, Kafka topics and partitions), never ids that grow
//! without bound such as worker or instruction ids.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `beam_rust_worker_build_info` | info | `version` | Always 1; the worker's version. |
//! | `beam_rust_worker_workers_started_total` | counter | `kind` = `native`\|`delegated` | Workers started by `StartWorker` (a native harness spawned, or a Python SDK worker that came up). |
//! | `beam_rust_worker_workers_active` | gauge | `kind` | Workers holding a slot now (counted against `--max-workers`). |
//! | `beam_rust_worker_workers_failed_total` | counter | `kind` | Native harnesses that ended with an error; Python workers that failed to start or exited unsuccessfully on their own. |
//! | `beam_rust_worker_start_worker_refused_total` | counter | — | `StartWorker` requests answered with an error before any worker started (bad request, `--max-workers`, shutting down). |
//! | `beam_rust_worker_bundles_started_total` | counter | — | `ProcessBundle` instructions the native harness began. |
//! | `beam_rust_worker_bundles_finished_total` | counter | `outcome` = `succeeded`\|`failed` | Bundles that ended, by outcome. |
//! | `beam_rust_worker_bundle_duration_seconds` | histogram | `outcome` | Wall time from `ProcessBundle` to its response. |
//! | `beam_rust_worker_elements_total` | counter | `transform`, `direction` = `in`\|`out` | Elements that entered / left a transform kind (`kv_echo`, `kafka_read`, `kafka_write`, ...). |
//! | `beam_rust_worker_element_bytes_total` | counter | `transform`, `direction` | Encoded bytes of those elements. |
//! | `beam_rust_worker_data_buffered_bytes` | gauge | — | Input bytes held by data channels for bundles not yet running (bounded by `--max-pending-bytes`). |
//! | `beam_rust_worker_expansion_requests_total` | counter | `outcome` = `expanded`\|`refused` | `ExpansionService/Expand` requests. |
//! | `beam_rust_worker_kafka_records_read_total` | counter | `topic`, `partition` | Records the native Kafka read consumed. |
//! | `beam_rust_worker_kafka_records_written_total` | counter | `topic` | Records the native Kafka write had acknowledged by the broker. |
//! | `beam_rust_worker_kafka_delivery_errors_total` | counter | `topic` | Records the broker refused or that timed out. |
//! | `beam_rust_worker_kafka_consumer_lag_records` | gauge | `topic`, `partition` | Partition end offset minus the read's next offset, when last seen. |
//! | `beam_rust_worker_kafka_pending_offset` | gauge | `topic`, `partition` | Next offset read but not yet committed (waiting for the bundle's finalization). |
//! | `beam_rust_worker_kafka_committed_offset` | gauge | `topic`, `partition` | Last offset committed for the consumer group. |
//! | `beam_rust_worker_kafka_commit_age_seconds` | gauge | `topic`, `partition` | Seconds since that commit, computed at scrape time. |
//!
//! Beside them, read from `/proc` at scrape time (Linux), the standard
//! process metrics every Prometheus client exports, unprefixed so existing
//! dashboards work: `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`,
//! `process_threads`. A sidecar's memory is what its pod is sized by.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every metric name.
pub const PREFIX: &str = "beam_rust_worker";

/// `Content-Type` of [`Telemetry::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Worker kinds (`kind` label).
pub const NATIVE: &str = "native";
pub const DELEGATED: &str = "delegated";

/// Element directions (`direction` label).
pub const IN: &str = "in";
pub const OUT: &str = "out";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ElementLabels {
    transform: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: String,
}

impl PartitionLabels {
    fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition: partition.to_string(),
        }
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Bundle durations from 0.1 ms (a one-element bundle, measured at 0.13 ms
/// p50) to about 15 minutes (a bounded Kafka read draining a backlog).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 12))
}

/// The registry and a handle on every metric in it.
pub struct Telemetry {
    registry: Registry,
    process: ProcessMetrics,
    workers_started: Family<KindLabels, Counter>,
    workers_active: Family<KindLabels, Gauge>,
    workers_failed: Family<KindLabels, Counter>,
    start_worker_refused: Counter,
    bundles_started: Counter,
    bundles_finished: Family<OutcomeLabels, Counter>,
    bundle_duration: Family<OutcomeLabels, Histogram>,
    elements: Family<ElementLabels, Counter>,
    element_bytes: Family<ElementLabels, Counter>,
    data_buffered: Gauge,
    expansion_requests: Family<OutcomeLabels, Counter>,
    kafka_read: Family<PartitionLabels, Counter>,
    kafka_written: Family<TopicLabels, Counter>,
    kafka_delivery_errors: Family<TopicLabels, Counter>,
    kafka_lag: Family<PartitionLabels, Gauge>,
    kafka_pending: Family<PartitionLabels, Gauge>,
    kafka_committed: Family<PartitionLabels, Gauge>,
    kafka_commit_age: Family<PartitionLabels, FloatGauge>,
    /// When each partition was last committed; turned into ages at scrape
    /// time, so a stalled commit shows as a growing age without anyone
    /// updating it.
    kafka_commit_times: Mutex<HashMap<PartitionLabels, Instant>>,
}

/// A cached pair of element counters for one (transform, direction): hot
/// paths keep it instead of looking the labels up for every chunk.
#[derive(Clone, Debug)]
pub struct ElementCounter {
    elements: Counter,
    bytes: Counter,
}

impl ElementCounter {
    /// Counts `n` elements of `bytes` encoded bytes.
    pub fn add(&self, n: u64, bytes: u64) {
        self.elements.inc_by(n);
        self.bytes.inc_by(bytes);
    }
}

/// The process's telemetry.
pub fn global() -> &'static Telemetry {
    static GLOBAL: OnceLock<Telemetry> = OnceLock::new();
    GLOBAL.get_or_init(Telemetry::new)
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// A fresh registry (tests use their own; the process uses [`global`]).
    pub fn new() -> Self {
        let mut root = Registry::default();
        let process = ProcessMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix(PREFIX);
        registry.register(
            "build",
            "The worker's version (always 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let t = Telemetry {
            workers_started: Family::default(),
            workers_active: Family::default(),
            workers_failed: Family::default(),
            start_worker_refused: Counter::default(),
            bundles_started: Counter::default(),
            bundles_finished: Family::default(),
            bundle_duration: Family::new_with_constructor(duration_histogram),
            elements: Family::default(),
            element_bytes: Family::default(),
            data_buffered: Gauge::default(),
            expansion_requests: Family::default(),
            kafka_read: Family::default(),
            kafka_written: Family::default(),
            kafka_delivery_errors: Family::default(),
            kafka_lag: Family::default(),
            kafka_pending: Family::default(),
            kafka_committed: Family::default(),
            kafka_commit_age: Family::default(),
            kafka_commit_times: Mutex::default(),
            registry: Registry::default(),
            process,
        };
        let r = registry;
        // Counters get `_total` and units their suffix from the encoder.
        r.register(
            "workers_started",
            "Workers started by StartWorker, native (in-process) or delegated (Python SDK worker)",
            t.workers_started.clone(),
        );
        r.register(
            "workers_active",
            "Workers holding a slot now, counted against --max-workers",
            t.workers_active.clone(),
        );
        r.register(
            "workers_failed",
            "Workers that failed to start or ended with an error",
            t.workers_failed.clone(),
        );
        r.register(
            "start_worker_refused",
            "StartWorker requests answered with an error before a worker started",
            t.start_worker_refused.clone(),
        );
        r.register(
            "bundles_started",
            "ProcessBundle instructions the native harness began",
            t.bundles_started.clone(),
        );
        r.register(
            "bundles_finished",
            "Bundles that ended, by outcome (succeeded or failed)",
            t.bundles_finished.clone(),
        );
        r.register_with_unit(
            "bundle_duration",
            "Wall time from ProcessBundle to its response",
            Unit::Seconds,
            t.bundle_duration.clone(),
        );
        r.register(
            "elements",
            "Elements into (direction=in) or out of (direction=out) a transform kind",
            t.elements.clone(),
        );
        r.register_with_unit(
            "element",
            "Encoded bytes of the elements counted by elements_total",
            Unit::Bytes,
            t.element_bytes.clone(),
        );
        r.register_with_unit(
            "data_buffered",
            "Input bytes data channels hold for bundles that are not running yet",
            Unit::Bytes,
            t.data_buffered.clone(),
        );
        r.register(
            "expansion_requests",
            "ExpansionService/Expand requests, by outcome (expanded or refused)",
            t.expansion_requests.clone(),
        );
        r.register(
            "kafka_records_read",
            "Records the native Kafka read consumed",
            t.kafka_read.clone(),
        );
        r.register(
            "kafka_records_written",
            "Records the native Kafka write had acknowledged by the broker",
            t.kafka_written.clone(),
        );
        r.register(
            "kafka_delivery_errors",
            "Records the broker refused or that were not acknowledged in time",
            t.kafka_delivery_errors.clone(),
        );
        r.register(
            "kafka_consumer_lag_records",
            "Partition end offset minus the read's next offset, when last seen",
            t.kafka_lag.clone(),
        );
        r.register(
            "kafka_pending_offset",
            "Next offset read but not yet committed (waiting for bundle finalization)",
            t.kafka_pending.clone(),
        );
        r.register(
            "kafka_committed_offset",
            "Last offset committed for the consumer group",
            t.kafka_committed.clone(),
        );
        r.register_with_unit(
            "kafka_commit_age",
            "Time since the partition's last offset commit",
            Unit::Seconds,
            t.kafka_commit_age.clone(),
        );
        // Series that exist from the start read 0 rather than missing, so
        // rate() and alerts work before the first worker or bundle.
        for kind in [NATIVE, DELEGATED] {
            let labels = kind_labels(kind);
            drop(t.workers_started.get_or_create(&labels));
            drop(t.workers_active.get_or_create(&labels));
            drop(t.workers_failed.get_or_create(&labels));
        }
        for outcome in ["succeeded", "failed"] {
            drop(t.bundles_finished.get_or_create(&OutcomeLabels { outcome }));
        }
        for outcome in ["expanded", "refused"] {
            drop(
                t.expansion_requests
                    .get_or_create(&OutcomeLabels { outcome }),
            );
        }
        Telemetry {
            registry: root,
            ..t
        }
    }

    /// The exposition text: every metric, then the OpenMetrics `# EOF`.
    pub fn encode(&self) -> Result<String, TelemetryError> {
        self.refresh_commit_ages();
        self.process.refresh();
        let mut text = String::with_capacity(8 << 10);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    fn refresh_commit_ages(&self) {
        let times = self
            .kafka_commit_times
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (labels, at) in times.iter() {
            self.kafka_commit_age
                .get_or_create(labels)
                .set(at.elapsed().as_secs_f64());
        }
    }

    // --- workers (pool.rs, delegate.rs) ---

    /// A worker of `kind` ([`NATIVE`] or [`DELEGATED`]) started.
    pub fn worker_started(&self, kind: &str) {
        self.workers_started.get_or_create(&kind_labels(kind)).inc();
    }

    /// A worker of `kind` took (`+1`) or gave back (`-1`) a pool slot.
    pub fn workers_active(&self, kind: &str, delta: i64) {
        self.workers_active
            .get_or_create(&kind_labels(kind))
            .inc_by(delta);
    }

    /// A worker of `kind` failed to start or ended with an error.
    pub fn worker_failed(&self, kind: &str) {
        self.workers_failed.get_or_create(&kind_labels(kind)).inc();
    }

    /// A `StartWorker` was answered with an error.
    pub fn start_worker_refused(&self) {
        self.start_worker_refused.inc();
    }

    // --- bundles (the bundle engine) ---

    /// A `ProcessBundle` began.
    pub fn bundle_started(&self) {
        self.bundles_started.inc();
    }

    /// A bundle ended (`ok` = its response carried no error) after `duration`.
    pub fn bundle_finished(&self, ok: bool, duration: Duration) {
        let labels = OutcomeLabels {
            outcome: if ok { "succeeded" } else { "failed" },
        };
        self.bundles_finished.get_or_create(&labels).inc();
        self.bundle_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// `n` elements of `bytes` encoded bytes went `direction` ([`IN`] or
    /// [`OUT`]) of a transform of kind `transform` (e.g. `kv_echo`).
    pub fn elements(&self, transform: &str, direction: &str, n: u64, bytes: u64) {
        self.element_counter(transform, direction).add(n, bytes);
    }

    /// The counters [`Telemetry::elements`] updates, to keep per bundle or
    /// per stream on hot paths.
    pub fn element_counter(&self, transform: &str, direction: &str) -> ElementCounter {
        let labels = ElementLabels {
            transform: transform.to_owned(),
            direction: direction.to_owned(),
        };
        ElementCounter {
            elements: self.elements.get_or_create_owned(&labels),
            bytes: self.element_bytes.get_or_create_owned(&labels),
        }
    }

    /// Data channels now hold `delta` more (or, negative, fewer) early input bytes.
    pub fn data_buffered_bytes(&self, delta: i64) {
        self.data_buffered.inc_by(delta);
    }

    // --- expansion service ---

    /// An `Expand` request was answered (`ok`) or refused.
    pub fn expansion_request(&self, ok: bool) {
        let labels = OutcomeLabels {
            outcome: if ok { "expanded" } else { "refused" },
        };
        self.expansion_requests.get_or_create(&labels).inc();
    }

    // --- Kafka ---

    /// The read consumed `n` records of `topic`/`partition`.
    pub fn kafka_records_read(&self, topic: &str, partition: i32, n: u64) {
        self.kafka_read
            .get_or_create(&PartitionLabels::new(topic, partition))
            .inc_by(n);
    }

    /// The broker acknowledged `n` records written to `topic`.
    pub fn kafka_records_written(&self, topic: &str, n: u64) {
        self.kafka_written
            .get_or_create(&topic_labels(topic))
            .inc_by(n);
    }

    /// A record for `topic` was not delivered.
    pub fn kafka_delivery_errors(&self, topic: &str, n: u64) {
        self.kafka_delivery_errors
            .get_or_create(&topic_labels(topic))
            .inc_by(n);
    }

    /// The partition's end offset is `lag` records past the read's position.
    pub fn kafka_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.kafka_lag
            .get_or_create(&PartitionLabels::new(topic, partition))
            .set(lag);
    }

    /// The partition's next offset to commit once its bundle is finalized.
    pub fn kafka_pending_offset(&self, topic: &str, partition: i32, offset: i64) {
        self.kafka_pending
            .get_or_create(&PartitionLabels::new(topic, partition))
            .set(offset);
    }

    /// `offset` was committed for the partition now (also restarts its commit age).
    pub fn kafka_committed(&self, topic: &str, partition: i32, offset: i64) {
        let labels = PartitionLabels::new(topic, partition);
        self.kafka_committed.get_or_create(&labels).set(offset);
        self.kafka_commit_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(labels, Instant::now());
    }

    /// Both offsets of a partition at once (see [`Telemetry::kafka_pending_offset`]
    /// and [`Telemetry::kafka_committed`]).
    pub fn kafka_offsets(&self, topic: &str, partition: i32, pending: i64, committed: i64) {
        self.kafka_pending_offset(topic, partition, pending);
        self.kafka_committed(topic, partition, committed);
    }
}

/// `process_*` metrics, refreshed from `/proc/self` at each scrape.
struct ProcessMetrics {
    resident: Gauge,
    virtual_memory: Gauge,
    cpu: Counter<f64, AtomicU64>,
    /// The CPU seconds already added to `cpu` (a counter only goes up by deltas).
    cpu_seen: Mutex<f64>,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: FloatGauge,
    threads: Gauge,
}

impl ProcessMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = ProcessMetrics {
            resident: Gauge::default(),
            virtual_memory: Gauge::default(),
            cpu: Counter::default(),
            cpu_seen: Mutex::new(0.0),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: FloatGauge::default(),
            threads: Gauge::default(),
        };
        let r = registry;
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory size",
            Unit::Bytes,
            m.resident.clone(),
        );
        r.register_with_unit(
            "process_virtual_memory",
            "Virtual memory size",
            Unit::Bytes,
            m.virtual_memory.clone(),
        );
        r.register_with_unit(
            "process_cpu",
            "User and system CPU time spent",
            Unit::Seconds,
            m.cpu.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors",
            m.open_fds.clone(),
        );
        r.register(
            "process_max_fds",
            "Limit on open file descriptors",
            m.max_fds.clone(),
        );
        r.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            m.start_time.clone(),
        );
        r.register("process_threads", "OS threads", m.threads.clone());
        m
    }

    /// Best effort: a field `/proc` does not offer (another OS, a locked-down
    /// container) keeps its last value rather than failing the scrape.
    fn refresh(&self) {
        let Some(stat) = read_proc_stat() else {
            return;
        };
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if ticks > 0 {
            let ticks = ticks as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let mut seen = self.cpu_seen.lock().unwrap_or_else(|p| p.into_inner());
            if cpu > *seen {
                self.cpu.inc_by(cpu - *seen);
                *seen = cpu;
            }
            if let Some(boot) = boot_time() {
                self.start_time.set(boot + stat.start_ticks as f64 / ticks);
            }
        }
        if page > 0 {
            // c_long is i32 on 32-bit targets, i64 here.
            #[allow(clippy::useless_conversion)]
            let page = i64::from(page);
            self.resident.set(stat.rss_pages.saturating_mul(page));
        }

        self.virtual_memory.set(stat.vsize);
        self.threads.set(stat.threads);
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass and nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            self.max_fds
                .set(i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX));
        }
    }
}

/// The fields of `/proc/self/stat` the process metrics use.
struct ProcStat {
    utime: u64,
    stime: u64,
    threads: i64,
    start_ticks: u64,
    vsize: i64,
    rss_pages: i64,
}

fn read_proc_stat() -> Option<ProcStat> {
    parse_proc_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Parses `/proc/PID/stat` (proc(5)). The command name, field 2, is in
/// parentheses and may itself hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is rest's first; field N is rest's (N - 3)th.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
    Some(ProcStat {
        utime: u64::try_from(field(14)?).ok()?,
        stime: u64::try_from(field(15)?).ok()?,
        threads: field(20)?,
        start_ticks: u64::try_from(field(22)?).ok()?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// Boot time in seconds since the epoch (`btime` in `/proc/stat`).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn kind_labels(kind: &str) -> KindLabels {
    KindLabels {
        kind: kind.to_owned(),
    }
}

fn topic_labels(topic: &str) -> TopicLabels {
    TopicLabels {
        topic: topic.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting with `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn names_follow_prometheus_conventions_and_values_add_up() {
        let t = Telemetry::new();
        t.worker_started(NATIVE);
        t.worker_started(NATIVE);
        t.workers_active(NATIVE, 2);
        t.workers_active(NATIVE, -1);
        t.worker_failed(DELEGATED);
        t.bundle_started();
        t.bundle_finished(true, Duration::from_millis(3));
        t.bundle_finished(false, Duration::from_secs(2));
        t.elements("kv_echo", IN, 10, 1250);
        t.element_counter("kv_echo", IN).add(5, 625);
        t.data_buffered_bytes(100);
        t.data_buffered_bytes(-40);
        t.expansion_request(false);
        t.kafka_records_read("in", 3, 7);
        t.kafka_records_written("out", 9);
        t.kafka_delivery_errors("out", 1);
        t.kafka_offsets("in", 3, 42, 40);
        t.kafka_consumer_lag("in", 3, 12);
        let text = t.encode().unwrap();
        for (series, want) in [
            (r#"beam_rust_worker_build_info{version="0.1.0"}"#, 1.0),
            (
                r#"beam_rust_worker_workers_started_total{kind="native"}"#,
                2.0,
            ),
            (r#"beam_rust_worker_workers_active{kind="native"}"#, 1.0),
            (
                r#"beam_rust_worker_workers_failed_total{kind="delegated"}"#,
                1.0,
            ),
            ("beam_rust_worker_bundles_started_total", 1.0),
            (
                r#"beam_rust_worker_bundles_finished_total{outcome="failed"}"#,
                1.0,
            ),
            (
                r#"beam_rust_worker_bundle_duration_seconds_count{outcome="succeeded"}"#,
                1.0,
            ),
            (
                r#"beam_rust_worker_elements_total{transform="kv_echo",direction="in"}"#,
                15.0,
            ),
            (
                r#"beam_rust_worker_element_bytes_total{transform="kv_echo",direction="in"}"#,
                1875.0,
            ),
            ("beam_rust_worker_data_buffered_bytes", 60.0),
            (
                r#"beam_rust_worker_expansion_requests_total{outcome="refused"}"#,
                1.0,
            ),
            (
                r#"beam_rust_worker_kafka_records_read_total{topic="in",partition="3"}"#,
                7.0,
            ),
            (
                r#"beam_rust_worker_kafka_records_written_total{topic="out"}"#,
                9.0,
            ),
            (
                r#"beam_rust_worker_kafka_delivery_errors_total{topic="out"}"#,
                1.0,
            ),
            (
                r#"beam_rust_worker_kafka_pending_offset{topic="in",partition="3"}"#,
                42.0,
            ),
            (
                r#"beam_rust_worker_kafka_committed_offset{topic="in",partition="3"}"#,
                40.0,
            ),
            (
                r#"beam_rust_worker_kafka_consumer_lag_records{topic="in",partition="3"}"#,
                12.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
        let age = sample(
            &text,
            r#"beam_rust_worker_kafka_commit_age_seconds{topic="in",partition="3"}"#,
        )
        .unwrap_or(-1.0);
        assert!((0.0..60.0).contains(&age), "commit age {age} in\n{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        #[cfg(target_os = "linux")]
        {
            let rss = sample(&text, "process_resident_memory_bytes").unwrap_or(0.0);
            assert!(rss > 1e6, "resident memory {rss} in\n{text}");
            let fds = sample(&text, "process_open_fds").unwrap_or(0.0);
            assert!(fds >= 3.0, "open fds {fds}");
            let started = sample(&text, "process_start_time_seconds").unwrap_or(0.0);
            assert!(started > 1.6e9, "start time {started}");
        }
    }

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift fields.
        let line = "4242 (odd) name) S 1 4242 4242 0 -1 4194304 100 0 0 0 \
                    250 50 0 0 20 0 7 0 123456 104857600 2560 18446744073709551615";
        let stat = parse_proc_stat(line).expect("parses");
        assert_eq!((stat.utime, stat.stime), (250, 50));
        assert_eq!(stat.threads, 7);
        assert_eq!(stat.start_ticks, 123456);
        assert_eq!(stat.vsize, 104857600);
        assert_eq!(stat.rss_pages, 2560);
        assert!(parse_proc_stat("garbage").is_none());
    }
}
