//! JSON Schema validation of event payloads and subject identifiers, compiled once from the
//! files in `schemas/` (embedded at build time). Knows schemas, not SETs or HTTP.

use std::collections::HashMap;

use jsonschema::{Registry, Validator};
use serde_json::Value;

use crate::set::EventKind;

/// Base of every schema's `$id`.
pub const ID_BASE: &str = "https://ssf-hub.dev/schemas/";

/// Every schema file, by path below `schemas/`.
pub const FILES: &[(&str, &str)] = &[
    (
        "events/caep/assurance-level-change.json",
        include_str!("../schemas/events/caep/assurance-level-change.json"),
    ),
    (
        "events/caep/credential-change.json",
        include_str!("../schemas/events/caep/credential-change.json"),
    ),
    (
        "events/caep/device-compliance-change.json",
        include_str!("../schemas/events/caep/device-compliance-change.json"),
    ),
    (
        "events/caep/risk-level-change.json",
        include_str!("../schemas/events/caep/risk-level-change.json"),
    ),
    (
        "events/caep/session-established.json",
        include_str!("../schemas/events/caep/session-established.json"),
    ),
    (
        "events/caep/session-presented.json",
        include_str!("../schemas/events/caep/session-presented.json"),
    ),
    (
        "events/caep/session-revoked.json",
        include_str!("../schemas/events/caep/session-revoked.json"),
    ),
    (
        "events/caep/token-claims-change.json",
        include_str!("../schemas/events/caep/token-claims-change.json"),
    ),
    (
        "events/common.json",
        include_str!("../schemas/events/common.json"),
    ),
    (
        "events/risc/account-credential-change-required.json",
        include_str!("../schemas/events/risc/account-credential-change-required.json"),
    ),
    (
        "events/risc/account-disabled.json",
        include_str!("../schemas/events/risc/account-disabled.json"),
    ),
    (
        "events/risc/account-enabled.json",
        include_str!("../schemas/events/risc/account-enabled.json"),
    ),
    (
        "events/risc/account-purged.json",
        include_str!("../schemas/events/risc/account-purged.json"),
    ),
    (
        "events/risc/credential-compromise.json",
        include_str!("../schemas/events/risc/credential-compromise.json"),
    ),
    (
        "events/risc/identifier-changed.json",
        include_str!("../schemas/events/risc/identifier-changed.json"),
    ),
    (
        "events/risc/identifier-recycled.json",
        include_str!("../schemas/events/risc/identifier-recycled.json"),
    ),
    (
        "events/risc/opt-in.json",
        include_str!("../schemas/events/risc/opt-in.json"),
    ),
    (
        "events/risc/opt-out-cancelled.json",
        include_str!("../schemas/events/risc/opt-out-cancelled.json"),
    ),
    (
        "events/risc/opt-out-effective.json",
        include_str!("../schemas/events/risc/opt-out-effective.json"),
    ),
    (
        "events/risc/opt-out-initiated.json",
        include_str!("../schemas/events/risc/opt-out-initiated.json"),
    ),
    (
        "events/risc/recovery-activated.json",
        include_str!("../schemas/events/risc/recovery-activated.json"),
    ),
    (
        "events/risc/recovery-information-changed.json",
        include_str!("../schemas/events/risc/recovery-information-changed.json"),
    ),
    (
        "events/risc/sessions-revoked.json",
        include_str!("../schemas/events/risc/sessions-revoked.json"),
    ),
    (
        "events/ssf/stream-updated.json",
        include_str!("../schemas/events/ssf/stream-updated.json"),
    ),
    (
        "events/ssf/verification.json",
        include_str!("../schemas/events/ssf/verification.json"),
    ),
    ("subject.json", include_str!("../schemas/subject.json")),
];

/// Compiled validators: one per event kind, plus the subject identifier schema.
#[derive(Debug)]
pub struct Schemas {
    events: HashMap<EventKind, Validator>,
    subject: Validator,
}

/// A payload that broke its schema: where, and which rule. Never the offending value, which
/// comes from an untrusted token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("violates its definition at `{location}` ({rule})")]
pub struct SchemaViolation {
    pub location: String,
    pub rule: String,
}

impl Schemas {
    /// Compiles the embedded schemas. Fails only if a schema file itself is broken, which the
    /// test suite rules out.
    pub fn compile() -> Result<Schemas, String> {
        let parsed: Vec<(String, Value)> = FILES
            .iter()
            .map(|(path, text)| {
                serde_json::from_str(text)
                    .map(|v| (format!("{ID_BASE}{path}"), v))
                    .map_err(|e| format!("schemas/{path}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let registry = Registry::new()
            .extend(parsed.iter().map(|(id, v)| (id.as_str(), v)))
            .and_then(|r| r.prepare())
            .map_err(|e| format!("schema registry: {e}"))?;
        let build = |path: &str| -> Result<Validator, String> {
            let schema = &parsed
                .iter()
                .find(|(id, _)| id.ends_with(path))
                .ok_or_else(|| format!("schemas/{path} is missing"))?
                .1;
            jsonschema::options()
                .with_registry(&registry)
                .should_validate_formats(true)
                .build(schema)
                .map_err(|e| format!("schemas/{path}: {e}"))
        };
        let mut events = HashMap::new();
        for kind in EventKind::ALL {
            events.insert(*kind, build(&kind.schema_path())?);
        }
        Ok(Schemas {
            events,
            subject: build("subject.json")?,
        })
    }

    /// Checks an event payload against its kind's schema.
    pub fn check_event(&self, kind: EventKind, payload: &Value) -> Result<(), SchemaViolation> {
        check(&self.events[&kind], payload)
    }

    /// Checks a subject identifier against `subject.json`.
    pub fn check_subject(&self, subject: &Value) -> Result<(), SchemaViolation> {
        check(&self.subject, subject)
    }
}

fn check(validator: &Validator, value: &Value) -> Result<(), SchemaViolation> {
    match validator.iter_errors(value).next() {
        None => Ok(()),
        Some(e) => Err(SchemaViolation {
            location: sanitize(&e.instance_path().to_string()),
            rule: sanitize(&e.schema_path().to_string()),
        }),
    }
}

/// JSON pointers into attacker-supplied documents can contain attacker-chosen member names; keep
/// only a short, plain rendering so nothing hostile reaches a response or a log.
fn sanitize(pointer: &str) -> String {
    let s = crate::plain(pointer, 80);
    if s.is_empty() {
        "/".into()
    } else {
        s
    }
}
