//! Kafka storage: the log in a one-partition topic (position = offset + 1), the shared tables in
//! a compacted topic. Kafka is the only durable copy; each replica keeps a materialized view of
//! both topics in memory, read back when it starts and then kept current by one tailing
//! consumer per topic, so any number of replicas append and write side by side and a replica
//! with an empty data directory rebuilds everything from the brokers.
//!
//! - Log: a replica inserts its own record when Kafka's delivery report gives its offset, and
//!   everyone's records as its tailer reads them; the head moves only over positions with no
//!   gap below them, so no follower ever steps over a record another replica wrote.
//! - Tables: the state every replica materializes is the state topic applied in topic order.
//!   A replica applies its own writes at once (read-your-writes) and keeps them as pending until
//!   its tailer reads them back; a write of another replica that arrives meanwhile is applied
//!   and the pending writes touching the same rows are applied again over it, which is exactly
//!   topic order. A write Kafka refused leaves memory ahead of the topic: the tailer then
//!   rebuilds the tables from the topic (the refused write's caller got an error, so dropping
//!   it is right) and the replica is not ready until it has.
//! - Liveness: every replica writes a heartbeat marker to the state topic; the replicas whose
//!   markers a replica has read recently are the live members ([`super::Cluster`]), and a
//!   replica counts itself only while its own markers come back (the same round trip makes it
//!   ready, `/readyz`).
//!
//! Message formats (all written by this module only):
//! - `<events>`: key = 8-byte big-endian expiry of the dedupe key, then the dedupe key;
//!   value = the record. Keeping the expiry in the key (not a header) keeps the format to what
//!   every Kafka-compatible broker stores.
//! - `<state>`: value = `w`, the writer's 16-byte replica id, its 8-byte sequence number, then
//!   the ops of ONE `Tables::write` (so a write is atomic by construction; a heartbeat marker
//!   has no ops). Values without the `w` header (the first Kafka slice) are ops only.
//!   Kafka key = `1` + table + NUL + row key when the write has a single op (compaction then
//!   keeps only the latest write of that row, and an earlier multi-op write that touched the row
//!   replays before it), `m` + a random id for multi-op writes (never compacted away), and
//!   `h` + replica id for markers. Deletes are ordinary messages, never null tombstones: a
//!   tombstone is itself dropped after `delete.retention.ms`, and an older multi-op write
//!   would then resurrect the row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::memory::LogState;
use super::{
    Append, Appended, BoxFuture, Cluster, Entry, EventLog, MemoryTables, Op, Position, Row,
    Storage, StorageError, TableView, Tables,
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
    /// How often this replica writes its heartbeat marker.
    pub heartbeat_ms: u64,
    /// How long a replica whose markers stopped still counts as alive (and keeps its work).
    pub lease_ms: u64,
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
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("lease_ms", &self.lease_ms)
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

/// Every client's context: turns librdkafka's statistics into metrics (queue depth, broker
/// connection state, consumer lag) and its errors into log lines.
#[derive(Clone)]
struct Observed {
    /// `events` or `state`: which topic the client writes or follows.
    topic: &'static str,
    role: &'static str,
}

impl ClientContext for Observed {
    fn stats(&self, s: Statistics) {
        let labels = [("topic", self.topic), ("client", self.role)];
        if self.role == "producer" {
            metrics::gauge!("ssf_hub_kafka_producer_queue_messages", &labels).set(s.msg_cnt as f64);
        }
        for b in s.brokers.values().filter(|b| b.source != "internal") {
            metrics::gauge!(
                "ssf_hub_kafka_broker_up",
                "topic" => self.topic,
                "client" => self.role,
                "broker" => b.nodename.clone(),
            )
            .set(if b.state == "UP" { 1.0 } else { 0.0 });
        }
        if self.role == "tailer" {
            for t in s.topics.values() {
                for (id, p) in &t.partitions {
                    if *id >= 0 && p.consumer_lag >= 0 {
                        metrics::gauge!("ssf_hub_kafka_consumer_lag_messages", &labels)
                            .set(p.consumer_lag as f64);
                    }
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The readers at start stop at end-of-partition on purpose.
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        tracing::warn!(topic = self.topic, client = self.role, error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for Observed {}

type Producer_ = FutureProducer<Observed>;
type Consumer_ = BaseConsumer<Observed>;

/// A producer that is replaced when it stops working. After an outage an idempotent producer
/// can be left unable to send for good (tansu answers `ProducerFenced` to the epoch bump that
/// follows timed-out requests, and librdkafka does not always flag that as fatal); the hub must
/// recover without a restart, so a producer whose send failed is replaced, once, by the next
/// user. What the old one still held fails to its callers (an error, never a 202).
struct Producing {
    settings: KafkaSettings,
    topic: &'static str,
    /// The producer and its generation (so that failures of an old one replace nothing).
    current: Mutex<(u64, Arc<Producer_>)>,
}

impl Producing {
    fn new(settings: &KafkaSettings, topic: &'static str) -> Result<Producing, StorageError> {
        Ok(Producing {
            current: Mutex::new((0, Arc::new(settings.producer(topic)?))),
            settings: settings.clone(),
            topic,
        })
    }

    /// The producer to send with, and its generation.
    fn get(&self) -> Result<(u64, Arc<Producer_>), StorageError> {
        let mut current = lock(&self.current);
        if let Some((code, reason)) = current.1.client().fatal_error() {
            self.replace(&mut current, &format!("{code}: {reason}"))?;
        }
        Ok((current.0, current.1.clone()))
    }

    /// A send of generation `generation` failed: that producer is not used again.
    fn failed(&self, generation: u64, why: &str) {
        let mut current = lock(&self.current);
        if current.0 == generation {
            if let Err(e) = self.replace(&mut current, why) {
                tracing::error!(error = %e, topic = self.topic, "kafka: replacing the producer");
            }
        }
    }

    fn replace(&self, current: &mut (u64, Arc<Producer_>), why: &str) -> Result<(), StorageError> {
        tracing::warn!(
            topic = self.topic,
            reason = why,
            "kafka: a send failed; starting a new producer"
        );
        metrics::counter!("ssf_hub_kafka_producer_restarts_total", "topic" => self.topic)
            .increment(1);
        *current = (current.0 + 1, Arc::new(self.settings.producer(self.topic)?));
        Ok(())
    }
}

impl KafkaSettings {
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers)
            .set("statistics.interval.ms", "5000");
        c
    }

    fn producer(&self, topic: &'static str) -> Result<Producer_, StorageError> {
        let mut c = self.client();
        // Set after the operator's properties: these are what makes a 202 mean "in Kafka".
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string());
        c.create_with_context(Observed {
            topic,
            role: "producer",
        })
        .map_err(kafka_err("creating the producer"))
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
            let admin: AdminClient<Observed> = self
                .client()
                .create_with_context(Observed {
                    topic: "admin",
                    role: "admin",
                })
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
        let consumer = self.consumer("admin", "admin", false)?;
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

    /// A plain reader: assigned partitions only, no group joined, nothing committed.
    fn consumer(
        &self,
        topic: &'static str,
        role: &'static str,
        eof: bool,
    ) -> Result<Consumer_, StorageError> {
        let mut c = self.client();
        c.set("enable.auto.commit", "false")
            .set("group.id", "ssf-hub-reader")
            .set("enable.partition.eof", if eof { "true" } else { "false" })
            // A follower wakes as soon as a record is there; the broker holds an empty fetch
            // this long (tansu's consumer collapses below about 5 ms).
            .set("fetch.wait.max.ms", "10");
        c.create_with_context(Observed { topic, role })
            .map_err(kafka_err("creating the consumer"))
    }

    /// A follower of `topic` from `offset` on.
    fn tailer(
        &self,
        topic: &str,
        label: &'static str,
        offset: i64,
    ) -> Result<Consumer_, StorageError> {
        let consumer = self.consumer(label, "tailer", false)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
            .map_err(kafka_err("assigning"))?;
        consumer.assign(&tpl).map_err(kafka_err("assigning"))?;
        Ok(consumer)
    }

    /// Every message of `topic` (one partition) up to its end at the time of the call, in order;
    /// returns the offset after the last one.
    ///
    /// The end is where the consumer reports end-of-partition (the high watermark of the fetch
    /// responses), not a ListOffsets answer: tansu 0.6 answers ListOffsets(latest) with the
    /// base offset of the last record batch plus one, short of the end after a batched produce.
    fn read_all(
        &self,
        topic: &str,
        mut each: impl FnMut(i64, Option<&[u8]>, &[u8]) -> Result<(), StorageError>,
    ) -> Result<i64, StorageError> {
        let consumer = self.consumer("admin", "reader", true)?;
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
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(next),
                Some(Err(e)) => return Err(kafka_err("reading back")(e)),
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    each(m.offset(), m.key(), m.payload().unwrap_or_default())?;
                }
            }
        }
    }
}

/// Opens (and rebuilds from Kafka) the log and the tables, and starts following both topics.
pub(super) fn open(settings: KafkaSettings) -> Result<Storage, StorageError> {
    settings.ensure_topics()?;
    let tables = TablesInner::open(&settings)?;
    let log = KafkaLog::open(&settings, tables.clone())?;
    Ok(Storage {
        log: Arc::new(log),
        tables: Arc::new(KafkaTables(tables.clone())),
        // The revocation fold is derived from the log; every replica folds it itself.
        local: Arc::new(MemoryTables::default()),
        cluster: Some(Arc::new(KafkaCluster(tables))),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutation under these locks completes before anything could panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A follower thread's loop: polls `consumer` and hands each message to `each` while `owner`
/// is alive; `tick` runs between polls (heartbeats, membership, rebuilds).
fn follow<T: Send + Sync + 'static>(
    name: &str,
    owner: Weak<T>,
    mut consumer: Consumer_,
    each: fn(&T, i64, Option<&[u8]>, &[u8]),
    tick: fn(&T, &mut Consumer_),
) -> Result<(), StorageError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let mut warned = Instant::now() - Duration::from_secs(60);
            loop {
                let polled = consumer.poll(Duration::from_millis(100));
                let Some(owner) = owner.upgrade() else { return };
                match polled {
                    None => {}
                    Some(Ok(m)) => {
                        each(&owner, m.offset(), m.key(), m.payload().unwrap_or_default())
                    }
                    // librdkafka retries by itself; one line a minute is enough to see it.
                    Some(Err(e)) if warned.elapsed() > Duration::from_secs(60) => {
                        warned = Instant::now();
                        tracing::warn!(error = %e, "kafka: following a topic");
                    }
                    Some(Err(_)) => {}
                }
                tick(&owner, &mut consumer);
            }
        })
        .map(|_| ())
        .map_err(|e| StorageError::Storage(format!("starting the kafka follower: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The log.

pub(crate) struct KafkaLog {
    shared: Arc<LogShared>,
    producer: Producing,
    /// Records below the retention floor, read at start (see [`EventLog::take_removed`]).
    removed: Mutex<Vec<Entry>>,
    topic: String,
    tables: Arc<TablesInner>,
    /// One append at a time in this replica, so that its dedupe check sees its own earlier
    /// appends. (Two replicas handed the same SET at the same instant may both append it; every
    /// follower then delivers it twice with the same `jti`, which at-least-once allows.)
    appending: tokio::sync::Mutex<()>,
    timeout: Duration,
}

/// What the log's follower thread shares with the appenders.
struct LogShared {
    state: Mutex<LogState>,
    head: watch::Sender<Position>,
    /// The last append Kafka refused, and when: not ready until the brokers round-trip again.
    failed: Mutex<Option<(Instant, String)>>,
}

impl LogShared {
    fn state(&self) -> MutexGuard<'_, LogState> {
        lock(&self.state)
    }

    fn publish_head(&self, head: Position) {
        self.head.send_if_modified(|h| {
            let moved = head > *h;
            *h = (*h).max(head);
            moved
        });
    }

    /// A record read by the follower: everyone's, this replica's included.
    fn follow(&self, offset: i64, key: Option<&[u8]>, value: &[u8]) {
        let position = offset as u64 + 1;
        let head = {
            let mut s = self.state();
            match key.filter(|k| k.len() >= 8) {
                Some(k) => {
                    let expires = super::from_be(k).unwrap_or(0);
                    s.insert(position, k[8..].to_vec(), expires, value.to_vec());
                }
                None => s.insert(position, Vec::new(), 0, value.to_vec()),
            }
            // Everything below a record read from the partition is read too.
            s.advance_to(position);
            s.head
        };
        self.publish_head(head);
    }
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
        let mut removed = Vec::new();
        let next = settings.read_all(&settings.events_topic, |offset, key, value| {
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
            } else {
                removed.push(Entry {
                    position,
                    record: value.to_vec(),
                });
            }
            Ok(())
        })?;
        // Records removed by retention at the end of the topic leave the head where it was.
        s.head = s.head.max(floor.saturating_sub(1));
        s.floor = floor.saturating_sub(1);
        let shared = Arc::new(LogShared {
            head: watch::channel(s.head).0,
            state: Mutex::new(s),
            failed: Mutex::new(None),
        });
        let consumer = settings.tailer(&settings.events_topic, "events", next)?;
        follow(
            "kafka-events",
            Arc::downgrade(&shared),
            consumer,
            LogShared::follow,
            |_, _| {},
        )?;
        Ok(KafkaLog {
            shared,
            producer: Producing::new(settings, "events")?,
            removed: Mutex::new(removed),
            topic: settings.events_topic.clone(),
            tables,
            appending: tokio::sync::Mutex::new(()),
            timeout: Duration::from_millis(settings.delivery_timeout_ms),
        })
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.shared.state()
    }

    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Appended>, StorageError> {
        let result = self.append_inner(batch).await;
        let mut failed = lock(&self.shared.failed);
        match &result {
            Ok(_) => *failed = None,
            Err(e) => *failed = Some((Instant::now(), e.to_string())),
        }
        result
    }

    async fn append_inner(&self, batch: Vec<Append>) -> Result<Vec<Appended>, StorageError> {
        let _one = self.appending.lock().await;
        let now = crate::unix_now();
        // Decide, then send every new record before awaiting any report, so that the producer
        // batches them (linger.ms) into few requests. Per input: the position a known key
        // holds, or the index of the record sent for it (by it, or by an earlier repeat).
        enum Slot {
            Known(Position),
            Sent(usize),
            Repeat(usize),
        }
        let mut slots = Vec::with_capacity(batch.len());
        let mut fresh: Vec<&Append> = Vec::new();
        {
            let s = self.state();
            let mut sent: HashMap<&[u8], usize> = HashMap::new();
            for a in &batch {
                let known = s
                    .keys
                    .get(&a.key)
                    .filter(|(_, expires)| *expires >= now)
                    .map(|(p, _)| *p);
                slots.push(match (known, sent.get(a.key.as_slice())) {
                    (Some(p), _) => Slot::Known(p),
                    (None, Some(&i)) => Slot::Repeat(i),
                    (None, None) => {
                        sent.insert(&a.key, fresh.len());
                        fresh.push(a);
                        Slot::Sent(fresh.len() - 1)
                    }
                });
            }
        }
        let started = Instant::now();
        let (generation, producer) = self.producer.get()?;
        let mut reports = Vec::with_capacity(fresh.len());
        for a in &fresh {
            let mut key = super::be(a.key_expires_at).to_vec();
            key.extend_from_slice(&a.key);
            let record = FutureRecord::to(&self.topic)
                .partition(0)
                .key(&key)
                .payload(&a.record);
            match producer.send_result(record) {
                Ok(f) => reports.push(f),
                Err((e, _)) => return Err(kafka_err("enqueueing a record")(e)),
            }
        }
        let mut positions = Vec::with_capacity(fresh.len());
        let mut failure = None;
        for (a, report) in fresh.iter().zip(reports) {
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
            positions.push(position);
            self.state()
                .insert(position, a.key.clone(), a.key_expires_at, a.record.clone());
        }
        if !fresh.is_empty() {
            metrics::histogram!("ssf_hub_kafka_delivery_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        let head = self.state().head;
        self.shared.publish_head(head);
        if let Some(f) = failure {
            self.producer.failed(generation, &f);
            return Err(StorageError::Storage(f));
        }
        Ok(slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Known(p) => Appended::Duplicate(p),
                Slot::Sent(i) => Appended::New(positions[i]),
                Slot::Repeat(i) => Appended::Duplicate(positions[i]),
            })
            .collect())
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

    fn readiness(&self) -> Result<(), String> {
        let echoed = self.tables.unready()?;
        match &*lock(&self.shared.failed) {
            // Refused appends count until the brokers have round-tripped a write since.
            Some((at, reason)) if *at > echoed => Err(reason.clone()),
            _ => Ok(()),
        }
    }

    fn head_changes(&self) -> Option<watch::Receiver<Position>> {
        Some(self.shared.head.subscribe())
    }

    fn take_removed(&self) -> Vec<Entry> {
        std::mem::take(&mut *lock(&self.removed))
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

    fn catch_up(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.0.catch_up())
    }

    fn remote_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.0.remote.subscribe())
    }
}

type ReplicaId = [u8; 16];

struct TablesInner {
    memory: MemoryTables,
    producer: Producing,
    settings: KafkaSettings,
    me: ReplicaId,
    /// Held across enqueue and apply, so that memory sees this replica's writes in the
    /// topic's order; the follower holds it while it applies another replica's write.
    writing: Mutex<Writing>,
    /// One sync at a time: a sync that found nothing pending must still wait for the reports an
    /// earlier, still running sync took, since those writes came before its call too.
    syncing: Mutex<()>,
    /// Set when Kafka refused a write: memory is ahead of the topic until the follower has
    /// rebuilt the tables from it.
    diverged: AtomicBool,
    /// The highest sequence number of this replica's read back by the follower.
    echoed: watch::Sender<u64>,
    /// Bumped whenever another replica's write is applied (or the tables were rebuilt).
    remote: watch::Sender<u64>,
    members: Mutex<Members>,
    membership: watch::Sender<u64>,
    /// The last catch-up marker (when it was sent, its sequence number); one out at a time.
    barrier: tokio::sync::Mutex<Option<(Instant, u64)>>,
    timeout: Duration,
    heartbeat: Duration,
    lease: Duration,
}

#[derive(Default)]
struct Writing {
    seq: u64,
    /// Delivery reports not yet awaited by a sync: the sequence number and producer
    /// generation they are for.
    reports: Vec<(u64, u64, DeliveryFuture)>,
    /// This replica's writes not yet read back, by sequence number.
    pending: BTreeMap<u64, Pending>,
    /// Reports of markers sent, with the producer generation that sent them.
    markers: Vec<(u64, DeliveryFuture)>,
}

struct Pending {
    ops: Vec<Op>,
    rows: HashSet<(&'static str, Vec<u8>)>,
}

struct Members {
    /// When each other replica's last message was read (by this replica's clock, so clock skew
    /// between machines plays no part).
    seen: HashMap<ReplicaId, Instant>,
    /// When this replica last read one of its own markers back.
    echoed_at: Instant,
    live: Vec<String>,
    started: Instant,
    next_beat: Instant,
}

impl std::fmt::Debug for TablesInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTables")
            .field("topic", &self.settings.state_topic)
            .finish()
    }
}

