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

    /// No live node hosts the actor type (or, outside a call, the
    /// capability). Nodes place an actor type only on the nodes that host
    /// it: those of its capability given `.actor::<A>()`.
    ///
    /// A call's error names the actor type and id (the caller fills them
    /// in, as for [`Error::Timeout`]); they are empty otherwise.
    #[error("{}", no_node_text(capability, actor, id))]
    NoNodeForCapability {
        /// The capability of the actor type.
        capability: String,
        /// The actor type's name (empty when not a call's).
        actor: String,
        /// The actor id.
        id: String,
    },

    /// The node owning the actor's shard does not know this actor type: it
    /// hosts the capability but was not given `.actor::<A>()`. Rare since
    /// placement by actor type (a type is placed only on the nodes that
    /// host it; when none does, a call gets [`Error::NoNodeForCapability`]).
    #[error("unknown actor type {actor:?}: the node owning this shard hosts its capability but was not given `.actor::<{actor}>()`; give it to every node that hosts the capability")]
    UnknownActorType {
        /// The actor type's name.
        actor: String,
    },

    /// The node a call reached has no handler for its wire tag: it runs a
    /// build of the actor type without that message (an older build,
    /// during a rolling deploy), or does not host the actor type at all (a
    /// call that raced a membership change).
    ///
    /// The node that refused names itself; the caller fills in the actor
    /// type and message (empty where not known).
    #[error("{}", unknown_message_text(actor, *tag, node, message))]
    UnknownMessage {
        /// The actor type's name.
        actor: String,
        /// The wire tag that matched no handler.
        tag: u64,
        /// The node that has no handler for it (empty: not known).
        node: String,
        /// The message's wire name.
        message: String,
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
    ///
    /// A call's error names the actor type and id (the caller fills them
    /// in); they are empty otherwise.
    #[error("{}", node_down_text(node, actor, id))]
    NodeDown {
        /// The owner's node id.
        node: String,
        /// The actor type's name (empty when not a call's).
        actor: String,
        /// The actor id.
        id: String,
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
    /// A call's error ends with the call it failed (`(call Join to Room
    /// "r1")`), added by the caller.
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

    /// A stateful actor's state (see [`crate::state`]) could not be loaded
    /// or saved. For a save, the call that changed it fails with this
    /// (its reply, and its casts, are never released: the change is not
    /// durable), the activation is dropped without its `on_deactivate`
    /// hook, and the next call loads the state afresh; the write is never
    /// retried with the same bytes. [`crate::state::StoreError`] says why:
    /// a conflict (another activation of the id wrote first: eventual
    /// mode's duplicate), a fence (a newer owner claimed the row), a store
    /// that cannot be reached, an uncertain outcome, or a row that does not
    /// decode.
    #[error("state of {actor} {id:?}: {error}")]
    State {
        /// The actor type.
        actor: String,
        /// The actor's id.
        id: String,
        /// What the store said.
        error: StoreError,
    },

    /// [`crate::Node::shutdown`] gave up at its shutdown timeout
    /// (`NodeBuilder::shutdown_timeout`, 30 s by default): `pending` says
    /// what was still pending then (the leave drain's activations or its
    /// peers' calls not yet answered, or activations still busy), in the
    /// words of the node's log line. What was pending is left to the
    /// runtime; the node is stopped otherwise.
    #[error("shutdown timed out: {pending}")]
    ShutdownTimeout {
        /// What was still pending at the timeout.
        pending: String,
    },

    /// `mesh::call` / `mesh::cast` was used with no default node running.
    #[error("no node is running in this process")]
    NotStarted,

    /// The node was built with [`crate::NodeBuilder::min_members`] and has
    /// not yet seen that many members (itself included): it takes no calls
    /// or casts, rather than serve every actor alone from empty state. Most
    /// likely it is not in its cluster: another cookie or cluster name than
    /// its peers (the logs name the refused connections), or seeds it
    /// cannot reach; or the rest of the cluster is not up yet. Once it has
    /// seen `need` members it serves for the rest of its life.
    #[error("this node sees {have} member(s) of the {need} it needs before it serves (NodeBuilder::min_members): it has not joined its cluster yet; check that every node has the same cookie and cluster name, and that its seeds or discovery are reachable (the logs name refused connections)")]
    NotEnoughMembers {
        /// How many members the node sees, itself included.
        have: usize,
        /// How many it needs (its `min_members`).
        need: usize,
    },

    /// The discovery service (Consul) failed a request made while the node
    /// runs: deregistering at shutdown, or an operator function. The text
    /// carries the status and the agent's own words. A refusal at start is
    /// [`StartError::Discovery`], with the same [`DiscoveryError`].
    #[error("discovery: {0}")]
    Discovery(DiscoveryError),

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
    /// [`Error::Discovery`] saying `message`.
    #[cfg_attr(not(feature = "consul"), allow(dead_code))]
    pub(crate) fn discovery(message: impl Into<String>) -> Self {
        Error::Discovery(DiscoveryError::new(message))
    }

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

    /// `NodeDown` of `node`, no call named yet.
    pub(crate) fn node_down(node: impl Into<String>) -> Self {
        Error::NodeDown {
            node: node.into(),
            actor: String::new(),
            id: String::new(),
        }
    }

    /// `NoNodeForCapability` of `capability`, no call named yet.
    pub(crate) fn no_node(capability: impl Into<String>) -> Self {
        Error::NoNodeForCapability {
            capability: capability.into(),
            actor: String::new(),
            id: String::new(),
        }
    }

    /// `UnknownMessage`: node `node` (empty: not known) has no handler of
    /// actor type `actor` (empty: not known) for `tag`.
    pub(crate) fn unknown_message(node: &str, actor: &str, tag: u64) -> Self {
        Error::UnknownMessage {
            actor: actor.to_owned(),
            tag,
            node: node.to_owned(),
            message: String::new(),
        }
    }

    /// The same error, naming the call it failed (actor type, id,
    /// message) where it did not yet. Runs only on a failed call: the
    /// success path pays nothing for the context.
    pub(crate) fn in_call(mut self, actor: &str, id: &str, message: &str) -> Self {
        fn fill(field: &mut String, value: &str) {
            if field.is_empty() {
                value.clone_into(field);
            }
        }
        match &mut self {
            Error::Timeout {
                actor: a,
                id: i,
                message: m,
            } if a.is_empty() => {
                (*a, *i, *m) = (actor.to_owned(), id.to_owned(), message.to_owned());
            }
            Error::NodeDown {
                actor: a, id: i, ..
            }
            | Error::NoNodeForCapability {
                actor: a, id: i, ..
            } if a.is_empty() => {
                (*a, *i) = (actor.to_owned(), id.to_owned());
            }
            Error::UnknownMessage {
                actor: a,
                message: m,
                ..
            } => {
                fill(a, actor);
                fill(m, message);
            }
            Error::Codec(text) => {
                use std::fmt::Write;
                let _ = write!(text, " ({})", call_text(actor, id, message));
            }
            _ => {}
        }
        self
    }
}

/// `call Join to Room "r1"`, `call to Room "r1"` without a message.
fn call_text(actor: &str, id: &str, message: &str) -> String {
    if message.is_empty() {
        format!("call to {actor} {id:?}")
    } else {
        format!("call {message} to {actor} {id:?}")
    }
}

fn timeout_text(actor: &str, id: &str, message: &str) -> String {
    if actor.is_empty() {
        "call timed out".to_owned()
    } else {
        format!("{} timed out", call_text(actor, id, message))
    }
}

fn node_down_text(node: &str, actor: &str, id: &str) -> String {
    if actor.is_empty() {
        format!("node {node:?} is down or unreachable")
    } else {
        format!(
            "{}: node {node:?} is down or unreachable",
            call_text(actor, id, "")
        )
    }
}

fn no_node_text(capability: &str, actor: &str, id: &str) -> String {
    if actor.is_empty() {
        return format!("no node for capability {capability:?}");
    }
    format!(
        "{}: no node hosts {actor} (capability {capability:?}); start one with \
         `.actor::<{actor}>()`, or look in the logs for the connections to the \
         nodes that do (a refused one names the cookie, cluster or protocol version)",
        call_text(actor, id, "")
    )
}

fn unknown_message_text(actor: &str, tag: u64, node: &str, message: &str) -> String {
    let on = if node.is_empty() {
        "the node".to_owned()
    } else {
        format!("node {node:?}")
    };
    match (actor, message) {
        ("", _) => format!("{on} has no handler for wire tag {tag:#018x}"),
        (_, "") => format!("{on} has no handler of {actor} for wire tag {tag:#018x}"),
        _ => format!(
            "{on} has no handler for {message} of {actor} (wire tag {tag:#018x}): it runs a \
             build of {actor} without {message} (an older build?), or does not host {actor}; \
             deploy the build of {actor} that handles {message} on every node that hosts {actor}"
        ),
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
/// The enum is `#[non_exhaustive]`: match the variants you handle, and
/// `_` for the rest. Each variant has a wire code ([`StartError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A setting is refused: out of range, empty, given twice, or
    /// inconsistent with another. `setting` names it as the API spells it
    /// (one of [`StartError::SETTINGS`]: `"NodeBuilder::capabilities"`,
    /// `"NodeBuilder::actor"`, `"Consul::ttl"`, ...); `reason` says what is
    /// wrong and how to fix it. The more common mistakes have variants of
    /// their own ([`StartError::MissingCookie`], [`StartError::WeakCookie`],
    /// [`StartError::NoLeaseStore`], ...).
    #[error("invalid configuration: {reason}")]
    InvalidSetting {
        /// The setting, as the API spells it (`"NodeBuilder::min_members"`).
        setting: &'static str,
        /// What is wrong, and how to fix it.
        reason: String,
    },

    /// [`crate::NodeBuilder::start`] ran outside a tokio runtime.
    #[error("invalid configuration: start the node inside a tokio runtime")]
    NoRuntime,

    /// A clustered node (seeds, a listener or a discovery) was given no
    /// cookie ([`crate::NodeBuilder::cookie`]).
    #[error("invalid configuration: a clustered node needs a cookie (NodeBuilder::cookie)")]
    MissingCookie,

    /// The cluster cookie has too little entropy to resist an offline
    /// guess (see [`crate::NodeBuilder::cookie`]).
    #[error("invalid configuration: the cluster cookie is too weak: about {bits} bits of entropy, {needed} needed (anyone this node dials could guess it offline); generate one with `openssl rand -base64 32`, or, in tests only, call NodeBuilder::allow_weak_cookie")]
    WeakCookie {
        /// The cookie's estimated entropy, in bits (rounded).
        bits: u32,
        /// The entropy a cookie needs, in bits.
        needed: u32,
    },

    /// The node's identity is over the handshake's limits: an id or name
    /// over 255 bytes, more than 256 capabilities or actor types, more than
    /// 4096 handlers. `reason` names the limit.
    #[error("invalid configuration: this node cannot join a cluster: {reason}")]
    IdentityLimits {
        /// Which limit, and by how much.
        reason: String,
    },

    /// Strong mode ([`crate::NodeBuilder`]'s `strong`) needs a discovery
    /// with a lease store (Consul has one): the node has no discovery
    /// (`has_discovery` false: a static-seed cluster or a single node), or
    /// its discovery has no lease store.
    #[error("{}", no_lease_store_text(*has_discovery))]
    NoLeaseStore {
        /// Whether the node was given a discovery (that has no store).
        has_discovery: bool,
    },

    /// A node through a sidecar was given no listener
    /// ([`crate::NodeBuilder::listen`]): the sidecar forwards to it.
    #[error(
        "invalid configuration: a node through a sidecar needs a listener (NodeBuilder::listen)"
    )]
    SidecarWithoutListener,

    /// The node's sidecar could not start (HAProxy missing, its
    /// configuration refused, its certificates not fetched); the text says
    /// why and how to fix it.
    #[error("sidecar: {reason}")]
    Sidecar {
        /// Why, as the sidecar's supervisor put it.
        reason: String,
    },

    /// Two handlers of the actor types given to one node share a wire tag:
    /// two messages of one name in one actor type (a tag hashes the
    /// capability, the actor type's name and the message's name, so other
    /// actor types may reuse message names), or a 64-bit hash collision.
    /// Rename one message (`#[message(name = "...")]`).
    #[error("wire tag {tag:#018x} is used by both {first} and {second}: two handlers of one actor type share a message name; rename one message with `#[message(name = \"...\")]`")]
    TagCollision {
        /// The colliding tag.
        tag: u64,
        /// `Actor::Message` of the first handler.
        first: String,
        /// `Actor::Message` of the second handler.
        second: String,
    },

    /// The node cannot listen where it was told to (or its admin endpoint
    /// cannot bind).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address given to [`crate::NodeBuilder::listen`].
        addr: String,
        /// Why, as the operating system (or the memory network) put it.
        reason: String,
    },

    /// The discovery service refused the node at start (a wrong ACL token,
    /// an agent that cannot be reached), or the adapter could not start its
    /// own tasks. The same [`DiscoveryError`] as [`Error::Discovery`]'s.
    #[error("discovery: {0}")]
    Discovery(DiscoveryError),

    /// What the process could not give the node at start: no randomness
    /// for its incarnation, a failed handshake key derivation. Not a
    /// configuration mistake.
    #[error("cannot start: {reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
}

