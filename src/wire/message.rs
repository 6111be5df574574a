//! Frame bodies: what each [`Kind`](super::Kind) carries, encoded with
//! rmp-serde (handshake bodies as maps, the others as arrays). The `Error`
//! body, [`Failure`](super::Failure), has its own module (`failure`).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// `Hello`: the dialer opens the handshake (version 4): nothing about
/// itself yet but its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the dialer speaks.
    pub version: u8,
    /// The cluster the dialer belongs to.
    pub cluster: String,
    /// The dialer's random nonce (32 bytes).
    pub nonce: ByteBuf,
}

/// `Challenge`: the listener's nonce, and nothing about the listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The protocol version the listener speaks.
    pub version: u8,
    /// The listener's random nonce (32 bytes).
    pub nonce: ByteBuf,
}

/// One actor type a node hosts, as its handshake advertises it: the
/// routing of that type considers only the nodes that host it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hosted {
    /// The actor type's capability.
    pub capability: String,
    /// The actor type's name (`Actor::NAME`).
    pub actor: String,
    /// The wire tags of its handlers, sorted: which messages this build of
    /// the type handles.
    #[serde(default)]
    pub tags: Vec<u64>,
}

/// `Auth`: the dialer introduces itself and proves it holds the cookie
/// (see `handshake` for what the proof covers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// The dialer's node id.
    pub node: String,
    /// The capabilities the dialer hosts.
    pub capabilities: Vec<String>,
    /// Where the dialer's own listener accepts connections (empty if none).
    #[serde(default)]
    pub addr: String,
    /// Which run of the node this is: random at each start, so peers tell
    /// a restarted node from the one that left.
    pub incarnation: u64,
    /// Whether it decodes the `trace` field of `CallFrame` and `Cast`.
    pub trace_context: bool,
    /// Whether it decodes the `chain` field of `CallFrame`.
    pub call_chain: bool,
    /// The actor types it hosts, with their handlers' wire tags.
    pub actors: Vec<Hosted>,
    /// HMAC-SHA256 proof over the transcript so far (32 bytes).
    pub proof: ByteBuf,
}

/// `Welcome`: the listener accepted the dialer's proof; it introduces
/// itself and proves it holds the cookie too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The listener's node id.
    pub node: String,
    /// The capabilities the listener hosts.
    pub capabilities: Vec<String>,
    /// Where the listener accepts connections.
    #[serde(default)]
    pub addr: String,
    /// Which run of the node this is (see [`Auth::incarnation`]).
    pub incarnation: u64,
    /// Whether it decodes the `trace` field of `CallFrame` and `Cast`.
    pub trace_context: bool,
    /// Whether it decodes the `chain` field of `CallFrame`.
    pub call_chain: bool,
    /// The actor types it hosts, with their handlers' wire tags.
    pub actors: Vec<Hosted>,
    /// HMAC-SHA256 proof over the whole transcript, `Welcome` included
    /// (32 bytes).
    pub proof: ByteBuf,
}

/// `CallFrame`: run handler `tag` of actor `id`, reply with the same
/// correlation id.
///
/// Encoded by hand: `trace` is written (nil when absent) whenever `chain`
/// follows it, so the elements keep their positions in the array form.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CallFrame {
    /// The handler's wire tag.
    pub tag: u64,
    /// The actor id.
    pub id: String,
    /// Milliseconds left before the caller gives up: the callee drops the
    /// work once they have passed. Relative, because clocks differ.
    pub timeout_ms: u64,
    /// How many times this call was forwarded (at most once, or twice
    /// through a leaving node; more in strong mode while views disagree).
    /// A peer's value decodes clamped to 16.
    #[serde(default, deserialize_with = "clamped_hops")]
    pub hops: u8,
    /// The message, rmp-serde.
    pub payload: ByteBuf,
    /// The caller's W3C trace context (last, optional: absent from older
    /// peers, skipped when there is none, and a malformed one decodes as
    /// `None`; see [`TraceContext`](super::TraceContext)).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::trace::lenient"
    )]
    pub trace: Option<super::TraceContext>,
    /// The chain of calls this one extends, `[actor type, id]` pairs from
    /// the first caller to the last (after `trace`, optional: sent only to
    /// peers whose handshake said `call_chain`, absent outside a handler).
    ///
    /// Decoded with a limit: at most 32 links (the call chain depth limit)
    /// are kept, and the elements past them are skipped unstored. A node
    /// refuses a chain of 32 links or more with `ChainTooDeep`, so a
    /// longer one decodes as its first 32 and is refused just the same.
    #[serde(default, deserialize_with = "bounded_chain")]
    pub chain: Option<Vec<(String, String)>>,
}

