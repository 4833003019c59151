//! Streams: receivers (with hashed bearer credentials), their streams (configuration, status,
//! subjects, verification timing) in the [`Registry`], and each stream's progress over the log
//! in [`Cursors`] (cursor, poll acknowledgements, queued control events, dead letters, the
//! per-stream locks, and every status transition's effect on the cursor). Knows SSF stream
//! semantics (SSF 1.0 §8); leaves HTTP to `manage` and moving SETs to `delivery`.

mod cursors;
mod registry;

pub use self::cursors::{
    set_cursor_for_status, Control, Cursor, Cursors, MAX_CONTROL, PUSH_PROGRESS_FLUSH,
};
pub use self::registry::{Registry, SubjectLimit, SubjectLimits};

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::set::events::StreamStatus;
use crate::set::{EventKind, Subject, DELIVERY_POLL, DELIVERY_PUSH};

/// A registered receiver (gateway, sidecar, SIEM). Only a hash of its credential is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receiver {
    pub id: String,
    pub name: String,
    /// The `aud` of this receiver's streams and SETs.
    pub audience: String,
    /// Hex SHA-256 of the bearer credential.
    pub token_sha256: String,
    pub created_at_ms: u64,
    #[serde(default)]
    pub revoked: bool,
}

/// A stream's delivery: push to the receiver's URL, or poll at the hub's URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_header: Option<String>,
}

impl Delivery {
    pub fn is_poll(&self) -> bool {
        self.method == DELIVERY_POLL
    }
}

/// A stream as the hub stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub stream_id: String,
    pub receiver_id: String,
    pub aud: String,
    pub events_requested: Vec<String>,
    pub events_delivered: Vec<String>,
    pub delivery: Delivery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub status: StreamStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With `default_subjects: ALL` these are exclusions; with `NONE`, inclusions. Stored one
    /// row per subject beside the stream (see [`Registry`]) and attached when a stream is read;
    /// never serialized with the stream. Streams of older versions kept them inline, which is
    /// still read (and moved into rows when the registry opens).
    #[serde(default, skip_serializing)]
    pub subjects: Subjects,
    /// Per-stream delivery latency budget (hub extension field), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget_ms: Option<u64>,
    /// Per-stream signing algorithm (hub extension field `signing_alg`): ES256 or RS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_alg: Option<String>,
    #[serde(default)]
    pub last_verification_ms: u64,
    pub created_at_ms: u64,
}

/// A stream's listed subjects as the registry cached them: shared, so loading a stream with
/// thousands of subjects (every poll, every push batch) copies a pointer, not the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subjects(std::sync::Arc<Vec<Subject>>);

impl Subjects {
    pub fn new(list: Vec<Subject>) -> Subjects {
        Subjects(std::sync::Arc::new(list))
    }
}

impl std::ops::Deref for Subjects {
    type Target = [Subject];
    fn deref(&self) -> &[Subject] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Subjects {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Subjects::new(Vec::<Subject>::deserialize(d)?))
    }
}

/// Event types a stream can carry: every CAEP and RISC type. Verification and stream-updated
/// are always allowed and never listed (SSF §8.1.4, §8.1.5).
pub fn events_supported() -> Vec<String> {
    EventKind::ALL
        .iter()
        .filter(|k| k.has_common_claims())
        .map(|k| k.uri())
        .collect()
}

/// `events_delivered` = requested ∩ supported, in catalogue order; unknown requests are ignored
/// as SSF §8.1.1 requires. Legacy spellings of a supported type count as that type.
pub fn events_delivered(requested: &[String]) -> Vec<String> {
    let wanted: BTreeSet<EventKind> = requested
        .iter()
        .filter_map(|uri| EventKind::from_uri(uri))
        .collect();
    EventKind::ALL
        .iter()
        .filter(|k| k.has_common_claims() && wanted.contains(k))
        .map(|k| k.uri())
        .collect()
}

/// How a new stream treats subjects not mentioned by the receiver (transmitter metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DefaultSubjects {
    All,
    None,
}

impl Stream {
    /// Whether an event about `subject` goes onto this stream (SSF §8.1.3.1; digest §3.6).
    pub fn wants_subject(&self, subject: &Subject, default: DefaultSubjects) -> bool {
        let listed = self.subjects.iter().any(|s| subjects_match(s, subject));
        match default {
            DefaultSubjects::All => !listed,
            DefaultSubjects::None => listed,
        }
    }

    /// Whether the stream delivers events of `event_type` (a 1.0 URI).
    pub fn wants_event(&self, event_type: &str) -> bool {
        self.events_delivered.iter().any(|e| e == event_type)
    }
}

