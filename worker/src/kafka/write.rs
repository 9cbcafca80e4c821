//! The Kafka write: produces every element of a bundle and completes only once
//! the broker has acknowledged all of them, so a bundle that succeeds has
//! written everything (at-least-once with the read's offset commits).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::{KafkaError, WriteConfig, blocking, partitions_of};
use crate::coders::WireCoder;

/// Deliveries awaited before producing more, bounding memory per bundle.
const MAX_IN_FLIGHT: usize = 100_000;

/// Producers shared by a worker's bundles (connecting per bundle would cost a
/// broker round trip each time), keyed by configuration.
#[derive(Default)]
pub struct Producers {
    by_config: Mutex<HashMap<String, FutureProducer>>,
}

impl Producers {
    /// A producer for `config`, creating it and checking its topic on first use.
    pub async fn get(&self, config: &WriteConfig) -> Result<FutureProducer, KafkaError> {
        let key = format!("{:?}|{}", config.producer, config.topic);
        if let Some(p) = self.lock().get(&key) {
            return Ok(p.clone());
        }
        let producer = producer(config)?;
        check_topic(config).await?;
        self.lock().insert(key, producer.clone());
        Ok(producer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FutureProducer>> {
        self.by_config.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn producer(config: &WriteConfig) -> Result<FutureProducer, KafkaError> {
    let mut c = ClientConfig::new();
    // A broker that never acknowledges fails the bundle within 30 s instead of
    // librdkafka's default 5 minutes; an explicit setting wins.
    c.set("message.timeout.ms", "30000");
    for (k, v) in &config.producer {
        c.set(k, v);
    }
    c.create().map_err(|e| KafkaError::Config {
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
    producer: FutureProducer,
    topic: String,
    in_flight: VecDeque<DeliveryFuture>,
    written: u64,
}

impl Writer {
    pub fn new(producer: FutureProducer, topic: &str) -> Self {
        Self {
            producer,
            topic: topic.to_owned(),
            in_flight: VecDeque::new(),
            written: 0,
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
            let mut record = FutureRecord::<[u8], [u8]>::to(&topic);
            if let Some(key) = parts.key {
                record = record.key(key);
            }
            if let Some(value) = parts.value {
                record = record.payload(value);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        self.in_flight.push_back(delivery);
                        break;
                    }
                    Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        self.await_oldest().await?;
                    }
                    Err((e, _)) => {
                        return Err(KafkaError::Produce {
                            topic: self.topic.clone(),
                            why: e.to_string(),
                        });
                    }
                }
            }
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                self.await_oldest().await?;
            }
        }
        Ok(())
    }

    /// Waits for every acknowledgement; returns how many records were written.
    pub async fn finish(mut self) -> Result<u64, KafkaError> {
        while !self.in_flight.is_empty() {
            self.await_oldest().await?;
        }
        crate::telemetry::global().kafka_records_written(&self.topic, self.written);
        Ok(self.written)
    }

    async fn await_oldest(&mut self) -> Result<(), KafkaError> {
        let Some(delivery) = self.in_flight.pop_front() else {
            // librdkafka's queue is full of records it has not handed us futures
            // for yet (another bundle's); give it a moment to drain.
            tokio::time::sleep(Duration::from_millis(1)).await;
            return Ok(());
        };
        match delivery.await {
            Ok(Ok(_)) => {
                self.written += 1;
                Ok(())
            }
            Ok(Err((e, _))) => Err(self.delivery_error(e.to_string())),
            Err(_) => Err(self.delivery_error("the producer was shut down".into())),
        }
    }

    fn delivery_error(&self, why: String) -> KafkaError {
        crate::telemetry::global().kafka_delivery_errors(&self.topic, 1);
        KafkaError::Delivery {
            topic: self.topic.clone(),
            why,
        }
    }
}
