//! Verify + normalize cost against the bare signature check, measured in one run.
//!
//! Groups (criterion):
//! - `bare_verify/es256`, `bare_verify/rs256`: josekit `JwsVerifier::verify` on the signing
//!   input and signature of a ~1 KB SET: the machine's limit for one SET.
//! - `pipeline/es256`: what the hub does per pushed SET before the log: `Unverified::parse`,
//!   `Parsed::verify` (key lookup, signature, envelope claims) and `normalize::normalize`
//!   (JSON Schema validation, typed decode, subject parsing and canonical key).
//! - `parts/*`: the pipeline split up (parse+verify only, normalize only, record encoding) so a
//!   regression can be placed.
//!
//! At the end an interleaved timed loop measures bare ES256 and the pipeline in the same process
//! and prints `ratio pipeline/bare_es256 = X` (goal: at most 1.3), plus the same ratio from
//! criterion's own estimates when they can be found.
//!
//! Run: `cargo bench --bench verify` (about a minute). `-- --quick` or a filter work as usual.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{BatchSize, Criterion};
use josekit::jwk::Jwk;
use josekit::jws::JwsVerifier;
use serde_json::{json, Value};

use ssf_hub::config::Config;
use ssf_hub::keys::SourceKeys;
use ssf_hub::normalize::{self, Options};
use ssf_hub::schema::Schemas;
use ssf_hub::sign::{SetSigner, SignAlg};
use ssf_hub::verify::{Alg, Policy, Unverified};

#[expect(dead_code, reason = "the load support is shared with benches/load.rs")]
mod support;
use support::hub::{credential_change, object, pad_to, SOURCE_AUD, SOURCE_ISS};
use support::machine::{wait_quiet, Phase};

/// Signs a credential-change SET of about 1,024 bytes compact with `signer`.
fn make_set(signer: &SetSigner, jti: &str) -> String {
    let claims = credential_change(
        SOURCE_ISS,
        json!([SOURCE_AUD]),
        jti,
        None,
        pad_to(signer, jti, 1024),
    );
    signer.sign(&claims).expect("sign")
}

/// The signing input and decoded signature of a compact JWS.
fn split(compact: &str) -> (Vec<u8>, Vec<u8>) {
    let dot = compact.rfind('.').expect("three parts");
    let sig = URL_SAFE_NO_PAD.decode(&compact[dot + 1..]).expect("b64");
    (compact.as_bytes()[..dot].to_vec(), sig)
}

fn verifier(signer: &SetSigner, alg: Alg) -> Box<dyn JwsVerifier> {
    let jwk = Jwk::from_map(object(signer.public_jwk())).expect("jwk");
    alg.verifier(&jwk).expect("verifier")
}

struct Fixture {
    es_set: String,
    rs_set: String,
    es_bare: Box<dyn JwsVerifier>,
    rs_bare: Box<dyn JwsVerifier>,
    keys: SourceKeys,
    schemas: Schemas,
    audiences: Vec<String>,
    algorithms: Vec<Alg>,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let (es, _) = SetSigner::generate(SignAlg::ES256).expect("es256 key");
        let (rs, _) = SetSigner::generate(SignAlg::RS256).expect("rs256 key");
        let es_set = make_set(&es, "bench-es256-0001");
        let rs_set = make_set(&rs, "bench-rs256-0001");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("source.jwks.json");
        let jwks = json!({"keys": [es.public_jwk(), rs.public_jwk()]});
        std::fs::write(&path, jwks.to_string()).expect("write jwks");
        let algorithms = vec![Alg::ES256, Alg::RS256, Alg::PS256, Alg::EdDSA];
        let env = figment::providers::Env::prefixed("SSF_BENCH_UNUSED_");
        let jwks_config = Config::load_from(None, env).expect("default config").jwks;
        let keys = SourceKeys::from_file("bench", &path, algorithms.clone(), jwks_config)
            .expect("source keys");
        Fixture {
            es_bare: verifier(&es, Alg::ES256),
            rs_bare: verifier(&rs, Alg::RS256),
            es_set,
            rs_set,
            keys,
            schemas: Schemas::compile().expect("schemas"),
            audiences: vec![SOURCE_AUD.to_owned()],
            algorithms,
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            _dir: dir,
        }
    }

    fn policy(&self) -> Policy<'_> {
        Policy {
            issuer: SOURCE_ISS,
            audiences: &self.audiences,
            algorithms: &self.algorithms,
            legacy: false,
            max_future_iat_secs: 300,
        }
    }

    /// The hub's per-SET work before the log: parse, verify, normalize.
    fn pipeline(&self, set: &[u8]) -> normalize::Record {
        let verified = self.verified(set);
        let now = ssf_hub::unix_now_ms();
        normalize::normalize(&self.schemas, verified, "bench", now, Options::default())
            .expect("normalizes")
    }

    fn verified(&self, set: &[u8]) -> ssf_hub::verify::Verified {
        let policy = self.policy();
        self.rt
            .block_on(async {
                Unverified(set)
                    .parse(&policy)?
                    .verify(&self.keys, &policy)
                    .await
            })
            .expect("verifies")
    }
}

