//! RFC 8935 push delivery: one worker per enabled push stream keeps a window of SETs in flight
//! (`delivery.push_max_in_flight`, or the stream's `max_in_flight`; 1 is strict log order),
//! each signed once, POSTed, and retried or dead-lettered on its own; the durable cursor moves
//! only over the contiguous prefix of settled positions. Transient failures (network, timeout,
//! 5xx, 429) are retried with exponential backoff and jitter, honouring `Retry-After`;
//! permanent refusals are dead-lettered, not retried; a stream that exhausts its budget is
//! paused with a stream-updated event and a reason the operator can read. With several
//! replicas, each pushes the streams it owns (`replicas`), from the shared cursor. Which HTTP
//! client (and so HTTP/1.1 or HTTP/2) is left to `clients`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::clients::{version_label, Clients};
use super::{pending, record_latency, Delivery};
use crate::config::DeliveryConfig;
use crate::guard::Guard;
use crate::outbound::mint_control;
use crate::set::events::StreamStatus;
use crate::set::SET_MEDIA_TYPE;
use crate::streams::Cursor;
use crate::streams::Stream;

/// How one push attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth retrying later; carries the server's `Retry-After`, if any.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Will not improve on retry (RFC 8935 §4): `invalid_request`, `invalid_issuer`,
    /// `invalid_audience`, other 4xx.
    Permanent {
        reason: String,
    },
}

/// Classifies a receiver's answer (digest §9 reactions).
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        400 => {
            let err = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("err").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| "unparsable 400".into());
            match err.as_str() {
                // The key may simply not be published or fetched yet; credentials may be
                // refreshed: both can heal, so they are retried within the budget.
                "invalid_key" | "authentication_failed" | "access_denied" => Outcome::Transient {
                    reason: format!("receiver answered {err}"),
                    retry_after,
                },
                _ => Outcome::Permanent {
                    reason: format!("receiver answered {}", crate::plain(&err, 40)),
                },
            }
        }
        401 | 403 | 408 | 429 | 500..=599 => Outcome::Transient {
            reason: format!("receiver answered HTTP {status}"),
            retry_after,
        },
        _ => Outcome::Permanent {
            reason: format!("receiver answered HTTP {status}"),
        },
    }
}

/// Backoff before retry `attempt` (0-based): exponential from `initial`, capped at `max`, with
/// full jitter; a server's `Retry-After` wins when it is longer, but never beyond `max`.
pub fn backoff(
    attempt: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = initial.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
    let cap = exp.min(max);
    let mut r = [0u8; 4];
    let _ = openssl::rand::rand_bytes(&mut r);
    let jittered = cap.mul_f64(0.5 + f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX) / 2.0);
    match retry_after {
        Some(ra) if ra > jittered => ra.min(max),
        _ => jittered,
    }
}

/// Sends one SET through the stream's client. IP-literal URLs bypass DNS, so the guard checks
/// them here.
pub async fn send(clients: &Clients, guard: &Guard, stream: &Stream, set: &str) -> Outcome {
    let client = clients.for_stream(stream);
    let Some(url) = stream.delivery.endpoint_url.as_deref() else {
        return Outcome::Permanent {
            reason: "push stream without endpoint_url".into(),
        };
    };
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(_) => {
            return Outcome::Permanent {
                reason: "endpoint_url is not a URL".into(),
            }
        }
    };
    if !guard.permits_url(&parsed) {
        return Outcome::Permanent {
            reason: "endpoint_url is an address the hub may not reach".into(),
        };
    }
    let mut req = client
        .post(parsed)
        .header(CONTENT_TYPE, SET_MEDIA_TYPE)
        .header(ACCEPT, "application/json")
        .body(set.to_owned());
    // The value as given, and nothing when unset (digest §14.2 #1).
    if let Some(auth) = &stream.delivery.authorization_header {
        if let Ok(v) = HeaderValue::from_str(auth) {
            req = req.header(AUTHORIZATION, v);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let version = version_label(resp.version());
            metrics::counter!("ssf_hub_push_http_version_total", "version" => version).increment(1);
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Error bodies are small; read at most 4 KiB of them.
            let body = if status == 400 {
                read_capped(resp, 4096).await
            } else {
                Vec::new()
            };
            classify(status, retry_after, &body)
        }
        Err(e) => Outcome::Transient {
            reason: if e.is_timeout() {
                "timed out".into()
            } else if e.is_connect() {
                "connection failed".into()
            } else {
                "request failed".into()
            },
            retry_after: None,
        },
    }
}

