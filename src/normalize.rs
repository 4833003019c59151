//! Stage 3: `Verified` SET → normalized [`Record`]: the single event, its payload upgraded from
//! legacy spellings and checked against its JSON Schema and typed definition, the subject in
//! its 1.0 form with a canonical key (digest §2.3 steps 9–11). Pure functions; no I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::schema::{SchemaViolation, Schemas};
use crate::set::{Event, EventKind, Subject, SubjectError};
use crate::verify::Verified;

/// A normalized event as the log stores it and the APIs return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Log position; assigned by the log, so 0 until the record is read back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub position: u64,
    /// When the hub accepted the SET, unix milliseconds.
    pub received_at_ms: u64,
    /// Configured id of the source that pushed it.
    pub source: String,
    pub iss: String,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    pub iat: i64,
    /// The event-type URI in its 1.0 spelling (as received when the type is unknown).
    pub event_type: String,
    /// Whether the hub knows this event type. Unknown types are kept for audit and the SOC feed
    /// but carry no meaning for revocation or delivery (SETs are statements, not commands).
    pub known: bool,
    pub subject: Subject,
    /// Canonical form of `subject` for matching ([`Subject::canonical_key`]).
    pub subject_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_timestamp: Option<u64>,
    /// Whether the source that sent it owns the subject (`sources[].owns`), decided at ingest
    /// and kept with the record so that the fold stays a pure function of the log. Only an
    /// owner's event can restore access (see `state`); records written before this field existed
    /// read as `false`.
    #[serde(default)]
    pub authoritative: bool,
    /// The event payload after legacy upgrades.
    pub claims: Value,
    /// The compact SET exactly as received, for audit.
    pub set: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Record {
    /// The typed event, for known event types.
    pub fn event(&self) -> Option<Event> {
        EventKind::from_uri(&self.event_type).and_then(|k| Event::decode(k, &self.claims).ok())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    #[error("`events` must be a non-empty JSON object")]
    NoEvents,
    #[error("a SET must carry exactly one event")]
    SeveralEvents,
    #[error("the event payload must be a JSON object")]
    PayloadNotObject,
    #[error("the {kind} event payload {violation}")]
    Schema {
        kind: EventKind,
        violation: SchemaViolation,
    },
    #[error("the {kind} event payload does not match its definition")]
    Typed { kind: EventKind },
    #[error("`sub_id` is missing")]
    NoSubject,
    #[error("`sub_id` is not a valid subject identifier: {0}")]
    Subject(#[from] SubjectError),
    #[error("`sub_id` {0}")]
    SubjectSchema(SchemaViolation),
    #[error("`txn` must be a string")]
    Txn,
    #[error(
        "`event_timestamp` lies further in the future than the clock skew allowance \
         (ingest.max_future_iat_secs)"
    )]
    FutureEventTimestamp,
}

/// Options that differ per source.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Take the subject from the payload's `subject` when `sub_id` is missing (pre-1.0).
    pub legacy: bool,
    /// The latest `event_timestamp` accepted (now plus the clock skew allowance); `None` sets no
    /// bound. A timestamp from the future would win every later comparison in the fold.
    pub max_event_timestamp: Option<u64>,
}