impl StartError {
    /// Every name [`StartError::InvalidSetting`]'s `setting` takes.
    pub const SETTINGS: &'static [&'static str] = &[
        "NodeBuilder::id",
        "NodeBuilder::capabilities",
        "NodeBuilder::actor",
        "NodeBuilder::strong",
        "NodeBuilder::min_members",
        "NodeBuilder::advertise",
        "NodeBuilder::discovery",
        "NodeBuilder::dns_seeds",
        "Consul::address",
        "Consul::token",
        "Consul::agent_tls",
        "Consul::ttl",
        "Consul::mesh",
        "Consul::observe",
        "Observe::node_meta",
        "Mesh::sidecar_port",
        "NodeBuilder::admin_token",
        "Node::drain",
    ];

    /// [`StartError::Discovery`] saying `message`.
    #[cfg_attr(not(feature = "consul"), allow(dead_code))]
    pub(crate) fn discovery(message: impl Into<String>) -> Self {
        StartError::Discovery(DiscoveryError::new(message))
    }

    /// [`StartError::InvalidSetting`] of `setting` (one of
    /// [`StartError::SETTINGS`]).
    pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        debug_assert!(Self::SETTINGS.contains(&setting), "{setting}");
        StartError::InvalidSetting {
            setting,
            reason: reason.into(),
        }
    }

    /// The setting name from the wire, as one of [`StartError::SETTINGS`]
    /// (`""` when this build does not know it).
    pub(crate) fn setting_named(name: &str) -> &'static str {
        Self::SETTINGS
            .iter()
            .find(|s| **s == name)
            .copied()
            .unwrap_or("")
    }
}

