//! The framework's errors, split by when they happen.
//!
//! - [`Error`]: what can go wrong between a caller and a handler, at run
//!   time: the error of every call, cast and shutdown. Each variant has a
//!   stable wire code ([`Error::code`], the table in `PROTOCOL.md`); a
//!   peer's error crosses the wire as that code plus fields
//!   ([`crate::wire::Failure`]), never as this Rust enum, so a variant a
//!   newer peer adds arrives here as [`Error::Remote`], not as a decoding
//!   failure.
//! - [`StartError`]: why a node could not start, or an adapter could not
//!   be configured ([`crate::NodeBuilder::start`],
//!   [`crate::discovery::Discovery::start`]). It converts into
//!   [`Error::Start`], so `async fn main() -> Result<(), mesh::Error>` can
//!   `?` both a start and the calls that follow.
//!
//! Domain failures travel inside the reply (`Result<T, E>` as a message's
//! reply type passes through untouched); these types are only for what the
//! framework itself could not do. Display strings are short and lowercase
//! so they compose into larger messages. Match on variants, never on text.

use std::fmt;

/// Everything that can go wrong between a caller and a handler.
///
/// Match on the variant, not on the text. The enum is `#[non_exhaustive]`:
/// later releases add variants, each with a new wire code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call's deadline passed before a reply arrived. The handler may
    /// still run (or have run): a timeout says nothing about the message's fate.
    ///
    /// A call's timeout names the actor type, id and message (the caller
    /// fills them in); a timeout that is no call's (a shutdown, a ping)
    /// leaves them empty. Match it as `Error::Timeout { .. }`.
    #[error("{}", timeout_text(actor, id, message))]
    Timeout {
        /// The actor type's name (empty when not a call's).
        actor: String,
        /// The actor id.
        id: String,
        /// The message's wire name.
        message: String,
    },

    /// No live node hosts the capability the actor type needs.
    #[error("no node for capability {capability:?}")]
    NoNodeForCapability {
        /// The capability that has no owner.
        capability: String,
    },

    /// The node owning the actor's shard does not know this actor type: it
    /// hosts the capability but was not given `.actor::<A>()`.
    #[error("unknown actor type {actor:?}: the node owning this shard hosts its capability but was not given `.actor::<{actor}>()`; give it to every node that hosts the capability")]
    UnknownActorType {
        /// The actor type's name.
        actor: String,
    },

    /// The actor does not handle a message with this wire tag.
    #[error("actor {actor:?} has no handler for wire tag {tag:#018x}")]
    UnknownMessage {
        /// The actor type's name.
        actor: String,
        /// The wire tag that matched no handler.
        tag: u64,
    },

    /// The actor's activation function returned an error (or panicked). The
    /// next call tries to activate it again.
    #[error("activation of {actor} {id:?} failed: {reason}")]
    ActivationFailed {
        /// The actor type's name.
        actor: String,
        /// The actor id.
        id: String,
        /// The activation error's message.
        reason: String,
    },

    /// The handler panicked while processing this call. The actor was
    /// deactivated (without its deactivation hook); the next call activates
    /// it again from scratch.
    #[error("handler of {actor} {id:?} panicked: {message}")]
    HandlerPanicked {
        /// The actor type's name.
        actor: String,
        /// The actor id.
        id: String,
        /// The panic payload, if it was a string.
        message: String,
    },

    /// The actor's mailbox holds its capacity of messages already; the
    /// message was not enqueued.
    #[error("mailbox of {actor} {id:?} is full")]
    MailboxFull {
        /// The actor type's name.
        actor: String,
        /// The actor id.
        id: String,
    },

    /// The node owning the actor's shard is down, or its connection
    /// closed. `node` is always a node id, never an address (an address
    /// that cannot be reached is [`Error::Unreachable`]).
    #[error("node {node:?} is down or unreachable")]
    NodeDown {
        /// The owner's node id.
        node: String,
    },

    /// An address could not be reached: the dial failed before any node id
    /// was known.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The address dialed (`host:port`, or a memory network name).
        addr: String,
        /// Why, as the transport put it.
        reason: String,
    },

    /// A peer refused the connection (or we refused it): wrong cookie,
    /// cluster or protocol version, or a malformed handshake.
    #[error("connection refused: {reason}")]
    Refused {
        /// Why, as the refusing side put it.
        reason: String,
    },

    /// A message or reply could not be encoded or decoded with rmp-serde.
    #[error("codec error: {0}")]
    Codec(String),

    /// The node is shutting down (or has shut down) and takes no new calls.
    #[error("node is shutting down")]
    ShuttingDown,

    /// The caller abandoned the call (dropped its future) before the reply
    /// came; the callee may skip work it had not started.
    #[error("call cancelled")]
    Cancelled,

    /// The call would wait on an actor that is itself waiting, further up
    /// the same chain of calls, for this one to return: a deadlock, so it
    /// fails at once instead of at its deadline. `chain` names the actors
    /// from the first caller to the one called again.
    #[error("call cycle {chain}: the last actor is busy handling a call that waits for this one; make one of these calls a cast, or move the work so it does not call back")]
    CallCycle {
        /// The chain, `Actor "id" -> Actor "id" -> ...`.
        chain: String,
    },

    /// A chain of calls (a handler calling an actor whose handler calls
    /// another...) grew past the depth limit (32): most likely runaway
    /// recursion.
    #[error("call chain deeper than {limit}: {chain}")]
    ChainTooDeep {
        /// The limit.
        limit: usize,
        /// The chain so far.
        chain: String,
    },

    /// A write fenced with a strong-mode lease was refused: the shard's
    /// lock is no longer held by this activation's session (another node
    /// took it, or the session ended), so the write could overwrite a newer
    /// owner's. Do not retry it as is: the activation's state is stale.
    /// See [`crate::lease`].
    #[error("fenced write refused for lock {key:?}: {reason} (this activation lost its lease; another node may own the id now)")]
    Fenced {
        /// The shard lock key the write was fenced with.
        key: String,
        /// What the store said.
        reason: String,
    },

    /// `mesh::call` / `mesh::cast` was used with no default node running.
    #[error("no node is running in this process")]
    NotStarted,

    /// The discovery service (Consul) failed a request made while the node
    /// runs: deregistering at shutdown, or an operator function. The text
    /// carries the status and the agent's own words. A refusal at start is
    /// [`StartError::Discovery`].
    #[error("discovery: {0}")]
    Discovery(String),

    /// The node (or an adapter) could not start; see [`StartError`].
    #[error(transparent)]
    Start(StartError),

    /// An error a newer peer reported that this build does not know: its
    /// wire code and its text, as the peer displayed it. Newer peers add
    /// codes without a protocol version change; an older node sees them as
    /// this variant instead of failing to decode the reply.
    #[error("remote error {code}: {message}")]
    Remote {
        /// The peer's wire code for it (not one this build assigns).
        code: u16,
        /// The peer's text for it.
        message: String,
    },
}

