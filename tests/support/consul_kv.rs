//! Sessions, KV and `/v1/txn` of the Consul test agent: the state
//! ([`Kv`], sans-IO: time and the write's Raft index are passed in) and
//! its HTTP glue ([`route`], [`tick`]), following Consul's documentation
//! and code (`api-docs/session.mdx`, `kv.mdx`, `txn.mdx`,
//! `docs/dynamic-app-config/sessions`; `agent/session_endpoint.go`,
//! `agent/kvs_endpoint.go`, `agent/txn_endpoint.go`,
//! `agent/consul/{session,kvs,txn}_endpoint.go`,
//! `agent/consul/state/{session,kvs,txn}.go`), as summed up in
//! `shared/reference/chaos-and-leases.md` section 2.
//!
//! What it reproduces:
//!
//! - **Sessions**: create with Consul's defaults (the agent's node,
//!   `LockDelay` 15 s, node check `serfHealth`, behaviour `release`, no
//!   TTL; an explicit empty `Checks`/`NodeChecks` drops `serfHealth`);
//!   TTL allowed between 10 s and 86400 s, otherwise a 500 with Consul's
//!   text; the TTL is a lower bound: the invalidation timer runs for
//!   **2 x TTL** (`SessionTTLMultiplier`) from create or the last renew;
//!   renew answers the session array or 404 `Session id '…' not found`;
//!   destroy is idempotent (`true`); info, list and node reads block on
//!   the sessions' index.
//! - **Invalidation** (TTL timer, destroy, a listed check critical or
//!   gone, the node's agent stopped, i.e. `serfHealth` failing): with
//!   `release` the held keys lose `Session` (their `ModifyIndex` moves),
//!   with `delete` they are deleted; either way each held key gets a
//!   lock-delay of the session's `LockDelay` (capped at 60 s) counted from
//!   the invalidation. A voluntary `?release` sets no lock-delay.
//! - **KV**: `GET` (one key, `?recurse`, `?keys[&separator=]`, `?raw`,
//!   blocking on `?index`/`?wait` with `X-Consul-Index`), `PUT` (`?flags`,
//!   `?cas` with 0 = create only, `?acquire` and `?release` answering
//!   `true`/`false`; `LockIndex` moves only for a new holder; `?acquire`
//!   answers `false` under lock-delay), `DELETE` (`?recurse`, `?cas`);
//!   values base64 in JSON; plain writes ignore a holder (locks are
//!   advisory); an unchanged write keeps the key's `ModifyIndex`.
//! - **`/v1/txn`**: the KV verbs `set`, `cas`, `lock`, `unlock`, `get`,
//!   `get-tree`, `check-index`, `check-session`, `check-not-exists`,
//!   `delete`, `delete-cas`, `delete-tree`; all applied at one index or
//!   none (409 with `{"Results":null,"Errors":[{"OpIndex","What"}]}`,
//!   Consul's texts, every failing op listed); lock-delay checked before
//!   the ops run (`failed to lock key "k" due to lock delay`); at most 128
//!   ops (413 above); a read-only transaction allocates no index.
//!
//! One index space: KV `ModifyIndex`, sessions' indexes and the catalog's
//! `X-Consul-Index` come from [`Catalog::next_index`], as in Consul where
//! they are all Raft indexes.
//!
//! **Scaled time**: TTLs and lock-delays are multiplied by the
//! [`TimeScale`](crate::consul_catalog::TimeScale)'s `ttl` factor, as the catalog does for check TTLs, so a
//! test with real node processes can use Consul's 10 s minimum TTL and
//! still run in a fraction of it. The session JSON shows the values as
//! given (unscaled).
//!
//! Deviations (see the tests): no ACLs on these endpoints; check and
//! agent-down invalidations are applied at the next request or 10 ms tick
//! rather than inside the catalog write; tombstones are never reaped;
//! the key-name hardening of recent agents (allowed characters, file
//! extensions) is not applied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::consul_catalog::{parse_go_duration, ApiError, Catalog, Status};

/// The id of the synthetic node check every node has.
pub const SERF_HEALTH: &str = "serfHealth";
/// `SessionTTLMin` (config default) and `SessionTTLMax`.
pub const SESSION_TTL_MIN: Duration = Duration::from_secs(10);
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(86400);
/// `SessionTTLMultiplier`: the leader's timer runs this many TTLs.
pub const SESSION_TTL_MULTIPLIER: u32 = 2;
/// `MaxLockDelay`.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// The agent's default lock-delay.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// `maxTxnOps` of current agents (64 before 1.x; 128 in current docs and
/// `agent/txn_endpoint.go`).
pub const MAX_TXN_OPS: usize = 128;
/// `kv_max_value_size` default (the suggested Raft data size).
pub const MAX_VALUE_SIZE: usize = 512 * 1024;

/// Session invalidation behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Release,
    Delete,
}

/// One live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    /// As given (unscaled).
    pub lock_delay: Duration,
    pub behavior: Behavior,
    /// As given, `""` for none.
    pub ttl: String,
    /// Node checks (`Checks` and `NodeChecks` together).
    pub node_checks: Vec<String>,
    pub service_checks: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
    /// When the TTL timer (2 x the scaled TTL) fires, for a TTL session.
    pub expires: Option<Instant>,
}

impl Session {
    fn to_json(&self) -> Value {
        let service_checks = if self.service_checks.is_empty() {
            Value::Null
        } else {
            Value::Array(
                self.service_checks
                    .iter()
                    .map(|id| json!({"ID": id, "Namespace": ""}))
                    .collect(),
            )
        };
        json!({
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": self.lock_delay.as_nanos() as u64,
            "Behavior": match self.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
            "TTL": self.ttl,
            "NodeChecks": self.node_checks,
            "ServiceChecks": service_checks,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        })
    }
}

/// One KV entry (`DirEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    /// The holder, `""` for none.
    pub session: String,
    pub lock_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Entry {
    /// The JSON of a read (`with_value`) or of a write result (`Value`
    /// null, as Consul blanks it).
    pub fn to_json(&self, with_value: bool) -> Value {
        let mut v = json!({
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": if with_value && !self.value.is_empty() { Value::String(base64_encode(&self.value)) } else { Value::Null },
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        });
        if !self.session.is_empty() {
            v["Session"] = json!(self.session);
        }
        v
    }
}

