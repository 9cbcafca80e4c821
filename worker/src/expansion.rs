//! Beam expansion service (`org.apache.beam.model.expansion.v1.ExpansionService`).
//!
//! A pipeline written with any Beam SDK applies our transform as a
//! cross-language `ExternalTransform(KV_ECHO_URN, b"", "host:port")`. At
//! construction time the SDK sends us the transform and its input; we answer
//! with the same transform bound to a new `beam:env:external:v1` environment
//! that points at this worker pool. The runner then fuses that transform into a
//! stage of its own and sends only that stage to the pool, while the rest of
//! the pipeline stays in the SDK's own workers.
//!
//! Bad user input (unknown URN, wrong inputs, a coder the worker cannot carry)
//! is reported in `ExpansionResponse.error`, which the SDK raises at pipeline
//! construction; the gRPC call itself only fails for transport problems.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use beam_proto::expansion::expansion_service_server::{ExpansionService, ExpansionServiceServer};
use beam_proto::expansion::{ExpansionRequest, ExpansionResponse};
use beam_proto::opaque::OpaqueMessage;
use beam_proto::pipeline::{
    ApiServiceDescriptor, Coder, Components, Environment, ExternalPayload, FunctionSpec,
    PCollection, PTransform, ParDoPayload, WindowingStrategy, accumulation_mode, closing_behavior,
    is_bounded, merge_status, on_time_behavior, output_time,
};
use prost::Message;
use tokio::net::TcpListener;

use crate::coders;
use crate::delegate::{NATIVE_PARAM, NATIVE_VALUE};
use crate::kafka::{self, KAFKA_READ_URN, KAFKA_WRITE_URN, ReadConfig, WriteConfig};
use crate::registry::{self, PARDO_URN};
use crate::value_coder;

pub use crate::transforms::KV_ECHO_URN;

const IMPULSE_URN: &str = "beam:transform:impulse:v1";
const FINALIZATION_REQUIREMENT: &str = "beam:requirement:pardo:finalization:v1";
const SPLITTABLE_REQUIREMENT: &str = "beam:requirement:pardo:splittable_dofn:v1";
const GLOBAL_WINDOWS_URN: &str = "beam:window_fn:global_windows:v1";
/// An encoded `Trigger` whose `default` (field 7) is set: Beam's default trigger.
const DEFAULT_TRIGGER: [u8; 2] = [0x3a, 0x00];

/// Environment URN of a worker pool reached over `BeamFnExternalWorkerPool`.
pub const EXTERNAL_ENVIRONMENT_URN: &str = "beam:env:external:v1";

/// Coder URNs the worker decodes, advertised as environment capabilities.
///
/// The Python runner length-prefixes (makes opaque) every coder that some
/// environment of the pipeline does not list, so without this a nullable key
/// would reach us as `length_prefix(nullable(bytes))` and fixed windows as a
/// runner-private window coder. Java runners ignore the list.
pub const CODER_CAPABILITIES: &[&str] = &[
    coders::BYTES_URN,
    coders::NULLABLE_URN,
    coders::LENGTH_PREFIX_URN,
    coders::KV_URN,
    coders::GLOBAL_WINDOW_URN,
    coders::INTERVAL_WINDOW_URN,
    coders::WINDOWED_VALUE_URN,
    coders::PARAM_WINDOWED_VALUE_URN,
    // Off the hot path (the splittable read's restrictions and sizes).
    value_coder::VARINT_URN,
    value_coder::DOUBLE_URN,
    value_coder::STRING_UTF8_URN,
    value_coder::BOOL_URN,
];

/// Default output tag when the request names none.
const DEFAULT_OUTPUT_TAG: &str = "out";

/// Coder trees deeper than this are refused instead of walked (a malicious or
/// cyclic coder map must not overflow the stack).
const MAX_CODER_DEPTH: usize = 32;

/// The gRPC service; `advertised_pool` is the `host:port` the runner will dial
/// to reach this process's worker pool.
#[derive(Debug, Clone)]
pub struct Expansion {
    /// Written into every environment we create: what runners must dial,
    /// which may differ from the address the pool binds (e.g. `0.0.0.0`).
    advertised_pool: String,
}

impl Expansion {
    pub fn new(advertised_pool: impl Into<String>) -> Self {
        Self {
            advertised_pool: advertised_pool.into(),
        }
    }
}

/// Largest `ExpansionRequest` accepted. Requests hold a pipeline's components
/// and one transform's configuration: a few MB even for large pipelines. A
/// request is decoded whole before anything else, so this bounds its memory.
pub const MAX_EXPANSION_REQUEST_BYTES: usize = 16 << 20;
/// Expansions decoded at once; more wait. Each runs on the blocking pool, off
/// the threads that serve bundles.
const EXPANSION_CONCURRENCY: usize = 2;

/// Expansions running now, process-wide (tests start several servers).
static EXPANSION_SLOTS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(EXPANSION_CONCURRENCY);

#[tonic::async_trait]
impl ExpansionService for Expansion {
    async fn expand(
        &self,
        request: tonic::Request<ExpansionRequest>,
    ) -> Result<tonic::Response<ExpansionResponse>, tonic::Status> {
        let request = request.into_inner();
        let urn = request
            .transform
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .map(|s| s.urn.clone())
            .unwrap_or_default();
        let namespace = request.namespace.clone();
        let _slot = EXPANSION_SLOTS
            .acquire()
            .await
            .map_err(|_| tonic::Status::unavailable("the expansion service is closing"))?;
        let pool = self.advertised_pool.clone();
        let response = tokio::task::spawn_blocking(move || expand(request, &pool))
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
        crate::telemetry::global().expansion_request(response.error.is_empty());
        if response.error.is_empty() {
            tracing::info!(%urn, %namespace, pool = %self.advertised_pool, "expanded transform");
        } else {
            tracing::warn!(%urn, %namespace, error = %response.error, "refused expansion");
        }
        Ok(tonic::Response::new(response))
    }
}

/// The expansion gRPC server, ready to add to a `tonic` router.
///
/// Requests carry the pipeline's components and may exceed tonic's 4 MiB
/// default, so the limit is raised, but to [`MAX_EXPANSION_REQUEST_BYTES`]:
/// a request is held and decoded whole.
pub fn expansion_service(advertised_pool: impl Into<String>) -> ExpansionServiceServer<Expansion> {
    ExpansionServiceServer::new(Expansion::new(advertised_pool))
        .max_decoding_message_size(MAX_EXPANSION_REQUEST_BYTES)
        .max_encoding_message_size(usize::MAX)
}

