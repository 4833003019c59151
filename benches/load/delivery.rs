//! The hub as an SSF transmitter, over loopback HTTP. In one process and one run:
//! 1. Machine limits: bare josekit ES256 and RS256 signing of a realistic outbound SET on every
//!    core (`SSF_DELIVERY_SIGN_SECS`, 2 s each); a SET-sized loopback POST answered 202 by an
//!    axum receiver, 1 client in a closed loop and 100 concurrent on one client (the push
//!    pattern), with the CPU each side spends per request; from these, the push ceiling.
//! 2. A: one push stream, ingest open loop at `SSF_DELIVERY_RATE` (1,000) events/s for 1 s +
//!    `SSF_DELIVERY_SECS` (10). Each ingest SET carries a unique `txn`, which the hub copies into
//!    the SET it delivers; latency = arrival − the ingest 202 (a lower bound of append-to-
//!    delivered, possibly negative) and arrival − ingest send (an upper bound).
//! 3. C: one poll stream; a long poll is kept open (acknowledging the previous SET), and after
//!    `SSF_DELIVERY_POLL_SETTLE_MS` (25) one event is ingested; latency = answer − ingest 202,
//!    `SSF_DELIVERY_POLL_SAMPLES` (500) samples after 20 warm-up ones.
//! 4. B, on a fresh hub per algorithm: `SSF_DELIVERY_STREAMS` (100) push streams (ES256, then
//!    RS256 via `signing_alg`). Capacity: streams paused, a backlog ingested, streams enabled,
//!    delivered SETs/s over `SSF_DELIVERY_SECS`. Then latency at `SSF_DELIVERY_FANOUT_LOAD` (0.5)
//!    of that capacity against the default latency budget.
//!
//! Every delivered SET is decoded (typ, iss, alg); every (stream, event) pair must arrive exactly
//! once; the hub's metrics must show no failed push attempt, dead letter or paused stream.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use reqwest::Method;
use serde_json::{json, Value};
use ssf_hub::sign::{SetSigner, SignAlg};
use tokio::runtime::Runtime;

use crate::support::drive::{closed_loop, open_loop, Run};
use crate::support::hub::{self, Hub, Metrics, CREDENTIAL_CHANGE as CC};
use crate::support::machine::{self as m, env_f64, env_u64, wait_quiet, Phase};
use crate::support::{fail, failed, init_tracing, kfmt, lock, ms, report, signed_us};
use crate::support::{Pct, PCT_HEADER};

pub(crate) const RX_AUD: &str = "https://gateway.bench.example";
/// Receiver paths `/rx/{k}`: scenario A, then the fan-out streams.
const K_A: u32 = 1;
const K_FAN: u32 = 10_000;
/// No new arrival for this long means the hub stopped delivering.
const STALL: Duration = Duration::from_secs(30);

