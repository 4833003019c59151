//! Push ingest (`POST /ingest/{source}`) over loopback HTTP. Phases, in one process and one run:
//! - (a) machine limits: bare josekit ES256 verify on one core and on every core (measured again
//!   at the end, the higher is used), `GET /healthz` round trips on the same hub (1 client, then
//!   `SSF_LOAD_CLIENTS`), and a 4 KiB append + `fdatasync` in the data directory.
//! - (b) maximum sustained rate: `SSF_LOAD_CLIENTS` (64) keep-alive clients in a closed loop of
//!   pre-signed ~1 KB ES256 SETs for `SSF_LOAD_SECS` (10) s after a 1 s warm-up.
//! - (c) open loop at `SSF_LOAD_OPEN_RATE` (1,000) SETs/s for 1 s + `SSF_LOAD_SECS`; latency from
//!   each SET's scheduled send time.
//! - (d) growth until the log holds `SSF_LOAD_EVENTS` (200,000); RSS every 250 ms, reported at
//!   each 100,000. SETs beyond the pre-signed pool (`SSF_LOAD_POOL`) are signed by one thread
//!   into a bounded queue, so the load generator's memory stays flat.
//!
//! Retention (off by default): `SSF_LOAD_RETAIN_EVENTS` and `SSF_LOAD_RETAIN_AGE_SECS` set
//! `log.retention`, swept every `SSF_LOAD_SWEEP_SECS` (1); disk use is reported at each 100,000
//! with RSS, and (c) reports how many records the sweep removed while it ran (an age of about 15
//! s expires (b)'s records during (c)).
//!
//! Every answer must be 202. Before each phase the run waits up to `SSF_LOAD_QUIET_WAIT_SECS`
//! (120) for other load on the machine to stop; after it, it prints CPU by thread group, how much
//! other processes took, disk bytes and the hub's own histograms (`GET /metrics`).
//! `SSF_LOAD_LOG=memory` swaps in the in-memory log (attribution only: not durable);
//! `SSF_LOAD_CLIENT_THREADS` sets the load generator's workers (default: one per core).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use josekit::jws::JwsVerifier as _;
use serde_json::json;
use tokio::sync::mpsc;

use crate::support::drive::{closed_loop, job, open_loop, Job};
use crate::support::hub::{self, metric, Hub, SOURCE_AUD, SOURCE_ISS};
use crate::support::machine::{self as m, env_u64, mib, wait_quiet, Phase};
use crate::support::{fail, ms, report, row, us, Pct};

type Queue = Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>;

/// Posts pool entry `skip + i`, or the next SET from `queue` once the pool is used up; counts
/// the 202s.
fn poster(
    hub: &Hub,
    n: &Arc<AtomicU64>,
    pool: &Arc<Vec<Bytes>>,
    skip: u64,
    q: Option<Queue>,
) -> Job {
    let (api, n, pool) = (hub.api.clone(), n.clone(), pool.clone());
    let url = Arc::<str>::from(api.ingest_url());
    job(move |i| {
        let (client, url, n, q) = (api.client.clone(), url.clone(), n.clone(), q.clone());
        let pooled = pool.get((skip + i) as usize).cloned();
        async move {
            let body = match (pooled, q) {
                (Some(b), _) => b,
                (None, Some(q)) => q.lock().await.recv().await.ok_or("the signer stopped")?,
                (None, None) => return Err("the pre-signed pool ran out".into()),
            };
            hub::ingest(&client, &url, body).await?;
            n.fetch_add(1, Ordering::Relaxed);
            Ok(0)
        }
    })
}

/// Bare ES256 verifications per second of `set` on `threads` threads.
fn bare_verify(jwk: &josekit::jwk::Jwk, set: &str, threads: usize) -> f64 {
    use base64::Engine as _;
    let dot = set.rfind('.').expect("compact");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig = b64.decode(&set[dot + 1..]).expect("b64");
    let (input, sig) = (&set.as_bytes()[..dot], &sig);
    hub::rate_on_threads(threads, Duration::from_secs(2), || {
        let v = josekit::jws::ES256
            .verifier_from_jwk(jwk)
            .expect("verifier");
        move || {
            v.verify(std::hint::black_box(input), sig)
                .expect("verifies")
        }
    })
}

