//! The hub as an SSF transmitter, over HTTP: discovery metadata (SSF §7), the stream management
//! API (SSF §8: configuration, status, subjects, verification), the RFC 8936 poll endpoint, and
//! the admin API that registers receivers. Authorizes every call to one receiver's own streams;
//! leaves storage to `streams`, cursors and SETs to `delivery` and `outbound`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::DeliveryConfig;
use crate::delivery::Delivery as Deliverer;
use crate::error::Error;
use crate::guard::Guard;
use crate::http::{self, Admin, AdminToken};
use crate::log::Log;
use crate::outbound::Minter;
use crate::set::events::StreamStatus;
use crate::set::{EventKind, Subject, DELIVERY_POLL, DELIVERY_PUSH};
use crate::streams::{
    events_delivered, events_supported, Cursor, Cursors, Delivery, Receiver, Registry, Stream,
};

/// What the transmitter's HTTP API works with.
#[derive(Debug, Clone)]
pub struct Manage {
    pub registry: Registry,
    pub cursors: Cursors,
    /// New streams start at its head; status changes move cursors relative to it.
    pub log: Log,
    pub minter: Minter,
    pub config: Arc<DeliveryConfig>,
    pub guard: Arc<Guard>,
    /// Serves RFC 8936 polls.
    pub delivery: Deliverer,
    pub admin: AdminToken,
    /// Whether OAuth access tokens (and DPoP proofs, RFC 9449) are accepted, so that discovery
    /// can say so.
    pub dpop: bool,
}

impl FromRef<Manage> for AdminToken {
    fn from_ref(m: &Manage) -> AdminToken {
        m.admin.clone()
    }
}

impl FromRef<Manage> for Registry {
    fn from_ref(m: &Manage) -> Registry {
        m.registry.clone()
    }
}

/// Discovery (at the RFC 8615 location with the issuer's path appended, SSF §7.2.1), the JWKS,
/// the stream management and poll endpoints below the issuer's path, and the admin API.
pub fn routes(m: Manage) -> Router {
    let issuer_path = reqwest::Url::parse(m.minter.issuer())
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let transmitter = if issuer_path.is_empty() {
        transmitter_routes()
    } else {
        Router::new().nest(&issuer_path, transmitter_routes())
    };
    Router::new()
        .route(
            &format!("/.well-known/ssf-configuration{issuer_path}"),
            get(get_configuration),
        )
        .route(&format!("{issuer_path}/jwks.json"), get(get_jwks))
        .merge(transmitter)
        .merge(admin_routes())
        .with_state(m)
}

/// Routes below the issuer's path (empty for an issuer without a path).
fn transmitter_routes() -> Router<Manage> {
    Router::new()
        .route(
            "/ssf/streams",
            get(read_streams)
                .post(create_stream)
                .patch(update_stream)
                .put(replace_stream)
                .delete(delete_stream),
        )
        .route("/ssf/status", get(read_status).post(update_status))
        .route("/ssf/subjects:add", post(add_subject))
        .route("/ssf/subjects:remove", post(remove_subject))
        .route("/ssf/verify", post(verify_stream))
        .route("/ssf/poll/{stream_id}", post(poll_stream))
        // Management and poll bodies are small; nothing needs axum's 2 MB default.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// Largest management, poll or admin request body.
const MAX_BODY: usize = 256 * 1024;

/// Streams one receiver may have.
pub const MAX_STREAMS_PER_RECEIVER: usize = 100;

/// Admin routes (admin bearer token).
fn admin_routes() -> Router<Manage> {
    Router::new()
        .route(
            "/admin/receivers",
            get(list_receivers).post(create_receiver),
        )
        .route(
            "/admin/receivers/{id}",
            axum::routing::delete(revoke_receiver).patch(regrant_receiver),
        )
        .route("/admin/keys/rotate", post(rotate_keys))
        .route("/admin/streams", get(list_all_streams))
        .route("/admin/streams/{id}/dead-letters", get(list_dead_letters))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// `issuer` without a trailing slash, the base of every advertised URL.
fn base(m: &Manage) -> &str {
    m.minter.issuer().trim_end_matches('/')
}

/// `GET /.well-known/ssf-configuration[/{issuer path}]` (SSF §7.1).
async fn get_configuration(State(m): State<Manage>) -> Response {
    let b = base(&m);
    // Bearer tokens (RFC 6749/6750) always; sender-constrained tokens when an authorization
    // server is configured.
    let mut schemes = vec![json!({"spec_urn": "urn:ietf:rfc:6749"})];
    if m.dpop {
        schemes.push(json!({"spec_urn": "urn:ietf:rfc:9449"}));
    }
    let body = json!({
        "spec_version": "1_0",
        "issuer": m.minter.issuer(),
        "jwks_uri": format!("{b}/jwks.json"),
        "delivery_methods_supported": [DELIVERY_PUSH, DELIVERY_POLL],
        "configuration_endpoint": format!("{b}/ssf/streams"),
        "status_endpoint": format!("{b}/ssf/status"),
        "add_subject_endpoint": format!("{b}/ssf/subjects:add"),
        "remove_subject_endpoint": format!("{b}/ssf/subjects:remove"),
        "verification_endpoint": format!("{b}/ssf/verify"),
        "authorization_schemes": schemes,
        "default_subjects": m.config.default_subjects,
    });
    Json(body).into_response()
}

/// `GET /jwks.json`: the hub's public signing keys.
async fn get_jwks(State(m): State<Manage>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        m.minter.keys().jwks().to_string(),
    )
}

/// The receiver's stream `stream_id`. Every receiver call naming a stream passes here, which
/// makes it the receiver activity that restarts the stream's `inactivity_timeout`.
fn owned(m: &Manage, receiver: &Receiver, stream_id: &str) -> Result<Stream, Error> {
    let stream = m
        .registry
        .owned_stream(&receiver.id, stream_id)?
        .ok_or(Error::NotFound)?;
    m.registry.touch(stream_id);
    Ok(stream)
}

/// Management responses must not be cached (SSF §8 examples).
fn no_store(status: StatusCode, body: Value) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::Invalid("the body must be a JSON object".into())),
    }
}

