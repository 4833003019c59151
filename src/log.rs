//! The ordered, durable event log as the hub uses it: group commit over a storage backend
//! (concurrent appends share one durable write) and head notifications for the log's followers.
//! What a record means, and where it is stored, are left to `normalize` and `storage`.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

pub use crate::storage::{Append, Appended, Entry, EventLog, Position, StorageError as LogError};

/// Most appends one durable write carries. Bounded so one flush cannot grow without limit.
const MAX_BATCH: usize = 1024;

type Pending = (Append, oneshot::Sender<Result<Appended, Arc<LogError>>>);

/// The log as the rest of the hub uses it: group commit over a backend, plus head notifications.
#[derive(Debug, Clone)]
pub struct Log {
    backend: Arc<dyn EventLog>,
    appends: mpsc::Sender<Pending>,
    head: watch::Receiver<Position>,
    committer: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    closing: tokio_util::sync::CancellationToken,
}

impl Log {
    /// Starts the committer task; it runs until every `Log` clone is dropped.
    pub fn start(backend: Arc<dyn EventLog>) -> Log {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let (head_tx, head) = watch::channel(backend.head());
        let closing = tokio_util::sync::CancellationToken::new();
        let committer = tokio::spawn(commit_loop(backend.clone(), rx, head_tx, closing.clone()));
        Log {
            backend,
            appends: tx,
            head,
            committer: Arc::new(std::sync::Mutex::new(Some(committer))),
            closing,
        }
    }

    /// Stops accepting appends and waits until the committer has written what it had and let go
    /// of the backend (so its directory can be opened again in the same process). Appends
    /// through other clones of this `Log` fail with [`LogError::Closed`] afterwards.
    pub async fn close(self) {
        let Log {
            backend,
            appends,
            committer,
            closing,
            ..
        } = self;
        drop(appends);
        drop(backend);
        closing.cancel();
        let handle = committer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Appends one record and resolves once it is durable (or found to be a repeat).
    pub async fn append(&self, append: Append) -> Result<Appended, LogError> {
        let (tx, rx) = oneshot::channel();
        self.appends
            .send((append, tx))
            .await
            .map_err(|_| LogError::Closed)?;
        match rx.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(LogError::Storage(e.to_string())),
            Err(_) => Err(LogError::Closed),
        }
    }

    /// Up to `limit` durable records after `after`. Records a batch has written but not yet
    /// made durable are not returned: nothing downstream may act on what a crash could undo.
    pub async fn read(&self, after: Position, limit: usize) -> Result<Vec<Entry>, LogError> {
        let head = self.head();
        let mut entries = self.backend.read(after, limit).await?;
        entries.retain(|e| e.position <= head);
        Ok(entries)
    }

    /// Position of the last durable record.
    pub fn head(&self) -> Position {
        *self.head.borrow()
    }

    /// A receiver that changes whenever new records become durable.
    pub fn subscribe(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    pub async fn prune_keys(&self, now: u64) -> Result<usize, LogError> {
        self.backend.prune_keys(now).await
    }

    /// The earliest position still kept; retention removed everything before it.
    pub fn earliest(&self) -> Position {
        self.backend.earliest()
    }

    /// Removes the records at or before `through` (retention); returns how many.
    pub async fn remove_through(&self, through: Position) -> Result<u64, LogError> {
        self.backend.remove_through(through).await
    }

    /// Bytes the records take, as the backend estimates them.
    pub fn approximate_bytes(&self) -> u64 {
        self.backend.approximate_bytes()
    }
}

/// Drains whatever appends are waiting, writes them as one batch, answers each caller. While a
/// batch is being made durable the next one accumulates, which is what makes this group commit.
#[tracing::instrument(name = "log_committer", skip_all)]
async fn commit_loop(
    backend: Arc<dyn EventLog>,
    mut rx: mpsc::Receiver<Pending>,
    head: watch::Sender<Position>,
    closing: tokio_util::sync::CancellationToken,
) {
    let mut waiting: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    loop {
        // Appends already queued are written before a close takes effect.
        let received = tokio::select! {
            biased;
            n = rx.recv_many(&mut waiting, MAX_BATCH) => n,
            _ = closing.cancelled() => 0,
        };
        if received == 0 {
            break;
        }
        let (batch, replies): (Vec<Append>, Vec<_>) = waiting.drain(..).unzip();
        let started = std::time::Instant::now();
        let size = batch.len();
        match backend.append_batch(batch).await {
            Ok(outcomes) => {
                crate::telemetry::record_log_commit(size, started.elapsed());
                head.send_replace(backend.head());
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = size, "log append failed");
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
