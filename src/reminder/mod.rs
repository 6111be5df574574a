//! Durable reminders: named schedules per actor that outlive their
//! activation, their node and restarts, kept in the node's state store and
//! fired by the owner of the actor's shard.
//!
//! An actor that takes reminders handles [`Tick`] in its
//! `#[mesh::handlers]` block and returns `Ok(())` to acknowledge a tick.
//! A reminder is registered, replaced, cancelled and listed through
//! [`Reminders`]: from a handler with `ctx.reminders()`, from outside with
//! `node.reminders::<A>(id)`.
//!
//! ```no_run
//! # use mesh::prelude::*;
//! use mesh::reminder::{Schedule, Tick};
//! use std::time::Duration;
//!
//! #[derive(Actor, Default)]
//! #[actor(capability = "billing")]
//! struct Tenant { runs: u64 }
//!
//! #[derive(Message, Serialize, Deserialize)]
//! #[message(reply = Result<(), String>)]
//! struct Start;
//!
//! #[mesh::handlers]
//! impl Tenant {
//!     async fn start(&mut self, _: Start, ctx: &Ctx) -> Result<(), String> {
//!         ctx.reminders()
//!             .register("bill", Schedule::every(Duration::from_secs(86_400)), &())
//!             .await
//!             .map_err(|e| e.to_string())
//!     }
//!     async fn tick(&mut self, tick: Tick) -> Result<(), String> {
//!         self.runs += 1; // a failed tick (Err) is delivered again
//!         Ok(())
//!     }
//! }
//! ```
//!
//! ## Contracts
//!
//! - **Durable before it returns**: `register` and `cancel` return once
//!   the store's write is durable (one compare-and-set on the reminder's
//!   row, after reading its version). A registration replaces the
//!   reminder of that name.
//! - **Fired by the owner**: the node that owns the actor's shard (in
//!   strong mode, the holder of its lease) loads its shards' reminders due
//!   within [`ReminderOptions::window`], every
//!   [`ReminderOptions::refresh`] and when its ring changes; a tick is a
//!   message in turn with the actor's others, and activates it if it is
//!   passivated. When the ring moves a shard, the new owner loads its
//!   reminders at its next refresh.
//! - **Never early; at least once**: a tick is never delivered before its
//!   time. It is acknowledged when its handler returns `Ok(())` (after the
//!   turn's state write, if the turn changed the actor's state); then the
//!   schedule advances with a compare-and-set on the row (fenced with the
//!   shard's token in strong mode, so a paused old owner cannot advance a
//!   moved reminder). A tick whose handler failed, timed out or panicked,
//!   or whose node died before the advance was written, is delivered
//!   again, after a backoff ([`ReminderOptions::retry`], doubling to
//!   [`ReminderOptions::max_retry`]).
//! - **Where duplicates come from**: only from a tick delivered whose
//!   advance was not written (the node died or lost the row between the
//!   two), and in eventual mode from two nodes that both owned a shard for
//!   a moment (a topology change): the second advance fails its
//!   compare-and-set, but its delivery happened. Strong mode has only the
//!   first kind. A handler that must not act twice keeps the last tick's
//!   [`Tick::due`] in its state and ignores one at or before it.
//! - **Missed ticks** (no node could fire them: the cluster was down): per
//!   reminder, [`Missed`]. After a start the keeper fires under a **slow
//!   start** (at most [`ReminderOptions::initial_concurrency`] ticks in
//!   flight, doubling every [`ReminderOptions::ramp`] up to
//!   [`ReminderOptions::max_concurrency`]) and a **budget** of
//!   [`ReminderOptions::budget`] ticks per second, so that a cluster back
//!   after an outage does not flood its actors or its store.
//! - **Registered from another node**: written to the store at once; the
//!   owner sees it at its next refresh (a registration from the owner
//!   node, such as from the actor itself, is seen at once). Likewise a
//!   cancel from another node: the owner may deliver a tick it had loaded
//!   until its next refresh. Cancel from the actor for an immediate stop.
//! - **Cancel and drop**: dropping a `register` or `cancel` future after
//!   its write was sent leaves the outcome unknown, as a state write.

mod keeper;
mod policy;

pub(crate) use keeper::{Host, Keeper, Kind};

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::state::{ReminderRow, StateKey, StateStore, StoreError};

/// The envelope schema of a reminder's stored payload.
const PAYLOAD_SCHEMA: u32 = 1;