/// Serves the expansion service on `listener` until `shutdown` completes,
/// with default connection limits and a 30 s grace period for open connections.
pub async fn serve(
    listener: TcpListener,
    advertised_pool: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with(
        listener,
        advertised_pool,
        crate::config::ConnectionLimits::default(),
        std::time::Duration::from_secs(30),
        shutdown,
    )
    .await
}

/// [`serve`] with explicit connection limits; once `shutdown` completes,
/// connections still open after `grace` (idle or half-open peers) are closed.
pub async fn serve_with(
    listener: TcpListener,
    advertised_pool: String,
    limits: crate::config::ConnectionLimits,
    grace: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let kill = tokio_util::sync::CancellationToken::new();
    let incoming = crate::net::incoming(listener, limits, kill.clone(), "expansion service");
    let stopped = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(expansion_service(advertised_pool))
            .serve_with_incoming_shutdown(incoming, stopped.clone().cancelled_owned()),
    );
    shutdown.await;
    stopped.cancel();
    let deadline = tokio::time::Instant::now() + grace;
    crate::pool::finish_server(server, deadline, &kill, "expansion service").await
}

/// Expands one transform. Never fails: problems go into `ExpansionResponse.error`.
pub fn expand(request: ExpansionRequest, advertised_pool: &str) -> ExpansionResponse {
    match try_expand(request, advertised_pool) {
        Ok(response) => response,
        Err(error) => ExpansionResponse {
            error,
            ..Default::default()
        },
    }
}

fn try_expand(request: ExpansionRequest, pool: &str) -> Result<ExpansionResponse, String> {
    let ExpansionRequest {
        components,
        transform,
        namespace,
        output_coder_requests,
    } = request;
    let transform = transform.ok_or("the expansion request carries no transform")?;
    let components = components.unwrap_or_default();
    // `output_coder_requests` are hints: the Python SDK asks for a pickled coder
    // for every untyped output. Our outputs' coders are fixed by what the
    // transforms produce, so the hints are not followed; the SDK takes the
    // coder from the response.
    let _ = output_coder_requests;
    let urn = transform
        .spec
        .as_ref()
        .map(|s| s.urn.clone())
        .unwrap_or_default();
    let request = Request {
        transform,
        components,
        namespace,
        pool,
    };
    match registry::expander(&urn) {
        Some((ours, expand)) if ours == urn => expand(request),
        // An alias (Beam's own Kafka URNs, from apache_beam.io.kafka) is
        // expanded as ours: its Row carries our fields, plus Java settings the
        // decoder accepts only where they change nothing (kafka::beam_schema).
        // A ReadFromKafka without max_num_records/max_read_time is unbounded,
        // as in Beam.
        Some((ours, expand)) => expand(request.into_native(ours))
            .map_err(|e| format!("{e} ({urn} is served by beam-rust-worker's {ours})")),
        None => Err(match kafka::refusal(&urn) {
            Some(why) => format!("{urn} ('{}'): {why}", request.transform.unique_name),
            None => format!(
                "beam-rust-worker cannot expand transform '{}': unknown URN '{urn}'. \
                 Supported transform URNs: {}",
                request.transform.unique_name,
                registry::expandable_urns().join(", ")
            ),
        }),
    }
}

/// One expansion request being answered; the registry's expanders take it.
pub struct Request<'a> {
    transform: PTransform,
    components: Components,
    namespace: String,
    pool: &'a str,
}

/// The single `KV` input of a transform, with what the SDK needs to rebuild it.
struct KvInput {
    id: String,
    pcollection: PCollection,
    strategy_id: String,
    strategy: WindowingStrategy,
    coders: HashMap<String, Coder>,
}