/// How a KV `PUT` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    Set,
    /// `?cas=<index>`, 0 = only if absent.
    Cas(u64),
    /// `?acquire=<session>`.
    Acquire(String),
    /// `?release=<session>`.
    Release(String),
}

/// One KV op of a `/v1/txn` body.
#[derive(Debug, Clone)]
pub struct TxnOp {
    pub verb: String,
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub index: u64,
    pub session: String,
}

impl TxnOp {
    fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "set" | "delete" | "delete-cas" | "delete-tree" | "cas" | "lock" | "unlock"
        )
    }
}

/// A transaction's outcome: results (200) or errors (409).
#[derive(Debug, Clone)]
pub enum TxnOutcome {
    Ok(Vec<Value>),
    Failed(Vec<(usize, String)>),
}

impl TxnOutcome {
    /// The response body, as Consul encodes `TxnResponse`.
    pub fn to_json(&self) -> Value {
        match self {
            TxnOutcome::Ok(results) => json!({"Results": results, "Errors": null}),
            TxnOutcome::Failed(errors) => json!({
                "Results": null,
                "Errors": errors.iter().map(|(i, w)| json!({"OpIndex": i, "What": w})).collect::<Vec<_>>(),
            }),
        }
    }
}

/// One undo record: a key's entry and tombstone before a write.
type Undo = (String, Option<Entry>, Option<u64>);

/// Sessions and KV of the test agent.
#[derive(Debug)]
pub struct Kv {
    pub sessions: BTreeMap<String, Session>,
    pub entries: BTreeMap<String, Entry>,
    /// Deleted keys and the index of their deletion (never reaped).
    tombstones: BTreeMap<String, u64>,
    /// Key -> end of its lock-delay.
    lock_delay: HashMap<String, Instant>,
    /// The `kvs`/`tombstones` tables' index.
    kv_index: u64,
    /// The `sessions` table's index.
    session_index: u64,
    /// Nodes whose agent is down (`serfHealth` critical).
    down: BTreeSet<String>,
    ttl_scale: f64,
    ids: u64,
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn server_error(msg: impl Into<String>) -> ApiError {
    ApiError(500, msg.into())
}

/// Go's `%d` of a `time.Duration` and `%v` of one (for the TTL error).
fn go_duration_string(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

impl Kv {
    /// An empty store; TTLs and lock-delays are multiplied by `ttl_scale`.
    pub fn new(ttl_scale: f64) -> Kv {
        Kv {
            sessions: BTreeMap::new(),
            entries: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            lock_delay: HashMap::new(),
            kv_index: 0,
            session_index: 0,
            down: BTreeSet::new(),
            ttl_scale,
            ids: 0,
        }
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.ttl_scale)
    }

    fn new_id(&mut self) -> String {
        self.ids += 1;
        let r = std::collections::hash_map::RandomState::new().hash_one(self.ids);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (r >> 32) as u32,
            (r >> 16) as u16,
            r as u16,
            self.ids as u16,
            (r ^ self.ids.rotate_left(29)) & 0xffff_ffff_ffff
        )
    }

    // ---- sessions ------------------------------------------------------

