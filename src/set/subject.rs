//! Subject identifiers: RFC 9493 formats, the SSF 1.0 additions (§3.3) and complex subjects
//! (§3.4). Parsing is lenient about extra members and strict about required ones, matching
//! `schemas/subject.json`; legacy spellings (digest §14.1) are rewritten to the 1.0 form first.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Member names SSF §3.4 defines for complex subjects; used to recognise pre-1.0 complex
/// subjects that carry no `format`.
const COMPLEX_MEMBERS: &[&str] = &[
    "user",
    "device",
    "session",
    "application",
    "tenant",
    "org_unit",
    "group",
];

/// Why a subject identifier was refused. Messages name the rule, never the identifier's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject identifier must be a JSON object")]
    NotAnObject,
    #[error("subject identifier has no string `format` member")]
    MissingFormat,
    #[error("subject format `{format}` needs a valid `{member}` member")]
    BadMember {
        format: String,
        member: &'static str,
    },
    #[error("unsupported subject format name")]
    BadFormatName,
    #[error("complex subject needs at least one member")]
    EmptyComplex,
    #[error("complex subject member `{0}` must be a simple subject identifier")]
    BadComplexMember(String),
    #[error("aliases must hold simple, non-aliases identifiers")]
    BadAlias,
}

/// A validated subject identifier in its 1.0 form, kept as the JSON object it arrived as
/// (unknown members preserved so that nothing is lost when it is forwarded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Subject(Map<String, Value>);

impl Subject {
    /// Validates a 1.0-form subject identifier (simple or complex).
    pub fn parse(value: &Value) -> Result<Subject, SubjectError> {
        let obj = value.as_object().ok_or(SubjectError::NotAnObject)?;
        let format = obj
            .get("format")
            .and_then(Value::as_str)
            .ok_or(SubjectError::MissingFormat)?;
        if format == "complex" {
            let mut members = 0;
            for (name, member) in obj.iter().filter(|(k, _)| *k != "format") {
                check_simple(member).map_err(|_| SubjectError::BadComplexMember(name.clone()))?;
                members += 1;
            }
            if members == 0 {
                return Err(SubjectError::EmptyComplex);
            }
        } else {
            check_simple(value)?;
        }
        Ok(Subject(obj.clone()))
    }

    /// Rewrites legacy spellings to the 1.0 form (digest §14.1): `subject_type` → `format`,
    /// `iss-sub`/`phone`/`jwt-id`/`saml-assertion-id` → their 1.0 names, a format-less object
    /// whose members are complex-subject names → `"format": "complex"`, and a phone number
    /// written with spaces, dots, hyphens or parentheses whose digits form E.164 → plain E.164
    /// (the SSF 1.0 §5 example writes `+1 206 555 0123`).
    pub fn upgrade_legacy(value: &mut Value) {
        let Some(obj) = value.as_object_mut() else {
            return;
        };
        if !obj.contains_key("format") {
            if let Some(legacy) = obj.remove("subject_type") {
                obj.insert("format".into(), legacy);
            } else if !obj.is_empty()
                && obj
                    .iter()
                    .all(|(k, v)| COMPLEX_MEMBERS.contains(&k.as_str()) && v.is_object())
            {
                obj.insert("format".into(), Value::from("complex"));
            }
        }
        if let Some(Value::String(format)) = obj.get_mut("format") {
            let renamed = match format.as_str() {
                "iss-sub" => Some("iss_sub"),
                "phone" | "phone-number" => Some("phone_number"),
                "jwt-id" => Some("jwt_id"),
                "saml-assertion-id" => Some("saml_assertion_id"),
                _ => None,
            };
            if let Some(new) = renamed {
                *format = new.to_owned();
            }
        }
        let format = obj.get("format").and_then(Value::as_str).map(str::to_owned);
        if format.as_deref() == Some("phone_number") {
            if let Some(Value::String(number)) = obj.get_mut("phone_number") {
                if let Some(e164) = formatted_e164(number) {
                    *number = e164;
                }
            }
        }
        match format.as_deref() {
            Some("complex") => obj
                .iter_mut()
                .filter(|(k, _)| *k != "format")
                .for_each(|(_, v)| Subject::upgrade_legacy(v)),
            Some("aliases") => {
                if let Some(Value::Array(ids)) = obj.get_mut("identifiers") {
                    ids.iter_mut().for_each(Subject::upgrade_legacy);
                }
            }
            _ => {}
        }
    }

