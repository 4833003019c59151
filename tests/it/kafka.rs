//! The Kafka backend against a real broker (`tansu`, started by scripts/test.sh, its address in
//! `SSF_TEST_KAFKA`): the storage conformance suite (tests/it/storage_conformance.rs lists it),
//! a rebuild of log and tables from the topics alone, and a real hub that loses its data
//! directory and comes back with its streams, events and poll state. Every test uses a topic
//! prefix of its own, so tests never see each other's records.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use ssf_hub::storage::{Append, Appended, EventLog, KafkaSettings, Op, Storage, Tables};

use crate::support::*;

/// The test broker's address. With the `kafka` feature on, a missing broker is a failure, never
/// a skipped test: CI must exercise Kafka every time.
pub fn broker() -> String {
    std::env::var("SSF_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "SSF_TEST_KAFKA is not set: the `kafka` feature's tests need a broker. Run \
             `bash scripts/test.sh` (it starts tansu), or start one and export \
             SSF_TEST_KAFKA=127.0.0.1:PORT"
        )
    })
}

/// A topic prefix no other test (or earlier run against the same broker) uses.
pub fn prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

pub fn settings(prefix: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: broker(),
        events_topic: format!("{prefix}.events"),
        state_topic: format!("{prefix}.state"),
        create_topics: true,
        replication_factor: 1,
        linger_ms: 1,
        delivery_timeout_ms: 10_000,
        startup_timeout_ms: 60_000,
        properties: Vec::new(),
        heartbeat_ms: 200,
        lease_ms: 2000,
    }
}

/// What every hub in Kafka mode needs besides `log.url`: a shared key-encryption key, short
/// heartbeats (so tests see replicas come and go quickly).
pub fn kafka_mode(c: &mut ssf_hub::config::Config) {
    c.log.kafka.linger_ms = 1;
    c.log.kafka.heartbeat_ms = 200;
    c.log.kafka.lease_ms = 2000;
    c.log.kafka.key_encryption_key = Some(ssf_hub::config::Secret::new(KEK));
}

/// 32 bytes of base64 (`openssl rand -base64 32`), shared by the tests' replicas.
pub const KEK: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

/// Fresh Kafka storage on fresh topics.
pub fn fresh() -> Storage {
    Storage::kafka(settings(&prefix())).expect("open kafka storage")
}