    /// `PUT /v1/session/create` on `agent`'s node with `body` (may be
    /// empty), at Raft index `idx`. Returns the new session's ID.
    pub fn session_create(
        &mut self,
        catalog: &Catalog,
        agent: &str,
        body: &[u8],
        idx: u64,
        now: Instant,
    ) -> Result<String, ApiError> {
        let mut name = String::new();
        let mut node = agent.to_owned();
        let mut lock_delay = DEFAULT_LOCK_DELAY;
        let mut behavior = String::new();
        let mut ttl = String::new();
        let mut checks: Vec<String> = vec![SERF_HEALTH.to_owned()];
        let mut node_checks: Vec<String> = vec![SERF_HEALTH.to_owned()];
        let mut service_checks: Vec<String> = Vec::new();
        if !body.is_empty() {
            let decode = |e: String| ApiError(400, format!("Request decode failed: {e}"));
            let v: Value = serde_json::from_slice(body).map_err(|e| decode(e.to_string()))?;
            let obj = v
                .as_object()
                .ok_or_else(|| decode("expected a JSON object".into()))?;
            let strings = |v: &Value, what: &str| -> Result<Vec<String>, ApiError> {
                match v {
                    Value::Null => Ok(Vec::new()),
                    Value::Array(a) => a
                        .iter()
                        .map(|s| {
                            s.as_str()
                                .map(str::to_owned)
                                .ok_or_else(|| decode(format!("{what}: expected strings")))
                        })
                        .collect(),
                    _ => Err(decode(format!("{what}: expected a list"))),
                }
            };
            if let Some(v) = field(obj, "Name") {
                name = v.as_str().unwrap_or_default().to_owned();
            }
            if let Some(v) = field(obj, "Node") {
                node = v.as_str().unwrap_or_default().to_owned();
            }
            if let Some(v) = field(obj, "Behavior") {
                behavior = v.as_str().unwrap_or_default().to_owned();
            }
            if let Some(v) = field(obj, "TTL") {
                ttl = v.as_str().unwrap_or_default().to_owned();
            }
            // FixupLockDelay: a string is a Go duration, a number is
            // nanoseconds; either below 1000 (ns) is taken as seconds.
            if let Some(v) = field(obj, "LockDelay") {
                let d = match v {
                    Value::String(s) => parse_go_duration(s)
                        .ok_or_else(|| decode(format!("time: invalid duration {s:?}")))?,
                    Value::Number(n) => Duration::from_nanos(n.as_f64().unwrap_or(0.0) as u64),
                    _ => return Err(decode("LockDelay: expected a duration".into())),
                };
                lock_delay = if d.as_nanos() < 1000 {
                    Duration::from_secs(d.as_nanos() as u64)
                } else {
                    d
                };
            }
            if let Some(v) = field(obj, "Checks") {
                checks = strings(v, "Checks")?;
            }
            if let Some(v) = field(obj, "NodeChecks") {
                node_checks = strings(v, "NodeChecks")?;
            }
            if let Some(v) = field(obj, "ServiceChecks") {
                service_checks = match v {
                    Value::Null => Vec::new(),
                    Value::Array(a) => a
                        .iter()
                        .map(|c| {
                            c.as_object()
                                .and_then(|o| field(o, "ID"))
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                                .ok_or_else(|| decode("ServiceChecks: expected {\"ID\"}".into()))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(decode("ServiceChecks: expected a list".into())),
                };
            }
            // fixupEmptySessionChecks: an empty Checks empties the default
            // NodeChecks; the default Checks defers to NodeChecks; an empty
            // NodeChecks empties the default Checks.
            if checks.is_empty() {
                node_checks.clear();
            } else if checks == [SERF_HEALTH] || node_checks.is_empty() {
                checks.clear();
            }
        } else {
            checks.clear();
        }
        let mut all_node_checks = Vec::new();
        for c in checks.into_iter().chain(node_checks) {
            if !all_node_checks.contains(&c) {
                all_node_checks.push(c);
            }
        }
        if node.is_empty() {
            return Err(server_error("Must provide Node"));
        }
        let behavior = match behavior.as_str() {
            "" | "release" => Behavior::Release,
            "delete" => Behavior::Delete,
            other => return Err(server_error(format!("Invalid Behavior setting '{other}'"))),
        };
        let mut ttl_dur = None;
        if !ttl.is_empty() {
            let d = parse_go_duration(&ttl).ok_or_else(|| {
                server_error(format!(
                    "Session TTL '{ttl}' invalid: time: invalid duration {ttl:?}"
                ))
            })?;
            if !d.is_zero() && (d < SESSION_TTL_MIN || d > SESSION_TTL_MAX) {
                return Err(server_error(format!(
                    "Invalid Session TTL '{}', must be between [{}={}]",
                    d.as_nanos(),
                    go_duration_string(SESSION_TTL_MIN),
                    go_duration_string(SESSION_TTL_MAX)
                )));
            }
            if !d.is_zero() {
                ttl_dur = Some(d);
            }
        }
        let Some(node_state) = catalog.nodes.get(&node) else {
            return Err(server_error("Missing node registration"));
        };
        for id in all_node_checks.iter().chain(&service_checks) {
            if id == SERF_HEALTH {
                if self.down.contains(&node) {
                    return Err(server_error(format!(
                        "Check '{SERF_HEALTH}' is in critical state"
                    )));
                }
                continue;
            }
            match node_state.checks.get(id) {
                None => return Err(server_error(format!("Missing check '{id}' registration"))),
                Some(c) if c.status == Status::Critical => {
                    return Err(server_error(format!("Check '{id}' is in critical state")))
                }
                Some(_) => {}
            }
        }
        let id = self.new_id();
        let expires = ttl_dur.map(|t| now + self.scaled(t) * SESSION_TTL_MULTIPLIER);
        self.sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                name,
                node,
                lock_delay,
                behavior,
                ttl,
                node_checks: all_node_checks,
                service_checks,
                create_index: idx,
                modify_index: idx,
                expires,
            },
        );
        self.session_index = idx;
        Ok(id)
    }

    /// `PUT /v1/session/renew/:id`: resets the TTL timer (no index
    /// moves: Consul renews in the leader's memory, not through Raft).
    /// `None` when the session is not (or no longer) valid.
    pub fn session_renew(&mut self, id: &str, now: Instant) -> Option<Value> {
        let scale = self.ttl_scale;
        let s = self.sessions.get_mut(id)?;
        if let Some(t) = parse_go_duration(&s.ttl).filter(|t| !t.is_zero()) {
            s.expires = Some(now + t.mul_f64(scale) * SESSION_TTL_MULTIPLIER);
        }
        Some(s.to_json())
    }

    /// `PUT /v1/session/destroy/:id`: invalidates the session (if live)
    /// at index `idx`. Returns whether it was live.
    pub fn session_destroy(&mut self, id: &str, idx: u64, now: Instant) -> bool {
        self.invalidate(id, idx, now)
    }

    /// Invalidates session `id` at index `idx`: deletes it, releases or
    /// deletes the keys it holds, and starts their lock-delay at `now`.
    pub fn invalidate(&mut self, id: &str, idx: u64, now: Instant) -> bool {
        let Some(s) = self.sessions.remove(id) else {
            return false;
        };
        self.session_index = idx;
        let delay = self.scaled(s.lock_delay.min(MAX_LOCK_DELAY));
        let held: Vec<String> = self
            .entries
            .values()
            .filter(|e| e.session == id)
            .map(|e| e.key.clone())
            .collect();
        let mut undo = Vec::new();
        for key in held {
            match s.behavior {
                Behavior::Release => {
                    if let Some(mut e) = self.entries.get(&key).cloned() {
                        e.session.clear();
                        e.modify_index = idx;
                        self.write(&key, Some(e), idx, &mut undo);
                    }
                }
                Behavior::Delete => self.write(&key, None, idx, &mut undo),
            }
            if !delay.is_zero() {
                self.lock_delay.insert(key, now + delay);
            }
        }
        true
    }

    /// Marks the agent of `node` down (its `serfHealth` critical) or up.
    pub fn set_node_down(&mut self, node: &str, down: bool) {
        if down {
            self.down.insert(node.to_owned());
        } else {
            self.down.remove(node);
        }
    }

