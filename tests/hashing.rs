//! Credentials hashing (`hash_credentials`): the hash of a value's
//! canonical JSON (object keys sorted at every depth), so key order and map
//! type do not matter and any changed value does; its exact format; no
//! secret in its `Debug` or `Display`; and errors instead of panics for
//! values that cannot become JSON. Plain tests: no runtime, no clock.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use warmpool::{CredentialsHash, hash_credentials};

fn hash(value: &impl Serialize) -> CredentialsHash {
    hash_credentials(value).expect("JSON-serializable credentials")
}

/// Reordering object keys at every depth, including objects inside arrays, keeps the hash.
#[test]
fn hash_ignores_key_order_at_every_depth() {
    let a = json!({
        "api_key": "sk-1",
        "org": {"id": "acme", "region": {"zone": "eu-1", "tier": 2}},
        "scopes": [{"name": "read", "level": 1}, {"name": "write", "level": 2}],
    });
    let b = json!({
        "scopes": [{"level": 1, "name": "read"}, {"level": 2, "name": "write"}],
        "org": {"region": {"tier": 2, "zone": "eu-1"}, "id": "acme"},
        "api_key": "sk-1",
    });
    assert_eq!(hash(&a), hash(&b));
}

/// A `#[derive(Serialize)]` struct hashes like a `json!` with the same content in another key order.
#[test]
fn hash_of_struct_equals_hash_of_reordered_json() {
    #[derive(Serialize)]
    struct Region {
        zone: String,
        tier: u8,
    }
    #[derive(Serialize)]
    struct Creds {
        api_key: String,
        org: String,
        region: Region,
    }
    let creds = Creds {
        api_key: "sk-1".into(),
        org: "acme".into(),
        region: Region {
            zone: "eu-1".into(),
            tier: 2,
        },
    };
    let reordered = json!({"region": {"tier": 2, "zone": "eu-1"}, "org": "acme", "api_key": "sk-1"});
    assert_eq!(hash(&creds), hash(&reordered));
}

/// A `HashMap` (random iteration order) and a `BTreeMap` with the same entries hash the same.
#[test]
fn hash_of_hashmap_equals_hash_of_btreemap() {
    let entries: Vec<(String, String)> = (0..32).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    let hashed: HashMap<_, _> = entries.iter().cloned().collect();
    let ordered: BTreeMap<_, _> = entries.iter().cloned().collect();
    assert_eq!(hash(&hashed), hash(&ordered));
}

/// Changed, nested, swapped, reordered-array, retyped or missing values all change the hash.
#[test]
fn different_credentials_hash_differently() {
    let base = hash(&json!({"api_key": "sk-1", "org": {"id": "acme"}, "scopes": [1, 2]}));
    let variants = [
        json!({"api_key": "sk-2", "org": {"id": "acme"}, "scopes": [1, 2]}),
        json!({"api_key": "sk-1", "org": {"id": "acmf"}, "scopes": [1, 2]}),
        json!({"api_key": "sk-1", "org": {"id": "acme"}, "scopes": [2, 1]}),
        json!({"api_key": "sk-1", "org": {"id": "acme"}, "scopes": ["1", "2"]}),
        json!({"api_key": "sk-1", "org": {"id": "acme"}}),
        json!({"api_key": "sk-1", "org": "acme", "scopes": [1, 2]}),
    ];
    for variant in &variants {
        assert_ne!(hash(variant), base, "{variant}");
    }
    assert_ne!(hash(&json!({"a": "1", "b": "2"})), hash(&json!({"a": "2", "b": "1"})));
}

/// The hash is the first 16 lowercase hex characters of SHA-256 over sorted, compact JSON.
#[test]
fn hash_is_16_lowercase_hex_of_sha256_over_canonical_json() {
    let h = hash(&json!({"org": "acme", "api_key": "k"}));
    let digest = Sha256::digest(br#"{"api_key":"k","org":"acme"}"#);
    let expected: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(h.to_string(), expected);
    for creds in [
        json!({}),
        json!({"api_key": "sk-live-0123456789"}),
        json!([1, "x", null]),
    ] {
        let text = hash(&creds).to_string();
        assert_eq!(text.len(), 16, "{text}");
        assert!(text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "{text}");
        assert_eq!(text.parse::<CredentialsHash>().unwrap(), hash(&creds));
    }
}

/// Neither `Debug` nor `Display` of a hash contains the secret it was made from.
#[test]
fn hash_debug_and_display_do_not_leak_the_secret() {
    let secret = "sk-live-SECRET-0123456789abcdef";
    let h = hash(&json!({"api_key": secret, "org": "acme"}));
    for text in [format!("{h}"), format!("{h:?}"), format!("{h:#?}")] {
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains("acme"), "{text}");
    }
}

/// A map with non-string keys cannot become JSON: `hash_credentials` returns a `HashError`.
#[test]
fn non_string_map_keys_are_a_hash_error() {
    let mut creds: HashMap<(u8, u8), u8> = HashMap::new();
    creds.insert((1, 2), 3);
    let error = hash_credentials(&creds).unwrap_err();
    assert!(!error.to_string().is_empty());
    assert!(
        std::error::Error::source(&error).is_some(),
        "the serde_json error is the source"
    );
}

/// A `Serialize` impl that fails gives a `HashError`, not a panic.
#[test]
fn failing_serialize_is_a_hash_error() {
    struct Broken;
    impl Serialize for Broken {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("vault unavailable"))
        }
    }
    let error = hash_credentials(&Broken).unwrap_err();
    assert!(error.to_string().contains("vault unavailable"), "{error}");
}
