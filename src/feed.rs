//! Live websocket feeds (a hub extension; websockets are not part of SSF): `GET /feed` streams
//! normalized events to SOC tools, `GET /revocations/ws` streams revocation deltas to sidecars.
//! Both replay from `since=POSITION`, then follow live without a gap or a duplicate. A slow
//! client never slows ingest or other clients: live frames go through a bounded broadcast ring,
//! and a client that falls behind it gets a `cut_off` frame naming its last position and is
//! closed, so it can reconnect with `since` and lose nothing. A client that asks for positions
//! retention removed gets a `skipped` frame naming them, then everything from the earliest kept.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::http::{Admin, AdminToken, Reader, Visible};
use crate::log::Log;
use crate::normalize::Record;
use crate::revocation::Revocations;
use crate::set::EventKind;
use crate::streams::Registry;

/// One item on a live feed: its log position, what filters look at, and its JSON.
#[derive(Debug)]
pub struct Item {
    pub position: u64,
    pub event_type: String,
    pub source: String,
    pub subject_key: String,
    /// The item as JSON text, serialized once: a frame to many clients copies it, never
    /// re-serializes it (per client and event that cost ~5 µs, which capped the event rate).
    pub json: Box<str>,
}

/// Most items coalesced into one frame: under load a frame carries many events, so per-frame
/// socket costs do not cap the event rate.
const MAX_BATCH: usize = 256;

/// The feeds: the log and the revocation state they replay from, the live rings they follow
/// (events fed by [`run`], deltas by the revocation fold as it stores them), and the
/// credentials that open them.
#[derive(Debug, Clone)]
pub struct Feeds {
    log: Log,
    revocations: Arc<Revocations>,
    events: broadcast::Sender<Arc<Item>>,
    deltas: broadcast::Sender<Arc<Item>>,
    /// Cancelled when the hub shuts down: upgraded connections are outside axum's graceful
    /// shutdown, so they watch this.
    closing: CancellationToken,
    admin: AdminToken,
    registry: Registry,
}

impl Feeds {
    /// Rings of `capacity` items each (`feed.ring_capacity`); subscribes to `revocations`.
    pub fn new(
        capacity: usize,
        log: Log,
        revocations: Arc<Revocations>,
        closing: CancellationToken,
        admin: AdminToken,
        registry: Registry,
    ) -> Feeds {
        let deltas = broadcast::channel(capacity.max(1)).0;
        let ring = deltas.clone();
        revocations.on_delta(move |d| {
            // Nobody watching: nothing to serialize (a client that connects later replays).
            if ring.receiver_count() > 0 {
                let _ = ring.send(Arc::new(delta_item(d)));
            }
        });
        Feeds {
            log,
            revocations,
            events: broadcast::channel(capacity.max(1)).0,
            deltas,
            closing,
            admin,
            registry,
        }
    }
}

impl FromRef<Feeds> for AdminToken {
    fn from_ref(f: &Feeds) -> AdminToken {
        f.admin.clone()
    }
}

impl FromRef<Feeds> for Registry {
    fn from_ref(f: &Feeds) -> Registry {
        f.registry.clone()
    }
}

pub fn event_item(record: &Record) -> Item {
    Item {
        position: record.position,
        event_type: record.event_type.clone(),
        source: record.source.clone(),
        subject_key: record.subject_key.clone(),
        // The raw SET stays in the log for audit; the feed carries the normalized event.
        json: {
            let mut v = serde_json::to_value(record).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.remove("set");
            }
            v.to_string().into()
        },
    }
}

pub fn delta_item(delta: &crate::state::Delta) -> Item {
    Item {
        position: delta.position,
        event_type: delta.cause.event_type.clone(),
        source: delta.cause.source.clone(),
        subject_key: delta.subject_key.clone(),
        json: serde_json::to_string(delta)
            .unwrap_or_else(|_| "null".into())
            .into(),
    }
}

/// Publishes every new log record on the events ring until `shutdown`.
#[tracing::instrument(name = "feed_pump", skip_all)]
pub async fn run(feeds: Feeds, shutdown: CancellationToken) {
    let log = &feeds.log;
    let mut head = log.subscribe();
    let mut after = log.head();
    loop {
        head.borrow_and_update();
        // Nobody watching: nothing to publish (a client that connects later replays from the log).
        if feeds.events.receiver_count() == 0 {
            after = log.head();
        }
        loop {
            let page = match log.page(after, 1000).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "reading the log failed");
                    break;
                }
            };
            let Some(&(last, _)) = page.last() else {
                break;
            };
            for record in page.iter().filter_map(|(_, r)| r.as_ref()) {
                // No receivers is not an error: nobody is watching right now.
                let _ = feeds.events.send(Arc::new(event_item(record)));
            }
            after = last;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = head.changed() => {}
        }
    }
}

