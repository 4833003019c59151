//! The revocation snapshot is streamed page by page from a consistent view of the store
//! (finding 6): many subjects come back complete and in `subject_key` order, in a chunked body
//! (no `Content-Length`), and a snapshot taken while the fold runs, plus the deltas after its
//! position, is exactly the final state.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use ssf_hub::normalize::Record;
use ssf_hub::set::{EventKind, Subject};
use ssf_hub::state::{Delta, State, SubjectState};

use crate::support::*;

const BASE_TS: u64 = 1_700_000_000;

fn user(i: u64) -> Subject {
    Subject::parse(&json!({"format": "email", "email": format!("u{i}@corp.example.test")}))
        .expect("subject")
}

/// A session-revoked record for user `i` at event time `ts` (appended straight to the log: the
/// fold does not care how a record got there, and 20k pushes would only test ingest).
fn revoked(i: u64, ts: u64, nonce: &str) -> Record {
    let sub = user(i);
    Record {
        position: 0,
        received_at_ms: 0,
        source: "idp".into(),
        iss: ISS.into(),
        jti: format!("{nonce}-{i}"),
        txn: None,
        iat: ts as i64,
        event_type: EventKind::SessionRevoked.uri(),
        known: true,
        subject_key: sub.canonical_key(),
        subject: sub,
        event_timestamp: Some(ts),
        claims: json!({ "event_timestamp": ts }),
        set: String::new(),
        authoritative: true,
    }
}

