//! Delegated workers: a `StartWorker` for an environment this pool did not
//! create starts Beam's own Python SDK harness as a child process, so a
//! pipeline whose default environment is `EXTERNAL` (every `Create`, `Map`,
//! `assert_that`: pickled Python) runs unchanged next to our native stages.
//!
//! Environments made by our expansion service carry [`NATIVE_PARAM`] in their
//! `ExternalPayload.params`; runners copy those params into the
//! `StartWorkerRequest` (Beam's Python runner and Flink both do), and
//! [`route`] sends those to the in-process harness. Everything else lands here.
//!
//! The child is started the way Beam's container boot starts it:
//! `python -m apache_beam.runners.worker.sdk_worker_main` with the worker id,
//! the control and logging endpoints (text-format `ApiServiceDescriptor`s) and
//! the pipeline options from the runner's provision service in its
//! environment. Each child leads its own process group, so stopping it also
//! stops whatever it started; its output goes line by line to our log.
//!
//! Like boot, the pool first stages the files the runner lists for the worker
//! (the pipeline's pickled main session above all) with [`crate::artifacts`].
//! Unlike boot, nothing is installed per worker (no venv, no pip): workers use
//! the pool's Python and run in its working directory (or `--python-workdir`),
//! so the pipeline's own modules import there as they do for the pipeline.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beam_proto::fn_execution::provision_service_client::ProvisionServiceClient;
use beam_proto::fn_execution::{GetProvisionInfoRequest, ProvisionInfo};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::control::WorkerSpec;
use crate::grpc::worker_channel;
use crate::logging;

/// `ExternalPayload.params` / `StartWorkerRequest.params` key marking an
/// environment made by our expansion service.
pub const NATIVE_PARAM: &str = "beam-rust-worker";
/// Value of [`NATIVE_PARAM`] for stages the in-process harness runs.
pub const NATIVE_VALUE: &str = "native";

/// The module Beam's container boot runs as the SDK harness.
pub const SDK_WORKER_MAIN: &str = "apache_beam.runners.worker.sdk_worker_main";

/// Output lines kept per worker to explain a crash.
const TAIL_LINES: usize = 20;
/// Longer output lines are cut: a child printing without newlines must not
/// grow our memory.
const MAX_LINE: u64 = 16 * 1024;
/// Importing apache_beam takes a few seconds on a cold, busy machine.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
const PROVISION_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a starting worker is checked for a connection to its runner.
const CONNECT_POLL: Duration = Duration::from_millis(50);

/// Who runs the stage a `StartWorker` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The in-process Rust harness.
    Native,
    /// A Python SDK worker process.
    Delegated,
}

/// Why a delegated worker could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegateError {
    #[error(
        "StartWorkerRequest.params has {NATIVE_PARAM}={0:?}, which this pool does not know; \
         environments made by this pool's expansion service say {NATIVE_PARAM}={NATIVE_VALUE:?}, \
         and requests without it start a Python SDK worker"
    )]
    UnknownMarker(String),
    #[error(
        "cannot start a Python SDK worker, which every environment not made by this pool's \
         expansion service needs: {0}. Start the pool with --python /path/to/python naming a \
         Python that has apache-beam installed (e.g. a venv's bin/python after \
         `pip install apache-beam`)"
    )]
    NoPython(String),
    #[error("cannot start the Python SDK worker '{python}': {why}")]
    Spawn { python: String, why: String },
    #[error(
        "the Python SDK worker for '{worker_id}' (pid {pid}) exited with {status} before it \
         could connect to the runner; its last output:\n{tail}"
    )]
    EarlyExit {
        worker_id: String,
        pid: u32,
        status: String,
        tail: String,
    },
    #[error("the Python SDK worker for '{0}' was stopped while starting")]
    StoppedWhileStarting(String),
    #[error(
        "cannot stage the pipeline's files (its pickled main session, packages) for the \
         Python SDK worker '{worker_id}': {why}"
    )]
    Staging { worker_id: String, why: String },
}