/// The longest reminder name: 255 bytes.
pub const MAX_NAME: usize = 255;

/// A reminder's tick, delivered to its actor as a message. Handle it in
/// the `#[mesh::handlers]` block; reply `Ok(())` to acknowledge it, or
/// `Err(reason)` to have it delivered again after a backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// The reminder's name.
    pub name: String,
    /// When this tick was due, in milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// The earlier ticks this one stands for ([`Missed::Once`]) or that
    /// were dropped before it ([`Missed::Burst`]); 0 in the usual case.
    pub missed: u64,
    /// The data given at registration (MessagePack: read it with
    /// [`Tick::data`]).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl crate::Message for Tick {
    type Reply = Result<(), String>;
    const NAME: &'static str = "mesh.Tick";
}

impl Tick {
    /// When this tick was due.
    pub fn due(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.due_ms)
    }

    /// The data given at registration, decoded as `T`.
    pub fn data<T: serde::de::DeserializeOwned>(&self) -> Result<T, ReminderError> {
        rmp_serde::from_slice(&self.data).map_err(|e| ReminderError::Codec(e.to_string()))
    }
}

/// What a periodic reminder does with ticks no node could fire in time
/// (the node or the cluster was down). A tick merely late (its successor
/// not yet due) fires under every policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Missed {
    /// Fire none of them; go on with the first tick after now (Orleans'
    /// reminders).
    Skip,
    /// Fire once for all of them ([`Tick::missed`] says how many), then go
    /// on with the first tick after now. The default.
    #[default]
    Once,
    /// Fire each, one after the other, up to this many (the latest ones;
    /// the older are dropped and counted in [`Tick::missed`]).
    Burst(u32),
}

/// When a reminder fires: once, at a time or after a delay, or
/// periodically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    first: First,
    period: Option<Duration>,
    missed: Missed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    At(SystemTime),
    After(Duration),
}

impl Schedule {
    /// Once, at `time` (a time already past fires at once).
    pub fn at(time: SystemTime) -> Schedule {
        Schedule {
            first: First::At(time),
            period: None,
            missed: Missed::default(),
        }
    }

    /// Once, `delay` from now.
    pub fn after(delay: Duration) -> Schedule {
        Schedule {
            first: First::After(delay),
            period: None,
            missed: Missed::default(),
        }
    }

    /// Every `period` (at least 1 ms), the first one period from now.
    pub fn every(period: Duration) -> Schedule {
        Schedule {
            first: First::After(period),
            period: Some(period),
            missed: Missed::default(),
        }
    }

    /// A periodic schedule's first tick at `time` instead.
    pub fn starting_at(mut self, time: SystemTime) -> Schedule {
        self.first = First::At(time);
        self
    }

    /// A periodic schedule's first tick `delay` from now instead.
    pub fn starting_after(mut self, delay: Duration) -> Schedule {
        self.first = First::After(delay);
        self
    }

    /// What to do with missed ticks ([`Missed::Once`] unless set).
    pub fn missed(mut self, missed: Missed) -> Schedule {
        self.missed = missed;
        self
    }

    /// The first tick (Unix ms) for a registration at `now_ms`, and the
    /// period in ms (0: once).
    fn resolve(&self, now_ms: u64) -> Result<(u64, u64), ReminderError> {
        let period = match self.period {
            None => 0,
            Some(p) => {
                let ms = u64::try_from(p.as_millis()).unwrap_or(u64::MAX);
                if ms == 0 {
                    return Err(ReminderError::Invalid(
                        "a periodic reminder's period must be at least 1 ms".into(),
                    ));
                }
                ms
            }
        };
        let first = match self.first {
            First::At(t) => unix_ms(t),
            First::After(d) => {
                now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
        };
        Ok((first, period))
    }
}

/// A reminder as [`Reminders::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reminder {
    /// Its name.
    pub name: String,
    /// Its next tick, in milliseconds since the Unix epoch.
    pub next_ms: u64,
    /// Its period; `None`: once.
    pub period: Option<Duration>,
    /// Its missed-tick policy.
    pub missed: Missed,
    /// Its writes so far (registrations and advances).
    pub version: u64,
}

