//! Kafka storage: the log in a one-partition topic (position = offset + 1), the tables in a
//! compacted topic, both read back into memory when the hub starts. Kafka is the only durable
//! copy; the memory is a materialized view of it, so a replica with an empty data directory
//! rebuilds everything from the brokers. One hub per topic prefix in this version (the next
//! slices share the topics between replicas).
//!
//! Message formats (all written by this module only):
//! - `<events>`: key = 8-byte big-endian expiry of the dedupe key, then the dedupe key;
//!   value = the record. Keeping the expiry in the key (not a header) keeps the format to what
//!   every Kafka-compatible broker stores.
//! - `<state>`: value = the ops of ONE `Tables::write` (so a write is atomic by construction).
//!   Kafka key = `1` + table + NUL + row key when the write has a single op (compaction then
//!   keeps only the latest write of that row, and an earlier multi-op write that touched the row
//!   replays before it), and `m` + a random id otherwise (never compacted away). Deletes are
//!   ordinary messages, never null tombstones: a tombstone is itself dropped after
//!   `delete.retention.ms`, and an older multi-op write would then resurrect the row.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::memory::LogState;
use super::{
    Append, Appended, BoxFuture, Entry, EventLog, MemoryTables, Op, Position, Row, Storage,
    StorageError, TableView, Tables,
};

