//! Outbound SETs: the [`Minter`] holds the hub's keyring and mints the hub-signed SET a stream
//! receives for one log record, and the SSF control events (verification, stream-updated)
//! addressed to a stream (digest §2.4). Knows the SET profile; leaves choosing streams and
//! moving bytes to `delivery`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

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
    format!("{}.{}", hex(&digest[..8]), record.position)
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
        hex(&digest[..12])
    })
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
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
    signer.sign(&Envelope {
        iss: issuer,
        aud: &stream.aud,
        jti,
        iat: crate::unix_now(),
        txn: &txn(record),
        sub_id: record.subject.as_map(),
        events: Events(&record.event_type, Payload(&record.claims)),
    })
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
    let mut sub_id = Map::new();
    sub_id.insert("format".into(), "opaque".into());
    sub_id.insert("id".into(), stream.stream_id.as_str().into());
    signer.sign(&Envelope {
        iss: issuer,
        aud: &stream.aud,
        jti: &control.jti,
        iat: crate::unix_now(),
        txn: &control.jti,
        sub_id: &sub_id,
        events: Events(&control.event_type.uri(), Payload(&control.payload)),
    })
}

/// The claims of an outbound SET, serialized from borrowed parts: the record's claims are not
/// copied once per SET.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    iss: &'a str,
    aud: &'a str,
    jti: &'a str,
    iat: u64,
    txn: &'a str,
    sub_id: &'a Map<String, Value>,
    events: Events<'a>,
}

/// `events`: exactly one event type and its payload.
struct Events<'a>(&'a str, Payload<'a>);

impl serde::Serialize for Events<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.0, &self.1)?;
        map.end()
    }
}

/// An event payload without the legacy in-payload `subject`, which never leaves the hub:
/// `sub_id` carries it (SSF §3.1.2).
struct Payload<'a>(&'a Value);

impl serde::Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let Value::Object(members) = self.0 else {
            return self.0.serialize(s);
        };
        let kept = members.iter().filter(|(k, _)| k.as_str() != "subject");
        let mut map = s.serialize_map(None)?;
        for (k, v) in kept {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_has_one_event_and_no_legacy_subject() {
        let payload = serde_json::json!({
            "subject": {"format": "email", "email": "ana@example.com"},
            "event_timestamp": 1,
            "reason_admin": {"en": "x"},
        });
        let mut sub_id = Map::new();
        sub_id.insert("format".into(), "opaque".into());
        let claims = serde_json::to_value(Envelope {
            iss: "https://hub",
            aud: "https://rx",
            jti: "0123456789abcdef.7",
            iat: 9,
            txn: "t",
            sub_id: &sub_id,
            events: Events("urn:e", Payload(&payload)),
        })
        .expect("serialize");
        assert_eq!(
            claims,
            serde_json::json!({
                "iss": "https://hub", "aud": "https://rx", "jti": "0123456789abcdef.7",
                "iat": 9, "txn": "t", "sub_id": {"format": "opaque"},
                "events": {"urn:e": {"event_timestamp": 1, "reason_admin": {"en": "x"}}},
            })
        );
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }

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
