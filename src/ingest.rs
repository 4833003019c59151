//! Stage 1: RFC 8935 push-in. `POST /ingest/{source}` checks the source, its credential, the
//! media type and the size, runs `verify` and `normalize`, appends to the log, and answers 202
//! only once the record is durable. Knows HTTP and sources; leaves JOSE and storage to others.

use std::collections::HashMap;
use std::sync::Arc;
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
use crate::normalize::{self, Options};
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
}

impl Ingest {
    pub fn new(sources: Vec<Source>, schemas: Schemas, log: Log, limits: IngestConfig) -> Ingest {
        Ingest {
            sources: Arc::new(sources.into_iter().map(|s| (s.id.clone(), s)).collect()),
            schemas: Arc::new(schemas),
            log,
            limits,
        }
    }

    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Fetches every source's JWKS once, so the first SET does not pay for the fetch.
    pub async fn warm_keys(self) {
        for source in self.sources.values() {
            source.keys.warm().await;
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
    pub keys: SourceKeys,
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
            keys,
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
        Ok(Appended::New(_)) => "accepted",
        Ok(Appended::Duplicate(_)) => "duplicate",
        Err(e) => e.outcome(),
    };
    telemetry::record_ingest(&source.id, event_type, outcome);
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
) -> Result<Appended, Error> {
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
    let limit = ingest.limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::TooLarge);
    }
    // With the declared length checked, a read error here is a body too slow to arrive (the
    // transport's deadline), a chunked body that outgrew the limit, or a client that went away
    // (who will not read the answer anyway).
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if crate::transport::is_body_timeout(&e) {
            Error::BodyTimeout
        } else {
            Error::TooLarge
        }
    })?;

    let started = Instant::now();
    let policy = Policy {
        issuer: &source.issuer,
        audiences: &source.audiences,
        algorithms: &source.algorithms,
        legacy: source.legacy,
        max_future_iat_secs: ingest.limits.max_future_iat_secs,
        max_iat_age_secs: ingest.limits.dedupe_retention_secs,
    };
    let verified = Unverified(&body)
        .parse(&policy)?
        .verify(&source.keys, &policy)
        .await?;
    let received_at_ms = crate::unix_now_ms();
    let mut record = normalize::normalize(
        &ingest.schemas,
        verified,
        &source.id,
        received_at_ms,
        Options {
            legacy: source.legacy,
            max_event_timestamp: Some(
                (received_at_ms / 1000).saturating_add(ingest.limits.max_future_iat_secs),
            ),
        },
    )?;
    record.authoritative = source.owns.owns(&record.subject);
    telemetry::record_verify(started.elapsed());
    let kind = EventKind::from_uri(&record.event_type);
    *event_type = kind.map(EventKind::label).unwrap_or("unknown");
    if !source.event_types.is_empty() && !kind.is_some_and(|k| source.event_types.contains(&k)) {
        return Err(Error::AccessDenied);
    }

    let key = dedupe_key(&record.iss, &record.jti);
    // Remembered until the SET's `iat` leaves the window `verify` accepts, so a replay is either
    // recognized here or refused there; an `iat` a little ahead (clock skew) extends it.
    let iat = u64::try_from(record.iat).unwrap_or(0);
    let expires_at = (received_at_ms / 1000).max(iat) + ingest.limits.dedupe_retention_secs;
    // Brokers known to be out of reach: say so now rather than after the delivery timeout.
    ingest.log.readiness().map_err(Error::Unavailable)?;
    let started = Instant::now();
    // The journal hands the decoded record to the log's followers once it is durable.
    let appended = ingest.log.append_record(record, key, expires_at).await?;
    telemetry::record_append(started.elapsed());
    Ok(appended)
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
