//! Revocation state and deltas: the rule for every CAEP/RISC event type, out-of-order arrival,
//! fold properties (idempotence; snapshot + deltas = rebuild), and the HTTP delta, snapshot and
//! decision APIs.

use proptest::prelude::*;
use serde_json::{json, Value};
use ssf_hub::normalize::Record;
use ssf_hub::set::{EventKind, Subject};
use ssf_hub::state::{Query, State};

use crate::support::*;

fn subject(v: Value) -> Subject {
    Subject::parse(&v).expect("subject")
}

fn record(position: u64, kind: EventKind, payload: Value, sub: &Subject, ts: u64) -> Record {
    let mut claims = payload;
    if kind.has_common_claims() {
        claims["event_timestamp"] = json!(ts);
    }
    Record {
        position,
        received_at_ms: 0,
        source: "idp".into(),
        iss: ISS.into(),
        jti: format!("j{position}"),
        txn: None,
        iat: ts as i64,
        event_type: kind.uri(),
        known: true,
        subject: sub.clone(),
        subject_key: sub.canonical_key(),
        event_timestamp: kind.has_common_claims().then_some(ts),
        authoritative: true,
        claims,
        set: String::new(),
    }
}

fn ana() -> Subject {
    subject(json!({"format": "email", "email": "ana@corp.example.test"}))
}

/// Every event type, its payload, and the action it must produce (None: no state change).
fn table() -> Vec<(EventKind, Value, Option<&'static str>)> {
    use EventKind as K;
    vec![
        (K::SessionRevoked, json!({}), Some("revoke_tokens_before")),
        (
            K::TokenClaimsChange,
            json!({"claims": {"role": "ro"}}),
            Some("set_claims"),
        ),
        (
            K::CredentialChange,
            json!({"credential_type": "password", "change_type": "update"}),
            Some("revoke_tokens_before"),
        ),
        (
            K::CredentialChange,
            json!({"credential_type": "fido2-platform", "change_type": "create"}),
            None,
        ),
        (
            K::CredentialChange,
            json!({"credential_type": "x509", "change_type": "revoke"}),
            Some("revoke_tokens_before"),
        ),
        (
            K::CredentialChange,
            json!({"credential_type": "pin", "change_type": "delete"}),
            Some("revoke_tokens_before"),
        ),
        (
            K::AssuranceLevelChange,
            json!({"namespace": "NIST-AAL", "current_level": "nist-aal2", "change_direction": "decrease"}),
            Some("set_assurance"),
        ),
        (
            K::DeviceComplianceChange,
            json!({"previous_status": "compliant", "current_status": "not-compliant"}),
            Some("restrict_device"),
        ),
        (
            K::DeviceComplianceChange,
            json!({"previous_status": "not-compliant", "current_status": "compliant"}),
            Some("unrestrict_device"),
        ),
        (K::SessionEstablished, json!({}), None),
        (K::SessionPresented, json!({}), None),
        (
            K::RiskLevelChange,
            json!({"principal": "USER", "current_level": "HIGH"}),
            Some("set_risk"),
        ),
        (
            K::AccountCredentialChangeRequired,
            json!({}),
            Some("revoke_tokens_before"),
        ),
        (K::AccountPurged, json!({}), Some("deny")),
        (
            K::AccountDisabled,
            json!({"reason": "hijacking"}),
            Some("deny"),
        ),
        (K::AccountEnabled, json!({}), Some("restore")),
        (
            K::IdentifierChanged,
            json!({"new-value": "ana.new@corp.example.test"}),
            Some("identifier_changed"),
        ),
        (K::IdentifierRecycled, json!({}), Some("identifier_changed")),
        (
            K::CredentialCompromise,
            json!({"credential_type": "password"}),
            Some("revoke_tokens_before"),
        ),
        (K::OptIn, json!({}), None),
        (K::OptOutInitiated, json!({}), None),
        (K::OptOutCancelled, json!({}), None),
        (K::OptOutEffective, json!({}), None),
        (K::RecoveryActivated, json!({}), None),
        (K::RecoveryInformationChanged, json!({}), None),
        (K::SessionsRevoked, json!({}), Some("revoke_tokens_before")),
        (K::Verification, json!({"state": "x"}), None),
        (K::StreamUpdated, json!({"status": "paused"}), None),
    ]
}

