//! The embedded engine: one fjall database (an LSM tree with a write-ahead journal) holds the
//! log, its key index and every state table, so one journal `fdatasync` makes a whole batch
//! durable. Leaves group commit to `log` and the meaning of tables to their services.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable as _};

use super::{
    be, from_be, Append, Appended, BoxFuture, Entry, EventLog, Op, Position, Row, StorageError,
    TableView, Tables,
};

impl From<fjall::Error> for StorageError {
    fn from(e: fjall::Error) -> Self {
        StorageError::Storage(e.to_string())
    }
}

/// Memory the engine may use, from `log.cache_capacity_bytes` and `log.write_buffer_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// Block cache for reads that miss the memtables (the log's; the state tables' database
    /// gets a quarter of it).
    pub cache_bytes: u64,
    /// Memtable of the log's records: writes kept in memory before they are flushed to sorted
    /// files. Every other table gets an eighth (at least 1 MiB). fjall 3.1 fixes a table's
    /// memtable size when the table is created, so a change applies to new data directories.
    pub write_buffer_bytes: u64,
}

/// An open database; implements [`Tables`] and hands out the [`EventLog`] over it.
#[derive(Clone)]
pub struct Embedded {
    db: Database,
    tables: Arc<RwLock<HashMap<&'static str, Keyspace>>>,
    budgets: Budgets,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

/// Records live in segments of [`SEGMENT`] positions, one keyspace each (`log_events_<n>`).
/// Retention drops whole segments, which frees their files at once: in an LSM tree a removed
/// record is a tombstone until compaction reaches it, so removing record by record left the
/// disk growing.
const LOG_EVENTS: &str = "log_events_";
const SEGMENT: u64 = 1 << 16;
const LOG_KEYS: &str = "log_keys";
/// expires_at (BE) ++ key → (), so pruning reads only what has expired.
const LOG_EXPIRY: &str = "log_key_expiry";
const LOG_META: &str = "log_meta";
const HEAD: &[u8] = b"head";
/// The first position retention keeps; records below it may still sit in a segment that is not
/// wholly removed yet, and are never read.
const EARLIEST: &[u8] = b"earliest";

impl Embedded {
    /// Opens (or creates) a database in `dir` with `workers` background threads for flushes and
    /// compactions.
    pub fn open(dir: &Path, budgets: Budgets, workers: usize) -> Result<Embedded, StorageError> {
        // fjall deletes a journal only once every table's memtable it covers is flushed; small
        // tables (log_meta, cursors) fill theirs slowly, so journals piled up to the 512 MiB
        // default before a forced flush. The smallest bound fjall allows keeps disk use close to
        // the data.
        let db = Database::builder(dir)
            .cache_size(budgets.cache_bytes)
            .worker_threads(workers)
            .max_journaling_size(64 << 20)
            .open()?;
        Ok(Embedded {
            db,
            tables: Arc::default(),
            budgets,
        })
    }

    fn table(&self, name: &'static str) -> Result<Keyspace, StorageError> {
        if let Some(k) = self
            .tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(k.clone());
        }
        // The only memory bound fjall 3.1 enforces is per table (its database-wide write
        // buffer limit is not wired up), so the budget is split: the log's segments get it
        // whole (only the newest is written), every other table an eighth.
        let memtable = (self.budgets.write_buffer_bytes / 8).max(1 << 20);
        let k = self.db.keyspace(name, || options(memtable))?;
        self.tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, k.clone());
        Ok(k)
    }

    /// The log in this database.
    pub fn log(&self) -> Result<EmbeddedLog, StorageError> {
        let meta = self.table(LOG_META)?;
        let memtable = self.budgets.write_buffer_bytes;
        let mut segments = BTreeMap::new();
        for name in self.db.list_keyspace_names() {
            if let Some(n) = name.strip_prefix(LOG_EVENTS).and_then(|n| n.parse().ok()) {
                segments.insert(n, self.db.keyspace(&name, || options(memtable))?);
            }
        }
        let stored_head = meta.get(HEAD)?.map(|v| from_be(&v)).transpose()?;
        let last = match segments
            .values()
            .next_back()
            .and_then(|s| s.last_key_value())
        {
            Some(g) => from_be(&g.key()?)?,
            None => 0,
        };
        let head = stored_head.unwrap_or(0).max(last);
        let mut first = head + 1;
        for segment in segments.values() {
            if let Some(g) = segment.first_key_value() {
                first = from_be(&g.key()?)?;
                break;
            }
        }
        let stored_earliest = meta.get(EARLIEST)?.map(|v| from_be(&v)).transpose()?;
        let earliest = first.max(stored_earliest.unwrap_or(0));
        Ok(EmbeddedLog {
            inner: Arc::new(LogInner {
                db: self.db.clone(),
                segments: RwLock::new(segments),
                memtable,
                keys: self.table(LOG_KEYS)?,
                expiry: self.table(LOG_EXPIRY)?,
                meta,
                head: AtomicU64::new(head),
                earliest: AtomicU64::new(earliest),
            }),
        })
    }
}

