//! Outbound SETs: the [`Minter`] holds the hub's keyring and mints the hub-signed SET a stream
//! receives for one log record, and the SSF control events (verification, stream-updated)
//! addressed to a stream (digest §2.4). Knows the SET profile; leaves choosing streams and
//! moving bytes to `delivery`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    signed: Arc<Mutex<SignedEvents>>,
}

/// Event SETs signed lately. Streams with the same `aud` and key get the same bytes for a
/// record (its claims and `jti` do not depend on the stream), so a fan-out signs each event once
/// per audience and key, not once per stream; a push retried or in flight is not signed again.
/// Bounded in count and age: `iat` says when a SET was minted, and a stream catching up later
/// gets a fresh one.
#[derive(Debug, Default)]
struct SignedEvents {
    slots: HashMap<SignedKey, Arc<Slot>>,
    order: VecDeque<SignedKey>,
}

/// (log position, `kid`, `aud`).
type SignedKey = (u64, Arc<str>, Arc<str>);
type Slot = OnceLock<(Instant, Arc<str>)>;

/// Most signed event SETs kept: a few seconds of a fast fan-out, a few MiB.
const SIGNED_EVENTS: usize = 4096;
/// Oldest signed event SET handed out again.
const SIGNED_MAX_AGE: Duration = Duration::from_secs(30);

impl Minter {
    pub fn new(keys: Keyring, default_alg: SignAlg, issuer: &str) -> Minter {
        Minter {
            keys: Arc::new(keys),
            default_alg,
            issuer: issuer.into(),
            signed: Arc::default(),
        }
    }

    /// The SET `stream` gets for `record`, signed with `signer` (the stream's key, see
    /// [`Minter::signer_for`]): `(jti, compact JWS)`. Signed once for every stream with the same
    /// `aud` and key while it is recent (see [`SignedEvents`]).
    pub fn event(
        &self,
        signer: &SetSigner,
        stream: &Stream,
        record: &Record,
    ) -> Result<(String, Arc<str>), SignError> {
        let jti = event_jti(record);
        let key: SignedKey = (
            record.position,
            signer.kid().into(),
            stream.aud.as_str().into(),
        );
        let slot = {
            let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = |slot: &Slot| {
                slot.get()
                    .is_none_or(|(at, _)| at.elapsed() < SIGNED_MAX_AGE)
            };
            match signed.slots.get(&key) {
                Some(slot) if fresh(slot) => slot.clone(),
                _ => {
                    let slot = Arc::<Slot>::default();
                    if signed.slots.insert(key.clone(), slot.clone()).is_none() {
                        signed.order.push_back(key);
                    }
                    while signed.order.len() > SIGNED_EVENTS {
                        if let Some(old) = signed.order.pop_front() {
                            signed.slots.remove(&old);
                        }
                    }
                    slot
                }
            }
        };
        if let Some((_, set)) = slot.get() {
            metrics::counter!("ssf_hub_outbound_signatures_total", "shared" => "true").increment(1);
            return Ok((jti, set.clone()));
        }
        // Signed outside the lock; two streams racing for one slot both sign, and the first
        // signature wins so both send the same bytes.
        let set: Arc<str> = mint_event(signer, &self.issuer, stream, record, &jti)?.into();
        metrics::counter!("ssf_hub_outbound_signatures_total", "shared" => "false").increment(1);
        let _ = slot.set((Instant::now(), set.clone()));
        Ok((jti, slot.get().map_or(set, |(_, s)| s.clone())))
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

/// The `jti` of the SET every stream gets for `record`: a digest of the source event's
/// identity (`iss`, `jti`), then the log position. Deterministic, so a SET minted again after a
/// restart, by another replica, or for another stream is recognisably the same SET, and an
/// `ack` names the position it releases. The digest keeps it unique when positions start over
/// (a new data directory): the event at a reused position is another event.
pub fn event_jti(record: &Record) -> String {
    let digest = openssl::sha::sha256(format!("{}\0{}", record.iss, record.jti).as_bytes());
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{tag}.{}", record.position)
}

/// The log position an `ack`ed `jti` of this stream refers to, if it is an event SET: the
/// form of [`event_jti`], or `<stream id>.<position>` as earlier versions wrote it (SETs handed
/// out before an upgrade can still be acknowledged).
pub fn position_of(stream_id: &str, jti: &str) -> Option<u64> {
    let (tag, position) = jti.rsplit_once('.')?;
    let digest = tag.len() == 16 && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !(digest || tag == stream_id) || position.starts_with('+') {
        return None;
    }
    position.parse().ok()
}

/// `txn` for a record: the source's, or one derived from the source SET's identity so every
/// SET caused by it correlates (SSF §4.1.9).
fn txn(record: &Record) -> String {
    record.txn.clone().unwrap_or_else(|| {
        let digest = openssl::sha::sha256(format!("{}\0{}", record.iss, record.jti).as_bytes());
        digest[..12].iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Signs the SET `stream` receives for `record`: `iss` the hub, `aud` the stream's, `jti` from
/// [`event_jti`], `iat` now, the source `txn`, `sub_id`, exactly one event, no `sub`/`exp`.
/// Nothing in it depends on the stream but `aud`.
fn mint_event(
    signer: &SetSigner,
    issuer: &str,
    stream: &Stream,
    record: &Record,
    jti: &str,
) -> Result<String, SignError> {
    let mut payload = record.claims.clone();
    if let Some(obj) = payload.as_object_mut() {
        // The legacy in-payload subject never leaves the hub: `sub_id` carries it (SSF §3.1.2).
        obj.remove("subject");
    }
    let claims = envelope(
        issuer,
        stream,
        jti,
        txn(record),
        record.subject.as_map().clone().into(),
        &record.event_type,
        payload,
    );
    signer.sign(&claims)
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
    fn jti_round_trips_to_its_position() {
        let jti = "0123456789abcdef.42";
        assert_eq!(position_of("abc", jti), Some(42));
        assert_eq!(position_of("abc", "abc.42"), Some(42), "earlier versions");
        assert_eq!(position_of("abd", "abc.42"), None);
        assert_eq!(position_of("abc", "0123456789abcdeF.42"), None);
        assert_eq!(position_of("abc", "0123456789abcde.42"), None);
        assert_eq!(position_of("abc", "0123456789abcdef.+42"), None);
        assert_eq!(position_of("abc", "abc.c-123"), None);
    }
}
