//! Stage 6: delivery of hub-signed SETs to streams. Every stream is a durable cursor over the
//! log plus a filter, not a copy of the events: the cursor says which positions are done, and
//! what is pending is read from the log when it is needed. `poll` serves RFC 8936 from it.
//! Knows streams, the log and SETs; leaves HTTP parsing to `manage`.

pub mod guard;
pub mod poll;
pub mod push;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::log::{Log, Position};
use crate::normalize::Record;
use crate::storage::Tables;
use crate::streams::{DefaultSubjects, RegistryError, Stream};

/// A control event (verification, stream-updated) waiting for delivery. It is signed when it
/// is sent, not when queued, so a long wait cannot outlive the signing key's publication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Control {
    pub jti: String,
    pub event_type: crate::set::EventKind,
    pub payload: serde_json::Value,
}

/// Most control events one stream may have waiting; verification requests beyond it get 429.
pub const MAX_CONTROL: usize = 100;

/// What has been done on one stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Every log position up to and including this one is delivered, handed out (see
    /// `outstanding`), or not for this stream.
    pub through: Position,
    /// Positions after `through` that are delivered (push confirms them one at a time).
    #[serde(default)]
    pub done_above: BTreeSet<Position>,
    /// Poll: positions handed out but not acknowledged yet; offered again until acknowledged.
    #[serde(default)]
    pub outstanding: BTreeSet<Position>,
    /// Control events waiting for delivery.
    #[serde(default)]
    pub control: Vec<Control>,
}

impl Cursor {
    /// A fresh cursor that starts after `head`.
    pub fn at(head: Position) -> Cursor {
        Cursor {
            through: head,
            ..Cursor::default()
        }
    }

    pub fn is_done(&self, position: Position) -> bool {
        position <= self.through
            || self.done_above.contains(&position)
            || self.outstanding.contains(&position)
    }

    pub fn mark_done(&mut self, position: Position) {
        if position > self.through {
            self.done_above.insert(position);
        }
    }

    /// Moves `through` over positions already done out of order.
    pub fn compact(&mut self, head: Position) {
        self.advance(|_| false, head);
    }

    /// Moves `through` over positions that are done or irrelevant (`skippable`), so the cursor
    /// stays small however the receiver acknowledges.
    fn advance(&mut self, mut skippable: impl FnMut(Position) -> bool, head: Position) {
        while self.through < head {
            let next = self.through + 1;
            if self.done_above.remove(&next) || self.outstanding.contains(&next) || skippable(next)
            {
                self.through = next;
            } else {
                break;
            }
        }
    }
}

/// Durable cursors of all streams, in the hub's state tables.
#[derive(Debug, Clone)]
pub struct Cursors {
    tables: Arc<dyn Tables>,
    /// Per-stream locks: one poll or delivery at a time moves a stream's cursor.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Wakes long polls when a control SET is queued.
    control: Arc<tokio::sync::watch::Sender<u64>>,
    flusher: crate::durable::Flusher,
    /// Cursors staged since the last flush (push progress waits for `flush_staged`).
    staged: Arc<std::sync::atomic::AtomicBool>,
}

/// How often staged push progress is made durable. A crash redelivers at most this much, with
/// the same `jti` values; one flush per delivered batch cost an `fsync` per SET at low rates.
pub const PUSH_PROGRESS_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

const CURSORS: &str = "cursors";
/// SETs receivers refused for good: stream id ++ NUL ++ time ++ counter → JSON.
const DEAD_LETTERS: &str = "dead_letters";

impl Cursors {
    pub fn open(
        tables: Arc<dyn Tables>,
        flusher: crate::durable::Flusher,
    ) -> Result<Cursors, RegistryError> {
        Ok(Cursors {
            tables,
            locks: Default::default(),
            control: Arc::new(tokio::sync::watch::channel(0).0),
            flusher,
            staged: Arc::default(),
        })
    }

    pub fn lock_for(&self, stream_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(stream_id.to_owned())
            .or_default()
            .clone()
    }

