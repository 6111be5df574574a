//! The `Error` frame body: a failed call (or a refused connection) as a
//! stable code and a few fields, decoupled from the Rust [`Error`] enum.
//!
//! Contract:
//!
//! - Every [`Error`] variant (and every [`StartError`] variant, under
//!   [`Error::Start`]) has a **code** in [`mod@code`], pinned by a golden test:
//!   a code is never reused nor renumbered. [`Error::code`] gives it.
//! - The body is `code, text, actor, id, node, tag, detail, addr,
//!   message` (`message` since version 3): `text`
//!   is the sender's `Display` of the error; the other fields carry the
//!   variant's data (which one carries what is in `PROTOCOL.md`). Encoded
//!   compactly (an array, as `Call` and `Reply` are); maps decode too.
//! - **Tolerant decoding**: fields after `text` default when missing (a
//!   shorter body from an older peer), elements or keys past the known
//!   ones are skipped (a longer body from a newer peer), and a code this
//!   build does not know becomes [`Error::Remote`], never
//!   [`Error::Codec`]. So adding a variant, or a trailing field, needs no
//!   protocol version change.
//! - [`Failure::from_error`] and [`Failure::into_error`] round-trip every
//!   variant.

use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{DiscoveryError, StoreError};
use crate::{Error, StartError};

/// The stable wire codes of the errors, one per variant.
///
/// 1 to 99 are the run-time errors ([`crate::Error`]), 101 to 199 the
/// start errors ([`crate::StartError`], inside [`crate::Error::Start`]).
/// 0 is never assigned. A code is never renumbered nor reused.
pub mod code {
    /// [`crate::Error::Timeout`].
    pub const TIMEOUT: u16 = 1;
    /// [`crate::Error::NoNodeForCapability`].
    pub const NO_NODE_FOR_CAPABILITY: u16 = 2;
    /// [`crate::Error::UnknownActorType`].
    pub const UNKNOWN_ACTOR_TYPE: u16 = 3;
    /// [`crate::Error::UnknownMessage`].
    pub const UNKNOWN_MESSAGE: u16 = 4;
    /// [`crate::Error::ActivationFailed`].
    pub const ACTIVATION_FAILED: u16 = 5;
    /// [`crate::Error::HandlerPanicked`].
    pub const HANDLER_PANICKED: u16 = 6;
    /// [`crate::Error::MailboxFull`].
    pub const MAILBOX_FULL: u16 = 7;
    /// [`crate::Error::NodeDown`].
    pub const NODE_DOWN: u16 = 8;
    /// [`crate::Error::Refused`].
    pub const REFUSED: u16 = 9;
    /// [`crate::Error::Codec`].
    pub const CODEC: u16 = 10;
    /// [`crate::Error::ShuttingDown`].
    pub const SHUTTING_DOWN: u16 = 11;
    /// [`crate::Error::Cancelled`].
    pub const CANCELLED: u16 = 12;
    /// [`crate::Error::Unreachable`].
    pub const UNREACHABLE: u16 = 13;
    /// [`crate::Error::NotStarted`].
    pub const NOT_STARTED: u16 = 14;
    /// [`crate::Error::Discovery`].
    pub const DISCOVERY: u16 = 15;
    /// [`crate::Error::CallCycle`].
    pub const CALL_CYCLE: u16 = 16;
    /// [`crate::Error::ChainTooDeep`].
    pub const CHAIN_TOO_DEEP: u16 = 17;
    /// [`crate::Error::NotEnoughMembers`].
    pub const NOT_ENOUGH_MEMBERS: u16 = 18;
    /// [`crate::Error::ShutdownTimeout`].
    pub const SHUTDOWN_TIMEOUT: u16 = 19;
    /// [`crate::Error::Fenced`].
    pub const FENCED: u16 = 30;
    /// [`crate::Error::State`].
    pub const STATE: u16 = 31;
    /// [`crate::StartError::InvalidSetting`] (named `Config` before).
    pub const START_CONFIG: u16 = 101;
    /// [`crate::StartError::TagCollision`].
    pub const START_TAG_COLLISION: u16 = 102;
    /// [`crate::StartError::Listen`].
    pub const START_LISTEN: u16 = 103;
    /// [`crate::StartError::Discovery`].
    pub const START_DISCOVERY: u16 = 104;
    /// [`crate::StartError::NoRuntime`].
    pub const START_NO_RUNTIME: u16 = 105;
    /// [`crate::StartError::MissingCookie`].
    pub const START_MISSING_COOKIE: u16 = 106;
    /// [`crate::StartError::WeakCookie`].
    pub const START_WEAK_COOKIE: u16 = 107;
    /// [`crate::StartError::IdentityLimits`].
    pub const START_IDENTITY_LIMITS: u16 = 108;
    /// [`crate::StartError::NoLeaseStore`].
    pub const START_NO_LEASE_STORE: u16 = 109;
    /// [`crate::StartError::SidecarWithoutListener`].
    pub const START_SIDECAR_WITHOUT_LISTENER: u16 = 110;
    /// [`crate::StartError::Sidecar`].
    pub const START_SIDECAR: u16 = 111;
    /// [`crate::StartError::Internal`].
    pub const START_INTERNAL: u16 = 112;
}

