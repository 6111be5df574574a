//! W3C trace context on the wire: the optional last field of the `Call` and
//! `Cast` bodies (sans-IO).
//!
//! A [`TraceContext`] is always valid: it is built only through
//! [`TraceContext::from_header`], which applies the W3C Trace Context rules
//! (`traceparent` version, lengths, lower-case hex, non-zero ids;
//! `tracestate` grammar, at most 32 members and 512 bytes). OpenTelemetry's
//! own propagator is lenient, so mesh validates before anything reaches it.
//!
//! Decoding never fails because of this field: a malformed or wrongly typed
//! value decodes as `None` (the call goes on, outside the caller's trace),
//! and a bad `tracestate` is dropped on its own, keeping the `traceparent`.
//! Encoded as a two-element array `[traceparent, tracestate or nil]`, the
//! `traceparent` always exactly 55 bytes (version `00`: a higher version is
//! downgraded, as the specification requires of a forwarding participant).

use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserializer, Serialize, Serializer};

/// Length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;
/// The longest `tracestate` mesh carries (the minimum the W3C asks every
/// participant to propagate).
pub const TRACESTATE_MAX: usize = 512;
const TRACESTATE_MEMBERS: usize = 32;

/// A caller's W3C trace context, validated: a version-00 `traceparent` and
/// an optional `tracestate`.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: [u8; TRACEPARENT_LEN],
    tracestate: Option<String>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

impl TraceContext {
    /// Validates the HTTP header values. `None` when `traceparent` breaks
    /// the rules (the trace restarts); a `tracestate` that breaks them is
    /// dropped alone. A `traceparent` of a higher version is read by its
    /// first 55 characters and downgraded to `00`.
    pub fn from_header(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = parse_traceparent(traceparent.as_bytes())?;
        let tracestate = tracestate
            .filter(|ts| valid_tracestate(ts))
            .map(str::to_owned);
        Some(TraceContext {
            traceparent,
            tracestate,
        })
    }

    /// The `traceparent` (version `00`, 55 characters).
    pub fn traceparent(&self) -> &str {
        // Only lower-case hex digits and '-' are ever stored.
        std::str::from_utf8(&self.traceparent).unwrap_or_default()
    }

    /// The `tracestate`, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent()[3..35]
    }
}

/// Checks a `traceparent`: for version `00` exactly 55 bytes; for a higher
/// version at least 55, the 56th (if any) a `-`. Returns it as version `00`.
fn parse_traceparent(tp: &[u8]) -> Option<[u8; TRACEPARENT_LEN]> {
    if tp.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = &tp[0..2];
    if !lower_hex(version) || version == b"ff" {
        return None;
    }
    if version == b"00" && tp.len() != TRACEPARENT_LEN {
        return None;
    }
    if tp.len() > TRACEPARENT_LEN && tp[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    let tp = &tp[..TRACEPARENT_LEN];
    let (trace_id, parent_id, flags) = (&tp[3..35], &tp[36..52], &tp[53..55]);
    let dashes = tp[2] == b'-' && tp[35] == b'-' && tp[52] == b'-';
    let ok = dashes
        && lower_hex(trace_id)
        && lower_hex(parent_id)
        && lower_hex(flags)
        && !all_zero(trace_id)
        && !all_zero(parent_id);
    if !ok {
        return None;
    }
    let mut out = [0; TRACEPARENT_LEN];
    out.copy_from_slice(tp);
    out[0..2].copy_from_slice(b"00");
    Some(out)
}

fn lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&c| c == b'0')
}

/// Checks a `tracestate`: at most 512 bytes and 32 members, each
/// `key=value` with a key `[a-z0-9][a-z0-9_\-*/@]{0,255}` and a value of 1
/// to 256 printable ASCII characters other than `,` and `=`, not ending in
/// a space; no key twice. Empty members (`a=1,,b=2`) are allowed.
fn valid_tracestate(ts: &str) -> bool {
    if ts.len() > TRACESTATE_MAX {
        return false;
    }
    let mut keys: Vec<&str> = Vec::new();
    for member in ts.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let Some((key, value)) = member.split_once('=') else {
            return false;
        };
        if !valid_key(key) || !valid_value(value) || keys.contains(&key) {
            return false;
        }
        keys.push(key);
        if keys.len() > TRACESTATE_MEMBERS {
            return false;
        }
    }
    true
}

fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    let Some((first, rest)) = b.split_first() else {
        return false;
    };
    b.len() <= 256
        && matches!(first, b'a'..=b'z' | b'0'..=b'9')
        && rest
            .iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'))
}

fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.last() != Some(&b' ')
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

impl Serialize for TraceContext {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.traceparent(), self.tracestate()).serialize(s)
    }
}

/// Decodes the frame field leniently: anything but a valid
/// `[traceparent, tracestate]` gives `None`, never an error of the body.
pub(crate) fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TraceContext>, D::Error> {
    d.deserialize_any(FieldVisitor)
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Option<TraceContext>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a trace context")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        lenient(d)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let tp = seq.next_element::<Text>()?.and_then(|t| t.0);
        let ts = seq.next_element::<Text>()?.and_then(|t| t.0);
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        let Some(tp) = tp.filter(|tp| tp.len() == TRACEPARENT_LEN) else {
            return Ok(None);
        };
        let Ok(tp) = std::str::from_utf8(&tp) else {
            return Ok(None);
        };
        let ts = ts.as_deref().and_then(|ts| std::str::from_utf8(ts).ok());
        Ok(TraceContext::from_header(tp, ts))
    }
}