async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        out.extend_from_slice(&chunk);
        if out.len() >= cap {
            out.truncate(cap);
            break;
        }
    }
    out
}

/// Keeps one worker per enabled push stream until `shutdown`. A stream never has two: a
/// replaced worker is awaited before its successor starts, so order holds across restarts of
/// the worker.
#[tracing::instrument(name = "push_supervisor", skip_all)]
pub async fn run(d: Delivery, shutdown: CancellationToken) {
    let mut changes = d.registry.subscribe();
    let mut members = d.share.subscribe();
    let mut workers: HashMap<String, (CancellationToken, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut progress = tokio::time::interval(crate::streams::PUSH_PROGRESS_FLUSH);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Inactive streams (of both methods) are looked for a few times per timeout, at most once
    // a minute; the supervisor is the one delivery task that always runs.
    let sweep = Duration::from_millis(
        (d.config.inactivity_timeout_secs.saturating_mul(250)).clamp(500, 60_000),
    );
    let mut inactivity = tokio::time::interval(sweep);
    inactivity.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'supervise: loop {
        changes.borrow_and_update();
        let wanted: Vec<Stream> = match d.registry.streams() {
            Ok(all) => all
                .into_iter()
                .filter(|s| !s.delivery.is_poll() && s.status == StreamStatus::Enabled)
                .filter(|s| d.share.owns(&s.stream_id))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "reading streams failed");
                Vec::new()
            }
        };
        let stale: Vec<String> = workers
            .iter()
            .filter(|(id, (_, task))| {
                task.is_finished() || !wanted.iter().any(|s| &s.stream_id == *id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((stop, task)) = workers.remove(&id) {
                stop.cancel();
                let _ = task.await;
            }
        }
        for s in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = workers.entry(s.stream_id) {
                let stop = shutdown.child_token();
                let task = tokio::spawn(worker(d.clone(), slot.key().clone(), stop.clone()));
                slot.insert((stop, task));
            }
        }
        // Until the set of streams (or of replicas) changes: make the workers' staged progress
        // durable.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'supervise,
                _ = changes.changed() => break,
                _ = changed(&mut members) => break,
                _ = progress.tick() => flush_progress(&d).await,
                _ = inactivity.tick() => d.pause_inactive().await,
            }
        }
    }
    for (_, (stop, task)) in workers {
        stop.cancel();
        let _ = task.await;
    }
    flush_progress(&d).await;
}

