//! Connectors: vendor webhooks (scanners, identity providers' event hooks, device management)
//! received on `POST /connectors/{id}`, authenticated the vendor's way on the raw body
//! ([`auth`]), mapped by a jq filter ([`mapping`]) to CAEP/RISC events with RFC 9493 subjects,
//! and appended as events the hub itself issues (`iss` = the hub, `source` = the connector, the
//! raw webhook kept in `set` for audit). A vendor whose authentication scheme the hub knows is
//! a mapping file, not code. Status per connector on `GET /admin/connectors`.

pub mod auth;
pub mod mapping;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use mapping::Filter;
pub use mapping::MappingSpec;

use crate::config::{Config, ConnectorConfig, ConnectorLimits, Secret};
use crate::error::{Error, WebhookError as ConnectorError};
use crate::http::{Admin, AdminToken};
use crate::log::{Appended, Log};
use crate::normalize::{self, Options, Record};
use crate::schema::Schemas;
use crate::set::EventKind;
use crate::state::Ownership;
use crate::verify::{Alg, Verified};

/// One configured connector, its filter compiled.
#[derive(Debug)]
struct Connector {
    id: String,
    /// The built-in mapping's name, `file` or `inline`.
    kind: String,
    spec: MappingSpec,
    filter: Arc<Filter>,
    secret: Secret,
    options: Value,
    owns: Ownership,
    max_body_bytes: usize,
    status: Mutex<Status>,
}

/// What `GET /admin/connectors` shows of a connector (this replica's view since it started).
#[derive(Debug, Default)]
struct Status {
    webhooks: u64,
    last_event_ms: Option<u64>,
    events_by_type: BTreeMap<&'static str, u64>,
    duplicates: u64,
    errors_by_kind: BTreeMap<&'static str, u64>,
}

/// The connectors and what they append with.
#[derive(Debug, Clone)]
pub struct Connectors {
    by_id: Arc<HashMap<String, Arc<Connector>>>,
    order: Arc<Vec<String>>,
    schemas: Arc<Schemas>,
    log: Log,
    issuer: String,
    limits: ConnectorLimits,
    max_future_secs: u64,
    admin: AdminToken,
}

impl FromRef<Connectors> for AdminToken {
    fn from_ref(c: &Connectors) -> AdminToken {
        c.admin.clone()
    }
}

impl Connectors {
    /// Loads every mapping and compiles its filter; an error names the connector's key.
    pub fn from_config(config: &Config, log: Log, admin: AdminToken) -> Result<Connectors, String> {
        let mut by_id = HashMap::new();
        let mut order = Vec::new();
        for (i, c) in config.connectors.iter().enumerate() {
            let connector = Connector::from_config(i, c, &config.connector_limits)?;
            order.push(c.id.clone());
            by_id.insert(c.id.clone(), Arc::new(connector));
        }
        Ok(Connectors {
            by_id: Arc::new(by_id),
            order: Arc::new(order),
            schemas: Arc::new(Schemas::compile()?),
            log,
            issuer: config.issuer.clone(),
            limits: config.connector_limits.clone(),
            max_future_secs: config.ingest.max_future_iat_secs,
            admin,
        })
    }

    pub fn routes(self) -> Router {
        Router::new()
            .route("/connectors/{connector_id}", get(handshake).post(receive))
            .route("/admin/connectors", get(status))
            .with_state(self)
    }

    fn get(&self, id: &str) -> Result<Arc<Connector>, Error> {
        self.by_id.get(id).cloned().ok_or_else(|| {
            // Never label metrics with an id the client chose.
            record_webhook("unknown", "unknown_connector");
            Error::Webhook(ConnectorError::Unknown)
        })
    }
}

/// The key that names where a connector's mapping comes from.
fn key_of(c: &ConnectorConfig) -> &'static str {
    if c.kind.is_some() {
        "kind"
    } else {
        "mapping_file"
    }
}

