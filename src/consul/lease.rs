//! The strong mode's lease store on Consul ([`crate::lease`]): sessions,
//! KV locks in `/v1/txn` batches, and fenced writes, written to Consul's
//! documented API (`shared/reference/consul-api.md`,
//! `shared/reference/chaos-and-leases.md` section 3).
//!
//! - Session create: `PUT /v1/session/create` with `Name`, `TTL`,
//!   `LockDelay`, `Behavior: "release"`, empty `NodeChecks` (not the
//!   agent's `serfHealth`: a gossip flap would end the lease) and empty
//!   `ServiceChecks`, or, with
//!   [`crate::lease::Strong::bind_to_health_check`],
//!   `ServiceChecks: [{"ID": "service:<service id>"}]`, this node's own
//!   TTL check, so that a crashed process's session is invalidated once
//!   its check goes critical. Consul refuses the create while that check
//!   is critical or missing (a 500): the keeper retries with its backoff.
//!   The lock-delay applies to every invalidation, which is what keeps the
//!   local deadline safe whenever it comes (`crate::lease`, "Explicit
//!   invalidation").
//! - Renew: `PUT /v1/session/renew/:id`; 404 means the session is gone.
//! - Destroy: `PUT /v1/session/destroy/:id`.
//! - Lock / unlock: one `/v1/txn` of `lock` (or `unlock`) ops per batch.
//!   A transaction is all or nothing: on 409 Consul lists every failing
//!   op (`Errors[].OpIndex`), so the batch is sent once more without them.
//!   The fencing token of a lock is its result's `ModifyIndex`.
//! - Fenced write ([`Consul::fenced_put`]): `check-session` and
//!   `check-index` of the shard's lock key, then `set` of the value, in
//!   one `/v1/txn`.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{segment, Api, ApiError};
use super::{go_duration, Consul};
use crate::lease::{Fence, LeaseStore, LeaseStoreError};
use crate::util::BoxFuture;
use crate::Error;

/// Consul's sessions and KV as a [`LeaseStore`].
pub(crate) struct ConsulLeases {
    api: Api,
    /// This node's own health check, while registered.
    check: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

impl std::fmt::Debug for ConsulLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulLeases").finish_non_exhaustive()
    }
}

