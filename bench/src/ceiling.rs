//! The transport ceiling: the runner's own gRPC byte stream sent straight
//! back, connected the way a Beam worker is.
//!
//! A runner serves the data endpoint and the worker dials it, so the same
//! bytes cross the same gRPC roles here. The driver's [`EchoRunner`] serves
//! `BeamFnData/Data`. The `grpc-echo` process ([`EchoPool`]) answers
//! `StartWorker` by dialing the endpoint it was given and returning the bytes
//! of its stream verbatim ([`forward`]): no control stream, no descriptor, no
//! protobuf decoding, no gRPC re-framing, no element scan, no copy. Any worker
//! does all of that work and more for the same bytes, so no worker can be
//! faster: a ratio above 1 means the instrument is broken. [`EchoLane`]
//! multiplexes bundles on one stream by instruction id, as a runner does, and a
//! bundle is done when its `is_last` entry has come back.

mod forward;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use beam_proto::fn_execution::beam_fn_data_client::BeamFnDataClient;
use beam_proto::fn_execution::beam_fn_data_server::{BeamFnData, BeamFnDataServer};
use beam_proto::fn_execution::beam_fn_external_worker_pool_client::BeamFnExternalWorkerPoolClient;
use beam_proto::fn_execution::beam_fn_external_worker_pool_server::{
    BeamFnExternalWorkerPool, BeamFnExternalWorkerPoolServer,
};
use beam_proto::fn_execution::{
    Elements, StartWorkerRequest, StartWorkerResponse, StopWorkerRequest, StopWorkerResponse,
    elements::Data,
};
use beam_proto::pipeline::ApiServiceDescriptor;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

/// Messages queued per direction; HTTP/2 flow control does the rest.
const QUEUE: usize = 16;
/// The same HTTP/2 windows as the runner stand-in, so the ceiling is measured
/// under the same flow control (the pool side dials with the worker's own
/// [`beam_rust_worker::grpc::endpoint`] settings).
const SERVER_STREAM_WINDOW: u32 = 8 << 20;
const SERVER_CONNECTION_WINDOW: u32 = 16 << 20;
/// Transform id the lanes address their input to.
const TRANSFORM: &str = "echo";
/// Metadata key that pairs a dialed stream with its lane (as Beam's `worker_id`).
const LANE_HEADER: &str = "worker_id";

/// A failure of the echo transport.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("cannot reach the echo pool at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("StartWorker on the echo pool failed: {0}")]
    Start(String),
    #[error("the echo pool did not dial back within {0:?}")]
    NoDialBack(Duration),
    #[error("the echo stream ended while bundle '{0}' was in flight")]
    Closed(String),
    #[error("echo server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot listen for the echo stream: {0}")]
    Bind(std::io::Error),
    #[error("bundle '{what}' did not come back within {after:?}")]
    Timeout { what: String, after: Duration },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------- pool side

/// The `grpc-echo` process: on `StartWorker`, dials the control endpoint's
/// `BeamFnData/Data` and echoes every message.
#[derive(Debug, Default, Clone)]
pub struct EchoPool;

#[tonic::async_trait]
impl BeamFnExternalWorkerPool for EchoPool {
    async fn start_worker(
        &self,
        request: Request<StartWorkerRequest>,
    ) -> Result<Response<StartWorkerResponse>, Status> {
        let request = request.into_inner();
        let url = request
            .control_endpoint
            .map(|e| e.url)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| Status::invalid_argument("StartWorker without a control endpoint"))?;
        // Refused now, as a worker pool refuses an address it cannot dial.
        beam_rust_worker::grpc::endpoint(&url)
            .map_err(|e| Status::invalid_argument(format!("bad endpoint {url}: {e}")))?;
        let lane = request.worker_id;
        // Answer at once and dial in the background, as a worker pool does.
        tokio::spawn(async move {
            if let Err(e) = forward::echo(&url, &lane).await {
                eprintln!("grpc-echo: lane {lane}: {e}");
            }
        });
        Ok(Response::new(StartWorkerResponse::default()))
    }

    async fn stop_worker(
        &self,
        _request: Request<StopWorkerRequest>,
    ) -> Result<Response<StopWorkerResponse>, Status> {
        Ok(Response::new(StopWorkerResponse::default()))
    }
}

/// Serves [`EchoPool`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), EchoError> {
    Server::builder()
        .add_service(BeamFnExternalWorkerPoolServer::new(EchoPool))
        // `Server::tcp_nodelay` does not apply to a caller-made listener.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

// -------------------------------------------------------------- runner side

type Outbound = mpsc::Sender<Result<Elements, Status>>;
type Dialed = (Outbound, Streaming<Elements>);

