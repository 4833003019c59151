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

#[derive(Debug, Default)]
struct LogState {
    events: BTreeMap<Position, Vec<u8>>,
    keys: HashMap<Vec<u8>, (Position, u64)>,
    head: Position,
    bytes: u64,
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
            s.head += 1;
            let pos = s.head;
            s.bytes += a.record.len() as u64;
            s.events.insert(pos, a.record);
            s.keys.insert(a.key, (pos, a.key_expires_at));
            out.push(Appended::New(pos));
        }
        Box::pin(std::future::ready(Ok(out)))
    }

    fn read(
        &self,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Entry>, StorageError>> {
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
        self.state().head
    }

    fn earliest(&self) -> Position {
        let s = self.state();
        s.events.keys().next().copied().unwrap_or(s.head + 1)
    }

    fn remove_through(&self, through: Position) -> BoxFuture<'_, Result<u64, StorageError>> {
        let mut s = self.state();
        let keep = s.events.split_off(&through.saturating_add(1));
        let removed = std::mem::replace(&mut s.events, keep);
        s.bytes -= removed.values().map(|r| r.len() as u64).sum::<u64>();
        Box::pin(std::future::ready(Ok(removed.len() as u64)))
    }

    fn prune_keys(&self, now: u64) -> BoxFuture<'_, Result<usize, StorageError>> {
        let mut s = self.state();
        let before = s.keys.len();
        s.keys.retain(|_, (_, expires)| *expires >= now);
        Box::pin(std::future::ready(Ok(before - s.keys.len())))
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