/// SSF §8.1.3.1 matching. Simple vs simple: identical (after canonicalisation). Complex vs
/// complex: every member present in both is identical (a missing member is a wildcard). Simple
/// vs complex is undefined in SSF; we match when the simple subject equals any member of the
/// complex one (digest §14.2 #3), so a stream subject `email:ana` sees events about Ana's
/// sessions and devices.
pub fn subjects_match(a: &Subject, b: &Subject) -> bool {
    use serde_json::Map;
    fn key(v: &Value) -> Option<String> {
        Subject::parse(v).ok().map(|s| s.canonical_key())
    }
    let members = |s: &Subject| -> Map<String, Value> {
        s.as_map()
            .iter()
            .filter(|(k, _)| *k != "format")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    match (a.is_complex(), b.is_complex()) {
        (false, false) => a.canonical_key() == b.canonical_key(),
        (true, true) => {
            let (ma, mb) = (members(a), members(b));
            ma.iter()
                .all(|(k, va)| mb.get(k).is_none_or(|vb| key(va) == key(vb)))
        }
        (true, false) => members(a)
            .values()
            .any(|m| key(m).as_deref() == Some(&b.canonical_key())),
        (false, true) => members(b)
            .values()
            .any(|m| key(m).as_deref() == Some(&a.canonical_key())),
    }
}

/// A fresh credential: 32 random bytes, base64url, with a prefix that secret scanners can spot.
pub fn new_token() -> String {
    format!("ssfhub_{}", URL_SAFE_NO_PAD.encode(random::<32>()))
}

/// `N` bytes from the operating system's CSPRNG. UUIDv4 draws on getrandom and panics if the
/// OS has no randomness, which fails closed rather than handing out a predictable secret.
fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(16) {
        let r = uuid::Uuid::new_v4();
        chunk.copy_from_slice(&r.as_bytes()[..chunk.len()]);
    }
    out
}

pub fn token_hash(token: &str) -> String {
    // On every authenticated request: hex by table, not a `format!` per byte.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in openssl::sha::sha256(token.as_bytes()) {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// A stream id: 16 random bytes, base64url (RFC 3986 unreserved characters only).
pub fn new_stream_id() -> String {
    URL_SAFE_NO_PAD.encode(random::<16>())
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("state storage failed: {0}")]
    Storage(String),
}

impl From<crate::storage::StorageError> for RegistryError {
    fn from(e: crate::storage::StorageError) -> Self {
        RegistryError::Storage(e.to_string())
    }
}

impl From<serde_json::Error> for RegistryError {
    fn from(e: serde_json::Error) -> Self {
        RegistryError::Storage(format!("corrupt record: {e}"))
    }
}

/// The push delivery method URI, re-exported for callers that build configurations.
pub const PUSH: &str = DELIVERY_PUSH;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: Value) -> Subject {
        Subject::parse(&v).expect("valid subject")
    }

    #[test]
    fn subject_matching_follows_ssf_8_1_3_1() {
        let user = json!({"format": "email", "email": "u@x.test"});
        let t = json!({"format": "opaque", "id": "T"});
        let g1 = json!({"format": "opaque", "id": "G1"});
        let g2 = json!({"format": "opaque", "id": "G2"});
        let d = json!({"format": "opaque", "id": "D"});
        // The spec's own examples.
        assert!(subjects_match(
            &s(json!({"format": "complex", "tenant": t})),
            &s(json!({"format": "complex", "tenant": t, "user": user}))
        ));
        assert!(subjects_match(
            &s(json!({"format": "complex", "user": user, "device": d})),
            &s(json!({"format": "complex", "user": user}))
        ));
        assert!(!subjects_match(
            &s(json!({"format": "complex", "user": user, "group": g1})),
            &s(json!({"format": "complex", "user": user, "group": g2}))
        ));
        // Simple vs simple, with email case folding.
        assert!(subjects_match(
            &s(user.clone()),
            &s(json!({"format": "email", "email": "U@X.test"}))
        ));
        assert!(!subjects_match(&s(user.clone()), &s(d.clone())));
        // Our documented choice for simple vs complex.
        assert!(subjects_match(
            &s(user.clone()),
            &s(json!({"format": "complex", "user": user}))
        ));
        assert!(!subjects_match(
            &s(d),
            &s(json!({"format": "complex", "user": user}))
        ));
    }

    #[test]
    fn events_delivered_is_requested_intersect_supported() {
        let requested = vec![
            "https://schemas.openid.net/secevent/risc/event-type/account-disabled".to_owned(),
            "https://example.test/unknown".to_owned(),
            "http://schemas.openid.net/secevent/caep/event-type/session-revoked".to_owned(),
            "https://schemas.openid.net/secevent/ssf/event-type/verification".to_owned(),
        ];
        assert_eq!(
            events_delivered(&requested),
            vec![
                "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
                "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
            ]
        );
        assert_eq!(events_supported().len(), 22);
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("ssfhub_") && a.len() > 40);
        assert_eq!(token_hash(&a).len(), 64);
    }
}