impl Error {
    /// The error's stable wire code (see [`crate::wire::code`]); for
    /// [`Error::Remote`], the code the peer sent.
    pub fn code(&self) -> u16 {
        match self {
            Error::Timeout { .. } => code::TIMEOUT,
            Error::NoNodeForCapability { .. } => code::NO_NODE_FOR_CAPABILITY,
            Error::UnknownActorType { .. } => code::UNKNOWN_ACTOR_TYPE,
            Error::UnknownMessage { .. } => code::UNKNOWN_MESSAGE,
            Error::ActivationFailed { .. } => code::ACTIVATION_FAILED,
            Error::HandlerPanicked { .. } => code::HANDLER_PANICKED,
            Error::MailboxFull { .. } => code::MAILBOX_FULL,
            Error::NodeDown { .. } => code::NODE_DOWN,
            Error::Unreachable { .. } => code::UNREACHABLE,
            Error::Refused { .. } => code::REFUSED,
            Error::Codec(_) => code::CODEC,
            Error::ShuttingDown => code::SHUTTING_DOWN,
            Error::Cancelled => code::CANCELLED,
            Error::NotStarted => code::NOT_STARTED,
            Error::Discovery(_) => code::DISCOVERY,
            Error::CallCycle { .. } => code::CALL_CYCLE,
            Error::ChainTooDeep { .. } => code::CHAIN_TOO_DEEP,
            Error::Fenced { .. } => code::FENCED,
            Error::State { .. } => code::STATE,
            Error::NotEnoughMembers { .. } => code::NOT_ENOUGH_MEMBERS,
            Error::ShutdownTimeout { .. } => code::SHUTDOWN_TIMEOUT,
            Error::Start(e) => e.code(),
            Error::Remote { code, .. } => *code,
        }
    }
}

impl StartError {
    /// The error's stable wire code (see [`crate::wire::code`]).
    pub fn code(&self) -> u16 {
        match self {
            StartError::InvalidSetting { .. } => code::START_CONFIG,
            StartError::TagCollision { .. } => code::START_TAG_COLLISION,
            StartError::Listen { .. } => code::START_LISTEN,
            StartError::Discovery(_) => code::START_DISCOVERY,
            StartError::NoRuntime => code::START_NO_RUNTIME,
            StartError::MissingCookie => code::START_MISSING_COOKIE,
            StartError::WeakCookie { .. } => code::START_WEAK_COOKIE,
            StartError::IdentityLimits { .. } => code::START_IDENTITY_LIMITS,
            StartError::NoLeaseStore { .. } => code::START_NO_LEASE_STORE,
            StartError::SidecarWithoutListener => code::START_SIDECAR_WITHOUT_LISTENER,
            StartError::Sidecar { .. } => code::START_SIDECAR,
            StartError::Internal { .. } => code::START_INTERNAL,
        }
    }
}

