//! One contract, every backend: each test is a generic function over `EventLog`, run against the
//! in-memory and the sled backends (sled in a real temporary directory, reopened where it
//! matters).

use std::sync::Arc;

use ssf_hub::log::{Append, Appended, EventLog, Log, MemoryLog, SledLog};

fn append(key: &str, record: &str, expires_at: u64) -> Append {
    Append {
        key: key.as_bytes().to_vec(),
        key_expires_at: expires_at,
        record: record.as_bytes().to_vec(),
    }
}

fn far() -> u64 {
    ssf_hub::unix_now() + 3600
}

async fn positions_are_dense_ordered_and_readable(log: Arc<dyn EventLog>) {
    assert_eq!(log.head(), 0);
    let out = log
        .append_batch(
            (1..=5)
                .map(|i| append(&format!("k{i}"), &format!("r{i}"), far()))
                .collect(),
        )
        .await
        .expect("append");
    assert_eq!(out, (1..=5).map(Appended::New).collect::<Vec<_>>());
    assert_eq!(log.head(), 5);
    let all = log.read(0, 100).await.expect("read");
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(all[2].record, b"r3");
    let page = log.read(2, 2).await.expect("read");
    assert_eq!(
        page.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(log.read(5, 10).await.expect("read").is_empty());
    assert!(log.read(u64::MAX, 10).await.expect("read").is_empty());
}

async fn repeated_keys_are_reported_not_stored(log: Arc<dyn EventLog>) {
    let out = log
        .append_batch(vec![
            append("a", "1", far()),
            append("a", "again", far()),
            append("b", "2", far()),
        ])
        .await
        .expect("append");
    assert_eq!(
        out,
        vec![Appended::New(1), Appended::Duplicate(1), Appended::New(2)]
    );
    let out = log
        .append_batch(vec![append("b", "x", far())])
        .await
        .expect("append");
    assert_eq!(out, vec![Appended::Duplicate(2)]);
    assert_eq!(log.read(0, 10).await.expect("read").len(), 2);
}

async fn expired_keys_are_forgotten(log: Arc<dyn EventLog>) {
    let past = ssf_hub::unix_now() - 10;
    log.append_batch(vec![append("old", "1", past), append("live", "2", far())])
        .await
        .expect("append");
    assert_eq!(log.prune_keys(ssf_hub::unix_now()).await.expect("prune"), 1);
    let out = log
        .append_batch(vec![append("old", "3", far()), append("live", "4", far())])
        .await
        .expect("append");
    assert_eq!(out, vec![Appended::New(3), Appended::Duplicate(2)]);
}

async fn group_commit_keeps_every_concurrent_append(log: Arc<dyn EventLog>) {
    let log = Log::start(log);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let log = log.clone();
        tasks.spawn(async move {
            log.append(append(&format!("k{i}"), &format!("r{i}"), far()))
                .await
        });
    }
    let mut positions = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.expect("task").expect("append") {
            Appended::New(p) => positions.push(p),
            Appended::Duplicate(p) => panic!("unexpected duplicate at {p}"),
        }
    }
    positions.sort();
    assert_eq!(positions, (1..=500).collect::<Vec<_>>());
    assert_eq!(log.head(), 500);
    assert_eq!(*log.subscribe().borrow(), 500);
}

macro_rules! conformance {
    ($($name:ident),+) => {
        mod memory {
            use super::*;
            $( #[tokio::test] async fn $name() { super::$name(Arc::new(MemoryLog::new())).await } )+
        }
        mod sled {
            use super::*;
            $( #[tokio::test] async fn $name() {
                let dir = tempfile::tempdir().expect("tempdir");
                let log = SledLog::open(dir.path(), 8 << 20).expect("open");
                super::$name(Arc::new(log)).await
            } )+
        }
    };
}

conformance!(
    positions_are_dense_ordered_and_readable,
    repeated_keys_are_reported_not_stored,
    expired_keys_are_forgotten,
    group_commit_keeps_every_concurrent_append
);

#[tokio::test]
async fn sled_keeps_records_keys_and_head_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = SledLog::open(dir.path(), 8 << 20).expect("open");
        log.append_batch(vec![append("a", "1", far()), append("b", "2", far())])
            .await
            .expect("append");
    }
    let log = SledLog::open(dir.path(), 8 << 20).expect("reopen");
    assert_eq!(log.head(), 2);
    let out = log
        .append_batch(vec![append("a", "x", far()), append("c", "3", far())])
        .await
        .expect("append");
    assert_eq!(out, vec![Appended::Duplicate(1), Appended::New(3)]);
}
