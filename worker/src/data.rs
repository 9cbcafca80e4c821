//! Data channels: one `BeamFnData/Data` stream per (worker, data URL), shared by
//! every bundle of that worker and multiplexed by (instruction id, transform id).
//!
//! Each channel has a single reader task that owns the routing table, so no lock
//! is held while data moves. Input for an instruction whose `ProcessBundle` has
//! not arrived yet (the Python runner sends a whole bundle first) is held up to a
//! byte bound; input for recently finished instructions is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use beam_proto::fn_execution::beam_fn_data_client::BeamFnDataClient;
use beam_proto::fn_execution::{Elements, elements};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::grpc::{EndpointError, worker_channel};

/// Recently finished instruction ids remembered to drop their late data.
const REMEMBERED_FINISHED: usize = 10_000;
/// Outbound `Elements` messages queued per channel before bundles wait.
const OUTBOUND_QUEUE: usize = 32;
/// How long a released worker's stream may take to close cleanly before it is reset.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A data stream problem, reported to the bundles it affects.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("data stream to {url} ended before the bundle's input was complete: {reason}")]
    Closed { url: String, reason: String },
    #[error(
        "input for this instruction arrived before its ProcessBundle request and exceeded the \
         {limit}-byte buffer for such data (--max-pending-bytes); the runner sent {held} bytes \
         for bundles not yet started"
    )]
    PendingOverflow { limit: usize, held: usize },
}

/// What a bundle receives from its data channels.
#[derive(Debug)]
pub enum Inbound {
    Data(elements::Data),
    /// Timers cannot be run by this worker; the bundle fails naming the family.
    Timers {
        transform_id: String,
        family: String,
    },
    Failed(DataError),
}

impl Inbound {
    /// Payload bytes this item holds, for the pending-data bound.
    fn bytes(&self) -> usize {
        match self {
            Inbound::Data(d) => d.data.len(),
            _ => 0,
        }
    }
}

enum Command {
    Register {
        instruction_id: String,
        tx: mpsc::Sender<Inbound>,
    },
    Finish {
        instruction_id: String,
    },
}

/// One open data stream.
pub struct DataChannel {
    url: String,
    outbound: mpsc::Sender<Elements>,
    commands: mpsc::UnboundedSender<Command>,
    /// Why the stream ended, once it has.
    closed: Arc<OnceLock<String>>,
}

