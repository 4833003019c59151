//! Storage seams: the narrow traits through which every piece of durable state passes, and the
//! backends behind them. The traits know keys, positions and bytes, never SETs or streams;
//! what the bytes mean stays with the services that own them (log, streams, cursors,
//! revocations). Each trait has one conformance suite (tests/it/storage_conformance.rs) that
//! every backend passes: memory, the embedded engine and (with the `kafka` feature) Kafka.
//!
//! - [`EventLog`]: records at dense, ordered, never-reused positions, plus the de-duplication
//!   key index that decides whether a record is appended at all.
//! - [`Tables`]: named tables of ordered keys to bytes with atomic multi-table writes and a
//!   durable sync, and consistent read views; the stream/cursor store and the revocation store
//!   are tables in it.
//! - [`Cluster`]: the replicas sharing one storage (Kafka mode), for work with one owner.

mod embedded;
#[cfg(feature = "kafka")]
mod kafka;
mod memory;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

pub use self::embedded::{Budgets, Embedded};
#[cfg(feature = "kafka")]
pub use self::kafka::KafkaSettings;
pub use self::memory::{MemoryLog, MemoryTables};

/// A position in the log: 1 for the first record, increasing by one per record, never reused
/// (not even after retention removed every record).
pub type Position = u64;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("the log is shut down")]
    Closed,
}

impl From<serde_json::Error> for StorageError {
    fn from(e: serde_json::Error) -> Self {
        StorageError::Storage(format!("corrupt record: {e}"))
    }
}

/// One record to append, with the key that identifies repeats of it.
#[derive(Debug, Clone)]
pub struct Append {
    /// Records with a key already in the index (and not expired) are not appended again.
    pub key: Vec<u8>,
    /// Unix seconds after which the key may be forgotten.
    pub key_expires_at: u64,
    pub record: Vec<u8>,
}

/// What became of one [`Append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored at this position.
    New(Position),
    /// The key was already stored, at this position; nothing was written.
    Duplicate(Position),
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub position: Position,
    pub record: Vec<u8>,
}

/// The log seam. Implementations make a batch durable before its future resolves, keep
/// positions gap-free, ordered and never reused, and apply a batch's records and keys
/// atomically.
pub trait EventLog: Send + Sync + fmt::Debug + 'static {
    /// Appends the records whose keys are new, in order, durably; one outcome per input.
    fn append_batch(
        &self,
        batch: Vec<Append>,
    ) -> BoxFuture<'_, Result<Vec<Appended>, StorageError>>;

    /// Up to `limit` records with positions strictly after `after`, in order.
    fn read(
        &self,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Entry>, StorageError>>;

    /// Position of the last stored record (0 when nothing was ever stored).
    fn head(&self) -> Position;

    /// Position of the earliest record still kept: `head + 1` when retention removed them all,
    /// 1 when nothing was removed.
    fn earliest(&self) -> Position;

    /// Removes every record at or before `through` (never past the head); returns how many.
    fn remove_through(&self, through: Position) -> BoxFuture<'_, Result<u64, StorageError>>;

    /// Forgets keys that expired before `now` (unix seconds); returns how many.
    fn prune_keys(&self, now: u64) -> BoxFuture<'_, Result<usize, StorageError>>;

    /// Bytes the records take, as the backend estimates them (retention by size).
    fn approximate_bytes(&self) -> u64;

    /// Whether appends can be made durable now; the reason when not (`/readyz`). Local
    /// backends are always ready: their failures surface on the append itself.
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// Records retention took out of what this log serves but that the backend still holds
    /// (Kafka keeps every record; the hub's retention only hides them), handed out once, at
    /// start, so that a replica with no state of its own can fold what they changed. Empty for
    /// backends that delete.
    fn take_removed(&self) -> Vec<Entry> {
        Vec::new()
    }

    /// For a log other processes append to as well: the head as it moves with their records
    /// too. `None` when this process is the only writer (its own appends move the head).
    fn head_changes(&self) -> Option<tokio::sync::watch::Receiver<Position>> {
        None
    }
}

/// One write in a [`Tables::write`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: &'static str,
        key: Vec<u8>,
    },
}

impl Op {
    pub fn put(table: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            table,
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn delete(table: &'static str, key: impl Into<Vec<u8>>) -> Op {
        Op::Delete {
            table,
            key: key.into(),
        }
    }
}

/// A key and its value, as [`Tables::scan`] returns them.
pub type Row = (Vec<u8>, Vec<u8>);

/// The state seam: small named tables of ordered keys. Writes are atomic and visible at once but
/// durable only after [`Tables::sync`], so callers choose what waits for the disk (a `201`
/// does; push progress does not). Calls block briefly; callers on the runtime keep them short.
pub trait Tables: Send + Sync + fmt::Debug + 'static {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Rows with `start <= key`, keys beginning with `prefix`, in key order, at most `limit`.
    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StorageError>;

    /// Applies every op, all or nothing.
    fn write(&self, ops: Vec<Op>) -> Result<(), StorageError>;

    /// Blocks until every write made before the call is durable.
    fn sync(&self) -> Result<(), StorageError>;

    /// A consistent read-only view of every table as of now: a write batch is in it wholly or
    /// not at all, and later writes are invisible to it. Readers that page through a table
    /// while it changes (the streamed revocation snapshot) read from one.
    fn view(&self) -> Result<Arc<dyn TableView>, StorageError>;