fn stream_id_of(body: &Map<String, Value>) -> Result<String, Error> {
    match body.get("stream_id") {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(Error::Invalid("`stream_id` (a string) is required".into())),
    }
}

/// The stream configuration as SSF §8.1.1 shows it to its receiver.
fn config_out(m: &Manage, s: &Stream) -> Value {
    let mut delivery = json!({ "method": s.delivery.method });
    if let Some(url) = &s.delivery.endpoint_url {
        delivery["endpoint_url"] = json!(url);
    }
    if let Some(auth) = &s.delivery.authorization_header {
        delivery["authorization_header"] = json!(auth);
    }
    let mut out = json!({
        "stream_id": s.stream_id,
        "iss": m.minter.issuer(),
        "aud": s.aud,
        "events_supported": events_supported(),
        "events_requested": s.events_requested,
        "events_delivered": s.events_delivered,
        "delivery": delivery,
        "min_verification_interval": m.config.min_verification_interval_secs,
        "latency_budget_ms": s.latency_budget_ms.unwrap_or(m.config.latency_budget_ms),
        "signing_alg": s.signing_alg.as_deref().unwrap_or(m.minter.default_alg().name()),
    });
    if !s.delivery.is_poll() {
        out["max_in_flight"] = json!(crate::delivery::push::window(&m.config, s));
        out["http2_prior_knowledge"] = json!(s.http2_prior_knowledge);
    }
    if let Some(d) = &s.description {
        out["description"] = json!(d);
    }
    if m.config.inactivity_timeout_secs > 0 {
        out["inactivity_timeout"] = json!(m.config.inactivity_timeout_secs);
    }
    out
}

fn poll_url(m: &Manage, stream_id: &str) -> String {
    format!("{}/ssf/poll/{stream_id}", base(m))
}

/// Parses the receiver-supplied `delivery`. Push needs an http(s) `endpoint_url`; for poll the
/// hub supplies the URL, and a receiver may only echo it back.
fn parse_delivery(m: &Manage, stream_id: &str, value: &Value) -> Result<Delivery, Error> {
    let obj = value
        .as_object()
        .ok_or_else(|| Error::Invalid("`delivery` must be an object".into()))?;
    let method = obj
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Invalid("`delivery.method` is required".into()))?;
    let auth = match obj.get("authorization_header") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(Error::Invalid(
                "`delivery.authorization_header` must be a string".into(),
            ))
        }
    };
    let url = match obj.get("endpoint_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(Error::Invalid(
                "`delivery.endpoint_url` must be a string".into(),
            ))
        }
    };
    match method {
        DELIVERY_PUSH => {
            let url =
                url.ok_or_else(|| Error::Invalid("push delivery needs `endpoint_url`".into()))?;
            match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    if !m.guard.permits_url(&u) {
                        return Err(Error::Invalid(
                            "`delivery.endpoint_url` is an address the hub may not reach".into(),
                        ));
                    }
                }
                _ => {
                    return Err(Error::Invalid(
                        "`delivery.endpoint_url` must be an http(s) URL".into(),
                    ))
                }
            }
            Ok(Delivery {
                method: DELIVERY_PUSH.into(),
                endpoint_url: Some(url),
                authorization_header: auth,
            })
        }
        DELIVERY_POLL => {
            let ours = poll_url(m, stream_id);
            if url.is_some_and(|u| u != ours) {
                return Err(Error::Invalid(
                    "the poll `endpoint_url` is supplied by the transmitter".into(),
                ));
            }
            Ok(Delivery {
                method: DELIVERY_POLL.into(),
                endpoint_url: Some(ours),
                authorization_header: None,
            })
        }
        _ => Err(Error::Invalid("unsupported delivery method".into())),
    }
}

