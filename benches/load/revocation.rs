//! Revocation state, decisions and websocket feeds. The hub runs on a `hub` runtime (with the bare
//! websocket servers that are its machine limits), every client on a `load` runtime; CAEP
//! session-revoked SETs, each for a new subject, are pushed over HTTP.
//! - A. Ingest 202 → delta on `/revocations/ws` (one receiver-token client), `RL_DELTA_RATE`
//!   (1,000) SETs/s open loop for 1 s + `RL_SECS` (10). Limit beside it: a bare
//!   tokio-tungstenite server sending a frame of the same size to one client at the same rate.
//! - B. Decisions over `RL_SUBJECTS` (1,000,000) subjects: a child process builds a bare `State`
//!   (bytes per subject) and times `State::decide`; the subjects are pushed to a hub (within
//!   `RL_BUILD_BUDGET_SECS`, 600); a child process starts a hub on that data (start time, the
//!   hub's "revocation state restored" line); then `POST /revocations/check` at `RL_CHECK_RATE`
//!   (10,000)/s open loop with random subjects, every answer checked, beside `GET /healthz` at
//!   the same rate on the same hub; the check again while ingesting 1,000 SETs/s.
//! - C. One event to `RL_CLIENTS` (1,000) `/feed` clients against a bare tokio-tungstenite
//!   broadcast of the same frame to as many clients, alternating, `RL_ROUNDS` (100) rounds.
//! - D. `RL_CLIENTS` `/feed` clients following `RL_FEED_RATE` (1,000) SETs/s for `RL_SECS`: every
//!   position exactly once, in order, none cut off, ingest on schedule, the last client at most
//!   1 s behind at p99; otherwise the rate is halved until it holds. Limit beside it: the bare
//!   server, which coalesces like the hub (what waits, at most 256 items, goes in one frame).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

use crate::support::drive::{closed_loop, job, open_loop, Job, Run};
use crate::support::hub::{self, metric, Api, Hub, ADMIN, SOURCE_ISS};
use crate::support::machine::{self as m, env_u64, mib, rss_kib, status_kib, Phase};
use crate::support::{fail, ms, progress, ratio, report, signed_us, us, Pct, PCT_HEADER};

/// Subject `u-k` is revoked from `BASE_TS + k % 1000` on.
const BASE_TS: u64 = 1_700_000_000;
const WARM_ROUNDS: usize = 5;

/// One run: the runtimes, the source key, and a counter for fresh subjects.
struct Ctx {
    hub_rt: Runtime,
    load: Runtime,
    signer: ssf_hub::sign::SetSigner,
    next: AtomicU64,
}

impl Ctx {
    /// A hub on `dir`, with one SET pushed if the log is empty (the bare servers copy it).
    fn start(&self, dir: &std::path::Path) -> Hub {
        let hub = Hub::start(&self.hub_rt, hub::config(dir, &self.signer.jwks()));
        if self.load.block_on(hub.head()) == 0 {
            self.push(&hub, 100.0, self.fresh(1));
        }
        hub
    }

    /// `n` SETs revoking fresh subjects `x-<k>`; subject and `jti` share the number.
    fn fresh(&self, n: u64) -> Arc<Vec<Bytes>> {
        let from = self.next.fetch_add(n, Ordering::Relaxed);
        Arc::new(hub::presign(&self.signer, from..from + n, |k| {
            let id = format!("x-{k}");
            hub::session_revoked(&id, &id, BASE_TS + 10_000 + k)
        }))
    }

    /// Pushes every one of `sets` at `rate` (open loop).
    fn push(&self, api: &Api, rate: f64, sets: Arc<Vec<Bytes>>) -> Run {
        let n = sets.len() as u64;
        let run = open_loop(self.load.handle(), rate, n, hub::ingest_job(api, sets));
        run.check("ingest");
        run
    }

    fn get(&self, api: &Api, path: &str) -> Value {
        self.load.block_on(api.get(path)).expect("GET")
    }
}

/// Position → the number in its `jti`, for every record after `since` (`GET /events`).
fn numbers(x: &Ctx, api: &Api, mut since: u64) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    loop {
        let page = x.get(api, &format!("/events?since={since}&limit=1000"));
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            let n = e["jti"].as_str().and_then(|j| j[2..].parse().ok());
            out.insert(e["position"].as_u64().unwrap_or(0), n.unwrap_or(u64::MAX));
        }
        match page["next"].as_u64() {
            Some(next) if !events.is_empty() => since = next,
            _ => return out,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Websocket clients and the bare server

/// One client: (position, µs since the clients' base instant) per item.
#[derive(Debug, Default)]
struct Slot {
    arrivals: Mutex<Vec<(u32, u32)>>,
    frames: AtomicU64,
    /// The cut-off position + 1, or 0.
    cut_off: AtomicU64,
    closed: AtomicBool,
    bad: Mutex<Option<String>>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u32, u32)>> {
        self.arrivals.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn positions(&self) -> Vec<u64> {
        self.lock().iter().map(|(p, _)| u64::from(*p)).collect()
    }
}

/// Websocket clients of one server, each following on its own task.
#[derive(Debug)]
struct Clients {
    base: Instant,
    count: Arc<AtomicU64>,
    slots: Vec<Arc<Slot>>,
    tasks: Vec<JoinHandle<()>>,
}

type Ready = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Connects (saying so on `ready`), then records every frame until the socket closes.
async fn follow(
    req: String,
    token: Option<String>,
    c: (Instant, Arc<AtomicU64>),
    slot: Arc<Slot>,
    ready: Ready,
) {
    let mut req = req.into_client_request().expect("websocket URL");
    if let Some(t) = token {
        let bearer = format!("Bearer {t}").parse().expect("token");
        req.headers_mut().insert("authorization", bearer);
    }
    let mut ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(e) => return drop(ready.send(Err(e.to_string()))),
    };
    let _ = ready.send(Ok(()));
    while let Some(Ok(Message::Text(text))) = ws.next().await {
        let us = c.0.elapsed().as_micros() as u32;
        slot.frames.fetch_add(1, Ordering::Relaxed);
        let f: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        let items = f["items"].as_array().map_or(&[][..], Vec::as_slice);
        let position = |v: &Value| v["position"].as_u64().unwrap_or(0);
        match f["type"].as_str() {
            Some("events") => {
                slot.lock()
                    .extend(items.iter().map(|it| (position(it) as u32, us)));
                c.1.fetch_add(items.len() as u64, Ordering::AcqRel);
            }
            Some("cut_off") => slot.cut_off.store(position(&f) + 1, Ordering::Release),
            _ => *slot.bad.lock().unwrap_or_else(|p| p.into_inner()) = Some(f.to_string()),
        }
    }
    slot.closed.store(true, Ordering::Release);
}

