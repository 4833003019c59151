//! One contract, every backend: each test is a function over the storage seams (`EventLog`,
//! `Tables`), run against the in-memory backend and the embedded engine (in a real temporary
//! directory, reopened where it matters) and, with the `kafka` feature, Kafka (tests/it/kafka.rs).

use std::sync::Arc;

use ssf_hub::log::Log;
use ssf_hub::storage::{Append, Appended, Budgets, EventLog, Op, Storage, Tables};

const BUDGETS: Budgets = Budgets {
    cache_bytes: 4 << 20,
    write_buffer_bytes: 4 << 20,
};

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

async fn retention_removes_a_prefix_and_never_reuses_positions(log: Arc<dyn EventLog>) {
    assert_eq!(log.earliest(), 1);
    log.append_batch(
        (1..=10)
            .map(|i| append(&format!("k{i}"), "r", far()))
            .collect(),
    )
    .await
    .expect("append");
    assert_eq!(log.remove_through(4).await.expect("remove"), 4);
    assert_eq!(log.earliest(), 5);
    assert_eq!(log.read(0, 100).await.expect("read")[0].position, 5);
    // Removing what is gone already, or past the head, removes only what exists.
    assert_eq!(log.remove_through(3).await.expect("remove"), 0);
    assert_eq!(log.remove_through(99).await.expect("remove"), 6);
    assert_eq!((log.earliest(), log.head()), (11, 10));
    assert!(log.read(0, 100).await.expect("read").is_empty());
    let out = log
        .append_batch(vec![append("k11", "r", far())])
        .await
        .expect("append");
    assert_eq!(out, vec![Appended::New(11)]);
    assert_eq!(log.earliest(), 11);
}

async fn a_key_repeated_within_one_batch_is_stored_once(log: Arc<dyn EventLog>) {
    let out = log
        .append_batch(vec![append("a", "1", far()), append("a", "2", far())])
        .await
        .expect("append");
    assert_eq!(out, vec![Appended::New(1), Appended::Duplicate(1)]);
    assert_eq!(log.read(0, 10).await.expect("read").len(), 1);
}

fn tables_get_put_delete_and_keep_tables_apart(tables: Arc<dyn Tables>) {
    assert_eq!(tables.get("a", b"k").expect("get"), None);
    tables.put("a", b"k", b"1").expect("put");
    tables.put("b", b"k", b"2").expect("put");
    assert_eq!(
        tables.get("a", b"k").expect("get").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        tables.get("b", b"k").expect("get").as_deref(),
        Some(&b"2"[..])
    );
    tables.put("a", b"k", b"3").expect("overwrite");
    assert_eq!(
        tables.get("a", b"k").expect("get").as_deref(),
        Some(&b"3"[..])
    );
    tables.delete("a", b"k").expect("delete");
    tables
        .delete("a", b"never")
        .expect("deleting a missing key is fine");
    assert_eq!(tables.get("a", b"k").expect("get"), None);
    assert_eq!(
        tables.get("b", b"k").expect("get").as_deref(),
        Some(&b"2"[..])
    );
}

fn tables_scan_in_key_order_within_prefix_from_start(tables: Arc<dyn Tables>) {
    let keys: [&[u8]; 6] = [b"s1\0b", b"s1\0a", b"s2\0a", b"s1", b"s1\0c", b"r\0z"];
    for k in keys {
        tables.put("t", k, k).expect("put");
    }
    let got = |prefix: &[u8], start: &[u8], limit| -> Vec<Vec<u8>> {
        tables
            .scan("t", prefix, start, limit)
            .expect("scan")
            .into_iter()
            .map(|(k, v)| {
                assert_eq!(k, v);
                k
            })
            .collect()
    };
    let v = |ks: &[&[u8]]| ks.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
    assert_eq!(got(b"s1\0", b"", 10), v(&[b"s1\0a", b"s1\0b", b"s1\0c"]));
    assert_eq!(got(b"s1\0", b"s1\0b", 10), v(&[b"s1\0b", b"s1\0c"]));
    assert_eq!(got(b"s1\0", b"", 2), v(&[b"s1\0a", b"s1\0b"]));
    assert_eq!(got(b"", b"s1\0c", 10), v(&[b"s1\0c", b"s2\0a"]));
    assert_eq!(got(b"", b"", 100).len(), 6);
    assert!(got(b"x", b"", 10).is_empty());
    assert!(tables.scan("empty", b"", b"", 10).expect("scan").is_empty());
}

