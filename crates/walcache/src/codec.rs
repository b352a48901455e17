//! Value codecs: how values become bytes in Redis.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes and decodes cached values for L2. Implement it to use another format; the codec is
/// part of the cache's type, so the hot path is monomorphised.
///
/// Decoding reads bytes from Redis that anything could have written: it must return an error,
/// never panic, on bytes it does not understand.
pub trait Codec: Send + Sync + 'static {
    /// Encode a value.
    fn encode<V: Serialize>(&self, value: &V) -> Result<Vec<u8>, CodecError>;
    /// Decode a value.
    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError>;
}

/// A codec failed. The message never contains the value.
#[derive(Debug, thiserror::Error)]
#[error("{codec} could not {op} the value: {reason}")]
pub struct CodecError {
    codec: &'static str,
    op: &'static str,
    reason: String,
}

impl CodecError {
    /// A codec error for `codec` ("postcard") failing to `op` ("encode"/"decode").
    pub fn new(codec: &'static str, op: &'static str, reason: impl ToString) -> Self {
        CodecError {
            codec,
            op,
            reason: reason.to_string(),
        }
    }
}

/// The default codec: [postcard](https://docs.rs/postcard), a compact, fast binary format.
/// Not self-describing: changing the value type needs a new
/// [`schema_version`](crate::CacheBuilder::schema_version).
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    fn encode<V: Serialize>(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        postcard::to_stdvec(value).map_err(|e| CodecError::new("postcard", "encode", e))
    }

    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError> {
        postcard::from_bytes(bytes).map_err(|e| CodecError::new("postcard", "decode", e))
    }
}

/// JSON, for values other tools read from Redis too. Larger and slower than [`Postcard`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    fn encode<V: Serialize>(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError::new("json", "encode", e))
    }

    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::new("json", "decode", e))
    }
}
