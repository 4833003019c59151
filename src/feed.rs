//! Live websocket feeds (a hub extension; websockets are not part of SSF): `GET /feed` streams
//! normalized events to SOC tools, `GET /revocations/ws` streams revocation deltas to sidecars.
//! Both replay from `since=POSITION`, then follow live without a gap or a duplicate. A slow
//! client never slows ingest or other clients: live frames go through a bounded broadcast ring,
//! and a client that falls behind it gets a `cut_off` frame naming its last position and is
//! closed, so it can reconnect with `since` and lose nothing. A client that asks for positions
//! retention removed gets a `skipped` frame naming them, then everything from the earliest kept.
//!
//! No client can make a socket costly: incoming messages and frames are capped at a few KiB
//! (clients only answer pings and close), sockets are capped per credential and in total, a
//! client that sends nothing (not even a pong) for `feed.idle_timeout_secs` is closed, and so is
//! one that does not take a frame within `feed.write_timeout_secs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::FeedConfig;
use crate::error::Error;
use crate::http::{Admin, AdminToken, Principal, Reader, Visible};
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
    limits: Arc<Limits>,
    /// Wakes the pump when a client subscribes to the events ring.
    watching: Arc<tokio::sync::Notify>,
}

/// What one socket may cost, and the sockets open now (by credential).
#[derive(Debug)]
struct Limits {
    config: FeedConfig,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by: HashMap<Principal, usize>,
}

/// One open socket's place under the caps; given back when dropped (the socket closed, or the
/// upgrade never happened).
#[derive(Debug)]
struct Slot {
    limits: Arc<Limits>,
    principal: Principal,
}

impl Limits {
    /// A slot for `principal`, unless it already holds `max_sockets_per_credential` sockets or
    /// the hub holds `max_sockets`.
    fn take(self: &Arc<Self>, principal: &Principal) -> Result<Slot, Error> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let held = open.by.get(principal).copied().unwrap_or(0);
        if held >= self.config.max_sockets_per_credential {
            return Err(Error::Limit(format!(
                "this credential already holds {held} websockets \
                 (feed.max_sockets_per_credential); close one first"
            )));
        }
        if open.total >= self.config.max_sockets {
            return Err(Error::Unavailable(
                "the hub holds as many websockets as it allows (feed.max_sockets); retry later"
                    .into(),
            ));
        }
        open.total += 1;
        *open.by.entry(principal.clone()).or_default() += 1;
        Ok(Slot {
            limits: self.clone(),
            principal: principal.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                open.by.remove(&self.principal);
            }
        }
    }
}

impl Feeds {
    /// Rings of `feed.ring_capacity` items each; subscribes to `revocations`.
    pub fn new(
        config: FeedConfig,
        log: Log,
        revocations: Arc<Revocations>,
        closing: CancellationToken,
        admin: AdminToken,
        registry: Registry,
    ) -> Feeds {
        let capacity = config.ring_capacity;
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
            limits: Arc::new(Limits {
                config,
                open: Mutex::default(),
            }),
            watching: Arc::default(),
        }
    }

    /// Takes `principal`'s slot and sets the socket limits on the upgrade.
    fn admit(
        &self,
        principal: &Principal,
        ws: WebSocketUpgrade,
    ) -> Result<(Slot, WebSocketUpgrade), Error> {
        let slot = self.limits.take(principal)?;
        let c = &self.limits.config;
        // Clients send only pongs and close frames: a few KiB is plenty, and 64 MiB (the
        // library default) per socket is an invitation. Outgoing frames are not limited by
        // these; each send flushes, so a socket buffers at most the frame being written.
        let ws = ws
            .max_message_size(c.max_message_bytes)
            .max_frame_size(c.max_frame_bytes)
            .read_buffer_size(c.max_frame_bytes.max(4096))
            .write_buffer_size(16 << 10);
        Ok((slot, ws))
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
        // Nobody watching: nothing to publish (a client that connects later replays from the
        // log), and no wake-up per record until someone is.
        if feeds.events.receiver_count() == 0 {
            after = log.head();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = feeds.watching.notified() => {}
            }
            continue;
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
    let (slot, ws) = feeds.admit(&Principal::Admin, ws)?;
    let since = params.since.unwrap_or_else(|| feeds.log.head());
    let live = feeds.events.subscribe();
    feeds.watching.notify_one();
    Ok(ws.on_upgrade(move |socket| async move {
        metrics::gauge!("ssf_hub_ws_clients", "feed" => "events").increment(1.0);
        follow(socket, feeds, since, filter, live, Source::Events, &slot).await;
        metrics::gauge!("ssf_hub_ws_clients", "feed" => "events").decrement(1.0);
    }))
}

