//! The connection handshake (sans-IO): both ends prove they hold the
//! cluster cookie, without sending it.
//!
//! ```text
//! dialer                                   listener
//!   Hello { cluster, node, version, caps, nonce_d }  ->
//!        <-  Challenge { cluster, node, version, caps, nonce_l, proof_l }
//!   Auth { proof_d }                                 ->
//!        <-  Welcome {}
//! ```
//!
//! `proof_l = HMAC-SHA256(cookie, "mesh/1 listener" | cluster | nonce_d |
//! nonce_l | listener node | dialer node)` and `proof_d` likewise with
//! `"mesh/1 dialer"` and the nonces and nodes swapped; every field is
//! length-prefixed. Proofs are compared in constant time. Either side that
//! refuses sends an `Error` frame (correlation id 0) saying why, logs it and
//! closes: wrong cluster, wrong version, wrong cookie, or a malformed
//! message. A listener also drops a dialer that says nothing within the
//! handshake timeout (in the transport).
//!
//! Both `Hello` and `Challenge` also say what the sender hosts: its
//! capabilities and, since version 3, its actor types with their handlers'
//! wire tags ([`Hosted`]); the [`Peer`] each side gets carries them.

use hmac::{Hmac, Mac};
use serde_bytes::ByteBuf;
use sha2::Sha256;

use super::frame::VERSION;
use super::message::{Auth, Challenge, Hello, Hosted};

const NONCE_LEN: usize = 32;

/// A shared cluster secret. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Cookie(Vec<u8>);

impl Cookie {
    /// A cookie from its bytes (for example an environment variable).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Cookie(secret.as_ref().to_vec())
    }
}

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie(..)")
    }
}

/// Who this end is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The cluster name.
    pub cluster: String,
    /// This node's id.
    pub node: String,
    /// The capabilities this node hosts.
    pub capabilities: Vec<String>,
    /// Where this node's listener accepts connections (empty if none).
    pub addr: String,
    /// Which run of the node this is: random at each start.
    pub incarnation: u64,
    /// The actor types this node hosts (advertised in the handshake).
    pub actors: Vec<Hosted>,
}

/// Who the other end turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub node: String,
    /// Its capabilities.
    pub capabilities: Vec<String>,
    /// Where its listener accepts connections (empty if none).
    pub addr: String,
    /// Which run of the node it is (random at each start; 0 from a peer
    /// that does not say).
    pub incarnation: u64,
    /// Whether it decodes a trace context in `Call` and `Cast` bodies
    /// (said in its handshake; older peers do not).
    pub trace_context: bool,
    /// Whether it decodes a call chain in `Call` bodies (said in its
    /// handshake; older peers do not).
    pub call_chain: bool,
    /// The actor types it hosts, with their handlers' wire tags (`None`:
    /// it did not say; taken to host every type of its capabilities).
    pub actors: Option<Vec<Hosted>>,
    /// Where the stream came from, as the transport saw it (for logs).
    pub remote: String,
    /// The identity the transport verified (a SPIFFE ID from a TLS
    /// certificate, say); `None` over a transport that verifies none.
    pub identity: Option<String>,
}

impl Peer {
    /// The peer with what the transport established about the stream.
    pub fn with_facts(mut self, facts: crate::transport::ConnFacts) -> Self {
        self.remote = facts.remote;
        self.identity = facts.identity;
        self
    }
}