impl Request<'_> {
    fn name(&self) -> &str {
        &self.transform.unique_name
    }

    /// The output tag the SDK asked for, if exactly one, else ours.
    fn output_tag(&self) -> String {
        match self.transform.outputs.keys().collect::<Vec<_>>().as_slice() {
            [only] => (*only).clone(),
            _ => DEFAULT_OUTPUT_TAG.to_owned(),
        }
    }

    /// This request with the transform's URN replaced by our `urn`: what the
    /// worker's plan recognizes. The configuration payload stays as sent.
    fn into_native(mut self, urn: &str) -> Self {
        if let Some(spec) = self.transform.spec.as_mut() {
            spec.urn = urn.to_owned();
        }
        self
    }

    fn payload(&self) -> &[u8] {
        self.transform
            .spec
            .as_ref()
            .map_or(&[][..], |s| &s.payload[..])
    }

    pub(crate) fn kv_echo(self) -> Result<ExpansionResponse, String> {
        let name = self.name().to_owned();
        let payload_len = self.payload().len();
        if payload_len != 0 {
            return Err(format!(
                "{KV_ECHO_URN} ('{name}') takes no configuration, but the request carries a \
                 {payload_len}-byte payload"
            ));
        }
        let input = self.kv_input(KV_ECHO_URN)?;
        let mut ids = self.ids();
        let output_id = ids.fresh("kv_echo_output");
        let env_id = ids.fresh("rust_worker_pool");
        let output = PCollection {
            unique_name: format!("{name}.{DEFAULT_OUTPUT_TAG}"),
            coder_id: input.pcollection.coder_id.clone(),
            is_bounded: input.pcollection.is_bounded,
            windowing_strategy_id: input.strategy_id.clone(),
        };
        let output_tag = self.output_tag();
        Ok(self.bound_leaf(input, (output_tag, output_id, output), env_id))
    }

    /// This transform as a leaf bound to the pool's environment, with its input
    /// and one new output. The transform itself is returned in `transform` only:
    /// a copy in `components.transforms` would be added to the pipeline as a
    /// second producer of the output.
    fn bound_leaf(
        self,
        input: KvInput,
        (tag, output_id, output): (String, String, PCollection),
        env_id: String,
    ) -> ExpansionResponse {
        let environment = pool_environment(self.pool);
        let expanded = PTransform {
            spec: Some(as_pardo(
                self.transform.spec.clone().unwrap_or_default(),
                false,
            )),
            outputs: HashMap::from([(tag, output_id.clone())]),
            environment_id: env_id.clone(),
            subtransforms: Vec::new(),
            ..self.transform
        };
        response(
            Components {
                transforms: HashMap::new(),
                pcollections: HashMap::from([(input.id, input.pcollection), (output_id, output)]),
                windowing_strategies: HashMap::from([(input.strategy_id, input.strategy)]),
                coders: input.coders,
                environments: HashMap::from([(env_id, environment)]),
            },
            expanded,
        )
    }

    /// `Impulse` → read, like KafkaIO. A bounded read (`max_num_records`,
    /// `max_read_time` or `stop_at_end`) is one ParDo that the impulse starts;
    /// any other is unbounded: `Impulse` → partitions → a splittable ParDo
    /// reading one partition per element, which runners expand and
    /// checkpoint (see `kafka::sdf`). Records are
    /// `KV<nullable bytes, nullable bytes>` either way.
    pub(crate) fn kafka_read(self) -> Result<ExpansionResponse, String> {
        let name = self.name().to_owned();
        let config = ReadConfig::from_payload(self.payload())
            .map_err(|e| format!("{KAFKA_READ_URN} ('{name}'): {e}"))?;
        if !self.transform.inputs.is_empty() {
            return Err(format!(
                "{KAFKA_READ_URN} ('{name}') is a root transform and takes no inputs, got {}",
                self.transform.inputs.len()
            ));
        }
        let bounded = config.is_bounded();
        let mut ids = self.ids();
        let [
            bytes,
            nullable,
            kv,
            window,
            varint,
            double,
            range,
            restriction,
        ] = [
            "bytes",
            "nullable_bytes",
            "kv",
            "global_window",
            "varint",
            "double",
            "offset_range",
            "restriction",
        ]
        .map(|w| ids.fresh(w));
        let strategy_id = ids.fresh("global_windowing");
        let [impulse_out, partitions_out, records] =
            ["impulse", "partitions", "records"].map(|w| ids.fresh(w));
        let [impulse_id, partitions_id, read_id] =
            ["Impulse", "Partitions", "Read"].map(|w| ids.fresh(w));
        let env_id = ids.fresh("rust_worker_pool");

        let mut coders = HashMap::from([
            (bytes.clone(), coder(coders::BYTES_URN, &[])),
            (nullable.clone(), coder(coders::NULLABLE_URN, &[&bytes])),
            (kv.clone(), coder(coders::KV_URN, &[&nullable, &nullable])),
            (window.clone(), coder(coders::GLOBAL_WINDOW_URN, &[])),
        ]);
        let pcollection = |coder_id: &str, what: &str, bounded: bool| PCollection {
            unique_name: format!("{name}/{what}"),
            coder_id: coder_id.to_owned(),
            is_bounded: if bounded {
                is_bounded::Enum::Bounded
            } else {
                is_bounded::Enum::Unbounded
            } as i32,
            windowing_strategy_id: strategy_id.clone(),
        };
        let impulse = PTransform {
            spec: Some(FunctionSpec {
                urn: IMPULSE_URN.to_owned(),
                payload: Default::default(),
            }),
            outputs: HashMap::from([("out".to_owned(), impulse_out.clone())]),
            unique_name: format!("{name}/Impulse"),
            ..Default::default()
        };
        let config_payload = self.payload().to_vec();
        let pardo =
            |dofn_urn: &str, input: &str, output: &str, what: &str, payload: ParDoPayload| {
                PTransform {
                    spec: Some(FunctionSpec {
                        urn: PARDO_URN.to_owned(),
                        payload: ParDoPayload {
                            do_fn: Some(FunctionSpec {
                                urn: dofn_urn.to_owned(),
                                payload: config_payload.clone().into(),
                            }),
                            ..payload
                        }
                        .encode_to_vec()
                        .into(),
                    }),
                    inputs: HashMap::from([("in".to_owned(), input.to_owned())]),
                    outputs: HashMap::from([("out".to_owned(), output.to_owned())]),
                    unique_name: format!("{name}/{what}"),
                    environment_id: env_id.clone(),
                    ..Default::default()
                }
            };
        let finalization = ParDoPayload {
            requests_finalization: config.commit_offsets,
            ..Default::default()
        };
        let mut transforms = HashMap::new();
        let mut pcollections = HashMap::from([(
            impulse_out.clone(),
            pcollection(&bytes, "Impulse.out", true),
        )]);
        let mut requirements = Vec::new();
        let subtransforms = if bounded {
            transforms.insert(
                read_id.clone(),
                pardo(KAFKA_READ_URN, &impulse_out, &records, "Read", finalization),
            );
            pcollections.insert(records.clone(), pcollection(&kv, "Read.out", true));
            vec![impulse_id.clone(), read_id.clone()]
        } else {
            coders.insert(varint.clone(), coder(value_coder::VARINT_URN, &[]));
            coders.insert(double.clone(), coder(value_coder::DOUBLE_URN, &[]));
            coders.insert(range.clone(), coder(coders::KV_URN, &[&varint, &varint]));
            coders.insert(
                restriction.clone(),
                coder(coders::KV_URN, &[&range, &varint]),
            );
            transforms.insert(
                partitions_id.clone(),
                pardo(
                    kafka::KAFKA_PARTITIONS_URN,
                    &impulse_out,
                    &partitions_out,
                    "Partitions",
                    ParDoPayload::default(),
                ),
            );
            transforms.insert(
                read_id.clone(),
                pardo(
                    kafka::KAFKA_READ_PARTITION_URN,
                    &partitions_out,
                    &records,
                    "Read",
                    ParDoPayload {
                        restriction_coder_id: restriction.clone(),
                        ..finalization
                    },
                ),
            );
            pcollections.insert(
                partitions_out.clone(),
                pcollection(&bytes, "Partitions.out", true),
            );
            pcollections.insert(records.clone(), pcollection(&kv, "Read.out", false));
            requirements.push(SPLITTABLE_REQUIREMENT.to_owned());
            vec![impulse_id.clone(), partitions_id.clone(), read_id.clone()]
        };
        transforms.insert(impulse_id, impulse);
        if config.commit_offsets {
            // Beam's Python runner refuses a ParDo that requests finalization
            // unless the pipeline declares the requirement.
            requirements.push(FINALIZATION_REQUIREMENT.to_owned());
        }
        let output_tag = self.output_tag();
        let composite = PTransform {
            subtransforms,
            outputs: HashMap::from([(output_tag, records.clone())]),
            inputs: HashMap::new(),
            environment_id: String::new(),
            ..self.transform
        };
        let mut expanded = response(
            Components {
                transforms,
                pcollections,
                windowing_strategies: HashMap::from([(
                    strategy_id.clone(),
                    global_windowing(&window),
                )]),
                coders,
                environments: HashMap::from([(env_id, pool_environment(self.pool))]),
            },
            composite,
        );
        expanded.requirements = requirements;
        Ok(expanded)
    }

    /// Its elements leave the pipeline for Kafka. The transform still declares
    /// an (always empty) output, as Java's KafkaIO write does: runners drop a
    /// leaf without outputs as dead code (Beam's Python runner does).
    pub(crate) fn kafka_write(self) -> Result<ExpansionResponse, String> {
        let name = self.name().to_owned();
        WriteConfig::from_payload(self.payload())
            .map_err(|e| format!("{KAFKA_WRITE_URN} ('{name}'): {e}"))?;
        let mut input = self.kv_input(KAFKA_WRITE_URN)?;
        let mut ids = self.ids();
        let [env_id, bytes, written] =
            ["rust_worker_pool", "bytes", "written"].map(|w| ids.fresh(w));
        input
            .coders
            .insert(bytes.clone(), coder(coders::BYTES_URN, &[]));
        let output = PCollection {
            unique_name: format!("{name}.{DEFAULT_OUTPUT_TAG}"),
            coder_id: bytes,
            is_bounded: input.pcollection.is_bounded,
            windowing_strategy_id: input.strategy_id.clone(),
        };
        let tag = DEFAULT_OUTPUT_TAG.to_owned();
        Ok(self.bound_leaf(input, (tag, written, output), env_id))
    }

    /// The transform's single input, checked to be a `KV` the worker can carry.
    fn kv_input(&self, urn: &str) -> Result<KvInput, String> {
        let name = self.name();
        let components = &self.components;
        let id = match self
            .transform
            .inputs
            .values()
            .collect::<Vec<_>>()
            .as_slice()
        {
            [only] => (*only).clone(),
            other => {
                return Err(format!(
                    "{urn} ('{name}') takes exactly one input PCollection, got {}",
                    other.len()
                ));
            }
        };
        let pcollection = components
            .pcollections
            .get(&id)
            .ok_or_else(|| {
                format!("input PCollection '{id}' of '{name}' is not in the request's components")
            })?
            .clone();
        coders::resolve_kv(&pcollection.coder_id, &components.coders).map_err(|e| {
            format!(
                "{urn} ('{name}') cannot carry input PCollection '{id}': {e}. \
                 Give the input a KV coder whose key and value are bytes (in Python, type it as \
                 beam.typehints.Tuple[bytes, bytes], or with an Optional[bytes] key)"
            )
        })?;
        let strategy_id = pcollection.windowing_strategy_id.clone();
        let strategy = components
            .windowing_strategies
            .get(&strategy_id)
            .ok_or_else(|| {
                format!(
                    "windowing strategy '{strategy_id}' of input PCollection '{id}' is not \
                     in the request's components"
                )
            })?
            .clone();
        // Copy the coders the returned components refer to, so the SDK can rebuild
        // the PCollection from the response alone.
        let mut coder_ids = HashSet::new();
        collect_coders(&pcollection.coder_id, &components.coders, &mut coder_ids, 0)?;
        if !strategy.window_coder_id.is_empty() {
            collect_coders(
                &strategy.window_coder_id,
                &components.coders,
                &mut coder_ids,
                0,
            )?;
        }
        let coders = coder_ids
            .into_iter()
            .filter_map(|id| components.coders.get(&id).map(|c| (id, c.clone())))
            .collect();
        Ok(KvInput {
            id,
            pcollection,
            strategy_id,
            strategy,
            coders,
        })
    }

    /// New ids must start with the namespace (SDKs drop anything else) and
    /// must not collide with ids the request already uses.
    fn ids(&self) -> FreshIds<'_> {
        FreshIds {
            namespace: &self.namespace,
            taken: self
                .components
                .pcollections
                .keys()
                .chain(self.components.environments.keys())
                .chain(self.components.transforms.keys())
                .chain(self.components.coders.keys())
                .chain(self.components.windowing_strategies.keys())
                .cloned()
                .collect(),
        }
    }
}