impl Tables for Embedded {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.table(table)?.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StorageError> {
        let from = start.max(prefix).to_vec();
        let mut out = Vec::new();
        for guard in self.table(table)?.range(from..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = guard.into_inner()?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                Op::Put { table, key, value } => batch.insert(&self.table(table)?, key, value),
                Op::Delete { table, key } => batch.remove(&self.table(table)?, key),
            }
        }
        Ok(batch.commit()?)
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(self.db.persist(PersistMode::SyncData)?)
    }

    fn view(&self) -> Result<Arc<dyn TableView>, StorageError> {
        Ok(Arc::new(EmbeddedView {
            snapshot: self.db.snapshot(),
            db: self.clone(),
        }))
    }
}

/// A fjall cross-keyspace snapshot: batches are committed under one sequence number, so a
/// snapshot holds each batch wholly or not at all.
struct EmbeddedView {
    snapshot: fjall::Snapshot,
    db: Embedded,
}

impl std::fmt::Debug for EmbeddedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedView").finish_non_exhaustive()
    }
}

impl TableView for EmbeddedView {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .snapshot
            .get(&self.db.table(table)?, key)?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StorageError> {
        let from = start.max(prefix).to_vec();
        let mut out = Vec::new();
        for guard in self.snapshot.range(&self.db.table(table)?, from..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = guard.into_inner()?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
pub struct EmbeddedLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    db: Database,
    /// Segment number (position / SEGMENT) → its keyspace of position (BE) → record.
    segments: RwLock<BTreeMap<u64, Keyspace>>,
    /// Memtable budget of a segment.
    memtable: u64,
    /// key → position (BE) ++ expires_at (BE)
    keys: Keyspace,
    expiry: Keyspace,
    /// "head" → the last position ever handed out, so retention never lets one be reused.
    meta: Keyspace,
    head: AtomicU64,
    earliest: AtomicU64,
}

impl std::fmt::Debug for LogInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// Options of every keyspace: `memtable` bytes of write buffer, and index and filter blocks
/// through the block cache instead of pinned beside it, so `cache_bytes` bounds them too.
fn options(memtable: u64) -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(memtable)
        .index_block_pinning_policy(PinningPolicy::disabled())
        .filter_block_pinning_policy(PinningPolicy::disabled())
}

impl LogInner {
    /// The keyspace of segment `n`, created when `create` and missing.
    fn segment(&self, n: u64, create: bool) -> Result<Option<Keyspace>, StorageError> {
        if let Some(k) = self
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&n)
        {
            return Ok(Some(k.clone()));
        }
        if !create {
            return Ok(None);
        }
        let name = format!("{LOG_EVENTS}{n:010}");
        let k = self.db.keyspace(&name, || options(self.memtable))?;
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        // The previous segment is written no more: flush its memtable now rather than keep it.
        if let Some(previous) = segments.get(&(n.wrapping_sub(1))) {
            previous.rotate_memtable()?;
        }
        segments.insert(n, k.clone());
        Ok(Some(k))
    }

