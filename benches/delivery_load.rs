//! Delivery load: the hub as an SSF transmitter, over loopback HTTP, against an in-process hub
//! with a durable sled log, in one process and one run so the machine's limits and the results
//! are comparable.
//!
//! Phases:
//! 1. Machine limits: bare josekit ES256 and RS256 signing of a realistic outbound SET on every
//!    core at once (one thread per core, rates summed, `SSF_DELIVERY_SIGN_SECS` = 2 s each); the
//!    loopback HTTP round trip of a trivial POST (a SET-sized body, answered 202 by an in-process
//!    axum receiver) with one client, closed loop, and the rate of the same POSTs with 100
//!    concurrent requests on one shared client (the hub's push pattern), with the CPU each side
//!    spends per request.
//! 2. A hub via `ssf_hub::app::spawn` (sled log in a tempdir, one source with a `jwks_file`,
//!    `delivery.allow_private_targets = ["127.0.0.0/8"]`). Ingest SETs are pre-signed with the
//!    source key; each carries a unique `txn`, which the hub copies into the SET it delivers, so
//!    the receiver can match every delivered SET to the ingest request that caused it.
//! 3. Scenario A: one push stream, ingest open loop at `SSF_DELIVERY_RATE` (1,000) events/s for
//!    1 s warm-up + `SSF_DELIVERY_SECS` (10) s. The receiver records the arrival instant of every
//!    SET; latency = arrival - the ingest 202 (the append happened before the 202, so this is a
//!    lower bound of append-to-delivered, and may be negative), and arrival - ingest send (an
//!    upper bound).
//! 4. Scenario B: `SSF_DELIVERY_STREAMS` (100) push streams matching every event, ES256 streams,
//!    then RS256 streams (`"signing_alg"` extension field); deleted between the two.
//!    Capacity: the streams are paused, a backlog is ingested, the streams are enabled, and
//!    the delivered-SET rate at the receivers is measured over `SSF_DELIVERY_SECS` while the
//!    backlog drains (nothing else runs); it is reported against the bare all-core signing
//!    rate of the streams' key type. Latency under a named load: ingest open loop at
//!    `SSF_DELIVERY_FANOUT_LOAD` (0.5) of the measured capacity, for 1 s warm-up +
//!    `SSF_DELIVERY_SECS`; append-to-delivered p50/p99 against the default latency budget
//!    (`delivery.latency_budget_ms`).
//! 5. Scenario C: one poll stream; a client keeps a long poll open (POST to the stream's poll
//!    `endpoint_url` with `ack` of the previous SET), waits `SSF_DELIVERY_POLL_SETTLE_MS` (25)
//!    so the poll is waiting, then ingests one event; latency = poll response arrival - ingest
//!    202. `SSF_DELIVERY_POLL_SAMPLES` (500) samples after 20 warm-up ones.
//!
//! Every response is checked: 202 for every ingest, the expected status for every management
//! call, every delivered SET decoded (typ, iss, alg of the stream's key type), every
//! (stream, event) pair delivered exactly once, no push attempt other than `delivered` in the
//! hub's metrics, no dead letters, every stream still enabled. Any failure is reported and the
//! process exits non-zero. A markdown summary is printed at the end.
//!
//! Run: `cargo bench --bench delivery_load` (a few minutes).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use ssf_hub::config::{Config, Secret, SourceConfig};
use ssf_hub::sign::{SetSigner, SignAlg};

#[path = "support/machine.rs"]
mod machine;
use machine::{cpu_by_group, env_u64, wait_quiet, MachineCpu};

const SOURCE: &str = "bench-idp";
const SOURCE_ISS: &str = "https://idp.delivery.example";
const SOURCE_AUD: &str = "https://hub.delivery.example";
const RX_AUD: &str = "https://gateway.delivery.example";
const ADMIN: &str = "delivery-bench-admin-token-0123456789";
const CC: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
const PUSH: &str = "urn:ietf:rfc:8935";
/// Receiver path ids: `/rx/{k}`.
const K_A: u32 = 1;
const K_ES: u32 = 10_000;
const K_RS: u32 = 20_000;
/// Room for every `txn` the run sends.
const MAX_TXN: usize = 1 << 20;
/// No delivery progress for this long means the hub stopped delivering; so does no answer to a
/// request for this long (the client timeout).
const STALL: Duration = Duration::from_secs(30);

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// SETs

fn txn(i: u32) -> String {
    format!("t{i:09}")
}

fn subject() -> Value {
    json!({
        "format": "complex",
        "user": {"format": "email", "email": "ana.lopez@corp.example"},
        "device": {"format": "opaque", "id": "dev-7f3a9c21-58e4"}
    })
}

fn payload(now: u64) -> Value {
    json!({
        "credential_type": "fido2-roaming",
        "change_type": "create",
        "friendly_name": "Ana's YubiKey 5C NFC",
        "initiating_entity": "user",
        "event_timestamp": now,
        "reason_admin": {"en": "Security key registered after step-up; ticket SEC-48213"}
    })
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("an object literal"),
    }
}

/// The upstream SET the source sends for `txn` number `i`.
fn ingest_claims(i: u32) -> Map<String, Value> {
    let now = ssf_hub::unix_now();
    object(json!({
        "iss": SOURCE_ISS,
        "aud": [SOURCE_AUD],
        "jti": format!("dl-{i:010}"),
        "iat": now,
        "txn": txn(i),
        "sub_id": subject(),
        "events": { CC: payload(now) }
    }))
}

/// What the hub signs for a stream (see `outbound::mint_event`): same members and sizes.
fn outbound_claims(issuer: &str) -> Map<String, Value> {
    let now = ssf_hub::unix_now();
    object(json!({
        "iss": issuer,
        "aud": RX_AUD,
        "jti": "3f6c2a9e0d8b4f71a5c3e2d1b0a99887.123456",
        "iat": now,
        "txn": txn(123_456),
        "sub_id": subject(),
        "events": { CC: payload(now) }
    }))
}

/// Signs ingest SETs `range` on every core.
fn presign(signer: &SetSigner, range: std::ops::Range<u32>, threads: usize) -> Vec<(u32, Bytes)> {
    let ids: Vec<u32> = range.collect();
    let chunk = ids.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&i| {
                            let set = signer.sign(&ingest_claims(i)).expect("sign ingest SET");
                            (i, Bytes::from(set))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signer thread"))
            .collect()
    })
}

/// Bare signatures per second, `threads` threads signing `claims` at once for `dur`.
fn bare_sign_rate(
    pem: &[u8],
    alg: SignAlg,
    claims: &Map<String, Value>,
    threads: usize,
    dur: Duration,
) -> f64 {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let signer = SetSigner::from_pem(pem, alg, None).expect("signer");
                    for _ in 0..20 {
                        signer.sign(claims).expect("sign");
                    }
                    let t = Instant::now();
                    let mut n = 0u64;
                    while t.elapsed() < dur {
                        for _ in 0..10 {
                            std::hint::black_box(
                                signer.sign(std::hint::black_box(claims)).expect("sign"),
                            );
                        }
                        n += 10;
                    }
                    n as f64 / t.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sign thread"))
            .sum()
    })
}

// ---------------------------------------------------------------------------------------------
// Shared state: ingest times, arrivals, failures

/// Per-`txn` ingest times in nanoseconds since `t0`, plus one (0 = none).
struct Timeline {
    t0: Instant,
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
}

impl Timeline {
    fn new(cap: usize) -> Timeline {
        let mk = || (0..cap).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Timeline {
            t0: Instant::now(),
            sent: mk(),
            acked: mk(),
        }
    }

    fn ns(&self, t: Instant) -> i64 {
        t.saturating_duration_since(self.t0).as_nanos() as i64
    }

    fn mark(&self, v: &[AtomicU64], i: u32, t: Instant) {
        v[i as usize].store(self.ns(t) as u64 + 1, Ordering::Relaxed);
    }

    fn get(v: &[AtomicU64], i: u32) -> Option<i64> {
        match v.get(i as usize)?.load(Ordering::Relaxed) {
            0 => None,
            x => Some(x as i64 - 1),
        }
    }
}