impl Connector {
    fn from_config(
        i: usize,
        c: &ConnectorConfig,
        limits: &ConnectorLimits,
    ) -> Result<Connector, String> {
        let key = |k: &str| format!("config key `connectors[{i}].{k}`");
        let (kind, spec) = match (&c.kind, &c.mapping_file, &c.mapping) {
            (Some(kind), None, None) => {
                let spec = MappingSpec::builtin(kind)
                    .ok_or_else(|| format!("{}: no built-in mapping {kind:?}", key("kind")))?
                    .map_err(|e| format!("{}: {e}", key("kind")))?;
                (kind.clone(), spec)
            }
            (None, Some(path), None) => {
                let spec = MappingSpec::load(path)
                    .map_err(|e| format!("{}: {}: {e}", key("mapping_file"), path.display()))?;
                ("file".to_owned(), spec)
            }
            (None, None, Some(spec)) => {
                let spec = serde_json::from_value::<MappingSpec>(spec.clone())
                    .map_err(|e| format!("{}: {e}", key("mapping")))?;
                ("inline".to_owned(), spec)
            }
            _ => {
                return Err(format!(
                    "{}: set exactly one of kind, mapping_file and mapping",
                    key("kind")
                ))
            }
        };
        let what = if c.mapping.is_some() {
            "mapping"
        } else {
            key_of(c)
        };
        for name in spec.header_names() {
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!(
                    "{}: {name:?} is not a valid HTTP header name",
                    key(what)
                ));
            }
        }
        let what = if c.mapping.is_some() {
            "mapping.filter"
        } else {
            key_of(c)
        };
        let filter = Filter::compile(&spec.filter).map_err(|e| format!("{}: {e}", key(what)))?;
        Ok(Connector {
            id: c.id.clone(),
            kind,
            spec,
            filter: Arc::new(filter),
            secret: c.secret.clone(),
            options: Value::Object(c.options.clone()),
            owns: c.ownership(),
            max_body_bytes: c.max_body_bytes.unwrap_or(limits.max_body_bytes),
            status: Mutex::new(Status::default()),
        })
    }

    fn note(&self, result: &Result<Outcome, Error>) {
        let Ok(mut s) = self.status.lock() else {
            return;
        };
        s.webhooks += 1;
        match result {
            Ok(o) => {
                for t in &o.types {
                    *s.events_by_type.entry(t).or_default() += 1;
                }
                if !o.types.is_empty() {
                    s.last_event_ms = Some(crate::unix_now_ms());
                }
                s.duplicates += o.duplicates;
            }
            Err(e) => *s.errors_by_kind.entry(error_kind(e)).or_default() += 1,
        }
    }
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Webhook(c) => c.kind(),
        e => e.outcome(),
    }
}

