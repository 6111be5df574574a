//! The boundary between the strong mode and the store its leases live in.
//!
//! `mesh::consul::Consul` implements it on Consul's sessions, KV
//! locks and `/v1/txn` (see [`crate::discovery::Discovery::lease_store`]);
//! another authoritative store (etcd's leases, ZooKeeper's ephemeral
//! nodes) could too. The contract each method must keep is the one the
//! safety argument in [`crate::lease`] rests on.

use std::fmt;
use std::time::Duration;

use crate::util::BoxFuture;

/// Why a lease store call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseStoreError {
    /// The store says the session does not exist (Consul: a renew answered
    /// 404): it expired or was destroyed, and every lock it held is gone.
    SessionGone,
    /// Anything else (unreachable, refused, unreadable answer): the
    /// outcome is unknown.
    Other(String),
}

impl fmt::Display for LeaseStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseStoreError::SessionGone => write!(f, "the lease session is gone"),
            LeaseStoreError::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for LeaseStoreError {}

/// Sessions and lock keys, as the strong mode needs them.
pub trait LeaseStore: Send + Sync + 'static {
    /// Creates a session named `name` that the store invalidates no sooner
    /// than `ttl` after its creation or its last renew *as received*, and
    /// whose released locks no other session can take for `lock_delay`
    /// after an invalidation. Returns its id.
    ///
    /// With `bind_health`, a store that knows this node's own health check
    /// binds the session to it too, so that it invalidates the session as
    /// soon as the check fails (a crashed process stops passing it): the
    /// lock-delay applies to that invalidation like to any other. A store
    /// without such a check ignores it.
    fn create_session(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
        bind_health: bool,
    ) -> BoxFuture<'_, Result<String, LeaseStoreError>>;

    /// Renews session `id`. [`LeaseStoreError::SessionGone`] when it no
    /// longer exists.
    fn renew(&self, id: &str) -> BoxFuture<'_, Result<(), LeaseStoreError>>;

    /// Destroys session `id`, releasing its locks at once.
    fn destroy(&self, id: &str) -> BoxFuture<'_, Result<(), LeaseStoreError>>;

    /// Tries to lock each of `keys` for session `id`, each with `value`
    /// (who holds it), in one atomic step or as few as the store needs.
    /// Returns per key the fencing token (a number that grows with every
    /// grant in the store, across keys) or `None` when the key is held by
    /// another session or under lock-delay. Holding a key already is a
    /// success.
    fn lock<'a>(
        &'a self,
        id: &'a str,
        keys: &'a [String],
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<Option<u64>>, LeaseStoreError>>;

    /// Unlocks `keys` held by session `id`.
    fn unlock(&self, id: &str, keys: &[String]) -> BoxFuture<'_, Result<(), LeaseStoreError>>;
}
