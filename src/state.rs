//! Stage 5a: the revocation view. Folds normalized records into an access state per canonical
//! subject and turns every change into a revocation delta; answers access decisions from memory.
//! Pure data and functions: persistence and HTTP live in `revocation`.
//!
//! Every facet of a subject's state is last-writer-wins on `(event time, log position)`, where
//! event time is `event_timestamp` or, when the event has none, the SET's `iat`. A stale event
//! therefore never undoes a newer one, out-of-order arrival converges, and applying the same
//! record twice changes nothing (so replaying a log prefix is harmless).
//!
//! # Who may change what
//!
//! Several sources feed one state: an identity provider, an MDM, a risk scanner. Each may be
//! wrong or compromised, so what one source says about a subject another source is responsible
//! for is trusted only in the safe direction:
//!
//! - **Deny-type events take effect from every configured source**: account disabled or purged,
//!   session and token revocations, credential changes and compromise, a device no longer
//!   compliant, an identifier changed or recycled, a risk level that does not go down, an
//!   assurance level going down. A false one costs a re-login; a missed one costs a breach.
//! - **Restoring events take effect only from the subject's owner**: account enabled, a device
//!   compliant again, a risk level going down, an assurance level going up (or changing without
//!   a stated direction), token claims changed. Ownership is per source
//!   (`sources[].owns`, [`Ownership`]): by default a source owns the `iss_sub`, `jwt_id` and
//!   `saml_assertion_id` subjects of its own issuer and nothing else; email domains and whole
//!   formats (say, an MDM's opaque device ids) are owned only when configured. A complex or
//!   aliases subject is owned when every identifier in it is.
//! - A restoring event from a non-owner was verified, so it **is stored in the log** (and reaches
//!   streams and feeds like any event), but it changes no state and yields no delta. Ingest
//!   decides ownership once and records it in [`Record::authoritative`], so replaying the log
//!   gives the same state whatever the configuration says later.
//! - Event times come from the transmitter, so ingest refuses an `iat` or `event_timestamp`
//!   beyond now plus the clock skew allowance: a timestamp from the future would otherwise win
//!   every later comparison, locking or unlocking a subject for good.
//!
//! Each subject's state is its own entry: a restore about one identifier never undoes a deny
//! recorded under another (a complex subject, an aliases subject or a different identifier), and
//! a decision denies if any entry relevant to the token denies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::normalize::Record;
use crate::set::events::{ChangeType, ComplianceStatus, Event, RiskLevel};
use crate::set::Subject;

/// When a facet was last set: event time first, log position to break ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub at: u64,
    pub position: u64,
}

/// Account status from RISC account-disabled / account-purged / account-enabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Account {
    Enabled,
    Disabled { reason: Option<String> },
    Purged,
}

/// Identifier status from RISC identifier-changed / identifier-recycled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identifier {
    Changed { new_value: Option<String> },
    Recycled,
}

/// One facet's new value: what a delta carries and what state stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Tokens and sessions issued before `before` (unix seconds) are no longer good.
    RevokeTokensBefore { before: u64 },
    /// Deny everything for this subject (account disabled or purged).
    Deny { account: Account },
    /// The account is enabled again.
    Restore,
    /// The device is not compliant: deny it.
    RestrictDevice,
    /// The device is compliant again.
    UnrestrictDevice,
    /// Assurance level changed (raise or lower per `direction` when known).
    SetAssurance {
        namespace: String,
        level: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direction: Option<String>,
    },
    /// Risk level changed.
    SetRisk { principal: String, level: RiskLevel },
    /// Token claims changed (informational for decisions).
    SetClaims { claims: Map<String, Value> },
    /// The identifier changed hands or value: tokens issued before are no longer good.
    IdentifierChanged { identifier: Identifier },
}

impl Action {
    /// Short name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Action::RevokeTokensBefore { .. } => "revoke_tokens_before",
            Action::Deny { .. } => "deny",
            Action::Restore => "restore",
            Action::RestrictDevice => "restrict_device",
            Action::UnrestrictDevice => "unrestrict_device",
            Action::SetAssurance { .. } => "set_assurance",
            Action::SetRisk { .. } => "set_risk",
            Action::SetClaims { .. } => "set_claims",
            Action::IdentifierChanged { .. } => "identifier_changed",
        }
    }
}

