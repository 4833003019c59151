//! Load generator over loopback HTTP against an in-process hub with a durable sled log.
//!
//! Phases, all in one process and one run, so the limits and the results are comparable:
//! - (a) machine limits: bare josekit ES256 verification on one core and on every core at once
//!   (one thread per core, rates summed; measured again at the end, the higher value is used),
//!   the loopback HTTP round trip of `GET /healthz` on the same hub (one client, then many), and
//!   the cost of a 4 KiB append + `fdatasync` in the data directory.
//! - (b) maximum sustained push ingest: a closed loop of `SSF_LOAD_CLIENTS` (64) keep-alive
//!   clients posting pre-signed ~1 KB ES256 SETs to `POST /ingest/{source}` for `SSF_LOAD_SECS`
//!   (10) seconds after a 1 s warm-up; rate, its ratio to the all-core bare verify rate, and
//!   the 202 latency.
//! - (c) open loop at a fixed 1,000 SETs/s (`SSF_LOAD_OPEN_RATE`) for `SSF_LOAD_SECS` after a
//!   1 s warm-up. Sends are scheduled by a dedicated timer thread and latency is measured from the
//!   scheduled send time, so a stall shows up in the tail (no coordinated omission).
//! - (d) growth: ingest at the maximum rate until the log holds `SSF_LOAD_EVENTS` (200,000)
//!   events; a sampler reads VmRSS every 250 ms, reported at every 100,000. SETs beyond the
//!   pre-signed pool are signed on the fly by one thread into a bounded queue, so the load
//!   generator's own memory stays constant while the log grows.
//!
//! Every answer must be 202; any other status or a transport error is counted, reported, and
//! makes the process exit non-zero. A markdown summary table is printed at the end.
//!
//! The machine may be shared: before each phase the bench waits (`SSF_LOAD_QUIET_WAIT_SECS`,
//! 120) until other processes use under 5% of the CPU, and after it prints how much they and the
//! hypervisor took (`NOISY` above 5%). Per phase it also prints CPU seconds per thread group, the
//! hub's own commit/verify histograms, and disk bytes written. `SSF_LOAD_LOG=memory` swaps in the
//! in-memory log for attribution. See BENCHMARKS.md.
//!
//! Run: `cargo bench --bench ingest_load` (a few minutes);
//!      `SSF_LOAD_EVENTS=1000000 cargo bench --bench ingest_load` for the 1M memory point.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use josekit::jwk::Jwk;
use serde_json::{json, Map, Value};

use ssf_hub::config::{Config, SourceConfig};
use ssf_hub::sign::{SetSigner, SignAlg};
use ssf_hub::verify::Alg;

#[path = "support/machine.rs"]
mod machine;
use machine::{cpu_by_group, env_u64, rss_kib, status_kib, wait_quiet, MachineCpu};

const ISSUER: &str = "https://idp.load.example";
const AUDIENCE: &str = "https://hub.load.example";
const SOURCE: &str = "loadgen";
/// Target size of the compact SET, in bytes.
const TARGET_LEN: usize = 1024;
const MILESTONE: u64 = 100_000;

// ---------------------------------------------------------------------------------------------
// SETs

