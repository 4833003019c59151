//! Durable syncs of the hub's state tables (receivers, streams, cursors), group-committed: one
//! `fdatasync` covers every write made before it started, however many streams ask at once, and
//! the blocking sync runs on the blocking pool, one at a time. Leaves what is written, and when
//! to ask, to its callers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::storage::{StorageError, Tables};

#[derive(Debug, Clone)]
pub struct Flusher {
    tables: Arc<dyn Tables>,
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
    pub fn new(tables: Arc<dyn Tables>) -> Flusher {
        Flusher {
            tables,
            inner: Arc::default(),
        }
    }

    /// Returns once every write made before this call is durable.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let f = &self.inner;
        let ticket = f.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let _running = f.running.lock().await;
        if f.done.load(Ordering::Acquire) >= ticket {
            // A flush that started after our writes finished while we waited for the lock.
            return Ok(());
        }
        let covers = f.requested.load(Ordering::Acquire);
        let tables = self.tables.clone();
        tokio::task::spawn_blocking(move || tables.sync())
            .await
            .map_err(|e| StorageError::Storage(e.to_string()))??;
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
        let budgets = crate::storage::Budgets {
            cache_bytes: 1 << 20,
            write_buffer_bytes: 1 << 20,
        };
        {
            let tables: Arc<dyn Tables> =
                Arc::new(crate::storage::Embedded::open(dir.path(), budgets, 1).expect("open"));
            let flusher = Flusher::new(tables.clone());
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0u32..200 {
                let (tables, flusher) = (tables.clone(), flusher.clone());
                tasks.spawn(async move {
                    tables.put("t", &i.to_be_bytes(), &[1]).expect("put");
                    flusher.flush().await.expect("flush");
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.expect("task");
            }
            assert!(flusher.inner.done.load(Ordering::Acquire) >= 200);
        }
        let tables: Arc<dyn Tables> =
            Arc::new(crate::storage::Embedded::open(dir.path(), budgets, 1).expect("reopen"));
        assert_eq!(tables.prefix("t", b"").expect("scan").len(), 200);
    }
}