    /// The sessions due for invalidation at `now`: TTL timer fired, or a
    /// listed check critical or gone, or the node's agent down.
    pub fn due(&self, catalog: &Catalog, now: Instant) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| {
                if s.expires.is_some_and(|e| e <= now) {
                    return true;
                }
                let node = catalog.nodes.get(&s.node);
                s.node_checks.iter().chain(&s.service_checks).any(|id| {
                    if id == SERF_HEALTH {
                        return node.is_none() || self.down.contains(&s.node);
                    }
                    match node.and_then(|n| n.checks.get(id)) {
                        None => true,
                        Some(c) => c.status == Status::Critical,
                    }
                })
            })
            .map(|s| s.id.clone())
            .collect()
    }

    /// The sessions' index (never 0).
    pub fn session_index(&self) -> u64 {
        self.session_index.max(1)
    }

    /// `GET /v1/session/info/:id`: `[]` or `[session]`, and the index.
    pub fn session_info(&self, id: &str) -> (Value, u64) {
        let list: Vec<Value> = self
            .sessions
            .get(id)
            .map(Session::to_json)
            .into_iter()
            .collect();
        (Value::Array(list), self.session_index())
    }

    /// `GET /v1/session/list` or, with `node`, `/v1/session/node/:node`.
    pub fn session_list(&self, node: Option<&str>) -> (Value, u64) {
        let list: Vec<Value> = self
            .sessions
            .values()
            .filter(|s| node.is_none_or(|n| s.node == n))
            .map(Session::to_json)
            .collect();
        (Value::Array(list), self.session_index())
    }

    // ---- KV --------------------------------------------------------------

    /// Writes (or, with `None`, deletes) `key` at `idx`, recording the old
    /// state in `undo`.
    fn write(&mut self, key: &str, entry: Option<Entry>, idx: u64, undo: &mut Vec<Undo>) {
        undo.push((
            key.to_owned(),
            self.entries.get(key).cloned(),
            self.tombstones.get(key).copied(),
        ));
        match entry {
            Some(e) => {
                self.entries.insert(key.to_owned(), e);
            }
            None => {
                if self.entries.remove(key).is_some() {
                    self.tombstones.insert(key.to_owned(), idx);
                }
            }
        }
        self.kv_index = self.kv_index.max(idx);
    }

    fn rollback(&mut self, undo: Vec<Undo>, kv_index: u64) {
        for (key, entry, tomb) in undo.into_iter().rev() {
            match entry {
                Some(e) => self.entries.insert(key.clone(), e),
                None => self.entries.remove(&key),
            };
            match tomb {
                Some(t) => self.tombstones.insert(key, t),
                None => self.tombstones.remove(&key),
            };
        }
        self.kv_index = kv_index;
    }

    /// `kvsSetTxn`: sets value and flags, keeping `CreateIndex` and (unless
    /// `session` is given) the holder; an unchanged entry keeps its
    /// `ModifyIndex`. Returns the entry as stored.
    fn set(
        &mut self,
        key: &str,
        value: &[u8],
        flags: u64,
        session: Option<(&str, u64)>,
        idx: u64,
        undo: &mut Vec<Undo>,
    ) -> Entry {
        let existing = self.entries.get(key);
        let (session, lock_index) = match (session, existing) {
            (Some((s, l)), _) => (s.to_owned(), l),
            (None, Some(e)) => (e.session.clone(), e.lock_index),
            (None, None) => (String::new(), 0),
        };
        let mut entry = Entry {
            key: key.to_owned(),
            value: value.to_vec(),
            flags,
            session,
            lock_index,
            create_index: existing.map_or(idx, |e| e.create_index),
            modify_index: idx,
        };
        if let Some(e) = existing {
            if e.value == entry.value
                && e.flags == entry.flags
                && e.session == entry.session
                && e.lock_index == entry.lock_index
            {
                entry.modify_index = e.modify_index;
                return entry;
            }
        }
        self.write(key, Some(entry.clone()), idx, undo);
        entry
    }

    /// `kvsLockTxn`: `Ok(None)` when another session holds the key.
    fn lock(
        &mut self,
        key: &str,
        value: &[u8],
        flags: u64,
        session: &str,
        idx: u64,
        undo: &mut Vec<Undo>,
    ) -> Result<Option<Entry>, String> {
        if session.is_empty() {
            return Err("missing session".into());
        }
        if !self.sessions.contains_key(session) {
            return Err(format!("invalid session {session:?}"));
        }
        let lock_index = match self.entries.get(key) {
            Some(e) if e.session == session => e.lock_index,
            Some(e) if !e.session.is_empty() => return Ok(None),
            Some(e) => e.lock_index + 1,
            None => 1,
        };
        Ok(Some(self.set(
            key,
            value,
            flags,
            Some((session, lock_index)),
            idx,
            undo,
        )))
    }

    /// `kvsUnlockTxn`: `Ok(None)` when the key is absent or not held by
    /// `session`.
    fn unlock(
        &mut self,
        key: &str,
        value: &[u8],
        flags: u64,
        session: &str,
        idx: u64,
        undo: &mut Vec<Undo>,
    ) -> Result<Option<Entry>, String> {
        if session.is_empty() {
            return Err("missing session".into());
        }
        let lock_index = match self.entries.get(key) {
            Some(e) if e.session == session => e.lock_index,
            _ => return Ok(None),
        };
        Ok(Some(self.set(
            key,
            value,
            flags,
            Some(("", lock_index)),
            idx,
            undo,
        )))
    }

    fn cas(
        &mut self,
        key: &str,
        value: &[u8],
        flags: u64,
        cas: u64,
        idx: u64,
        undo: &mut Vec<Undo>,
    ) -> Option<Entry> {
        match (cas, self.entries.get(key)) {
            (0, Some(_)) => return None,
            (c, None) if c != 0 => return None,
            (c, Some(e)) if c != e.modify_index => return None,
            _ => {}
        }
        Some(self.set(key, value, flags, None, idx, undo))
    }

    /// `kvsDeleteCASTxn`: true when deleted, or when the key is absent.
    fn delete_cas(&mut self, key: &str, cas: u64, idx: u64, undo: &mut Vec<Undo>) -> bool {
        match self.entries.get(key) {
            None => true,
            Some(e) if e.modify_index != cas => false,
            Some(_) => {
                self.write(key, None, idx, undo);
                true
            }
        }
    }

    fn delete_tree(&mut self, prefix: &str, idx: u64, undo: &mut Vec<Undo>) {
        let keys: Vec<String> = self
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.write(&k, None, idx, undo);
        }
    }

    /// Whether `key` is under a lock-delay at `now`.
    pub fn lock_delayed(&self, key: &str, now: Instant) -> bool {
        self.lock_delay.get(key).is_some_and(|until| *until > now)
    }

    /// The `kvs`+`tombstones` tables' index (`kvsMaxIndex`).
    fn table_index(&self) -> u64 {
        self.kv_index
    }

    /// `GET /v1/kv/:key`: the entry and the index to send (its
    /// `ModifyIndex`, or the table's index when absent; never 0).
    pub fn get(&self, key: &str) -> (Option<Entry>, u64) {
        match self.entries.get(key) {
            Some(e) => (Some(e.clone()), e.modify_index),
            None => (None, self.table_index().max(1)),
        }
    }

    /// `GET /v1/kv/:prefix?recurse`: the entries and the index (the
    /// highest of the entries and the tombstones under the prefix; the
    /// table's when the prefix is empty or nothing matched).
    pub fn list(&self, prefix: &str) -> (Vec<Entry>, u64) {
        let entries: Vec<Entry> = self
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        let mut idx = entries.iter().map(|e| e.modify_index).max().unwrap_or(0);
        if prefix.is_empty() {
            idx = self.table_index();
        } else {
            let tomb = self
                .tombstones
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, i)| *i)
                .max()
                .unwrap_or(0);
            idx = idx.max(tomb);
        }
        if idx == 0 {
            idx = self.table_index();
        }
        (entries, idx.max(1))
    }

    /// `GET /v1/kv/:prefix?keys[&separator=]`.
    pub fn keys(&self, prefix: &str, separator: &str) -> (Vec<String>, u64) {
        let (entries, idx) = self.list(prefix);
        let mut keys: Vec<String> = Vec::new();
        for e in entries {
            let after = &e.key[prefix.len()..];
            let key = match (separator.is_empty(), after.find(separator)) {
                (false, Some(i)) => e.key[..prefix.len() + i + separator.len()].to_owned(),
                _ => e.key,
            };
            if keys.last() != Some(&key) {
                keys.push(key);
            }
        }
        (keys, idx)
    }

    /// `PUT /v1/kv/:key` at `idx`: `true`/`false` as the endpoint answers
    /// (a plain set always `true`).
    pub fn put(
        &mut self,
        key: &str,
        value: &[u8],
        flags: u64,
        mode: PutMode,
        idx: u64,
        now: Instant,
    ) -> Result<bool, ApiError> {
        let mut undo = Vec::new();
        Ok(match mode {
            PutMode::Set => {
                self.set(key, value, flags, None, idx, &mut undo);
                true
            }
            PutMode::Cas(c) => self.cas(key, value, flags, c, idx, &mut undo).is_some(),
            PutMode::Acquire(s) => {
                if self.lock_delayed(key, now) {
                    return Ok(false);
                }
                self.lock(key, value, flags, &s, idx, &mut undo)
                    .map_err(server_error)?
                    .is_some()
            }
            PutMode::Release(s) => self
                .unlock(key, value, flags, &s, idx, &mut undo)
                .map_err(server_error)?
                .is_some(),
        })
    }

    /// `DELETE /v1/kv/:key[?recurse|?cas=]` at `idx`.
    pub fn delete(&mut self, key: &str, recurse: bool, cas: Option<u64>, idx: u64) -> bool {
        let mut undo = Vec::new();
        match (recurse, cas) {
            (_, Some(c)) => self.delete_cas(key, c, idx, &mut undo),
            (true, None) => {
                self.delete_tree(key, idx, &mut undo);
                true
            }
            (false, None) => {
                self.write(key, None, idx, &mut undo);
                true
            }
        }
    }

    // ---- txn -------------------------------------------------------------

    /// `PUT /v1/txn` (KV ops only, already decoded and within the op
    /// limit). `idx` is called once, and only if some op writes.
    pub fn txn(&mut self, ops: &[TxnOp], idx: impl FnOnce() -> u64, now: Instant) -> TxnOutcome {
        // preCheck (before Raft): keys present, lock-delay.
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if op.key.is_empty() && op.verb != "delete-tree" {
                errors.push((i, "Must provide key".to_owned()));
            } else if op.verb == "lock" && self.lock_delayed(&op.key, now) {
                errors.push((
                    i,
                    format!("failed to lock key {:?} due to lock delay", op.key),
                ));
            }
        }
        if !errors.is_empty() {
            return TxnOutcome::Failed(errors);
        }
        let idx = if ops.iter().any(TxnOp::is_write) {
            idx()
        } else {
            0
        };
        let kv_index = self.kv_index;
        let mut undo = Vec::new();
        let mut results = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let key = op.key.as_str();
            let out: Result<Option<Entry>, String> = match op.verb.as_str() {
                "set" => Ok(Some(self.set(key, &op.value, op.flags, None, idx, &mut undo))),
                "cas" => self
                    .cas(key, &op.value, op.flags, op.index, idx, &mut undo)
                    .map(Some)
                    .ok_or_else(|| format!("failed to set key {key:?}, index is stale")),
                "lock" => self
                    .lock(key, &op.value, op.flags, &op.session, idx, &mut undo)
                    .and_then(|e| {
                        e.map(Some).ok_or_else(|| {
                            format!("failed to lock key {key:?}, lock is already held")
                        })
                    }),
                "unlock" => self
                    .unlock(key, &op.value, op.flags, &op.session, idx, &mut undo)
                    .and_then(|e| {
                        e.map(Some).ok_or_else(|| {
                            format!("failed to unlock key {key:?}, lock isn't held, or is held by another session")
                        })
                    }),
                "delete" => {
                    self.write(key, None, idx, &mut undo);
                    Ok(None)
                }
                "delete-cas" => {
                    if self.delete_cas(key, op.index, idx, &mut undo) {
                        Ok(None)
                    } else {
                        Err(format!("failed to delete key {key:?}, index is stale"))
                    }
                }
                "delete-tree" => {
                    self.delete_tree(key, idx, &mut undo);
                    Ok(None)
                }
                "get" => match self.entries.get(key) {
                    Some(e) => {
                        results.push(json!({"KV": e.to_json(true)}));
                        continue;
                    }
                    None => Err(format!("key {key:?} doesn't exist")),
                },
                "get-tree" => {
                    let (entries, _) = self.list(key);
                    results.extend(entries.iter().map(|e| json!({"KV": e.to_json(true)})));
                    continue;
                }
                "check-session" => match self.entries.get(key) {
                    None => Err(format!("failed to check session, key {key:?} doesn't exist")),
                    Some(e) if e.session != op.session => Err(format!(
                        "failed session check for key {key:?}, current session {:?} != {:?}",
                        e.session, op.session
                    )),
                    Some(e) => Ok(Some(e.clone())),
                },
                "check-index" => match self.entries.get(key) {
                    None => Err(format!("failed to check index, key {key:?} doesn't exist")),
                    Some(e) if e.modify_index != op.index => Err(format!(
                        "failed index check for key {key:?}, current modify index {} != {}",
                        e.modify_index, op.index
                    )),
                    Some(e) => Ok(Some(e.clone())),
                },
                "check-not-exists" => match self.entries.get(key) {
                    Some(_) => Err(format!("key {key:?} exists")),
                    None => Ok(None),
                },
                other => Err(format!("unknown KV verb {other:?}")),
            };
            match out {
                Ok(Some(e)) => results.push(json!({"KV": e.to_json(false)})),
                Ok(None) => {}
                Err(what) => errors.push((i, what)),
            }
        }
        if errors.is_empty() {
            TxnOutcome::Ok(results)
        } else {
            self.rollback(undo, kv_index);
            TxnOutcome::Failed(errors)
        }
    }
}