impl Error {
    pub(crate) fn codec(err: impl fmt::Display) -> Self {
        Error::Codec(err.to_string())
    }

    /// A timeout whose call is not known here (the caller names it).
    pub(crate) fn timeout() -> Self {
        Error::Timeout {
            actor: String::new(),
            id: String::new(),
            message: String::new(),
        }
    }

    /// The same error, naming the call it failed (actor type, id,
    /// message) where it did not yet.
    pub(crate) fn in_call(mut self, actor: &str, id: &str, message: &str) -> Self {
        if let Error::Timeout {
            actor: a,
            id: i,
            message: m,
        } = &mut self
        {
            if a.is_empty() {
                (*a, *i, *m) = (actor.to_owned(), id.to_owned(), message.to_owned());
            }
        }
        self
    }
}

fn timeout_text(actor: &str, id: &str, message: &str) -> String {
    match (actor, message) {
        ("", _) => "call timed out".to_owned(),
        (_, "") => format!("call to {actor} {id:?} timed out"),
        _ => format!("call {message} to {actor} {id:?} timed out"),
    }
}

impl From<StartError> for Error {
    fn from(e: StartError) -> Self {
        Error::Start(e)
    }
}

/// Why a node could not start, or a discovery adapter could not be set up.
///
/// Returned by [`crate::NodeBuilder::start`] and
/// [`crate::discovery::Discovery::start`]; a configuration mistake shows
/// here, before any call is made. Converts into [`Error::Start`] with `?`.
/// The enum is `#[non_exhaustive]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is inconsistent: an empty or duplicate name, an
    /// actor type whose capability the node does not host, a clustered
    /// node without a cookie, an adapter setting out of range.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Two handlers of the actor types given to one node share a wire tag.
    /// Rename one message (`#[message(name = "...")]`).
    #[error("wire tag {tag:#018x} is used by both {first} and {second}: two handlers of one capability share a message name; rename one message with `#[message(name = \"...\")]`")]
    TagCollision {
        /// The colliding tag.
        tag: u64,
        /// `Actor::Message` of the first handler.
        first: String,
        /// `Actor::Message` of the second handler.
        second: String,
    },

    /// The node cannot listen where it was told to.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address given to [`crate::NodeBuilder::listen`].
        addr: String,
        /// Why, as the operating system (or the memory network) put it.
        reason: String,
    },

    /// The discovery service refused the node at start (a wrong ACL token,
    /// an agent that cannot be reached), or the adapter could not start its
    /// own tasks. The text carries the status and the agent's own words.
    #[error("discovery: {0}")]
    Discovery(String),
}
