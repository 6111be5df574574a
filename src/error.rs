//! The one error type of the framework.
//!
//! Domain failures travel inside the reply (`Result<T, E>` as a message's reply
//! type passes through untouched); [`Error`] is only for what the framework
//! itself could not do. Display strings are short and lowercase so they
//! compose into larger messages.

use std::fmt;

/// Everything that can go wrong between a caller and a handler.
///
/// Match on the variant, not on the text. The enum is `#[non_exhaustive]`:
/// later releases add variants (for example for the cluster transport).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The call's deadline passed before a reply arrived. The handler may
    /// still run (or have run): a timeout says nothing about the message's fate.
    #[error("call timed out")]
    Timeout,

    /// No live node hosts the capability the actor type needs.
    #[error("no node for capability {capability:?}")]
    NoNodeForCapability {
        /// The capability that has no owner.
        capability: String,
    },

    /// The node owning the actor's shard does not know this actor type: it
    /// hosts the capability but was not given `.actor::<A>()`.
    #[error("unknown actor type {actor:?}")]
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

    /// The node owning the actor's shard cannot be reached.
    #[error("node {node:?} is down or unreachable")]
    NodeDown {
        /// The owner's node id.
        node: String,
    },

    /// A peer's address could not be reached (nothing listens there, the
    /// network refused, or a listener could not bind).
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The address dialed (or bound).
        addr: String,
        /// What the transport said.
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

    /// `mesh::call` / `mesh::cast` was used with no default node running.
    #[error("no node is running in this process")]
    NotStarted,

    /// Two handlers of the actor types given to one node share a wire tag.
    /// Rename one message (`#[message(name = "...")]`).
    #[error("wire tag {tag:#018x} is used by both {first} and {second}")]
    TagCollision {
        /// The colliding tag.
        tag: u64,
        /// `Actor::Message` of the first handler.
        first: String,
        /// `Actor::Message` of the second handler.
        second: String,
    },

    /// The node builder was given an inconsistent configuration.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The discovery service (Consul) refused or failed a request the
    /// node cannot go on without: registering at start, for example. The
    /// text carries the status and the agent's own words.
    #[error("discovery: {0}")]
    Discovery(String),
}

impl Error {
    pub(crate) fn codec(err: impl fmt::Display) -> Self {
        Error::Codec(err.to_string())
    }
}
