//! The real `beam-rust-worker` binary as a child process, for tests of what
//! only the binary has: flags, signals, its HTTP endpoint, its stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Result, RunnerError};

/// The binary to test: `BEAM_RUST_WORKER_BIN`, or the workspace's own, built
/// (once per test process) with the profile the tests were built with, so a
/// test never runs a stale binary.
pub fn worker_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("BEAM_RUST_WORKER_BIN") {
                return Ok(PathBuf::from(path));
            }
            // Test binaries live in target/<profile>/deps/.
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .ok_or("cannot find the target directory from the test's path")?;
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args([
                "build",
                "-q",
                "-p",
                "beam-rust-worker",
                "--bin",
                "beam-rust-worker",
            ]);
            if release {
                build.arg("--release");
            }
            let out = build.output().map_err(|e| format!("running cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cargo build of beam-rust-worker failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(profile_dir.join("beam-rust-worker"))
        })
        .clone()
        .map_err(RunnerError::Process)
}

/// A running `beam-rust-worker` whose stderr is collected line by line.
/// Dropping it kills the process (and only it).
pub struct WorkerProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// The pool's address, from its "worker pool listening" line.
    pub pool: SocketAddr,
    /// The metrics endpoint's address, when `--metrics-port` was given.
    pub metrics: Option<SocketAddr>,
}

impl WorkerProcess {
    /// Starts the binary on kernel-chosen ports (`--port 0 --expansion-port 0`)
    /// with `extra` flags, and waits up to `timeout` until it listens.
    pub fn start(extra: &[&str], timeout: Duration) -> Result<WorkerProcess> {
        let mut child = Command::new(worker_binary()?)
            .args(["--port", "0", "--expansion-port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RunnerError::Process(format!("starting beam-rust-worker: {e}")))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let mut process = WorkerProcess {
            child,
            lines,
            pool: SocketAddr::from(([0, 0, 0, 0], 0)),
            metrics: None,
        };
        let wants_metrics = extra.contains(&"--metrics-port");
        let deadline = Instant::now() + timeout;
        loop {
            process.pool = match process.address_in("worker pool listening") {
                Some(addr) => addr,
                None => process.pool,
            };
            process.metrics = process.address_in("metrics endpoint listening");
            if process.pool.port() != 0 && (process.metrics.is_some() || !wants_metrics) {
                return Ok(process);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(RunnerError::Process(format!(
                    "beam-rust-worker exited ({status}) before listening:\n{}",
                    process.output().join("\n")
                )));
            }
            if Instant::now() >= deadline {
                return Err(RunnerError::Process(format!(
                    "beam-rust-worker did not listen within {timeout:?}:\n{}",
                    process.output().join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first `127.0.0.1:port` on a line containing `message` (text or JSON log).
    fn address_in(&self, message: &str) -> Option<SocketAddr> {
        self.output()
            .iter()
            .filter(|l| l.contains(message))
            .find_map(|l| {
                let start = l.find("127.0.0.1:")?;
                let rest = &l[start..];
                let end = rest
                    .char_indices()
                    .skip("127.0.0.1:".len())
                    .find(|(_, c)| !c.is_ascii_digit())
                    .map_or(rest.len(), |(i, _)| i);
                rest[..end].parse().ok()
            })
    }

    /// Every stderr line so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as Kubernetes does to stop a container.
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|e| RunnerError::Process(format!("running kill: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(RunnerError::Process(format!("kill -TERM failed: {status}")))
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| RunnerError::Process(e.to_string()))?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(RunnerError::Process(format!(
                    "beam-rust-worker still running {timeout:?} after being asked to stop"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` over HTTP/1.1 on `addr`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let io = |e: std::io::Error| RunnerError::Process(format!("GET {path} on {addr}: {e}"));
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(io)?;
    let response = String::from_utf8_lossy(&response);
    let bad = || RunnerError::Process(format!("GET {path}: not an HTTP response: {response:?}"));
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .ok_or_else(bad)?;
    Ok((status, body))
}

/// The value of the sample `series` (name and labels exactly as exposed) in
/// a Prometheus text exposition.
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
