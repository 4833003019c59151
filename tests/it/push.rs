//! RFC 8935 push delivery to real receivers on loopback: outages, 5xx, 429 with Retry-After,
//! permanent refusals that pause the stream, restarts mid-delivery, and the SSRF guard.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::support::*;

const STREAM_UPDATED: &str = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";
const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";

async fn create_push_stream(hub: &TestHub, token: &str, url: &str, auth: Option<&str>) -> Value {
    create_push_stream_with(hub, token, url, auth, json!({})).await
}

/// A push stream with `extra` stream fields (such as `max_in_flight`).
async fn create_push_stream_with(
    hub: &TestHub,
    token: &str,
    url: &str,
    auth: Option<&str>,
    extra: Value,
) -> Value {
    let mut delivery = json!({"method": "urn:ietf:rfc:8935", "endpoint_url": url});
    if let Some(a) = auth {
        delivery["authorization_header"] = json!(a);
    }
    let mut body = json!({"events_requested": [SESSION_REVOKED], "delivery": delivery});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    let r = hub.call("POST", "/ssf/streams", token, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

fn position(r: &Received) -> u64 {
    r.claims["jti"]
        .as_str()
        .and_then(|j| j.rsplit('.').next())
        .and_then(|p| p.parse().ok())
        .expect("event jti ends with its position")
}

fn is_event(r: &Received) -> bool {
    r.claims["events"].get(SESSION_REVOKED).is_some()
}

#[tokio::test]
async fn a_window_of_one_delivers_in_log_order_through_outage_errors_and_throttling() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.receiver("gw").await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/rx");
    // `max_in_flight: 1`: one SET at a time, so strict log order even across retries.
    let stream = create_push_stream_with(
        &hub,
        &token,
        &url,
        Some("Bearer rx-secret"),
        json!({"max_in_flight": 1}),
    )
    .await;
    assert_eq!(stream["max_in_flight"], 1);

    let mut sent = Vec::new();
    for _ in 0..6 {
        let c = session_revoked();
        sent.push(c["jti"].clone());
        hub.push("idp", key.sign(&c).expect("sign"))
            .await
            .assert_accepted();
    }
    // The receiver is down: connections are refused and retried with backoff.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Back up, but failing: two 500s, then a 429 with Retry-After, then fine.
    let rx = TestReceiver::start_on(port, |n, _| match n {
        0 | 1 => (500, vec![], String::new()),
        2 => (429, vec![("retry-after", "1".into())], String::new()),
        _ => (202, vec![], String::new()),
    })
    .await;
    rx.wait_for("six accepted events", |got| {
        got.iter()
            .filter(|r| r.answered == 202 && is_event(r))
            .count()
            == 6
    })
    .await;

    let accepted: Vec<Received> = rx.accepted().into_iter().filter(is_event).collect();
    let positions: Vec<u64> = accepted.iter().map(position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in log order, none twice: {positions:?}"
    );
    let got = rx.received();
    assert_eq!(got[0].answered, 500);
    assert_eq!(got[2].answered, 429);
    assert_eq!(
        position(&got[0]),
        position(&got[3]),
        "the first event is retried until accepted"
    );
    for r in &got {
        assert_eq!(r.authorization.as_deref(), Some("Bearer rx-secret"));
        assert_eq!(r.content_type.as_deref(), Some("application/secevent+jwt"));
        assert_eq!(r.claims["aud"], stream["aud"]);
        assert_eq!(r.claims["iss"], hub.config.issuer);
    }
    // Nothing more arrives once all were accepted.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), got.len());
    hub.stop().await;
}

/// A receiver that refuses every event with RFC 8935 code `err` and accepts the stream-updated
/// announcement.
async fn refusing(err: &'static str) -> TestReceiver {
    TestReceiver::start(move |_, claims| {
        if claims["events"].get(STREAM_UPDATED).is_some() {
            (202, vec![], String::new())
        } else {
            let body = json!({"err": err, "description": "refused"}).to_string();
            (400, vec![("content-type", "application/json".into())], body)
        }
    })
    .await
}

#[tokio::test]
async fn permanent_refusals_are_not_retried_and_pause_the_stream_with_an_announcement() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.receiver("gw").await;
    let rx = refusing("invalid_audience").await;
    let stream = create_push_stream(&hub, &token, &rx.url(), None).await;
    let id = stream["stream_id"].as_str().expect("id").to_owned();
    for _ in 0..5 {
        hub.push("idp", key.sign(&session_revoked()).expect("sign"))
            .await
            .assert_accepted();
    }
    rx.wait_for("a stream-updated announcement", |got| {
        got.iter()
            .any(|r| r.claims["events"].get(STREAM_UPDATED).is_some())
    })
    .await;
    let got = rx.received();
    let events: Vec<&Received> = got.iter().filter(|r| is_event(r)).collect();
    assert_eq!(
        events.len(),
        3,
        "permanent_failure_budget (3) refusals, each tried once"
    );
    let mut tries = HashMap::new();
    for e in &events {
        *tries.entry(position(e)).or_insert(0) += 1;
    }
    assert!(
        tries.values().all(|n| *n == 1),
        "no blind retry of invalid_audience"
    );
    let announcement = got
        .iter()
        .find(|r| r.claims["events"].get(STREAM_UPDATED).is_some())
        .expect("announced");
    assert_eq!(
        announcement.claims["events"][STREAM_UPDATED]["status"],
        "paused"
    );
    assert_eq!(
        announcement.claims["sub_id"],
        json!({"format": "opaque", "id": id})
    );
    assert!(events.iter().all(|e| e.answered == 400));

    // The announcement goes out before the pause is recorded: wait (bounded) for the record.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let r = hub
            .call("GET", &format!("/ssf/status?stream_id={id}"), &token, None)
            .await;
        let status = r.json();
        if status["status"] == "paused" || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status["status"], "paused");
    assert!(
        status["reason"]
            .as_str()
            .expect("reason")
            .contains("invalid_audience"),
        "{status}"
    );
    assert!(hub
        .metrics()
        .await
        .contains("ssf_hub_push_dead_letters_total"));
    // Paused: nothing more is sent.
    let before = rx.received().len();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), before);
    hub.stop().await;
}