impl Drop for TablesInner {
    // Dropping a producer purges its queue: writes not yet synced would be lost at a clean stop.
    fn drop(&mut self) {
        if let Err(e) = lock(&self.producer.current).1.flush(self.timeout) {
            tracing::error!(error = %e, topic = %self.settings.state_topic, "kafka: state writes not delivered at close");
        }
    }
}

fn row_of(op: &Op) -> (&'static str, Vec<u8>) {
    match op {
        Op::Put { table, key, .. } | Op::Delete { table, key } => (*table, key.clone()),
    }
}

impl TablesInner {
    fn open(settings: &KafkaSettings) -> Result<Arc<TablesInner>, StorageError> {
        let memory = MemoryTables::default();
        let next = read_state(settings, &memory, None)?;
        let now = Instant::now();
        let inner = Arc::new(TablesInner {
            memory,
            producer: Producing::new(settings, "state")?,
            settings: settings.clone(),
            me: *uuid::Uuid::new_v4().as_bytes(),
            writing: Mutex::default(),
            syncing: Mutex::new(()),
            diverged: AtomicBool::new(false),
            echoed: watch::channel(0).0,
            remote: watch::channel(0).0,
            members: Mutex::new(Members {
                seen: HashMap::new(),
                // Reading the topic back just round-tripped the brokers.
                echoed_at: now,
                live: Vec::new(),
                started: now,
                next_beat: now,
            }),
            membership: watch::channel(0).0,
            barrier: tokio::sync::Mutex::new(None),
            timeout: Duration::from_millis(settings.delivery_timeout_ms),
            heartbeat: Duration::from_millis(settings.heartbeat_ms),
            lease: Duration::from_millis(settings.lease_ms),
        });
        let consumer = settings.tailer(&settings.state_topic, "state", next)?;
        follow(
            "kafka-state",
            Arc::downgrade(&inner),
            consumer,
            TablesInner::follow,
            TablesInner::tick,
        )?;
        inner.first_round_trip()?;
        Ok(inner)
    }

