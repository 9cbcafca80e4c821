//! The key/value echo, `beam:transform:rust_worker:kv_echo:v1`: `KV<K, V>` in,
//! the same out. It forwards each chunk as it is; a sink downstream re-encodes
//! only if its port's coder differs.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Chunk, Context, OpError, Operator, OperatorFactory, Setup};
use crate::registry::{PlanContext, PlanError, Planned};

pub const KV_ECHO_URN: &str = "beam:transform:rust_worker:kv_echo:v1";

pub fn plan(cx: &PlanContext<'_>) -> Result<Planned, PlanError> {
    let input = cx.single_input()?;
    if input.wire().and_then(|w| w.kv()).is_none() {
        return Err(cx.malformed(format!("it needs KV elements but receives {input}")));
    }
    Ok(Planned {
        factory: Arc::new(EchoFactory),
        outputs: vec![(cx.single_output()?, input.clone())],
    })
}

#[derive(Debug)]
struct EchoFactory;

impl OperatorFactory for EchoFactory {
    fn kind(&self) -> &'static str {
        "kv_echo"
    }

    fn create(&self, _: &Setup<'_>) -> Result<Box<dyn Operator>, OpError> {
        Ok(Box::new(Echo))
    }
}

struct Echo;

#[async_trait]
impl Operator for Echo {
    async fn process(&mut self, input: Chunk, cx: &mut Context<'_>) -> Result<(), OpError> {
        cx.emit(0, input);
        Ok(())
    }
}