impl Serialize for CallFrame {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CallFrameRef {
            tag: self.tag,
            id: &self.id,
            timeout_ms: self.timeout_ms,
            hops: self.hops,
            payload: &self.payload,
            trace: self.trace.as_ref(),
            chain: self.chain.as_deref(),
        }
        .serialize(s)
    }
}

/// A [`CallFrame`] to encode, borrowing its id, payload and chain (the
/// caller keeps them: no copy, and the payload stays the caller's to route
/// elsewhere if the frame is never sent). Encodes exactly as `CallFrame`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallFrameRef<'a> {
    pub(crate) tag: u64,
    pub(crate) id: &'a str,
    pub(crate) timeout_ms: u64,
    pub(crate) hops: u8,
    pub(crate) payload: &'a [u8],
    pub(crate) trace: Option<&'a super::TraceContext>,
    pub(crate) chain: Option<&'a [(String, String)]>,
}

impl Serialize for CallFrameRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let with_trace = self.trace.is_some() || self.chain.is_some();
        let len = 5 + usize::from(with_trace) + usize::from(self.chain.is_some());
        let mut st = s.serialize_struct("Call", len)?;
        st.serialize_field("tag", &self.tag)?;
        st.serialize_field("id", self.id)?;
        st.serialize_field("timeout_ms", &self.timeout_ms)?;
        st.serialize_field("hops", &self.hops)?;
        st.serialize_field("payload", serde_bytes::Bytes::new(self.payload))?;
        if with_trace {
            st.serialize_field("trace", &self.trace)?;
        } else {
            st.skip_field("trace")?;
        }
        match self.chain {
            Some(chain) => st.serialize_field("chain", chain)?,
            None => st.skip_field("chain")?,
        }
        st.end()
    }
}

/// The most links of a `CallFrame`'s chain decoded: the depth limit (a node
/// refuses a chain that long).
/// The most links a call chain has (`actor::chain::MAX_DEPTH` is this).
pub(crate) const MAX_CHAIN: usize = 32;

/// The largest `hops` a peer's `CallFrame` or `Cast` decodes with: past every
/// value the forwarding rules tell apart, far from `u8::MAX` (forwarding
/// adds one, saturating).
pub(crate) const MAX_HOPS: u8 = 16;

/// Decodes `hops`, clamped to [`MAX_HOPS`].
fn clamped_hops<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    u8::deserialize(d).map(|h| h.min(MAX_HOPS))
}

/// Decodes a `CallFrame`'s chain keeping at most [`MAX_CHAIN`] links; the
/// elements past them are skipped (whatever they are) without being
/// stored.
fn bounded_chain<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<(String, String)>>, D::Error> {
    use serde::de::{IgnoredAny, SeqAccess, Visitor};

    struct Links;

    impl<'de> Visitor<'de> for Links {
        type Value = Vec<(String, String)>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of [actor type, id] pairs")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut links = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_CHAIN));
            while links.len() < MAX_CHAIN {
                match seq.next_element::<(String, String)>()? {
                    Some(link) => links.push(link),
                    None => return Ok(links),
                }
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(links)
        }
    }

    struct Chain;

    impl<'de> Visitor<'de> for Chain {
        type Value = Option<Vec<(String, String)>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a call chain or nil")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(Links).map(Some)
        }
    }

    d.deserialize_option(Chain)
}

/// `Cast`: run handler `tag` of actor `id`, no reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cast {
    /// The handler's wire tag.
    pub tag: u64,
    /// The actor id.
    pub id: String,
    /// How many times this cast was forwarded (at most once, or twice
    /// through a leaving node). A peer's value decodes clamped to 16.
    #[serde(default, deserialize_with = "clamped_hops")]
    pub hops: u8,
    /// The message, rmp-serde.
    pub payload: ByteBuf,
    /// The caller's W3C trace context (last, optional: absent from older
    /// peers, skipped when there is none, and a malformed one decodes as
    /// `None`; see [`TraceContext`](super::TraceContext)).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::trace::lenient"
    )]
    pub trace: Option<super::TraceContext>,
}