/// Why a delta happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub event_type: String,
    pub source: String,
    pub jti: String,
}

/// A change to one subject's state, in log order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub position: u64,
    pub subject: Subject,
    pub subject_key: String,
    #[serde(flatten)]
    pub action: Action,
    /// When the change takes effect (event time), unix seconds.
    pub effective_at: u64,
    pub cause: Cause,
}

/// The access state of one subject. Each facet is `(value, stamp)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectState {
    pub subject: Subject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_before: Option<(u64, Stamp)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<(Account, Stamp)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_compliant: Option<(bool, Stamp)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assurance: Option<((String, String), Stamp)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<((String, RiskLevel), Stamp)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<(Map<String, Value>, Stamp)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<(Identifier, Stamp)>,
}

impl SubjectState {
    fn new(subject: Subject) -> SubjectState {
        SubjectState {
            subject,
            revoked_before: None,
            account: None,
            device_compliant: None,
            assurance: None,
            risk: None,
            claims: None,
            identifier: None,
        }
    }

    /// Applies `action` stamped `stamp`; returns whether anything changed.
    fn apply(&mut self, action: &Action, stamp: Stamp) -> bool {
        // Last writer wins on the stamp. A newer event that restates the current value moves
        // the stamp (so an event older than it cannot win later) but changes nothing a
        // decision depends on, so it is not a change and yields no delta.
        fn lww<T: PartialEq>(slot: &mut Option<(T, Stamp)>, value: T, stamp: Stamp) -> bool {
            match slot {
                Some((_, s)) if *s >= stamp => false,
                Some((old, s)) if *old == value => {
                    *s = stamp;
                    false
                }
                _ => {
                    *slot = Some((value, stamp));
                    true
                }
            }
        }
        match action {
            // Revocation horizons only move forward: the latest cut-off wins whatever the
            // arrival order, so this one is a maximum rather than last-writer-wins.
            Action::RevokeTokensBefore { before } => match &self.revoked_before {
                Some((t, _)) if *t >= *before => false,
                _ => {
                    self.revoked_before = Some((*before, stamp));
                    true
                }
            },
            Action::Deny { account } => lww(&mut self.account, account.clone(), stamp),
            Action::Restore => lww(&mut self.account, Account::Enabled, stamp),
            Action::RestrictDevice => lww(&mut self.device_compliant, false, stamp),
            Action::UnrestrictDevice => lww(&mut self.device_compliant, true, stamp),
            Action::SetAssurance {
                namespace, level, ..
            } => lww(
                &mut self.assurance,
                (namespace.clone(), level.clone()),
                stamp,
            ),
            Action::SetRisk { principal, level } => {
                lww(&mut self.risk, (principal.clone(), *level), stamp)
            }
            Action::SetClaims { claims } => lww(&mut self.claims, claims.clone(), stamp),
            Action::IdentifierChanged { identifier } => {
                lww(&mut self.identifier, identifier.clone(), stamp)
            }
        }
    }
}