    /// Sends a marker and waits (bounded by the start-up timeout) until the follower reads it
    /// back: the replica starts ready and a member only once it has proven both directions.
    fn first_round_trip(&self) -> Result<(), StorageError> {
        let seq = self.marker()?;
        let deadline = Instant::now() + self.settings.timeout();
        while *self.echoed.borrow() < seq {
            if Instant::now() > deadline {
                return Err(StorageError::Storage(format!(
                    "kafka: a marker written to {} was not read back in time \
                     (log.kafka.startup_timeout_ms)",
                    self.settings.state_topic
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut m = lock(&self.members);
        m.echoed_at = Instant::now();
        Ok(())
    }

    fn id(&self) -> String {
        uuid::Uuid::from_bytes(self.me).simple().to_string()
    }

    /// A message read by the follower.
    fn follow(&self, offset: i64, _key: Option<&[u8]>, value: &[u8]) {
        let Some((writer, seq, ops)) = decode_message(value) else {
            tracing::error!(offset, topic = %self.settings.state_topic, "kafka: corrupt state write skipped");
            return;
        };
        if writer == Some(self.me) {
            lock(&self.writing).pending.remove(&seq);
            self.echoed.send_if_modified(|e| {
                let moved = seq > *e;
                *e = (*e).max(seq);
                moved
            });
            if ops.is_empty() {
                lock(&self.members).echoed_at = Instant::now();
            }
            return;
        }
        if let Some(w) = writer {
            lock(&self.members).seen.insert(w, Instant::now());
        }
        if ops.is_empty() {
            return;
        }
        {
            let writing = lock(&self.writing);
            let rows: HashSet<_> = ops.iter().map(row_of).collect();
            if let Err(e) = self.memory.write(ops) {
                tracing::error!(error = %e, "kafka: applying a state write");
            }
            // This replica's writes not read back yet come later in the topic: where they touch
            // the same rows, they win.
            for p in writing.pending.values() {
                if !p.rows.is_disjoint(&rows) {
                    let again = p
                        .ops
                        .iter()
                        .filter(|op| rows.contains(&row_of(op)))
                        .cloned();
                    let _ = self.memory.write(again.collect());
                }
            }
        }
        self.remote.send_modify(|n| *n += 1);
    }

    /// Between polls: the heartbeat, the live members, and a rebuild after a refused write.
    fn tick(&self, consumer: &mut Consumer_) {
        let now = Instant::now();
        let beat = {
            let mut m = lock(&self.members);
            let beat = now >= m.next_beat;
            if beat {
                m.next_beat = now + self.heartbeat;
            }
            let live = self.live(&m, now);
            if live != m.live {
                tracing::info!(members = ?live, me = %self.id(), "kafka: hub replicas changed");
                metrics::gauge!("ssf_hub_kafka_replicas_live").set(live.len() as f64);
                m.live = live;
                self.membership.send_modify(|n| *n += 1);
            }
            beat
        };
        if beat {
            self.check_markers();
            // A full queue or a down broker: the missing echo makes this replica unready.
            let _ = self.marker();
        }
        if self.diverged.load(Ordering::Acquire) {
            self.rebuild(consumer);
        }
    }

    fn live(&self, m: &Members, now: Instant) -> Vec<String> {
        // Until it has listened for two heartbeats a replica does not know who else is there,
        // and claims nothing.
        if now.duration_since(m.started) < self.heartbeat * 2 {
            return Vec::new();
        }
        let mut live: Vec<String> = m
            .seen
            .iter()
            .filter(|(_, at)| now.duration_since(**at) < self.lease)
            .map(|(id, _)| uuid::Uuid::from_bytes(*id).simple().to_string())
            .collect();
        // This replica stops counting itself well before the others stop counting it, so that
        // its work is let go before anyone takes it over.
        if now.duration_since(m.echoed_at) < self.lease / 2 {
            live.push(self.id());
        }
        live.sort();
        live
    }

    /// Why this replica is not ready, or when it last round-tripped the brokers.
    fn unready(&self) -> Result<Instant, String> {
        if self.diverged.load(Ordering::Acquire) {
            return Err("kafka refused a state write; rebuilding the state from the topic".into());
        }
        let echoed_at = lock(&self.members).echoed_at;
        let bound = (self.heartbeat * 3).max(Duration::from_secs(2));
        let since = echoed_at.elapsed();
        if since > bound {
            return Err(format!(
                "no round trip through the kafka brokers for {} ms",
                since.as_millis()
            ));
        }
        Ok(echoed_at)
    }

    /// Looks at the reports of markers sent so far, without waiting: a failed one means the
    /// producer needs replacing (markers may be the only thing sent while the hub is idle).
    fn check_markers(&self) {
        let mut writing = lock(&self.writing);
        let mut failed = None;
        writing.markers.retain_mut(|(generation, report)| {
            match block_on_until(&mut *report, Instant::now()) {
                None => true,
                Some(Ok(Ok(_))) => false,
                Some(_) => {
                    failed = Some(*generation);
                    false
                }
            }
        });
        drop(writing);
        if let Some(generation) = failed {
            self.producer
                .failed(generation, "a heartbeat marker was not delivered");
        }
    }

    /// Sends a marker (no ops) and returns its sequence number.
    fn marker(&self) -> Result<u64, StorageError> {
        let mut writing = lock(&self.writing);
        let mut key = b"h".to_vec();
        key.extend_from_slice(&self.me);
        // The follower reading the marker back is the proof it was written; its report only
        // tells whether the producer still works (looked at on the next tick).
        let (seq, generation, report) = self.send(&mut writing, &key, &[], "a marker")?;
        writing.markers.push((generation, report));
        Ok(seq)
    }

    /// Sends one message of this replica (`ops`, none for a marker) under the next sequence
    /// number; returns the number, the producer generation and the delivery report.
    fn send(
        &self,
        writing: &mut Writing,
        key: &[u8],
        ops: &[Op],
        what: &str,
    ) -> Result<(u64, u64, DeliveryFuture), StorageError> {
        let seq = writing.seq + 1;
        let value = encode_message(&self.me, seq, ops);
        let record = FutureRecord::to(&self.settings.state_topic)
            .partition(0)
            .key(key)
            .payload(&value);
        let (generation, producer) = self.producer.get()?;
        let report = producer
            .send_result(record)
            .map_err(|(e, _)| kafka_err(&format!("enqueueing {what}"))(e))?;
        writing.seq = seq;
        Ok((seq, generation, report))
    }

    /// Sends a marker and waits for it to come back: everything in the topic before it is then
    /// applied. Callers that arrive while one is out wait for it and share the next, so a flood
    /// of calls costs the brokers a marker per round trip, not one per call.
    async fn catch_up(&self) -> Result<(), StorageError> {
        let arrived = Instant::now();
        let mut last = self.barrier.lock().await;
        if let Some((sent_at, seq)) = *last {
            if sent_at >= arrived && *self.echoed.borrow() >= seq {
                return Ok(());
            }
        }
        let sent_at = Instant::now();
        let seq = self.marker()?;
        *last = Some((sent_at, seq));
        let mut echoed = self.echoed.subscribe();
        let caught_up = tokio::time::timeout(self.timeout, echoed.wait_for(|e| *e >= seq))
            .await
            .is_ok_and(|r| r.is_ok());
        if caught_up {
            Ok(())
        } else {
            Err(StorageError::Storage(
                "kafka: the state topic could not be read up to date".into(),
            ))
        }
    }

    /// After a refused write: reads the state topic again, keeps the writes still on their way,
    /// and swaps the result in. Retried on the next tick while the brokers are away.
    fn rebuild(&self, consumer: &mut Consumer_) {
        let fresh = MemoryTables::default();
        let mut mine = HashSet::new();
        let next = match read_state(&self.settings, &fresh, Some((&self.me, &mut mine))) {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "kafka: rebuilding the state; will retry");
                std::thread::sleep(Duration::from_millis(500));
                return;
            }
        };
        let Ok(tailer) = self
            .settings
            .tailer(&self.settings.state_topic, "state", next)
        else {
            return;
        };
        {
            let mut writing = lock(&self.writing);
            // Reports still out stay with their writes; refused ones were dropped by the sync
            // that saw them, and writes already in the topic were just read.
            let out: HashSet<u64> = writing.reports.iter().map(|(s, _, _)| *s).collect();
            writing
                .pending
                .retain(|seq, _| out.contains(seq) && !mine.contains(seq));
            for p in writing.pending.values() {
                let _ = fresh.write(p.ops.clone());
            }
            self.memory.replace_with(fresh);
            *consumer = tailer;
            self.diverged.store(false, Ordering::Release);
        }
        tracing::info!(topic = %self.settings.state_topic, "kafka: state rebuilt from the topic");
        self.remote.send_modify(|n| *n += 1);
    }
}

/// Applies every write in the state topic to `memory`; with `mine`, notes the sequence numbers
/// of that replica's writes found. Returns the offset after the last message.
fn read_state(
    settings: &KafkaSettings,
    memory: &MemoryTables,
    mut mine: Option<(&ReplicaId, &mut HashSet<u64>)>,
) -> Result<i64, StorageError> {
    settings.read_all(&settings.state_topic, |offset, _, value| {
        let (writer, seq, ops) = decode_message(value).ok_or_else(|| {
            StorageError::Storage(format!(
                "kafka: corrupt write at offset {offset} of {}",
                settings.state_topic
            ))
        })?;
        if let Some((me, seen)) = mine.as_mut() {
            if writer.as_ref() == Some(*me) {
                seen.insert(seq);
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        memory.write(ops)
    })
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
        if self.diverged.load(Ordering::Acquire) {
            return Err(StorageError::Storage(
                "kafka refused an earlier state write; rebuilding the state from the topic".into(),
            ));
        }
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
        let mut writing = lock(&self.writing);
        let (seq, generation, report) = self.send(&mut writing, &key, &ops, "a state write")?;
        writing.reports.push((seq, generation, report));
        let rows = ops.iter().map(row_of).collect();
        self.memory.write(ops.clone())?;
        writing.pending.insert(seq, Pending { ops, rows });
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        let _one = lock(&self.syncing);
        let reports = std::mem::take(&mut lock(&self.writing).reports);
        let deadline = Instant::now() + self.timeout * 2;
        let mut failure = None;
        for (seq, generation, report) in reports {
            let refused = match block_on_until(report, deadline) {
                Some(Ok(Ok(_))) => continue,
                Some(Ok(Err((e, _)))) => format!("kafka: a state write failed: {e}"),
                Some(Err(_)) | None => "kafka: no delivery report for a state write".to_owned(),
            };
            self.producer.failed(generation, &refused);
            // Memory holds a write the topic may not: rebuild from the topic.
            lock(&self.writing).pending.remove(&seq);
            self.diverged.store(true, Ordering::Release);
            failure.get_or_insert(refused);
        }
        match failure {
            Some(f) => Err(StorageError::Storage(f)),
            None if self.diverged.load(Ordering::Acquire) => Err(StorageError::Storage(
                "kafka refused an earlier state write; rebuilding the state from the topic".into(),
            )),
            None => Ok(()),
        }
    }

    fn view(&self) -> Result<Arc<dyn TableView>, StorageError> {
        self.memory.view()
    }
}

/// The replicas sharing the topics, as this replica's follower sees them.
#[derive(Debug)]
struct KafkaCluster(Arc<TablesInner>);

impl Cluster for KafkaCluster {
    fn me(&self) -> String {
        self.0.id()
    }

    fn members(&self) -> Vec<String> {
        lock(&self.0.members).live.clone()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.membership.subscribe()
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding of one message of the state topic: `w`, writer id, sequence number, then per op a
// kind byte (`p`/`d`) and length-prefixed (u32 BE) table, key and (puts only) value.

fn encode_message(writer: &ReplicaId, seq: u64, ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity(25);
    out.push(b'w');
    out.extend_from_slice(writer);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&encode_ops(ops));
    out
}

/// The writer and its sequence number (absent in the first slice's messages) and the ops.
fn decode_message(b: &[u8]) -> Option<(Option<ReplicaId>, u64, Vec<Op>)> {
    match b.split_first() {
        Some((b'w', rest)) => {
            let writer: ReplicaId = rest.get(..16)?.try_into().ok()?;
            let seq = u64::from_be_bytes(rest.get(16..24)?.try_into().ok()?);
            Some((Some(writer), seq, decode_ops(&rest[24..])?))
        }
        _ => Some((None, 0, decode_ops(b)?)),
    }
}

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
        assert_eq!(decode_ops(&encode_ops(&ops)), Some(ops.clone()));
        assert_eq!(decode_ops(b"p\x00\x00\x00\x09str"), None);
        let me = [7u8; 16];
        assert_eq!(
            decode_message(&encode_message(&me, 42, &ops)),
            Some((Some(me), 42, ops.clone()))
        );
        assert_eq!(
            decode_message(&encode_message(&me, 1, &[])),
            Some((Some(me), 1, vec![]))
        );
        // The first slice's messages: ops only.
        assert_eq!(decode_message(&encode_ops(&ops)), Some((None, 0, ops)));
    }
}