/// Decides from `StartWorkerRequest.params` who runs the worker.
pub fn route(params: &HashMap<String, String>) -> Result<Route, DelegateError> {
    match params.get(NATIVE_PARAM).map(String::as_str) {
        None => Ok(Route::Delegated),
        Some(NATIVE_VALUE) => Ok(Route::Native),
        // A Rust stage sent to Python (or the reverse) would fail later and
        // far less clearly than this.
        Some(other) => Err(DelegateError::UnknownMarker(other.to_owned())),
    }
}

/// How delegated workers are started and stopped.
#[derive(Debug, Clone)]
pub struct DelegateConfig {
    /// The Python to run; `None` means the first `python3` on `PATH` that can
    /// import apache_beam.
    pub python: Option<PathBuf>,
    /// Working directory of the workers; `None` is the pool's, so modules next
    /// to the pipeline (the seed's `import worker`) import as they do there.
    pub workdir: Option<PathBuf>,
    /// After SIGTERM, how long a worker gets before SIGKILL.
    pub stop_grace: Duration,
    /// `StartWorker` is answered once the worker has connected to its runner,
    /// or after this long; a worker that exits before that fails its
    /// `StartWorker` with the exit status and output. Later deaths go to the
    /// pool's log and the runner's.
    pub startup_window: Duration,
    /// Each worker's staged artifacts go to a folder of its own under this
    /// one, removed when the worker is gone.
    pub staging_root: PathBuf,
}

impl Default for DelegateConfig {
    fn default() -> Self {
        Self {
            python: None,
            workdir: None,
            stop_grace: Duration::from_secs(10),
            startup_window: Duration::from_millis(1500),
            staging_root: crate::artifacts::default_root(),
        }
    }
}

/// Starts, watches and stops the pool's delegated workers.
pub struct Delegates {
    config: DelegateConfig,
    /// The Python found usable, once found. Failures are not kept, so
    /// installing apache-beam needs no pool restart.
    python: tokio::sync::Mutex<Option<PathBuf>>,
    /// One task per live child, so shutdown can wait until every one is reaped.
    supervisors: TaskTracker,
}

/// How a child ended, for the logs and `StartWorker`.
struct Exit {
    status: String,
    success: bool,
    tail: String,
}

impl Delegates {
    pub fn new(config: DelegateConfig) -> Self {
        Self {
            config,
            python: tokio::sync::Mutex::new(None),
            supervisors: TaskTracker::new(),
        }
    }

    /// The Python to run workers with, checked to import apache_beam.
    pub async fn python(&self) -> Result<PathBuf, DelegateError> {
        // Held across the check so concurrent StartWorkers run it once.
        let mut found = self.python.lock().await;
        if let Some(python) = found.as_ref() {
            return Ok(python.clone());
        }
        let python = match &self.config.python {
            Some(python) => check_python(python).await.map(|_| python.clone()),
            None => find_python(std::env::var_os("PATH").as_deref().unwrap_or_default()).await,
        }
        .map_err(DelegateError::NoPython)?;
        *found = Some(python.clone());
        Ok(python)
    }

    /// Logs at startup whether delegated workers can run, so a missing
    /// apache-beam shows before the first pipeline needs it.
    pub async fn report_python(&self) {
        match self.python().await {
            Ok(python) => {
                info!(python = %python.display(), "delegated (Python) workers will use this Python")
            }
            Err(e) => {
                warn!("{e}. Until then, StartWorker for such environments is refused")
            }
        }
    }

