//! Client-side gRPC plumbing shared by every stream a harness opens to its runner.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A channel that stamps every call with the worker's id.
pub type WorkerChannel = InterceptedService<Channel, WorkerIdInterceptor>;

/// How long a TCP connect to a runner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A runner endpoint this worker cannot dial.
#[derive(Debug, Clone, thiserror::Error)]
#[error("endpoint '{url}' is not usable: {why}")]
pub struct EndpointError {
    pub url: String,
    pub why: String,
}

/// Runners file every stream under the `worker_id` header (Java waits for a control
/// stream carrying exactly that id; Python raises without it), so it goes on every RPC.
#[derive(Clone)]
pub struct WorkerIdInterceptor(MetadataValue<Ascii>);

impl Interceptor for WorkerIdInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("worker_id", self.0.clone());
        Ok(req)
    }
}

impl WorkerIdInterceptor {
    pub fn new(worker_id: &str) -> Result<Self, EndpointError> {
        worker_id.parse().map(Self).map_err(|_| EndpointError {
            url: String::new(),
            why: format!("worker id {worker_id:?} is not a valid gRPC header value"),
        })
    }
}

/// Parses an `ApiServiceDescriptor.url` (`host:port`, as Beam runners send it).
///
/// Checked when `StartWorker` arrives so a bad address is reported to the runner
/// at once instead of failing later in the background.
pub fn endpoint(url: &str) -> Result<Endpoint, EndpointError> {
    let err = |why: &str| EndpointError {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    if url.is_empty() {
        return Err(err("it is empty"));
    }
    if url.starts_with("unix:") {
        return Err(err("unix domain sockets are not supported; use host:port"));
    }
    let with_scheme = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let uri: tonic::codegen::http::Uri = with_scheme
        .parse()
        .map_err(|e| err(&format!("not a host:port address ({e})")))?;
    if uri.scheme_str() != Some("http") {
        return Err(err("only plaintext http/2 (host:port) is supported"));
    }
    if uri.port_u16().is_none() {
        return Err(err("it has no port"));
    }
    Ok(Endpoint::from(uri)
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        // Large windows keep a single stream from stalling on multi-MB chunks.
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20)))
}

/// How long a runner endpoint may stay silent after accepting a connection
/// before the connection is given up, unless the harness configures otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A lazily connected channel to `url` that sends `worker_id` on every call.
pub fn worker_channel(url: &str, worker_id: &str) -> Result<WorkerChannel, EndpointError> {
    worker_channel_with(url, worker_id, DEFAULT_HANDSHAKE_TIMEOUT)
}

/// [`worker_channel`] whose connections fail if the endpoint sends nothing
/// (no HTTP/2 settings) within `handshake_timeout` of accepting TCP: such an
/// endpoint would otherwise hold the call, and the worker, forever.
pub fn worker_channel_with(
    url: &str,
    worker_id: &str,
    handshake_timeout: Duration,
) -> Result<WorkerChannel, EndpointError> {
    let interceptor = WorkerIdInterceptor::new(worker_id)?;
    let connector = crate::net::GuardedConnector {
        first_bytes: handshake_timeout,
        connect_timeout: CONNECT_TIMEOUT,
    };
    let channel = endpoint(url)?.connect_with_connector_lazy(connector);
    Ok(InterceptedService::new(channel, interceptor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_urls_parse_and_bad_ones_say_why() {
        assert!(endpoint("localhost:1234").is_ok());
        assert!(endpoint("myhost.example.internal:50000").is_ok());
        assert!(endpoint("[::1]:8080").is_ok());
        assert!(endpoint("http://127.0.0.1:1").is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("localhost", "no port"),
            ("unix:///tmp/sock", "unix"),
            ("https://h:1", "plaintext"),
            ("not a url:x", "host:port"),
        ] {
            let e = endpoint(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