fn record_webhook(connector: &str, outcome: &'static str) {
    metrics::counter!(
        "ssf_hub_connector_webhooks_total",
        "connector" => connector.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

fn record_event(connector: &str, event_type: &'static str) {
    metrics::counter!(
        "ssf_hub_connector_events_total",
        "connector" => connector.to_owned(),
        "event_type" => event_type
    )
    .increment(1);
}

/// What one accepted webhook did.
#[derive(Debug, Default)]
struct Outcome {
    /// Event types newly appended.
    types: Vec<&'static str>,
    duplicates: u64,
}

/// `POST /connectors/{connector_id}`: 202 with `{"appended", "duplicates"}` when something new
/// was appended or the webhook maps to no event; 200 when every event was appended before (a
/// redelivery, answered so the vendor stops retrying).
#[tracing::instrument(name = "connector", skip_all, fields(connector = %connector_id))]
async fn receive(
    State(hub): State<Connectors>,
    Path(connector_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let connector = hub.get(&connector_id)?;
    let result = accept(&hub, &connector, &headers, body).await;
    connector.note(&result);
    match result {
        Ok(o) => {
            let outcome = if o.types.is_empty() && o.duplicates > 0 {
                "duplicate"
            } else {
                "accepted"
            };
            record_webhook(&connector.id, outcome);
            for t in &o.types {
                record_event(&connector.id, t);
            }
            if !o.types.is_empty() {
                metrics::gauge!(
                    "ssf_hub_connector_last_event_timestamp_seconds",
                    "connector" => connector.id.clone()
                )
                .set(crate::unix_now() as f64);
            }
            let status = if outcome == "duplicate" {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            tracing::debug!(
                appended = o.types.len(),
                duplicates = o.duplicates,
                "webhook accepted"
            );
            Ok((
                status,
                Json(json!({"appended": o.types.len(), "duplicates": o.duplicates})),
            )
                .into_response())
        }
        Err(e) => {
            let kind = error_kind(&e);
            record_webhook(&connector.id, kind);
            tracing::info!(outcome = kind, reason = %e, "webhook refused");
            Err(e)
        }
    }
}

async fn accept(
    hub: &Connectors,
    connector: &Connector,
    headers: &HeaderMap,
    body: Body,
) -> Result<Outcome, Error> {
    // Authenticate first: what the headers alone can prove, before the body is read.
    auth::check_headers(&connector.spec.auth, &connector.secret, headers)?;
    let body = crate::http::read_body(headers, body, connector.max_body_bytes).await?;
    let now_ms = crate::unix_now_ms();
    let now = now_ms / 1000;
    auth::check_body(&connector.spec.auth, &connector.secret, headers, &body, now)?;

    // Authenticated: now the payload may be looked at.
    let malformed = |m: &str| Error::Webhook(ConnectorError::Malformed(m.to_owned()));
    let payload: Value =
        serde_json::from_slice(&body).map_err(|_| malformed("the body is not JSON"))?;
    let raw = String::from_utf8(body.to_vec()).map_err(|_| malformed("the body is not UTF-8"))?;
    let delivery = match &connector.spec.delivery_id_header {
        None => None,
        Some(name) => Some(
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 200)
                .map(|v| crate::plain(v, 200))
                .ok_or_else(|| malformed("the delivery id header is missing or too long"))?,
        ),
    };
    let input = json!({
        "body": payload,
        "headers": visible_headers(headers, &connector.spec.auth),
        "options": connector.options,
        "connector": connector.id,
    });
    let filter = connector.filter.clone();
    let max = hub.limits.max_events_per_webhook;
    let run = tokio::task::spawn_blocking(move || filter.run(&input, max));
    let outputs = tokio::time::timeout(Duration::from_millis(hub.limits.filter_timeout_ms), run)
        .await
        .map_err(|_| {
            ConnectorError::Mapping(
                "the filter did not finish within connector_limits.filter_timeout_ms".into(),
            )
        })?
        .map_err(|e| Error::Internal(format!("connector filter task: {e}")))?
        .map_err(ConnectorError::Mapping)?;

    // Every event is built and checked before the first is appended: a webhook is refused
    // whole or taken whole.
    let digest = auth::to_hex(&openssl::sha::sha256(&body)[..16]);
    let webhook = Webhook {
        delivery: delivery.as_deref(),
        digest: &digest,
        raw: &raw,
        now_ms,
    };
    let mut records = Vec::with_capacity(outputs.len());
    for (i, out) in outputs.into_iter().enumerate() {
        records.push(hub.record(connector, out, i, &webhook)?);
    }
    let mut outcome = Outcome::default();
    if records.is_empty() {
        return Ok(outcome);
    }
    hub.log.readiness().map_err(Error::Unavailable)?;
    let expires_at = now + hub.limits.replay_window_secs;
    for (record, key, label) in records {
        match hub.log.append_record(record, key, expires_at).await? {
            Appended::New(_) => outcome.types.push(label),
            Appended::Duplicate(_) => outcome.duplicates += 1,
        }
    }
    Ok(outcome)
}

/// Headers the filter may read: all but credentials and the signature itself.
fn visible_headers(headers: &HeaderMap, auth: &mapping::AuthSpec) -> Value {
    let secret_header = match auth {
        mapping::AuthSpec::HmacSha256 { header, .. }
        | mapping::AuthSpec::SharedSecret { header, .. } => header.to_ascii_lowercase(),
    };
    let mut map = Map::new();
    for (name, value) in headers {
        let name = name.as_str();
        if matches!(name, "authorization" | "cookie" | "proxy-authorization")
            || name == secret_header
        {
            continue;
        }
        if let Ok(v) = value.to_str() {
            map.insert(name.to_owned(), Value::from(v));
        }
    }
    Value::Object(map)
}

/// One authenticated webhook, as its events are built.
struct Webhook<'a> {
    /// The vendor's delivery id header, if the mapping names one: kept as the events' `txn`.
    delivery: Option<&'a str>,
    /// SHA-256 of the raw body (128 bits, hex).
    digest: &'a str,
    raw: &'a str,
    now_ms: u64,
}

impl Connectors {
    /// One filter output → a normalized record, its dedupe key and its event-type label.
    ///
    /// The record's `jti`, and with it the dedupe key, is `<connector>:<event id>`, the event id
    /// being the one the filter took from the body (Okta's `uuid`), else the body's digest and
    /// the event's index. Never the delivery-id header alone: vendors sign the body, not that
    /// header (GitHub), so a captured delivery replayed under a new id would count as new. A
    /// redelivery carries the same body, hence the same key.
    fn record(
        &self,
        connector: &Connector,
        out: Value,
        index: usize,
        webhook: &Webhook<'_>,
    ) -> Result<(Record, Vec<u8>, &'static str), Error> {
        let (raw, now_ms) = (webhook.raw, webhook.now_ms);
        let mapping = |m: String| Error::Webhook(ConnectorError::Mapping(m));
        let Value::Object(mut out) = out else {
            return Err(mapping("the filter must emit event objects".into()));
        };
        let kind = out
            .get("type")
            .and_then(Value::as_str)
            .and_then(EventKind::parse_name)
            .filter(|k| k.family() != "ssf")
            .ok_or_else(|| {
                mapping(format!(
                    "event {index}: `type` is not a CAEP or RISC event type"
                ))
            })?;
        let subject = out
            .remove("subject")
            .ok_or_else(|| mapping(format!("event {index}: no `subject`")))?;
        let id = match out.get("id") {
            None => format!("{}.{index}", webhook.digest),
            // Escaped, not filtered, so that two different vendor ids never meet in one key.
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => {
                s.replace('%', "%25").replace(':', "%3A")
            }
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(mapping(format!(
                    "event {index}: `id` must be a non-empty string (at most 200 bytes) or a \
                     number: the vendor's id of the event, which makes a redelivery a duplicate"
                )))
            }
        };
        let jti = format!("{}:{id}", connector.id);
        let mut claims = match out.remove("claims") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(mapping(format!(
                    "event {index}: `claims` must be an object"
                )))
            }
        };
        let now = now_ms / 1000;
        if kind.has_common_claims() && !claims.contains_key("event_timestamp") {
            let at = match out.get("event_timestamp") {
                None | Some(Value::Null) => Value::from(now),
                Some(v) => v.clone(),
            };
            claims.insert("event_timestamp".into(), at);
        }
        let mut set = Map::new();
        set.insert("events".into(), json!({ kind.uri(): claims }));
        set.insert("sub_id".into(), subject);
        match out.remove("txn").filter(|t| !t.is_null()) {
            Some(txn) => {
                set.insert("txn".into(), txn);
            }
            None => {
                if let Some(d) = webhook.delivery {
                    set.insert("txn".into(), Value::from(d));
                }
            }
        }
        let verified = Verified {
            claims: set,
            // Not a JWS: the webhook was authenticated by its vendor's scheme. The field is
            // unused past verification.
            alg: Alg::ES256,
            kid: None,
            iss: self.issuer.clone(),
            jti,
            iat: now as i64,
            compact: raw.to_owned(),
        };
        let mut record = normalize::normalize(
            &self.schemas,
            verified,
            &connector.id,
            now_ms,
            Options {
                legacy: false,
                max_event_timestamp: Some(now.saturating_add(self.max_future_secs)),
            },
        )
        .map_err(|e| mapping(format!("event {index}: {e}")))?;
        record.authoritative = connector.owns.owns(&record.subject);
        let key = crate::ingest::dedupe_key(&record.iss, &record.jti);
        Ok((record, key, kind.label()))
    }
}

