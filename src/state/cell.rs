//! `State<T>`: an actor's durable state (see [`State`]).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{envelope, StateKey, StateStore, StoreError};
use crate::actor::output::{OutputGate, Persisted};
use crate::actor::{BoxError, Ctx};
use crate::util::BoxFuture;
use crate::Error;

/// Reads a row written with an older schema version: given that version
/// and the payload, returns the value (see [`State::load_with`]).
pub type Upgrade<T> = fn(u32, &[u8]) -> Result<T, BoxError>;

/// [`State<T>`]: an actor's durable state, the field it keeps it in.
///
/// ```no_run
/// use mesh::prelude::*;
/// use mesh::state::State;
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Balance { cents: i64 }
///
/// #[derive(Actor)]
/// #[actor(capability = "bank")]
/// struct Account {
///     #[state]
///     balance: State<Balance>,
/// }
///
/// #[derive(Message, Serialize, Deserialize)]
/// #[message(reply = i64)]
/// struct Deposit(i64);
///
/// #[mesh::handlers]
/// impl Account {
///     async fn deposit(&mut self, Deposit(n): Deposit) -> i64 {
///         self.balance.cents += n; // saved when the turn ends, before the reply
///         self.balance.cents
///     }
/// }
/// ```
///
/// Contract:
/// - **Loaded before the first message**: `#[derive(Actor)]` loads the
///   `#[state]` field in the default `activate` (an `activate = path`
///   function loads it itself with [`State::load`]). A row never written
///   loads as `T::default()`. In strong mode the load also claims the row
///   with the activation's fencing token.
/// - **Saved once per turn that changed it**: any `&mut` access marks it
///   changed; when the handler returns, the activation writes it (one
///   compare-and-set on the version, fenced in strong mode), and only then
///   is the reply sent (the output gate, `actor::output`). The turn's
///   changes are one write: atomic.
/// - **A failed or uncertain write** fails the call with
///   [`crate::Error::State`], drops the activation without its
///   `on_deactivate` hook (its memory may hold a change the store
///   refused), and the next call loads afresh. The same bytes are never
///   written again.
/// - `on_deactivate` is the activation's last turn: what it changes is
///   written after it (a failure is logged: nobody waits for it).
/// - [`State::save`] writes now, mid-turn (before a call whose callee must
///   see the change durable); [`State::clear`] resets the value to
///   `T::default()` and deletes the stored bytes at the end of the turn
///   (the row keeps its version: a tombstone).
/// - Reentrant actors (`&self` handlers) can read a `State`, not change it.
pub struct State<T> {
    value: T,
    bound: Bound,
}

/// Where the value is stored and what was last read or written.
struct Bound {
    store: Arc<dyn StateStore>,
    key: StateKey,
    actor: &'static str,
    version: u64,
    /// Strong mode: the activation's fencing token.
    token: Option<u64>,
    schema: u32,
    cleared: bool,
    gate: Arc<OutputGate>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for State<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("value", &self.value)
            .field("key", &self.bound.key)
            .field("version", &self.bound.version)
            .finish_non_exhaustive()
    }
}

impl<T> State<T>
where
    T: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    /// Loads the state of the activation `ctx` (schema version 1): the
    /// stored value, or `T::default()` if none was ever written. Strong
    /// mode claims the row with the activation's fencing token.
    pub async fn load(ctx: &Ctx) -> Result<State<T>, Error> {
        State::load_with(ctx, 1, None).await
    }

    /// The same for schema version `schema` of `T`: a row written with an
    /// older version is read by `upgrade` if given, else as `T` (serde's
    /// defaults fill added fields); a row written with a newer version
    /// than `schema` is refused ([`StoreError::Codec`]), so that an older
    /// build never writes back a newer row without the fields it does not
    /// know.
    pub async fn load_with(
        ctx: &Ctx,
        schema: u32,
        upgrade: Option<Upgrade<T>>,
    ) -> Result<State<T>, Error> {
        let (store, key, token) = ctx.state_binding()?;
        let actor = ctx.actor_name();
        let failed = |error| Error::State {
            actor: actor.to_owned(),
            id: key.id.to_string(),
            error,
        };
        let stored = store.load(&key, token).await.map_err(&failed)?;
        let value = match &stored.bytes {
            None => T::default(),
            Some(bytes) => decode(bytes, schema, upgrade).map_err(&failed)?,
        };
        let gate = ctx.open_output_gate();
        gate.clean();
        Ok(State {
            value,
            bound: Bound {
                store,
                key,
                actor,
                version: stored.version,
                token,
                schema,
                cleared: false,
                gate,
            },
        })
    }

    /// Writes the state now if it changed (mid-turn: before a call whose
    /// callee must see the change durable). A failure is the turn's: the
    /// activation ends after it, as for a failed end-of-turn write.
    pub async fn save(&mut self) -> Result<(), Error> {
        if !self.bound.gate.is_dirty() {
            return Ok(());
        }
        let bytes = if self.bound.cleared {
            None
        } else {
            let encoded = envelope::encode(self.bound.schema, &self.value)
                .map_err(|e| self.failed(StoreError::Codec(e.to_string().into())))?;
            Some(encoded)
        };
        let b = &self.bound;
        let written = b
            .store
            .save(&b.key, b.version, b.token, bytes.as_deref())
            .await;
        match written {
            Ok(version) => {
                self.bound.version = version;
                self.bound.cleared = false;
                self.bound.gate.clean();
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Resets the value to `T::default()` and deletes the stored bytes
    /// when the turn ends.
    pub fn clear(&mut self) {
        self.value = T::default();
        self.bound.cleared = true;
        self.bound.gate.mark();
    }

    /// The stored version this value was read at or last written as (0:
    /// never written).
    pub fn version(&self) -> u64 {
        self.bound.version
    }

    fn failed(&self, error: StoreError) -> Error {
        Error::State {
            actor: self.bound.actor.to_owned(),
            id: self.bound.key.id.to_string(),
            error,
        }
    }
}

/// Decodes a stored row for schema `schema`.
fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    schema: u32,
    upgrade: Option<Upgrade<T>>,
) -> Result<T, StoreError> {
    let codec = |e: &dyn std::fmt::Display| StoreError::Codec(e.to_string().into());
    let (stored, payload) = envelope::open(bytes).map_err(|e| codec(&e))?;
    if stored > schema {
        return Err(StoreError::Codec(format!(
            "the row was written with schema {stored}, newer than this build's {schema}: deploy the newer build everywhere before it writes"
        ).into()));
    }
    match upgrade {
        Some(up) if stored < schema => up(stored, payload).map_err(|e| codec(&e)),
        _ => envelope::decode(payload).map_err(|e| codec(&e)),
    }
}

impl<T> Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

/// A `&mut` access marks the state changed: it is written when the turn
/// ends.
impl<T> DerefMut for State<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.bound.gate.mark();
        &mut self.value
    }
}

impl<T> Persisted for State<T>
where
    T: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    fn commit(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.save())
    }
}