// ---- base64 (standard alphabet, padded), as Go's encoding/base64 ---------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64, as `base64.StdEncoding.DecodeString`.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return Err(format!("illegal base64 data at input byte {}", bytes.len()));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (c, chunk) in bytes.chunks(4).enumerate() {
        let mut n = 0u32;
        let mut pad = 0;
        for (i, &ch) in chunk.iter().enumerate() {
            let v = match ch {
                b'A'..=b'Z' => ch - b'A',
                b'a'..=b'z' => ch - b'a' + 26,
                b'0'..=b'9' => ch - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if i >= 2 && c == bytes.len() / 4 - 1 => {
                    pad += 1;
                    0
                }
                _ => return Err(format!("illegal base64 data at input byte {}", c * 4 + i)),
            };
            if pad > 0 && ch != b'=' {
                return Err(format!("illegal base64 data at input byte {}", c * 4 + i));
            }
            n = (n << 6) | u32::from(v);
        }
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad]);
    }
    Ok(out)
}

// ---- HTTP glue -----------------------------------------------------------

/// A reply of these endpoints (the agent turns it into its own).
pub struct KvReply {
    pub status: u16,
    pub body: Bytes,
    pub json: bool,
    pub headers: Vec<(&'static str, String)>,
}

impl KvReply {
    fn json(v: &Value) -> KvReply {
        KvReply {
            status: 200,
            body: Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            json: true,
            headers: Vec::new(),
        }
    }