/// Most `events_requested` entries kept as the receiver sent them.
const MAX_EVENTS_REQUESTED: usize = 64;

/// SSF §8.1.1: the transmitter MUST ignore requested values it does not understand. A longer
/// list than [`MAX_EVENTS_REQUESTED`] is not refused: the hub keeps the entries it understands
/// (every known URI, each once, in the receiver's order) and ignores the rest, so storage stays
/// bounded and no event type the receiver asked for is lost.
fn parse_events_requested(value: &Value) -> Result<Vec<String>, Error> {
    match value {
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let all = items.iter().filter_map(|v| v.as_str().map(String::from));
            if items.len() <= MAX_EVENTS_REQUESTED {
                return Ok(all.collect());
            }
            let mut kept: Vec<String> = Vec::new();
            for uri in all.filter(|u| EventKind::from_uri(u).is_some()) {
                if kept.len() == MAX_EVENTS_REQUESTED {
                    break;
                }
                if !kept.contains(&uri) {
                    kept.push(uri);
                }
            }
            Ok(kept)
        }
        _ => Err(Error::Invalid(
            "`events_requested` must be an array of strings".into(),
        )),
    }
}

fn parse_description(value: &Value) -> Result<Option<String>, Error> {
    match value {
        Value::Null => Ok(None),
        // Descriptions are for humans; an unbounded one is a storage abuse.
        Value::String(s) => Ok(Some(s.chars().take(1024).collect())),
        _ => Err(Error::Invalid("`description` must be a string".into())),
    }
}

fn parse_signing_alg(value: &Value) -> Result<Option<String>, Error> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s == "ES256" || s == "RS256" => Ok(Some(s.clone())),
        _ => Err(Error::Invalid(
            "`signing_alg` must be ES256 or RS256".into(),
        )),
    }
}

/// A stream's push window: 1 (strict order) up to the hub's `delivery.push_max_in_flight`.
fn parse_max_in_flight(m: &Manage, value: &Value) -> Result<Option<u32>, Error> {
    let max = m.config.push_max_in_flight;
    match value {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .filter(|n| (1..=u64::from(max)).contains(n))
            .map(|n| Some(n as u32))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "`max_in_flight` must be an integer from 1 to {max}"
                ))
            }),
    }
}

fn parse_prior_knowledge(value: &Value) -> Result<bool, Error> {
    match value {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        _ => Err(Error::Invalid(
            "`http2_prior_knowledge` must be a boolean".into(),
        )),
    }
}

/// HTTP/2 prior knowledge is about how the hub connects to a receiver's endpoint; a poll stream
/// has none, so asking for it there is a mistake worth naming rather than ignoring.
fn check_prior_knowledge(stream: &Stream) -> Result<(), Error> {
    if stream.http2_prior_knowledge && stream.delivery.is_poll() {
        return Err(Error::Invalid(
            "`http2_prior_knowledge` applies to push streams only".into(),
        ));
    }
    Ok(())
}

fn parse_budget(value: &Value) -> Result<Option<u64>, Error> {
    match value {
        Value::Null => Ok(None),
        v => {
            v.as_u64().filter(|ms| *ms > 0).map(Some).ok_or_else(|| {
                Error::Invalid("`latency_budget_ms` must be a positive integer".into())
            })
        }
    }
}

/// Transmitter-supplied fields may be sent on update but must equal the current values
/// (SSF §8.1.1.3); `events_delivered` is compared with the value before the update.
fn check_transmitter_fields(
    m: &Manage,
    current: &Stream,
    body: &Map<String, Value>,
) -> Result<(), Error> {
    let out = config_out(m, current);
    for field in [
        "iss",
        "aud",
        "events_supported",
        "events_delivered",
        "min_verification_interval",
    ] {
        if let Some(v) = body.get(field) {
            if !same_value(field, v, &out[field]) {
                return Err(Error::Invalid(format!(
                    "`{field}` is transmitter-supplied and differs from its current value"
                )));
            }
        }
    }
    Ok(())
}

/// Whether an echoed transmitter field equals the current value. `aud` is a string or an array
/// (SSF §8.1.1): a one-element array and its element are the same audience.
fn same_value(field: &str, echoed: &Value, current: &Value) -> bool {
    fn one(v: &Value) -> &Value {
        match v {
            Value::Array(items) if items.len() == 1 => &items[0],
            v => v,
        }
    }
    if field == "aud" {
        one(echoed) == one(current)
    } else {
        echoed == current
    }
}

