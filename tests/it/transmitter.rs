//! The hub as an SSF transmitter: discovery, the stream management API with every status code of
//! the digest §8.3 table, cross-receiver isolation, and RFC 8936 poll delivery, with outbound
//! SETs verified by jwcrypto against the hub's published JWKS.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::support::*;

const RISC_DISABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";

async fn hub_with_source() -> (TestHub, ssf_hub::sign::SetSigner) {
    let key = es256();
    (TestHub::with_signer(&key).await, key)
}

async fn create_poll_stream(hub: &TestHub, token: &str, events: &[&str]) -> Value {
    let r = hub
        .call(
            "POST",
            "/ssf/streams",
            token,
            Some(json!({"events_requested": events})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

async fn poll(hub: &TestHub, token: &str, stream: &Value, body: Value) -> Value {
    let url = stream["delivery"]["endpoint_url"]
        .as_str()
        .expect("poll url");
    let path = url
        .strip_prefix(&hub.config.issuer)
        .expect("poll url below issuer");
    let r = hub.call("POST", path, token, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn sets_of(resp: &Value) -> BTreeMap<String, String> {
    resp["sets"]
        .as_object()
        .expect("sets")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("SET").to_owned()))
        .collect()
}

/// Verifies `set` with jwcrypto against the hub's published JWKS and checks the SSF SET profile
/// rules a conformance suite applies (digest §2.4). Returns the claims.
async fn verify_outbound(hub: &TestHub, set: &str, aud: &str) -> Value {
    let jwks = hub
        .client
        .get(format!("{}/jwks.json", hub.base))
        .send()
        .await
        .expect("jwks")
        .text()
        .await
        .expect("text");
    let path = hub.dir.path().join("hub.jwks.json");
    std::fs::write(&path, jwks).expect("write");
    let out = jwcrypto_verify(&path, set)
        .unwrap_or_else(|e| panic!("jwcrypto refused an outbound SET: {e}"));
    let (header, claims) = (&out["header"], &out["claims"]);
    assert_eq!(header["typ"], "secevent+jwt");
    assert!(header["kid"].is_string());
    let discovery: Value = hub
        .client
        .get(format!("{}/.well-known/ssf-configuration", hub.base))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(claims["iss"], discovery["issuer"]);
    assert_eq!(claims["aud"], aud);
    assert!(claims.get("sub").is_none() && claims.get("exp").is_none());
    assert!(claims["iat"].as_u64().expect("iat") <= ssf_hub::unix_now());
    assert!(claims["jti"].is_string() && claims["txn"].is_string());
    assert!(claims["sub_id"].is_object());
    assert_eq!(claims["events"].as_object().expect("events").len(), 1);
    claims.clone()
}

#[tokio::test]
async fn discovery_advertises_the_transmitter() {
    let (hub, _) = hub_with_source().await;
    let r = hub
        .call("GET", "/.well-known/ssf-configuration", "", None)
        .await;
    assert_eq!(r.status, 200);
    let m = r.json();
    let issuer = hub.config.issuer.clone();
    assert_eq!(m["spec_version"], "1_0");
    assert_eq!(m["issuer"], issuer);
    assert_eq!(m["jwks_uri"], format!("{issuer}/jwks.json"));
    assert_eq!(m["configuration_endpoint"], format!("{issuer}/ssf/streams"));
    assert_eq!(m["status_endpoint"], format!("{issuer}/ssf/status"));
    assert_eq!(m["verification_endpoint"], format!("{issuer}/ssf/verify"));
    assert_eq!(
        m["add_subject_endpoint"],
        format!("{issuer}/ssf/subjects:add")
    );
    assert_eq!(
        m["remove_subject_endpoint"],
        format!("{issuer}/ssf/subjects:remove")
    );
    assert_eq!(
        m["delivery_methods_supported"],
        json!(["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"])
    );
    assert_eq!(
        m["authorization_schemes"],
        json!([{"spec_urn": "urn:ietf:rfc:6749"}])
    );
    assert_eq!(m["default_subjects"], "ALL");
    let jwks = hub.call("GET", "/jwks.json", "", None).await.json();
    assert_eq!(jwks["keys"][0]["use"], "sig");
    assert!(jwks["keys"][0].get("d").is_none());
    hub.stop().await;
}

#[tokio::test]
async fn a_path_suffixed_issuer_is_discovered_rfc8615_style() {
    let hub =
        TestHub::start(|_, c| c.issuer = "https://hub.example.test/tenants/acme".into()).await;
    let m = hub
        .call(
            "GET",
            "/.well-known/ssf-configuration/tenants/acme",
            "",
            None,
        )
        .await
        .json();
    assert_eq!(m["issuer"], "https://hub.example.test/tenants/acme");
    assert_eq!(
        m["configuration_endpoint"],
        "https://hub.example.test/tenants/acme/ssf/streams"
    );
    let (_, token) = hub.receiver("gw").await;
    let r = hub
        .call("POST", "/tenants/acme/ssf/streams", &token, Some(json!({})))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["iss"], "https://hub.example.test/tenants/acme");
    hub.stop().await;
}

#[tokio::test]
async fn stream_management_answers_every_status_code() {
    let (hub, _) = hub_with_source().await;
    let (_, token) = hub.receiver("gw").await;

    // 401: no credential, or a wrong one.
    let r = hub.call("GET", "/ssf/streams", "", None).await;
    assert_eq!(r.status, 401);
    assert!(r.headers.contains_key("www-authenticate"));
    let r = hub
        .call("GET", "/ssf/streams", "ssfhub_not-a-real-token", None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );

    // Read all before any: always an array.
    let r = hub.call("GET", "/ssf/streams", &token, None).await;
    assert_eq!(
        (r.status, r.json()),
        (axum::http::StatusCode::OK, json!([]))
    );

    // Create: 201, poll assumed without delivery, unknown event types ignored.
    let r = hub
        .call("POST", "/ssf/streams", &token,
              Some(json!({"events_requested": [SESSION_REVOKED, "https://x.test/nope"], "description": "edge"})))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.headers["cache-control"], "no-store");
    let s1 = r.json();
    let id = s1["stream_id"].as_str().expect("id").to_owned();
    assert_eq!(s1["iss"], hub.config.issuer);
    assert_eq!(s1["aud"], "https://gw.example.test");
    assert_eq!(s1["delivery"]["method"], "urn:ietf:rfc:8936");
    assert_eq!(
        s1["delivery"]["endpoint_url"],
        format!("{}/ssf/poll/{id}", hub.config.issuer)
    );
    assert_eq!(s1["events_delivered"], json!([SESSION_REVOKED]));
    assert_eq!(s1["description"], "edge");
    assert!(s1["events_supported"].as_array().expect("array").len() >= 22);
    assert!(
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    );

    // A second stream for the same receiver is allowed (no 409).
    let r = hub
        .call("POST", "/ssf/streams", &token,
              Some(json!({"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "http://127.0.0.1:9/rx"}})))
        .await;
    assert_eq!(r.status, 201);
    let id2 = r.json()["stream_id"].as_str().expect("id").to_owned();
    assert_ne!(id, id2);
    let r = hub.call("GET", "/ssf/streams", &token, None).await;
    assert_eq!(r.json().as_array().expect("array").len(), 2);
    assert!(r.json()[0].get("stream_id").is_some());

    // 400s on create.
    for bad in [
        json!([1]),
        json!({"delivery": {"method": "urn:example:carrier-pigeon"}}),
        json!({"delivery": {"method": "urn:ietf:rfc:8935"}}),
        json!({"events_requested": "all"}),
    ] {
        let r = hub
            .call("POST", "/ssf/streams", &token, Some(bad.clone()))
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // Read one; unknown id 404.
    let r = hub
        .call("GET", &format!("/ssf/streams?stream_id={id}"), &token, None)
        .await;
    assert_eq!(
        (r.status, r.json()["stream_id"].clone()),
        (axum::http::StatusCode::OK, json!(id))
    );
    let r = hub
        .call("GET", "/ssf/streams?stream_id=nope", &token, None)
        .await;
    assert_eq!(r.status, 404);

    // PATCH: present fields change, absent stay.
    let r = hub
        .call(
            "PATCH",
            "/ssf/streams",
            &token,
            Some(json!({"stream_id": id, "events_requested": [SESSION_REVOKED, RISC_DISABLED]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["events_delivered"],
        json!([SESSION_REVOKED, RISC_DISABLED])
    );
    assert_eq!(r.json()["description"], "edge");
    // Transmitter-supplied fields may be echoed only unchanged.
    let r = hub
        .call(
            "PATCH",
            "/ssf/streams",
            &token,
            Some(json!({"stream_id": id, "iss": hub.config.issuer})),
        )
        .await;
    assert_eq!(r.status, 200);
    for wrong in [
        json!({"stream_id": id, "iss": "https://evil.test"}),
        json!({"stream_id": id, "aud": "https://other.test"}),
        json!({"stream_id": id, "events_delivered": [RISC_DISABLED]}),
        json!({"events_requested": []}),
        json!({"stream_id": id, "delivery": {"method": "urn:ietf:rfc:8936", "endpoint_url": "https://evil.test/poll"}}),
    ] {
        let r = hub
            .call("PATCH", "/ssf/streams", &token, Some(wrong.clone()))
            .await;
        assert_eq!(r.status, 400, "{wrong}");
    }
    let r = hub
        .call(
            "PATCH",
            "/ssf/streams",
            &token,
            Some(json!({"stream_id": "nope"})),
        )
        .await;
    assert_eq!(r.status, 404);

    // PUT: absent receiver-supplied fields are removed; without delivery it is poll, as on
    // create.
    let r = hub
        .call(
            "PUT",
            "/ssf/streams",
            &token,
            Some(json!({"stream_id": id})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["delivery"]["method"], "urn:ietf:rfc:8936");
    let r = hub
        .call(
            "PUT",
            "/ssf/streams",
            &token,
            Some(json!({"stream_id": id, "delivery": {"method": "urn:ietf:rfc:8936"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["events_requested"], json!([]));
    assert!(r.json().get("description").is_none());

    // Status: read, update, bad values, unknown stream.
    let r = hub
        .call("GET", &format!("/ssf/status?stream_id={id}"), &token, None)
        .await;
    assert_eq!(r.json(), json!({"stream_id": id, "status": "enabled"}));
    let r = hub
        .call(
            "POST",
            "/ssf/status",
            &token,
            Some(json!({"stream_id": id, "status": "paused", "reason": "maintenance"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (
            axum::http::StatusCode::OK,
            json!({"stream_id": id, "status": "paused", "reason": "maintenance"})
        )
    );
    let r = hub
        .call(
            "POST",
            "/ssf/status",
            &token,
            Some(json!({"stream_id": id, "status": "asleep"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = hub.call("GET", "/ssf/status", &token, None).await;
    assert_eq!(r.status, 400);
    let r = hub
        .call("GET", "/ssf/status?stream_id=nope", &token, None)
        .await;
    assert_eq!(r.status, 404);

    // Subjects: add 200 empty, remove 204, malformed subject 400, unknown stream 404.
    let subject = json!({"format": "email", "email": "ana@corp.example.test"});
    let r = hub
        .call(
            "POST",
            "/ssf/subjects:add",
            &token,
            Some(json!({"stream_id": id, "subject": subject, "verified": true})),
        )
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (axum::http::StatusCode::OK, "")
    );
    let r = hub
        .call(
            "POST",
            "/ssf/subjects:remove",
            &token,
            Some(json!({"stream_id": id, "subject": subject})),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = hub
        .call(
            "POST",
            "/ssf/subjects:add",
            &token,
            Some(json!({"stream_id": id, "subject": {"format": "email"}})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = hub
        .call(
            "POST",
            "/ssf/subjects:add",
            &token,
            Some(json!({"stream_id": "nope", "subject": subject})),
        )
        .await;
    assert_eq!(r.status, 404);

    // Verification: 204, then 429 inside min_verification_interval; 404 unknown.
    let r = hub
        .call(
            "POST",
            "/ssf/verify",
            &token,
            Some(json!({"stream_id": id, "state": "s1"})),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = hub
        .call(
            "POST",
            "/ssf/verify",
            &token,
            Some(json!({"stream_id": id})),
        )
        .await;
    assert_eq!(r.status, 429);
    let r = hub
        .call(
            "POST",
            "/ssf/verify",
            &token,
            Some(json!({"stream_id": "nope"})),
        )
        .await;
    assert_eq!(r.status, 404);

    // Delete: 204, then gone; missing stream_id 400.
    let r = hub.call("DELETE", "/ssf/streams", &token, None).await;
    assert_eq!(r.status, 400);
    let r = hub
        .call(
            "DELETE",
            &format!("/ssf/streams?stream_id={id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = hub
        .call("GET", &format!("/ssf/streams?stream_id={id}"), &token, None)
        .await;
    assert_eq!(r.status, 404);
    hub.stop().await;
}

#[tokio::test]
async fn receivers_see_and_touch_only_their_own_streams() {
    let (hub, _) = hub_with_source().await;
    let (_, a) = hub.receiver("alice-gw").await;
    let (b_id, b) = hub.receiver("bob-gw").await;
    let sa = create_poll_stream(&hub, &a, &[SESSION_REVOKED]).await;
    let id = sa["stream_id"].as_str().expect("id");
    let poll_path = format!("/ssf/poll/{id}");
    let attempts: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/ssf/streams?stream_id={id}"), None),
        (
            "PATCH",
            "/ssf/streams".into(),
            Some(json!({"stream_id": id, "description": "mine now"})),
        ),
        (
            "PUT",
            "/ssf/streams".into(),
            Some(json!({"stream_id": id, "delivery": {"method": "urn:ietf:rfc:8936"}})),
        ),
        ("DELETE", format!("/ssf/streams?stream_id={id}"), None),
        ("GET", format!("/ssf/status?stream_id={id}"), None),
        (
            "POST",
            "/ssf/status".into(),
            Some(json!({"stream_id": id, "status": "disabled"})),
        ),
        (
            "POST",
            "/ssf/subjects:add".into(),
            Some(json!({"stream_id": id, "subject": {"format": "opaque", "id": "x"}})),
        ),
        (
            "POST",
            "/ssf/subjects:remove".into(),
            Some(json!({"stream_id": id, "subject": {"format": "opaque", "id": "x"}})),
        ),
        ("POST", "/ssf/verify".into(), Some(json!({"stream_id": id}))),
        (
            "POST",
            poll_path.clone(),
            Some(json!({"returnImmediately": true})),
        ),
    ];
    for (method, path, body) in attempts {
        let r = hub.call(method, &path, &b, body).await;
        assert_eq!(
            r.status, 404,
            "{method} {path} by another receiver: {}",
            r.body
        );
    }
    assert_eq!(
        hub.call("GET", "/ssf/streams", &b, None).await.json(),
        json!([])
    );
    // A's stream is untouched.
    let r = hub
        .call("GET", &format!("/ssf/streams?stream_id={id}"), &a, None)
        .await;
    assert_eq!(r.json(), sa);

    // A revoked credential stops working at once.
    let r = hub
        .client
        .delete(format!("{}/admin/receivers/{b_id}", hub.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    assert_eq!(hub.call("GET", "/ssf/streams", &b, None).await.status, 401);
    // The admin API itself needs the admin token.
    let r = hub
        .client
        .post(format!("{}/admin/receivers", hub.base))
        .bearer_auth(&a)
        .json(&json!({"name": "x", "audience": "y"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    hub.stop().await;
}

#[tokio::test]
async fn poll_delivers_acks_and_redelivers_per_rfc8936() {
    let (hub, key) = hub_with_source().await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_poll_stream(&hub, &token, &[SESSION_REVOKED, RISC_DISABLED]).await;
    let aud = stream["aud"].as_str().expect("aud").to_owned();

    // Three matching events and one the stream did not ask for.
    let mut jtis_in = Vec::new();
    for event in [
        SESSION_REVOKED,
        CREDENTIAL_CHANGE,
        RISC_DISABLED,
        SESSION_REVOKED,
    ] {
        let payload = if event == CREDENTIAL_CHANGE {
            json!({"credential_type": "password", "change_type": "update"})
        } else {
            json!({"event_timestamp": 1767225590})
        };
        let c = claims(event, payload);
        jtis_in.push(c["jti"].clone());
        hub.push("idp", key.sign(&c).expect("sign"))
            .await
            .assert_accepted();
    }

    let r = poll(
        &hub,
        &token,
        &stream,
        json!({"returnImmediately": true, "maxEvents": 2}),
    )
    .await;
    assert_eq!(r["moreAvailable"], true);
    let first = sets_of(&r);
    assert_eq!(first.len(), 2);
    let mut types = Vec::new();
    for set in first.values() {
        let claims = verify_outbound(&hub, set, &aud).await;
        assert_eq!(
            claims["sub_id"],
            json!({"format": "email", "email": "ana@corp.example.test"})
        );
        types.push(
            claims["events"]
                .as_object()
                .expect("events")
                .keys()
                .next()
                .cloned()
                .expect("type"),
        );
    }
    assert_eq!(types.len(), 2);

    // Not acknowledged: offered again, plus the rest.
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    let all = sets_of(&r);
    assert_eq!(
        all.len(),
        3,
        "three matching events, the credential-change was not requested"
    );
    assert!(first.keys().all(|j| all.contains_key(j)));
    assert!(r.get("moreAvailable").is_none());

    // Out-of-order ack: the last one first.
    let jtis: Vec<String> = all.keys().cloned().collect();
    let by_position = {
        let mut v = jtis.clone();
        v.sort_by_key(|j| j.rsplit('.').next().and_then(|p| p.parse::<u64>().ok()));
        v
    };
    let r = poll(
        &hub,
        &token,
        &stream,
        json!({"returnImmediately": true, "ack": [by_position[2]]}),
    )
    .await;
    let left = sets_of(&r);
    assert_eq!(left.len(), 2);
    assert!(
        !left.contains_key(&by_position[2]),
        "an acknowledged SET is never sent again"
    );

    // setErrs releases a SET too (reported, not redelivered); ack-only with maxEvents 0.
    let r = poll(&hub, &token, &stream, json!({
        "returnImmediately": true, "maxEvents": 0,
        "ack": [by_position[0]],
        "setErrs": {by_position[1].clone(): {"err": "invalid_key", "description": "kid unknown"}}
    })).await;
    assert!(sets_of(&r).is_empty());
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    assert!(sets_of(&r).is_empty());

    // Acks survive a restart: nothing comes back.
    let hub = hub.restart().await;
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    assert!(sets_of(&r).is_empty(), "{r}");
    let r = hub.call("GET", "/ssf/streams", &token, None).await;
    assert_eq!(
        r.json()[0]["stream_id"],
        stream["stream_id"],
        "stream configuration survives restart"
    );
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("ssf_hub_delivery_latency_seconds"),
        "latency is measured"
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_long_poll_wakes_when_a_matching_event_is_appended() {
    let (hub, key) = hub_with_source().await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_poll_stream(&hub, &token, &[SESSION_REVOKED]).await;
    let hub = std::sync::Arc::new(hub);
    let waiter = {
        let (hub, token, stream) = (hub.clone(), token.clone(), stream.clone());
        tokio::spawn(async move { poll(&hub, &token, &stream, json!({})).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "a long poll with nothing pending waits"
    );
    // A non-matching event does not end the wait.
    let other = claims(RISC_DISABLED, json!({}));
    hub.push("idp", key.sign(&other).expect("sign"))
        .await
        .assert_accepted();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let r = waiter.await.expect("poll task");
    assert_eq!(sets_of(&r).len(), 1);
    std::sync::Arc::into_inner(hub).expect("owner").stop().await;
}

#[tokio::test]
async fn verification_sets_echo_state_and_name_the_stream() {
    let (hub, _) = hub_with_source().await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_poll_stream(&hub, &token, &[SESSION_REVOKED]).await;
    let id = stream["stream_id"].as_str().expect("id");
    let r = hub
        .call(
            "POST",
            "/ssf/verify",
            &token,
            Some(json!({"stream_id": id, "state": "Zm9vYmFy ünïcødé"})),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    let sets = sets_of(&r);
    assert_eq!(sets.len(), 1);
    let (jti, set) = sets.iter().next().expect("one");
    let claims = verify_outbound(&hub, set, stream["aud"].as_str().expect("aud")).await;
    assert_eq!(claims["sub_id"], json!({"format": "opaque", "id": id}));
    assert_eq!(
        claims["events"][VERIFICATION],
        json!({"state": "Zm9vYmFy ünïcødé"})
    );
    // Acknowledged, it is gone.
    let r = poll(
        &hub,
        &token,
        &stream,
        json!({"returnImmediately": true, "ack": [jti]}),
    )
    .await;
    assert!(sets_of(&r).is_empty());
    hub.stop().await;
}

#[tokio::test]
async fn paused_streams_hold_events_and_disabled_streams_drop_them() {
    let (hub, key) = hub_with_source().await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_poll_stream(&hub, &token, &[SESSION_REVOKED]).await;
    let id = stream["stream_id"].as_str().expect("id");
    let set_status = |status: &'static str| {
        let (hub, token) = (&hub, &token);
        async move {
            let r = hub
                .call(
                    "POST",
                    "/ssf/status",
                    token,
                    Some(json!({"stream_id": id, "status": status})),
                )
                .await;
            assert_eq!(r.status, 200);
        }
    };
    set_status("paused").await;
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    assert!(sets_of(&r).is_empty(), "paused: nothing is delivered");
    set_status("enabled").await;
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    let held = sets_of(&r);
    assert_eq!(held.len(), 1, "held events are delivered on re-enable");

    set_status("disabled").await;
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    set_status("enabled").await;
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    assert!(
        sets_of(&r).is_empty(),
        "a disabled stream holds nothing, not even older unacked SETs"
    );
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    assert_eq!(sets_of(&r).len(), 1);
    hub.stop().await;
}

#[tokio::test]
async fn removed_subjects_stop_receiving_events_until_added_again() {
    let (hub, key) = hub_with_source().await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_poll_stream(&hub, &token, &[SESSION_REVOKED]).await;
    let id = stream["stream_id"].as_str().expect("id");
    let ana = json!({"format": "email", "email": "ANA@corp.example.test"});
    let r = hub
        .call(
            "POST",
            "/ssf/subjects:remove",
            &token,
            Some(json!({"stream_id": id, "subject": ana})),
        )
        .await;
    assert_eq!(r.status, 204);
    // Ana's event (email compared case-insensitively) is filtered; Bob's is not.
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let mut bob = session_revoked();
    bob["sub_id"] = json!({"format": "complex", "user": {"format": "email", "email": "bob@corp.example.test"},
                           "session": {"format": "opaque", "id": "s-1"}});
    hub.push("idp", key.sign(&bob).expect("sign"))
        .await
        .assert_accepted();
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    let sets = sets_of(&r);
    assert_eq!(sets.len(), 1);
    let claims = verify_outbound(
        &hub,
        sets.values().next().expect("one"),
        stream["aud"].as_str().expect("aud"),
    )
    .await;
    assert_eq!(claims["sub_id"]["user"]["email"], "bob@corp.example.test");

    let r = hub
        .call(
            "POST",
            "/ssf/subjects:add",
            &token,
            Some(json!({"stream_id": id, "subject": ana})),
        )
        .await;
    assert_eq!(r.status, 200);
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let r = poll(
        &hub,
        &token,
        &stream,
        json!({"returnImmediately": true, "ack": sets.keys().collect::<Vec<_>>()}),
    )
    .await;
    assert_eq!(
        sets_of(&r).len(),
        1,
        "Ana's new event arrives once she is added back"
    );
    hub.stop().await;
}

#[tokio::test]
async fn poll_requests_are_validated() {
    let (hub, _) = hub_with_source().await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_poll_stream(&hub, &token, &[SESSION_REVOKED]).await;
    let path = format!("/ssf/poll/{}", stream["stream_id"].as_str().expect("id"));
    for bad in [
        json!([]),
        json!({"maxEvents": -1}),
        json!({"maxEvents": "5"}),
        json!({"ack": "x"}),
        json!({"returnImmediately": "yes"}),
        json!({"setErrs": {"j": {"description": "no err"}}}),
    ] {
        let r = hub.call("POST", &path, &token, Some(bad.clone())).await;
        assert_eq!(r.status, 400, "{bad}");
    }
    assert_eq!(
        hub.call("POST", &path, "", Some(json!({}))).await.status,
        401
    );
    hub.stop().await;
}

/// Verifies a compact SET with a JWKS, as a receiver with a key cache would: returns the `kid`,
/// or `None` when the JWKS has no key for it.
fn verify_with_jwks(jwks: &Value, set: &str) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(set.split('.').next()?).ok()?).ok()?;
    let kid = header["kid"].as_str()?.to_owned();
    let jwk = jwks["keys"]
        .as_array()?
        .iter()
        .find(|k| k["kid"] == kid.as_str())?;
    let jwk = josekit::jwk::Jwk::from_map(jwk.as_object()?.clone()).ok()?;
    let alg = ssf_hub::verify::Alg::parse(header["alg"].as_str()?)?;
    let (input, sig) = set.rsplit_once('.')?;
    alg.verifier(&jwk)?
        .verify(input.as_bytes(), &b64.decode(sig).ok()?)
        .expect("a SET signed with a published kid must verify");
    Some(kid)
}

#[tokio::test]
async fn key_rotation_never_breaks_a_receiver_that_refreshes_on_unknown_kid() {
    let key = es256();
    let hub = TestHub::start(|dir, c| {
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&key]));
        c.sources = vec![s];
        c.signing.activation_delay_secs = 4;
    })
    .await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_poll_stream(&hub, &token, &[SESSION_REVOKED]).await;
    let fetch_jwks = || async { hub.call("GET", "/jwks.json", "", None).await.json() };
    let mut cached = fetch_jwks().await;
    let mut refreshes = 0;
    let mut kids = Vec::new();
    let mut early_sets = Vec::new();
    // Unix ms at which the rotated-in key activates, from the hub's answer: key generation
    // (RSA under load) takes a while, so the test's own clock cannot tell.
    let mut activate_at_ms = u64::MAX;
    let mut round1_before_activation = true;
    for round in 0..3 {
        if round == 1 {
            let r = hub
                .client
                .post(format!("{}/admin/keys/rotate", hub.base))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("rotate");
            assert_eq!(r.status(), 200);
            let body: Value = r.json().await.expect("json");
            activate_at_ms = body["activate_at"].as_u64().expect("activate_at") * 1000;
        }
        if round == 2 {
            // Past the activation delay: the new key signs now.
            let wait = (activate_at_ms + 200).saturating_sub(ssf_hub::unix_now_ms());
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        hub.push("idp", key.sign(&session_revoked()).expect("sign"))
            .await
            .assert_accepted();
        let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
        let sets = sets_of(&r);
        assert_eq!(sets.len(), 1);
        let (jti, set) = sets.into_iter().next().expect("one");
        let kid = match verify_with_jwks(&cached, &set) {
            Some(kid) => kid,
            None => {
                refreshes += 1;
                cached = fetch_jwks().await;
                verify_with_jwks(&cached, &set).expect("after one refresh the kid is published")
            }
        };
        if round == 1 {
            // A very slow machine may get here after the activation delay; only a SET minted
            // before it must carry the old kid.
            round1_before_activation = ssf_hub::unix_now_ms() < activate_at_ms;
        }
        kids.push(kid);
        early_sets.push(set);
        poll(
            &hub,
            &token,
            &stream,
            json!({"returnImmediately": true, "maxEvents": 0, "ack": [jti]}),
        )
        .await;
    }
    if round1_before_activation {
        assert_eq!(
            kids[0], kids[1],
            "a rotated-in key does not sign before its activation"
        );
    }
    assert_ne!(kids[1], kids[2], "after activation the new key signs");
    assert!(refreshes <= 1);
    // SETs signed before the rotation still verify against the current JWKS (grace period).
    let now = fetch_jwks().await;
    assert!(verify_with_jwks(&now, &early_sets[0]).is_some());
    // Streams may ask for RS256 (the CAEP interoperability profile's algorithm).
    let r = hub
        .call(
            "PATCH",
            "/ssf/streams",
            &token,
            Some(json!({"stream_id": stream["stream_id"], "signing_alg": "RS256"})),
        )
        .await;
    assert_eq!(r.json()["signing_alg"], "RS256");
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    let set = sets_of(&r).into_values().next().expect("one");
    let claims = verify_outbound(&hub, &set, stream["aud"].as_str().expect("aud")).await;
    assert_eq!(claims["aud"], stream["aud"]);
    let header = decode_claims(
        &set.split('.')
            .next()
            .map(|h| format!("x.{h}.y"))
            .expect("header"),
    );
    assert_eq!(header["alg"], "RS256");
    hub.stop().await;
}

#[tokio::test]
async fn a_deleted_stream_cannot_be_polled_into_history() {
    let (hub, key) = hub_with_source().await;
    // History the stream must never see.
    for _ in 0..3 {
        hub.push("idp", key.sign(&session_revoked()).expect("sign"))
            .await
            .assert_accepted();
    }
    let (_, token) = hub.receiver("gw").await;
    let stream = create_poll_stream(&hub, &token, &[SESSION_REVOKED]).await;
    let id = stream["stream_id"].as_str().expect("id").to_owned();
    let hub = std::sync::Arc::new(hub);
    let waiter = {
        let (hub, token, id) = (hub.clone(), token.clone(), id.clone());
        tokio::spawn(async move {
            hub.call("POST", &format!("/ssf/poll/{id}"), &token, Some(json!({})))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = hub
        .call(
            "DELETE",
            &format!("/ssf/streams?stream_id={id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let r = waiter.await.expect("poll");
    assert_eq!(
        r.status, 404,
        "the long poll of a deleted stream ends, without SETs: {}",
        r.body
    );
    let r = hub
        .call(
            "POST",
            &format!("/ssf/poll/{id}"),
            &token,
            Some(json!({"returnImmediately": true})),
        )
        .await;
    assert_eq!(r.status, 404);
    std::sync::Arc::into_inner(hub).expect("owner").stop().await;
}

#[tokio::test]
async fn acks_release_only_what_was_handed_out() {
    let (hub, key) = hub_with_source().await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_poll_stream(&hub, &token, &[SESSION_REVOKED]).await;
    let id = stream["stream_id"].as_str().expect("id");
    // Acknowledging the next position before it exists must not suppress it.
    let future = format!("{id}.{}", hub.running.log.head() + 1);
    poll(
        &hub,
        &token,
        &stream,
        json!({"returnImmediately": true, "ack": [future]}),
    )
    .await;
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    assert_eq!(sets_of(&r).len(), 1);
    // A flood of acks is refused outright.
    let flood: Vec<String> = (0..2001).map(|i| format!("{id}.{i}")).collect();
    let path = format!("/ssf/poll/{id}");
    assert_eq!(
        hub.call("POST", &path, &token, Some(json!({"ack": flood})))
            .await
            .status,
        400
    );
    // Control events that fill a response still report what else waits.
    let r = hub
        .call(
            "POST",
            "/ssf/verify",
            &token,
            Some(json!({"stream_id": id})),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = poll(
        &hub,
        &token,
        &stream,
        json!({"returnImmediately": true, "maxEvents": 1}),
    )
    .await;
    assert_eq!(sets_of(&r).len(), 1);
    assert_eq!(r["moreAvailable"], true);
    hub.stop().await;
}

#[tokio::test]
async fn concurrent_subject_changes_are_all_kept() {
    let (hub, key) = hub_with_source().await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_poll_stream(&hub, &token, &[SESSION_REVOKED]).await;
    let id = stream["stream_id"].as_str().expect("id").to_owned();
    let hub = std::sync::Arc::new(hub);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (hub, token, id) = (hub.clone(), token.clone(), id.clone());
        tasks.spawn(async move {
            let subject = json!({"format": "email", "email": format!("user{i}@corp.example.test")});
            hub.call(
                "POST",
                "/ssf/subjects:remove",
                &token,
                Some(json!({"stream_id": id, "subject": subject})),
            )
            .await
            .status
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("task"), 204);
    }
    // Every removed subject stays removed: none of their events arrives.
    for i in 0..8 {
        let mut c = session_revoked();
        c["sub_id"] = json!({"format": "email", "email": format!("user{i}@corp.example.test")});
        hub.push("idp", key.sign(&c).expect("sign"))
            .await
            .assert_accepted();
    }
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let r = poll(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    assert_eq!(sets_of(&r).len(), 1, "only Ana's event: {r}");
    std::sync::Arc::into_inner(hub).expect("owner").stop().await;
}