    fn with_read_headers(mut self, index: u64) -> KvReply {
        self.headers.extend([
            ("X-Consul-Index", index.max(1).to_string()),
            ("X-Consul-KnownLeader", "true".into()),
            ("X-Consul-LastContact", "0".into()),
        ]);
        self
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn method_not_allowed(method: &Method, allow: &str) -> Result<KvReply, ApiError> {
    let mut r = KvReply {
        status: 405,
        body: Bytes::from(format!("method {method} not allowed")),
        json: false,
        headers: Vec::new(),
    };
    r.headers.push(("Allow", allow.to_owned()));
    Ok(r)
}

fn has(query: &[(String, String)], k: &str) -> bool {
    query.iter().any(|(q, _)| q == k)
}

fn param<'a>(query: &'a [(String, String)], k: &str) -> Option<&'a str> {
    query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str())
}

/// `strconv.ParseUint(v, 10, 64)`, failing as the agent does (500).
fn parse_uint(v: &str) -> Result<u64, ApiError> {
    v.parse()
        .map_err(|_| server_error(format!("strconv.ParseUint: parsing {v:?}: invalid syntax")))
}

/// `conflictingFlags`: 400 `Conflicting flags: <query>\n`.
fn conflicting(query: &[(String, String)], flags: &[&str]) -> Result<(), ApiError> {
    if flags.iter().filter(|f| has(query, f)).count() > 1 {
        let mut q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        q.sort();
        return Err(ApiError(
            400,
            format!("Conflicting flags: {}\n", q.join("&")),
        ));
    }
    Ok(())
}

/// `wait`: default 5m, capped at 10m, plus up to wait/16 of jitter.
fn deadline_of(query: &[(String, String)]) -> Result<Instant, ApiError> {
    let wait = match param(query, "wait") {
        None => Duration::from_secs(300),
        Some(w) => {
            let d = parse_go_duration(w)
                .ok_or_else(|| ApiError(400, format!("Invalid wait time: {w:?}")))?;
            if d.is_zero() {
                Duration::from_secs(300)
            } else {
                d.min(Duration::from_secs(600))
            }
        }
    };
    let r = std::collections::hash_map::RandomState::new().hash_one(0u8);
    Ok(Instant::now() + wait + wait / 16 * (r % 1000) as u32 / 1000)
}

fn index_of(query: &[(String, String)]) -> Result<u64, ApiError> {
    match param(query, "index") {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| ApiError(400, format!("Invalid index: {v:?}"))),
    }
}

