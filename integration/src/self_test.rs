//! Checks the stand-in runner against a minimal fake worker pool and harness,
//! so the runner's own behaviour is known good before it judges a real worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use beam_proto::fn_execution::beam_fn_control_client::BeamFnControlClient;
use beam_proto::fn_execution::beam_fn_data_client::BeamFnDataClient;
use beam_proto::fn_execution::beam_fn_external_worker_pool_server::{
    BeamFnExternalWorkerPool, BeamFnExternalWorkerPoolServer,
};
use beam_proto::fn_execution::elements::Data;
use beam_proto::fn_execution::{
    Elements, GetProcessBundleDescriptorRequest, InstructionResponse, ProcessBundleResponse,
    RemoteGrpcPort, StartWorkerRequest, StartWorkerResponse, StopWorkerRequest, StopWorkerResponse,
    instruction_request, instruction_response,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::*;

/// A pool that refuses worker ids starting with "bad" and starts a fake harness otherwise.
struct FakePool;

#[tonic::async_trait]
impl BeamFnExternalWorkerPool for FakePool {
    async fn start_worker(
        &self,
        request: Request<StartWorkerRequest>,
    ) -> Result<Response<StartWorkerResponse>, Status> {
        let request = request.into_inner();
        if request.worker_id.starts_with("bad") {
            return Ok(Response::new(StartWorkerResponse {
                error: "refused by the fake pool".into(),
            }));
        }
        let url = request.control_endpoint.map(|e| e.url).unwrap_or_default();
        tokio::spawn(fake_harness(request.worker_id, url));
        Ok(Response::new(StartWorkerResponse::default()))
    }

    async fn stop_worker(
        &self,
        _: Request<StopWorkerRequest>,
    ) -> Result<Response<StopWorkerResponse>, Status> {
        Ok(Response::new(StopWorkerResponse::default()))
    }
}

async fn fake_pool() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(BeamFnExternalWorkerPoolServer::new(FakePool))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

type Authed = tonic::service::interceptor::InterceptedService<
    Channel,
    Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send + Sync>,
>;

fn with_worker_id(channel: Channel, worker_id: &str) -> Authed {
    let value: tonic::metadata::MetadataValue<_> = worker_id.parse().unwrap();
    tonic::service::interceptor::InterceptedService::new(
        channel,
        Box::new(move |mut request: Request<()>| {
            request.metadata_mut().insert("worker_id", value.clone());
            Ok(request)
        }),
    )
}

/// Echoes every source's data to the descriptor's sink, one bundle at a time per message.
async fn fake_harness(worker_id: String, url: String) {
    let channel = Endpoint::from_shared(format!("http://{url}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut control = BeamFnControlClient::new(with_worker_id(channel.clone(), &worker_id));
    let (responses, outbound) = mpsc::channel(16);
    let mut requests = control
        .control(ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    let mut data_out: Option<mpsc::Sender<Elements>> = None;
    let mut data_in: Option<tonic::Streaming<Elements>> = None;
    // instruction -> sink id (known once the request arrived)
    let mut sinks: HashMap<String, String> = HashMap::new();
    let mut early: HashMap<String, Vec<Data>> = HashMap::new();
    loop {
        let next_data = async {
            match data_in.as_mut() {
                Some(s) => s.message().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            request = requests.message() => {
                let Ok(Some(request)) = request else { break };
                let id = request.instruction_id.clone();
                let response = match request.request {
                    Some(instruction_request::Request::ProcessBundle(pb)) => {
                        let descriptor = control
                            .get_process_bundle_descriptor(GetProcessBundleDescriptorRequest {
                                process_bundle_descriptor_id: pb.process_bundle_descriptor_id,
                            })
                            .await;
                        let descriptor = match descriptor {
                            Ok(d) => d.into_inner(),
                            Err(status) => {
                                let _ = responses.send(InstructionResponse { instruction_id: id, error: status.message().into(), response: None }).await;
                                continue;
                            }
                        };
                        let sink = descriptor.transforms.iter().find(|(_, t)| t.spec.as_ref().is_some_and(|s| s.urn == urns::SINK)).map(|(id, _)| id.clone()).unwrap();
                        if data_out.is_none() {
                            let port = descriptor.transforms.values().find(|t| t.spec.as_ref().is_some_and(|s| s.urn == urns::SOURCE)).unwrap();
                            let port = RemoteGrpcPort::decode(port.spec.as_ref().unwrap().payload.clone()).unwrap();
                            let data_url = port.api_service_descriptor.unwrap().url;
                            let channel = Endpoint::from_shared(format!("http://{data_url}")).unwrap().connect().await.unwrap();
                            let (tx, rx) = mpsc::channel(16);
                            let mut client = BeamFnDataClient::new(with_worker_id(channel, &worker_id));
                            data_in = Some(client.data(ReceiverStream::new(rx)).await.unwrap().into_inner());
                            data_out = Some(tx);
                        }
                        sinks.insert(id.clone(), sink);
                        for data in early.remove(&id).unwrap_or_default() {
                            echo(&data, &sinks, data_out.as_ref().unwrap(), &responses).await;
                        }
                        continue;
                    }
                    Some(_) => InstructionResponse { instruction_id: id, error: String::new(), response: None },
                    None => InstructionResponse { instruction_id: id, error: "no request set".into(), response: None },
                };
                let _ = responses.send(response).await;
            }
            data = next_data => {
                let Ok(Some(elements)) = data else { break };
                for data in elements.data {
                    if sinks.contains_key(&data.instruction_id) {
                        echo(&data, &sinks, data_out.as_ref().unwrap(), &responses).await;
                    } else {
                        early.entry(data.instruction_id.clone()).or_default().push(data);
                    }
                }
            }
        }
    }
}

async fn echo(
    data: &Data,
    sinks: &HashMap<String, String>,
    out: &mpsc::Sender<Elements>,
    responses: &mpsc::Sender<InstructionResponse>,
) {
    let sink = sinks[&data.instruction_id].clone();
    let _ = out
        .send(Elements {
            data: vec![Data {
                instruction_id: data.instruction_id.clone(),
                transform_id: sink,
                data: data.data.clone(),
                is_last: data.is_last,
            }],
            timers: vec![],
        })
        .await;
    if data.is_last {
        let _ = responses
            .send(InstructionResponse {
                instruction_id: data.instruction_id.clone(),
                error: String::new(),
                response: Some(instruction_response::Response::ProcessBundle(
                    ProcessBundleResponse::default(),
                )),
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_round_trip_in_both_orders() {
    let pool = fake_pool().await;
    let runner = TestRunner::start().await.unwrap();
    let echo = echo_descriptor("d1", runner.url(), PortCoder::kv_bytes());
    runner.add_descriptor(echo.descriptor.clone());
    let worker = runner.start_worker(pool, "worker_0").await.unwrap();
    assert!(worker.connect_latency() > Duration::ZERO);
    let all = elements::kv_input(1000);
    let chunks = elements::chunk_elements(&all, &WireFormat::KV_BYTES_GLOBAL, 100).unwrap();
    for order in [
        DataOrder::DataFirst,
        DataOrder::RequestFirst,
        DataOrder::DataFirst,
    ] {
        let result = worker
            .process_bundle(echo.bundle(chunks.clone()).order(order))
            .await
            .unwrap();
        assert!(result.is_ok(), "{:?}", result.error());
        assert!(result.saw_is_last(&echo.sink_id));
        assert_eq!(result.output(&echo.sink_id), all);
        assert_eq!(result.chunks(&echo.sink_id).len(), 10);
    }
    let empty = worker
        .process_bundle(echo.bundle([]).is_last_with_data())
        .await
        .unwrap();
    assert!(empty.saw_is_last(&echo.sink_id));
    assert!(empty.output(&echo.sink_id).is_empty());

    let mut running = Vec::new();
    for i in 0..8 {
        let worker = worker.clone();
        let spec = echo.bundle([elements::kv_input(i + 1)]);
        running.push(tokio::spawn(
            async move { worker.process_bundle(spec).await },
        ));
    }
    for (i, bundle) in running.into_iter().enumerate() {
        let result = bundle.await.unwrap().unwrap();
        assert_eq!(result.output(&echo.sink_id), elements::kv_input(i + 1));
    }
    assert_eq!(worker.data_streams_opened(), 1);
    assert_eq!(worker.descriptor_fetches(), 12);
    assert!(
        worker.protocol_violations().is_empty(),
        "{:?}",
        worker.protocol_violations()
    );

    let response = worker.instruction(None).await.unwrap();
    assert_eq!(response.error, "no request set");
    let response = worker
        .instruction_with_id(
            "mine".into(),
            Some(instruction_request::Request::FinalizeBundle(
                Default::default(),
            )),
        )
        .await
        .unwrap();
    assert_eq!(response.instruction_id, "mine");

    let missing = worker
        .process_bundle(BundleSpec::new("nope").sink("x"))
        .await
        .unwrap();
    assert!(
        missing
            .error()
            .unwrap()
            .contains("no ProcessBundleDescriptor with id 'nope'")
    );

    assert!(worker.drop_control());
    tokio::time::timeout(Duration::from_secs(10), worker.data_stream_closed())
        .await
        .unwrap();
    assert!(matches!(
        worker.instruction(None).await,
        Err(RunnerError::ControlClosed { .. })
    ));
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_missing_worker_id() {
    let pool = fake_pool().await;
    let runner = TestRunner::start().await.unwrap();
    let err = runner.start_worker(pool, "bad_1").await.unwrap_err();
    assert_eq!(err.start_worker_error(), Some("refused by the fake pool"));

    let channel = Endpoint::from_shared(format!("http://{}", runner.url()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = BeamFnControlClient::new(channel)
        .get_process_bundle_descriptor(GetProcessBundleDescriptorRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("worker_id"));
    assert_eq!(runner.rejected_calls(), 1);

    // Two runners, same worker id, same pool.
    let other = TestRunner::start().await.unwrap();
    let a = runner.start_worker(pool, "worker_0").await.unwrap();
    let b = other.start_worker(pool, "worker_0").await.unwrap();
    for (runner, worker) in [(&runner, &a), (&other, &b)] {
        let echo = echo_descriptor("d", runner.url(), PortCoder::kv_bytes());
        runner.add_descriptor(echo.descriptor.clone());
        let result = worker
            .process_bundle(echo.bundle([elements::kv_input(3)]))
            .await
            .unwrap();
        assert_eq!(result.output(&echo.sink_id), elements::kv_input(3));
    }
    assert!(matches!(
        runner.start_worker(pool, "worker_0").await,
        Err(RunnerError::WorkerIdInUse(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_name_what_is_missing() {
    let pool = fake_pool().await;
    let runner = TestRunner::start().await.unwrap();
    let echo = echo_descriptor("d1", runner.url(), PortCoder::kv_bytes());
    runner.add_descriptor(echo.descriptor.clone());
    let worker = runner.start_worker(pool, "worker_0").await.unwrap();
    let err = worker
        .process_bundle(
            echo.bundle([elements::kv_input(1)])
                .without_is_last()
                .timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("response not received"), "{text}");
    assert!(text.contains("fn/write/pc2"), "{text}");
}