fn tables_write_batches_across_tables(tables: Arc<dyn Tables>) {
    tables.put("a", b"gone", b"x").expect("put");
    tables
        .write(vec![
            Op::put("a", b"1".to_vec(), b"x".to_vec()),
            Op::put("b", b"2".to_vec(), b"y".to_vec()),
            Op::delete("a", b"gone".to_vec()),
            Op::put("a", b"1".to_vec(), b"z".to_vec()),
        ])
        .expect("write");
    tables.sync().expect("sync");
    assert_eq!(
        tables.get("a", b"1").expect("get").as_deref(),
        Some(&b"z"[..])
    );
    assert_eq!(
        tables.get("b", b"2").expect("get").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(tables.get("a", b"gone").expect("get"), None);
}

macro_rules! conformance {
    (log: $($log:ident),+; tables: $($tables:ident),+) => {
        mod memory {
            use super::*;
            $( #[tokio::test] async fn $log() { super::$log(Storage::memory().log).await } )+
            $( #[test] fn $tables() { super::$tables(Storage::memory().tables) } )+
        }
        mod embedded {
            use super::*;
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $log() {
                let dir = tempfile::tempdir().expect("tempdir");
                let storage = Storage::embedded(dir.path(), &dir.path().join("db"), BUDGETS)
                    .expect("open");
                super::$log(storage.log).await
            } )+
            $( #[test] fn $tables() {
                let dir = tempfile::tempdir().expect("tempdir");
                let storage = Storage::embedded(dir.path(), &dir.path().join("db"), BUDGETS)
                    .expect("open");
                super::$tables(storage.tables)
            } )+
        }
        // Each test on topics of its own, on the broker scripts/test.sh starts.
        #[cfg(feature = "kafka")]
        mod kafka {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $log() {
                super::$log(crate::kafka::fresh().log).await
            } )+
            $( #[test] fn $tables() { super::$tables(crate::kafka::fresh().tables) } )+
        }
    };
}

conformance!(
    log:
    positions_are_dense_ordered_and_readable,
    repeated_keys_are_reported_not_stored,
    expired_keys_are_forgotten,
    group_commit_keeps_every_concurrent_append,
    retention_removes_a_prefix_and_never_reuses_positions,
    a_key_repeated_within_one_batch_is_stored_once;
    tables:
    tables_get_put_delete_and_keep_tables_apart,
    tables_scan_in_key_order_within_prefix_from_start,
    tables_write_batches_across_tables
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_keeps_records_keys_head_and_tables_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || Storage::embedded(dir.path(), &dir.path().join("db"), BUDGETS).expect("open");
    {
        let s = open();
        s.log
            .append_batch(
                (1..=3)
                    .map(|i| append(&format!("k{i}"), "r", far()))
                    .collect(),
            )
            .await
            .expect("append");
        s.log.remove_through(3).await.expect("remove");
        s.tables.put("t", b"k", b"v").expect("put");
        s.tables.sync().expect("sync");
    }
    let s = open();
    // Retention removed every record; the head still says where positions continue.
    assert_eq!((s.log.head(), s.log.earliest()), (3, 4));
    assert_eq!(
        s.tables.get("t", b"k").expect("get").as_deref(),
        Some(&b"v"[..])
    );
    let out = s
        .log
        .append_batch(vec![append("k1", "x", far()), append("k4", "4", far())])
        .await
        .expect("append");
    assert_eq!(out, vec![Appended::Duplicate(1), Appended::New(4)]);
}

#[test]
fn a_data_directory_from_the_sled_era_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    // What sled 0.34 leaves in a database directory.
    let old = dir.path().join("state");
    std::fs::create_dir_all(&old).expect("mkdir");
    std::fs::write(old.join("conf"), b"segment_size: 524288").expect("conf");
    std::fs::write(old.join("db"), [0u8; 64]).expect("db");
    let err = Storage::embedded(dir.path(), &dir.path().join("db"), BUDGETS)
        .expect_err("sled state must not be silently replaced");
    let msg = err.to_string();
    assert!(
        msg.contains("sled") && msg.contains(&old.display().to_string()),
        "{msg}"
    );
    assert!(
        !dir.path().join("db").exists(),
        "nothing new is created beside it"
    );
}

#[tokio::test]
async fn the_hub_refuses_to_start_on_a_sled_era_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = crate::support::base_config(dir.path());
    let old = config.data_dir.join("log");
    std::fs::create_dir_all(&old).expect("mkdir");
    std::fs::write(old.join("conf"), b"segment_size: 524288").expect("conf");
    std::fs::write(old.join("db"), [0u8; 64]).expect("db");
    let err = ssf_hub::app::spawn(config)
        .await
        .expect_err("a sled data directory must stop the hub");
    let msg = err.to_string();
    assert!(
        msg.contains("sled") && msg.contains("move the old data"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_segments_are_read_across_and_dropped_whole_by_retention() {
    // The embedded log keeps 65,536 positions per segment; 140,000 records span three.
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || Storage::embedded(dir.path(), &dir.path().join("db"), BUDGETS).expect("open");
    {
        let s = open();
        for chunk in 0..28 {
            let batch = (0..5000)
                .map(|i| append(&format!("k{chunk}-{i}"), "r", far()))
                .collect();
            s.log.append_batch(batch).await.expect("append");
        }
        assert_eq!(s.log.head(), 140_000);
        let across: Vec<u64> = s
            .log
            .read(131_068, 8)
            .await
            .expect("read")
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(across, (131_069..=131_076).collect::<Vec<_>>());
        assert_eq!(s.log.remove_through(70_000).await.expect("remove"), 70_000);
        assert_eq!(s.log.earliest(), 70_001);
        let first = s.log.read(0, 1).await.expect("read");
        assert_eq!(first[0].position, 70_001);
    }
    let s = open();
    assert_eq!((s.log.head(), s.log.earliest()), (140_000, 70_001));
    assert_eq!(
        s.log.read(69_999, 1).await.expect("read")[0].position,
        70_001
    );
    let out = s
        .log
        .append_batch(vec![
            append("k0-0", "again", far()),
            append("new", "n", far()),
        ])
        .await
        .expect("append");
    assert_eq!(out, vec![Appended::Duplicate(1), Appended::New(140_001)]);
}