/// A delivered SET: (receiver path number, `txn` number, alg, arrival).
pub(crate) type Arrival = (u32, u32, &'static str, Instant);

/// The receivers: every delivered SET, decoded (the hub's own tests verify signatures).
#[derive(Debug, Default)]
pub(crate) struct Rx {
    pub(crate) issuer: Mutex<String>,
    arrivals: Mutex<Vec<Arrival>>,
}

impl Rx {
    pub(crate) fn len(&self) -> usize {
        lock(&self.arrivals).len()
    }

    /// Waits until `more` SETs arrived after the first `from`: those, or none once `STALL`
    /// passes without an arrival.
    pub(crate) fn wait(&self, from: usize, more: usize, what: &str) -> Vec<Arrival> {
        let (mut seen, mut since) = (self.len(), Instant::now());
        while self.len() < from + more {
            if self.len() != seen {
                (seen, since) = (self.len(), Instant::now());
            } else if since.elapsed() > STALL {
                fail!("{what}: delivery stalled at {} of {more} SETs", seen - from);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        lock(&self.arrivals)[from..].to_vec()
    }
}

/// (txn number, alg, jti) of a SET the hub signed, if its header and claims are right.
fn decode(issuer: &str, set: &[u8]) -> Result<(u32, &'static str, String), String> {
    let part = |p: Option<&[u8]>| -> Value {
        let json = p.and_then(|p| URL_SAFE_NO_PAD.decode(p).ok());
        serde_json::from_slice(&json.unwrap_or_default()).unwrap_or_default()
    };
    let mut parts = set.split(|b| *b == b'.');
    let (h, c) = (part(parts.next()), part(parts.next()));
    if h["typ"] != "secevent+jwt" || c["iss"] != issuer {
        return Err(format!("header {h}, iss {}", c["iss"]));
    }
    let alg = ["ES256", "RS256"].into_iter().find(|a| h["alg"] == *a);
    let txn = c["txn"].as_str().and_then(|t| t.get(1..)?.parse().ok());
    let jti = c["jti"].as_str().unwrap_or_default().to_owned();
    let alg = alg.unwrap_or("other");
    Ok((txn.ok_or(format!("txn {}", c["txn"]))?, alg, jti))
}

pub(crate) async fn rx_push(
    State(rx): State<Arc<Rx>>,
    Path(k): Path<u32>,
    body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    let issuer = lock(&rx.issuer).clone();
    match decode(&issuer, &body) {
        Ok((txn, alg, _)) => lock(&rx.arrivals).push((k, txn, alg, at)),
        Err(e) => fail!("receiver /rx/{k}: undecodable SET: {e}"),
    }
    StatusCode::ACCEPTED
}

/// What every hub of the run shares: runtimes, receivers, the source key and the next `txn`.
struct Env {
    hub_rt: Runtime,
    load: Runtime,
    rx: Arc<Rx>,
    rx_base: String,
    signer: SetSigner,
    next_txn: AtomicU32,
    /// Knobs: the length of A and of the fan-out's measurements, the fan-out's streams, and the
    /// fraction of its capacity at which its latency is measured.
    secs: Duration,
    streams: usize,
    frac: f64,
}

/// A hub whose issuer is the address it listens on (its poll endpoints use it), with one
/// receiver registered.
struct Bench<'a> {
    env: &'a Env,
    hub: Hub,
    token: String,
    /// The default append-to-delivered budget.
    budget_ms: u64,
    _dir: tempfile::TempDir,
}

impl Bench<'_> {
    fn start(env: &Env) -> Bench<'_> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = hub::config(dir.path(), &env.signer.jwks());
        let free = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
        config.listen = free.expect("free port");
        config.issuer = format!("http://{}", config.listen);
        config.delivery.allow_private_targets = vec!["127.0.0.0/8".into()];
        *lock(&env.rx.issuer) = config.issuer.clone();
        let budget_ms = config.delivery.latency_budget_ms;
        let hub = Hub::start(&env.hub_rt, config);
        let token = env.load.block_on(hub.receiver(RX_AUD));
        Bench {
            env,
            hub,
            token,
            budget_ms,
            _dir: dir,
        }
    }

    fn txns(&self, n: u32) -> Range<u32> {
        let first = self.env.next_txn.fetch_add(n, Ordering::Relaxed);
        first..first + n
    }

    /// The source's SETs for `txns`, signed.
    fn sets(&self, txns: &Range<u32>) -> Arc<Vec<Bytes>> {
        let (iss, aud) = (hub::SOURCE_ISS, json!([hub::SOURCE_AUD]));
        let range = u64::from(txns.start)..u64::from(txns.end);
        Arc::new(hub::presign(&self.env.signer, range, |i| {
            let (jti, txn) = (format!("dl-{i:010}"), format!("t{i:09}"));
            hub::credential_change(iss, aud.clone(), &jti, Some(&txn), 0)
        }))
    }

    /// Ingests SETs for `txns`: open loop at `rate`, or closed loop with `clients` if `rate` is 0.
    fn ingest(&self, txns: &Range<u32>, rate: f64, clients: usize) -> Run {
        let (sets, load) = (self.sets(txns), self.env.load.handle());
        let (n, j) = (sets.len() as u64, hub::ingest_job(&self.hub, sets, 0, None));
        let run = if rate > 0.0 {
            open_loop(load, rate, n, j)
        } else {
            closed_loop(load, clients, n, None, true, j)
        };
        run.check("ingest");
        run
    }

    fn call(&self, method: Method, path: &str, body: Option<Value>, want: u16) -> Value {
        let r = self.hub.call(method, path, &self.token, body, want);
        self.env.load.block_on(r).unwrap_or_else(|e| {
            fail!("{e}");
            Value::Null
        })
    }

    fn create_stream(&self, k: u32, alg: Option<SignAlg>) -> String {
        let url = format!("{}/rx/{k}", self.env.rx_base);
        let delivery = json!({"method": "urn:ietf:rfc:8935", "endpoint_url": url});
        let mut body = json!({"events_requested": [CC], "delivery": delivery});
        if let Some(a) = alg {
            body["signing_alg"] = json!(a.name());
        }
        let s = self.call(Method::POST, "/ssf/streams", Some(body), 201);
        let delivered = s["events_delivered"].to_string().contains(CC);
        if alg.is_some_and(|a| s["signing_alg"] != a.name()) || !delivered {
            fail!("stream for /rx/{k}: {s}");
        }
        s["stream_id"].as_str().unwrap_or_default().to_owned()
    }

    /// Sets every stream's status.
    fn set_status(&self, ids: &[String], status: &str) {
        for id in ids {
            let body = json!({"stream_id": id, "status": status});
            let out = self.call(Method::POST, "/ssf/status", Some(body), 200);
            if out["status"] != status {
                fail!("stream {id}: {out}");
            }
        }
    }

    /// Every stream still enabled (dead letters are checked in the hub's metrics); then deleted.
    fn check_and_delete(&self, ids: &[String]) {
        let all = self.env.load.block_on(self.hub.get("/admin/streams"));
        let all: Vec<Value> = serde_json::from_value(all.unwrap_or_default()).unwrap_or_default();
        for id in ids {
            let s = all.iter().find(|s| s["stream_id"] == id.as_str());
            if s.is_none_or(|s| s["status"] != "enabled") {
                fail!("stream {id} is not enabled: {s:?}");
            }
            let path = format!("/ssf/streams?stream_id={id}");
            self.call(Method::DELETE, &path, None, 204);
        }
    }

    fn metrics(&self) -> Metrics {
        self.env.load.block_on(self.hub.metrics())
    }
}

