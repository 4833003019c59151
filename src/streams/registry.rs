//! The registry of receivers and streams, in the state tables; every write is durable before it
//! returns. A stream's subjects are rows of their own, keyed by stream and canonical subject, so
//! adding or removing one writes one small key, never the whole stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{
    new_stream_id, new_token, stream_scopes, token_hash, Binding, Receiver, RegistryError, Stream,
    Subjects,
};
use crate::set::Subject;
use crate::storage::{Op, Tables};
#[cfg(test)]
use serde_json::Value;

/// Bounds on what a receiver may list (config `delivery.max_subjects_per_stream` and
/// `delivery.max_subject_bytes_per_receiver`).
#[derive(Debug, Clone, Copy)]
pub struct SubjectLimits {
    pub per_stream: usize,
    pub bytes_per_receiver: usize,
}

/// Which bound a subject change would cross; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectLimit {
    Count(usize),
    Bytes(usize),
}

/// One stream's subject rows, in memory: delivery's filter reads them per event, so they are
/// loaded once and kept in step with every write rather than read from disk.
#[derive(Debug, Default)]
struct Listed {
    /// Canonical key → the subject and the bytes its row takes.
    rows: BTreeMap<String, (Subject, usize)>,
    bytes: usize,
    shared: Subjects,
}

impl Listed {
    fn publish(&mut self) {
        self.shared = Subjects::new(self.rows.values().map(|(s, _)| s.clone()).collect());
    }
}

#[derive(Debug, Default)]
struct SubjectCache {
    streams: HashMap<String, Listed>,
    /// Subject bytes per receiver over all its streams, computed on first use.
    receivers: HashMap<String, usize>,
    /// The count of other replicas' writes this cache has seen (Kafka mode).
    remote_seen: u64,
}

/// Receivers and streams in the state tables. Every write is flushed before it returns: a 201
/// for a new stream means the stream survives a crash.
#[derive(Debug, Clone)]
pub struct Registry {
    flusher: crate::durable::Flusher,
    tables: Arc<dyn Tables>,
    changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// Subject rows in memory; its lock also serializes subject writes, so the per-receiver
    /// byte count cannot be raced past its bound by two streams at once.
    subjects: Arc<Mutex<SubjectCache>>,
    /// Counts other replicas' writes to the tables (Kafka mode): the cache above is dropped
    /// when it moves.
    remote: Option<tokio::sync::watch::Receiver<u64>>,
    /// Last receiver activity per stream (unix ms), for `inactivity_timeout`. In memory only: a
    /// restart counts as activity, so no stream is paused because the hub itself was down.
    activity: Arc<Mutex<HashMap<String, u64>>>,
    started_ms: u64,
}

const RECEIVERS: &str = "receivers";
const TOKENS: &str = "receiver_tokens";
const STREAMS: &str = "streams";
/// OAuth `client_id` → receiver id.
const OAUTH_CLIENTS: &str = "receiver_oauth_clients";
/// Kafka mode: stream id → the last receiver activity any replica saw (unix ms, BE).
const ACTIVITY: &str = "stream_activity";
/// How stale a stream's shared activity row may get before a replica rewrites it.
const SHARED_ACTIVITY_MS: u64 = 60_000;

/// What a new receiver's credential may do and see.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub scopes: Vec<String>,
    pub bound_to: Vec<Binding>,
    pub oauth_client_id: Option<String>,
}

impl Default for Grant {
    /// A stream credential: stream scopes, no revocation scope, unbound, no OAuth client.
    fn default() -> Grant {
        Grant {
            scopes: stream_scopes(),
            bound_to: Vec::new(),
            oauth_client_id: None,
        }
    }
}

/// stream id ++ NUL ++ canonical subject key → the subject's JSON.
const SUBJECTS: &str = "stream_subjects";

fn subjects_prefix(stream_id: &str) -> Vec<u8> {
    let mut k = stream_id.as_bytes().to_vec();
    k.push(0);
    k
}

fn subject_row(stream_id: &str, key: &str) -> Vec<u8> {
    let mut k = subjects_prefix(stream_id);
    k.extend_from_slice(key.as_bytes());
    k
}

impl Registry {
    pub fn open(
        tables: Arc<dyn Tables>,
        flusher: crate::durable::Flusher,
    ) -> Result<Registry, RegistryError> {
        let registry = Registry {
            remote: tables.remote_changes(),
            tables,
            flusher,
            changes: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
            subjects: Arc::default(),
            activity: Arc::default(),
            started_ms: crate::unix_now_ms(),
        };
        registry.move_inline_subjects()?;
        Ok(registry)
    }

