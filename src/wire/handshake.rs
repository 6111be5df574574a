//! The connection handshake (sans-IO): both ends prove they hold the
//! cluster cookie, without sending it, the dialer first; the listener
//! says nothing about itself before the dialer has proved it.
//!
//! ```text
//! dialer                                             listener
//!   Hello { version, cluster, nonce_d }                ->
//!        <-  Challenge { version, nonce_l }
//!   Auth { dialer's node, caps, addr, incarnation,
//!          flags, actors, proof_d }                    ->
//!        <-  Welcome { listener's node, caps, addr, incarnation,
//!                      flags, actors, proof_l }
//! ```
//!
//! **The key.** `K = Argon2id(cookie, salt = "mesh/4 handshake key" |
//! cluster)`, 19 MiB, 2 passes, 1 lane, 32 bytes: memory-hard, so a proof
//! seen by an attacker costs that much per cookie guessed offline. A node
//! derives it once when it starts; the process keeps it per (cookie,
//! cluster), so many nodes in one process pay it once. Only this node's own
//! cluster name is ever used as salt: a peer's `Hello` cannot make a node
//! derive another key.
//!
//! **The proofs.** HMAC-SHA256 keyed by `K` over a label and the
//! transcript: every field either side sent, each length-prefixed (lists by
//! their count, then each element). `proof_d` covers the label `"mesh/4
//! dialer"`, the version, the cluster, both nonces and all the dialer's
//! `Auth` fields; `proof_l` covers `"mesh/4 listener"`, the same, then all
//! the listener's `Welcome` fields. Proofs are compared in constant time.
//!
//! **What each end learns before the other is authenticated.** The
//! listener reveals only the protocol version and a random nonce. Of a
//! dialer in another cluster it says only that it is not in that one (never
//! its own cluster name). The dialer, by dialing, reveals its identity and
//! one proof to the address it chose to dial: a listener that is not a
//! member can try to guess the cookie offline from it, which the
//! memory-hard key and the cookie strength rule (128 bits, enforced at
//! start, see [`Cookie::entropy_bits`]) make hopeless.
//!
//! **Limits.** Handshake frames have their own size limit,
//! [`HANDSHAKE_MAX_FRAME`](super::HANDSHAKE_MAX_FRAME), and their bodies
//! are checked before rmp-serde decodes them ([`decode_bounded`]): at most
//! [`MAX_ITEMS`] list and map elements in all, strings of at most
//! [`MAX_STRING`] bytes; then each field against its own limit
//! ([`MAX_NAME`], [`MAX_ADDR`], [`MAX_CAPABILITIES`], [`MAX_ACTORS`],
//! [`MAX_TAGS`]). A node refuses to start with an identity over them.
//!
//! Either side that refuses sends an `Error` frame (correlation id 0)
//! saying why, logs it and closes: wrong cluster, wrong version, wrong
//! cookie, or a malformed message. What is logged or shown of a peer's
//! strings is escaped and cut ([`printable`]).

use std::sync::{Mutex, PoisonError};

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use super::frame::VERSION;
use super::message::{Auth, Challenge, Hello, Hosted, Welcome};

const NONCE_LEN: usize = 32;
const PROOF_LEN: usize = 32;

/// The longest node id, cluster name, capability or actor type name a
/// handshake carries, in bytes.
pub const MAX_NAME: usize = 255;
/// The longest advertised address a handshake carries, in bytes.
pub const MAX_ADDR: usize = 512;
/// The most capabilities a handshake carries.
pub const MAX_CAPABILITIES: usize = 256;
/// The most actor types a handshake carries.
pub const MAX_ACTORS: usize = 256;
/// The most handler wire tags a handshake carries, over all actor types.
pub const MAX_TAGS: usize = 4096;
/// The most list and map elements in one handshake body, all nested
/// levels together, checked on the raw bytes before decoding.
pub const MAX_ITEMS: usize = 8192;
/// The longest string or byte string in a handshake body, checked on the
/// raw bytes before decoding.
pub const MAX_STRING: usize = 1024;
/// The least cookie entropy a node starts with (see
/// `Cookie::entropy_bits`), unless told to allow a weak one.
pub const MIN_COOKIE_BITS: f64 = 128.0;

/// A shared cluster secret. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Cookie(Vec<u8>);