/// Every (stream, txn) of `streams` x `txns` exactly once, signed with `alg`; the number of
/// arrivals that belong to them.
fn complete(what: &str, got: &[Arrival], streams: &[u32], txns: &Range<u32>, alg: &str) -> usize {
    let mut seen: HashMap<(u32, u32), u32> = HashMap::with_capacity(got.len());
    let (mut wrong_alg, mut stray) = (0, 0);
    for a in got {
        if !streams.contains(&a.0) || !txns.contains(&a.1) {
            stray += 1;
        } else {
            wrong_alg += usize::from(a.2 != alg);
            *seen.entry((a.0, a.1)).or_default() += 1;
        }
    }
    let expected = streams.len() * txns.len();
    let dups: u32 = seen.values().map(|n| n - 1).sum();
    let missing = expected - seen.len();
    if missing + dups as usize + wrong_alg + stray > 0 {
        fail!("{what}: {missing} of {expected} SETs missing, {dups} duplicates, {wrong_alg} with the wrong alg, {stray} unexpected");
    }
    got.len() - stray
}

/// (arrival − 202, arrival − send) of the arrivals of `txns` from `from` on, `run` being their
/// ingest.
fn latencies(got: &[Arrival], txns: &Range<u32>, from: u32, run: &Run) -> (Vec<f64>, Vec<f64>) {
    let mut out = (Vec::new(), Vec::new());
    for a in got.iter().filter(|a| a.1 >= from && txns.contains(&a.1)) {
        // The loop kept every sample, in index order.
        let s = &run.samples[(a.1 - txns.start) as usize];
        if s.ok {
            out.0.push(signed_us(a.3, s.end));
            out.1.push(signed_us(a.3, s.start));
        }
    }
    out
}

