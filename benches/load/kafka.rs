//! Kafka mode against its own broker and against the embedded engine, in one run (issue 10).
//! The bench starts a tansu broker of its own (`tansu` on the PATH, memory storage) and runs
//! every hub as a child process of this executable (`KB_CHILD=hub`), so each replica has its
//! own metrics recorder (the `ssf_hub_kafka_replicas_live` gauge) and its CPU is read by thread
//! from `/proc/<pid>/task`, like the broker's.
//! 1. Broker baseline: an rdkafka producer (acks=all, idempotent, `linger.ms` = `KB_LINGER_MS`,
//!    5) and a consumer (`fetch.wait.max.ms` 10, assigned partition, no group) on a fresh
//!    topic; `KB_RECORD_BYTES` (1024) records at `KB_RATE` (1,000)/s for 1 s + `KB_SECS` (10):
//!    produce → consume, produce → acknowledged and acknowledged → consumed latency, broker
//!    CPU per record.
//! 2. Kafka, two replicas on one prefix, one push stream to an axum receiver here, ingest
//!    alternating between the replicas (even SETs to the first, odd to the second) in an open
//!    loop at the same rate and length: ingest send → push arrival, split by whether the
//!    replica that took the SET is the one that pushes the stream; send → 202 and 202 → push
//!    arrival; hub and broker CPU per event; every event delivered at least once.
//! 3. The same on the embedded engine (one hub, fjall in a tempdir).
//! 4. Ceilings: `KB_CLIENTS` (64) closed-loop senders for 1 s + `KB_CEILING_SECS` (10), no
//!    stream, on the two replicas (alternating) and on the embedded hub, with the CPU of every
//!    thread group of every process, so the bottleneck can be named.
//!
//! The hubs' SETs are padded so that a signed SET is `KB_RECORD_BYTES` long; the Kafka record
//! the hub writes is that SET plus its normalized event and metadata, so larger. Each
//! phase also reports the hubs' group commits of the log (their own metrics). Before each phase
//! the bench waits up to `KB_QUIET_SECS` (60) for other processes to leave the cores alone, and
//! the report says how much they took anyway.

#[cfg(not(feature = "kafka"))]
pub(crate) fn run() {
    println!("the kafka scenario needs the Kafka backend: cargo bench --features kafka --bench load -- kafka");
}

#[cfg(not(feature = "kafka"))]
pub(crate) fn child() -> bool {
    false
}

#[cfg(feature = "kafka")]
pub(crate) use imp::{child, run};