impl Cookie {
    /// A cookie from its bytes (for example an environment variable).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Cookie(secret.as_ref().to_vec())
    }

    /// A conservative estimate of the cookie's entropy, in bits: its
    /// length times the smaller of
    /// - `log2` of the size of the character classes present (lowercase
    ///   26, uppercase 26, digits 10, other printable ASCII 33, control
    ///   bytes 33, bytes over 127 128), as if every character were drawn
    ///   at random from them, and
    /// - the empirical entropy per character (from how often each byte
    ///   occurs), which repeated characters bring down.
    ///
    /// Random cookies score close to their real entropy (`openssl rand
    /// -base64 32` gives about 210); words, repetitions and short strings
    /// score low. It cannot see every pattern: generate cookies, do not
    /// make them up.
    pub fn entropy_bits(&self) -> f64 {
        let s = &self.0;
        if s.is_empty() {
            return 0.0;
        }
        let mut classes = [false; 6];
        let mut counts = [0usize; 256];
        for &b in s {
            counts[b as usize] += 1;
            let class = match b {
                b'a'..=b'z' => 0,
                b'A'..=b'Z' => 1,
                b'0'..=b'9' => 2,
                0x20..=0x7e => 3,
                0x80..=0xff => 5,
                _ => 4,
            };
            classes[class] = true;
        }
        const SIZES: [f64; 6] = [26.0, 26.0, 10.0, 33.0, 33.0, 128.0];
        let pool: f64 = classes
            .iter()
            .zip(SIZES)
            .filter(|(present, _)| **present)
            .map(|(_, n)| n)
            .sum();
        let n = s.len() as f64;
        let empirical: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                -p * p.log2()
            })
            .sum();
        n * pool.log2().min(empirical)
    }
}

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie(..)")
    }
}

/// The handshake key derived from a cookie and a cluster name.
#[derive(Clone, Copy)]
struct Key([u8; 32]);

/// Argon2id parameters of the key: 19 MiB, 2 passes, 1 lane (the OWASP
/// minimum for Argon2id).
const KDF_MEMORY_KIB: u32 = 19 * 1024;
const KDF_PASSES: u32 = 2;
const KDF_SALT_LABEL: &[u8] = b"mesh/4 handshake key";
/// How many derived keys the process keeps.
const KEYS_KEPT: usize = 32;

type KeyMemo = Vec<([u8; 32], String, Key)>;

static KEYS: Mutex<KeyMemo> = Mutex::new(Vec::new());

fn memo_id(cookie: &Cookie) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"mesh/4 key memo");
    h.update(&cookie.0);
    h.finalize().into()
}

/// The key of `cookie` in `cluster`: derived once per process, then
/// taken from the memo.
fn key(cookie: &Cookie, cluster: &str) -> Result<Key, HandshakeError> {
    let id = memo_id(cookie);
    let found = |keys: &KeyMemo| {
        keys.iter()
            .find(|(i, c, _)| *i == id && c == cluster)
            .map(|(_, _, k)| *k)
    };
    if let Some(k) = found(&KEYS.lock().unwrap_or_else(PoisonError::into_inner)) {
        return Ok(k);
    }
    let params = argon2::Params::new(KDF_MEMORY_KIB, KDF_PASSES, 1, Some(32))
        .map_err(|e| HandshakeError::Key(e.to_string()))?;
    let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut salt = KDF_SALT_LABEL.to_vec();
    salt.extend_from_slice(cluster.as_bytes());
    let mut out = [0u8; 32];
    kdf.hash_password_into(&cookie.0, &salt, &mut out)
        .map_err(|e| HandshakeError::Key(e.to_string()))?;
    let k = Key(out);
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    if found(&keys).is_none() {
        if keys.len() >= KEYS_KEPT {
            keys.remove(0);
        }
        keys.push((id, cluster.to_owned(), k));
    }
    Ok(k)
}