/// Scenario B for one algorithm: a report row, or `None` if the hub stopped answering or
/// delivering correctly. `limits` are bare all-core signing and the push ceiling, SETs/s.
fn fanout(b: &Bench, alg: SignAlg, limits: (f64, f64)) -> Option<()> {
    let (name, failed_before, n, secs) = (alg.name(), failed(), b.env.streams, b.env.secs);
    // `None` (and a failure) once a check failed: the hub stopped answering or delivering.
    let broke = |step: &str| {
        let ok = failed() == failed_before;
        (!ok).then(|| fail!("{name} fan-out stopped at {step}"));
        ok.then_some(())
    };
    let ks: Vec<u32> = (0..n as u32).map(|j| K_FAN + j).collect();
    let ids: Vec<String> = ks.iter().map(|&k| b.create_stream(k, Some(alg))).collect();
    // A warm-up (connections, keys), then a burst that sizes the backlog.
    let mut probe = 0.0;
    for (what, count, clients) in [("warm-up", 3, 1), ("probe", 20, 4)] {
        let (txns, before) = (b.txns(count), b.env.rx.len());
        b.ingest(&txns, 0.0, clients);
        let arrivals = b.env.rx.wait(before, txns.len() * n, what);
        complete(what, &arrivals, &ks, &txns, name);
        let times = arrivals.iter().map(|a| a.3);
        let span = times.clone().max().zip(times.min()).map(|(l, f)| l - f);
        probe = arrivals.len() as f64 / span.unwrap_or_default().as_secs_f64().max(1e-3);
    }
    broke("the probe")?;

    // Capacity: a backlog drained with nothing else running.
    let backlog = ((probe * (secs.as_secs_f64() + 2.0) / n as f64).ceil() as u32).clamp(20, 8000);
    b.set_status(&ids, "paused");
    std::thread::sleep(Duration::from_millis(200));
    let txns = b.txns(backlog);
    b.ingest(&txns, 0.0, 16);
    let before = b.env.rx.len();
    wait_quiet(Duration::from_secs(10));
    let phase = Phase::start();
    b.set_status(&ids, "enabled");
    let enabled = Instant::now();
    let arrivals = b.env.rx.wait(before, backlog as usize * n, "backlog");
    let used = phase.end(&format!("the {name} drain"));
    let delivered = complete("backlog", &arrivals, &ks, &txns, name);
    let last = arrivals.iter().map(|a| a.3).max().unwrap_or(enabled);
    let until = last.min(enabled + secs);
    let in_window = arrivals.iter().filter(|a| a.3 > enabled && a.3 <= until);
    let in_window = in_window.count();
    let capacity = in_window as f64 / (until - enabled).as_secs_f64().max(1e-9);
    let drained = (last - enabled).as_secs_f64();
    let hub_us = used.hub() * 1e6 / delivered.max(1) as f64;
    broke("the backlog")?;

    // Latency at a named load: a fraction of that capacity. The hub's over-budget count is taken
    // from here on, not before the drain: SETs held while paused are over budget by design.
    let rate = (b.env.frac * capacity / n as f64).max(1.0);
    let txns = b.txns((rate * (1.0 + secs.as_secs_f64())).ceil() as u32);
    let (from, before) = (txns.start + rate.ceil() as u32, b.env.rx.len());
    wait_quiet(Duration::from_secs(10));
    let metrics0 = b.metrics();
    let run = b.ingest(&txns, rate, 0);
    let arrivals = b.env.rx.wait(before, txns.len() * n, "fixed rate");
    complete("fixed rate", &arrivals, &ks, &txns, name);
    let (lo, hi) = latencies(&arrivals, &txns, from, &run);
    let over = hi.iter().filter(|&&d| d > b.budget_ms as f64 * 1e3).count();
    let (lo, hi) = (Pct::of(lo), Pct::of(hi));
    let hub_over = "ssf_hub_delivery_budget_violations_total";
    let hub_over = b.metrics().since(&metrics0, hub_over, "method=\"push\"");
    b.check_and_delete(&ids);
    broke("the fixed rate")?;
    let achieved = run.from(u64::from(from - txns.start)).dispatched_rate();
    let (sign_rate, ceiling) = limits;
    let (ratio, of_ceiling) = (100.0 * capacity / sign_rate, 100.0 * capacity / ceiling);
    let sign_us = m::cores() as f64 * 1e6 / sign_rate;
    let (capacity, probe, load) = (kfmt(capacity), kfmt(probe), kfmt(rate * n as f64));
    let ([p50, p99, max, hi_p99], pct) =
        ([lo.p50, lo.p99, lo.max, hi.p99].map(ms), 100.0 * b.env.frac);
    let budget = b.budget_ms;
    let capacity = format!("{capacity} SETs/s (backlog {backlog} events × {n} streams, drained in {drained:.1} s; probe {probe} SETs/s)");
    let load = format!("{rate:.1} events/s × {n} = {load} SETs/s ({pct:.0}% of capacity; ingest achieved {achieved:.1}/s)");
    let over = format!(
        "{over} SETs over {budget} ms (arrival − send p99 {hi_p99} ms); the hub counted {hub_over}"
    );
    report!("| {name} | {capacity} | **{ratio:.1}%** | {of_ceiling:.0}% | {hub_us:.1} us ({sign_us:.1} us) | {load} | {p50} / {p99} / {max} ms | {over} |\n");
    Some(())
}