/// `GET /connectors/{connector_id}`: the vendor's one-time verification handshake (Okta),
/// authenticated like a webhook before the challenge is echoed.
async fn handshake(
    State(hub): State<Connectors>,
    Path(connector_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    let connector = hub.get(&connector_id)?;
    let result = (|| {
        let Some(v) = &connector.spec.verification else {
            return Err(Error::Webhook(ConnectorError::NoHandshake));
        };
        auth::check_headers(&connector.spec.auth, &connector.secret, &headers)?;
        auth::check_body(
            &connector.spec.auth,
            &connector.secret,
            &headers,
            b"",
            crate::unix_now(),
        )?;
        let challenge = headers
            .get(&v.challenge_header)
            .and_then(|c| c.to_str().ok())
            .filter(|c| !c.is_empty() && c.len() <= 1024)
            .ok_or_else(|| {
                ConnectorError::Malformed("the verification challenge header is missing".into())
            })?;
        let mut answer = Map::new();
        answer.insert(v.response_member.clone(), Value::from(challenge));
        Ok(Json(Value::Object(answer)))
    })();
    match &result {
        Ok(_) => {
            record_webhook(&connector.id, "verified");
            tracing::info!(connector = %connector.id, "verification handshake answered");
        }
        Err(e) => {
            let kind = error_kind(e);
            record_webhook(&connector.id, kind);
            if let Ok(mut s) = connector.status.lock() {
                *s.errors_by_kind.entry(kind).or_default() += 1;
            }
        }
    }
    result
}

/// `GET /admin/connectors`: each connector's kind and counters, in configuration order.
async fn status(State(hub): State<Connectors>, _: Admin) -> Json<Value> {
    let connectors: Vec<Value> = hub
        .order
        .iter()
        .filter_map(|id| hub.by_id.get(id))
        .map(|c| {
            let s = c.status.lock().map(|s| {
                json!({
                    "webhooks": s.webhooks,
                    "last_event_at": s.last_event_ms.map(|ms| ms / 1000),
                    "events_by_type": s.events_by_type,
                    "duplicates": s.duplicates,
                    "errors_by_kind": s.errors_by_kind,
                })
            });
            let mut v = json!({
                "id": c.id,
                "kind": c.kind,
                "description": c.spec.description,
            });
            if let (Ok(Value::Object(s)), Some(obj)) = (s, v.as_object_mut()) {
                obj.extend(s);
            }
            v
        })
        .collect();
    Json(json!({ "connectors": connectors }))
}