/// Derives (and keeps) the handshake key of `cookie` in `cluster`, as a
/// node does when it starts: the first handshake then costs no KDF.
pub(crate) fn prepare_key(cookie: &Cookie, cluster: &str) -> Result<(), HandshakeError> {
    key(cookie, cluster).map(|_| ())
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

impl Identity {
    /// Checks the identity against the handshake's limits (a node refuses
    /// to start with one over them): a clear reason if not.
    pub fn check(&self) -> Result<(), String> {
        check_name("cluster name", &self.cluster)?;
        check_fields(&fields_of(self))?;
        // And its `Auth` or `Welcome` fits a handshake frame (with a
        // checksum, the longest address and incarnation).
        let probe = Welcome {
            node: self.node.clone(),
            capabilities: self.capabilities.clone(),
            addr: "a".repeat(MAX_ADDR),
            incarnation: u64::MAX,
            trace_context: true,
            call_chain: true,
            actors: self.actors.clone(),
            proof: ByteBuf::from(vec![0; PROOF_LEN]),
        };
        let len = super::encode(&probe).map_err(|e| e.to_string())?.len();
        let room = super::HANDSHAKE_MAX_FRAME - super::HEADER_LEN - 8;
        if len > room {
            return Err(format!(
                "its handshake would take {len} bytes (the limit is {room}): fewer or \
                 shorter capabilities and actor types"
            ));
        }
        Ok(())
    }
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
    /// Which run of the node it is (random at each start).
    pub incarnation: u64,
    /// Whether it decodes a trace context in `Call` and `Cast` bodies
    /// (said in its handshake).
    pub trace_context: bool,
    /// Whether it decodes a call chain in `Call` bodies (said in its
    /// handshake).
    pub call_chain: bool,
    /// The actor types it hosts, with their handlers' wire tags (`None`:
    /// it did not say; taken to host every type of its capabilities;
    /// version 4 peers always say).
    pub actors: Option<Vec<Hosted>>,
    /// Where the stream came from, as the transport saw it (for logs).
    pub remote: String,
    /// The identity the transport verified (a SPIFFE ID from a TLS
    /// certificate, say); `None` over a transport that verifies none.
    pub identity: Option<String>,
}

impl Peer {
    /// The peer with what the transport established about the stream:
    /// its remote address and the identity it verified (if any).
    pub fn with_transport(mut self, remote: String, identity: Option<String>) -> Self {
        self.remote = remote;
        self.identity = identity;
        self
    }
}

/// Why a handshake failed. Sent to the peer (as text) before closing.
/// `#[non_exhaustive]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer belongs to another cluster. The text names only the
    /// peer's cluster (escaped and cut): a listener never tells a dialer
    /// which cluster it is in.
    #[error("wrong cluster: this node is not in cluster {}", printable(.theirs, 64))]
    WrongCluster {
        /// Theirs, as the peer said it.
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
    /// The peer refused us, saying why (escaped and cut).
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The peer speaks another protocol (TLS, HTTP, SSH, ...), as its
    /// first bytes tell ([`Opening`](super::Opening)): `reason` says what
    /// and how to fix it.
    #[error("{reason}")]
    WrongProtocol {
        /// What the peer's first bytes are.
        opening: super::Opening,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// No random bytes for a nonce.
    #[error("no randomness for a nonce: {0}")]
    Random(String),
    /// The handshake key could not be derived from the cookie.
    #[error("cannot derive the handshake key: {0}")]
    Key(String),
}

/// `s` fit for a log line: at most `max` characters, control and
/// non-printable characters escaped, and how long it was when cut.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (shown, c) in s.chars().enumerate() {
        if shown == max {
            out.push_str(&format!("... ({} bytes)", s.len()));
            return out;
        }
        out.extend(c.escape_debug());
    }
    out
}

/// Decodes a handshake body (or a refusal) after checking its raw
/// MessagePack: at most [`MAX_ITEMS`] list and map elements in all and
/// strings of at most [`MAX_STRING`] bytes, so that no body makes the
/// decoder allocate much more than its own size. Never panics.
pub fn decode_bounded<T: DeserializeOwned>(body: &[u8]) -> Result<T, HandshakeError> {
    check_msgpack(body, MAX_ITEMS, MAX_STRING).map_err(HandshakeError::Malformed)?;
    rmp_serde::from_slice(body)
        .map_err(|e| HandshakeError::Malformed(printable(&format!("undecodable body: {e}"), 200)))
}

/// Walks one MessagePack value spanning all of `b` without decoding it:
/// counts list and map elements (at most `max_items`) and checks string,
/// binary and extension lengths (at most `max_len`).
fn check_msgpack(b: &[u8], max_items: usize, max_len: usize) -> Result<(), String> {
    let mut at = 0usize;
    let mut pending = 1usize;
    let mut items = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<u64, String> {
        let end = at.checked_add(n).filter(|&e| e <= b.len());
        let Some(end) = end else {
            return Err("truncated body".into());
        };
        let v = b[*at..end]
            .iter()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        *at = end;
        Ok(v)
    };
    while pending > 0 {
        pending -= 1;
        let tag = take(&mut at, 1)? as u8;
        // (elements it opens, bytes it skips)
        let (open, skip): (u64, u64) = match tag {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (2 * u64::from(tag & 0x0f), 0),
            0x90..=0x9f => (u64::from(tag & 0x0f), 0),
            0xa0..=0xbf => (0, u64::from(tag & 0x1f)),
            0xc4 | 0xd9 => (0, take(&mut at, 1)?),
            0xc5 | 0xda => (0, take(&mut at, 2)?),
            0xc6 | 0xdb => (0, take(&mut at, 4)?),
            0xc7 => (0, take(&mut at, 1)? + 1),
            0xc8 => (0, take(&mut at, 2)? + 1),
            0xc9 => (0, take(&mut at, 4)? + 1),
            0xca => (0, 4),
            0xcb => (0, 8),
            0xcc | 0xd0 => (0, 1),
            0xcd | 0xd1 => (0, 2),
            0xce | 0xd2 => (0, 4),
            0xcf | 0xd3 => (0, 8),
            0xd4 => (0, 2),
            0xd5 => (0, 3),
            0xd6 => (0, 5),
            0xd7 => (0, 9),
            0xd8 => (0, 17),
            0xdc => (take(&mut at, 2)?, 0),
            0xdd => (take(&mut at, 4)?, 0),
            0xde => (2 * take(&mut at, 2)?, 0),
            0xdf => (2 * take(&mut at, 4)?, 0),
            0xc1 => return Err("invalid MessagePack byte 0xc1".into()),
        };
        if skip > max_len as u64 {
            return Err(format!("a string of {skip} bytes (the limit is {max_len})"));
        }
        take_skip(b, &mut at, skip as usize)?;
        if open > 0 {
            items = items.saturating_add(usize::try_from(open).unwrap_or(usize::MAX));
            if items > max_items {
                return Err(format!("more than {max_items} list and map elements"));
            }
            pending += open as usize;
        }
    }
    if at != b.len() {
        return Err(format!("{} bytes after the body", b.len() - at));
    }
    Ok(())
}

