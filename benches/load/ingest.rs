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
//! s expires (b)'s records during (c)). `SSF_LOAD_DEDUPE_SECS` sets
//! `ingest.dedupe_retention_secs` (default 14 days), which bounds the de-duplication index.
//!
//! Every answer must be 202. Before each phase the run waits up to `SSF_LOAD_QUIET_WAIT_SECS`
//! (120) for other load on the machine to stop; after it, it prints CPU by thread group, how much
//! other processes took, disk bytes and the hub's own histograms (`GET /metrics`).
//! `SSF_LOAD_LOG=memory` swaps in the in-memory log (attribution only: not durable);
//! `SSF_LOAD_CLIENT_THREADS` sets the load generator's workers (default: one per core).

use std::hint::black_box;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use josekit::jws::{JwsVerifier as _, ES256};
use serde_json::json;
use tokio::runtime::Runtime;

use crate::support::drive::{closed_loop, open_loop};
use crate::support::hub::{self, Hub, Metrics, SOURCE_AUD, SOURCE_ISS};
use crate::support::machine::{self as m, env_u64, mib, wait_quiet, CpuUse, Phase};
use crate::support::{fail, met, ms, report, us, Pct};

/// Bare ES256 verifications per second of `set` on `threads` threads.
fn bare_verify(jwk: &josekit::jwk::Jwk, set: &str, threads: usize) -> f64 {
    use base64::Engine as _;
    let dot = set.rfind('.').expect("compact");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig = &b64.decode(&set[dot + 1..]).expect("b64");
    let input = &set.as_bytes()[..dot];
    hub::rate_on_threads(threads, Duration::from_secs(2), || {
        let v = ES256.verifier_from_jwk(jwk).expect("verifier");
        move || v.verify(black_box(input), sig).expect("verifies")
    })
}

/// Waits for a quiet machine, then starts a phase: CPU so far and the hub's metrics.
fn begin(quiet: Duration, hub: &Hub, rt: &Runtime) -> (Phase, Metrics) {
    wait_quiet(quiet);
    (Phase::start(), rt.block_on(hub.metrics()))
}

/// Ends a phase: prints CPU by thread group, the machine's other load and the hub's own timings;
/// returns the CPU and how many records the retention sweep removed meanwhile.
fn end_phase(label: &str, hub: &Hub, rt: &Runtime, begun: (Phase, Metrics)) -> (CpuUse, f64) {
    let (used, after) = (begun.0.end(label), rt.block_on(hub.metrics()));
    let delta = |name: &str| after.since(&begun.1, &format!("ssf_hub_{name}"), "");
    let mean = |name: &str| 1e6 * delta(&format!("{name}_sum")) / delta(&format!("{name}_count"));
    let [verify, append, commit] =
        ["verify", "append", "log_commit"].map(|s| mean(&format!("{s}_seconds")));
    let commits = delta("log_commit_batch_size_count");
    let batch = delta("log_commit_batch_size_sum") / commits;
    let per_s = commits / used.wall.as_secs_f64();
    println!("  hub metrics: verify+normalize {verify:.0} us mean, append (until durable) {append:.0} us mean; {per_s:.0} group commits/s of {batch:.1} SETs, {commit:.0} us each");
    (used, delta("log_retention_removed_total"))
}

/// One RSS sample: (seconds, events appended, VmRSS KiB, RssAnon KiB, bytes in `<data_dir>/db`).
type Sample = (f64, u64, u64, u64, u64);