/// Normalizes a verified SET. `received_at_ms` and `source` describe its arrival.
pub fn normalize(
    schemas: &Schemas,
    verified: Verified,
    source: &str,
    received_at_ms: u64,
    opts: Options,
) -> Result<Record, NormalizeError> {
    let Verified {
        mut claims,
        iss,
        jti,
        iat,
        compact,
        ..
    } = verified;
    let (event_type, kind, mut payload) = single_event(&mut claims)?;
    if !payload.is_object() {
        return Err(NormalizeError::PayloadNotObject);
    }
    let event_timestamp = match kind {
        Some(kind) => {
            if kind.has_common_claims() {
                upgrade_legacy_claims(&mut payload);
            }
            canonicalize_enums(kind, &mut payload);
            if opts.legacy && kind == EventKind::AssuranceLevelChange {
                infer_draft_02_namespace(&mut payload);
            }
            schemas
                .check_event(kind, &payload)
                .map_err(|violation| NormalizeError::Schema { kind, violation })?;
            let event =
                Event::decode(kind, &payload).map_err(|_| NormalizeError::Typed { kind })?;
            let at = event.event_timestamp();
            if at
                .zip(opts.max_event_timestamp)
                .is_some_and(|(at, max)| at > max)
            {
                return Err(NormalizeError::FutureEventTimestamp);
            }
            at
        }
        None => {
            metrics::counter!("ssf_hub_ingest_unknown_event_type_total", "source" => source.to_owned())
                .increment(1);
            None
        }
    };
    let mut sub_id = match claims.remove("sub_id") {
        Some(v) => v,
        None if opts.legacy => payload
            .get("subject")
            .cloned()
            .ok_or(NormalizeError::NoSubject)?,
        None => return Err(NormalizeError::NoSubject),
    };
    Subject::upgrade_legacy(&mut sub_id);
    schemas
        .check_subject(&sub_id)
        .map_err(NormalizeError::SubjectSchema)?;
    let subject = Subject::parse(&sub_id)?;
    let txn = match claims.remove("txn") {
        None => None,
        Some(Value::String(s)) => Some(s),
        // Pre-2025 examples used numbers (digest §14.1); keep the value, in the 1.0 type.
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(NormalizeError::Txn),
    };
    Ok(Record {
        position: 0,
        received_at_ms,
        source: source.to_owned(),
        iss,
        jti,
        txn,
        iat,
        known: kind.is_some(),
        event_type,
        subject_key: subject.canonical_key(),
        subject,
        event_timestamp,
        authoritative: false,
        claims: payload,
        set: compact,
    })
}

/// Picks the one event of the SET. Several members are allowed when they are aliases of the
/// same known type (SSF §4.2.1; the first known spelling wins, digest §14.2 #13), or when one
/// known event is accompanied by extension event URIs the hub does not know (RFC 8417 §2.2
/// lets a SET carry several aspects of one event): the known one is normalized, the extensions
/// stay in the raw SET. Two different known events, or several unknown ones, are refused.
fn single_event(
    claims: &mut Map<String, Value>,
) -> Result<(String, Option<EventKind>, Value), NormalizeError> {
    let Some(Value::Object(events)) = claims.remove("events") else {
        return Err(NormalizeError::NoEvents);
    };
    let mut known: Option<(EventKind, String, Value)> = None;
    let mut first_unknown = None;
    let count = events.len();
    for (uri, payload) in events {
        match EventKind::from_uri(&uri) {
            Some(kind) => match &known {
                Some((k, _, _)) if *k != kind => return Err(NormalizeError::SeveralEvents),
                Some(_) => {}
                None => known = Some((kind, kind.uri(), payload)),
            },
            None if first_unknown.is_none() => first_unknown = Some((uri, payload)),
            None => {}
        }
    }
    match (known, first_unknown) {
        // Known members must all be spellings of one type; unknown ones beside it are
        // extensions of that event.
        (Some((kind, uri, payload)), _) => Ok((uri, Some(kind), payload)),
        (None, Some((uri, payload))) if count == 1 => Ok((uri, None, payload)),
        (None, Some(_)) => Err(NormalizeError::SeveralEvents),
        (None, None) => Err(NormalizeError::NoEvents),
    }
}

