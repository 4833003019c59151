//! The embedded default backend: records and the key index in one sled database, each batch one
//! multi-tree transaction followed by one flush, so a batch is all-or-nothing across `kill -9`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use super::{be, from_be, Append, Appended, BoxFuture, Entry, EventLog, LogError, Position};

#[derive(Debug, Clone)]
pub struct SledLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    /// position (BE) → record
    events: sled::Tree,
    /// key → position (BE) ++ expires_at (BE)
    keys: sled::Tree,
    /// expires_at (BE) ++ key → (), so pruning reads only what has expired
    expiry: sled::Tree,
    head: AtomicU64,
}

impl SledLog {
    /// Opens (or creates) the log at `path`. `cache_capacity` bounds sled's in-memory page cache.
    pub fn open(path: &Path, cache_capacity: u64) -> Result<SledLog, LogError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let events = db.open_tree("events")?;
        let keys = db.open_tree("keys")?;
        let expiry = db.open_tree("key_expiry")?;
        let head = match events.last()? {
            Some((k, _)) => from_be(&k)?,
            None => 0,
        };
        Ok(SledLog {
            inner: Arc::new(Inner {
                db,
                events,
                keys,
                expiry,
                head: AtomicU64::new(head),
            }),
        })
    }
}

impl Inner {
    fn append_blocking(&self, batch: &[Append]) -> Result<Vec<Appended>, LogError> {
        let now = crate::unix_now();
        // From what is stored, not from `head`: after a failed flush, committed records sit
        // above `head`, and their positions must not be handed out again.
        let start = match self.events.last()? {
            Some((k, _)) => from_be(&k)?,
            None => 0,
        };
        let outcomes = (&self.events, &self.keys, &self.expiry).transaction(
            |(events, keys, expiry): &(TransactionalTree, TransactionalTree, TransactionalTree)| {
                let mut next = start;
                let mut out = Vec::with_capacity(batch.len());
                for a in batch {
                    if let Some(existing) = keys.get(&a.key)? {
                        let pos =
                            from_be(&existing).map_err(ConflictableTransactionError::Abort)?;
                        let expires = existing
                            .get(8..16)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_be_bytes)
                            .unwrap_or(0);
                        if expires >= now {
                            out.push(Appended::Duplicate(pos));
                            continue;
                        }
                    }
                    next += 1;
                    events.insert(&be(next), a.record.as_slice())?;
                    let mut val = be(next).to_vec();
                    val.extend_from_slice(&a.key_expires_at.to_be_bytes());
                    keys.insert(a.key.as_slice(), val)?;
                    let mut exp = a.key_expires_at.to_be_bytes().to_vec();
                    exp.extend_from_slice(&a.key);
                    expiry.insert(exp, &[][..])?;
                    out.push(Appended::New(next));
                }
                Ok(out)
            },
        )?;
        // One flush makes every write of the batch durable; callers answer only after it.
        self.db.flush()?;
        let last = outcomes
            .iter()
            .filter_map(|o| match o {
                Appended::New(p) => Some(*p),
                Appended::Duplicate(_) => None,
            })
            .max();
        if let Some(last) = last {
            self.head.store(last, Ordering::Release);
        }
        Ok(outcomes)
    }

    fn read_blocking(&self, after: Position, limit: usize) -> Result<Vec<Entry>, LogError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.events
            .range(be(from)..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                Ok(Entry {
                    position: from_be(&k)?,
                    record: v.to_vec(),
                })
            })
            .collect()
    }

    fn prune_blocking(&self, now: u64) -> Result<usize, LogError> {
        let mut pruned = 0;
        for kv in self.expiry.range(..now.to_be_bytes().to_vec()) {
            let (k, _) = kv?;
            let key = &k[8..];
            // Only remove the index entry if it still belongs to this expiry (not re-added later).
            if let Some(v) = self.keys.get(key)? {
                if v.get(8..16) == Some(&k[..8]) {
                    self.keys.remove(key)?;
                }
            }
            self.expiry.remove(&k)?;
            pruned += 1;
        }
        Ok(pruned)
    }
}

impl EventLog for SledLog {
    fn append_batch(&self, batch: Vec<Append>) -> BoxFuture<'_, Result<Vec<Appended>, LogError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.append_blocking(&batch))
                .await
                .map_err(|e| LogError::Storage(e.to_string()))?
        })
    }

    fn read(&self, after: Position, limit: usize) -> BoxFuture<'_, Result<Vec<Entry>, LogError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.read_blocking(after, limit))
                .await
                .map_err(|e| LogError::Storage(e.to_string()))?
        })
    }

    fn head(&self) -> Position {
        self.inner.head.load(Ordering::Acquire)
    }

    fn prune_keys(&self, now: u64) -> BoxFuture<'_, Result<usize, LogError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.prune_blocking(now))
                .await
                .map_err(|e| LogError::Storage(e.to_string()))?
        })
    }
}