pub(crate) fn run() {
    let cores = m::cores();
    let clients = env_u64("SSF_LOAD_CLIENTS", 64) as usize;
    let secs = Duration::from_secs(env_u64("SSF_LOAD_SECS", 10));
    let target = env_u64("SSF_LOAD_EVENTS", 200_000);
    let open_rate = env_u64("SSF_LOAD_OPEN_RATE", 1000);
    let quiet = Duration::from_secs(env_u64("SSF_LOAD_QUIET_WAIT_SECS", 120));
    let memory = std::env::var("SSF_LOAD_LOG").is_ok_and(|v| v == "memory");
    let (warm, rss_start) = (Duration::from_secs(1), m::status_kib("VmRSS"));
    let log = if memory { "memory://" } else { "fjall" };
    crate::support::init_tracing("info");
    let machine = m::describe();
    println!("ingest: {machine}; {clients} clients, phases of {secs:?}, log target {target} events, log {log}");
    report!("## ingest ({cores} cores, {clients} clients, log {log})\n\n| measure | result (same run) |\n|---|---|\n");

    let signer = hub::source_key();
    let jti = |i: u64| format!("load-{i:012}");
    let pad = hub::pad_to(&signer, &jti(0), 1024);
    let claims = |i| hub::credential_change(SOURCE_ISS, json!([SOURCE_AUD]), &jti(i), None, pad);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = hub::config(dir.path(), &signer.jwks());
    if memory {
        config.log.url = "memory://".into();
    }
    config.ingest.dedupe_retention_secs =
        env_u64("SSF_LOAD_DEDUPE_SECS", config.ingest.dedupe_retention_secs);
    let retention = &mut config.log.retention;
    retention.max_events = env_u64("SSF_LOAD_RETAIN_EVENTS", 0);
    retention.max_age_secs = env_u64("SSF_LOAD_RETAIN_AGE_SECS", 0);
    retention.sweep_secs = env_u64("SSF_LOAD_SWEEP_SECS", 1);
    if retention.max_events + retention.max_age_secs > 0 {
        let dedupe = config.ingest.dedupe_retention_secs;
        report!("| log retention | {retention:?}; dedupe keys kept {dedupe} s |\n");
    }
    let (data_dir, hub_rt) = (config.data_dir.clone(), hub::runtime("hub", cores));
    let load_threads = env_u64("SSF_LOAD_CLIENT_THREADS", cores as u64) as usize;
    let load_rt = hub::runtime("load", load_threads);
    let (load, hub) = (load_rt.handle(), Hub::start(&hub_rt, config));

    // (a) The machine's limits.
    let one_set = signer.sign(&claims(u64::MAX / 2)).expect("sign");
    let jwk = josekit::jwk::Jwk::from_map(hub::object(signer.public_jwk())).expect("jwk");
    wait_quiet(quiet);
    let bare_1 = bare_verify(&jwk, &one_set, 1);
    let phase = Phase::start();
    let bare_start = bare_verify(&jwk, &one_set, cores);
    let note = phase.note();
    println!("(a) bare ES256 verify: all {cores} cores {bare_start:.0}/s {note}");
    let (client, url) = (hub.client.clone(), format!("{}/healthz", hub.base));
    let healthz = hub::request_job(200, move || client.get(&url));
    let window = |len| Some((Duration::from_millis(200), Duration::from_secs(len)));
    let hz1 = closed_loop(load, 1, u64::MAX, window(2), true, healthz.clone());
    let hzc = closed_loop(load, clients, u64::MAX, window(3), true, healthz);
    hz1.check("GET /healthz, 1 client");
    hzc.check("GET /healthz, many clients");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    // The cost of one durable write in the data directory: 4 KiB appended, then `fdatasync`.
    let mut probe = std::fs::File::create(data_dir.join("fsync-probe")).expect("probe file");
    let mut fsync = || {
        let t = Instant::now();
        probe.write_all(&[0x5a; 4096]).expect("write");
        probe.sync_data().expect("fdatasync");
        us(t.elapsed())
    };
    let fsync = Pct::of((0..1000).map(|_| fsync()).collect());
    let (size, verify_us) = (one_set.len(), 1e6 / bare_1);
    let (hz1, hzc_rate, hzc) = (hz1.lat().brief(), hzc.completed_rate(), hzc.lat().brief());
    report!("| SET size (compact ES256) | {size} bytes |\n");
    report!("| bare ES256 verify, 1 core | {bare_1:.0}/s ({verify_us:.1} us) |\n");
    report!("| loopback GET /healthz, 1 client | {hz1} |\n");
    report!("| loopback GET /healthz, all clients | {hzc_rate:.0}/s, {hzc} |\n");
    let fsync = fsync.brief();
    report!("| append 4 KiB + fdatasync in the data directory | {fsync} |\n");

    // Pre-signed pools: enough for (b) even at 75% of the all-core verify rate, and for (c).
    let pool_b_len = (bare_start * 0.75 * (secs + warm).as_secs_f64()) as u64;
    let pool_b_len = env_u64("SSF_LOAD_POOL", pool_b_len);
    let pool_c_len = open_rate * (secs + warm).as_secs();
    let pool_b = Arc::new(hub::presign(&signer, 0..pool_b_len, claims));
    let pool_c = hub::presign(&signer, pool_b_len..pool_b_len + pool_c_len, claims);
    let pool_bytes = pool_b.iter().chain(&pool_c).map(|b| b.len() as u64).sum();

    // RSS every 250 ms for the rest of the run. Every 202 is one new record, so the count of
    // 202s is the log's size (checked against its head at the end).
    let (stop, t0) = (Arc::new(AtomicBool::new(false)), Instant::now());
    let (stop2, accepted, db) = (stop.clone(), hub.accepted.clone(), data_dir.join("db"));
    let sample = move || {
        let mut samples: Vec<Sample> = Vec::new();
        while !stop2.load(Ordering::Relaxed) {
            let (at, events) = (t0.elapsed().as_secs_f64(), accepted.load(Ordering::Relaxed));
            let (rss, anon) = (m::status_kib("VmRSS"), m::status_kib("RssAnon"));
            let disk = m::dir_size(&db);
            samples.push((at, events, rss, anon, disk));
            std::thread::sleep(Duration::from_millis(250));
        }
        samples
    };
    let sampler = std::thread::Builder::new().name("load-rss".into());
    let sampler = sampler.spawn(sample).expect("sampler");
    let (rss, start) = (mib(m::status_kib("VmRSS") << 10), mib(rss_start << 10));
    let pool = mib(pool_bytes);
    report!("| RSS before ingest | {rss:.1} MiB (process start {start:.1} MiB, pre-signed SETs {pool:.1} MiB) |\n");

    // (b) Maximum sustained rate, closed loop.
    let begun = begin(quiet, &hub, &load_rt);
    let post = hub::ingest_job(&hub, pool_b.clone(), 0, None);
    let b = closed_loop(load, clients, pool_b_len, Some((warm, secs)), true, post);
    b.check("(b) ingest");
    if b.done >= pool_b_len {
        fail!("(b): the pre-signed pool ran out: raise SSF_LOAD_POOL");
    }
    let (b_rate, b_lat) = (b.completed_rate(), b.lat().line());
    let (used, _) = end_phase("(b)", &hub, &load_rt, begun);
    let per_set = |s: f64| 1e6 * s / b.done as f64;
    let (all, in_hub) = (per_set(used.process), per_set(used.hub()));
    let in_load = per_set(used.of(|g| g.starts_with("load")));
    println!("  CPU per SET during (b): {all:.0} us in all, {in_hub:.0} us in the hub, {in_load:.0} us in the load generator");
    report!("| (b) 202 latency at the maximum rate | {b_lat} |\n");

    // (c) Fixed rate, open loop.
    let begun = begin(quiet, &hub, &load_rt);
    let post = hub::ingest_job(&hub, Arc::new(pool_c), 0, None);
    let c = open_loop(load, open_rate as f64, pool_c_len, post);
    c.check("(c) ingest");
    let c = c.from(warm.as_secs() * open_rate);
    let (c_lat, lag, achieved) = (c.lat(), ms(c.lag().max), c.dispatched_rate());
    let (c_met, c_line) = (met(c_lat.p99 <= 2000.0), c_lat.line());
    // Slow answers come in bursts; when each started (and how many it held) matches them with
    // periodic work in the storage engine or the file system.
    let mut bursts: Vec<(f64, usize)> = Vec::new();
    for s in &c.samples {
        let t = (s.sched - c.began).as_secs_f64();
        match bursts.last_mut() {
            _ if s.end - s.sched <= Duration::from_millis(2) => {}
            Some((start, n)) if t - *start < 0.05 => *n += 1,
            _ => bursts.push((t, 1)),
        }
    }
    let shown = bursts.iter().take(40).map(|(t, n)| format!("{t:.2}s x{n}"));
    let (count, shown) = (bursts.len(), shown.collect::<Vec<_>>().join(", "));
    println!("  answers over 2 ms in {count} bursts, at {shown}");
    let (_, swept) = end_phase("(c)", &hub, &load_rt, begun);
    report!(
        "| (c) 202 latency at {open_rate}/s, open loop | {c_line} (goal p99 ≤ 2 ms: {c_met}); achieved {achieved:.0}/s, timer lag max {lag} ms |\n"
    );
    if swept > 0.0 {
        report!("| (c) records the retention sweep removed meanwhile | {swept:.0} |\n");
    }

    // (d) Growth to `target` events at the maximum rate: the rest of (b)'s pool, then SETs
    // signed by one thread while they are pushed.
    let need = target.saturating_sub(load_rt.block_on(hub.head()));
    let to_sign = need.saturating_sub(pool_b_len.saturating_sub(b.done));
    let signed = pool_b_len + pool_c_len..pool_b_len + pool_c_len + to_sign;
    let begun = begin(quiet, &hub, &load_rt);
    let d = std::thread::scope(|s| {
        let queue = hub::sign_queue(s, 1, &signer, signed, &claims);
        let post = hub::ingest_job(&hub, pool_b, b.done, Some(queue));
        closed_loop(load, clients, need, None, false, post)
    });
    d.check("(d) ingest");
    let d_wall = end_phase("(d)", &hub, &load_rt, begun).0.wall.as_secs_f64();
    let (d_done, d_rate) = (d.done, d.done as f64 / d_wall);
    report!("| (d) growth phase | {d_done} events in {d_wall:.1} s ({d_rate:.0}/s; {to_sign} of them signed meanwhile by one load thread) |\n");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let final_head = load_rt.block_on(hub.head());

    // RSS at the first sample at or past each 100,000 events.
    let marks = (1..=final_head / 100_000).map(|k| k * 100_000);
    let at_mark = |mark| Some((mark, *samples.iter().find(|s| s.1 >= mark)?));
    let milestones: Vec<(u64, Sample)> = marks.filter_map(at_mark).collect();
    let mut prev: Option<Sample> = None;
    for (mark, s) in &milestones {
        let rate = prev.map_or(f64::NAN, |p| (s.1 - p.1) as f64 / (s.0 - p.0));
        let (rss, anon, disk) = (mib(s.2 << 10), mib(s.3 << 10), mib(s.4));
        report!("| RSS at {mark} events | {rss:.1} MiB (anonymous {anon:.1} MiB; ingest since the last mark {rate:.0}/s); on disk {disk:.1} MiB |\n");
        prev = Some(*s);
    }
    if let [(first, a), .., (last, b)] = milestones[..] {
        let grown = (b.2 as f64 - a.2 as f64) / 1024.0;
        let per_event = grown * 1048576.0 / (b.1 - a.1) as f64;
        // "Flat": at most 8 bytes per event (the bar; 7.2 MB from 100k to 1M).
        let (first, last, flat) = (first / 1000, last / 1000, met(per_event <= 8.0));
        report!("| RSS growth {first}k → {last}k events | {grown:+.1} MiB = **{per_event:.1} bytes/event** (goal: ≤ 8 bytes/event: {flat}) |\n");
    }

    // The all-core verify rate again, with the hub idle: the higher reading is the reference.
    wait_quiet(quiet);
    let bare_end = bare_verify(&jwk, &one_set, cores);
    let all = hub.accepted.load(Ordering::Relaxed);
    hub.stop(&hub_rt);
    let bare_all = bare_start.max(bare_end);
    report!("| bare ES256 verify, all {cores} cores | {bare_all:.0}/s (before {bare_start:.0}, after {bare_end:.0}) |\n");
    let (ratio, b_met) = (100.0 * b_rate / bare_all, met(b_rate >= bare_all / 2.0));
    report!("| (b) sustained ingest, 202 after a durable append | {b_rate:.0} SETs/s = **{ratio:.1}%** of all-core verify (goal ≥ 50%: {b_met}) |\n");
    if all != final_head {
        fail!("{all} SETs accepted, but the log head is {final_head}");
    }
    report!("| responses | {all} × 202 (any other answer fails the run) |\n");
}