struct FreshIds<'a> {
    namespace: &'a str,
    taken: HashSet<String>,
}

impl FreshIds<'_> {
    fn fresh(&mut self, what: &str) -> String {
        let id = fresh_id(self.namespace, what, &self.taken);
        self.taken.insert(id.clone());
        id
    }
}

/// Our transform as a ParDo whose DoFn spec is the transform's own (URN and
/// configuration). Runners treat a ParDo as a primitive they can fuse into the
/// pool's stage; Flink's fuser drops leaves with URNs it does not know.
/// `requests_finalization` makes Prism and Flink send FinalizeBundle, which is
/// when the Kafka read commits its offsets.
fn as_pardo(spec: FunctionSpec, requests_finalization: bool) -> FunctionSpec {
    FunctionSpec {
        urn: PARDO_URN.to_owned(),
        payload: ParDoPayload {
            do_fn: Some(spec),
            requests_finalization,
            ..Default::default()
        }
        .encode_to_vec()
        .into(),
    }
}

fn response(components: Components, transform: PTransform) -> ExpansionResponse {
    ExpansionResponse {
        components: Some(components),
        transform: Some(transform),
        requirements: Vec::new(),
        error: String::new(),
    }
}

/// Identical for every expansion, so the runner merges the environments of
/// neighbouring transforms (a read, echoes, a write) and fuses them into one stage.
fn pool_environment(pool: &str) -> Environment {
    Environment {
        urn: EXTERNAL_ENVIRONMENT_URN.to_owned(),
        payload: ExternalPayload {
            endpoint: Some(ApiServiceDescriptor {
                url: pool.to_owned(),
                authentication: None,
            }),
            // Runners copy these into StartWorkerRequest.params: how the pool
            // tells our stages (in-process) from others (Python workers).
            params: HashMap::from([(NATIVE_PARAM.to_owned(), NATIVE_VALUE.to_owned())]),
        }
        .encode_to_vec()
        .into(),
        capabilities: CODER_CAPABILITIES.iter().map(|s| (*s).to_owned()).collect(),
        resource_hints: HashMap::new(),
    }
}

