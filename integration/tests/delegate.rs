//! Delegated (Python) workers, driven through the pool's real `StartWorker`
//! and `StopWorker` against a fake Python: a shell script given as the pool's
//! Python that acts like `sdk_worker_main` started by Beam (it records its pid
//! and its child's, prints its environment, then crashes, ignores SIGTERM or
//! waits, as its worker id says). No Beam is needed here; the real Python SDK
//! worker is exercised by `integration/python/test_dropin.py`.
//!
//! Zombies are counted by reading `/proc` for children of this process, which
//! is the pool's process (the pool runs in-process).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use beam_integration::{NATIVE_PARAMS, RunnerOptions, TestRunner, experiments_options};
use beam_proto::fn_execution::{StartWorkerRequest, StartWorkerResponse};
use beam_rust_worker::config::PoolConfig;
use beam_rust_worker::delegate::{DelegateConfig, NATIVE_PARAM, NATIVE_VALUE};
use common::Pool;

const STOP_GRACE: Duration = Duration::from_secs(1);
const STARTUP_WINDOW: Duration = Duration::from_millis(500);
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// What the fake does is chosen by the worker id's prefix.
const FAKE_PYTHON: &str = r#"#!/bin/sh
# The pool's `python -c "import apache_beam"` check.
if [ "$1" = "-c" ]; then exit 0; fi
if [ "$1 $2" != "-m apache_beam.runners.worker.sdk_worker_main" ]; then
  echo "unexpected arguments: $*" >&2; exit 64
fi
echo "fake-sdk-worker id=$WORKER_ID control=$CONTROL_API_SERVICE_DESCRIPTOR logging=$LOGGING_API_SERVICE_DESCRIPTOR options=$PIPELINE_OPTIONS cwd=$(pwd)"
echo "second line on stderr" >&2
case "$WORKER_ID" in
  crash_*) echo "Traceback: fake failure in $WORKER_ID" >&2; exit 3 ;;
  latecrash_*) sleep 1; echo "late failure in $WORKER_ID" >&2; exit 4 ;;
  staged_*)
    # What sdk_worker_main reads: the main session under the semi-persistent folder.
    echo "$SEMI_PERSISTENT_DIRECTORY" > "$WORKER_ID.folder"
    cp "$SEMI_PERSISTENT_DIRECTORY/staged/pickled_main_session" "$WORKER_ID.session"
    sleep 1000 & echo "$!" > "$WORKER_ID.child"
    echo "$$" > "$WORKER_ID.pid"
    wait ;;
  stubborn_*)
    trap '' TERM
    sleep 1000 & echo "$!" > "$WORKER_ID.child"
    echo "$$" > "$WORKER_ID.pid"
    while :; do sleep 1; done ;;
  *)
    sleep 1000 & echo "$!" > "$WORKER_ID.child"
    echo "$$" > "$WORKER_ID.pid"
    wait ;;
esac
"#;

/// Every line the pool logged in this test binary, as the fmt layer writes it
/// (span fields included), so tests can check what reached the pool's log.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Installed before `common`'s (whose `try_init` then does nothing): the
/// runner log layer as in the binary, plus a capture of the pool's own log.
fn init_capture() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::{EnvFilter, Layer};
        tracing_subscriber::registry()
            .with(beam_rust_worker::logging::RunnerLogLayer)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(|| Capture)
                    .with_filter(EnvFilter::new("beam_rust_worker=info")),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(EnvFilter::from_default_env()),
            )
            .init();
    });
}

/// A scratch directory with the fake Python; also the workers' working directory.
struct Fake {
    dir: PathBuf,
}

impl Fake {
    fn new(test: &str) -> Fake {
        Self::with_script(test, FAKE_PYTHON)
    }

    fn with_script(test: &str, script: &str) -> Fake {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "beam-rust-worker-delegate-it-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let python = dir.join("python");
        std::fs::write(&python, script).unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake { dir }
    }