/// Upgrades pre-1.0 forms of the common CAEP claims (digest §14.1): millisecond
/// `event_timestamp` (13+ digits) and fractional seconds become whole seconds; a bare-string
/// `reason_admin`/`reason_user` becomes `{"en": text}`; a legacy in-payload `subject` is upgraded.
fn upgrade_legacy_claims(payload: &mut Value) {
    let Some(obj) = payload.as_object_mut() else {
        return;
    };
    if let Some(Value::Number(n)) = obj.get("event_timestamp") {
        if let Some(t) = n.as_f64().filter(|t| t.is_finite() && *t >= 0.0) {
            let secs = if t >= 1e12 { t / 1000.0 } else { t };
            if secs.fract() != 0.0 || t >= 1e12 {
                obj.insert("event_timestamp".into(), Value::from(secs.trunc() as u64));
            }
        }
    }
    for key in ["reason_admin", "reason_user"] {
        if let Some(Value::String(text)) = obj.get(key) {
            let mut map = Map::new();
            map.insert("en".into(), Value::String(text.clone()));
            obj.insert(key.into(), Value::Object(map));
        }
    }
    if let Some(subject) = obj.get_mut("subject") {
        Subject::upgrade_legacy(subject);
    }
}

/// Rewrites enumerated payload values that match a spec value ASCII case-insensitively to the
/// spec's spelling ([`EventKind::enum_claims`]); values matching none are left for the schema
/// to refuse.
fn canonicalize_enums(kind: EventKind, payload: &mut Value) {
    let Some(obj) = payload.as_object_mut() else {
        return;
    };
    let common: &[(&str, &[&str])] = if kind.has_common_claims() {
        &[("initiating_entity", crate::set::events::INITIATING_ENTITIES)]
    } else {
        &[]
    };
    for (member, values) in common.iter().chain(kind.enum_claims()) {
        if let Some(Value::String(v)) = obj.get_mut(*member) {
            if let Some(canonical) = values.iter().find(|c| c.eq_ignore_ascii_case(v)) {
                if v != canonical {
                    *v = (*canonical).to_owned();
                }
            }
        }
    }
}

/// CAEP draft 02 had no `namespace` in assurance-level-change: its levels were only
/// `nist-aal1`..`nist-aal3`. For a legacy source, a missing namespace with such a level is the
/// `NIST-AAL` namespace; any other level stays without one and is refused.
fn infer_draft_02_namespace(payload: &mut Value) {
    let Some(obj) = payload.as_object_mut() else {
        return;
    };
    let nist_aal = obj
        .get("current_level")
        .and_then(Value::as_str)
        .is_some_and(|l| {
            ["nist-aal1", "nist-aal2", "nist-aal3"]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(l))
        });
    if nist_aal && !obj.contains_key("namespace") {
        obj.insert("namespace".into(), Value::from("NIST-AAL"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn legacy_claims_are_upgraded() {
        let mut p = json!({"event_timestamp": 1767225590123u64, "reason_admin": "locked"});
        upgrade_legacy_claims(&mut p);
        assert_eq!(
            p,
            json!({"event_timestamp": 1767225590u64, "reason_admin": {"en": "locked"}})
        );
        let mut p = json!({"event_timestamp": 1767225590.7});
        upgrade_legacy_claims(&mut p);
        assert_eq!(p["event_timestamp"], json!(1767225590u64));
    }

    #[test]
    fn aliases_of_one_event_are_one_event_but_two_events_are_refused() {
        let caep = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
        let legacy = "http://schemas.openid.net/secevent/caep/event-type/session-revoked";
        let other = "https://schemas.openid.net/secevent/risc/event-type/account-purged";
        let mut c = json!({"events": {caep: {}, legacy: {}}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(matches!(
            single_event(&mut c),
            Ok((_, Some(EventKind::SessionRevoked), _))
        ));
        let extension = "https://vendor.example.test/event-type/session-revoked-detail";
        let mut c = json!({"events": {extension: {"x": 1}, caep: {}}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(matches!(
            single_event(&mut c),
            Ok((_, Some(EventKind::SessionRevoked), _))
        ));
        let mut c = json!({"events": {caep: {}, other: {}}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(matches!(
            single_event(&mut c),
            Err(NormalizeError::SeveralEvents)
        ));
        let mut c = json!({"events": {}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(matches!(
            single_event(&mut c),
            Err(NormalizeError::NoEvents)
        ));
    }
}
