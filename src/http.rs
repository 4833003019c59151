//! The HTTP surface: router, request-id middleware, operator endpoints (`/events`, `/metrics`,
//! health) and the hub's public JWKS. Stage handlers live in their own modules (`ingest`).

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::app::Hub;
use crate::error::Error;
use crate::normalize::Record;

pub fn router(hub: Arc<Hub>) -> Router {
    // Transmitter endpoints live below the issuer's path, discovery at the RFC 8615 location
    // with the issuer's path appended (SSF §7.2.1).
    let issuer_path = reqwest::Url::parse(&hub.config.issuer)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let transmitter = if issuer_path.is_empty() {
        crate::manage::routes()
    } else {
        Router::new().nest(&issuer_path, crate::manage::routes())
    };
    Router::new()
        .route(
            &format!("/.well-known/ssf-configuration{issuer_path}"),
            get(crate::manage::get_configuration),
        )
        .route(&format!("{issuer_path}/jwks.json"), get(get_jwks))
        .merge(transmitter)
        .merge(crate::manage::admin_routes())
        .merge(crate::revocation::routes())
        .merge(crate::feed::routes())
        .route("/ingest/{source_id}", post(crate::ingest::ingest_set))
        .route("/events", get(list_events))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::from_fn(request_id))
        .with_state(hub)
}

/// Gives every request an id, in its tracing span and in the `x-request-id` response header,
/// so a client's report can be matched to the hub's log lines.
async fn request_id(req: Request, next: Next) -> Response {
    // Unique within the process and cheap: a counter, not a random UUID per request.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = format!(
        "{:x}-{:x}",
        process_epoch(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1; tokens in query
/// parameters are never accepted).
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, Error> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(Error::MissingCredential)
}

/// When this process started (ms), so request ids differ across restarts.
fn process_epoch() -> u64 {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(crate::unix_now_ms)
}

/// Checks `Authorization: Bearer <admin_token>` in constant time.
pub(crate) fn require_admin(hub: &Hub, headers: &HeaderMap) -> Result<(), Error> {
    if hub.admin_token.matches(bearer(headers)?.as_bytes()) {
        Ok(())
    } else {
        Err(Error::WrongCredential)
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    since: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// Largest page `GET /events` returns, whatever `limit` asks for.
pub const MAX_EVENTS_PAGE: usize = 1000;

/// `GET /events?since=POSITION&limit=N`: records after `since`, oldest first, with `next` (the
/// position to pass as `since` to continue) and `head` (the last durable position).
async fn list_events(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    require_admin(&hub, &headers)?;
    let Query(q) =
        query.map_err(|_| Error::BadQuery("since and limit must be non-negative integers"))?;
    if q.limit == 0 {
        return Err(Error::BadQuery("limit must be at least 1"));
    }
    let entries = hub.log.read(q.since, q.limit.min(MAX_EVENTS_PAGE)).await?;
    let mut next = q.since;
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut record: Record = serde_json::from_slice(&entry.record)
            .map_err(|e| crate::log::LogError::Storage(format!("decoding record: {e}")))?;
        record.position = entry.position;
        next = entry.position;
        events.push(record);
    }
    let body = json!({ "events": events, "next": next, "head": hub.log.head() });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// `GET /jwks.json`: the hub's public signing keys.
async fn get_jwks(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    let jwks: Value = hub.keys.jwks();
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        jwks.to_string(),
    )
}

/// `GET /metrics`: Prometheus text exposition.
async fn get_metrics(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        hub.metrics.render(),
    )
}