    fn config(&self) -> PoolConfig {
        PoolConfig {
            delegate: DelegateConfig {
                python: Some(self.dir.join("python")),
                workdir: Some(self.dir.clone()),
                stop_grace: STOP_GRACE,
                startup_window: STARTUP_WINDOW,
                staging_root: self.dir.join("staging"),
            },
            ..PoolConfig::default()
        }
    }

    /// The pid the fake wrote to `<worker_id>.<what>`, once it has.
    async fn pid(&self, worker_id: &str, what: &str) -> i32 {
        let path = self.dir.join(format!("{worker_id}.{what}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `(state, ppid, pgrp)` from `/proc/<pid>/stat`; `None` once the process is reaped.
fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Gone, or a zombie some other parent (init) has yet to reap: not running.
fn not_running(pid: i32) -> bool {
    matches!(stat(pid), None | Some(('Z', _, _)) | Some(('X', _, _)))
}

/// Children of this process (the pool's) that exited and were not reaped.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(stat(*pid), Some(('Z', ppid, _)) if ppid == me))
        .collect()
}

/// Other tests in this binary start and stop children concurrently; a child
/// may be a zombie for the instant between its exit and its reaping.
async fn assert_no_zombies() {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let zombies = zombie_children();
        if zombies.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "unreaped children of the pool: {zombies:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request for a stage of an environment that is not ours (no marker).
fn delegated_request(runner: &TestRunner, worker_id: &str) -> StartWorkerRequest {
    let mut request = runner.start_worker_request(worker_id);
    request.params.clear();
    request
}

async fn start(pool: &Pool, request: StartWorkerRequest) -> StartWorkerResponse {
    TestRunner::call_start_worker(pool.addr, request, RPC_TIMEOUT)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_marker_matches_the_worker_and_routes_in_process() {
    assert_eq!(NATIVE_PARAMS, (NATIVE_PARAM, NATIVE_VALUE));
    init_capture();
    // A Python that cannot even start: a native request must never need it.
    let fake = Fake::with_script("native", "#!/bin/sh\nexit 1\n");
    let pool = Pool::start(fake.config()).await;
    let runner = TestRunner::start().await.unwrap();
    let worker = runner.start_worker(pool.addr, "native_0").await.unwrap();
    assert!(worker.connect_latency() < Duration::from_secs(5));
    drop(worker);
    runner.shutdown().await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_worker_gets_beams_environment_its_own_group_and_logged_output() {
    init_capture();
    let fake = Fake::new("env");
    let pool = Pool::start(fake.config()).await;
    let runner = TestRunner::start_with(RunnerOptions {
        pipeline_options: Some(experiments_options("experiments", &["beam_fn_api=1"])),
        ..RunnerOptions::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let response = start(&pool, delegated_request(&runner, "print_1")).await;
    assert_eq!(response.error, "");
    // StartWorker waits out the startup window, and not much more.
    assert!(
        started.elapsed() >= STARTUP_WINDOW,
        "{:?}",
        started.elapsed()
    );
    let pid = fake.pid("print_1", "pid").await;
    let child = fake.pid("print_1", "child").await;

    // Its own process group, which its children share.
    let (_, ppid, pgrp) = stat(pid).unwrap();
    assert_eq!(ppid, std::process::id() as i32);
    assert_eq!(pgrp, pid, "the worker leads its own process group");
    assert_eq!(stat(child).unwrap().2, pid, "its child is in its group");

    // Beam's boot environment, and the output in the pool's log with the worker id.
    let url = runner.url().to_owned();
    let expected = format!(
        "fake-sdk-worker id=print_1 control=url: \"{url}\" logging=url: \"{url}\" \
         options={{\"experiments\": [\"beam_fn_api=1\"]}}"
    );
    let expected_compact = expected.replace("\": [", "\":[");
    until(
        "the worker's stdout in the pool's log",
        Duration::from_secs(10),
        || {
            captured().lines().any(|l| {
                (l.contains(&expected) || l.contains(&expected_compact))
                    && l.contains("worker_id=print_1")
                    && l.contains("stdout")
            })
        },
    )
    .await;
    let cwd = format!("cwd={}", fake.dir.display());
    assert!(captured().contains(&cwd), "workers run in --python-workdir");
    until(
        "the worker's stderr in the pool's log",
        Duration::from_secs(10),
        || {
            captured()
                .lines()
                .any(|l| l.contains("second line on stderr") && l.contains("worker_id=print_1"))
        },
    )
    .await;

    // StopWorker: SIGTERM to the group ends both, and the worker is reaped.
    let stop_started = Instant::now();
    TestRunner::stop_worker(pool.addr, "print_1", RPC_TIMEOUT)
        .await
        .unwrap();
    until(
        "the worker and its child to end",
        Duration::from_secs(10),
        || stat(pid).is_none() && not_running(child),
    )
    .await;
    assert!(
        stop_started.elapsed() < STOP_GRACE,
        "a worker that honours SIGTERM is not waited on for the grace period"
    );
    assert_no_zombies().await;
    runner.shutdown().await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ignoring_sigterm_is_killed_after_the_grace_period() {
    init_capture();
    let fake = Fake::new("stubborn");
    let pool = Pool::start(fake.config()).await;
    let runner = TestRunner::start().await.unwrap();
    assert_eq!(
        start(&pool, delegated_request(&runner, "stubborn_1"))
            .await
            .error,
        ""
    );
    let pid = fake.pid("stubborn_1", "pid").await;
    let child = fake.pid("stubborn_1", "child").await;
    let stopped = Instant::now();
    TestRunner::stop_worker(pool.addr, "stubborn_1", RPC_TIMEOUT)
        .await
        .unwrap();
    // Still running while inside the grace period: SIGTERM is ignored.
    tokio::time::sleep(STOP_GRACE / 2).await;
    assert!(!not_running(pid), "the worker ignores SIGTERM");
    until("SIGKILL to end the group", Duration::from_secs(10), || {
        stat(pid).is_none() && not_running(child)
    })
    .await;
    assert!(stopped.elapsed() >= STOP_GRACE, "{:?}", stopped.elapsed());
    until(
        "the escalation in the pool's log",
        Duration::from_secs(5),
        || {
            captured()
                .lines()
                .any(|l| l.contains("ignored SIGTERM; sending SIGKILL") && l.contains("stubborn_1"))
        },
    )
    .await;
    assert_no_zombies().await;
    runner.shutdown().await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_starting_fails_startworker_with_status_and_output() {
    init_capture();
    let fake = Fake::new("crash");
    let pool = Pool::start(PoolConfig {
        max_workers: 1,
        ..fake.config()
    })
    .await;
    let runner = TestRunner::start().await.unwrap();
    let error = start(&pool, delegated_request(&runner, "crash_1"))
        .await
        .error;
    assert!(error.contains("exit code 3"), "{error}");
    assert!(
        error.contains("Traceback: fake failure in crash_1"),
        "{error}"
    );
    assert!(error.contains("crash_1"), "{error}");
    assert!(
        captured().contains("Python SDK worker exited while starting"),
        "the pool's log has it too"
    );
    assert_no_zombies().await;
    // Its slot was released: with --max-workers 1 another worker starts.
    let worker = runner.start_worker(pool.addr, "native_after_crash").await;
    assert!(worker.is_ok(), "{:?}", worker.err());
    runner.shutdown().await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_starting_reaches_the_runners_log_and_the_pools() {
    init_capture();
    let fake = Fake::new("latecrash");
    let pool = Pool::start(fake.config()).await;
    let runner = TestRunner::start().await.unwrap();
    assert_eq!(
        start(&pool, delegated_request(&runner, "latecrash_1"))
            .await
            .error,
        ""
    );
    until(
        "the crash in the runner's log",
        Duration::from_secs(20),
        || {
            runner
                .logs_of("latecrash_1")
                .iter()
                .any(|e| e.message.contains("exit code 4") && e.message.contains("late failure"))
        },
    )
    .await;
    assert!(
        captured()
            .lines()
            .any(|l| l.contains("crashed") && l.contains("exit code 4")),
        "the pool's log has the crash with its exit status"
    );
    assert_no_zombies().await;
    runner.shutdown().await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_workers_counts_delegated_workers() {
    init_capture();
    let fake = Fake::new("max");
    let pool = Pool::start(PoolConfig {
        max_workers: 1,
        ..fake.config()
    })
    .await;
    let runner = TestRunner::start().await.unwrap();
    assert_eq!(
        start(&pool, delegated_request(&runner, "max_1"))
            .await
            .error,
        ""
    );
    let mut native = runner.start_worker_request("native_1");
    native
        .params
        .insert(NATIVE_PARAM.to_owned(), NATIVE_VALUE.to_owned());
    let refused = start(&pool, native).await.error;
    assert!(refused.contains("--max-workers"), "{refused}");
    let refused = start(&pool, delegated_request(&runner, "max_2"))
        .await
        .error;
    assert!(refused.contains("--max-workers"), "{refused}");
    runner.shutdown().await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_shutdown_stops_and_reaps_every_delegated_worker() {
    init_capture();
    let fake = Fake::new("shutdown");
    let pool = Pool::start(fake.config()).await;
    let runner = TestRunner::start().await.unwrap();
    let ids = ["shut_1", "shut_2", "stubborn_shut"];
    for id in ids {
        assert_eq!(start(&pool, delegated_request(&runner, id)).await.error, "");
    }
    let mut pids = Vec::new();
    for id in ids {
        pids.push(fake.pid(id, "pid").await);
        pids.push(fake.pid(id, "child").await);
    }
    let stopping = Instant::now();
    // What SIGTERM to the pool does (main's signal handler ends `serve` the same way).
    pool.shutdown().await;
    let took = stopping.elapsed();
    for pid in &pids {
        assert!(not_running(*pid), "pid {pid} outlived the pool's shutdown");
    }
    // The stubborn one needed SIGKILL after the grace period; the others did not.
    assert!(took >= STOP_GRACE, "{took:?}");
    assert!(took < STOP_GRACE + Duration::from_secs(5), "{took:?}");
    assert_no_zombies().await;
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_without_beam_fails_startworker_saying_how_to_fix_it() {
    init_capture();
    let fake = Fake::with_script(
        "nobeam",
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'apache_beam'\" >&2\nexit 1\n",
    );
    let pool = Pool::start(fake.config()).await;
    let runner = TestRunner::start().await.unwrap();
    let error = start(&pool, delegated_request(&runner, "nobeam_1"))
        .await
        .error;
    assert!(error.contains("No module named 'apache_beam'"), "{error}");
    assert!(error.contains("--python"), "{error}");
    assert!(error.contains(&Path::new(&fake.dir).join("python").display().to_string()));
    // Nothing is held for the refused worker.
    let worker = runner.start_worker(pool.addr, "native_after_nobeam").await;
    assert!(worker.is_ok(), "{:?}", worker.err());
    runner.shutdown().await;
    pool.shutdown().await;
}

/// With `BEAM_RUST_WORKER_TEST_PYTHON` naming a Python with apache-beam, the
/// real SDK worker: started by StartWorker, it connects its control stream
/// with the right worker id (prints StartWorker-to-connected). Skipped
/// (passes) without it; `integration/python/test_dropin.py` runs real pipelines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_python_sdk_worker_connects_when_configured() {
    let Some(python) = std::env::var_os("BEAM_RUST_WORKER_TEST_PYTHON") else {
        eprintln!("BEAM_RUST_WORKER_TEST_PYTHON is not set; skipping the real Python worker");
        return;
    };
    init_capture();
    let pool = Pool::start(PoolConfig {
        delegate: DelegateConfig {
            python: Some(PathBuf::from(python)),
            ..DelegateConfig::default()
        },
        ..PoolConfig::default()
    })
    .await;
    let runner = TestRunner::start().await.unwrap();
    // The first also waits for the pool's `import apache_beam` check.
    for id in ["real_0", "real_1"] {
        let started = Instant::now();
        let worker = runner
            .start_worker_with(pool.addr, delegated_request(&runner, id))
            .await
            .unwrap();
        eprintln!(
            "real Python SDK worker {id}: control stream connected {:?} after StartWorker was \
             sent; StartWorker answered after {:?}",
            worker.connect_latency(),
            started.elapsed()
        );
        drop(worker);
    }
    runner.shutdown().await;
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// Connects to the control endpoint (bash's /dev/tcp) as an SDK worker does, then waits.
const CONNECTING_PYTHON: &str = r#"#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exit 0; fi
port="${CONTROL_API_SERVICE_DESCRIPTOR##*:}"
port="${port%\"}"
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 5
echo "$$" > "$WORKER_ID.pid"
sleep 1000 &
wait
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startworker_is_answered_once_the_worker_connects() {
    init_capture();
    let fake = Fake::with_script("connecting", CONNECTING_PYTHON);
    let window = Duration::from_secs(20);
    let mut config = fake.config();
    config.delegate.startup_window = window;
    let pool = Pool::start(config).await;
    let runner = TestRunner::start().await.unwrap();
    let started = Instant::now();
    let response = start(&pool, delegated_request(&runner, "connecting_1")).await;
    assert_eq!(response.error, "");
    assert!(
        started.elapsed() < window / 2,
        "StartWorker waited {:?} although the worker had connected",
        started.elapsed()
    );
    let pid = fake.pid("connecting_1", "pid").await;
    TestRunner::stop_worker(pool.addr, "connecting_1", RPC_TIMEOUT)
        .await
        .unwrap();
    until("the worker to end", Duration::from_secs(10), || {
        stat(pid).is_none()
    })
    .await;
    assert_no_zombies().await;
    runner.shutdown().await;
    pool.shutdown().await;
}

/// A session file big enough to span several `GetArtifact` chunks.
fn main_session() -> bytes::Bytes {
    (0..300_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_artifacts_reach_the_worker_and_go_with_it() {
    init_capture();
    let fake = Fake::new("staged");
    let pool = Pool::start(fake.config()).await;
    let session = main_session();
    let runner = TestRunner::start_with(RunnerOptions {
        artifacts: vec![
            ("pickled_main_session".into(), session.clone()),
            (
                "submission_environment_dependencies.txt".into(),
                "apache-beam==2.62.0\n".into(),
            ),
        ],
        ..RunnerOptions::default()
    })
    .await
    .unwrap();
    let response = start(&pool, delegated_request(&runner, "staged_1")).await;
    assert_eq!(response.error, "");
    fake.pid("staged_1", "pid").await;
    let copied = std::fs::read(fake.dir.join("staged_1.session")).unwrap();
    assert!(
        copied == session,
        "the worker read a different main session"
    );
    let folder = PathBuf::from(
        std::fs::read_to_string(fake.dir.join("staged_1.folder"))
            .unwrap()
            .trim(),
    );
    assert!(
        folder.starts_with(fake.dir.join("staging")),
        "{}",
        folder.display()
    );
    assert!(
        folder
            .join("staged/submission_environment_dependencies.txt")
            .is_file()
    );

    let stopped = TestRunner::stop_worker(pool.addr, "staged_1", RPC_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(stopped.error, "");
    until(
        "the staged folder is removed",
        Duration::from_secs(20),
        || !folder.exists(),
    )
    .await;
    runner.shutdown().await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_name_that_leaves_the_folder_fails_the_start_worker() {
    init_capture();
    let fake = Fake::new("badname");
    let pool = Pool::start(fake.config()).await;
    let runner = TestRunner::start_with(RunnerOptions {
        artifacts: vec![("../escaped".into(), "x".into())],
        ..RunnerOptions::default()
    })
    .await
    .unwrap();
    let response = start(&pool, delegated_request(&runner, "staged_bad")).await;
    assert!(
        response
            .error
            .contains("\"../escaped\" is not a plain file name")
            && response.error.contains("staged_bad"),
        "{}",
        response.error
    );
    // Nothing was started, and nothing written beside the staging folder.
    assert!(!fake.dir.join("staged_bad.pid").exists());
    assert!(!fake.dir.join("escaped").exists());
    runner.shutdown().await;
    pool.shutdown().await;
}