/// The rule per event type, written next to the code that applies it. Events not listed change
/// nothing (session-established, session-presented, opt-in/out, recovery-*, verification,
/// stream-updated, unknown types) and yield no delta.
pub fn action_for(record: &Record) -> Option<Action> {
    use Event as E;
    let event = record.event()?;
    let at = event_time(record);
    Some(match event {
        // CAEP session-revoked, RISC sessions-revoked: sessions (and their tokens) from before
        // the revocation are over; with a complex subject, only those matching the combination.
        E::SessionRevoked(_) | E::SessionsRevoked(_) => Action::RevokeTokensBefore { before: at },
        // A credential updated, revoked or deleted invalidates tokens issued before the change;
        // a newly created credential invalidates nothing.
        E::CredentialChange(c) => match c.change_type {
            ChangeType::Create => return None,
            ChangeType::Update | ChangeType::Revoke | ChangeType::Delete => {
                Action::RevokeTokensBefore { before: at }
            }
        },
        // Compromise and a forced credential change: nothing issued before may stand.
        E::CredentialCompromise(_) | E::AccountCredentialChangeRequired(_) => {
            Action::RevokeTokensBefore { before: at }
        }
        E::AccountDisabled(d) => Action::Deny {
            account: Account::Disabled {
                reason: d.reason.map(|r| {
                    serde_json::to_value(r)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                }),
            },
        },
        E::AccountPurged(_) => Action::Deny {
            account: Account::Purged,
        },
        E::AccountEnabled(_) => Action::Restore,
        E::DeviceComplianceChange(d) => match d.current_status {
            ComplianceStatus::NotCompliant => Action::RestrictDevice,
            ComplianceStatus::Compliant => Action::UnrestrictDevice,
        },
        E::AssuranceLevelChange(a) => Action::SetAssurance {
            namespace: a.namespace.0,
            level: a.current_level.0,
            direction: a
                .change_direction
                .and_then(|d| serde_json::to_value(d).ok())
                .and_then(|v| v.as_str().map(String::from)),
        },
        E::RiskLevelChange(r) => Action::SetRisk {
            principal: r.principal.0,
            level: r.current_level,
        },
        E::TokenClaimsChange(t) => Action::SetClaims { claims: t.claims },
        // The identifier in the subject carries the old value; whoever held tokens for it
        // before the change no longer may.
        E::IdentifierChanged(i) => Action::IdentifierChanged {
            identifier: Identifier::Changed {
                new_value: i.new_value,
            },
        },
        E::IdentifierRecycled(_) => Action::IdentifierChanged {
            identifier: Identifier::Recycled,
        },
        E::SessionEstablished(_)
        | E::SessionPresented(_)
        | E::OptIn(_)
        | E::OptOutInitiated(_)
        | E::OptOutCancelled(_)
        | E::OptOutEffective(_)
        | E::RecoveryActivated(_)
        | E::RecoveryInformationChanged(_)
        | E::Verification(_)
        | E::StreamUpdated(_) => return None,
    })
}

/// Whether `action` loosens access for a subject whose state is `current`, and so may come only
/// from the subject's owner (see the module docs for the rules).
fn restores(action: &Action, current: Option<&SubjectState>) -> bool {
    match action {
        Action::Restore | Action::UnrestrictDevice | Action::SetClaims { .. } => true,
        // Assurance has no order across namespaces; only a stated decrease is the safe direction.
        Action::SetAssurance { direction, .. } => direction.as_deref() != Some("decrease"),
        Action::SetRisk { level, .. } => current
            .and_then(|s| s.risk.as_ref())
            .is_some_and(|((_, now), _)| level < now),
        Action::RevokeTokensBefore { .. }
        | Action::Deny { .. }
        | Action::RestrictDevice
        | Action::IdentifierChanged { .. } => false,
    }
}

/// Which subjects a source owns: only the owner's events may restore access to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// `iss_sub` and `jwt_id` subjects with one of these `iss`, `saml_assertion_id` subjects with
    /// one of these `issuer` (exact string comparison, as for a SET's `iss`).
    pub issuers: Vec<String>,
    /// `email` subjects, and `account` subjects (`acct:` URIs), in one of these domains (ASCII
    /// case-insensitive; subdomains are separate domains).
    pub email_domains: Vec<String>,
    /// Every subject of these simple formats, whatever its value.
    pub formats: Vec<String>,
}

impl Ownership {
    /// Whether `subject` belongs to this source. Complex and aliases subjects need every
    /// identifier in them to be owned.
    pub fn owns(&self, subject: &Subject) -> bool {
        let map = subject.as_map();
        let member = |name: &str| map.get(name).and_then(Value::as_str);
        let all = |ids: &mut dyn Iterator<Item = &Value>| {
            let mut any = false;
            for id in ids {
                match Subject::parse(id) {
                    Ok(s) if self.owns(&s) => any = true,
                    _ => return false,
                }
            }
            any
        };
        let in_domain = |addr: Option<&str>| {
            addr.and_then(|a| a.rsplit_once('@'))
                .is_some_and(|(_, domain)| {
                    self.email_domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(domain))
                })
        };
        let issuer = |iss: Option<&str>| iss.is_some_and(|i| self.issuers.iter().any(|o| o == i));
        match subject.format() {
            "complex" => all(&mut map.iter().filter(|(k, _)| *k != "format").map(|(_, v)| v)),
            "aliases" => match map.get("identifiers") {
                Some(Value::Array(ids)) => all(&mut ids.iter()),
                _ => false,
            },
            f if self.formats.iter().any(|o| o == f) => true,
            "iss_sub" | "jwt_id" => issuer(member("iss")),
            "saml_assertion_id" => issuer(member("issuer")),
            "email" => in_domain(member("email")),
            "account" => in_domain(member("uri").and_then(|u| u.strip_prefix("acct:"))),
            _ => false,
        }
    }
}

