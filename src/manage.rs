//! The hub as an SSF transmitter, over HTTP: discovery metadata (SSF §7), the stream management
//! API (SSF §8: configuration, status, subjects, verification), the RFC 8936 poll endpoint, and
//! the admin API that registers receivers. Authorizes every call to one receiver's own streams;
//! leaves storage to `streams`, cursors and SETs to `delivery` and `outbound`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::app::Hub;
use crate::delivery::Cursor;
use crate::error::Error;
use crate::set::events::StreamStatus;
use crate::set::{EventKind, Subject, DELIVERY_POLL, DELIVERY_PUSH};
use crate::streams::{events_delivered, events_supported, Delivery, Receiver, Stream};

/// Routes below the issuer's path (empty for an issuer without a path).
pub fn routes() -> Router<Arc<Hub>> {
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
pub fn admin_routes() -> Router<Arc<Hub>> {
    Router::new()
        .route(
            "/admin/receivers",
            get(list_receivers).post(create_receiver),
        )
        .route(
            "/admin/receivers/{id}",
            axum::routing::delete(revoke_receiver),
        )
        .route("/admin/keys/rotate", post(rotate_keys))
        .route("/admin/streams", get(list_all_streams))
        .route("/admin/streams/{id}/dead-letters", get(list_dead_letters))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// `issuer` without a trailing slash, the base of every advertised URL.
fn base(hub: &Hub) -> &str {
    hub.config.issuer.trim_end_matches('/')
}

/// `GET /.well-known/ssf-configuration[/{issuer path}]` (SSF §7.1).
pub(crate) async fn get_configuration(State(hub): State<Arc<Hub>>) -> Response {
    let b = base(&hub);
    let body = json!({
        "spec_version": "1_0",
        "issuer": hub.config.issuer,
        "jwks_uri": format!("{b}/jwks.json"),
        "delivery_methods_supported": [DELIVERY_PUSH, DELIVERY_POLL],
        "configuration_endpoint": format!("{b}/ssf/streams"),
        "status_endpoint": format!("{b}/ssf/status"),
        "add_subject_endpoint": format!("{b}/ssf/subjects:add"),
        "remove_subject_endpoint": format!("{b}/ssf/subjects:remove"),
        "verification_endpoint": format!("{b}/ssf/verify"),
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
        "default_subjects": hub.config.delivery.default_subjects,
    });
    Json(body).into_response()
}

/// The receiver behind `Authorization: Bearer <credential>`.
pub(crate) fn authorize(hub: &Hub, headers: &HeaderMap) -> Result<Receiver, Error> {
    let token = crate::http::bearer(headers)?;
    hub.registry.authenticate(token)?.ok_or(Error::InvalidToken)
}

fn owned(hub: &Hub, receiver: &Receiver, stream_id: &str) -> Result<Stream, Error> {
    hub.registry
        .owned_stream(&receiver.id, stream_id)?
        .ok_or(Error::NotFound)
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
fn config_out(hub: &Hub, s: &Stream) -> Value {
    let mut delivery = json!({ "method": s.delivery.method });
    if let Some(url) = &s.delivery.endpoint_url {
        delivery["endpoint_url"] = json!(url);
    }
    if let Some(auth) = &s.delivery.authorization_header {
        delivery["authorization_header"] = json!(auth);
    }
    let mut out = json!({
        "stream_id": s.stream_id,
        "iss": hub.config.issuer,
        "aud": s.aud,
        "events_supported": events_supported(),
        "events_requested": s.events_requested,
        "events_delivered": s.events_delivered,
        "delivery": delivery,
        "min_verification_interval": hub.config.delivery.min_verification_interval_secs,
        "latency_budget_ms": s.latency_budget_ms.unwrap_or(hub.config.delivery.latency_budget_ms),
        "signing_alg": s.signing_alg.as_deref().unwrap_or(hub.default_alg.name()),
    });
    if let Some(d) = &s.description {
        out["description"] = json!(d);
    }
    out
}

fn poll_url(hub: &Hub, stream_id: &str) -> String {
    format!("{}/ssf/poll/{stream_id}", base(hub))
}

/// Parses the receiver-supplied `delivery`. Push needs an http(s) `endpoint_url`; for poll the
/// hub supplies the URL, and a receiver may only echo it back.
fn parse_delivery(hub: &Hub, stream_id: &str, value: &Value) -> Result<Delivery, Error> {
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
                    if !hub.push_guard.permits_url(&u) {
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
            let ours = poll_url(hub, stream_id);
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

fn parse_events_requested(value: &Value) -> Result<Vec<String>, Error> {
    match value {
        Value::Array(items) if items.len() > 64 => Err(Error::Invalid(
            "`events_requested` lists more event types than exist".into(),
        )),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()),
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
    hub: &Hub,
    current: &Stream,
    body: &Map<String, Value>,
) -> Result<(), Error> {
    let out = config_out(hub, current);
    for field in [
        "iss",
        "aud",
        "events_supported",
        "events_delivered",
        "min_verification_interval",
    ] {
        if let Some(v) = body.get(field) {
            if *v != out[field] {
                return Err(Error::Invalid(format!(
                    "`{field}` is transmitter-supplied and differs from its current value"
                )));
            }
        }
    }
    Ok(())
}

/// `POST configuration_endpoint`: create a stream (SSF §8.1.1.1). Several per receiver.
async fn create_stream(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let receiver = authorize(&hub, &headers)?;
    let body = if body.is_empty() {
        Map::new()
    } else {
        parse_object(&body)?
    };
    if hub.registry.streams_of(&receiver.id)?.len() >= MAX_STREAMS_PER_RECEIVER {
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
        Some(v) => parse_delivery(&hub, &stream_id, v)?,
        // No delivery means poll (SSF §8.1.1.1).
        None => parse_delivery(&hub, &stream_id, &json!({"method": DELIVERY_POLL}))?,
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
        subjects: Vec::new(),
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
        last_verification_ms: 0,
        created_at_ms: crate::unix_now_ms(),
    };
    // A new stream starts at the current head: it receives what happens from now on.
    let cursor = Cursor::at(hub.log.head());
    hub.cursors.put(&stream_id, &cursor).await?;
    hub.registry.put_stream(&stream).await?;
    tracing::info!(stream = %stream_id, receiver = %receiver.id, method = %stream.delivery.method, "stream created");
    Ok(no_store(StatusCode::CREATED, config_out(&hub, &stream)))
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    stream_id: Option<String>,
}

/// `GET configuration_endpoint[?stream_id=]` (SSF §8.1.1.2): one object, or always an array.
async fn read_streams(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, Error> {
    let receiver = authorize(&hub, &headers)?;
    match q.stream_id {
        Some(id) => Ok(no_store(
            StatusCode::OK,
            config_out(&hub, &owned(&hub, &receiver, &id)?),
        )),
        None => {
            let all: Vec<Value> = hub
                .registry
                .streams_of(&receiver.id)?
                .iter()
                .map(|s| config_out(&hub, s))
                .collect();
            Ok(no_store(StatusCode::OK, Value::Array(all)))
        }
    }
}

/// `PATCH configuration_endpoint` (SSF §8.1.1.3): present receiver-supplied fields change.
async fn update_stream(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    modify(hub, headers, body, false).await
}

/// `PUT configuration_endpoint` (SSF §8.1.1.4): absent receiver-supplied fields are removed.
async fn replace_stream(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    modify(hub, headers, body, true).await
}

async fn modify(
    hub: Arc<Hub>,
    headers: HeaderMap,
    body: Bytes,
    replace: bool,
) -> Result<Response, Error> {
    let receiver = authorize(&hub, &headers)?;
    let body = parse_object(&body)?;
    let stream_id = stream_id_of(&body)?;
    // One change at a time per stream: read-modify-write must not lose a concurrent update.
    let lock = hub.cursors.lock_for(&stream_id);
    let _guard = lock.lock().await;
    let mut stream = owned(&hub, &receiver, &stream_id)?;
    check_transmitter_fields(&hub, &stream, &body)?;
    match body.get("events_requested") {
        Some(v) => stream.events_requested = parse_events_requested(v)?,
        None if replace => stream.events_requested = Vec::new(),
        None => {}
    }
    match body.get("delivery") {
        Some(v) => stream.delivery = parse_delivery(&hub, &stream_id, v)?,
        // Read literally, a PUT without `delivery` deletes it; a stream cannot exist without
        // one (digest §14.2 #9).
        None if replace => return Err(Error::Invalid("PUT must include `delivery`".into())),
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
    stream.events_delivered = events_delivered(&stream.events_requested);
    hub.registry.put_stream(&stream).await?;
    Ok(no_store(StatusCode::OK, config_out(&hub, &stream)))
}

/// `DELETE configuration_endpoint?stream_id=` (SSF §8.1.1.5).
async fn delete_stream(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, Error> {
    let receiver = authorize(&hub, &headers)?;
    let id = q
        .stream_id
        .ok_or_else(|| Error::Invalid("`stream_id` query parameter is required".into()))?;
    let lock = hub.cursors.lock_for(&id);
    let guard = lock.lock().await;
    owned(&hub, &receiver, &id)?;
    hub.registry.delete_stream(&id).await?;
    drop(guard);
    hub.cursors.remove(&id).await?;
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
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, Error> {
    let receiver = authorize(&hub, &headers)?;
    let id = q
        .stream_id
        .ok_or_else(|| Error::Invalid("`stream_id` query parameter is required".into()))?;
    Ok(no_store(
        StatusCode::OK,
        status_out(&owned(&hub, &receiver, &id)?),
    ))
}

/// `POST status_endpoint` (SSF §8.1.2.2). Pausing holds events; disabling drops what is held.
async fn update_status(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let receiver = authorize(&hub, &headers)?;
    let body = parse_object(&body)?;
    let id = stream_id_of(&body)?;
    let lock = hub.cursors.lock_for(&id);
    let _guard = lock.lock().await;
    let mut stream = owned(&hub, &receiver, &id)?;
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
    set_cursor_for_status(&hub, &id, previous, status).await?;
    hub.registry.put_stream(&stream).await?;
    tracing::info!(stream = %id, status = ?status, "stream status changed by its receiver");
    Ok(no_store(StatusCode::OK, status_out(&stream)))
}

/// Moves a stream's cursor for a status change (the caller holds the stream's lock).
async fn set_cursor_for_status(
    hub: &Hub,
    id: &str,
    previous: StreamStatus,
    status: StreamStatus,
) -> Result<(), Error> {
    let head = hub.log.head();
    let mut cursor = hub.cursors.get(id)?.unwrap_or_else(|| Cursor::at(head));
    match (previous, status) {
        // A disabled stream holds nothing: what happened meanwhile is skipped.
        (_, StreamStatus::Disabled) | (StreamStatus::Disabled, _) => {
            cursor.through = head;
            cursor.done_above.clear();
            cursor.outstanding.clear();
        }
        // Re-enabling a paused stream delivers what was held, up to the documented bound.
        (StreamStatus::Paused, StreamStatus::Enabled) => {
            let max = hub.config.delivery.paused_hold_max_events;
            if head.saturating_sub(cursor.through) > max {
                cursor.through = head - max;
                cursor.done_above.retain(|p| *p > head - max);
                cursor.outstanding.retain(|p| *p > head - max);
            }
        }
        _ => {}
    }
    hub.cursors.put(id, &cursor).await?;
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
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    change_subjects(hub, headers, body, true).await
}

/// `POST remove_subject_endpoint` (SSF §8.1.3.3): 204.
async fn remove_subject(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    change_subjects(hub, headers, body, false).await
}

async fn change_subjects(
    hub: Arc<Hub>,
    headers: HeaderMap,
    body: Bytes,
    add: bool,
) -> Result<Response, Error> {
    use crate::streams::DefaultSubjects;
    let receiver = authorize(&hub, &headers)?;
    let body = parse_object(&body)?;
    let id = stream_id_of(&body)?;
    let subject = parse_subject(&body)?;
    if let Some(v) = body.get("verified") {
        if !v.is_boolean() {
            return Err(Error::Invalid("`verified` must be a boolean".into()));
        }
    }
    let lock = hub.cursors.lock_for(&id);
    let _guard = lock.lock().await;
    let mut stream = owned(&hub, &receiver, &id)?;
    let key = subject.canonical_key();
    stream.subjects.retain(|s| s.canonical_key() != key);
    // The list holds exclusions under default_subjects ALL, inclusions under NONE.
    let listed = match hub.config.delivery.default_subjects {
        DefaultSubjects::All => !add,
        DefaultSubjects::None => add,
    };
    if listed {
        if stream.subjects.len() >= hub.config.delivery.max_subjects_per_stream {
            return Err(Error::Invalid(
                "this stream has as many subjects as the hub allows".into(),
            ));
        }
        stream.subjects.push(subject);
    }
    hub.registry.put_stream(&stream).await?;
    Ok(if add {
        (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    })
}

/// `POST verification_endpoint` (SSF §8.1.4.2): queues a verification SET echoing `state`.
async fn verify_stream(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let receiver = authorize(&hub, &headers)?;
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
    let lock = hub.cursors.lock_for(&id);
    let _guard = lock.lock().await;
    let mut stream = owned(&hub, &receiver, &id)?;
    let now = crate::unix_now_ms();
    let interval_ms = hub.config.delivery.min_verification_interval_secs * 1000;
    if stream.last_verification_ms > 0 && now < stream.last_verification_ms + interval_ms {
        return Err(Error::TooManyRequests);
    }
    stream.last_verification_ms = now;
    let payload = match state {
        Some(s) => json!({ "state": s }),
        None => json!({}),
    };
    let event = crate::outbound::control(&stream, EventKind::Verification, payload);
    if !hub.cursors.push_control(&id, event).await? {
        // MAX_CONTROL events already wait for a receiver that does not collect them.
        return Err(Error::TooManyRequests);
    }
    hub.registry.put_stream(&stream).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /ssf/poll/{stream_id}` (RFC 8936).
async fn poll_stream(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(stream_id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let receiver = authorize(&hub, &headers)?;
    let stream = owned(&hub, &receiver, &stream_id)?;
    if !stream.delivery.is_poll() {
        return Err(Error::NotFound);
    }
    let req = crate::delivery::poll::parse_request(&body).map_err(|e| Error::Invalid(e.into()))?;
    let resp = crate::delivery::poll::poll(&hub, &stream, req)
        .await
        .map_err(|e| match e {
            crate::delivery::poll::PollError::Gone => Error::NotFound,
            e => Error::Internal(e.to_string()),
        })?;
    Ok(no_store(
        StatusCode::OK,
        serde_json::to_value(resp).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

#[derive(Debug, Deserialize)]
struct ReceiverIn {
    name: String,
    audience: String,
}

/// `POST /admin/receivers`: registers a receiver and returns its credential, once.
async fn create_receiver(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    crate::http::require_admin(&hub, &headers)?;
    let input: ReceiverIn = serde_json::from_slice(&body)
        .map_err(|_| Error::Invalid("expected {\"name\": ..., \"audience\": ...}".into()))?;
    if input.name.trim().is_empty() || input.audience.trim().is_empty() {
        return Err(Error::Invalid(
            "`name` and `audience` must not be empty".into(),
        ));
    }
    let (receiver, token) = hub
        .registry
        .add_receiver(&input.name, &input.audience)
        .await?;
    tracing::info!(receiver = %receiver.id, "receiver registered");
    Ok(no_store(
        StatusCode::CREATED,
        json!({ "receiver_id": receiver.id, "name": receiver.name, "audience": receiver.audience, "token": token }),
    ))
}

/// `GET /admin/receivers`: receivers without their credential hashes.
async fn list_receivers(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    crate::http::require_admin(&hub, &headers)?;
    let list: Vec<Value> = hub
        .registry
        .receivers()?
        .into_iter()
        .map(|r| json!({ "receiver_id": r.id, "name": r.name, "audience": r.audience, "revoked": r.revoked }))
        .collect();
    Ok(no_store(StatusCode::OK, Value::Array(list)))
}

/// `DELETE /admin/receivers/{id}`: revokes the receiver's credential.
async fn revoke_receiver(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    crate::http::require_admin(&hub, &headers)?;
    if hub.registry.revoke_receiver(&id).await? {
        // A revoked receiver gets nothing more: its streams are disabled (they hold nothing),
        // which stops push delivery to its endpoints at once.
        for mut stream in hub.registry.streams_of(&id)? {
            let lock = hub.cursors.lock_for(&stream.stream_id);
            let _guard = lock.lock().await;
            let previous = stream.status;
            stream.status = StreamStatus::Disabled;
            stream.reason = Some("receiver credential revoked".into());
            set_cursor_for_status(&hub, &stream.stream_id, previous, StreamStatus::Disabled)
                .await?;
            hub.registry.put_stream(&stream).await?;
        }
        tracing::info!(receiver = %id, "receiver credential revoked");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Error::NotFound)
    }
}

/// `POST /admin/keys/rotate` `{"alg": "ES256"|"RS256"}`: publishes a new key now; it signs
/// after `signing.activation_delay_secs`.
async fn rotate_keys(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    crate::http::require_admin(&hub, &headers)?;
    let body = if body.is_empty() {
        Map::new()
    } else {
        parse_object(&body)?
    };
    let alg = match body.get("alg") {
        None => hub.default_alg,
        Some(Value::String(a)) => {
            crate::sign::SignAlg::parse(a).map_err(|e| Error::Invalid(e.to_string()))?
        }
        Some(_) => return Err(Error::Invalid("`alg` must be ES256 or RS256".into())),
    };
    let (kid, activate_at) = hub
        .keys
        .rotate(alg)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(no_store(
        StatusCode::OK,
        json!({ "kid": kid, "alg": alg.name(), "activate_at": activate_at }),
    ))
}

/// `GET /admin/streams`: every stream with its owner, status and reason, for operators.
async fn list_all_streams(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    crate::http::require_admin(&hub, &headers)?;
    let all: Vec<Value> = hub
        .registry
        .streams()?
        .iter()
        .map(|s| {
            let mut v = config_out(&hub, s);
            v["receiver_id"] = json!(s.receiver_id);
            v["status"] = json!(s.status);
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
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    crate::http::require_admin(&hub, &headers)?;
    hub.registry.stream(&id)?.ok_or(Error::NotFound)?;
    Ok(no_store(
        StatusCode::OK,
        Value::Array(hub.cursors.dead_letters(&id)?),
    ))
}
