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

const ACCOUNT_ENABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-enabled";
const DEVICE_COMPLIANCE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/device-compliance-change";
const SCANNER_ISS: &str = "https://scanner.example.test";
/// 99,999,999,999 seconds: a day in the year 5138.
const YEAR_5138: u64 = 99_999_999_999;

/// A hub with two sources: `idp` (issuer [`ISS`], owning its own `iss_sub` users by default and,
/// as configured, the `corp.example.test` email domain) and `scanner` (its own issuer, owning
/// nothing of the IdP's).
async fn two_sources(idp: &SetSigner, scanner: &SetSigner) -> TestHub {
    let (idp_jwks, scanner_jwks) = (idp.public_jwk(), scanner.public_jwk());
    TestHub::start(move |dir, c| {
        let write = |name: &str, jwk: &Value| {
            let path = dir.join(name);
            std::fs::write(&path, json!({"keys": [jwk]}).to_string()).expect("jwks");
            path
        };
        let mut a = source("idp");
        a.jwks_file = Some(write("idp.jwks.json", &idp_jwks));
        a.owns.email_domains = vec!["corp.example.test".into()];
        let mut b = source("scanner");
        b.issuer = SCANNER_ISS.into();
        b.jwks_file = Some(write("scanner.jwks.json", &scanner_jwks));
        c.sources = vec![a, b];
    })
    .await
}

fn from_scanner(mut c: Map<String, Value>) -> Map<String, Value> {
    c.insert("iss".into(), json!(SCANNER_ISS));
    c
}

