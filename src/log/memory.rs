//! In-process backend for tests and demos: the same contract as sled, without durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{Append, Appended, BoxFuture, Entry, EventLog, LogError, Position};

#[derive(Debug, Default)]
pub struct MemoryLog {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    events: BTreeMap<Position, Vec<u8>>,
    keys: HashMap<Vec<u8>, (Position, u64)>,
}

impl MemoryLog {
    pub fn new() -> MemoryLog {
        MemoryLog::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-written (every mutation is a
        // single insert), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EventLog for MemoryLog {
    fn append_batch(&self, batch: Vec<Append>) -> BoxFuture<'_, Result<Vec<Appended>, LogError>> {
        let now = crate::unix_now();
        let mut s = self.state();
        let mut out = Vec::with_capacity(batch.len());
        for a in batch {
            if let Some(&(pos, expires)) = s.keys.get(&a.key) {
                if expires >= now {
                    out.push(Appended::Duplicate(pos));
                    continue;
                }
            }
            let pos = s.events.keys().next_back().copied().unwrap_or(0) + 1;
            s.events.insert(pos, a.record);
            s.keys.insert(a.key, (pos, a.key_expires_at));
            out.push(Appended::New(pos));
        }
        Box::pin(std::future::ready(Ok(out)))
    }

    fn read(&self, after: Position, limit: usize) -> BoxFuture<'_, Result<Vec<Entry>, LogError>> {
        let out = self
            .state()
            .events
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(p, r)| Entry {
                position: *p,
                record: r.clone(),
            })
            .collect();
        Box::pin(std::future::ready(Ok(out)))
    }

    fn head(&self) -> Position {
        self.state().events.keys().next_back().copied().unwrap_or(0)
    }

    fn prune_keys(&self, now: u64) -> BoxFuture<'_, Result<usize, LogError>> {
        let mut s = self.state();
        let before = s.keys.len();
        s.keys.retain(|_, (_, expires)| *expires >= now);
        Box::pin(std::future::ready(Ok(before - s.keys.len())))
    }
}