/// Why a reminder could not be registered, cancelled or listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReminderError {
    /// The store refused or failed (see [`StoreError`]: `Fenced` means
    /// this activation lost its shard; `Unavailable` includes a store that
    /// keeps no reminders).
    #[error("reminder store: {0}")]
    Store(#[from] StoreError),
    /// The node has no state store (`NodeBuilder::state`).
    #[error("this node has no state store: reminders are kept in it (give one with NodeBuilder::state(..), such as mesh::state::RedbStore::open(\"state.redb\")?)")]
    NoStore,
    /// The actor type has no handler for [`Tick`].
    #[error("{actor} has no handler for mesh::reminder::Tick: add `async fn tick(&mut self, tick: Tick) -> Result<(), String>` to its #[mesh::handlers] block")]
    NoTickHandler {
        /// The actor type.
        actor: String,
    },
    /// A name or a schedule out of bounds.
    #[error("invalid reminder: {0}")]
    Invalid(String),
    /// The data would not encode, or a stored reminder would not decode.
    #[error("reminder codec: {0}")]
    Codec(String),
}

/// The settings of a node's reminder keeper: `NodeBuilder::reminders`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReminderOptions {
    /// How often the keeper reloads its shards' reminders from the store
    /// (and so how soon it sees one registered from another node, or a
    /// shard it gained): 1 s.
    pub refresh: Duration,
    /// How far ahead it loads: reminders due within this window are held
    /// in memory until due: 5 s.
    pub window: Duration,
    /// The most reminders one load brings into memory, per actor type:
    /// 100 000 (the earliest; the rest come as these fire).
    pub max_loaded: usize,
    /// Slow start: the ticks in flight at once right after the node
    /// starts: 16.
    pub initial_concurrency: usize,
    /// How often the limit doubles: 1 s.
    pub ramp: Duration,
    /// The limit it stops doubling at: 4096.
    pub max_concurrency: usize,
    /// The ticks per second the node delivers at most (a token bucket of
    /// one second's worth): 20 000.
    pub budget: u32,
    /// The first backoff of a failed tick: 1 s.
    pub retry: Duration,
    /// The longest backoff: 60 s.
    pub max_retry: Duration,
    /// How long a tick's handler may take before the delivery counts as
    /// failed: 30 s.
    pub timeout: Duration,
}

impl Default for ReminderOptions {
    fn default() -> Self {
        ReminderOptions {
            refresh: Duration::from_secs(1),
            window: Duration::from_secs(5),
            max_loaded: 100_000,
            initial_concurrency: 16,
            ramp: Duration::from_secs(1),
            max_concurrency: 4096,
            budget: 20_000,
            retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }
}

/// The settings and data of a reminder, as stored in its row's payload.
#[derive(Serialize, Deserialize)]
struct Payload<'a> {
    missed: Missed,
    #[serde(with = "serde_bytes", borrow)]
    data: std::borrow::Cow<'a, [u8]>,
}

/// Encodes a row's payload.
fn encode_payload(missed: Missed, data: &[u8]) -> Result<Vec<u8>, ReminderError> {
    crate::state::envelope::encode(
        PAYLOAD_SCHEMA,
        &Payload {
            missed,
            data: data.into(),
        },
    )
    .map_err(|e| ReminderError::Codec(e.to_string()))
}

/// Decodes a row's payload: its policy and data.
pub(crate) fn decode_payload(bytes: &[u8]) -> Result<(Missed, Vec<u8>), ReminderError> {
    let (_, body) =
        crate::state::envelope::open(bytes).map_err(|e| ReminderError::Codec(e.to_string()))?;
    let p: Payload<'_> =
        rmp_serde::from_slice(body).map_err(|e| ReminderError::Codec(e.to_string()))?;
    Ok((p.missed, p.data.into_owned()))
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// An actor's reminders: register, replace, cancel and list them. From a
/// handler: `ctx.reminders()`; from outside: `node.reminders::<A>(id)`.
/// See the [module docs](self) for the contracts.
#[derive(Clone)]
pub struct Reminders {
    pub(crate) inner: Result<Bound, ReminderError>,
}

/// A [`Reminders`] bound to its store and row.
#[derive(Clone)]
pub(crate) struct Bound {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) key: StateKey,
    /// Strong mode, from the actor's own activation: its token.
    pub(crate) token: Option<u64>,
    /// The node's keeper, told of each change at once.
    pub(crate) keeper: Option<Keeper>,
}

