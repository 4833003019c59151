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
        let out = jose_tool(
            &[
                "verify",
                "--jwks",
                jwks.to_str().expect("utf8"),
                "--token",
                "-",
            ],
            Some(&set),
        )
        .unwrap_or_else(|e| panic!("jwcrypto refused the hub's {} SET: {e}", alg.name()));
        let out: Value = serde_json::from_str(&out).expect("json");
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
        assert!(jose_tool(
            &[
                "verify",
                "--jwks",
                jwks.to_str().expect("utf8"),
                "--token",
                "-"
            ],
            Some(&parts.join(".")),
        )
        .is_err());
    }
}
