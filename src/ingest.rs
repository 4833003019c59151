//! Stage 1: RFC 8935 push-in. `POST /ingest/{source}` checks the source, its credential, the
//! media type and the size, runs `verify` and `normalize`, appends to the log, and answers 202
//! only once the record is durable. Knows HTTP and sources; leaves JOSE and storage to others.
//! [`Ingest::check`] and [`Ingest::append`] are the one verify → normalize → append path: the
//! upstream poll client (`upstream::poll`) runs the SETs it fetches through them too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

use crate::config::{IngestConfig, Secret, SourceConfig};
use crate::error::Error;
use crate::keys::SourceKeys;
use crate::log::{Appended, Log};
use crate::normalize::{self, Options, Record};
use crate::schema::Schemas;
use crate::set::{EventKind, SET_MEDIA_TYPE};
use crate::telemetry;
use crate::verify::{Alg, Policy, Unverified};

/// What ingest works with: the configured sources, the schemas records are checked against,
/// the log they are appended to, and the limits on what is accepted.
#[derive(Debug, Clone)]
pub struct Ingest {
    sources: Arc<HashMap<String, Source>>,
    schemas: Arc<Schemas>,
    log: Log,
    limits: IngestConfig,
    control: Option<Arc<dyn Control>>,
}

/// Receives what ingest sees of the sources whose stream the hub manages upstream: their SSF
/// control events (verification, stream-updated), which are link state rather than events
/// about subjects and so are not appended, and the outcome of every SET (for their status).
pub trait Control: Send + Sync + std::fmt::Debug {
    /// Whether the control events of `source` are handled here.
    fn handles(&self, source: &str) -> bool;
    /// A verified, normalized control SET of `source`; an error refuses it (`invalid_state`).
    fn control(&self, source: &str, record: &Record) -> Result<(), Error>;
    /// The outcome label of one SET from any configured `source` (`accepted`, `duplicate`,
    /// `control`, an error code).
    fn observe(&self, source: &str, event_type: &str, outcome: &str);
}

/// A SET that passed every check, ready to append.
#[derive(Debug)]
pub struct Checked {
    pub record: Record,
    key: Vec<u8>,
    expires_at: u64,
}

impl Ingest {
    pub fn new(sources: Vec<Source>, schemas: Schemas, log: Log, limits: IngestConfig) -> Ingest {
        Ingest {
            sources: Arc::new(sources.into_iter().map(|s| (s.id.clone(), s)).collect()),
            schemas: Arc::new(schemas),
            log,
            limits,
            control: None,
        }
    }

    /// Hands the control events of managed upstream sources to `control`.
    pub fn with_control(mut self, control: Arc<dyn Control>) -> Ingest {
        self.control = Some(control);
        self
    }

    pub fn source(&self, id: &str) -> Option<&Source> {
        self.sources.get(id)
    }

    /// Reports an outcome to the control hook (the per-source status `GET /admin/sources`
    /// shows).
    pub fn observe(&self, source: &str, event_type: &str, outcome: &str) {
        if let Some(c) = &self.control {
            c.observe(source, event_type, outcome);
        }
    }

    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Fetches every source's JWKS once, so the first SET does not pay for the fetch.
    pub async fn warm_keys(self) {
        for source in self.sources.values() {
            source.keys.get().warm().await;
        }
    }

    pub fn routes(self) -> Router {
        Router::new()
            .route("/ingest/{source_id}", post(ingest_set))
            .with_state(self)
    }
}

/// A configured upstream transmitter, ready to verify its SETs.
#[derive(Debug)]
pub struct Source {
    pub id: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    pub authorization: Option<Secret>,
    pub legacy: bool,
    /// Event types this source may send; empty means any.
    pub event_types: Vec<EventKind>,
    /// Subjects whose access this source may restore (`sources[].owns`).
    pub owns: crate::state::Ownership,
    pub keys: KeySlot,
}

/// A source's keys, replaceable while the hub runs: an upstream transmitter's `jwks_uri` is
/// known only once its metadata has been discovered.
#[derive(Debug, Clone)]
pub struct KeySlot(Arc<RwLock<SourceKeys>>);

impl KeySlot {
    pub fn new(keys: SourceKeys) -> KeySlot {
        KeySlot(Arc::new(RwLock::new(keys)))
    }

    pub fn get(&self) -> SourceKeys {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, keys: SourceKeys) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }
}

impl Source {
    /// Builds a source from validated configuration (a JWKS file is read here).
    pub fn from_config(
        c: &SourceConfig,
        jwks: &crate::config::JwksConfig,
    ) -> Result<Source, String> {
        let algorithms: Vec<Alg> = c.algorithms.iter().filter_map(|a| Alg::parse(a)).collect();
        let keys = match (&c.jwks_uri, &c.jwks_file) {
            (Some(uri), _) => SourceKeys::from_uri(&c.id, uri, algorithms.clone(), jwks.clone()),
            (None, Some(path)) => {
                SourceKeys::from_file(&c.id, path, algorithms.clone(), jwks.clone())
                    .map_err(|e| format!("source {:?}: jwks_file {}: {e}", c.id, path.display()))?
            }
            (None, None) => return Err(format!("source {:?} has no keys", c.id)),
        };
        Ok(Source {
            id: c.id.clone(),
            issuer: c.issuer.clone(),
            audiences: c.audiences.clone(),
            algorithms,
            authorization: c.authorization.clone(),
            legacy: c.legacy,
            event_types: c
                .event_types
                .iter()
                .filter_map(|t| EventKind::parse_name(t))
                .collect(),
            owns: c.ownership(),
            keys: KeySlot::new(keys),
        })
    }

