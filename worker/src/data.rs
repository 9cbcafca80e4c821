//! Data channels: one `BeamFnData/Data` stream per (worker, data URL), shared by
//! every bundle of that worker and multiplexed by (instruction id, transform id).
//!
//! Each channel has a single reader task that owns the routing table, so no lock
//! is held while data moves. Input for an instruction whose `ProcessBundle` has
//! not arrived yet (the Python runner sends a whole bundle first) is held up to a
//! byte bound; input for recently finished instructions is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use beam_proto::fn_execution::{Elements, elements};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::HarnessConfig;
use crate::grpc::{EndpointError, WorkerChannel, worker_channel_with};
use crate::outbound::{OutboundBody, Outgoing, data_call};

/// Recently finished instruction ids remembered to drop their late data.
const REMEMBERED_FINISHED: usize = 10_000;
/// Bytes of remembered instruction ids, so that huge ids cannot make the
/// remembered sets large; the oldest are forgotten first.
const REMEMBERED_BYTES: usize = 4 << 20;
/// What holding one early `Data` entry costs beyond its payload and transform
/// id: the entry itself, its slot and the allocations behind it. Counted so
/// that a million one-byte entries cannot slip under a byte bound.
const ENTRY_OVERHEAD: usize = 128;
/// A message with this much payload or more is "large": its small entries
/// are copied out, so that they do not keep the whole receive buffer alive
/// after the large entries' bundle is done.
const LARGE_MESSAGE_BYTES: usize = 4 << 20;
/// Entries of a large message smaller than this fraction of it are copied.
const SMALL_PART_DIVISOR: usize = 16;
/// Outbound `Elements` messages queued per channel before bundles wait.
const OUTBOUND_QUEUE: usize = 32;
/// Longest a released worker's stream waits for its queued output to be taken
/// by the transport (the pool's own grace period bounds shutdown further).
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
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
        "input for this instruction arrived before its ProcessBundle request and was dropped: \
         it needed {this_bundle} bytes while {others} bytes were already held for {other_bundles} \
         other bundles not yet started, over the {limit}-byte bound for such data \
         (--max-pending-bytes)"
    )]
    PendingOverflow {
        limit: usize,
        this_bundle: usize,
        others: usize,
        other_bundles: usize,
    },
    #[error(
        "input for this instruction arrived before its ProcessBundle request, which then did not \
         come for {after:?}; the input was dropped"
    )]
    PendingExpired { after: Duration },
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
    /// Memory this item holds while waiting for its bundle: payload, ids and
    /// per-entry overhead, for the pending-data bound.
    fn held_bytes(&self) -> usize {
        ENTRY_OVERHEAD
            + match self {
                Inbound::Data(d) => d.data.len() + d.transform_id.len() + d.instruction_id.len(),
                Inbound::Timers {
                    transform_id,
                    family,
                } => transform_id.len() + family.len(),
                Inbound::Failed(_) => 0,
            }
    }

    /// Held entries are filed under their instruction id already; a copy in
    /// every entry would count (and cost) the id once per entry.
    fn without_instruction_id(mut self) -> Self {
        if let Inbound::Data(d) = &mut self {
            d.instruction_id = String::new();
        }
        self
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
    outbound: mpsc::Sender<Outgoing>,
    commands: mpsc::UnboundedSender<Command>,
    /// Why the stream ended, once it has.
    closed: Arc<OnceLock<String>>,
}