/// Finding 7: the attack, then the ownership rules. A scanner may deny anyone, but it
/// cannot restore another issuer's user, and a timestamp from the future is refused outright.
#[tokio::test]
async fn a_source_cannot_restore_or_lock_another_issuers_subjects() {
    let (idp, scanner) = (es256(), es256());
    let hub = two_sources(&idp, &scanner).await;
    let now = ssf_hub::unix_now();
    let user = json!({"format": "iss_sub", "iss": ISS, "sub": "u-1"});
    let ask = |subject: Value| {
        let hub = &hub;
        async move { check(hub, json!({"user": subject}), now + 10).await["reason"].clone() }
    };

    // The IdP disables its user.
    let disable = about(
        ACCOUNT_DISABLED,
        json!({"event_timestamp": now - 100}),
        user.clone(),
    );
    push_ok(&hub, "idp", &idp, &disable).await;
    // The attack: the scanner re-enables it with a year-5138 timestamp. Refused, not stored.
    for (event, payload) in [
        (ACCOUNT_ENABLED, json!({"event_timestamp": YEAR_5138})),
        (ACCOUNT_DISABLED, json!({"event_timestamp": YEAR_5138})),
        (SESSION_REVOKED, json!({"event_timestamp": YEAR_5138})),
    ] {
        let c = from_scanner(about(event, payload, user.clone()));
        let r = hub.push("scanner", scanner.sign(&c).expect("sign")).await;
        r.assert_set_error("invalid_request");
        assert!(r.body.contains("event_timestamp"), "{}", r.body);
    }
    // The IdP's own clock gets the same bound.
    let c = about(
        ACCOUNT_ENABLED,
        json!({"event_timestamp": now + 3600}),
        user.clone(),
    );
    hub.push("idp", idp.sign(&c).expect("sign"))
        .await
        .assert_set_error("invalid_request");
    assert_eq!(hub.events().await.len(), 1, "refused SETs are not stored");

    // A current account-enabled from the scanner is verified and stored, but does not re-enable.
    let c = from_scanner(about(
        ACCOUNT_ENABLED,
        json!({"event_timestamp": now - 50}),
        user.clone(),
    ));
    push_ok(&hub, "scanner", &scanner, &c).await;
    folded(&hub, 2).await;
    assert_eq!(ask(user.clone()).await, "account_disabled");
    let events = hub.events().await;
    assert_eq!(events.len(), 2, "the non-owner's restore is in the log");
    assert_eq!(events[0]["authoritative"], true);
    assert_eq!(events[1]["authoritative"], false);

    // A later real event from the owner still wins.
    let c = about(
        ACCOUNT_ENABLED,
        json!({"event_timestamp": now - 40}),
        user.clone(),
    );
    push_ok(&hub, "idp", &idp, &c).await;
    folded(&hub, 3).await;
    assert_eq!(ask(user.clone()).await, "ok");

    // A deny from the non-owner still takes effect...
    let c = from_scanner(about(
        ACCOUNT_DISABLED,
        json!({"event_timestamp": now - 30}),
        user.clone(),
    ));
    push_ok(&hub, "scanner", &scanner, &c).await;
    folded(&hub, 4).await;
    assert_eq!(ask(user.clone()).await, "account_disabled");
    // ...and only the owner lifts it.
    let c = from_scanner(about(
        ACCOUNT_ENABLED,
        json!({"event_timestamp": now - 20}),
        user.clone(),
    ));
    push_ok(&hub, "scanner", &scanner, &c).await;
    folded(&hub, 5).await;
    assert_eq!(ask(user.clone()).await, "account_disabled");
    let c = about(
        ACCOUNT_ENABLED,
        json!({"event_timestamp": now - 10}),
        user.clone(),
    );
    push_ok(&hub, "idp", &idp, &c).await;
    folded(&hub, 6).await;
    assert_eq!(ask(user.clone()).await, "ok");

    // Configured ownership: the IdP owns its email domain, the scanner does not; a device
    // (opaque, owned by nobody here) can be restricted by anyone and lifted by no one.
    let ana = json!({"format": "email", "email": "ana@corp.example.test"});
    let device = json!({"format": "opaque", "id": "laptop-7"});
    let not_ok = json!({"previous_status": "compliant", "current_status": "not-compliant",
                        "event_timestamp": now - 5});
    let ok = json!({"previous_status": "not-compliant", "current_status": "compliant",
                    "event_timestamp": now - 1});
    let pushes = [
        (
            "scanner",
            about(
                ACCOUNT_DISABLED,
                json!({"event_timestamp": now - 5}),
                ana.clone(),
            ),
        ),
        (
            "scanner",
            about(
                ACCOUNT_ENABLED,
                json!({"event_timestamp": now - 3}),
                ana.clone(),
            ),
        ),
        ("scanner", about(DEVICE_COMPLIANCE, not_ok, device.clone())),
        ("idp", about(DEVICE_COMPLIANCE, ok, device.clone())),
    ];
    for (source, c) in pushes {
        let (key, c) = match source {
            "idp" => (&idp, c),
            _ => (&scanner, from_scanner(c)),
        };
        push_ok(&hub, source, key, &c).await;
    }
    folded(&hub, 10).await;
    assert_eq!(ask(ana.clone()).await, "account_disabled");
    let r = check(&hub, json!({"device": device}), now + 10).await;
    assert_eq!(r["reason"], "device_not_compliant", "{r}");
    let c = about(
        ACCOUNT_ENABLED,
        json!({"event_timestamp": now}),
        ana.clone(),
    );
    push_ok(&hub, "idp", &idp, &c).await;
    folded(&hub, 11).await;
    assert_eq!(ask(ana).await, "ok");
    hub.stop().await;
}