#[derive(Default)]
struct Failures {
    n: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Failures {
    fn add(&self, what: String) {
        self.n.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < 20 {
            eprintln!("FAILURE: {what}");
            f.push(what);
        }
    }

    fn count(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
}

const ALG_OTHER: u8 = 0;
const ALG_ES256: u8 = 1;
const ALG_RS256: u8 = 2;

fn alg_code(alg: SignAlg) -> u8 {
    match alg {
        SignAlg::ES256 => ALG_ES256,
        SignAlg::RS256 => ALG_RS256,
    }
}

#[derive(Debug, Clone, Copy)]
struct Arrival {
    stream: u32,
    txn: u32,
    alg: u8,
    at: i64,
}

/// The receivers: every delivered SET, decoded (not verified), with its arrival time.
struct Rx {
    /// The issuer of the hub delivering now (each fan-out algorithm gets a fresh hub).
    issuer: Mutex<String>,
    tl: Arc<Timeline>,
    fails: Arc<Failures>,
    arrivals: Mutex<Vec<Arrival>>,
    count: AtomicUsize,
    trivial: AtomicU64,
}

impl Rx {
    fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Arrivals from index `from` on.
    fn since(&self, from: usize) -> Vec<Arrival> {
        self.arrivals.lock().unwrap_or_else(|p| p.into_inner())[from..].to_vec()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    jti: String,
    txn: String,
}

struct Decoded {
    txn: u32,
    alg: u8,
    jti: String,
}

/// Decodes a compact SET the hub sent (no signature check: the hub's own tests verify those).
fn decode(issuer: &str, set: &[u8]) -> Result<Decoded, String> {
    let text = std::str::from_utf8(set).map_err(|_| "not UTF-8".to_owned())?;
    let mut parts = text.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS".into());
    };
    let h: Header = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("bad header")?;
    let c: Claims = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("bad claims")?;
    if h.typ.as_deref() != Some("secevent+jwt") {
        return Err(format!("typ {:?}", h.typ));
    }
    if c.iss != issuer {
        return Err(format!("iss {:?}", c.iss));
    }
    let txn = c
        .txn
        .strip_prefix('t')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("txn {:?}", c.txn))?;
    let alg = match h.alg.as_str() {
        "ES256" => ALG_ES256,
        "RS256" => ALG_RS256,
        _ => ALG_OTHER,
    };
    Ok(Decoded {
        txn,
        alg,
        jti: c.jti,
    })
}

async fn rx_push(State(rx): State<Arc<Rx>>, Path(k): Path<u32>, body: Bytes) -> StatusCode {
    let at = rx.tl.ns(Instant::now());
    let issuer = rx.issuer.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match decode(&issuer, &body) {
        Ok(d) => {
            rx.arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arrival {
                    stream: k,
                    txn: d.txn,
                    alg: d.alg,
                    at,
                });
            rx.count.fetch_add(1, Ordering::Release);
        }
        Err(e) => rx
            .fails
            .add(format!("receiver /rx/{k}: undecodable SET: {e}")),
    }
    StatusCode::ACCEPTED
}

async fn rx_trivial(State(rx): State<Arc<Rx>>, body: Bytes) -> StatusCode {
    rx.trivial.fetch_add(body.len() as u64, Ordering::Relaxed);
    StatusCode::ACCEPTED
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers

#[derive(Debug, Clone, Copy, Default)]
struct Pct {
    n: usize,
    p50: i64,
    p99: i64,
    p999: i64,
    max: i64,
}

fn pct(mut v: Vec<i64>) -> Pct {
    if v.is_empty() {
        return Pct::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Pct {
        n: v.len(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: v[v.len() - 1],
    }
}

fn ms(ns: i64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

fn kfmt(rate: f64) -> String {
    if rate >= 10_000.0 {
        format!("{:.1}k", rate / 1000.0)
    } else {
        format!("{rate:.0}")
    }
}

/// CPU seconds used by the whole process so far, threads that have exited included (tokio's
/// blocking threads exit after idling, taking their per-thread counters with them).
fn process_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|st| {
            let rest = st[st.rfind(')')? + 2..].to_owned();
            let v: Vec<&str> = rest.split_whitespace().collect();
            Some(v.get(11)?.parse::<f64>().ok()? + v.get(12)?.parse::<f64>().ok()?)
        })
        .map_or(0.0, |ticks| ticks / 100.0)
}

/// A CPU snapshot: per thread group, and the whole process.
struct CpuSnap {
    groups: BTreeMap<String, f64>,
    process: f64,
}

fn cpu_snap() -> CpuSnap {
    CpuSnap {
        groups: cpu_by_group(),
        process: process_cpu(),
    }
}

/// CPU used by thread groups between two snapshots.
struct CpuUse {
    groups: Vec<(String, f64)>,
    process: f64,
    wall: Duration,
}

impl CpuUse {
    fn between(before: &CpuSnap, after: &CpuSnap, wall: Duration) -> CpuUse {
        let mut groups: Vec<(String, f64)> = after
            .groups
            .iter()
            .map(|(k, a)| (k.clone(), a - before.groups.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d > 0.005)
            .collect();
        groups.sort_by(|a, b| b.1.total_cmp(&a.1));
        CpuUse {
            groups,
            process: after.process - before.process,
            wall,
        }
    }

    fn of(&self, pred: impl Fn(&str) -> bool) -> f64 {
        self.groups
            .iter()
            .filter(|(g, _)| pred(g))
            .map(|(_, s)| s)
            .sum()
    }

    /// Everything the hub runs (its runtime, sled's threads, threads that exited meanwhile): the
    /// whole process minus the receivers, the load generator and this bench's main thread.
    fn hub(&self, main: &str) -> f64 {
        let others = self.of(|g| matches!(g, "rx-w" | "load-w" | "load-timer") || g == main);
        (self.process.max(self.of(|_| true)) - others).max(0.0)
    }

    fn print(&self, label: &str, cores: usize) {
        let capacity = self.wall.as_secs_f64() * cores as f64;
        let total: f64 = self.groups.iter().map(|(_, d)| d).sum();
        println!(
            "  CPU during {label}: {:.2} s of {capacity:.2} s available ({:.0}%; live threads {total:.2} s)",
            self.process,
            100.0 * self.process / capacity
        );
        for (group, d) in &self.groups {
            println!(
                "    {group:<16} {d:>7.2} s  {:>5.1}% of machine",
                100.0 * d / capacity
            );
        }
    }
}

/// Sum of a Prometheus metric's samples whose line contains `filter`.
fn metric(page: &str, name: &str, filter: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| (*k == name || k.starts_with(&format!("{name}{{"))) && k.contains(filter))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Talking to the hub

struct Ctx {
    client: reqwest::Client,
    issuer: String,
    base: String,
    ingest_url: String,
    rx_base: String,
    token: Mutex<String>,
    tl: Arc<Timeline>,
    fails: Arc<Failures>,
    rx: Arc<Rx>,
    next_txn: Arc<AtomicU64>,
}

impl Ctx {
    /// Reserves `n` fresh `txn` numbers.
    fn txns(&self, n: u32) -> std::ops::Range<u32> {
        let from = self.next_txn.fetch_add(u64::from(n), Ordering::Relaxed) as u32;
        assert!((from + n) as usize <= MAX_TXN, "txn table too small");
        from..from + n
    }

    fn token(&self) -> String {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A management call; answers the JSON body (or Null) when the status is `want`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                if status != want {
                    self.fails.add(format!(
                        "{method} {path}: HTTP {status} (expected {want}): {}",
                        &text[..text.len().min(300)]
                    ));
                    return Value::Null;
                }
                serde_json::from_str(&text).unwrap_or(Value::Null)
            }
            Err(e) => {
                self.fails.add(format!("{method} {path}: {e}"));
                Value::Null
            }
        }
    }

    /// Creates a push stream to `/rx/{k}`; `None` (with a failure recorded) if the hub did not
    /// answer 201.
    async fn create_push_stream(&self, k: u32, alg: Option<SignAlg>) -> Option<String> {
        let mut body = json!({
            "events_requested": [CC],
            "delivery": {"method": PUSH, "endpoint_url": format!("{}/rx/{k}", self.rx_base)},
        });
        if let Some(a) = alg {
            body["signing_alg"] = json!(a.name());
        }
        let s = self
            .call(
                reqwest::Method::POST,
                "/ssf/streams",
                &self.token(),
                Some(body),
                201,
            )
            .await;
        let id = s["stream_id"].as_str()?.to_owned();
        if let Some(a) = alg {
            if s["signing_alg"] != a.name() {
                self.fails.add(format!(
                    "stream for /rx/{k}: signing_alg is {}",
                    s["signing_alg"]
                ));
            }
        }
        let delivered = s["events_delivered"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !delivered.iter().any(|v| v == CC) {
            self.fails.add(format!(
                "stream for /rx/{k}: events_delivered {delivered:?}"
            ));
        }
        Some(id)
    }

    async fn set_status(&self, id: &str, status: &str) {
        let out = self
            .call(
                reqwest::Method::POST,
                "/ssf/status",
                &self.token(),
                Some(json!({"stream_id": id, "status": status})),
                200,
            )
            .await;
        if out["status"] != status {
            self.fails.add(format!(
                "stream {id}: status answer {out} (wanted {status})"
            ));
        }
    }

    async fn delete_stream(&self, id: &str) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/ssf/streams?stream_id={id}"),
            &self.token(),
            None,
            204,
        )
        .await;
    }

    /// The hub's metrics page. Rendered in-process (the recorder is process-wide), so it is
    /// available even from a hub that stopped answering.
    async fn metrics(&self) -> String {
        ssf_hub::telemetry::metrics_handle().render()
    }

    /// Every stream in `ids` must still be enabled and have no dead letters.
    async fn check_streams(&self, ids: &[String]) {
        let all = self
            .call(reqwest::Method::GET, "/admin/streams", ADMIN, None, 200)
            .await;
        let by_id: HashMap<&str, &Value> = all
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| Some((s["stream_id"].as_str()?, s)))
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            match by_id.get(id.as_str()) {
                Some(s) if s["status"] == "enabled" => {}
                Some(s) => self
                    .fails
                    .add(format!("stream {id} is {} ({})", s["status"], s["reason"])),
                None => self
                    .fails
                    .add(format!("stream {id} missing from /admin/streams")),
            }
            let dead = self
                .call(
                    reqwest::Method::GET,
                    &format!("/admin/streams/{id}/dead-letters"),
                    ADMIN,
                    None,
                    200,
                )
                .await;
            if dead.as_array().is_none_or(|d| !d.is_empty()) {
                self.fails
                    .add(format!("stream {id} has dead letters: {dead}"));
            }
        }
    }
}