    /// Streams written by earlier versions carry their subjects inline; each becomes rows and
    /// the stream is rewritten without them, once, at open.
    fn move_inline_subjects(&self) -> Result<(), RegistryError> {
        let mut moved = false;
        for (_, v) in self.tables.prefix(STREAMS, b"")? {
            let stream: Stream = serde_json::from_slice(&v)?;
            if stream.subjects.is_empty() {
                continue;
            }
            let mut ops: Vec<Op> = Vec::with_capacity(stream.subjects.len() + 1);
            for subject in stream.subjects.iter() {
                ops.push(Op::put(
                    SUBJECTS,
                    subject_row(&stream.stream_id, &subject.canonical_key()),
                    serde_json::to_vec(subject)?,
                ));
            }
            // Serializing skips `subjects`: the stream is stored without them from now on.
            ops.push(Op::put(
                STREAMS,
                stream.stream_id.as_bytes(),
                serde_json::to_vec(&stream)?,
            ));
            self.tables.write(ops)?;
            moved = true;
        }
        if moved {
            self.tables.sync()?;
        }
        Ok(())
    }

    /// Records receiver activity on a stream (a poll, or a management call naming it), which
    /// restarts its inactivity timer (SSF §8.1.1, `inactivity_timeout`). In memory; with
    /// replicas (Kafka mode) also in the shared tables, at most once a minute per stream, since
    /// the replica that sweeps a stream may not be the one its receiver talks to.
    pub fn touch(&self, stream_id: &str) {
        let now = crate::unix_now_ms();
        let before = self
            .activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream_id.to_owned(), now);
        let shared = self.remote.is_some();
        if shared && before.is_none_or(|t| now.saturating_sub(t) >= SHARED_ACTIVITY_MS) {
            // Best effort, not synced: a lost write costs at most a minute of activity.
            let _ = self
                .tables
                .put(ACTIVITY, stream_id.as_bytes(), &now.to_be_bytes());
        }
    }

    /// When the receiver last acted on the stream (unix ms), through this replica or (to the
    /// minute) another; the hub's start if not since.
    pub fn last_activity_ms(&self, stream: &Stream) -> u64 {
        let seen = self
            .activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&stream.stream_id)
            .copied()
            .unwrap_or(0);
        let elsewhere = match &self.remote {
            Some(_) => self
                .tables
                .get(ACTIVITY, stream.stream_id.as_bytes())
                .ok()
                .flatten()
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_be_bytes),
            None => 0,
        };
        seen.max(elsewhere)
            .max(self.started_ms)
            .max(stream.created_at_ms)
    }

    /// The subject cache, emptied first if other replicas wrote since it was filled.
    fn subject_cache(&self) -> std::sync::MutexGuard<'_, SubjectCache> {
        let mut cache = self.subjects.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(remote) = &self.remote {
            let now = *remote.borrow();
            if now != cache.remote_seen {
                *cache = SubjectCache {
                    remote_seen: now,
                    ..SubjectCache::default()
                };
            }
        }
        cache
    }

    /// Waits until every change another replica made durable before the call is visible here
    /// (Kafka mode; at once otherwise), so a receiver's call sees what its last call did
    /// whichever replica took it.
    pub async fn catch_up(&self) -> Result<(), RegistryError> {
        Ok(self.tables.catch_up().await?)
    }

    /// Other replicas changed the tables: whoever follows streams reloads them.
    pub fn remote_changed(&self) {
        self.changed();
    }

    /// The stream's subjects, from memory, loading its rows on first use.
    fn attach(&self, mut stream: Stream) -> Result<Stream, RegistryError> {
        let mut cache = self.subject_cache();
        stream.subjects = self.listed(&mut cache, &stream.stream_id)?.shared.clone();
        Ok(stream)
    }

    fn listed<'c>(
        &self,
        cache: &'c mut SubjectCache,
        stream_id: &str,
    ) -> Result<&'c mut Listed, RegistryError> {
        if !cache.streams.contains_key(stream_id) {
            let mut listed = Listed::default();
            let mut rekeyed = Vec::new();
            for (k, v) in self.tables.prefix(SUBJECTS, &subjects_prefix(stream_id))? {
                let subject: Subject = serde_json::from_slice(&v)?;
                // Keyed as this version canonicalizes: a row written under an older rule is
                // moved, so a later remove finds it.
                let key = subject.canonical_key();
                let row = subject_row(stream_id, &key);
                if row != k {
                    rekeyed.push(Op::delete(SUBJECTS, k));
                    rekeyed.push(Op::put(SUBJECTS, row, v.clone()));
                }
                if let Some((_, n)) = listed.rows.insert(key, (subject, v.len())) {
                    listed.bytes -= n;
                }
                listed.bytes += v.len();
            }
            if !rekeyed.is_empty() {
                self.tables.write(rekeyed)?;
            }
            listed.publish();
            cache.streams.insert(stream_id.to_owned(), listed);
        }
        cache
            .streams
            .get_mut(stream_id)
            .ok_or_else(|| RegistryError::Storage("subject cache".into()))
    }

    /// Subject bytes of all of `receiver_id`'s streams (the caller holds the cache lock).
    fn receiver_bytes(
        &self,
        cache: &mut SubjectCache,
        receiver_id: &str,
    ) -> Result<usize, RegistryError> {
        if let Some(n) = cache.receivers.get(receiver_id) {
            return Ok(*n);
        }
        let mut total = 0;
        for (_, v) in self.tables.prefix(STREAMS, b"")? {
            let stream: Stream = serde_json::from_slice(&v)?;
            if stream.receiver_id == receiver_id {
                total += self.listed(cache, &stream.stream_id)?.bytes;
            }
        }
        cache.receivers.insert(receiver_id.to_owned(), total);
        Ok(total)
    }

    /// Lists `subject` on `stream` (`listed`) or takes it off, writing only its own row, durably.
    /// `Ok(Err(limit))` when listing it would cross a bound; nothing is written then.
    pub async fn set_subject(
        &self,
        stream: &Stream,
        subject: &Subject,
        listed: bool,
        limits: SubjectLimits,
    ) -> Result<Result<(), SubjectLimit>, RegistryError> {
        let key = subject.canonical_key();
        let row = subject_row(&stream.stream_id, &key);
        {
            let mut cache = self.subject_cache();
            let used = self.receiver_bytes(&mut cache, &stream.receiver_id)?;
            let entry = self.listed(&mut cache, &stream.stream_id)?;
            let old = entry.rows.get(&key).map_or(0, |(_, n)| *n);
            if listed {
                let value = serde_json::to_vec(subject)?;
                let new = value.len();
                if old == 0 && entry.rows.len() >= limits.per_stream {
                    return Ok(Err(SubjectLimit::Count(limits.per_stream)));
                }
                if new > old && used + new - old > limits.bytes_per_receiver {
                    return Ok(Err(SubjectLimit::Bytes(limits.bytes_per_receiver)));
                }
                self.tables.put(SUBJECTS, &row, &value)?;
                entry.rows.insert(key, (subject.clone(), new));
                entry.bytes = entry.bytes + new - old;
                entry.publish();
                cache
                    .receivers
                    .insert(stream.receiver_id.clone(), used + new - old);
            } else {
                if old == 0 && !entry.rows.contains_key(&key) {
                    // Nothing listed: nothing to write (and nothing to fsync).
                    return Ok(Ok(()));
                }
                self.tables.delete(SUBJECTS, &row)?;
                entry.rows.remove(&key);
                entry.bytes -= old;
                entry.publish();
                cache
                    .receivers
                    .insert(stream.receiver_id.clone(), used.saturating_sub(old));
            }
        }
        self.flush().await?;
        self.changed();
        Ok(Ok(()))
    }

    /// Wakes whenever a stream is created, changed or deleted, or a receiver revoked.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Counts stream changes; a worker that read it before loading a stream knows the stream
    /// is unchanged while it stays the same.
    pub fn version(&self) -> u64 {
        *self.changes.borrow()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    async fn flush(&self) -> Result<(), RegistryError> {
        self.flusher.flush().await?;
        Ok(())
    }

    /// Registers a receiver; returns it and its credential (shown once, never stored).
    pub async fn add_receiver(
        &self,
        name: &str,
        audience: &str,
    ) -> Result<(Receiver, String), RegistryError> {
        self.register(name, audience, Grant::default()).await
    }

    /// Registers a receiver with `grant`'s scopes, bindings and OAuth client; returns it and its
    /// credential (shown once, never stored).
    pub async fn register(
        &self,
        name: &str,
        audience: &str,
        grant: Grant,
    ) -> Result<(Receiver, String), RegistryError> {
        let token = new_token();
        let receiver = Receiver {
            // A letter first, so the id never starts with '-' (it is a CLI argument too).
            id: format!("r{}", new_stream_id()),
            name: name.to_owned(),
            audience: audience.to_owned(),
            token_sha256: token_hash(&token),
            created_at_ms: crate::unix_now_ms(),
            revoked: false,
            scopes: grant.scopes,
            bound_to: grant.bound_to,
            oauth_client_id: grant.oauth_client_id,
        };
        let mut ops = vec![
            Op::put(
                RECEIVERS,
                receiver.id.as_bytes(),
                serde_json::to_vec(&receiver)?,
            ),
            Op::put(
                TOKENS,
                receiver.token_sha256.as_bytes(),
                receiver.id.as_bytes(),
            ),
        ];
        if let Some(client) = &receiver.oauth_client_id {
            ops.push(Op::put(
                OAUTH_CLIENTS,
                client.as_bytes(),
                receiver.id.as_bytes(),
            ));
        }
        self.tables.write(ops)?;
        self.flush().await?;
        Ok((receiver, token))
    }

    /// The receiver a bearer credential belongs to, unless revoked. Lookup is by the
    /// credential's hash, so no comparison of secrets happens at all.
    pub fn authenticate(&self, token: &str) -> Result<Option<Receiver>, RegistryError> {
        let Some(id) = self.tables.get(TOKENS, token_hash(token).as_bytes())? else {
            return Ok(None);
        };
        Ok(self
            .receiver(std::str::from_utf8(&id).unwrap_or_default())?
            .filter(|r| !r.revoked))
    }

    /// The unrevoked receiver whose OAuth access tokens carry `client_id`.
    pub fn oauth_client(&self, client_id: &str) -> Result<Option<Receiver>, RegistryError> {
        let Some(id) = self.tables.get(OAUTH_CLIENTS, client_id.as_bytes())? else {
            return Ok(None);
        };
        Ok(self
            .receiver(std::str::from_utf8(&id).unwrap_or_default())?
            .filter(|r| !r.revoked && r.oauth_client_id.as_deref() == Some(client_id)))
    }

    pub fn receiver(&self, id: &str) -> Result<Option<Receiver>, RegistryError> {
        self.tables
            .get(RECEIVERS, id.as_bytes())?
            .map(|v| serde_json::from_slice(&v))
            .transpose()
            .map_err(Into::into)
    }

    pub fn receivers(&self) -> Result<Vec<Receiver>, RegistryError> {
        self.tables
            .prefix(RECEIVERS, b"")?
            .iter()
            .map(|(_, v)| Ok(serde_json::from_slice(v)?))
            .collect()
    }

    /// Replaces an unrevoked receiver's scopes, bindings and OAuth client (its credential stays);
    /// the updated receiver, or `None` if there is no such unrevoked receiver.
    pub async fn regrant(&self, id: &str, grant: Grant) -> Result<Option<Receiver>, RegistryError> {
        let Some(mut r) = self.receiver(id)?.filter(|r| !r.revoked) else {
            return Ok(None);
        };
        let mut ops = Vec::new();
        if let Some(old) = &r.oauth_client_id {
            ops.push(Op::delete(OAUTH_CLIENTS, old.as_bytes()));
        }
        if let Some(new) = &grant.oauth_client_id {
            ops.push(Op::put(OAUTH_CLIENTS, new.as_bytes(), r.id.as_bytes()));
        }
        r.scopes = grant.scopes;
        r.bound_to = grant.bound_to;
        r.oauth_client_id = grant.oauth_client_id;
        ops.push(Op::put(RECEIVERS, r.id.as_bytes(), serde_json::to_vec(&r)?));
        self.tables.write(ops)?;
        self.flush().await?;
        Ok(Some(r))
    }

    /// Revokes a receiver's credential and OAuth client; its streams stay but can no longer be managed or polled.
    pub async fn revoke_receiver(&self, id: &str) -> Result<bool, RegistryError> {
        let Some(mut r) = self.receiver(id)? else {
            return Ok(false);
        };
        r.revoked = true;
        let mut ops = vec![
            Op::delete(TOKENS, r.token_sha256.as_bytes()),
            Op::put(RECEIVERS, r.id.as_bytes(), serde_json::to_vec(&r)?),
        ];
        // Its OAuth client loses access with it (and the client_id may be registered again).
        if let Some(client) = &r.oauth_client_id {
            ops.push(Op::delete(OAUTH_CLIENTS, client.as_bytes()));
        }
        self.tables.write(ops)?;
        self.flush().await?;
        // Open connections of this receiver (websockets, long polls) watch for it.
        self.changed();
        Ok(true)
    }

    pub fn stream(&self, stream_id: &str) -> Result<Option<Stream>, RegistryError> {
        self.tables
            .get(STREAMS, stream_id.as_bytes())?
            .map(|v| self.attach(serde_json::from_slice(&v)?))
            .transpose()
    }

    /// The stream, if it exists and belongs to `receiver_id` (another receiver's stream is
    /// indistinguishable from a missing one).
    pub fn owned_stream(
        &self,
        receiver_id: &str,
        stream_id: &str,
    ) -> Result<Option<Stream>, RegistryError> {
        Ok(self
            .stream(stream_id)?
            .filter(|s| s.receiver_id == receiver_id))
    }

    pub fn streams(&self) -> Result<Vec<Stream>, RegistryError> {
        self.tables
            .prefix(STREAMS, b"")?
            .iter()
            .map(|(_, v)| self.attach(serde_json::from_slice(v)?))
            .collect()
    }

    pub fn streams_of(&self, receiver_id: &str) -> Result<Vec<Stream>, RegistryError> {
        Ok(self
            .streams()?
            .into_iter()
            .filter(|s| s.receiver_id == receiver_id)
            .collect())
    }

    /// Creates or replaces a stream, durably.
    pub async fn put_stream(&self, stream: &Stream) -> Result<(), RegistryError> {
        self.tables.put(
            STREAMS,
            stream.stream_id.as_bytes(),
            &serde_json::to_vec(stream)?,
        )?;
        self.flush().await?;
        self.changed();
        Ok(())
    }

    /// Deletes a stream with its subject rows.
    pub async fn delete_stream(&self, stream_id: &str) -> Result<(), RegistryError> {
        {
            let mut cache = self.subject_cache();
            let mut ops = vec![
                Op::delete(STREAMS, stream_id.as_bytes()),
                Op::delete(ACTIVITY, stream_id.as_bytes()),
            ];
            ops.extend(
                self.tables
                    .prefix(SUBJECTS, &subjects_prefix(stream_id))?
                    .into_iter()
                    .map(|(k, _)| Op::delete(SUBJECTS, k)),
            );
            let owner = self
                .tables
                .get(STREAMS, stream_id.as_bytes())?
                .map(|v| serde_json::from_slice::<Stream>(&v))
                .transpose()?
                .map(|s| s.receiver_id);
            self.tables.write(ops)?;
            if let Some(listed) = cache.streams.remove(stream_id) {
                if let Some(n) = owner.and_then(|o| cache.receivers.get_mut(&o)) {
                    *n = n.saturating_sub(listed.bytes);
                }
            }
        }
        self.activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(stream_id);
        self.flush().await?;
        self.changed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn inline_subjects_of_older_streams_move_into_rows_on_open() {
        let tables: Arc<dyn Tables> = Arc::new(crate::storage::MemoryTables::default());
        let flusher = crate::durable::Flusher::new(tables.clone());
        let mut old = json!({
            "stream_id": "s1", "receiver_id": "r1", "aud": "a",
            "events_requested": [], "events_delivered": [],
            "delivery": {"method": crate::set::DELIVERY_POLL},
            "status": "enabled", "created_at_ms": 1,
        });
        old["subjects"] = json!([
            {"format": "email", "email": "a@x.test"},
            {"format": "opaque", "id": "b"},
        ]);
        tables
            .put(STREAMS, b"s1", old.to_string().as_bytes())
            .expect("write");
        let registry = Registry::open(tables.clone(), flusher).expect("open");
        let stream = registry.stream("s1").expect("read").expect("stream");
        assert_eq!(stream.subjects.len(), 2);
        let stored: Value =
            serde_json::from_slice(&tables.get(STREAMS, b"s1").expect("read").expect("row"))
                .expect("json");
        assert!(stored.get("subjects").is_none(), "rewritten without them");
        assert_eq!(tables.prefix(SUBJECTS, b"s1\0").expect("rows").len(), 2);
        // Removing one writes its row away; the stream's subjects follow.
        let limits = SubjectLimits {
            per_stream: 10,
            bytes_per_receiver: 4096,
        };
        let a = Subject::parse(&json!({"format": "email", "email": "A@x.test"})).expect("subject");
        registry
            .set_subject(&stream, &a, false, limits)
            .await
            .expect("write")
            .expect("within limits");
        let stream = registry.stream("s1").expect("read").expect("stream");
        assert_eq!(stream.subjects.len(), 1);
        registry.delete_stream("s1").await.expect("delete");
        assert!(tables.prefix(SUBJECTS, b"s1\0").expect("rows").is_empty());
    }
}
