//! The operations endpoint (`--metrics-port`): a small HTTP/1.1 server for
//! Prometheus and Kubernetes probes.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | [`crate::telemetry`]'s metrics, OpenMetrics text format |
//! | `/healthz` | `200 ok` while the process serves HTTP at all (liveness) |
//! | `/readyz` | `200 ready` while the pool listens and accepts `StartWorker`; `503 draining` once shutdown began (readiness) |
//!
//! It is a separate port from the pool's gRPC one because scrapers and probes
//! speak HTTP/1.1, and it is opt-in: nothing listens unless asked to.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::ConnectionLimits;
use crate::net;
use crate::telemetry;

/// Whether the pool takes new workers. Shared by the pool (which sets it) and
/// the endpoint (which reports it). Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Scrapers and probes open few, short connections: a tight cap keeps a
/// misbehaving client from taking file handles the pool needs.
fn limits() -> ConnectionLimits {
    ConnectionLimits {
        max_connections: 32,
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
    }
}

/// Serves the endpoint on `listener` until `shutdown` resolves. Run it until
/// the process exits: probes must see `/readyz` fail during the pool's grace
/// period, so the caller stops it only after the pool stopped.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let kill = CancellationToken::new();
    let mut incoming = net::incoming(listener, limits(), kill.clone(), "metrics endpoint");
    tokio::pin!(shutdown);
    loop {
        let io = tokio::select! {
            _ = &mut shutdown => break,
            io = incoming.next() => match io {
                Some(Ok(io)) => io,
                Some(Err(error)) => {
                    debug!(%error, "metrics endpoint: accept failed");
                    continue;
                }
                None => break,
            },
        };
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let readiness = readiness.clone();
                async move { Ok::<_, Infallible>(answer(&request, &readiness)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(io), service)
                .await
            {
                debug!(%error, "metrics endpoint: connection ended with an error");
            }
        });
    }
    // Closes connections still open (a scraper's keep-alive) with the server.
    kill.cancel();
}

fn answer(request: &Request<Incoming>, readiness: &Readiness) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match request.uri().path() {
        "/metrics" => match telemetry::global().encode() {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(telemetry::CONTENT_TYPE),
                );
                response
            }
            Err(error) => {
                warn!(%error, "metrics endpoint: encoding failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n"))
            }
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if readiness.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