fn coder(urn: &str, components: &[&str]) -> Coder {
    Coder {
        spec: Some(FunctionSpec {
            urn: urn.to_owned(),
            payload: Default::default(),
        }),
        component_coder_ids: components.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The global window with Beam's default trigger, as KafkaIO's output has.
fn global_windowing(window_coder_id: &str) -> WindowingStrategy {
    WindowingStrategy {
        window_fn: Some(FunctionSpec {
            urn: GLOBAL_WINDOWS_URN.to_owned(),
            payload: Default::default(),
        }),
        merge_status: merge_status::Enum::NonMerging as i32,
        window_coder_id: window_coder_id.to_owned(),
        trigger: Some(OpaqueMessage {
            encoded: DEFAULT_TRIGGER.to_vec(),
        }),
        accumulation_mode: accumulation_mode::Enum::Discarding as i32,
        output_time: output_time::Enum::EndOfWindow as i32,
        closing_behavior: closing_behavior::Enum::EmitIfNonempty as i32,
        allowed_lateness: 0,
        on_time_behavior: on_time_behavior::Enum::FireIfNonempty as i32,
        assigns_to_one_window: false,
        environment_id: String::new(),
    }
}

/// `{namespace}_{what}`, suffixed with a counter if the request already uses it.
fn fresh_id(namespace: &str, what: &str, taken: &HashSet<String>) -> String {
    let base = format!("{namespace}_{what}");
    let mut id = base.clone();
    let mut n = 1;
    while taken.contains(&id) {
        id = format!("{base}_{n}");
        n += 1;
    }
    id
}

/// Adds `id` and every coder below it to `out`.
fn collect_coders(
    id: &str,
    coders: &HashMap<String, Coder>,
    out: &mut HashSet<String>,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_CODER_DEPTH {
        return Err(format!(
            "coder '{id}' is nested more than {MAX_CODER_DEPTH} levels deep"
        ));
    }
    if !out.insert(id.to_owned()) {
        return Ok(());
    }
    let coder = coders
        .get(id)
        .ok_or_else(|| format!("coder '{id}' is referenced but not in the request's components"))?;
    for component in &coder.component_coder_ids {
        collect_coders(component, coders, out, depth + 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::{BEAM_KAFKA_READ_URN, BEAM_KAFKA_WRITE_URN};
    use beam_proto::expansion::expansion_service_client::ExpansionServiceClient;
    use beam_proto::pipeline::{FunctionSpec, WindowingStrategy};

    const POOL: &str = "localhost:50000";
    const NS: &str = "external_7";

    /// Components shaped like what the Python SDK sends: the input PCollection,
    /// its coders and windowing strategy, a fake impulse producing the input,
    /// plus coders the transform does not use.
    fn components(input_coder: &str) -> Components {
        let coders = [
            ("c_bytes", coder(coders::BYTES_URN, &[])),
            ("c_nbytes", coder(coders::NULLABLE_URN, &["c_bytes"])),
            ("c_varint", coder("beam:coder:varint:v1", &[])),
            ("c_kv", coder(coders::KV_URN, &["c_bytes", "c_bytes"])),
            ("c_kvn", coder(coders::KV_URN, &["c_nbytes", "c_bytes"])),
            ("c_kvv", coder(coders::KV_URN, &["c_varint", "c_bytes"])),
            ("c_pickled", coder("beam:coder:pickled_python:v1", &[])),
            ("c_gw", coder(coders::GLOBAL_WINDOW_URN, &[])),
            ("c_unused", coder("beam:coder:string_utf8:v1", &[])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let input = PCollection {
            unique_name: "Create/Map(decode).None".into(),
            coder_id: input_coder.into(),
            is_bounded: 2,
            windowing_strategy_id: "ws_global".into(),
        };
        let impulse = PTransform {
            unique_name: "impulse_input".into(),
            spec: Some(FunctionSpec {
                urn: "beam:transform:impulse:v1".into(),
                payload: Default::default(),
            }),
            outputs: HashMap::from([("out".into(), "pc_in".into())]),
            ..Default::default()
        };
        Components {
            transforms: HashMap::from([("impulse_input".into(), impulse)]),
            pcollections: HashMap::from([("pc_in".into(), input)]),
            windowing_strategies: HashMap::from([(
                "ws_global".into(),
                WindowingStrategy {
                    window_fn: Some(FunctionSpec {
                        urn: "beam:window_fn:global_windows:v1".into(),
                        payload: Default::default(),
                    }),
                    window_coder_id: "c_gw".into(),
                    allowed_lateness: 0,
                    environment_id: "python_env".into(),
                    ..Default::default()
                },
            )]),
            coders,
            environments: HashMap::from([("python_env".into(), Environment::default())]),
        }
    }

    fn request(urn: &str, input_coder: &str) -> ExpansionRequest {
        ExpansionRequest {
            components: Some(components(input_coder)),
            transform: Some(PTransform {
                unique_name: "KvEcho/ExternalTransform(kv_echo)".into(),
                spec: Some(FunctionSpec {
                    urn: urn.into(),
                    payload: Default::default(),
                }),
                inputs: HashMap::from([("input".into(), "pc_in".into())]),
                ..Default::default()
            }),
            namespace: NS.into(),
            output_coder_requests: HashMap::new(),
        }
    }

    fn ok(req: ExpansionRequest) -> (Components, PTransform) {
        let resp = expand(req, POOL);
        assert_eq!(resp.error, "");
        (resp.components.unwrap(), resp.transform.unwrap())
    }

    fn err(req: ExpansionRequest) -> String {
        let resp = expand(req, POOL);
        assert!(!resp.error.is_empty(), "expected an error");
        assert!(resp.components.is_none() && resp.transform.is_none());
        resp.error
    }

    #[test]
    fn kv_echo_is_bound_to_a_new_external_environment() {
        let (comps, t) = ok(request(KV_ECHO_URN, "c_kv"));
        assert_eq!(t.unique_name, "KvEcho/ExternalTransform(kv_echo)");
        assert_eq!(dofn_of(&t), (KV_ECHO_URN.to_owned(), false));
        assert_eq!(t.inputs, HashMap::from([("input".into(), "pc_in".into())]));
        assert!(t.subtransforms.is_empty());

        let (tag, out_id) = t.outputs.iter().next().unwrap();
        assert_eq!((t.outputs.len(), tag.as_str()), (1, "out"));
        assert!(out_id.starts_with(NS), "{out_id}");
        let out = &comps.pcollections[out_id];
        let input = &comps.pcollections["pc_in"];
        assert_eq!(out.coder_id, "c_kv");
        assert_eq!(out.windowing_strategy_id, "ws_global");
        assert_eq!(out.is_bounded, input.is_bounded);

        assert!(t.environment_id.starts_with(NS), "{}", t.environment_id);
        assert_eq!(comps.environments.len(), 1);
        let env = &comps.environments[&t.environment_id];
        assert_eq!(env.urn, EXTERNAL_ENVIRONMENT_URN);
        let payload = ExternalPayload::decode(env.payload.clone()).unwrap();
        assert_eq!(payload.endpoint.unwrap().url, POOL);
        assert!(env.capabilities.iter().any(|c| c == coders::NULLABLE_URN));
        assert!(
            env.capabilities
                .iter()
                .any(|c| c == coders::INTERVAL_WINDOW_URN)
        );

        // The input's coder tree and window coder travel back, nothing else.
        let mut ids: Vec<_> = comps.coders.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["c_bytes", "c_gw", "c_kv"]);
        assert_eq!(comps.coders["c_kv"], components("c_kv").coders["c_kv"]);
        assert_eq!(
            comps.windowing_strategies["ws_global"],
            components("c_kv").windowing_strategies["ws_global"]
        );
        assert!(comps.transforms.is_empty());
    }

    #[test]
    fn nullable_keys_and_requested_output_tag_are_kept() {
        let mut req = request(KV_ECHO_URN, "c_kvn");
        req.transform
            .as_mut()
            .unwrap()
            .outputs
            .insert("echoed".into(), "placeholder".into());
        let (comps, t) = ok(req);
        let out_id = &t.outputs["echoed"];
        assert_eq!(comps.pcollections[out_id].coder_id, "c_kvn");
        assert!(comps.coders.contains_key("c_nbytes"));
    }

    #[test]
    fn unknown_urn_names_it_and_lists_supported_ones() {
        let e = err(request("beam:transform:pardo:v1", "c_kv"));
        assert!(e.contains("'beam:transform:pardo:v1'"), "{e}");
        assert!(e.contains(KV_ECHO_URN), "{e}");
        let mut no_spec = request(KV_ECHO_URN, "c_kv");
        no_spec.transform.as_mut().unwrap().spec = None;
        assert!(err(no_spec).contains("unknown URN ''"));
        let mut no_transform = request(KV_ECHO_URN, "c_kv");
        no_transform.transform = None;
        assert!(err(no_transform).contains("no transform"));
    }

    #[test]
    fn exactly_one_input_is_required() {
        let mut none = request(KV_ECHO_URN, "c_kv");
        none.transform.as_mut().unwrap().inputs.clear();
        assert!(err(none).contains("exactly one input PCollection, got 0"));
        let mut two = request(KV_ECHO_URN, "c_kv");
        two.transform
            .as_mut()
            .unwrap()
            .inputs
            .insert("other".into(), "pc_in".into());
        assert!(err(two).contains("got 2"));
        let mut dangling = request(KV_ECHO_URN, "c_kv");
        dangling.components.as_mut().unwrap().pcollections.clear();
        assert!(err(dangling).contains("'pc_in'"));
    }

    #[test]
    fn unsupported_coders_are_named() {
        let e = err(request(KV_ECHO_URN, "c_kvv"));
        assert!(e.contains("beam:coder:varint:v1"), "{e}");
        let e = err(request(KV_ECHO_URN, "c_pickled"));
        assert!(e.contains("beam:coder:pickled_python:v1"), "{e}");
        assert!(e.contains("Tuple[bytes, bytes]"), "{e}");
        let e = err(request(KV_ECHO_URN, "no_such_coder"));
        assert!(e.contains("no_such_coder"), "{e}");
    }

    #[test]
    fn payload_and_missing_windowing_strategy_are_errors() {
        let mut with_payload = request(KV_ECHO_URN, "c_kv");
        with_payload
            .transform
            .as_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .payload = vec![1, 2, 3].into();
        assert!(err(with_payload).contains("3-byte payload"));
        let mut no_ws = request(KV_ECHO_URN, "c_kv");
        no_ws
            .components
            .as_mut()
            .unwrap()
            .windowing_strategies
            .clear();
        assert!(err(no_ws).contains("ws_global"));
        let mut no_window_coder = request(KV_ECHO_URN, "c_kv");
        no_window_coder
            .components
            .as_mut()
            .unwrap()
            .coders
            .remove("c_gw");
        assert!(err(no_window_coder).contains("c_gw"));
    }

    #[test]
    fn requested_output_coders_are_hints_the_input_coder_wins() {
        // Python asks for a pickled coder whenever the output is untyped.
        let mut req = request(KV_ECHO_URN, "c_kv");
        req.output_coder_requests
            .insert("0".into(), "c_pickled".into());
        let (comps, t) = ok(req);
        assert_eq!(comps.pcollections[&t.outputs["out"]].coder_id, "c_kv");
    }

    #[test]
    fn cyclic_coders_do_not_hang() {
        let mut req = request(KV_ECHO_URN, "c_kv");
        let comps = req.components.as_mut().unwrap();
        comps
            .coders
            .insert("c_gw".into(), coder(coders::GLOBAL_WINDOW_URN, &["c_gw2"]));
        comps
            .coders
            .insert("c_gw2".into(), coder(coders::GLOBAL_WINDOW_URN, &["c_gw"]));
        // Visited ids stop the walk; the expansion succeeds.
        let (comps, _) = ok(req);
        assert!(comps.coders.contains_key("c_gw2"));
        let coders: HashMap<String, Coder> = (0..100)
            .map(|i| {
                (
                    format!("x{i}"),
                    coder(coders::KV_URN, &[&format!("x{}", i + 1)]),
                )
            })
            .collect();
        assert!(collect_coders("x0", &coders, &mut HashSet::new(), 0).is_err());
    }

    #[test]
    fn new_ids_avoid_ids_already_in_use() {
        let mut req = request(KV_ECHO_URN, "c_kv");
        let comps = req.components.as_mut().unwrap();
        let taken = format!("{NS}_kv_echo_output");
        let input = comps.pcollections["pc_in"].clone();
        comps.pcollections.insert(taken.clone(), input);
        let (comps, t) = ok(req);
        assert_eq!(t.outputs["out"], format!("{taken}_1"));
        assert!(comps.pcollections.contains_key(&format!("{taken}_1")));
    }

    #[tokio::test]
    async fn served_over_grpc_errors_are_responses_not_statuses() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, POOL.into(), async {
            let _ = stopped.await;
        }));
        let mut client = ExpansionServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let good = client
            .expand(request(KV_ECHO_URN, "c_kv"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(good.error, "");
        let env = good
            .components
            .unwrap()
            .environments
            .into_values()
            .next()
            .unwrap();
        let url = ExternalPayload::decode(env.payload)
            .unwrap()
            .endpoint
            .unwrap()
            .url;
        assert_eq!(url, POOL);
        let bad = client
            .expand(request("beam:transform:nope:v1", "c_kv"))
            .await
            .unwrap()
            .into_inner();
        assert!(bad.error.contains("beam:transform:nope:v1"));
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    /// The DoFn URN of a ParDo we sent, and whether it requests finalization.
    fn dofn_of(t: &PTransform) -> (String, bool) {
        let spec = t.spec.as_ref().unwrap();
        assert_eq!(spec.urn, PARDO_URN, "our transforms travel as ParDos");
        let pardo = ParDoPayload::decode(spec.payload.clone()).unwrap();
        (pardo.do_fn.unwrap().urn, pardo.requests_finalization)
    }

    #[test]
    fn a_read_that_commits_requests_finalization_and_declares_it() {
        use crate::row::testing::{payload, str_list, str_map};
        let commit = payload(&[
            (
                "consumer_config",
                str_map(&[("bootstrap.servers", "127.0.0.1:9"), ("group.id", "g")]),
            ),
            ("topics", str_list(&["in"])),
            ("commit_offset_in_finalize", crate::row::Value::Bool(true)),
            ("stop_at_end", crate::row::Value::Bool(true)),
        ]);
        let resp = expand(kafka_request(KAFKA_READ_URN, commit, false), POOL);
        assert!(resp.error.is_empty(), "{}", resp.error);
        let components = resp.components.unwrap();
        let composite = resp.transform.unwrap();
        let read = &components.transforms[&composite.subtransforms[1]];
        assert_eq!(dofn_of(read), (KAFKA_READ_URN.to_owned(), true));
        assert_eq!(resp.requirements, vec![FINALIZATION_REQUIREMENT.to_owned()]);
    }

    fn kafka_request(urn: &str, payload: Vec<u8>, with_input: bool) -> ExpansionRequest {
        let mut req = request(urn, "c_kvn");
        let t = req.transform.as_mut().unwrap();
        t.unique_name = "ReadOrWrite".into();
        t.spec.as_mut().unwrap().payload = payload.into();
        if !with_input {
            t.inputs.clear();
        }
        req
    }

    /// A bounded read (to the end of each partition).
    fn read_payload() -> Vec<u8> {
        use crate::row::testing::{payload, str_list, str_map};
        payload(&[
            (
                "consumer_config",
                str_map(&[("bootstrap.servers", "127.0.0.1:9")]),
            ),
            ("topics", str_list(&["in"])),
            ("stop_at_end", crate::row::Value::Bool(true)),
        ])
    }

    #[test]
    fn an_unbounded_read_is_a_splittable_pardo_per_partition() {
        use crate::row::testing::{payload, str_list, str_map};
        let unbounded = payload(&[
            (
                "consumer_config",
                str_map(&[("bootstrap.servers", "127.0.0.1:9"), ("group.id", "g")]),
            ),
            ("topics", str_list(&["in"])),
            ("commit_offset_in_finalize", crate::row::Value::Bool(true)),
        ]);
        let resp = expand(kafka_request(BEAM_KAFKA_READ_URN, unbounded, false), POOL);
        assert!(resp.error.is_empty(), "{}", resp.error);
        let mut requirements = resp.requirements.clone();
        requirements.sort();
        assert_eq!(
            requirements,
            vec![
                FINALIZATION_REQUIREMENT.to_owned(),
                SPLITTABLE_REQUIREMENT.to_owned()
            ]
        );
        let components = resp.components.unwrap();
        let composite = resp.transform.unwrap();
        let [impulse, partitions, read] =
            [0, 1, 2].map(|i| &components.transforms[&composite.subtransforms[i]]);
        assert_eq!(impulse.spec.as_ref().unwrap().urn, IMPULSE_URN);
        assert_eq!(
            dofn_of(partitions),
            (kafka::KAFKA_PARTITIONS_URN.to_owned(), false)
        );
        assert_eq!(
            dofn_of(read),
            (kafka::KAFKA_READ_PARTITION_URN.to_owned(), true)
        );
        assert_eq!(
            read.inputs.values().collect::<Vec<_>>(),
            partitions.outputs.values().collect::<Vec<_>>()
        );
        // The restriction coder is KV(KV(varint, varint), varint): standard
        // coders every runner can decode (Flink decodes residuals).
        let pardo = ParDoPayload::decode(read.spec.as_ref().unwrap().payload.clone()).unwrap();
        let restriction =
            value_coder::ValueCoder::resolve(&pardo.restriction_coder_id, &components.coders)
                .unwrap();
        let varint = || Box::new(value_coder::ValueCoder::VarInt);
        assert_eq!(
            restriction,
            value_coder::ValueCoder::Kv(
                Box::new(value_coder::ValueCoder::Kv(varint(), varint())),
                varint()
            )
        );
        let records = &components.pcollections[read.outputs.values().next().unwrap()];
        assert_eq!(records.is_bounded, is_bounded::Enum::Unbounded as i32);
        assert_eq!(read.outputs, composite.outputs);
    }

    fn write_payload() -> Vec<u8> {
        use crate::row::testing::{payload, str_map};
        payload(&[
            (
                "producer_config",
                str_map(&[("bootstrap.servers", "127.0.0.1:9")]),
            ),
            ("topic", crate::row::Value::Str("out".into())),
        ])
    }

    #[test]
    fn kafka_read_is_impulse_then_read_in_the_pool() {
        let (components, composite) = ok(kafka_request(KAFKA_READ_URN, read_payload(), false));
        assert_eq!(composite.subtransforms.len(), 2);
        assert!(
            composite.environment_id.is_empty(),
            "a composite runs nothing itself"
        );
        let [impulse, read] = [0, 1].map(|i| &components.transforms[&composite.subtransforms[i]]);
        assert_eq!(impulse.spec.as_ref().unwrap().urn, IMPULSE_URN);
        assert_eq!(dofn_of(read), (KAFKA_READ_URN.to_owned(), false));
        assert!(
            expand(kafka_request(KAFKA_READ_URN, read_payload(), false), POOL)
                .requirements
                .is_empty()
        );
        assert_eq!(
            read.inputs.values().collect::<Vec<_>>(),
            impulse.outputs.values().collect::<Vec<_>>()
        );
        assert_eq!(read.outputs, composite.outputs);
        // Records are KV<nullable bytes, nullable bytes>, as Java's KafkaIO emits.
        let records = &components.pcollections[read.outputs.values().next().unwrap()];
        let (key, value) = coders::resolve_kv(&records.coder_id, &components.coders).unwrap();
        assert_eq!(
            (key, value),
            (
                coders::ComponentCoder::NullableBytes,
                coders::ComponentCoder::NullableBytes
            )
        );
        let strategy = &components.windowing_strategies[&records.windowing_strategy_id];
        assert_eq!(strategy.trigger.as_ref().unwrap().encoded, DEFAULT_TRIGGER);
        for id in components
            .pcollections
            .keys()
            .chain(components.coders.keys())
            .chain(components.transforms.keys())
            .chain(components.environments.keys())
            .chain(components.windowing_strategies.keys())
        {
            assert!(id.starts_with(NS), "{id} is not namespaced");
        }
    }

    #[test]
    fn kafka_environments_equal_the_echo_one_so_runners_fuse_them() {
        let (read, _) = ok(kafka_request(KAFKA_READ_URN, read_payload(), false));
        let (write, _) = ok(kafka_request(KAFKA_WRITE_URN, write_payload(), true));
        let (echo, _) = ok(request(KV_ECHO_URN, "c_kvn"));
        let env = |c: &Components| c.environments.values().next().unwrap().clone();
        assert_eq!(env(&read), env(&echo));
        assert_eq!(env(&write), env(&echo));
    }

    #[test]
    fn kafka_write_keeps_an_output_so_runners_keep_it() {
        let (components, write) = ok(kafka_request(KAFKA_WRITE_URN, write_payload(), true));
        assert_eq!(write.outputs.len(), 1);
        let out = write.outputs.values().next().unwrap();
        assert!(components.pcollections.contains_key(out));
        assert!(!write.environment_id.is_empty());
    }

    #[test]
    fn kafka_misconfiguration_is_refused_at_construction() {
        let e = err(kafka_request(KAFKA_READ_URN, write_payload(), false));
        assert!(
            e.contains(KAFKA_READ_URN) && e.contains("unsupported field"),
            "{e}"
        );
        let e = err(kafka_request(KAFKA_READ_URN, read_payload(), true));
        assert!(e.contains("takes no inputs"), "{e}");
        let e = err(kafka_request(KAFKA_WRITE_URN, read_payload(), true));
        assert!(e.contains(KAFKA_WRITE_URN), "{e}");
    }

    #[test]
    fn environments_carry_the_native_marker_for_the_pool() {
        let (comps, t) = ok(request(KV_ECHO_URN, "c_kv"));
        let env = &comps.environments[&t.environment_id];
        let payload = ExternalPayload::decode(env.payload.clone()).unwrap();
        let params = HashMap::from([(NATIVE_PARAM.to_owned(), NATIVE_VALUE.to_owned())]);
        assert_eq!(payload.params, params);
        assert_eq!(
            crate::delegate::route(&payload.params),
            Ok(crate::delegate::Route::Native)
        );
    }

    #[test]
    fn beams_kafka_urns_expand_into_our_native_read_and_write() {
        let (components, composite) = ok(kafka_request(BEAM_KAFKA_READ_URN, read_payload(), false));
        let read = &components.transforms[&composite.subtransforms[1]];
        assert_eq!(dofn_of(read).0, KAFKA_READ_URN);
        let (native, _) = ok(kafka_request(KAFKA_READ_URN, read_payload(), false));
        assert_eq!(
            components.environments.values().collect::<Vec<_>>(),
            native.environments.values().collect::<Vec<_>>(),
            "the same environment as our own read, so they fuse"
        );
        let (_, write) = ok(kafka_request(BEAM_KAFKA_WRITE_URN, write_payload(), true));
        assert_eq!(dofn_of(&write).0, KAFKA_WRITE_URN);
        assert_eq!(write.unique_name, "ReadOrWrite");
    }

    #[test]
    fn beams_kafka_configuration_beyond_ours_is_refused_naming_the_field() {
        use crate::row::testing::{payload, str_list, str_map};
        let with_start_time = payload(&[
            (
                "consumer_config",
                str_map(&[("bootstrap.servers", "127.0.0.1:9")]),
            ),
            ("topics", str_list(&["in"])),
            ("start_read_time", crate::row::Value::Int(1)),
        ]);
        let e = err(kafka_request(BEAM_KAFKA_READ_URN, with_start_time, false));
        assert!(
            e.contains("`start_read_time`") && e.contains("supported"),
            "{e}"
        );
        let e = err(kafka_request(
            kafka::BEAM_KAFKA_READ_WITH_METADATA_URN,
            read_payload(),
            false,
        ));
        assert!(e.contains("with_metadata=False"), "{e}");
        let e = err(kafka_request(
            kafka::BEAM_KAFKA_WRITE_WITH_HEADERS_URN,
            write_payload(),
            true,
        ));
        assert!(e.contains("with_headers=False"), "{e}");
        let e = err(request("beam:transform:nope:v1", "c_kv"));
        assert!(e.contains(BEAM_KAFKA_READ_URN), "{e}");
    }
}
