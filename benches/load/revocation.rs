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
//!
//! Run: `cargo bench --bench load -- revocation [A,B,C,D]` (all four by default).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{handshake::client::Request, Message};

use crate::support::drive::{closed_loop, job, open_loop, Job, Run};
use crate::support::hub::{self, Api, Hub, ADMIN, SOURCE_ISS};
use crate::support::machine::{self as m, env_u64, status_kib, Phase};
use crate::support::{fail, lock, ms, progress, ratio, report, signed_us, us, Pct, PCT_HEADER};

/// Subject `u-k` is revoked from `BASE_TS + k % 1000` on.
const BASE_TS: u64 = 1_700_000_000;
const WARM_ROUNDS: usize = 5;
const SIDECAR: &str = "https://sidecar.bench.example";

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
        let mut config = hub::config(dir, &self.signer.jwks());
        // One token stands for a whole fleet of sidecars here (up to RL_CLIENTS sockets), so the
        // websocket caps are raised, as a deployment sharing a credential would raise them.
        config.feed.max_sockets_per_credential = 1 << 20;
        config.feed.max_sockets = 1 << 20;
        // Every client is on loopback, one address.
        config.http.max_connections_per_ip = 0;
        let hub = Hub::start(&self.hub_rt, config);
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
        let (n, job) = (sets.len() as u64, hub::ingest_job(api, sets, 0, None));
        let run = open_loop(self.load.handle(), rate, n, job);
        run.check("ingest");
        run
    }

    fn get(&self, api: &Api, path: &str) -> Value {
        self.load.block_on(api.get(path)).expect("GET")
    }
}

// --- Websocket clients and the bare server ---

/// One client: (position, the number `k` of its subject `x-<k>`, µs since the clients' base
/// instant) per item.
#[derive(Debug, Default)]
struct Slot {
    arrivals: Mutex<Vec<(u32, u32, u32)>>,
    frames: AtomicU64,
    /// The cut-off position + 1, or 0.
    cut_off: AtomicU64,
    closed: AtomicBool,
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
async fn follow(req: Request, c: (Instant, Arc<AtomicU64>), slot: Arc<Slot>, ready: Ready) {
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
        let k = |v: &Value| v["subject"]["sub"].as_str()?.get(2..)?.parse().ok();
        let item = |it: &Value| (position(it) as u32, k(it).unwrap_or(0), us);
        match f["type"].as_str() {
            Some("events") => {
                let items = items.iter().map(item);
                c.1.fetch_add(items.len() as u64, Ordering::AcqRel);
                lock(&slot.arrivals).extend(items);
            }
            Some("cut_off") => slot.cut_off.store(position(&f) + 1, Ordering::Release),
            _ => fail!("a websocket client got an unexpected frame: {f}"),
        }
    }
    slot.closed.store(true, Ordering::Release);
}

