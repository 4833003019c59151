//! The journal: the ordered, durable log of normalized records as the hub uses it. Group commit
//! over a storage backend (concurrent appends share one durable write), the one codec of
//! [`Record`]s, a cache of recently appended or read records decoded once for every follower
//! (push and poll delivery, the revocation fold, the feeds), and head notifications that wake
//! them. What a record means is left to `normalize`; where bytes are kept, to `storage`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use crate::normalize::Record;
pub use crate::storage::{Append, Appended, Entry, EventLog, Position, StorageError as LogError};

/// How long records stay (`[log.retention]`); 0 means no bound of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub max_age_secs: u64,
    pub max_events: u64,
    pub sweep_secs: u64,
}

/// Most appends one durable write carries. Bounded so one flush cannot grow without limit.
const MAX_BATCH: usize = 1024;

/// One append waiting for the committer: the bytes, the decoded record to hand to followers
/// once it is durable (when the caller has one), and where to answer.
type Pending = (
    Append,
    Option<Record>,
    oneshot::Sender<Result<Appended, Arc<LogError>>>,
);

/// Runs in the committer on the records one batch made durable, in log order, before the head
/// announces them (see [`Log::after_commit`]).
/// The records are those it was given decoded (all of them, unless some appends came without
/// one), the position the last record of the batch, so a follower can tell a whole batch.
pub type AfterCommit = Box<dyn Fn(&[Arc<Record>], Position) + Send + Sync>;

#[derive(Default)]
struct AfterCommits(std::sync::RwLock<Vec<AfterCommit>>);

impl std::fmt::Debug for AfterCommits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterCommits")
    }
}

/// The log as the rest of the hub uses it: group commit over a backend, plus head notifications.
/// Cloning is one reference count: every request handler holds one.
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Arc<dyn EventLog>,
    appends: mpsc::Sender<Pending>,
    head: watch::Receiver<Position>,
    committer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    closing: tokio_util::sync::CancellationToken,
    recent: Arc<Recent>,
    after_commit: Arc<AfterCommits>,
    /// No other process appends to this log.
    sole_writer: bool,
}

impl Log {
    /// Starts the committer task; it runs until [`Log::close`] or every `Log` clone is dropped.
    pub fn start(backend: Arc<dyn EventLog>) -> Log {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let (head_tx, head) = watch::channel(backend.head());
        let head_tx = Arc::new(head_tx);
        let moves = backend.head_changes();
        let sole_writer = moves.is_none();
        if let Some(mut moved) = moves {
            // Other replicas append too: their records move the head as well.
            let head_tx = head_tx.clone();
            tokio::spawn(async move {
                while moved.changed().await.is_ok() {
                    let at = *moved.borrow_and_update();
                    advance(&head_tx, at);
                }
            });
        }
        let closing = tokio_util::sync::CancellationToken::new();
        let recent = Arc::<Recent>::default();
        let after_commit = Arc::<AfterCommits>::default();
        let committer = tokio::spawn(commit_loop(
            backend.clone(),
            recent.clone(),
            after_commit.clone(),
            rx,
            head_tx,
            closing.clone(),
        ));
        Log {
            inner: Arc::new(Inner {
                backend,
                appends: tx,
                head,
                committer: Mutex::new(Some(committer)),
                closing,
                recent,
                after_commit,
                sole_writer,
            }),
        }
    }

    /// Has the committer run `f` on every batch it makes durable that holds only records it
    /// was given decoded, before followers are woken. For followers that must see every record
    /// in order and are cheap (the revocation fold): doing it there saves each batch a wake-up
    /// and a hand-off. Only where this process is the log's sole writer (records of other
    /// replicas interleave otherwise); `false` when not registered.
    pub fn after_commit(&self, f: AfterCommit) -> bool {
        if !self.inner.sole_writer {
            return false;
        }
        let hooks = &self.inner.after_commit.0;
        hooks.write().unwrap_or_else(|p| p.into_inner()).push(f);
        true
    }

    /// Whether [`Log::after_commit`] followers are called (this process is the sole writer
    /// and one is registered): they then need not follow the head for new records.
    pub fn folds_on_commit(&self) -> bool {
        let hooks = &self.inner.after_commit.0;
        !hooks.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Stops accepting appends and waits until the committer has written what it had and let go
    /// of the backend (so its directory can be opened again in the same process once the other
    /// clones are gone). Appends through other clones fail with [`LogError::Closed`] afterwards.
    pub async fn close(self) {
        self.inner.closing.cancel();
        let handle = self
            .inner
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Appends one record and resolves once it is durable (or found to be a repeat).
    pub async fn append(&self, append: Append) -> Result<Appended, LogError> {
        self.submit(append, None).await
    }

    async fn submit(&self, append: Append, record: Option<Record>) -> Result<Appended, LogError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .appends
            .send((append, record, tx))
            .await
            .map_err(|_| LogError::Closed)?;
        match rx.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(LogError::Storage(e.to_string())),
            Err(_) => Err(LogError::Closed),
        }
    }