    /// Starts the Python worker `spec` describes; returns once it has
    /// connected to its runner or survived the startup window. `on_exit` runs
    /// when the child is gone (reaped), whatever ended it; `cancel` stops it.
    pub async fn launch(
        &self,
        spec: WorkerSpec,
        cancel: CancellationToken,
        on_exit: impl FnOnce() + Send + 'static,
    ) -> Result<u32, DelegateError> {
        let python = match self.python().await {
            Ok(python) => python,
            Err(e) => {
                on_exit();
                return Err(e);
            }
        };
        let info = match &spec.provision_url {
            Some(url) => provision_info(url, &spec.worker_id).await,
            None => None,
        };
        let staging = self.config.staging_root.join(spec.serial.to_string());
        let staged = match stage_artifacts(info.as_ref(), &spec.worker_id, &staging).await {
            Ok(staged) => staged,
            Err(e) => {
                remove_staging(&staging).await;
                on_exit();
                return Err(e);
            }
        };
        let mut command = Command::new(&python);
        command
            .args(["-m", SDK_WORKER_MAIN])
            .envs(worker_env(&spec))
            .envs(info.as_ref().map(provision_env).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: signals reach whatever the worker starts, and a
            // Ctrl-C in the pool's terminal does not hit the workers directly.
            .process_group(0)
            // Last resort if the runtime goes away without a shutdown.
            .kill_on_drop(true);
        if staged {
            command.env("SEMI_PERSISTENT_DIRECTORY", &staging);
        }
        if let Some(dir) = &self.config.workdir {
            command.current_dir(dir);
        }
        // From here on the supervisor's exit path removes the folder.
        let on_exit = move || {
            on_exit();
            if staged {
                tokio::spawn(async move { remove_staging(&staging).await });
            }
        };
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                on_exit();
                return Err(DelegateError::Spawn {
                    python: python.display().to_string(),
                    why: e.to_string(),
                });
            }
        };
        let Some(pid) = child.id() else {
            // Only after it was reaped, which has not happened yet.
            on_exit();
            return Err(DelegateError::Spawn {
                python: python.display().to_string(),
                why: "the child has no process id".into(),
            });
        };
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let worker_id = spec.worker_id.clone();
        let control_url = spec.control_url.clone();
        let span = info_span!("python_worker", worker_id = %worker_id, pid);
        let mut forwarders = Vec::new();
        for (stream, pipe) in [
            ("stdout", child.stdout.take().map(boxed)),
            ("stderr", child.stderr.take().map(boxed)),
        ] {
            if let Some(pipe) = pipe {
                forwarders.push(tokio::spawn(
                    forward_lines(pipe, stream, tail.clone()).instrument(span.clone()),
                ));
            }
        }
        info!(worker_id, pid, python = %python.display(), "started Python SDK worker");

        let (exited_tx, mut exited_rx) = oneshot::channel::<Exit>();
        let grace = self.config.stop_grace;
        let started = Instant::now();
        self.supervisors.spawn(
            async move {
                let stopped = tokio::select! {
                    status = child.wait() => Stopped::No(status),
                    _ = cancel.cancelled() => Stopped::Yes(stop(&mut child, pid, grace).await),
                };
                // Whatever the leader left running in its group goes too.
                signal_group(pid, libc::SIGKILL);
                // The pipes close once every process holding them is gone;
                // the forwarders then have the last lines.
                for f in forwarders {
                    let _ = tokio::time::timeout(Duration::from_secs(2), f).await;
                }
                let tail = lines(&tail);
                match stopped {
                    Stopped::Yes(status) => info!(
                        pid,
                        status = %describe(&status),
                        "Python SDK worker stopped"
                    ),
                    Stopped::No(status) => {
                        let exit = Exit {
                            status: describe(&status),
                            success: matches!(&status, Ok(s) if s.success()),
                            tail,
                        };
                        // While StartWorker still waits, it reports the exit;
                        // after that, the runner hears of it through its log.
                        if let Err(exit) = exited_tx.send(exit) {
                            // An exit during start-up is counted by the pool,
                            // which fails the StartWorker; this one came later.
                            if !exit.success {
                                crate::telemetry::global()
                                    .worker_failed(crate::telemetry::DELEGATED);
                            }
                            report_exit(&spec, pid, started.elapsed(), exit).await;
                        }
                    }
                }
                on_exit();
            }
            .instrument(span),
        );

