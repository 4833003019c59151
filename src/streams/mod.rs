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
pub use self::registry::{Grant, Registry, SubjectLimit, SubjectLimits};

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
    /// What the credential may do ([`SCOPE_MANAGE`], [`SCOPE_READ`], [`SCOPE_REVOCATIONS`]).
    /// Receivers stored before scopes existed get the stream scopes only: their credentials
    /// were issued for stream management, and least privilege means an upgrade must not hand
    /// every one of them every subject's revocation state (see the README).
    #[serde(default = "stream_scopes")]
    pub scopes: Vec<String>,
    /// When non-empty, the revocation views (deltas, snapshot, websocket, decisions) show this
    /// credential only subjects one of these covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_to: Vec<Binding>,
    /// The OAuth 2.0 `client_id` whose access tokens act as this receiver (RFC 9068).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_client_id: Option<String>,
}

/// Scope for the SSF stream management API (every stream call, and polling).
pub const SCOPE_MANAGE: &str = "ssf.manage";
/// Scope for the read-only stream calls (`GET` configuration and status) and polling.
pub const SCOPE_READ: &str = "ssf.read";
/// Scope for the revocation views and decisions (`/revocations*`): gateways and sidecars.
pub const SCOPE_REVOCATIONS: &str = "revocations.read";
/// Every scope the hub knows.
pub const SCOPES: [&str; 3] = [SCOPE_MANAGE, SCOPE_READ, SCOPE_REVOCATIONS];

/// The scopes of a credential that names none: a stream credential, never a revocation one.
pub fn stream_scopes() -> Vec<String> {
    vec![SCOPE_MANAGE.to_owned(), SCOPE_READ.to_owned()]
}

/// What a bound credential may see of the revocation state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Binding {
    /// Subjects that match this identifier as a stream's subjects do (SSF §8.1.3.1).
    Subject(Subject),
    /// Email identifiers in this domain (ASCII case-insensitive).
    EmailDomain(String),
    /// `iss_sub` identifiers with this issuer (exact).
    Issuer(String),
}

impl Binding {
    /// Whether `subject` (or, for a complex or aliases subject, any identifier in it) falls
    /// under this binding.
    pub fn covers(&self, subject: &Subject) -> bool {
        match self {
            Binding::Subject(b) => subjects_match(b, subject),
            Binding::EmailDomain(domain) => simple_ids(subject).iter().any(|id| {
                id.get("format").and_then(Value::as_str) == Some("email")
                    && id
                        .get("email")
                        .and_then(Value::as_str)
                        .and_then(|e| e.rsplit_once('@'))
                        .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
            }),
            Binding::Issuer(iss) => simple_ids(subject).iter().any(|id| {
                id.get("format").and_then(Value::as_str) == Some("iss_sub")
                    && id.get("iss").and_then(Value::as_str) == Some(iss.as_str())
            }),
        }
    }
}

/// Whether a credential bound to `bindings` may see `subject`; an unbound one sees all.
pub fn visible(bindings: &[Binding], subject: &Subject) -> bool {
    bindings.is_empty() || bindings.iter().any(|b| b.covers(subject))
}