    fn segments_from(&self, n: u64) -> Vec<(u64, Keyspace)> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .range(n..)
            .map(|(n, k)| (*n, k.clone()))
            .collect()
    }

    fn append_blocking(&self, batch: Vec<Append>) -> Result<Vec<Appended>, StorageError> {
        let now = crate::unix_now();
        let start = self.head.load(Ordering::Acquire);
        let mut next = start;
        let mut out = Vec::with_capacity(batch.len());
        // Keys earlier in this batch are not in the index until it commits.
        let mut fresh: HashMap<&[u8], Position> = HashMap::new();
        let mut write = self.db.batch();
        let mut segment: Option<(u64, Keyspace)> = None;
        for a in &batch {
            if let Some(&pos) = fresh.get(a.key.as_slice()) {
                out.push(Appended::Duplicate(pos));
                continue;
            }
            if let Some(existing) = self.keys.get(&a.key)? {
                let expires = existing.get(8..16).map(from_be).transpose()?.unwrap_or(0);
                if expires >= now {
                    out.push(Appended::Duplicate(from_be(&existing)?));
                    continue;
                }
            }
            next += 1;
            let n = next / SEGMENT;
            if segment.as_ref().is_none_or(|(m, _)| *m != n) {
                let k = self.segment(n, true)?.expect("created");
                segment = Some((n, k));
            }
            if let Some((_, k)) = &segment {
                write.insert(k, be(next), a.record.as_slice());
            }
            let mut val = be(next).to_vec();
            val.extend_from_slice(&be(a.key_expires_at));
            write.insert(&self.keys, a.key.as_slice(), val);
            let mut exp = be(a.key_expires_at).to_vec();
            exp.extend_from_slice(&a.key);
            write.insert(&self.expiry, exp, []);
            fresh.insert(&a.key, next);
            out.push(Appended::New(next));
        }
        if next > start {
            write.insert(&self.meta, HEAD, be(next));
            // One journal write and one fdatasync for the whole batch; callers answer after it.
            write.commit()?;
            fault::inside_commit(start + 1, next);
            self.db.persist(PersistMode::SyncData)?;
            fault::committed();
            self.head.store(next, Ordering::Release);
        }
        Ok(out)
    }

    fn read_blocking(&self, after: Position, limit: usize) -> Result<Vec<Entry>, StorageError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let from = from.max(self.earliest.load(Ordering::Acquire));
        let mut out = Vec::new();
        for (_, segment) in self.segments_from(from / SEGMENT) {
            for g in segment.range(be(from)..).take(limit - out.len()) {
                let (k, v) = g.into_inner()?;
                out.push(Entry {
                    position: from_be(&k)?,
                    record: v.to_vec(),
                });
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Retention moves `earliest` (stored, so a restart agrees) and drops every segment that
    /// lies wholly below it and is not the one being written. Records below `earliest` in a
    /// segment that stays are never read again and go with their segment: no tombstones, so a
    /// sweep writes next to nothing while ingest runs.
    fn remove_blocking(&self, through: Position) -> Result<u64, StorageError> {
        let head = self.head.load(Ordering::Acquire);
        let through = through.min(head);
        let earliest = self.earliest.load(Ordering::Acquire);
        if through < earliest {
            return Ok(0);
        }
        let mut write = self.db.batch();
        write.insert(&self.meta, EARLIEST, be(through + 1));
        write.commit()?;
        self.earliest.store(through + 1, Ordering::Release);
        for (n, segment) in self.segments_from(0) {
            if (n + 1) * SEGMENT - 1 > through || n >= head / SEGMENT {
                break;
            }
            self.segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&n);
            self.db.delete_keyspace(segment)?;
        }
        Ok(through + 1 - earliest)
    }

    fn prune_blocking(&self, now: u64) -> Result<usize, StorageError> {
        let mut pruned = 0;
        let mut write = self.db.batch();
        for g in self.expiry.range(..be(now).to_vec()) {
            let k = g.key()?;
            let key = &k[8..];
            // Only remove the index entry if it still belongs to this expiry (not re-added).
            if let Some(v) = self.keys.get(key)? {
                if v.get(8..16) == Some(&k[..8]) {
                    write.remove(&self.keys, key.to_vec());
                }
            }
            write.remove(&self.expiry, k);
            pruned += 1;
        }
        write.commit()?;
        Ok(pruned)
    }
}

/// Runs `f` on the blocking pool: fjall calls do file I/O.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Storage(e.to_string()))?
}

impl EventLog for EmbeddedLog {
    fn append_batch(
        &self,
        batch: Vec<Append>,
    ) -> BoxFuture<'_, Result<Vec<Appended>, StorageError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || inner.append_blocking(batch)))
    }

    fn read(
        &self,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Entry>, StorageError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || inner.read_blocking(after, limit)))
    }

    fn head(&self) -> Position {
        self.inner.head.load(Ordering::Acquire)
    }

    fn earliest(&self) -> Position {
        self.inner.earliest.load(Ordering::Acquire)
    }

    fn remove_through(&self, through: Position) -> BoxFuture<'_, Result<u64, StorageError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || inner.remove_blocking(through)))
    }

    fn prune_keys(&self, now: u64) -> BoxFuture<'_, Result<usize, StorageError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || inner.prune_blocking(now)))
    }

    fn approximate_bytes(&self) -> u64 {
        self.inner
            .segments_from(0)
            .iter()
            .map(|(_, k)| k.disk_space())
            .sum()
    }
}

/// Crash-test hook: with `SSF_FAULT_COMMIT_PAUSE_MS` and `SSF_FAULT_COMMIT_MARK` set,
/// every log batch pauses between its journal write and its sync, with the positions it carries
/// written to the mark file (removed once the batch is durable), so a test can kill the process
/// inside a group commit and check what survives. Unset, it costs one cached lookup.
mod fault {
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Duration;

    fn settings() -> Option<&'static (Duration, PathBuf)> {
        static SETTINGS: OnceLock<Option<(Duration, PathBuf)>> = OnceLock::new();
        SETTINGS
            .get_or_init(|| {
                let ms = std::env::var("SSF_FAULT_COMMIT_PAUSE_MS").ok()?;
                let mark = std::env::var_os("SSF_FAULT_COMMIT_MARK")?;
                Some((Duration::from_millis(ms.parse().ok()?), mark.into()))
            })
            .as_ref()
    }

    pub(super) fn inside_commit(first: u64, last: u64) {
        if let Some((pause, mark)) = settings() {
            let _ = std::fs::write(mark, format!("{first} {last}"));
            std::thread::sleep(*pause);
        }
    }

    pub(super) fn committed() {
        if let Some((_, mark)) = settings() {
            let _ = std::fs::remove_file(mark);
        }
    }
}
