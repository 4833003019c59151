//! Crash safety of the real binary: SETs pushed concurrently, the process killed with SIGKILL
//! mid-stream, restarted on the same data directory. Every SET that got a 202 must be in the log
//! exactly once, in the order its sender saw the 202s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::support::process::{write_config, HubProcess};
use crate::support::*;

const SENDERS: usize = 8;
const PER_SENDER: usize = 60;

/// POSTs one SET to the hub's `idp` source; the status.
async fn ingest(client: &reqwest::Client, base: &str, set: &str) -> u16 {
    client
        .post(format!("{base}/ingest/idp"))
        .header("content-type", "application/secevent+jwt")
        .body(set.to_owned())
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

async fn all_events(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let page: Value = client
            .get(format!("{base}/events?since={since}&limit=1000"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("events")
            .json()
            .await
            .expect("json");
        let events = page["events"].as_array().cloned().expect("array");
        if events.is_empty() {
            return out;
        }
        since = page["next"].as_u64().expect("next");
        out.extend(events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_set_survives_kill_9_exactly_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = es256();
    let config = write_config(dir.path(), &key, "");
    let hub = HubProcess::start(&config, dir.path());
    let base = hub.base();
    let client = reqwest::Client::new();

    let sets: Vec<Vec<String>> = (0..SENDERS)
        .map(|_| {
            (0..PER_SENDER)
                .map(|_| key.sign(&session_revoked()).expect("sign"))
                .collect()
        })
        .collect();
    let acked_count = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for (s, batch) in sets.iter().cloned().enumerate() {
        let (client, base, acked_count) = (client.clone(), base.clone(), acked_count.clone());
        senders.spawn(async move {
            let mut acked = Vec::new();
            for set in batch {
                let r = client
                    .post(format!("{base}/ingest/idp"))
                    .header("content-type", "application/secevent+jwt")
                    .body(set.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        acked.push(jti_of(&set));
                        acked_count.fetch_add(1, Ordering::SeqCst);
                    }
                    // Refused or cut off by the crash: not acknowledged, so no promise was made.
                    _ => break,
                }
            }
            (s, acked)
        });
    }
    // Kill mid-stream: once a good share has been acknowledged but before all could be.
    while acked_count.load(Ordering::SeqCst) < SENDERS * PER_SENDER / 3 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    hub.kill9();
    let mut acked_by_sender = HashMap::new();
    while let Some(r) = senders.join_next().await {
        let (s, acked) = r.expect("sender");
        acked_by_sender.insert(s, acked);
    }
    let total_acked: usize = acked_by_sender.values().map(Vec::len).sum();
    assert!(total_acked >= SENDERS * PER_SENDER / 3);

    let hub = HubProcess::start(&config, dir.path());
    let events = all_events(&client, &hub.base()).await;
    // Positions are dense from 1 and strictly increasing.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["position"].as_u64(), Some(i as u64 + 1));
    }
    let mut position_of = HashMap::new();
    for e in &events {
        let jti = e["jti"].as_str().expect("jti").to_owned();
        assert!(
            position_of
                .insert(jti, e["position"].as_u64().expect("pos"))
                .is_none(),
            "a jti is stored twice"
        );
    }
    for acked in acked_by_sender.values() {
        let positions: Vec<u64> = acked
            .iter()
            .map(|jti| {
                *position_of
                    .get(jti)
                    .unwrap_or_else(|| panic!("acknowledged SET {jti} was lost"))
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "one sender's SETs out of order"
        );
    }

    // The de-duplication index survived too: redelivering everything appends nothing.
    let before = events.len();
    for batch in &sets {
        for set in batch.iter().take(5) {
            assert_eq!(ingest(&client, &hub.base(), set).await, 202);
        }
    }
    let after = all_events(&client, &hub.base()).await.len();
    let fresh: usize = acked_by_sender
        .values()
        .map(|a| 5usize.saturating_sub(a.len().min(5)))
        .sum();
    assert!(
        after <= before + fresh,
        "redelivered SETs were appended again"
    );
    hub.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_a_group_commit_keeps_the_batch_whole_and_every_acknowledged_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = es256();
    let config = write_config(dir.path(), &key, "");
    let mark = dir.path().join("commit-in-flight");
    let mark_env = mark.to_str().expect("utf-8 path");
    // Every batch pauses two seconds between its journal write and its sync, saying which
    // positions it carries: the kill below lands inside a commit, not between two.
    let hub = HubProcess::start_env(
        &config,
        dir.path(),
        &[
            ("SSF_FAULT_COMMIT_PAUSE_MS", "2000"),
            ("SSF_FAULT_COMMIT_MARK", mark_env),
        ],
    );
    let base = hub.base();
    let client = reqwest::Client::new();
    let sets: Vec<String> = (0..SENDERS * 4)
        .map(|_| key.sign(&session_revoked()).expect("sign"))
        .collect();
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut senders = tokio::task::JoinSet::new();
    for chunk in sets.chunks(4) {
        let (client, base, acked, chunk) =
            (client.clone(), base.clone(), acked.clone(), chunk.to_vec());
        senders.spawn(async move {
            for set in chunk {
                match client
                    .post(format!("{base}/ingest/idp"))
                    .header("content-type", "application/secevent+jwt")
                    .body(set.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => acked.lock().expect("lock").push(jti_of(&set)),
                    _ => break,
                }
            }
        });
    }
    // Once one batch is durable and acknowledged, and the next is inside its commit: kill.
    let in_flight = loop {
        if !acked.lock().expect("lock").is_empty() {
            if let Ok(text) = std::fs::read_to_string(&mark) {
                if let Some((first, last)) = text.split_once(' ') {
                    let range = (
                        first.parse::<u64>().expect("first"),
                        last.parse::<u64>().expect("last"),
                    );
                    hub.kill9();
                    break range;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    while senders.join_next().await.is_some() {}
    let acked = acked.lock().expect("lock").clone();

    let hub = HubProcess::start(&config, dir.path());
    let events = all_events(&client, &hub.base()).await;
    let positions: Vec<u64> = events
        .iter()
        .map(|e| e["position"].as_u64().expect("pos"))
        .collect();
    assert_eq!(
        positions,
        (1..=positions.len() as u64).collect::<Vec<_>>(),
        "dense from 1"
    );
    let stored: HashMap<String, u64> = events
        .iter()
        .map(|e| {
            (
                e["jti"].as_str().expect("jti").to_owned(),
                e["position"].as_u64().expect("pos"),
            )
        })
        .collect();
    assert_eq!(stored.len(), events.len(), "a jti is stored twice");
    for jti in &acked {
        let p = stored
            .get(jti)
            .unwrap_or_else(|| panic!("acknowledged SET {jti} was lost"));
        assert!(
            *p < in_flight.0,
            "a SET of the unsynced batch was acknowledged"
        );
    }
    // The interrupted batch is all there (its journal write reached the OS) or not at all.
    let head = positions.len() as u64;
    assert!(
        head == in_flight.0 - 1 || head == in_flight.1,
        "the batch {in_flight:?} survived in part: head {head}"
    );
    // Whatever survived, sending everything again appends only what is missing, once.
    for set in &sets {
        assert_eq!(ingest(&client, &hub.base(), set).await, 202);
    }
    let after = all_events(&client, &hub.base()).await;
    assert_eq!(
        after.len(),
        sets.len(),
        "every SET exactly once after the resend"
    );
    hub.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_delivery_resumes_after_kill_9_with_no_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = es256();
    // One SET at a time, so the first arrivals are in log order (the window's own kill -9
    // test is in `window.rs`).
    let config = write_config(
        dir.path(),
        &key,
        "allow_private_targets = [\"127.0.0.0/8\"]\nretry_initial_backoff_ms = 20\npush_max_in_flight = 1",
    );
    let rx = TestReceiver::start(|_, _| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        (202, vec![], String::new())
    })
    .await;
    let hub = HubProcess::start(&config, dir.path());
    let client = reqwest::Client::new();
    let receiver: Value = client
        .post(format!("{}/admin/receivers", hub.base()))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "gw", "audience": "https://gw.example.test"}))
        .send()
        .await
        .expect("receiver")
        .json()
        .await
        .expect("json");
    let token = receiver["token"].as_str().expect("token").to_owned();
    let r = client
        .post(format!("{}/ssf/streams", hub.base()))
        .bearer_auth(&token)
        .json(&serde_json::json!({"events_requested": [SESSION_REVOKED],
            "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": rx.url()}}))
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), 201);
    for _ in 0..40 {
        let r = client
            .post(format!("{}/ingest/idp", hub.base()))
            .header("content-type", "application/secevent+jwt")
            .body(key.sign(&session_revoked()).expect("sign"))
            .send()
            .await
            .expect("ingest");
        assert_eq!(r.status(), 202);
    }
    rx.wait_for("some deliveries", |got| got.len() >= 8).await;
    hub.kill9();
    let delivered_before = rx.received().len();
    assert!(delivered_before < 40, "the crash came mid-delivery");
    let _hub = HubProcess::start(&config, dir.path());
    let positions = |got: &[Received]| -> Vec<u64> {
        got.iter()
            .filter_map(|r| r.claims["jti"].as_str()?.rsplit('.').next()?.parse().ok())
            .collect()
    };
    rx.wait_for("all forty events", |got| {
        positions(got)
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 40
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    let firsts: Vec<u64> = positions(&rx.received())
        .into_iter()
        .filter(|p| seen.insert(*p))
        .collect();
    assert_eq!(
        firsts,
        (1..=40).collect::<Vec<u64>>(),
        "every position once, first in order"
    );
}
