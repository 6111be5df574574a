//! Frame bodies: what each [`Kind`](super::Kind) carries, encoded with
//! rmp-serde (handshake bodies as maps, the others as arrays). The `Error`
//! body, [`Failure`](super::Failure), has its own module (`failure`).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// `Hello`: the dialer introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster the dialer belongs to.
    pub cluster: String,
    /// The dialer's node id.
    pub node: String,
    /// The protocol version the dialer speaks.
    pub version: u8,
    /// The capabilities the dialer hosts.
    pub capabilities: Vec<String>,
    /// Where the dialer's own listener accepts connections (empty if none).
    #[serde(default)]
    pub addr: String,
    /// Which run of the node this is: random at each start, so peers tell
    /// a restarted node from the one that left (0 from older peers).
    #[serde(default)]
    pub incarnation: u64,
    /// The dialer's random nonce (32 bytes).
    pub nonce: ByteBuf,
}

/// `Challenge`: the listener introduces itself and proves it knows the
/// cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The listener's cluster.
    pub cluster: String,
    /// The listener's node id.
    pub node: String,
    /// The protocol version the listener speaks.
    pub version: u8,
    /// The capabilities the listener hosts.
    pub capabilities: Vec<String>,
    /// Where the listener accepts connections.
    #[serde(default)]
    pub addr: String,
    /// Which run of the node this is (see [`Hello::incarnation`]).
    #[serde(default)]
    pub incarnation: u64,
    /// The listener's random nonce (32 bytes).
    pub nonce: ByteBuf,
    /// HMAC-SHA256 proof over both nonces (see `handshake`).
    pub proof: ByteBuf,
}

/// `Auth`: the dialer's proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// HMAC-SHA256 proof over both nonces (see `handshake`).
    pub proof: ByteBuf,
}

/// `Welcome`: the listener accepted the dialer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {}

/// `Call`: run handler `tag` of actor `id`, reply with the same
/// correlation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// The handler's wire tag.
    pub tag: u64,
    /// The actor id.
    pub id: String,
    /// Milliseconds left before the caller gives up: the callee drops the
    /// work once they have passed. Relative, because clocks differ.
    pub timeout_ms: u64,
    /// How many times this call was forwarded (at most once).
    #[serde(default)]
    pub hops: u8,
    /// The message, rmp-serde.
    pub payload: ByteBuf,
}

/// `Cast`: run handler `tag` of actor `id`, no reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cast {
    /// The handler's wire tag.
    pub tag: u64,
    /// The actor id.
    pub id: String,
    /// How many times this cast was forwarded (at most once).
    #[serde(default)]
    pub hops: u8,
    /// The message, rmp-serde.
    pub payload: ByteBuf,
}

/// `Reply`: the handler's reply, rmp-serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The reply, rmp-serde.
    pub payload: ByteBuf,
}

/// One member in a `Membership` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub node: String,
    /// Address its listener accepts connections on.
    pub addr: String,
    /// Capabilities it hosts.
    pub capabilities: Vec<String>,
}

/// `Membership`: the members the sender knows to be up, itself included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The members.
    pub members: Vec<Member>,
}