#[test]
fn every_event_type_has_its_rule_and_delta() {
    let kinds: std::collections::BTreeSet<EventKind> = table().iter().map(|(k, _, _)| *k).collect();
    assert_eq!(
        kinds.len(),
        EventKind::ALL.len(),
        "the table covers every event type"
    );
    for (kind, payload, expected) in table() {
        let mut state = State::default();
        let r = record(1, kind, payload.clone(), &ana(), 1000);
        let delta = state.apply_record(&r);
        assert_eq!(
            delta.as_ref().map(|d| d.action.label()),
            expected,
            "{kind}: {payload}"
        );
        if let Some(d) = delta {
            assert_eq!((d.position, d.effective_at), (1, 1000));
            assert_eq!(d.cause.event_type, kind.uri());
            assert_eq!(d.cause.jti, "j1");
            assert_eq!(d.subject_key, ana().canonical_key());
            // The same event again changes nothing and yields no delta.
            assert!(state.apply_record(&r).is_none(), "{kind} applied twice");
        } else {
            assert!(
                state.subjects.is_empty(),
                "{kind} changed state without a delta"
            );
        }
    }
}

#[test]
fn a_stale_event_never_undoes_a_newer_one() {
    use EventKind as K;
    let u = ana();
    // account-disabled at t=200 arrives first; account-enabled from t=100 arrives later.
    let mut s = State::default();
    assert!(s
        .apply_record(&record(1, K::AccountDisabled, json!({}), &u, 200))
        .is_some());
    assert!(
        s.apply_record(&record(2, K::AccountEnabled, json!({}), &u, 100))
            .is_none(),
        "stale enable ignored"
    );
    let q = Query {
        parts: vec![("user".into(), u.clone())],
        iat: Some(300),
    };
    assert_eq!(s.decide(&q).reason, "account_disabled");
    // A newer enable restores.
    assert!(s
        .apply_record(&record(3, K::AccountEnabled, json!({}), &u, 250))
        .is_some());
    assert!(s.decide(&q).allow);
    // An older session revocation does not move the horizon back.
    assert!(s
        .apply_record(&record(4, K::SessionRevoked, json!({}), &u, 500))
        .is_some());
    assert!(s
        .apply_record(&record(5, K::SessionRevoked, json!({}), &u, 400))
        .is_none());
    assert!(
        !s.decide(&Query {
            iat: Some(450),
            ..q.clone()
        })
        .allow
    );
    assert!(
        s.decide(&Query {
            iat: Some(501),
            ..q.clone()
        })
        .allow
    );
    // Device compliance: the newest status wins regardless of arrival order.
    let d = subject(json!({"format": "opaque", "id": "dev-1"}));
    let restrict = record(
        6,
        K::DeviceComplianceChange,
        json!({"previous_status": "compliant", "current_status": "not-compliant"}),
        &d,
        900,
    );
    let stale_ok = record(
        7,
        K::DeviceComplianceChange,
        json!({"previous_status": "not-compliant", "current_status": "compliant"}),
        &d,
        800,
    );
    s.apply_record(&restrict);
    assert!(s.apply_record(&stale_ok).is_none());
}