/// `event_timestamp`, or `iat` when the event carries none.
pub fn event_time(record: &Record) -> u64 {
    record
        .event_timestamp
        .unwrap_or_else(|| u64::try_from(record.iat).unwrap_or(0))
}

/// The materialized state of every subject, with an index from each simple member of a complex
/// subject to the complex subjects containing it (for decisions).
#[derive(Debug, Clone, Default)]
pub struct State {
    pub subjects: HashMap<String, Arc<SubjectState>>,
    members: HashMap<String, HashSet<String>>,
    /// Last log position folded in.
    pub position: u64,
}

impl State {
    /// Folds one record (at `record.position`) in; returns the delta if the state changed.
    pub fn apply_record(&mut self, record: &Record) -> Option<Delta> {
        self.position = self.position.max(record.position);
        let action = action_for(record)?;
        if !record.authoritative
            && restores(
                &action,
                self.subjects.get(&record.subject_key).map(|s| &**s),
            )
        {
            // Stored in the log, but only the subject's owner may loosen its state.
            return None;
        }
        let delta = Delta {
            position: record.position,
            subject: record.subject.clone(),
            subject_key: record.subject_key.clone(),
            effective_at: event_time(record),
            action,
            cause: Cause {
                event_type: record.event_type.clone(),
                source: record.source.clone(),
                jti: record.jti.clone(),
            },
        };
        self.apply_delta(&delta).then_some(delta)
    }

    /// Applies a delta (as a sidecar following the delta feed would); returns whether it changed
    /// anything.
    pub fn apply_delta(&mut self, delta: &Delta) -> bool {
        self.position = self.position.max(delta.position);
        let stamp = Stamp {
            at: delta.effective_at,
            position: delta.position,
        };
        let key = delta.subject_key.clone();
        if !self.subjects.contains_key(&key) {
            self.index(&delta.subject, &key);
        }
        let entry = self
            .subjects
            .entry(key)
            .or_insert_with(|| Arc::new(SubjectState::new(delta.subject.clone())));
        Arc::make_mut(entry).apply(&delta.action, stamp)
    }

    /// Inserts a stored subject state (restoring a snapshot).
    pub fn restore(&mut self, key: String, state: SubjectState) {
        self.index(&state.subject, &key);
        self.subjects.insert(key, Arc::new(state));
    }

    /// Indexes a subject under every identifier it names: each member of a complex subject and
    /// each alias (of an aliases subject, or of an aliases member), so that a query naming any
    /// one of them finds its state.
    fn index(&mut self, subject: &Subject, key: &str) {
        let names: Vec<String> = if subject.is_complex() {
            subject
                .as_map()
                .iter()
                .filter(|(k, _)| *k != "format")
                .filter_map(|(_, member)| Subject::parse(member).ok())
                .flat_map(|m| m.identity_keys())
                .collect()
        } else if subject.format() == "aliases" {
            subject.identity_keys().into_iter().skip(1).collect()
        } else {
            return;
        };
        for name in names {
            self.members.entry(name).or_default().insert(key.to_owned());
        }
    }

    /// Subject states relevant to `query`: the query's own identifiers (and their aliases), every
    /// aliases subject naming one of them, and every complex subject that matches the query's
    /// combination (SSF §8.1.3.1 semantics, a member matching on any alias).
    fn relevant(&self, query: &Query) -> Vec<Arc<SubjectState>> {
        let mut keys: Vec<String> = Vec::new();
        let mut members: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (role, subject) in &query.parts {
            let ids = subject.identity_keys();
            for k in &ids {
                keys.push(k.clone());
                if let Some(indexed) = self.members.get(k) {
                    keys.extend(indexed.iter().cloned());
                }
            }
            members.entry(role.as_str()).or_default().extend(ids);
        }
        keys.sort();
        keys.dedup();
        keys.iter()
            .filter_map(|k| self.subjects.get(k))
            .filter(|s| {
                !s.subject.is_complex()
                    || s.subject
                        .as_map()
                        .iter()
                        .filter(|(name, _)| *name != "format")
                        .all(|(name, member)| {
                            match (members.get(name.as_str()), Subject::parse(member)) {
                                (Some(q), Ok(m)) => m.identity_keys().iter().any(|k| q.contains(k)),
                                // A member the query does not mention is a wildcard.
                                (None, _) => true,
                                (Some(_), Err(_)) => false,
                            }
                        })
            })
            .cloned()
            .collect()
    }

