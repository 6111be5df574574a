//! Durable actor state: the store boundary ([`StateStore`]), the stores
//! mesh ships, and the envelope state is written in.
//!
//! A store keeps one **row** per actor: keyed by the actor type
//! (`<capability>/<actor>`, [`StateKey::kind`]) and the id, with the id's
//! shard beside it. A row has
//!
//! - a **version**: the writes it has had (0: never written);
//! - a **fence**: the highest fencing token a strong-mode owner claimed it
//!   or wrote it with (0: none);
//! - its **bytes** ([`envelope`]), or none (never written, or cleared: a
//!   cleared row stays, with its version and fence, so that a stale
//!   writer's compare-and-set still fails).
//!
//! ## The contract every store keeps
//!
//! The conformance suite (`mesh_testkit::state_conformance`) checks each of
//! these against every store mesh ships, and is there for yours.
//!
//! - [`StateStore::load`] without a token reads the row. With a token
//!   (strong mode) it also **claims** the row, in the same atomic
//!   operation: refused with [`StoreError::Fenced`] if the stored fence is
//!   higher; otherwise the fence becomes the token. From then on a write
//!   with a lower token is refused, even before the new owner's first
//!   write: a paused old owner cannot write after its successor loaded.
//! - [`StateStore::save`] is one atomic compare-and-set: refused with
//!   [`StoreError::Fenced`] if a token is given and the stored fence is
//!   higher, then with [`StoreError::Conflict`] if the stored version is
//!   not the one expected; otherwise the row gets version `expected + 1`,
//!   the token as its fence (if given), and the bytes (`None` clears it).
//!   Never last-writer-wins: two activations of one id (eventual mode, for
//!   a moment) cannot both write on top of the same version.
//! - `Ok` from `save` means durable, as the store defines it (the embedded
//!   store: an fsync'd commit; PostgreSQL: a committed transaction).
//!   [`StoreError::Uncertain`] means the store cannot say whether the
//!   write happened (a commit that failed half way, a lost connection
//!   after the send): the caller must drop what it holds and load again,
//!   never resend the same bytes on top of a version it no longer knows.
//! - Cancel: dropping a `save` future does not undo a write already sent;
//!   its outcome is unknown, as with `Uncertain`. Dropping a `load` future
//!   may still leave its claim in place (the fence only grows).
//! - Bounded: a store refuses bytes above its limit with
//!   [`StoreError::TooLarge`] before writing anything, and never allocates
//!   more than its limit for a row it reads back (a row over the limit is
//!   an error, not an allocation).
//! - Without a token, the fence is neither checked nor changed (eventual
//!   mode). A cluster runs one mode: mixing them gives eventual mode's
//!   guarantee only.
//!
//! ## Reminders
//!
//! A store also keeps durable reminders ([`ReminderRow`]: an actor's named
//! schedule, its next tick and period), the ground the reminders of issue
//! 23 stand on. Each is keyed by (kind, id, name), with the id's shard,
//! and written by the rules of a state row, on a version and a fence of
//! its own: [`StateStore::put_reminder`] and
//! [`StateStore::delete_reminder`] are compare-and-sets on the version
//! (0: it does not exist; a delete leaves a tombstone that keeps the
//! version and fence and counts as absent, so a reminder's versions only
//! grow across a cancel and a new registration), fenced like
//! [`StateStore::save`]; [`StateStore::reminders_of`] lists an actor's by
//! name; [`StateStore::reminders_due`] gives those of a kind in a set of
//! shards due before a time, earliest first (what a shard's owner loads).
//! A payload is bounded like a row's bytes. The methods have defaults
//! that refuse ([`StoreError::Unavailable`]), so a store written before
//! them still builds; `mesh_testkit::state::check_reminders` is their
//! conformance suite, passed by the three stores mesh ships.

mod cell;
pub mod envelope;
mod memory;
pub(crate) mod observed;
#[cfg(feature = "postgres")]
mod pg_tls;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redb")]
mod redb;

pub use cell::{State, Upgrade};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgOptions, PgStore};
#[cfg(feature = "redb")]
pub use redb::{RedbOptions, RedbStore};

pub use crate::util::BoxFuture;

use std::sync::Arc;

/// The largest row a store accepts unless told otherwise: 1 MiB.
pub const DEFAULT_MAX_ROW: usize = 1 << 20;

/// Which row: the actor type, the id, and the id's shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateKey {
    /// The actor type, `<capability>/<actor name>`.
    pub kind: Arc<str>,
    /// The actor's id.
    pub id: Arc<str>,
    /// The id's shard ([`crate::ring::shard`]), stored beside the row so
    /// that an owner can find the rows of its shards.
    pub shard: u16,
}

impl StateKey {
    /// The key of `id` of the actor type `kind` (`<capability>/<actor>`).
    pub fn new(kind: impl Into<Arc<str>>, id: impl Into<Arc<str>>) -> StateKey {
        let id = id.into();
        StateKey {
            kind: kind.into(),
            shard: crate::ring::shard(&id),
            id,
        }
    }
}

/// A durable reminder, as a store keeps it: named per actor, with its
/// next tick and its period. Keyed by (kind, id, name); `shard` is the
/// id's, so that a shard's owner can load its shards' reminders due soon
/// ([`StateStore::reminders_due`]). Written with the same compare-and-set
/// and fence rules as a state row, on a version and a fence of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReminderRow {
    /// The actor's row: kind, id and shard.
    pub key: StateKey,
    /// The reminder's name, unique per actor.
    pub name: Arc<str>,
    /// The next tick, in milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// The period in milliseconds; 0: once.
    pub period_ms: u64,
    /// The reminder's settings and data ([`envelope`]).
    pub payload: Vec<u8>,
    /// Its writes so far, as read (0: never written).
    pub version: u64,
}