/// Claims of a realistic CAEP credential-change SET with a complex subject; `reason_admin` is
/// padded by `pad` bytes to reach the target size.
fn claims(jti: &str, pad: usize) -> Map<String, Value> {
    let now = ssf_hub::unix_now();
    let mut reason = String::from("Security key registered after step-up; ticket SEC-48213");
    reason.extend(std::iter::repeat_n('.', pad));
    let v = json!({
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "jti": jti,
        "iat": now,
        "sub_id": {
            "format": "complex",
            "user": {"format": "email", "email": "ana.lopez@corp.example"},
            "device": {"format": "opaque", "id": "dev-7f3a9c21-58e4"}
        },
        "events": {
            "https://schemas.openid.net/secevent/caep/event-type/credential-change": {
                "credential_type": "fido2-roaming",
                "change_type": "create",
                "friendly_name": "Ana's YubiKey 5C NFC",
                "initiating_entity": "user",
                "event_timestamp": now,
                "reason_admin": {"en": reason}
            }
        }
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// Distinct, fixed-length `jti`s so every SET is the same size and none is a duplicate.
fn jti(i: u64) -> String {
    format!("load-{i:012}")
}

struct Sets {
    signer: SetSigner,
    pad: usize,
}

impl Sets {
    fn new() -> Sets {
        let (signer, _) = SetSigner::generate(SignAlg::ES256).expect("es256 key");
        let first = signer.sign(&claims(&jti(0), 0)).expect("sign");
        let pad = TARGET_LEN.saturating_sub(first.len()) * 3 / 4;
        Sets { signer, pad }
    }

    fn sign(&self, i: u64) -> Bytes {
        let set = self.signer.sign(&claims(&jti(i), self.pad)).expect("sign");
        // Exact-size allocation: the pool's footprint is then just the SETs' bytes.
        Bytes::from(set.into_bytes().into_boxed_slice())
    }

    /// Signs `jti`s `from..from + n` on every core.
    fn presign(&self, from: u64, n: u64, threads: usize) -> Vec<Bytes> {
        let chunk = n.div_ceil(threads as u64).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let lo = from + (t * chunk).min(n);
                    let hi = from + ((t + 1) * chunk).min(n);
                    s.spawn(move || (lo..hi).map(|i| self.sign(i)).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("signer thread"))
                .collect()
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn cpu_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = after
        .iter()
        .map(|(k, a)| (k.clone(), a - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.005)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn print_cpu(label: &str, delta: &[(String, f64)], wall: Duration, cores: usize) {
    let capacity = wall.as_secs_f64() * cores as f64;
    let total: f64 = delta.iter().map(|(_, d)| d).sum();
    println!(
        "  CPU during {label}: {total:.2} s of {capacity:.2} s available ({:.0}%)",
        100.0 * total / capacity
    );
    for (group, d) in delta {
        println!(
            "    {group:<14} {d:>7.2} s  {:>5.1}% of machine",
            100.0 * d / capacity
        );
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Pcts {
    n: usize,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
}

fn pcts(mut v: Vec<Duration>) -> Pcts {
    if v.is_empty() {
        return Pcts::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Pcts {
        n: v.len(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: v[v.len() - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------------------------
// Outcome accounting

#[derive(Debug, Default)]
struct Outcomes {
    accepted: AtomicU64,
    non_202: AtomicU64,
    transport_errors: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl Outcomes {
    fn fail(&self, what: String) {
        let mut f = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(what);
        }
    }
}

/// Posts one SET; true when the hub answered 202.
async fn post(client: &reqwest::Client, url: &str, body: Bytes, outcomes: &Outcomes) -> bool {
    let sent = client
        .post(url)
        .header("content-type", "application/secevent+jwt")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.bytes().await;
            if status == reqwest::StatusCode::ACCEPTED && body.is_ok() {
                outcomes.accepted.fetch_add(1, Ordering::Relaxed);
                true
            } else {
                outcomes.non_202.fetch_add(1, Ordering::Relaxed);
                let text = body
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned())
                    .unwrap_or_default();
                outcomes.fail(format!("HTTP {status}: {text}"));
                false
            }
        }
        Err(e) => {
            outcomes.transport_errors.fetch_add(1, Ordering::Relaxed);
            outcomes.fail(format!("transport error: {e}"));
            false
        }
    }
}

/// Where the next SET to send comes from: a pre-signed pool, then (optionally) a queue filled by
/// a signing thread; at most `remaining` SETs in all.
struct Feed {
    pool: Arc<Vec<Bytes>>,
    next: Arc<AtomicUsize>,
    stream: Option<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Bytes>>>,
    remaining: AtomicU64,
}

impl Feed {
    async fn next(&self) -> Option<Bytes> {
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
            .ok()?;
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = self.pool.get(i) {
            return Some(b.clone());
        }
        self.stream.as_ref()?.lock().await.recv().await
    }
}

struct ClosedLoop {
    /// Latencies of 202s sent inside the measurement window.
    latencies: Vec<Duration>,
    /// 202s completed inside the measurement window.
    completed: u64,
    window: Duration,
    exhausted: bool,
}

/// `clients` keep-alive clients, each sending its next SET as soon as the previous one is
/// answered, until `deadline` (if any) or the feed runs dry. Only sends that start after the
/// warm-up and complete before the deadline are measured.
async fn closed_loop(
    client: reqwest::Client,
    url: Arc<str>,
    feed: Arc<Feed>,
    clients: usize,
    warmup: Duration,
    duration: Option<Duration>,
    outcomes: Arc<Outcomes>,
) -> ClosedLoop {
    let start = Instant::now();
    let measure_from = start + warmup;
    let deadline = duration.map(|d| measure_from + d);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, url, feed, outcomes) =
            (client.clone(), url.clone(), feed.clone(), outcomes.clone());
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(if deadline.is_some() { 1 << 14 } else { 0 });
            let mut completed = 0u64;
            let mut exhausted = false;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let Some(body) = feed.next().await else {
                    exhausted = true;
                    break;
                };
                let t0 = Instant::now();
                let ok = post(&client, &url, body, &outcomes).await;
                let t1 = Instant::now();
                if ok && t0 >= measure_from && deadline.is_none_or(|d| t1 <= d) {
                    // Without a deadline (the growth phase) only the count is kept, so the load
                    // generator's memory does not grow with the log.
                    if deadline.is_some() {
                        lat.push(t1 - t0);
                    }
                    completed += 1;
                }
            }
            (lat, completed, exhausted, Instant::now())
        });
    }
    let mut out = ClosedLoop {
        latencies: Vec::new(),
        completed: 0,
        window: Duration::ZERO,
        exhausted: false,
    };
    let mut last = start;
    while let Some(r) = tasks.join_next().await {
        let (lat, completed, exhausted, ended) = r.expect("client task");
        out.latencies.extend(lat);
        out.completed += completed;
        out.exhausted |= exhausted;
        last = last.max(ended);
    }
    out.window = match deadline {
        // If the feed ran dry early the window is shorter than asked.
        Some(d) => d.min(last).saturating_duration_since(measure_from),
        None => last.saturating_duration_since(measure_from),
    };
    out
}

/// `GET /healthz` in a closed loop: `clients` concurrent clients for `duration`.
async fn healthz_loop(
    client: reqwest::Client,
    url: Arc<str>,
    clients: usize,
    duration: Duration,
) -> (Vec<Duration>, Duration) {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            // One unmeasured request so connection set-up is not in the figures.
            let _ = client.get(&*url).send().await.map(|r| r.bytes());
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = client.get(&*url).send().await.expect("healthz");
                assert!(r.status().is_success(), "healthz answered {}", r.status());
                let _ = r.bytes().await;
                lat.push(t0.elapsed());
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("healthz task"));
    }
    (all, start.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Phases

/// Bare ES256 verifications per second with `threads` threads verifying at once for `dur`.
fn bare_verify_rate(sets: &Sets, set: &str, threads: usize, dur: Duration) -> f64 {
    let dot = set.rfind('.').expect("compact");
    let input = set.as_bytes()[..dot].to_vec();
    let sig = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &set[dot + 1..],
    )
    .expect("b64");
    let map = match sets.signer.public_jwk() {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let jwk = Jwk::from_map(map).expect("jwk");
    let counts: Vec<(u64, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (input, sig, jwk) = (&input, &sig, &jwk);
                s.spawn(move || {
                    let v = Alg::ES256.verifier(jwk).expect("verifier");
                    // Short warm-up, then count.
                    for _ in 0..200 {
                        v.verify(input, sig).expect("verifies");
                    }
                    let t = Instant::now();
                    let mut n = 0u64;
                    while t.elapsed() < dur {
                        for _ in 0..100 {
                            v.verify(std::hint::black_box(input), sig)
                                .expect("verifies");
                        }
                        n += 100;
                    }
                    (n, t.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("verify thread"))
            .collect()
    });
    counts
        .iter()
        .map(|(n, d)| *n as f64 / d.as_secs_f64())
        .sum()
}

struct OpenLoop {
    lat: Pcts,
    achieved_rate: f64,
    max_dispatch_lag: Duration,
    /// Scheduled send times (seconds into the measured window) of the answers slower than 2 ms.
    slow_at: Vec<f64>,
}

/// Sends at a fixed `rate` for `warmup + duration`, scheduled by a dedicated thread; latency is
/// measured from each SET's scheduled send time.
fn open_loop(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &Arc<str>,
    pool: Vec<Bytes>,
    rate: u64,
    warmup: Duration,
    outcomes: &Arc<Outcomes>,
) -> OpenLoop {
    let handle = rt.handle().clone();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let n_warm = (warmup.as_secs_f64() * rate as f64) as usize;
    let n = pool.len();
    let (client, url, outcomes2) = (client.clone(), url.clone(), outcomes.clone());
    let dispatcher = std::thread::Builder::new()
        .name("load-timer".into())
        .spawn(move || {
            let start = Instant::now() + Duration::from_millis(5);
            let mut handles = Vec::with_capacity(n);
            let mut max_lag = Duration::ZERO;
            for (i, body) in pool.into_iter().enumerate() {
                let scheduled = start + interval * i as u32;
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                max_lag = max_lag.max(Instant::now().saturating_duration_since(scheduled));
                let (client, url, outcomes) = (client.clone(), url.clone(), outcomes2.clone());
                handles.push(handle.spawn(async move {
                    let ok = post(&client, &url, body, &outcomes).await;
                    (i, ok, Instant::now().saturating_duration_since(scheduled))
                }));
            }
            (handles, start, max_lag)
        })
        .expect("timer thread");
    let (handles, start, max_lag) = dispatcher.join().expect("timer thread");
    let results = rt.block_on(async {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.expect("open-loop task"));
        }
        out
    });
    let elapsed = start.elapsed();
    let measured: Vec<Duration> = results
        .iter()
        .filter(|(i, ok, _)| *ok && *i >= n_warm)
        .map(|(_, _, d)| *d)
        .collect();
    let slow_at = results
        .iter()
        .filter(|(i, ok, d)| *ok && *i >= n_warm && *d > Duration::from_millis(2))
        .map(|(i, _, _)| (i - n_warm) as f64 * interval.as_secs_f64())
        .collect();
    OpenLoop {
        lat: pcts(measured),
        achieved_rate: n as f64 / elapsed.as_secs_f64(),
        max_dispatch_lag: max_lag,
        slow_at,
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    head: u64,
    rss_kib: u64,
    anon_kib: u64,
}

// ---------------------------------------------------------------------------------------------

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench targets without `--bench`: a load run takes minutes.
        println!("ingest_load: run it with `cargo bench --bench ingest_load`");
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let clients = env_u64("SSF_LOAD_CLIENTS", 64) as usize;
    let secs = Duration::from_secs(env_u64("SSF_LOAD_SECS", 10));
    let target_events = env_u64("SSF_LOAD_EVENTS", 200_000);
    let open_rate = env_u64("SSF_LOAD_OPEN_RATE", 1000);
    let client_threads = env_u64("SSF_LOAD_CLIENT_THREADS", cores as u64) as usize;
    let warmup = Duration::from_secs(1);
    // Same logging set-up as `ssf-hub serve` (RUST_LOG, default info).
    ssf_hub::telemetry::init_tracing();

    println!("ingest_load: {cores} cores, {clients} clients, {client_threads} client threads, phases of {secs:?}, log target {target_events} events");
    let log_note = std::env::var("SSF_LOAD_LOG").unwrap_or_else(|_| "sled".into());
    println!("log backend: {log_note}");
    let rss_start = rss_kib();

    // Keys and the hub.
    let sets = Sets::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks_path = dir.path().join("loadgen.jwks.json");
    std::fs::write(&jwks_path, sets.signer.jwks().to_string()).expect("write jwks");
    let mut config = Config::load_from(None, figment::providers::Env::prefixed("SSF_LOAD_UNUSED_"))
        .expect("default config");
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.data_dir = dir.path().join("data");
    // SSF_LOAD_LOG=memory swaps the durable sled log for the in-memory one (attribution only).
    let log_kind = std::env::var("SSF_LOAD_LOG").unwrap_or_else(|_| "sled".into());
    if log_kind == "memory" {
        config.log.url = "memory://".into();
    }
    // Built through serde so fields added later with defaults need no change here.
    let source: SourceConfig = serde_json::from_value(json!({
        "id": SOURCE,
        "issuer": ISSUER,
        "jwks_file": jwks_path,
        "audiences": [AUDIENCE],
        "algorithms": ["ES256"],
    }))
    .expect("source config");
    config.sources = vec![source];
    config.validate().expect("valid config");
    let log_dir: PathBuf = config.data_dir.join("log");

    let hub_workers = AtomicUsize::new(0);
    let hub_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name_fn(move || {
            // Tokio starts its workers first; later threads are the blocking pool (sled I/O).
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
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .thread_name("load-w")
        .enable_all()
        .build()
        .expect("load runtime");
    let running = hub_rt
        .block_on(ssf_hub::app::spawn(config))
        .expect("hub starts");
    let hub = running.hub.clone();
    let base = format!("http://{}", running.addr);
    let ingest_url: Arc<str> = format!("{base}/ingest/{SOURCE}").into();
    let healthz_url: Arc<str> = format!("{base}/healthz").into();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .expect("http client");
    let outcomes = Arc::new(Outcomes::default());

    // (a) machine limits.
    let one_set = sets.sign(u64::MAX / 2).to_vec();
    let one_set = String::from_utf8(one_set).expect("ascii");
    println!("SET size: {} bytes (compact ES256)", one_set.len());
    let quiet = Duration::from_secs(env_u64("SSF_LOAD_QUIET_WAIT_SECS", 120));
    wait_quiet(quiet);
    let bare_1 = bare_verify_rate(&sets, &one_set, 1, Duration::from_secs(2));
    let m = MachineCpu::now();
    let bare_all_start = bare_verify_rate(&sets, &one_set, cores, Duration::from_secs(2));
    println!(
        "(a) bare ES256 verify: 1 core {:.0}/s ({:.1} us each); all {cores} cores {:.0}/s {}",
        bare_1,
        1e6 / bare_1,
        bare_all_start,
        MachineCpu::now().note(&m)
    );
    let m = MachineCpu::now();
    let (hz1, hz1_wall) = load_rt.block_on(healthz_loop(
        client.clone(),
        healthz_url.clone(),
        1,
        Duration::from_secs(2),
    ));
    let hz1_n = hz1.len();
    let hz1 = pcts(hz1);
    let (hzc, hzc_wall) = load_rt.block_on(healthz_loop(
        client.clone(),
        healthz_url.clone(),
        clients,
        Duration::from_secs(3),
    ));
    let hzc_rate = hzc.len() as f64 / hzc_wall.as_secs_f64();
    let hzc = pcts(hzc);
    println!(
        "(a) loopback GET /healthz: 1 client {:.0}/s p50 {} ms p99 {} ms; {clients} clients {:.0}/s p50 {} ms p99 {} ms {}",
        hz1_n as f64 / hz1_wall.as_secs_f64(),
        ms(hz1.p50),
        ms(hz1.p99),
        hzc_rate,
        ms(hzc.p50),
        ms(hzc.p99),
        MachineCpu::now().note(&m)
    );

    std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
    let fsync = fsync_cost(&dir.path().join("data"), 1000);
    println!(
        "(a) append 4 KiB + fdatasync in the data directory: p50 {} ms, p99 {} ms",
        ms(fsync.p50),
        ms(fsync.p99)
    );

    // Pre-sign pools: enough for (b) even at 75% of the all-core bare verify rate, and (c).
    let pool_b_len = env_u64(
        "SSF_LOAD_POOL",
        (bare_all_start * 0.75 * (secs + warmup).as_secs_f64()) as u64,
    );
    let pool_c_len = open_rate * (secs + warmup).as_secs();
    let t = Instant::now();
    let pool_b = Arc::new(sets.presign(0, pool_b_len, cores));
    let pool_c = sets.presign(pool_b_len, pool_c_len, cores);
    let next_jti = pool_b_len + pool_c_len;
    let pool_bytes: usize = pool_b.iter().chain(pool_c.iter()).map(Bytes::len).sum();
    println!(
        "pre-signed {} SETs ({:.1} MiB) in {:.1} s",
        pool_b.len() + pool_c.len(),
        pool_bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );

    // RSS sampler: (elapsed, log head, VmRSS) every 250 ms for the rest of the run.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let run_start = Instant::now();
    let sampler_stop = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (samples, hub, stop) = (samples.clone(), hub.clone(), sampler_stop.clone());
        std::thread::Builder::new()
            .name("load-rss".into())
            .spawn(move || {
                while stop.load(Ordering::Relaxed) == 0 {
                    let s = Sample {
                        at: run_start.elapsed(),
                        head: hub.log.head(),
                        rss_kib: rss_kib(),
                        anon_kib: status_kib("RssAnon"),
                    };
                    samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
            .expect("sampler")
    };
    let rss_before_ingest = rss_kib();
    println!(
        "RSS before ingest: {:.1} MiB (process start {:.1} MiB; includes the {:.1} MiB of pre-signed SETs)",
        mib(rss_before_ingest),
        mib(rss_start),
        pool_bytes as f64 / (1 << 20) as f64
    );

    // (b) maximum sustained rate, closed loop.
    let feed_b = Arc::new(Feed {
        pool: pool_b.clone(),
        next: Arc::new(AtomicUsize::new(0)),
        stream: None,
        remaining: AtomicU64::new(u64::MAX),
    });
    wait_quiet(quiet);
    let m0 = hub.metrics.render();
    let cpu0 = cpu_by_group();
    let mb = MachineCpu::now();
    let tb = Instant::now();
    let b = load_rt.block_on(closed_loop(
        client.clone(),
        ingest_url.clone(),
        feed_b.clone(),
        clients,
        warmup,
        Some(secs),
        outcomes.clone(),
    ));
    let b_wall = tb.elapsed();
    let b_cpu = cpu_delta(&cpu0, &cpu_by_group());
    let b_machine = MachineCpu::now().note(&mb);
    let b_rate = b.completed as f64 / b.window.as_secs_f64();
    let b_lat = pcts(b.latencies);
    println!(
        "(b) max sustained: {:.0} SETs/s over {:.1} s ({} accepted) = {:.1}% of all-core bare verify; 202 p50 {} ms p99 {} ms p99.9 {} ms{}",
        b_rate,
        b.window.as_secs_f64(),
        b.completed,
        100.0 * b_rate / bare_all_start,
        ms(b_lat.p50),
        ms(b_lat.p99),
        ms(b_lat.p999),
        if b.exhausted { " (pre-signed pool ran out: raise SSF_LOAD_POOL)" } else { "" }
    );
    print_cpu("(b)", &b_cpu, b_wall, cores);
    println!("  {b_machine}");
    print_hub_metrics("(b)", &m0, &hub.metrics.render(), b_wall);
    let b_cpu_total: f64 = b_cpu.iter().map(|(_, d)| d).sum();
    let b_hub_cpu: f64 = b_cpu
        .iter()
        .filter(|(g, _)| !g.starts_with("load"))
        .map(|(_, d)| d)
        .sum();
    let b_handled = feed_b.next.load(Ordering::Relaxed).min(pool_b.len()) as f64;
    println!(
        "  CPU per SET during (b): {:.0} us in all, {:.0} us in the hub (workers, blocking pool, sled), {:.0} us in the load generator",
        1e6 * b_cpu_total / b_handled,
        1e6 * b_hub_cpu / b_handled,
        1e6 * (b_cpu_total - b_hub_cpu) / b_handled
    );
    let rss_after_b = rss_kib();

    // (c) fixed rate, open loop.
    wait_quiet(quiet);
    let m0 = hub.metrics.render();
    let cpu0 = cpu_by_group();
    let mc = MachineCpu::now();
    let tc = Instant::now();
    let c = open_loop(
        &load_rt,
        &client,
        &ingest_url,
        pool_c,
        open_rate,
        warmup,
        &outcomes,
    );
    let c_cpu = cpu_delta(&cpu0, &cpu_by_group());
    let c_machine = MachineCpu::now().note(&mc);
    println!(
        "(c) open loop at {open_rate}/s: achieved {:.0}/s, {} measured; 202 p50 {} ms p99 {} ms p99.9 {} ms max {} ms (timer lag max {} ms)",
        c.achieved_rate,
        c.lat.n,
        ms(c.lat.p50),
        ms(c.lat.p99),
        ms(c.lat.p999),
        ms(c.lat.max),
        ms(c.max_dispatch_lag)
    );
    if !c.slow_at.is_empty() {
        // Slow answers come in bursts; print when each burst started (and how many it held), to
        // match them with periodic work (sled's 500 ms flusher, the file system's journal).
        let mut bursts: Vec<(f64, usize)> = Vec::new();
        for &t in &c.slow_at {
            match bursts.last_mut() {
                Some((start, n)) if t - *start < 0.05 => *n += 1,
                _ => bursts.push((t, 1)),
            }
        }
        let shown: Vec<String> = bursts
            .iter()
            .take(40)
            .map(|(t, n)| format!("{t:.2}s x{n}"))
            .collect();
        println!(
            "  answers over 2 ms: {} in {} bursts, at {}",
            c.slow_at.len(),
            bursts.len(),
            shown.join(", ")
        );
    }
    let c_wall = tc.elapsed();
    print_cpu("(c)", &c_cpu, c_wall, cores);
    println!("  {c_machine}");
    print_hub_metrics("(c)", &m0, &hub.metrics.render(), c_wall);

    // (d) growth to `target_events` at the maximum rate.
    let head_now = hub.log.head();
    let need = target_events.saturating_sub(head_now);
    let pool_next = feed_b.next.load(Ordering::Relaxed).min(pool_b.len());
    let leftover = (pool_b.len() - pool_next) as u64;
    let to_sign = need.saturating_sub(leftover);
    let head_d0 = head_now;
    let td = Instant::now();
    let d_cpu = if need == 0 {
        println!("(d) the log already holds {head_now} events (SSF_LOAD_EVENTS = {target_events}): nothing to add");
        Vec::new()
    } else {
        println!(
            "(d) growing the log from {head_now} to {target_events} events ({} pre-signed, {to_sign} signed on the fly)...",
            need - to_sign
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4096);
        let first = next_jti;
        std::thread::scope(|s| {
            let sets = &sets;
            let signer = std::thread::Builder::new()
                .name("load-signer".into())
                .spawn_scoped(s, move || {
                    for i in first..first + to_sign {
                        if tx.blocking_send(sets.sign(i)).is_err() {
                            break;
                        }
                    }
                })
                .expect("signer");
            let feed_d = Arc::new(Feed {
                pool: pool_b.clone(),
                next: Arc::new(AtomicUsize::new(pool_next)),
                stream: Some(tokio::sync::Mutex::new(rx)),
                remaining: AtomicU64::new(need),
            });
            let cpu0 = cpu_by_group();
            let md = MachineCpu::now();
            load_rt.block_on(closed_loop(
                client.clone(),
                ingest_url.clone(),
                feed_d,
                clients,
                Duration::ZERO,
                None,
                outcomes.clone(),
            ));
            let cpu = cpu_delta(&cpu0, &cpu_by_group());
            println!("  (d) {}", MachineCpu::now().note(&md));
            signer.join().expect("signer thread");
            cpu
        })
    };
    let d_wall = td.elapsed();
    let d_events = hub.log.head() - head_d0;
    println!(
        "(d) {} events in {:.1} s = {:.0} SETs/s{}",
        d_events,
        d_wall.as_secs_f64(),
        d_events as f64 / d_wall.as_secs_f64(),
        if to_sign > 0 {
            " (one load thread also signing)"
        } else {
            ""
        }
    );
    if !d_cpu.is_empty() {
        print_cpu("(d)", &d_cpu, d_wall, cores);
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_end = rss_kib();
    sampler_stop.store(1, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();

    // Milestones: first sample at or past each 100,000.
    let final_head = hub.log.head();
    let mut milestones: Vec<(u64, Sample, f64)> = Vec::new();
    let mut prev: Option<Sample> = None;
    let mut m = MILESTONE;
    while m <= final_head {
        if let Some(s) = samples.iter().find(|s| s.head >= m) {
            let rate = prev
                .map(|p| (s.head - p.head) as f64 / (s.at - p.at).as_secs_f64())
                .unwrap_or(f64::NAN);
            milestones.push((m, *s, rate));
            prev = Some(*s);
        }
        m += MILESTONE;
    }
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let log_bytes = dir_size(&log_dir);

    println!();
    println!("RSS by log size (sampled every 250 ms; hub and load generator share the process):");
    for (m, s, rate) in &milestones {
        println!(
            "  {:>9} events (sample at {:>9}, t={:>6.1} s): RSS {:>7.1} MiB (anonymous {:>7.1} MiB)   segment rate {:>6.0}/s",
            m,
            s.head,
            s.at.as_secs_f64(),
            mib(s.rss_kib),
            mib(s.anon_kib),
            rate
        );
    }
    println!(
        "  final {final_head} events: RSS {:.1} MiB, peak {:.1} MiB; on-disk log {:.1} MiB",
        mib(rss_end),
        mib(peak),
        log_bytes as f64 / (1 << 20) as f64
    );

    // The all-core verify rate again, now that the hub is idle: the higher of the two readings is
    // the reference, so a noisy moment cannot flatter the ratio.
    wait_quiet(quiet);
    let m = MachineCpu::now();
    let bare_all_end = bare_verify_rate(&sets, &one_set, cores, Duration::from_secs(2));
    println!(
        "(a) bare ES256 verify, all {cores} cores, after the load phases: {bare_all_end:.0}/s {}",
        MachineCpu::now().note(&m)
    );
    let bare_all = bare_all_start.max(bare_all_end);

    // Stop the hub, then check every answer was 202.
    // `Running::stop` waits for the last reference to the hub to go.
    drop(hub);
    let stopped = hub_rt.block_on(running.stop());
    let accepted = outcomes.accepted.load(Ordering::Relaxed);
    let non_202 = outcomes.non_202.load(Ordering::Relaxed);
    let errors = outcomes.transport_errors.load(Ordering::Relaxed);

    // Markdown summary.
    let goal = |ok: bool| if ok { "met" } else { "**not met**" };
    println!();
    println!("## ingest_load summary ({cores} cores, {clients} clients)");
    println!();
    println!("| measure | result | machine limit / goal (same run) | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| bare ES256 verify, 1 core | {:.0}/s ({:.1} us) | - | - | - |",
        bare_1,
        1e6 / bare_1
    );
    println!(
        "| bare ES256 verify, all {cores} cores | {bare_all:.0}/s (before {bare_all_start:.0}, after {bare_all_end:.0}) | - | - | - |"
    );
    println!(
        "| append 4 KiB + fdatasync | p50 {} ms, p99 {} ms | - | - | - |",
        ms(fsync.p50),
        ms(fsync.p99)
    );
    println!(
        "| loopback GET /healthz, 1 client | p50 {} ms, p99 {} ms | - | - | - |",
        ms(hz1.p50),
        ms(hz1.p99)
    );
    println!(
        "| loopback GET /healthz, {clients} clients | {hzc_rate:.0}/s, p50 {} ms, p99 {} ms | - | - | - |",
        ms(hzc.p50),
        ms(hzc.p99)
    );
    println!(
        "| (b) sustained ingest, durable | {b_rate:.0} SETs/s | 50% of all-core verify = {:.0}/s | {:.1}% of all-core verify | {} |",
        bare_all / 2.0,
        100.0 * b_rate / bare_all,
        goal(b_rate >= bare_all / 2.0)
    );
    println!(
        "| (b) 202 latency at that rate | p50 {} ms, p99 {} ms, p99.9 {} ms | - | - | - |",
        ms(b_lat.p50),
        ms(b_lat.p99),
        ms(b_lat.p999)
    );
    println!(
        "| (c) 202 latency at {open_rate}/s (open loop) | p50 {} ms, p99 {} ms, p99.9 {} ms | p99 <= 2 ms | - | {} |",
        ms(c.lat.p50),
        ms(c.lat.p99),
        ms(c.lat.p999),
        goal(c.lat.p99 <= Duration::from_millis(2))
    );
    println!(
        "| RSS before ingest | {:.1} MiB | - | - | - |",
        mib(rss_before_ingest)
    );
    for (m, s, _) in &milestones {
        println!(
            "| RSS at {m} events | {:.1} MiB | - | +{:.1} MiB over before-ingest | - |",
            mib(s.rss_kib),
            mib(s.rss_kib.saturating_sub(rss_before_ingest))
        );
    }
    if let (Some(first), Some(last)) = (milestones.first(), milestones.last()) {
        if last.0 > first.0 {
            let growth = mib(last.1.rss_kib) - mib(first.1.rss_kib);
            let per_event = growth * 1048576.0 / (last.1.head - first.1.head) as f64;
            // "Flat": under 10 bytes per event (10 MB per million), i.e. noise.
            println!(
                "| RSS growth {}k -> {}k events | {:+.1} MiB | flat (< 10 bytes/event) | {:.1} bytes/event | {} |",
                first.0 / 1000,
                last.0 / 1000,
                growth,
                per_event,
                goal(per_event < 10.0)
            );
        }
    }
    println!(
        "| (d) growth phase | {d_events} events in {:.1} s ({:.0}/s) | - | - | - |",
        d_wall.as_secs_f64(),
        d_events as f64 / d_wall.as_secs_f64()
    );
    println!(
        "| responses | {accepted} x 202, {non_202} other, {errors} transport errors | all 202 | - | {} |",
        goal(non_202 == 0 && errors == 0)
    );
    println!();
    println!(
        "RSS after (b): {:.1} MiB; log head {final_head}; hub stop: {:?}",
        mib(rss_after_b),
        stopped.as_ref().map(|_| "ok")
    );

    drop(load_rt);
    drop(hub_rt);
    if non_202 > 0 || errors > 0 || accepted != final_head {
        eprintln!(
            "FAIL: {non_202} non-202 answers, {errors} transport errors, {accepted} accepted vs log head {final_head}; first: {}",
            outcomes
                .first_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default()
        );
        std::process::exit(1);
    }
}

/// `_sum` and `_count` of every histogram in a Prometheus text page.
fn histograms(page: &str) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(base) = name.strip_suffix("_sum") {
            out.entry(base.to_owned()).or_default().0 += value;
        } else if let Some(base) = name.strip_suffix("_count") {
            out.entry(base.to_owned()).or_default().1 += value;
        }
    }
    out
}

/// The hub's own timings between two metric snapshots: mean verify+normalize time, mean wait
/// for the durable append, mean group-commit time and batch size.
fn print_hub_metrics(label: &str, before: &str, after: &str, wall: Duration) {
    let (b, a) = (histograms(before), histograms(after));
    let delta = |name: &str| {
        let (s0, c0) = b.get(name).copied().unwrap_or_default();
        let (s1, c1) = a.get(name).copied().unwrap_or_default();
        (s1 - s0, c1 - c0)
    };
    let mean_us = |name: &str| {
        let (s, c) = delta(name);
        if c > 0.0 {
            format!("{:.0} us", 1e6 * s / c)
        } else {
            "-".into()
        }
    };
    let (batch_sum, commits) = delta("ssf_hub_log_commit_batch_size");
    println!(
        "  hub metrics during {label}: verify+normalize {} mean, append (wait until durable) {} mean; {:.0} group commits/s of {:.1} SETs on average, {} each",
        mean_us("ssf_hub_verify_seconds"),
        mean_us("ssf_hub_append_seconds"),
        commits / wall.as_secs_f64(),
        if commits > 0.0 { batch_sum / commits } else { 0.0 },
        mean_us("ssf_hub_log_commit_seconds"),
    );
}

/// Appends 4 KiB and `fdatasync`s, `n` times, in `dir`: the cost of one durable write here.
fn fsync_cost(dir: &std::path::Path, n: usize) -> Pcts {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let block = [0x5au8; 4096];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    pcts(lat)
}

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
