//! The bounded Kafka read and the Kafka write as operators of the bundle graph.

use std::sync::Arc;

use async_trait::async_trait;

use super::{KafkaError, Producers, ReadConfig, WriteConfig, Writer, read};
use crate::coders::{WindowCoder, WireCoder};
use crate::ops::{
    Chunk, Context, EdgeCoder, Finalizer, OpError, Operator, OperatorFactory, Setup, Shared,
    TaskOutcome,
};
use crate::registry::{PlanContext, PlanError, Planned};

impl From<KafkaError> for OpError {
    fn from(e: KafkaError) -> Self {
        OpError::Failed(e.to_string())
    }
}

/// The records' coder: what the output PCollection declares, in the global
/// window (where every Kafka record is).
pub(super) fn record_coder(cx: &PlanContext<'_>) -> Result<(String, WireCoder), PlanError> {
    let output = cx.single_output()?;
    let coder = cx.output_coder(&output)?;
    match coder.wire() {
        Some(wire) if wire.kv().is_some() => {
            let mut wire = wire.clone();
            wire.window = WindowCoder::Global;
            Ok((output, wire))
        }
        _ => Err(cx.malformed(format!(
            "its records need a KV coder of bytes, but its output is {coder}"
        ))),
    }
}

// ---- bounded read ----

pub fn plan_bounded_read(cx: &PlanContext<'_>) -> Result<Planned, PlanError> {
    let config = ReadConfig::from_payload(&cx.payload).map_err(|e| cx.config_error(e))?;
    let (output, wire) = record_coder(cx)?;
    Ok(Planned {
        factory: Arc::new(BoundedReadFactory {
            config: Arc::new(config),
            wire: wire.clone(),
        }),
        outputs: vec![(output, EdgeCoder::Wire(wire))],
    })
}

#[derive(Debug)]
struct BoundedReadFactory {
    config: Arc<ReadConfig>,
    wire: WireCoder,
}

impl OperatorFactory for BoundedReadFactory {
    fn kind(&self) -> &'static str {
        "kafka_read"
    }

    fn create(&self, _: &Setup<'_>) -> Result<Box<dyn Operator>, OpError> {
        Ok(Box::new(BoundedRead {
            config: self.config.clone(),
            wire: self.wire.clone(),
        }))
    }
}

/// Each input element (an impulse) starts one read of every partition, from
/// the group's committed offsets to the end (or to its record or time limit).
struct BoundedRead {
    config: Arc<ReadConfig>,
    wire: WireCoder,
}

#[async_trait]
impl Operator for BoundedRead {
    async fn process(&mut self, input: Chunk, cx: &mut Context<'_>) -> Result<(), OpError> {
        for _ in 0..input.elements {
            let (config, wire, out) = (self.config.clone(), self.wire.clone(), cx.emitter(0));
            let chunk_bytes = cx.limits.flush_bytes;
            cx.spawn(async move {
                let outcome = read(&config, &wire, &out, chunk_bytes).await?;
                tracing::debug!(records = outcome.records, "Kafka read done");
                let finalizers = outcome
                    .commits
                    .into_iter()
                    .map(|commit| -> Finalizer {
                        Box::new(move || {
                            Box::pin(
                                async move { commit.commit().await.map_err(|e| e.to_string()) },
                            )
                        })
                    })
                    .collect();
                Ok(TaskOutcome {
                    residuals: Vec::new(),
                    finalizers,
                })
            });
        }
        Ok(())
    }
}

// ---- write ----

pub fn plan_write(cx: &PlanContext<'_>) -> Result<Planned, PlanError> {
    let config = WriteConfig::from_payload(&cx.payload).map_err(|e| cx.config_error(e))?;
    let input = cx.single_input()?;
    let wire = match input.wire() {
        Some(w) if w.kv().is_some() => w.clone(),
        _ => return Err(cx.malformed(format!("it needs KV elements but receives {input}"))),
    };
    // The declared (always empty) output has no consumers in a stage.
    let outputs = cx
        .transform
        .outputs
        .keys()
        .map(|name| (name.clone(), input.clone()))
        .collect();
    Ok(Planned {
        factory: Arc::new(WriteFactory {
            config: Arc::new(config),
            wire,
        }),
        outputs,
    })
}

#[derive(Debug)]
struct WriteFactory {
    config: Arc<WriteConfig>,
    wire: WireCoder,
}

impl OperatorFactory for WriteFactory {
    fn kind(&self) -> &'static str {
        "kafka_write"
    }

    fn create(&self, setup: &Setup<'_>) -> Result<Box<dyn Operator>, OpError> {
        Ok(Box::new(Write {
            config: self.config.clone(),
            wire: self.wire.clone(),
            shared: setup.shared.clone(),
            writer: None,
        }))
    }
}

/// Produces every element; finishing waits for the broker's acknowledgements,
/// so a bundle that succeeds has written everything.
struct Write {
    config: Arc<WriteConfig>,
    wire: WireCoder,
    shared: Arc<Shared>,
    /// Opened on the first element.
    writer: Option<Writer>,
}

#[async_trait]
impl Operator for Write {
    async fn process(&mut self, input: Chunk, _cx: &mut Context<'_>) -> Result<(), OpError> {
        if self.writer.is_none() {
            let producer = self.shared.get::<Producers>().get(&self.config).await?;
            self.writer = Some(Writer::new(producer, &self.config.topic));
        }
        if let Some(writer) = self.writer.as_mut() {
            writer.write_chunk(&self.wire, &input.bytes).await?;
        }
        Ok(())
    }

    async fn finish(&mut self, _cx: &mut Context<'_>) -> Result<(), OpError> {
        if let Some(writer) = self.writer.take() {
            let written = writer.finish().await?;
            tracing::debug!(written, "Kafka write acknowledged");
        }
        Ok(())
    }
}