    /// Appends a normalized record (with the key that identifies repeats of it). The committer
    /// puts it, decoded, in the followers' cache before it announces the new head, so no
    /// follower reads it back from storage.
    pub async fn append_record(
        &self,
        record: Record,
        key: Vec<u8>,
        key_expires_at: u64,
    ) -> Result<Appended, LogError> {
        let append = Append {
            key,
            key_expires_at,
            record: serde_json::to_vec(&record)?,
        };
        self.submit(append, Some(record)).await
    }

    /// Up to `limit` durable records after `after`, in order, decoded: from the cache when it
    /// holds them (the steady state: many streams and followers scanning the same positions
    /// must not each read them back and decode them again), else read from the log and cached.
    /// A record that cannot be decoded comes back as `None` (and is logged) so callers can step
    /// over it.
    pub async fn page(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<(Position, Option<Arc<Record>>)>, LogError> {
        // What retention removed is gone for every reader, cached or not.
        let after = after.max(self.earliest().saturating_sub(1));
        let head = self.head();
        // A follower that has caught up asks once more and finds nothing: no storage read (a
        // hand-off to the blocking pool) for that.
        if after >= head || limit == 0 {
            return Ok(Vec::new());
        }
        let cached = self
            .inner
            .recent
            .run_after(after, head.min(after.saturating_add(limit as u64)));
        if !cached.is_empty() {
            return Ok(cached.into_iter().map(|r| (r.position, Some(r))).collect());
        }
        Ok(self
            .read(after, limit)
            .await?
            .into_iter()
            .map(|entry| (entry.position, self.inner.recent.decode(&entry)))
            .collect())
    }

    /// The record at `position`, if it is kept and decodable.
    pub async fn record_at(&self, position: Position) -> Result<Option<Arc<Record>>, LogError> {
        Ok(self
            .page(position.saturating_sub(1), 1)
            .await?
            .into_iter()
            .find(|(p, _)| *p == position)
            .and_then(|(_, r)| r))
    }

    /// Up to `limit` durable records after `after`. Records a batch has written but not yet
    /// made durable are not returned: nothing downstream may act on what a crash could undo.
    pub async fn read(&self, after: Position, limit: usize) -> Result<Vec<Entry>, LogError> {
        let head = self.head();
        let mut entries = self.inner.backend.read(after, limit).await?;
        entries.retain(|e| e.position <= head);
        Ok(entries)
    }

    /// Position of the last durable record.
    pub fn head(&self) -> Position {
        *self.inner.head.borrow()
    }

    /// A receiver that changes whenever new records become durable.
    pub fn subscribe(&self) -> watch::Receiver<Position> {
        self.inner.head.clone()
    }

    pub async fn prune_keys(&self, now: u64) -> Result<usize, LogError> {
        self.inner.backend.prune_keys(now).await
    }

    /// The earliest position still kept; retention removed everything before it.
    pub fn earliest(&self) -> Position {
        self.inner.backend.earliest()
    }

    /// Removes the records at or before `through` (retention); returns how many.
    pub async fn remove_through(&self, through: Position) -> Result<u64, LogError> {
        self.inner.backend.remove_through(through).await
    }

    /// Removes what `policy` no longer keeps at `now_ms`: the oldest records beyond
    /// `max_events`, and those received more than `max_age_secs` ago (found by binary search:
    /// positions follow arrival, so `received_at_ms` rises with them, up to the small reorder
    /// of concurrent appends). Returns how many records were removed.
    pub async fn retain(&self, policy: &Retention, now_ms: u64) -> Result<u64, LogError> {
        let (earliest, head) = (self.earliest(), self.head());
        if earliest > head {
            return Ok(0);
        }
        let mut through = earliest - 1;
        if policy.max_events > 0 && head - earliest + 1 > policy.max_events {
            through = head - policy.max_events;
        }
        if policy.max_age_secs > 0 {
            let cutoff = now_ms.saturating_sub(policy.max_age_secs.saturating_mul(1000));
            // Invariant: everything through `old` is old; nothing after `young` is.
            let (mut old, mut young) = (through, head);
            while old < young {
                let mid = old + (young - old).div_ceil(2);
                match self.received_at(mid).await? {
                    Some(at) if at >= cutoff => young = mid - 1,
                    // Old, or unreadable: either way nothing to keep.
                    _ => old = mid,
                }
            }
            through = old;
        }
        if through < earliest {
            return Ok(0);
        }
        let removed = self.remove_through(through).await?;
        metrics::counter!("ssf_hub_log_retention_removed_total").increment(removed);
        Ok(removed)
    }

    /// When the record at `position` was received (`None` if it is not kept or unreadable).
    async fn received_at(&self, position: Position) -> Result<Option<u64>, LogError> {
        #[derive(serde::Deserialize)]
        struct Stamp {
            received_at_ms: u64,
        }
        let entries = self
            .inner
            .backend
            .read(position.saturating_sub(1), 1)
            .await?;
        Ok(entries
            .first()
            .filter(|e| e.position == position)
            .and_then(|e| serde_json::from_slice::<Stamp>(&e.record).ok())
            .map(|s| s.received_at_ms))
    }

    /// Whether the backend can make appends durable now; the reason when not.
    pub fn readiness(&self) -> Result<(), String> {
        self.inner.backend.readiness()
    }

    /// Bytes the records take, as the backend estimates them.
    pub fn approximate_bytes(&self) -> u64 {
        self.inner.backend.approximate_bytes()
    }
}

/// Drains whatever appends are waiting, writes them as one batch, answers each caller. While a
/// batch is being made durable the next one accumulates, which is what makes this group commit.
#[tracing::instrument(name = "log_committer", skip_all)]
async fn commit_loop(
    backend: Arc<dyn EventLog>,
    recent: Arc<Recent>,
    after_commit: Arc<AfterCommits>,
    mut rx: mpsc::Receiver<Pending>,
    head: Arc<watch::Sender<Position>>,
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
        let mut batch = Vec::with_capacity(waiting.len());
        let mut records = Vec::with_capacity(waiting.len());
        let mut replies = Vec::with_capacity(waiting.len());
        for (append, record, reply) in waiting.drain(..) {
            batch.push(append);
            records.push(record);
            replies.push(reply);
        }
        let started = std::time::Instant::now();
        let size = batch.len();
        match backend.append_batch(batch).await {
            Ok(outcomes) => {
                crate::telemetry::record_log_commit(size, started.elapsed());
                // Followers wake on the head; what they will read is in the cache first.
                let new = outcomes
                    .iter()
                    .filter(|o| matches!(o, Appended::New(_)))
                    .count();
                let fresh: Vec<Arc<Record>> = outcomes
                    .iter()
                    .zip(records)
                    .filter_map(|(o, r)| match o {
                        Appended::New(position) => r.map(|mut r| {
                            r.position = *position;
                            Arc::new(r)
                        }),
                        Appended::Duplicate(_) => None,
                    })
                    .collect();
                recent.insert_all(fresh.iter().cloned());
                if new > 0 {
                    let through = backend.head();
                    let hooks = after_commit.0.read().unwrap_or_else(|p| p.into_inner());
                    hooks.iter().for_each(|f| f(&fresh, through));
                }
                advance(&head, backend.head());
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

/// Moves the announced head forward to `at` (never back: the committer and the follower of
/// other replicas' appends both announce).
fn advance(head: &watch::Sender<Position>, at: Position) {
    head.send_if_modified(|h| {
        let moved = at > *h;
        *h = (*h).max(at);
        moved
    });
}

/// Recently read log records, decoded once and shared by every stream's delivery: with many
/// streams following the head, each record is read and parsed once instead of once per stream.
#[derive(Debug, Default)]
struct Recent {
    records: Mutex<Cached>,
}

/// The cache's records, and the order they came in: the first in goes first. (Evicting the
/// lowest position instead threw out a backlog's records as soon as a lagging follower read
/// them, so it read and decoded the same page again for every few records it took.)
#[derive(Debug, Default)]
struct Cached {
    by_position: BTreeMap<Position, Arc<Record>>,
    arrived: std::collections::VecDeque<Position>,
}

/// Records kept decoded; about the last few seconds at high rates.
const RECENT_CAPACITY: usize = 8192;

impl Recent {
    /// The records right after `after`, as long as they are all cached, up to `head`.
    fn run_after(&self, after: Position, head: Position) -> Vec<Arc<Record>> {
        let cached = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut next = after + 1;
        while next <= head {
            match cached.by_position.get(&next) {
                Some(r) => out.push(r.clone()),
                None => break,
            }
            next += 1;
        }
        out
    }

    /// A record read back from the log, decoded and cached; `None` (logged) if it cannot be.
    fn decode(&self, entry: &Entry) -> Option<Arc<Record>> {
        if let Some(r) = self.get(entry.position) {
            return Some(r);
        }
        match decode(entry) {
            Ok(r) => {
                let r = Arc::new(r);
                self.insert(r.clone());
                Some(r)
            }
            Err(e) => {
                tracing::error!(position = entry.position, error = %e, "undecodable log record skipped");
                None
            }
        }
    }

    fn get(&self, position: Position) -> Option<Arc<Record>> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_position
            .get(&position)
            .cloned()
    }

    fn insert(&self, record: Arc<Record>) {
        self.insert_all(std::iter::once(record));
    }

    fn insert_all(&self, records: impl IntoIterator<Item = Arc<Record>>) {
        let mut cached = self.records.lock().unwrap_or_else(|p| p.into_inner());
        for record in records {
            let position = record.position;
            if cached.by_position.insert(position, record).is_none() {
                cached.arrived.push_back(position);
            }
        }
        while cached.arrived.len() > RECENT_CAPACITY {
            if let Some(oldest) = cached.arrived.pop_front() {
                cached.by_position.remove(&oldest);
            }
        }
    }
}

/// The one decoding of a stored record: its JSON, with the position the log gave it.
fn decode(entry: &Entry) -> Result<Record, serde_json::Error> {
    let mut record: Record = serde_json::from_slice(&entry.record)?;
    record.position = entry.position;
    Ok(record)
}