/// `Error` frame body: a call failed (correlation id of the call), or the
/// connection is refused (correlation id 0) and about to close.
///
/// Build one with [`Failure::from_error`], read one with
/// [`Failure::into_error`]; the fields are public for inspection. Which
/// field carries what depends on `code` (table in `PROTOCOL.md`); unused
/// fields are empty (0 for `tag`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Failure {
    /// The error's wire code ([`crate::wire::code`]).
    pub code: u16,
    /// The error as the sender displayed it: what a receiver that does not
    /// know the code shows.
    pub text: String,
    /// An actor type's name (for `TagCollision`: the first handler).
    pub actor: String,
    /// An actor id.
    pub id: String,
    /// A node id (never an address).
    pub node: String,
    /// A wire tag.
    pub tag: u64,
    /// The free text of the variant: a reason, a panic message, a
    /// capability (for `TagCollision`: the second handler).
    pub detail: String,
    /// An address (`host:port`).
    pub addr: String,
    /// A message's wire name (since protocol version 3).
    pub message: String,
}

impl Failure {
    /// The body that tells a peer about `error`.
    pub fn from_error(error: &Error) -> Failure {
        let mut f = Failure {
            code: error.code(),
            text: error.to_string(),
            ..Failure::default()
        };
        match error {
            Error::Timeout { actor, id, message } => {
                f.actor = actor.clone();
                f.id = id.clone();
                f.detail = message.clone();
            }
            Error::ShuttingDown | Error::Cancelled | Error::NotStarted => {}
            Error::NoNodeForCapability {
                capability,
                actor,
                id,
            } => {
                f.detail = capability.clone();
                f.actor = actor.clone();
                f.id = id.clone();
            }
            Error::UnknownActorType { actor } => f.actor = actor.clone(),
            Error::UnknownMessage {
                actor,
                tag,
                node,
                message,
            } => {
                f.actor = actor.clone();
                f.tag = *tag;
                f.node = node.clone();
                f.message = message.clone();
            }
            Error::ActivationFailed { actor, id, reason } => {
                f.actor = actor.clone();
                f.id = id.clone();
                f.detail = reason.clone();
            }
            Error::HandlerPanicked { actor, id, message } => {
                f.actor = actor.clone();
                f.id = id.clone();
                f.detail = message.clone();
            }
            Error::MailboxFull { actor, id } => {
                f.actor = actor.clone();
                f.id = id.clone();
            }
            Error::NodeDown { node, actor, id } => {
                f.node = node.clone();
                f.actor = actor.clone();
                f.id = id.clone();
            }
            Error::Unreachable { addr, reason } => {
                f.addr = addr.clone();
                f.detail = reason.clone();
            }
            Error::Refused { reason } => f.detail = reason.clone(),
            Error::ShutdownTimeout { pending } => f.detail = pending.clone(),
            Error::Codec(m) => f.detail = m.clone(),
            Error::Discovery(e) => f.detail = e.message().to_owned(),
            Error::CallCycle { chain } => f.detail = chain.clone(),
            Error::ChainTooDeep { limit, chain } => {
                f.tag = *limit as u64;
                f.detail = chain.clone();
            }
            Error::Fenced { key, reason } => {
                f.id = key.clone();
                f.detail = reason.clone();
            }
            Error::State { actor, id, error } => {
                f.actor = actor.clone();
                f.id = id.clone();
                (f.tag, f.detail) = state_to_wire(error);
            }
            Error::NotEnoughMembers { have, need } => {
                f.tag = *need as u64;
                f.detail = have.to_string();
            }
            Error::Start(e) => match e {
                StartError::InvalidSetting { setting, reason } => {
                    (*setting).clone_into(&mut f.id);
                    f.detail = reason.clone();
                }
                StartError::Discovery(e) => f.detail = e.message().to_owned(),
                StartError::IdentityLimits { reason }
                | StartError::Sidecar { reason }
                | StartError::Internal { reason } => f.detail = reason.clone(),
                StartError::WeakCookie { bits, needed } => {
                    f.tag = u64::from(*needed);
                    f.detail = bits.to_string();
                }
                StartError::NoLeaseStore { has_discovery } => f.tag = u64::from(*has_discovery),
                StartError::NoRuntime
                | StartError::MissingCookie
                | StartError::SidecarWithoutListener => {}
                StartError::TagCollision { tag, first, second } => {
                    f.tag = *tag;
                    f.actor = first.clone();
                    f.detail = second.clone();
                }
                StartError::Listen { addr, reason } => {
                    f.addr = addr.clone();
                    f.detail = reason.clone();
                }
            },
            // Relayed as the original peer put it.
            Error::Remote { message, .. } => f.text = message.clone(),
        }
        f
    }

