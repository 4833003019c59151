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
use std::sync::atomic::{AtomicUsize, Ordering};
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
use tokio::runtime::{Handle, Runtime};

use crate::support::drive::{closed_loop, job, open_loop, Run};
use crate::support::hub::{self, metric, Hub, CREDENTIAL_CHANGE as CC};
use crate::support::machine::{self as m, env_f64, env_u64, wait_quiet, Phase};
use crate::support::{fail, failures, kfmt, ms, report, row, signed_us, Pct, PCT_HEADER};

const RX_AUD: &str = "https://gateway.bench.example";
/// Receiver paths `/rx/{k}`: scenario A, then the fan-out streams.
const K_A: u32 = 1;
const K_FAN: u32 = 10_000;
/// No new arrival for this long means the hub stopped delivering.
const STALL: Duration = Duration::from_secs(30);

/// A delivered SET: (receiver path number, `txn` number, alg, arrival).
type Arrival = (u32, u32, &'static str, Instant);

/// The receivers: every delivered SET, decoded (the hub's own tests verify signatures).
#[derive(Debug, Default)]
struct Rx {
    issuer: Mutex<String>,
    arrivals: Mutex<Vec<Arrival>>,
    count: AtomicUsize,
}

impl Rx {
    fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    fn since(&self, from: usize) -> Vec<Arrival> {
        self.arrivals.lock().unwrap_or_else(|p| p.into_inner())[from..].to_vec()
    }

    /// Waits until `target` SETs arrived; false once `STALL` passes without one.
    fn wait(&self, target: usize, what: &str) -> bool {
        let (mut seen, mut since) = (self.len(), Instant::now());
        while self.len() < target {
            if self.len() != seen {
                (seen, since) = (self.len(), Instant::now());
            } else if since.elapsed() > STALL {
                fail(format!(
                    "{what}: delivery stalled at {seen} of {target} SETs"
                ));
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

/// (txn number, alg, jti) of a SET the hub signed, if its header and claims are right.
fn decode(issuer: &str, set: &[u8]) -> Result<(u32, &'static str, String), String> {
    let part = |p: Option<&[u8]>| -> Value {
        let json = p
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .unwrap_or_default();
        serde_json::from_slice(&json).unwrap_or_default()
    };
    let mut parts = set.split(|b| *b == b'.');
    let (h, c) = (part(parts.next()), part(parts.next()));
    if h["typ"] != "secevent+jwt" || c["iss"] != issuer {
        return Err(format!("header {h}, iss {}", c["iss"]));
    }
    let alg = ["ES256", "RS256"]
        .into_iter()
        .find(|a| h["alg"] == *a)
        .unwrap_or("other");
    let txn = c["txn"]
        .as_str()
        .and_then(|t| t.strip_prefix('t')?.parse().ok());
    let jti = c["jti"].as_str().unwrap_or_default().to_owned();
    Ok((txn.ok_or(format!("txn {}", c["txn"]))?, alg, jti))
}

async fn rx_push(State(rx): State<Arc<Rx>>, Path(k): Path<u32>, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let issuer = rx.issuer.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match decode(&issuer, &body) {
        Ok((txn, alg, _)) => {
            rx.arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((k, txn, alg, at));
            rx.count.fetch_add(1, Ordering::Release);
        }
        Err(e) => fail(format!("receiver /rx/{k}: undecodable SET: {e}")),
    }
    StatusCode::ACCEPTED
}

fn txn(i: u32) -> String {
    format!("t{i:09}")
}

/// A hub with one receiver registered, and the receivers' view of what it delivered.
struct Bench {
    hub: Hub,
    token: String,
    rx: Arc<Rx>,
    rx_base: String,
    signer: Arc<SetSigner>,
    next_txn: u32,
    load: Handle,
    /// The default append-to-delivered budget.
    budget_ms: u64,
}

impl Bench {
    /// Starts a hub whose issuer is the address it listens on (its poll endpoints use it).
    fn start(
        hub_rt: &Runtime,
        load: &Handle,
        rx: &Arc<Rx>,
        rx_base: &str,
        signer: &Arc<SetSigner>,
        next_txn: u32,
    ) -> (Bench, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = hub::config(dir.path(), &signer.jwks());
        let free = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
        config.listen = free.expect("free port");
        config.issuer = format!("http://{}", config.listen);
        config.delivery.allow_private_targets = vec!["127.0.0.0/8".into()];
        *rx.issuer.lock().unwrap_or_else(|p| p.into_inner()) = config.issuer.clone();
        let budget_ms = config.delivery.latency_budget_ms;
        let hub = Hub::start(hub_rt, config);
        let token = load.block_on(hub.receiver(RX_AUD));
        let (rx, rx_base, signer, load) =
            (rx.clone(), rx_base.into(), signer.clone(), load.clone());
        (
            Bench {
                hub,
                token,
                rx,
                rx_base,
                signer,
                next_txn,
                load,
                budget_ms,
            },
            dir,
        )
    }

    fn txns(&mut self, n: u32) -> Range<u32> {
        self.next_txn += n;
        self.next_txn - n..self.next_txn
    }

    /// The source's SETs for `txns`, signed.
    fn sets(&self, txns: &Range<u32>) -> Arc<Vec<Bytes>> {
        let (iss, aud) = (hub::SOURCE_ISS, json!([hub::SOURCE_AUD]));
        let range = u64::from(txns.start)..u64::from(txns.end);
        Arc::new(hub::presign(&self.signer, range, |i| {
            let (jti, txn) = (format!("dl-{i:010}"), txn(i as u32));
            hub::credential_change(iss, aud.clone(), &jti, Some(&txn), 0)
        }))
    }

    /// Ingests SETs for `txns`: open loop at `rate`, or closed loop with `clients` if `rate` is 0.
    fn ingest(&self, txns: &Range<u32>, rate: f64, clients: usize) -> Run {
        let sets = self.sets(txns);
        let (n, j) = (sets.len() as u64, hub::ingest_job(&self.hub, sets));
        let run = match rate > 0.0 {
            true => open_loop(&self.load, rate, n, j),
            false => closed_loop(&self.load, clients, n, None, true, j),
        };
        run.check("ingest");
        run
    }

    fn call(&self, method: Method, path: &str, body: Option<Value>, want: u16) -> Value {
        let r = self
            .load
            .block_on(self.hub.call(method, path, &self.token, body, want));
        r.unwrap_or_else(|e| {
            fail(e);
            Value::Null
        })
    }

    fn create_stream(&self, k: u32, alg: Option<SignAlg>) -> String {
        let delivery = json!({"method": "urn:ietf:rfc:8935", "endpoint_url": format!("{}/rx/{k}", self.rx_base)});
        let mut body = json!({"events_requested": [CC], "delivery": delivery});
        if let Some(a) = alg {
            body["signing_alg"] = json!(a.name());
        }
        let s = self.call(Method::POST, "/ssf/streams", Some(body), 201);
        let delivered = s["events_delivered"].to_string().contains(CC);
        if alg.is_some_and(|a| s["signing_alg"] != a.name()) || !delivered {
            fail(format!("stream for /rx/{k}: {s}"));
        }
        s["stream_id"].as_str().unwrap_or_default().to_owned()
    }

    /// Sets every stream's status at once.
    fn set_status(&self, ids: &[String], status: &'static str) {
        let api = self.hub.api.clone();
        let token = self.token.clone();
        let ids2 = Arc::new(ids.to_vec());
        let set = job(move |i| {
            let (api, token, id) = (api.clone(), token.clone(), ids2[i as usize].clone());
            async move {
                let body = json!({"stream_id": id, "status": status});
                let out = api
                    .call(Method::POST, "/ssf/status", &token, Some(body), 200)
                    .await?;
                (out["status"] == status)
                    .then_some(0)
                    .ok_or(format!("stream {id}: {out}"))
            }
        });
        let n = ids.len();
        closed_loop(&self.load, n, n as u64, None, false, set).check(&format!("streams {status}"));
    }

    /// Every stream still enabled (dead letters are checked in the hub's metrics); then deleted.
    fn check_and_delete(&self, ids: &[String]) {
        let all = self.load.block_on(self.hub.get("/admin/streams"));
        let all = all
            .unwrap_or_default()
            .as_array()
            .cloned()
            .unwrap_or_default();
        for id in ids {
            let s = all.iter().find(|s| s["stream_id"] == id.as_str());
            if s.is_none_or(|s| s["status"] != "enabled") {
                fail(format!("stream {id} is not enabled: {s:?}"));
            }
            let path = format!("/ssf/streams?stream_id={id}");
            self.call(Method::DELETE, &path, None, 204);
        }
    }
}

/// Every (stream, txn) of `streams` x `txns` exactly once, signed with `alg`; the number of
/// arrivals that belong to them.
fn check_complete(
    what: &str,
    arrivals: &[Arrival],
    streams: &[u32],
    txns: &Range<u32>,
    alg: &str,
) -> usize {
    let mut seen: HashMap<(u32, u32), u32> = HashMap::with_capacity(arrivals.len());
    let (mut wrong_alg, mut stray) = (0, 0);
    for a in arrivals {
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
        fail(format!("{what}: {missing} of {expected} SETs missing, {dups} duplicates, {wrong_alg} with the wrong alg, {stray} unexpected"));
    }
    arrivals.len() - stray
}

/// (arrival − 202, arrival − send) of the arrivals of `txns` from `from` on, `run` being their
/// ingest.
fn latencies(
    arrivals: &[Arrival],
    txns: &Range<u32>,
    from: u32,
    run: &Run,
) -> (Vec<f64>, Vec<f64>) {
    let sent = |a: &&Arrival| {
        run.samples
            .get(a.1.checked_sub(txns.start)? as usize)
            .filter(|s| s.ok)
    };
    let measured = arrivals
        .iter()
        .filter(|a| a.1 >= from && txns.contains(&a.1));
    let pairs = measured.filter_map(|a| Some((a.3, sent(&a)?)));
    pairs
        .map(|(at, s)| (signed_us(at, s.end), signed_us(at, s.start)))
        .unzip()
}

/// Scenario B for one algorithm: a report column; `None` if the hub stopped answering or
/// delivering correctly.
fn fanout(
    b: &mut Bench,
    alg: SignAlg,
    n: usize,
    secs: Duration,
    frac: f64,
    sign_rate: f64,
    ceiling: f64,
) -> Option<Vec<String>> {
    let name = alg.name();
    let failed = failures().len();
    // `None` (and a failure) once a check failed: the hub stopped answering or delivering.
    let broke = |step: &str| {
        let ok = failures().len() == failed;
        (!ok).then(|| fail(format!("{name} fan-out stopped at {step}")));
        ok.then_some(())
    };
    let ks: Vec<u32> = (0..n as u32).map(|j| K_FAN + j).collect();
    let ids: Vec<String> = ks.iter().map(|&k| b.create_stream(k, Some(alg))).collect();
    // A warm-up (connections, keys), then a burst that sizes the backlog.
    let mut probe = 0.0;
    for (what, count, clients) in [("warm-up", 3, 1), ("probe", 20, 4)] {
        let (txns, before) = (b.txns(count), b.rx.len());
        b.ingest(&txns, 0.0, clients);
        b.rx.wait(before + txns.len() * n, what);
        let arrivals = b.rx.since(before);
        check_complete(what, &arrivals, &ks, &txns, name);
        let first = arrivals.iter().map(|a| a.3).min();
        let last = arrivals.iter().map(|a| a.3).max();
        let span = first
            .zip(last)
            .map_or(1.0, |(f, l)| (l - f).as_secs_f64().max(1e-3));
        probe = arrivals.len() as f64 / span;
    }
    broke("the probe")?;

    // Capacity: a backlog drained with nothing else running.
    let backlog = ((probe * (secs.as_secs_f64() + 2.0) / n as f64).ceil() as u32).clamp(20, 8000);
    b.set_status(&ids, "paused");
    std::thread::sleep(Duration::from_millis(200));
    let txns = b.txns(backlog);
    b.ingest(&txns, 0.0, 16);
    let before = b.rx.len();
    wait_quiet(Duration::from_secs(10));
    let phase = Phase::start();
    b.set_status(&ids, "enabled");
    let enabled = Instant::now();
    b.rx.wait(before + backlog as usize * n, "backlog");
    let used = phase.end(&format!("the {name} drain"));
    let arrivals = b.rx.since(before);
    let delivered = check_complete("backlog", &arrivals, &ks, &txns, name);
    let last = arrivals.iter().map(|a| a.3).max().unwrap_or(enabled);
    let until = last.min(enabled + secs);
    let window = until
        .saturating_duration_since(enabled)
        .as_secs_f64()
        .max(1e-9);
    let in_window = arrivals
        .iter()
        .filter(|a| a.3 > enabled && a.3 <= until)
        .count();
    let capacity = in_window as f64 / window;
    let drained = (last - enabled).as_secs_f64();
    let hub_us = used.hub() * 1e6 / delivered.max(1) as f64;
    broke("the backlog")?;

    // Latency at a named load: a fraction of that capacity.
    let rate = (frac * capacity / n as f64).max(1.0);
    let txns = b.txns((rate * (1.0 + secs.as_secs_f64())).ceil() as u32);
    let from = txns.start + rate.ceil() as u32;
    let before = b.rx.len();
    wait_quiet(Duration::from_secs(10));
    let violations = |b: &Bench| {
        let page = b.load.block_on(b.hub.metrics()).unwrap_or_default();
        metric(
            &page,
            "ssf_hub_delivery_budget_violations_total",
            "method=\"push\"",
        )
    };
    // Taken here, not before the drain: SETs held while paused are over budget by design.
    let (v0, phase) = (violations(b), Phase::start());
    let run = b.ingest(&txns, rate, 0);
    b.rx.wait(before + txns.len() * n, "fixed rate");
    phase.end(&format!("the {name} fixed rate"));
    let arrivals = b.rx.since(before);
    check_complete("fixed rate", &arrivals, &ks, &txns, name);
    let (lo, hi) = latencies(&arrivals, &txns, from, &run);
    let over = hi.iter().filter(|&&d| d > b.budget_ms as f64 * 1e3).count();
    let measured = run.from(u64::from(from - txns.start));
    let w0 = measured.began;
    let w1 = measured.samples.last().map_or(w0, |s| s.start);
    let in_w = arrivals.iter().filter(|a| a.3 > w0 && a.3 <= w1).count();
    let delivered = kfmt(in_w as f64 / (w1 - w0).as_secs_f64().max(1e-9));
    let (lo, hi, hub_over) = (Pct::of(lo), Pct::of(hi), violations(b) - v0);
    b.check_and_delete(&ids);
    broke("the fixed rate")?;
    let (achieved, budget) = (measured.dispatched_rate(), b.budget_ms);
    let (ratio, of_ceiling) = (100.0 * capacity / sign_rate, 100.0 * capacity / ceiling);
    let sign_us = m::cores() as f64 * 1e6 / sign_rate;
    Some(vec![
        format!("{} SETs/s (backlog {backlog} events × {n} streams, drained in {drained:.1} s; probe {} SETs/s)", kfmt(capacity), kfmt(probe)),
        format!("**{ratio:.1}%**"),
        format!("{of_ceiling:.0}%"),
        format!("{hub_us:.1} us ({sign_us:.1} us)"),
        format!("{rate:.1} events/s × {n} = {} SETs/s ({:.0}% of capacity; ingest achieved {achieved:.1}/s); delivered {delivered} SETs/s", kfmt(rate * n as f64), 100.0 * frac),
        format!("{} / {} / {} ms", ms(lo.p50), ms(lo.p99), ms(lo.max)),
        format!("{over} SETs over {budget} ms (arrival − send p99 {} ms); the hub counted {hub_over}", ms(hi.p99)),
    ])
}

pub(crate) fn run() {
    if std::env::var_os("RUST_LOG").is_none() {
        // Stream creation logs a line per stream at info; keep the output readable.
        std::env::set_var("RUST_LOG", "warn");
    }
    ssf_hub::telemetry::init_tracing();
    let cores = m::cores();
    let secs = Duration::from_secs(env_u64("SSF_DELIVERY_SECS", 10));
    let rate_a = env_u64("SSF_DELIVERY_RATE", 1000) as f64;
    let n_streams = env_u64("SSF_DELIVERY_STREAMS", 100) as usize;
    let frac = env_f64("SSF_DELIVERY_FANOUT_LOAD", 0.5);
    let samples = env_u64("SSF_DELIVERY_POLL_SAMPLES", 500) as u32;
    let settle = Duration::from_millis(env_u64("SSF_DELIVERY_POLL_SETTLE_MS", 25));
    let sign_secs = Duration::from_secs(env_u64("SSF_DELIVERY_SIGN_SECS", 2));
    report(format!("## delivery\n\nMachine: {}; hub, receivers and load generator share the cores.\n\n| Machine limit (same run) | Value |\n|---|---|\n", m::describe()));
    // Separate runtimes, so thread names tell the CPU of hub, receivers and load apart.
    let hub_rt = hub::runtime("hub", cores);
    let rx_rt = hub::runtime("rx", cores);
    let load_rt = hub::runtime("load", cores);
    let load = load_rt.handle();

    // 1. Machine limits: bare signing of what the hub signs per delivered SET.
    wait_quiet(Duration::from_secs(30));
    let claims = hub::credential_change(
        "http://127.0.0.1:40000",
        json!(RX_AUD),
        "3f6c2a9e0d8b4f71a5c3e2d1b0a99887.123456",
        Some(&txn(123_456)),
        0,
    );
    let mut sign_rate = HashMap::new();
    for alg in [SignAlg::ES256, SignAlg::RS256] {
        let (_, pem) = SetSigner::generate(alg).expect("keygen");
        let r = hub::rate_on_threads(cores, sign_secs, || {
            let s = SetSigner::from_pem(&pem, alg, None).expect("signer");
            let claims = &claims;
            move || drop(std::hint::black_box(s.sign(claims).expect("sign")))
        });
        let per_core = cores as f64 * 1e6 / r;
        report(row(&[
            &format!("Bare {} signing, {cores} threads", alg.name()),
            &format!("{} SETs/s ({per_core:.1} us/SET/core)", kfmt(r)),
        ]));
        sign_rate.insert(alg.name(), r);
    }
    let rx = Arc::new(Rx::default());
    let listener = rx_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let rx_base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/rx/{k}", axum::routing::post(rx_push))
        .route(
            "/trivial",
            axum::routing::post(|| async { StatusCode::ACCEPTED }),
        )
        .with_state(rx.clone());
    rx_rt.spawn(async move { axum::serve(listener, app).await });
    // Loopback HTTP: a SET-sized POST answered 202, 1 client, then 100 at once on one client.
    let body = Bytes::from(hub::source_key().sign(&claims).expect("sign"));
    let (client, url) = (hub::http_client(), format!("{rx_base}/trivial"));
    let post = job(move |_| {
        let req = client.post(&url).body(body.clone()).send();
        async move {
            let r = req.await.map_err(|e| e.to_string())?;
            let ok = r.status() == StatusCode::ACCEPTED && r.bytes().await.is_ok();
            ok.then_some(0).ok_or("POST failed".into())
        }
    });
    let window = Some((Duration::from_millis(300), Duration::from_secs(3)));
    let rtt1 = closed_loop(load, 1, u64::MAX, window, true, post.clone());
    let phase = Phase::start();
    let r100 = closed_loop(load, 100, u64::MAX, window, true, post);
    let used = phase.end("100 concurrent POSTs");
    rtt1.check("loopback POST");
    r100.check("loopback POSTs");
    let per_req = |g: &str| used.of(|x| x == g) * 1e6 / r100.done as f64;
    let client_us = per_req("load-w");
    let server_us = per_req("rx-w");
    let rate100 = kfmt(r100.completed_rate());
    let ceiling =
        |a: &str| cores as f64 * 1e6 / (cores as f64 * 1e6 / sign_rate[a] + client_us + server_us);
    let ceil = |a: &str| {
        format!(
            "{a} {} SETs/s = **{:.0}%** of bare signing",
            kfmt(ceiling(a)),
            100.0 * ceiling(a) / sign_rate[a]
        )
    };
    report(row(&[
        "Loopback POST round trip, 1 client",
        &rtt1.lat().brief(),
    ]));
    report(row(&["Loopback POSTs, 100 concurrent on one client", &format!("{rate100} req/s; CPU per request: client {client_us:.1} us, receiver {server_us:.1} us")]));
    report(row(&[
        "Push ceiling (sign + HTTP client + receiver, all cores)",
        &format!("{}; {}", ceil("ES256"), ceil("RS256")),
    ]));

    // 2. Scenario A: one push stream at a fixed rate.
    let signer = Arc::new(hub::source_key());
    let (mut b, dir) = Bench::start(&hub_rt, load, &rx, &rx_base, &signer, 1);
    let metrics0 = load.block_on(b.hub.metrics()).unwrap_or_default();
    let a_id = b.create_stream(K_A, None);
    let txns = b.txns((rate_a * (1.0 + secs.as_secs_f64())).ceil() as u32);
    let before = b.rx.len();
    wait_quiet(Duration::from_secs(10));
    let phase = Phase::start();
    let run = b.ingest(&txns, rate_a, 0);
    b.rx.wait(before + txns.len(), "scenario A");
    let used = phase.end("scenario A");
    println!(
        "  hub CPU per event (ingest + one delivery): {:.0} us",
        used.hub() * 1e6 / txns.len() as f64
    );
    let arrivals = b.rx.since(before);
    check_complete("scenario A", &arrivals, &[K_A], &txns, "ES256");
    let from = txns.start + rate_a.ceil() as u32;
    let (lo, hi) = latencies(&arrivals, &txns, from, &run);
    report(format!("\n{PCT_HEADER}"));
    report(Pct::of(lo).row(&format!(
        "A: push, 1 stream, {rate_a:.0} events/s: arrival − ingest 202 (goal p99 ≤ 2 ms)"
    )));
    report(Pct::of(hi).row("A: upper bound, arrival − ingest send"));
    report(
        run.from(u64::from(from - txns.start))
            .lat_start()
            .row("A: ingest send → 202"),
    );
    b.check_and_delete(&[a_id]);

    // 3. Scenario C: long poll, one event at a time.
    let poll = b.call(
        Method::POST,
        "/ssf/streams",
        Some(json!({"events_requested": [CC]})),
        201,
    );
    let poll_url = poll["delivery"]["endpoint_url"]
        .as_str()
        .expect("poll endpoint_url")
        .to_owned();
    let txns = b.txns(20 + samples);
    let issuer = rx.issuer.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (sets, url) = (b.sets(&txns), b.hub.ingest_url());
    let (mut c_lo, mut c_hi, mut ack) = (Vec::new(), Vec::new(), Vec::<String>::new());
    let poll = |ack: &[String], immediately: bool| {
        let body = json!({"ack": ack, "returnImmediately": immediately});
        let req = b
            .hub
            .client
            .post(&poll_url)
            .bearer_auth(&b.token)
            .json(&body)
            .timeout(Duration::from_secs(90));
        load.spawn(async move {
            let r = req.send().await.map_err(|e| e.to_string())?;
            let status = r.status();
            let body: Value = r.json().await.map_err(|e| e.to_string())?;
            (status == StatusCode::OK)
                .then_some((body, Instant::now()))
                .ok_or(format!("HTTP {status}"))
        })
    };
    wait_quiet(Duration::from_secs(10));
    for (k, i) in txns.clone().enumerate() {
        let waiting = poll(&ack, false);
        std::thread::sleep(settle);
        let sent = Instant::now();
        let acked = load.block_on(hub::ingest(&b.hub.client, &url, sets[k].clone()));
        let ((body, at), acked) = match (load.block_on(waiting).expect("poll task"), acked) {
            (Ok(answer), Ok(acked)) => (answer, acked),
            (p, a) => {
                fail(format!("poll for txn {i}: ingest {a:?}, poll {p:?}"));
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
            fail(format!("poll for txn {i}: {body}"));
        }
        if k >= 20 {
            c_lo.push(signed_us(at, acked));
            c_hi.push(signed_us(at, sent));
        }
    }
    // Release the last one; nothing else may be pending.
    let last = load.block_on(poll(&ack, true)).expect("poll task");
    if last.as_ref().map_or(true, |(v, _)| v["sets"] != json!({})) {
        fail(format!("final poll: {last:?}"));
    }
    report(Pct::of(c_lo).row("C: long poll answer − ingest 202 (goal p99 ≤ 2 ms)"));
    report(Pct::of(c_hi).row("C: upper bound, answer − ingest send"));
    let mut metrics1 = load.block_on(b.hub.metrics()).unwrap_or_default();
    let mut next_txn = b.next_txn;
    b.hub.stop(&hub_rt);
    drop(dir);

    // 4. Scenario B: fan-out, a fresh hub per algorithm. A hub that stops answering is left
    // behind (its threads park) and reported.
    let mut cols = Vec::new();
    let mut abandoned = Vec::new();
    for alg in [SignAlg::ES256, SignAlg::RS256] {
        let (mut b, dir) = Bench::start(&hub_rt, load, &rx, &rx_base, &signer, next_txn);
        let col = fanout(
            &mut b,
            alg,
            n_streams,
            secs,
            frac,
            sign_rate[alg.name()],
            ceiling(alg.name()),
        );
        next_txn = b.next_txn;
        if col.is_some() {
            metrics1 = load.block_on(b.hub.metrics()).unwrap_or(metrics1);
            b.hub.stop(&hub_rt);
        } else {
            abandoned.push((b, dir));
        }
        cols.push(col.unwrap_or_else(|| vec!["not measured (the hub stopped)".into(); 7]));
    }
    report(format!(
        "\n| Fan-out, {n_streams} push streams | ES256 | RS256 |\n|---|---|---|\n"
    ));
    let what = [
        "Delivered SETs/s draining a backlog (capacity)",
        "Ratio to bare all-core signing (goal ≥ 70%)",
        "Ratio to the machine's push ceiling",
        "Hub CPU per delivered SET (bare sign cost)",
        "Named load",
        "Append → delivered at that load, p50 / p99 / max (arrival − 202)",
        "Over the default budget",
    ];
    for (i, what) in what.iter().enumerate() {
        report(row(&[what, &cols[0][i], &cols[1][i]]));
    }

    // Whole-run checks from the hub's own metrics (one process-wide recorder).
    let delta = |name: &str, filter: &str| {
        metric(&metrics1, name, filter) - metric(&metrics0, name, filter)
    };
    let not_delivered = delta("ssf_hub_push_attempts_total", "")
        - delta("ssf_hub_push_attempts_total", "outcome=\"delivered\"");
    let dead = delta("ssf_hub_push_dead_letters_total", "");
    let paused = delta("ssf_hub_streams_paused_by_hub_total", "");
    if not_delivered + dead + paused != 0.0 {
        fail(format!("{not_delivered} push attempts did not deliver, {dead} SETs dead-lettered, {paused} streams paused by the hub"));
    }
    if !abandoned.is_empty() {
        // A hub that stopped answering cannot be shut down: leave it and its runtime running.
        std::mem::forget((abandoned, hub_rt));
    }
}