    fn check_credential(&self, headers: &HeaderMap) -> Result<(), Error> {
        let Some(expected) = &self.authorization else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .ok_or(Error::MissingCredential)?;
        if expected.matches(presented.as_bytes()) {
            Ok(())
        } else {
            Err(Error::WrongCredential)
        }
    }
}

/// `POST /ingest/{source_id}`.
#[tracing::instrument(name = "ingest", skip_all, fields(source = %source_id))]
async fn ingest_set(
    State(ingest): State<Ingest>,
    Path(source_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Error> {
    let Some(source) = ingest.sources.get(&source_id) else {
        // Never label metrics with an id the client chose.
        telemetry::record_ingest("unknown", "none", Error::UnknownSource.outcome());
        return Err(Error::UnknownSource);
    };
    let mut event_type = "none";
    let result = accept(&ingest, source, &headers, body, &mut event_type).await;
    let outcome = match &result {
        Ok(Some(Appended::New(_))) => "accepted",
        Ok(Some(Appended::Duplicate(_))) => "duplicate",
        Ok(None) => "control",
        Err(e) => e.outcome(),
    };
    telemetry::record_ingest(&source.id, event_type, outcome);
    ingest.observe(&source.id, event_type, outcome);
    match result {
        Ok(appended) => {
            tracing::debug!(?appended, event_type, "SET accepted");
            Ok(StatusCode::ACCEPTED)
        }
        Err(e) => {
            tracing::info!(outcome, reason = %e, "SET refused");
            Err(e)
        }
    }
}

async fn accept(
    ingest: &Ingest,
    source: &Source,
    headers: &HeaderMap,
    body: Body,
    event_type: &mut &'static str,
) -> Result<Option<Appended>, Error> {
    source.check_credential(headers)?;
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if !media_type.eq_ignore_ascii_case(SET_MEDIA_TYPE) {
        return Err(Error::UnsupportedMediaType);
    }
    let body = crate::http::read_body(headers, body, ingest.limits.max_body_bytes).await?;

    match ingest.check(source, &body, event_type).await? {
        Some(checked) => ingest.append(checked).await.map(Some),
        // A control event of a managed upstream: taken, not appended.
        None => Ok(None),
    }
}

impl Ingest {
    /// Verifies and normalizes one SET of `source` and applies the source's rules. `None` is a
    /// control event the [`Control`] hook took (a managed upstream's verification or
    /// stream-updated). `event_type` is set to the event's label as soon as it is known.
    pub async fn check(
        &self,
        source: &Source,
        body: &[u8],
        event_type: &mut &'static str,
    ) -> Result<Option<Checked>, Error> {
        let started = Instant::now();
        let policy = Policy {
            issuer: &source.issuer,
            audiences: &source.audiences,
            algorithms: &source.algorithms,
            legacy: source.legacy,
            max_future_iat_secs: self.limits.max_future_iat_secs,
            max_iat_age_secs: self.limits.dedupe_retention_secs,
        };
        let keys = source.keys.get();
        let verified = Unverified(body)
            .parse(&policy)?
            .verify(&keys, &policy)
            .await?;
        let received_at_ms = crate::unix_now_ms();
        let mut record = normalize::normalize(
            &self.schemas,
            verified,
            &source.id,
            received_at_ms,
            Options {
                legacy: source.legacy,
                max_event_timestamp: Some(
                    (received_at_ms / 1000).saturating_add(self.limits.max_future_iat_secs),
                ),
            },
        )?;
        record.authoritative = source.owns.owns(&record.subject);
        telemetry::record_verify(started.elapsed());
        let kind = EventKind::from_uri(&record.event_type);
        *event_type = kind.map(EventKind::label).unwrap_or("unknown");
        if let Some(control) = self.control.as_ref().filter(|c| c.handles(&source.id)) {
            if matches!(
                kind,
                Some(EventKind::Verification | EventKind::StreamUpdated)
            ) {
                control.control(&source.id, &record)?;
                return Ok(None);
            }
        }
        if !source.event_types.is_empty() && !kind.is_some_and(|k| source.event_types.contains(&k))
        {
            return Err(Error::AccessDenied);
        }
        let key = dedupe_key(&record.iss, &record.jti);
        // Remembered until the SET's `iat` leaves the window `verify` accepts, so a replay is
        // either recognized here or refused there; an `iat` a little ahead (clock skew) extends it.
        let iat = u64::try_from(record.iat).unwrap_or(0);
        let expires_at = (received_at_ms / 1000).max(iat) + self.limits.dedupe_retention_secs;
        Ok(Some(Checked {
            record,
            key,
            expires_at,
        }))
    }

    /// Appends a checked SET; resolves once it is durable (or known as a repeat).
    pub async fn append(&self, checked: Checked) -> Result<Appended, Error> {
        // Brokers known to be out of reach: say so now rather than after the delivery timeout.
        self.log.readiness().map_err(Error::Unavailable)?;
        let started = Instant::now();
        // The journal hands the decoded record to the log's followers once it is durable.
        let appended = self
            .log
            .append_record(checked.record, checked.key, checked.expires_at)
            .await?;
        telemetry::record_append(started.elapsed());
        Ok(appended)
    }
}

/// `(iss, jti)` identifies a SET (RFC 8417 §2.2; digest §11.1). `iss` has been matched to a
/// configured issuer, which config validation keeps free of control characters, so the first
/// NUL ends it and the pair encodes unambiguously.
pub fn dedupe_key(iss: &str, jti: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(iss.len() + jti.len() + 1);
    key.extend_from_slice(iss.as_bytes());
    key.push(0);
    key.extend_from_slice(jti.as_bytes());
    key
}