        let control_port = port_of(&control_url);
        let deadline = tokio::time::Instant::now() + self.config.startup_window;
        let exited = loop {
            tokio::select! {
                exited = &mut exited_rx => break Some(exited),
                _ = tokio::time::sleep(CONNECT_POLL) => {}
            }
            // Once it reached the runner, the runner sees what happens next.
            if control_port.is_some_and(|port| connected_to(pid, port)) {
                debug!(worker_id, pid, "Python SDK worker connected to the runner");
                break None;
            }
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
        };
        let exit = match exited {
            Some(Ok(exit)) => Some(exit),
            Some(Err(_)) => return Err(DelegateError::StoppedWhileStarting(worker_id)),
            None => {
                // An exit sent just as the wait ended is still ours to report.
                exited_rx.close();
                exited_rx.try_recv().ok()
            }
        };
        match exit {
            Some(exit) => {
                // `?` keeps the output on one log line.
                error!(worker_id, pid, status = %exit.status, last_output = ?exit.tail, "Python SDK worker exited while starting");
                Err(DelegateError::EarlyExit {
                    worker_id,
                    pid,
                    status: exit.status,
                    tail: exit.tail,
                })
            }
            None => Ok(pid),
        }
    }

    /// Waits until every delegated worker is reaped. Called after they were
    /// all cancelled; each takes at most the stop grace period plus SIGKILL.
    pub async fn wait_stopped(&self) {
        self.supervisors.close();
        self.supervisors.wait().await;
        remove_staging(&self.config.staging_root).await;
    }
}

enum Stopped {
    Yes(std::io::Result<ExitStatus>),
    No(std::io::Result<ExitStatus>),
}

/// The port of a `host:port` (or `[v6]:port`, or `http://host:port`) URL.
fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// Whether process `pid` holds an established TCP connection to remote port
/// `port`: the worker has reached its runner. The harness says so nowhere we
/// can read, so Linux's `/proc` is asked (its sockets, then the TCP tables);
/// elsewhere this is always false and the startup window runs out instead.
fn connected_to(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let sockets: HashSet<u64> = fds
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.ok()?.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            inode.parse().ok()
        })
        .collect();
    if sockets.is_empty() {
        return false;
    }
    ["tcp", "tcp6"].iter().any(|table| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                let cols: Vec<&str> = line.split_whitespace().collect();
                let remote_port = cols
                    .get(2)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                let established = cols.get(3) == Some(&"01");
                let inode = cols.get(9).and_then(|i| i.parse::<u64>().ok());
                established
                    && remote_port == Some(port)
                    && inode.is_some_and(|i| sockets.contains(&i))
            })
        })
    })
}

/// SIGTERM to the group, then SIGKILL if the worker outlives `grace`; always reaps.
async fn stop(child: &mut Child, pid: u32, grace: Duration) -> std::io::Result<ExitStatus> {
    signal_group(pid, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            warn!(
                pid,
                grace_secs = grace.as_secs_f64(),
                "Python SDK worker ignored SIGTERM; sending SIGKILL"
            );
            signal_group(pid, libc::SIGKILL);
            child.wait().await
        }
    }
}

/// Signals the process group led by `pid`. Safe against pid reuse while the
/// group has members (their group id keeps the number taken); once all are
/// gone the call fails with ESRCH, which is what we want to ignore.
fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: killpg has no memory-safety preconditions; it only sends a signal.
    let _ = unsafe { libc::killpg(pgid, signal) };
}

