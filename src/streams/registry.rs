//! The registry of receivers and streams, in the state tables; every write is durable before it
//! returns.

use std::sync::Arc;

use super::{new_stream_id, new_token, token_hash, Receiver, RegistryError, Stream};
use crate::storage::{Op, Tables};

/// Receivers and streams in the state tables. Every write is flushed before it returns: a 201
/// for a new stream means the stream survives a crash.
#[derive(Debug, Clone)]
pub struct Registry {
    flusher: crate::durable::Flusher,
    tables: Arc<dyn Tables>,
    changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

const RECEIVERS: &str = "receivers";
const TOKENS: &str = "receiver_tokens";
const STREAMS: &str = "streams";

impl Registry {
    pub fn open(
        tables: Arc<dyn Tables>,
        flusher: crate::durable::Flusher,
    ) -> Result<Registry, RegistryError> {
        Ok(Registry {
            tables,
            flusher,
            changes: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        })
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
        let token = new_token();
        let receiver = Receiver {
            // A letter first, so the id never starts with '-' (it is a CLI argument too).
            id: format!("r{}", new_stream_id()),
            name: name.to_owned(),
            audience: audience.to_owned(),
            token_sha256: token_hash(&token),
            created_at_ms: crate::unix_now_ms(),
            revoked: false,
        };
        self.tables.write(vec![
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
        ])?;
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

    /// Revokes a receiver's credential; its streams stay but can no longer be managed or polled.
    pub async fn revoke_receiver(&self, id: &str) -> Result<bool, RegistryError> {
        let Some(mut r) = self.receiver(id)? else {
            return Ok(false);
        };
        r.revoked = true;
        self.tables.write(vec![
            Op::delete(TOKENS, r.token_sha256.as_bytes()),
            Op::put(RECEIVERS, r.id.as_bytes(), serde_json::to_vec(&r)?),
        ])?;
        self.flush().await?;
        // Open connections of this receiver (websockets, long polls) watch for it.
        self.changed();
        Ok(true)
    }

    pub fn stream(&self, stream_id: &str) -> Result<Option<Stream>, RegistryError> {
        self.tables
            .get(STREAMS, stream_id.as_bytes())?
            .map(|v| serde_json::from_slice(&v))
            .transpose()
            .map_err(Into::into)
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
            .map(|(_, v)| Ok(serde_json::from_slice(v)?))
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

    pub async fn delete_stream(&self, stream_id: &str) -> Result<(), RegistryError> {
        self.tables.delete(STREAMS, stream_id.as_bytes())?;
        self.flush().await?;
        self.changed();
        Ok(())
    }
}
