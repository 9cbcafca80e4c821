//! The echo's data path: the runner's gRPC byte stream, sent back verbatim.
//!
//! The echo dials `BeamFnData/Data` over plain HTTP/2 (`h2`, the crate under
//! tonic) and forwards the body of the runner's stream (gRPC length-prefixed
//! `Elements` messages) as the body of its own request stream, unchanged: no
//! gRPC deframing, no protobuf decoding or encoding, no element scan, no copy
//! in user space (each received `Bytes` is handed to h2's writer as it is).
//! A message is the same bytes whichever side frames it, so the runner decodes
//! exactly what it sent. That is strictly less work than any worker does for
//! the same bytes, on the same HTTP/2 stack with the same flow-control windows;
//! see bench/README.md ("Why the ceiling is one").

use std::future::poll_fn;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::net::TcpStream;

/// The worker's HTTP/2 settings (`beam_rust_worker::grpc::endpoint` and
/// hyper's client defaults), so flow control is the same as a worker's.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
const MAX_SEND_BUFFER: usize = 1 << 20;
const DATA_PATH: &str = "/org.apache.beam.model.fn_execution.v1.BeamFnData/Data";

/// Why forwarding stopped.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot dial the data endpoint {url}: {source}")]
    Dial {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("bad request header: {0}")]
    Header(#[from] http::Error),
    #[error("the runner refused the data stream: HTTP {0}")]
    Refused(http::StatusCode),
}

/// Dials `url` (`host:port`), opens the data stream as worker `lane` and
/// forwards the runner's bytes back until the runner ends its side.
pub async fn echo(url: &str, lane: &str) -> Result<(), ForwardError> {
    let addr = url.trim_start_matches("http://");
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ForwardError::Dial {
            url: url.to_owned(),
            source,
        })?;
    tcp.set_nodelay(true).map_err(|source| ForwardError::Dial {
        url: url.to_owned(),
        source,
    })?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .enable_push(false)
        .handshake::<_, Bytes>(tcp)
        .await?;
    tokio::spawn(async move {
        // Ends when the runner closes the connection; errors show on the stream.
        let _ = connection.await;
    });
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{DATA_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("worker_id", lane)
        .body(())?;
    let (response, send) = client.ready().await?.send_request(request, false)?;
    let response = response.await?;
    if !response.status().is_success() {
        return Err(ForwardError::Refused(response.status()));
    }
    forward(response.into_body(), send).await
}

/// Sends every received byte back, releasing receive window only once the
/// bytes are handed on, so memory stays bounded by the windows.
async fn forward(
    mut inbound: RecvStream,
    mut outbound: SendStream<Bytes>,
) -> Result<(), ForwardError> {
    while let Some(data) = inbound.data().await {
        let data = data?;
        let len = data.len();
        send_all(&mut outbound, data).await?;
        inbound.flow_control().release_capacity(len)?;
    }
    outbound.send_data(Bytes::new(), true)?;
    Ok(())
}

/// Sends `data` in pieces as the peer's window grants capacity (h2 buffers at
/// most what was reserved); the pieces are slices of `data`, not copies.
async fn send_all(outbound: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), ForwardError> {
    while !data.is_empty() {
        outbound.reserve_capacity(data.len());
        // Capacity may be assigned at once; poll only signals increases.
        let mut granted = outbound.capacity();
        if granted == 0 {
            granted = match poll_fn(|cx| outbound.poll_capacity(cx)).await {
                Some(granted) => granted?,
                None => return Ok(()), // the stream is gone; the runner ends the run
            };
        }
        let piece = data.split_to(granted.min(data.len()));
        outbound.send_data(piece, false)?;
    }
    Ok(())
}