/// Tells the pool's log, and the runner's when it has a logging endpoint,
/// that a worker ended on its own.
async fn report_exit(spec: &WorkerSpec, pid: u32, after: Duration, exit: Exit) {
    if exit.success {
        info!(pid, status = %exit.status, "Python SDK worker exited");
        return;
    }
    let cancel = CancellationToken::new();
    // The stream exists only for this report: the worker itself logs to the
    // runner on its own stream while it is healthy.
    let logs = spec.logging_url.as_deref().and_then(|url| {
        logging::forward_to_runner(spec.serial, url, &spec.worker_id, cancel.clone())
            .inspect_err(|e| warn!(error = %e, "cannot report the crash to the runner's log"))
            .ok()
    });
    // The span routes this event to the runner's log (see `logging`).
    let span = info_span!("worker", worker_id = %spec.worker_id, worker_serial = spec.serial);
    span.in_scope(|| {
        error!(
            pid,
            status = %exit.status,
            after_secs = after.as_secs_f64(),
            last_output = ?exit.tail,
            "Python SDK worker for '{}' crashed",
            spec.worker_id
        );
    });
    // Dropping the guard ends the stream once the entry is sent; cancelling
    // bounds how long a runner that stopped reading may hold it.
    drop(logs);
    cancel.cancel();
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => s.to_string(),
        },
        Err(e) => format!("an unknown status ({e})"),
    }
}

fn boxed(pipe: impl AsyncRead + Send + Unpin + 'static) -> Box<dyn AsyncRead + Send + Unpin> {
    Box::new(pipe)
}

/// Copies each line of `pipe` to our log and keeps the last few for crash reports.
async fn forward_lines(
    pipe: Box<dyn AsyncRead + Send + Unpin>,
    stream: &'static str,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                debug!(stream, error = %e, "reading the worker's output failed");
                return;
            }
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        // Outside the runner-routing span: the worker sends its own logs to
        // the runner; this is for whoever reads the pool's log.
        info!(stream, "{line}");
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }
}

fn lines(tail: &Mutex<VecDeque<String>>) -> String {
    let tail = tail.lock().unwrap_or_else(|p| p.into_inner());
    if tail.is_empty() {
        return "(no output)".into();
    }
    tail.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// A text-format `ApiServiceDescriptor`, as `sdk_worker_main` parses it.
fn descriptor(url: &str) -> String {
    let escaped = url.replace('\\', "\\\\").replace('"', "\\\"");
    format!("url: \"{escaped}\"")
}

/// The environment Beam's boot gives `sdk_worker_main`, from the request.
fn worker_env(spec: &WorkerSpec) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("WORKER_ID", spec.worker_id.clone()),
        (
            "CONTROL_API_SERVICE_DESCRIPTOR",
            descriptor(&spec.control_url),
        ),
        // Options come from provision; without it the harness needs an empty object.
        ("PIPELINE_OPTIONS", "{}".to_owned()),
    ];
    if let Some(url) = &spec.logging_url {
        env.push(("LOGGING_API_SERVICE_DESCRIPTOR", descriptor(url)));
    }
    env
}

/// The runner's provision info for the worker. A runner without provision
/// still gets a worker, with default options and nothing staged.
async fn provision_info(url: &str, worker_id: &str) -> Option<ProvisionInfo> {
    let fetch = async {
        let channel = worker_channel(url, worker_id).map_err(|e| e.to_string())?;
        ProvisionServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .get_provision_info(GetProvisionInfoRequest {})
            .await
            .map(|r| r.into_inner().info)
            .map_err(|s| s.to_string())
    };
    match tokio::time::timeout(PROVISION_TIMEOUT, fetch).await {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            warn!(worker_id, error = %e, "no provision info; the Python worker gets default options");
            None
        }
        Err(_) => {
            warn!(
                worker_id,
                "provision service did not answer in time; the Python worker gets default options"
            );
            None
        }
    }
}