/// Posts one ingest SET; the instant of its 202, if it got one.
async fn ingest_one(ctx: &Ctx, i: u32, body: Bytes) -> Option<Instant> {
    let t0 = Instant::now();
    ctx.tl.mark(&ctx.tl.sent, i, t0);
    let sent = ctx
        .client
        .post(&ctx.ingest_url)
        .header("content-type", "application/secevent+jwt")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.bytes().await;
            let t1 = Instant::now();
            if status == reqwest::StatusCode::ACCEPTED && body.as_ref().is_ok_and(|b| b.is_empty())
            {
                ctx.tl.mark(&ctx.tl.acked, i, t1);
                Some(t1)
            } else {
                let text = body
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned())
                    .unwrap_or_default();
                ctx.fails
                    .add(format!("ingest txn {i}: HTTP {status}: {text}"));
                None
            }
        }
        Err(e) => {
            ctx.fails
                .add(format!("ingest txn {i}: transport error: {e}"));
            None
        }
    }
}

/// Ingests `sets` with `clients` concurrent closed-loop clients.
async fn ingest_closed(ctx: Arc<Ctx>, sets: Vec<(u32, Bytes)>, clients: usize) {
    let sets = Arc::new(sets);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (ctx, sets, next) = (ctx.clone(), sets.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((txn, body)) = sets.get(i) else {
                    break;
                };
                ingest_one(&ctx, *txn, body.clone()).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("ingest task");
    }
}

/// Sends `sets` at a fixed `rate` (per second), scheduled by a dedicated thread so a slow answer
/// does not delay the next send. Returns the achieved rate and the worst dispatch lag.
fn open_loop(
    rt: &tokio::runtime::Runtime,
    ctx: &Arc<Ctx>,
    sets: Vec<(u32, Bytes)>,
    rate: f64,
) -> (f64, Duration) {
    let handle = rt.handle().clone();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let n = sets.len();
    let ctx2 = ctx.clone();
    let dispatcher = std::thread::Builder::new()
        .name("load-timer".into())
        .spawn(move || {
            let start = Instant::now() + Duration::from_millis(5);
            let mut handles = Vec::with_capacity(n);
            let mut max_lag = Duration::ZERO;
            for (k, (i, body)) in sets.into_iter().enumerate() {
                let scheduled = start + interval.mul_f64(k as f64);
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                max_lag = max_lag.max(Instant::now().saturating_duration_since(scheduled));
                let ctx = ctx2.clone();
                handles.push(handle.spawn(async move { ingest_one(&ctx, i, body).await }));
            }
            (handles, start, max_lag)
        })
        .expect("timer thread");
    let (handles, start, max_lag) = dispatcher.join().expect("timer thread");
    rt.block_on(async {
        for h in handles {
            h.await.expect("open-loop task");
        }
    });
    (n as f64 / start.elapsed().as_secs_f64(), max_lag)
}

