//! Durable flushes of the hub's state database (receivers, streams, cursors), group-committed:
//! one `fsync` covers every write staged before it started, however many streams ask at once.
//! Leaves what is written, and when to ask, to its callers.
//!
//! sled 0.34's `flush_async` deadlocks when several flushes are awaited at once
//! (spacejam/sled#1308, fixed only on an unreleased branch), which a hub with many push streams
//! does constantly; so flushes here are the blocking `flush` on the blocking pool, one at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Flusher {
    db: sled::Db,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Tickets handed to callers of `flush`, in order.
    requested: AtomicU64,
    /// Every ticket up to this one is durable.
    done: AtomicU64,
    running: tokio::sync::Mutex<()>,
}

impl Flusher {
    pub fn new(db: sled::Db) -> Flusher {
        Flusher {
            db,
            inner: Arc::default(),
        }
    }

    /// Returns once every write made before this call is durable.
    pub async fn flush(&self) -> sled::Result<()> {
        let f = &self.inner;
        let ticket = f.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let _running = f.running.lock().await;
        if f.done.load(Ordering::Acquire) >= ticket {
            // A flush that started after our writes finished while we waited for the lock.
            return Ok(());
        }
        let covers = f.requested.load(Ordering::Acquire);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| sled::Error::Io(std::io::Error::other(e)))??;
        f.done.fetch_max(covers, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_all_finish_and_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("open");
        let flusher = Flusher::new(db.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0u32..200 {
            let (db, flusher) = (db.clone(), flusher.clone());
            tasks.spawn(async move {
                db.insert(i.to_be_bytes(), &[1u8][..]).expect("insert");
                flusher.flush().await.expect("flush");
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task");
        }
        assert!(flusher.inner.done.load(Ordering::Acquire) >= 200);
        drop((db, flusher));
        let db = sled::open(dir.path()).expect("reopen");
        assert_eq!(db.len(), 200);
    }
}