/// `Reply`: the handler's reply, rmp-serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The reply, rmp-serde.
    pub payload: ByteBuf,
}

impl Reply {
    /// Encodes a `Reply` body around `payload`, byte for byte as serde
    /// would (`[bin]`, the shortest bin header), without the serde detour.
    #[cfg(test)]
    pub(crate) fn encode(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 6);
        Reply::encode_into(payload, &mut out);
        out
    }

    /// [`Reply::encode`] appended to `dst` (a connection's outbox).
    pub(crate) fn encode_into(payload: &[u8], dst: &mut impl bytes::BufMut) {
        let n = payload.len();
        dst.put_u8(0x91);
        if let Ok(n) = u8::try_from(n) {
            dst.put_slice(&[0xc4, n]);
        } else if let Ok(n) = u16::try_from(n) {
            dst.put_u8(0xc5);
            dst.put_u16(n);
        } else {
            dst.put_u8(0xc6);
            // Frames are bounded far below 4 GiB (`FrameCodec`'s maximum).
            dst.put_u32(n as u32);
        }
        dst.put_slice(payload);
    }

    /// The payload of a `Reply` body, sliced out of it (no copy) when the
    /// body is the array form with nothing after the payload; any other
    /// form (a map, from a peer that encodes one) decodes through serde.
    pub(crate) fn payload_of(body: &bytes::Bytes) -> Result<bytes::Bytes, crate::Error> {
        let (len, start) = match body.get(..2) {
            Some([0x91, 0xc4]) => (body.get(2).map(|&n| usize::from(n)), 3),
            Some([0x91, 0xc5]) => (
                body.get(2..4)
                    .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))),
                4,
            ),
            Some([0x91, 0xc6]) => (
                body.get(2..6)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize),
                6,
            ),
            _ => (None, 0),
        };
        match len {
            Some(len) if start + len == body.len() => Ok(body.slice(start..)),
            _ => super::decode::<Reply>(body).map(|r| bytes::Bytes::from(r.payload.into_vec())),
        }
    }
}

/// One member in a `MembershipFrame` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub node: String,
    /// Address its listener accepts connections on.
    pub addr: String,
    /// Capabilities it hosts.
    pub capabilities: Vec<String>,
}

