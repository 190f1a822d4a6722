//! The wire message and its signature: what a publisher in any language
//! must produce (see the README's "Wire format (version 2)").
//!
//! # Version 2
//!
//! One UTF-8 JSON object per message:
//!
//! ```json
//! {"v":2,"origin":"billing-7f3c","epoch":1763899990000000,"seq":42,
//!  "ts_us":1763900000000000,"scope":"key","target":"acme:openai","sig":"9b1c…"}
//! ```
//!
//! `sig` is the lowercase hex HMAC-SHA256, with the shared key, of the
//! *netstrings* (`{byte length in decimal}:{bytes},`) of, in order:
//! `warmpool-invalidation`, `2`, `origin`, `epoch`, `seq`, `ts_us`, `scope`
//! and `target` (empty for `all`), numbers in decimal. Netstrings are a
//! prefix-free code, so two different messages never have the same MAC
//! input, whatever bytes a key holds.
//!
//! Version 1 signed `"v1\n{origin}\n{seq}\n{ts_us}\n{scope}\n{target}"`: a
//! key containing `\n` could make a signed message read back as another
//! one (say a flush-all from a made-up origin). Listeners with a signing
//! key therefore refuse version 1 unless told otherwise for a migration
//! ([`ListenOptions::accept_signed_v1`](crate::bus::ListenOptions::accept_signed_v1)).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::bus::BusError;

/// The current wire format version.
pub const WIRE_VERSION: u32 = 2;

/// The shortest signing key accepted, in bytes: an HMAC-SHA256 key shorter
/// than the hash is weaker than the hash, and an empty one is no key at all.
pub const MIN_KEY_LEN: usize = 32;

/// What an invalidation retires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One key.
    Key(String),
    /// Every key starting with this prefix.
    Prefix(String),
    /// Everything.
    All,
}

impl Scope {
    fn parts(&self) -> (&'static str, Option<&str>) {
        match self {
            Scope::Key(key) => ("key", Some(key)),
            Scope::Prefix(prefix) => ("prefix", Some(prefix)),
            Scope::All => ("all", None),
        }
    }
}

/// One invalidation, as published by one service instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The publishing instance.
    pub origin: String,
    /// When the publisher started, in microseconds since the Unix epoch:
    /// under a known origin, an epoch not heard before (larger, or smaller
    /// when the publisher's clock stepped back) is a restarted publisher
    /// whose sequence starts again at 1. Version-1 messages have epoch 0.
    pub epoch: u64,
    /// Its sequence number within the epoch, from 1.
    pub seq: u64,
    /// Publish time, microseconds since the Unix epoch.
    pub ts_us: u64,
    /// What to retire.
    pub scope: Scope,
}

/// The JSON shape on the wire (both versions; `epoch` only in version 2).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u32,
    origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
    seq: u64,
    ts_us: u64,
    scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<String>,
}

