//! Credentials hashing: a short, stable fingerprint of a credentials value.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A fingerprint of the credentials an instance was built from.
///
/// The pool never sees credentials themselves, only this hash: an instance is
/// served to a caller only when the hash it presents equals the hash the
/// instance was built for, so a rotation takes effect on the next call.
///
/// Made by [`hash_credentials`] (SHA-256 over canonical JSON, first 16
/// lowercase hex characters), or parsed from such 16 hex characters with
/// [`FromStr`] when another service computed it. `Display` prints the 16 hex
/// characters; that is a one-way digest prefix, never the credentials.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialsHash(u64);

impl CredentialsHash {
    /// A hash from its numeric value (the first 8 bytes of the digest, big endian).
    pub const fn from_u64(value: u64) -> Self {
        CredentialsHash(value)
    }

    /// The numeric value (the first 8 bytes of the digest, big endian).
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CredentialsHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for CredentialsHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialsHash({:016x})", self.0)
    }
}

/// The text given to [`CredentialsHash::from_str`] was not 16 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a credentials hash is 16 lowercase hex characters, got {len} character(s)")]
pub struct ParseHashError {
    /// The length of the rejected text (the text itself is not kept: it may be a secret).
    pub len: usize,
}

impl FromStr for CredentialsHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(ParseHashError { len: s.chars().count() });
        }
        u64::from_str_radix(s, 16)
            .map(CredentialsHash)
            .map_err(|_| ParseHashError { len: s.len() })
    }
}

/// The credentials could not be turned into JSON (for example a map with
/// non-string keys, or a `Serialize` impl that fails).
#[derive(Debug, thiserror::Error)]
#[error("credentials could not be serialized to JSON for hashing: {0}")]
pub struct HashError(#[source] serde_json::Error);

/// Hashes credentials into a [`CredentialsHash`].
///
/// The value is serialized to canonical JSON (object keys sorted at every
/// depth, no whitespace), hashed with SHA-256, and the first 16 lowercase hex
/// characters are kept. The order of fields or map entries in the input does
/// not change the hash, so the same credentials hash the same in every service
/// instance and in every language that follows these rules.
///
/// ```
/// use warmpool::hash_credentials;
/// let a = hash_credentials(&serde_json::json!({"api_key": "k", "org": "acme"}))?;
/// let b = hash_credentials(&serde_json::json!({"org": "acme", "api_key": "k"}))?;
/// assert_eq!(a, b);
/// assert_eq!(a.to_string().len(), 16);
/// # Ok::<(), warmpool::HashError>(())
/// ```
pub fn hash_credentials<C: Serialize + ?Sized>(credentials: &C) -> Result<CredentialsHash, HashError> {
    let value = serde_json::to_value(credentials).map_err(HashError)?;
    let mut canonical = Vec::with_capacity(128);
    write_canonical(&value, &mut canonical);
    let digest = Sha256::digest(&canonical);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Ok(CredentialsHash(u64::from_be_bytes(first)))
}

/// Writes `value` as JSON with object keys sorted at every depth. Sorting is
/// done here rather than trusting `serde_json::Map`'s order, because another
/// crate in the build enabling serde_json's `preserve_order` feature would
/// silently change every hash.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serializing a scalar `Value` into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).expect("serializing a JSON scalar into memory");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is SHA-256 of the canonical JSON, cut to 16 hex characters.
    #[test]
    fn matches_sha256_of_canonical_json() {
        let h = hash_credentials(&serde_json::json!({"b": [1, {"d": 1, "c": 2}], "a": "x"})).unwrap();
        let expected = Sha256::digest(br#"{"a":"x","b":[1,{"c":2,"d":1}]}"#);
        let hex: String = expected[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(h.to_string(), hex);
        assert_eq!(hex.parse::<CredentialsHash>().unwrap(), h);
    }

    /// Parsing rejects anything but 16 lowercase hex characters.
    #[test]
    fn parse_rejects_malformed() {
        assert!("ABCDEF0123456789".parse::<CredentialsHash>().is_err());
        assert!("abc".parse::<CredentialsHash>().is_err());
        assert!("+bcdef0123456789".parse::<CredentialsHash>().is_err());
    }
}