fn take_skip(b: &[u8], at: &mut usize, n: usize) -> Result<(), String> {
    match at.checked_add(n).filter(|&e| e <= b.len()) {
        Some(end) => {
            *at = end;
            Ok(())
        }
        None => Err("truncated body".into()),
    }
}

fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    if s.len() > MAX_NAME {
        return Err(format!(
            "{what} of {} bytes (the limit is {MAX_NAME})",
            s.len()
        ));
    }
    Ok(())
}

/// What a node says about itself in `Auth` or `Welcome`.
struct Fields<'a> {
    node: &'a str,
    capabilities: &'a [String],
    addr: &'a str,
    incarnation: u64,
    trace_context: bool,
    call_chain: bool,
    actors: &'a [Hosted],
}

impl<'a> Fields<'a> {
    fn of_auth(a: &'a Auth) -> Self {
        Fields {
            node: &a.node,
            capabilities: &a.capabilities,
            addr: &a.addr,
            incarnation: a.incarnation,
            trace_context: a.trace_context,
            call_chain: a.call_chain,
            actors: &a.actors,
        }
    }

    fn of_welcome(w: &'a Welcome) -> Self {
        Fields {
            node: &w.node,
            capabilities: &w.capabilities,
            addr: &w.addr,
            incarnation: w.incarnation,
            trace_context: w.trace_context,
            call_chain: w.call_chain,
            actors: &w.actors,
        }
    }

    fn peer(&self) -> Peer {
        Peer {
            node: self.node.to_owned(),
            capabilities: self.capabilities.to_vec(),
            addr: self.addr.to_owned(),
            incarnation: self.incarnation,
            trace_context: self.trace_context,
            call_chain: self.call_chain,
            actors: Some(self.actors.to_vec()),
            remote: String::new(),
            identity: None,
        }
    }
}

fn check_fields(f: &Fields<'_>) -> Result<(), String> {
    check_name("node id", f.node)?;
    if f.addr.len() > MAX_ADDR {
        return Err(format!(
            "address of {} bytes (the limit is {MAX_ADDR})",
            f.addr.len()
        ));
    }
    if f.capabilities.len() > MAX_CAPABILITIES {
        return Err(format!(
            "{} capabilities (the limit is {MAX_CAPABILITIES})",
            f.capabilities.len()
        ));
    }
    for c in f.capabilities {
        check_name("capability", c)?;
    }
    if f.actors.len() > MAX_ACTORS {
        return Err(format!(
            "{} actor types (the limit is {MAX_ACTORS})",
            f.actors.len()
        ));
    }
    let mut tags = 0usize;
    for a in f.actors {
        check_name("capability", &a.capability)?;
        check_name("actor type name", &a.actor)?;
        tags += a.tags.len();
    }
    if tags > MAX_TAGS {
        return Err(format!("{tags} handler tags (the limit is {MAX_TAGS})"));
    }
    Ok(())
}

/// HMAC-SHA256 keyed by the handshake key over a label and length-prefixed
/// fields.
struct Transcript(Hmac<Sha256>);

impl Transcript {
    fn new(key: &Key, label: &str) -> Result<Self, HandshakeError> {
        // HMAC takes keys of any length: this does not fail.
        let mac = Hmac::<Sha256>::new_from_slice(&key.0)
            .map_err(|e| HandshakeError::Key(e.to_string()))?;
        let mut t = Transcript(mac);
        t.bytes(label.as_bytes());
        Ok(t)
    }

    fn bytes(&mut self, b: &[u8]) {
        self.0.update(&(b.len() as u64).to_be_bytes());
        self.0.update(b);
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }

    /// What both proofs cover first: the `Hello` and the `Challenge`.
    fn opening(&mut self, cluster: &str, nonce_d: &[u8], nonce_l: &[u8]) {
        self.u64(u64::from(VERSION));
        self.bytes(cluster.as_bytes());
        self.bytes(nonce_d);
        self.bytes(nonce_l);
    }

    fn fields(&mut self, f: &Fields<'_>) {
        self.bytes(f.node.as_bytes());
        self.u64(f.capabilities.len() as u64);
        for c in f.capabilities {
            self.bytes(c.as_bytes());
        }
        self.bytes(f.addr.as_bytes());
        self.u64(f.incarnation);
        self.u64(u64::from(f.trace_context));
        self.u64(u64::from(f.call_chain));
        self.u64(f.actors.len() as u64);
        for a in f.actors {
            self.bytes(a.capability.as_bytes());
            self.bytes(a.actor.as_bytes());
            self.u64(a.tags.len() as u64);
            for &t in &a.tags {
                self.u64(t);
            }
        }
    }