impl Clients {
    /// Connects `n` clients, 100 handshakes at a time.
    fn connect(cli: &Runtime, n: usize, url: &str, token: Option<&str>) -> Clients {
        let (base, count) = (Instant::now(), Arc::new(AtomicU64::new(0)));
        let (mut slots, mut tasks) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for chunk in (0..n).step_by(100) {
            let mut ready = Vec::new();
            for _ in chunk..(chunk + 100).min(n) {
                let (slot, (tx, rx)) = (Arc::<Slot>::default(), tokio::sync::oneshot::channel());
                let (token, c) = (token.map(str::to_owned), (base, count.clone()));
                tasks.push(cli.spawn(follow(url.to_owned(), token, c, slot.clone(), tx)));
                slots.push(slot);
                ready.push(rx);
            }
            for rx in ready {
                cli.block_on(rx)
                    .expect("client task")
                    .expect("websocket handshake");
            }
        }
        Clients {
            base,
            count,
            slots,
            tasks,
        }
    }

    /// Waits until the clients received `target` items in all, at most `timeout`.
    fn wait(&self, target: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.count.load(Ordering::Acquire) < target {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Per position, when the first and the last client got it.
    fn spread(&self) -> HashMap<u64, (Instant, Instant)> {
        let mut out: HashMap<u64, (Instant, Instant)> = HashMap::new();
        for s in &self.slots {
            for (p, t) in s.lock().iter() {
                let at = self.base + Duration::from_micros(u64::from(*t));
                let e = out.entry(u64::from(*p)).or_insert((at, at));
                *e = (e.0.min(at), e.1.max(at));
            }
        }
        out
    }

    /// Every client must hold exactly `expected` (a cut-off one: the part before its cut-off).
    /// Returns the clients cut off and the incomplete ones.
    fn check(&self, what: &str, expected: &[u64]) -> (usize, usize) {
        let (mut cut, mut incomplete) = (0, 0);
        for (i, s) in self.slots.iter().enumerate() {
            let c = s.cut_off.load(Ordering::Acquire);
            cut += usize::from(c != 0);
            let want: Vec<u64> = expected
                .iter()
                .copied()
                .filter(|p| c == 0 || *p < c)
                .collect();
            let got = s.positions();
            if got != want {
                incomplete += 1;
                let mut seen = std::collections::HashSet::new();
                let dups = got.iter().filter(|p| !seen.insert(**p)).count();
                let missing = want.iter().filter(|p| !seen.contains(p)).count();
                let msg = format!("{} items, {missing} missing, {dups} duplicated", got.len());
                (incomplete <= 3).then(|| fail(format!("{what}: client {i}: {msg}")));
            }
            if let Some(b) = s.bad.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                fail(format!("{what}: client {i}: unexpected frame {b}"));
            }
        }
        (cut, incomplete)
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// What a producer hands the bare server: (position, the item's JSON text).
type Items = broadcast::Sender<Arc<(u64, String)>>;

/// The machine limit for the feeds, a bare tokio-tungstenite server: per connection a task takes
/// whatever waits on a 4,096-item broadcast ring (at most 256), concatenates the items' text into
/// one frame and sends it; a connection that falls behind the ring is cut off, as in the hub.
fn bare_server(rt: &Runtime) -> (String, Items, JoinHandle<()>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("addr"));
    let (tx, _) = broadcast::channel::<Arc<(u64, String)>>(4096);
    let tx2 = tx.clone();
    let accept = rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut rx = tx2.subscribe();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let mut sent = 0;
                loop {
                    let mut lagged = false;
                    let mut batch = match tokio::select! { m = rx.recv() => m, _ = ws.next() => return } {
                        Ok(it) => vec![it],
                        Err(RecvError::Lagged(_)) => (lagged = true, Vec::new()).1,
                        Err(RecvError::Closed) => return,
                    };
                    while !lagged && batch.len() < 256 {
                        match rx.try_recv() {
                            Ok(it) => batch.push(it),
                            Err(TryRecvError::Lagged(_)) => lagged = true,
                            Err(_) => break,
                        }
                    }
                    if let Some(last) = batch.last().map(|i| i.0) {
                        let items: Vec<&str> = batch.iter().map(|i| i.1.as_str()).collect();
                        let f = format!(r#"{{"type":"events","position":{last},"items":[{}]}}"#, items.join(","));
                        if ws.send(Message::Text(f.into())).await.is_err() {
                            return;
                        }
                        sent = last;
                    }
                    if lagged {
                        let cut = format!(r#"{{"type":"cut_off","position":{sent}}}"#);
                        return drop(ws.send(Message::Text(cut.into())).await);
                    }
                }
            });
        }
    });
    (url, tx, accept)
}