#[test]
fn decisions_follow_revocations_devices_and_accounts() {
    use EventKind as K;
    let u = ana();
    let bob = subject(json!({"format": "email", "email": "bob@corp.example.test"}));
    let s1 = subject(json!({"format": "opaque", "id": "sess-1"}));
    let s2 = subject(json!({"format": "opaque", "id": "sess-2"}));
    let d1 = subject(json!({"format": "opaque", "id": "dev-1"}));
    let d2 = subject(json!({"format": "opaque", "id": "dev-2"}));
    let ana_s1 = subject(json!({"format": "complex", "user": u.as_map(), "session": s1.as_map()}));
    let mut st = State::default();
    st.apply_record(&record(1, K::SessionRevoked, json!({}), &ana_s1, 1000));
    st.apply_record(&record(
        2,
        K::DeviceComplianceChange,
        json!({"previous_status": "compliant", "current_status": "not-compliant"}),
        &d1,
        1000,
    ));
    let q = |parts: Vec<(&str, &Subject)>, iat| Query {
        parts: parts
            .into_iter()
            .map(|(r, s)| (r.to_owned(), s.clone()))
            .collect(),
        iat: Some(iat),
    };
    // A token for Ana's revoked session issued before the revocation is denied...
    assert_eq!(
        st.decide(&q(vec![("user", &u), ("session", &s1)], 999))
            .reason,
        "revoked"
    );
    // ...one issued after is allowed, and her other session is untouched.
    assert!(
        st.decide(&q(vec![("user", &u), ("session", &s1)], 1001))
            .allow
    );
    assert!(
        st.decide(&q(vec![("user", &u), ("session", &s2)], 999))
            .allow
    );
    // Device non-compliance denies that device only.
    assert_eq!(
        st.decide(&q(vec![("user", &u), ("device", &d1)], 2000))
            .reason,
        "device_not_compliant"
    );
    assert!(
        st.decide(&q(vec![("user", &u), ("device", &d2)], 2000))
            .allow
    );
    // Account disabled denies everything for that user until enabled; Bob is unaffected.
    st.apply_record(&record(3, K::AccountDisabled, json!({}), &u, 1500));
    assert_eq!(
        st.decide(&q(vec![("user", &u), ("session", &s2)], 3000))
            .reason,
        "account_disabled"
    );
    assert!(st.decide(&q(vec![("user", &bob)], 3000)).allow);
    st.apply_record(&record(4, K::AccountEnabled, json!({}), &u, 1600));
    assert!(
        st.decide(&q(vec![("user", &u), ("session", &s2)], 3000))
            .allow
    );
    assert_eq!(st.decide(&q(vec![("user", &u)], 3000)).position, 4);
}

fn arb_records() -> impl Strategy<Value = Vec<Record>> {
    use EventKind as K;
    let kinds = vec![
        (K::SessionRevoked, json!({})),
        (K::AccountDisabled, json!({})),
        (K::AccountEnabled, json!({})),
        (K::AccountPurged, json!({})),
        (
            K::CredentialChange,
            json!({"credential_type": "password", "change_type": "update"}),
        ),
        (
            K::DeviceComplianceChange,
            json!({"previous_status": "compliant", "current_status": "not-compliant"}),
        ),
        (
            K::DeviceComplianceChange,
            json!({"previous_status": "not-compliant", "current_status": "compliant"}),
        ),
        (
            K::RiskLevelChange,
            json!({"principal": "USER", "current_level": "LOW"}),
        ),
        (
            K::RiskLevelChange,
            json!({"principal": "USER", "current_level": "HIGH"}),
        ),
        (K::IdentifierRecycled, json!({})),
        (K::SessionEstablished, json!({})),
    ];
    let subjects = [
        ana(),
        subject(json!({"format": "email", "email": "bob@corp.example.test"})),
        subject(json!({"format": "opaque", "id": "dev-1"})),
        subject(
            json!({"format": "complex", "user": {"format": "email", "email": "ana@corp.example.test"},
                       "session": {"format": "opaque", "id": "s"}}),
        ),
    ];
    prop::collection::vec((0..kinds.len(), 0..subjects.len(), 0u64..20), 0..60).prop_map(
        move |picks| {
            picks
                .into_iter()
                .enumerate()
                .map(|(i, (k, s, t))| {
                    record(
                        i as u64 + 1,
                        kinds[k].0,
                        kinds[k].1.clone(),
                        &subjects[s],
                        1000 + t,
                    )
                })
                .collect()
        },
    )
}