/// Where and how to reach Kafka, from `log.url` and `[log.kafka]`.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port]`.
    pub brokers: String,
    pub events_topic: String,
    pub state_topic: String,
    pub create_topics: bool,
    pub replication_factor: i32,
    pub linger_ms: u64,
    pub delivery_timeout_ms: u64,
    /// Bounds reading the topics back at start.
    pub startup_timeout_ms: u64,
    /// Extra librdkafka properties (SASL, TLS, ...), applied to every client.
    pub properties: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaSettings {
    // Properties may hold SASL passwords: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("events_topic", &self.events_topic)
            .field("state_topic", &self.state_topic)
            .field("create_topics", &self.create_topics)
            .field("replication_factor", &self.replication_factor)
            .field("linger_ms", &self.linger_ms)
            .field(
                "properties",
                &self.properties.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The table where the log keeps its own bookkeeping (the retention floor), in the state topic.
const LOG_TABLE: &str = "kafka.log";
const EARLIEST_KEY: &[u8] = b"earliest";

fn kafka_err(what: &str) -> impl Fn(rdkafka::error::KafkaError) -> StorageError + '_ {
    move |e| StorageError::Storage(format!("kafka: {what}: {e}"))
}

impl KafkaSettings {
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    fn producer(&self) -> Result<FutureProducer, StorageError> {
        let mut c = self.client();
        // Set after the operator's properties: these are what makes a 202 mean "in Kafka".
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string());
        c.create().map_err(kafka_err("creating the producer"))
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.startup_timeout_ms)
    }

    /// Creates the topics when allowed; otherwise checks they exist and names the missing one.
    /// Both must have exactly one partition: that is what makes positions a total order.
    fn ensure_topics(&self) -> Result<(), StorageError> {
        let topics = [
            (&self.events_topic, "-1", "delete"),
            (&self.state_topic, "-1", "compact"),
        ];
        if self.create_topics {
            let admin: AdminClient<DefaultClientContext> = self
                .client()
                .create()
                .map_err(kafka_err("creating the admin client"))?;
            let new: Vec<NewTopic<'_>> = topics
                .iter()
                .map(|(name, retention, policy)| {
                    NewTopic::new(name, 1, TopicReplication::Fixed(self.replication_factor))
                        // The hub's own retention (log.retention) decides what is removed;
                        // Kafka's default of seven days would silently drop records early.
                        .set("retention.ms", retention)
                        .set("cleanup.policy", policy)
                })
                .collect();
            let opts = AdminOptions::new().operation_timeout(Some(self.timeout()));
            for r in
                block_on(admin.create_topics(&new, &opts)).map_err(kafka_err("creating topics"))?
            {
                match r {
                    Ok(_) => {}
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        return Err(StorageError::Storage(format!(
                            "kafka: creating topic {name}: {code}"
                        )))
                    }
                }
            }
        }
        let consumer = self.consumer()?;
        for (name, _, policy) in topics {
            let meta = consumer
                .fetch_metadata(Some(name), self.timeout())
                .map_err(kafka_err("reading topic metadata"))?;
            let t = meta.topics().first();
            let missing = t.is_none_or(|t| t.error().is_some() || t.partitions().is_empty());
            if missing {
                return Err(StorageError::Storage(format!(
                    "kafka topic {name} does not exist and log.kafka.create_topics is false; \
                     create it with `kafka-topics.sh --bootstrap-server {} --create --topic \
                     {name} --partitions 1 --replication-factor {} --config \
                     cleanup.policy={policy} --config retention.ms=-1`",
                    self.brokers, self.replication_factor
                )));
            }
            if let Some(t) = t {
                if t.partitions().len() != 1 {
                    return Err(StorageError::Storage(format!(
                        "kafka topic {name} has {} partitions; the hub needs exactly one (its \
                         positions are the partition's offsets, a total order)",
                        t.partitions().len()
                    )));
                }
            }
        }
        Ok(())
    }

    fn consumer(&self) -> Result<BaseConsumer, StorageError> {
        let mut c = self.client();
        // Assigned partitions only, no group: a reader of the whole topic, committing nothing.
        c.set("enable.auto.commit", "false")
            .set("group.id", "ssf-hub-rebuild")
            .set("enable.partition.eof", "false");
        c.create().map_err(kafka_err("creating the consumer"))
    }

    /// Every message of `topic` (one partition) up to its end at the time of the call, in order.
    ///
    /// The end is where the consumer reports end-of-partition (the high watermark of the fetch
    /// responses), not a ListOffsets answer: tansu 0.6 answers ListOffsets(latest) with the
    /// base offset of the last record batch plus one, short of the end after a batched produce.
    fn read_all(
        &self,
        topic: &str,
        mut each: impl FnMut(i64, Option<&[u8]>, &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut c = self.client();
        // Assigned partitions only, no group joined and nothing committed: a plain reader.
        c.set("enable.auto.commit", "false")
            .set("group.id", "ssf-hub-rebuild")
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer = c.create().map_err(kafka_err("creating the consumer"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(kafka_err("assigning"))?;
        consumer.assign(&tpl).map_err(kafka_err("assigning"))?;
        let deadline = Instant::now() + self.timeout();
        let mut next = 0;
        loop {
            if Instant::now() > deadline {
                return Err(StorageError::Storage(format!(
                    "kafka: reading {topic} back timed out at offset {next} \
                     (log.kafka.startup_timeout_ms)"
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
                Some(Err(e)) => return Err(kafka_err("reading back")(e)),
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    each(m.offset(), m.key(), m.payload().unwrap_or_default())?;
                }
            }
        }
    }
}

/// Opens (and rebuilds from Kafka) the log and the tables.
pub(super) fn open(settings: KafkaSettings) -> Result<Storage, StorageError> {
    settings.ensure_topics()?;
    let tables = Arc::new(TablesInner::open(&settings)?);
    let log = KafkaLog::open(&settings, tables.clone())?;
    Ok(Storage {
        log: Arc::new(log),
        tables: Arc::new(KafkaTables(tables)),
    })
}

// ---------------------------------------------------------------------------------------------
// The log.

pub(crate) struct KafkaLog {
    producer: FutureProducer,
    topic: String,
    tables: Arc<TablesInner>,
    /// One append at a time: the dedupe check and the positions it predicts hold only if no
    /// other append runs between the check and the delivery reports.
    appending: tokio::sync::Mutex<()>,
    state: Mutex<LogState>,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("topic", &self.topic)
            .finish()
    }
}

impl KafkaLog {
    fn open(settings: &KafkaSettings, tables: Arc<TablesInner>) -> Result<KafkaLog, StorageError> {
        let floor = match tables.get(LOG_TABLE, EARLIEST_KEY)? {
            Some(b) => super::from_be(&b)?,
            None => 1,
        };
        let now = crate::unix_now();
        let mut s = LogState::default();
        settings.read_all(&settings.events_topic, |offset, key, value| {
            let position = offset as u64 + 1;
            s.head = position;
            if let Some(key) = key {
                let expires = super::from_be(key)?;
                if expires >= now {
                    s.keys.insert(
                        key.get(8..).unwrap_or_default().to_vec(),
                        (position, expires),
                    );
                }
            }
            if position >= floor {
                s.bytes += value.len() as u64;
                s.events.insert(position, value.to_vec());
            }
            Ok(())
        })?;
        // Records removed by retention at the end of the topic leave the head where it was.
        s.head = s.head.max(floor.saturating_sub(1));
        Ok(KafkaLog {
            producer: settings.producer()?,
            topic: settings.events_topic.clone(),
            tables,
            appending: tokio::sync::Mutex::new(()),
            state: Mutex::new(s),
            timeout: Duration::from_millis(settings.delivery_timeout_ms),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        // Mutations complete before anything could panic, so a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Appended>, StorageError> {
        let _one = self.appending.lock().await;
        let now = crate::unix_now();
        // Decide, then send every new record before awaiting any report, so that the producer
        // batches them (linger.ms) into few requests.
        let mut out = Vec::with_capacity(batch.len());
        let mut fresh: Vec<(Position, Append)> = Vec::new();
        {
            let s = self.state();
            let mut batch_keys: HashMap<&[u8], Position> = HashMap::new();
            let mut next = s.head;
            for a in &batch {
                let known = s
                    .keys
                    .get(&a.key)
                    .filter(|(_, expires)| *expires >= now)
                    .map(|(p, _)| *p)
                    .or_else(|| batch_keys.get(a.key.as_slice()).copied());
                if let Some(p) = known {
                    out.push(Appended::Duplicate(p));
                    continue;
                }
                next += 1;
                batch_keys.insert(&a.key, next);
                out.push(Appended::New(next));
            }
            let mut seen = HashSet::new();
            for a in batch.iter() {
                if let Some(&p) = batch_keys.get(a.key.as_slice()) {
                    if seen.insert(p) {
                        fresh.push((p, a.clone()));
                    }
                }
            }
        }
        let mut reports = Vec::with_capacity(fresh.len());
        for (_, a) in &fresh {
            let mut key = super::be(a.key_expires_at).to_vec();
            key.extend_from_slice(&a.key);
            let record = FutureRecord::to(&self.topic)
                .partition(0)
                .key(&key)
                .payload(&a.record);
            match self.producer.send_result(record) {
                Ok(f) => reports.push(f),
                Err((e, _)) => {
                    reports.clear();
                    return Err(kafka_err("enqueueing a record")(e));
                }
            }
        }
        let mut failure = None;
        for ((expected, a), report) in fresh.into_iter().zip(reports) {
            let offset = match tokio::time::timeout(self.timeout * 2, report).await {
                Ok(Ok(Ok(d))) => d.offset,
                Ok(Ok(Err((e, _)))) => {
                    failure.get_or_insert(format!("kafka: delivery failed: {e}"));
                    continue;
                }
                Ok(Err(_)) | Err(_) => {
                    failure.get_or_insert("kafka: no delivery report".to_owned());
                    continue;
                }
            };
            let position = offset as u64 + 1;
            let mut s = self.state();
            if position != expected {
                // Another writer on the topic (or a retried batch) moved the offsets: the
                // positions promised to this batch are wrong, and so would be reads.
                failure.get_or_insert(format!(
                    "kafka: record landed at offset {offset}, expected {}: another writer \
                     appends to {}; one hub per topic prefix in this version",
                    expected - 1,
                    self.topic
                ));
            }
            s.insert(position, a.key, a.key_expires_at, a.record);
        }
        match failure {
            Some(f) => Err(StorageError::Storage(f)),
            None => Ok(out),
        }
    }

    async fn remove(&self, through: Position) -> Result<u64, StorageError> {
        let (removed, earliest) = {
            let mut s = self.state();
            let through = through.min(s.head);
            (s.remove_through(through), through + 1)
        };
        if removed > 0 {
            // The records stay in the topic until its own retention drops them (tansu, the test
            // broker, does not implement DeleteRecords); the floor, in the state topic, keeps a
            // rebuilt hub from serving them again.
            let tables = self.tables.clone();
            tokio::task::spawn_blocking(move || {
                tables.write(vec![Op::put(LOG_TABLE, EARLIEST_KEY, super::be(earliest))])?;
                tables.sync()
            })
            .await
            .map_err(|e| StorageError::Storage(format!("recording the retention floor: {e}")))??;
        }
        Ok(removed)
    }
}

impl EventLog for KafkaLog {
    fn append_batch(
        &self,
        batch: Vec<Append>,
    ) -> BoxFuture<'_, Result<Vec<Appended>, StorageError>> {
        Box::pin(self.append(batch))
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
        Box::pin(self.remove(through))
    }

    fn prune_keys(&self, now: u64) -> BoxFuture<'_, Result<usize, StorageError>> {
        // Keys live in the records' Kafka keys with their expiry; a rebuild skips expired ones,
        // so forgetting them here needs no write.
        Box::pin(std::future::ready(Ok(self.state().prune_keys(now))))
    }

    fn approximate_bytes(&self) -> u64 {
        self.state().bytes
    }
}

// ---------------------------------------------------------------------------------------------
// The tables.

/// The tables the hub sees. A thin handle: the log shares the inner tables (it records its
/// retention floor there), and the hub's shutdown check counts the handles it gave out.
#[derive(Debug)]
pub(crate) struct KafkaTables(Arc<TablesInner>);

impl Tables for KafkaTables {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.0.get(table, key)
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StorageError> {
        self.0.scan(table, prefix, start, limit)
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        self.0.write(ops)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.0.sync()
    }

    fn view(&self) -> Result<Arc<dyn TableView>, StorageError> {
        self.0.view()
    }
}

struct TablesInner {
    memory: MemoryTables,
    producer: FutureProducer,
    topic: String,
    /// Held across enqueue and apply, so that memory sees writes in the topic's order.
    writing: Mutex<Vec<DeliveryFuture>>,
    /// One sync at a time: a sync that found nothing pending must still wait for the reports an
    /// earlier, still running sync took, since those writes came before its call too.
    syncing: Mutex<()>,
    /// The first delivery failure: memory then holds a write Kafka lost, so every later sync
    /// fails until the hub restarts and rebuilds from the topic.
    failed: Mutex<Option<String>>,
    timeout: Duration,
}

impl std::fmt::Debug for TablesInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTables")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Drop for TablesInner {
    // Dropping a producer purges its queue: writes not yet synced would be lost at a clean stop.
    fn drop(&mut self) {
        if let Err(e) = self.producer.flush(self.timeout) {
            tracing::error!(error = %e, topic = %self.topic, "kafka: state writes not delivered at close");
        }
    }
}

impl TablesInner {
    fn open(settings: &KafkaSettings) -> Result<TablesInner, StorageError> {
        let memory = MemoryTables::default();
        settings.read_all(&settings.state_topic, |offset, _, value| {
            let ops = decode_ops(value).ok_or_else(|| {
                StorageError::Storage(format!(
                    "kafka: corrupt write at offset {offset} of {}",
                    settings.state_topic
                ))
            })?;
            memory.write(ops)
        })?;
        Ok(TablesInner {
            memory,
            producer: settings.producer()?,
            topic: settings.state_topic.clone(),
            writing: Mutex::new(Vec::new()),
            syncing: Mutex::new(()),
            failed: Mutex::new(None),
            timeout: Duration::from_millis(settings.delivery_timeout_ms),
        })
    }

    fn check(&self) -> Result<(), StorageError> {
        match &*self.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(f) => Err(StorageError::Storage(f.clone())),
            None => Ok(()),
        }
    }
}

impl Tables for TablesInner {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.memory.get(table, key)
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StorageError> {
        self.memory.scan(table, prefix, start, limit)
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.check()?;
        let key = match ops.as_slice() {
            [Op::Put { table, key, .. } | Op::Delete { table, key }] => {
                let mut k = Vec::with_capacity(table.len() + key.len() + 2);
                k.push(b'1');
                k.extend_from_slice(table.as_bytes());
                k.push(0);
                k.extend_from_slice(key);
                k
            }
            _ => {
                let mut k = b"m".to_vec();
                k.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                k
            }
        };
        let value = encode_ops(&ops);
        let mut pending = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let record = FutureRecord::to(&self.topic)
            .partition(0)
            .key(&key)
            .payload(&value);
        let report = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| kafka_err("enqueueing a state write")(e))?;
        pending.push(report);
        self.memory.write(ops)
    }

    fn sync(&self) -> Result<(), StorageError> {
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let reports = std::mem::take(&mut *self.writing.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = Instant::now() + self.timeout * 2;
        for report in reports {
            let failure = match block_on_until(report, deadline) {
                Some(Ok(Ok(_))) => continue,
                Some(Ok(Err((e, _)))) => format!("kafka: a state write failed: {e}"),
                Some(Err(_)) | None => "kafka: no delivery report for a state write".to_owned(),
            };
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(failure);
        }
        self.check()
    }

    fn view(&self) -> Result<Arc<dyn TableView>, StorageError> {
        self.memory.view()
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding of one write: per op, a kind byte (`p`/`d`), then length-prefixed (u32 BE) table,
// key and (puts only) value.

fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    let field = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    for op in ops {
        match op {
            Op::Put { table, key, value } => {
                out.push(b'p');
                field(&mut out, table.as_bytes());
                field(&mut out, key);
                field(&mut out, value);
            }
            Op::Delete { table, key } => {
                out.push(b'd');
                field(&mut out, table.as_bytes());
                field(&mut out, key);
            }
        }
    }
    out
}

fn decode_ops(mut b: &[u8]) -> Option<Vec<Op>> {
    fn field<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let f = b.get(4..4 + len)?;
        *b = &b[4 + len..];
        Some(f)
    }
    let mut ops = Vec::new();
    while let Some((&kind, rest)) = b.split_first() {
        b = rest;
        let table = intern(std::str::from_utf8(field(&mut b)?).ok()?);
        let key = field(&mut b)?.to_vec();
        ops.push(match kind {
            b'p' => Op::Put {
                table,
                key,
                value: field(&mut b)?.to_vec(),
            },
            b'd' => Op::Delete { table, key },
            _ => return None,
        });
    }
    Some(ops)
}

/// Table names are `&'static str` in the seam; names read back from Kafka are leaked once each
/// (a handful, fixed by the code).
fn intern(name: &str) -> &'static str {
    static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    match names.get(name) {
        Some(n) => n,
        None => {
            let n: &'static str = Box::leak(name.to_owned().into_boxed_str());
            names.insert(n);
            n
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Waiting for librdkafka's futures from synchronous code (`Tables::sync`, start-up). They are
// completed by librdkafka's own threads, so no runtime is needed: park until woken.

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn block_on_until<F: Future>(f: F, deadline: Instant) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        std::thread::park_timeout(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_survive_the_codec() {
        let ops = vec![
            Op::put("streams", b"a".to_vec(), b"1".to_vec()),
            Op::delete("cursors", b"\x00b".to_vec()),
            Op::put("streams", Vec::new(), Vec::new()),
        ];
        assert_eq!(decode_ops(&encode_ops(&ops)), Some(ops));
        assert_eq!(decode_ops(b"p\x00\x00\x00\x09str"), None);
    }
}