/// Finding 8: an RFC 9493 `aliases` subject names one entity several ways. A decision about any
/// alias must see its state (check and ext_authz), and so must a complex subject's aliases member.
#[tokio::test]
async fn every_alias_of_a_disabled_or_revoked_subject_is_denied() {
    use base64::Engine as _;
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let now = ssf_hub::unix_now();
    let email = json!({"format": "email", "email": "ana@corp.example.test"});
    let iss_sub = json!({"format": "iss_sub", "iss": ISS, "sub": "u-9"});
    let aliases = json!({"format": "aliases", "identifiers": [email, iss_sub]});
    push_ok(
        &hub,
        "idp",
        &key,
        &about(ACCOUNT_DISABLED, json!({}), aliases.clone()),
    )
    .await;
    // A session of Bob, named by a complex subject whose user is an aliases identifier.
    let bob_mail = json!({"format": "email", "email": "bob@corp.example.test"});
    let bob_sub = json!({"format": "iss_sub", "iss": ISS, "sub": "u-10"});
    let session = json!({"format": "complex",
        "user": {"format": "aliases", "identifiers": [bob_mail, bob_sub]},
        "session": {"format": "opaque", "id": "s-1"}});
    let revoke = about(
        SESSION_REVOKED,
        json!({"event_timestamp": now - 100}),
        session,
    );
    push_ok(&hub, "idp", &key, &revoke).await;
    folded(&hub, 2).await;

    for subject in [&email, &iss_sub, &aliases] {
        let r = check(&hub, json!({"user": subject}), now).await;
        assert_eq!(r["reason"], "account_disabled", "{subject}: {r}");
    }
    let r = hub
        .call(
            "POST",
            "/revocations/check",
            ADMIN,
            Some(json!({"iss": ISS, "sub": "u-9", "iat": now})),
        )
        .await
        .json();
    assert_eq!(r["reason"], "account_disabled", "{r}");
    let stranger = json!({"format": "email", "email": "eve@corp.example.test"});
    assert_eq!(
        check(&hub, json!({"user": stranger}), now).await["allow"],
        true
    );

    // Bob's revoked session, asked about through either alias; his other session is fine.
    let sid = |id: &str| json!({"format": "opaque", "id": id});
    for user in [&bob_mail, &bob_sub] {
        let r = check(
            &hub,
            json!({"user": user, "session": sid("s-1")}),
            now - 200,
        )
        .await;
        assert_eq!(r["reason"], "revoked", "{user}: {r}");
        let r = check(
            &hub,
            json!({"user": user, "session": sid("s-2")}),
            now - 200,
        )
        .await;
        assert_eq!(r["allow"], true, "{user}: {r}");
    }

    // The Envoy ext_authz path (user from `iss`+`sub`) denies the other alias too.
    let payload =
        |claims: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    for (claims, status) in [
        (json!({"iss": ISS, "sub": "u-9", "iat": now}), 403),
        (
            json!({"iss": ISS, "sub": "u-10", "sid": "s-1", "iat": now - 200}),
            403,
        ),
        (
            json!({"iss": ISS, "sub": "u-10", "sid": "s-2", "iat": now - 200}),
            200,
        ),
    ] {
        let r = hub
            .client
            .get(format!("{}/revocations/ext-authz/x", hub.base))
            .header("x-ssf-hub-token", ADMIN)
            .header("x-jwt-payload", payload(claims.clone()))
            .send()
            .await
            .expect("ext_authz");
        assert_eq!(r.status(), status, "{claims}");
    }
    hub.stop().await;
}