/// A row as loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Its version: the writes it has had (0: never written).
    pub version: u64,
    /// Its bytes; `None`: never written, or cleared.
    pub bytes: Option<Vec<u8>>,
}

pub use crate::error::StoreError;

/// A durable store of actor state. See the [module docs](self) for the
/// contract; `mesh_testkit::state_conformance` checks it.
pub trait StateStore: Send + Sync + 'static {
    /// A short name for logs and the admin endpoint (`"memory"`,
    /// `"redb"`, `"postgres"`).
    fn name(&self) -> &'static str;

    /// Reads the row of `key`; with `claim`, also raises its fence to that
    /// token in the same atomic operation (refused if it is higher).
    fn load<'a>(
        &'a self,
        key: &'a StateKey,
        claim: Option<u64>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>>;

    /// Writes `bytes` (`None`: clears) if the stored version is
    /// `expected` (and, with `token`, the stored fence is not higher);
    /// returns the new version, `expected + 1`.
    fn save<'a>(
        &'a self,
        key: &'a StateKey,
        expected: u64,
        token: Option<u64>,
        bytes: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Writes reminder `row` (its `version` is ignored) if its stored
    /// version is `expected` (0: it does not exist) and, with `token`, its
    /// stored fence is not higher: the rules of [`StateStore::save`]
    /// (expected 0 also matches a deleted reminder). Returns the new
    /// version: one more than the stored one, a deleted reminder's
    /// tombstone included (so not always `expected + 1`). A store without
    /// reminders refuses
    /// ([`StoreError::Unavailable`], the default).
    fn put_reminder<'a>(
        &'a self,
        row: &'a ReminderRow,
        expected: u64,
        token: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let _ = (row, expected, token);
        Box::pin(std::future::ready(Err(no_reminders(self.name()))))
    }

    /// Deletes reminder `name` of `key` if its stored version is
    /// `expected` (and the fence allows `token`): the same rules. It
    /// leaves a tombstone (the version, one more, and the fence) that
    /// [`StateStore::reminders_of`] and [`StateStore::reminders_due`] do
    /// not list; expected 0 on an absent or deleted reminder is `Ok` and
    /// writes nothing.
    fn delete_reminder<'a>(
        &'a self,
        key: &'a StateKey,
        name: &'a str,
        expected: u64,
        token: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (key, name, expected, token);
        Box::pin(std::future::ready(Err(no_reminders(self.name()))))
    }

    /// The reminders of `key`'s actor, by name.
    fn reminders_of<'a>(
        &'a self,
        key: &'a StateKey,
    ) -> BoxFuture<'a, Result<Vec<ReminderRow>, StoreError>> {
        let _ = key;
        Box::pin(std::future::ready(Err(no_reminders(self.name()))))
    }

    /// The reminders of actor type `kind` whose id is in one of `shards`
    /// and whose next tick is before `before_ms`, earliest first, at most
    /// `limit` of them.
    fn reminders_due<'a>(
        &'a self,
        kind: &'a str,
        shards: &'a [u16],
        before_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ReminderRow>, StoreError>> {
        let _ = (kind, shards, before_ms, limit);
        Box::pin(std::future::ready(Err(no_reminders(self.name()))))
    }
}

/// What a store without reminders answers.
fn no_reminders(store: &str) -> StoreError {
    StoreError::Unavailable(format!("the {store} store keeps no reminders").into())
}

/// What every store decides, given a row's version and fence (`None`: no
/// row): the outcome of a save, before it writes. One rule, so that the
/// stores cannot disagree.
pub(crate) fn check_save(
    row: Option<(u64, u64)>,
    expected: u64,
    token: Option<u64>,
) -> Result<(), StoreError> {
    let (version, fence) = row.unwrap_or((0, 0));
    if let Some(token) = token {
        if fence > token {
            return Err(StoreError::Fenced {
                token,
                stored: fence,
            });
        }
    }
    if version != expected {
        return Err(StoreError::Conflict {
            expected,
            stored: version,
        });
    }
    Ok(())
}

/// What every store decides for a reminder's put or delete, given its
/// stored version, fence and whether it is live (`None`: never written):
/// the new version. A deleted reminder is a tombstone that keeps its
/// version and fence and counts as absent (expected 0), so versions only
/// grow: a writer that read the deleted one cannot write over a new
/// registration of the same name, whose version is higher.
pub(crate) fn check_reminder(
    row: Option<(u64, u64, bool)>,
    expected: u64,
    token: Option<u64>,
) -> Result<u64, StoreError> {
    let (version, fence, live) = row.unwrap_or((0, 0, false));
    check_save(
        Some((if live { version } else { 0 }, fence)),
        expected,
        token,
    )?;
    Ok(version + 1)
}

/// The same for a claim.
pub(crate) fn check_claim(row: Option<(u64, u64)>, token: u64) -> Result<(), StoreError> {
    let fence = row.map_or(0, |(_, f)| f);
    if fence > token {
        return Err(StoreError::Fenced {
            token,
            stored: fence,
        });
    }
    Ok(())
}

/// Refuses `bytes` over `limit`.
pub(crate) fn check_size(bytes: Option<&[u8]>, limit: usize) -> Result<(), StoreError> {
    match bytes {
        Some(b) if b.len() > limit => Err(StoreError::TooLarge {
            size: b.len(),
            limit,
        }),
        _ => Ok(()),
    }
}
