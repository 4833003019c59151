//! Operator endpoints: the log itself (`GET /events`), Prometheus metrics and liveness. Reads
//! only; everything that changes state lives with its stage.

use axum::extract::{FromRef, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::error::Error;
use crate::http::{Admin, AdminToken};
use crate::log::Log;

/// What the operator endpoints read.
#[derive(Debug, Clone)]
pub struct Ops {
    pub log: Log,
    pub admin: AdminToken,
    /// Taking the handle installs the process's recorder, so build this before any traffic.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
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
        .route("/healthz", get(|| async { "ok" }))
        .with_state(ops)
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

/// `GET /metrics`: Prometheus text exposition.
async fn get_metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
}
