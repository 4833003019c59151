//! Operator endpoints: the log itself (`GET /events`), Prometheus metrics, liveness and
//! readiness. Reads only; everything that changes state lives with its stage. Metrics name
//! sources and show traffic, so on the main listener they need a bearer token;
//! [`metrics_routes`] serves them without one on a listener of their own
//! (`http.metrics_listen`).

use axum::extract::{FromRef, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;

use crate::config::Secret;
use crate::error::Error;
use crate::http::{Admin, AdminToken};
use crate::log::Log;

/// What the operator endpoints read.
#[derive(Debug, Clone)]
pub struct Ops {
    pub log: Log,
    pub admin: AdminToken,
    /// Taking the handle installs the process's recorder, so build this before any traffic.
    pub metrics: PrometheusHandle,
    /// What `GET /metrics` requires: `http.metrics_token`, or the admin token.
    pub metrics_token: Secret,
}

impl FromRef<Ops> for AdminToken {
    fn from_ref(ops: &Ops) -> AdminToken {
        ops.admin.clone()
    }
}

pub fn routes(ops: Ops) -> Router {
    Router::new()
        .route("/events", get(list_events))
        .route("/metrics", get(get_metrics))
        // Liveness: the process serves HTTP. Readiness: it can also keep what it accepts.
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(ops)
}

/// `GET /readyz`: 200 while the log can make appends durable, else 503 with the reason (a
/// load balancer then sends ingest elsewhere; `/healthz` stays 200, so nothing restarts a hub
/// that is only waiting for its brokers).
async fn ready(State(ops): State<Ops>) -> Response {
    match ops.log.readiness() {
        Ok(()) => "ready".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
            .into_response(),
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
    _: Admin,
    State(ops): State<Ops>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let Query(q) =
        query.map_err(|_| Error::BadQuery("since and limit must be non-negative integers"))?;
    if q.limit == 0 {
        return Err(Error::BadQuery("limit must be at least 1"));
    }
    let page = ops.log.page(q.since, q.limit.min(MAX_EVENTS_PAGE)).await?;
    let next = page.last().map_or(q.since, |(p, _)| *p);
    // An undecodable record (logged by the journal) is stepped over, not served as an error.
    let events: Vec<_> = page.iter().filter_map(|(_, r)| r.as_deref()).collect();
    // `earliest` tells a reader whose `since` is older that retention removed the positions
    // from `since + 1` to `earliest - 1`.
    let body = json!({ "events": events, "next": next, "head": ops.log.head(),
        "earliest": ops.log.earliest() });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// `GET /metrics` with `Authorization: Bearer <metrics token>`: Prometheus text exposition.
async fn get_metrics(State(ops): State<Ops>, headers: HeaderMap) -> Result<Response, Error> {
    let token = crate::http::bearer(&headers)?;
    if !ops.metrics_token.matches(token.as_bytes()) {
        return Err(Error::WrongCredential);
    }
    Ok(render(&ops.metrics))
}

fn render(metrics: &PrometheusHandle) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
        .into_response()
}

/// The routes of the metrics listener (`http.metrics_listen`): `GET /metrics` without
/// authentication, for a scraper on a private network, and nothing else.
pub fn metrics_routes(metrics: PrometheusHandle) -> Router {
    Router::new().route("/metrics", get(move || async move { render(&metrics) }))
}