fn no_lease_store_text(has_discovery: bool) -> &'static str {
    if has_discovery {
        "invalid configuration: strong mode: this discovery has no lease store (Consul has one)"
    } else {
        "invalid configuration: strong mode needs an authoritative store for its leases: give \
         NodeBuilder::discovery a Consul (a static-seed cluster cannot offer it), or remove \
         NodeBuilder::strong"
    }
}

/// A request to the discovery service (Consul) failed: at start (inside
/// [`StartError::Discovery`]: the registry refused the node, or could not
/// be reached) or while the node runs (inside [`Error::Discovery`]:
/// deregistering at shutdown, an operator function, a fenced write's
/// store). One type for both, so a caller handles it once.
///
/// Its text carries what was asked, the status and the agent's own words,
/// and a hint where one helps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryError {
    message: String,
}

impl DiscoveryError {
    /// A discovery error saying `message` (what failed, in the agent's
    /// words). For adapters other than mesh's own.
    pub fn new(message: impl Into<String>) -> Self {
        DiscoveryError {
            message: message.into(),
        }
    }

    /// The text: what failed, in the agent's words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DiscoveryError {}

/// Why a state store ([`crate::state::StateStore`]) refused or failed
/// (`mesh::state::StoreError`). Defined here, beside [`Error`], so that
/// the error module imports nothing back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The stored version is not the one the write expected: another
    /// activation wrote meanwhile (eventual mode's duplicate), or this one
    /// lost track. Nothing was written.
    #[error("state conflict: the write expected version {expected}, the store has {stored}")]
    Conflict {
        /// The version the write expected.
        expected: u64,
        /// The version the store has.
        stored: u64,
    },
    /// The row was claimed with a higher fencing token: a newer owner
    /// holds the shard. Nothing was written.
    #[error("fenced: token {token} is below the store's {stored} (a newer owner claimed the row)")]
    Fenced {
        /// The token of the refused operation.
        token: u64,
        /// The fence the store has.
        stored: u64,
    },
    /// The row or the write is larger than the store's limit. Nothing was
    /// written.
    #[error("state of {size} bytes exceeds the store's limit of {limit} bytes")]
    TooLarge {
        /// The size in bytes.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// The store could not be reached or refused to work; nothing was
    /// written.
    #[error("state store unavailable: {0}")]
    Unavailable(Box<str>),
    /// The store cannot say whether the write happened.
    #[error("state write outcome unknown: {0}")]
    Uncertain(Box<str>),
    /// The stored bytes do not decode as the actor's state type (or were
    /// written with a newer schema than this build reads), or the state
    /// does not encode. Nothing was written.
    #[error("state codec: {0}")]
    Codec(Box<str>),
}