/// `POST configuration_endpoint`: create a stream (SSF §8.1.1.1). Several per receiver.
async fn create_stream(
    http::Receiver(receiver): http::Receiver,
    State(m): State<Manage>,
    body: Bytes,
) -> Result<Response, Error> {
    let body = if body.is_empty() {
        Map::new()
    } else {
        parse_object(&body)?
    };
    if m.registry.streams_of(&receiver.id)?.len() >= MAX_STREAMS_PER_RECEIVER {
        return Err(Error::Refused(format!(
            "a receiver may have at most {MAX_STREAMS_PER_RECEIVER} streams"
        )));
    }
    let stream_id = crate::streams::new_stream_id();
    let events_requested = match body.get("events_requested") {
        Some(v) => parse_events_requested(v)?,
        None => Vec::new(),
    };
    let delivery = match body.get("delivery") {
        Some(v) => parse_delivery(&m, &stream_id, v)?,
        // No delivery means poll (SSF §8.1.1.1).
        None => parse_delivery(&m, &stream_id, &json!({"method": DELIVERY_POLL}))?,
    };
    let stream = Stream {
        stream_id: stream_id.clone(),
        receiver_id: receiver.id.clone(),
        aud: receiver.audience.clone(),
        events_delivered: events_delivered(&events_requested),
        events_requested,
        delivery,
        description: body
            .get("description")
            .map(parse_description)
            .transpose()?
            .flatten(),
        status: StreamStatus::Enabled,
        reason: None,
        subjects: Default::default(),
        latency_budget_ms: body
            .get("latency_budget_ms")
            .map(parse_budget)
            .transpose()?
            .flatten(),
        signing_alg: body
            .get("signing_alg")
            .map(parse_signing_alg)
            .transpose()?
            .flatten(),
        max_in_flight: body
            .get("max_in_flight")
            .map(|v| parse_max_in_flight(&m, v))
            .transpose()?
            .flatten(),
        http2_prior_knowledge: body
            .get("http2_prior_knowledge")
            .map(parse_prior_knowledge)
            .transpose()?
            .unwrap_or(false),
        last_verification_ms: 0,
        created_at_ms: crate::unix_now_ms(),
    };
    check_prior_knowledge(&stream)?;
    // A new stream starts at the current head: it receives what happens from now on.
    let cursor = Cursor::at(m.log.head());
    m.cursors.put(&stream_id, &cursor).await?;
    m.registry.put_stream(&stream).await?;
    tracing::info!(stream = %stream_id, receiver = %receiver.id, method = %stream.delivery.method, "stream created");
    Ok(no_store(StatusCode::CREATED, config_out(&m, &stream)))
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    stream_id: Option<String>,
}