/// Waits until the receivers hold `target` arrivals in all; false on timeout.
/// Waits until the receivers hold `target` arrivals in all; false once `STALL` passes with no
/// new arrival (the hub stopped delivering).
fn wait_arrivals(rx: &Rx, target: usize) -> bool {
    let mut seen = rx.len();
    let mut since = Instant::now();
    while rx.len() < target {
        let now = rx.len();
        if now != seen {
            seen = now;
            since = Instant::now();
        }
        if since.elapsed() > STALL {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Checks that `arrivals` hold every (stream, txn) of `streams` x `txns` exactly once, signed with
/// `alg`. Returns the number of arrivals that belong to `streams`.
fn check_complete(
    ctx: &Ctx,
    label: &str,
    arrivals: &[Arrival],
    streams: &[u32],
    txns: &std::ops::Range<u32>,
    alg: u8,
) -> usize {
    let mut seen: HashMap<(u32, u32), u32> = HashMap::with_capacity(arrivals.len());
    let mut wrong_alg = 0usize;
    let mut stray = 0usize;
    for a in arrivals {
        if !streams.contains(&a.stream) || !txns.contains(&a.txn) {
            stray += 1;
            continue;
        }
        if a.alg != alg {
            wrong_alg += 1;
        }
        *seen.entry((a.stream, a.txn)).or_default() += 1;
    }
    let expected = streams.len() * txns.len();
    let dups: u32 = seen.values().map(|n| n - 1).sum();
    let missing = expected - seen.len();
    if missing > 0 || dups > 0 || wrong_alg > 0 || stray > 0 {
        ctx.fails.add(format!(
            "{label}: {missing} of {expected} SETs missing, {dups} duplicates, {wrong_alg} signed \
             with the wrong algorithm, {stray} unexpected"
        ));
    }
    arrivals.len() - stray
}

/// Append-to-delivered latencies (arrival - 202, arrival - send) of `arrivals` whose txn is at
/// least `from_txn`.
fn latencies(tl: &Timeline, arrivals: &[Arrival], from_txn: u32) -> (Vec<i64>, Vec<i64>) {
    let mut lo = Vec::with_capacity(arrivals.len());
    let mut hi = Vec::with_capacity(arrivals.len());
    for a in arrivals.iter().filter(|a| a.txn >= from_txn) {
        if let (Some(acked), Some(sent)) = (
            Timeline::get(&tl.acked, a.txn),
            Timeline::get(&tl.sent, a.txn),
        ) {
            lo.push(a.at - acked);
            hi.push(a.at - sent);
        }
    }
    (lo, hi)
}

// ---------------------------------------------------------------------------------------------
// Scenarios
struct Fanout {
    alg: SignAlg,
    streams: usize,
    backlog_events: u32,
    probe_rate: f64,
    capacity: f64,
    drain_rate: f64,
    drain_secs: f64,
    hub_cpu_us_per_set: f64,
    hub_cpu_share: f64,
    load_events: f64,
    load_achieved: f64,
    delivered_rate: f64,
    lo: Pct,
    hi: Pct,
    over_budget: usize,
    hub_violations: f64,
}

/// Runs `f` on the load runtime for each stream id at once.
fn for_all_streams<F, Fut>(load_rt: &tokio::runtime::Runtime, ids: &[String], f: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    load_rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for id in ids {
            set.spawn(f(id.clone()));
        }
        while set.join_next().await.is_some() {}
    });
}

/// Scenario B for one algorithm on a fresh hub. `Err` when the hub stopped answering or
/// delivering (what was measured up to then is printed).
#[allow(clippy::too_many_arguments)]
fn fanout(
    ctx: &Arc<Ctx>,
    load_rt: &tokio::runtime::Runtime,
    signer: &SetSigner,
    alg: SignAlg,
    k0: u32,
    n: usize,
    secs: Duration,
    load_frac: f64,
    budget_ms: u64,
    cores: usize,
    main_thread: &str,
) -> Result<Fanout, String> {
    let name = alg.name();
    println!("\n## Scenario B, {name}: {n} push streams matching every event");
    let fails0 = ctx.fails.count();
    let broke = |step: &str| -> Result<(), String> {
        if ctx.fails.count() > fails0 {
            Err(format!(
                "{name} fan-out: {step}: the hub stopped answering or delivering correctly"
            ))
        } else {
            Ok(())
        }
    };
    let ks: Vec<u32> = (0..n as u32).map(|j| k0 + j).collect();
    let mut ids = Vec::with_capacity(n);
    let t_create = Instant::now();
    for &k in &ks {
        let id = load_rt.block_on(ctx.create_push_stream(k, Some(alg)));
        match id {
            Some(id) if ctx.fails.count() == fails0 => ids.push(id),
            _ => {
                return Err(format!(
                    "{name} fan-out: creating push stream {} of {n} failed after {} streams were created in {:.1} s \
                     (the hub stopped answering)",
                    ids.len() + 1,
                    ids.len(),
                    t_create.elapsed().as_secs_f64()
                ))
            }
        }
    }
    println!(
        "  {n} streams created in {:.2} s",
        t_create.elapsed().as_secs_f64()
    );

    // Warm-up: connections to the receivers, keys, the workers.
    let warm = ctx.txns(3);
    let before = ctx.rx.len();
    let sets = presign(signer, warm.clone(), cores);
    load_rt.block_on(ingest_closed(ctx.clone(), sets, 1));
    if !wait_arrivals(&ctx.rx, before + 3 * n) {
        ctx.fails.add(format!(
            "{name}: warm-up: delivery stalled at {} of {} SETs",
            ctx.rx.len() - before,
            3 * n
        ));
    }
    check_complete(
        ctx,
        "fan-out warm-up",
        &ctx.rx.since(before),
        &ks,
        &warm,
        alg_code(alg),
    );
    broke("warm-up")?;

    // Probe: a burst of events with the streams enabled, to size the backlog.
    let probe = ctx.txns(20);
    let sets = presign(signer, probe.clone(), cores);
    let before = ctx.rx.len();
    load_rt.block_on(ingest_closed(ctx.clone(), sets, 4));
    if !wait_arrivals(&ctx.rx, before + probe.len() * n) {
        ctx.fails.add(format!(
            "{name}: probe: delivery stalled at {} of {} SETs",
            ctx.rx.len() - before,
            probe.len() * n
        ));
    }
    let arrivals = ctx.rx.since(before);
    check_complete(ctx, "fan-out probe", &arrivals, &ks, &probe, alg_code(alg));
    broke("probe burst")?;
    let first = arrivals.iter().map(|a| a.at).min().unwrap_or(0);
    let last = arrivals.iter().map(|a| a.at).max().unwrap_or(first);
    let probe_rate = arrivals.len() as f64 / ((last - first) as f64 / 1e9).max(1e-3);
    println!(
        "  probe: {} SETs delivered at {} SETs/s",
        arrivals.len(),
        kfmt(probe_rate)
    );

    // (a) Capacity: drain a backlog with nothing else running.
    let backlog =
        ((probe_rate * (secs.as_secs_f64() + 2.0) / n as f64).ceil() as u32).clamp(20, 8000);
    let c = ctx.clone();
    for_all_streams(load_rt, &ids, move |id| {
        let c = c.clone();
        async move { c.set_status(&id, "paused").await }
    });
    broke("pausing the streams")?;
    std::thread::sleep(Duration::from_millis(200));
    let txns = ctx.txns(backlog);
    let sets = presign(signer, txns.clone(), cores);
    let t_ingest = Instant::now();
    load_rt.block_on(ingest_closed(ctx.clone(), sets, 16));
    broke("ingesting the backlog")?;
    println!(
        "  backlog: {backlog} events ingested in {:.2} s while the streams were paused ({} SETs to deliver)",
        t_ingest.elapsed().as_secs_f64(),
        backlog as usize * n
    );
    let before = ctx.rx.len();
    wait_quiet(Duration::from_secs(10));
    let cpu0 = cpu_snap();
    let m0 = MachineCpu::now();
    let t_enable = Instant::now();
    let c = ctx.clone();
    for_all_streams(load_rt, &ids, move |id| {
        let c = c.clone();
        async move { c.set_status(&id, "enabled").await }
    });
    let t_enabled = Instant::now();
    broke("enabling the streams")?;
    let target = before + backlog as usize * n;
    let drained = wait_arrivals(&ctx.rx, target);
    let t_done = Instant::now();
    let cpu = CpuUse::between(&cpu0, &cpu_snap(), t_done - t_enable);
    let note = MachineCpu::now().note(&m0);
    if !drained {
        ctx.fails.add(format!(
            "{name}: backlog: delivery stalled at {} of {} SETs",
            ctx.rx.len() - before,
            backlog as usize * n
        ));
    }
    let arrivals = ctx.rx.since(before);
    let delivered = check_complete(ctx, "fan-out backlog", &arrivals, &ks, &txns, alg_code(alg));
    let from = ctx.tl.ns(t_enabled);
    let last = arrivals.iter().map(|a| a.at).max().unwrap_or(from);
    let until = (from + secs.as_nanos() as i64).min(last);
    let in_window = arrivals
        .iter()
        .filter(|a| a.at > from && a.at <= until)
        .count();
    let window = (until - from) as f64 / 1e9;
    let capacity = if window > 0.0 {
        in_window as f64 / window
    } else {
        0.0
    };
    let drain_secs = (last - ctx.tl.ns(t_enable)) as f64 / 1e9;
    let drain_rate = delivered as f64 / drain_secs.max(1e-9);
    let hub_cpu = cpu.hub(main_thread);
    println!(
        "  capacity: {} SETs/s over {window:.1} s after all streams were enabled (enabling took {:.0} ms); \
         whole drain {delivered} SETs in {drain_secs:.2} s = {} SETs/s {note}",
        kfmt(capacity),
        (t_enabled - t_enable).as_secs_f64() * 1e3,
        kfmt(drain_rate),
    );
    if window < secs.as_secs_f64() * 0.5 {
        println!("  NOTE: the backlog drained in {window:.1} s, shorter than the {secs:?} window asked for");
    }
    cpu.print("the drain", cores);
    let hub_cpu_us_per_set = hub_cpu * 1e6 / delivered.max(1) as f64;
    let hub_cpu_share = hub_cpu / (cpu.wall.as_secs_f64() * cores as f64);
    println!(
        "  hub CPU per delivered SET: {hub_cpu_us_per_set:.1} us ({:.0}% of the machine)",
        100.0 * hub_cpu_share
    );
    broke("draining the backlog")?;

    // (b) Latency at a named load: a fraction of the measured capacity.
    let rate = (load_frac * capacity / n as f64).max(1.0);
    let warm_n = rate.ceil() as u32;
    let total = (rate * (1.0 + secs.as_secs_f64())).ceil() as u32;
    let txns = ctx.txns(total);
    let first_measured = txns.start + warm_n;
    let sets = presign(signer, txns.clone(), cores);
    let before = ctx.rx.len();
    wait_quiet(Duration::from_secs(10));
    // Taken here, not before the drain: the backlog held while paused is over budget by design.
    let metrics_before = load_rt.block_on(ctx.metrics());
    let cpu0 = cpu_snap();
    let m0 = MachineCpu::now();
    let t0 = Instant::now();
    let (achieved, lag) = open_loop(load_rt, ctx, sets, rate);
    if !wait_arrivals(&ctx.rx, before + total as usize * n) {
        ctx.fails.add(format!(
            "{name}: fixed rate: delivery stalled at {} of {} SETs",
            ctx.rx.len() - before,
            total as usize * n
        ));
    }
    let cpu = CpuUse::between(&cpu0, &cpu_snap(), t0.elapsed());
    let note = MachineCpu::now().note(&m0);
    let arrivals = ctx.rx.since(before);
    check_complete(
        ctx,
        "fan-out fixed rate",
        &arrivals,
        &ks,
        &txns,
        alg_code(alg),
    );
    let (lo, hi) = latencies(&ctx.tl, &arrivals, first_measured);
    let budget_ns = budget_ms as i64 * 1_000_000;
    let over_budget = hi.iter().filter(|&&d| d > budget_ns).count();
    // Delivered rate while the measured events were being sent.
    let w_from = Timeline::get(&ctx.tl.sent, first_measured).unwrap_or(0);
    let w_to = Timeline::get(&ctx.tl.sent, txns.end - 1).unwrap_or(w_from);
    let in_w = arrivals
        .iter()
        .filter(|a| a.at > w_from && a.at <= w_to)
        .count();
    let delivered_rate = in_w as f64 / ((w_to - w_from) as f64 / 1e9).max(1e-9);
    let (lo, hi) = (pct(lo), pct(hi));
    println!(
        "  load: {rate:.1} events/s x {n} streams = {} SETs/s offered ({:.0}% of capacity), achieved ingest {achieved:.1}/s, \
         max dispatch lag {:.2} ms; delivered {} SETs/s {note}",
        kfmt(rate * n as f64),
        100.0 * load_frac,
        lag.as_secs_f64() * 1e3,
        kfmt(delivered_rate),
    );
    println!(
        "  append-to-delivered (arrival - 202): p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms, n {}",
        ms(lo.p50),
        ms(lo.p99),
        ms(lo.p999),
        ms(lo.max),
        lo.n
    );
    println!(
        "  upper bound (arrival - send):        p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms; {over_budget} over the {budget_ms} ms budget",
        ms(hi.p50), ms(hi.p99), ms(hi.p999), ms(hi.max)
    );
    cpu.print("the fixed-rate phase", cores);
    broke("fixed-rate delivery")?;
    let metrics_after = load_rt.block_on(ctx.metrics());
    let hub_violations = metric(
        &metrics_after,
        "ssf_hub_delivery_budget_violations_total",
        "method=\"push\"",
    ) - metric(
        &metrics_before,
        "ssf_hub_delivery_budget_violations_total",
        "method=\"push\"",
    );
    load_rt.block_on(async {
        ctx.check_streams(&ids).await;
        for id in &ids {
            ctx.delete_stream(id).await;
        }
    });
    broke("checking and deleting the streams")?;
    Ok(Fanout {
        alg,
        streams: n,
        backlog_events: backlog,
        probe_rate,
        capacity,
        drain_rate,
        drain_secs,
        hub_cpu_us_per_set,
        hub_cpu_share,
        load_events: rate,
        load_achieved: achieved,
        delivered_rate,
        lo,
        hi,
        over_budget,
        hub_violations,
    })
}

/// A hub started for one part of the run, with its data directory.
struct HubRun {
    running: ssf_hub::app::Running,
    ctx: Arc<Ctx>,
    budget_ms: u64,
    _dir: tempfile::TempDir,
}

/// Starts a fresh hub (new data directory, new port) and registers one receiver on it.
#[allow(clippy::too_many_arguments)]
fn start_hub(
    hub_rt: &tokio::runtime::Runtime,
    load_rt: &tokio::runtime::Runtime,
    source_signer: &SetSigner,
    client: &reqwest::Client,
    rx_base: &str,
    tl: &Arc<Timeline>,
    fails: &Arc<Failures>,
    rx: &Arc<Rx>,
    next_txn: &Arc<AtomicU64>,
) -> HubRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks_path = dir.path().join("source.jwks.json");
    std::fs::write(&jwks_path, source_signer.jwks().to_string()).expect("write jwks");
    // The address is chosen first so the issuer (and the poll endpoint_url the hub advertises)
    // is the address it really listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let mut config = Config::load_from(
        None,
        figment::providers::Env::prefixed("SSF_DELIVERY_BENCH_UNUSED_"),
    )
    .expect("default config");
    config.listen = SocketAddr::from(([127, 0, 0, 1], port));
    config.issuer = issuer.clone();
    config.data_dir = dir.path().join("data");
    config.admin_token = Some(Secret::new(ADMIN));
    config.delivery.allow_private_targets = vec!["127.0.0.0/8".into()];
    let source: SourceConfig = serde_json::from_value(json!({
        "id": SOURCE,
        "issuer": SOURCE_ISS,
        "jwks_file": jwks_path,
        "audiences": [SOURCE_AUD],
        "algorithms": ["ES256"],
    }))
    .expect("source config");
    config.sources = vec![source];
    config.validate().expect("valid config");
    let budget_ms = config.delivery.latency_budget_ms;
    let running = hub_rt
        .block_on(ssf_hub::app::spawn(config))
        .expect("hub starts");
    let base = format!("http://{}", running.addr);
    *rx.issuer.lock().unwrap_or_else(|p| p.into_inner()) = issuer.clone();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        issuer,
        ingest_url: format!("{base}/ingest/{SOURCE}"),
        base: base.clone(),
        rx_base: rx_base.to_owned(),
        token: Mutex::new(String::new()),
        tl: tl.clone(),
        fails: fails.clone(),
        rx: rx.clone(),
        next_txn: next_txn.clone(),
    });
    load_rt.block_on(async {
        for _ in 0..200 {
            if let Ok(r) = ctx.client.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = ctx
            .call(
                reqwest::Method::POST,
                "/admin/receivers",
                ADMIN,
                Some(json!({"name": "delivery-bench", "audience": RX_AUD})),
                201,
            )
            .await;
        *ctx.token.lock().unwrap_or_else(|p| p.into_inner()) =
            r["token"].as_str().expect("receiver token").to_owned();
    });
    HubRun {
        running,
        ctx,
        budget_ms,
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench targets without `--bench`: a load run takes minutes.
        println!("delivery_load: run it with `cargo bench --bench delivery_load`");
        return;
    }
    if std::env::var_os("RUST_LOG").is_none() {
        // Stream creation logs a line per stream at info; keep the bench output readable.
        std::env::set_var("RUST_LOG", "warn");
    }
    ssf_hub::telemetry::init_tracing();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let secs = Duration::from_secs(env_u64("SSF_DELIVERY_SECS", 10));
    let sign_secs = Duration::from_secs(env_u64("SSF_DELIVERY_SIGN_SECS", 2));
    let rate_a = env_u64("SSF_DELIVERY_RATE", 1000) as f64;
    let n_streams = env_u64("SSF_DELIVERY_STREAMS", 100) as usize;
    let load_frac = env_f64("SSF_DELIVERY_FANOUT_LOAD", 0.5);
    let poll_samples = env_u64("SSF_DELIVERY_POLL_SAMPLES", 500) as u32;
    let settle = Duration::from_millis(env_u64("SSF_DELIVERY_POLL_SETTLE_MS", 25));
    let main_thread = std::fs::read_to_string("/proc/thread-self/comm")
        .unwrap_or_default()
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches(['-', ' ', '.'])
        .to_owned();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "delivery_load: {cores} cores ({cpu_model}), phases of {secs:?}, {n_streams} fan-out streams, \
         fan-out load {load_frac} of capacity, {poll_samples} poll samples"
    );
    let fails = Arc::new(Failures::default());
    let tl = Arc::new(Timeline::new(MAX_TXN));

    // Runtimes: the hub, the receivers and the load generator each get their own, so the CPU
    // each spends can be told apart by thread name.
    let hub_workers = AtomicUsize::new(0);
    let hub_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name_fn(move || {
            let n = hub_workers.fetch_add(1, Ordering::Relaxed);
            if n < cores {
                format!("hub-w{n}")
            } else {
                format!("hub-blk{n}")
            }
        })
        .enable_all()
        .build()
        .expect("hub runtime");
    let rx_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("rx-w")
        .enable_all()
        .build()
        .expect("receiver runtime");
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("load-w")
        .enable_all()
        .build()
        .expect("load runtime");

    // Outbound SETs carry the hub's issuer; the length of a typical loopback one.
    let issuer = "http://127.0.0.1:40000".to_owned();

    // ---- 1. Machine limits.
    println!("\n## Machine limits");
    wait_quiet(Duration::from_secs(30));
    let claims = outbound_claims(&issuer);
    let mut sign_rate = HashMap::new();
    let mut sign_len = HashMap::new();
    for alg in [SignAlg::ES256, SignAlg::RS256] {
        let (signer, pem) = SetSigner::generate(alg).expect("keygen");
        sign_len.insert(alg.name(), signer.sign(&claims).expect("sign").len());
        let m0 = MachineCpu::now();
        let r = bare_sign_rate(&pem, alg, &claims, cores, sign_secs);
        println!(
            "  bare {} signing, {cores} threads: {} SETs/s ({:.1} us per SET per core), SET {} bytes {}",
            alg.name(),
            kfmt(r),
            cores as f64 * 1e6 / r,
            sign_len[alg.name()],
            MachineCpu::now().note(&m0)
        );
        sign_rate.insert(alg.name(), r);
    }

    let rx = Arc::new(Rx {
        issuer: Mutex::new(String::new()),
        tl: tl.clone(),
        fails: fails.clone(),
        arrivals: Mutex::new(Vec::with_capacity(1 << 20)),
        count: AtomicUsize::new(0),
        trivial: AtomicU64::new(0),
    });
    let rx_listener = rx_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind receiver");
    let rx_addr: SocketAddr = rx_listener.local_addr().expect("receiver addr");
    let app = axum::Router::new()
        .route("/rx/{k}", axum::routing::post(rx_push))
        .route("/trivial", axum::routing::post(rx_trivial))
        .with_state(rx.clone());
    rx_rt.spawn(async move { axum::serve(rx_listener, app).await });
    let rx_base = format!("http://{rx_addr}");

    // Loopback HTTP: a SET-sized POST answered 202, one client, then 100 at once on one client.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(STALL)
        .build()
        .expect("client");
    let (es_signer, _) = SetSigner::generate(SignAlg::ES256).expect("keygen");
    let http_body = Bytes::from(es_signer.sign(&claims).expect("sign"));
    let trivial_url: Arc<str> = format!("{rx_base}/trivial").into();
    let post_loop = |clients: usize, dur: Duration| -> (Vec<i64>, f64, CpuUse) {
        load_rt.block_on(async {
            // Connections first, unmeasured.
            let mut warm = tokio::task::JoinSet::new();
            for _ in 0..clients {
                let (c, u, b) = (client.clone(), trivial_url.clone(), http_body.clone());
                warm.spawn(async move {
                    for _ in 0..20 {
                        let r = c.post(&*u).body(b.clone()).send().await.expect("POST");
                        assert_eq!(r.status(), 202);
                        let _ = r.bytes().await;
                    }
                });
            }
            while warm.join_next().await.is_some() {}
            let cpu0 = cpu_snap();
            let start = Instant::now();
            let deadline = start + dur;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..clients {
                let (c, u, b) = (client.clone(), trivial_url.clone(), http_body.clone());
                tasks.spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        let r = c.post(&*u).body(b.clone()).send().await.expect("POST");
                        assert_eq!(r.status(), 202, "trivial POST");
                        let _ = r.bytes().await;
                        lat.push(t0.elapsed().as_nanos() as i64);
                    }
                    lat
                });
            }
            let mut all = Vec::new();
            while let Some(r) = tasks.join_next().await {
                all.extend(r.expect("POST task"));
            }
            let wall = start.elapsed();
            let cpu = CpuUse::between(&cpu0, &cpu_snap(), wall);
            let rate = all.len() as f64 / wall.as_secs_f64();
            (all, rate, cpu)
        })
    };
    let m0 = MachineCpu::now();
    let (rtt1, rate1, _) = post_loop(1, Duration::from_secs(3));
    let rtt1 = pct(rtt1);
    println!(
        "  loopback POST ({} bytes) round trip, 1 client closed loop: p50 {} ms, p99 {} ms, p99.9 {} ms ({} req/s, n {}) {}",
        http_body.len(),
        ms(rtt1.p50),
        ms(rtt1.p99),
        ms(rtt1.p999),
        kfmt(rate1),
        rtt1.n,
        MachineCpu::now().note(&m0)
    );
    let m0 = MachineCpu::now();
    let (rtt100, rate100, cpu100) = post_loop(100, Duration::from_secs(3));
    let rtt100 = pct(rtt100);
    let reqs = rate100 * cpu100.wall.as_secs_f64();
    let client_us = cpu100.of(|g| g == "load-w") * 1e6 / reqs;
    let server_us = cpu100.of(|g| g == "rx-w") * 1e6 / reqs;
    println!(
        "  loopback POST, 100 concurrent on one client: {} req/s (p50 {} ms, p99 {} ms); CPU per request: client {client_us:.1} us, receiver {server_us:.1} us {}",
        kfmt(rate100),
        ms(rtt100.p50),
        ms(rtt100.p99),
        MachineCpu::now().note(&m0)
    );
    cpu100.print("100 concurrent POSTs", cores);
    // What delivery could reach on this machine if signing and HTTP were all it did, with the
    // receivers on the same cores (they are, here).
    let ceiling = |alg: &str| {
        let sign_us = cores as f64 * 1e6 / sign_rate[alg];
        cores as f64 * 1e6 / (sign_us + client_us + server_us)
    };
    for alg in ["ES256", "RS256"] {
        println!(
            "  ceiling for {alg} push (sign + HTTP client + receiver, all cores): {} SETs/s = {:.0}% of the bare signing rate",
            kfmt(ceiling(alg)),
            100.0 * ceiling(alg) / sign_rate[alg]
        );
    }

    // ---- 2. The hub for scenarios A and C; each fan-out algorithm gets a fresh one.
    let (source_signer, _) = SetSigner::generate(SignAlg::ES256).expect("source key");
    let next_txn = Arc::new(AtomicU64::new(1));
    let new_hub = || {
        start_hub(
            &hub_rt,
            &load_rt,
            &source_signer,
            &client,
            &rx_base,
            &tl,
            &fails,
            &rx,
            &next_txn,
        )
    };
    let hub1 = new_hub();
    assert_eq!(fails.count(), 0, "hub set-up failed");
    let ctx = hub1.ctx.clone();
    let budget_ms = hub1.budget_ms;
    let metrics0 = load_rt.block_on(ctx.metrics());

    // ---- 3. Scenario A: one push stream, fixed rate.
    println!("\n## Scenario A: one push stream, {rate_a} events/s open loop for 1 s + {secs:?}");
    let a_id = load_rt
        .block_on(ctx.create_push_stream(K_A, None))
        .expect("scenario A stream");
    let n_warm = rate_a.ceil() as u32;
    let total = (rate_a * (1.0 + secs.as_secs_f64())).ceil() as u32;
    let txns = ctx.txns(total);
    let sets = presign(&source_signer, txns.clone(), cores);
    let before = rx.len();
    wait_quiet(Duration::from_secs(10));
    let cpu0 = cpu_snap();
    let m0 = MachineCpu::now();
    let t0 = Instant::now();
    let (achieved_a, lag_a) = open_loop(&load_rt, &ctx, sets, rate_a);
    if !wait_arrivals(&rx, before + total as usize) {
        fails.add(format!(
            "scenario A: delivery stalled at {} of {total} SETs",
            rx.len() - before
        ));
    }
    let cpu_a = CpuUse::between(&cpu0, &cpu_snap(), t0.elapsed());
    let note_a = MachineCpu::now().note(&m0);
    let arrivals = rx.since(before);
    check_complete(&ctx, "scenario A", &arrivals, &[K_A], &txns, ALG_ES256);
    let (lo, hi) = latencies(&tl, &arrivals, txns.start + n_warm);
    let negative = lo.iter().filter(|&&d| d < 0).count();
    let ingest_lat: Vec<i64> = (txns.start + n_warm..txns.end)
        .filter_map(|i| Some(Timeline::get(&tl.acked, i)? - Timeline::get(&tl.sent, i)?))
        .collect();
    let (a_lo, a_hi, a_ingest) = (pct(lo), pct(hi), pct(ingest_lat));
    println!(
        "  achieved ingest {achieved_a:.0}/s, max dispatch lag {:.2} ms {note_a}",
        lag_a.as_secs_f64() * 1e3
    );
    println!(
        "  ingest 202:                          p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        ms(a_ingest.p50),
        ms(a_ingest.p99),
        ms(a_ingest.p999),
        ms(a_ingest.max)
    );
    println!(
        "  append-to-delivered (arrival - 202): p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms, n {} ({negative} arrived before the 202)",
        ms(a_lo.p50), ms(a_lo.p99), ms(a_lo.p999), ms(a_lo.max), a_lo.n
    );
    println!(
        "  upper bound (arrival - send):        p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        ms(a_hi.p50),
        ms(a_hi.p99),
        ms(a_hi.p999),
        ms(a_hi.max)
    );
    cpu_a.print("scenario A", cores);
    let a_cpu_us = cpu_a.hub(&main_thread) * 1e6 / a_lo.n.max(1) as f64;
    println!("  hub CPU per event (ingest + one delivery): {a_cpu_us:.0} us");
    load_rt.block_on(async {
        ctx.check_streams(std::slice::from_ref(&a_id)).await;
        ctx.delete_stream(&a_id).await;
    });

    // ---- 4. Scenario C: long poll.
    println!("\n## Scenario C: long poll, one event at a time, {poll_samples} samples");
    let poll = load_rt.block_on(ctx.call(
        reqwest::Method::POST,
        "/ssf/streams",
        &ctx.token(),
        Some(json!({"events_requested": [CC]})),
        201,
    ));
    let poll_id = poll["stream_id"]
        .as_str()
        .expect("poll stream id")
        .to_owned();
    let poll_url = poll["delivery"]["endpoint_url"]
        .as_str()
        .expect("poll endpoint_url")
        .to_owned();
    let poll_client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("client");
    let warm_c = 20u32;
    let txns = ctx.txns(warm_c + poll_samples);
    let sets = presign(&source_signer, txns.clone(), cores);
    wait_quiet(Duration::from_secs(10));
    let m0 = MachineCpu::now();
    let (c_lo, c_hi) = load_rt.block_on(async {
        let mut ack: Vec<String> = Vec::new();
        let mut lo = Vec::new();
        let mut hi = Vec::new();
        let token = ctx.token();
        for (k, (i, body)) in sets.into_iter().enumerate() {
            let req = poll_client
                .post(&poll_url)
                .bearer_auth(&token)
                .json(&json!({ "ack": ack }));
            let tl2 = tl.clone();
            let waiting = tokio::spawn(async move {
                match req.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.bytes().await;
                        let at = tl2.ns(Instant::now());
                        (status, body.ok(), at)
                    }
                    Err(_) => (0, None, 0),
                }
            });
            tokio::time::sleep(settle).await;
            let Some(t202) = ingest_one(&ctx, i, body).await else {
                let _ = waiting.await;
                break;
            };
            let (status, body, at) = waiting.await.expect("poll task");
            if status != 200 {
                fails.add(format!("poll for txn {i}: HTTP {status}"));
                break;
            }
            let v: Value = body
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            let sets = v["sets"].as_object().cloned().unwrap_or_default();
            if sets.len() != 1 {
                fails.add(format!(
                    "poll for txn {i}: {} SETs in the answer",
                    sets.len()
                ));
            }
            ack.clear();
            for (jti, set) in &sets {
                ack.push(jti.clone());
                match set.as_str().map(|s| decode(&ctx.issuer, s.as_bytes())) {
                    Some(Ok(d)) if d.txn == i && d.jti == *jti && d.alg == ALG_ES256 => {}
                    Some(Ok(d)) => fails.add(format!(
                        "poll for txn {i}: got txn {} jti {} alg {}",
                        d.txn, d.jti, d.alg
                    )),
                    Some(Err(e)) => fails.add(format!("poll for txn {i}: undecodable SET: {e}")),
                    None => fails.add(format!("poll for txn {i}: SET is not a string")),
                }
            }
            if k as u32 >= warm_c {
                lo.push(at - tl.ns(t202));
                hi.push(at - Timeline::get(&tl.sent, i).unwrap_or(at));
            }
        }
        // Release the last one; nothing else may be pending.
        let r = poll_client
            .post(&poll_url)
            .bearer_auth(&token)
            .json(&json!({ "ack": ack, "returnImmediately": true }))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if v["sets"].as_object().is_none_or(|s| !s.is_empty()) {
                    fails.add(format!("final poll: unexpected answer {v}"));
                }
            }
            Ok(r) => fails.add(format!("final poll: HTTP {}", r.status())),
            Err(e) => fails.add(format!("final poll: {e}")),
        }
        (pct(lo), pct(hi))
    });
    let note_c = MachineCpu::now().note(&m0);
    println!(
        "  poll answer - ingest 202:  p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms, n {} {note_c}",
        ms(c_lo.p50),
        ms(c_lo.p99),
        ms(c_lo.p999),
        ms(c_lo.max),
        c_lo.n
    );
    println!(
        "  poll answer - ingest send: p50 {} ms, p99 {} ms, max {} ms",
        ms(c_hi.p50),
        ms(c_hi.p99),
        ms(c_hi.max)
    );
    load_rt.block_on(ctx.delete_stream(&poll_id));
    if let Err(e) = hub_rt.block_on(hub1.running.stop()) {
        fails.add(format!("hub stop: {e}"));
    }

    // ---- 5. Scenario B: fan-out, a fresh hub per algorithm. A hub that stops answering is
    // left behind (its threads are parked) and reported.
    let mut abandoned = Vec::new();
    let fan: Vec<Result<Fanout, String>> = [(SignAlg::ES256, K_ES), (SignAlg::RS256, K_RS)]
        .into_iter()
        .map(|(alg, k0)| {
            let h = new_hub();
            let r = fanout(
                &h.ctx,
                &load_rt,
                &source_signer,
                alg,
                k0,
                n_streams,
                secs,
                load_frac,
                budget_ms,
                cores,
                &main_thread,
            );
            match &r {
                Ok(_) => {
                    if let Err(e) = hub_rt.block_on(h.running.stop()) {
                        fails.add(format!("hub stop: {e}"));
                    }
                }
                Err(e) => {
                    fails.add(e.clone());
                    println!("  ABORTED: {e}");
                    abandoned.push(h);
                }
            }
            r
        })
        .collect();

    // ---- Whole-run checks from the hub's own metrics.
    let metrics1 = ssf_hub::telemetry::metrics_handle().render();
    let delta = |name: &str, filter: &str| {
        metric(&metrics1, name, filter) - metric(&metrics0, name, filter)
    };
    let non_delivered = delta("ssf_hub_push_attempts_total", "outcome=\"transient\"")
        + delta("ssf_hub_push_attempts_total", "outcome=\"permanent\"");
    if non_delivered != 0.0 {
        fails.add(format!("{non_delivered} push attempts did not deliver"));
    }
    let dead = delta("ssf_hub_push_dead_letters_total", "");
    if dead != 0.0 {
        fails.add(format!("{dead} SETs dead-lettered"));
    }
    let paused = delta("ssf_hub_streams_paused_by_hub_total", "");
    if paused != 0.0 {
        fails.add(format!("{paused} streams paused by the hub"));
    }
    println!(
        "\nhub metrics over the run: {} push attempts delivered; the receivers recorded {} SETs",
        delta("ssf_hub_push_attempts_total", "outcome=\"delivered\""),
        rx.len()
    );

    // ---- Summary.
    let es = sign_rate["ES256"];
    let rs = sign_rate["RS256"];
    println!("\n# Summary (markdown)\n");
    println!("Machine: {cores} cores, {cpu_model}. One process: hub, receivers and load generator share the cores.\n");
    println!("| Machine limit (same run) | Value |");
    println!("|---|---|");
    println!(
        "| Bare ES256 signing, {cores} threads | {} SETs/s ({:.1} us/SET/core) |",
        kfmt(es),
        cores as f64 * 1e6 / es
    );
    println!(
        "| Bare RS256 signing, {cores} threads | {} SETs/s ({:.1} us/SET/core) |",
        kfmt(rs),
        cores as f64 * 1e6 / rs
    );
    println!(
        "| Loopback POST round trip, 1 client | p50 {} ms, p99 {} ms |",
        ms(rtt1.p50),
        ms(rtt1.p99)
    );
    println!(
        "| Loopback POSTs, 100 concurrent | {} req/s; CPU/request: client {client_us:.1} us, receiver {server_us:.1} us |",
        kfmt(rate100)
    );
    println!(
        "| Push ceiling (sign + HTTP client + receiver) | ES256 {} SETs/s ({:.0}% of bare), RS256 {} SETs/s ({:.0}% of bare) |",
        kfmt(ceiling("ES256")),
        100.0 * ceiling("ES256") / es,
        kfmt(ceiling("RS256")),
        100.0 * ceiling("RS256") / rs
    );
    println!();
    let met = |ns: i64, goal_ms: i64| {
        if ns <= goal_ms * 1_000_000 {
            "yes"
        } else {
            "no"
        }
    };
    println!("| Scenario | p50 | p99 | p99.9 | max | n | Goal | Met |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| A: push, 1 stream, {rate_a:.0} events/s: append-to-delivered (arrival - ingest 202) | {} ms | {} ms | {} ms | {} ms | {} | p99 <= 2 ms | {} |",
        ms(a_lo.p50), ms(a_lo.p99), ms(a_lo.p999), ms(a_lo.max), a_lo.n, met(a_lo.p99, 2)
    );
    println!(
        "| A: upper bound (arrival - ingest send) | {} ms | {} ms | {} ms | {} ms | {} | | {} |",
        ms(a_hi.p50),
        ms(a_hi.p99),
        ms(a_hi.p999),
        ms(a_hi.max),
        a_hi.n,
        met(a_hi.p99, 2)
    );
    println!(
        "| A: ingest 202 (send - 202) | {} ms | {} ms | {} ms | {} ms | {} | | |",
        ms(a_ingest.p50),
        ms(a_ingest.p99),
        ms(a_ingest.p999),
        ms(a_ingest.max),
        a_ingest.n
    );
    println!(
        "| C: long poll answer - ingest 202 | {} ms | {} ms | {} ms | {} ms | {} | p99 <= 2 ms | {} |",
        ms(c_lo.p50), ms(c_lo.p99), ms(c_lo.p999), ms(c_lo.max), c_lo.n, met(c_lo.p99, 2)
    );
    println!(
        "| C: upper bound (answer - ingest send) | {} ms | {} ms | {} ms | {} ms | {} | | |",
        ms(c_hi.p50),
        ms(c_hi.p99),
        ms(c_hi.p999),
        ms(c_hi.max),
        c_hi.n
    );
    println!();
    println!("| Fan-out, {n_streams} push streams | ES256 | RS256 |");
    println!("|---|---|---|");
    let col = |f: &dyn Fn(&Fanout) -> String| -> String {
        fan.iter()
            .map(|r| match r {
                Ok(x) => f(x),
                Err(_) => "not measured (hub stopped)".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!(
        "| Bare signing rate, all cores | {} SETs/s | {} SETs/s |",
        kfmt(es),
        kfmt(rs)
    );
    println!(
        "| Delivered SETs/s, backlog drain (capacity) | {} |",
        col(&|f| {
            format!("{} SETs/s (backlog {} events x {} streams, drained in {:.1} s, {} SETs/s overall; probe {} SETs/s)", kfmt(f.capacity), f.backlog_events, f.streams, f.drain_secs, kfmt(f.drain_rate), kfmt(f.probe_rate))
        })
    );
    println!(
        "| Ratio to bare signing rate (goal >= 70%) | {} |",
        col(&|f| {
            let r = f.capacity / sign_rate[f.alg.name()];
            format!(
                "{:.1}% ({})",
                100.0 * r,
                if r >= 0.7 { "met" } else { "missed" }
            )
        })
    );
    println!(
        "| Ratio to the push ceiling of this machine | {} |",
        col(&|f| format!("{:.0}%", 100.0 * f.capacity / ceiling(f.alg.name())))
    );
    println!(
        "| Hub CPU per delivered SET (bare sign cost) | {} |",
        col(&|f| format!(
            "{:.1} us ({:.1} us), hub used {:.0}% of the machine",
            f.hub_cpu_us_per_set,
            cores as f64 * 1e6 / sign_rate[f.alg.name()],
            100.0 * f.hub_cpu_share
        ))
    );
    println!(
        "| Named load | {} |",
        col(&|f| format!(
            "{:.1} events/s x {} = {} SETs/s ({:.0}% of capacity; ingest achieved {:.1}/s)",
            f.load_events,
            f.streams,
            kfmt(f.load_events * f.streams as f64),
            100.0 * load_frac,
            f.load_achieved
        ))
    );
    println!(
        "| Delivered at that load | {} |",
        col(&|f| format!("{} SETs/s", kfmt(f.delivered_rate)))
    );
    println!(
        "| Append-to-delivered p50 / p99 / max (arrival - 202) | {} |",
        col(&|f| format!("{} / {} / {} ms", ms(f.lo.p50), ms(f.lo.p99), ms(f.lo.max)))
    );
    println!(
        "| Upper bound p99 (arrival - send) vs {budget_ms} ms budget | {} |",
        col(&|f| format!(
            "{} ms ({}; {} SETs over, hub counted {})",
            ms(f.hi.p99),
            if f.hi.p99 <= budget_ms as i64 * 1_000_000 {
                "met"
            } else {
                "missed"
            },
            f.over_budget,
            f.hub_violations
        ))
    );
    for e in fan.iter().filter_map(|r| r.as_ref().err()) {
        println!("\nFan-out not measured: {e}");
    }
    println!();
    let n_fail = fails.count();
    if n_fail > 0 {
        println!("FAILED: {n_fail} problems; first ones:");
        for f in fails.first.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            println!("  - {f}");
        }
        // A hub that stopped answering cannot be shut down; exit without waiting for it.
        drop(abandoned);
        std::process::exit(1);
    }
    println!("All responses checked: every ingest answered 202, every SET delivered exactly once, no failed push attempts.");
    std::process::exit(0);
}