    /// The error the caller sees. A code this build does not know is
    /// [`Error::Remote`] with the sender's text.
    pub fn into_error(self) -> Error {
        let Failure {
            code: wire_code,
            text,
            actor,
            id,
            node,
            tag,
            detail,
            addr,
            message,
        } = self;
        match wire_code {
            code::TIMEOUT => Error::Timeout {
                actor,
                id,
                message: detail,
            },
            code::NO_NODE_FOR_CAPABILITY => Error::NoNodeForCapability {
                capability: detail,
                actor,
                id,
            },
            code::UNKNOWN_ACTOR_TYPE => Error::UnknownActorType { actor },
            code::UNKNOWN_MESSAGE => Error::UnknownMessage {
                actor,
                tag,
                node,
                message,
            },
            code::ACTIVATION_FAILED => Error::ActivationFailed {
                actor,
                id,
                reason: detail,
            },
            code::HANDLER_PANICKED => Error::HandlerPanicked {
                actor,
                id,
                message: detail,
            },
            code::MAILBOX_FULL => Error::MailboxFull { actor, id },
            code::NODE_DOWN => Error::NodeDown { node, actor, id },
            code::UNREACHABLE => Error::Unreachable {
                addr,
                reason: detail,
            },
            code::REFUSED => Error::Refused { reason: detail },
            code::CODEC => Error::Codec(detail),
            code::SHUTTING_DOWN => Error::ShuttingDown,
            code::CANCELLED => Error::Cancelled,
            code::NOT_STARTED => Error::NotStarted,
            code::DISCOVERY => Error::Discovery(DiscoveryError::new(detail)),
            code::CALL_CYCLE => Error::CallCycle { chain: detail },
            code::CHAIN_TOO_DEEP => Error::ChainTooDeep {
                limit: usize::try_from(tag).unwrap_or(usize::MAX),
                chain: detail,
            },
            code::FENCED => Error::Fenced {
                key: id,
                reason: detail,
            },
            code::STATE => Error::State {
                actor,
                id,
                error: state_from_wire(tag, detail),
            },
            code::NOT_ENOUGH_MEMBERS => Error::NotEnoughMembers {
                have: detail.parse().unwrap_or(0),
                need: usize::try_from(tag).unwrap_or(usize::MAX),
            },
            code::SHUTDOWN_TIMEOUT => Error::ShutdownTimeout { pending: detail },
            code::START_CONFIG => Error::Start(StartError::InvalidSetting {
                setting: StartError::setting_named(&id),
                reason: detail,
            }),
            code::START_TAG_COLLISION => Error::Start(StartError::TagCollision {
                tag,
                first: actor,
                second: detail,
            }),
            code::START_LISTEN => Error::Start(StartError::Listen {
                addr,
                reason: detail,
            }),
            code::START_DISCOVERY => {
                Error::Start(StartError::Discovery(DiscoveryError::new(detail)))
            }
            code::START_NO_RUNTIME => Error::Start(StartError::NoRuntime),
            code::START_MISSING_COOKIE => Error::Start(StartError::MissingCookie),
            code::START_WEAK_COOKIE => Error::Start(StartError::WeakCookie {
                bits: detail.parse().unwrap_or(0),
                needed: u32::try_from(tag).unwrap_or(u32::MAX),
            }),
            code::START_IDENTITY_LIMITS => {
                Error::Start(StartError::IdentityLimits { reason: detail })
            }
            code::START_NO_LEASE_STORE => Error::Start(StartError::NoLeaseStore {
                has_discovery: tag != 0,
            }),
            code::START_SIDECAR_WITHOUT_LISTENER => {
                Error::Start(StartError::SidecarWithoutListener)
            }
            code::START_SIDECAR => Error::Start(StartError::Sidecar { reason: detail }),
            code::START_INTERNAL => Error::Start(StartError::Internal { reason: detail }),
            _ => Error::Remote {
                code: wire_code,
                message: text,
            },
        }
    }
}

