//! Outbound SETs: the [`Minter`] holds the hub's keyring and mints the hub-signed SET a stream
//! receives for one log record, and the SSF control events (verification, stream-updated)
//! addressed to a stream (digest §2.4). Knows the SET profile; leaves choosing streams and
//! moving bytes to `delivery`.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::keyring::Keyring;
use crate::normalize::Record;
use crate::set::EventKind;
use crate::sign::{SetSigner, SignAlg, SignError};
use crate::streams::{Control, Stream};

/// The hub's signing keys, its default algorithm and its issuer: everything outbound SETs are
/// signed with.
#[derive(Debug, Clone)]
pub struct Minter {
    keys: Arc<Keyring>,
    default_alg: SignAlg,
    issuer: Arc<str>,
}

impl Minter {
    pub fn new(keys: Keyring, default_alg: SignAlg, issuer: &str) -> Minter {
        Minter {
            keys: Arc::new(keys),
            default_alg,
            issuer: issuer.into(),
        }
    }

    /// The key that signs `stream`'s SETs now: its own `signing_alg`, or the hub's.
    pub fn signer_for(&self, stream: &Stream) -> Result<Arc<SetSigner>, SignError> {
        let alg = match &stream.signing_alg {
            Some(name) => SignAlg::parse(name)?,
            None => self.default_alg,
        };
        self.keys
            .active(alg)
            .ok_or_else(|| SignError::Alg(format!("no active {} key", alg.name())))
    }

    pub fn default_alg(&self) -> SignAlg {
        self.default_alg
    }

    /// The hub's issuer, `iss` of every outbound SET.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The keyring, for publishing (JWKS) and rotation.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }
}

/// The `jti` of the SET a stream gets for the record at `position`. Deterministic, so a SET
/// minted again after a restart is recognisably the same SET to the receiver, and an `ack`
/// names the position it releases.
pub fn event_jti(stream_id: &str, position: u64) -> String {
    format!("{stream_id}.{position}")
}

/// The log position an `ack`ed `jti` of this stream refers to, if it is one of its event SETs.
pub fn position_of(stream_id: &str, jti: &str) -> Option<u64> {
    jti.strip_prefix(stream_id)?.strip_prefix('.')?.parse().ok()
}

/// `txn` for a record: the source's, or one derived from the source SET's identity so every
/// SET caused by it correlates (SSF §4.1.9).
fn txn(record: &Record) -> String {
    record.txn.clone().unwrap_or_else(|| {
        let digest = openssl::sha::sha256(format!("{}\0{}", record.iss, record.jti).as_bytes());
        digest[..12].iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Signs the SET `stream` receives for `record`: `iss` the hub, `aud` the stream's, a `jti`
/// from [`event_jti`], `iat` now, the source `txn`, `sub_id`, exactly one event, no `sub`/`exp`.
pub fn mint_event(
    signer: &SetSigner,
    issuer: &str,
    stream: &Stream,
    record: &Record,
) -> Result<(String, String), SignError> {
    let mut payload = record.claims.clone();
    if let Some(obj) = payload.as_object_mut() {
        // The legacy in-payload subject never leaves the hub: `sub_id` carries it (SSF §3.1.2).
        obj.remove("subject");
    }
    let jti = event_jti(&stream.stream_id, record.position);
    let claims = envelope(
        issuer,
        stream,
        &jti,
        txn(record),
        record.subject.as_map().clone().into(),
        &record.event_type,
        payload,
    );
    Ok((jti.clone(), signer.sign(&claims)?))
}

/// A verification or stream-updated event for `stream`, to be queued and signed when sent.
pub fn control(stream: &Stream, kind: EventKind, payload: Value) -> Control {
    Control {
        jti: format!("{}.c-{}", stream.stream_id, uuid::Uuid::new_v4().simple()),
        event_type: kind,
        payload,
    }
}

/// Signs a control event (SSF §8.1.4.1, §8.1.5): `sub_id` is the opaque stream id.
pub fn mint_control(
    signer: &SetSigner,
    issuer: &str,
    stream: &Stream,
    control: &Control,
) -> Result<String, SignError> {
    let sub_id = json!({"format": "opaque", "id": stream.stream_id});
    let claims = envelope(
        issuer,
        stream,
        &control.jti,
        control.jti.clone(),
        sub_id,
        &control.event_type.uri(),
        control.payload.clone(),
    );
    signer.sign(&claims)
}

fn envelope(
    issuer: &str,
    stream: &Stream,
    jti: &str,
    txn: String,
    sub_id: Value,
    event_type: &str,
    payload: Value,
) -> Map<String, Value> {
    let mut events = Map::new();
    events.insert(event_type.to_owned(), payload);
    let mut claims = Map::new();
    claims.insert("iss".into(), Value::from(issuer));
    claims.insert("aud".into(), Value::from(stream.aud.clone()));
    claims.insert("jti".into(), Value::from(jti));
    claims.insert("iat".into(), Value::from(crate::unix_now()));
    claims.insert("txn".into(), Value::from(txn));
    claims.insert("sub_id".into(), sub_id);
    claims.insert("events".into(), Value::Object(events));
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jti_round_trips_to_its_position_and_stream() {
        let jti = event_jti("abc", 42);
        assert_eq!(position_of("abc", &jti), Some(42));
        assert_eq!(position_of("abd", &jti), None);
        assert_eq!(position_of("ab", &jti), None);
        assert_eq!(position_of("abc", "abc.c-123"), None);
    }
}
