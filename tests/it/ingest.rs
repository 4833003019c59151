//! RFC 8935 push ingest over real HTTP: every error code, the HTTP-level refusals, duplicates,
//! and what ends up in the log.

use serde_json::{json, Value};
use ssf_hub::sign::sign_compact;

use crate::support::*;

#[tokio::test]
async fn accepts_a_valid_set_and_stores_it_normalized() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let claims = claims(
        CREDENTIAL_CHANGE,
        json!({"credential_type": "password", "change_type": "update",
               "event_timestamp": 1767225590, "reason_admin": "reset by helpdesk"}),
    );
    let set = key.sign(&claims).expect("sign");
    hub.push("idp", set.clone()).await.assert_accepted();

    let events = hub.events().await;
    assert_eq!(events.len(), 1);
    let r = &events[0];
    assert_eq!(r["position"], 1);
    assert_eq!(r["source"], "idp");
    assert_eq!(r["iss"], ISS);
    assert_eq!(r["jti"], claims["jti"]);
    assert_eq!(r["txn"], "txn-1");
    assert_eq!(r["event_type"], CREDENTIAL_CHANGE);
    assert_eq!(r["known"], true);
    assert_eq!(r["event_timestamp"], 1767225590);
    assert_eq!(
        r["subject"],
        json!({"format": "email", "email": "ana@corp.example.test"})
    );
    assert_eq!(
        r["subject_key"],
        r#"{"email":"ana@corp.example.test","format":"email"}"#
    );
    // Legacy bare-string reason upgraded to the 1.0 object form.
    assert_eq!(
        r["claims"]["reason_admin"],
        json!({"en": "reset by helpdesk"})
    );
    assert_eq!(r["set"], set);
    assert!(r["received_at_ms"].as_u64().expect("ms") > 0);
    hub.stop().await;
}

#[tokio::test]
async fn a_repeated_jti_is_acknowledged_but_stored_once() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let set = key.sign(&session_revoked()).expect("sign");
    for _ in 0..3 {
        hub.push("idp", set.clone()).await.assert_accepted();
    }
    // The same (iss, jti) in a freshly signed SET is still the same SET.
    let mut again = session_revoked();
    again["jti"] = json!(crate::support::jti_of(&set));
    hub.push("idp", key.sign(&again).expect("sign"))
        .await
        .assert_accepted();
    assert_eq!(hub.events().await.len(), 1);
    assert!(hub
        .metrics()
        .await
        .contains("ssf_hub_ingest_duplicates_total"));
    hub.stop().await;
}

#[tokio::test]
async fn every_rfc8935_error_code_is_produced_exactly() {
    let key = es256();
    let other = es256();
    let hub = TestHub::start(|dir, c| {
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&key]));
        let mut scanner = source("scanner");
        scanner.jwks_file = Some(write_jwks(dir, "scanner.jwks.json", &[&key]));
        scanner.event_types = vec!["caep/device-compliance-change".into()];
        c.sources = vec![s, scanner];
    })
    .await;

    // invalid_request: not a JWS at all.
    hub.push("idp", "hello")
        .await
        .assert_set_error("invalid_request");
    // invalid_request: payload violates its event definition (change_type is an enum).
    let bad = claims(
        CREDENTIAL_CHANGE,
        json!({"credential_type": "pin", "change_type": "rotate"}),
    );
    hub.push("idp", key.sign(&bad).expect("sign"))
        .await
        .assert_set_error("invalid_request");
    // invalid_key: a kid the source never published.
    let stranger = ssf_hub::sign::SetSigner::from_pem(
        &ssf_hub::sign::SetSigner::generate(ssf_hub::sign::SignAlg::ES256)
            .expect("keygen")
            .1,
        ssf_hub::sign::SignAlg::ES256,
        Some("not-published".into()),
    )
    .expect("signer");
    hub.push("idp", stranger.sign(&session_revoked()).expect("sign"))
        .await
        .assert_set_error("invalid_key");
    // authentication_failed: right kid, wrong key.
    let forged = sign_compact(
        other.jws_signer(),
        &json!({"alg": "ES256", "kid": key.kid(), "typ": "secevent+jwt"}),
        &session_revoked(),
    )
    .expect("sign");
    hub.push("idp", forged)
        .await
        .assert_set_error("authentication_failed");
    // invalid_issuer.
    let mut c = session_revoked();
    c["iss"] = json!("https://elsewhere.example.test");
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_set_error("invalid_issuer");
    // invalid_audience, both as a string and as an array.
    let mut c = session_revoked();
    c["aud"] = json!("https://someone-else.example.test");
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_set_error("invalid_audience");
    c["aud"] = json!(["https://a.example.test", "https://b.example.test"]);
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_set_error("invalid_audience");
    // access_denied: the scanner may only send device-compliance-change.
    hub.push("scanner", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_set_error("access_denied");
    let ok = claims(
        "https://schemas.openid.net/secevent/caep/event-type/device-compliance-change",
        json!({"previous_status": "compliant", "current_status": "not-compliant"}),
    );
    hub.push("scanner", key.sign(&ok).expect("sign"))
        .await
        .assert_accepted();

    // An audience array that contains ours is fine.
    let mut c = session_revoked();
    c["aud"] = json!(["https://a.example.test", AUD]);
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_accepted();
    assert_eq!(
        hub.events().await.len(),
        2,
        "only the two accepted SETs are stored"
    );
    hub.stop().await;
}