#[cfg(feature = "kafka")]
mod imp {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Message, Offset, TopicPartitionList};
    use reqwest::Method;
    use serde_json::{json, Value};
    use ssf_hub::config::Secret;
    use ssf_hub::sign::SetSigner;
    use tokio::runtime::Runtime;

    use crate::delivery::{rx_push, Arrival, Rx, RX_AUD};
    use crate::support::drive::{closed_loop, job, open_loop, Job};
    use crate::support::hub::{self, Api, Hub, Metrics, CREDENTIAL_CHANGE as CC};
    use crate::support::machine::{self as m, env_u64, CpuUse, Phase, ProcCpu};
    use crate::support::{fail, init_tracing, kfmt, lock, met, ms, progress, ratio, report};
    use crate::support::{signed_us, Pct, PCT_HEADER};

    /// `log.kafka.key_encryption_key` of every replica (a bench value, not a secret).
    const KEK: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
    const ISSUER: &str = "https://hub.bench.example";
    /// The receiver path of the push stream.
    const K: u32 = 1;
    const PREFIX: &str = "kbench";

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    /// The bench's own tansu broker, killed when dropped.
    struct Broker {
        child: Child,
        addr: String,
    }

    impl Broker {
        fn start() -> Broker {
            let addr = format!("127.0.0.1:{}", free_port());
            let url = format!("tcp://{addr}");
            let mut cmd = Command::new("tansu");
            cmd.args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ]);
            cmd.args(["--storage-engine", "memory://tansu/"]);
            let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
            let child = child.expect("tansu on the PATH (scripts/test.sh installs it)");
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(&addr).is_err() {
                assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Broker { child, addr }
        }

        fn cpu(&self) -> ProcCpu {
            ProcCpu::start(self.child.id())
        }
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A hub in a child process of this executable; it stops when its stdin closes.
    struct HubChild {
        child: Child,
        api: Api,
        _dir: tempfile::TempDir,
    }

    impl HubChild {
        /// A hub on `log_url` (the embedded engine if empty) with the producer's `linger`.
        fn start(name: &str, log_url: &str, linger: u64, jwks: &Value) -> HubChild {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("source.jwks.json"), jwks.to_string()).expect("jwks");
            let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
            cmd.env("KB_CHILD", name).env("KB_DIR", dir.path());
            cmd.env("KB_LOG_URL", log_url)
                .env("KB_LINGER_MS", linger.to_string());
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
            let mut child = cmd.spawn().expect("child hub");
            let mut out = BufReader::new(child.stdout.take().expect("stdout"));
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let Some(base) = line.trim().strip_prefix("ADDR ").map(str::to_owned) else {
                let _ = child.kill();
                panic!("child hub {name} did not start: {line:?}");
            };
            // Anything else it prints goes on to stderr, so its pipe never fills or breaks.
            std::thread::spawn(move || {
                out.lines()
                    .map_while(Result::ok)
                    .for_each(|l| eprintln!("{l}"))
            });
            let api = Api {
                base,
                client: hub::http_client(),
                accepted: Arc::default(),
            };
            HubChild {
                child,
                api,
                _dir: dir,
            }
        }

        fn cpu(&self) -> ProcCpu {
            ProcCpu::start(self.child.id())
        }
    }

    impl Drop for HubChild {
        fn drop(&mut self) {
            drop(self.child.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// When this process is a hub child (`KB_CHILD` set): runs the hub until stdin closes.
    pub(crate) fn child() -> bool {
        let Ok(name) = std::env::var("KB_CHILD") else {
            return false;
        };
        init_tracing("warn");
        let dir = std::path::PathBuf::from(std::env::var("KB_DIR").expect("KB_DIR"));
        let jwks = std::fs::read_to_string(dir.join("source.jwks.json")).expect("jwks");
        let mut c = hub::config(&dir, &serde_json::from_str(&jwks).expect("jwks json"));
        c.issuer = ISSUER.into();
        c.delivery.allow_private_targets = vec!["127.0.0.0/8".into()];
        let url = std::env::var("KB_LOG_URL").unwrap_or_default();
        if !url.is_empty() {
            c.log.url = url;
            c.log.kafka.key_encryption_key = Some(Secret::new(KEK));
            c.log.kafka.linger_ms = env_u64("KB_LINGER_MS", 5);
        }
        let rt = hub::runtime("hub", m::cores());
        let hub = Hub::start(&rt, c);
        println!("ADDR {}", hub.base);
        // Until the bench closes our stdin (or exits).
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        hub.stop(&rt);
        eprintln!("[load] child hub {name} stopped");
        true
    }

    /// What the run shares: knobs, runtimes, the receiver and the source's key.
    struct Ctx {
        rate: f64,
        secs: u64,
        linger: u64,
        bytes: usize,
        clients: usize,
        ceiling_secs: u64,
        quiet: Duration,
        load: Runtime,
        _rx_rt: Runtime,
        rx: Arc<Rx>,
        rx_base: String,
        signer: SetSigner,
        pad: usize,
        next: Mutex<u32>,
    }

    impl Ctx {
        /// The next `n` txn numbers.
        fn txns(&self, n: u32) -> std::ops::Range<u32> {
            let mut next = lock(&self.next);
            *next += n;
            *next - n..*next
        }

        /// SETs of `KB_RECORD_BYTES` for `txns`, signed on every core.
        fn sets(&self, txns: &std::ops::Range<u32>) -> Arc<Vec<Bytes>> {
            let (iss, aud) = (hub::SOURCE_ISS, json!([hub::SOURCE_AUD]));
            let range = u64::from(txns.start)..u64::from(txns.end);
            Arc::new(hub::presign(&self.signer, range, |i| {
                let (jti, txn) = (format!("kb-{i:010}"), format!("t{i:09}"));
                hub::credential_change(iss, aud.clone(), &jti, Some(&txn), self.pad)
            }))
        }

        fn n(&self) -> u32 {
            (self.rate * (1.0 + self.secs as f64)).ceil() as u32
        }

        /// Samples from this index on are measured (the first second warms up).
        fn warm(&self) -> u64 {
            self.rate.ceil() as u64
        }
    }

    /// Request `i` pushes `sets[i]` to `apis[i % apis.len()]`.
    fn alternate(apis: &[&HubChild], sets: Arc<Vec<Bytes>>) -> Job {
        let apis: Vec<(Api, String)> = apis
            .iter()
            .map(|h| (h.api.clone(), h.api.ingest_url()))
            .collect();
        job(move |i| {
            let (api, url) = apis[i as usize % apis.len()].clone();
            let set = sets.get(i as usize).cloned();
            async move {
                let set = set.ok_or("the pre-signed pool ran out")?;
                api.ingest(&url, set).await.map(drop)
            }
        })
    }

    /// Percent of the machine used by processes that are not this bench, its hubs or its
    /// broker, over a phase: `phase.others()` less what `ours` used.
    fn noise(phase: &Phase, ours: &[&CpuUse]) -> f64 {
        let wall = ours.first().map_or(1.0, |u| u.wall.as_secs_f64()) * m::cores() as f64;
        let ours: f64 = ours.iter().map(|u| u.process).sum();
        (phase.others() - 100.0 * ours / wall).max(0.0)
    }

    /// The processes of the bench's own hubs and broker.
    fn pids(hubs: &[&HubChild], broker: Option<&Broker>) -> Vec<u32> {
        let hubs = hubs.iter().map(|h| h.child.id());
        hubs.chain(broker.map(|b| b.child.id())).collect()
    }

    /// Waits (at most `KB_QUIET_SECS`) until processes other than this bench and `pids` (its
    /// hubs and broker, whose idle work is no noise) use under 5% of the machine over 3 s, so
    /// a phase does not start in the middle of somebody else's build.
    fn quiet(x: &Ctx, pids: &[u32]) {
        let start = Instant::now();
        loop {
            let (phase, cpus) = (Phase::start(), pids.iter().map(|&p| ProcCpu::start(p)));
            let cpus: Vec<ProcCpu> = cpus.collect();
            std::thread::sleep(Duration::from_secs(3));
            let used: Vec<CpuUse> = cpus.iter().map(ProcCpu::used).collect();
            let others = noise(&phase, &used.iter().collect::<Vec<_>>());
            let waited = start.elapsed();
            if others < 5.0 {
                if waited > Duration::from_secs(4) {
                    println!(
                        "  (waited {:.0} s for other load to stop)",
                        waited.as_secs_f64()
                    );
                }
                return;
            }
            if waited >= x.quiet {
                return println!(
                    "  (machine still busy after {waited:.0?}: {others:.0}% used by others)"
                );
            }
        }
    }

    /// Result of the broker baseline.
    struct Baseline {
        consume: Pct,
        ack: Pct,
        /// Acknowledged → consumed: the consumer's side alone.
        after_ack: Pct,
        broker_us: f64,
        noise: f64,
    }

    /// 1. The broker alone: produce → consume of 1 KB records at the scenario's rate.
    fn baseline(x: &Ctx, broker: &Broker) -> Baseline {
        let topic = format!("{PREFIX}.baseline");
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &broker.addr);
        let admin: AdminClient<DefaultClientContext> = c.create().expect("admin client");
        let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1));
        let created = x
            .load
            .block_on(admin.create_topics([&new], &AdminOptions::new()));
        match created {
            Ok(results) => results
                .into_iter()
                .filter_map(Result::err)
                .for_each(|(t, code)| fail!("creating {t}: {code}")),
            Err(e) => fail!("creating {topic}: {e}"),
        }
        let mut p = c.clone();
        p.set("enable.idempotence", "true").set("acks", "all");
        let producer: FutureProducer = p
            .set("linger.ms", x.linger.to_string())
            .create()
            .expect("producer");
        let mut k = c.clone();
        k.set("group.id", "kbench-baseline")
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = k.set("fetch.wait.max.ms", "10").create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .expect("tpl");
        consumer.assign(&tpl).expect("assign");

        // The consumer thread: when each record (by its key, the request index) arrived.
        let n = u64::from(x.n());
        let (stop, seen) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(HashMap::new())),
        );
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let consume = std::thread::Builder::new()
            .name("load-consume".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) && (lock(&seen2).len() as u64) < n {
                    if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
                        let at = Instant::now();
                        let key = msg.key().and_then(|k| <[u8; 8]>::try_from(k).ok());
                        if let Some(k) = key {
                            lock(&seen2).entry(u64::from_be_bytes(k)).or_insert(at);
                        }
                    }
                }
            });
        let consume = consume.expect("consumer thread");
        let payload: Arc<[u8]> = vec![b'x'; x.bytes].into();
        let (topic2, producer2) = (Arc::<str>::from(topic.as_str()), producer.clone());
        let send = job(move |i| {
            let key = i.to_be_bytes();
            let record = FutureRecord::to(&topic2)
                .partition(0)
                .key(&key[..])
                .payload(&payload[..]);
            let sent = producer2
                .send_result(record)
                .map_err(|(e, _)| e.to_string());
            async move {
                match sent?.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("no delivery report".into()),
                }
            }
        });
        quiet(x, &[broker.child.id()]);
        let (phase, cpu) = (Phase::start(), broker.cpu());
        let run = open_loop(x.load.handle(), x.rate, n, send);
        // Everything consumed, or 30 s more.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (lock(&seen).len() as u64) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        let _ = consume.join();
        let used = cpu.used();
        phase.end("the broker baseline (this process: producer, consumer)");
        println!("  broker: {:.2} s CPU ({})", used.process, used.line());
        run.check("baseline produce");
        let seen = lock(&seen).clone();
        if (seen.len() as u64) < n {
            fail!("baseline: {} of {n} records consumed", seen.len());
        }
        let measured = run.from(x.warm());
        let got = measured
            .samples
            .iter()
            .filter_map(|s| Some((s, *seen.get(&s.i)?)));
        let (lat, after_ack): (Vec<f64>, Vec<f64>) = got
            .map(|(s, at)| (signed_us(at, s.start), signed_us(at, s.end)))
            .unzip();
        Baseline {
            consume: Pct::of(lat),
            after_ack: Pct::of(after_ack),
            ack: measured.lat_start(),
            broker_us: used.process * 1e6 / n as f64,
            noise: noise(&phase, &[&used]),
        }
    }

    /// A reader of the hubs' state topic.
    fn state_reader(broker: &Broker) -> BaseConsumer {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &broker.addr)
            .set("group.id", "kbench-state");
        c.create().expect("consumer")
    }

    /// The state topic's high watermark (tansu answers with the base offset of the last batch
    /// plus one, so this is short by at most one batch).
    fn state_head(c: &BaseConsumer) -> i64 {
        let topic = format!("{PREFIX}.state");
        let wm = c.fetch_watermarks(&topic, 0, Duration::from_secs(5));
        wm.map_or(0, |(_, high)| high)
    }

    /// The three longest pauses between consecutive arrivals: (seconds after `from`, ms).
    fn gaps(arrived: &HashMap<u32, Instant>, from: Instant) -> Vec<(f64, f64)> {
        let mut at: Vec<Instant> = arrived.values().copied().collect();
        at.sort_unstable();
        let mut gaps: Vec<(f64, f64)> = at
            .windows(2)
            .map(|w| (signed_us(w[0], from) / 1e6, signed_us(w[1], w[0]) / 1e3))
            .collect();
        gaps.sort_by(|a, b| b.1.total_cmp(&a.1));
        gaps.truncate(3);
        gaps
    }

    /// Result of one push scenario.
    struct Push {
        /// Ingest send → push arrival: all, then by whether the replica that took the SET
        /// pushes the stream (none for one hub).
        e2e: Pct,
        at_owner: Pct,
        at_other: Pct,
        /// Ingest send → 202.
        accepted: Pct,
        /// 202 → push arrival: the delivering side alone.
        after_202: Pct,
        /// The three longest pauses between consecutive first arrivals: (seconds into the
        /// phase, ms).
        gaps: Vec<(f64, f64)>,
        hub_us: f64,
        broker_us: f64,
        events: usize,
        missing: usize,
        dups: usize,
        achieved: f64,
        noise: f64,
        owner: String,
        commits: String,
        /// State-topic records written per event (Kafka mode).
        state_records: Option<f64>,
    }

    /// Whether `hub` has pushed anything (its own metrics: it owns the stream).
    fn pushes(x: &Ctx, hub: &HubChild) -> bool {
        let mt = x.load.block_on(hub.api.metrics());
        mt.get("ssf_hub_push_attempts_total", "") > 0.0
    }

    /// 2 and 3: one push stream, ingest at the run's rate alternating over `hubs`.
    fn push(x: &Ctx, label: &str, hubs: &[&HubChild], broker: Option<&Broker>) -> Option<Push> {
        let first = &hubs[0].api;
        let token = x.load.block_on(first.receiver(RX_AUD));
        let url = format!("{}/rx/{K}", x.rx_base);
        let body = json!({"events_requested": [CC], "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": url}});
        let stream =
            x.load
                .block_on(first.call(Method::POST, "/ssf/streams", &token, Some(body), 201));
        let stream = match stream {
            Ok(s) => s["stream_id"].as_str().unwrap_or_default().to_owned(),
            Err(e) => {
                fail!("{label}: creating the stream: {e}");
                return None;
            }
        };
        // Warm-up through every hub until it all arrives: connections, keys, ownership.
        let txns = x.txns(40);
        let before = x.rx.len();
        let run = open_loop(x.load.handle(), 40.0, 40, alternate(hubs, x.sets(&txns)));
        run.check(&format!("{label}: warm-up"));
        let got = x.rx.wait(before, txns.len(), &format!("{label}: warm-up"));
        if got.len() < txns.len() {
            return None;
        }
        let owners: Vec<usize> = (0..hubs.len()).filter(|&h| pushes(x, hubs[h])).collect();
        let owner = match owners[..] {
            [o] if hubs.len() > 1 => format!("replica {}", o + 1),
            [_] => "the hub".to_owned(),
            _ => format!("{} replicas pushed during the warm-up", owners.len()),
        };

        let txns = x.txns(x.n());
        let sets = x.sets(&txns);
        let before = x.rx.len();
        quiet(x, &pids(hubs, broker));
        let phase = Phase::start();
        let phase_at = Instant::now();
        let (cpus, metrics) = (
            hubs.iter().map(|h| h.cpu()).collect::<Vec<_>>(),
            pages(x, hubs),
        );
        let bcpu = broker.map(Broker::cpu);
        // Kafka mode: how many records the state topic grew by.
        let state = broker.map(|b| {
            let c = state_reader(b);
            let before = state_head(&c);
            (c, before)
        });
        let run = open_loop(
            x.load.handle(),
            x.rate,
            txns.len() as u64,
            alternate(hubs, sets),
        );
        let mut got = x.rx.wait(before, txns.len(), label);
        let hub_used: Vec<CpuUse> = cpus.iter().map(ProcCpu::used).collect();
        let broker_used = bcpu.map(|b| b.used());
        phase.end(label);
        for (h, u) in hub_used.iter().enumerate() {
            println!("  hub {}: {:.2} s CPU ({})", h + 1, u.process, u.line());
        }
        if let Some(b) = &broker_used {
            println!("  broker: {:.2} s CPU ({})", b.process, b.line());
        }
        run.check(label);
        // At least once: late duplicates or stragglers get two more seconds.
        let count = |got: &[Arrival]| {
            let mut by_txn: HashMap<u32, Instant> = HashMap::new();
            let mut dups = 0;
            for a in got.iter().filter(|a| a.0 == K && txns.contains(&a.1)) {
                dups += usize::from(by_txn.insert(a.1, a.3).is_some());
            }
            (by_txn.len(), dups)
        };
        if count(&got).0 < txns.len() {
            std::thread::sleep(Duration::from_secs(2));
            got = x.rx.wait(before, 0, label);
        }
        let (delivered, dups) = count(&got);
        let missing = txns.len() - delivered;
        if missing > 0 {
            fail!(
                "{label}: {missing} of {} events never delivered",
                txns.len()
            );
        }
        // The first arrival of each measured event, from its ingest send.
        let mut arrived: HashMap<u32, Instant> = HashMap::new();
        for a in got.iter().filter(|a| a.0 == K && txns.contains(&a.1)) {
            arrived.entry(a.1).or_insert(a.3);
        }
        let (mut all, mut own, mut other, mut after) = (vec![], vec![], vec![], vec![]);
        for s in run.from(x.warm()).samples.iter().filter(|s| s.ok) {
            let Some(at) = arrived.get(&(txns.start + s.i as u32)) else {
                continue;
            };
            let d = signed_us(*at, s.start);
            all.push(d);
            after.push(signed_us(*at, s.end));
            let taken_by = s.i as usize % hubs.len();
            match owners[..] {
                [o] if hubs.len() > 1 && o == taken_by => own.push(d),
                [_] if hubs.len() > 1 => other.push(d),
                _ => {}
            }
        }
        let path = format!("/ssf/streams?stream_id={stream}");
        let deleted = x
            .load
            .block_on(first.call(Method::DELETE, &path, &token, None, 204));
        if let Err(e) = deleted {
            fail!("{label}: deleting the stream: {e}");
        }
        let mut ours: Vec<&CpuUse> = hub_used.iter().collect();
        ours.extend(broker_used.as_ref());
        let n = txns.len() as f64;
        Some(Push {
            e2e: Pct::of(all),
            after_202: Pct::of(after),
            gaps: gaps(&arrived, phase_at),
            at_owner: Pct::of(own),
            at_other: Pct::of(other),
            accepted: run.from(x.warm()).lat_start(),
            hub_us: hub_used.iter().map(|u| u.process).sum::<f64>() * 1e6 / n,
            broker_us: broker_used.as_ref().map_or(0.0, |b| b.process * 1e6 / n),
            events: txns.len(),
            missing,
            dups,
            achieved: run.from(x.warm()).dispatched_rate(),
            noise: noise(&phase, &ours),
            owner,
            commits: commits(x, hubs, &metrics, hub_used[0].wall),
            state_records: state.map(|(c, before)| (state_head(&c) - before) as f64 / n),
        })
    }

    /// Result of a ceiling run.
    struct Ceiling {
        rate: f64,
        /// (process, cores used, its top thread groups), busiest first.
        cores: Vec<(String, f64, String)>,
        noise: f64,
        errors: u64,
        commits: String,
    }

    /// 4. Closed loop with `KB_CLIENTS` senders alternating over `hubs`, no stream.
    fn ceiling(x: &Ctx, label: &str, hubs: &[&HubChild], broker: Option<&Broker>) -> Ceiling {
        let warm = Duration::from_secs(1);
        let len = Duration::from_secs(x.ceiling_secs);
        // Enough SETs for 10,000/s; the run stops early (and says so) if they run out.
        let txns = x.txns(10_000 * (1 + x.ceiling_secs as u32));
        let sets = x.sets(&txns);
        quiet(x, &pids(hubs, broker));
        let phase = Phase::start();
        let (cpus, metrics) = (
            hubs.iter().map(|h| h.cpu()).collect::<Vec<_>>(),
            pages(x, hubs),
        );
        let bcpu = broker.map(Broker::cpu);
        let n = sets.len() as u64;
        let run = closed_loop(
            x.load.handle(),
            x.clients,
            n,
            Some((warm, len)),
            true,
            alternate(hubs, sets),
        );
        let mut used: Vec<(String, CpuUse)> = Vec::new();
        for (h, c) in cpus.iter().enumerate() {
            let name = if hubs.len() > 1 {
                format!("replica {}", h + 1)
            } else {
                "hub".into()
            };
            used.push((name, c.used()));
        }
        used.extend(bcpu.map(|b| ("broker (tansu)".to_owned(), b.used())));
        let own = phase.end(label);
        let wall = own.wall;
        if run.done >= n {
            progress!("{label}: the {n} pre-signed SETs ran out before the window ended");
        }
        let ours: Vec<&CpuUse> = used.iter().map(|u| &u.1).collect();
        let noise = noise(&phase, &ours);
        used.push(("bench (load generator)".into(), own));
        let share = |u: &CpuUse| u.process / u.wall.as_secs_f64().max(1e-9);
        let mut cores: Vec<(String, f64, String)> = used
            .iter()
            .map(|(name, u)| (name.clone(), share(u), top(u)))
            .collect();
        cores.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (name, c, groups) in &cores {
            println!("  {name}: {c:.2} cores ({groups})");
        }
        Ceiling {
            rate: run.completed_rate(),
            cores,
            noise,
            errors: run.errors,
            commits: commits(x, hubs, &metrics, wall),
        }
    }

    /// Every hub's `/metrics` page.
    fn pages(x: &Ctx, hubs: &[&HubChild]) -> Vec<Metrics> {
        hubs.iter()
            .map(|h| x.load.block_on(h.api.metrics()))
            .collect()
    }

    /// The hubs' group commits of the log since the pages `before`, `wall` long: commits per
    /// second, SETs per commit, time per commit (in Kafka mode: the batch's delivery reports).
    fn commits(x: &Ctx, hubs: &[&HubChild], before: &[Metrics], wall: Duration) -> String {
        let after = pages(x, hubs);
        let grew = |name: &str| -> f64 {
            let pairs = after.iter().zip(before);
            pairs.map(|(a, b)| a.since(b, name, "")).sum()
        };
        let n = grew("ssf_hub_log_commit_seconds_count");
        let sets = grew("ssf_hub_log_commit_batch_size_sum") / n.max(1.0);
        let each = 1e3 * grew("ssf_hub_log_commit_seconds_sum") / n.max(1.0);
        let rate = n / wall.as_secs_f64().max(1e-9);
        format!("{rate:.0} commits/s of {sets:.1} SETs, {each:.2} ms each")
    }

    /// The busiest thread groups of `u`, in cores.
    fn top(u: &CpuUse) -> String {
        let wall = u.wall.as_secs_f64().max(1e-9);
        let big = u.groups.iter().filter(|(_, s)| s / wall >= 0.02).take(6);
        let parts: Vec<String> = big.map(|(g, s)| format!("{g} {:.2}", s / wall)).collect();
        parts.join(", ")
    }

    /// Waits until `hub` answers /readyz, and with `replicas` until it sees that many live.
    fn ready(x: &Ctx, hub: &HubChild, replicas: Option<f64>) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let ok = x.load.block_on(async {
                let url = format!("{}/readyz", hub.api.base);
                let up = hub
                    .api
                    .client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                let live = hub
                    .api
                    .metrics()
                    .await
                    .get("ssf_hub_kafka_replicas_live", "");
                up && replicas.is_none_or(|r| live == r)
            });
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        fail!("a hub did not become ready (with {replicas:?} live replicas) in 60 s");
        false
    }

    pub(crate) fn run() {
        init_tracing("warn");
        let cores = m::cores();
        let (rx_rt, rx) = (hub::runtime("rx", cores), Arc::new(Rx::default()));
        *lock(&rx.issuer) = ISSUER.into();
        let listener = rx_rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let rx_base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new().route("/rx/{k}", axum::routing::post(rx_push));
        let app = app.with_state(rx.clone());
        rx_rt.spawn(async move { axum::serve(listener, app).await });
        let signer = hub::source_key();
        let bytes = env_u64("KB_RECORD_BYTES", 1024) as usize;
        let x = Ctx {
            rate: env_u64("KB_RATE", 1000) as f64,
            secs: env_u64("KB_SECS", 10),
            linger: env_u64("KB_LINGER_MS", 5),
            bytes,
            clients: env_u64("KB_CLIENTS", 64) as usize,
            ceiling_secs: env_u64("KB_CEILING_SECS", 10),
            quiet: Duration::from_secs(env_u64("KB_QUIET_SECS", 60)),
            load: hub::runtime("load", cores),
            _rx_rt: rx_rt,
            rx,
            rx_base,
            pad: hub::pad_to(&signer, "kb-0000000000", bytes),
            signer,
            next: Mutex::new(1),
        };
        let (rate, linger) = (x.rate, x.linger);
        report!("## kafka\n\nMachine: {}; broker, hubs (child processes), receiver and load generator share the cores. Rate {rate:.0}/s, records {bytes} bytes, linger.ms {linger}, fetch.wait.max.ms 10.\n\n", m::describe());

        let broker = Broker::start();
        progress!("broker on {} (pid {})", broker.addr, broker.child.id());
        let base = baseline(&x, &broker);
        println!("  baseline produce → consume: {}", base.consume.line());

        // Two replicas: the second starts once the first is ready (it creates the topics and
        // the signing keys), then both must see each other before anything is measured.
        let url = format!("kafka://{}/{PREFIX}", broker.addr);
        let jwks = x.signer.jwks();
        let r1 = HubChild::start("r1", &url, x.linger, &jwks);
        ready(&x, &r1, Some(1.0));
        let r2 = HubChild::start("r2", &url, x.linger, &jwks);
        let both = ready(&x, &r1, Some(2.0)) && ready(&x, &r2, Some(2.0));
        // What two idle replicas cost the broker (their tailers' empty fetches, heartbeats).
        let (idle, idle_hubs) = (broker.cpu(), [r1.cpu(), r2.cpu()]);
        std::thread::sleep(Duration::from_secs(3));
        let idle_broker = idle.used().process / 3.0;
        let idle_hubs: f64 = idle_hubs.iter().map(|c| c.used().process / 3.0).sum();
        let kafka = both
            .then(|| push(&x, "kafka, two replicas", &[&r1, &r2], Some(&broker)))
            .flatten();
        let kafka_ceiling = both.then(|| ceiling(&x, "kafka ceiling", &[&r1, &r2], Some(&broker)));
        drop((r1, r2));

        let e = HubChild::start("embedded", "", x.linger, &jwks);
        let embedded = ready(&x, &e, None)
            .then(|| push(&x, "embedded", &[&e], None))
            .flatten();
        let embedded_ceiling = ceiling(&x, "embedded ceiling", &[&e], None);
        drop(e);
        drop(broker);
        write_report(
            &x,
            &base,
            kafka.as_ref(),
            embedded.as_ref(),
            kafka_ceiling.as_ref(),
            &embedded_ceiling,
            (idle_broker, idle_hubs),
        );
    }

    fn write_report(
        x: &Ctx,
        base: &Baseline,
        kafka: Option<&Push>,
        embedded: Option<&Push>,
        kc: Option<&Ceiling>,
        ec: &Ceiling,
        idle: (f64, f64),
    ) {
        let (rate, bytes) = (x.rate, x.bytes);
        report!("{PCT_HEADER}");
        report!(
            "{}",
            base.consume.row(&format!(
                "Broker alone: produce → consume, {bytes} B at {rate:.0}/s"
            ))
        );
        report!(
            "{}",
            base.ack
                .row("Broker alone: produce → acknowledged (acks=all)")
        );
        report!(
            "{}",
            base.after_ack.row("Broker alone: acknowledged → consumed")
        );
        for (name, p) in [("Kafka, two replicas", kafka), ("Embedded", embedded)] {
            let Some(p) = p else { continue };
            report!(
                "{}",
                p.e2e.row(&format!("{name}: ingest send → push arrival"))
            );
            if p.at_owner.n > 0 {
                report!(
                    "{}",
                    p.at_owner
                        .row(&format!("{name}: … SETs ingested at the pushing replica"))
                );
                report!(
                    "{}",
                    p.at_other
                        .row(&format!("{name}: … SETs ingested at the other replica"))
                );
            }
            report!("{}", p.accepted.row(&format!("{name}: ingest send → 202")));
            report!(
                "{}",
                p.after_202.row(&format!("{name}: 202 → push arrival"))
            );
        }
        report!("\n| Figure | Value | Limit (same run) | Ratio |\n|---|---|---|---:|\n");
        let Some(k) = kafka else {
            report!("| Kafka, two replicas | not measured (see the failed checks) | | |\n");
            return;
        };
        let goal = k.e2e.p99 <= 1.5 * base.consume.p99;
        report!(
            "| E2E p99, Kafka (goal ≤ 1.5× broker p99: {}) | {} ms | broker produce → consume p99 {} ms | **{}** |\n",
            met(goal), ms(k.e2e.p99), ms(base.consume.p99), ratio(k.e2e.p99, base.consume.p99)
        );
        // (figure, value, limit's name, limit), in microseconds.
        let compare = |rows: &[(&str, f64, &str, f64)]| {
            for (figure, v, limit, l) in rows {
                let (v_ms, l_ms, r) = (ms(*v), ms(*l), ratio(*v, *l));
                report!("| {figure} | {v_ms} ms | {limit} {l_ms} ms | {r} |\n");
            }
        };
        let (c, a) = (&base.consume, &base.ack);
        compare(&[
            ("E2E p50, Kafka", k.e2e.p50, "broker p50", c.p50),
            (
                "202 p99, Kafka",
                k.accepted.p99,
                "broker produce → ack p99",
                a.p99,
            ),
        ]);
        report!("| Broker CPU per event, Kafka hubs | {:.0} µs | per bare 1 KB record {:.0} µs | {} |\n", k.broker_us, base.broker_us, ratio(k.broker_us, base.broker_us));
        report!("| Delivered at least once, Kafka | {}/{} ({} missing, {} duplicates; stream pushed by {}; ingest achieved {:.0}/s) | | |\n", k.events - k.missing, k.events, k.missing, k.dups, k.owner, k.achieved);
        let gaps: Vec<String> = k
            .gaps
            .iter()
            .map(|(t, g)| format!("{g:.0} ms at {t:.1} s"))
            .collect();
        report!(
            "| Longest pauses between arrivals, Kafka | {} | | |\n",
            gaps.join(", ")
        );
        if let Some(r) = k.state_records {
            report!("| State-topic records written per event, Kafka (cursor saves, heartbeats) | {r:.2} | | |\n");
        }
        report!(
            "| Idle cost of two replicas | broker {:.2} cores, hubs {:.2} cores | | |\n",
            idle.0,
            idle.1
        );
        let group = embedded.map_or("-", |e| e.commits.as_str());
        report!(
            "| Group commits at {rate:.0}/s, Kafka | {} | embedded {group} | |\n",
            k.commits
        );
        if let Some(e) = embedded {
            compare(&[
                (
                    "E2E p99, Kafka vs embedded",
                    k.e2e.p99,
                    "embedded",
                    e.e2e.p99,
                ),
                (
                    "E2E p50, Kafka vs embedded",
                    k.e2e.p50,
                    "embedded",
                    e.e2e.p50,
                ),
                (
                    "202 p99, Kafka vs embedded",
                    k.accepted.p99,
                    "embedded",
                    e.accepted.p99,
                ),
            ]);
            let (kall, eall) = (k.hub_us + k.broker_us, e.hub_us);
            report!("| Hub CPU per event (both replicas), Kafka vs embedded | {:.0} µs (+ broker {:.0} µs) | embedded {:.0} µs | {} (with broker {}) |\n", k.hub_us, k.broker_us, e.hub_us, ratio(k.hub_us, e.hub_us), ratio(kall, eall));
            report!(
                "| Delivered at least once, embedded | {}/{} ({} duplicates; ingest achieved {:.0}/s) | | |\n",
                e.events - e.missing,
                e.events,
                e.dups,
                e.achieved
            );
        }
        if let Some(c) = kc {
            report!("| Ingest ceiling, Kafka ({} clients, alternating) | {}/s ({} errors) | embedded {}/s | {} |\n", x.clients, kfmt(c.rate), c.errors, kfmt(ec.rate), ratio(c.rate, ec.rate));
            report!(
                "| Group commits at the ceiling, Kafka | {} | embedded {} | |\n",
                c.commits,
                ec.commits
            );
        }
        let noises = [
            Some(base.noise),
            kafka.map(|p| p.noise),
            embedded.map(|p| p.noise),
            kc.map(|c| c.noise),
            Some(ec.noise),
        ];
        let noises: Vec<String> = noises
            .iter()
            .map(|n| n.map_or("-".into(), |n| format!("{n:.0}%")))
            .collect();
        report!("\nOther load on the machine (outside this bench, its hubs and broker) during baseline / Kafka / embedded / Kafka ceiling / embedded ceiling: {}.\n", noises.join(" / "));
        for (name, c) in [("Kafka", kc), ("Embedded", Some(ec))] {
            let Some(c) = c else { continue };
            report!("\n{name} ceiling, cores by process (busiest thread groups):\n\n");
            for (p, cores, groups) in &c.cores {
                report!("- {p}: {cores:.2} cores ({groups})\n");
            }
        }
    }
}