/// Ends a phase: CPU by thread group, the machine's other load, the hub's own timings.
fn end_phase(label: &str, hub: &Hub, rt: &tokio::runtime::Runtime, phase: Phase, before: &str) {
    let used = phase.end(label);
    let after = rt.block_on(hub.metrics()).unwrap_or_default();
    let delta = |name: &str| metric(&after, name, "") - metric(before, name, "");
    let mean = |name: &str| {
        let sum = delta(&format!("{name}_sum"));
        let count = delta(&format!("{name}_count"));
        format!("{:.0} us", 1e6 * sum / count)
    };
    let verify = mean("ssf_hub_verify_seconds");
    let append = mean("ssf_hub_append_seconds");
    let commit = mean("ssf_hub_log_commit_seconds");
    let commits = delta("ssf_hub_log_commit_batch_size_count");
    let per_s = commits / used.wall.as_secs_f64();
    let batch = delta("ssf_hub_log_commit_batch_size_sum") / commits;
    println!("  hub metrics: verify+normalize {verify} mean, append (until durable) {append} mean; {per_s:.0} group commits/s of {batch:.1} SETs, {commit} each");
}

/// Appends 4 KiB and `fdatasync`s, `n` times, in `dir`: the cost of one durable write there.
fn fsync_cost(dir: &std::path::Path, n: usize) -> Pct {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let mut once = || {
        let t = Instant::now();
        f.write_all(&[0x5a; 4096]).expect("write");
        f.sync_data().expect("fdatasync");
        us(t.elapsed())
    };
    let lat = (0..n).map(|_| once()).collect();
    let _ = std::fs::remove_file(&path);
    Pct::of(lat)
}

/// One sample: (seconds, events appended, VmRSS KiB, RssAnon KiB, bytes in `<data_dir>/db`).
type Sample = (f64, u64, u64, u64, u64);

