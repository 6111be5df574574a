//! The benchmark actors: what a `mesh-load serve` node hosts and what the
//! embedded node of `mesh-load run` hosts.
//!
//! Contract: two actor types, capability [`CAPABILITY`] (`"bench"`):
//! [`Bench`] with three messages and [`StatefulBench`] with one, whose
//! wire names are fixed here (`mesh-load.ping`, `mesh-load.fan-out`,
//! `mesh-load.stall`, `mesh-load.write`), so a runner and a server built
//! from different commits of this tool still agree.
//! Handlers do no work beyond what the message asks: the figures measure
//! the framework, not the handler.

use std::time::Duration;

use mesh::prelude::*;
use serde_bytes::ByteBuf;

/// The capability the benchmark actors are placed by.
pub const CAPABILITY: &str = "bench";

/// A benchmark actor: counts the messages it handled.
#[derive(Actor, Default)]
#[actor(capability = "bench", name = "Bench", idle_timeout = "10m")]
pub struct Bench {
    handled: u64,
}

/// A call carrying `payload`; the reply echoes it when `echo` is set and is
/// empty otherwise.
#[derive(Message, Serialize, Deserialize, Debug, Clone)]
#[message(reply = ByteBuf, name = "mesh-load.ping")]
pub struct Ping {
    /// The request body.
    pub payload: ByteBuf,
    /// Whether the reply carries the payload back.
    pub echo: bool,
}

/// Makes the handler call `n` other `Bench` actors (ids `<own id>-leaf-<i>`)
/// through `ctx.node()`, all at once, each with `payload`; replies with how
/// many of those calls failed.
#[derive(Message, Serialize, Deserialize, Debug, Clone)]
#[message(reply = u32, name = "mesh-load.fan-out")]
pub struct FanOut {
    /// How many leaves to call.
    pub n: u32,
    /// The body each leaf call carries.
    pub payload: ByteBuf,
}

/// Holds the actor for `ms` milliseconds (an await, not a blocked thread):
/// a stall for tests and demonstrations.
#[derive(Message, Serialize, Deserialize, Debug, Clone)]
#[message(reply = u64, name = "mesh-load.stall")]
pub struct Stall {
    /// How long to hold the actor.
    pub ms: u64,
}

#[mesh::handlers]
impl Bench {
    async fn ping(&mut self, Ping { payload, echo }: Ping) -> ByteBuf {
        self.handled += 1;
        if echo {
            payload
        } else {
            ByteBuf::new()
        }
    }

    async fn fan_out(&mut self, FanOut { n, payload }: FanOut, ctx: &Ctx) -> u32 {
        self.handled += 1;
        let node = ctx.node().clone();
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..n {
            let node = node.clone();
            let id = format!("{}-leaf-{i}", ctx.id());
            let msg = Ping {
                payload: payload.clone(),
                echo: false,
            };
            calls.spawn(async move { node.call::<Bench, Ping>(&id, msg).await.is_ok() });
        }
        let mut failed = 0;
        while let Some(r) = calls.join_next().await {
            if !matches!(r, Ok(true)) {
                failed += 1;
            }
        }
        failed
    }

    async fn stall(&mut self, Stall { ms }: Stall) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.handled += 1;
        self.handled
    }
}

/// What a [`StatefulBench`] keeps durable: the writes it acknowledged and
/// the last payload.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
pub struct Written {
    /// Writes acknowledged so far.
    pub n: u64,
    /// The last write's payload.
    pub data: ByteBuf,
}

/// The stateful scenario's actor: every [`Write`] changes its `#[state]`,
/// so every call is one durable write to the node's state store, and the
/// reply waits for it (`mesh::state`).
#[derive(Actor)]
#[actor(capability = "bench", name = "StatefulBench", idle_timeout = "10m")]
pub struct StatefulBench {
    #[state]
    written: mesh::state::State<Written>,
}

/// Stores `payload` as the actor's state; replies with the writes the
/// actor has acknowledged, this one included.
#[derive(Message, Serialize, Deserialize, Debug, Clone)]
#[message(reply = u64, name = "mesh-load.write")]
pub struct Write {
    /// The bytes to store.
    pub payload: ByteBuf,
}

#[mesh::handlers]
impl StatefulBench {
    async fn write(&mut self, Write { payload }: Write) -> u64 {
        let w = &mut *self.written;
        w.n += 1;
        w.data = payload;
        w.n
    }
}

/// A node builder hosting the benchmark actors (capability and types).
/// [`StatefulBench`] needs the node's state store
/// (`NodeBuilder::state`); without one its calls fail, saying so.
pub fn host(builder: mesh::NodeBuilder) -> mesh::NodeBuilder {
    builder
        .capabilities([CAPABILITY])
        .actor::<Bench>()
        .actor::<StatefulBench>()
}
