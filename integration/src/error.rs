//! Errors of the stand-in runner.

use std::net::SocketAddr;
use std::time::Duration;

/// What can go wrong while driving a worker. Timeouts are errors so that a
/// broken worker fails a test instead of hanging it.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("could not bind the runner's gRPC port: {0}")]
    Bind(#[source] std::io::Error),
    #[error("could not connect to the worker pool at {addr}: {source}")]
    PoolConnect {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
    /// Boxed: `Status` is large and most results are not errors.
    #[error("{call} failed: {status}")]
    Rpc {
        call: &'static str,
        #[source]
        status: Box<tonic::Status>,
    },
    /// The pool answered `StartWorker` with a non-empty `error`.
    #[error("StartWorker for '{worker_id}' was refused: {error}")]
    StartWorkerRefused { worker_id: String, error: String },
    #[error("worker id '{0}' already has an open control stream on this runner")]
    WorkerIdInUse(String),
    #[error("instruction id '{0}' is already in flight")]
    DuplicateInstruction(String),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// The worker's control stream is gone, so no response can come.
    #[error("the control stream of worker '{worker_id}' is closed")]
    ControlClosed { worker_id: String },
    /// Starting, signalling or talking HTTP to the worker binary failed.
    #[error("{0}")]
    Process(String),
}

impl RunnerError {
    pub(crate) fn rpc(call: &'static str, status: tonic::Status) -> Self {
        RunnerError::Rpc {
            call,
            status: Box::new(status),
        }
    }

    /// The pool's `StartWorkerResponse.error`, if this is a refused start.
    pub fn start_worker_error(&self) -> Option<&str> {
        match self {
            RunnerError::StartWorkerRefused { error, .. } => Some(error),
            _ => None,
        }
    }
}

pub type Result<T, E = RunnerError> = std::result::Result<T, E>;
