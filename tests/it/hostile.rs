//! Hostile input: each attack gets its clear refusal, nothing is stored, and the hub keeps
//! serving (every test ends by getting a valid SET accepted).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use ssf_hub::sign::sign_compact;

use crate::support::*;

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Asserts the hub still accepts a valid SET and stored exactly `stored` records in total.
async fn still_serving(hub: &TestHub, key: &ssf_hub::sign::SetSigner, stored: usize) {
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    assert_eq!(hub.events().await.len(), stored);
}

#[tokio::test]
async fn alg_none_and_hmac_with_the_public_key_are_refused() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let claims = Value::Object(session_revoked());

    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "secevent+jwt"})),
        b64(&claims)
    );
    hub.push("idp", none)
        .await
        .assert_set_error("invalid_request");

    // HS256 keyed with the public JWK's bytes: the classic key-confusion attack.
    let public = key.public_jwk().to_string();
    let hmac = josekit::jws::HS256
        .signer_from_bytes(public.as_bytes())
        .expect("hmac signer");
    let header = json!({"alg": "HS256", "kid": key.kid(), "typ": "secevent+jwt"});
    let set = sign_compact(&hmac, &header, claims.as_object().expect("obj")).expect("sign");
    hub.push("idp", set)
        .await
        .assert_set_error("invalid_request");

    still_serving(&hub, &key, 1).await;
    hub.stop().await;
}

#[tokio::test]
async fn key_hints_in_the_header_are_ignored() {
    let key = es256();
    let attacker = es256();
    // The attacker's own JWKS server: the hub must never fetch from it.
    let lure = JwksServer::start(&[&attacker], "max-age=600").await;
    let hub = TestHub::with_signer(&key).await;
    for hint in [
        json!({"jku": lure.url()}),
        json!({"x5u": lure.url()}),
        json!({"jwk": attacker.public_jwk()}),
    ] {
        let mut header = json!({"alg": "ES256", "kid": attacker.kid(), "typ": "secevent+jwt"});
        header
            .as_object_mut()
            .expect("obj")
            .extend(hint.as_object().cloned().expect("obj"));
        let set = sign_compact(attacker.jws_signer(), &header, &session_revoked()).expect("sign");
        hub.push("idp", set).await.assert_set_error("invalid_key");
        // Same hint, but claiming the real kid: the signature cannot verify.
        header["kid"] = json!(key.kid());
        let set = sign_compact(attacker.jws_signer(), &header, &session_revoked()).expect("sign");
        hub.push("idp", set)
            .await
            .assert_set_error("authentication_failed");
    }
    assert_eq!(
        lure.hits(),
        0,
        "the hub fetched a key URL named by the token"
    );

    // `crit` names extensions the hub cannot honour: refuse rather than ignore.
    let header =
        json!({"alg": "ES256", "kid": key.kid(), "typ": "secevent+jwt", "crit": ["exp"], "exp": 1});
    let set = sign_compact(key.jws_signer(), &header, &session_revoked()).expect("sign");
    hub.push("idp", set)
        .await
        .assert_set_error("invalid_request");
    still_serving(&hub, &key, 1).await;
    hub.stop().await;
}

#[tokio::test]
async fn malformed_bodies_are_invalid_requests() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let good = key.sign(&session_revoked()).expect("sign");
    // Truncated inside the claims: two parts left, whatever the random lengths.
    let cut = &good[..good.find('.').expect("dot") + 10];
    let no_sig = &good[..good.rfind('.').expect("dot")];
    let parts: Vec<&str> = good.split('.').collect();
    let jwe_shaped = format!("{}.a.b.c.d", parts[0]);
    let bad_header = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode("{not json"),
        parts[1],
        parts[2]
    );
    let array_header = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode("[1]"),
        parts[1],
        parts[2]
    );
    let nul = "\u{0}\u{1}\u{2}".to_owned();
    let bodies: Vec<Vec<u8>> = vec![
        cut.as_bytes().to_vec(),
        no_sig.as_bytes().to_vec(),
        jwe_shaped.into_bytes(),
        bad_header.into_bytes(),
        array_header.into_bytes(),
        b"".to_vec(),
        b"....".to_vec(),
        vec![0xff, 0xfe, 0x2e, 0x2e],
        nul.into_bytes(),
        format!("{good}.{good}").into_bytes(),
    ];
    for body in bodies {
        hub.push("idp", body)
            .await
            .assert_set_error("invalid_request");
    }
    still_serving(&hub, &key, 1).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_ten_megabyte_body_is_refused_without_being_read() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let r = hub.push("idp", vec![b'a'; 10 * 1024 * 1024]).await;
    assert_eq!(r.status, 413);
    still_serving(&hub, &key, 1).await;
    hub.stop().await;
}

#[tokio::test]
async fn deeply_nested_json_is_refused_cleanly() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    // Signed, so it reaches claim parsing: 5,000 levels of nesting inside an event payload.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let mut claims = session_revoked();
    claims.insert("deep".into(), Value::Null);
    let text = Value::Object(claims).to_string().replace("null", &deep);
    let header = json!({"alg": "ES256", "kid": key.kid(), "typ": "secevent+jwt"});
    let input = format!("{}.{}", b64(&header), URL_SAFE_NO_PAD.encode(&text));
    let sig = key.jws_signer().sign(input.as_bytes()).expect("sign");
    let set = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
    assert!(set.len() < 64 * 1024);
    hub.push("idp", set)
        .await
        .assert_set_error("invalid_request");
    // Nested deeply in the header too (unsigned: the header is parsed first).
    let set = format!("{}.e30.", URL_SAFE_NO_PAD.encode(&deep));
    hub.push("idp", set)
        .await
        .assert_set_error("invalid_request");
    still_serving(&hub, &key, 1).await;
    hub.stop().await;
}