/// Median per-call time (µs) of `a` and of `b` over `rounds` rounds of 1,000 calls each,
/// alternating, so frequency drift and noisy neighbours hit both sides alike.
fn interleaved(rounds: usize, a: &mut dyn FnMut(), b: &mut dyn FnMut()) -> (f64, f64) {
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        (0..1000).for_each(|_| f());
        t.elapsed().as_secs_f64() * 1e3
    };
    let (mut ta, mut tb): (Vec<f64>, Vec<f64>) = (0..rounds).map(|_| (time(a), time(b))).unzip();
    ta.sort_by(f64::total_cmp);
    tb.sort_by(f64::total_cmp);
    (ta[rounds / 2], tb[rounds / 2])
}

/// Criterion's median estimate (µs) for `group/name` from this run, if it wrote one.
fn criterion_median(group: &str, name: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    let path = PathBuf::from(target).join(format!("criterion/{group}/{name}/new/estimates.json"));
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(v["median"]["point_estimate"].as_f64()? / 1e3)
}

fn main() {
    // A real benchmark run (`cargo bench`) passes `--bench`; `cargo test --benches`, `--list` and
    // `--profile-time` get criterion's own behaviour only, without the waiting and the ratio loop.
    let args: Vec<String> = std::env::args().collect();
    let other_mode = args
        .iter()
        .any(|a| a == "--list" || a.starts_with("--profile-time"));
    let benching = args.iter().any(|a| a == "--bench") && !other_mode;
    if benching {
        wait_quiet(Duration::from_secs(120));
    }
    let (run, fx) = (Phase::start(), Fixture::new());
    let (es_input, es_sig) = split(&fx.es_set);
    let (rs_input, rs_sig) = split(&fx.rs_set);
    fx.es_bare
        .verify(&es_input, &es_sig)
        .expect("es256 verifies");
    fx.rs_bare
        .verify(&rs_input, &rs_sig)
        .expect("rs256 verifies");
    let record = fx.pipeline(fx.es_set.as_bytes());
    let (es_len, rs_len) = (fx.es_set.len(), fx.rs_set.len());
    let record_len = serde_json::to_vec(&record).map_or(0, |v| v.len());
    println!("SET sizes: ES256 {es_len} bytes, RS256 {rs_len} bytes (compact); normalized record {record_len} bytes");

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .without_plots()
        .configure_from_args();
    let mut g = c.benchmark_group("bare_verify");
    g.bench_function("es256", |b| {
        b.iter(|| fx.es_bare.verify(black_box(&es_input), &es_sig))
    });
    g.bench_function("rs256", |b| {
        b.iter(|| fx.rs_bare.verify(black_box(&rs_input), &rs_sig))
    });
    g.finish();
    let mut g = c.benchmark_group("pipeline");
    g.bench_function("es256", |b| {
        b.iter(|| fx.pipeline(black_box(fx.es_set.as_bytes())))
    });
    g.bench_function("rs256", |b| {
        b.iter(|| fx.pipeline(black_box(fx.rs_set.as_bytes())))
    });
    g.finish();
    let mut g = c.benchmark_group("parts");
    g.bench_function("es256_parse_verify", |b| {
        b.iter(|| fx.verified(black_box(fx.es_set.as_bytes())))
    });
    let verified = fx.verified(fx.es_set.as_bytes());
    let normalize = |v| normalize::normalize(&fx.schemas, v, "bench", 0, Options::default());
    g.bench_function("normalize", |b| {
        b.iter_batched(
            || verified.clone(),
            |v| normalize(v).expect("normalizes"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("record_to_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&record)))
    });
    g.finish();
    c.final_summary();
    if !benching {
        return;
    }

    // The interleaved timed loop, in the same process: median of 31 rounds x 1,000.
    let loop_start = Phase::start();
    let mut bare_es = || drop(black_box(fx.es_bare.verify(black_box(&es_input), &es_sig)));
    let mut pipe_es = || drop(black_box(fx.pipeline(black_box(fx.es_set.as_bytes()))));
    let (bare, pipe) = interleaved(31, &mut bare_es, &mut pipe_es);
    let mut bare_rs = || drop(black_box(fx.rs_bare.verify(black_box(&rs_input), &rs_sig)));
    let mut pipe_rs = || drop(black_box(fx.pipeline(black_box(fx.rs_set.as_bytes()))));
    let (rs_bare, rs_pipe) = interleaved(31, &mut bare_rs, &mut pipe_rs);
    let (all, in_loop) = (run.others(), loop_start.others());
    println!("\nother processes used {all:.0}% of the machine during the whole run, {in_loop:.0}% during the timed loop");
    println!("interleaved timed loop (median of 31 rounds x 1000):");
    println!("  bare_verify/es256 = {bare:.2} us, pipeline/es256 = {pipe:.2} us");
    println!("  bare_verify/rs256 = {rs_bare:.2} us, pipeline/rs256 = {rs_pipe:.2} us");
    println!(
        "  pipeline overhead over bare ES256 = {:.2} us",
        pipe - bare
    );
    let met = if pipe / bare <= 1.3 { "met" } else { "NOT met" };
    println!(
        "ratio pipeline/bare_es256 = {:.3} (goal <= 1.30: {met})",
        pipe / bare
    );
    println!("ratio pipeline/bare_rs256 = {:.3}", rs_pipe / rs_bare);
    if let (Some(b), Some(p)) = (
        criterion_median("bare_verify", "es256"),
        criterion_median("pipeline", "es256"),
    ) {
        println!("criterion medians: bare_verify/es256 = {b:.2} us, pipeline/es256 = {p:.2} us, ratio = {:.3}", p / b);
    }
}