pub(crate) fn run() {
    let cores = m::cores();
    let clients = env_u64("SSF_LOAD_CLIENTS", 64) as usize;
    let secs = Duration::from_secs(env_u64("SSF_LOAD_SECS", 10));
    let target = env_u64("SSF_LOAD_EVENTS", 200_000);
    let open_rate = env_u64("SSF_LOAD_OPEN_RATE", 1000);
    let quiet = Duration::from_secs(env_u64("SSF_LOAD_QUIET_WAIT_SECS", 120));
    let memory = std::env::var("SSF_LOAD_LOG").is_ok_and(|v| v == "memory");
    let (warm, rss_start) = (Duration::from_secs(1), m::rss_kib());
    ssf_hub::telemetry::init_tracing();
    let log = if memory { "memory://" } else { "fjall" };
    println!(
        "ingest: {}; {clients} clients, phases of {secs:?}, log target {target} events, log {log}",
        m::describe()
    );
    report(format!("## ingest ({cores} cores, {clients} clients, log {log})\n\n| measure | result (same run) |\n|---|---|\n"));

    let signer = hub::source_key();
    let jti = |i: u64| format!("load-{i:012}");
    let pad = hub::pad_to(&signer, &jti(0), 1024);
    let claims = |i| hub::credential_change(SOURCE_ISS, json!([SOURCE_AUD]), &jti(i), None, pad);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = hub::config(dir.path(), &signer.jwks());
    if memory {
        config.log.url = "memory://".into();
    }
    config.log.retention.max_events = env_u64("SSF_LOAD_RETAIN_EVENTS", 0);
    config.log.retention.max_age_secs = env_u64("SSF_LOAD_RETAIN_AGE_SECS", 0);
    config.log.retention.sweep_secs = env_u64("SSF_LOAD_SWEEP_SECS", 1);
    let retention = config.log.retention;
    if retention.max_events + retention.max_age_secs > 0 {
        let r = format!(
            "max_events {}, max_age_secs {}, swept every {} s",
            retention.max_events, retention.max_age_secs, retention.sweep_secs
        );
        report(row(&["log retention", &r]));
    }
    let data_dir = config.data_dir.clone();
    let hub_rt = hub::runtime("hub", cores);
    let load_rt = hub::runtime(
        "load",
        env_u64("SSF_LOAD_CLIENT_THREADS", cores as u64) as usize,
    );
    let (load, hub) = (load_rt.handle(), Hub::start(&hub_rt, config));
    let accepted = Arc::new(AtomicU64::new(0));

    // (a) The machine's limits.
    let one_set = signer.sign(&claims(u64::MAX / 2)).expect("sign");
    let jwk = josekit::jwk::Jwk::from_map(hub::object(signer.public_jwk())).expect("jwk");
    wait_quiet(quiet);
    let bare_1 = bare_verify(&jwk, &one_set, 1);
    let phase = Phase::start();
    let bare_start = bare_verify(&jwk, &one_set, cores);
    println!(
        "(a) bare ES256 verify: all {cores} cores {bare_start:.0}/s {}",
        phase.note()
    );
    let (client, url) = (hub.client.clone(), format!("{}/healthz", hub.base));
    let healthz = job(move |_| {
        let req = client.get(&url).send();
        async move {
            let r = req.await.map_err(|e| e.to_string())?;
            let ok = r.status().is_success() && r.bytes().await.is_ok();
            ok.then_some(0).ok_or_else(|| "healthz failed".to_owned())
        }
    });
    let window = |len| Some((Duration::from_millis(200), Duration::from_secs(len)));
    let hz1 = closed_loop(load, 1, u64::MAX, window(2), true, healthz.clone());
    let hzc = closed_loop(load, clients, u64::MAX, window(3), true, healthz);
    hz1.check("GET /healthz, 1 client");
    hzc.check("GET /healthz, many clients");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let fsync = fsync_cost(&data_dir, 1000).brief();
    let (hz1, hzc_rate, hzc) = (hz1.lat().brief(), hzc.completed_rate(), hzc.lat().brief());
    let limits = [
        (
            "SET size (compact ES256)",
            format!("{} bytes", one_set.len()),
        ),
        (
            "bare ES256 verify, 1 core",
            format!("{bare_1:.0}/s ({:.1} us)", 1e6 / bare_1),
        ),
        ("loopback GET /healthz, 1 client", hz1),
        (
            "loopback GET /healthz, all clients",
            format!("{hzc_rate:.0}/s, {hzc}"),
        ),
        ("append 4 KiB + fdatasync in the data directory", fsync),
    ];
    for (what, figure) in &limits {
        report(row(&[what, figure]));
    }

    // Pre-signed pools: enough for (b) even at 75% of the all-core verify rate, and for (c).
    let pool_default = (bare_start * 0.75 * (secs + warm).as_secs_f64()) as u64;
    let pool_b_len = env_u64("SSF_LOAD_POOL", pool_default);
    let pool_c_len = open_rate * (secs + warm).as_secs();
    let pool_b = Arc::new(hub::presign(&signer, 0..pool_b_len, claims));
    let pool_c = Arc::new(hub::presign(
        &signer,
        pool_b_len..pool_b_len + pool_c_len,
        claims,
    ));
    let pool_mib = mib(pool_b
        .iter()
        .chain(pool_c.iter())
        .map(|b| b.len() as u64)
        .sum());

    // RSS every 250 ms for the rest of the run. Every 202 is one new record, so the count of
    // 202s is the log's size (checked against its head at the end).
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let samples2 = samples.clone();
    let stop2 = stop.clone();
    let accepted2 = accepted.clone();
    let t0 = Instant::now();
    let db = data_dir.join("db");
    let sample = move || {
        while !stop2.load(Ordering::Relaxed) {
            let at = t0.elapsed().as_secs_f64();
            let events = accepted2.load(Ordering::Relaxed);
            let s = (
                at,
                events,
                m::rss_kib(),
                m::status_kib("RssAnon"),
                m::dir_size(&db),
            );
            samples2.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let sampler = std::thread::Builder::new()
        .name("load-rss".into())
        .spawn(sample)
        .expect("sampler");
    let rss_before = m::rss_kib();
    let rss = format!(
        "{:.1} MiB (process start {:.1} MiB, pre-signed SETs {pool_mib:.1} MiB)",
        mib(rss_before << 10),
        mib(rss_start << 10)
    );
    report(row(&["RSS before ingest", &rss]));

    // (b) Maximum sustained rate, closed loop.
    wait_quiet(quiet);
    let metrics0 = load_rt.block_on(hub.metrics()).unwrap_or_default();
    let phase = Phase::start();
    let post = poster(&hub, &accepted, &pool_b, 0, None);
    let b = closed_loop(load, clients, pool_b_len, Some((warm, secs)), true, post);
    let used = phase.used();
    b.check("(b) ingest");
    if b.done >= pool_b_len {
        fail("(b): the pre-signed pool ran out: raise SSF_LOAD_POOL");
    }
    let (b_rate, b_lat) = (b.completed_rate(), b.lat());
    println!(
        "(b) max sustained: {b_rate:.0} SETs/s; 202 {}",
        b_lat.line()
    );
    end_phase("(b)", &hub, &load_rt, phase, &metrics0);
    let per_set = |s: f64| 1e6 * s / b.done as f64;
    let all = per_set(used.process);
    let in_hub = per_set(used.hub());
    let in_load = per_set(used.of(|g| g.starts_with("load")));
    println!("  CPU per SET during (b): {all:.0} us in all, {in_hub:.0} us in the hub, {in_load:.0} us in the load generator");
    let b_lat = format!(
        "p50 {} ms, p99 {} ms, p99.9 {} ms",
        ms(b_lat.p50),
        ms(b_lat.p99),
        ms(b_lat.p999)
    );
    report(row(&["(b) 202 latency at the maximum rate", &b_lat]));

    // (c) Fixed rate, open loop.
    wait_quiet(quiet);
    let metrics0 = load_rt.block_on(hub.metrics()).unwrap_or_default();
    let phase = Phase::start();
    let c = open_loop(
        load,
        open_rate as f64,
        pool_c_len,
        poster(&hub, &accepted, &pool_c, 0, None),
    );
    c.check("(c) ingest");
    let c = c.from(warm.as_secs() * open_rate);
    let (c_lat, lag) = (c.lat(), ms(c.lag().max));
    println!(
        "(c) open loop at {open_rate}/s: achieved {:.0}/s; 202 {} (timer lag max {lag} ms)",
        c.dispatched_rate(),
        c_lat.line()
    );
    // Slow answers come in bursts; when each started (and how many it held) matches them with
    // periodic work in the storage engine or the file system.
    let mut bursts: Vec<(f64, usize)> = Vec::new();
    for s in c
        .samples
        .iter()
        .filter(|s| s.end - s.sched > Duration::from_millis(2))
    {
        let t = (s.sched - c.began).as_secs_f64();
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
        "  answers over 2 ms in {} bursts, at {}",
        bursts.len(),
        shown.join(", ")
    );
    let metrics1 = load_rt.block_on(hub.metrics()).unwrap_or_default();
    end_phase("(c)", &hub, &load_rt, phase, &metrics0);
    let removed = |m: &str| metric(m, "ssf_hub_log_retention_removed_total", "");
    let swept = removed(&metrics1) - removed(&metrics0);
    let c_met = if c_lat.p99 <= 2000.0 {
        "met"
    } else {
        "**not met**"
    };
    let c_lat = format!(
        "p50 {} ms, **p99 {} ms** (goal ≤ 2 ms: {c_met}), p99.9 {} ms",
        ms(c_lat.p50),
        ms(c_lat.p99),
        ms(c_lat.p999)
    );
    report(row(&[
        &format!("(c) 202 latency at {open_rate}/s, open loop"),
        &c_lat,
    ]));
    if swept > 0.0 {
        report(row(&[
            "(c) records the retention sweep removed meanwhile",
            &format!("{swept:.0}"),
        ]));
    }

    // (d) Growth to `target` events at the maximum rate.
    let need = target.saturating_sub(load_rt.block_on(hub.head()));
    let to_sign = need.saturating_sub(pool_b_len.saturating_sub(b.done));
    let (tx, rx) = mpsc::channel::<Bytes>(4096);
    let phase = Phase::start();
    let d = std::thread::scope(|s| {
        let (first, signer, claims) = (pool_b_len + pool_c_len, &signer, &claims);
        let sign = move || {
            for i in first..first + to_sign {
                let set = Bytes::from(
                    signer
                        .sign(&claims(i))
                        .expect("sign")
                        .into_bytes()
                        .into_boxed_slice(),
                );
                if tx.blocking_send(set).is_err() {
                    break;
                }
            }
        };
        std::thread::Builder::new()
            .name("load-signer".into())
            .spawn_scoped(s, sign)
            .expect("signer");
        let queue = Some(Arc::new(tokio::sync::Mutex::new(rx)));
        closed_loop(
            load,
            clients,
            need,
            None,
            false,
            poster(&hub, &accepted, &pool_b, b.done, queue),
        )
    });
    d.check("(d) ingest");
    let d_wall = phase.end("(d)").wall.as_secs_f64();
    let d_rate = d.done as f64 / d_wall;
    let d = format!("{} events in {d_wall:.1} s ({d_rate:.0}/s; {to_sign} of them signed meanwhile by one load thread)", d.done);
    report(row(&["(d) growth phase", &d]));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let final_head = load_rt.block_on(hub.head());

    // RSS at the first sample at or past each 100,000 events.
    let marks = (1..=final_head / 100_000).map(|k| k * 100_000);
    let milestones: Vec<(u64, Sample)> = marks
        .filter_map(|mark| Some((mark, *samples.iter().find(|s| s.1 >= mark)?)))
        .collect();
    let mut prev: Option<Sample> = None;
    for (mark, s) in &milestones {
        let rate = prev.map_or(f64::NAN, |p| (s.1 - p.1) as f64 / (s.0 - p.0));
        let (rss, anon, disk) = (mib(s.2 << 10), mib(s.3 << 10), mib(s.4));
        report(row(&[
            &format!("RSS at {mark} events"),
            &format!(
                "{rss:.1} MiB (anonymous {anon:.1} MiB; ingest since the last mark {rate:.0}/s); on disk {disk:.1} MiB"
            ),
        ]));
        prev = Some(*s);
    }
    if let [(first, a), .., (last, b)] = milestones[..] {
        let per_event = (b.2 as f64 - a.2 as f64) * 1024.0 / (b.1 - a.1) as f64;
        // "Flat": at most 8 bytes per event (the bar; 7.2 MB from 100k to 1M).
        let met = if per_event <= 8.0 {
            "met"
        } else {
            "**not met**"
        };
        let mib = per_event * (b.1 - a.1) as f64 / 1048576.0;
        let growth = format!(
            "{mib:+.1} MiB = **{per_event:.1} bytes/event** (goal: ≤ 8 bytes/event: {met})"
        );
        report(row(&[
            &format!("RSS growth {}k → {}k events", first / 1000, last / 1000),
            &growth,
        ]));
    }
    let peak = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let disk = mib(m::dir_size(&data_dir.join("db")));
    report(row(&[
        &format!("at the end, {final_head} events"),
        &format!(
            "RSS peak {:.1} MiB; on disk (`<data_dir>/db`) {disk:.1} MiB",
            mib(peak << 10)
        ),
    ]));

    // The all-core verify rate again, with the hub idle: the higher reading is the reference.
    wait_quiet(quiet);
    let bare_end = bare_verify(&jwk, &one_set, cores);
    let bare_all = bare_start.max(bare_end);
    hub.stop(&hub_rt);
    let (ratio, met) = (
        100.0 * b_rate / bare_all,
        if b_rate >= bare_all / 2.0 {
            "met"
        } else {
            "**not met**"
        },
    );
    let verify = format!("{bare_all:.0}/s (before {bare_start:.0}, after {bare_end:.0})");
    report(row(&[
        &format!("bare ES256 verify, all {cores} cores"),
        &verify,
    ]));
    report(row(&[
        "(b) sustained ingest, 202 after a durable append",
        &format!("{b_rate:.0} SETs/s = **{ratio:.1}%** of all-core verify (goal ≥ 50%: {met})"),
    ]));
    let all = accepted.load(Ordering::Relaxed);
    if all != final_head {
        fail(format!(
            "{all} SETs accepted, but the log head is {final_head}"
        ));
    }
    report(row(&[
        "responses",
        &format!("{all} × 202 (any other answer fails the run)"),
    ]));
}