/// `GET /revocations/ws?since=` (receiver or admin token).
async fn get_revocations_ws(
    Reader(principal): Reader,
    Visible(bound): Visible,
    State(feeds): State<Feeds>,
    Query(params): Query<FeedParams>,
    ws: WebSocketUpgrade,
) -> Result<Response, Error> {
    let filter = Filter {
        bound,
        ..Filter::from(&params)?
    };
    let (slot, ws) = feeds.admit(&principal, ws)?;
    let since = params.since.unwrap_or_else(|| feeds.revocations.position());
    let live = feeds.deltas.subscribe();
    Ok(ws.on_upgrade(move |socket| async move {
        metrics::gauge!("ssf_hub_ws_clients", "feed" => "revocations").increment(1.0);
        follow(socket, feeds, since, filter, live, Source::Deltas, &slot).await;
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

/// Whether a socket's credential is still valid. A receiver's is re-read whenever the registry
/// changes (revoking a receiver is such a change), so a revoked credential's sockets close at
/// once instead of at their next reconnect; the admin token is configuration and stays valid.
struct Access {
    registry: Registry,
    receiver: Option<String>,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl Access {
    fn new(registry: &Registry, principal: &Principal) -> Access {
        Access {
            registry: registry.clone(),
            receiver: match principal {
                Principal::Admin => None,
                Principal::Receiver(id) => Some(id.clone()),
            },
            changes: registry.subscribe(),
        }
    }

    /// Reads the receiver now. A failed read counts as revoked: the client reconnects, and is
    /// let in again only with a valid credential.
    fn valid(&self) -> bool {
        let Some(id) = &self.receiver else {
            return true;
        };
        matches!(self.registry.receiver(id), Ok(Some(r)) if !r.revoked)
    }

    /// As [`Access::valid`], reading only if the registry changed since the last look: called
    /// before every frame, so a delta that follows a revocation is never sent.
    fn still_valid(&mut self) -> bool {
        if self.receiver.is_none() || !self.changes.has_changed().unwrap_or(false) {
            return true;
        }
        self.changes.borrow_and_update();
        self.valid()
    }

    /// Resolves when the registry changes (never, for the admin token).
    async fn changed(&mut self) {
        if self.receiver.is_none() || self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One client's socket, with the deadline every write must meet.
struct Conn {
    socket: WebSocket,
    feed: &'static str,
    write_timeout: Duration,
}

impl Conn {
    /// Sends one message; `false` if the client is gone or did not take it within the write
    /// timeout (the socket is then dropped, which closes it).
    async fn send(&mut self, message: Message) -> bool {
        match tokio::time::timeout(self.write_timeout, self.socket.send(message)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                closed(self.feed, "write_timeout");
                false
            }
        }
    }

    /// Sends one JSON text frame.
    async fn text(&mut self, frame: String) -> bool {
        metrics::counter!("ssf_hub_ws_frames_total", "feed" => self.feed).increment(1);
        self.send(Message::Text(frame.into())).await
    }

    /// Sends a close frame with `code` and `reason`, counting why.
    async fn close(&mut self, code: u16, reason: &'static str, label: &'static str) {
        closed(self.feed, label);
        let frame = axum::extract::ws::CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = self.send(Message::Close(Some(frame))).await;
    }
}

/// The close reason a revoked credential's sockets get (code 1008, policy violation).
const REVOKED: &str = "the credential was revoked";

/// Counts a socket the hub closed, by why.
fn closed(feed: &'static str, reason: &'static str) {
    metrics::counter!("ssf_hub_ws_closed_total", "feed" => feed, "reason" => reason).increment(1);
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
/// items at or below the last position sent are skipped, so nothing is sent twice. `slot` (whose
/// credential this socket is) is held for as long as the socket is open.
async fn follow(
    socket: WebSocket,
    feeds: Feeds,
    since: u64,
    filter: Filter,
    mut live: broadcast::Receiver<Arc<Item>>,
    source: Source,
    slot: &Slot,
) {
    let feed = source.label();
    let mut access = Access::new(&feeds.registry, &slot.principal);
    let config = &feeds.limits.config;
    let idle_timeout = Duration::from_secs(config.idle_timeout_secs);
    let mut conn = Conn {
        socket,
        feed,
        write_timeout: Duration::from_secs(config.write_timeout_secs),
    };
    let mut sent = since;
    // The credential may have been revoked between the request and the upgrade.
    if !access.valid() {
        conn.close(1008, REVOKED, "revoked").await;
        return;
    }
    // Replay what is stored, page by page, until caught up with what the ring will carry.
    loop {
        if !access.still_valid() {
            conn.close(1008, REVOKED, "revoked").await;
            return;
        }
        let earliest = source.earliest(&feeds);
        if sent + 1 < earliest {
            // Retention removed what the client asked for: say exactly what, then go on.
            let skipped = json!({"type": "skipped", "from": sent + 1, "through": earliest - 1,
                "reason": "removed by retention"});
            metrics::counter!("ssf_hub_ws_skipped_total", "feed" => feed).increment(1);
            if !conn.text(skipped.to_string()).await {
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
        if !wanted.is_empty() && !conn.text(batch_frame(&wanted)).await {
            return;
        }
        sent = last;
        if sent >= source.head(&feeds) {
            break;
        }
    }
    // Pings often enough that a live client answers several within the idle timeout.
    let mut ping = tokio::time::interval((idle_timeout / 3).min(Duration::from_secs(20)));
    ping.tick().await;
    let mut heard = Instant::now();
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
                let wanted: Vec<&Item> = fresh.iter().copied().filter(|i| filter.wants(i)).collect();
                if !access.still_valid() {
                    conn.close(1008, REVOKED, "revoked").await;
                    return;
                }
                // When lagged, what was already received in this batch still goes out, in
                // order, so the cut-off position is exact.
                if !wanted.is_empty() && !conn.text(batch_frame(&wanted)).await {
                    return;
                }
                if let Some(last) = fresh.last() {
                    sent = last.position;
                }
                if lagged {
                    metrics::counter!("ssf_hub_ws_cut_off_total", "feed" => feed).increment(1);
                    let cut_off = json!({"type": "cut_off", "position": sent,
                        "reason": "the client fell behind; reconnect with since=position"});
                    let _ = conn.text(cut_off.to_string()).await;
                    let _ = conn.send(Message::Close(None)).await;
                    return;
                }
            }
            _ = access.changed() => {
                if !access.valid() {
                    conn.close(1008, REVOKED, "revoked").await;
                    return;
                }
            }
            _ = feeds.closing.cancelled() => {
                conn.close(1001, "the hub is shutting down", "shutdown").await;
                return;
            }
            _ = ping.tick() => {
                if heard.elapsed() >= idle_timeout {
                    conn.close(1001, "idle: no frame or pong within feed.idle_timeout_secs", "idle").await;
                    return;
                }
                if !conn.send(Message::Ping(Vec::new().into())).await {
                    return;
                }
            }
            incoming = conn.socket.recv() => match incoming {
                // Clients only talk to close or answer pings. An error is a broken connection
                // or a protocol violation, an oversized message among them.
                Some(Ok(Message::Close(_))) | None => return,
                Some(Err(_)) => {
                    closed(feed, "protocol");
                    return;
                }
                Some(Ok(_)) => heard = Instant::now(),
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