/// Runs `read` until its index passes `?index` or `?wait` ends, waking on
/// every change of the agent.
async fn blocking<T>(
    query: &[(String, String)],
    changed: &watch::Sender<u64>,
    mut read: impl FnMut() -> (T, u64),
) -> Result<(T, u64), ApiError> {
    let index = index_of(query)?;
    let deadline = deadline_of(query)?;
    let mut rx = changed.subscribe();
    loop {
        let (out, idx) = read();
        if index == 0 || idx > index || Instant::now() >= deadline {
            return Ok((out, idx));
        }
        tokio::select! {
            c = rx.changed() => if c.is_err() { return Err(server_error("agent stopping")) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Invalidates the sessions due at `now` (one index each). Returns
/// whether any was.
fn sweep(kv: &mut Kv, catalog: &mut Catalog, now: Instant) -> bool {
    let due = kv.due(catalog, now);
    for id in &due {
        let idx = catalog.next_index();
        kv.invalidate(id, idx, now);
    }
    !due.is_empty()
}

/// Called from the agent's ticker: fires TTL timers and check-based
/// invalidations. Returns whether anything changed.
pub fn tick(kv: &Mutex<Kv>, catalog: &Mutex<Catalog>, now: Instant) -> bool {
    let mut c = lock(catalog);
    sweep(&mut lock(kv), &mut c, now)
}

/// Serves `session/*`, `kv/*` and `txn` (paths without `/v1/`); `None`
/// for any other path.
#[allow(clippy::too_many_arguments)]
pub async fn route(
    kv: &Mutex<Kv>,
    catalog: &Mutex<Catalog>,
    changed: &watch::Sender<u64>,
    agent: &str,
    method: &Method,
    rel: &str,
    query: &[(String, String)],
    body: &[u8],
) -> Option<Result<KvReply, ApiError>> {
    let ours = rel.starts_with("session/") || rel == "kv" || rel.starts_with("kv/") || rel == "txn";
    if !ours {
        return None;
    }
    let now = Instant::now();
    // Check-based invalidations first, so a request sees them.
    if tick(kv, catalog, now) {
        changed.send_modify(|v| *v += 1);
    }
    let out = if let Some(what) = rel.strip_prefix("session/") {
        session(kv, catalog, changed, agent, method, what, query, body, now).await
    } else if rel == "txn" {
        txn(kv, catalog, changed, method, query, body, now)
    } else {
        let key = rel.strip_prefix("kv").unwrap_or("");
        let key = key.strip_prefix('/').unwrap_or(key);
        kv_endpoint(kv, catalog, changed, method, key, query, body, now).await
    };
    Some(out)
}

#[allow(clippy::too_many_arguments)]
async fn session(
    kv: &Mutex<Kv>,
    catalog: &Mutex<Catalog>,
    changed: &watch::Sender<u64>,
    agent: &str,
    method: &Method,
    what: &str,
    query: &[(String, String)],
    body: &[u8],
    now: Instant,
) -> Result<KvReply, ApiError> {
    let put = |m: &Method| {
        if m == Method::PUT {
            Ok(())
        } else {
            Err(m.clone())
        }
    };
    let get = |m: &Method| {
        if m == Method::GET {
            Ok(())
        } else {
            Err(m.clone())
        }
    };
    if what == "create" {
        if let Err(m) = put(method) {
            return method_not_allowed(&m, "PUT");
        }
        let id = {
            let mut c = lock(catalog);
            let idx = c.next_index();
            let id = lock(kv).session_create(&c, agent, body, idx, now)?;
            id
        };
        changed.send_modify(|v| *v += 1);
        return Ok(KvReply::json(&json!({ "ID": id })));
    }
    if let Some(id) = what
        .strip_prefix("destroy/")
        .or((what == "destroy").then_some(""))
    {
        if let Err(m) = put(method) {
            return method_not_allowed(&m, "PUT");
        }
        if id.is_empty() {
            return Err(ApiError(400, "Missing session".into()));
        }
        let destroyed = {
            let mut c = lock(catalog);
            let mut k = lock(kv);
            k.sessions.contains_key(id) && {
                let idx = c.next_index();
                k.session_destroy(id, idx, now)
            }
        };
        if destroyed {
            changed.send_modify(|v| *v += 1);
        }
        return Ok(KvReply::json(&json!(true)));
    }
    if let Some(id) = what
        .strip_prefix("renew/")
        .or((what == "renew").then_some(""))
    {
        if let Err(m) = put(method) {
            return method_not_allowed(&m, "PUT");
        }
        if id.is_empty() {
            return Err(ApiError(400, "Missing session".into()));
        }
        let mut k = lock(kv);
        return match k.session_renew(id, now) {
            Some(s) => Ok(KvReply::json(&json!([s]))),
            None => Err(ApiError(404, format!("Session id '{id}' not found"))),
        };
    }
    if let Some(id) = what
        .strip_prefix("info/")
        .or((what == "info").then_some(""))
    {
        if let Err(m) = get(method) {
            return method_not_allowed(&m, "GET");
        }
        if id.is_empty() {
            return Err(ApiError(400, "Missing session".into()));
        }
        let (v, idx) = blocking(query, changed, || lock(kv).session_info(id)).await?;
        return Ok(KvReply::json(&v).with_read_headers(idx));
    }
    if let Some(node) = what
        .strip_prefix("node/")
        .or((what == "node").then_some(""))
    {
        if let Err(m) = get(method) {
            return method_not_allowed(&m, "GET");
        }
        if node.is_empty() {
            return Err(ApiError(400, "Missing node name".into()));
        }
        let (v, idx) = blocking(query, changed, || lock(kv).session_list(Some(node))).await?;
        return Ok(KvReply::json(&v).with_read_headers(idx));
    }
    if what == "list" {
        if let Err(m) = get(method) {
            return method_not_allowed(&m, "GET");
        }
        let (v, idx) = blocking(query, changed, || lock(kv).session_list(None)).await?;
        return Ok(KvReply::json(&v).with_read_headers(idx));
    }
    Err(ApiError(404, String::new()))
}

#[allow(clippy::too_many_arguments)]
async fn kv_endpoint(
    kv: &Mutex<Kv>,
    catalog: &Mutex<Catalog>,
    changed: &watch::Sender<u64>,
    method: &Method,
    key: &str,
    query: &[(String, String)],
    body: &[u8],
    now: Instant,
) -> Result<KvReply, ApiError> {
    if method == Method::GET {
        if has(query, "keys") {
            let sep = param(query, "separator")
                .or(param(query, "seperator"))
                .unwrap_or("");
            let (keys, idx) = blocking(query, changed, || lock(kv).keys(key, sep)).await?;
            if keys.is_empty() && !key.is_empty() {
                return Ok(not_found(idx));
            }
            return Ok(KvReply::json(&json!(keys)).with_read_headers(idx));
        }
        if has(query, "recurse") {
            let (entries, idx) = blocking(query, changed, || lock(kv).list(key)).await?;
            if entries.is_empty() {
                return Ok(not_found(idx));
            }
            let list: Vec<Value> = entries.iter().map(|e| e.to_json(true)).collect();
            return Ok(KvReply::json(&Value::Array(list)).with_read_headers(idx));
        }
        if key.is_empty() {
            return Err(ApiError(400, "Missing key name".into()));
        }
        let (entry, idx) = blocking(query, changed, || lock(kv).get(key)).await?;
        let Some(entry) = entry else {
            return Ok(not_found(idx));
        };
        if has(query, "raw") {
            let mut r = KvReply {
                status: 200,
                body: Bytes::from(entry.value),
                json: false,
                headers: vec![
                    ("X-Content-Type-Options", "nosniff".into()),
                    ("Content-Security-Policy", "sandbox".into()),
                ],
            }
            .with_read_headers(idx);
            r.json = false;
            return Ok(r);
        }
        return Ok(KvReply::json(&json!([entry.to_json(true)])).with_read_headers(idx));
    }
    if method == Method::PUT {
        if key.is_empty() {
            return Err(ApiError(400, "Missing key name".into()));
        }
        conflicting(query, &["cas", "acquire", "release"])?;
        let flags = param(query, "flags")
            .map(parse_uint)
            .transpose()?
            .unwrap_or(0);
        let mut mode = PutMode::Set;
        if let Some(c) = param(query, "cas") {
            mode = PutMode::Cas(parse_uint(c)?);
        }
        if let Some(s) = param(query, "acquire") {
            mode = PutMode::Acquire(s.to_owned());
        }
        if let Some(s) = param(query, "release") {
            mode = PutMode::Release(s.to_owned());
        }
        if body.len() > MAX_VALUE_SIZE {
            return Err(ApiError(413, format!(
                "Request body({} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
                body.len()
            )));
        }
        let out = {
            let mut c = lock(catalog);
            let idx = c.next_index();
            lock(kv).put(key, body, flags, mode, idx, now)?
        };
        changed.send_modify(|v| *v += 1);
        return Ok(KvReply::json(&json!(out)));
    }
    if method == Method::DELETE {
        conflicting(query, &["recurse", "cas"])?;
        let recurse = has(query, "recurse");
        if !recurse && key.is_empty() {
            return Err(ApiError(400, "Missing key name".into()));
        }
        let cas = param(query, "cas").map(parse_uint).transpose()?;
        let out = {
            let mut c = lock(catalog);
            let idx = c.next_index();
            lock(kv).delete(key, recurse, cas, idx)
        };
        changed.send_modify(|v| *v += 1);
        return Ok(KvReply::json(&json!(out)));
    }
    method_not_allowed(method, "GET,PUT,DELETE")
}

fn not_found(idx: u64) -> KvReply {
    KvReply {
        status: 404,
        body: Bytes::new(),
        json: false,
        headers: Vec::new(),
    }
    .with_read_headers(idx)
}

/// Decodes a `/v1/txn` body: a list of `{"KV": {...}}` ops.
pub fn decode_txn(body: &[u8]) -> Result<Vec<TxnOp>, ApiError> {
    let bad = |e: String| ApiError(400, format!("Failed to parse body: {e}"));
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let list = v
        .as_array()
        .ok_or_else(|| bad("expected a list of operations".into()))?;
    let mut ops = Vec::with_capacity(list.len());
    for op in list {
        let kv = op
            .as_object()
            .and_then(|o| field(o, "KV"))
            .and_then(Value::as_object)
            .ok_or_else(|| bad("only KV operations are supported by the test agent".into()))?;
        let s = |k: &str| {
            field(kv, k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let n = |k: &str| field(kv, k).and_then(Value::as_u64).unwrap_or(0);
        let value = match field(kv, "Value") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => {
                base64_decode(s).map_err(|e| bad(format!("failed to decode value: {e}")))?
            }
            Some(other) => return Err(bad(format!("unexpected value type: {other}"))),
        };
        ops.push(TxnOp {
            verb: s("Verb"),
            key: s("Key"),
            value,
            flags: n("Flags"),
            index: n("Index"),
            session: s("Session"),
        });
    }
    Ok(ops)
}

fn txn(
    kv: &Mutex<Kv>,
    catalog: &Mutex<Catalog>,
    changed: &watch::Sender<u64>,
    method: &Method,
    query: &[(String, String)],
    body: &[u8],
    now: Instant,
) -> Result<KvReply, ApiError> {
    if method != Method::PUT {
        return method_not_allowed(method, "PUT");
    }
    let ops = decode_txn(body)?;
    if ops.len() > MAX_TXN_OPS {
        return Err(ApiError(
            413,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                ops.len()
            ),
        ));
    }
    if let Some(op) = ops.iter().find(|op| op.value.len() > MAX_VALUE_SIZE) {
        return Err(ApiError(
            413,
            format!(
                "Value for key {:?} is too large ({} > {MAX_VALUE_SIZE} bytes)",
                op.key,
                op.value.len()
            ),
        ));
    }
    let read_only = !ops.iter().any(TxnOp::is_write);
    if read_only && has(query, "stale") && has(query, "consistent") {
        return Err(ApiError(
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
        ));
    }
    let outcome = {
        let mut c = lock(catalog);
        let mut k = lock(kv);
        k.txn(&ops, || c.next_index(), now)
    };
    let mut r = KvReply::json(&outcome.to_json());
    match outcome {
        TxnOutcome::Ok(_) => {
            if !read_only {
                changed.send_modify(|v| *v += 1);
            }
        }
        TxnOutcome::Failed(_) => r.status = 409,
    }
    if read_only {
        r.headers.extend([
            ("X-Consul-KnownLeader", "true".into()),
            ("X-Consul-LastContact", "0".into()),
        ]);
    }
    Ok(r)
}