/// The item text the bare server sends for `position`: a copy of a real one.
fn item_text(item: &Value, position: u64) -> String {
    let mut it = item.clone();
    it["position"] = json!(position);
    it.to_string()
}

// ---------------------------------------------------------------------------------------------
// A and D: clients following a feed at a fixed rate

/// Who serves the followers: a hub feed (path and token; fed by pushed SETs), or the bare
/// server sending copies of `item`.
enum Server<'a> {
    Hub(&'a Hub, &'a str, &'a str),
    Bare(&'a Value),
}

#[derive(Debug)]
struct Follow {
    label: &'static str,
    rate: f64,
    dispatched: f64,
    events: usize,
    cut: usize,
    incomplete: usize,
    frames: u64,
    /// Item at a client − ingest 202 (bare: the send).
    lat: Pct,
    /// Item at a client − ingest send.
    lat_send: Pct,
    last: Pct,
    drain_ms: f64,
    durable: Pct,
    cpu: String,
}

impl Follow {
    /// Complete, nobody cut off, ingest on schedule and the last client at most 1 s behind.
    fn follows(&self) -> bool {
        let on_time = self.dispatched >= 0.95 * self.rate && self.last.p99 <= 1e6;
        self.cut == 0 && self.incomplete == 0 && on_time
    }
}

/// `clients` clients following `rate` events/s for `secs` s (plus `warm` unmeasured events).
fn follow_run(x: &Ctx, server: Server, clients: usize, rate: f64, secs: f64, warm: u64) -> Follow {
    let total = (rate * secs) as u64 + warm;
    let (run, sent, cpu, c, label) = match server {
        Server::Hub(hub, path, token) => {
            let head0 = x.load.block_on(hub.head());
            let url = hub.ws(&format!("{path}?since={head0}"));
            let c = Clients::connect(&x.load, clients, &url, Some(token));
            let (sets, cpu) = (x.fresh(total), Phase::start());
            let first = x.next.load(Ordering::Relaxed) - total;
            let run = x.push(hub, rate, sets);
            // Which pushed SET each position holds, from its `jti`.
            let numbers = numbers(x, hub, head0);
            let sent = |k: &u64| run.samples.get(k.wrapping_sub(first) as usize).copied();
            let sent = numbers
                .iter()
                .filter_map(|(p, k)| Some((*p, sent(k)?)))
                .collect();
            (run, sent, cpu, c, "hub")
        }
        Server::Bare(item) => {
            let (url, tx, accept) = bare_server(&x.hub_rt);
            let c = Clients::connect(&x.load, clients, &url, None);
            // Jobs run concurrently; like the hub's log, positions are handed out and published
            // in one order. Each item is serialized once, as the hub's feed does.
            let (seq, item, cpu) = (Arc::new(Mutex::new(0)), item.clone(), Phase::start());
            let run = open_loop(
                x.load.handle(),
                rate,
                total,
                job(move |_| {
                    let mut last = seq.lock().unwrap_or_else(|p| p.into_inner());
                    *last += 1;
                    let _ = tx.send(Arc::new((*last, item_text(&item, *last))));
                    std::future::ready(Ok(*last))
                }),
            );
            accept.abort();
            let sent = run.samples.iter().map(|s| (s.tag, *s)).collect();
            (run, sent, cpu, c, "machine limit: bare server")
        }
    };
    let sent: HashMap<u64, crate::support::drive::Sample> = sent;
    let appended = Instant::now();
    let mut expected: Vec<u64> = sent.keys().copied().collect();
    expected.sort_unstable();
    let settled = |s: &Arc<Slot>| {
        let done = s.cut_off.load(Ordering::Acquire) != 0 || s.closed.load(Ordering::Acquire);
        done || s.lock().len() >= expected.len()
    };
    while !c.slots.iter().all(settled) && appended.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (drain_ms, cpu) = (us(appended.elapsed()) / 1e3, cpu.used().line());
    let (cut, incomplete) = c.check(&format!("{label} at {rate}/s"), &expected);
    let (mut lat, mut lat_send) = (Vec::new(), Vec::new());
    for s in &c.slots {
        for (p, t) in s.lock().iter() {
            if let Some(s) = sent.get(&u64::from(*p)).filter(|s| s.i >= warm) {
                let at = c.base + Duration::from_micros(u64::from(*t));
                lat.push(signed_us(at, s.end));
                lat_send.push(signed_us(at, s.start));
            }
        }
    }
    let spread = c.spread();
    let last = sent.iter().filter(|(_, s)| s.i >= warm);
    let last = last
        .filter_map(|(p, s)| Some(signed_us(spread.get(p)?.1, s.end)))
        .collect();
    let frames = c
        .slots
        .iter()
        .map(|s| s.frames.load(Ordering::Relaxed))
        .sum();
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    let (events, measured) = (expected.len(), run.from(warm));
    let (dispatched, durable) = (measured.dispatched_rate(), measured.lat_start());
    let (lat, lat_send, last) = (Pct::of(lat), Pct::of(lat_send), Pct::of(last));
    Follow {
        label,
        rate,
        dispatched,
        events,
        cut,
        incomplete,
        frames,
        lat,
        lat_send,
        last,
        drain_ms,
        durable,
        cpu,
    }
}

fn scenario_a(x: &Ctx) {
    let rate = env_u64("RL_DELTA_RATE", 1000) as f64;
    let secs = env_u64("RL_SECS", 10) as f64;
    progress(format!(
        "A: 202 -> delta on /revocations/ws at {rate}/s for {secs} s"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = x.start(dir.path());
    let token = x
        .load
        .block_on(hub.receiver("https://sidecar.bench.example"));
    let delta = x.get(&hub, "/revocations?since=0&limit=1")["deltas"][0].clone();
    let a = follow_run(
        x,
        Server::Hub(&hub, "/revocations/ws", &token),
        1,
        rate,
        secs,
        rate as u64,
    );
    hub.stop(&x.hub_rt);
    let bare = follow_run(x, Server::Bare(&delta), 1, rate, secs, rate as u64);
    report(format!(
        "### A. Ingest 202 → delta visible on `/revocations/ws`\n\nOne receiver-token client; {} SETs, each a new delta, pushed open loop at {rate:.0}/s \
         for {secs:.0} s after a 1 s warm-up (achieved {:.0}/s); {} frames. Every delta exactly once, in order, none cut off: {}.\n\n{PCT_HEADER}",
        a.durable.n, a.dispatched, a.frames, if a.cut + a.incomplete == 0 { "yes" } else { "**no**" }
    ));
    report(a.lat.row("**ingest 202 → delta frame at the client**"));
    report(
        a.lat_send
            .row("ingest send → delta frame (includes the durable commit)"),
    );
    report(a.durable.row("ingest send → 202 (durable)"));
    report(
        bare.lat
            .row("machine limit: bare tokio-tungstenite send → frame, 1 client, same rate"),
    );
    let p50 = ratio(a.lat.p50, bare.lat.p50);
    let p99 = ratio(a.lat.p99, bare.lat.p99);
    report(format!("\nRatio hub/bare: p50 {p50}, p99 {p99}.\n\n"));
}

fn scenario_d(x: &Ctx, hub: &Hub, item: &Value, clients: usize) {
    let goal = env_u64("RL_FEED_RATE", 1000) as f64;
    let secs = env_u64("RL_SECS", 10) as f64;
    progress(format!(
        "D: {clients} /feed clients following {goal} events/s"
    ));
    let mut results = vec![follow_run(x, Server::Bare(item), clients, goal, secs, 0)];
    let mut rate = goal;
    loop {
        let r = follow_run(x, Server::Hub(hub, "/feed", ADMIN), clients, rate, secs, 0);
        progress(format!("D: {r:?}"));
        let held = r.follows();
        results.push(r);
        if held || rate <= goal / 16.0 {
            break;
        }
        rate /= 2.0;
    }
    if !results[1].follows() {
        fail(format!(
            "D: at {goal}/s the clients do not follow: {:?}",
            results[1]
        ));
    }
    report(format!(
        "### D. {clients} clients following {goal:.0} events/s on `/feed`\n\n`/feed` clients connected with `since=<head>`, then SETs pushed open loop for {secs:.0} s; \
         \"follows\": every position exactly once, in order, no `cut_off`, ingest on schedule (≥ 95%) and the last client at most 1 s behind at p99; \
         otherwise the rate is halved.\n\n\
         | Server | Rate (sent/s) | events | cut off | incomplete | frames per event per client | → client p50 / p99 / p99.9 ms | → last client p50 / p99 ms | drain ms | 202 p50 / p99 ms | follows | CPU |\n\
         |---|---|---:|---:|---:|---:|---|---|---:|---|---|---|\n"
    ));
    for r in &results {
        let per = r.frames as f64 / (clients * r.events).max(1) as f64;
        let follows = if r.follows() { "yes" } else { "**no**" };
        report(format!(
            "| {} | {:.0} ({:.0}) | {} | {} | {} | {per:.3} | {} / {} / {} | {} / {} | {:.0} | {} / {} | {follows} | {} |\n",
            r.label, r.rate, r.dispatched, r.events, r.cut, r.incomplete, ms(r.lat.p50), ms(r.lat.p99), ms(r.lat.p999),
            ms(r.last.p50), ms(r.last.p99), r.drain_ms, ms(r.durable.p50), ms(r.durable.p99), r.cpu
        ));
    }
    report("\n");
}

// ---------------------------------------------------------------------------------------------
// C. One event at a time to many clients, hub and bare server alternating

fn scenario_c(x: &Ctx, hub: &Hub, item: &Value, clients: usize) {
    let rounds = env_u64("RL_ROUNDS", 100) as usize;
    progress(format!(
        "C: one event to {clients} /feed clients vs the bare server, {rounds} rounds"
    ));
    let hub_c = Clients::connect(&x.load, clients, &hub.ws("/feed"), Some(ADMIN));
    let (url, tx, accept) = bare_server(&x.hub_rt);
    let bare_c = Clients::connect(&x.load, clients, &url, None);
    let head0 = x.load.block_on(hub.head());
    let sets = x.fresh((WARM_ROUNDS + rounds) as u64);
    let n = clients as u64;
    let (ingest_url, mut times) = (hub.ingest_url(), Vec::new());
    for (r, set) in (1..).zip(sets.iter()) {
        let sent = Instant::now();
        let acked = x
            .load
            .block_on(hub::ingest(&hub.client, &ingest_url, set.clone()));
        let hub_ok = acked
            .as_ref()
            .is_ok_and(|_| hub_c.wait(n * r, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(10));
        let bare_sent = Instant::now();
        let _ = tx.send(Arc::new((r, item_text(item, r))));
        if !hub_ok || !bare_c.wait(n * r, Duration::from_secs(10)) {
            fail(format!(
                "C: round {r}: not every client got the event within 10 s ({acked:?})"
            ));
            break;
        }
        times.push([sent, acked.unwrap_or(sent), bare_sent]);
        std::thread::sleep(Duration::from_millis(10));
    }
    accept.abort();
    let all: Vec<u64> = (1..=times.len() as u64).collect();
    let hub_bad = hub_c.check("C: hub", &all.iter().map(|r| head0 + r).collect::<Vec<_>>());
    let bare_bad = bare_c.check("C: bare", &all);
    let (hub_at, bare_at) = (hub_c.spread(), bare_c.spread());
    let measured = |f: &dyn Fn(u64, &[Instant; 3]) -> Option<f64>| {
        Pct::of(
            (1..)
                .zip(&times)
                .skip(WARM_ROUNDS)
                .filter_map(|(r, t)| f(r, t))
                .collect(),
        )
    };
    let hub_last = measured(&|r, t| Some(signed_us(hub_at.get(&(head0 + r))?.1, t[1])));
    let bare_last = measured(&|r, t| Some(signed_us(bare_at.get(&r)?.1, t[2])));
    let ok = hub_bad == (0, 0) && bare_bad == (0, 0);
    report(format!(
        "### C. One event fanned out to {clients} websocket clients\n\n{clients} `/feed` clients (admin token) and {clients} clients of the bare server, \
         sent the same item; rounds alternate hub / bare, 10 ms apart; {rounds} measured after {WARM_ROUNDS} warm-up. \
         Every client got every event exactly once: {}.\n\n{PCT_HEADER}",
        if ok { "yes" } else { "**no**" }
    ));
    report(hub_last.row("**hub: ingest 202 → last client**"));
    report(
        measured(&|r, t| Some(signed_us(hub_at.get(&(head0 + r))?.1, t[0])))
            .row("hub: ingest send → last client"),
    );
    report(
        measured(&|r, t| Some(signed_us(hub_at.get(&(head0 + r))?.0, t[1])))
            .row("hub: ingest 202 → first client"),
    );
    report(bare_last.row("**machine limit: bare send → last client**"));
    report(
        measured(&|r, t| Some(signed_us(bare_at.get(&r)?.0, t[2]))).row("bare send → first client"),
    );
    let p50 = ratio(hub_last.p50, bare_last.p50);
    let p99 = ratio(hub_last.p99, bare_last.p99);
    report(format!(
        "\n**Ratio hub/bare, last client: p50 {p50}, p99 {p99}** (goal: at most 1.5).\n\n"
    ));
    drop((hub_c, bare_c));
    // Let the hub's follow tasks notice the closed sockets before D connects.
    std::thread::sleep(Duration::from_millis(500));
}

// ---------------------------------------------------------------------------------------------
// B. Decisions over a large state

/// The decision every query for subject `u-k` at `iat` must get.
fn expected_allow(k: u64, iat: u64) -> bool {
    iat >= BASE_TS + k % 1000
}

/// Query `j` of a run: a random subject of the `n` and a random `iat` (splitmix64).
fn query(n: u64, j: u64) -> (u64, u64) {
    let mix = |x: u64| {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (mix(j) % n, BASE_TS + mix(j ^ 0x5eed) % 1000)
}

/// Runs this executable again as `RL_CHILD=mode`: its `RESULT` JSON and its stderr.
fn child_run(mode: &str, env: (&str, String)) -> (Value, String) {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("current exe"));
    let out = cmd
        .env("RL_CHILD", mode)
        .env(env.0, env.1)
        .output()
        .expect("child runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        fail(format!("child {mode} failed: {}\n{stderr}", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l.strip_prefix("RESULT ")?).ok());
    (result.unwrap_or_default(), stderr)
}

/// `GET /healthz` or (with a token) `POST /revocations/check` for query `i ^ salt`, checked
/// against the decision it must get; on one of `clients` in turn.
fn http_job(
    clients: &Arc<Vec<reqwest::Client>>,
    base: &str,
    check: Option<(&str, u64)>,
    n: u64,
) -> Job {
    let clients = clients.clone();
    let base = base.to_owned();
    let check = check.map(|(t, s)| (t.to_owned(), s));
    job(move |i| {
        let client = &clients[i as usize % clients.len()];
        let (req, want) = match &check {
            None => (client.get(format!("{base}/healthz")), None),
            Some((token, salt)) => {
                let (k, iat) = query(n, i ^ salt);
                let body = json!({"iss": SOURCE_ISS, "sub": format!("u-{k}"), "iat": iat});
                let req = client
                    .post(format!("{base}/revocations/check"))
                    .bearer_auth(token);
                (req.json(&body), Some((k, iat, expected_allow(k, iat))))
            }
        };
        let req = req.send();
        async move {
            let r = req.await.map_err(|e| format!("transport: {e}"))?;
            let (status, body) = (r.status(), r.bytes().await.unwrap_or_default());
            let d: Value = serde_json::from_slice(&body).unwrap_or_default();
            match want {
                _ if status != 200 => Err(format!("HTTP {status}")),
                Some((k, iat, want))
                    if d["allow"] != want || !(want || d["reason"] == "revoked") =>
                {
                    Err(format!("u-{k} iat {iat}: got {d}, expected allow={want}"))
                }
                _ => Ok(0),
            }
        }
    })
}

fn load_row(label: &str, r: &Run) -> String {
    let (p, s, lag) = (r.lat(), r.lat_start(), r.lag().p99);
    let rates = format!(
        "{} | {:.0} | {:.0}",
        r.samples.len(),
        r.dispatched_rate(),
        r.completed_rate()
    );
    let lat = [p.p50, p.p99, p.p999, s.p50, s.p99, lag]
        .map(ms)
        .join(" | ");
    format!("| {label} | {rates} | {lat} | {} |\n", r.errors)
}

fn scenario_b(x: &Ctx) {
    let n_goal = env_u64("RL_SUBJECTS", 1_000_000);
    let rate = env_u64("RL_CHECK_RATE", 10_000) as f64;
    let secs = env_u64("RL_SECS", 10) as f64;
    let budget = Duration::from_secs(env_u64("RL_BUILD_BUDGET_SECS", 600));
    progress(format!("B: state of {n_goal} subjects"));
    let (mem, _) = child_run("state-mem", ("RL_SUBJECTS", n_goal.to_string()));
    progress(format!("B: bare state: {mem}"));

    // The subjects pushed to a hub as SETs, signed on every core meanwhile.
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = x.start(dir.path());
    let token = x
        .load
        .block_on(hub.receiver("https://sidecar.bench.example"));
    let (next, started) = (AtomicU64::new(0), Instant::now());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4096);
    let queue = Arc::new(tokio::sync::Mutex::new(rx));
    let client = hub.client.clone();
    let url = hub.ingest_url();
    let push = job(move |_| {
        let (queue, client, url) = (queue.clone(), client.clone(), url.clone());
        async move {
            let set = queue
                .lock()
                .await
                .recv()
                .await
                .ok_or("the signers stopped")?;
            hub::ingest(&client, &url, set).await.map(|_| 0)
        }
    });
    let build = std::thread::scope(|s| {
        for _ in 0..m::cores() {
            let (tx, next, signer) = (tx.clone(), &next, &x.signer);
            let sign = move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let (jti, sub) = (format!("b-{k}"), format!("u-{k}"));
                let set = hub::session_revoked(&jti, &sub, BASE_TS + k % 1000);
                if k >= n_goal
                    || tx
                        .blocking_send(signer.sign(&set).expect("sign").into())
                        .is_err()
                {
                    return;
                }
            };
            std::thread::Builder::new()
                .name("load-sign".into())
                .spawn_scoped(s, sign)
                .expect("signer");
        }
        drop(tx);
        closed_loop(
            x.load.handle(),
            64,
            n_goal,
            Some((Duration::ZERO, budget)),
            false,
            push,
        )
    });
    build.check("B: pushing the subjects");
    let (pushed_in, n) = (started.elapsed(), build.done - build.errors);
    let subjects = || {
        let page = x.load.block_on(hub.metrics()).unwrap_or_default();
        metric(&page, "ssf_hub_revocation_subjects", "") as u64
    };
    let head = x.load.block_on(hub.head());
    while x.load.block_on(hub.folded()) < head || subjects() < n {
        if started.elapsed() > budget + Duration::from_secs(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let folded_in = started.elapsed();
    if head != n + 1 || subjects() != n + 1 {
        fail(format!(
            "B: {n} SETs pushed (+1 at start), log head {head}, {} subjects",
            subjects()
        ));
    }
    hub.stop(&x.hub_rt);
    let disk = m::dir_size(&dir.path().join("data/db"));
    progress(format!(
        "B: {n} subjects pushed in {pushed_in:?}, folded after {folded_in:?}"
    ));

    // Start time on that data, in a fresh process.
    let (restore, logs) = child_run("restore", ("RL_DIR", dir.path().display().to_string()));
    let restored = logs
        .lines()
        .filter(|l| l.contains("revocation state restored"));
    let restored_ms = restored
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix("ms="));
    if restore["subjects"].as_u64() != Some(n + 1) {
        fail(format!(
            "B: the restarted hub holds {} subjects, not {}",
            restore["subjects"],
            n + 1
        ));
    }

    // Restarted in this process: the decision API at a fixed rate, beside `/healthz`.
    let hub = x.start(dir.path());
    let clients = Arc::new((0..8).map(|_| hub::http_client()).collect::<Vec<_>>());
    let healthz = http_job(&clients, &hub.base, None, n);
    let check = http_job(&clients, &hub.base, Some((&token, 0)), n);
    let (cli, total) = (x.load.handle(), (rate * (1.0 + secs)) as u64);
    let h_seq = closed_loop(cli, 1, 2000, None, true, healthz.clone());
    let c_seq = closed_loop(cli, 1, 2000, None, true, check.clone());
    progress("B: GET /healthz and POST /revocations/check open loop");
    let h = open_loop(cli, rate, total, healthz);
    let cpu = Phase::start();
    let c = open_loop(cli, rate, total, check);
    let c_cpu = cpu.used();
    // The same while the hub ingests 1,000 SETs/s (new subjects: the fold writes).
    let sets = x.fresh((1000.0 * secs) as u64);
    let check2 = http_job(&clients, &hub.base, Some((&token, 0xfeed)), n);
    let (c2, pushes) = std::thread::scope(|s| {
        let pushes = s.spawn(|| x.push(&hub, 1000.0, sets));
        (
            open_loop(cli, rate, total, check2),
            pushes.join().expect("pushes"),
        )
    });
    hub.stop(&x.hub_rt);
    // (label, run, warm-up requests left out of its figures)
    let w = rate as u64;
    let runs = [
        ("one at a time: `GET /healthz`", h_seq, 0),
        ("one at a time: `POST /revocations/check`", c_seq, 0),
        ("machine limit: `GET /healthz` on the same hub", h, w),
        ("**`POST /revocations/check`**", c, w),
        (
            "`POST /revocations/check` while ingesting 1,000 SETs/s",
            c2,
            w,
        ),
    ];

    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let per_subject = (f(&mem, "rss_after_kib") - f(&mem, "rss_before_kib")) * 1024.0;
    let (per_subject, built) = (per_subject / n_goal as f64, f(&mem, "build_ms") / 1e3);
    let (pushed, folded) = (pushed_in.as_secs_f64(), folded_in.as_secs_f64());
    let (spawn, ready) = (f(&restore, "spawn_ms") / 1e3, f(&restore, "ready_ms") / 1e3);
    let rss = f(&restore, "rss_kib") / 1024.0;
    let peak = f(&restore, "hwm_kib") / 1024.0;
    let (restored, disk, per_s) = (restored_ms.unwrap_or("?"), mib(disk), n as f64 / pushed);
    let short = if n < n_goal {
        format!(" (**only {n} of {n_goal} within the build budget**)")
    } else {
        String::new()
    };
    report(format!(
        "### B. Decision API over a state of {n} subjects{short}\n\n| State | Figure |\n|---|---|\n\
         | Bare `State` (child process) | {} subjects built in {built:.1} s: **{per_subject:.0} bytes per subject** |\n\
         | Pushed to the hub (64 clients, signed meanwhile) | {pushed:.1} s ({per_s:.0}/s); folded after {folded:.1} s |\n\
         | On disk (`<data_dir>/db`) | {disk:.0} MiB |\n\
         | **Start with that state** (fresh process) | **{spawn:.2} s** to `spawn`, {ready:.2} s until `/healthz` answers; the hub logs `revocation state restored ms={restored}`; RSS {rss:.0} MiB (peak {peak:.0} MiB) |\n\n\
         Open loop at {rate:.0} requests/s for 1 s + {secs:.0} s, 8 keep-alive clients, random subjects, every answer checked; latency from the scheduled \
         send (no coordinated omission) and from the actual send.\n\n\
         | Load | requests | sent/s | done/s | p50 ms | p99 ms | p99.9 ms | p50 ms (from send) | p99 ms (from send) | timer lag p99 ms | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        mem["subjects"]
    ));
    for (label, r, warm) in &runs {
        r.check(&format!("B: {label}"));
        report(load_row(label, &r.from(*warm)));
    }
    let check_p99 = ratio(runs[3].1.from(w).lat().p99, runs[2].1.from(w).lat().p99);
    let (pushed, pushed_p99) = (pushes.dispatched_rate(), ms(pushes.lat_start().p99));
    let (cpu, cpu_wall, cpu_line) = (c_cpu.process, c_cpu.wall.as_secs_f64(), c_cpu.line());
    let calls = &mem["decide_calls"];
    let mean = f(&mem, "decide_mean_ns");
    let wrong = &mem["wrong"];
    let decide = ["decide_p50_us", "decide_p99_us", "decide_p999_us"].map(|k| f(&mem, k));
    let [p50, p99, p999] = decide;
    report(format!(
        "\nRatio check/healthz p99: {check_p99}. Ingest during the last row: {pushed:.0}/s, 202 p99 {pushed_p99} ms. \
         CPU during the check run: {cpu:.1} s in {cpu_wall:.0} s ({cpu_line}).\n\n\
         `State::decide` alone (child process, {calls} random queries): mean {mean:.0} ns, p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs; \
         wrong answers: {wrong}.\n\n"
    ));
    if mem["wrong"] != 0 {
        fail(format!("B: State::decide gave {wrong} wrong answers"));
    }
}

/// The fold's state alone, the in-process limit: memory per subject and `State::decide`.
fn child_state_mem() -> Value {
    use ssf_hub::set::{EventKind, Subject};
    use ssf_hub::state::{Query, State};
    let n = env_u64("RL_SUBJECTS", 1_000_000);
    let subject = |k: u64| {
        let id = json!({"format": "iss_sub", "iss": SOURCE_ISS, "sub": format!("u-{k}")});
        Subject::parse(&id).expect("subject")
    };
    let (rss_before, t, mut state) = (rss_kib(), Instant::now(), State::default());
    for k in 0..n {
        let (s, ts) = (subject(k), BASE_TS + k % 1000);
        let claims = json!({"event_timestamp": ts, "initiating_entity": "policy"});
        state.apply_record(&ssf_hub::normalize::Record {
            position: k + 1,
            received_at_ms: ssf_hub::unix_now_ms(),
            source: hub::SOURCE.into(),
            iss: SOURCE_ISS.into(),
            jti: format!("b-{k}"),
            txn: None,
            iat: ts as i64,
            event_type: EventKind::SessionRevoked.uri(),
            known: true,
            subject_key: s.canonical_key(),
            subject: s,
            event_timestamp: Some(ts),
            claims,
            set: String::new(),
        });
    }
    let (build, rss_after) = (t.elapsed(), rss_kib());
    let queries: Vec<(Query, bool)> = (0..100_000)
        .map(|j| {
            let (k, iat) = query(n, j);
            let q = Query {
                parts: vec![("user".into(), subject(k))],
                iat: Some(iat),
            };
            (q, expected_allow(k, iat))
        })
        .collect();
    let (mut wrong, mut lat) = (0, Vec::with_capacity(queries.len() * 5));
    for (q, want) in queries.iter().cycle().take(queries.len() * 5) {
        let t = Instant::now();
        wrong += u64::from(state.decide(q).allow != *want);
        lat.push(us(t.elapsed()));
    }
    let (t, calls) = (Instant::now(), queries.len() * 10);
    for (q, _) in queries.iter().cycle().take(calls) {
        std::hint::black_box(state.decide(std::hint::black_box(q)));
    }
    let (mean_ns, p) = (t.elapsed().as_nanos() as f64 / calls as f64, Pct::of(lat));
    json!({
        "subjects": state.subjects.len(), "rss_before_kib": rss_before, "rss_after_kib": rss_after,
        "build_ms": build.as_millis() as u64, "decide_calls": calls, "decide_mean_ns": mean_ns,
        "decide_p50_us": p.p50, "decide_p99_us": p.p99, "decide_p999_us": p.p999, "wrong": wrong,
    })
}

/// A hub started on `RL_DIR` in this fresh process: start time, memory, subjects restored.
fn child_restore() -> Value {
    std::env::set_var("RUST_LOG", "info");
    ssf_hub::telemetry::init_tracing();
    let dir = std::path::PathBuf::from(std::env::var("RL_DIR").expect("RL_DIR"));
    let jwks = std::fs::read_to_string(dir.join("source.jwks.json")).expect("jwks");
    let (rt, t) = (hub::runtime("hub", m::cores()), Instant::now());
    let hub = Hub::start(
        &rt,
        hub::config(&dir, &serde_json::from_str(&jwks).expect("jwks")),
    );
    let spawned = t.elapsed();
    while rt.block_on(hub.get("/healthz")).is_err() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (ready, rss, hwm) = (t.elapsed(), rss_kib(), status_kib("VmHWM"));
    // No endpoint counts the subjects: count them in the streamed snapshot.
    let req = hub
        .client
        .get(format!("{}/revocations/snapshot", hub.base))
        .bearer_auth(ADMIN);
    let mut resp = rt.block_on(async { req.send().await }).expect("snapshot");
    let (pat, mut buf, mut subjects) = (b"\"subject_key\"", Vec::new(), 0);
    while let Ok(Some(chunk)) = rt.block_on(resp.chunk()) {
        buf.extend_from_slice(&chunk);
        subjects += buf.windows(pat.len()).filter(|w| w == pat).count();
        buf.drain(..buf.len().saturating_sub(pat.len() - 1));
    }
    hub.stop(&rt);
    let (spawn_ms, ready_ms) = (us(spawned) / 1e3, us(ready) / 1e3);
    json!({"subjects": subjects, "spawn_ms": spawn_ms, "ready_ms": ready_ms, "rss_kib": rss, "hwm_kib": hwm})
}

pub(crate) fn child_mode() -> Option<String> {
    std::env::var("RL_CHILD").ok()
}

pub(crate) fn child(mode: &str) {
    let result = if mode == "restore" {
        child_restore()
    } else {
        child_state_mem()
    };
    println!("RESULT {result}");
}

pub(crate) fn run(which: &str) {
    let want = |s: &str| which.split(',').any(|x| x.trim().eq_ignore_ascii_case(s));
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    ssf_hub::telemetry::init_tracing();
    let (cores, next) = (m::cores(), AtomicU64::new(0));
    let (hub_rt, load) = (hub::runtime("hub", cores), hub::runtime("load", cores));
    let x = Ctx {
        hub_rt,
        load,
        signer: hub::source_key(),
        next,
    };
    report(format!("## revocation\n\nMachine: {}.\n\n", m::describe()));
    if want("A") {
        scenario_a(&x);
    }
    if want("B") {
        scenario_b(&x);
    }
    if want("C") || want("D") {
        let clients = env_u64("RL_CLIENTS", 1000) as usize;
        if m::open_file_limit() < 4 * clients as u64 + 200 {
            progress(format!(
                "the open-file limit is below the {} sockets C needs",
                4 * clients + 200
            ));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = x.start(dir.path());
        // The bare server sends copies of a real feed item: the latest record without its SET.
        let mut item = x.get(&hub, "/events?since=0&limit=1")["events"][0].take();
        item.as_object_mut().map(|o| o.remove("set"));
        if want("C") {
            scenario_c(&x, &hub, &item, clients);
        }
        if want("D") {
            scenario_d(&x, &hub, &item, clients);
        }
        hub.stop(&x.hub_rt);
    }
}