    fn proof(self) -> Vec<u8> {
        self.0.finalize().into_bytes().to_vec()
    }

    /// Compares in constant time.
    fn verify(self, claimed: &[u8]) -> Result<(), HandshakeError> {
        self.0
            .verify_slice(claimed)
            .map_err(|_| HandshakeError::WrongCookie)
    }
}

const DIALER: &str = "mesh/4 dialer";
const LISTENER: &str = "mesh/4 listener";

fn nonce() -> Result<Vec<u8>, HandshakeError> {
    let mut n = vec![0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| HandshakeError::Random(e.to_string()))?;
    Ok(n)
}

fn check_version(version: u8) -> Result<(), HandshakeError> {
    if version != VERSION {
        return Err(HandshakeError::WrongVersion {
            ours: VERSION,
            theirs: version,
        });
    }
    Ok(())
}

fn check_nonce(nonce: &[u8]) -> Result<(), HandshakeError> {
    if nonce.len() != NONCE_LEN {
        return Err(HandshakeError::Malformed(format!(
            "nonce of {} bytes",
            nonce.len()
        )));
    }
    Ok(())
}

fn fields_of(me: &Identity) -> Fields<'_> {
    Fields {
        node: &me.node,
        capabilities: &me.capabilities,
        addr: &me.addr,
        incarnation: me.incarnation,
        trace_context: true,
        call_chain: true,
        actors: &me.actors,
    }
}

/// The dialing side, between `Hello` and `Challenge`.
#[derive(Debug)]
pub struct DialHandshake {
    me: Identity,
    key: Key,
    nonce: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl DialHandshake {
    /// Starts a handshake: the `Hello` to send. Derives the key unless
    /// this process already has it.
    pub fn start(me: Identity, cookie: Cookie) -> Result<(DialHandshake, Hello), HandshakeError> {
        let key = key(&cookie, &me.cluster)?;
        let nonce = nonce()?;
        let hello = Hello {
            version: VERSION,
            cluster: me.cluster.clone(),
            nonce: ByteBuf::from(nonce.clone()),
        };
        Ok((DialHandshake { me, key, nonce }, hello))
    }

    /// Answers the listener's challenge: the `Auth` to send (this node and
    /// its proof), and what waits for the listener's `Welcome`.
    pub fn on_challenge(self, c: &Challenge) -> Result<(AwaitingWelcome, Auth), HandshakeError> {
        check_version(c.version)?;
        check_nonce(&c.nonce)?;
        let mut t = Transcript::new(&self.key, DIALER)?;
        t.opening(&self.me.cluster, &self.nonce, &c.nonce);
        t.fields(&fields_of(&self.me));
        let me = &self.me;
        let auth = Auth {
            node: me.node.clone(),
            capabilities: me.capabilities.clone(),
            addr: me.addr.clone(),
            incarnation: me.incarnation,
            trace_context: true,
            call_chain: true,
            actors: me.actors.clone(),
            proof: ByteBuf::from(t.proof()),
        };
        Ok((
            AwaitingWelcome {
                me: self.me,
                key: self.key,
                nonce: self.nonce,
                peer_nonce: c.nonce.to_vec(),
            },
            auth,
        ))
    }
}

/// The dialing side, between `Auth` and `Welcome`.
#[derive(Debug)]
pub struct AwaitingWelcome {
    me: Identity,
    key: Key,
    nonce: Vec<u8>,
    peer_nonce: Vec<u8>,
}

impl AwaitingWelcome {
    /// Checks the listener's proof: who the listener is, if it holds the
    /// cookie.
    pub fn on_welcome(self, w: &Welcome) -> Result<Peer, HandshakeError> {
        let theirs = Fields::of_welcome(w);
        check_fields(&theirs).map_err(HandshakeError::Malformed)?;
        let mut t = Transcript::new(&self.key, LISTENER)?;
        t.opening(&self.me.cluster, &self.nonce, &self.peer_nonce);
        t.fields(&fields_of(&self.me));
        t.fields(&theirs);
        t.verify(&w.proof)?;
        Ok(theirs.peer())
    }
}

/// The listening side, between `Challenge` and `Auth`.
#[derive(Debug)]
pub struct ListenHandshake {
    me: Identity,
    key: Key,
    nonce: Vec<u8>,
    peer_nonce: Vec<u8>,
}

impl ListenHandshake {
    /// Answers a dialer's `Hello` with the `Challenge` to send, which says
    /// nothing about this node. A dialer of another cluster is told only
    /// that this node is not in its cluster.
    pub fn on_hello(
        me: &Identity,
        cookie: Cookie,
        h: &Hello,
    ) -> Result<(ListenHandshake, Challenge), HandshakeError> {
        check_version(h.version)?;
        if h.cluster != me.cluster {
            return Err(HandshakeError::WrongCluster {
                theirs: h.cluster.clone(),
            });
        }
        check_nonce(&h.nonce)?;
        // Salted with our own cluster name only (just checked equal).
        let key = key(&cookie, &me.cluster)?;
        let nonce = nonce()?;
        let challenge = Challenge {
            version: VERSION,
            nonce: ByteBuf::from(nonce.clone()),
        };
        Ok((
            ListenHandshake {
                me: me.clone(),
                key,
                nonce,
                peer_nonce: h.nonce.to_vec(),
            },
            challenge,
        ))
    }

