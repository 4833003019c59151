//! Interop with an independent JOSE implementation (Python's jwcrypto): SETs it signs are
//! accepted, and SETs signed by the hub's tooling verify in it.

use serde_json::{json, Value};
use ssf_hub::sign::{SetSigner, SignAlg};

use crate::support::*;

#[tokio::test]
async fn sets_signed_by_jwcrypto_are_accepted_for_every_algorithm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut keys = Vec::new();
    for alg in ["ES256", "RS256", "PS256", "EdDSA"] {
        let private = d.join(format!("{alg}.jwk.json"));
        let jwks = d.join(format!("{alg}.jwks.json"));
        jose_tool(
            &[
                "keygen",
                "--alg",
                alg,
                "--kid",
                &format!("py-{alg}"),
                "--private",
                private.to_str().expect("utf8"),
                "--jwks",
                jwks.to_str().expect("utf8"),
            ],
            None,
        )
        .expect("jwcrypto keygen");
        let set: Value =
            serde_json::from_str(&std::fs::read_to_string(&jwks).expect("read")).expect("json");
        keys.extend(set["keys"].as_array().cloned().expect("keys"));
        let _ = private;
    }
    let all = d.join("all.jwks.json");
    std::fs::write(&all, json!({ "keys": keys }).to_string()).expect("write");
    let hub = TestHub::start(|_, c| {
        let mut s = source("idp");
        s.jwks_file = Some(all.clone());
        c.sources = vec![s];
    })
    .await;
    for alg in ["ES256", "RS256", "PS256", "EdDSA"] {
        let claims = Value::Object(session_revoked()).to_string();
        let private = d.join(format!("{alg}.jwk.json"));
        let set = jose_tool(
            &[
                "sign",
                "--key",
                private.to_str().expect("utf8"),
                "--alg",
                alg,
                "--claims",
                "-",
            ],
            Some(&claims),
        )
        .expect("jwcrypto sign");
        hub.push("idp", set).await.assert_accepted();
    }
    assert_eq!(hub.events().await.len(), 4);
    hub.stop().await;
}

#[test]
fn sets_signed_by_the_hub_verify_in_jwcrypto() {
    let dir = tempfile::tempdir().expect("tempdir");
    for alg in [SignAlg::ES256, SignAlg::RS256] {
        let (signer, _) = SetSigner::generate(alg).expect("keygen");
        let jwks = dir.path().join(format!("{}.jwks.json", alg.name()));
        std::fs::write(&jwks, signer.jwks().to_string()).expect("write");
        let claims = session_revoked();
        let set = signer.sign(&claims).expect("sign");
        let out = jwcrypto_verify(&jwks, &set)
            .unwrap_or_else(|e| panic!("jwcrypto refused the hub's {} SET: {e}", alg.name()));
        assert_eq!(out["header"]["typ"], "secevent+jwt");
        assert_eq!(out["header"]["alg"], alg.name());
        assert_eq!(out["header"]["kid"], signer.kid());
        assert_eq!(out["claims"], Value::Object(claims));
        // And a tampered one does not verify.
        let mut parts: Vec<&str> = set.split('.').collect();
        let other = SetSigner::generate(alg)
            .expect("keygen")
            .0
            .sign(&session_revoked())
            .expect("sign");
        parts[1] = other.split('.').nth(1).expect("payload");
        assert!(jwcrypto_verify(&jwks, &parts.join(".")).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_python_receiver_discovers_verifies_and_polls() {
    let port = free_port();
    let key = es256();
    let issuer = format!("http://127.0.0.1:{port}");
    let hub = TestHub::start(|dir, c| {
        c.listen = format!("127.0.0.1:{port}").parse().expect("addr");
        c.issuer = issuer.clone();
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&key]));
        c.sources = vec![s];
    })
    .await;
    let (_, token) = hub.receiver("py-gw").await;
    let args = vec!["setup".to_owned(), issuer.clone(), token.clone()];
    let out = tokio::task::spawn_blocking(move || run_python("ssf_receiver.py", &args))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("the Python receiver failed to set up: {e}"));
    let setup: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(setup["verified"], true);
    let stream_id = setup["stream_id"].as_str().expect("stream").to_owned();

    for _ in 0..3 {
        hub.push("idp", key.sign(&session_revoked()).expect("sign"))
            .await
            .assert_accepted();
    }
    let args = vec!["poll".to_owned(), issuer, token, stream_id, "3".to_owned()];
    let out = tokio::task::spawn_blocking(move || run_python("ssf_receiver.py", &args))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("the Python receiver failed to poll: {e}"));
    let polled: Value = serde_json::from_str(&out).expect("json");
    let received = polled["received"].as_array().expect("received");
    assert_eq!(received.len(), 3);
    for r in received {
        assert_eq!(r["event"], SESSION_REVOKED);
        assert_eq!(
            r["sub_id"],
            json!({"format": "email", "email": "ana@corp.example.test"})
        );
    }
    hub.stop().await;
}