    /// Decides whether a token is still good.
    pub fn decide(&self, query: &Query) -> Decision {
        let deny = |reason: &str| Decision {
            allow: false,
            reason: reason.to_owned(),
            position: self.position,
        };
        for s in self.relevant(query) {
            match &s.account {
                Some((Account::Disabled { .. }, _)) => return deny("account_disabled"),
                Some((Account::Purged, _)) => return deny("account_purged"),
                _ => {}
            }
            if s.device_compliant.as_ref().is_some_and(|(ok, _)| !ok) {
                return deny("device_not_compliant");
            }
            if let Some((before, _)) = s.revoked_before {
                // A token without a known issue time cannot be shown to be newer.
                if query.iat.is_none_or(|iat| iat < before) {
                    return deny("revoked");
                }
            }
            if let Some((_, stamp)) = &s.identifier {
                if query.iat.is_none_or(|iat| iat < stamp.at) {
                    return deny("identifier_changed");
                }
            }
        }
        Decision {
            allow: true,
            reason: "ok".into(),
            position: self.position,
        }
    }
}

/// What a sidecar knows about a token, as identifiers by role (`user`, `session`, `device`,
/// `tenant`, ...) and the token's `iat`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub parts: Vec<(String, Subject)>,
    pub iat: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allow: bool,
    pub reason: String,
    pub position: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::set::EventKind;
    use serde_json::json;

    fn subject(v: Value) -> Subject {
        Subject::parse(&v).expect("subject")
    }

    fn record(
        position: u64,
        kind: EventKind,
        payload: Value,
        sub: &Subject,
        owner: bool,
    ) -> Record {
        let at = 1000 + position;
        let mut claims = payload;
        claims["event_timestamp"] = json!(at);
        Record {
            position,
            received_at_ms: 0,
            source: if owner { "idp" } else { "scanner" }.into(),
            iss: "https://idp.test".into(),
            jti: format!("j{position}"),
            txn: None,
            iat: at as i64,
            event_type: kind.uri(),
            known: true,
            subject: sub.clone(),
            subject_key: sub.canonical_key(),
            event_timestamp: Some(at),
            authoritative: owner,
            claims,
            set: String::new(),
        }
    }

    #[test]
    fn ownership_defaults_to_the_issuer_and_needs_every_member() {
        let own = Ownership {
            issuers: vec!["https://idp.test".into()],
            email_domains: vec!["corp.test".into()],
            formats: vec![],
        };
        let mine = json!({"format": "iss_sub", "iss": "https://idp.test", "sub": "u"});
        let theirs = json!({"format": "iss_sub", "iss": "https://other.test", "sub": "u"});
        let email = json!({"format": "email", "email": "ana@CORP.test"});
        let device = json!({"format": "opaque", "id": "d"});
        assert!(own.owns(&subject(mine.clone())));
        assert!(!own.owns(&subject(theirs.clone())));
        assert!(own.owns(&subject(email.clone())));
        assert!(!own.owns(&subject(
            json!({"format": "email", "email": "ana@evil.corp.test"})
        )));
        assert!(own.owns(&subject(
            json!({"format": "account", "uri": "acct:ana@corp.test"})
        )));
        assert!(!own.owns(&subject(device.clone())), "opaque needs config");
        assert!(own.owns(&subject(
            json!({"format": "complex", "user": mine, "tenant": email})
        )));
        assert!(!own.owns(&subject(
            json!({"format": "complex", "user": mine, "device": device})
        )));
        assert!(!own.owns(&subject(
            json!({"format": "aliases", "identifiers": [mine, theirs]})
        )));
        let mdm = Ownership {
            formats: vec!["opaque".into()],
            ..Ownership::default()
        };
        assert!(mdm.owns(&subject(device)));
        assert!(!mdm.owns(&subject(mine)), "an empty issuer list owns none");
    }

    #[test]
    fn only_the_owner_restores_but_anyone_denies() {
        use EventKind as K;
        let u = subject(json!({"format": "iss_sub", "iss": "https://idp.test", "sub": "u"}));
        let q = Query {
            parts: vec![("user".into(), u.clone())],
            iat: Some(5000),
        };
        let mut s = State::default();
        assert!(s
            .apply_record(&record(1, K::AccountDisabled, json!({}), &u, true))
            .is_some());
        // A non-owner's account-enabled is newer, yet changes nothing.
        assert!(s
            .apply_record(&record(2, K::AccountEnabled, json!({}), &u, false))
            .is_none());
        assert_eq!(s.decide(&q).reason, "account_disabled");
        // The owner's restores.
        assert!(s
            .apply_record(&record(3, K::AccountEnabled, json!({}), &u, true))
            .is_some());
        assert!(s.decide(&q).allow);
        // A non-owner's deny takes effect.
        assert!(s
            .apply_record(&record(4, K::AccountDisabled, json!({}), &u, false))
            .is_some());
        assert_eq!(s.decide(&q).reason, "account_disabled");
        // Device compliance: anyone restricts, only the owner lifts it.
        let not = json!({"previous_status": "compliant", "current_status": "not-compliant"});
        let ok = json!({"previous_status": "not-compliant", "current_status": "compliant"});
        assert!(s
            .apply_record(&record(5, K::DeviceComplianceChange, not, &u, false))
            .is_some());
        assert!(s
            .apply_record(&record(6, K::DeviceComplianceChange, ok.clone(), &u, false))
            .is_none());
        assert!(s
            .apply_record(&record(7, K::DeviceComplianceChange, ok, &u, true))
            .is_some());
        // Risk: a non-owner may raise it but not lower it.
        let risk = |level: &str| json!({"principal": "USER", "current_level": level});
        assert!(s
            .apply_record(&record(8, K::RiskLevelChange, risk("HIGH"), &u, false))
            .is_some());
        assert!(s
            .apply_record(&record(9, K::RiskLevelChange, risk("LOW"), &u, false))
            .is_none());
        assert!(s
            .apply_record(&record(10, K::RiskLevelChange, risk("LOW"), &u, true))
            .is_some());
        // Revocations count from anyone.
        assert!(s
            .apply_record(&record(11, K::SessionRevoked, json!({}), &u, false))
            .is_some());
    }

    #[test]
    fn a_state_is_found_through_every_alias() {
        use EventKind as K;
        let mail = json!({"format": "email", "email": "ana@corp.test"});
        let id = json!({"format": "opaque", "id": "ana-1"});
        let aliases = subject(json!({"format": "aliases", "identifiers": [mail, id]}));
        let session = json!({"format": "opaque", "id": "s"});
        let complex = subject(json!({"format": "complex", "user": aliases.as_map(),
                                     "session": session}));
        let ask = |s: &State, parts: Vec<(&str, Value)>| {
            s.decide(&Query {
                parts: parts
                    .into_iter()
                    .map(|(r, v)| (r.to_owned(), subject(v)))
                    .collect(),
                iat: Some(1),
            })
            .reason
        };
        let mut s = State::default();
        s.apply_record(&record(1, K::SessionRevoked, json!({}), &complex, true));
        assert_eq!(
            ask(&s, vec![("user", id.clone()), ("session", session.clone())]),
            "revoked"
        );
        assert_eq!(
            ask(&s, vec![("user", mail.clone()), ("session", session)]),
            "revoked"
        );
        assert_eq!(
            ask(
                &s,
                vec![
                    ("user", mail.clone()),
                    ("session", json!({"format": "opaque", "id": "t"}))
                ]
            ),
            "ok"
        );
        let mut s = State::default();
        s.apply_record(&record(2, K::AccountDisabled, json!({}), &aliases, true));
        assert_eq!(ask(&s, vec![("user", id)]), "account_disabled");
        assert_eq!(ask(&s, vec![("user", mail)]), "account_disabled");
        let other = json!({"format": "email", "email": "bob@corp.test"});
        assert_eq!(ask(&s, vec![("user", other)]), "ok");
        // Restored by a later event naming the same aliases subject.
        s.apply_record(&record(3, K::AccountEnabled, json!({}), &aliases, true));
        assert_eq!(
            ask(
                &s,
                vec![("user", json!({"format": "opaque", "id": "ana-1"}))]
            ),
            "ok"
        );
    }
}
