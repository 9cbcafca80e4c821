//! The Kafka write: produces every element of a bundle and completes only once
//! the broker has acknowledged all of them, so a bundle that succeeds has
//! written everything (at-least-once with the read's offset commits).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

use super::{KafkaError, WriteConfig, blocking, partitions_of};
use crate::coders::WireCoder;

/// Deliveries awaited before producing more, bounding memory per bundle.
const MAX_IN_FLIGHT: u64 = 100_000;

/// A shared producer. Its own thread serves librdkafka's delivery reports
/// and counts each against the bundle that sent the record: no future and
/// no allocation per record (a future per record cost the fused Kafka stage
/// about a tenth of its CPU in allocation, channel and polling).
pub type Producer = Arc<ThreadedProducer<Deliveries>>;

/// Routes delivery reports to the bundle each record belongs to.
#[derive(Default)]
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        acks.record(result.as_ref().map(|_| ()).map_err(|(e, _)| e));
    }
}

/// One bundle's acknowledgements, counted on the producer's thread.
#[derive(Default)]
pub struct Acks {
    /// Records acknowledged, successfully or not.
    settled: AtomicU64,
    failed: AtomicU64,
    first_error: OnceLock<String>,
    /// The bundle waits until `settled` reaches this (`u64::MAX`: not waiting),
    /// so reports wake it once, not once per record.
    wake_at: AtomicU64,
    wake: Notify,
}

impl Acks {
    fn new() -> Self {
        Self {
            wake_at: AtomicU64::new(u64::MAX),
            ..Self::default()
        }
    }

    fn record(&self, result: Result<(), &RdKafkaError>) {
        if let Err(e) = result {
            // Only the first refusal is kept; later ones are not formatted.
            self.first_error.get_or_init(|| e.to_string());
            self.failed.fetch_add(1, Ordering::AcqRel);
        }
        // SeqCst on `settled` and `wake_at`, here and in `settled_to`: each
        // side writes one and then reads the other, and neither may miss both.
        let settled = self.settled.fetch_add(1, Ordering::SeqCst) + 1;
        if settled >= self.wake_at.load(Ordering::SeqCst) {
            // Stores a permit if the bundle is between its check and its wait.
            self.wake.notify_one();
        }
    }

    /// Waits until at least `target` records are settled.
    async fn settled_to(&self, target: u64) {
        self.wake_at.store(target, Ordering::SeqCst);
        while self.settled.load(Ordering::SeqCst) < target {
            self.wake.notified().await;
        }
        self.wake_at.store(u64::MAX, Ordering::SeqCst);
    }
}

/// Producers shared by a worker's bundles (connecting per bundle would cost a
/// broker round trip each time), keyed by configuration.
#[derive(Default)]
pub struct Producers {
    by_config: Mutex<HashMap<String, Producer>>,
}