/// `GET configuration_endpoint[?stream_id=]` (SSF §8.1.1.2): one object, or always an array.
async fn read_streams(
    http::Receiver(receiver): http::Receiver,
    State(m): State<Manage>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, Error> {
    match q.stream_id {
        Some(id) => Ok(no_store(
            StatusCode::OK,
            config_out(&m, &owned(&m, &receiver, &id)?),
        )),
        None => {
            let all: Vec<Value> = m
                .registry
                .streams_of(&receiver.id)?
                .iter()
                .map(|s| config_out(&m, s))
                .collect();
            Ok(no_store(StatusCode::OK, Value::Array(all)))
        }
    }
}

/// `PATCH configuration_endpoint` (SSF §8.1.1.3): present receiver-supplied fields change.
async fn update_stream(
    receiver: http::Receiver,
    State(m): State<Manage>,
    body: Bytes,
) -> Result<Response, Error> {
    modify(m, receiver, body, false).await
}

/// `PUT configuration_endpoint` (SSF §8.1.1.4): absent receiver-supplied fields are removed.
async fn replace_stream(
    receiver: http::Receiver,
    State(m): State<Manage>,
    body: Bytes,
) -> Result<Response, Error> {
    modify(m, receiver, body, true).await
}

async fn modify(
    m: Manage,
    http::Receiver(receiver): http::Receiver,
    body: Bytes,
    replace: bool,
) -> Result<Response, Error> {
    let body = parse_object(&body)?;
    let stream_id = stream_id_of(&body)?;
    // One change at a time per stream: read-modify-write must not lose a concurrent update.
    let lock = m.cursors.lock_for(&stream_id);
    let _guard = lock.lock().await;
    let mut stream = owned(&m, &receiver, &stream_id)?;
    check_transmitter_fields(&m, &stream, &body)?;
    match body.get("events_requested") {
        Some(v) => stream.events_requested = parse_events_requested(v)?,
        None if replace => stream.events_requested = Vec::new(),
        None => {}
    }
    match body.get("delivery") {
        Some(v) => stream.delivery = parse_delivery(&m, &stream_id, v)?,
        // Read literally, a PUT without `delivery` deletes it, but a stream cannot exist
        // without one (digest §14.2 #9); as on create (SSF §8.1.1.1), no `delivery` means poll.
        None if replace => {
            stream.delivery = parse_delivery(&m, &stream_id, &json!({"method": DELIVERY_POLL}))?
        }
        None => {}
    }
    match body.get("description") {
        Some(v) => stream.description = parse_description(v)?,
        None if replace => stream.description = None,
        None => {}
    }
    match body.get("latency_budget_ms") {
        Some(v) => stream.latency_budget_ms = parse_budget(v)?,
        None if replace => stream.latency_budget_ms = None,
        None => {}
    }
    match body.get("signing_alg") {
        Some(v) => stream.signing_alg = parse_signing_alg(v)?,
        None if replace => stream.signing_alg = None,
        None => {}
    }
    match body.get("max_in_flight") {
        Some(v) => stream.max_in_flight = parse_max_in_flight(&m, v)?,
        None if replace => stream.max_in_flight = None,
        None => {}
    }
    match body.get("http2_prior_knowledge") {
        Some(v) => stream.http2_prior_knowledge = parse_prior_knowledge(v)?,
        // A stream moved to poll (or replaced) without naming it drops it rather than failing.
        None if replace || stream.delivery.is_poll() => stream.http2_prior_knowledge = false,
        None => {}
    }
    check_prior_knowledge(&stream)?;
    stream.events_delivered = events_delivered(&stream.events_requested);
    m.registry.put_stream(&stream).await?;
    Ok(no_store(StatusCode::OK, config_out(&m, &stream)))
}

/// `DELETE configuration_endpoint?stream_id=` (SSF §8.1.1.5).
async fn delete_stream(
    http::Receiver(receiver): http::Receiver,
    State(m): State<Manage>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, Error> {
    let id = q
        .stream_id
        .ok_or_else(|| Error::Invalid("`stream_id` query parameter is required".into()))?;
    let lock = m.cursors.lock_for(&id);
    let guard = lock.lock().await;
    owned(&m, &receiver, &id)?;
    m.registry.delete_stream(&id).await?;
    drop(guard);
    m.cursors.remove(&id).await?;
    m.delivery.forget(&id);
    tracing::info!(stream = %id, "stream deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn status_out(s: &Stream) -> Value {
    let mut out = json!({ "stream_id": s.stream_id, "status": s.status });
    if let Some(r) = &s.reason {
        out["reason"] = json!(r);
    }
    out
}

/// `GET status_endpoint?stream_id=` (SSF §8.1.2.1).
async fn read_status(
    http::Receiver(receiver): http::Receiver,
    State(m): State<Manage>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, Error> {
    let id = q
        .stream_id
        .ok_or_else(|| Error::Invalid("`stream_id` query parameter is required".into()))?;
    Ok(no_store(
        StatusCode::OK,
        status_out(&owned(&m, &receiver, &id)?),
    ))
}

/// `POST status_endpoint` (SSF §8.1.2.2). Pausing holds events; disabling drops what is held.
async fn update_status(
    http::Receiver(receiver): http::Receiver,
    State(m): State<Manage>,
    body: Bytes,
) -> Result<Response, Error> {
    let body = parse_object(&body)?;
    let id = stream_id_of(&body)?;
    let lock = m.cursors.lock_for(&id);
    let _guard = lock.lock().await;
    let mut stream = owned(&m, &receiver, &id)?;
    let status: StreamStatus = body
        .get("status")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| Error::Invalid("`status` must be enabled, paused or disabled".into()))?;
    let reason = match body.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.chars().take(256).collect()),
        Some(_) => return Err(Error::Invalid("`reason` must be a string".into())),
    };
    let previous = stream.status;
    stream.status = status;
    stream.reason = reason;
    set_cursor_for_status(&m, &id, previous, status).await?;
    m.registry.put_stream(&stream).await?;
    tracing::info!(stream = %id, status = ?status, "stream status changed by its receiver");
    Ok(no_store(StatusCode::OK, status_out(&stream)))
}

/// Moves a stream's cursor for a status change (the caller holds the stream's lock).
async fn set_cursor_for_status(
    m: &Manage,
    id: &str,
    previous: StreamStatus,
    status: StreamStatus,
) -> Result<(), Error> {
    crate::streams::set_cursor_for_status(
        &m.cursors,
        m.log.head(),
        m.config.paused_hold_max_events,
        id,
        previous,
        status,
    )
    .await?;
    Ok(())
}

/// Largest subject identifier a receiver may add or remove, in bytes of JSON.
const MAX_SUBJECT_BYTES: usize = 4096;

fn parse_subject(body: &Map<String, Value>) -> Result<Subject, Error> {
    let mut value = body
        .get("subject")
        .cloned()
        .ok_or_else(|| Error::Invalid("`subject` is required".into()))?;
    if value.to_string().len() > MAX_SUBJECT_BYTES {
        return Err(Error::Invalid("`subject` is too large".into()));
    }
    Subject::upgrade_legacy(&mut value);
    Subject::parse(&value).map_err(|e| Error::Invalid(format!("`subject`: {e}")))
}

/// `POST add_subject_endpoint` (SSF §8.1.3.2): 200, empty body.
async fn add_subject(
    receiver: http::Receiver,
    State(m): State<Manage>,
    body: Bytes,
) -> Result<Response, Error> {
    change_subjects(m, receiver, body, true).await
}

/// `POST remove_subject_endpoint` (SSF §8.1.3.3): 204.
async fn remove_subject(
    receiver: http::Receiver,
    State(m): State<Manage>,
    body: Bytes,
) -> Result<Response, Error> {
    change_subjects(m, receiver, body, false).await
}

async fn change_subjects(
    m: Manage,
    http::Receiver(receiver): http::Receiver,
    body: Bytes,
    add: bool,
) -> Result<Response, Error> {
    use crate::streams::{DefaultSubjects, SubjectLimit, SubjectLimits};
    let body = parse_object(&body)?;
    let id = stream_id_of(&body)?;
    let subject = parse_subject(&body)?;
    if let Some(v) = body.get("verified") {
        if !v.is_boolean() {
            return Err(Error::Invalid("`verified` must be a boolean".into()));
        }
    }
    let lock = m.cursors.lock_for(&id);
    let _guard = lock.lock().await;
    let stream = owned(&m, &receiver, &id)?;
    // The list holds exclusions under default_subjects ALL, inclusions under NONE.
    let listed = match m.config.default_subjects {
        DefaultSubjects::All => !add,
        DefaultSubjects::None => add,
    };
    let limits = SubjectLimits {
        per_stream: m.config.max_subjects_per_stream,
        bytes_per_receiver: m.config.max_subject_bytes_per_receiver,
    };
    match m
        .registry
        .set_subject(&stream, &subject, listed, limits)
        .await?
    {
        Ok(()) => {}
        Err(SubjectLimit::Count(max)) => {
            return Err(Error::Invalid(format!(
                "this stream lists {max} subjects, as many as delivery.max_subjects_per_stream \
                 allows"
            )))
        }
        Err(SubjectLimit::Bytes(max)) => {
            return Err(Error::Refused(format!(
                "this receiver's subjects would exceed delivery.max_subject_bytes_per_receiver \
                 ({max} bytes); remove some first"
            )))
        }
    }
    Ok(if add {
        (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    })
}

/// `POST verification_endpoint` (SSF §8.1.4.2): queues a verification SET echoing `state`.
async fn verify_stream(
    http::Receiver(receiver): http::Receiver,
    State(m): State<Manage>,
    body: Bytes,
) -> Result<Response, Error> {
    let body = parse_object(&body)?;
    let id = stream_id_of(&body)?;
    let state = match body.get("state") {
        None | Some(Value::Null) => None,
        // The state is echoed in a SET; a few hundred bytes are plenty for a nonce.
        Some(Value::String(s)) if s.len() <= 1024 => Some(s.clone()),
        Some(Value::String(_)) => {
            return Err(Error::Invalid("`state` is longer than 1024 bytes".into()))
        }
        Some(_) => return Err(Error::Invalid("`state` must be a string".into())),
    };
    let lock = m.cursors.lock_for(&id);
    let _guard = lock.lock().await;
    let mut stream = owned(&m, &receiver, &id)?;
    let now = crate::unix_now_ms();
    let interval_ms = m.config.min_verification_interval_secs * 1000;
    if stream.last_verification_ms > 0 && now < stream.last_verification_ms + interval_ms {
        let wait_ms = stream.last_verification_ms + interval_ms - now;
        return Err(Error::Throttled(wait_ms.div_ceil(1000)));
    }
    stream.last_verification_ms = now;
    if stream.status == StreamStatus::Disabled {
        // A disabled stream holds nothing (SSF §8.1.2): the request is accepted and dropped.
        // On a paused stream it is queued and held until the stream is enabled again.
        m.registry.put_stream(&stream).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let payload = match state {
        Some(s) => json!({ "state": s }),
        None => json!({}),
    };
    let event = crate::outbound::control(&stream, EventKind::Verification, payload);
    if !m.cursors.push_control(&id, event).await? {
        // MAX_CONTROL events already wait for a receiver that does not collect them.
        return Err(Error::TooManyRequests);
    }
    m.registry.put_stream(&stream).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /ssf/poll/{stream_id}` (RFC 8936).
async fn poll_stream(
    http::Receiver(receiver): http::Receiver,
    State(m): State<Manage>,
    Path(stream_id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let stream = owned(&m, &receiver, &stream_id)?;
    if !stream.delivery.is_poll() {
        return Err(Error::NotFound);
    }
    let req = crate::delivery::poll::parse_request(&body).map_err(|e| Error::Invalid(e.into()))?;
    let resp = crate::delivery::poll::poll(&m.delivery, &stream, req)
        .await
        .map_err(|e| match e {
            crate::delivery::poll::PollError::Gone => Error::NotFound,
            // Another long poll of this receiver will end within the long-poll timeout.
            crate::delivery::poll::PollError::TooManyLongPolls => Error::Throttled(1),
            e => Error::Internal(e.to_string()),
        })?;
    // The end of a long poll is receiver activity too (its start was, in `owned`).
    m.registry.touch(&stream_id);
    Ok(no_store(
        StatusCode::OK,
        serde_json::to_value(resp).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiverIn {
    name: String,
    audience: String,
    /// Defaults to the stream scopes: a new credential reads no revocation state unless the
    /// operator says so.
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    bound_to: Vec<crate::streams::Binding>,
    #[serde(default)]
    oauth_client_id: Option<String>,
}

/// `POST /admin/receivers`: registers a receiver and returns its credential, once.
async fn create_receiver(
    _: Admin,
    State(m): State<Manage>,
    body: Bytes,
) -> Result<Response, Error> {
    let input: ReceiverIn = serde_json::from_slice(&body).map_err(|e| {
        Error::Invalid(format!(
            "expected {{\"name\", \"audience\", optional \"scopes\", \"bound_to\", \
             \"oauth_client_id\"}}: {e}"
        ))
    })?;
    if input.name.trim().is_empty() || input.audience.trim().is_empty() {
        return Err(Error::Invalid(
            "`name` and `audience` must not be empty".into(),
        ));
    }
    let grant = checked_grant(
        &m,
        None,
        crate::streams::Grant {
            scopes: input.scopes.unwrap_or_else(crate::streams::stream_scopes),
            bound_to: input.bound_to,
            oauth_client_id: input.oauth_client_id,
        },
    )?;
    let (receiver, token) = m
        .registry
        .register(&input.name, &input.audience, grant)
        .await?;
    tracing::info!(receiver = %receiver.id, scopes = %receiver.scopes.join(" "), "receiver registered");
    let mut out = receiver_out(&receiver);
    out["token"] = json!(token);
    Ok(no_store(StatusCode::CREATED, out))
}

/// Checks a grant: known scopes, non-empty bindings, an OAuth client no other receiver has
/// (`receiver` is the one being changed, which may keep its own).
fn checked_grant(
    m: &Manage,
    receiver: Option<&str>,
    grant: crate::streams::Grant,
) -> Result<crate::streams::Grant, Error> {
    use crate::streams::{Binding, SCOPES};
    if grant.scopes.is_empty() {
        return Err(Error::Invalid(
            "`scopes` must name at least one scope".into(),
        ));
    }
    if let Some(unknown) = grant.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(Error::Invalid(format!(
            "unknown scope {:?}; known: {}",
            crate::plain(unknown, 64),
            SCOPES.join(", ")
        )));
    }
    for b in &grant.bound_to {
        if matches!(b, Binding::EmailDomain(v) | Binding::Issuer(v) if v.trim().is_empty()) {
            return Err(Error::Invalid("a binding must not be empty".into()));
        }
    }
    if let Some(client) = &grant.oauth_client_id {
        if client.is_empty() || client.len() > 256 || client.chars().any(char::is_control) {
            return Err(Error::Invalid(
                "`oauth_client_id` must be 1 to 256 characters, without control characters".into(),
            ));
        }
        if m.registry
            .oauth_client(client)?
            .is_some_and(|r| Some(r.id.as_str()) != receiver)
        {
            return Err(Error::Invalid(
                "`oauth_client_id` already belongs to another receiver".into(),
            ));
        }
    }
    Ok(grant)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegrantIn {
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    bound_to: Option<Vec<crate::streams::Binding>>,
    /// `null` removes the OAuth client; absent keeps it.
    #[serde(default, deserialize_with = "present")]
    oauth_client_id: Option<Option<String>>,
}

/// Tells a member given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// `PATCH /admin/receivers/{id}`: changes a receiver's scopes, bindings or OAuth client (members
/// present replace; the credential stays). How an operator grants `revocations.read` to a
/// receiver stored before scopes existed without issuing a new credential. Takes effect on the
/// receiver's next request; connections already open keep what they were opened with.
async fn regrant_receiver(
    _: Admin,
    State(m): State<Manage>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let input: RegrantIn = serde_json::from_slice(&body).map_err(|e| {
        Error::Invalid(format!(
            "expected {{\"scopes\"?, \"bound_to\"?, \"oauth_client_id\"?}}: {e}"
        ))
    })?;
    let current = m
        .registry
        .receiver(&id)?
        .filter(|r| !r.revoked)
        .ok_or(Error::NotFound)?;
    let grant = checked_grant(
        &m,
        Some(&id),
        crate::streams::Grant {
            scopes: input.scopes.unwrap_or(current.scopes),
            bound_to: input.bound_to.unwrap_or(current.bound_to),
            oauth_client_id: input.oauth_client_id.unwrap_or(current.oauth_client_id),
        },
    )?;
    let updated = m
        .registry
        .regrant(&id, grant)
        .await?
        .ok_or(Error::NotFound)?;
    tracing::info!(receiver = %id, scopes = %updated.scopes.join(" "), "receiver scopes changed");
    Ok(no_store(StatusCode::OK, receiver_out(&updated)))
}

/// A receiver as operators see it: never its credential hash.
fn receiver_out(r: &Receiver) -> Value {
    let mut v = json!({ "receiver_id": r.id, "name": r.name, "audience": r.audience,
        "revoked": r.revoked, "scopes": r.scopes });
    if !r.bound_to.is_empty() {
        v["bound_to"] = json!(r.bound_to);
    }
    if let Some(c) = &r.oauth_client_id {
        v["oauth_client_id"] = json!(c);
    }
    v
}

/// `GET /admin/receivers`: receivers without their credential hashes.
async fn list_receivers(_: Admin, State(m): State<Manage>) -> Result<Response, Error> {
    let list: Vec<Value> = m.registry.receivers()?.iter().map(receiver_out).collect();
    Ok(no_store(StatusCode::OK, Value::Array(list)))
}

/// `DELETE /admin/receivers/{id}`: revokes the receiver's credential.
async fn revoke_receiver(
    _: Admin,
    State(m): State<Manage>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    if m.registry.revoke_receiver(&id).await? {
        // A revoked receiver gets nothing more: its streams are disabled (they hold nothing),
        // which stops push delivery to its endpoints. Each is announced first with a
        // stream-updated SET (SSF §8.1.2, §8.1.5: a transmitter-initiated change), pushed at
        // once or queued for the poll stream, whose open long polls end with it.
        let reason = "receiver credential revoked";
        for stream in m.registry.streams_of(&id)? {
            m.delivery
                .change_status(&stream.stream_id, StreamStatus::Disabled, reason, |_| true)
                .await?;
        }
        tracing::info!(receiver = %id, "receiver credential revoked");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Error::NotFound)
    }
}

/// `POST /admin/keys/rotate` `{"alg": "ES256"|"RS256"}`: publishes a new key now; it signs
/// after `signing.activation_delay_secs`.
async fn rotate_keys(_: Admin, State(m): State<Manage>, body: Bytes) -> Result<Response, Error> {
    let body = if body.is_empty() {
        Map::new()
    } else {
        parse_object(&body)?
    };
    let alg = match body.get("alg") {
        None => m.minter.default_alg(),
        Some(Value::String(a)) => {
            crate::sign::SignAlg::parse(a).map_err(|e| Error::Invalid(e.to_string()))?
        }
        Some(_) => return Err(Error::Invalid("`alg` must be ES256 or RS256".into())),
    };
    let (kid, activate_at) = m
        .minter
        .keys()
        .rotate(alg)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(no_store(
        StatusCode::OK,
        json!({ "kid": kid, "alg": alg.name(), "activate_at": activate_at }),
    ))
}

/// `GET /admin/streams`: every stream with its owner, status and reason, and its progress
/// over the log (`through`: every position up to it is settled; `settled_above`: positions
/// settled out of order beyond it; `behind`: log positions after `through`), for operators.
async fn list_all_streams(_: Admin, State(m): State<Manage>) -> Result<Response, Error> {
    let head = m.log.head();
    let all: Vec<Value> = m
        .registry
        .streams()?
        .iter()
        .map(|s| {
            let mut v = config_out(&m, s);
            v["receiver_id"] = json!(s.receiver_id);
            v["status"] = json!(s.status);
            if let Ok(Some(c)) = m.cursors.get(&s.stream_id) {
                v["progress"] = json!({
                    "through": c.through,
                    "settled_above": c.done_above.len() + c.outstanding.len(),
                    "behind": head.saturating_sub(c.through),
                });
            }
            if let Some(r) = &s.reason {
                v["reason"] = json!(r);
            }
            // Receivers' push credentials are theirs; operators do not need to see them.
            if let Some(d) = v["delivery"].as_object_mut() {
                d.remove("authorization_header");
            }
            v
        })
        .collect();
    Ok(no_store(StatusCode::OK, Value::Array(all)))
}

/// `GET /admin/streams/{id}/dead-letters`: SETs the stream's receiver refused for good.
async fn list_dead_letters(
    _: Admin,
    State(m): State<Manage>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    m.registry.stream(&id)?.ok_or(Error::NotFound)?;
    Ok(no_store(
        StatusCode::OK,
        Value::Array(m.cursors.dead_letters(&id)?),
    ))
}