impl From<&Error> for Failure {
    fn from(error: &Error) -> Self {
        Failure::from_error(error)
    }
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Self {
        failure.into_error()
    }
}

/// The decoding shape of [`Failure`]: the same fields in the same order,
/// every one after `text` optional. Kept in step with `Failure` by the
/// round-trip tests below.
#[derive(Deserialize)]
struct Fields {
    code: u16,
    text: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    tag: u64,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    addr: String,
    #[serde(default)]
    message: String,
}

impl From<Fields> for Failure {
    fn from(f: Fields) -> Self {
        Failure {
            code: f.code,
            text: f.text,
            actor: f.actor,
            id: f.id,
            node: f.node,
            tag: f.tag,
            detail: f.detail,
            addr: f.addr,
            message: f.message,
        }
    }
}

const FIELDS: &[&str] = &[
    "code", "text", "actor", "id", "node", "tag", "detail", "addr", "message",
];

impl<'de> Deserialize<'de> for Failure {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("Failure", FIELDS, FailureVisitor)
    }
}

struct FailureVisitor;

impl<'de> Visitor<'de> for FailureVisitor {
    type Value = Failure;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an error frame body (code, text, fields)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Failure, A::Error> {
        let fields = Fields::deserialize(SeqAccessDeserializer::new(&mut seq))?;
        // Elements a newer peer appended: skipped. rmp-serde refuses an
        // array whose elements were not all read (`LengthMismatch`), so a
        // derived decoder would fail on them.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(fields.into())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Failure, A::Error> {
        // The derived decoder skips unknown keys and defaults missing ones.
        Fields::deserialize(MapAccessDeserializer::new(map)).map(Failure::from)
    }
}

// `Error::State` (code 31): the store's error kind in the failure's `tag`,
// its numbers or text in `detail`. Pinned like the codes: a renumbered kind
// breaks mixed-version clusters.

const STATE_CONFLICT: u64 = 1;
const STATE_FENCED: u64 = 2;
const STATE_TOO_LARGE: u64 = 3;
const STATE_UNAVAILABLE: u64 = 4;
const STATE_UNCERTAIN: u64 = 5;
const STATE_CODEC: u64 = 6;

/// The kind and detail of `e`.
fn state_to_wire(e: &StoreError) -> (u64, String) {
    match e {
        StoreError::Conflict { expected, stored } => {
            (STATE_CONFLICT, format!("{expected} {stored}"))
        }
        StoreError::Fenced { token, stored } => (STATE_FENCED, format!("{token} {stored}")),
        StoreError::TooLarge { size, limit } => (STATE_TOO_LARGE, format!("{size} {limit}")),
        StoreError::Unavailable(m) => (STATE_UNAVAILABLE, m.to_string()),
        StoreError::Uncertain(m) => (STATE_UNCERTAIN, m.to_string()),
        StoreError::Codec(m) => (STATE_CODEC, m.to_string()),
    }
}

