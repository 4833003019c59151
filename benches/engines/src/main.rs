//! Embedded storage engines on the hub's append workload, side by side in one run:
//! sled 0.34 (the engine being replaced), fjall 3 (the chosen one) and redb 4 (the other candidate).
//!
//! Workload (what the hub's log does): group-committed appends. Each record is a ~620-byte
//! normalized event JSON (fixed template, counter, random hex ids) keyed by big-endian u64
//! position in `events`, plus a dedupe entry `keys`: 32-byte random hash -> position BE ++
//! expiry BE, plus `key_expiry`: expiry BE ++ hash -> empty. Each record's dedupe key is looked up
//! first (a get that misses). A batch of B records is written atomically and made durable before
//! the next one: sled = one multi-tree transaction + `db.flush()`; fjall = one `WriteBatch`
//! commit + `db.persist(SyncData)`; redb = one write transaction commit (default durability).
//!
//! Measured per engine and batch size, each engine in its own child process (the binary re-execs
//! itself, so RSS does not mix) and its own fresh directory on one filesystem: records/s, process
//! CPU (user+sys, all threads, getrusage) per record over the append loop (background work that
//! outlives the loop, e.g. fjall compactions, is not counted), durable batches per second, VmRSS
//! at 100k records, N/2 and N with the slopes to N, disk usage after the engine is closed. The
//! machine's bare fsync rate (4 KiB write + fdatasync for FSYNC_SECS each, appending and
//! overwriting) is measured in the same run on the same filesystem and printed above the table.
//!
//! Caveat: on Linux sled's `flush()` ends in `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)`, not
//! fdatasync (strace: no fdatasync per batch), so it neither flushes the device cache nor
//! commits metadata; its batches/s can exceed the bare fdatasync rate. fjall and redb issue one
//! fdatasync per batch. A default run takes about 3.5 minutes on the 2-core dev VM.
//!
//! Run:  cd benches/engines && CARGO_TARGET_DIR=/tmp/engines-target cargo run --release
//!
//! Knobs (env): BATCHES="64,1"  N_64=1000000  N_1=20000 (N_<B> for any B; default 1,000,000 when
//! B > 1, 20,000 when B = 1)  ENGINES="sled,fjall,redb"  CACHE_MB=32 (sled cache_capacity, fjall
//! cache_size, redb cache size; the hub's default `log.cache_capacity_bytes`)
//! FJALL_WRITE_BUFFER_MB=16 (the hub's default `log.write_buffer_bytes`)
//! RSS_AT=100000 (RSS checkpoint; N/5 when N is not above it)  BENCH_DIR=/tmp  FSYNC_SECS=2.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ENGINES: &[&str] = &["sled", "fjall", "redb"];
const TTL_SECS: u64 = 7 * 86_400;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: cheap, deterministic, good enough for "random-ish" bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

struct Rec {
    pos: [u8; 8],
    hash: [u8; 32],
    key_val: [u8; 16],
    expiry_key: [u8; 40],
    body: Vec<u8>,
}

/// One record as the hub would store it: position `i`, a fresh dedupe hash, an expiry that
/// advances slowly (one second per thousand records), a ~600-byte event body.
fn make_record(rng: &mut Rng, i: u64, base_ts: u64) -> Rec {
    let mut hash = [0u8; 32];
    for c in hash.chunks_mut(8) {
        c.copy_from_slice(&rng.next().to_le_bytes());
    }
    let ts = base_ts + i / 1000;
    let expiry = (ts + TTL_SECS).to_be_bytes();
    let pos = i.to_be_bytes();
    let mut key_val = [0u8; 16];
    key_val[..8].copy_from_slice(&pos);
    key_val[8..].copy_from_slice(&expiry);
    let mut expiry_key = [0u8; 40];
    expiry_key[..8].copy_from_slice(&expiry);
    expiry_key[8..].copy_from_slice(&hash);
    let (a, b, c) = (rng.next(), rng.next(), rng.next());
    let mut s = String::with_capacity(640);
    write!(
        s,
        r#"{{"iss":"https://transmitter.example.com/","aud":"https://receiver.example.com/ssf","iat":{ts},"jti":"{a:016x}{b:016x}","seq":{i},"sub_id":{{"format":"complex","user":{{"format":"email","email":"user{u}@tenant{t}.example.com"}},"tenant":{{"format":"opaque","id":"tenant-{t}"}}}},"events":{{"https://schemas.openid.net/secevent/caep/event-type/session-revoked":{{"event_timestamp":{ts},"initiating_entity":"policy","reason_admin":{{"en":"Landspeed policy violation"}}}}}},"hub":{{"received_at":{ts},"stream":"stream-{st:04}","txn":"{c:016x}","verified":true,"alg":"ES256","kid":"key-2026-01"}}}}"#,
        u = a % 100_000,
        t = b % 500,
        st = c % 64,
    )
    .unwrap();
    Rec {
        pos,
        hash,
        key_val,
        expiry_key,
        body: s.into_bytes(),
    }
}