/// Appends the records concurrently (the journal commits them in groups).
async fn append(hub: &TestHub, records: Vec<Record>) {
    let expires = ssf_hub::unix_now() + 3600;
    for chunk in records.chunks(2000) {
        let mut tasks = tokio::task::JoinSet::new();
        for r in chunk.iter().cloned() {
            let log = hub.running.log.clone();
            let key = r.jti.clone().into_bytes();
            tasks.spawn(async move { log.append_record(r, key, expires).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("append");
        }
    }
}

/// Waits (bounded) until the fold has reached `position`.
async fn folded(hub: &TestHub, token: &str, position: u64) {
    for _ in 0..2400 {
        let page = hub
            .call("GET", "/revocations?since=0&limit=1", token, None)
            .await
            .json();
        assert_eq!(page.get("error"), None, "{page}");
        if page["position"].as_u64() >= Some(position) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the fold did not reach position {position}");
}

/// The snapshot's response headers and parsed body.
async fn snapshot(hub: &TestHub, token: &str) -> (reqwest::header::HeaderMap, Value) {
    let r = hub
        .client
        .get(format!("{}/revocations/snapshot", hub.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("snapshot");
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    let body = r.bytes().await.expect("the whole snapshot body");
    let parsed = serde_json::from_slice(&body).expect("the snapshot is one JSON document");
    (headers, parsed)
}

fn subjects(snapshot: &Value) -> &Vec<Value> {
    snapshot["subjects"].as_array().expect("subjects")
}

#[tokio::test]
async fn a_large_snapshot_streams_every_subject_in_key_order() {
    const N: u64 = 20_000;
    let hub = TestHub::start(|_, _| {}).await;
    let (_, token) = hub.gateway("sidecar").await;
    append(&hub, (0..N).map(|i| revoked(i, BASE_TS + i, "a")).collect()).await;
    folded(&hub, &token, N).await;

    let (headers, snap) = snapshot(&hub, &token).await;
    assert!(
        headers.get("content-length").is_none(),
        "streamed, so the length is not known up front"
    );
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert_eq!(snap["position"], N);
    let items = subjects(&snap);
    assert_eq!(items.len() as u64, N);

    let keys: Vec<&str> = items
        .iter()
        .map(|s| s["subject_key"].as_str().expect("subject_key"))
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "subjects come in subject_key order, each once"
    );
    // Every subject is there with the state its event gave it.
    let expected: BTreeMap<String, u64> = (0..N)
        .map(|i| (user(i).canonical_key(), BASE_TS + i))
        .collect();
    for item in items {
        let key = item["subject_key"].as_str().expect("key");
        assert_eq!(
            item["state"]["revoked_before"][0].as_u64(),
            expected.get(key).copied(),
            "state of {key}"
        );
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_snapshot_taken_while_the_fold_runs_plus_later_deltas_is_the_final_state() {
    const N: u64 = 4_000;
    let hub = TestHub::start(|_, _| {}).await;
    let (_, token) = hub.gateway("sidecar").await;
    append(&hub, (0..N).map(|i| revoked(i, BASE_TS + i, "a")).collect()).await;
    folded(&hub, &token, N).await;

    // Later events for the same users and new ones, folded while the snapshot is read.
    let later: Vec<Record> = (N / 2..N + N / 2)
        .map(|i| revoked(i, BASE_TS + 10 * N + i, "b"))
        .collect();
    let (_, (_, during)) = tokio::join!(append(&hub, later), snapshot(&hub, &token));
    folded(&hub, &token, 2 * N).await;
    let (_, after) = snapshot(&hub, &token).await;
    assert_eq!(after["position"], 2 * N);

    // Rebuild: the snapshot's subjects, then every delta after its position.
    let mut state = State::default();
    for item in subjects(&during) {
        let s: SubjectState = serde_json::from_value(item["state"].clone()).expect("state");
        state.restore(item["subject_key"].as_str().expect("key").into(), s);
    }
    let mut since = during["position"].as_u64().expect("position");
    loop {
        let page = hub
            .call(
                "GET",
                &format!("/revocations?since={since}&limit=5000"),
                &token,
                None,
            )
            .await
            .json();
        for d in page["deltas"].as_array().expect("deltas") {
            let d: Delta = serde_json::from_value(d.clone()).expect("delta");
            state.apply_delta(&d);
        }
        let next = page["next"].as_u64().expect("next");
        if next == since || next >= 2 * N {
            break;
        }
        since = next;
    }
    let rebuilt: BTreeMap<&String, Value> = state
        .subjects
        .iter()
        .map(|(k, s)| (k, serde_json::to_value(&**s).expect("state JSON")))
        .collect();
    let final_state: BTreeMap<&str, &Value> = subjects(&after)
        .iter()
        .map(|s| (s["subject_key"].as_str().expect("key"), &s["state"]))
        .collect();
    assert_eq!(rebuilt.len(), final_state.len());
    for (k, v) in &rebuilt {
        assert_eq!(Some(&v), final_state.get(k.as_str()), "state of {k}");
    }
    hub.stop().await;
}

/// The storage contract the snapshot relies on, on both backends: a view holds each write batch
/// wholly or not at all, and nothing written after it was taken.
fn views_are_frozen_and_hold_whole_batches(tables: std::sync::Arc<dyn ssf_hub::storage::Tables>) {
    use ssf_hub::storage::Op;
    tables
        .write(vec![
            Op::put("t", b"a".to_vec(), b"1".to_vec()),
            Op::put("meta", b"pos".to_vec(), b"1".to_vec()),
        ])
        .expect("write");
    let view = tables.view().expect("view");
    tables
        .write(vec![
            Op::put("t", b"a".to_vec(), b"2".to_vec()),
            Op::put("t", b"b".to_vec(), b"2".to_vec()),
            Op::delete("t", b"c".to_vec()),
            Op::put("meta", b"pos".to_vec(), b"2".to_vec()),
        ])
        .expect("write");
    let rows = view.scan("t", b"", b"", 10).expect("scan");
    assert_eq!(rows, vec![(b"a".to_vec(), b"1".to_vec())]);
    assert_eq!(view.get("meta", b"pos").expect("get"), Some(b"1".to_vec()));
    assert!(view.scan("never", b"", b"", 10).expect("scan").is_empty());
    // The tables themselves moved on.
    assert_eq!(tables.scan("t", b"", b"", 10).expect("scan").len(), 2);
    let now = tables.view().expect("view");
    assert_eq!(now.get("meta", b"pos").expect("get"), Some(b"2".to_vec()));
    assert_eq!(
        now.scan("t", b"", b"b", 10).expect("scan"),
        vec![(b"b".to_vec(), b"2".to_vec())]
    );
}

#[test]
fn memory_views_are_frozen_and_hold_whole_batches() {
    views_are_frozen_and_hold_whole_batches(ssf_hub::storage::Storage::memory().tables);
}

#[test]
fn embedded_views_are_frozen_and_hold_whole_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budgets = ssf_hub::storage::Budgets {
        cache_bytes: 1 << 20,
        write_buffer_bytes: 8 << 20,
    };
    let storage = ssf_hub::storage::Storage::embedded(dir.path(), &dir.path().join("db"), budgets)
        .expect("open");
    views_are_frozen_and_hold_whole_batches(storage.tables);
}