impl ConsulLeases {
    pub(crate) fn new(
        api: Api,
        check: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> ConsulLeases {
        ConsulLeases {
            api,
            check: Box::new(check),
        }
    }
}

fn other(what: &str, e: ApiError) -> LeaseStoreError {
    LeaseStoreError::Other(format!("{what}: {e}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct TxnAnswer {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
struct TxnResult {
    #[serde(rename = "KV", default)]
    kv: Option<KvEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvEntry {
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    op_index: usize,
    what: String,
}

/// A transaction's outcome: the results, or (409) the failing ops.
enum Txn {
    Done(Vec<TxnResult>),
    Rolledback(Vec<TxnError>),
}

async fn txn(api: &Api, ops: &[Value]) -> Result<Txn, ApiError> {
    match api
        .put_read::<TxnAnswer>("txn", &Value::Array(ops.to_vec()))
        .await
    {
        Ok(a) => Ok(Txn::Done(a.results.unwrap_or_default())),
        Err(ApiError::Status { code: 409, body }) => {
            let a: TxnAnswer =
                serde_json::from_str(&body).map_err(|e| ApiError::Decode(e.to_string()))?;
            Ok(Txn::Rolledback(a.errors.unwrap_or_default()))
        }
        Err(e) => Err(e),
    }
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

impl LeaseStore for ConsulLeases {
    fn create_session(
        &self,
        name: &str,
        ttl: std::time::Duration,
        lock_delay: std::time::Duration,
        bind_health: bool,
    ) -> BoxFuture<'_, Result<String, LeaseStoreError>> {
        let checks: Vec<Value> = match (bind_health, (self.check)()) {
            (true, Some(id)) => vec![json!({ "ID": id })],
            _ => Vec::new(),
        };
        let body = json!({
            "Name": name,
            "TTL": go_duration(ttl),
            "LockDelay": go_duration(lock_delay),
            "Behavior": "release",
            "NodeChecks": [],
            "ServiceChecks": checks,
        });
        Box::pin(async move {
            self.api
                .put_read::<Created>("session/create", &body)
                .await
                .map(|c| c.id)
                .map_err(|e| other("session create", e))
        })
    }

    fn renew(&self, id: &str) -> BoxFuture<'_, Result<(), LeaseStoreError>> {
        let path = format!("session/renew/{}", segment(id));
        Box::pin(async move {
            match self.api.put(&path, &[], None).await {
                Ok(()) => Ok(()),
                Err(ApiError::Status { code: 404, .. }) => Err(LeaseStoreError::SessionGone),
                Err(e) => Err(other("session renew", e)),
            }
        })
    }

    fn destroy(&self, id: &str) -> BoxFuture<'_, Result<(), LeaseStoreError>> {
        let path = format!("session/destroy/{}", segment(id));
        Box::pin(async move {
            self.api
                .put(&path, &[], None)
                .await
                .map_err(|e| other("session destroy", e))
        })
    }

    fn lock<'a>(
        &'a self,
        id: &'a str,
        keys: &'a [String],
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<Option<u64>>, LeaseStoreError>> {
        let value = b64(value);
        Box::pin(async move {
            let mut tokens = vec![None; keys.len()];
            // Which of `keys` the next attempt sends.
            let mut trying: Vec<usize> = (0..keys.len()).collect();
            // Twice at most: the second attempt leaves out what the first
            // named as failing; a second refusal (a key taken in between)
            // waits for the keeper's retry.
            for _ in 0..2 {
                if trying.is_empty() {
                    break;
                }
                let ops: Vec<Value> = trying
                    .iter()
                    .map(|&i| {
                        json!({"KV": {"Verb": "lock", "Key": keys[i], "Value": value, "Session": id}})
                    })
                    .collect();
                match txn(&self.api, &ops).await.map_err(|e| other("lock", e))? {
                    Txn::Done(results) => {
                        for (&i, r) in trying.iter().zip(results) {
                            tokens[i] = r.kv.map(|kv| kv.modify_index).filter(|t| *t > 0);
                        }
                        break;
                    }
                    Txn::Rolledback(errors) => {
                        let failed: std::collections::BTreeSet<usize> =
                            errors.iter().map(|e| e.op_index).collect();
                        if let Some(e) = errors.first() {
                            tracing::debug!(failed = failed.len(), first = %e.what, "lock batch refused in part");
                        }
                        if failed.is_empty() {
                            break;
                        }
                        trying = trying
                            .iter()
                            .enumerate()
                            .filter(|(n, _)| !failed.contains(n))
                            .map(|(_, &i)| i)
                            .collect();
                    }
                }
            }
            Ok(tokens)
        })
    }

    fn unlock(&self, id: &str, keys: &[String]) -> BoxFuture<'_, Result<(), LeaseStoreError>> {
        let ops: Vec<Value> = keys
            .iter()
            .map(|k| json!({"KV": {"Verb": "unlock", "Key": k, "Session": id}}))
            .collect();
        Box::pin(async move {
            match txn(&self.api, &ops).await.map_err(|e| other("unlock", e))? {
                Txn::Done(_) => Ok(()),
                // Keys this session no longer holds (its session was
                // renewed late and lost them, say): nothing to release.
                // Unlock the rest.
                Txn::Rolledback(errors) => {
                    let failed: std::collections::BTreeSet<usize> =
                        errors.iter().map(|e| e.op_index).collect();
                    let rest: Vec<Value> = ops
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| !failed.contains(i))
                        .map(|(_, op)| op)
                        .collect();
                    if rest.is_empty() {
                        return Ok(());
                    }
                    match txn(&self.api, &rest)
                        .await
                        .map_err(|e| other("unlock", e))?
                    {
                        Txn::Done(_) => Ok(()),
                        Txn::Rolledback(e) => Err(LeaseStoreError::Other(format!(
                            "unlock refused: {}",
                            e.first().map_or("", |e| e.what.as_str())
                        ))),
                    }
                }
            }
        })
    }
}

impl Consul {
    /// Writes `value` at KV `key` only if the shard lock of `fence` is
    /// still the very grant its token names, in one `/v1/txn`: the fenced
    /// write of the strong mode ([`crate::lease`]).
    ///
    /// The transaction is `check-session` (the lock key is held by the
    /// fence's session), `check-index` (the lock key's `ModifyIndex` still
    /// equals [`Fence::token`], the `ModifyIndex` of the lock write that
    /// granted it), then `set`. Any later write to the lock key moves its
    /// `ModifyIndex`: an unlock, the session's invalidation, another
    /// node's lock, and a new lock by this same session after the shard
    /// went away and came back. So a write from an earlier activation
    /// (token T1) is refused once the shard is held under a later grant
    /// (T3), even by the same session, where the session check alone
    /// would let it through.
    ///
    /// Returns the write's `ModifyIndex`; [`Error::Fenced`] when the lock
    /// is not that grant anymore (another node owns the shard, the session
    /// ended, or a later activation holds it), [`Error::Discovery`] when
    /// Consul fails.
    ///
    /// ```no_run
    /// # use mesh::prelude::*;
    /// # use mesh::consul::Consul;
    /// # async fn save(ctx: &Ctx, consul: &Consul, balance: i64) -> Result<(), Error> {
    /// let fence = ctx.fence().expect("a strong-mode node");
    /// consul
    ///     .fenced_put(&fence, &format!("wallets/{}", ctx.id()), balance.to_string().as_bytes())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn fenced_put(&self, fence: &Fence, key: &str, value: &[u8]) -> Result<u64, Error> {
        let api = self.api()?;
        let ops = [
            json!({"KV": {"Verb": "check-session", "Key": fence.key, "Session": fence.session}}),
            json!({"KV": {"Verb": "check-index", "Key": fence.key, "Index": fence.token}}),
            json!({"KV": {"Verb": "set", "Key": key, "Value": b64(value)}}),
        ];
        match txn(&api, &ops)
            .await
            .map_err(|e| Error::discovery(format!("fenced write of {key:?}: {e}")))?
        {
            Txn::Done(results) => Ok(results
                .into_iter()
                .filter_map(|r| r.kv)
                .map(|kv| kv.modify_index)
                .max()
                .unwrap_or(0)),
            Txn::Rolledback(errors) => Err(Error::Fenced {
                key: fence.key.clone(),
                reason: errors
                    .into_iter()
                    .map(|e| e.what)
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    /// Reads KV `key` (`GET /v1/kv/:key`, default consistency): its value,
    /// or `None` when absent. The read side of [`Consul::fenced_put`].
    pub async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let api = self.api()?;
        let path = format!(
            "kv/{}",
            key.split('/').map(segment).collect::<Vec<_>>().join("/")
        );
        match api.get::<Vec<KvEntry>>(&path, &[], None).await {
            Ok((entries, _)) => {
                let Some(entry) = entries.into_iter().next() else {
                    return Ok(None);
                };
                let Some(value) = entry.value else {
                    return Ok(Some(Vec::new()));
                };
                base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map(Some)
                    .map_err(|e| Error::discovery(format!("KV {key:?}: bad base64 value: {e}")))
            }
            Err(ApiError::Status { code: 404, .. }) => Ok(None),
            Err(e) => Err(Error::discovery(format!("KV read of {key:?}: {e}"))),
        }
    }

    /// Writes `value` at KV `key` (`PUT /v1/kv/:key`), unfenced: what a
    /// node in eventual mode can do, and what a paused node could still
    /// do after losing its lease. Prefer [`Consul::fenced_put`] in strong
    /// mode.
    pub async fn kv_put(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        let api = self.api()?;
        let ops = [json!({"KV": {"Verb": "set", "Key": key, "Value": b64(value)}})];
        match txn(&api, &ops).await {
            Ok(Txn::Done(_)) => Ok(()),
            Ok(Txn::Rolledback(e)) => Err(Error::discovery(format!(
                "KV write of {key:?} refused: {}",
                e.first().map_or("", |e| e.what.as_str())
            ))),
            Err(e) => Err(Error::discovery(format!("KV write of {key:?}: {e}"))),
        }
    }

    /// The lease store of this adapter (strong mode).
    pub(crate) fn leases(&self) -> Result<ConsulLeases, crate::StartError> {
        Ok(ConsulLeases::new(self.api()?, self.own_check()))
    }
}