/// Resolves when the replicas change; never on one machine.
async fn changed(members: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    if let Some(m) = members {
        if m.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

async fn flush_progress(d: &Delivery) {
    if let Err(e) = d.cursors.flush_staged().await {
        tracing::error!(error = %e, "flushing push progress failed");
    }
}

/// The stream as stored now, if it is still an enabled push stream.
fn current(d: &Delivery, stream_id: &str) -> Option<Stream> {
    match d.registry.stream(stream_id) {
        Ok(Some(s)) if !s.delivery.is_poll() && s.status == StreamStatus::Enabled => Some(s),
        _ => None,
    }
}

/// How many SETs `stream` may have in flight: its own `max_in_flight`, within the hub's
/// `delivery.push_max_in_flight`.
pub fn window(config: &DeliveryConfig, stream: &Stream) -> u32 {
    let max = config.push_max_in_flight.max(1);
    stream.max_in_flight.unwrap_or(max).clamp(1, max)
}

/// What wakes a push worker: new records, queued control events, registry changes.
struct Wake {
    head: tokio::sync::watch::Receiver<u64>,
    control: tokio::sync::watch::Receiver<u64>,
    changes: tokio::sync::watch::Receiver<u64>,
}

/// Delivers one stream until it is stopped, paused, disabled or deleted. Each pass runs one
/// configuration of the stream; a change (URL, credential, subjects, window) starts a new one.
#[tracing::instrument(name = "push_worker", skip(d, stop))]
async fn worker(d: Delivery, stream_id: String, stop: CancellationToken) {
    let mut wake = Wake {
        head: d.log.subscribe(),
        control: d.cursors.subscribe_control(),
        changes: d.registry.subscribe(),
    };
    let mut refused_in_a_row = 0u32;
    loop {
        wake.changes.borrow_and_update();
        let version = d.registry.version();
        let Some(stream) = current(&d, &stream_id) else {
            return;
        };
        let Ok(pass) = Window::open(&d, stream, version) else {
            return;
        };
        if pass
            .run(&mut wake, &stop, &mut refused_in_a_row)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The worker must stop (shut down, or the stream left the enabled state).
#[derive(Debug)]
struct Stop;

fn fail<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Stop {
    move |e| {
        tracing::error!(error = %e, "{what}");
        Stop
    }
}

/// How one SET's delivery ended.
#[derive(Debug)]
enum Settled {
    Delivered,
    /// Refused for good (RFC 8935 §4 reactions) and dead-lettered.
    Refused(String),
    /// Transient failures used up the retry budget.
    GaveUp(String),
    /// Could not be signed, or the worker is stopping.
    Stopped,
}

/// The SETs of one stream in flight, up to its window, each its own task (so signing spreads
/// over the cores), retried and dead-lettered on its own. The durable cursor moves only over
/// the contiguous prefix of settled positions: everything at or below the lowest position in
/// flight minus one is settled or not for this stream; settled positions above it are kept as
/// `done_above`. A crash therefore redelivers (with the same `jti`) and never skips.
struct Window<'a> {
    d: &'a Delivery,
    stream: Arc<Stream>,
    /// The registry version read before loading `stream`.
    version: u64,
    size: usize,
    budget_ms: u64,
    /// How far the log has been looked at: `through` and `done_above` as for a cursor, and the
    /// positions in flight as `outstanding`, so the scan steps over them.
    scan: Cursor,
    tasks: tokio::task::JoinSet<(u64, Settled)>,
    /// Settled positions above the durable floor (bounded: see `room`).
    settled: std::collections::BTreeSet<u64>,
    /// Settled since the cursor was last staged.
    unsaved: Vec<u64>,
    dirty: bool,
    /// The floor the stored cursor has from this pass.
    saved_floor: u64,
    staged_at: tokio::time::Instant,
}

/// How often, at most, a stream stages its cursor (a read, a merge and a write of the stored
/// cursor: once per SET would cost more than the SET at low rates). The supervisor makes
/// staged cursors durable every [`crate::streams::PUSH_PROGRESS_FLUSH`].
const STAGE_EVERY: Duration = Duration::from_millis(10);
/// Settled positions a stream may hold above a SET still in flight, per window slot: past it,
/// a SET stuck in retries holds the stream rather than grow its cursor without bound.
const AHEAD_PER_SLOT: usize = 64;

impl<'a> Window<'a> {
    fn open(d: &'a Delivery, stream: Stream, version: u64) -> Result<Window<'a>, Stop> {
        let mut scan = d
            .cursors
            .get(&stream.stream_id)
            .map_err(fail("reading cursor failed"))?
            .ok_or(Stop)?;
        scan.control.clear();
        // Handed to a poller before the stream became a push stream: settled, as a scan
        // has always treated them.
        for p in std::mem::take(&mut scan.outstanding) {
            scan.mark_done(p);
        }
        let scan_through = scan.through;
        Ok(Window {
            d,
            size: window(&d.config, &stream) as usize,
            budget_ms: stream
                .latency_budget_ms
                .unwrap_or(d.config.latency_budget_ms),
            stream: Arc::new(stream),
            version,
            scan,
            tasks: tokio::task::JoinSet::new(),
            settled: Default::default(),
            unsaved: Vec::new(),
            dirty: false,
            saved_floor: scan_through,
            staged_at: tokio::time::Instant::now(),
        })
    }

    /// Runs until the stream's configuration changes (`Ok`: start a new pass) or the worker
    /// must stop. Progress is staged on the way out either way; SETs still in flight are
    /// abandoned (their tasks abort with the `JoinSet`) and sent again by the next pass.
    async fn run(
        mut self,
        wake: &mut Wake,
        stop: &CancellationToken,
        refused_in_a_row: &mut u32,
    ) -> Result<(), Stop> {
        let outcome = self.deliver(wake, stop, refused_in_a_row).await;
        let staged = self.stage().await;
        outcome.and(staged)
    }

    async fn deliver(
        &mut self,
        wake: &mut Wake,
        stop: &CancellationToken,
        refused_in_a_row: &mut u32,
    ) -> Result<(), Stop> {
        let (mut more, mut control) = (true, true);
        loop {
            if control {
                wake.control.borrow_and_update();
                control = false;
                self.send_control(stop, refused_in_a_row).await?;
            }
            if more && self.room() > 0 {
                wake.head.borrow_and_update();
                more = self.fill(stop).await?;
            }
            if self.dirty && self.staged_at.elapsed() >= STAGE_EVERY {
                self.stage().await?;
            }
            let room = self.room() > 0;
            let stage_at = self.staged_at + STAGE_EVERY;
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(Stop),
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.settle(joined, refused_in_a_row).await?;
                    // Everything else that finished meanwhile, in the same wake-up.
                    while let Some(joined) = self.tasks.try_join_next() {
                        self.settle(joined, refused_in_a_row).await?;
                    }
                    more = true;
                }
                _ = wake.changes.changed() => {
                    // A PATCH or a status change applies from the next SET on.
                    if self.changed() {
                        return Ok(());
                    }
                }
                _ = wake.control.changed() => control = true,
                _ = wake.head.changed(), if room => more = true,
                _ = tokio::time::sleep_until(stage_at), if self.dirty => {}
            }
        }
    }

    /// Whether the stream's configuration (URL, credential, subjects, status) may have changed
    /// since it was loaded: cheap unless the registry changed at all.
    fn changed(&self) -> bool {
        self.d.registry.version() != self.version
            && current(self.d, &self.stream.stream_id).as_ref() != Some(&*self.stream)
    }

    /// Free window slots; none while too much is settled above a SET still in flight.
    fn room(&self) -> usize {
        if self.settled.len() >= self.size * AHEAD_PER_SLOT {
            return 0;
        }
        self.size.saturating_sub(self.tasks.len())
    }

    /// Everything at or below this is settled or not for the stream.
    fn floor(&self) -> u64 {
        match self.scan.outstanding.first() {
            Some(lowest) => self.scan.through.min(lowest - 1),
            None => self.scan.through,
        }
    }

    /// Starts SETs for the next pending records, as many as there is room for. Whether more
    /// records may be pending.
    async fn fill(&mut self, stop: &CancellationToken) -> Result<bool, Stop> {
        let (d, room) = (self.d, self.room());
        let (records, more) = pending(
            &d.log,
            "push",
            &self.stream,
            d.config.default_subjects,
            &mut self.scan,
            room,
        )
        .await
        .map_err(fail("reading the log failed"))?;
        // The scan may have stepped over positions this stream does not want.
        self.dirty |= self.floor() > self.saved_floor;
        for record in records {
            self.scan.outstanding.insert(record.position);
            let task = push_record(
                d.clone(),
                self.stream.clone(),
                record,
                stop.clone(),
                self.budget_ms,
            );
            self.tasks.spawn(task);
        }
        Ok(more)
    }

    async fn settle(
        &mut self,
        joined: Result<(u64, Settled), tokio::task::JoinError>,
        refused_in_a_row: &mut u32,
    ) -> Result<(), Stop> {
        let (position, settled) = joined.map_err(fail("a push task failed"))?;
        match settled {
            Settled::Delivered => *refused_in_a_row = 0,
            Settled::Refused(reason) => {
                *refused_in_a_row += 1;
                if *refused_in_a_row >= self.d.config.permanent_failure_budget {
                    let n = *refused_in_a_row;
                    self.done(position);
                    self.stage().await?;
                    let reason = format!("{n} SETs refused in a row: {reason}");
                    pause(self.d, &self.stream, &reason).await;
                    return Err(Stop);
                }
            }
            Settled::GaveUp(reason) => {
                self.stage().await?;
                pause(self.d, &self.stream, &reason).await;
                return Err(Stop);
            }
            Settled::Stopped => return Err(Stop),
        }
        self.done(position);
        Ok(())
    }

    fn done(&mut self, position: u64) {
        self.scan.outstanding.remove(&position);
        // Above what the scan has passed, it must not be found pending again.
        self.scan.mark_done(position);
        self.settled.insert(position);
        self.unsaved.push(position);
        self.dirty = true;
    }

    /// Merges progress into the stored cursor (see [`save`]).
    async fn stage(&mut self) -> Result<(), Stop> {
        if !self.dirty {
            return Ok(());
        }
        let floor = self.floor();
        let unsaved = std::mem::take(&mut self.unsaved);
        save(self.d, &self.stream, |c| {
            c.settle_through(floor);
            unsaved.iter().for_each(|p| c.mark_done(*p));
        })
        .await?;
        self.settled.retain(|p| *p > floor);
        self.saved_floor = floor;
        self.dirty = false;
        self.staged_at = tokio::time::Instant::now();
        Ok(())
    }

    /// Control SETs (verification, stream-updated) queued for the stream, one at a time before
    /// more events start.
    async fn send_control(
        &mut self,
        stop: &CancellationToken,
        refused_in_a_row: &mut u32,
    ) -> Result<(), Stop> {
        let d = self.d;
        let stream = &*self.stream;
        let queued = d
            .cursors
            .get(&stream.stream_id)
            .map_err(fail("reading cursor failed"))?
            .ok_or(Stop)?
            .control;
        for c in queued {
            let signer = d
                .minter
                .signer_for(stream)
                .map_err(fail("no signing key"))?;
            let set = mint_control(&signer, d.minter.issuer(), stream, &c)
                .map_err(fail("signing failed"))?;
            match attempt(d, stream, &set, stop).await {
                Settled::Delivered => *refused_in_a_row = 0,
                Settled::Refused(reason) => {
                    dead_letter(d, stream, &set, &reason);
                    *refused_in_a_row += 1;
                    if *refused_in_a_row >= d.config.permanent_failure_budget {
                        let n = *refused_in_a_row;
                        let reason = format!("{n} SETs refused in a row: {reason}");
                        pause(d, stream, &reason).await;
                        return Err(Stop);
                    }
                }
                Settled::GaveUp(reason) => {
                    pause(d, stream, &reason).await;
                    return Err(Stop);
                }
                Settled::Stopped => return Err(Stop),
            }
            save(d, stream, |cur| cur.control.retain(|x| x.jti != c.jti)).await?;
        }
        Ok(())
    }
}

/// One SET in flight: signs it (once per event, key and `aud`: see
/// [`crate::outbound::Minter::event`]) and pushes it until it settles.
async fn push_record(
    d: Delivery,
    stream: Arc<Stream>,
    record: Arc<crate::normalize::Record>,
    stop: CancellationToken,
    budget_ms: u64,
) -> (u64, Settled) {
    let position = record.position;
    let signed = d
        .minter
        .signer_for(&stream)
        .and_then(|signer| d.minter.event(&signer, &stream, &record));
    let set = match signed {
        Ok((_, set)) => set,
        Err(e) => {
            tracing::error!(error = %e, "signing failed");
            return (position, Settled::Stopped);
        }
    };
    let settled = attempt(&d, &stream, &set, &stop).await;
    match &settled {
        Settled::Delivered => record_latency("push", &record, budget_ms),
        Settled::Refused(reason) => dead_letter(&d, &stream, &set, reason),
        Settled::GaveUp(_) | Settled::Stopped => {}
    }
    (position, settled)
}

/// Applies `change` to the stored cursor under the stream's lock. Merging into what is stored
/// (rather than writing our copy) keeps a concurrent status change, such as a disable that
/// moves the cursor to the head, from being undone. Stops when the stream is gone.
async fn save(d: &Delivery, stream: &Stream, change: impl FnOnce(&mut Cursor)) -> Result<(), Stop> {
    let lock = d.cursors.lock_for(&stream.stream_id);
    let _guard = lock.lock().await;
    let mut stored = d
        .cursors
        .get(&stream.stream_id)
        .map_err(fail("reading cursor failed"))?
        .ok_or(Stop)?;
    change(&mut stored);
    stored.compact(d.log.head());
    d.cursors
        .stage(&stream.stream_id, &stored)
        .map_err(fail("saving cursor failed"))
}

/// Pushes one SET until it is delivered, refused for good, the retry budget runs out, or the
/// worker stops. Dead-lettering and pausing are left to the caller.
async fn attempt(d: &Delivery, stream: &Stream, set: &str, stop: &CancellationToken) -> Settled {
    let cfg = &d.config;
    let initial = Duration::from_millis(cfg.retry_initial_backoff_ms);
    let max = Duration::from_millis(cfg.retry_max_backoff_ms);
    let mut attempt = 0u32;
    loop {
        // A permit for the request itself, not for the backoff after it.
        let permit = tokio::select! {
            _ = stop.cancelled() => return Settled::Stopped,
            permit = d.requests.acquire() => permit,
        };
        let outcome = send(&d.clients, &d.guard, stream, set).await;
        drop(permit);
        let label = match &outcome {
            Outcome::Delivered => "delivered",
            Outcome::Transient { .. } => "transient",
            Outcome::Permanent { .. } => "permanent",
        };
        metrics::counter!("ssf_hub_push_attempts_total", "outcome" => label).increment(1);
        match outcome {
            Outcome::Delivered => {
                // A receiver taking SETs is alive: its stream is not inactive.
                d.registry.touch(&stream.stream_id);
                return Settled::Delivered;
            }
            Outcome::Permanent { reason } => return Settled::Refused(reason),
            Outcome::Transient {
                reason,
                retry_after,
            } => {
                attempt += 1;
                if attempt >= cfg.retry_budget {
                    return Settled::GaveUp(format!("delivery failed {attempt} times: {reason}"));
                }
                tracing::debug!(stream = %stream.stream_id, attempt, %reason, "push failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Settled::Stopped,
                    _ = tokio::time::sleep(backoff(attempt - 1, initial, max, retry_after)) => {}
                }
            }
        }
    }
}

fn dead_letter(d: &Delivery, stream: &Stream, set: &str, reason: &str) {
    metrics::counter!("ssf_hub_push_dead_letters_total").increment(1);
    tracing::warn!(stream = %stream.stream_id, %reason, "SET refused for good; dead-lettered");
    let record = json!({ "at_ms": crate::unix_now_ms(), "reason": reason, "set": set });
    if let Err(e) = d.cursors.dead_letter(
        &stream.stream_id,
        &record,
        d.config.max_dead_letters_per_stream,
    ) {
        tracing::error!(error = %e, "storing a dead letter failed");
    }
}

/// Pauses a stream on the hub's own initiative: announces it with a stream-updated SET sent
/// before the gate closes (queued for re-enable if it cannot be sent), then records the status
/// with an operator-visible reason (SSF §8.1.2, §8.1.5). Does nothing if, meanwhile, the stream
/// was deleted or its status changed.
pub async fn pause(d: &Delivery, stream: &Stream, reason: &str) {
    tracing::warn!(stream = %stream.stream_id, %reason, "pausing stream");
    let still = |s: &Stream| !s.delivery.is_poll() && s.status == StreamStatus::Enabled;
    match d
        .change_status(&stream.stream_id, StreamStatus::Paused, reason, still)
        .await
    {
        Ok(true) => metrics::counter!("ssf_hub_streams_paused_by_hub_total").increment(1),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "recording the pause failed"),
    }
}

/// Signs and pushes one control SET now, once; whether the receiver took it.
pub async fn send_control(
    d: &Delivery,
    stream: &Stream,
    control: &crate::streams::Control,
) -> bool {
    match d.minter.signer_for(stream) {
        Ok(signer) => match mint_control(&signer, d.minter.issuer(), stream, control) {
            Ok(set) => send(&d.clients, &d.guard, stream, &set).await == Outcome::Delivered,
            Err(_) => false,
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_rfc8935_reactions() {
        assert_eq!(classify(202, None, b""), Outcome::Delivered);
        for err in ["invalid_request", "invalid_issuer", "invalid_audience"] {
            let body = format!(r#"{{"err":"{err}","description":"x"}}"#);
            assert!(
                matches!(
                    classify(400, None, body.as_bytes()),
                    Outcome::Permanent { .. }
                ),
                "{err}"
            );
        }
        assert!(matches!(
            classify(400, None, br#"{"err":"invalid_key"}"#),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            classify(503, None, b""),
            Outcome::Transient { .. }
        ));
        assert!(matches!(classify(429, Some(Duration::from_secs(3)), b""),
            Outcome::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(3)));
        assert!(matches!(
            classify(404, None, b""),
            Outcome::Permanent { .. }
        ));
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 0..30 {
            let d = backoff(attempt, i, m, None);
            assert!(d <= m);
            let ceiling = i.saturating_mul(1 << attempt.min(20)).min(m);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
        }
        assert_eq!(
            backoff(0, i, m, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            backoff(0, i, m, Some(Duration::from_secs(3600))),
            m,
            "Retry-After is bounded"
        );
    }
}