#[tokio::test]
async fn wrong_claim_types_and_forbidden_claims_are_invalid_requests() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let cases: Vec<(&str, Value)> = vec![
        ("iat", json!("1767225600")),
        ("iat", json!(-5)),
        ("iat", json!(null)),
        ("jti", json!(12345)),
        ("jti", json!("")),
        ("iss", json!(["https://idp.example.test"])),
        ("aud", json!(7)),
        ("aud", json!([AUD, 7])),
        ("events", json!([])),
        ("events", json!({})),
        ("events", json!({SESSION_REVOKED: "revoked"})),
        ("sub_id", json!("ana@corp.example.test")),
        ("sub_id", json!({"format": "email"})),
        (
            "sub_id",
            json!({"format": "phone_number", "phone_number": "206 555 0100"}),
        ),
        ("sub_id", json!({"format": "complex"})),
        ("txn", json!({"id": 1})),
        ("sub", json!("u-1")),
        ("exp", json!(ssf_hub::unix_now() + 60)),
        // (A known event beside unknown extension URIs is accepted: tests/it/integrity.rs.)
        // Two unknown events: nothing says which one the SET is about.
        (
            "events",
            json!({"https://vendor.example.test/event-type/a": {}, "https://vendor.example.test/event-type/other": {}}),
        ),
        // Two different events in one SET.
        (
            "events",
            json!({SESSION_REVOKED: {}, "https://schemas.openid.net/secevent/risc/event-type/account-purged": {}}),
        ),
    ];
    for (claim, value) in cases {
        let mut c: Map<String, Value> = session_revoked();
        c.insert(claim.into(), value.clone());
        let r = hub.push("idp", key.sign(&c).expect("sign")).await;
        assert_eq!(r.status, 400, "{claim} = {value}: {}", r.body);
        r.assert_set_error("invalid_request");
        // The description never echoes token content.
        assert!(!r.body.contains("ana@corp"), "{}", r.body);
    }
    for missing in ["iss", "jti", "iat", "events", "sub_id"] {
        let mut c = session_revoked();
        c.remove(missing);
        hub.push("idp", key.sign(&c).expect("sign"))
            .await
            .assert_set_error("invalid_request");
    }
    let mut c = session_revoked();
    c.remove("aud");
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_set_error("invalid_audience");
    still_serving(&hub, &key, 1).await;
    hub.stop().await;
}

#[tokio::test]
async fn an_iat_far_in_the_future_is_refused_but_an_old_one_is_not() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let mut c = session_revoked();
    c["iat"] = json!(ssf_hub::unix_now() + 86_400);
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_set_error("invalid_request");
    // Within the default 300 s skew allowance.
    let mut c = session_revoked();
    c["iat"] = json!(ssf_hub::unix_now() + 60);
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_accepted();
    // Late delivery of an old SET is normal (paused streams, poll backlogs), within the
    // de-duplication window (older ones: tests/it/integrity.rs).
    let mut c = session_revoked();
    c["iat"] = json!(ssf_hub::unix_now() - 86_400);
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_accepted();
    still_serving(&hub, &key, 3).await;
    hub.stop().await;
}

#[tokio::test]
async fn unknown_kids_force_one_refresh_and_no_storm() {
    let key = es256();
    let jwks = JwksServer::start(&[&key], "max-age=600").await;
    let url = jwks.url();
    let hub = Arc::new(
        TestHub::start(move |_, c| {
            let mut s = source("idp");
            s.jwks_uri = Some(url);
            // The test JWKS server is plain HTTP on loopback.
            s.allow_insecure_jwks_uri = true;
            c.sources = vec![s];
        })
        .await,
    );
    // The known key works (and warms the cache).
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let before = jwks.hits();
    assert!(before >= 1);

    let stranger = ssf_hub::sign::SetSigner::from_pem(
        &ssf_hub::sign::SetSigner::generate(ssf_hub::sign::SignAlg::ES256)
            .expect("keygen")
            .1,
        ssf_hub::sign::SignAlg::ES256,
        Some("made-up-kid".into()),
    )
    .expect("signer");
    let set = stranger.sign(&session_revoked()).expect("sign");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let hub = hub.clone();
        // A different made-up kid on every request, as an amplification attack would use.
        let mut parts: Vec<String> = set.split('.').map(String::from).collect();
        parts[0] = b64(&json!({"alg": "ES256", "kid": format!("kid-{i}"), "typ": "secevent+jwt"}));
        let body = parts.join(".");
        tasks.spawn(async move { hub.push("idp", body).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").assert_set_error("invalid_key");
    }
    assert_eq!(
        jwks.hits() - before,
        1,
        "exactly one forced refresh for 1,000 unknown kids"
    );
    // Still serving, with no further fetch.
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    assert_eq!(jwks.hits() - before, 1);
    Arc::into_inner(hub).expect("sole owner").stop().await;
}
