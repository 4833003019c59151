//! Stage 2 and 3 on hostile input: a pushed body as compact JWS (header parsing, the algorithm
//! allow-list, `typ`/`crit`/`kid`, signature check against a fixed key), and, for inputs that
//! are a JSON object, those claims signed with the fixed key so the claim checks and
//! normalization (schemas, typed events, subjects) see them too. A normalized record must
//! survive the log's JSON codec unchanged.

#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use ssf_hub::keys::{Alg, JwksConfig, SourceKeys};
use ssf_hub::normalize::{normalize, Options, Record};
use ssf_hub::schema::Schemas;
use ssf_hub::sign::{SetSigner, SignAlg};
use ssf_hub::verify::{Policy, Unverified};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    signer: SetSigner,
    keys: SourceKeys,
    schemas: Schemas,
    algorithms: Vec<Alg>,
    audiences: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let signer = SetSigner::from_pem(
            common::SOURCE_KEY_PEM.as_bytes(),
            SignAlg::ES256,
            Some(common::SOURCE_KID.into()),
        )
        .expect("fixed key");
        let algorithms = vec![Alg::ES256, Alg::RS256, Alg::PS256, Alg::EdDSA];
        let cfg = JwksConfig {
            min_cache_secs: 300,
            max_cache_secs: 300,
            refresh_cooldown_secs: 60,
            fetch_timeout_secs: 5,
            max_bytes: 1 << 18,
            refresh_wait_ms: 0,
        };
        let jwks = signer.jwks().to_string();
        let keys = SourceKeys::from_jwks("fuzz", jwks.as_bytes(), algorithms.clone(), cfg)
            .expect("fixed JWKS");
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            signer,
            keys,
            schemas: Schemas::compile().expect("schemas"),
            algorithms,
            audiences: vec![common::AUD.into()],
        }
    })
}

fn check(f: &Fixture, body: &[u8], legacy: bool) {
    let policy = Policy {
        issuer: common::ISS,
        audiences: &f.audiences,
        algorithms: &f.algorithms,
        legacy,
        max_future_iat_secs: 300,
        // The shipped default (ingest.dedupe_retention_secs): the age check runs too.
        max_iat_age_secs: 1_209_600,
    };
    let Ok(parsed) = Unverified(body).parse(&policy) else {
        return;
    };
    let Ok(verified) = f.runtime.block_on(parsed.verify(&f.keys, &policy)) else {
        return;
    };
    let Ok(record) = normalize(
        &f.schemas,
        verified,
        "fuzz",
        0,
        Options {
            legacy,
            max_event_timestamp: Some(ssf_hub::unix_now() + 300),
        },
    ) else {
        return;
    };
    // An accepted SET is stored as this JSON and read back by every follower: a record that
    // encodes but does not decode would be acknowledged and then silently skipped.
    let stored = serde_json::to_vec(&record).expect("a record encodes");
    let back: Record = serde_json::from_slice(&stored).expect("a stored record decodes");
    // (Compared by what identifies and orders it: serde_json may read a float in the claims
    // back one ulp off, which changes nothing.)
    assert_eq!(
        (
            &back.jti,
            &back.subject_key,
            &back.event_type,
            back.event_timestamp
        ),
        (
            &record.jti,
            &record.subject_key,
            &record.event_type,
            record.event_timestamp
        ),
        "a record survives the log's codec"
    );
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let legacy = data.len() % 2 == 1;
    if data.first() == Some(&b'{') {
        // Claims: make them a correctly signed SET, so everything after the signature runs.
        let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let claims: Map<String, Value> = claims;
        if let Ok(compact) = f.signer.sign(&claims) {
            check(f, compact.as_bytes(), legacy);
        }
    } else {
        check(f, data, legacy);
    }
});
