//! Retention as readers see it, over HTTP and websockets on a real hub with a real data
//! directory: the sweep removes the oldest records (by count and by age), positions are never
//! reused, and every interface tells a reader who asks for removed positions what it missed.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

/// A hub keeping at most `max_events` records, swept every second.
async fn hub_keeping(
    key: &ssf_hub::sign::SetSigner,
    max_events: u64,
    max_age_secs: u64,
) -> TestHub {
    hub_swept(key, |c| {
        c.log.retention.max_events = max_events;
        c.log.retention.max_age_secs = max_age_secs;
    })
    .await
}

/// A hub with source `idp` trusting `key`, retention swept every second, and `edit` applied.
async fn hub_swept(
    key: &ssf_hub::sign::SetSigner,
    edit: impl FnOnce(&mut ssf_hub::config::Config),
) -> TestHub {
    TestHub::start(|dir, c| {
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[key]));
        c.sources = vec![s];
        c.log.retention.sweep_secs = 1;
        edit(c);
    })
    .await
}

async fn push_n(hub: &TestHub, key: &ssf_hub::sign::SetSigner, n: usize, user: &str) {
    for i in 0..n {
        let mut c = claims(SESSION_REVOKED, json!({"event_timestamp": 1_000 + i}));
        c["sub_id"] = json!({"format": "email", "email": format!("{user}{i}@corp.example.test")});
        hub.push("idp", key.sign(&c).expect("sign"))
            .await
            .assert_accepted();
    }
}

async fn get(hub: &TestHub, path: &str, token: &str) -> Value {
    let r = hub.call("GET", path, token, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Waits (up to a generous bound; no timing is asserted) until `done` holds for `GET path`.
async fn until(hub: &TestHub, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let v = get(hub, path, token).await;
        if done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{path} never reached the expected state: {}",
        get(hub, path, token).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_keeps_the_newest_and_never_reuses_a_position() {
    let key = es256();
    let hub = hub_keeping(&key, 5, 0).await;
    push_n(&hub, &key, 12, "a").await;
    let page = until(&hub, "/events?since=0", ADMIN, |v| v["earliest"] == 8).await;
    let positions: Vec<u64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["position"].as_u64().expect("position"))
        .collect();
    assert_eq!(positions, vec![8, 9, 10, 11, 12]);
    assert_eq!(page["head"], 12);
    // The next record continues after the head, and the sweep keeps the newest five.
    push_n(&hub, &key, 1, "b").await;
    let page = until(&hub, "/events?since=0", ADMIN, |v| v["earliest"] == 9).await;
    assert_eq!(page["events"][4]["position"], 13);
    // Across a restart too: the head, not the oldest record kept, decides the next position.
    let hub = hub.restart().await;
    push_n(&hub, &key, 1, "c").await;
    let page = get(&hub, "/events?since=12", ADMIN).await;
    assert_eq!(page["events"][1]["position"], 14, "{page}");
    assert!(hub
        .metrics()
        .await
        .contains("ssf_hub_log_retention_removed_total"));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_removes_what_is_older() {
    let key = es256();
    let hub = hub_keeping(&key, 0, 2).await;
    push_n(&hub, &key, 3, "old").await;
    // Everything becomes older than two seconds and is removed; the head stays.
    let page = until(&hub, "/events?since=0", ADMIN, |v| v["earliest"] == 4).await;
    assert!(page["events"].as_array().expect("events").is_empty());
    assert_eq!(page["head"], 3);
    push_n(&hub, &key, 1, "new").await;
    let page = get(&hub, "/events?since=0", ADMIN).await;
    assert_eq!(page["events"][0]["position"], 4, "{page}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_stream_behind_retention_continues_from_the_earliest_kept_and_counts_the_skip() {
    let key = es256();
    let hub = hub_keeping(&key, 3, 0).await;
    let (_, token) = hub.receiver("gw").await;
    let r = hub
        .call(
            "POST",
            "/ssf/streams",
            &token,
            Some(json!({"events_requested": [SESSION_REVOKED]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let stream = r.json();
    push_n(&hub, &key, 10, "p").await;
    until(&hub, "/events?since=0", ADMIN, |v| v["earliest"] == 8).await;
    let url = stream["delivery"]["endpoint_url"].as_str().expect("url");
    let path = url.strip_prefix(&hub.config.issuer).expect("below issuer");
    let r = hub
        .call(
            "POST",
            path,
            &token,
            Some(json!({"returnImmediately": true, "maxEvents": 100})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sets = r.json()["sets"].as_object().cloned().expect("sets");
    let mut positions: Vec<u64> = sets
        .keys()
        .map(|jti| {
            jti.rsplit('.')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("an event jti ends with its position")
        })
        .collect();
    positions.sort();
    assert_eq!(positions, vec![8, 9, 10]);
    let metrics = hub.metrics().await;
    let skipped = metrics
        .lines()
        .find(|l| l.starts_with("ssf_hub_delivery_skipped_total{method=\"poll\"}"))
        .expect("the skip is counted");
    assert!(skipped.ends_with(" 7"), "{skipped}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_and_deltas_say_what_retention_removed() {
    let key = es256();
    let hub = hub_keeping(&key, 4, 0).await;
    push_n(&hub, &key, 9, "f").await;
    until(&hub, "/events?since=0", ADMIN, |v| v["earliest"] == 6).await;
    // The deltas of removed records go with them.
    let deltas = until(&hub, "/revocations?since=0", ADMIN, |v| v["earliest"] == 6).await;
    let first = deltas["deltas"][0]["position"].as_u64().expect("a delta");
    assert!(first >= 6, "{deltas}");

    let url = format!("ws://{}/feed?since=0", hub.running.addr);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame")
            .expect("open")
            .expect("message");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            frames.push(serde_json::from_str::<Value>(&t).expect("json"));
        }
    }
    assert_eq!(frames[0]["type"], "skipped");
    assert_eq!(
        (frames[0]["from"].clone(), frames[0]["through"].clone()),
        (json!(1), json!(5))
    );
    assert_eq!(frames[1]["items"][0]["position"], 6, "{}", frames[1]);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_beyond_the_window_are_removed_and_the_state_keeps_every_subject() {
    let key = es256();
    let hub = hub_swept(&key, |c| c.revocation.delta_window = 3).await;
    push_n(&hub, &key, 8, "w").await;
    // Every record caused a delta; the fold is at 8, so only deltas after 5 stay.
    let page = until(&hub, "/revocations?since=0", ADMIN, |v| v["earliest"] == 6).await;
    let positions: Vec<u64> = page["deltas"]
        .as_array()
        .expect("deltas")
        .iter()
        .map(|d| d["position"].as_u64().expect("position"))
        .collect();
    assert_eq!(positions, vec![6, 7, 8]);
    // The log itself is untouched, and the snapshot still has all eight subjects.
    assert_eq!(get(&hub, "/events?since=0", ADMIN).await["earliest"], 1);
    let snapshot = get(&hub, "/revocations/snapshot", ADMIN).await;
    assert_eq!(snapshot["subjects"].as_array().expect("subjects").len(), 8);
    hub.stop().await;
}
