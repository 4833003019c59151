//! Verify + normalize cost against the bare signature check, measured in one run.
//!
//! Groups (criterion):
//! - `bare_verify/es256`, `bare_verify/rs256`: josekit `JwsVerifier::verify` on the signing
//!   input and signature of a ~1 KB SET: the machine's limit for one SET.
//! - `pipeline/es256`, `pipeline/rs256`: what the hub does per pushed SET before the log:
//!   `Unverified::parse`, `Parsed::verify` (key lookup, signature, envelope claims) and
//!   `normalize::normalize` (JSON Schema validation, typed decode, subject parsing and canonical
//!   key).
//! - `parts/*`: the pipeline split up (parse+verify only, normalize only, record encoding) so a
//!   regression can be placed.
//!
//! At the end an interleaved timed loop measures the bare check and the pipeline in the same
//! process and prints `ratio pipeline/bare_es256 = X` (goal: at most 1.3), the same for RS256,
//! and the ES256 ratio of criterion's own medians when it can find them.
//!
//! Run: `cargo bench --bench verify` (about a minute). `-- --quick` or a filter work as usual.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{BatchSize, Criterion};
use josekit::jwk::Jwk;
use josekit::jws::JwsVerifier;
use serde_json::{json, Value};

use ssf_hub::config::Config;
use ssf_hub::keys::SourceKeys;
use ssf_hub::normalize::{self, Options, Record};
use ssf_hub::schema::Schemas;
use ssf_hub::sign::{SetSigner, SignAlg};
use ssf_hub::verify::{Alg, Policy, Unverified, Verified};

#[allow(dead_code, unused_imports, unused_macros, reason = "shared with load")]
mod support;
use support::hub::{credential_change, object, pad_to, SOURCE_AUD, SOURCE_ISS};
use support::machine::{wait_quiet, Phase};

/// A ~1,024-byte credential-change SET signed with a new key, and its bare verification.
struct Signed {
    set: String,
    input: Vec<u8>,
    sig: Vec<u8>,
    bare: Box<dyn JwsVerifier>,
    jwk: Value,
}

impl Signed {
    fn new(alg: SignAlg, verify_alg: Alg) -> Signed {
        let (signer, jti) = (SetSigner::generate(alg).expect("key").0, "bench-0001");
        let pad = pad_to(&signer, jti, 1024);
        let claims = credential_change(SOURCE_ISS, json!([SOURCE_AUD]), jti, None, pad);
        let set = signer.sign(&claims).expect("sign");
        let dot = set.rfind('.').expect("three parts");
        let sig = URL_SAFE_NO_PAD.decode(&set[dot + 1..]).expect("b64");
        let (input, jwk) = (set.as_bytes()[..dot].to_vec(), signer.public_jwk());
        let bare = verify_alg.verifier(&Jwk::from_map(object(jwk.clone())).expect("jwk"));
        let bare = bare.expect("verifier");
        bare.verify(&input, &sig).expect("verifies");
        Signed {
            set,
            input,
            sig,
            bare,
            jwk,
        }
    }

    fn bare(&self) {
        black_box(self.bare.verify(black_box(&self.input), &self.sig)).expect("verifies");
    }
}

/// The hub's verify stage for one source whose JWKS file holds both keys.
struct Fixture {
    keys: SourceKeys,
    schemas: Schemas,
    audiences: Vec<String>,
    algorithms: Vec<Alg>,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(signed: &[&Signed]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("source.jwks.json");
        let jwks = json!({"keys": signed.iter().map(|s| &s.jwk).collect::<Vec<_>>()});
        std::fs::write(&path, jwks.to_string()).expect("write jwks");
        let algorithms = vec![Alg::ES256, Alg::RS256, Alg::PS256, Alg::EdDSA];
        let env = figment::providers::Env::prefixed("SSF_BENCH_UNUSED_");
        let jwks_config = Config::load_from(None, env).expect("default config").jwks;
        let keys = SourceKeys::from_file("bench", &path, algorithms.clone(), jwks_config);
        let rt = tokio::runtime::Builder::new_current_thread().build();
        Fixture {
            keys: keys.expect("source keys"),
            schemas: Schemas::compile().expect("schemas"),
            audiences: vec![SOURCE_AUD.to_owned()],
            algorithms,
            rt: rt.expect("runtime"),
            _dir: dir,
        }
    }

    fn verified(&self, set: &[u8]) -> Verified {
        let policy = Policy {
            issuer: SOURCE_ISS,
            audiences: &self.audiences,
            algorithms: &self.algorithms,
            legacy: false,
            max_future_iat_secs: 300,
            max_iat_age_secs: 1_209_600,
        };
        let parsed = Unverified(black_box(set)).parse(&policy);
        let verify = async { parsed?.verify(&self.keys, &policy).await };
        self.rt.block_on(verify).expect("verifies")
    }

    fn normalize(&self, verified: Verified) -> Record {
        let (now, options) = (ssf_hub::unix_now_ms(), Options::default());
        let record = normalize::normalize(&self.schemas, verified, "bench", now, options);
        record.expect("normalizes")
    }

    /// The hub's per-SET work before the log: parse, verify, normalize.
    fn pipeline(&self, set: &str) -> Record {
        self.normalize(self.verified(set.as_bytes()))
    }
}