#[tokio::test]
async fn a_restart_mid_delivery_loses_nothing_and_skips_nothing() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.receiver("gw").await;
    let rx = TestReceiver::start(|_, _| {
        std::thread::sleep(std::time::Duration::from_millis(15));
        (202, vec![], String::new())
    })
    .await;
    create_push_stream(&hub, &token, &rx.url(), None).await;
    let mut sent = Vec::new();
    for _ in 0..30 {
        let c = session_revoked();
        sent.push(c["jti"].as_str().expect("jti").to_owned());
        hub.push("idp", key.sign(&c).expect("sign"))
            .await
            .assert_accepted();
    }
    rx.wait_for("a few deliveries", |got| got.len() >= 5).await;
    let hub = hub.restart().await;
    rx.wait_for("all thirty", |got| {
        got.iter()
            .filter(|r| is_event(r))
            .map(position)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 30
    })
    .await;
    let firsts: Vec<u64> = {
        let mut seen = std::collections::BTreeSet::new();
        rx.received()
            .iter()
            .filter(|r| is_event(r))
            .map(position)
            .filter(|p| seen.insert(*p))
            .collect()
    };
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "first deliveries in log order: {firsts:?}"
    );
    // At-least-once: a SET in flight at the restart may come twice, with the same jti.
    let total = rx.received().iter().filter(|r| is_event(r)).count();
    assert!(
        total <= 31,
        "at most the one in-flight SET is repeated, got {total}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn verification_is_pushed_with_the_state_echoed() {
    let hub = TestHub::with_signer(&es256()).await;
    let (_, token) = hub.receiver("gw").await;
    let rx = TestReceiver::start(|_, _| (202, vec![], String::new())).await;
    let stream = create_push_stream(&hub, &token, &rx.url(), None).await;
    let id = stream["stream_id"].as_str().expect("id");
    let r = hub
        .call(
            "POST",
            "/ssf/verify",
            &token,
            Some(json!({"stream_id": id, "state": "abc-123"})),
        )
        .await;
    assert_eq!(r.status, 204);
    rx.wait_for("the verification SET", |got| !got.is_empty())
        .await;
    let got = rx.received();
    assert_eq!(
        got[0].claims["events"][VERIFICATION],
        json!({"state": "abc-123"})
    );
    assert_eq!(
        got[0].claims["sub_id"],
        json!({"format": "opaque", "id": id})
    );
    hub.stop().await;
}

