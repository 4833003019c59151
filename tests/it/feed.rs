//! The websocket feeds, driven by an independent client (Python `websockets`): replay from
//! `since`, live events, filters, reconnecting without gap or duplicate, and a slow client cut
//! off while a fast one receives everything.

use serde_json::{json, Value};
use ssf_hub::normalize::Record;
use ssf_hub::set::{EventKind, Subject};
use ssf_hub::storage::Append;

use crate::support::*;

/// Appends `n` records straight to the hub's log (the feeds read the log; signing thousands of
/// SETs would only slow the test down). `padding` bytes make each record bigger.
async fn append(hub: &TestHub, n: usize, padding: usize) {
    let subject = Subject::parse(&json!({"format": "email", "email": "ana@corp.example.test"}))
        .expect("subject");
    // Event times keep increasing across calls, as they would in a real log.
    static CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);
    for i in 0..n {
        let ts = CLOCK.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (kind, source) = if i % 2 == 0 {
            (EventKind::SessionRevoked, "idp")
        } else {
            (EventKind::AccountDisabled, "scanner")
        };
        let jti = uuid::Uuid::new_v4().to_string();
        let record = Record {
            position: 0,
            received_at_ms: ssf_hub::unix_now_ms(),
            source: source.into(),
            iss: ISS.into(),
            jti: jti.clone(),
            txn: None,
            iat: 1000,
            event_type: kind.uri(),
            known: true,
            subject_key: subject.canonical_key(),
            subject: subject.clone(),
            event_timestamp: Some(ts),
            authoritative: true,
            claims: json!({"event_timestamp": ts, "note": "x".repeat(padding)}),
            set: String::new(),
        };
        hub.running
            .log
            .append(Append {
                key: jti.into_bytes(),
                key_expires_at: ssf_hub::unix_now() + 3600,
                record: serde_json::to_vec(&record).expect("json"),
            })
            .await
            .expect("append");
    }
}

fn ws_url(hub: &TestHub, path: &str) -> String {
    format!("ws://{}{path}", hub.running.addr)
}

async fn client(args: Vec<String>) -> Value {
    let out = tokio::task::spawn_blocking(move || run_python("ws_client.py", &args))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("websocket client failed: {e}"));
    serde_json::from_str(&out).expect("json")
}

fn positions(v: &Value) -> Vec<u64> {
    v["positions"]
        .as_array()
        .expect("positions")
        .iter()
        .map(|p| p.as_u64().expect("u64"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_live_filters_and_reconnect_without_gap_or_duplicate() {
    let hub = TestHub::start(|_, _| {}).await;
    append(&hub, 10, 0).await;
    // Replay then live: 10 stored, 10 more while connected; only session-revoked from idp.
    let url = ws_url(&hub, "/feed?since=0&types=caep/session-revoked&sources=idp");
    let filtered = tokio::spawn(client(vec![
        "collect".into(),
        url,
        ADMIN.into(),
        "10".into(),
    ]));
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    append(&hub, 10, 0).await;
    let got = filtered.await.expect("client");
    assert_eq!(positions(&got), (1..=20).step_by(2).collect::<Vec<u64>>());
    assert!(got["types"]
        .as_array()
        .expect("types")
        .iter()
        .all(|t| t == SESSION_REVOKED));

    // Reconnect: first 7, then from the 7th on; together exactly 1..=20.
    let first = client(vec![
        "collect".into(),
        ws_url(&hub, "/feed?since=0"),
        ADMIN.into(),
        "7".into(),
    ])
    .await;
    let p1 = positions(&first);
    let last = *p1.last().expect("some");
    let rest = client(vec![
        "collect".into(),
        ws_url(&hub, &format!("/feed?since={last}")),
        ADMIN.into(),
        (20 - last).to_string(),
    ])
    .await;
    let mut all = p1.clone();
    all.extend(positions(&rest));
    assert_eq!(
        all,
        (1..=20).collect::<Vec<u64>>(),
        "no gap, no duplicate across the reconnect"
    );

    // The feed needs the admin token; a receiver credential is not enough.
    let (_, token) = hub.receiver("sidecar").await;
    let r = hub
        .client
        .get(format!("{}/feed", hub.base))
        .bearer_auth(&token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    // Revocation deltas follow the same way, for credentials with the revocation scope.
    let (_, token) = hub.gateway("sidecar-ws").await;
    // Ten revocations with newer horizons are ten changes; ten disables of one account are one.
    let deltas = client(vec![
        "collect".into(),
        ws_url(&hub, "/revocations/ws?since=0"),
        token,
        "11".into(),
    ])
    .await;
    assert_eq!(
        positions(&deltas),
        vec![1, 2, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_while_a_fast_client_gets_everything() {
    let hub = TestHub::start(|_, c| c.feed.ring_capacity = 64).await;
    const N: u64 = 2500;
    let fast = tokio::spawn(client(vec![
        "collect".into(),
        ws_url(&hub, "/feed?since=0"),
        ADMIN.into(),
        N.to_string(),
        "120".into(),
    ]));
    let slow = tokio::spawn(client(vec![
        "slow".into(),
        ws_url(&hub, "/feed?since=0"),
        ADMIN.into(),
        "4".into(),
    ]));
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    // ~3 KB per event, ~7.5 MB in all: more than a blocked socket's buffers hold.
    append(&hub, N as usize, 3000).await;
    let fast = fast.await.expect("fast");
    assert_eq!(
        positions(&fast),
        (1..=N).collect::<Vec<u64>>(),
        "the fast client got everything, in order"
    );
    assert!(fast["cut_off"].is_null());
    let slow = slow.await.expect("slow");
    let cut = slow["cut_off"]
        .as_u64()
        .expect("the slow client was cut off");
    assert!(cut < N);
    assert_eq!(
        positions(&slow),
        (1..=cut).collect::<Vec<u64>>(),
        "up to the cut-off, nothing missing"
    );
    // It reconnects from the cut-off and loses nothing.
    let resumed = client(vec![
        "collect".into(),
        ws_url(&hub, &format!("/feed?since={cut}")),
        ADMIN.into(),
        (N - cut).to_string(),
    ])
    .await;
    assert_eq!(positions(&resumed), (cut + 1..=N).collect::<Vec<u64>>());
    assert!(hub.metrics().await.contains("ssf_hub_ws_cut_off_total"));
    hub.stop().await;
}