/// Finding 8: a stream's subject filter matches an event when any alias matches, whichever side
/// carries the aliases.
#[tokio::test]
async fn stream_subject_filters_match_on_any_alias() {
    let key = es256();
    let hub = TestHub::start(|dir, c| {
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&key]));
        c.sources = vec![s];
        c.delivery.default_subjects = ssf_hub::streams::DefaultSubjects::None;
    })
    .await;
    let (_, token) = hub.receiver("gateway").await;
    let r = hub
        .call(
            "POST",
            "/ssf/streams",
            &token,
            Some(json!({"events_requested": [ACCOUNT_DISABLED]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let stream = r.json();
    let id = stream["stream_id"].as_str().expect("id").to_owned();
    let mail = |u: &str| json!({"format": "email", "email": format!("{u}@corp.example.test")});
    let opaque = |u: &str| json!({"format": "opaque", "id": u});
    // The stream follows Ana (by email) and Bob (by an aliases subject).
    for subject in [
        mail("ana"),
        json!({"format": "aliases", "identifiers": [mail("bob"), opaque("bob-id")]}),
    ] {
        let r = hub
            .call(
                "POST",
                "/ssf/subjects:add",
                &token,
                Some(json!({"stream_id": id, "subject": subject})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut jtis = Vec::new();
    for sub_id in [
        // Nobody the stream follows: not delivered.
        mail("eve"),
        // Ana, named by an aliases subject.
        json!({"format": "aliases", "identifiers": [opaque("ana-id"), mail("ANA")]}),
        // Bob, by one of his aliases.
        opaque("bob-id"),
    ] {
        let c = about(ACCOUNT_DISABLED, json!({}), sub_id);
        jtis.push(c["jti"].as_str().expect("jti").to_owned());
        push_ok(&hub, "idp", &key, &c).await;
    }
    // The hub signs its own SET, whose `jti` ends with the record's log position.
    let events = hub.events().await;
    let jtis: Vec<String> = jtis
        .iter()
        .map(|jti| {
            let record = events.iter().find(|e| e["jti"] == *jti).expect("stored");
            format!(".{}", record["position"])
        })
        .collect();
    let path = stream["delivery"]["endpoint_url"]
        .as_str()
        .and_then(|u| u.strip_prefix(&hub.config.issuer))
        .expect("poll path")
        .to_owned();
    let mut got = std::collections::BTreeSet::new();
    let got_one = |got: &std::collections::BTreeSet<String>, suffix: &str| {
        got.iter().any(|jti| jti.ends_with(suffix))
    };
    for _ in 0..100 {
        let r = hub
            .call(
                "POST",
                &path,
                &token,
                Some(json!({"returnImmediately": true})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        got.extend(r.json()["sets"].as_object().expect("sets").keys().cloned());
        if got_one(&got, &jtis[1]) && got_one(&got, &jtis[2]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(got_one(&got, &jtis[1]), "Ana's aliases event is delivered");
    assert!(got_one(&got, &jtis[2]), "Bob's alias event is delivered");
    assert!(!got_one(&got, &jtis[0]), "Eve's event is not");
    hub.stop().await;
}

const ASSURANCE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/assurance-level-change";
const RISK: &str = "https://schemas.openid.net/secevent/caep/event-type/risk-level-change";

/// Finding 18: what real transmitters send that the hub accepts and normalizes, and where it
/// stays strict. Each row: source, `events`, `sub_id`, then either the stored record's value at
/// a JSON pointer or the RFC 8935 error code.
#[tokio::test]
async fn sloppy_but_harmless_spellings_are_accepted_and_normalized() {
    let key = es256();
    let hub = TestHub::start(|dir, c| {
        let jwks = write_jwks(dir, "idp.jwks.json", &[&key]);
        let mut idp = source("idp");
        idp.jwks_file = Some(jwks.clone());
        let mut legacy = source("legacy");
        legacy.jwks_file = Some(jwks);
        legacy.legacy = true;
        c.sources = vec![idp, legacy];
    })
    .await;
    let ana = json!({"format": "email", "email": "ana@corp.example.test"});
    let phone = |n: &str| json!({"format": "phone_number", "phone_number": n});
    let cred = |change: &str, ty: &str| json!({CREDENTIAL_CHANGE: {"credential_type": ty, "change_type": change}});
    let alc = json!({ASSURANCE: {"current_level": "nist-aal1", "previous_level": "nist-aal2",
                                 "change_direction": "decrease"}});
    type Expect = Result<(&'static str, Value), &'static str>;
    let rows: Vec<(&str, &str, Value, Value, Expect)> = vec![
        (
            "phone with spaces",
            "idp",
            json!({SESSION_REVOKED: {}}),
            phone("+1 206 555 0123"),
            Ok(("/subject/phone_number", json!("+12065550123"))),
        ),
        (
            "phone with parentheses and hyphen",
            "idp",
            json!({SESSION_REVOKED: {}}),
            phone("+1 (206) 555-0123"),
            Ok(("/subject/phone_number", json!("+12065550123"))),
        ),
        (
            "phone with dots",
            "idp",
            json!({SESSION_REVOKED: {}}),
            phone("+44.20.7946.0958"),
            Ok(("/subject/phone_number", json!("+442079460958"))),
        ),
        (
            "phone without country code",
            "idp",
            json!({SESSION_REVOKED: {}}),
            phone("206 555 0123"),
            Err("invalid_request"),
        ),
        (
            "phone with letters",
            "idp",
            json!({SESSION_REVOKED: {}}),
            phone("+1 206 CALL NOW"),
            Err("invalid_request"),
        ),
        (
            "known event with an extension URI",
            "idp",
            json!({"https://vendor.example.test/event-type/session-detail": {"risk": 7},
                   SESSION_REVOKED: {"event_timestamp": 1_767_225_600}}),
            ana.clone(),
            Ok(("/event_type", json!(SESSION_REVOKED))),
        ),
        (
            "two known events",
            "idp",
            json!({SESSION_REVOKED: {}, ACCOUNT_DISABLED: {}}),
            ana.clone(),
            Err("invalid_request"),
        ),
        (
            "change_type in capitals",
            "idp",
            cred("UPDATE", "password"),
            ana.clone(),
            Ok(("/claims/change_type", json!("update"))),
        ),
        (
            "credential_type capitalized",
            "idp",
            cred("update", "Password"),
            ana.clone(),
            Ok(("/claims/credential_type", json!("password"))),
        ),
        (
            "an agreed credential_type is kept as sent",
            "idp",
            cred("create", "Smart-Card"),
            ana.clone(),
            Ok(("/claims/credential_type", json!("Smart-Card"))),
        ),
        (
            "change_type outside the list",
            "idp",
            cred("upgrade", "password"),
            ana.clone(),
            Err("invalid_request"),
        ),
        (
            "current_status capitalized",
            "idp",
            json!({"https://schemas.openid.net/secevent/caep/event-type/device-compliance-change":
                {"previous_status": "Compliant", "current_status": "NOT-COMPLIANT"}}),
            ana.clone(),
            Ok(("/claims/current_status", json!("not-compliant"))),
        ),
        (
            "initiating_entity capitalized",
            "idp",
            json!({SESSION_REVOKED: {"initiating_entity": "Admin"}}),
            ana.clone(),
            Ok(("/claims/initiating_entity", json!("admin"))),
        ),
        (
            "risk level in lower case",
            "idp",
            json!({RISK: {"principal": "user", "current_level": "high"}}),
            ana.clone(),
            Ok(("/claims/current_level", json!("HIGH"))),
        ),
        (
            "draft-02 assurance-level-change from a legacy source",
            "legacy",
            alc.clone(),
            ana.clone(),
            Ok(("/claims/namespace", json!("NIST-AAL"))),
        ),
        (
            "draft-02 assurance-level-change from a 1.0 source",
            "idp",
            alc,
            ana.clone(),
            Err("invalid_request"),
        ),
    ];
    let mut stored = 0;
    for (name, source, events, sub_id, expect) in rows {
        let mut c = session_revoked();
        c.insert("events".into(), events);
        c.insert("sub_id".into(), sub_id);
        let r = hub.push(source, key.sign(&c).expect("sign")).await;
        match expect {
            Ok((pointer, want)) => {
                assert_eq!(r.status, 202, "{name}: {}", r.body);
                stored += 1;
                let events = hub.events().await;
                assert_eq!(events.len(), stored, "{name}");
                let record = events.last().expect("record");
                assert_eq!(record.pointer(pointer), Some(&want), "{name}: {record}");
                assert_eq!(record["jti"], c["jti"], "{name}");
            }
            Err(code) => {
                assert_eq!(r.status, 400, "{name}: {}", r.body);
                r.assert_set_error(code);
            }
        }
    }
    // The extension member is kept in the raw SET for audit.
    let events = hub.events().await;
    let raw = events[3]["set"].as_str().expect("set");
    assert!(decode_claims(raw)["events"]
        .as_object()
        .is_some_and(|e| e.len() == 2));
    hub.stop().await;
}