/// Stages what the runner lists for the worker into `dir`, as boot does;
/// `Ok(true)` if the worker is to be pointed at it.
async fn stage_artifacts(
    info: Option<&ProvisionInfo>,
    worker_id: &str,
    dir: &Path,
) -> Result<bool, DelegateError> {
    let Some(info) = info.filter(|i| !i.dependencies.is_empty()) else {
        return Ok(false);
    };
    let failed = |why: String| DelegateError::Staging {
        worker_id: worker_id.to_owned(),
        why,
    };
    let Some(endpoint) = info
        .artifact_endpoint
        .as_ref()
        .filter(|e| !e.url.is_empty())
    else {
        return Err(failed(format!(
            "the runner lists {} dependencies but no artifact endpoint to fetch them from",
            info.dependencies.len()
        )));
    };
    crate::artifacts::stage(&endpoint.url, worker_id, &info.dependencies, dir)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(true)
}

async fn remove_staging(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(dir = %dir.display(), error = %e, "cannot remove staged artifacts"),
    }
}

/// Pipeline options, runner capabilities and status endpoint from the
/// runner's provision info, as Beam's boot passes them.
fn provision_env(info: &ProvisionInfo) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if let Some(options) = &info.pipeline_options {
        env.push(("PIPELINE_OPTIONS", struct_json(options).to_string()));
    }
    if !info.runner_capabilities.is_empty() {
        env.push(("RUNNER_CAPABILITIES", info.runner_capabilities.join(" ")));
    }
    if let Some(status) = info.status_endpoint.as_ref().filter(|e| !e.url.is_empty()) {
        env.push(("STATUS_API_SERVICE_DESCRIPTOR", descriptor(&status.url)));
    }
    env
}

/// A protobuf `Struct` as the JSON object `sdk_worker_main` reads.
fn struct_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(J::Null, J::Number),
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(value_json).collect()),
    }
}