impl Clients {
    /// Connects `n` clients, 100 handshakes at a time.
    fn connect(cli: &Runtime, n: usize, url: &str, token: Option<&str>) -> Clients {
        let (base, count) = (Instant::now(), Arc::new(AtomicU64::new(0)));
        let (mut slots, mut tasks) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let request = || {
            let mut req = url.into_client_request().expect("websocket URL");
            let bearer = token.map(|t| format!("Bearer {t}").parse().expect("token"));
            bearer.map(|b| req.headers_mut().insert("authorization", b));
            req
        };
        for chunk in (0..n).step_by(100) {
            let mut ready = Vec::new();
            for _ in chunk..(chunk + 100).min(n) {
                let (slot, (tx, rx)) = (Arc::<Slot>::default(), tokio::sync::oneshot::channel());
                let c = (base, count.clone());
                tasks.push(cli.spawn(follow(request(), c, slot.clone(), tx)));
                slots.push(slot);
                ready.push(rx);
            }
            for rx in ready {
                cli.block_on(rx).expect("client task").expect("handshake");
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
        while self.count.load(Ordering::Acquire) < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        self.count.load(Ordering::Acquire) >= target
    }

    /// Per position, when the last client got it.
    fn last(&self) -> HashMap<u64, Instant> {
        let mut out: HashMap<u64, Instant> = HashMap::new();
        for (p, _, t) in self.slots.iter().flat_map(|s| lock(&s.arrivals).clone()) {
            let at = self.base + Duration::from_micros(u64::from(t));
            let last = out.entry(u64::from(p)).or_insert(at);
            *last = at.max(*last);
        }
        out
    }

    /// Every client must hold exactly `expected`, ascending (a client cut off: the part before
    /// its cut-off). Returns the clients cut off and the incomplete ones.
    fn check(&self, what: &str, expected: &[u64]) -> (usize, usize) {
        let (mut cut, mut incomplete) = (0, 0);
        for (i, s) in self.slots.iter().enumerate() {
            let c = s.cut_off.load(Ordering::Acquire);
            cut += usize::from(c != 0);
            let want = &expected[..expected.partition_point(|p| c == 0 || *p < c)];
            let got: Vec<u64> = lock(&s.arrivals).iter().map(|a| u64::from(a.0)).collect();
            if got != want {
                incomplete += 1;
                let mut seen = HashSet::new();
                let dups = got.iter().filter(|p| !seen.insert(**p)).count();
                let missing = want.iter().filter(|p| !seen.contains(p)).count();
                let n = got.len();
                let msg =
                    format!("{what}: client {i}: {n} items, {missing} missing, {dups} duplicated");
                (incomplete <= 3).then(|| fail!("{msg}"));
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
type Item = Arc<(u64, String)>;

/// The machine limit for the feeds, a bare tokio-tungstenite server: per connection a task takes
/// whatever waits on a 4,096-item broadcast ring (at most 256), concatenates the items' text into
/// one frame and sends it; a connection that falls behind the ring is cut off, as in the hub.
fn bare_server(rt: &Runtime) -> (String, broadcast::Sender<Item>, JoinHandle<()>) {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"));
    let listener = listener.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("addr"));
    let tx = broadcast::channel::<Item>(4096).0;
    let tx2 = tx.clone();
    let accept = rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(bare_connection(stream, tx2.subscribe()));
        }
    });
    (url, tx, accept)
}

/// One connection of [`bare_server`].
async fn bare_connection(stream: tokio::net::TcpStream, mut rx: broadcast::Receiver<Item>) {
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
            let items = items.join(",");
            let f = format!(r#"{{"type":"events","position":{last},"items":[{items}]}}"#);
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
}

/// The item text the bare server sends for `position`: a copy of a real one, for subject `x-<k>`.
fn item_text(item: &Value, position: u64, k: u64) -> Item {
    let mut it = item.clone();
    (it["position"], it["subject"]["sub"]) = (json!(position), json!(format!("x-{k}")));
    Arc::new((position, it.to_string()))
}

// --- A and D: clients following a feed at a fixed rate ---

/// Who serves the followers: a hub feed (path and token; fed by pushed SETs), or the bare
/// server sending copies of `item`.
enum Server<'a> {
    Hub(&'a Hub, &'a str, &'a str),
    Bare(&'a Value),
}

/// The columns of [`follow_run`]'s rows.
const FOLLOW_HEADER: &str = "| Server | Rate (sent/s) | events | cut off | incomplete | frames per event per client | → client p50 / p99 / p99.9 ms | ingest send → client p50 / p99 / p99.9 ms | → last client p50 / p99 ms | 202 p50 / p99 ms | follows | CPU |\n|---|---|---:|---:|---:|---:|---|---|---|---|---|---|\n";

/// `clients` clients following `rate` events/s for `RL_SECS` s (plus `warm` unmeasured events):
/// a row under [`FOLLOW_HEADER`], and whether they follow: every item exactly once and in order,
/// nobody cut off, ingest on schedule and the last client at most 1 s behind at p99.
fn follow_run(x: &Ctx, server: Server, clients: usize, rate: f64, warm: u64) -> (String, bool) {
    let total = (rate * env_u64("RL_SECS", 10) as f64) as u64 + warm;
    // The pushed SETs (bare: the items sent) are numbered `first..`, and the items hold log
    // positions `head0 + 1..` (bare: `1..`).
    let (run, first, head0, cpu, c, label) = match server {
        Server::Hub(hub, path, token) => {
            let head0 = x.load.block_on(hub.head());
            let url = hub.ws(&format!("{path}?since={head0}"));
            let c = Clients::connect(&x.load, clients, &url, Some(token));
            let (sets, cpu) = (x.fresh(total), Phase::start());
            let first = x.next.load(Ordering::Relaxed) - total;
            (x.push(hub, rate, sets), first, head0, cpu, c, "hub")
        }
        Server::Bare(item) => {
            let (url, tx, accept) = bare_server(&x.hub_rt);
            let c = Clients::connect(&x.load, clients, &url, None);
            // Jobs run concurrently; like the hub's log, positions are handed out and published
            // in one order. Each item is serialized once, as the hub's feed does.
            let (seq, item, cpu) = (Arc::new(Mutex::new(0)), item.clone(), Phase::start());
            let send = job(move |i| {
                let mut last = lock(&seq);
                *last += 1;
                let _ = tx.send(item_text(&item, *last, i));
                std::future::ready(Ok(()))
            });
            let run = open_loop(x.load.handle(), rate, total, send);
            accept.abort();
            (run, 0, 0, cpu, c, "machine limit: bare server")
        }
    };
    let (appended, expected) = (Instant::now(), Vec::from_iter(head0 + 1..=head0 + total));
    let settled = |s: &Arc<Slot>| {
        let done = s.cut_off.load(Ordering::Acquire) != 0 || s.closed.load(Ordering::Acquire);
        done || lock(&s.arrivals).len() >= expected.len()
    };
    while !c.slots.iter().all(settled) && appended.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cut, incomplete) = c.check(&format!("{label} at {rate}/s"), &expected);
    let (mut lat, mut lat_send, mut last) = (Vec::new(), Vec::new(), HashMap::new());
    for s in &c.slots {
        for (_, k, t) in lock(&s.arrivals).iter() {
            let sent = run.samples.get(u64::from(*k).wrapping_sub(first) as usize);
            if let Some(s) = sent.filter(|s| s.i >= warm) {
                let at = signed_us(c.base + Duration::from_micros(u64::from(*t)), s.end);
                lat.push(at);
                lat_send.push(at + signed_us(s.end, s.start));
                let last = last.entry(*k).or_insert(at);
                *last = at.max(*last);
            }
        }
    }
    let frames = c.slots.iter().map(|s| s.frames.load(Ordering::Relaxed));
    let frames: u64 = frames.sum();
    let (run, events, cpu) = (run.from(warm), expected.len(), cpu.used().line());
    let (lat, send) = (Pct::of(lat), Pct::of(lat_send));
    let last = Pct::of(last.into_values().collect());
    let dispatched = run.dispatched_rate();
    let follows = cut + incomplete == 0 && dispatched >= 0.95 * rate && last.p99 <= 1e6;
    let per = frames as f64 / (clients * events).max(1) as f64;
    let [l50, l99, l999] = [lat.p50, lat.p99, lat.p999].map(ms);
    let [s50, s99, s999] = [send.p50, send.p99, send.p999].map(ms);
    let [last50, last99] = [last.p50, last.p99].map(ms);
    let (durable, yes) = (run.lat_start(), if follows { "yes" } else { "**no**" });
    let [d50, d99] = [durable.p50, durable.p99].map(ms);
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    let row = format!("| {label} | {rate:.0} ({dispatched:.0}) | {events} | {cut} | {incomplete} | {per:.3} | {l50} / {l99} / {l999} | {s50} / {s99} / {s999} | {last50} / {last99} | {d50} / {d99} | {yes} | {cpu} |\n");
    (row, follows)
}

fn scenario_a(x: &Ctx) {
    let rate = env_u64("RL_DELTA_RATE", 1000) as f64;
    let secs = env_u64("RL_SECS", 10) as f64;
    progress!("A: 202 -> delta on /revocations/ws at {rate}/s for {secs} s");
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = x.start(dir.path());
    let token = x.load.block_on(hub.sidecar(SIDECAR));
    let delta = x.get(&hub, "/revocations?since=0&limit=1")["deltas"][0].clone();
    let server = Server::Hub(&hub, "/revocations/ws", &token);
    let (a, _) = follow_run(x, server, 1, rate, rate as u64);
    hub.stop(&x.hub_rt);
    let (bare, _) = follow_run(x, Server::Bare(&delta), 1, rate, rate as u64);
    report!(
        "### A. Ingest 202 → delta visible on `/revocations/ws`\n\nOne receiver-token client, a \
         new delta per SET, pushed open loop at {rate:.0}/s for {secs:.0} s after a 1 s warm-up; \
         the bare server sends frames of the same size at the same rate.\n\n{FOLLOW_HEADER}{a}{bare}\n"
    );
}

fn scenario_d(x: &Ctx, hub: &Hub, item: &Value, clients: usize) {
    let goal = env_u64("RL_FEED_RATE", 1000) as f64;
    let secs = env_u64("RL_SECS", 10) as f64;
    progress!("D: {clients} /feed clients following {goal} events/s");
    let (mut rows, mut rate) = (follow_run(x, Server::Bare(item), clients, goal, 0).0, goal);
    // At the goal rate, then at half the rate until the clients follow.
    loop {
        let (row, follows) = follow_run(x, Server::Hub(hub, "/feed", ADMIN), clients, rate, 0);
        rows.push_str(&row);
        if !follows && rate == goal {
            fail!("D: at {goal}/s the clients do not follow");
        }
        if follows || rate <= goal / 16.0 {
            break;
        }
        rate /= 2.0;
    }
    report!(
        "### D. {clients} clients following {goal:.0} events/s on `/feed`\n\n`/feed` clients \
         connected with `since=<head>`, then SETs pushed open loop for {secs:.0} s; \"follows\": \
         every position exactly once, in order, no `cut_off`, ingest on schedule (≥ 95%) and the \
         last client at most 1 s behind at p99; otherwise the rate is halved.\n\n{FOLLOW_HEADER}{rows}\n"
    );
}

// --- C. One event at a time to many clients, hub and bare server alternating ---

fn scenario_c(x: &Ctx, hub: &Hub, item: &Value, clients: usize) {
    let rounds = env_u64("RL_ROUNDS", 100) as usize;
    progress!("C: one event to {clients} /feed clients vs the bare server, {rounds} rounds");
    let hub_c = Clients::connect(&x.load, clients, &hub.ws("/feed"), Some(ADMIN));
    let (url, tx, accept) = bare_server(&x.hub_rt);
    let bare_c = Clients::connect(&x.load, clients, &url, None);
    let head0 = x.load.block_on(hub.head());
    let (sets, n) = (x.fresh((WARM_ROUNDS + rounds) as u64), clients as u64);
    let (ingest_url, mut times) = (hub.ingest_url(), Vec::new());
    let all_got = |c: &Clients, r: u64| c.wait(n * r, Duration::from_secs(10));
    for (r, set) in (1..).zip(sets.iter()) {
        let acked = x.load.block_on(hub.ingest(&ingest_url, set.clone()));
        let hub_ok = acked.is_ok() && all_got(&hub_c, r);
        std::thread::sleep(Duration::from_millis(10));
        let bare_sent = Instant::now();
        let _ = tx.send(item_text(item, r, r));
        match acked {
            Ok(acked) if hub_ok && all_got(&bare_c, r) => times.push((acked, bare_sent)),
            _ => {
                fail!("C: round {r}: not every client got the event within 10 s ({acked:?})");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    accept.abort();
    let all: Vec<u64> = (1..=times.len() as u64).collect();
    let hub_bad = hub_c.check("C: hub", &Vec::from_iter(all.iter().map(|r| head0 + r)));
    let ok = hub_bad == (0, 0) && bare_c.check("C: bare", &all) == (0, 0);
    let ok = if ok { "yes" } else { "**no**" };
    let (hub_at, bare_at) = (hub_c.last(), bare_c.last());
    let (mut hub_last, mut bare_last) = (Vec::new(), Vec::new());
    for (r, (acked, bare_sent)) in (1..).zip(&times).skip(WARM_ROUNDS) {
        hub_last.extend(hub_at.get(&(head0 + r)).map(|t| signed_us(*t, *acked)));
        bare_last.extend(bare_at.get(&r).map(|t| signed_us(*t, *bare_sent)));
    }
    let (hub_last, bare_last) = (Pct::of(hub_last), Pct::of(bare_last));
    let hub_row = hub_last.row("**hub: ingest 202 → last client**");
    let bare_row = bare_last.row("**machine limit: bare send → last client**");
    report!(
        "### C. One event fanned out to {clients} websocket clients\n\n{clients} `/feed` clients \
         (admin token) and {clients} clients of the bare server, sent the same item; rounds \
         alternate hub / bare, 10 ms apart; {rounds} measured after {WARM_ROUNDS} warm-up. Every \
         client got every event exactly once: {ok}.\n\n{PCT_HEADER}{hub_row}{bare_row}"
    );
    let p50 = ratio(hub_last.p50, bare_last.p50);
    let p99 = ratio(hub_last.p99, bare_last.p99);
    report!("\n**Ratio hub/bare, last client: p50 {p50}, p99 {p99}** (goal: at most 1.5).\n\n");
    drop((hub_c, bare_c));
    // Let the hub's follow tasks notice the closed sockets before D connects.
    std::thread::sleep(Duration::from_millis(500));
}

// --- B. Decisions over a large state ---

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

/// Runs this executable again as `RL_CHILD=mode` with `var` set: its `RESULT` JSON and its
/// stderr.
fn child_run(mode: &str, var: (&str, String)) -> (Value, String) {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("current exe"));
    let out = cmd.env("RL_CHILD", mode).env(var.0, var.1).output();
    let out = out.expect("child runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        fail!("child {mode} failed: {}\n{stderr}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = stdout.lines().find_map(|l| l.strip_prefix("RESULT "));
    let result = serde_json::from_str(result.unwrap_or_default());
    (result.unwrap_or_default(), stderr)
}

/// `GET /healthz` or (with a token) `POST /revocations/check` for query `i ^ salt`, checked
/// against the decision it must get; on one of `clients` in turn.
fn http_job(clients: &Arc<Vec<reqwest::Client>>, base: &str, check: Option<(&str, u64)>) -> Job {
    let (clients, base) = (clients.clone(), base.to_owned());
    let check = check.map(|(t, s)| (t.to_owned(), s));
    let n = env_u64("RL_SUBJECTS", 1_000_000);
    job(move |i| {
        let client = &clients[i as usize % clients.len()];
        let (req, want) = match &check {
            None => (client.get(format!("{base}/healthz")), None),
            Some((token, salt)) => {
                let (k, iat) = query(n, i ^ salt);
                let body = json!({"iss": SOURCE_ISS, "sub": format!("u-{k}"), "iat": iat});
                let req = client.post(format!("{base}/revocations/check"));
                let want = Some((k, iat, expected_allow(k, iat)));
                (req.bearer_auth(token).json(&body), want)
            }
        };
        let req = hub::send(req, 200);
        async move {
            let d: Value = serde_json::from_slice(&req.await?).unwrap_or_default();
            let wrong = |want: bool| d["allow"] != want || !(want || d["reason"] == "revoked");
            match want {
                Some((k, iat, want)) if wrong(want) => Err(format!("u-{k} iat {iat}: got {d}")),
                _ => Ok(()),
            }
        }
    })
}

fn scenario_b(x: &Ctx) {
    let n_goal = env_u64("RL_SUBJECTS", 1_000_000);
    let rate = env_u64("RL_CHECK_RATE", 10_000) as f64;
    let secs = env_u64("RL_SECS", 10) as f64;
    let budget = Duration::from_secs(env_u64("RL_BUILD_BUDGET_SECS", 600));
    progress!("B: state of {n_goal} subjects");
    let (mem, _) = child_run("state-mem", ("RL_SUBJECTS", n_goal.to_string()));
    progress!("B: bare state: {mem}");

    // The subjects pushed to a hub as SETs, signed on every core meanwhile.
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = x.start(dir.path());
    let token = x.load.block_on(hub.sidecar(SIDECAR));
    let started = Instant::now();
    let subject =
        |k| hub::session_revoked(&format!("b-{k}"), &format!("u-{k}"), BASE_TS + k % 1000);
    let build = std::thread::scope(|s| {
        let queue = hub::sign_queue(s, m::cores(), &x.signer, 0..n_goal, &subject);
        let push = hub::ingest_job(&hub, Arc::default(), 0, Some(queue));
        let window = Some((Duration::ZERO, budget));
        closed_loop(x.load.handle(), 64, n_goal, window, false, push)
    });
    build.check("B: pushing the subjects");
    let (pushed_in, n) = (started.elapsed(), build.done - build.errors);
    let subjects = || {
        let metrics = x.load.block_on(hub.metrics());
        metrics.get("ssf_hub_revocation_subjects", "") as u64
    };
    let head = x.load.block_on(hub.head());
    let deadline = started + budget + Duration::from_secs(300);
    while (x.load.block_on(hub.folded()) < head || subjects() < n) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (folded_in, held) = (started.elapsed(), subjects());
    if head != n + 1 || held != n + 1 {
        fail!("B: {n} SETs pushed (+1 at start), log head {head}, {held} subjects");
    }
    hub.stop(&x.hub_rt);
    progress!("B: {n} subjects pushed in {pushed_in:?}, folded after {folded_in:?}");

    // Start time on that data, in a fresh process.
    let (restore, logs) = child_run("restore", ("RL_DIR", dir.path().display().to_string()));
    let line = logs.lines().find(|l| l.contains("state restored"));
    let mut words = line.unwrap_or_default().split_whitespace();
    let restored = words.find_map(|w| w.strip_prefix("ms="));
    if restore["subjects"].as_u64() != Some(n + 1) {
        let held = &restore["subjects"];
        fail!("B: the restarted hub holds {held} subjects, not {}", n + 1);
    }

    // Restarted in this process: the decision API at a fixed rate, beside `/healthz`.
    let hub = x.start(dir.path());
    let clients = Arc::new((0..8).map(|_| hub::http_client()).collect::<Vec<_>>());
    let healthz = http_job(&clients, &hub.base, None);
    let check = http_job(&clients, &hub.base, Some((&token, 0)));
    let (cli, total) = (x.load.handle(), (rate * (1.0 + secs)) as u64);
    let h_seq = closed_loop(cli, 1, 2000, None, true, healthz.clone());
    let c_seq = closed_loop(cli, 1, 2000, None, true, check.clone());
    progress!("B: GET /healthz and POST /revocations/check open loop");
    let h = open_loop(cli, rate, total, healthz);
    let cpu = Phase::start();
    let c = open_loop(cli, rate, total, check);
    let c_cpu = cpu.used();
    // The same while the hub ingests 1,000 SETs/s (new subjects: the fold writes).
    let sets = x.fresh((1000.0 * secs) as u64);
    let check2 = http_job(&clients, &hub.base, Some((&token, 0xfeed)));
    let (c2, pushes) = std::thread::scope(|s| {
        let pushes = s.spawn(|| x.push(&hub, 1000.0, sets));
        let c2 = open_loop(cli, rate, total, check2);
        (c2, pushes.join().expect("pushes"))
    });
    hub.stop(&x.hub_rt);

    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let grown = f(&mem, "rss_after_kib") - f(&mem, "rss_before_kib");
    let (per_subject, bare_n) = (grown * 1024.0 / n_goal as f64, &mem["subjects"]);
    let (pushed, folded) = (pushed_in.as_secs_f64(), folded_in.as_secs_f64());
    let (built, ready) = (f(&mem, "build_ms") / 1e3, f(&restore, "ready_ms") / 1e3);
    let (restored, per_s) = (restored.unwrap_or("?"), n as f64 / pushed);
    let short = format!(" (**only {n} of {n_goal} within the build budget**)");
    let short = if n < n_goal { short.as_str() } else { "" };
    report!(
        "### B. Decision API over a state of {n} subjects{short}\n\n| State | Figure |\n|---|---|\n\
         | Bare `State` (child process) | {bare_n} subjects built in {built:.1} s: **{per_subject:.0} bytes per subject** |\n\
         | Pushed to the hub (64 clients, signed meanwhile) | {pushed:.1} s ({per_s:.0}/s); folded after {folded:.1} s |\n\
         | **Start with that state** (fresh process) | **{ready:.2} s** until `/healthz` answers; the hub logs `revocation state restored ms={restored}` |\n\n\
         Open loop at {rate:.0} requests/s for 1 s + {secs:.0} s, 8 keep-alive clients, random subjects, every answer checked; latency from the scheduled \
         send (no coordinated omission) and from the actual send.\n\n\
         | Load | requests | sent/s | done/s | p50 ms | p99 ms | p99.9 ms | p50 ms (from send) | p99 ms (from send) | timer lag p99 ms | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    // (label, run, warm-up requests left out of its figures)
    let ingesting = "`POST /revocations/check` while ingesting 1,000 SETs/s";
    let w = rate as u64;
    let runs = [
        ("one at a time: `GET /healthz`", h_seq, 0),
        ("one at a time: `POST /revocations/check`", c_seq, 0),
        ("machine limit: `GET /healthz` on the same hub", h, w),
        ("**`POST /revocations/check`**", c, w),
        (ingesting, c2, w),
    ];
    for (label, r, warm) in &runs {
        r.check(&format!("B: {label}"));
        let r = r.from(*warm);
        let (p, s, lag, errors) = (r.lat(), r.lat_start(), r.lag().p99, r.errors);
        let (n, sent, done) = (r.samples.len(), r.dispatched_rate(), r.completed_rate());
        let lat = [p.p50, p.p99, p.p999, s.p50, s.p99, lag].map(ms);
        let lat = lat.join(" | ");
        report!("| {label} | {n} | {sent:.0} | {done:.0} | {lat} | {errors} |\n");
    }
    let (pushed, pushed_p99) = (pushes.dispatched_rate(), ms(pushes.lat_start().p99));
    let (cpu, cpu_wall, cpu_line) = (c_cpu.process, c_cpu.wall.as_secs_f64(), c_cpu.line());
    let (calls, wrong) = (&mem["decide_calls"], &mem["wrong"]);
    let [mean, p50, p99, p999] =
        ["mean_ns", "p50_us", "p99_us", "p999_us"].map(|k| f(&mem, &format!("decide_{k}")));
    report!(
        "\nIngest during the last row: {pushed:.0}/s, 202 p99 {pushed_p99} ms. \
         CPU during the check run: {cpu:.1} s in {cpu_wall:.0} s ({cpu_line}).\n\n\
         `State::decide` alone (child process, {calls} random queries): mean {mean:.0} ns, p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs; \
         wrong answers: {wrong}.\n\n"
    );
    if *wrong != 0 {
        fail!("B: State::decide gave {wrong} wrong answers");
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
    let (rss_before, t, mut state) = (status_kib("VmRSS"), Instant::now(), State::default());
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
            authoritative: true,
            claims,
            set: String::new(),
        });
    }
    let (build, rss_after) = (t.elapsed(), status_kib("VmRSS"));
    let query = |j| {
        let (k, iat) = query(n, j);
        let q = Query {
            parts: vec![("user".into(), subject(k))],
            iat: Some(iat),
        };
        (q, expected_allow(k, iat))
    };
    let queries: Vec<(Query, bool)> = (0..100_000).map(query).collect();
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
    let config = hub::config(&dir, &serde_json::from_str(&jwks).expect("jwks"));
    let (rt, t) = (hub::runtime("hub", m::cores()), Instant::now());
    let hub = Hub::start(&rt, config);
    while rt.block_on(hub.get("/healthz")).is_err() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let ready = t.elapsed();
    // No endpoint counts the subjects: count them in the streamed snapshot.
    let req = hub.client.get(format!("{}/revocations/snapshot", hub.base));
    let resp = rt.block_on(async { req.bearer_auth(ADMIN).send().await });
    let mut resp = resp.expect("snapshot");
    let (pat, mut buf, mut subjects) = (b"\"subject_key\"", Vec::new(), 0);
    while let Ok(Some(chunk)) = rt.block_on(resp.chunk()) {
        buf.extend_from_slice(&chunk);
        subjects += buf.windows(pat.len()).filter(|w| w == pat).count();
        buf.drain(..buf.len().saturating_sub(pat.len() - 1));
    }
    hub.stop(&rt);
    json!({"subjects": subjects, "ready_ms": us(ready) / 1e3})
}

/// When this process is a child of scenario B (`RL_CHILD` set): runs it and prints its result.
pub(crate) fn child() -> bool {
    let Ok(mode) = std::env::var("RL_CHILD") else {
        return false;
    };
    let result = match mode.as_str() {
        "restore" => child_restore(),
        _ => child_state_mem(),
    };
    println!("RESULT {result}");
    true
}

pub(crate) fn run(which: &str) {
    let want = |s: &str| which.split(',').any(|x| x.trim().eq_ignore_ascii_case(s));
    crate::support::init_tracing("warn");
    let cores = m::cores();
    let x = Ctx {
        hub_rt: hub::runtime("hub", cores),
        load: hub::runtime("load", cores),
        signer: hub::source_key(),
        next: AtomicU64::new(0),
    };
    report!("## revocation\n\nMachine: {}.\n\n", m::describe());
    if want("A") {
        scenario_a(&x);
    }
    if want("B") {
        scenario_b(&x);
    }
    if want("C") || want("D") {
        let clients = env_u64("RL_CLIENTS", 1000) as usize;
        if m::open_file_limit() < 4 * clients as u64 + 200 {
            let sockets = 4 * clients + 200;
            progress!("the open-file limit is below the {sockets} sockets C needs");
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