/// A string or bytes; anything else (consumed) is `None`.
struct Text(Option<Vec<u8>>);

impl<'de> de::Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(Some(v.as_bytes().to_vec())))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Text, E> {
                Ok(Text(Some(v.to_vec())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Text, D::Error> {
                <Text as de::Deserialize>::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Text, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "12345678901234567890123456789012";
    const PARENT: &str = "1234567890123456";

    fn ok(tp: &str) -> bool {
        TraceContext::from_header(tp, None).is_some()
    }

    #[test]
    fn w3c_vectors_valid() {
        // w3c/trace-context test/test.py: test_traceparent_trace_flags_*,
        // test_traceparent_version_0xcc.
        for tp in [
            format!("00-{ID}-{PARENT}-01"),
            format!("00-{ID}-{PARENT}-00"),
            format!("cc-{ID}-{PARENT}-01"),
            format!("cc-{ID}-{PARENT}-01-what-the-future-will-be-like"),
        ] {
            let t = TraceContext::from_header(&tp, None).unwrap_or_else(|| panic!("{tp}"));
            assert_eq!(t.trace_id(), ID);
            assert_eq!(t.traceparent().len(), TRACEPARENT_LEN);
            assert!(t.traceparent().starts_with("00-"), "downgraded to 00");
        }
    }

    #[test]
    fn w3c_vectors_invalid() {
        // w3c/trace-context test/test.py: version 0x00 with trailing
        // characters, 0xcc not followed by '-', 0xff, illegal or wrongly
        // sized version, trace id, parent id and flags, all-zero ids.
        let bad = [
            format!("00-{ID}-{PARENT}-01."),
            format!("00-{ID}-{PARENT}-01 "),
            format!("00-{ID}-{PARENT}-01-what-the-future-will-be-like"),
            format!("cc-{ID}-{PARENT}-01.what-the-future-will-be-like"),
            format!("ff-{ID}-{PARENT}-01"),
            format!(".0-{ID}-{PARENT}-01"),
            format!("0.-{ID}-{PARENT}-01"),
            format!("000-{ID}-{PARENT}-01"),
            format!("0000-{ID}-{PARENT}-01"),
            format!("0-{ID}-{PARENT}-01"),
            format!("00-00000000000000000000000000000000-{PARENT}-01"),
            format!("00-.2345678901234567890123456789012-{PARENT}-01"),
            format!("00-1234567890123456789012345678901.-{PARENT}-01"),
            format!("00-{ID}3-{PARENT}-01"),
            format!("00-{}-{PARENT}-01", &ID[1..]),
            format!("00-{ID}-0000000000000000-01"),
            format!("00-{ID}-.234567890123456-01"),
            format!("00-{ID}-123456789012345.-01"),
            format!("00-{ID}-{PARENT}7-01"),
            format!("00-{ID}-{}-01", &PARENT[1..]),
            format!("00-{ID}-{PARENT}-.0"),
            format!("00-{ID}-{PARENT}-0."),
            format!("00-{ID}-{PARENT}-001"),
            format!("00-{ID}-{PARENT}-0"),
            // Upper case is not lower hex.
            format!("00-{}-{PARENT}-01", "4BF92F3577B34DA6A3CE929D0E0E4736"),
            format!("00-{ID}-{PARENT}-0A"),
            format!("0A-{ID}-{PARENT}-01"),
            format!(" 00-{ID}-{PARENT}-01"),
            String::new(),
        ];
        for tp in bad {
            assert!(!ok(&tp), "accepted {tp:?}");
        }
    }

    #[test]
    fn tracestate_rules() {
        let tp = format!("00-{ID}-{PARENT}-01");
        let ts = |s: &str| TraceContext::from_header(&tp, Some(s)).unwrap().tracestate;
        assert_eq!(ts("foo=1,bar=2").as_deref(), Some("foo=1,bar=2"));
        assert_eq!(ts("foo=1, ,bar=2").as_deref(), Some("foo=1, ,bar=2"));
        assert_eq!(ts("t@vendor=x/y").as_deref(), Some("t@vendor=x/y"));
        // A bad tracestate is dropped; the traceparent stays.
        for bad in [
            "Foo=1",
            "foo",
            "foo=",
            "foo=a,foo=b",
            "foo=a=b",
            "_x=1",
            "foo=\u{7f}",
        ] {
            assert_eq!(ts(bad), None, "accepted {bad:?}");
        }
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(ts(&members.join(",")), None, "33 members");
        assert!(ts(&members[..32].join(",")).is_some(), "32 members");
        let long = format!("k={}", "v".repeat(256));
        assert!(ts(&long).is_some());
        let too_long: Vec<String> = (0..3)
            .map(|i| format!("k{i}={}", "v".repeat(200)))
            .collect();
        assert_eq!(ts(&too_long.join(",")), None, "over 512 bytes");
    }
}