    /// The `format` member (`complex` for complex subjects).
    pub fn format(&self) -> &str {
        self.0
            .get("format")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub fn is_complex(&self) -> bool {
        self.format() == "complex"
    }

    /// The identifier as a JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// A canonical string for equality and matching: the identifier as JSON with keys sorted at
    /// every level, and email addresses lower-cased in the ASCII range only (RFC 9493 §3.2.2.1
    /// leaves canonicalisation to the recipient; ASCII case is the one variant every mail provider
    /// agrees on). Unicode case folding is deliberately not applied: it maps look-alikes such as
    /// the Kelvin sign U+212A onto `k`, which would let one address act for another. Other values
    /// are compared exactly, as SSF §8.1.3.1 asks.
    pub fn canonical_key(&self) -> String {
        let mut out = String::with_capacity(64);
        write_canonical(&Value::Object(self.0.clone()), false, &mut out);
        out
    }

    /// The canonical keys this identifier is known by: its own and, for an RFC 9493 `aliases`
    /// subject, each of its identifiers' (§3.2.8: they all denote the same entity). Indexes and
    /// matching use these, so that a match on any alias is a match.
    pub fn identity_keys(&self) -> Vec<String> {
        let mut keys = vec![self.canonical_key()];
        if self.format() == "aliases" {
            if let Some(Value::Array(ids)) = self.0.get("identifiers") {
                keys.extend(
                    ids.iter()
                        .filter_map(|id| Subject::parse(id).ok())
                        .map(|id| id.canonical_key()),
                );
            }
        }
        keys
    }

    /// Whether two simple identifiers name the same entity: identical after canonicalisation, or
    /// sharing an alias.
    pub fn same_entity(&self, other: &Subject) -> bool {
        let theirs = other.identity_keys();
        self.identity_keys().iter().any(|k| theirs.contains(k))
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Subject::parse(&value).map_err(serde::de::Error::custom)
    }
}

fn non_empty_str<'a>(obj: &'a Map<String, Value>, member: &str) -> Option<&'a str> {
    obj.get(member)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Checks one simple (non-complex) identifier against its format's required members.
fn check_simple(value: &Value) -> Result<(), SubjectError> {
    let obj = value.as_object().ok_or(SubjectError::NotAnObject)?;
    let format = obj
        .get("format")
        .and_then(Value::as_str)
        .ok_or(SubjectError::MissingFormat)?;
    let bad = |member: &'static str| SubjectError::BadMember {
        format: format.to_owned(),
        member,
    };
    let require = |member: &'static str, ok: fn(&str) -> bool| {
        non_empty_str(obj, member)
            .filter(|s| ok(s))
            .map(|_| ())
            .ok_or_else(|| bad(member))
    };
    match format {
        "complex" => Err(SubjectError::BadFormatName),
        "account" => require("uri", |s| s.len() > 5 && s.starts_with("acct:")),
        "email" => require("email", is_addr_spec),
        "iss_sub" => require("iss", |_| true).and(require("sub", |_| true)),
        "opaque" => require("id", |_| true),
        "phone_number" => require("phone_number", is_e164),
        "did" => require("url", is_did),
        "uri" => require("uri", has_scheme),
        "jwt_id" => require("iss", |_| true).and(require("jti", |_| true)),
        "saml_assertion_id" => require("issuer", |_| true).and(require("assertion_id", |_| true)),
        "ip-addresses" => match obj.get("ip-addresses") {
            Some(Value::Array(ips))
                if !ips.is_empty()
                    && ips
                        .iter()
                        .all(|ip| ip.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok())) =>
            {
                Ok(())
            }
            _ => Err(bad("ip-addresses")),
        },
        "aliases" => match obj.get("identifiers") {
            Some(Value::Array(ids)) if !ids.is_empty() => {
                ids.iter()
                    .try_for_each(|id| match id.get("format").and_then(Value::as_str) {
                        Some("aliases" | "complex") => Err(SubjectError::BadAlias),
                        _ => check_simple(id).map_err(|_| SubjectError::BadAlias),
                    })
            }
            _ => Err(bad("identifiers")),
        },
        other if is_format_name(other) => Ok(()),
        _ => Err(SubjectError::BadFormatName),
    }
}

/// `addr-spec` in the loose form the schema uses: one `@`, something on both sides, no spaces.
fn is_addr_spec(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// `+1 (206) 555-0123` → `+12065550123` when only separators stand between the digits and the
/// result is E.164; `None` for anything else (left for validation to refuse) or when there is
/// nothing to rewrite.
fn formatted_e164(s: &str) -> Option<String> {
    let rest = s.trim().strip_prefix('+')?;
    if !rest
        .bytes()
        .all(|b| b.is_ascii_digit() || b" .-()".contains(&b))
    {
        return None;
    }
    let e164: String = std::iter::once('+')
        .chain(rest.chars().filter(char::is_ascii_digit))
        .collect();
    (e164 != s && is_e164(&e164)).then_some(e164)
}

fn is_did(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("did:") else {
        return false;
    };
    match rest.split_once(':') {
        Some((method, id)) => {
            !method.is_empty()
                && method
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && !id.is_empty()
        }
        None => false,
    }
}

fn has_scheme(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && scheme
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
        }
        None => false,
    }
}

