//! The test kit of mesh's own suites.
//!
//! One crate that the tests, the benches and the `consul_test_agent`
//! example depend on (a dev-dependency of `mesh`), instead of each copying
//! or `#[path]`-including its own:
//!
//! - [`consul_agent`] and [`consul_catalog`]: the Consul test agent, real
//!   HTTP servers over one simulated catalog, pinned to the documented
//!   behaviour by `tests/consul_agent.rs`; [`consul_kv`]: its sessions,
//!   KV and `/v1/txn`, pinned by `tests/consul_kv.rs`;
//! - [`actors`]: the test actors that more than one suite uses;
//! - [`procs`]: real node processes (the cluster examples) and signals;
//! - [`chaos`]: steady load from a driver node, outcomes, histories;
//! - [`soon`] and [`within`]: guards for steps that must finish long
//!   before any deadline involved, so that a hang fails the test with a
//!   message instead of stalling the run.
//!
//! What only one suite uses stays in that suite.

use std::future::Future;
use std::time::Duration;

pub mod actors;
pub mod chaos;
pub mod consul_agent;
pub mod consul_catalog;
pub mod consul_kv;
pub mod pki;
pub mod procs;

/// How long [`soon`] waits.
pub const SOON: Duration = Duration::from_secs(20);

/// Guards a step that must finish long before any deadline involved:
/// panics if `f` has not finished within [`SOON`] (20 s).
pub async fn soon<T>(f: impl Future<Output = T>) -> T {
    within(SOON, f).await
}

/// Like [`soon`], with the limit given: panics if `f` has not finished
/// within `limit`.
pub async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}