pub fn routes(feeds: Feeds) -> Router {
    Router::new()
        .route("/feed", get(get_feed))
        .route("/revocations/ws", get(get_revocations_ws))
        .with_state(feeds)
}

/// Filters of `GET /feed`.
#[derive(Debug, Default, Deserialize)]
pub struct FeedParams {
    #[serde(default)]
    pub since: Option<u64>,
    /// Comma-separated event types (short names like `caep/session-revoked` or URIs).
    #[serde(default)]
    pub types: Option<String>,
    /// Comma-separated source ids.
    #[serde(default)]
    pub sources: Option<String>,
    /// Only this canonical subject key.
    #[serde(default)]
    pub subject_key: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Filter {
    types: Vec<String>,
    sources: Vec<String>,
    subject_key: Option<String>,
    /// A bound credential's bindings: only deltas about subjects they cover.
    bound: Vec<crate::streams::Binding>,
}

impl Filter {
    fn from(p: &FeedParams) -> Result<Filter, Error> {
        let split = |s: &Option<String>| -> Vec<String> {
            s.as_deref()
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|x| !x.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let types = split(&p.types)
            .iter()
            .map(|t| {
                EventKind::parse_name(t)
                    .map(EventKind::uri)
                    .or_else(|| t.contains("://").then(|| t.clone()))
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "unknown event type in `types`: {}",
                            crate::plain(t, 64)
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            types,
            sources: split(&p.sources),
            subject_key: p.subject_key.clone(),
            bound: Vec::new(),
        })
    }

    fn wants(&self, item: &Item) -> bool {
        (self.types.is_empty() || self.types.contains(&item.event_type))
            && (self.sources.is_empty() || self.sources.contains(&item.source))
            && self
                .subject_key
                .as_ref()
                .is_none_or(|k| *k == item.subject_key)
            && (self.bound.is_empty() || self.covers(item))
    }

    /// Whether a bound credential may see the item's subject (read back from its JSON: only
    /// bound clients pay for that).
    fn covers(&self, item: &Item) -> bool {
        serde_json::from_str::<Value>(&item.json)
            .ok()
            .and_then(|v| crate::set::Subject::parse(&v["subject"]).ok())
            .is_some_and(|s| crate::streams::visible(&self.bound, &s))
    }
}

/// `GET /feed?since=&types=&sources=&subject_key=` (admin token).
async fn get_feed(
    _: Admin,
    State(feeds): State<Feeds>,
    Query(params): Query<FeedParams>,
    ws: WebSocketUpgrade,
) -> Result<Response, Error> {
    let filter = Filter::from(&params)?;
    let since = params.since.unwrap_or_else(|| feeds.log.head());
    let live = feeds.events.subscribe();
    Ok(ws.on_upgrade(move |socket| async move {
        metrics::gauge!("ssf_hub_ws_clients", "feed" => "events").increment(1.0);
        follow(socket, feeds, since, filter, live, Source::Events).await;
        metrics::gauge!("ssf_hub_ws_clients", "feed" => "events").decrement(1.0);
    }))
}

/// `GET /revocations/ws?since=` (receiver or admin token).
async fn get_revocations_ws(
    _: Reader,
    Visible(bound): Visible,
    State(feeds): State<Feeds>,
    Query(params): Query<FeedParams>,
    ws: WebSocketUpgrade,
) -> Result<Response, Error> {
    let filter = Filter {
        bound,
        ..Filter::from(&params)?
    };
    let since = params.since.unwrap_or_else(|| feeds.revocations.position());
    let live = feeds.deltas.subscribe();
    Ok(ws.on_upgrade(move |socket| async move {
        metrics::gauge!("ssf_hub_ws_clients", "feed" => "revocations").increment(1.0);
        follow(socket, feeds, since, filter, live, Source::Deltas).await;
        metrics::gauge!("ssf_hub_ws_clients", "feed" => "revocations").decrement(1.0);
    }))
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Events,
    Deltas,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Events => "events",
            Source::Deltas => "revocations",
        }
    }

    /// Stored items after `after`, for replay.
    async fn replay(self, feeds: &Feeds, after: u64) -> Result<Vec<Item>, String> {
        match self {
            Source::Events => {
                let page = feeds
                    .log
                    .page(after, 1000)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(page
                    .iter()
                    .filter_map(|(_, r)| r.as_deref().map(event_item))
                    .collect())
            }
            Source::Deltas => {
                let deltas = feeds
                    .revocations
                    .deltas_after(after, 1000)
                    .map_err(|e| e.to_string())?;
                Ok(deltas
                    .iter()
                    .filter_map(|v| serde_json::from_value::<crate::state::Delta>(v.clone()).ok())
                    .map(|d| delta_item(&d))
                    .collect())
            }
        }
    }

    /// The earliest position retention still keeps.
    fn earliest(self, feeds: &Feeds) -> u64 {
        match self {
            Source::Events => feeds.log.earliest(),
            Source::Deltas => feeds.revocations.earliest(),
        }
    }