impl Producers {
    /// A producer for `config`, creating it and checking its topic on first use.
    pub async fn get(&self, config: &WriteConfig) -> Result<Producer, KafkaError> {
        let key = format!("{:?}|{}", config.producer, config.topic);
        if let Some(p) = self.lock().get(&key) {
            return Ok(p.clone());
        }
        let producer = Arc::new(producer(config)?);
        check_topic(config).await?;
        self.lock().insert(key, producer.clone());
        Ok(producer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Producer>> {
        self.by_config.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn producer(config: &WriteConfig) -> Result<ThreadedProducer<Deliveries>, KafkaError> {
    let mut c = ClientConfig::new();
    // A broker that never acknowledges fails the bundle within 30 s instead of
    // librdkafka's default 5 minutes; an explicit setting wins.
    c.set("message.timeout.ms", "30000");
    for (k, v) in &config.producer {
        c.set(k, v);
    }
    c.create_with_context(Deliveries)
        .map_err(|e| KafkaError::Config {
            transform: "Kafka write",
            why: format!("producer_config rejected by the Kafka client: {e}"),
        })
}

/// A missing topic would otherwise surface only after the delivery timeout.
async fn check_topic(config: &WriteConfig) -> Result<(), KafkaError> {
    let config = config.clone();
    blocking(move || {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", config.bootstrap());
        let probe: BaseConsumer = c.create().map_err(|e| KafkaError::Config {
            transform: "Kafka write",
            why: e.to_string(),
        })?;
        partitions_of(&probe, &config.topic, config.bootstrap()).map(|_| ())
    })
    .await
}

/// One bundle's writes to one topic.
pub struct Writer {
    producer: Producer,
    topic: String,
    acks: Arc<Acks>,
    sent: u64,
}

impl Writer {
    pub fn new(producer: Producer, topic: &str) -> Self {
        Self {
            producer,
            topic: topic.to_owned(),
            acks: Arc::new(Acks::new()),
            sent: 0,
        }
    }

    /// Produces every element of `chunk` (whole elements encoded with `wire`).
    pub async fn write_chunk(&mut self, wire: &WireCoder, chunk: &[u8]) -> Result<(), KafkaError> {
        // Records borrow the topic while `self` waits on deliveries.
        let topic = self.topic.clone();
        let mut pos = 0;
        while pos < chunk.len() {
            let (parts, len) = wire
                .decode(&chunk[pos..])
                .map_err(|e| KafkaError::Record(e.to_string()))?;
            pos += len;
            let mut record =
                BaseRecord::<[u8], [u8], Arc<Acks>>::with_opaque_to(&topic, self.acks.clone());
            if let Some(key) = parts.key {
                record = record.key(key);
            }
            if let Some(value) = parts.value {
                record = record.payload(value);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => {
                        self.sent += 1;
                        break;
                    }
                    Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        self.wait_for_room().await;
                    }
                    Err((e, _)) => {
                        return Err(KafkaError::Produce {
                            topic: self.topic.clone(),
                            why: e.to_string(),
                        });
                    }
                }
            }
            if self.unsettled() >= MAX_IN_FLIGHT {
                self.acks.settled_to(self.sent - MAX_IN_FLIGHT / 2).await;
            }
        }
        self.check()
    }

    /// Waits for every acknowledgement; returns how many records were written.
    pub async fn finish(self) -> Result<u64, KafkaError> {
        self.acks.settled_to(self.sent).await;
        self.check()?;
        crate::telemetry::global().kafka_records_written(&self.topic, self.sent);
        Ok(self.sent)
    }

    fn unsettled(&self) -> u64 {
        self.sent
            .saturating_sub(self.acks.settled.load(Ordering::Acquire))
    }

    /// librdkafka's queue is full: wait for half of this bundle's records in
    /// flight, or briefly when they are another bundle's.
    async fn wait_for_room(&self) {
        let unsettled = self.unsettled();
        if unsettled == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            self.acks.settled_to(self.sent - unsettled / 2).await;
        }
    }

    /// The bundle fails on the first record the broker refused.
    fn check(&self) -> Result<(), KafkaError> {
        let failed = self.acks.failed.load(Ordering::Acquire);
        if failed == 0 {
            return Ok(());
        }
        crate::telemetry::global().kafka_delivery_errors(&self.topic, failed);
        Err(KafkaError::Delivery {
            topic: self.topic.clone(),
            why: self
                .acks
                .first_error
                .get()
                .cloned()
                .unwrap_or_else(|| "a record was not delivered".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bundle_waits_for_every_ack_and_is_woken_by_the_last() {
        let acks = Arc::new(Acks::new());
        let waiter = {
            let acks = acks.clone();
            tokio::spawn(async move { acks.settled_to(3).await })
        };
        for _ in 0..3 {
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
            acks.record(Ok(()));
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken once all three are settled")
            .unwrap();
        assert_eq!(acks.failed.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_refused_record_is_counted_and_its_error_kept() {
        let acks = Acks::new();
        acks.record(Ok(()));
        acks.record(Err(&RdKafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        )));
        acks.record(Err(&RdKafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        )));
        assert_eq!(acks.settled.load(Ordering::Acquire), 3);
        assert_eq!(acks.failed.load(Ordering::Acquire), 2);
        let first = acks.first_error.get().unwrap();
        assert!(
            first.contains("too large") || first.contains("Size"),
            "{first}"
        );
    }
}