/// The driver's data endpoint for echo lanes (the runner's role).
pub struct EchoRunner {
    url: String,
    addr: SocketAddr,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Dialed>>>>,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct EchoRunnerService {
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Dialed>>>>,
}

#[tonic::async_trait]
impl BeamFnData for EchoRunnerService {
    type DataStream = ReceiverStream<Result<Elements, Status>>;

    async fn data(
        &self,
        request: Request<Streaming<Elements>>,
    ) -> Result<Response<Self::DataStream>, Status> {
        let lane = request
            .metadata()
            .get(LANE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Status::invalid_argument("missing worker_id metadata"))?;
        let waiter = lock(&self.waiting)
            .remove(&lane)
            .ok_or_else(|| Status::failed_precondition(format!("no lane '{lane}' waits")))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = waiter.send((tx, request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl EchoRunner {
    /// Serves the data endpoint on `127.0.0.1:0`.
    pub async fn start() -> Result<EchoRunner, EchoError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(EchoError::Bind)?;
        let addr = listener.local_addr().map_err(EchoError::Bind)?;
        let url = addr.to_string();
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Dialed>>>> = Arc::default();
        let service = EchoRunnerService {
            waiting: waiting.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let router = Server::builder()
            .initial_stream_window_size(SERVER_STREAM_WINDOW)
            .initial_connection_window_size(SERVER_CONNECTION_WINDOW)
            .add_service(
                BeamFnDataServer::new(service)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            );
        tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(EchoRunner {
            url,
            addr,
            waiting,
            stop: Some(stop),
        })
    }

    /// Registers lane `name`: its data stream, once dialed, arrives here.
    fn expect_dial(&self, name: &str) -> oneshot::Receiver<Dialed> {
        let (dialed_tx, dialed) = oneshot::channel();
        lock(&self.waiting).insert(name.to_owned(), dialed_tx);
        dialed
    }

    /// Asks the echo pool at `pool` to dial back, and waits for its stream.
    pub async fn start_lane(
        &self,
        pool: SocketAddr,
        name: &str,
        timeout: Duration,
    ) -> Result<EchoLane, EchoError> {
        let dialed = self.expect_dial(name);
        let started = Instant::now();
        let channel = Endpoint::from_shared(format!("http://{pool}"))
            .expect("a socket address is a valid URI")
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .connect()
            .await
            .map_err(|source| EchoError::Connect { addr: pool, source })?;
        let endpoint = Some(ApiServiceDescriptor {
            url: self.url.clone(),
            authentication: None,
        });
        let response = BeamFnExternalWorkerPoolClient::new(channel)
            .start_worker(StartWorkerRequest {
                worker_id: name.to_owned(),
                control_endpoint: endpoint.clone(),
                logging_endpoint: endpoint,
                ..Default::default()
            })
            .await
            .map_err(|s| EchoError::Start(s.to_string()))?
            .into_inner();
        if !response.error.is_empty() {
            return Err(EchoError::Start(response.error));
        }
        let (outbound, inbound) = dialed_back(dialed, timeout).await?;
        Ok(EchoLane::new(
            name,
            outbound,
            inbound,
            started.elapsed(),
            None,
        ))
    }

    /// Opens a lane with nothing in between: the driver itself dials its data
    /// endpoint and reads the runner's outbound stream back as if it were a
    /// worker's output. The bytes cross the loopback once instead of twice, and
    /// no pool runs, so every run through a worker (or the echo) does this
    /// lane's work and more: the bound no target can pass.
    pub async fn start_loopback_lane(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<EchoLane, EchoError> {
        let dialed = self.expect_dial(name);
        let started = Instant::now();
        let endpoint = beam_rust_worker::grpc::endpoint(&self.url)
            .map_err(|e| EchoError::Start(e.to_string()))?
            .connect_timeout(timeout);
        let addr = self.addr;
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| EchoError::Connect { addr, source })?;
        // The lane's request stream stays open (and empty) while the lane lives.
        let (keep_open, never) = mpsc::channel::<Elements>(1);
        let mut request = Request::new(ReceiverStream::new(never));
        let lane_id = name
            .parse()
            .map_err(|_| EchoError::Start(format!("lane name '{name}' is not a header value")))?;
        request.metadata_mut().insert(LANE_HEADER, lane_id);
        let mut client = BeamFnDataClient::new(channel).max_decoding_message_size(usize::MAX);
        // The endpoint answers with headers only once the runner side has the
        // stream, so the call and the waiter resolve together.
        let (response, (outbound, mut unused)) = tokio::try_join!(
            async {
                client
                    .data(request)
                    .await
                    .map_err(|s| EchoError::Start(s.to_string()))
            },
            dialed_back(dialed, timeout)
        )?;
        // The runner side's own inbound stays open (a dropped one would reset
        // the stream); it carries nothing.
        tokio::spawn(async move { while let Ok(Some(_)) = unused.message().await {} });
        Ok(EchoLane::new(
            name,
            outbound,
            response.into_inner(),
            started.elapsed(),
            Some(keep_open),
        ))
    }
}

/// Waits up to `timeout` for a registered lane's stream.
async fn dialed_back(
    dialed: oneshot::Receiver<Dialed>,
    timeout: Duration,
) -> Result<Dialed, EchoError> {
    tokio::time::timeout(timeout, dialed)
        .await
        .map_err(|_| EchoError::NoDialBack(timeout))?
        .map_err(|_| EchoError::NoDialBack(timeout))
}

impl Drop for EchoRunner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Data>>>>;

/// One echo stream: the ceiling's counterpart of a worker.
#[derive(Clone)]
pub struct EchoLane {
    outbound: Outbound,
    routes: Routes,
    next_id: Arc<AtomicU64>,
    /// StartWorker → the echo pool's data stream connected (the counterpart of
    /// StartWorker → control connected).
    pub connect_latency: Duration,
    name: String,
    /// A loopback lane's own (empty) request stream, open while the lane lives.
    _keep_open: Option<mpsc::Sender<Elements>>,
}

impl EchoLane {
    /// Routes every message of `inbound` to the bundle it belongs to.
    fn new(
        name: &str,
        outbound: Outbound,
        mut inbound: Streaming<Elements>,
        connect_latency: Duration,
        keep_open: Option<mpsc::Sender<Elements>>,
    ) -> EchoLane {
        let routes: Routes = Arc::default();
        let reader_routes = routes.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let routes = lock(&reader_routes);
                for data in message.data {
                    if let Some(route) = routes.get(&data.instruction_id) {
                        let _ = route.send(data);
                    }
                }
            }
            // Dropping every route tells waiting bundles the stream is gone.
            lock(&reader_routes).clear();
        });
        EchoLane {
            outbound,
            routes,
            next_id: Arc::default(),
            connect_latency,
            name: name.to_owned(),
            _keep_open: keep_open,
        }
    }
}

impl EchoLane {
    /// Sends `chunks` as one bundle (one `Elements` per chunk, then an `is_last`
    /// entry) and returns the echoed chunks in arrival order.
    pub async fn run_bundle(
        &self,
        chunks: &[Bytes],
        timeout: Duration,
    ) -> Result<Vec<Bytes>, EchoError> {
        let id = format!(
            "{}-{}",
            self.name,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.routes).insert(id.clone(), tx);
        let result = tokio::time::timeout(timeout, async {
            let data = |data: Bytes, is_last: bool| Elements {
                data: vec![Data {
                    instruction_id: id.clone(),
                    transform_id: TRANSFORM.to_owned(),
                    data,
                    is_last,
                }],
                timers: vec![],
            };
            for chunk in chunks {
                self.outbound
                    .send(Ok(data(chunk.clone(), false)))
                    .await
                    .map_err(|_| EchoError::Closed(id.clone()))?;
            }
            self.outbound
                .send(Ok(data(Bytes::new(), true)))
                .await
                .map_err(|_| EchoError::Closed(id.clone()))?;
            let mut output = Vec::with_capacity(chunks.len());
            loop {
                let data = rx
                    .recv()
                    .await
                    .ok_or_else(|| EchoError::Closed(id.clone()))?;
                if !data.data.is_empty() {
                    output.push(data.data);
                }
                if data.is_last {
                    return Ok(output);
                }
            }
        })
        .await;
        lock(&self.routes).remove(&id);
        result.unwrap_or_else(|_| {
            Err(EchoError::Timeout {
                what: id,
                after: timeout,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_come_back_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = stopped.await;
        }));
        let runner = EchoRunner::start().await.unwrap();
        let t = Duration::from_secs(10);
        let lane = runner.start_lane(pool, "lane0", t).await.unwrap();
        let chunks: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; 1000])).collect();
        let (a, b) = tokio::join!(
            lane.run_bundle(&chunks, t),
            lane.run_bundle(&chunks[..2], t)
        );
        assert_eq!(a.unwrap(), chunks);
        assert_eq!(b.unwrap(), chunks[..2].to_vec());
        assert!(lane.run_bundle(&[], t).await.unwrap().is_empty());
        // A second lane gets its own stream.
        let other = runner.start_lane(pool, "lane1", t).await.unwrap();
        assert_eq!(
            other.run_bundle(&chunks[..1], t).await.unwrap(),
            chunks[..1].to_vec()
        );
        let _ = stop.send(());
        server.abort();
    }
}
