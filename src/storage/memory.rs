//! In-process backends for tests and demos: the same contracts as the embedded engine, without
//! durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use super::{
    Append, Appended, BoxFuture, Entry, EventLog, Op, Position, Row, StorageError, TableView,
    Tables,
};

#[derive(Debug, Default)]
pub struct MemoryLog {
    inner: Mutex<LogState>,
}

/// A log held in memory: records by position, dedupe keys with their expiry, the head. The
/// memory backend is only this; the Kafka backend keeps one as its read side.
#[derive(Debug, Default)]
pub(super) struct LogState {
    pub(super) events: BTreeMap<Position, Vec<u8>>,
    pub(super) keys: HashMap<Vec<u8>, (Position, u64)>,
    pub(super) head: Position,
    pub(super) bytes: u64,
    /// Records at or below this were removed by retention; they are never stored again.
    pub(super) floor: Position,
}

impl LogState {
    /// Stores `record` at `position` under dedupe `key` and moves the head over every record
    /// now stored without a gap after it. (Kafka: a record this replica appended may land
    /// after records of other replicas not read yet; the head waits for them.) A key already
    /// held for an earlier record keeps pointing there until it expires.
    pub(super) fn insert(
        &mut self,
        position: Position,
        key: Vec<u8>,
        expires: u64,
        record: Vec<u8>,
    ) {
        if position <= self.head.max(self.floor) || self.events.contains_key(&position) {
            return;
        }
        let now = crate::unix_now();
        match self.keys.get(&key) {
            Some((p, e)) if *e >= now && *p < position => {}
            _ => {
                self.keys.insert(key, (position, expires));
            }
        }
        self.bytes += record.len() as u64;
        self.events.insert(position, record);
        self.advance_to(self.head);
    }

    /// Moves the head to `position` (everything up to it is stored or is known not to exist),
    /// then over the records stored right after it.
    pub(super) fn advance_to(&mut self, position: Position) {
        self.head = self.head.max(position);
        while self.events.contains_key(&(self.head + 1)) {
            self.head += 1;
        }
    }

    pub(super) fn read(&self, after: Position, limit: usize) -> Vec<Entry> {
        self.events
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(p, r)| Entry {
                position: *p,
                record: r.clone(),
            })
            .collect()
    }

    pub(super) fn earliest(&self) -> Position {
        self.events.keys().next().copied().unwrap_or(self.head + 1)
    }

    /// Forgets the records at positions up to `through`; returns how many there were.
    pub(super) fn remove_through(&mut self, through: Position) -> u64 {
        let keep = self.events.split_off(&through.saturating_add(1));
        let removed = std::mem::replace(&mut self.events, keep);
        self.floor = self.floor.max(through.min(self.head));
        self.bytes -= removed.values().map(|r| r.len() as u64).sum::<u64>();
        removed.len() as u64
    }

    /// Forgets dedupe keys that expired before `now`; returns how many.
    pub(super) fn prune_keys(&mut self, now: u64) -> usize {
        let before = self.keys.len();
        self.keys.retain(|_, (_, expires)| *expires >= now);
        before - self.keys.len()
    }
}

impl MemoryLog {
    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        // Every mutation below completes before a panic could occur, so a poisoned lock is
        // still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EventLog for MemoryLog {
    fn append_batch(
        &self,
        batch: Vec<Append>,
    ) -> BoxFuture<'_, Result<Vec<Appended>, StorageError>> {
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
            let pos = s.head + 1;
            s.insert(pos, a.key, a.key_expires_at, a.record);
            out.push(Appended::New(pos));
        }
        Box::pin(std::future::ready(Ok(out)))
    }

    fn read(
        &self,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Entry>, StorageError>> {
        Box::pin(std::future::ready(Ok(self.state().read(after, limit))))
    }

    fn head(&self) -> Position {
        self.state().head
    }

    fn earliest(&self) -> Position {
        self.state().earliest()
    }

    fn remove_through(&self, through: Position) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(std::future::ready(Ok(self.state().remove_through(through))))
    }

    fn prune_keys(&self, now: u64) -> BoxFuture<'_, Result<usize, StorageError>> {
        Box::pin(std::future::ready(Ok(self.state().prune_keys(now))))
    }

    fn approximate_bytes(&self) -> u64 {
        self.state().bytes
    }
}

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// Tables shared copy-on-write: a view clones the `Arc`s, and a write clones a table only while
/// a view still holds its old version.
#[derive(Debug, Default)]
pub struct MemoryTables {
    tables: RwLock<HashMap<&'static str, Arc<Table>>>,
}

fn scan_table(
    tables: &HashMap<&'static str, Arc<Table>>,
    table: &'static str,
    prefix: &[u8],
    start: &[u8],
    limit: usize,
) -> Vec<Row> {
    let Some(t) = tables.get(table) else {
        return Vec::new();
    };
    let from = start.max(prefix).to_vec();
    t.range(from..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Tables for MemoryTables {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        Ok(tables.get(table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StorageError> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        Ok(scan_table(&tables, table, prefix, start, limit))
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        for op in ops {
            match op {
                Op::Put { table, key, value } => {
                    Arc::make_mut(tables.entry(table).or_default()).insert(key, value);
                }
                Op::Delete { table, key } => {
                    if let Some(t) = tables.get_mut(table) {
                        Arc::make_mut(t).remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn view(&self) -> Result<Arc<dyn TableView>, StorageError> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        Ok(Arc::new(MemoryView(tables.clone())))
    }
}

#[cfg(feature = "kafka")]
impl MemoryTables {
    /// Replaces every table with `other`'s (a rebuild); views taken before keep what they saw.
    pub(super) fn replace_with(&self, other: MemoryTables) {
        let fresh = other.tables.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.tables.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

#[derive(Debug)]
struct MemoryView(HashMap<&'static str, Arc<Table>>);

impl TableView for MemoryView {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.0.get(table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StorageError> {
        Ok(scan_table(&self.0, table, prefix, start, limit))
    }
}