/// Runs `python -c 'import apache_beam'`; the error says what went wrong.
pub async fn check_python(python: &Path) -> Result<(), String> {
    let output = Command::new(python)
        .args(["-c", "import apache_beam"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CHECK_TIMEOUT, output).await {
        Err(_) => Err(format!(
            "{} did not finish `import apache_beam` within {}s",
            python.display(),
            CHECK_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("{} cannot be run: {e}", python.display())),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            Err(format!(
                "{} cannot import apache_beam ({})",
                python.display(),
                last.unwrap_or("no error output").trim()
            ))
        }
    }
}

/// The first `python3` on `path` (a `PATH` value) that imports apache_beam.
pub async fn find_python(path: &OsStr) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    for dir in std::env::split_paths(path) {
        let candidate = dir.join("python3");
        if !candidate.is_file() {
            continue;
        }
        match check_python(&candidate).await {
            Ok(()) => return Ok(candidate),
            Err(e) => tried.push(e),
        }
    }
    if tried.is_empty() {
        Err("there is no python3 on PATH".into())
    } else {
        Err(format!(
            "no python3 on PATH can import apache_beam: {}",
            tried.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn marker_routes_to_native_everything_else_to_python() {
        assert_eq!(
            route(&params(&[(NATIVE_PARAM, NATIVE_VALUE)])),
            Ok(Route::Native)
        );
        assert_eq!(route(&params(&[])), Ok(Route::Delegated));
        // Other params (a runner's own) do not matter.
        assert_eq!(
            route(&params(&[("env", "x"), (NATIVE_PARAM, NATIVE_VALUE)])),
            Ok(Route::Native)
        );
        assert_eq!(route(&params(&[("env", "x")])), Ok(Route::Delegated));
        let e = route(&params(&[(NATIVE_PARAM, "python")])).unwrap_err();
        assert!(e.to_string().contains("\"python\""), "{e}");
    }

    #[test]
    fn ports_of_runner_urls() {
        assert_eq!(port_of("host.example:50000"), Some(50000));
        assert_eq!(port_of("[::1]:8080"), Some(8080));
        assert_eq!(port_of("http://127.0.0.1:1/"), Some(1));
        assert_eq!(port_of("host"), None);
    }

    #[test]
    fn an_established_connection_is_seen_in_proc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        assert!(!connected_to(me, port));
        let _stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _accepted = listener.accept().unwrap();
        assert!(connected_to(me, port));
        assert!(!connected_to(me, port.wrapping_add(1).max(1)));
        assert!(!connected_to(u32::MAX, port), "no such process");
    }

    #[test]
    fn descriptors_are_text_format_and_escaped() {
        assert_eq!(descriptor("host:1"), r#"url: "host:1""#);
        assert_eq!(descriptor(r#"a"b\c:1"#), r#"url: "a\"b\\c:1""#);
    }

    #[test]
    fn environment_follows_beams_boot() {
        let spec = WorkerSpec {
            worker_id: "worker_3".into(),
            serial: 1,
            control_url: "h:1".into(),
            logging_url: Some("h:2".into()),
            provision_url: None,
        };
        let env: HashMap<_, _> = worker_env(&spec).into_iter().collect();
        assert_eq!(env["WORKER_ID"], "worker_3");
        assert_eq!(env["CONTROL_API_SERVICE_DESCRIPTOR"], r#"url: "h:1""#);
        assert_eq!(env["LOGGING_API_SERVICE_DESCRIPTOR"], r#"url: "h:2""#);
        assert_eq!(env["PIPELINE_OPTIONS"], "{}");
    }

    #[test]
    fn pipeline_options_become_json() {
        use prost_types::{ListValue, Struct, Value, value::Kind};
        let s = |k: Kind| Value { kind: Some(k) };
        let options = Struct {
            fields: [
                (
                    "beam:option:experiments:v1".to_owned(),
                    s(Kind::ListValue(ListValue {
                        values: vec![s(Kind::StringValue("a=\"1\"".into()))],
                    })),
                ),
                ("save_main_session".to_owned(), s(Kind::BoolValue(true))),
                ("n".to_owned(), s(Kind::NumberValue(2.0))),
            ]
            .into(),
        };
        let json = struct_json(&options).to_string();
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["beam:option:experiments:v1"][0], "a=\"1\"");
        assert_eq!(back["save_main_session"], true);
        assert_eq!(back["n"], 2.0);
    }

    /// A fresh directory under the system temp dir for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "beam-rust-worker-delegate-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn python_without_beam_is_named_with_the_import_error() {
        let dir = scratch("nobeam");
        let py = script(
            &dir,
            "python3",
            "echo \"ModuleNotFoundError: No module named 'apache_beam'\" >&2; exit 1",
        );
        let e = check_python(&py).await.unwrap_err();
        assert!(e.contains(&py.display().to_string()), "{e}");
        assert!(e.contains("No module named 'apache_beam'"), "{e}");
        let missing = check_python(&dir.join("nope")).await.unwrap_err();
        assert!(missing.contains("cannot be run"), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn path_search_skips_pythons_without_beam() {
        let dir = scratch("search");
        let [bad, good, empty] = ["bad", "good", "empty"].map(|d| {
            let d = dir.join(d);
            std::fs::create_dir_all(&d).unwrap();
            d
        });
        script(&bad, "python3", "exit 1");
        let good_py = script(&good, "python3", "exit 0");
        let path = std::env::join_paths([&empty, &bad, &good]).unwrap();
        assert_eq!(find_python(&path).await.unwrap(), good_py);
        let path = std::env::join_paths([&empty, &bad]).unwrap();
        let e = find_python(&path).await.unwrap_err();
        assert!(e.contains("no python3 on PATH can import"), "{e}");
        assert!(e.contains("bad/python3"), "{e}");
        let path = std::env::join_paths([&empty]).unwrap();
        assert_eq!(
            find_python(&path).await.unwrap_err(),
            "there is no python3 on PATH"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_startworker_error_says_how_to_fix_it() {
        let delegates = Delegates::new(DelegateConfig {
            python: Some("/nonexistent/python".into()),
            ..DelegateConfig::default()
        });
        let e = delegates.python().await.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/python"), "{e}");
        assert!(e.contains("--python"), "{e}");
        assert!(e.contains("apache-beam"), "{e}");
    }
}