/// Proprietary and collision-resistant format names (SSF §3.4).
fn is_format_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/+-".contains(&b))
}

/// The members a known simple format defines; `None` for complex and proprietary formats,
/// whose members are all significant.
fn defined_members(format: &str) -> Option<&'static [&'static str]> {
    Some(match format {
        "account" | "uri" => &["uri"],
        "email" => &["email"],
        "iss_sub" => &["iss", "sub"],
        "opaque" => &["id"],
        "phone_number" => &["phone_number"],
        "did" => &["url"],
        "aliases" => &["identifiers"],
        "jwt_id" => &["iss", "jti"],
        "saml_assertion_id" => &["issuer", "assertion_id"],
        "ip-addresses" => &["ip-addresses"],
        _ => return None,
    })
}

fn write_canonical(value: &Value, lower: bool, out: &mut String) {
    match value {
        Value::Object(map) => {
            let format = map.get("format").and_then(Value::as_str);
            // Extra members of a known format do not identify anything (RFC 9493 §3 forbids
            // them; we tolerate them on receipt), so they must not make two identifiers differ.
            let defined = format.and_then(defined_members);
            let mut keys: Vec<&String> = map
                .keys()
                .filter(|k| *k == "format" || defined.is_none_or(|d| d.contains(&k.as_str())))
                .collect();
            keys.sort();
            let is_email = format == Some("email");
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(&Value::String(k.clone()), false, out);
                out.push(':');
                write_canonical(&map[k], is_email && k == "email", out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, false, out);
            }
            out.push(']');
        }
        Value::String(s) if lower => {
            // ASCII only: see `canonical_key`.
            let _ = write!(out, "{}", Value::String(s.to_ascii_lowercase()));
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn legacy_spellings_become_1_0() {
        let mut v = json!({"subject_type": "iss-sub", "iss": "https://idp.test", "sub": "u1"});
        Subject::upgrade_legacy(&mut v);
        assert_eq!(
            v,
            json!({"format": "iss_sub", "iss": "https://idp.test", "sub": "u1"})
        );

        let mut v = json!({"user": {"subject_type": "phone", "phone_number": "+12065550100"},
                           "device": {"format": "opaque", "id": "d"}});
        Subject::upgrade_legacy(&mut v);
        let s = Subject::parse(&v).expect("upgraded complex subject parses");
        assert!(s.is_complex());
        assert_eq!(v["user"]["format"], "phone_number");
    }

    #[test]
    fn formatted_phone_numbers_become_e164() {
        for (given, want) in [
            ("+1 206 555 0123", Some("+12065550123")),
            ("+1 (206) 555-0123", Some("+12065550123")),
            ("+44.20.7946.0958", Some("+442079460958")),
            ("+12065550123", None),
            ("206 555 0123", None),
            ("+1 206 555 0123 ext 4", None),
            ("+0 206", None),
        ] {
            assert_eq!(formatted_e164(given).as_deref(), want, "{given}");
        }
        let mut v = json!({"format": "complex",
            "user": {"format": "phone", "phone_number": "+1 206 555 0123"}});
        Subject::upgrade_legacy(&mut v);
        assert_eq!(v["user"]["phone_number"], "+12065550123");
    }

    #[test]
    fn kelvin_sign_is_not_k() {
        let kelvin = Subject::parse(&json!({"format": "email", "email": "\u{212A}en@x.test"}))
            .expect("valid");
        let ken =
            Subject::parse(&json!({"format": "email", "email": "KEN@x.test"})).expect("valid");
        assert_ne!(kelvin.canonical_key(), ken.canonical_key());
        assert!(ken.canonical_key().contains("ken@x.test"));
    }

    #[test]
    fn canonical_key_sorts_members_and_folds_email_case() {
        let a = Subject::parse(&json!({"format": "complex",
            "user": {"format": "email", "email": "Ana@Corp.Test"},
            "tenant": {"format": "opaque", "id": "T"}}))
        .expect("valid");
        let b = Subject::parse(&json!({"tenant": {"id": "T", "format": "opaque"},
            "format": "complex", "user": {"email": "ana@corp.test", "format": "email"}}))
        .expect("valid");
        assert_eq!(a.canonical_key(), b.canonical_key());
        let c = Subject::parse(&json!({"format": "opaque", "id": "t"})).expect("valid");
        let d = Subject::parse(&json!({"format": "opaque", "id": "T"})).expect("valid");
        assert_ne!(
            c.canonical_key(),
            d.canonical_key(),
            "opaque ids are case-sensitive"
        );
        let extra =
            Subject::parse(&json!({"format": "opaque", "id": "t", "note": "x"})).expect("valid");
        assert_eq!(
            extra.canonical_key(),
            c.canonical_key(),
            "undeclared members do not count"
        );
    }
}