#[tokio::test]
async fn source_credentials_are_enforced_before_anything_else() {
    let key = es256();
    let hub = TestHub::start(|dir, c| {
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&key]));
        s.authorization = Some(ssf_hub::config::Secret::new("Bearer s3cr3t-value"));
        c.sources = vec![s];
    })
    .await;
    let set = key.sign(&session_revoked()).expect("sign");

    let missing = hub.push("idp", set.clone()).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    assert_eq!(missing.json()["error"], "unauthorized");

    let wrong = hub
        .push_with(
            "idp",
            set.clone(),
            &[("authorization", "Bearer s3cr3t-valuf")],
        )
        .await;
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.json()["error"], "forbidden");

    // Credential checked before the body: garbage with a wrong credential is still 403.
    let wrong = hub
        .push_with("idp", "garbage", &[("authorization", "Bearer nope")])
        .await;
    assert_eq!(wrong.status, 403);

    hub.push_with("idp", set, &[("authorization", "Bearer s3cr3t-value")])
        .await
        .assert_accepted();
    hub.stop().await;
}

#[tokio::test]
async fn http_level_refusals_use_their_status_codes() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let set = key.sign(&session_revoked()).expect("sign");

    let r = hub.push("nobody", set.clone()).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");

    let r = hub
        .client
        .post(format!("{}/ingest/idp", hub.base))
        .header("content-type", "application/json")
        .body(set.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 415);

    let r = hub
        .client
        .post(format!("{}/ingest/idp", hub.base))
        .body(set.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 415, "a missing content type is refused too");

    // Parameters and case in the media type are fine.
    hub.push_with(
        "idp",
        key.sign(&session_revoked()).expect("sign"),
        &[("content-type", "Application/SecEvent+JWT; charset=utf-8")],
    )
    .await
    .assert_accepted();

    // Just over the default 64 KiB limit, with and without a declared length.
    let big = "a".repeat(64 * 1024 + 1);
    let r = hub.push("idp", big.clone()).await;
    assert_eq!(r.status, 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(8192)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let r = hub.push("idp", reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(r.status, 413, "chunked bodies are cut off at the limit too");

    // GET on the ingest route is not a thing.
    let r = hub
        .client
        .get(format!("{}/ingest/idp", hub.base))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 405);
    hub.stop().await;
}

#[tokio::test]
async fn events_api_requires_the_admin_token() {
    let hub = TestHub::with_signer(&es256()).await;
    let url = format!("{}/events", hub.base);
    let r = hub.client.get(&url).send().await.expect("send");
    assert_eq!(r.status(), 401);
    let r = hub
        .client
        .get(&url)
        .bearer_auth("wrong-token")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let r = hub
        .client
        .get(format!("{url}?since=-1"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let r = hub
        .client
        .get(&url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body,
        json!({"events": [], "next": 0, "head": 0, "earliest": 1})
    );
    hub.stop().await;
}

#[tokio::test]
async fn unknown_event_types_are_accepted_kept_and_counted() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let uri = "https://vendor.example.test/event-type/malware-detected";
    let set = key
        .sign(&claims(uri, json!({"severity": "high"})))
        .expect("sign");
    hub.push("idp", set).await.assert_accepted();
    let events = hub.events().await;
    assert_eq!(events[0]["event_type"], uri);
    assert_eq!(events[0]["known"], false);
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("ssf_hub_ingest_unknown_event_type_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"event_type="unknown""#),
        "unknown types never become label values"
    );
    hub.stop().await;
}

#[tokio::test]
async fn legacy_sources_may_omit_typ_and_use_old_spellings() {
    let key = es256();
    let hub = TestHub::start(|dir, c| {
        let mut strict = source("strict");
        strict.jwks_file = Some(write_jwks(dir, "k.json", &[&key]));
        let mut legacy = strict.clone();
        legacy.id = "legacy".into();
        legacy.legacy = true;
        c.sources = vec![strict, legacy];
    })
    .await;
    // Pre-1.0: no typ, subject only inside the payload with `subject_type` and `iss-sub`,
    // an sse/ verification-era URI family for CAEP, and a millisecond timestamp.
    let mut c = claims(
        "http://schemas.openid.net/secevent/caep/event-type/session-revoked",
        json!({"subject": {"subject_type": "iss-sub", "iss": ISS, "sub": "u-1"},
               "event_timestamp": 1767225590123u64}),
    );
    c.remove("sub_id");
    c["txn"] = json!(42);
    let header = json!({"alg": "ES256", "kid": key.kid()});
    let set = sign_compact(key.jws_signer(), &header, &c).expect("sign");

    hub.push("strict", set.clone())
        .await
        .assert_set_error("invalid_request");
    hub.push("legacy", set).await.assert_accepted();
    let r = &hub.events().await[0];
    assert_eq!(r["event_type"], SESSION_REVOKED);
    assert_eq!(
        r["subject"],
        json!({"format": "iss_sub", "iss": ISS, "sub": "u-1"})
    );
    assert_eq!(r["event_timestamp"], 1767225590);
    assert_eq!(r["txn"], "42");

    // A 1.0 SET with legacy subject spellings in sub_id is normalized for every source.
    let mut c = session_revoked();
    c["sub_id"] = json!({"user": {"format": "phone", "phone_number": "+12065550100"},
                         "tenant": {"format": "opaque", "id": "t-9"}});
    hub.push("strict", key.sign(&c).expect("sign"))
        .await
        .assert_accepted();
    let r = &hub.events().await[1];
    assert_eq!(r["subject"]["format"], "complex");
    assert_eq!(r["subject"]["user"]["format"], "phone_number");
    hub.stop().await;
}