/// Median per-call time (µs) of `a` and of `b` over `rounds` rounds of 1,000 calls each,
/// alternating, so frequency drift and noisy neighbours hit both sides alike.
fn interleaved(rounds: usize, a: impl Fn(), b: impl Fn()) -> (f64, f64) {
    let time = |f: &dyn Fn()| {
        let t = Instant::now();
        (0..1000).for_each(|_| f());
        t.elapsed().as_secs_f64() * 1e3
    };
    let (mut ta, mut tb): (Vec<f64>, Vec<f64>) = (0..rounds).map(|_| (time(&a), time(&b))).unzip();
    ta.sort_by(f64::total_cmp);
    tb.sort_by(f64::total_cmp);
    (ta[rounds / 2], tb[rounds / 2])
}

fn main() {
    // A real benchmark run (`cargo bench`) passes `--bench`; `cargo test --benches`, `--list` and
    // `--profile-time` get criterion's own behaviour only, without the waiting and the ratio loop.
    let args: Vec<String> = std::env::args().collect();
    let other_mode = |a: &String| a == "--list" || a.starts_with("--profile-time");
    let benching = args.iter().any(|a| a == "--bench") && !args.iter().any(other_mode);
    if benching {
        wait_quiet(Duration::from_secs(120));
    }
    let run = Phase::start();
    let es = Signed::new(SignAlg::ES256, Alg::ES256);
    let rs = Signed::new(SignAlg::RS256, Alg::RS256);
    let fx = Fixture::new(&[&es, &rs]);
    let record = fx.pipeline(&es.set);
    let record_len = serde_json::to_vec(&record).map_or(0, |v| v.len());
    let (es_len, rs_len) = (es.set.len(), rs.set.len());
    println!("SET sizes: ES256 {es_len} bytes, RS256 {rs_len} bytes (compact); normalized record {record_len} bytes");

    let c = Criterion::default().warm_up_time(Duration::from_secs(1));
    let c = c.measurement_time(Duration::from_secs(3)).sample_size(50);
    let mut c = c.without_plots().configure_from_args();
    let mut g = c.benchmark_group("bare_verify");
    g.bench_function("es256", |b| b.iter(|| es.bare()));
    g.bench_function("rs256", |b| b.iter(|| rs.bare()));
    g.finish();
    let mut g = c.benchmark_group("pipeline");
    g.bench_function("es256", |b| b.iter(|| fx.pipeline(&es.set)));
    g.bench_function("rs256", |b| b.iter(|| fx.pipeline(&rs.set)));
    g.finish();
    let mut g = c.benchmark_group("parts");
    let es_set = es.set.as_bytes();
    g.bench_function("es256_parse_verify", |b| b.iter(|| fx.verified(es_set)));
    let verified = fx.verified(es_set);
    let verified = || verified.clone();
    g.bench_function("normalize", |b| {
        b.iter_batched(verified, |v| fx.normalize(v), BatchSize::SmallInput)
    });
    let to_json = || serde_json::to_vec(black_box(&record));
    g.bench_function("record_to_json", |b| b.iter(to_json));
    g.finish();
    c.final_summary();
    if !benching {
        return;
    }

    // The interleaved timed loop, in the same process: median of 31 rounds x 1,000.
    let loop_start = Phase::start();
    let pipeline = |s: &Signed| drop(black_box(fx.pipeline(&s.set)));
    let (bare, pipe) = interleaved(31, || es.bare(), || pipeline(&es));
    let (rs_bare, rs_pipe) = interleaved(31, || rs.bare(), || pipeline(&rs));
    let (all, in_loop) = (run.others(), loop_start.others());
    println!("\nother processes used {all:.0}% of the machine during the whole run, {in_loop:.0}% during the timed loop");
    println!("interleaved timed loop (median of 31 rounds x 1000):");
    println!("  bare_verify/es256 = {bare:.2} us, pipeline/es256 = {pipe:.2} us");
    println!("  bare_verify/rs256 = {rs_bare:.2} us, pipeline/rs256 = {rs_pipe:.2} us");
    let (overhead, ratio) = (pipe - bare, pipe / bare);
    println!("  pipeline overhead over bare ES256 = {overhead:.2} us");
    let met = if ratio <= 1.3 { "met" } else { "NOT met" };
    println!("ratio pipeline/bare_es256 = {ratio:.3} (goal <= 1.30: {met})");
    println!("ratio pipeline/bare_rs256 = {:.3}", rs_pipe / rs_bare);
    // Criterion's median estimates from this run, if it wrote them.
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    let median = |group: &str| {
        let path = format!("criterion/{group}/es256/new/estimates.json");
        let v: Value =
            serde_json::from_slice(&std::fs::read(Path::new(&target).join(path)).ok()?).ok()?;
        Some(v["median"]["point_estimate"].as_f64()? / 1e3)
    };
    if let (Some(b), Some(p)) = (median("bare_verify"), median("pipeline")) {
        let ratio = p / b;
        println!("criterion medians: bare_verify/es256 = {b:.2} us, pipeline/es256 = {p:.2} us, ratio = {ratio:.3}");
    }
}