    /// Checks the dialer's proof: who the dialer is, if it holds the
    /// cookie, and the `Welcome` to send (this node and its proof).
    pub fn on_auth(self, a: &Auth) -> Result<(Peer, Welcome), HandshakeError> {
        let theirs = Fields::of_auth(a);
        check_fields(&theirs).map_err(HandshakeError::Malformed)?;
        if a.proof.len() != PROOF_LEN {
            return Err(HandshakeError::WrongCookie);
        }
        let mut t = Transcript::new(&self.key, DIALER)?;
        t.opening(&self.me.cluster, &self.peer_nonce, &self.nonce);
        t.fields(&theirs);
        t.verify(&a.proof)?;
        let mut t = Transcript::new(&self.key, LISTENER)?;
        t.opening(&self.me.cluster, &self.peer_nonce, &self.nonce);
        t.fields(&theirs);
        t.fields(&fields_of(&self.me));
        let me = &self.me;
        let welcome = Welcome {
            node: me.node.clone(),
            capabilities: me.capabilities.clone(),
            addr: me.addr.clone(),
            incarnation: me.incarnation,
            trace_context: true,
            call_chain: true,
            actors: me.actors.clone(),
            proof: ByteBuf::from(t.proof()),
        };
        Ok((theirs.peer(), welcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strong enough for `entropy_bits`; the unit tests below use it and
    /// weak ones alike (the rule is the builder's).
    const K: &str = "q3VwRk0bS8x2n1pZt7YhLc9eJmA4uGdW5oTfNrXiBvE=";

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

    type Outcome = (Result<Peer, HandshakeError>, Result<Peer, HandshakeError>);

    /// Runs a handshake through the wire encoding: (dialer's view of the
    /// listener, listener's view of the dialer).
    fn run(dialer: (Identity, &str), listener: (Identity, &str)) -> Outcome {
        fn wire<T: serde::Serialize + DeserializeOwned>(t: &T) -> T {
            decode_bounded(&crate::wire::encode(t).unwrap()).unwrap()
        }
        let refused = |e: &HandshakeError| Err(HandshakeError::Refused(e.to_string()));
        let (d, hello) = DialHandshake::start(dialer.0, Cookie::new(dialer.1)).unwrap();
        let (l, challenge) =
            match ListenHandshake::on_hello(&listener.0, Cookie::new(listener.1), &wire(&hello)) {
                Ok(x) => x,
                Err(e) => return (refused(&e), Err(e)),
            };
        let (d, auth) = match d.on_challenge(&wire(&challenge)) {
            Ok(x) => x,
            Err(e) => return (Err(e.clone()), refused(&e)),
        };
        let (lpeer, welcome) = match l.on_auth(&wire(&auth)) {
            Ok(x) => x,
            Err(e) => return (refused(&e), Err(e)),
        };
        (d.on_welcome(&wire(&welcome)), Ok(lpeer))
    }

    #[test]
    fn same_cluster_and_cookie_agree() {
        let (d, l) = run((id("c", "a"), K), (id("c", "b"), K));
        let (d, l) = (d.unwrap(), l.unwrap());
        assert_eq!(d.node, "b");
        assert_eq!(l.node, "a");
        // Each learns what the other hosts.
        assert_eq!(d.actors, Some(id("c", "b").actors));
        assert_eq!(l.actors, Some(id("c", "a").actors));
        assert_eq!(
            (l.incarnation, l.trace_context, l.call_chain),
            (7, true, true)
        );
    }

    #[test]
    fn a_wrong_cookie_is_caught_by_the_listener_first() {
        let (d, l) = run((id("c", "a"), "mine"), (id("c", "b"), "theirs"));
        assert_eq!(
            l,
            Err(HandshakeError::WrongCookie),
            "the dialer proves first"
        );
        assert!(matches!(d, Err(HandshakeError::Refused(r)) if r.contains("wrong cookie")));
        // A listener that skips the check (or forges its proof) is caught
        // by the dialer.
        let (d, hello) = DialHandshake::start(id("c", "a"), Cookie::new("mine")).unwrap();
        let (l, challenge) =
            ListenHandshake::on_hello(&id("c", "b"), Cookie::new("theirs"), &hello).unwrap();
        let (d, auth) = d.on_challenge(&challenge).unwrap();
        let mut forged = Welcome {
            node: "b".into(),
            capabilities: vec![],
            addr: String::new(),
            incarnation: 1,
            trace_context: true,
            call_chain: true,
            actors: vec![],
            proof: ByteBuf::from(vec![0u8; 32]),
        };
        assert_eq!(l.on_auth(&auth).unwrap_err(), HandshakeError::WrongCookie);
        assert_eq!(d.on_welcome(&forged), Err(HandshakeError::WrongCookie));
        // Nor can a relay alter a field of a genuine `Welcome`.
        let (d, hello) = DialHandshake::start(id("c", "a"), Cookie::new(K)).unwrap();
        let (l, challenge) =
            ListenHandshake::on_hello(&id("c", "b"), Cookie::new(K), &hello).unwrap();
        let (d, auth) = d.on_challenge(&challenge).unwrap();
        let (_, welcome) = l.on_auth(&auth).unwrap();
        forged = Welcome {
            capabilities: vec!["bank".into()],
            ..welcome
        };
        assert_eq!(d.on_welcome(&forged), Err(HandshakeError::WrongCookie));
    }

    #[test]
    fn the_listener_reveals_nothing_before_the_dialer_proves() {
        let (_, hello) = DialHandshake::start(id("c", "a"), Cookie::new(K)).unwrap();
        let (_, challenge) =
            ListenHandshake::on_hello(&id("c", "secret-b"), Cookie::new(K), &hello).unwrap();
        let bytes = crate::wire::encode(&challenge).unwrap();
        // A version and a nonce: no node id, capability, actor or proof.
        let text = String::from_utf8_lossy(&bytes);
        for hidden in ["secret-b", "game", "Player", "proof", "node"] {
            assert!(!text.contains(hidden), "{hidden} in {text:?}");
        }
        assert!(bytes.len() < 64, "{} bytes", bytes.len());
        // A tampered `Auth` (a relay adding a capability) fails.
        let (d, hello) = DialHandshake::start(id("c", "a"), Cookie::new(K)).unwrap();
        let (l, challenge) =
            ListenHandshake::on_hello(&id("c", "b"), Cookie::new(K), &hello).unwrap();
        let (_, mut auth) = d.on_challenge(&challenge).unwrap();
        auth.capabilities.push("bank".into());
        assert_eq!(l.on_auth(&auth).unwrap_err(), HandshakeError::WrongCookie);
    }

    #[test]
    fn wrong_cluster_and_version_are_refused_without_naming_ours() {
        let (_, l) = run((id("blue", "a"), K), (id("green", "b"), K));
        let err = l.unwrap_err();
        assert_eq!(
            err,
            HandshakeError::WrongCluster {
                theirs: "blue".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "wrong cluster: this node is not in cluster blue"
        );
        assert!(!err.to_string().contains("green"));
        let (_, mut hello) = DialHandshake::start(id("c", "a"), Cookie::new(K)).unwrap();
        hello.version = 9;
        let err = ListenHandshake::on_hello(&id("c", "b"), Cookie::new(K), &hello).unwrap_err();
        assert_eq!(err, HandshakeError::WrongVersion { ours: 4, theirs: 9 });
        assert_eq!(
            err.to_string(),
            "wrong protocol version: this node speaks 4, the peer 9"
        );
    }

    #[test]
    fn version_4_refuses_version_3_both_ways() {
        assert_eq!(VERSION, 4);
        // A version 3 dialer (the listener proved first): refused before
        // anything is derived or proved.
        let (_, mut hello) = DialHandshake::start(id("c", "old"), Cookie::new(K)).unwrap();
        hello.version = 3;
        let err = ListenHandshake::on_hello(&id("c", "new"), Cookie::new(K), &hello).unwrap_err();
        assert_eq!(
            err.to_string(),
            "wrong protocol version: this node speaks 4, the peer 3"
        );
        // A version 3 listener: the dialer refuses its challenge.
        let (d, hello) = DialHandshake::start(id("c", "new"), Cookie::new(K)).unwrap();
        let (_, mut challenge) =
            ListenHandshake::on_hello(&id("c", "old"), Cookie::new(K), &hello).unwrap();
        challenge.version = 3;
        assert_eq!(
            d.on_challenge(&challenge).unwrap_err(),
            HandshakeError::WrongVersion { ours: 4, theirs: 3 }
        );
        // Below the handshake, a version 3 frame header is refused too.
        let codec = crate::wire::FrameCodec::default();
        let mut buf = bytes::BytesMut::new();
        codec
            .encode(crate::wire::Kind::Hello, 0, b"\x80", &mut buf)
            .unwrap();
        buf[6] = 3;
        let err = codec.decode(&mut buf).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol version 3 is not supported (this node speaks 4)"
        );
    }

    #[test]
    fn a_replayed_auth_does_not_pass_a_new_challenge() {
        let (d, hello) = DialHandshake::start(id("c", "a"), Cookie::new(K)).unwrap();
        let (l1, ch1) = ListenHandshake::on_hello(&id("c", "b"), Cookie::new(K), &hello).unwrap();
        let (_, auth) = d.on_challenge(&ch1).unwrap();
        assert!(l1.on_auth(&auth).is_ok());
        // Same Hello replayed: the listener picks a fresh nonce.
        let (l2, _) = ListenHandshake::on_hello(&id("c", "b"), Cookie::new(K), &hello).unwrap();
        assert_eq!(l2.on_auth(&auth).unwrap_err(), HandshakeError::WrongCookie);
    }

    #[test]
    fn the_key_is_salted_with_the_cluster_and_memoised() {
        let a = key(&Cookie::new(K), "c").unwrap();
        let b = key(&Cookie::new(K), "d").unwrap();
        assert_ne!(a.0, b.0);
        let started = std::time::Instant::now();
        assert_eq!(key(&Cookie::new(K), "c").unwrap().0, a.0);
        assert!(started.elapsed() < std::time::Duration::from_millis(5));
    }

    #[test]
    fn the_cookie_never_shows_in_debug_output() {
        assert_eq!(format!("{:?}", Cookie::new("hunter2")), "Cookie(..)");
        let (d, _) = DialHandshake::start(id("c", "a"), Cookie::new("hunter2")).unwrap();
        assert!(!format!("{d:?}").contains("hunter2"));
    }

    #[test]
    fn weak_cookies_score_low_and_generated_ones_high() {
        let bits = |s: &str| Cookie::new(s).entropy_bits();
        for weak in [
            "",
            "k",
            "s3cret",
            "change-me",
            "process-test-cookie",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "correcthorsebatterystaple",
        ] {
            assert!(bits(weak) < MIN_COOKIE_BITS, "{weak}: {}", bits(weak));
        }
        // `openssl rand -base64 32` and `-hex 32`.
        for strong in [
            K,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ] {
            assert!(
                bits(strong) >= MIN_COOKIE_BITS,
                "{strong}: {}",
                bits(strong)
            );
        }
        // 32 random bytes, raw.
        let raw: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(97).wrapping_add(13))
            .collect();
        assert!(Cookie::new(raw).entropy_bits() >= MIN_COOKIE_BITS);
    }

    #[test]
    fn bounded_decoding_refuses_floods_before_allocating() {
        // The attack of issue 19: a `Hello` whose capabilities are as many
        // empty strings as fit (an older Hello had them; unknown fields
        // are skipped by serde, but only after the walk).
        #[derive(serde::Serialize)]
        struct Flood {
            version: u8,
            cluster: String,
            nonce: ByteBuf,
            capabilities: Vec<String>,
        }
        let flood = Flood {
            version: VERSION,
            cluster: "c".into(),
            nonce: ByteBuf::from(vec![0; 32]),
            capabilities: vec![String::new(); MAX_ITEMS + 1],
        };
        let bytes = crate::wire::encode(&flood).unwrap();
        let err = decode_bounded::<Hello>(&bytes).unwrap_err();
        assert!(err.to_string().contains("list and map elements"), "{err}");
        // A long string.
        let long = Hello {
            version: VERSION,
            cluster: "x".repeat(MAX_STRING + 1),
            nonce: ByteBuf::from(vec![0; 32]),
        };
        let err = decode_bounded::<Hello>(&crate::wire::encode(&long).unwrap()).unwrap_err();
        assert!(err.to_string().contains("string of 1025 bytes"), "{err}");
        // Lengths that lie, truncations, trailing bytes, garbage.
        for bad in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdb, 0x00, 0x10, 0x00, 0x00, b'a'],
            &[0x81, 0xa1, b'a'],
            &[0x80, 0x00],
            &[0xc1],
            &[],
        ] {
            assert!(decode_bounded::<Hello>(bad).is_err(), "{bad:?}");
        }
        // Within the limits but over a field's own: refused after decoding.
        let mut me = id("c", "a");
        me.capabilities = vec!["c".into(); MAX_CAPABILITIES + 1];
        assert!(me.check().unwrap_err().contains("capabilities"));
        me = id("c", &"n".repeat(MAX_NAME + 1));
        assert!(me.check().unwrap_err().contains("node id"));
        // Each field within its limit, but the whole over the frame's.
        me = id("c", "a");
        me.capabilities = (0..MAX_CAPABILITIES).map(|i| format!("{i:0255}")).collect();
        assert!(me.check().unwrap_err().contains("handshake would take"));
        assert!(id("c", "a").check().is_ok());
    }

    #[test]
    fn printable_escapes_and_cuts() {
        assert_eq!(printable("a\nb\u{1b}[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(printable(&"x".repeat(1000), 3), "xxx... (1000 bytes)");
    }
}
