//! The bytes a store keeps for a state: a small header, then the value.
//!
//! ```text
//! "MS"  format (1 byte)  schema (u32, big-endian)  payload
//! ```
//!
//! - **format** says how the payload is encoded: [`FORMAT_MSGPACK`],
//!   MessagePack with structs as maps of field names (so adding a field
//!   with `#[serde(default)]`, removing one or reordering them reads old
//!   rows as they are). Other values are reserved; a row of a format this
//!   build does not know is an error, never a guess.
//! - **schema** is the state type's own version, set by its author: when
//!   a change cannot be read by serde's defaults (a field's type, a
//!   split), raise it and read the older versions yourself (the schema a
//!   row was written with comes back from [`open`]). Rows are rewritten in
//!   the current schema on their next save; nothing migrates them in bulk.
//!
//! Decoding is bounded by the row (a store never hands more than its
//! limit), and a malformed row is an error, never a panic.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The header's first two bytes.
pub const MAGIC: [u8; 2] = *b"MS";

/// MessagePack, structs as maps of field names.
pub const FORMAT_MSGPACK: u8 = 1;

/// The header's length.
pub const HEADER: usize = 7;

/// Why state bytes could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a mesh state envelope (too short, or another magic).
    #[error("not a mesh state envelope ({0})")]
    NotAnEnvelope(&'static str),
    /// A format this build does not read.
    #[error("state of format {0}: this build reads format {FORMAT_MSGPACK} (MessagePack) only")]
    UnknownFormat(u8),
    /// The value would not encode, or the payload would not decode as the
    /// state type.
    #[error("state codec: {0}")]
    Codec(String),
}

/// Encodes `value` with schema version `schema`.
pub fn encode<T: Serialize + ?Sized>(schema: u32, value: &T) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_MSGPACK);
    out.extend_from_slice(&schema.to_be_bytes());
    rmp_serde::encode::write_named(&mut out, value)
        .map_err(|e| EnvelopeError::Codec(e.to_string()))?;
    Ok(out)
}

/// Reads the header: the schema version and the payload.
pub fn open(bytes: &[u8]) -> Result<(u32, &[u8]), EnvelopeError> {
    if bytes.len() < HEADER {
        return Err(EnvelopeError::NotAnEnvelope("shorter than its header"));
    }
    if bytes[..2] != MAGIC {
        return Err(EnvelopeError::NotAnEnvelope("wrong magic"));
    }
    if bytes[2] != FORMAT_MSGPACK {
        return Err(EnvelopeError::UnknownFormat(bytes[2]));
    }
    let schema = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]);
    Ok((schema, &bytes[HEADER..]))
}

/// Decodes a payload (from [`open`]) as `T`.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, EnvelopeError> {
    rmp_serde::from_slice(payload).map_err(|e| EnvelopeError::Codec(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct V1 {
        balance: i64,
        owner: String,
    }

    /// A later version: a field added (with a default), the others
    /// reordered.
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct V2 {
        owner: String,
        #[serde(default)]
        frozen: bool,
        balance: i64,
    }

    #[test]
    fn a_row_round_trips_and_says_its_schema() {
        let v = V1 {
            balance: 42,
            owner: "ann".into(),
        };
        let bytes = encode(3, &v).expect("encodes");
        assert_eq!(&bytes[..3], b"MS\x01");
        let (schema, payload) = open(&bytes).expect("an envelope");
        assert_eq!(schema, 3);
        assert_eq!(decode::<V1>(payload).expect("decodes"), v);
    }

    /// The documented way to evolve a type without a new schema: fields
    /// by name, added ones defaulted.
    #[test]
    fn an_older_row_reads_as_a_newer_type_with_defaults() {
        let old = encode(
            1,
            &V1 {
                balance: 7,
                owner: "bo".into(),
            },
        )
        .expect("encodes");
        let (_, payload) = open(&old).expect("an envelope");
        let new: V2 = decode(payload).expect("decodes");
        assert_eq!(
            new,
            V2 {
                owner: "bo".into(),
                frozen: false,
                balance: 7
            }
        );
    }

    #[test]
    fn malformed_rows_are_errors_not_panics() {
        assert!(matches!(open(b"MS"), Err(EnvelopeError::NotAnEnvelope(_))));
        assert!(matches!(
            open(b"XX\x01\0\0\0\x01"),
            Err(EnvelopeError::NotAnEnvelope(_))
        ));
        assert_eq!(
            open(b"MS\x09\0\0\0\x01\x90"),
            Err(EnvelopeError::UnknownFormat(9))
        );
        // A payload claiming a huge array decodes to an error without
        // allocating it.
        let (_, p) = open(b"MS\x01\0\0\0\x01\xdd\xff\xff\xff\xff").expect("header");
        assert!(decode::<Vec<u64>>(p).is_err());
        assert!(decode::<V1>(b"\xc1").is_err());
    }
}
