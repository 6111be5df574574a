//! What an actor is: the [`Actor`], [`Message`], [`Handler`] and [`Handlers`]
//! traits, and the [`Ctx`] a handler sees.
//!
//! Users do not implement these traits by hand: `#[derive(Actor)]`,
//! `#[derive(Message)]` and `#[mesh::handlers]` generate them. They are public
//! so that bounds can name them and so that their contracts are documented in
//! one place.

pub(crate) mod chain;
mod ctx;
pub(crate) mod finish;
pub(crate) mod output;
pub(crate) mod reply;
pub mod timer;

pub(crate) use ctx::NodeRef;
pub use ctx::{Ctx, MissingDependency};

/// The wire tag of `M` when sent to actor type `A` (see
/// [`crate::wire::tag`]; `wire` names no actor trait, so this lives here).
pub const fn tag_of<A: Handler<M>, M: Message>() -> u64 {
    <A as Handler<M>>::TAG
}
pub use reply::ReplyTo;

use std::future::Future;
use std::time::Duration;

use crate::wire::Wire;
use crate::Error;

/// The error an activation function may return: anything convertible into a
/// boxed error (`String`, `&str`, any `std::error::Error`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The idle timeout of an actor that does not set one: 10 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The mailbox capacity of an actor that does not set one.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 1024;

/// A virtual actor type. Derive it: `#[derive(Actor)]` with
/// `#[actor(capability = "...")]`.
///
/// An actor of this type exists for every id (a `&str`); it is activated on
/// first use by [`Actor::activate`] on the node that owns the id's shard for
/// [`Actor::CAPABILITY`], and passivated after [`Actor::IDLE_TIMEOUT`]
/// without messages.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a mesh actor",
    label = "not an actor",
    note = "add `#[derive(mesh::Actor)]` and `#[actor(capability = \"...\")]` to `{Self}`"
)]
pub trait Actor: Sized + Send + 'static {
    /// The actor type's name, used in errors, logs and metrics, and on the
    /// wire: it is part of every wire tag of the type, and nodes advertise
    /// the types they host by it. Defaults to the type's identifier
    /// (`#[actor(name = "...")]` overrides). Two types of one name in one
    /// capability are one actor type to the cluster (two builds of it).
    const NAME: &'static str;

    /// The capability of this actor type: it is placed on the nodes of this
    /// capability that host it.
    const CAPABILITY: &'static str;

    /// How long an activation may stay without messages before it is
    /// passivated; `None` keeps it until shutdown.
    const IDLE_TIMEOUT: Option<Duration> = Some(DEFAULT_IDLE_TIMEOUT);

    /// How many messages the mailbox holds before new ones are refused with
    /// [`Error::MailboxFull`].
    const MAILBOX_CAPACITY: usize = DEFAULT_MAILBOX_CAPACITY;

    /// The routing key of [`Actor::CAPABILITY`]; not to be overridden.
    #[doc(hidden)]
    const __CAPABILITY_KEY: u64 = crate::ring::capability_key(Self::CAPABILITY);

    /// The routing key of this actor type ([`crate::ring::actor_key`]);
    /// not to be overridden.
    #[doc(hidden)]
    const __ACTOR_KEY: u64 = crate::ring::actor_key(Self::CAPABILITY, Self::NAME);

    /// Creates the actor's state for `id` on activation. The derive uses
    /// `Default` unless `#[actor(activate = path)]` names an async function
    /// `fn(&str) -> Result<Self, E>` or `fn(&str, &Ctx) -> Result<Self, E>`
    /// (the second reads the node's provided values: [`Ctx::get`]). An
    /// error fails every call waiting for this activation with
    /// [`Error::ActivationFailed`]; the next call tries again.
    fn activate<'a>(
        id: &'a str,
        ctx: &'a Ctx,
    ) -> impl Future<Output = Result<Self, BoxError>> + Send + 'a;

    /// Runs when the activation is passivated or the node shuts down
    /// (`#[actor(on_deactivate = path)]`, an async `fn(&mut self, &Ctx)` or `fn(&mut self)`).
    /// Not run after a handler panicked: the state may be inconsistent.
    fn on_deactivate(&mut self, ctx: &Ctx) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }

    /// The actor's durable state, its `#[state]` field
    /// ([`crate::state::State`]); `None` for an actor without one. The
    /// derive writes it; not to be written by hand.
    #[doc(hidden)]
    fn __state(&mut self) -> Option<&mut dyn output::Persisted> {
        None
    }
}