impl std::fmt::Debug for Reminders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Ok(b) => f
                .debug_struct("Reminders")
                .field("kind", &b.key.kind)
                .field("id", &b.key.id)
                .finish_non_exhaustive(),
            Err(e) => f.debug_tuple("Reminders").field(e).finish(),
        }
    }
}

impl Reminders {
    fn bound(&self) -> Result<&Bound, ReminderError> {
        self.inner.as_ref().map_err(Clone::clone)
    }

    /// Registers reminder `name` (replacing the one of that name) to fire
    /// as `schedule` says, with `data` (MessagePack) in each [`Tick`].
    /// Returns once the store's write is durable.
    pub async fn register<T: Serialize + ?Sized>(
        &self,
        name: &str,
        schedule: Schedule,
        data: &T,
    ) -> Result<(), ReminderError> {
        let b = self.bound()?;
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(ReminderError::Invalid(format!(
                "a reminder's name is 1 to {MAX_NAME} bytes, not {}",
                name.len()
            )));
        }
        let data = rmp_serde::to_vec(data).map_err(|e| ReminderError::Codec(e.to_string()))?;
        let (due_ms, period_ms) = schedule.resolve(now_ms())?;
        let mut row = ReminderRow {
            key: b.key.clone(),
            name: name.into(),
            due_ms,
            period_ms,
            payload: encode_payload(schedule.missed, &data)?,
            version: 0,
        };
        // Read its version, write on top; once more if another write came
        // between the two.
        let mut tries = 0;
        loop {
            let expected = b.version_of(name).await?;
            match b.store.put_reminder(&row, expected, b.token).await {
                Ok(v) => {
                    row.version = v;
                    if let Some(k) = &b.keeper {
                        k.changed(row);
                    }
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) if tries == 0 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Cancels reminder `name`; returns whether there was one. Durable
    /// once it returns.
    pub async fn cancel(&self, name: &str) -> Result<bool, ReminderError> {
        let b = self.bound()?;
        let mut tries = 0;
        loop {
            let expected = b.version_of(name).await?;
            if expected == 0 {
                return Ok(false);
            }
            match b
                .store
                .delete_reminder(&b.key, name, expected, b.token)
                .await
            {
                Ok(()) => {
                    if let Some(k) = &b.keeper {
                        k.cancelled(&b.key, name);
                    }
                    return Ok(true);
                }
                Err(StoreError::Conflict { .. }) if tries == 0 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The actor's reminders, by name.
    pub async fn list(&self) -> Result<Vec<Reminder>, ReminderError> {
        let b = self.bound()?;
        b.store
            .reminders_of(&b.key)
            .await?
            .into_iter()
            .map(|r| {
                let (missed, _) = decode_payload(&r.payload)?;
                Ok(Reminder {
                    name: r.name.to_string(),
                    next_ms: r.due_ms,
                    period: (r.period_ms > 0).then(|| Duration::from_millis(r.period_ms)),
                    missed,
                    version: r.version,
                })
            })
            .collect()
    }
}

impl Bound {
    /// The stored version of reminder `name` (0: none).
    async fn version_of(&self, name: &str) -> Result<u64, ReminderError> {
        Ok(self
            .store
            .reminders_of(&self.key)
            .await?
            .iter()
            .find(|r| &*r.name == name)
            .map_or(0, |r| r.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_round_trips_and_garbage_is_an_error() {
        let p = encode_payload(Missed::Burst(7), b"abc").unwrap();
        assert_eq!(
            decode_payload(&p).unwrap(),
            (Missed::Burst(7), b"abc".to_vec())
        );
        assert!(decode_payload(b"MS\x01\0\0\0\x01\xff").is_err());
        assert!(decode_payload(b"").is_err());
    }

    #[test]
    fn schedules_resolve_against_now() {
        let now = 1_000_000;
        assert_eq!(
            Schedule::after(Duration::from_millis(5))
                .resolve(now)
                .unwrap(),
            (now + 5, 0)
        );
        assert_eq!(
            Schedule::every(Duration::from_secs(1))
                .resolve(now)
                .unwrap(),
            (now + 1000, 1000)
        );
        let at = UNIX_EPOCH + Duration::from_millis(42);
        assert_eq!(
            Schedule::every(Duration::from_millis(10))
                .starting_at(at)
                .resolve(now)
                .unwrap(),
            (42, 10)
        );
        assert!(Schedule::every(Duration::ZERO).resolve(now).is_err());
    }
}
