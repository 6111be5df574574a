//! # mesh: virtual actors across a service mesh
//!
//! An actor exists conceptually forever and is addressed by its type and a
//! string id from any node. It is activated lazily on first use, on the node
//! that the 4096-shard table of its *capability* picks, handles one message
//! at a time, and is passivated when idle.
//!
//! ```no_run
//! use mesh::prelude::*;
//!
//! #[derive(Actor, Default)]
//! #[actor(capability = "counter", idle_timeout = "10m")]
//! pub struct Counter { value: i64 }
//!
//! #[derive(Message, Serialize, Deserialize)]
//! #[message(reply = i64)]
//! pub struct Increment(pub i64);
//!
//! #[mesh::handlers]
//! impl Counter {
//!     async fn increment(&mut self, Increment(n): Increment) -> i64 {
//!         self.value += n;
//!         self.value
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), mesh::Error> {
//!     let node = Node::builder()
//!         .capabilities(["counter"])
//!         .actor::<Counter>()
//!         .start()
//!         .await?;
//!     let n: i64 = mesh::call::<Counter, _>("counter_1", Increment(1)).await?;
//!     mesh::cast::<Counter, _>("counter_1", Increment(5))?;
//!     node.shutdown().await
//! }
//! ```
//!
//! ## Guarantees
//!
//! - **Single activation per node**: at most one activation of an (actor
//!   type, id) runs on a node at any time, even under thousands of
//!   concurrent first calls, and a new one never overlaps the previous one's
//!   `on_deactivate` hook.
//! - **Turn-based**: an activation handles one message at a time, in the
//!   order its mailbox received them.
//! - **Across nodes, eventual**: placement is computed by every node from its
//!   own view of the membership; during a topology change the same id may be
//!   active on two nodes for a moment.
//! - **Casts are at most once**: `Ok` from [`cast`] means enqueued.
//! - **Calls have a deadline** (5 s unless set): a call never waits longer;
//!   a timed-out call's message may still run, unless it had not started,
//!   in which case it is skipped.
//!
//! See the guide's "Guarantees, stated plainly" (`docs/guide/10-guarantees.md`)
//! for the full list, including mailbox bounds and panics.
//!
//! ## Features
//!
//! The default build is the lean core: one node or a static-seed cluster
//! over plain TCP. The rest is opt-in, each feature pulling only its own
//! dependencies: `consul` (`mesh::consul`, the Consul adapter; turns on
//! `tls`), `tls` (`mesh::transport::tls` and `mesh::identity`: in-process
//! mTLS), `sidecar` (`mesh::sidecar`, `NodeBuilder::through_sidecar`),
//! `strong` (`NodeBuilder::strong`; with `consul`, Consul's lease store),
//! `history` (`mesh::history`, `NodeBuilder::history`), `full` (those
//! five), `otel`, `admin`; `aws-lc-rs` (default) or `ring` picks the
//! rustls provider when TLS is on. `internals` is hidden and unstable, not
//! for users (like tokio's `test-util`): it makes the engine's parts
//! public for mesh's own tests, benchmarks and fuzz targets (the wire
//! frames and handshake, the transport's connections, `Node::sever`), and
//! what it exposes changes in any release.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]
// `unreachable_pub` is checked where the engine's parts are public (the
// hidden feature `internals`, on in every test and clippy build of the
// workspace): without it, they are `pub` items of private modules on
// purpose, exposed by `#[cfg_attr(feature = "internals", mesh_macros::expose)]`.
#![cfg_attr(feature = "internals", warn(unreachable_pub))]

extern crate self as mesh;

mod activation;
mod actor;
#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "consul")]
pub mod consul;
pub mod discovery;
mod error;
#[cfg(feature = "history")]
pub mod history;
mod membership;
// Without the feature, only what a node records through (the `History`
// trait, `Phase`) is used; the rest of the module is compiled but unused.
#[cfg(not(feature = "history"))]
#[allow(dead_code, unreachable_pub)]
mod history;
#[cfg(feature = "tls")]
pub mod identity;
pub mod lease;
mod node;
pub mod reminder;
mod resolve;
pub mod ring;
#[cfg(feature = "sidecar")]
pub mod sidecar;
pub mod state;
pub mod telemetry;
pub use actor::timer;
mod trace;
pub mod transport;
mod util;
pub mod wire;

#[doc(hidden)]
pub mod __private;

pub use actor::{
    tag_of, Actor, BoxError, Ctx, Handler, Handlers, Message, MissingDependency,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAILBOX_CAPACITY,
};
pub use error::{Error, StartError};
pub use node::{
    call, cast, ActorHandle, ActorRef, Call, CallFuture, Flatten, HandleCall, MemberInfo,
    Membership, Node, NodeBuilder, DEFAULT_CALL_TIMEOUT,
};
pub use transport::Transport;

/// `#[derive(Actor)]`: makes a struct a virtual actor type.
///
/// Attributes, in `#[actor(...)]`:
///
/// | key | value | default |
/// |---|---|---|
/// | `capability` | `"name"`: the capability that places this type | required |
/// | `idle_timeout` | `"90s"`, `"10m"`, `"1h30m"`, `"500ms"` or `"never"` | `"10m"` |
/// | `activate` | path to `async fn(&str) -> Result<Self, E>` or `async fn(&str, &Ctx) -> Result<Self, E>`, `E: Into<BoxError>` | `Default::default()` |
/// | `on_deactivate` | path to `async fn(&mut self, &Ctx)` or `async fn(&mut self)` | nothing |
/// | `name` | `"Name"` in errors, logs and metrics | the type's identifier |
/// | `mailbox` | capacity, an integer | 1024 |
pub use mesh_macros::Actor;

/// `#[derive(Message)]`: makes a serializable type a message.
///
/// Attributes, in `#[message(...)]`: `reply = Type` (default `()`), and
/// `name = "wire-name"` (default: the type's identifier), which with the
/// actor's capability and name forms the wire tag.
pub use mesh_macros::Message;

/// `#[mesh::handlers]` on an `impl` block: every `fn` in it is a handler,
/// `async fn name(&mut self, msg: M) -> M::Reply` with an optional last
/// parameter `ctx: &Ctx`. The block is the actor's wire contract; keep
/// helper methods in another `impl` block (a plain `fn` in it is a compile
/// error). A handler under `#[cfg(...)]` that is configured out is left out
/// of the dispatch and the wire table.
///
/// `#[mesh::handlers(reentrant)]`: calls of the actor's own chain are
/// served interleaved instead of failing with [`Error::CallCycle`]; its
/// handlers take `&self` and the actor must be `Sync` (what this relaxes:
/// the guide's "Call cycles and reentrancy", in `docs/guide/01-actors.md`).
pub use mesh_macros::handlers;

/// The names most programs need: `use mesh::prelude::*;`.
pub mod prelude {
    pub use crate::{Actor, ActorRef, Ctx, Error, Flatten, Message, Node, StartError};
    pub use serde::{Deserialize, Serialize};
}

/// The README and the guide (`docs/guide/`) as doctests: `cargo test --doc`
/// compiles every Rust code block in them (and runs those not marked
/// `no_run`), so the snippets users copy keep building. Compiled only for
/// doctests: nothing of it is in the library or its documentation.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../README.md")]
    mod readme {}
    #[doc = include_str!("../docs/guide/01-actors.md")]
    mod actors {}
    #[doc = include_str!("../docs/guide/02-cluster.md")]
    mod cluster {}
    #[doc = include_str!("../docs/guide/03-consul.md")]
    mod consul {}
    #[doc = include_str!("../docs/guide/04-mesh-and-tls.md")]
    mod mesh_and_tls {}
    #[doc = include_str!("../docs/guide/05-state.md")]
    mod state {}
    #[doc = include_str!("../docs/guide/06-reminders.md")]
    mod reminders {}
    #[doc = include_str!("../docs/guide/07-operating.md")]
    mod operating {}
    #[doc = include_str!("../docs/guide/08-deploying.md")]
    mod deploying {}
    // 09-load-testing.md is mesh-load's (its snippets use that crate):
    // tools/load/src/lib.rs compiles it.
    #[doc = include_str!("../docs/guide/10-guarantees.md")]
    mod guarantees {}
    #[doc = include_str!("../docs/guide/11-reference.md")]
    mod reference {}
}