/// `MembershipFrame`: the members the sender knows to be up, itself included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipFrame {
    /// The members.
    pub members: Vec<Member>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TraceContext;

    /// `CallFrame` as version 2 peers before the trace field encode it.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OldCall {
        tag: u64,
        id: String,
        timeout_ms: u64,
        #[serde(default)]
        hops: u8,
        payload: ByteBuf,
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn call(trace: Option<TraceContext>) -> CallFrame {
        CallFrame {
            tag: 7,
            id: "p-1".into(),
            timeout_ms: 500,
            hops: 1,
            payload: ByteBuf::from(vec![1, 2, 3]),
            trace,
            chain: None,
        }
    }

    fn old() -> OldCall {
        OldCall {
            tag: 7,
            id: "p-1".into(),
            timeout_ms: 500,
            hops: 1,
            payload: ByteBuf::from(vec![1, 2, 3]),
        }
    }

    #[test]
    fn a_call_without_trace_encodes_as_before() {
        let new = rmp_serde::to_vec(&call(None)).unwrap();
        assert_eq!(new, rmp_serde::to_vec(&old()).unwrap());
        assert_eq!(new[0], 0x95, "an array of 5, the trace skipped");
        let back: CallFrame = rmp_serde::from_slice(&rmp_serde::to_vec(&old()).unwrap()).unwrap();
        assert_eq!(back, call(None));
    }

    #[test]
    fn the_trace_is_a_sixth_element_only_newer_peers_are_sent() {
        let t = TraceContext::from_header(TP, Some("congo=t61rcWkgMzE")).unwrap();
        let bytes = rmp_serde::to_vec(&call(Some(t.clone()))).unwrap();
        assert_eq!(bytes[0], 0x96);
        let back: CallFrame = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back.trace, Some(t));
        // rmp-serde refuses an array longer than the struct: an older peer
        // cannot decode it, hence `trace_context` in the handshake.
        assert!(rmp_serde::from_slice::<OldCall>(&bytes).is_err());
        // Structs as maps (decoders accept either form).
        let traced = call(Some(TraceContext::from_header(TP, None).unwrap()));
        let named = rmp_serde::to_vec_named(&traced).unwrap();
        let back: CallFrame = rmp_serde::from_slice(&named).unwrap();
        assert_eq!(back.trace.unwrap().traceparent(), TP);
    }

    #[test]
    fn a_bad_trace_is_dropped_and_the_call_decodes() {
        #[derive(Serialize)]
        struct Raw<T: Serialize>(u64, String, u64, u8, ByteBuf, T);
        fn raw<T: Serialize>(t: T) -> Vec<u8> {
            let body = Raw(7, "p-1".into(), 500, 1, ByteBuf::from(vec![1, 2, 3]), t);
            rmp_serde::to_vec(&body).unwrap()
        }
        let upper = TP.to_uppercase();
        let cases: Vec<Vec<u8>> = vec![
            raw(42u32),
            raw("just a string"),
            raw((upper.as_str(), None::<String>)),
            raw((&TP[..54], None::<String>)),
            raw((format!("{TP}-x"), None::<String>)),
            raw((1u8, 2u8, 3u8)),
            raw(vec![vec![1u8]]),
            raw(()),
        ];
        for bytes in cases {
            let back: CallFrame = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(back, call(None));
        }
        // A bad tracestate alone is dropped; the traceparent stays.
        let bytes = raw((TP, "Bad=Key"));
        let back: CallFrame = rmp_serde::from_slice(&bytes).unwrap();
        let t = back.trace.unwrap();
        assert_eq!((t.traceparent(), t.tracestate()), (TP, None));
        // Bytes instead of a string, and a newer element after the two.
        let bytes = raw((ByteBuf::from(TP.as_bytes()), "a=1", 9u8));
        let back: CallFrame = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back.trace.unwrap().tracestate(), Some("a=1"));
    }

    #[test]
    fn the_chain_follows_the_trace_which_keeps_its_place() {
        let chain = vec![("Alpha".to_owned(), "a".to_owned())];
        let chained = CallFrame {
            chain: Some(chain.clone()),
            ..call(None)
        };
        let bytes = rmp_serde::to_vec(&chained).unwrap();
        assert_eq!(bytes[0], 0x97, "an array of 7, the trace nil");
        let back: CallFrame = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, chained);
        // An older peer cannot decode it, hence `call_chain` in the handshake.
        assert!(rmp_serde::from_slice::<OldCall>(&bytes).is_err());
        let t = TraceContext::from_header(TP, None).unwrap();
        let both = CallFrame {
            chain: Some(chain),
            ..call(Some(t))
        };
        let bytes = rmp_serde::to_vec(&both).unwrap();
        assert_eq!(rmp_serde::from_slice::<CallFrame>(&bytes).unwrap(), both);
        // As a map too.
        let named = rmp_serde::to_vec_named(&both).unwrap();
        assert_eq!(rmp_serde::from_slice::<CallFrame>(&named).unwrap(), both);
        // A traced call without a chain is the version 2 form with trace.
        let traced = call(Some(TraceContext::from_header(TP, None).unwrap()));
        assert_eq!(rmp_serde::to_vec(&traced).unwrap()[0], 0x96);
    }

    #[test]
    fn a_long_chain_decodes_as_its_first_links_only() {
        // 100 000 hops (about 300 KiB of empty names), as a peer may send.
        let long: Vec<(String, String)> = (0..100_000)
            .map(|i| {
                (
                    String::new(),
                    if i < 40 { i.to_string() } else { String::new() },
                )
            })
            .collect();
        let bomb = CallFrame {
            chain: Some(long.clone()),
            ..call(None)
        };
        let bytes = rmp_serde::to_vec(&bomb).unwrap();
        assert!(bytes.len() > 300_000);
        let back: CallFrame = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back.chain.as_deref(), Some(&long[..MAX_CHAIN]));
        assert_eq!((back.id.as_str(), back.tag), ("p-1", 7));
        // As a map too, and whatever the elements past the limit are.
        let named = rmp_serde::to_vec_named(&bomb).unwrap();
        let back: CallFrame = rmp_serde::from_slice(&named).unwrap();
        assert_eq!(back.chain.map(|c| c.len()), Some(MAX_CHAIN));
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Elem {
            Link(String, String),
            Junk(u32),
        }
        #[derive(Serialize)]
        struct Raw(u64, String, u64, u8, ByteBuf, (), Vec<Elem>);
        let mut elems: Vec<Elem> = (0..MAX_CHAIN)
            .map(|i| Elem::Link("A".into(), i.to_string()))
            .collect();
        elems.extend((0..1000).map(Elem::Junk));
        let raw = Raw(7, "p-1".into(), 500, 1, ByteBuf::new(), (), elems);
        let back: CallFrame = rmp_serde::from_slice(&rmp_serde::to_vec(&raw).unwrap()).unwrap();
        assert_eq!(back.chain.map(|c| c.len()), Some(MAX_CHAIN));
        // A short chain and nil decode as sent.
        let short = CallFrame {
            chain: Some(long[..3].to_vec()),
            ..call(None)
        };
        let back: CallFrame = rmp_serde::from_slice(&rmp_serde::to_vec(&short).unwrap()).unwrap();
        assert_eq!(back, short);
        // A bad link within the limit is still an error.
        #[derive(Serialize)]
        struct Bad(u64, String, u64, u8, ByteBuf, (), Vec<u8>);
        let bad = Bad(7, "p-1".into(), 500, 1, ByteBuf::new(), (), vec![1]);
        assert!(rmp_serde::from_slice::<CallFrame>(&rmp_serde::to_vec(&bad).unwrap()).is_err());
    }

    #[test]
    fn hops_from_a_peer_are_clamped() {
        let far = CallFrame {
            hops: u8::MAX,
            ..call(None)
        };
        let back: CallFrame = rmp_serde::from_slice(&rmp_serde::to_vec(&far).unwrap()).unwrap();
        assert_eq!(back.hops, MAX_HOPS);
        // Adding the forward's one cannot overflow.
        assert_eq!(back.hops.checked_add(1), Some(MAX_HOPS + 1));
        let cast = Cast {
            tag: 1,
            id: "x".into(),
            hops: 200,
            payload: ByteBuf::new(),
            trace: None,
        };
        let back: Cast = rmp_serde::from_slice(&rmp_serde::to_vec(&cast).unwrap()).unwrap();
        assert_eq!(back.hops, MAX_HOPS);
        // Values the rules use pass unchanged.
        for hops in [0, 1, 2, MAX_HOPS] {
            let c = CallFrame { hops, ..call(None) };
            let back: CallFrame = rmp_serde::from_slice(&rmp_serde::to_vec(&c).unwrap()).unwrap();
            assert_eq!(back.hops, hops);
        }
    }

    #[test]
    fn a_cast_carries_its_trace_too() {
        let t = TraceContext::from_header(TP, None).unwrap();
        let cast = Cast {
            tag: 1,
            id: "x".into(),
            hops: 0,
            payload: ByteBuf::new(),
            trace: Some(t),
        };
        let back: Cast = rmp_serde::from_slice(&rmp_serde::to_vec(&cast).unwrap()).unwrap();
        assert_eq!(back, cast);
    }

    #[test]
    fn a_reply_encoded_by_hand_is_the_serde_encoding_and_slices_back() {
        for n in [0usize, 1, 255, 256, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let by_hand = Reply::encode(&payload);
            let by_serde = crate::wire::encode_envelope(
                &Reply {
                    payload: ByteBuf::from(payload.clone()),
                },
                n,
            )
            .unwrap();
            assert_eq!(by_hand, by_serde, "length {n}");
            let body = bytes::Bytes::from(by_hand);
            assert_eq!(Reply::payload_of(&body).unwrap(), payload);
        }
    }

    #[test]
    fn a_reply_in_map_form_or_malformed_decodes_through_serde() {
        let map = rmp_serde::to_vec_named(&Reply {
            payload: ByteBuf::from(b"abc".to_vec()),
        })
        .unwrap();
        assert_eq!(
            Reply::payload_of(&bytes::Bytes::from(map)).unwrap(),
            &b"abc"[..]
        );
        // A length past the body, a trailing byte, a cut header: refused
        // or decoded by serde, never sliced out of bounds.
        for bad in [
            &[0x91, 0xc4, 5, 1, 2][..],
            &[0x91, 0xc4, 1, 1, 2][..],
            &[0x91, 0xc5, 0][..],
            &[0x91, 0xc6, 0, 0, 0][..],
            &[0x91][..],
            &[][..],
        ] {
            let body = bytes::Bytes::copy_from_slice(bad);
            match Reply::payload_of(&body) {
                Ok(p) => assert!(p.len() <= body.len()),
                Err(crate::Error::Codec(_)) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    }
}