impl DataChannel {
    fn open(
        url: &str,
        worker_id: &str,
        max_pending_bytes: usize,
        cancel: CancellationToken,
    ) -> Result<Self, DataError> {
        let client = BeamFnDataClient::new(worker_channel(url, worker_id)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let closed = Arc::new(OnceLock::new());
        let reader = Reader {
            url: url.to_owned(),
            router: Router::new(max_pending_bytes),
            closed: closed.clone(),
        };
        // The call itself waits for the runner's response headers, which some
        // runners send only with their first message, so it lives in the task.
        tokio::spawn(reader.run(client, outbound_rx, commands_rx, cancel));
        Ok(Self {
            url: url.to_owned(),
            outbound,
            commands,
            closed,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn is_closed(&self) -> bool {
        self.closed.get().is_some() || self.outbound.is_closed()
    }

    fn closed_error(&self) -> DataError {
        DataError::Closed {
            url: self.url.clone(),
            reason: self
                .closed
                .get()
                .cloned()
                .unwrap_or_else(|| "the stream was closed".into()),
        }
    }

    /// Queues one message for the runner, waiting while the queue is full.
    pub async fn send(&self, elements: Elements) -> Result<(), DataError> {
        self.outbound
            .send(elements)
            .await
            .map_err(|_| self.closed_error())
    }

    /// Routes `instruction_id`'s input (including anything already held) to `tx`.
    pub fn register(
        &self,
        instruction_id: &str,
        tx: mpsc::Sender<Inbound>,
    ) -> Result<(), DataError> {
        self.commands
            .send(Command::Register {
                instruction_id: instruction_id.to_owned(),
                tx,
            })
            .map_err(|_| self.closed_error())
    }

    /// The bundle is over: drop its remaining and late input.
    pub fn finish(&self, instruction_id: &str) {
        let _ = self.commands.send(Command::Finish {
            instruction_id: instruction_id.to_owned(),
        });
    }
}

/// The data channels of one worker, opened on first use.
pub struct DataChannels {
    worker_id: String,
    max_pending_bytes: usize,
    /// Ends every reader task when the worker goes away.
    cancel: CancellationToken,
    channels: std::sync::Mutex<HashMap<String, Arc<DataChannel>>>,
}

impl DataChannels {
    pub fn new(worker_id: &str, max_pending_bytes: usize, cancel: CancellationToken) -> Self {
        Self {
            worker_id: worker_id.to_owned(),
            max_pending_bytes,
            cancel,
            channels: Default::default(),
        }
    }

    /// The open stream to `url`, or a new one if there is none or it has ended.
    pub fn get(&self, url: &str) -> Result<Arc<DataChannel>, DataError> {
        let mut map = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(c) = map.get(url).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let channel = Arc::new(DataChannel::open(
            url,
            &self.worker_id,
            self.max_pending_bytes,
            self.cancel.child_token(),
        )?);
        map.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// The routing table, owned by the reader task.
struct Router {
    active: HashMap<String, mpsc::Sender<Inbound>>,
    pending: HashMap<String, Vec<Inbound>>,
    pending_bytes: usize,
    max_pending_bytes: usize,
    /// Instructions whose early input overflowed the bound, with the bytes held
    /// then; bounded, since a runner may never send those requests.
    overflowed: Recent<usize>,
    finished: Recent<()>,
}

impl Router {
    fn new(max_pending_bytes: usize) -> Self {
        Self {
            active: HashMap::new(),
            pending: HashMap::new(),
            pending_bytes: 0,
            max_pending_bytes,
            overflowed: Recent::new(REMEMBERED_FINISHED),
            finished: Recent::new(REMEMBERED_FINISHED),
        }
    }

    async fn deliver(&mut self, instruction_id: String, item: Inbound) {
        if let Some(tx) = self.active.get(&instruction_id) {
            if tx.send(item).await.is_err() {
                // The bundle ended without telling us yet; its input is moot.
                self.active.remove(&instruction_id);
                self.finished.insert(instruction_id, ());
            }
            return;
        }
        if self.finished.contains(&instruction_id) || self.overflowed.contains(&instruction_id) {
            return;
        }
        let size = item.bytes();
        if self.pending_bytes + size > self.max_pending_bytes {
            let dropped: usize = self
                .pending
                .remove(&instruction_id)
                .into_iter()
                .flatten()
                .map(|i| i.bytes())
                .sum();
            self.pending_bytes -= dropped;
            warn!(
                instruction_id,
                limit = self.max_pending_bytes,
                "input for a bundle not yet started exceeds the pending-data bound; that bundle will fail"
            );
            let held = self.pending_bytes + dropped + size;
            self.overflowed.insert(instruction_id, held);
            return;
        }
        self.pending_bytes += size;
        self.pending.entry(instruction_id).or_default().push(item);
    }

    async fn register(&mut self, instruction_id: String, tx: mpsc::Sender<Inbound>) {
        if let Some(held) = self.overflowed.remove(&instruction_id) {
            let _ = tx
                .send(Inbound::Failed(DataError::PendingOverflow {
                    limit: self.max_pending_bytes,
                    held,
                }))
                .await;
        }
        for item in self.pending.remove(&instruction_id).into_iter().flatten() {
            self.pending_bytes -= item.bytes();
            if tx.send(item).await.is_err() {
                break;
            }
        }
        self.active.insert(instruction_id, tx);
    }

    fn finish(&mut self, instruction_id: String) {
        self.active.remove(&instruction_id);
        for item in self.pending.remove(&instruction_id).into_iter().flatten() {
            self.pending_bytes -= item.bytes();
        }
        self.overflowed.remove(&instruction_id);
        self.finished.insert(instruction_id, ());
    }

    /// Tells every waiting bundle why its input stopped.
    fn fail_all(&mut self, error: DataError) {
        for (_, tx) in self.active.drain() {
            let item = Inbound::Failed(error.clone());
            if let Err(mpsc::error::TrySendError::Full(item)) = tx.try_send(item) {
                tokio::spawn(async move { tx.send(item).await });
            }
        }
        self.pending.clear();
        self.pending_bytes = 0;
    }
}

struct Reader {
    url: String,
    router: Router,
    closed: Arc<OnceLock<String>>,
}

impl Reader {
    async fn run(
        mut self,
        mut client: BeamFnDataClient<crate::grpc::WorkerChannel>,
        outbound: mpsc::Receiver<Elements>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        cancel: CancellationToken,
    ) {
        let url = self.url.clone();
        let reason = {
            let router = &mut self.router;
            let stream = async {
                match client.data(ReceiverStream::new(outbound)).await {
                    Ok(response) => route(router, response.into_inner(), &mut commands).await,
                    Err(status) => format!("could not open the data stream: {status}"),
                }
            };
            tokio::pin!(stream);
            tokio::select! {
                reason = &mut stream => reason,
                // Our side half-closes once the worker drops its senders; the runner
                // then ends its side. Resetting the stream instead would show up as
                // errors in the runner's log.
                _ = cancel.cancelled() => tokio::time::timeout(CLOSE_GRACE, &mut stream)
                    .await
                    .unwrap_or_else(|_| "the worker is shutting down".to_owned()),
            }
        };
        debug!(%url, %reason, "data stream ended");
        let _ = self.closed.set(reason.clone());
        self.router.fail_all(DataError::Closed {
            url: self.url.clone(),
            reason,
        });
    }
}

/// Routes until the stream ends; returns why it ended.
async fn route(
    router: &mut Router,
    mut inbound: tonic::Streaming<Elements>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> String {
    loop {
        tokio::select! {
            // Registrations first, so held data reaches a bundle before newer data.
            biased;
            Some(command) = commands.recv() => match command {
                Command::Register { instruction_id, tx } => router.register(instruction_id, tx).await,
                Command::Finish { instruction_id } => router.finish(instruction_id),
            },
            message = inbound.message() => match message {
                Ok(Some(elements)) => dispatch(router, elements).await,
                Ok(None) => return "the runner closed it".into(),
                Err(status) => return format!("the runner's stream failed: {status}"),
            },
        }
    }
}

async fn dispatch(router: &mut Router, elements: Elements) {
    for data in elements.data {
        let id = data.instruction_id.clone();
        router.deliver(id, Inbound::Data(data)).await;
    }
    for timers in elements.timers {
        let item = Inbound::Timers {
            transform_id: timers.transform_id,
            family: timers.timer_family_id,
        };
        router.deliver(timers.instruction_id, item).await;
    }
}

/// A bounded map of instruction ids that forgets the oldest first.
struct Recent<V> {
    order: VecDeque<String>,
    map: HashMap<String, V>,
    capacity: usize,
}

impl<V> Recent<V> {
    fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            map: HashMap::new(),
            capacity,
        }
    }

    fn insert(&mut self, id: String, value: V) {
        if self.map.insert(id.clone(), value).is_none() {
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    fn remove(&mut self, id: &str) -> Option<V> {
        let value = self.map.remove(id)?;
        self.order.retain(|o| o != id);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn data(id: &str, n: usize) -> Inbound {
        Inbound::Data(elements::Data {
            instruction_id: id.into(),
            transform_id: "src".into(),
            data: Bytes::from(vec![0u8; n]),
            is_last: false,
        })
    }

    fn len(item: &Inbound) -> usize {
        match item {
            Inbound::Data(d) => d.data.len(),
            _ => usize::MAX,
        }
    }

    #[tokio::test]
    async fn early_data_is_held_then_delivered_in_order() {
        let mut r = Router::new(100);
        r.deliver("a".into(), data("a", 10)).await;
        r.deliver("a".into(), data("a", 20)).await;
        assert_eq!(r.pending_bytes, 30);
        let (tx, mut rx) = mpsc::channel(8);
        r.register("a".into(), tx).await;
        r.deliver("a".into(), data("a", 30)).await;
        assert_eq!(r.pending_bytes, 0);
        for expect in [10, 20, 30] {
            assert_eq!(len(&rx.recv().await.unwrap()), expect);
        }
    }

    #[tokio::test]
    async fn overflow_fails_only_that_bundle_and_frees_its_bytes() {
        let mut r = Router::new(100);
        r.deliver("a".into(), data("a", 60)).await;
        r.deliver("b".into(), data("b", 30)).await;
        r.deliver("a".into(), data("a", 60)).await;
        assert_eq!(r.pending_bytes, 30, "a's held bytes are released");
        let (tx, mut rx) = mpsc::channel(8);
        r.register("a".into(), tx).await;
        match rx.recv().await.unwrap() {
            Inbound::Failed(DataError::PendingOverflow {
                limit: 100,
                held: 150,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        let (tx, mut rx) = mpsc::channel(8);
        r.register("b".into(), tx).await;
        assert_eq!(len(&rx.recv().await.unwrap()), 30);
    }

    #[tokio::test]
    async fn late_data_for_finished_bundles_is_dropped() {
        let mut r = Router::new(100);
        let (tx, rx) = mpsc::channel(8);
        r.register("a".into(), tx).await;
        r.finish("a".into());
        drop(rx);
        r.deliver("a".into(), data("a", 10)).await;
        assert_eq!(r.pending_bytes, 0);
        assert!(r.pending.is_empty());
    }

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut ids = Recent::new(2);
        for id in ["a", "b", "c"] {
            ids.insert(id.into(), ());
        }
        assert!(!ids.contains("a"));
        assert!(ids.contains("b") && ids.contains("c"));
        assert_eq!(ids.remove("b"), Some(()));
        ids.insert("d".into(), ());
        assert!(ids.contains("c") && ids.contains("d"));
    }
}