pub(crate) fn run() {
    // Stream creation logs a line per stream at info; keep the output readable.
    init_tracing("warn");
    let cores = m::cores();
    let secs = Duration::from_secs(env_u64("SSF_DELIVERY_SECS", 10));
    let rate_a = env_u64("SSF_DELIVERY_RATE", 1000) as f64;
    let n_streams = env_u64("SSF_DELIVERY_STREAMS", 100) as usize;
    let frac = env_f64("SSF_DELIVERY_FANOUT_LOAD", 0.5);
    let samples = env_u64("SSF_DELIVERY_POLL_SAMPLES", 500) as u32;
    let settle = Duration::from_millis(env_u64("SSF_DELIVERY_POLL_SETTLE_MS", 25));
    let sign_secs = Duration::from_secs(env_u64("SSF_DELIVERY_SIGN_SECS", 2));
    let machine = m::describe();
    report!("## delivery\n\nMachine: {machine}; hub, receivers and load generator share the cores.\n\n| Machine limit (same run) | Value |\n|---|---|\n");
    // Separate runtimes, so thread names tell the CPU of hub, receivers and load apart.
    let (rx_rt, rx) = (hub::runtime("rx", cores), Arc::new(Rx::default()));
    let listener = rx_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"));
    let listener = listener.expect("bind");
    let rx_base = format!("http://{}", listener.local_addr().expect("addr"));
    let env = Env {
        hub_rt: hub::runtime("hub", cores),
        load: hub::runtime("load", cores),
        rx: rx.clone(),
        rx_base: rx_base.clone(),
        signer: hub::source_key(),
        next_txn: AtomicU32::new(1),
        secs,
        streams: n_streams,
        frac,
    };
    let load = env.load.handle();

    // 1. Machine limits: bare signing of what the hub signs per delivered SET.
    wait_quiet(Duration::from_secs(30));
    let jti = "3f6c2a9e0d8b4f71a5c3e2d1b0a99887.123456";
    let iss = "http://127.0.0.1:40000";
    let claims = hub::credential_change(iss, json!(RX_AUD), jti, Some("t000123456"), 0);
    let mut sign_rate = HashMap::new();
    for alg in [SignAlg::ES256, SignAlg::RS256] {
        let (_, pem) = SetSigner::generate(alg).expect("keygen");
        let r = hub::rate_on_threads(cores, sign_secs, || {
            let s = SetSigner::from_pem(&pem, alg, None).expect("signer");
            let claims = &claims;
            move || drop(std::hint::black_box(s.sign(claims).expect("sign")))
        });
        let (name, rate, per_core) = (alg.name(), kfmt(r), cores as f64 * 1e6 / r);
        report!("| Bare {name} signing, {cores} threads | {rate} SETs/s ({per_core:.1} us/SET/core) |\n");
        sign_rate.insert(name, r);
    }
    let app = axum::Router::new().route("/rx/{k}", axum::routing::post(rx_push));
    let trivial = axum::routing::post(|| async { StatusCode::ACCEPTED });
    let app = app.route("/trivial", trivial);
    let app = app.with_state(rx.clone());
    rx_rt.spawn(async move { axum::serve(listener, app).await });
    // Loopback HTTP: a SET-sized POST answered 202, 1 client, then 100 at once on one client.
    let body = Bytes::from(hub::source_key().sign(&claims).expect("sign"));
    let (client, url) = (hub::http_client(), format!("{rx_base}/trivial"));
    let post = hub::request_job(202, move || client.post(&url).body(body.clone()));
    let window = Some((Duration::from_millis(300), Duration::from_secs(3)));
    let rtt1 = closed_loop(load, 1, u64::MAX, window, true, post.clone());
    let phase = Phase::start();
    let r100 = closed_loop(load, 100, u64::MAX, window, true, post);
    let used = phase.end("100 concurrent POSTs");
    rtt1.check("loopback POST");
    r100.check("loopback POSTs");
    let per_req = |g: &str| used.of(|x| x == g) * 1e6 / r100.done as f64;
    let (client_us, server_us) = (per_req("load-w"), per_req("rx-w"));
    // Per SET on one core: signing, the client's side and the receiver's side of one POST.
    let cost = |a: &str| cores as f64 * 1e6 / sign_rate[a] + client_us + server_us;
    let ceiling = |a: &str| cores as f64 * 1e6 / cost(a);
    let ceil = |a: &str| {
        let (rate, share) = (kfmt(ceiling(a)), 100.0 * ceiling(a) / sign_rate[a]);
        format!("{a} {rate} SETs/s = **{share:.0}%** of bare signing")
    };
    let (rtt1, rate100) = (rtt1.lat().brief(), kfmt(r100.completed_rate()));
    let (es, rs) = (ceil("ES256"), ceil("RS256"));
    report!("| Loopback POST round trip, 1 client | {rtt1} |\n");
    report!("| Loopback POSTs, 100 concurrent on one client | {rate100} req/s; CPU per request: client {client_us:.1} us, receiver {server_us:.1} us |\n");
    report!("| Push ceiling (sign + HTTP client + receiver, all cores) | {es}; {rs} |\n");

    // 2. Scenario A: one push stream at a fixed rate.
    let b = Bench::start(&env);
    let metrics0 = b.metrics();
    let a_id = b.create_stream(K_A, None);
    let txns = b.txns((rate_a * (1.0 + secs.as_secs_f64())).ceil() as u32);
    let before = rx.len();
    wait_quiet(Duration::from_secs(10));
    let phase = Phase::start();
    let run = b.ingest(&txns, rate_a, 0);
    let arrivals = rx.wait(before, txns.len(), "scenario A");
    let hub_us = phase.end("scenario A").hub() * 1e6 / txns.len() as f64;
    println!("  hub CPU per event (ingest + one delivery): {hub_us:.0} us");
    complete("scenario A", &arrivals, &[K_A], &txns, "ES256");
    let (lo, hi) = latencies(&arrivals, &txns, txns.start + rate_a.ceil() as u32, &run);
    let a =
        format!("A: push, 1 stream, {rate_a:.0} events/s: arrival − ingest 202 (goal p99 ≤ 2 ms)");
    let lo = Pct::of(lo).row(&a);
    let hi = Pct::of(hi).row("A: upper bound, arrival − ingest send");
    report!("\n{PCT_HEADER}{lo}{hi}");
    b.check_and_delete(&[a_id]);

    // 3. Scenario C: long poll, one event at a time.
    let poll = Some(json!({"events_requested": [CC]}));
    let poll = b.call(Method::POST, "/ssf/streams", poll, 201);
    let poll_url = poll["delivery"]["endpoint_url"].as_str().map(str::to_owned);
    let poll_url = poll_url.expect("poll URL");
    let txns = b.txns(20 + samples);
    let (issuer, sets, url) = (lock(&rx.issuer).clone(), b.sets(&txns), b.hub.ingest_url());
    let (mut c_lo, mut c_hi, mut ack) = (Vec::new(), Vec::new(), Vec::<String>::new());
    let poll = |ack: &[String], immediately: bool| {
        let body = json!({"ack": ack, "returnImmediately": immediately});
        let req = b.hub.client.post(&poll_url).bearer_auth(&b.token);
        let req = hub::send(req.json(&body).timeout(Duration::from_secs(90)), 200);
        load.spawn(async move {
            let body: Value = serde_json::from_slice(&req.await?).unwrap_or_default();
            Ok::<_, String>((body, Instant::now()))
        })
    };
    wait_quiet(Duration::from_secs(10));
    for (k, i) in txns.clone().enumerate() {
        let waiting = poll(&ack, false);
        std::thread::sleep(settle);
        let sent = Instant::now();
        let acked = load.block_on(b.hub.ingest(&url, sets[k].clone()));
        let ((body, at), acked) = match (load.block_on(waiting).expect("poll task"), acked) {
            (Ok(answer), Ok(acked)) => (answer, acked),
            (p, a) => {
                fail!("poll for txn {i}: ingest {a:?}, poll {p:?}");
                break;
            }
        };
        let got = body["sets"].as_object().cloned().unwrap_or_default();
        ack = got.keys().cloned().collect();
        let right = |(jti, set): (&String, &Value)| {
            let d = decode(&issuer, set.as_str().unwrap_or_default().as_bytes());
            d.is_ok_and(|(txn, alg, j)| txn == i && alg == "ES256" && j == *jti)
        };
        if got.len() != 1 || !got.iter().all(right) {
            fail!("poll for txn {i}: {body}");
        }
        if k >= 20 {
            c_lo.push(signed_us(at, acked));
            c_hi.push(signed_us(at, sent));
        }
    }
    // Release the last one; nothing else may be pending.
    let last = load.block_on(poll(&ack, true)).expect("poll task");
    if last.as_ref().map_or(true, |(v, _)| v["sets"] != json!({})) {
        fail!("final poll: {last:?}");
    }
    let lo = Pct::of(c_lo).row("C: long poll answer − ingest 202 (goal p99 ≤ 2 ms)");
    let hi = Pct::of(c_hi).row("C: upper bound, answer − ingest send");
    report!("{lo}{hi}");
    let mut metrics1 = b.metrics();
    b.hub.stop(&env.hub_rt);

    // 4. Scenario B: fan-out, a fresh hub per algorithm. A hub that stops answering is left
    // behind (its threads park) and reported.
    report!(
        "\n| Fan-out, {n_streams} push streams | Delivered SETs/s draining a backlog (capacity) | \
         Ratio to bare all-core signing (goal ≥ 70%) | Ratio to the machine's push ceiling | Hub \
         CPU per delivered SET (bare sign cost) | Named load | Append → delivered at that load, \
         p50 / p99 / max (arrival − 202) | Over the default budget |\n|---|---|---|---|---|---|---|---|\n"
    );
    let mut abandoned = Vec::new();
    for alg in [SignAlg::ES256, SignAlg::RS256] {
        let b = Bench::start(&env);
        if fanout(&b, alg, (sign_rate[alg.name()], ceiling(alg.name()))).is_some() {
            metrics1 = b.metrics();
            b.hub.stop(&env.hub_rt);
        } else {
            report!("| {} | not measured (the hub stopped) |\n", alg.name());
            abandoned.push(b);
        }
    }

    // Whole-run checks from the hub's own metrics (one process-wide recorder).
    let delta = |name: &str, filter: &str| metrics1.since(&metrics0, name, filter);
    let not_delivered = delta("ssf_hub_push_attempts_total", "")
        - delta("ssf_hub_push_attempts_total", "outcome=\"delivered\"");
    let dead = delta("ssf_hub_push_dead_letters_total", "");
    let paused = delta("ssf_hub_streams_paused_by_hub_total", "");
    if not_delivered + dead + paused != 0.0 {
        fail!("{not_delivered} push attempts did not deliver, {dead} SETs dead-lettered, {paused} streams paused by the hub");
    }
    // A hub that stopped answering cannot be shut down: leave it and its runtimes running.
    if !abandoned.is_empty() {
        std::mem::forget(abandoned);
        std::mem::forget(env);
    }
}