/// A message: a serializable value with a reply type. Derive it:
/// `#[derive(Message, Serialize, Deserialize)]` with `#[message(reply = T)]`.
///
/// Both the message and its reply must cross the wire, so both are
/// `Serialize + DeserializeOwned`: a message that cannot is a compile error.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a mesh message",
    label = "not a message",
    note = "add `#[derive(mesh::Message)]` and `#[message(reply = T)]` to `{Self}`"
)]
pub trait Message: Wire {
    /// What a handler of this message returns to the caller.
    type Reply: Wire;

    /// The message's wire name: the type's identifier unless
    /// `#[message(name = "...")]` sets one. With the actor's capability and
    /// name it makes the wire tag, so renaming or moving the Rust type changes
    /// nothing on the wire as long as this name stays.
    const NAME: &'static str;
}

/// An actor's handler set: the `#[mesh::handlers]` block. The generated
/// implementation holds the typed dispatch and the wire dispatch table.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no `#[mesh::handlers]` block",
    label = "no handlers",
    note = "write the handlers of `{Self}` in an `impl` block marked `#[mesh::handlers]`"
)]
pub trait Handlers: Actor {
    /// The typed envelope of every message this actor handles.
    #[doc(hidden)]
    type Envelope: Send + 'static;

    /// The wire table: `(tag, message name)` for every handler.
    const MESSAGES: &'static [(u64, &'static str)];

    /// Whether a call made within a chain that already passes through an
    /// activation of this actor is served interleaved with the handler
    /// waiting in that chain, instead of failing with
    /// [`Error::CallCycle`]: `#[mesh::handlers(reentrant)]`, whose
    /// handlers take `&self` (see `actor::chain` for what this relaxes).
    const REENTRANT: bool = false;

    /// For a reentrant actor: runs handlers on `&self`, so several calls
    /// of one chain can be in progress at once. `None` for the others.
    #[doc(hidden)]
    fn __interleaver<'a>(&'a self, ctx: &'a Ctx) -> Option<Interleaver<'a, Self>> {
        let _ = ctx;
        None
    }

    /// Runs the handler for `env` and answers its caller.
    #[doc(hidden)]
    fn __handle(
        &mut self,
        env: Self::Envelope,
        ctx: &Ctx,
    ) -> impl Future<Output = crate::actor::finish::Outcome> + Send;

    /// Decodes `body` as the message with wire tag `tag`, runs its handler,
    /// and encodes the reply.
    #[doc(hidden)]
    fn __handle_wire(
        &mut self,
        tag: u64,
        body: &[u8],
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;

    /// Answers `env`'s caller with `err` without running a handler.
    #[doc(hidden)]
    fn __fail(env: Self::Envelope, err: Error);

    /// Whether `env`'s caller gave up (dropped the call).
    #[doc(hidden)]
    fn __abandoned(env: &Self::Envelope) -> bool;

    /// The chain of calls the message's call extends.
    #[doc(hidden)]
    fn __caller(env: &Self::Envelope) -> crate::actor::chain::Caller {
        let _ = env;
        crate::actor::chain::Caller::default()
    }

    /// When `env`'s caller stops waiting (`None` for a cast).
    #[doc(hidden)]
    fn __deadline(env: &Self::Envelope) -> Option<tokio::time::Instant>;
}

pub(crate) use crate::util::BoxFuture;

/// A reentrant actor's handlers on `&self` (see [`Handlers::REENTRANT`]):
/// `local` runs a typed envelope and answers its caller; `wire` decodes
/// and runs an encoded message and encodes the reply.
#[doc(hidden)]
#[allow(clippy::type_complexity)]
pub struct Interleaver<'a, A: Handlers> {
    /// Runs one typed envelope.
    pub local:
        Box<dyn FnMut(A::Envelope) -> BoxFuture<'a, crate::actor::finish::Outcome> + Send + 'a>,
    /// Runs one encoded message: `(tag, body)`.
    pub wire: Box<dyn FnMut(u64, Vec<u8>) -> BoxFuture<'a, Result<Vec<u8>, Error>> + Send + 'a>,
}

impl<A: Handlers> std::fmt::Debug for Interleaver<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interleaver")
    }
}

/// `Self` handles message `M`. Generated by `#[mesh::handlers]` for each
/// handler.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no handler for `{M}`",
    label = "no handler for this message",
    note = "add an `async fn(&mut self, msg: {M})` to the `#[mesh::handlers]` block of `{Self}`"
)]
pub trait Handler<M: Message>: Handlers {
    /// The wire tag of `M` for this actor: [`crate::wire::tag`] of the
    /// capability, the actor type's name and the message name.
    const TAG: u64;

    /// Wraps a message and its reply slot into the actor's envelope.
    #[doc(hidden)]
    fn __wrap(msg: M, reply: ReplyTo<M::Reply>) -> Self::Envelope;
}
