//! Connection hardening shared by our servers (pool, expansion) and by the
//! channels harnesses open to runners.
//!
//! tonic and hyper keep a connection for as long as the peer keeps the socket
//! open, and tonic's accept loop retries a failing `accept` at once. That lets
//! one peer that never speaks HTTP/2, or stays silent, hold a connection (and a
//! file handle) forever and delay shutdown indefinitely, and lets running out of
//! file handles turn into a busy loop. The pieces here bound all of that: a
//! connection cap, a deadline for the peer's first bytes, an idle deadline, a
//! backed-off accept loop, and a switch that closes every connection when the
//! shutdown grace period is over.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codegen::http::Uri;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

use crate::config::ConnectionLimits;

/// First retry delay after a failed `accept` (for example EMFILE).
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Longest retry delay after repeated `accept` failures.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A byte stream that fails once its peer has been silent too long, or once
/// its server is shut down for good.
pub struct GuardedIo<S> {
    io: S,
    /// When the current silence becomes too long.
    deadline: Pin<Box<Sleep>>,
    /// Set until the peer's first bytes arrive: how long they may take.
    first_bytes: Option<Duration>,
    /// How long the connection may stay without traffic, if bounded.
    idle: Option<Duration>,
    /// Resolves when every connection must close (grace period over).
    kill: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// This connection's slot under [`ConnectionLimits::max_connections`].
    _slot: Option<OwnedSemaphorePermit>,
}

impl<S> GuardedIo<S> {
    fn new(
        io: S,
        first_bytes: Duration,
        idle: Option<Duration>,
        kill: Option<CancellationToken>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            io,
            deadline: Box::pin(tokio::time::sleep(first_bytes)),
            first_bytes: Some(first_bytes),
            idle,
            kill: kill.map(|k| Box::pin(k.cancelled_owned())),
            _slot: slot,
        }
    }

    /// Only our writes after the peer spoke count as activity: writing our
    /// own preface must not excuse a silent peer.
    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) && self.first_bytes.is_none() {
            self.active();
        }
    }

    /// Traffic seen: the silence clock starts over.
    fn active(&mut self) {
        self.first_bytes = None;
        if let Some(idle) = self.idle {
            self.deadline.as_mut().reset(Instant::now() + idle);
        }
    }

    fn check_kill(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(kill) = &mut self.kill
            && kill.as_mut().poll(cx).is_ready()
        {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed: the server's shutdown grace period is over",
            ));
        }
        Ok(())
    }

    /// The error for a peer that stayed silent past its deadline, if it has.
    fn check_silence(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.first_bytes.is_none() && self.idle.is_none() {
            return Ok(());
        }
        if self.deadline.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        let why = match (self.first_bytes, self.idle) {
            (Some(limit), _) => format!(
                "the peer accepted the connection but sent nothing (no HTTP/2 preface) within \
                 {limit:?}"
            ),
            (None, Some(limit)) => format!("the connection was idle for {limit:?}"),
            (None, None) => return Ok(()),
        };
        debug!(reason = %why, "closing a silent connection");
        Err(io::Error::new(io::ErrorKind::TimedOut, why))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_kill(cx)?;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.active();
                }
                Poll::Ready(Ok(()))
            }
            // hyper always has a read pending, so this is where silence is noticed.
            Poll::Pending => {
                this.check_silence(cx)?;
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check_kill(cx)?;
        let written = Pin::new(&mut this.io).poll_write(cx, data);
        this.wrote(&written);
        written
    }

    /// h2 writes a large DATA frame as its 9-byte head chained with the
    /// payload; without vectored writes that is two `write` calls per frame
    /// (and h2 copies payloads under 1 KiB instead of 256 B), so the inner
    /// stream's `writev` is passed through.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check_kill(cx)?;
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_kill(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for GuardedIo<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Accepted connections for `tonic`'s `serve_with_incoming_shutdown`: at most
/// `limits.max_connections` at once, each guarded by the limits' deadlines and
/// closed when `kill` fires. `what` names the server in logs.
///
/// Accept errors (EMFILE at the file-handle limit, most often) are logged and
/// retried with a growing delay instead of at once. The listener closes as
/// soon as tonic drops the stream (at shutdown).
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    kill: CancellationToken,
    what: &'static str,
) -> ReceiverStream<io::Result<GuardedIo<TcpStream>>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(accept_loop(listener, limits, kill, tx, what));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    limits: ConnectionLimits,
    kill: CancellationToken,
    tx: mpsc::Sender<io::Result<GuardedIo<TcpStream>>>,
    what: &'static str,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = MIN_ACCEPT_BACKOFF;
    let mut at_cap_logged = false;
    loop {
        if slots.available_permits() == 0 && !at_cap_logged {
            warn!(
                server = what,
                max_connections = limits.max_connections,
                "connection limit reached; new connections wait until one closes"
            );
            at_cap_logged = true;
        }
        let slot = tokio::select! {
            _ = tx.closed() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff = MIN_ACCEPT_BACKOFF;
                at_cap_logged = false;
                // Small gRPC messages would otherwise wait for delayed ACKs.
                let _ = stream.set_nodelay(true);
                let io = GuardedIo::new(
                    stream,
                    limits.handshake_timeout,
                    Some(limits.idle_timeout),
                    Some(kill.clone()),
                    Some(slot),
                );
                if tx.send(Ok(io)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                warn!(
                    server = what,
                    %error,
                    retry_in_ms = backoff.as_millis() as u64,
                    "accepting a connection failed (at the open-file limit?); retrying after a pause"
                );
                drop(slot);
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = next_backoff(backoff);
            }
        }
    }
}

fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_ACCEPT_BACKOFF)
}

/// A connector for tonic channels that fails a connection whose server sends
/// nothing within `first_bytes` of connecting: an endpoint that accepts TCP but
/// never speaks HTTP/2 would otherwise hold a call (and a worker) forever.
#[derive(Debug, Clone)]
pub struct GuardedConnector {
    pub first_bytes: Duration,
    pub connect_timeout: Duration,
}

impl tonic::codegen::Service<Uri> for GuardedConnector {
    type Response = TokioIo<GuardedIo<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (first_bytes, connect_timeout) = (self.first_bytes, self.connect_timeout);
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in URI"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no port in URI"))?;
            let stream = tokio::time::timeout(connect_timeout, TcpStream::connect((host, port)))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("TCP connect did not complete within {connect_timeout:?}"),
                    )
                })??;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(GuardedIo::new(
                stream,
                first_bytes,
                None,
                None,
                None,
            )))
        })
    }
}

/// The text of an error and all its sources: tonic's transport errors say only
/// "transport error" at the top, the reason is further down.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn accept_backoff_grows_to_a_ceiling() {
        let mut b = MIN_ACCEPT_BACKOFF;
        let mut seen = vec![b];
        for _ in 0..10 {
            b = next_backoff(b);
            seen.push(b);
        }
        assert!(seen.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*seen.last().unwrap(), MAX_ACCEPT_BACKOFF);
    }

    #[tokio::test]
    async fn silent_peer_times_out_and_talking_peer_does_not() {
        // `_peer` stays open and silent.
        let (a, _peer) = tokio::io::duplex(64);
        let mut guarded = GuardedIo::new(a, Duration::from_millis(50), None, None, None);
        let mut buf = [0u8; 8];
        let err = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("sent nothing"), "{err}");

        let (a, mut c) = tokio::io::duplex(64);
        let mut guarded = GuardedIo::new(a, Duration::from_millis(50), None, None, None);
        c.write_all(b"hi").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 2);
        // After the first bytes, no idle limit applies here.
        let waited = tokio::time::timeout(Duration::from_millis(200), guarded.read(&mut buf)).await;
        assert!(waited.is_err(), "a connection that spoke must not time out");
    }

    #[tokio::test]
    async fn kill_closes_the_connection() {
        let (a, _b) = tokio::io::duplex(64);
        let kill = CancellationToken::new();
        let mut guarded =
            GuardedIo::new(a, Duration::from_secs(60), None, Some(kill.clone()), None);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            guarded.read(&mut buf).await
        });
        kill.cancel();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }
}
