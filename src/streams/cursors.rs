//! Each stream's progress over the log: its cursor, the positions handed out to a poller and
//! not yet acknowledged, queued control events, dead letters, and the per-stream locks under
//! which a cursor is read, changed and written. Status transitions move cursors here too.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::RegistryError;
use crate::set::events::StreamStatus;
use crate::storage::{Op, Position, Tables};

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

    /// Moves `through` up to `floor` (when it is further), for a follower that knows
    /// everything up to there is settled.
    pub fn settle_through(&mut self, floor: Position) {
        if floor > self.through {
            self.through = floor;
            self.done_above.retain(|p| *p > floor);
            self.outstanding.retain(|p| *p > floor);
        }
    }

    /// Moves `through` over positions already done out of order.
    pub fn compact(&mut self, head: Position) {
        self.advance(|_| false, head);
    }

    /// Moves `through` over positions that are done or irrelevant (`skippable`), so the cursor
    /// stays small however the receiver acknowledges.
    pub fn advance(&mut self, mut skippable: impl FnMut(Position) -> bool, head: Position) {
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

    /// Forgets a deleted stream: its cursor, its lock and its dead letters.
    pub async fn remove(&self, stream_id: &str) -> Result<(), RegistryError> {
        let mut ops = vec![Op::delete(CURSORS, stream_id.as_bytes())];
        ops.extend(
            self.tables
                .prefix(DEAD_LETTERS, &letters_prefix(stream_id))?
                .into_iter()
                .map(|(k, _)| Op::delete(DEAD_LETTERS, k)),
        );
        self.tables.write(ops)?;
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

    /// Keeps a SET a receiver refused for good, for the operator to inspect; of one stream's
    /// letters, the newest `keep` stay.
    pub fn dead_letter(
        &self,
        stream_id: &str,
        record: &serde_json::Value,
        keep: usize,
    ) -> Result<(), RegistryError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let prefix = letters_prefix(stream_id);
        let mut key = prefix.clone();
        // Time first keeps the order across restarts; the counter separates letters of one ms.
        key.extend_from_slice(&crate::unix_now_ms().to_be_bytes());
        key.extend_from_slice(
            &SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_be_bytes(),
        );
        let mut ops = vec![Op::put(DEAD_LETTERS, key, serde_json::to_vec(record)?)];
        // Dead letters are rare (a receiver refusing for good); reading a stream's few hundred
        // to bound them costs nothing that matters.
        let stored = self.tables.prefix(DEAD_LETTERS, &prefix)?;
        let excess = (stored.len() + 1).saturating_sub(keep.max(1));
        ops.extend(
            stored
                .into_iter()
                .take(excess)
                .map(|(k, _)| Op::delete(DEAD_LETTERS, k)),
        );
        self.tables.write(ops)?;
        Ok(())
    }

    /// The dead letters of one stream, oldest first.
    pub fn dead_letters(&self, stream_id: &str) -> Result<Vec<serde_json::Value>, RegistryError> {
        self.tables
            .prefix(DEAD_LETTERS, &letters_prefix(stream_id))?
            .iter()
            .map(|(_, v)| Ok(serde_json::from_slice(v)?))
            .collect()
    }

    /// Wakes long polls and push workers to look at their cursors again (another replica
    /// changed them, or queued a control event).
    pub fn wake(&self) {
        self.control.send_modify(|n| *n += 1);
    }

    pub fn subscribe_control(&self) -> tokio::sync::watch::Receiver<u64> {
        self.control.subscribe()
    }
}

/// Dead letters of one stream sort together: stream id ++ NUL.
fn letters_prefix(stream_id: &str) -> Vec<u8> {
    let mut prefix = stream_id.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

/// Moves a stream's cursor for a status change (the caller holds the stream's lock): a disabled
/// stream holds nothing, so what happened meanwhile is skipped; re-enabling a paused stream
/// delivers what was held, up to `paused_hold_max_events`.
pub async fn set_cursor_for_status(
    cursors: &Cursors,
    head: Position,
    paused_hold_max_events: u64,
    id: &str,
    previous: StreamStatus,
    status: StreamStatus,
) -> Result<(), RegistryError> {
    let stored = cursors.get(id)?;
    let mut cursor = stored.clone().unwrap_or_else(|| Cursor::at(head));
    match (previous, status) {
        (_, StreamStatus::Disabled) | (StreamStatus::Disabled, _) => {
            cursor.through = head;
            cursor.done_above.clear();
            cursor.outstanding.clear();
            // A disabled stream holds nothing (SSF §8.1.2), verification requests included;
            // announcements of its status stay, so the receiver learns why.
            if status == StreamStatus::Disabled {
                cursor
                    .control
                    .retain(|c| c.event_type != crate::set::EventKind::Verification);
            }
        }
        (StreamStatus::Paused, StreamStatus::Enabled) => {
            let max = paused_hold_max_events;
            if head.saturating_sub(cursor.through) > max {
                cursor.through = head - max;
                cursor.done_above.retain(|p| *p > head - max);
                cursor.outstanding.retain(|p| *p > head - max);
            }
        }
        _ => {}
    }
    // Pausing an enabled stream moves nothing: no write, no fsync.
    if stored.as_ref() == Some(&cursor) {
        return Ok(());
    }
    cursors.put(id, &cursor).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dead_letters_are_capped_and_go_with_their_stream() {
        let tables: Arc<dyn Tables> = Arc::new(crate::storage::MemoryTables::default());
        let cursors =
            Cursors::open(tables.clone(), crate::durable::Flusher::new(tables)).expect("open");
        for id in ["s1", "s2"] {
            cursors.put(id, &Cursor::at(0)).await.expect("cursor");
        }
        for i in 0..5 {
            cursors
                .dead_letter("s1", &serde_json::json!({ "i": i }), 3)
                .expect("letter");
        }
        cursors
            .dead_letter("s2", &serde_json::json!({ "i": 0 }), 3)
            .expect("letter");
        let kept: Vec<_> = cursors.dead_letters("s1").expect("read");
        assert_eq!(
            kept,
            (2..5)
                .map(|i| serde_json::json!({ "i": i }))
                .collect::<Vec<_>>(),
            "the newest three"
        );
        cursors.remove("s1").await.expect("remove");
        assert!(cursors.dead_letters("s1").expect("read").is_empty());
        assert!(cursors.get("s1").expect("read").is_none());
        assert_eq!(cursors.dead_letters("s2").expect("read").len(), 1);
    }
}