/// Why a handshake failed. Sent to the peer (as text) before closing.
/// `#[non_exhaustive]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer belongs to another cluster.
    #[error("wrong cluster: this node is in {ours:?}, the peer in {theirs:?}")]
    WrongCluster {
        /// Ours.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// The peer speaks another protocol version.
    #[error("wrong protocol version: this node speaks {ours}, the peer {theirs}")]
    WrongVersion {
        /// Ours.
        ours: u8,
        /// Theirs.
        theirs: u8,
    },
    /// The peer's proof does not match: it holds another cookie.
    #[error("wrong cookie: the peer could not prove it holds the cluster cookie")]
    WrongCookie,
    /// The peer sent something that is not the expected handshake message.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// The peer refused us, saying why.
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// No random bytes for a nonce.
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

fn nonce() -> Result<Vec<u8>, HandshakeError> {
    let mut n = vec![0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| HandshakeError::Random(e.to_string()))?;
    Ok(n)
}

/// HMAC-SHA256 keyed by the cookie over a label and length-prefixed parts.
fn mac(cookie: &Cookie, label: &str, parts: [&[u8]; 5]) -> Option<Hmac<Sha256>> {
    // HMAC takes keys of any length; `new_from_slice` does not fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(&cookie.0).ok()?;
    mac.update(label.as_bytes());
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    Some(mac)
}

fn proof(cookie: &Cookie, label: &str, parts: [&[u8]; 5]) -> Vec<u8> {
    mac(cookie, label, parts).map_or_else(Vec::new, |m| m.finalize().into_bytes().to_vec())
}

fn verify(
    cookie: &Cookie,
    label: &str,
    parts: [&[u8]; 5],
    claimed: &[u8],
) -> Result<(), HandshakeError> {
    let mac = mac(cookie, label, parts).ok_or(HandshakeError::WrongCookie)?;
    // Constant-time comparison.
    mac.verify_slice(claimed)
        .map_err(|_| HandshakeError::WrongCookie)
}

fn check_peer(
    ours: &Identity,
    cluster: &str,
    version: u8,
    nonce: &[u8],
) -> Result<(), HandshakeError> {
    if version != VERSION {
        return Err(HandshakeError::WrongVersion {
            ours: VERSION,
            theirs: version,
        });
    }
    if cluster != ours.cluster {
        return Err(HandshakeError::WrongCluster {
            ours: ours.cluster.clone(),
            theirs: cluster.to_owned(),
        });
    }
    if nonce.len() != NONCE_LEN {
        return Err(HandshakeError::Malformed(format!(
            "nonce of {} bytes",
            nonce.len()
        )));
    }
    Ok(())
}

/// The dialing side, between `Hello` and `Challenge`.
#[derive(Debug)]
pub struct Dialer {
    me: Identity,
    cookie: Cookie,
    nonce: Vec<u8>,
}

impl Dialer {
    /// Starts a handshake: the `Hello` to send.
    pub fn start(me: Identity, cookie: Cookie) -> Result<(Dialer, Hello), HandshakeError> {
        let nonce = nonce()?;
        let hello = Hello {
            cluster: me.cluster.clone(),
            node: me.node.clone(),
            version: VERSION,
            capabilities: me.capabilities.clone(),
            addr: me.addr.clone(),
            incarnation: me.incarnation,
            trace_context: true,
            call_chain: true,
            actors: Some(me.actors.clone()),
            nonce: ByteBuf::from(nonce.clone()),
        };
        Ok((Dialer { me, cookie, nonce }, hello))
    }

    /// Checks the listener's challenge: the `Auth` to send, and who the
    /// listener is (accepted once its `Welcome` arrives).
    pub fn on_challenge(self, c: &Challenge) -> Result<(Auth, Peer), HandshakeError> {
        check_peer(&self.me, &c.cluster, c.version, &c.nonce)?;
        let cluster = self.me.cluster.as_bytes();
        let (me, them) = (self.me.node.as_bytes(), c.node.as_bytes());
        verify(
            &self.cookie,
            "mesh/1 listener",
            [cluster, &self.nonce, &c.nonce, them, me],
            &c.proof,
        )?;
        let proof = proof(
            &self.cookie,
            "mesh/1 dialer",
            [cluster, &c.nonce, &self.nonce, me, them],
        );
        Ok((
            Auth {
                proof: ByteBuf::from(proof),
            },
            Peer {
                node: c.node.clone(),
                capabilities: c.capabilities.clone(),
                addr: c.addr.clone(),
                incarnation: c.incarnation,
                trace_context: c.trace_context,
                call_chain: c.call_chain,
                actors: c.actors.clone(),
                remote: String::new(),
                identity: None,
            },
        ))
    }
}

/// The listening side, between `Challenge` and `Auth`.
#[derive(Debug)]
pub struct Listener {
    cookie: Cookie,
    cluster: String,
    node: String,
    nonce: Vec<u8>,
    peer: Peer,
    peer_nonce: Vec<u8>,
}

impl Listener {
    /// Answers a dialer's `Hello` with the `Challenge` to send.
    pub fn on_hello(
        me: &Identity,
        cookie: Cookie,
        h: &Hello,
    ) -> Result<(Listener, Challenge), HandshakeError> {
        check_peer(me, &h.cluster, h.version, &h.nonce)?;
        let nonce = nonce()?;
        let cluster = me.cluster.as_bytes();
        let proof = proof(
            &cookie,
            "mesh/1 listener",
            [
                cluster,
                &h.nonce,
                &nonce,
                me.node.as_bytes(),
                h.node.as_bytes(),
            ],
        );
        let challenge = Challenge {
            cluster: me.cluster.clone(),
            node: me.node.clone(),
            version: VERSION,
            capabilities: me.capabilities.clone(),
            addr: me.addr.clone(),
            incarnation: me.incarnation,
            trace_context: true,
            call_chain: true,
            actors: Some(me.actors.clone()),
            nonce: ByteBuf::from(nonce.clone()),
            proof: ByteBuf::from(proof),
        };
        let listener = Listener {
            cookie,
            cluster: me.cluster.clone(),
            node: me.node.clone(),
            nonce,
            peer: Peer {
                node: h.node.clone(),
                capabilities: h.capabilities.clone(),
                addr: h.addr.clone(),
                incarnation: h.incarnation,
                trace_context: h.trace_context,
                call_chain: h.call_chain,
                actors: h.actors.clone(),
                remote: String::new(),
                identity: None,
            },
            peer_nonce: h.nonce.to_vec(),
        };
        Ok((listener, challenge))
    }

    /// Checks the dialer's proof: who the dialer is, if it holds the cookie.
    pub fn on_auth(self, a: &Auth) -> Result<Peer, HandshakeError> {
        let parts = [
            self.cluster.as_bytes(),
            &self.nonce[..],
            &self.peer_nonce[..],
            self.peer.node.as_bytes(),
            self.node.as_bytes(),
        ];
        verify(&self.cookie, "mesh/1 dialer", parts, &a.proof)?;
        Ok(self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cluster: &str, node: &str) -> Identity {
        Identity {
            cluster: cluster.into(),
            node: node.into(),
            capabilities: vec!["game".into()],
            addr: String::new(),
            incarnation: 7,
            actors: vec![Hosted {
                capability: "game".into(),
                actor: "Player".into(),
                tags: vec![crate::wire::tag("game", "Player", "Score")],
            }],
        }
    }

    fn run(
        dialer: (Identity, &str),
        listener: (Identity, &str),
    ) -> (Result<Peer, HandshakeError>, Result<Peer, HandshakeError>) {
        let (d, hello) = Dialer::start(dialer.0, Cookie::new(dialer.1)).unwrap();
        let (l, challenge) = match Listener::on_hello(&listener.0, Cookie::new(listener.1), &hello)
        {
            Ok(x) => x,
            Err(e) => return (Err(HandshakeError::Refused(e.to_string())), Err(e)),
        };
        let (auth, lpeer) = match d.on_challenge(&challenge) {
            Ok(x) => x,
            Err(e) => return (Err(e.clone()), Err(HandshakeError::Refused(e.to_string()))),
        };
        (Ok(lpeer), l.on_auth(&auth))
    }

    #[test]
    fn same_cluster_and_cookie_agree() {
        let (d, l) = run((id("c", "a"), "s3cret"), (id("c", "b"), "s3cret"));
        let (d, l) = (d.unwrap(), l.unwrap());
        assert_eq!(d.node, "b");
        assert_eq!(l.node, "a");
        // Each learns what the other hosts.
        assert_eq!(d.actors, Some(id("c", "b").actors));
        assert_eq!(l.actors, Some(id("c", "a").actors));
    }

    #[test]
    fn a_wrong_cookie_is_caught_by_both_ends() {
        let (d, l) = run((id("c", "a"), "mine"), (id("c", "b"), "theirs"));
        assert_eq!(
            d,
            Err(HandshakeError::WrongCookie),
            "the dialer checks first"
        );
        assert!(matches!(l, Err(HandshakeError::Refused(_))));
        // A dialer that skips the check is caught by the listener.
        let (_, hello) = Dialer::start(id("c", "a"), Cookie::new("mine")).unwrap();
        let (l, _) = Listener::on_hello(&id("c", "b"), Cookie::new("theirs"), &hello).unwrap();
        let forged = Auth {
            proof: ByteBuf::from(vec![0u8; 32]),
        };
        assert_eq!(l.on_auth(&forged), Err(HandshakeError::WrongCookie));
    }

    #[test]
    fn wrong_cluster_and_version_are_refused() {
        let (_, l) = run((id("blue", "a"), "k"), (id("green", "b"), "k"));
        assert_eq!(
            l,
            Err(HandshakeError::WrongCluster {
                ours: "green".into(),
                theirs: "blue".into()
            })
        );
        let (_, mut hello) = Dialer::start(id("c", "a"), Cookie::new("k")).unwrap();
        hello.version = 9;
        let err = Listener::on_hello(&id("c", "b"), Cookie::new("k"), &hello).unwrap_err();
        assert_eq!(err, HandshakeError::WrongVersion { ours: 3, theirs: 9 });
        assert_eq!(
            err.to_string(),
            "wrong protocol version: this node speaks 3, the peer 9"
        );
    }

    #[test]
    fn version_3_refuses_version_2_both_ways() {
        assert_eq!(VERSION, 3);
        // A version 2 dialer (its wire tags hash no actor type name): the
        // listener refuses it before proving anything.
        let (_, mut hello) = Dialer::start(id("c", "old"), Cookie::new("k")).unwrap();
        hello.version = 2;
        hello.actors = None;
        let err = Listener::on_hello(&id("c", "new"), Cookie::new("k"), &hello).unwrap_err();
        assert_eq!(
            err.to_string(),
            "wrong protocol version: this node speaks 3, the peer 2"
        );
        // A version 2 listener: the dialer refuses its challenge.
        let (d, hello) = Dialer::start(id("c", "new"), Cookie::new("k")).unwrap();
        let (_, mut challenge) =
            Listener::on_hello(&id("c", "old"), Cookie::new("k"), &hello).unwrap();
        challenge.version = 2;
        assert_eq!(
            d.on_challenge(&challenge).unwrap_err(),
            HandshakeError::WrongVersion { ours: 3, theirs: 2 }
        );
        // Below the handshake, a version 2 frame header is refused too.
        let codec = crate::wire::FrameCodec::default();
        let mut buf = bytes::BytesMut::new();
        codec
            .encode(crate::wire::Kind::Hello, 0, b"\x80", &mut buf)
            .unwrap();
        buf[6] = 2;
        let err = codec.decode(&mut buf).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol version 2 is not supported (this node speaks 3)"
        );
    }

    #[test]
    fn a_replayed_auth_does_not_pass_a_new_challenge() {
        let (d, hello) = Dialer::start(id("c", "a"), Cookie::new("k")).unwrap();
        let (l1, ch1) = Listener::on_hello(&id("c", "b"), Cookie::new("k"), &hello).unwrap();
        let (auth, _) = d.on_challenge(&ch1).unwrap();
        assert!(l1.on_auth(&auth).is_ok());
        // Same Hello replayed: the listener picks a fresh nonce.
        let (l2, _) = Listener::on_hello(&id("c", "b"), Cookie::new("k"), &hello).unwrap();
        assert_eq!(l2.on_auth(&auth), Err(HandshakeError::WrongCookie));
    }

    #[test]
    fn the_cookie_never_shows_in_debug_output() {
        assert_eq!(format!("{:?}", Cookie::new("hunter2")), "Cookie(..)");
    }
}