/// Each subject's facets without their stamps.
fn view(state: &State) -> std::collections::BTreeMap<String, Value> {
    state
        .subjects
        .iter()
        .map(|(k, s)| {
            let mut v = serde_json::to_value(&**s).expect("json");
            for facet in v.as_object_mut().expect("object").values_mut() {
                if let Some(pair) = facet.as_array().filter(|a| a.len() == 2).cloned() {
                    *facet = pair[0].clone();
                }
            }
            (k.clone(), v)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn applying_a_prefix_twice_equals_applying_it_once(records in arb_records(), cut in 0usize..60) {
        let cut = cut.min(records.len());
        let mut once = State::default();
        for r in &records[..cut] { once.apply_record(r); }
        let mut twice = once.clone();
        for r in &records[..cut] { prop_assert!(twice.apply_record(r).is_none()); }
        prop_assert_eq!(&once.subjects, &twice.subjects);
    }

    #[test]
    fn snapshot_plus_later_deltas_equals_the_rebuilt_state(records in arb_records(), cut in 0usize..60) {
        let cut = cut.min(records.len());
        let mut full = State::default();
        let mut deltas = Vec::new();
        for r in &records {
            if let Some(d) = full.apply_record(r) { deltas.push(d); }
        }
        let mut snapshot = State::default();
        for r in &records[..cut] { snapshot.apply_record(r); }
        let after = snapshot.position;
        for d in deltas.iter().filter(|d| d.position > after) {
            snapshot.apply_delta(d);
        }
        // Equal as access state: a newer event restating a value moves only its stamp, which
        // (being no change) travels in no delta.
        prop_assert_eq!(view(&snapshot), view(&full));
    }
}

#[tokio::test]
async fn the_http_apis_serve_deltas_snapshots_and_decisions_and_survive_restart() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.gateway("sidecar").await;
    let mut c = claims(SESSION_REVOKED, json!({"event_timestamp": 1000}));
    c["sub_id"] = json!({"format": "iss_sub", "iss": ISS, "sub": "u-1"});
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_accepted();
    // A session-established event changes nothing: no delta for it.
    let mut c = claims(
        "https://schemas.openid.net/secevent/caep/event-type/session-established",
        json!({}),
    );
    c["sub_id"] = json!({"format": "iss_sub", "iss": ISS, "sub": "u-1"});
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_accepted();
    let mut c = claims(
        "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
        json!({"event_timestamp": 1100}),
    );
    c["sub_id"] = json!({"format": "email", "email": "bob@corp.example.test"});
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_accepted();

    // The fold runs behind the log; wait (bounded) for position 3.
    let mut page = Value::Null;
    for _ in 0..200 {
        page = hub
            .call("GET", "/revocations?since=0", &token, None)
            .await
            .json();
        if page["position"] == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(page["position"], 3);
    let deltas = page["deltas"].as_array().expect("deltas");
    assert_eq!(deltas.len(), 2);
    assert_eq!(deltas[0]["action"], "revoke_tokens_before");
    assert_eq!(deltas[0]["before"], 1000);
    assert_eq!(deltas[0]["position"], 1);
    assert_eq!(deltas[0]["cause"]["event_type"], SESSION_REVOKED);
    assert_eq!(deltas[1]["action"], "deny");
    assert_eq!(page["next"], 3);
    let page = hub
        .call("GET", "/revocations?since=1&limit=1", &token, None)
        .await
        .json();
    assert_eq!(page["deltas"][0]["position"], 3);

    let snapshot = hub
        .call("GET", "/revocations/snapshot", &token, None)
        .await
        .json();
    assert_eq!(snapshot["position"], 3);
    assert_eq!(snapshot["subjects"].as_array().expect("subjects").len(), 2);

    let check = |body: Value| {
        let (hub, token) = (&hub, &token);
        async move {
            hub.call("POST", "/revocations/check", token, Some(body))
                .await
                .json()
        }
    };
    let d = check(json!({"iss": ISS, "sub": "u-1", "iat": 999})).await;
    assert_eq!(
        (
            d["allow"].clone(),
            d["reason"].clone(),
            d["position"].clone()
        ),
        (json!(false), json!("revoked"), json!(3))
    );
    assert_eq!(
        check(json!({"iss": ISS, "sub": "u-1", "iat": 1001})).await["allow"],
        true
    );
    let d = check(json!({"subjects": {"user": {"format": "email", "email": "BOB@corp.example.test"}}, "iat": 5000})).await;
    assert_eq!(d["reason"], "account_disabled");
    let r = hub
        .call(
            "POST",
            "/revocations/check",
            &token,
            Some(json!({"iat": 1})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        hub.call(
            "POST",
            "/revocations/check",
            "",
            Some(json!({"iss": ISS, "sub": "u"}))
        )
        .await
        .status,
        401
    );
    assert_eq!(
        hub.call("GET", "/revocations", "wrong", None).await.status,
        401
    );

    // Restart: the state comes back as it was.
    let before = hub
        .call("GET", "/revocations/snapshot", &token, None)
        .await
        .json();
    let hub = hub.restart().await;
    let after = hub
        .call("GET", "/revocations/snapshot", &token, None)
        .await
        .json();
    let norm = |v: &Value| {
        let mut s: Vec<String> = v["subjects"]
            .as_array()
            .expect("a")
            .iter()
            .map(|x| x.to_string())
            .collect();
        s.sort();
        (v["position"].clone(), s)
    };
    assert_eq!(norm(&before), norm(&after));
    assert!(hub
        .metrics()
        .await
        .contains("ssf_hub_revocation_deltas_total"));
    hub.stop().await;
}

#[tokio::test]
async fn the_envoy_ext_authz_endpoint_allows_and_denies_as_envoy_expects() {
    use base64::Engine as _;
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.gateway("envoy").await;
    let mut c = claims(SESSION_REVOKED, json!({"event_timestamp": 1000}));
    c["sub_id"] = json!({"format": "complex", "user": {"format": "iss_sub", "iss": ISS, "sub": "u-7"},
                         "session": {"format": "opaque", "id": "s-1"}});
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_accepted();
    for _ in 0..200 {
        let folded: Value = hub
            .client
            .get(format!("{}/revocations?since=0", hub.base))
            .bearer_auth(&token)
            .send()
            .await
            .expect("deltas")
            .json()
            .await
            .expect("json");
        if folded["position"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // What Envoy's jwt_authn filter forwards: the verified token's claims, base64url JSON.
    let payload =
        |claims: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    let ask = |claims: Value| {
        let (hub, token) = (&hub, &token);
        async move {
            hub.client
                .get(format!("{}/revocations/ext-authz/orders/42", hub.base))
                .header("x-ssf-hub-token", token)
                .header("authorization", "Bearer end-user-token-untouched")
                .header("x-jwt-payload", payload(claims))
                .send()
                .await
                .expect("ext_authz")
        }
    };
    let r = ask(json!({"iss": ISS, "sub": "u-7", "sid": "s-1", "iat": 999})).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-ssf-hub-decision"], "revoked");
    let r = ask(json!({"iss": ISS, "sub": "u-7", "sid": "s-2", "iat": 999})).await;
    assert_eq!(r.status(), 200, "another session of the same user is fine");
    let r = ask(json!({"iss": ISS, "sub": "u-7", "sid": "s-1", "iat": 1001})).await;
    assert_eq!(
        r.status(),
        200,
        "a token issued after the revocation is fine"
    );
    let r = hub
        .client
        .get(format!("{}/revocations/ext-authz", hub.base))
        .header("x-jwt-payload", payload(json!({"iss": ISS, "sub": "u-7"})))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401, "the hub credential is required");
    hub.stop().await;
}