trait Engine {
    /// Looks up each record's dedupe key (expected to miss), writes the batch atomically, makes it durable.
    fn append(&mut self, batch: &[Rec]);
}

struct Sled {
    db: sled::Db,
    trees: (sled::Tree, sled::Tree, sled::Tree),
}
impl Engine for Sled {
    fn append(&mut self, batch: &[Rec]) {
        use sled::transaction::{ConflictableTransactionError, TransactionalTree as T};
        use sled::Transactional;
        (&self.trees.0, &self.trees.1, &self.trees.2)
            .transaction(|(events, keys, expiry): &(T, T, T)| {
                for r in batch {
                    assert!(keys.get(&r.hash[..])?.is_none());
                    events.insert(&r.pos[..], r.body.as_slice())?;
                    keys.insert(&r.hash[..], &r.key_val[..])?;
                    expiry.insert(&r.expiry_key[..], &[][..])?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .unwrap();
        self.db.flush().unwrap();
    }
}

struct Fjall {
    db: fjall::Database,
    events: fjall::Keyspace,
    keys: fjall::Keyspace,
    expiry: fjall::Keyspace,
}
impl Engine for Fjall {
    fn append(&mut self, batch: &[Rec]) {
        let mut wb = self.db.batch();
        for r in batch {
            assert!(self.keys.get(r.hash).unwrap().is_none());
            wb.insert(&self.events, r.pos, r.body.as_slice());
            wb.insert(&self.keys, r.hash, r.key_val);
            wb.insert(&self.expiry, r.expiry_key, []);
        }
        wb.commit().unwrap();
        self.db.persist(fjall::PersistMode::SyncData).unwrap();
    }
}

const EVENTS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("events");
const KEYS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("keys");
const EXPIRY: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("key_expiry");

struct Redb(redb::Database);
impl Engine for Redb {
    fn append(&mut self, batch: &[Rec]) {
        use redb::ReadableTable;
        let tx = self.0.begin_write().unwrap();
        {
            let (mut events, mut keys, mut expiry) = (
                tx.open_table(EVENTS).unwrap(),
                tx.open_table(KEYS).unwrap(),
                tx.open_table(EXPIRY).unwrap(),
            );
            for r in batch {
                assert!(keys.get(&r.hash[..]).unwrap().is_none());
                events.insert(&r.pos[..], r.body.as_slice()).unwrap();
                keys.insert(&r.hash[..], &r.key_val[..]).unwrap();
                expiry.insert(&r.expiry_key[..], &[][..]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

fn open(engine: &str, dir: &Path, cache: u64) -> Box<dyn Engine> {
    match engine {
        "sled" => {
            // As the hub opened it before the engine change (src/log/sled.rs, now removed).
            let db = sled::Config::new()
                .path(dir)
                .cache_capacity(cache)
                .mode(sled::Mode::HighThroughput)
                .open()
                .unwrap();
            let trees = (
                db.open_tree("events").unwrap(),
                db.open_tree("keys").unwrap(),
                db.open_tree("key_expiry").unwrap(),
            );
            Box::new(Sled { db, trees })
        }
        "fjall" => {
            // As the hub opens it (src/storage/embedded.rs): fjall 3.1 bounds memory per keyspace
            // only (its database-wide write buffer limit is not wired up), so the log's records
            // get the write buffer and the index keyspaces an eighth of it.
            let db = fjall::Database::builder(dir)
                .cache_size(cache)
                .open()
                .unwrap();
            let wb = env_or("FJALL_WRITE_BUFFER_MB", 16u64) << 20;
            let pin = env_or("FJALL_PIN", 0u8) == 1;
            let ks = |n, mem: u64| {
                db.keyspace(n, || {
                    let o = fjall::KeyspaceCreateOptions::default().max_memtable_size(mem);
                    if pin {
                        o
                    } else {
                        // As the hub: index and filter blocks go through the bounded block cache.
                        o.index_block_pinning_policy(fjall::config::PinningPolicy::disabled())
                            .filter_block_pinning_policy(fjall::config::PinningPolicy::disabled())
                    }
                })
                .unwrap()
            };
            let (events, keys, expiry) = (
                ks("events", wb),
                ks("keys", (wb / 8).max(1 << 20)),
                ks("key_expiry", (wb / 8).max(1 << 20)),
            );
            Box::new(Fjall {
                db,
                events,
                keys,
                expiry,
            })
        }
        "redb" => {
            let db = redb::Database::builder()
                .set_cache_size(cache as usize)
                .create(dir.join("log.redb"))
                .unwrap();
            Box::new(Redb(db))
        }
        other => panic!("unknown engine {other}"),
    }
}

fn cpu_secs() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// (allocated bytes as `du` counts them, apparent bytes) of everything under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut alloc, mut apparent) = (0, 0);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            let (a, b) = disk_usage(&e.path());
            (alloc, apparent) = (alloc + a, apparent + b);
        } else {
            (alloc, apparent) = (alloc + m.blocks() * 512, apparent + m.len());
        }
    }
    (alloc, apparent)
}

/// Child: one engine, one batch size, in `dir`. Prints one `RESULT` line for the parent.
fn child(engine: &str, b: usize, n: u64, dir: &Path) {
    let cache = env_or("CACHE_MB", 32u64) << 20;
    let ck_at = {
        let c = env_or("RSS_AT", 100_000u64);
        if n > c {
            c
        } else {
            n / 5
        }
    };
    let mut db = open(engine, dir, cache);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ b as u64);
    let base_ts = 1_767_225_600; // 2026-01-01
    let mut batch = Vec::with_capacity(b);
    let (mut ck, mut mid, mut written) = (None, None, 0u64);
    let (t0, cpu0) = (Instant::now(), cpu_secs());
    while written < n {
        batch.clear();
        for _ in 0..(b as u64).min(n - written) {
            batch.push(make_record(&mut rng, written + batch.len() as u64, base_ts));
        }
        db.append(&batch);
        written += batch.len() as u64;
        if ck.is_none() && written >= ck_at {
            ck = Some((written, rss_bytes()));
        }
        if mid.is_none() && written >= n / 2 {
            mid = Some((written, rss_bytes()));
        }
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - cpu0);
    let rss_end = rss_bytes();
    drop(db);
    let (alloc, apparent) = disk_usage(dir);
    let ((ck_n, ck_rss), (mid_n, mid_rss)) = (ck.unwrap(), mid.unwrap());
    println!("RESULT {written} {secs} {cpu} {ck_n} {ck_rss} {mid_n} {mid_rss} {rss_end} {alloc} {apparent}");
}

/// Bare fsync rate of the filesystem under `dir`: 4 KiB write + fdatasync in a loop, either
/// appending (the file grows, so each sync also commits metadata) or overwriting a pre-written
/// 4 MiB region (data only: the floor for an engine with a preallocated journal). (per s, p50 µs)
fn fsync_rate(dir: &Path, secs: f64, overwrite: bool) -> (f64, f64) {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let f = tempfile::tempfile_in(dir).unwrap();
    let buf = [0x5Au8; 4096];
    const SLOTS: u64 = 1024;
    if overwrite {
        for i in 0..SLOTS {
            f.write_all_at(&buf, i * 4096).unwrap();
        }
        f.sync_all().unwrap();
    }
    let (t0, mut i, mut lat) = (Instant::now(), 0u64, Vec::new());
    while t0.elapsed() < Duration::from_secs_f64(secs) {
        let t = Instant::now();
        f.write_all_at(&buf, if overwrite { i % SLOTS } else { i } * 4096)
            .unwrap();
        assert_eq!(unsafe { libc::fdatasync(f.as_raw_fd()) }, 0);
        lat.push(t.elapsed());
        i += 1;
    }
    lat.sort();
    (
        i as f64 / t0.elapsed().as_secs_f64(),
        lat[lat.len() / 2].as_secs_f64() * 1e6,
    )
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1u64 << 20) as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(
            &args[2],
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            Path::new(&args[5]),
        );
    }
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
    let batches: Vec<usize> = std::env::var("BATCHES")
        .unwrap_or_else(|_| "64,1".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let engines: Vec<String> = std::env::var("ENGINES")
        .map(|s| s.split(',').map(|e| e.trim().to_string()).collect())
        .unwrap_or_else(|_| ENGINES.iter().map(|e| e.to_string()).collect());
    let fs_secs = env_or("FSYNC_SECS", 2.0);
    let (ap_rate, ap_p50) = fsync_rate(Path::new(&base), fs_secs, false);
    let (fs_rate, fs_p50) = fsync_rate(Path::new(&base), fs_secs, true);
    eprintln!("bare fsync: append {ap_rate:.0}/s, overwrite {fs_rate:.0}/s");
    let mut rows = Vec::new();
    for &b in &batches {
        let n = env_or(
            &format!("N_{b}"),
            if b == 1 { 20_000u64 } else { 1_000_000 },
        );
        for e in &engines {
            let dir = tempfile::Builder::new()
                .prefix(&format!("engines-{e}-"))
                .tempdir_in(&base)
                .unwrap();
            eprintln!("{e} B={b} N={n} in {} ...", dir.path().display());
            let out = Command::new(std::env::current_exe().unwrap())
                .args([
                    "child",
                    e,
                    &b.to_string(),
                    &n.to_string(),
                    dir.path().to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{e} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8(out.stdout).unwrap();
            let v: Vec<f64> = line
                .lines()
                .find(|l| l.starts_with("RESULT"))
                .unwrap()
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            let [written, secs, cpu, ck_n, ck_rss, mid_n, mid_rss, rss_end, alloc, apparent] =
                v[..]
            else {
                panic!()
            };
            let batches_done = (written / b as f64).ceil();
            eprintln!("  {:.0} records/s", written / secs);
            let at = if ck_n % 1000.0 == 0.0 {
                format!("{:.0}k", ck_n / 1000.0)
            } else {
                format!("{ck_n:.0}")
            };
            rows.push(format!(
                "| {e} | {b} | {written:.0} | {:.0} | {:.1} | {:.0} ({:.0}% / {:.0}%) | {} @{at} | {} | {} | {:.0} | {:.0} | {} | {} |",
                written / secs, cpu / written * 1e6, batches_done / secs,
                batches_done / secs / ap_rate * 100.0, batches_done / secs / fs_rate * 100.0,
                mib(ck_rss), mib(mid_rss), mib(rss_end),
                (rss_end - ck_rss) / (written - ck_n), (rss_end - mid_rss) / (written - mid_n),
                mib(alloc), mib(apparent),
            ));
        }
    }
    println!("Bare fsync on {base}, same run, 4 KiB write + fdatasync: overwriting a pre-written region **{fs_rate:.0}/s** \
        (p50 {fs_p50:.0} µs); appending (file grows) **{ap_rate:.0}/s** (p50 {ap_p50:.0} µs). \
        Durable batches/s, with its % of the bare append / overwrite rates.\n");
    println!("| engine | B | records | records/s | CPU µs/record | durable batches/s (% of bare append / overwrite) \
        | RSS @checkpoint | RSS @N/2 | RSS @N | RSS slope checkpoint→N, B/record | RSS slope N/2→N, B/record | disk (du) | disk (apparent) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