/// The simple identifiers in a subject: itself, a complex subject's members, an aliases
/// subject's identifiers (one level; neither nests further, RFC 9493).
fn simple_ids(subject: &Subject) -> Vec<&serde_json::Map<String, Value>> {
    let map = subject.as_map();
    let nested: Vec<&Value> = match map.get("format").and_then(Value::as_str) {
        Some("complex") => map
            .iter()
            .filter(|(k, _)| *k != "format")
            .map(|(_, v)| v)
            .collect(),
        Some("aliases") => map
            .get("identifiers")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ => return vec![map],
    };
    nested
        .into_iter()
        .filter_map(Value::as_object)
        .flat_map(|m| {
            // A complex member may itself be an aliases identifier.
            match m.get("identifiers").and_then(Value::as_array) {
                Some(ids) => ids.iter().filter_map(Value::as_object).collect(),
                None => vec![m],
            }
        })
        .collect()
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
    /// Most SETs in flight at once to this push stream (hub extension field `max_in_flight`):
    /// 1 for strict log order; at most, and by default, `delivery.push_max_in_flight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Push over HTTP/2 without negotiation on an `http://` endpoint (hub extension field
    /// `http2_prior_knowledge`), for receivers known to speak h2c. Push streams only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2_prior_knowledge: bool,
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

/// SSF §8.1.3.1 matching. Simple vs simple: identical (after canonicalisation), where an RFC
/// 9493 `aliases` subject is identical to each of its identifiers, so a match on any alias is a
/// match ([`Subject::same_entity`]). Complex vs complex: every member present in both is
/// identical (a missing member is a wildcard). Simple vs complex is undefined in SSF; we match
/// when the simple subject equals any member of the complex one (digest §14.2 #3), so a stream
/// subject `email:ana` sees events about Ana's sessions and devices.
pub fn subjects_match(a: &Subject, b: &Subject) -> bool {
    use serde_json::Map;
    fn parse(v: &Value) -> Option<Subject> {
        Subject::parse(v).ok()
    }
    let same = |x: &Value, y: &Value| match (parse(x), parse(y)) {
        (Some(x), Some(y)) => x.same_entity(&y),
        _ => false,
    };
    let members = |s: &Subject| -> Map<String, Value> {
        s.as_map()
            .iter()
            .filter(|(k, _)| *k != "format")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    match (a.is_complex(), b.is_complex()) {
        (false, false) => a.same_entity(b),
        (true, true) => {
            let (ma, mb) = (members(a), members(b));
            ma.iter()
                .all(|(k, va)| mb.get(k).is_none_or(|vb| same(va, vb)))
        }
        (true, false) => members(a)
            .values()
            .any(|m| parse(m).is_some_and(|m| m.same_entity(b))),
        (false, true) => members(b)
            .values()
            .any(|m| parse(m).is_some_and(|m| m.same_entity(a))),
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
        // Aliases: a match on any alias is a match, in every position.
        let other = json!({"format": "iss_sub", "iss": "https://idp.test", "sub": "u"});
        let aliases = json!({"format": "aliases", "identifiers": [user, other]});
        assert!(subjects_match(&s(other.clone()), &s(aliases.clone())));
        assert!(subjects_match(&s(aliases.clone()), &s(user.clone())));
        assert!(subjects_match(
            &s(
                json!({"format": "complex", "user": other, "session": {"format": "opaque", "id": "s"}})
            ),
            &s(json!({"format": "complex", "user": aliases}))
        ));
        assert!(!subjects_match(&s(aliases), &s(g1)));
    }

    #[test]
    fn bindings_cover_simple_complex_and_aliases_subjects() {
        let domain = Binding::EmailDomain("Corp.Test".into());
        let issuer = Binding::Issuer("https://idp.test".into());
        let ana = s(json!({"format": "email", "email": "ana@corp.test"}));
        let evil = s(json!({"format": "email", "email": "ana@corp.test.evil.test"}));
        let complex = s(json!({"format": "complex",
            "user": {"format": "iss_sub", "iss": "https://idp.test", "sub": "u"},
            "device": {"format": "opaque", "id": "D"}}));
        let aliases = s(json!({"format": "aliases", "identifiers": [
            {"format": "opaque", "id": "x"}, {"format": "email", "email": "bo@corp.test"}]}));
        assert!(domain.covers(&ana) && domain.covers(&aliases));
        assert!(!domain.covers(&evil) && !domain.covers(&complex));
        assert!(issuer.covers(&complex) && !issuer.covers(&ana));
        let exact = Binding::Subject(ana.clone());
        assert!(exact.covers(&ana) && !exact.covers(&evil));
        assert!(visible(&[], &evil), "an unbound credential sees everything");
        assert!(!visible(&[domain, issuer], &evil));
    }

    #[test]
    fn receivers_stored_before_scopes_get_the_stream_scopes_only() {
        let stored = json!({"id": "r1", "name": "gw", "audience": "https://gw.test",
            "token_sha256": "00", "created_at_ms": 1, "revoked": false});
        let r: Receiver = serde_json::from_value(stored).expect("old record");
        assert_eq!(r.scopes, vec![SCOPE_MANAGE, SCOPE_READ]);
        assert!(r.bound_to.is_empty() && r.oauth_client_id.is_none());
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