/// A shared secret for HMAC-SHA256 signing. `Debug` does not print it.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// A key from raw bytes: at least [`MIN_KEY_LEN`] (32) of them, random
    /// (for example 32 bytes from a CSPRNG, stored as a secret).
    ///
    /// # Errors
    ///
    /// [`BusError::WeakKey`] when `bytes` is shorter than 32 bytes: an empty
    /// or short key would let anyone forge messages while signing looks on.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, BusError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_KEY_LEN {
            return Err(BusError::WeakKey { len: bytes.len() });
        }
        Ok(SigningKey(bytes))
    }

    fn mac(&self, input: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(input);
        mac
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// Appends `field` as a netstring: `{len}:{bytes},`.
fn netstring(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(field.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(field);
    out.push(b',');
}

impl Invalidation {
    /// The MAC input of wire version `v`.
    fn mac_input(&self, v: u32) -> Vec<u8> {
        if v == 1 {
            self.mac_input_v1()
        } else {
            self.mac_input_v2()
        }
    }

    /// The version-2 MAC input (see the module docs).
    fn mac_input_v2(&self) -> Vec<u8> {
        let (scope, target) = self.scope.parts();
        let mut out = Vec::with_capacity(96 + self.origin.len() + target.map_or(0, str::len));
        for field in [
            b"warmpool-invalidation".as_slice(),
            b"2",
            self.origin.as_bytes(),
            self.epoch.to_string().as_bytes(),
            self.seq.to_string().as_bytes(),
            self.ts_us.to_string().as_bytes(),
            scope.as_bytes(),
            target.unwrap_or("").as_bytes(),
        ] {
            netstring(&mut out, field);
        }
        out
    }

    /// The version-1 signed text, ambiguous (kept only for a migration).
    fn mac_input_v1(&self) -> Vec<u8> {
        let (scope, target) = self.scope.parts();
        format!(
            "v1\n{}\n{}\n{}\n{}\n{}",
            self.origin,
            self.seq,
            self.ts_us,
            scope,
            target.unwrap_or("")
        )
        .into_bytes()
    }

    /// The message as version-2 wire JSON, signed when `key` is given.
    pub fn encode(&self, key: Option<&SigningKey>) -> Vec<u8> {
        self.to_wire(WIRE_VERSION, key)
    }

    /// The message as version-1 wire JSON (for tests of the migration and of
    /// the forgery that version 2 closes). Do not publish this format.
    #[doc(hidden)]
    pub fn encode_v1(&self, key: Option<&SigningKey>) -> Vec<u8> {
        self.to_wire(1, key)
    }

    fn to_wire(&self, v: u32, key: Option<&SigningKey>) -> Vec<u8> {
        let (scope, target) = self.scope.parts();
        let input = self.mac_input(v);
        let wire = Wire {
            v,
            origin: self.origin.clone(),
            epoch: (v != 1).then_some(self.epoch),
            seq: self.seq,
            ts_us: self.ts_us,
            scope: scope.to_string(),
            target: target.map(str::to_string),
            sig: key.map(|k| hex(&k.mac(&input).finalize().into_bytes())),
        };
        serde_json::to_vec(&wire).expect("serializing plain strings and numbers cannot fail")
    }

    /// Parses wire JSON. With `key`, only a version-2 message with a valid
    /// signature (checked in constant time) is accepted; without, any
    /// well-formed version-1 or version-2 message is.
    ///
    /// This checks the bytes only; a listener also refuses messages whose
    /// timestamp is outside its window, replays and echoes.
    pub fn decode(bytes: &[u8], key: Option<&SigningKey>) -> Result<Invalidation, BusError> {
        Self::decode_with(bytes, key, false)
    }

    /// [`decode`](Self::decode), also accepting signed version-1 messages
    /// when `accept_signed_v1` is set (a migration).
    pub(crate) fn decode_with(
        bytes: &[u8],
        key: Option<&SigningKey>,
        accept_signed_v1: bool,
    ) -> Result<Invalidation, BusError> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| BusError::Malformed(e.to_string()))?;
        let epoch = match (wire.v, wire.epoch) {
            (1, None) => 0,
            (1, Some(_)) => return Err(BusError::Malformed("version 1 has no `epoch`".into())),
            (2, Some(epoch)) => epoch,
            (2, None) => return Err(BusError::Malformed("version 2 needs an `epoch`".into())),
            (v, _) => return Err(BusError::Malformed(format!("unsupported version {v}"))),
        };
        let scope = match (wire.scope.as_str(), wire.target) {
            ("key", Some(target)) => Scope::Key(target),
            ("prefix", Some(target)) => Scope::Prefix(target),
            ("all", None) => Scope::All,
            // Version 1 tolerated a target on `all`; version 2 is strict so
            // that one message has one JSON form.
            ("all", Some(_)) if wire.v == 1 => Scope::All,
            ("all", Some(_)) => return Err(BusError::Malformed("scope `all` takes no target".into())),
            (scope @ ("key" | "prefix"), None) => {
                return Err(BusError::Malformed(format!("scope `{scope}` needs a target")));
            }
            (other, _) => return Err(BusError::Malformed(format!("unknown scope `{other}`"))),
        };
        let message = Invalidation {
            origin: wire.origin,
            epoch,
            seq: wire.seq,
            ts_us: wire.ts_us,
            scope,
        };
        let Some(key) = key else { return Ok(message) };
        if wire.v == 1 && !accept_signed_v1 {
            return Err(BusError::Legacy(message.origin));
        }
        let Some(sig) = wire.sig else {
            return Err(BusError::Unsigned(message.origin));
        };
        let Some(sig) = unhex(&sig) else {
            return Err(BusError::BadSignature(message.origin));
        };
        if key.mac(&message.mac_input(wire.v)).verify_slice(&sig).is_err() {
            return Err(BusError::BadSignature(message.origin));
        }
        Ok(message)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Wall-clock time in microseconds since the Unix epoch (0 before 1970).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A unique-enough origin id for this process: a prefix you choose and 64
/// random bits, so that a restarted instance never looks like a replay of
/// its former self.
pub fn new_origin(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

/// The last epoch handed out in this process: epochs are the start time in
/// µs, made strictly increasing so that two stampers created in the same
/// microsecond (a test, a quick restart of a component) still differ.
static LAST_EPOCH: AtomicU64 = AtomicU64::new(0);

fn next_epoch() -> u64 {
    let now = now_us();
    let previous = LAST_EPOCH
        .fetch_update(Relaxed, Relaxed, |last| Some(now.max(last + 1)))
        .expect("the closure always returns Some");
    now.max(previous + 1)
}

/// Stamps invalidations from one origin: epoch, sequence number and time,
/// then signs. Every publisher has one; use it directly to publish through
/// a transport of your own.
///
/// Stamping takes `&mut self`: listeners read sequence numbers as the order
/// in which an origin's messages reach the transport, so numbers must be
/// taken in the order the messages are sent. Whoever owns the stamper sends
/// each message before stamping the next (as [`Publisher`](crate::bus::Publisher)
/// does, in one task); a stamper shared by tasks that stamp, then send
/// concurrently, would let a later number overtake an earlier one and be
/// taken for a replay (issue 20, 1).
#[derive(Debug)]
pub struct Stamper {
    origin: String,
    epoch: u64,
    /// The last sequence number handed out.
    seq: u64,
    signing_key: Option<SigningKey>,
}

impl Stamper {
    /// A stamper for `origin` (see [`new_origin`]), signing with `key` if
    /// given. Its epoch is now: a stamper created later for the same origin
    /// (a restarted publisher) is recognised as a new stream.
    pub fn new(origin: impl Into<String>, signing_key: Option<SigningKey>) -> Self {
        Stamper {
            origin: origin.into(),
            epoch: next_epoch(),
            seq: 0,
            signing_key,
        }
    }

    /// The origin id.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The next message for `scope`, not yet encoded.
    pub fn next(&mut self, scope: Scope) -> Invalidation {
        self.seq += 1;
        Invalidation {
            origin: self.origin.clone(),
            epoch: self.epoch,
            seq: self.seq,
            ts_us: now_us(),
            scope,
        }
    }

    /// The next message for `scope`, as wire bytes.
    pub fn stamp(&mut self, scope: Scope) -> Vec<u8> {
        let message = self.next(scope);
        message.encode(self.signing_key.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::new(vec![byte; 32]).unwrap()
    }

    /// Encoding then decoding gives the same message, signed or not, and a
    /// tampered signature is rejected.
    #[test]
    fn round_trip_and_signature() {
        let m = Invalidation {
            origin: "a".into(),
            epoch: 5,
            seq: 7,
            ts_us: 1,
            scope: Scope::Prefix("acme:".into()),
        };
        assert_eq!(Invalidation::decode(&m.encode(None), None).unwrap(), m);
        let signed = m.encode(Some(&key(1)));
        assert_eq!(Invalidation::decode(&signed, Some(&key(1))).unwrap(), m);
        assert!(matches!(
            Invalidation::decode(&m.encode(None), Some(&key(1))),
            Err(BusError::Unsigned(_))
        ));
        assert!(matches!(
            Invalidation::decode(&signed, Some(&key(2))),
            Err(BusError::BadSignature(_))
        ));
    }

    /// The MAC input is injective where version 1's was not: fields that
    /// differ only in where the separators fall give different inputs.
    #[test]
    fn mac_input_is_injective() {
        let a = Invalidation {
            origin: "a".into(),
            epoch: 1,
            seq: 1,
            ts_us: 1,
            scope: Scope::Key("x\n1".into()),
        };
        let b = Invalidation {
            scope: Scope::Prefix("x\n1".into()),
            ..a.clone()
        };
        let c = Invalidation {
            origin: "a\n1".into(),
            scope: Scope::Key("x".into()),
            ..a.clone()
        };
        assert_ne!(a.mac_input_v2(), b.mac_input_v2());
        assert_ne!(a.mac_input_v2(), c.mac_input_v2());
        assert!(a.mac_input_v2().starts_with(b"21:warmpool-invalidation,1:2,1:a,"));
        // The README's worked example, byte for byte.
        let readme = Invalidation {
            origin: "b".into(),
            epoch: 5,
            seq: 7,
            ts_us: 9,
            scope: Scope::Key("k".into()),
        };
        assert_eq!(
            readme.mac_input_v2(),
            b"21:warmpool-invalidation,1:2,1:b,1:5,1:7,1:9,3:key,1:k,".to_vec()
        );
    }

    /// Keys shorter than 32 bytes are refused, and the error says so.
    #[test]
    fn short_keys_are_refused() {
        for len in [0, 1, 31] {
            let err = SigningKey::new(vec![7u8; len]).unwrap_err();
            assert!(matches!(err, BusError::WeakKey { len: l } if l == len));
            assert!(err.to_string().contains("at least 32 bytes"), "{err}");
        }
        assert!(SigningKey::new(vec![0u8; 32]).is_ok());
    }

    /// Epochs of stampers created one after another strictly increase.
    #[test]
    fn epochs_increase() {
        let epochs: Vec<u64> = (0..100).map(|_| Stamper::new("o", None).epoch).collect();
        assert!(epochs.windows(2).all(|w| w[0] < w[1]));
    }
}