impl DataChannel {
    fn open(
        url: &str,
        worker_id: &str,
        config: &HarnessConfig,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Self, DataError> {
        let channel = worker_channel_with(url, worker_id, config.connect_timeout)?;
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let closed = Arc::new(OnceLock::new());
        let reader = Reader {
            url: url.to_owned(),
            router: Router::new(config.max_pending_bytes, config.pending_ttl),
            closed: closed.clone(),
        };
        // The call itself waits for the runner's response headers, which some
        // runners send only with their first message, so it lives in the task.
        tasks.spawn(reader.run(channel, outbound_rx, commands_rx, cancel));
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
            .send(Outgoing {
                elements,
                taken: None,
            })
            .await
            .map_err(|_| self.closed_error())
    }

    /// Sends one message and waits until the transport has taken it (and so
    /// everything queued before it): a bundle's last message goes this way, so
    /// its response never overtakes its output.
    pub async fn send_confirmed(&self, elements: Elements) -> Result<(), DataError> {
        let (taken, confirmed) = oneshot::channel();
        self.outbound
            .send(Outgoing {
                elements,
                taken: Some(taken),
            })
            .await
            .map_err(|_| self.closed_error())?;
        confirmed.await.map_err(|_| self.closed_error())
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
    config: HarnessConfig,
    /// Ends every reader task when the worker goes away.
    cancel: CancellationToken,
    /// The reader tasks, so the worker can wait for its streams to flush and close.
    tasks: TaskTracker,
    channels: std::sync::Mutex<HashMap<String, Arc<DataChannel>>>,
}

impl DataChannels {
    pub fn new(worker_id: &str, config: &HarnessConfig, cancel: CancellationToken) -> Self {
        Self {
            worker_id: worker_id.to_owned(),
            config: config.clone(),
            cancel,
            tasks: TaskTracker::new(),
            channels: Default::default(),
        }
    }

    /// The reader tasks of every channel opened so far and later.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// A bundle that failed before (or without) taking its input: whatever
    /// arrived for it early is dropped now, and whatever comes later too.
    pub fn discard(&self, instruction_id: &str) {
        let channels: Vec<_> = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        for channel in channels {
            channel.finish(instruction_id);
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
            &self.config,
            &self.tasks,
            self.cancel.child_token(),
        )?);
        map.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Input held for an instruction whose `ProcessBundle` has not arrived.
struct Held {
    items: Vec<Inbound>,
    /// What `items` and the id cost, as counted against the bound.
    bytes: usize,
    /// When the first item arrived, to expire input whose request never comes.
    since: Instant,
}

/// Why early input of an instruction was dropped, told to its bundle if it starts.
#[derive(Debug, Clone)]
enum Dropped {
    Overflow {
        this_bundle: usize,
        others: usize,
        other_bundles: usize,
    },
    Expired,
}

/// The routing table, owned by the reader task.
struct Router {
    active: HashMap<String, mpsc::Sender<Inbound>>,
    pending: HashMap<String, Held>,
    pending_bytes: usize,
    max_pending_bytes: usize,
    /// How long early input may wait for its request.
    ttl: Duration,
    /// Instructions whose early input was dropped, and why; bounded, since a
    /// runner may never send those requests.
    dropped: Recent<Dropped>,
    finished: Recent<()>,
}

impl Router {
    fn new(max_pending_bytes: usize, ttl: Duration) -> Self {
        Self {
            active: HashMap::new(),
            pending: HashMap::new(),
            pending_bytes: 0,
            max_pending_bytes,
            ttl,
            dropped: Recent::new(REMEMBERED_FINISHED, REMEMBERED_BYTES),
            finished: Recent::new(REMEMBERED_FINISHED, REMEMBERED_BYTES),
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
        if self.finished.contains(&instruction_id) || self.dropped.contains(&instruction_id) {
            return;
        }
        let item = item.without_instruction_id();
        let new_key = if self.pending.contains_key(&instruction_id) {
            0
        } else {
            instruction_id.len() + ENTRY_OVERHEAD
        };
        let size = item.held_bytes() + new_key;
        if self.pending_bytes + size > self.max_pending_bytes {
            let mine = self.pending.remove(&instruction_id).map_or(0, |h| h.bytes);
            self.pending_bytes -= mine;
            warn!(
                instruction_id,
                limit = self.max_pending_bytes,
                "input for a bundle not yet started exceeds the pending-data bound; that bundle will fail"
            );
            let reason = Dropped::Overflow {
                this_bundle: mine + size,
                others: self.pending_bytes,
                other_bundles: self.pending.len(),
            };
            self.dropped.insert(instruction_id, reason);
            return;
        }
        self.pending_bytes += size;
        let held = self.pending.entry(instruction_id).or_insert_with(|| Held {
            items: Vec::new(),
            bytes: 0,
            since: Instant::now(),
        });
        held.bytes += size;
        held.items.push(item);
    }

    async fn register(&mut self, instruction_id: String, tx: mpsc::Sender<Inbound>) {
        if let Some(dropped) = self.dropped.remove(&instruction_id) {
            let error = match dropped {
                Dropped::Overflow {
                    this_bundle,
                    others,
                    other_bundles,
                } => DataError::PendingOverflow {
                    limit: self.max_pending_bytes,
                    this_bundle,
                    others,
                    other_bundles,
                },
                Dropped::Expired => DataError::PendingExpired { after: self.ttl },
            };
            let _ = tx.send(Inbound::Failed(error)).await;
        }
        if let Some(held) = self.pending.remove(&instruction_id) {
            self.pending_bytes -= held.bytes;
            for item in held.items {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        }
        self.active.insert(instruction_id, tx);
    }

    fn finish(&mut self, instruction_id: String) {
        self.active.remove(&instruction_id);
        if let Some(held) = self.pending.remove(&instruction_id) {
            self.pending_bytes -= held.bytes;
        }
        self.dropped.remove(&instruction_id);
        self.finished.insert(instruction_id, ());
    }

    /// Drops early input whose request has not come within the TTL.
    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        let old: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.since) >= ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            if let Some(held) = self.pending.remove(&id) {
                self.pending_bytes -= held.bytes;
                warn!(
                    instruction_id = %id,
                    bytes = held.bytes,
                    ttl_secs = ttl.as_secs_f64(),
                    "dropping input held for a bundle whose ProcessBundle never came"
                );
            }
            self.dropped.insert(id, Dropped::Expired);
        }
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
        mut channel: WorkerChannel,
        outbound: mpsc::Receiver<Outgoing>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        cancel: CancellationToken,
    ) {
        let url = self.url.clone();
        let (done_tx, mut outbound_done) = oneshot::channel::<()>();
        let reason = {
            let router = &mut self.router;
            let stream = async {
                let body = OutboundBody::new(outbound, done_tx);
                match data_call(&mut channel, body).await {
                    Ok(inbound) => route(router, inbound, &mut commands).await,
                    Err(status) => format!("could not open the data stream: {status}"),
                }
            };
            tokio::pin!(stream);
            tokio::select! {
                reason = &mut stream => reason,
                // Our side half-closes once the worker drops its senders; the runner
                // then ends its side. Resetting the stream instead would show up as
                // errors in the runner's log.
                //
                // Output already queued (answered bundles' tails) goes out first:
                // the stream stays until the worker's side has ended, within a
                // bound, and then CLOSE_GRACE for the runner to end its side.
                _ = cancel.cancelled() => {
                    let drained = async {
                        let _ = tokio::time::timeout(DRAIN_LIMIT, &mut outbound_done).await;
                        tokio::time::sleep(CLOSE_GRACE).await;
                    };
                    tokio::select! {
                        reason = &mut stream => reason,
                        _ = drained => "the worker is shutting down".to_owned(),
                    }
                }
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
    // Checked a few times per TTL, so held input lives at most ~1.25 TTLs.
    let mut expiry = tokio::time::interval((router.ttl / 4).max(Duration::from_millis(10)));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buffers = LargeBuffers::default();
    loop {
        tokio::select! {
            // Registrations first, so held data reaches a bundle before newer data.
            biased;
            Some(command) = commands.recv() => match command {
                Command::Register { instruction_id, tx } => router.register(instruction_id, tx).await,
                Command::Finish { instruction_id } => router.finish(instruction_id),
            },
            message = inbound.message() => match message {
                Ok(Some(elements)) => {
                    buffers.hold(&elements);
                    dispatch(router, elements).await;
                    buffers.release_unused();
                }
                Ok(None) => return "the runner closed it".into(),
                Err(status) => return format!("the runner's stream failed: {status}"),
            },
            now = expiry.tick() => {
                router.expire(now);
                buffers.release_unused();
            }
        }
    }
}

/// Most large receive buffers watched at once; beyond that the oldest are
/// simply no longer watched.
const MAX_HELD_BUFFERS: usize = 64;

/// Keeps tonic's receive buffer from reusing the allocation of a large
/// message for the stream's lifetime.
///
/// A large message's entries are slices of tonic's receive buffer. Once they
/// are dropped, that buffer is the allocation's only owner and grows into it
/// again for every later message, so one 300 MB message would keep 300 MB
/// for good. Holding a one-byte slice of it makes the receive buffer move to
/// a fresh, right-sized allocation the next time it needs room; the hold is
/// released as soon as it is the last reference (the bundle is done and the
/// receive buffer has moved on), which frees the large allocation.
#[derive(Default)]
struct LargeBuffers(VecDeque<Bytes>);

impl LargeBuffers {
    fn hold(&mut self, elements: &Elements) {
        let total: usize = elements.data.iter().map(|d| d.data.len()).sum();
        if total < LARGE_MESSAGE_BYTES {
            return;
        }
        if let Some(largest) = elements.data.iter().max_by_key(|d| d.data.len()) {
            self.0.push_back(largest.data.slice(0..1));
            if self.0.len() > MAX_HELD_BUFFERS {
                self.0.pop_front();
            }
        }
    }

    fn release_unused(&mut self) {
        self.0.retain(|held| !held.is_unique());
    }
}

async fn dispatch(router: &mut Router, mut elements: Elements) {
    unpin_small_parts(&mut elements);
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

/// Entries of a large message are zero-copy slices of one receive buffer;
/// one small entry (another bundle's tail, early input held for a while)
/// would keep that whole buffer alive after the large entries' bundle is
/// done. Small entries of large messages are copied out instead.
fn unpin_small_parts(elements: &mut Elements) {
    let total: usize = elements.data.iter().map(|d| d.data.len()).sum();
    if total < LARGE_MESSAGE_BYTES {
        return;
    }
    let small = total / SMALL_PART_DIVISOR;
    for d in &mut elements.data {
        if !d.data.is_empty() && d.data.len() < small {
            d.data = Bytes::copy_from_slice(&d.data);
        }
    }
}

/// A bounded map of instruction ids that forgets the oldest first, bounded
/// both in ids and in the bytes of the ids.
struct Recent<V> {
    order: VecDeque<String>,
    map: HashMap<String, V>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
}

impl<V> Recent<V> {
    fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            order: VecDeque::new(),
            map: HashMap::new(),
            capacity,
            max_bytes,
            bytes: 0,
        }
    }

    fn insert(&mut self, id: String, value: V) {
        if self.map.insert(id.clone(), value).is_none() {
            self.bytes += id.len();
            self.order.push_back(id);
            while self.order.len() > self.capacity || self.bytes > self.max_bytes {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.bytes -= old.len();
                self.map.remove(&old);
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    fn remove(&mut self, id: &str) -> Option<V> {
        let value = self.map.remove(id)?;
        self.order.retain(|o| o != id);
        self.bytes -= id.len();
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const TTL: Duration = Duration::from_secs(300);

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

    /// What one held entry of `n` payload bytes for id `a` costs.
    fn cost(n: usize) -> usize {
        ENTRY_OVERHEAD + n + "src".len()
    }

    #[tokio::test]
    async fn early_data_is_held_then_delivered_in_order() {
        let mut r = Router::new(1000, TTL);
        r.deliver("a".into(), data("a", 10)).await;
        r.deliver("a".into(), data("a", 20)).await;
        assert_eq!(r.pending_bytes, cost(10) + cost(20) + 1 + ENTRY_OVERHEAD);
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
        let mut r = Router::new(2000, TTL);
        r.deliver("a".into(), data("a", 400)).await;
        r.deliver("b".into(), data("b", 300)).await;
        let b_bytes = cost(300) + 1 + ENTRY_OVERHEAD;
        r.deliver("a".into(), data("a", 800)).await;
        assert_eq!(r.pending_bytes, b_bytes, "a's held bytes are released");
        let (tx, mut rx) = mpsc::channel(8);
        r.register("a".into(), tx).await;
        match rx.recv().await.unwrap() {
            Inbound::Failed(e @ DataError::PendingOverflow { .. }) => {
                let DataError::PendingOverflow {
                    limit,
                    this_bundle,
                    others,
                    other_bundles,
                } = e.clone()
                else {
                    unreachable!()
                };
                assert_eq!((limit, others, other_bundles), (2000, b_bytes, 1));
                assert_eq!(this_bundle, cost(400) + cost(800) + 1 + ENTRY_OVERHEAD);
                let text = e.to_string();
                assert!(text.contains("1 other bundles not yet started"), "{text}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let (tx, mut rx) = mpsc::channel(8);
        r.register("b".into(), tx).await;
        assert_eq!(len(&rx.recv().await.unwrap()), 300);
    }

    /// Issue 12, defect 4: ids and per-entry overhead count against the bound,
    /// not just payload bytes.
    #[tokio::test]
    async fn pending_bound_counts_ids_and_entries_not_just_payload() {
        let limit = 10 << 20;
        let mut r = Router::new(limit, TTL);
        // Entries with no payload but 1 MiB instruction ids.
        for i in 0..100 {
            let id = format!("{i}{}", "x".repeat(1 << 20));
            r.deliver(id.clone(), data(&id, 0)).await;
            assert!(r.pending_bytes <= limit);
        }
        assert!(r.pending.len() < 11, "{} huge ids held", r.pending.len());
        // A million one-byte entries for one bundle.
        let mut r = Router::new(limit, TTL);
        for _ in 0..1_000_000 {
            r.deliver("many".into(), data("many", 1)).await;
        }
        assert!(r.pending_bytes <= limit);
        assert!(
            r.pending.is_empty() && r.dropped.contains("many"),
            "a million entries must overflow a 10 MB bound"
        );
    }

    /// Issue 12, defect 5: early input whose request never comes expires, and
    /// its bundle is told so if it starts after all.
    #[tokio::test]
    async fn orphaned_early_input_expires() {
        let mut r = Router::new(1 << 20, Duration::from_secs(60));
        r.deliver("orphan".into(), data("orphan", 100)).await;
        r.expire(Instant::now());
        assert!(r.pending_bytes > 0, "not yet expired");
        r.expire(Instant::now() + Duration::from_secs(61));
        assert_eq!(r.pending_bytes, 0);
        assert!(r.pending.is_empty());
        let (tx, mut rx) = mpsc::channel(8);
        r.register("orphan".into(), tx).await;
        match rx.recv().await.unwrap() {
            Inbound::Failed(e @ DataError::PendingExpired { .. }) => {
                assert!(e.to_string().contains("did not come"), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn late_data_for_finished_bundles_is_dropped() {
        let mut r = Router::new(1000, TTL);
        let (tx, rx) = mpsc::channel(8);
        r.register("a".into(), tx).await;
        r.finish("a".into());
        drop(rx);
        r.deliver("a".into(), data("a", 10)).await;
        assert_eq!(r.pending_bytes, 0);
        assert!(r.pending.is_empty());
    }

    #[tokio::test]
    async fn finishing_an_unstarted_bundle_drops_its_early_input() {
        let mut r = Router::new(1000, TTL);
        r.deliver("failed".into(), data("failed", 100)).await;
        r.finish("failed".into());
        assert_eq!(r.pending_bytes, 0);
        r.deliver("failed".into(), data("failed", 100)).await;
        assert_eq!(
            r.pending_bytes, 0,
            "late input of a failed bundle is dropped"
        );
    }

    /// Issue 12, defect 8: small entries of a large message do not share its buffer.
    #[test]
    fn small_parts_of_large_messages_are_copied_out() {
        let buffer = Bytes::from(vec![7u8; LARGE_MESSAGE_BYTES + 10]);
        let big = buffer.slice(0..LARGE_MESSAGE_BYTES);
        let tail = buffer.slice(LARGE_MESSAGE_BYTES..);
        let entry = |d: &Bytes| elements::Data {
            instruction_id: "x".into(),
            transform_id: "t".into(),
            data: d.clone(),
            is_last: false,
        };
        let mut message = Elements {
            data: vec![entry(&big), entry(&tail)],
            timers: vec![],
        };
        unpin_small_parts(&mut message);
        assert_eq!(
            message.data[0].data.as_ptr(),
            big.as_ptr(),
            "large part stays zero-copy"
        );
        assert_ne!(
            message.data[1].data.as_ptr(),
            tail.as_ptr(),
            "small part is copied"
        );
        assert_eq!(message.data[1].data, tail);
    }

    /// Issue 12, defect 8: once a large message's bundle is done, the receive
    /// buffer does not keep (and reuse) its allocation. Modelled with the
    /// same `BytesMut` calls tonic's decoder makes.
    #[test]
    fn large_receive_buffers_are_not_reused_after_their_bundle() {
        let big = LARGE_MESSAGE_BYTES * 2;
        let receive = |hold: bool| {
            let mut buf = bytes::BytesMut::with_capacity(big + 64);
            buf.extend_from_slice(&vec![1u8; big]);
            let entry = buf.split_to(big).freeze();
            let message = Elements {
                data: vec![elements::Data {
                    instruction_id: "i".into(),
                    transform_id: "t".into(),
                    data: entry,
                    is_last: false,
                }],
                timers: vec![],
            };
            let mut buffers = LargeBuffers::default();
            if hold {
                buffers.hold(&message);
            }
            drop(message); // the bundle is done
            buffers.release_unused();
            assert_eq!(
                buffers.0.len(),
                usize::from(hold),
                "kept while tonic's buffer shares it"
            );
            // The next small message needs more room than the tail has.
            buf.reserve(1024);
            buffers.release_unused();
            assert!(buffers.0.is_empty(), "released once nothing else uses it");
            buf.capacity()
        };
        assert!(
            receive(false) >= big,
            "without the hold the allocation is reused (the defect)"
        );
        assert!(
            receive(true) < big,
            "with the hold the receive buffer moves on"
        );
    }

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut ids = Recent::new(2, 1000);
        for id in ["a", "b", "c"] {
            ids.insert(id.into(), ());
        }
        assert!(!ids.contains("a"));
        assert!(ids.contains("b") && ids.contains("c"));
        assert_eq!(ids.remove("b"), Some(()));
        ids.insert("d".into(), ());
        assert!(ids.contains("c") && ids.contains("d"));
    }

    #[test]
    fn recent_ids_are_bounded_in_bytes() {
        let mut ids = Recent::new(100, 10);
        ids.insert("aaaaaa".into(), ());
        ids.insert("bbbbbb".into(), ());
        assert!(!ids.contains("aaaaaa") && ids.contains("bbbbbb"));
        assert!(ids.bytes <= 10);
    }
}