/// The error a peer sent. Numbers that do not parse read as 0; a kind
/// this build does not know reads as [`StoreError::Unavailable`] with the
/// detail (the call failed either way).
fn state_from_wire(kind: u64, detail: String) -> StoreError {
    let pair = || {
        let mut it = detail.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    match kind {
        STATE_CONFLICT => {
            let (expected, stored) = pair();
            StoreError::Conflict { expected, stored }
        }
        STATE_FENCED => {
            let (token, stored) = pair();
            StoreError::Fenced { token, stored }
        }
        STATE_TOO_LARGE => {
            let (size, limit) = pair();
            StoreError::TooLarge {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            }
        }
        STATE_UNCERTAIN => StoreError::Uncertain(detail.into()),
        STATE_CODEC => StoreError::Codec(detail.into()),
        _ => StoreError::Unavailable(detail.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode, encode_envelope};

    /// One of each variant, with every field set.
    fn every_error() -> Vec<Error> {
        vec![
            Error::Timeout {
                actor: "Player".into(),
                id: "p-1".into(),
                message: "Score".into(),
            },
            Error::NoNodeForCapability {
                capability: "game".into(),
                actor: "Player".into(),
                id: "p-1".into(),
            },
            Error::UnknownActorType {
                actor: "Player".into(),
            },
            Error::UnknownMessage {
                actor: "Player".into(),
                tag: 0xc3ed_7a5e_c398_72c7,
                node: "node-b".into(),
                message: "Score".into(),
            },
            Error::ActivationFailed {
                actor: "Player".into(),
                id: "p1".into(),
                reason: "no such row".into(),
            },
            Error::HandlerPanicked {
                actor: "Player".into(),
                id: "p1".into(),
                message: "index out of bounds".into(),
            },
            Error::MailboxFull {
                actor: "Player".into(),
                id: "p1".into(),
            },
            Error::NodeDown {
                node: "node-b".into(),
                actor: "Player".into(),
                id: "p-1".into(),
            },
            Error::Unreachable {
                addr: "10.0.0.5:7000".into(),
                reason: "connection refused".into(),
            },
            Error::Refused {
                reason: "wrong cookie".into(),
            },
            Error::Codec("invalid type".into()),
            Error::ShuttingDown,
            Error::Cancelled,
            Error::NotStarted,
            Error::discovery("deregistering: 500"),
            Error::CallCycle {
                chain: "A \"x\" -> B \"y\" -> A \"x\"".into(),
            },
            Error::ChainTooDeep {
                limit: 32,
                chain: "A \"x\" -> ...".into(),
            },
            Error::Fenced {
                key: "mesh/c/own/bank/Account/0042".into(),
                reason: "failed session check".into(),
            },
            Error::NotEnoughMembers { have: 1, need: 2 },
            Error::State {
                actor: "Account".into(),
                id: "a1".into(),
                error: StoreError::Conflict {
                    expected: 3,
                    stored: 4,
                },
            },
            Error::State {
                actor: "Account".into(),
                id: "a2".into(),
                error: StoreError::Fenced {
                    token: 5,
                    stored: 9,
                },
            },
            Error::State {
                actor: "Account".into(),
                id: "a3".into(),
                error: StoreError::TooLarge { size: 9, limit: 8 },
            },
            Error::State {
                actor: "Account".into(),
                id: "a4".into(),
                error: StoreError::Unavailable("connection refused".into()),
            },
            Error::State {
                actor: "Account".into(),
                id: "a5".into(),
                error: StoreError::Uncertain("commit failed".into()),
            },
            Error::State {
                actor: "Account".into(),
                id: "a6".into(),
                error: StoreError::Codec("invalid type".into()),
            },
            Error::ShutdownTimeout {
                pending: "the leave drain: 2 activations".into(),
            },
            Error::Start(StartError::InvalidSetting {
                setting: "NodeBuilder::id",
                reason: "empty node id".into(),
            }),
            Error::Start(StartError::TagCollision {
                tag: 7,
                first: "A::m".into(),
                second: "B::m".into(),
            }),
            Error::Start(StartError::Listen {
                addr: "0.0.0.0:7000".into(),
                reason: "address in use".into(),
            }),
            Error::Start(StartError::discovery("403 ACL not found")),
            Error::Start(StartError::NoRuntime),
            Error::Start(StartError::MissingCookie),
            Error::Start(StartError::WeakCookie {
                bits: 40,
                needed: 128,
            }),
            Error::Start(StartError::IdentityLimits {
                reason: "node id of 300 bytes, 255 at most".into(),
            }),
            Error::Start(StartError::NoLeaseStore {
                has_discovery: true,
            }),
            Error::Start(StartError::SidecarWithoutListener),
            Error::Start(StartError::Sidecar {
                reason: "haproxy is not installed".into(),
            }),
            Error::Start(StartError::Internal {
                reason: "no randomness".into(),
            }),
            Error::Remote {
                code: 999,
                message: "quota exceeded".into(),
            },
        ]
    }

    #[test]
    fn codes_are_pinned() {
        // Pinned forever: a renumbered code breaks every mixed-version
        // cluster. Add new codes, never change these.
        let want: [(u16, u16); 33] = [
            (code::TIMEOUT, 1),
            (code::NO_NODE_FOR_CAPABILITY, 2),
            (code::UNKNOWN_ACTOR_TYPE, 3),
            (code::UNKNOWN_MESSAGE, 4),
            (code::ACTIVATION_FAILED, 5),
            (code::HANDLER_PANICKED, 6),
            (code::MAILBOX_FULL, 7),
            (code::NODE_DOWN, 8),
            (code::REFUSED, 9),
            (code::CODEC, 10),
            (code::SHUTTING_DOWN, 11),
            (code::CANCELLED, 12),
            (code::UNREACHABLE, 13),
            (code::NOT_STARTED, 14),
            (code::DISCOVERY, 15),
            (code::CALL_CYCLE, 16),
            (code::CHAIN_TOO_DEEP, 17),
            (code::SHUTDOWN_TIMEOUT, 19),
            (code::FENCED, 30),
            (code::STATE, 31),
            (code::NOT_ENOUGH_MEMBERS, 18),
            (code::START_CONFIG, 101),
            (code::START_TAG_COLLISION, 102),
            (code::START_LISTEN, 103),
            (code::START_DISCOVERY, 104),
            (code::START_NO_RUNTIME, 105),
            (code::START_MISSING_COOKIE, 106),
            (code::START_WEAK_COOKIE, 107),
            (code::START_IDENTITY_LIMITS, 108),
            (code::START_NO_LEASE_STORE, 109),
            (code::START_SIDECAR_WITHOUT_LISTENER, 110),
            (code::START_SIDECAR, 111),
            (code::START_INTERNAL, 112),
        ];
        for (got, want) in want {
            assert_eq!(got, want);
        }
        let codes: Vec<u16> = every_error().iter().map(Error::code).collect();
        assert_eq!(
            codes,
            [
                1, 2, 3, 4, 5, 6, 7, 8, 13, 9, 10, 11, 12, 14, 15, 16, 17, 30, 18, 31, 31, 31, 31,
                31, 31, 19, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 999
            ]
        );
    }

    #[test]
    fn an_error_stays_small() {
        // Larger, it grows every activation's task: 104 bytes cost 38
        // bytes per idle activation in the local benchmark (2.6%).
        assert!(std::mem::size_of::<Error>() <= 80);
    }

    #[test]
    fn the_body_layout_is_pinned() {
        let body = encode_envelope(&Failure::from_error(&Error::timeout()), 0).unwrap();
        let mut want = vec![0x99, 0x01, 0xa0 | 14];
        want.extend_from_slice(b"call timed out");
        // actor, id, node, tag, detail, addr, message
        want.extend_from_slice(&[0xa0, 0xa0, 0xa0, 0x00, 0xa0, 0xa0, 0xa0]);
        assert_eq!(body, want);
    }

    #[test]
    fn every_variant_round_trips_in_both_encodings() {
        for error in every_error() {
            let failure = Failure::from_error(&error);
            assert_eq!(failure.code, error.code(), "{error:?}");
            for body in [
                encode_envelope(&failure, 64).unwrap(),
                encode(&failure).unwrap(),
            ] {
                let back: Failure = decode(&body).unwrap();
                assert_eq!(back, failure);
                assert_eq!(back.into_error(), error);
            }
        }
    }

    #[test]
    fn the_text_is_the_senders_display() {
        let e = Error::node_down("node-b");
        assert_eq!(Failure::from_error(&e).text, e.to_string());
        let remote = Error::Remote {
            code: 999,
            message: "quota exceeded".into(),
        };
        assert_eq!(Failure::from_error(&remote).text, "quota exceeded");
    }

    /// What a newer peer might send: the same fields and more after them.
    #[derive(Serialize)]
    struct Newer {
        code: u16,
        text: String,
        actor: String,
        id: String,
        node: String,
        tag: u64,
        detail: String,
        addr: String,
        message: String,
        retry_after_ms: u64,
        hints: Vec<(String, u32)>,
    }

    #[test]
    fn a_longer_body_from_a_newer_peer_decodes() {
        let newer = Newer {
            code: code::MAILBOX_FULL,
            text: "mailbox of Player \"p1\" is full".into(),
            actor: "Player".into(),
            id: "p1".into(),
            node: String::new(),
            tag: 0,
            detail: String::new(),
            addr: String::new(),
            message: String::new(),
            retry_after_ms: 250,
            hints: vec![("backoff".into(), 2)],
        };
        let want = Error::MailboxFull {
            actor: "Player".into(),
            id: "p1".into(),
        };
        // As an array (how bodies are sent) and as a map.
        for body in [
            encode_envelope(&newer, 64).unwrap(),
            encode(&newer).unwrap(),
        ] {
            let failure: Failure = decode(&body).unwrap();
            assert_eq!(failure.into_error(), want);
        }
        // Extra elements of any type, nested ones included.
        let body = rmp_serde::to_vec(&(
            code::TIMEOUT,
            "call timed out",
            "",
            "",
            "",
            0u64,
            "",
            "",
            "",
            vec![vec![1u8, 2], vec![3]],
            ("x", 1.5f64),
        ))
        .unwrap();
        assert_eq!(
            decode::<Failure>(&body).unwrap().into_error(),
            Error::timeout()
        );
    }

    #[test]
    fn a_shorter_body_decodes_with_defaults() {
        let body =
            rmp_serde::to_vec(&(code::ACTIVATION_FAILED, "activation failed", "Player", "p1"))
                .unwrap();
        assert_eq!(
            decode::<Failure>(&body).unwrap().into_error(),
            Error::ActivationFailed {
                actor: "Player".into(),
                id: "p1".into(),
                reason: String::new(),
            }
        );
        let body = rmp_serde::to_vec(&(code::SHUTTING_DOWN, "node is shutting down")).unwrap();
        assert_eq!(
            decode::<Failure>(&body).unwrap().into_error(),
            Error::ShuttingDown
        );
        #[derive(Serialize)]
        struct Short {
            code: u16,
            text: String,
            node: String,
        }
        let short = Short {
            code: code::NODE_DOWN,
            text: "node \"b\" is down or unreachable".into(),
            node: "b".into(),
        };
        assert_eq!(
            decode::<Failure>(&encode(&short).unwrap())
                .unwrap()
                .into_error(),
            Error::node_down("b")
        );
    }

    #[test]
    fn an_unknown_code_is_a_remote_error_not_a_codec_error() {
        let body = rmp_serde::to_vec(&(
            4242u16,
            "quota exceeded for tenant t1",
            "",
            "",
            "",
            0u64,
            "",
            "",
            "",
            7u8,
        ))
        .unwrap();
        let error = decode::<Failure>(&body).unwrap().into_error();
        assert_eq!(
            error,
            Error::Remote {
                code: 4242,
                message: "quota exceeded for tenant t1".into(),
            }
        );
        assert_eq!(error.code(), 4242);
        assert_eq!(
            error.to_string(),
            "remote error 4242: quota exceeded for tenant t1"
        );
    }

    #[test]
    fn a_body_without_code_or_text_is_a_codec_error() {
        for body in [
            rmp_serde::to_vec(&(1u16,)).unwrap(),
            rmp_serde::to_vec(&("text", 1u16)).unwrap(),
            vec![0x90],
            vec![0x80],
            vec![0xc1],
        ] {
            assert!(matches!(decode::<Failure>(&body), Err(Error::Codec(_))));
        }
    }
}