    /// The stream's cursor; `None` once the stream is deleted (there is no default: a cursor
    /// at 0 would hand out the whole log's history).
    pub fn get(&self, stream_id: &str) -> Result<Option<Cursor>, RegistryError> {
        self.tables
            .get(CURSORS, stream_id.as_bytes())?
            .map(|v| serde_json::from_slice(&v))
            .transpose()
            .map_err(Into::into)
    }

    /// Stores a cursor and makes it durable before returning (acks, status changes).
    pub async fn put(&self, stream_id: &str, cursor: &Cursor) -> Result<(), RegistryError> {
        self.stage(stream_id, cursor)?;
        self.flush().await
    }

    /// Stores a cursor without waiting for the disk. Push delivery stages after every batch and
    /// leaves the flush to `flush_staged`: a crash in between redelivers a few SETs with their
    /// same `jti`, which at-least-once allows, instead of paying a flush per SET.
    pub fn stage(&self, stream_id: &str, cursor: &Cursor) -> Result<(), RegistryError> {
        self.tables
            .put(CURSORS, stream_id.as_bytes(), &serde_json::to_vec(cursor)?)?;
        self.staged
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Flushes if anything was staged since the last call (run every [`PUSH_PROGRESS_FLUSH`]
    /// and at shutdown).
    pub async fn flush_staged(&self) -> Result<(), RegistryError> {
        use std::sync::atomic::Ordering;
        if self.staged.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.flush().await {
                self.staged.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Makes every cursor staged before this call durable.
    pub async fn flush(&self) -> Result<(), RegistryError> {
        Ok(self.flusher.flush().await?)
    }

    pub async fn remove(&self, stream_id: &str) -> Result<(), RegistryError> {
        self.tables.delete(CURSORS, stream_id.as_bytes())?;
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(stream_id);
        self.flusher.flush().await?;
        Ok(())
    }

    /// Queues a control event for `stream_id` (whose lock the caller holds) and wakes its
    /// long polls. `Ok(false)` when the stream is gone or already has `MAX_CONTROL` waiting.
    pub async fn push_control(
        &self,
        stream_id: &str,
        control: Control,
    ) -> Result<bool, RegistryError> {
        let Some(mut cursor) = self.get(stream_id)? else {
            return Ok(false);
        };
        if cursor.control.len() >= MAX_CONTROL {
            return Ok(false);
        }
        cursor.control.push(control);
        self.put(stream_id, &cursor).await?;
        self.control.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Keeps a SET a receiver refused for good, for the operator to inspect.
    pub fn dead_letter(
        &self,
        stream_id: &str,
        record: &serde_json::Value,
    ) -> Result<(), RegistryError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut key = stream_id.as_bytes().to_vec();
        key.push(0);
        // Time first keeps the order across restarts; the counter separates letters of one ms.
        key.extend_from_slice(&crate::unix_now_ms().to_be_bytes());
        key.extend_from_slice(
            &SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_be_bytes(),
        );
        self.tables
            .put(DEAD_LETTERS, &key, &serde_json::to_vec(record)?)?;
        Ok(())
    }

    /// The dead letters of one stream, oldest first.
    pub fn dead_letters(&self, stream_id: &str) -> Result<Vec<serde_json::Value>, RegistryError> {
        let mut prefix = stream_id.as_bytes().to_vec();
        prefix.push(0);
        self.tables
            .prefix(DEAD_LETTERS, &prefix)?
            .iter()
            .map(|(_, v)| Ok(serde_json::from_slice(v)?))
            .collect()
    }

    pub fn subscribe_control(&self) -> tokio::sync::watch::Receiver<u64> {
        self.control.subscribe()
    }
}

/// Recently read log records, decoded once and shared by every stream's delivery: with many
/// streams following the head, each record is read and parsed once instead of once per stream.
#[derive(Debug, Default)]
pub struct Recent {
    records: Mutex<BTreeMap<Position, Arc<Record>>>,
}

/// Records kept decoded; about the last few seconds at high rates.
const RECENT_CAPACITY: usize = 8192;

impl Recent {
    /// The records right after `after`, as long as they are all cached, up to `head`.
    fn run_after(&self, after: Position, head: Position) -> Vec<Arc<Record>> {
        let map = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut next = after + 1;
        while next <= head {
            match map.get(&next) {
                Some(r) => out.push(r.clone()),
                None => break,
            }
            next += 1;
        }
        out
    }

    /// Up to `limit` durable records after `after`, in order, from the cache when it holds them
    /// (the steady state: many streams and followers scanning the same positions must not each
    /// read them back and decode them again), else read from the log and cached. A record that
    /// cannot be decoded comes back as `None` (and is logged) so callers can step over it.
    pub async fn page(
        &self,
        log: &Log,
        after: Position,
        limit: usize,
    ) -> Result<Vec<(Position, Option<Arc<Record>>)>, crate::log::LogError> {
        let head = log.head();
        let cached = self.run_after(after, head.min(after.saturating_add(limit as u64)));
        if !cached.is_empty() {
            return Ok(cached.into_iter().map(|r| (r.position, Some(r))).collect());
        }
        Ok(log
            .read(after, limit)
            .await?
            .into_iter()
            .map(|entry| (entry.position, self.decode(&entry)))
            .collect())
    }

    /// A record read back from the log, decoded and cached; `None` (logged) if it cannot be.
    fn decode(&self, entry: &crate::log::Entry) -> Option<Arc<Record>> {
        if let Some(r) = self.get(entry.position) {
            return Some(r);
        }
        match serde_json::from_slice::<Record>(&entry.record) {
            Ok(mut r) => {
                r.position = entry.position;
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

    pub fn get(&self, position: Position) -> Option<Arc<Record>> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&position)
            .cloned()
    }

    pub fn insert(&self, record: Arc<Record>) {
        let mut map = self.records.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(record.position, record);
        while map.len() > RECENT_CAPACITY {
            map.pop_first();
        }
    }
}

/// Records pending for `stream` after its cursor, oldest first, at most `limit`. Advances the
/// cursor over positions that are done or do not concern the stream. Returns the records and
/// whether more pending records may follow.
pub async fn pending(
    log: &Log,
    recent: &Recent,
    stream: &Stream,
    default_subjects: DefaultSubjects,
    cursor: &mut Cursor,
    limit: usize,
) -> Result<(Vec<Arc<Record>>, bool), crate::log::LogError> {
    const PAGE: usize = 256;
    let head = log.head();
    let mut out: Vec<Arc<Record>> = Vec::new();
    let mut after = cursor.through;
    let mut irrelevant = BTreeSet::new();
    while after < head {
        let page = recent.page(log, after, PAGE).await?;
        let Some(&(last, _)) = page.last() else { break };
        after = last;
        for (position, record) in page {
            if cursor.is_done(position) {
                continue;
            }
            let Some(record) = record else {
                irrelevant.insert(position);
                continue;
            };
            if !(stream.wants_event(&record.event_type)
                && stream.wants_subject(&record.subject, default_subjects))
            {
                irrelevant.insert(position);
                continue;
            }
            if out.len() == limit {
                cursor.advance(|p| irrelevant.contains(&p), head);
                return Ok((out, true));
            }
            out.push(record);
        }
    }
    cursor.advance(|p| irrelevant.contains(&p), head);
    Ok((out, false))
}

/// Records how long a record took from the log to the receiver, against the stream's budget.
pub fn record_latency(method: &'static str, record: &Record, budget_ms: u64) {
    let now = crate::unix_now_ms();
    let ms = now.saturating_sub(record.received_at_ms);
    metrics::histogram!("ssf_hub_delivery_latency_seconds", "method" => method)
        .record(ms as f64 / 1000.0);
    metrics::counter!("ssf_hub_delivered_sets_total", "method" => method).increment(1);
    if ms > budget_ms {
        metrics::counter!("ssf_hub_delivery_budget_violations_total", "method" => method)
            .increment(1);
    }
}