    fn head(self, feeds: &Feeds) -> u64 {
        match self {
            Source::Events => feeds.log.head(),
            Source::Deltas => feeds.revocations.position(),
        }
    }
}

/// Sends one frame; `false` if the client is gone.
async fn send(socket: &mut WebSocket, frame: String, feed: &'static str) -> bool {
    metrics::counter!("ssf_hub_ws_frames_total", "feed" => feed).increment(1);
    socket.send(Message::Text(frame.into())).await.is_ok()
}

/// `{"type":"events","position":N,"items":[...]}`, assembled from the items' JSON text.
fn batch_frame(items: &[&Item]) -> String {
    let position = items.last().map(|i| i.position).unwrap_or(0);
    let len: usize = items.iter().map(|i| i.json.len() + 1).sum();
    let mut frame = String::with_capacity(len + 64);
    frame.push_str("{\"type\":\"events\",\"position\":");
    frame.push_str(&position.to_string());
    frame.push_str(",\"items\":[");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            frame.push(',');
        }
        frame.push_str(&item.json);
    }
    frame.push_str("]}");
    frame
}

/// Replays from `since`, then forwards live items, coalescing whatever is waiting into one
/// frame. `live` was subscribed before the replay started, so nothing falls between the two;
/// items at or below the last position sent are skipped, so nothing is sent twice.
async fn follow(
    mut socket: WebSocket,
    feeds: Feeds,
    since: u64,
    filter: Filter,
    mut live: broadcast::Receiver<Arc<Item>>,
    source: Source,
) {
    let feed = source.label();
    let mut sent = since;
    // Replay what is stored, page by page, until caught up with what the ring will carry.
    loop {
        let earliest = source.earliest(&feeds);
        if sent + 1 < earliest {
            // Retention removed what the client asked for: say exactly what, then go on.
            let skipped = json!({"type": "skipped", "from": sent + 1, "through": earliest - 1,
                "reason": "removed by retention"});
            metrics::counter!("ssf_hub_ws_skipped_total", "feed" => feed).increment(1);
            if !send(&mut socket, skipped.to_string(), feed).await {
                return;
            }
            sent = earliest - 1;
        }
        let items = match source.replay(&feeds, sent).await {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "feed replay failed");
                return;
            }
        };
        let Some(last) = items.last().map(|i| i.position) else {
            break;
        };
        let wanted: Vec<&Item> = items.iter().filter(|i| filter.wants(i)).collect();
        if !wanted.is_empty() && !send(&mut socket, batch_frame(&wanted), feed).await {
            return;
        }
        sent = last;
        if sent >= source.head(&feeds) {
            break;
        }
    }
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    ping.tick().await;
    loop {
        tokio::select! {
            received = live.recv() => {
                let mut batch = Vec::new();
                let mut lagged = false;
                match received {
                    Ok(item) => batch.push(item),
                    Err(broadcast::error::RecvError::Lagged(_)) => lagged = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                while !lagged && batch.len() < MAX_BATCH {
                    match live.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                        Err(_) => break,
                    }
                }
                let fresh: Vec<&Item> = batch
                    .iter()
                    .map(|i| &**i)
                    .filter(|i| i.position > sent)
                    .collect();
                if lagged {
                    // What was already received in this batch still goes out, in order, so
                    // the cut-off position is exact.
                    let wanted: Vec<&Item> = fresh.iter().copied().filter(|i| filter.wants(i)).collect();
                    if !wanted.is_empty() && !send(&mut socket, batch_frame(&wanted), feed).await {
                        return;
                    }
                    if let Some(last) = fresh.last() {
                        sent = last.position;
                    }
                    metrics::counter!("ssf_hub_ws_cut_off_total", "feed" => feed).increment(1);
                    let cut_off = json!({"type": "cut_off", "position": sent,
                        "reason": "the client fell behind; reconnect with since=position"});
                    let _ = send(&mut socket, cut_off.to_string(), feed).await;
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                let wanted: Vec<&Item> = fresh.iter().copied().filter(|i| filter.wants(i)).collect();
                if !wanted.is_empty() && !send(&mut socket, batch_frame(&wanted), feed).await {
                    return;
                }
                if let Some(last) = fresh.last() {
                    sent = last.position;
                }
            }
            _ = feeds.closing.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                // Clients only talk to close or answer pings.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_frame_is_the_items_json_in_order() {
        let item = |position: u64, json: &str| Item {
            position,
            event_type: String::new(),
            source: String::new(),
            subject_key: String::new(),
            json: json.into(),
        };
        let (a, b) = (item(7, r#"{"x":"a\"b"}"#), item(9, "{\"y\":[1,2]}"));
        let frame: Value = serde_json::from_str(&batch_frame(&[&a, &b])).expect("valid JSON");
        assert_eq!(
            frame,
            json!({"type": "events", "position": 9, "items": [{"x": "a\"b"}, {"y": [1, 2]}]})
        );
    }
}
