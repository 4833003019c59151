//! Integrity of the revocation state and ingest leniency (issue 9, findings 7–10 and 18): who may
//! change what, aliases, ASCII-only case folding, replays past the de-duplication window, and
//! the sloppy-but-harmless spellings real transmitters send. Everything over real HTTP.

use serde_json::{json, Map, Value};
use ssf_hub::sign::SetSigner;

use crate::support::*;

const ACCOUNT_DISABLED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled";

/// A SET's claims for `event` about `sub_id`.
fn about(event: &str, payload: Value, sub_id: Value) -> Map<String, Value> {
    let mut c = claims(event, payload);
    c.insert("sub_id".into(), sub_id);
    c
}

/// Waits (bounded) until the revocation fold has passed log position `position`.
async fn folded(hub: &TestHub, position: u64) {
    for _ in 0..500 {
        let page = hub
            .call("GET", "/revocations?since=0&limit=1", ADMIN, None)
            .await
            .json();
        if page["position"].as_u64().is_some_and(|p| p >= position) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the fold did not reach position {position}");
}

/// `POST /revocations/check` with `subjects` (role → identifier) and a token `iat`.
async fn check(hub: &TestHub, subjects: Value, iat: u64) -> Value {
    let r = hub
        .call(
            "POST",
            "/revocations/check",
            ADMIN,
            Some(json!({"subjects": subjects, "iat": iat})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn push_ok(hub: &TestHub, source: &str, key: &SetSigner, c: &Map<String, Value>) {
    hub.push(source, key.sign(c).expect("sign"))
        .await
        .assert_accepted();
}

/// Finding 9: the Kelvin sign (U+212A) lower-cases to `k` under Unicode rules; email matching
/// must fold the ASCII range only, so `\u{212A}en@` is not `ken@`.
#[tokio::test]
async fn a_kelvin_sign_email_does_not_disable_the_ascii_one() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let kelvin = json!({"format": "email", "email": "\u{212A}en@example.com"});
    push_ok(
        &hub,
        "idp",
        &key,
        &about(ACCOUNT_DISABLED, json!({}), kelvin.clone()),
    )
    .await;
    folded(&hub, 1).await;
    let now = ssf_hub::unix_now();
    let ken = check(
        &hub,
        json!({"user": {"format": "email", "email": "ken@example.com"}}),
        now,
    )
    .await;
    assert_eq!(ken["allow"], true, "{ken}");
    let upper = check(
        &hub,
        json!({"user": {"format": "email", "email": "KEN@example.com"}}),
        now,
    )
    .await;
    assert_eq!(upper["allow"], true, "{upper}");
    let same = check(&hub, json!({"user": kelvin}), now).await;
    assert_eq!(same["reason"], "account_disabled", "{same}");
    hub.stop().await;
}

/// Finding 10: past `ingest.dedupe_retention_secs` the hub no longer remembers `(iss, jti)`, so a
/// validly signed SET that old is refused rather than stored a second time.
#[tokio::test]
async fn an_iat_older_than_the_dedupe_window_is_refused_and_not_stored() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let window = hub.config.ingest.dedupe_retention_secs;
    let now = ssf_hub::unix_now();
    for iat in [1_500_000_000, now - window - 60] {
        let mut c = session_revoked();
        c["iat"] = json!(iat);
        let r = hub.push("idp", key.sign(&c).expect("sign")).await;
        r.assert_set_error("invalid_request");
        assert!(r.json()["description"]
            .as_str()
            .is_some_and(|d| d.contains("dedupe_retention_secs")));
    }
    assert!(hub.events().await.is_empty(), "nothing was stored");
    // Inside the window a late SET is still fine.
    let mut c = session_revoked();
    c["iat"] = json!(now - window + 3600);
    push_ok(&hub, "idp", &key, &c).await;
    assert_eq!(hub.events().await.len(), 1);
    hub.stop().await;
}