    /// For tables other processes write too: resolves once every write any of them had made
    /// durable before the call is visible here (read-your-writes across replicas). Local
    /// tables are always caught up.
    fn catch_up(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// For tables other processes write too: changes whenever their writes arrive, so that
    /// what is cached from the tables can be refreshed. `None` for local tables.
    fn remote_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// The replicas sharing one storage (Kafka mode): who is alive, so that work with one owner
/// at a time (push delivery of a stream) can be spread over them.
pub trait Cluster: Send + Sync + fmt::Debug + 'static {
    /// This replica's id.
    fn me(&self) -> String;

    /// The replicas alive now, this one included only while its own writes round-trip through
    /// the brokers; empty while this replica has not yet heard from the others long enough to
    /// know who they are.
    fn members(&self) -> Vec<String>;

    /// Changes whenever [`Cluster::members`] does.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// What [`Tables::view`] returns. A view pins the versions it sees (the engine keeps them
/// until the view is dropped), so hold one only for the length of one read.
pub trait TableView: Send + Sync + fmt::Debug + 'static {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// As [`Tables::scan`], as of the view.
    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StorageError>;
}

impl dyn Tables {
    pub fn put(&self, table: &'static str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.write(vec![Op::put(table, key, value)])
    }

    pub fn delete(&self, table: &'static str, key: &[u8]) -> Result<(), StorageError> {
        self.write(vec![Op::delete(table, key)])
    }

    /// Every row of a table whose keys begin with `prefix`.
    pub fn prefix(&self, table: &'static str, prefix: &[u8]) -> Result<Vec<Row>, StorageError> {
        self.scan(table, prefix, prefix, usize::MAX)
    }
}

/// The storage a hub runs on, opened from `log.url`.
#[derive(Debug, Clone)]
pub struct Storage {
    pub log: Arc<dyn EventLog>,
    /// State every replica shares (receivers, streams, cursors, signing keys).
    pub tables: Arc<dyn Tables>,
    /// State each replica derives from the log itself (the revocation fold): the same tables
    /// as `tables` on one machine, this replica's own in Kafka mode.
    pub local: Arc<dyn Tables>,
    /// The replicas sharing the storage; `None` when this process is the only one.
    pub cluster: Option<Arc<dyn Cluster>>,
}

impl Storage {
    /// In-process storage: nothing survives the process (tests, demos).
    pub fn memory() -> Storage {
        let tables: Arc<dyn Tables> = Arc::new(MemoryTables::default());
        Storage {
            log: Arc::new(MemoryLog::default()),
            local: tables.clone(),
            tables,
            cluster: None,
        }
    }

    /// Kafka (`log.url = "kafka://..."`): the log and the tables in two topics, read back into
    /// memory before this returns. Blocks while it talks to the brokers.
    #[cfg(feature = "kafka")]
    pub fn kafka(settings: KafkaSettings) -> Result<Storage, StorageError> {
        self::kafka::open(settings)
    }

    /// The embedded engine in `dir`; `data_dir` is checked for state an older engine left.
    ///
    /// Two databases of the one engine: `dir/log` (records and dedupe keys) and `dir/state`.
    /// fjall holds a database's journal lock for the length of a sync, and the log syncs once
    /// per group commit; in a database of their own, state writes (cursors, the revocation fold)
    /// never wait behind the log's `fdatasync`, nor the log behind theirs.
    pub fn embedded(
        data_dir: &Path,
        dir: &Path,
        budgets: Budgets,
    ) -> Result<Storage, StorageError> {
        refuse_sled_era(data_dir, dir)?;
        // fjall would create these with the process umask (0755 as a rule).
        for d in [dir.to_owned(), dir.join("log"), dir.join("state")] {
            create_private_dir(&d)
                .map_err(|e| StorageError::Storage(format!("creating {}: {e}", d.display())))?;
        }
        let log = Embedded::open(&dir.join("log"), budgets, 2)?;
        let state = Budgets {
            cache_bytes: (budgets.cache_bytes / 4).max(1 << 20),
            ..budgets
        };
        let tables: Arc<dyn Tables> = Arc::new(Embedded::open(&dir.join("state"), state, 1)?);
        Ok(Storage {
            log: Arc::new(log.log()?),
            local: tables.clone(),
            tables,
            cluster: None,
        })
    }
}

/// Creates `dir` and its missing parents readable by the owner only (0700): the data directory
/// holds raw SETs, receivers' push credentials and the hub's private keys.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Refuses a data directory that group or others may enter or read (a directory created by an
/// earlier version, or by hand), naming it and the fix.
pub fn check_private_dir(dir: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)
            .map_err(|e| format!("data directory {}: {e}", dir.display()))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "data directory {} has mode {mode:04o}: group or others can reach it, and it holds \
                 raw SETs, receivers' push credentials and the hub's private keys. Make it private \
                 with `chmod 700 {}` and start again",
                dir.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Hubs before the engine change kept their state in sled 0.34 (`<data_dir>/log`,
/// `<data_dir>/state`). Nothing reads that format any more; opening a fresh database beside it
/// would silently forget every stream, cursor and revocation, so the hub refuses to start.
fn refuse_sled_era(data_dir: &Path, dir: &Path) -> Result<(), StorageError> {
    let candidates: [PathBuf; 3] = [data_dir.join("log"), data_dir.join("state"), dir.to_owned()];
    for c in candidates {
        if c.join("conf").is_file() && c.join("db").is_file() {
            return Err(StorageError::Storage(format!(
                "{} holds a sled database from an earlier ssf-hub; this version stores its state \
                 with fjall and cannot read sled. There is no migration: move the old data \
                 directory aside (keep it to inspect history with the older binary) and start \
                 again with an empty one",
                c.display()
            )));
        }
    }
    Ok(())
}

/// Big-endian encoding keeps byte order equal to numeric order in ordered key-value stores.
pub fn be(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

pub fn from_be(bytes: &[u8]) -> Result<u64, StorageError> {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StorageError::Storage("corrupt position".into()))
}