fn append(key: &str, record: &str, expires_at: u64) -> Append {
    Append {
        key: key.as_bytes().to_vec(),
        key_expires_at: expires_at,
        record: record.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_tables_rebuild_from_the_topics_alone() {
    let p = prefix();
    let far = ssf_hub::unix_now() + 3600;
    let past = ssf_hub::unix_now() - 10;
    {
        let s = Storage::kafka(settings(&p)).expect("open");
        let out = s
            .log
            .append_batch(vec![
                append("a", "r1", far),
                append("b", "r2", far),
                append("old", "r3", past),
                append("c", "r4", far),
            ])
            .await
            .expect("append");
        assert_eq!(out, (1..=4).map(Appended::New).collect::<Vec<_>>());
        assert_eq!(s.log.remove_through(1).await.expect("remove"), 1);
        s.tables.put("streams", b"s1", b"v1").expect("put");
        s.tables
            .write(vec![
                Op::put("streams", b"s2".to_vec(), b"v2".to_vec()),
                Op::put("cursors", b"s2".to_vec(), b"7".to_vec()),
                Op::delete("streams", b"s1".to_vec()),
            ])
            .expect("write");
        s.tables.put("streams", b"s3", b"v3").expect("put");
        s.tables.delete("streams", b"s3").expect("delete");
        s.tables.sync().expect("sync");
    }
    let s = Storage::kafka(settings(&p)).expect("reopen");
    assert_eq!((s.log.earliest(), s.log.head()), (2, 4));
    let read = s.log.read(0, 10).await.expect("read");
    assert_eq!(
        read.iter()
            .map(|e| (e.position, e.record.as_slice()))
            .collect::<Vec<_>>(),
        vec![(2, &b"r2"[..]), (3, b"r3"), (4, b"r4")]
    );
    // Live keys come back with their positions (also for a record retention removed); the
    // expired one is forgotten, so its record may be stored again.
    let out = s
        .log
        .append_batch(vec![
            append("a", "x", far),
            append("c", "x", far),
            append("old", "again", far),
        ])
        .await
        .expect("append");
    assert_eq!(
        out,
        vec![
            Appended::Duplicate(1),
            Appended::Duplicate(4),
            Appended::New(5)
        ]
    );
    let tables: Arc<dyn Tables> = s.tables.clone();
    assert_eq!(
        tables.prefix("streams", b"").expect("scan"),
        vec![(b"s2".to_vec(), b"v2".to_vec())]
    );
    assert_eq!(
        tables.get("cursors", b"s2").expect("get").as_deref(),
        Some(&b"7"[..])
    );
}

#[test]
fn writes_not_yet_synced_survive_a_clean_close() {
    // Dropping a librdkafka producer purges its queue; closing the tables must deliver first.
    let p = prefix();
    {
        // A long linger keeps the writes in the producer's queue when the tables close.
        let mut lingering = settings(&p);
        lingering.linger_ms = 2000;
        let s = Storage::kafka(lingering).expect("open");
        for i in 0..50u32 {
            s.tables
                .put("cursors", &i.to_be_bytes(), b"v")
                .expect("put");
        }
    }
    let s = Storage::kafka(settings(&p)).expect("reopen");
    let tables: Arc<dyn Tables> = s.tables.clone();
    assert_eq!(tables.prefix("cursors", b"").expect("scan").len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_named_with_the_command_that_creates_it() {
    let p = prefix();
    let mut s = settings(&p);
    s.create_topics = false;
    let err = Storage::kafka(s)
        .expect_err("topics are missing")
        .to_string();
    assert!(err.contains(&format!("{p}.events")), "{err}");
    assert!(
        err.contains("kafka-topics.sh") && err.contains("--partitions 1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_latency_through_the_broker() {
    // A measurement printed for the report, not a timed assertion (shared, noisy machine).
    let log: Arc<dyn EventLog> = fresh().log;
    let far = ssf_hub::unix_now() + 3600;
    let n = 50;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        log.append_batch(vec![append(&format!("k{i}"), &"x".repeat(1024), far)])
            .await
            .expect("append");
        took.push(t.elapsed());
    }
    took.sort();
    eprintln!(
        "kafka append of one 1 KiB record, {n} sequential: p50 {:?}, p90 {:?}, max {:?}",
        took[n / 2],
        took[n * 9 / 10],
        took[n - 1]
    );
    assert_eq!(log.head(), n as u64);
}

async fn poll(hub: &TestHub, id: &str, token: &str, body: Value) -> Reply {
    hub.call("POST", &format!("/ssf/poll/{id}"), token, Some(body))
        .await
}

/// A hub on Kafka: a SET is ingested (202) and polled (not acknowledged); the hub stops, its data
/// directory is wiped, and a new hub on the same topics serves the stream, the event and the
/// pending poll state again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_with_an_empty_data_directory_rebuilds_from_kafka() {
    let key = es256();
    let keys = tempfile::tempdir().expect("tempdir");
    let jwks = write_jwks(keys.path(), "idp.jwks.json", &[&key]);
    let url = format!("kafka://{}/{}", broker(), prefix());
    let hub = TestHub::start(|_, c| {
        let mut s = source("idp");
        s.jwks_file = Some(jwks.clone());
        c.sources = vec![s];
        c.log.url = url.clone();
        kafka_mode(c);
    })
    .await;
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
    let id = r.json()["stream_id"].as_str().expect("id").to_owned();
    let set = session_revoked();
    let jti = set["jti"].as_str().expect("jti").to_owned();
    hub.push("idp", key.sign(&set).expect("sign"))
        .await
        .assert_accepted();

    let revoked = |r: &Reply| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["sets"]
            .as_object()
            .expect("sets")
            .iter()
            .filter(|(_, s)| {
                decode_claims(s.as_str().expect("SET"))["events"]
                    .get(SESSION_REVOKED)
                    .is_some()
            })
            .map(|(k, _)| k.clone())
            .collect()
    };
    let first = revoked(&poll(&hub, &id, &token, json!({"returnImmediately": true})).await);
    assert_eq!(first.len(), 1, "the SET is delivered by poll");

    // Stop, wipe the data directory, start again on the same topics.
    let TestHub {
        running,
        dir,
        config,
        ..
    } = hub;
    running.stop().await.expect("clean stop");
    for entry in std::fs::read_dir(dir.path()).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("wipe");
        } else {
            std::fs::remove_file(&path).expect("wipe");
        }
    }
    let running = ssf_hub::app::spawn(config.clone())
        .await
        .expect("hub starts again");
    let hub = TestHub {
        api: Api::at(format!("http://{}", running.addr)),
        running,
        dir,
        config,
    };

    let r = hub
        .call("GET", &format!("/ssf/streams?stream_id={id}"), &token, None)
        .await;
    assert_eq!(r.status, 200, "the stream survived: {}", r.body);
    let events = hub.events().await;
    assert!(
        events.iter().any(|e| e.to_string().contains(&jti)),
        "the ingested event is in the rebuilt log"
    );
    // Not acknowledged before the wipe: the same SET is pending, then acknowledged for good.
    let again = revoked(&poll(&hub, &id, &token, json!({"returnImmediately": true})).await);
    assert_eq!(again, first, "the unacknowledged SET is polled again");
    let r = poll(
        &hub,
        &id,
        &token,
        json!({"returnImmediately": true, "ack": first}),
    )
    .await;
    assert!(revoked(&r).is_empty(), "{}", r.body);
    let hub = hub.restart().await;
    let r = poll(&hub, &id, &token, json!({"returnImmediately": true})).await;
    assert!(
        revoked(&r).is_empty(),
        "the acknowledgement is in Kafka: {}",
        r.body
    );
    hub.stop().await;
}