#[tokio::test]
async fn private_push_targets_are_refused_unless_allowed() {
    let hub = TestHub::start(|_, c| c.delivery.allow_private_targets = vec![]).await;
    let (_, token) = hub.receiver("gw").await;
    for url in [
        "http://[64:ff9b::a00:5]/rx",
        "http://[::ffff:127.0.0.1]/rx",
        "http://127.0.0.1:8080/rx",
        "http://10.0.0.5/rx",
        "http://[::1]/rx",
        "http://169.254.169.254/latest",
    ] {
        let r = hub
            .call(
                "POST",
                "/ssf/streams",
                &token,
                Some(json!({"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": url}})),
            )
            .await;
        assert_eq!(r.status, 400, "{url}: {}", r.body);
    }
    // A host name that resolves to loopback is refused at connect time instead.
    let rx = TestReceiver::start(|_, _| (202, vec![], String::new())).await;
    let url = format!("http://localhost:{}/rx", rx.addr.port());
    let r = hub
        .call("POST", "/ssf/streams", &token,
              Some(json!({"events_requested": [SESSION_REVOKED], "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": url}})))
        .await;
    assert_eq!(r.status, 201);
    let id = r.json()["stream_id"].as_str().expect("id").to_owned();
    let r = hub
        .call(
            "POST",
            "/ssf/verify",
            &token,
            Some(json!({"stream_id": id})),
        )
        .await;
    assert_eq!(r.status, 204);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        rx.received().is_empty(),
        "the hub connected to a loopback address"
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_revoked_receiver_gets_no_more_pushes() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (receiver_id, token) = hub.receiver("gw").await;
    let rx = TestReceiver::start(|_, _| (202, vec![], String::new())).await;
    let stream = create_push_stream(&hub, &token, &rx.url(), None).await;
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    rx.wait_for("the first event", |got| got.len() == 1).await;
    let r = hub
        .client
        .delete(format!("{}/admin/receivers/{receiver_id}", hub.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        rx.received().iter().filter(|r| is_event(r)).count(),
        1,
        "no event is pushed after the revocation (only its announcement)"
    );
    let all: Value = hub
        .client
        .get(format!("{}/admin/streams", hub.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("streams")
        .json()
        .await
        .expect("json");
    let s = all
        .as_array()
        .expect("array")
        .iter()
        .find(|s| s["stream_id"] == stream["stream_id"])
        .expect("listed");
    assert_eq!(s["status"], "disabled");
    assert!(s["delivery"].get("authorization_header").is_none());
    hub.stop().await;
}

#[tokio::test]
async fn many_push_streams_each_get_every_event_once_in_order() {
    // Fan-out: every stream wakes on every append and on every stream created; none of that
    // may stall the hub or lose, repeat or reorder a SET.
    const STREAMS: usize = 40;
    const EVENTS: usize = 10;
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.receiver("gw").await;
    let rx = TestReceiver::start(|_, _| (202, vec![], String::new())).await;
    // Each stream pushes with its own credential, which tells them apart at the receiver (the
    // SETs themselves are the same bytes for every stream of one audience).
    for k in 0..STREAMS {
        let auth = format!("Bearer s{k}");
        create_push_stream_with(
            &hub,
            &token,
            &rx.url(),
            Some(&auth),
            json!({"max_in_flight": 1}),
        )
        .await;
    }
    for _ in 0..EVENTS {
        hub.push("idp", key.sign(&session_revoked()).expect("sign"))
            .await
            .assert_accepted();
    }
    rx.wait_for("every event on every stream", |got| {
        got.iter().filter(|r| is_event(r)).count() >= STREAMS * EVENTS
    })
    .await;
    let mut by_stream: HashMap<String, Vec<u64>> = HashMap::new();
    for r in rx.accepted().iter().filter(|r| is_event(r)) {
        let stream = r.authorization.clone().expect("credential");
        by_stream.entry(stream).or_default().push(position(r));
    }
    assert_eq!(by_stream.len(), STREAMS, "every stream delivered");
    let first = by_stream.values().next().expect("a stream").clone();
    assert_eq!(first.len(), EVENTS);
    for (stream, positions) in &by_stream {
        assert_eq!(
            positions, &first,
            "stream {stream}: every event once, in log order"
        );
    }
    assert!(first.windows(2).all(|w| w[0] < w[1]));
    // One signature per event served all forty streams: they share `aud` and key.
    let mut sets: HashMap<u64, std::collections::HashSet<String>> = HashMap::new();
    for r in rx.accepted().iter().filter(|r| is_event(r)) {
        sets.entry(position(r)).or_default().insert(r.set.clone());
    }
    assert!(
        sets.values().all(|s| s.len() == 1),
        "the same bytes for every stream"
    );
    hub.stop().await;
}

#[tokio::test]
async fn dead_letters_are_capped_per_stream_keeping_the_newest() {
    let key = es256();
    let hub = TestHub::start(|dir, c| {
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&key]));
        c.sources = vec![s];
        c.delivery.max_dead_letters_per_stream = 2;
    })
    .await;
    let (_, token) = hub.receiver("gw").await;
    let rx = refusing("invalid_request").await;
    // One at a time, so "newest" is log order.
    let stream =
        create_push_stream_with(&hub, &token, &rx.url(), None, json!({"max_in_flight": 1})).await;
    let id = stream["stream_id"].as_str().expect("id").to_owned();
    for _ in 0..3 {
        hub.push("idp", key.sign(&session_revoked()).expect("sign"))
            .await
            .assert_accepted();
    }
    // Three refusals in a row pause the stream; each was dead-lettered first.
    rx.wait_for("the pause announcement", |got| {
        got.iter()
            .any(|r| r.claims["events"].get(STREAM_UPDATED).is_some())
    })
    .await;
    let r = hub
        .client
        .get(format!("{}/admin/streams/{id}/dead-letters", hub.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("dead letters");
    assert_eq!(r.status(), 200);
    let letters: Vec<Value> = r.json().await.expect("json");
    let positions: Vec<String> = letters
        .iter()
        .map(|l| {
            let claims = decode_claims(l["set"].as_str().expect("set"));
            let jti = claims["jti"].as_str().expect("jti").to_owned();
            jti.rsplit('.').next().expect("position").to_owned()
        })
        .collect();
    assert_eq!(positions, ["2", "3"], "the two newest of three");
    hub.stop().await;
}
