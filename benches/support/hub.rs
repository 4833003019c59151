//! The hub under load, reached over HTTP only: start it on its own runtime, ask it for its log
//! head, revocation position and metrics, push SETs to it; plus the SETs a source signs and the
//! machine's bare rate of any operation on every core.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Map, Value};
use ssf_hub::config::{Config, Secret, SourceConfig};
use ssf_hub::sign::{SetSigner, SignAlg};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::drive::{job, Job};

pub(crate) const SOURCE: &str = "idp";
pub(crate) const SOURCE_ISS: &str = "https://idp.bench.example";
pub(crate) const SOURCE_AUD: &str = "https://hub.bench.example";
pub(crate) const ADMIN: &str = "bench-admin-token-0123456789abcdef";
pub(crate) const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

/// A multi-thread runtime whose threads are named `{name}-w{n}` (workers) and `{name}-blk{n}`
/// (its blocking pool), so CPU can be told apart by thread group.
pub(crate) fn runtime(name: &'static str, workers: usize) -> Runtime {
    let started = AtomicUsize::new(0);
    let thread_name = move || {
        // Tokio starts its workers first; later threads are the blocking pool.
        let n = started.fetch_add(1, Ordering::Relaxed);
        format!("{name}-{}{n}", if n < workers { "w" } else { "blk" })
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.worker_threads(workers).thread_name_fn(thread_name);
    rt.enable_all().build().expect("runtime")
}

/// Keep-alive HTTP/1.1 client without a proxy or Nagle delay; a request gets 30 s.
pub(crate) fn http_client() -> reqwest::Client {
    let c = reqwest::Client::builder().no_proxy().tcp_nodelay(true);
    let c = c.pool_max_idle_per_host(usize::MAX);
    let c = c.timeout(Duration::from_secs(30));
    c.build().expect("http client")
}

/// The documented defaults, on a free loopback port, with data in `dir/data`, the bench's admin
/// token and one ES256 source (`SOURCE`) whose keys are `jwks`.
pub(crate) fn config(dir: &Path, jwks: &Value) -> Config {
    config_with(
        dir,
        jwks,
        figment::providers::Env::prefixed("SSF_BENCH_UNUSED_"),
    )
}

/// [`config`] with `env` as the configuration's environment layer: a scenario's knob that sets a
/// hub key by name, so the bench compiles against hubs with and without that key (a hub without
/// it refuses the unknown key when, and only when, the knob is given).
pub(crate) fn config_with(dir: &Path, jwks: &Value, env: figment::providers::Env) -> Config {
    let c = Config::load_from(None, env);
    let mut c = c.unwrap_or_else(|e| panic!("hub configuration from the defaults and knobs: {e}"));
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.data_dir = dir.join("data");
    c.admin_token = Some(Secret::new(ADMIN));
    let jwks_file = dir.join("source.jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).expect("write jwks");
    // Through serde, so fields added later with defaults need no change here.
    let source = json!({
        "id": SOURCE, "issuer": SOURCE_ISS, "jwks_file": jwks_file,
        "audiences": [SOURCE_AUD], "algorithms": ["ES256"],
    });
    c.sources = vec![serde_json::from_value::<SourceConfig>(source).expect("source config")];
    c
}

/// A hub started with `ssf_hub::app::spawn` on the runtime it was given; its HTTP API derefs.
pub(crate) struct Hub {
    running: ssf_hub::app::Running,
    pub(crate) api: Api,
}

impl Hub {
    pub(crate) fn start(rt: &Runtime, config: Config) -> Hub {
        config.validate().expect("valid config");
        let running = rt.block_on(ssf_hub::app::spawn(config));
        let running = running.expect("hub starts");
        let api = Api {
            base: format!("http://{}", running.addr),
            client: http_client(),
            accepted: Arc::default(),
        };
        Hub { running, api }
    }

    pub(crate) fn stop(self, rt: &Runtime) {
        let _ = rt.block_on(self.running.stop());
    }
}

impl std::ops::Deref for Hub {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A hub's HTTP API: its base URL, a keep-alive client and the count of 202s it gave us.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) accepted: Arc<AtomicU64>,
}

impl Api {
    pub(crate) fn ingest_url(&self) -> String {
        format!("{}/ingest/{SOURCE}", self.base)
    }

    /// The `ws://` URL of `path`.
    pub(crate) fn ws(&self, path: &str) -> String {
        format!("ws{}{path}", &self.base[4..])
    }

    /// `method path` with a bearer token: the JSON answer (Null if none) if the status is `want`.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
        want: u16,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.request(method.clone(), url).bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let answer = send(req, want).await;
        let answer = answer.map_err(|e| format!("{method} {path}: {e}"))?;
        Ok(serde_json::from_slice(&answer).unwrap_or_default())
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(Method::GET, path, ADMIN, None, 200).await
    }

    /// A number in the JSON answer to an admin `GET`.
    async fn number(&self, path: &str, key: &str) -> u64 {
        let v = self.get(path).await.expect("GET");
        v[key].as_u64().expect("a number")
    }

    /// The last durable log position (`GET /events`).
    pub(crate) async fn head(&self) -> u64 {
        self.number("/events?since=0&limit=1", "head").await
    }

    /// The log position the revocation state reflects (`GET /revocations`).
    pub(crate) async fn folded(&self) -> u64 {
        let path = "/revocations?since=0&limit=1";
        self.number(path, "position").await
    }

    /// `GET /metrics` (the process-wide recorder: every hub in this process counts into it);
    /// empty if it fails.
    pub(crate) async fn metrics(&self) -> Metrics {
        let url = format!("{}/metrics", self.base);
        let text = async {
            let resp = self.client.get(url).bearer_auth(ADMIN).send().await?;
            resp.text().await
        };
        Metrics(text.await.unwrap_or_default())
    }

    /// Registers a receiver; its bearer token.
    pub(crate) async fn receiver(&self, audience: &str) -> String {
        let body = json!({"name": "bench", "audience": audience});
        let r = self.call(Method::POST, "/admin/receivers", ADMIN, Some(body), 201);
        let answer = r.await.expect("receiver");
        answer["token"].as_str().expect("token").to_owned()
    }

    /// Registers a sidecar (revocation scope only); its bearer token.
    pub(crate) async fn sidecar(&self, audience: &str) -> String {
        let body = json!({"name": "bench", "audience": audience, "scopes": ["revocations.read"]});
        let r = self.call(Method::POST, "/admin/receivers", ADMIN, Some(body), 201);
        let answer = r.await.expect("receiver");
        answer["token"].as_str().expect("token").to_owned()
    }

    /// Pushes one SET and counts its 202; the instant the 202 arrived.
    pub(crate) async fn ingest(&self, url: &str, body: Bytes) -> Result<Instant, String> {
        let req = self.client.post(url).body(body);
        send(req.header("content-type", "application/secevent+jwt"), 202).await?;
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Instant::now())
    }
}

/// Sends `req`: the answer's body if its status is `want`.
pub(crate) async fn send(req: RequestBuilder, want: u16) -> Result<Bytes, String> {
    let resp = req.send().await;
    let resp = resp.map_err(|e| format!("transport error: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if status != want {
        let text = String::from_utf8_lossy(body.get(..300).unwrap_or(&body)).into_owned();
        return Err(format!("HTTP {status} (expected {want}): {text}"));
    }
    Ok(body)
}

/// A `GET /metrics` page.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics(pub(crate) String);

impl Metrics {
    /// Sum of a Prometheus metric's samples whose labels contain `filter`.
    pub(crate) fn get(&self, name: &str, filter: &str) -> f64 {
        let value = |(key, v): (&str, &str)| {
            let labels = key.strip_prefix(name)?;
            let wanted = labels.is_empty() || labels.starts_with('{');
            (wanted && labels.contains(filter)).then(|| v.trim().parse::<f64>().ok())?
        };
        let values = self.0.lines().filter_map(|l| value(l.rsplit_once(' ')?));
        values.sum()
    }

    /// How much the metric grew since the page `before`.
    pub(crate) fn since(&self, before: &Metrics, name: &str, filter: &str) -> f64 {
        self.get(name, filter) - before.get(name, filter)
    }
}

/// SETs signed while they are pushed; see [`sign_queue`].
pub(crate) type Queue = Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>;

/// Pushes `pool[skip + i]` for request `i`, or once the pool is used up the next SET in `queue`.
pub(crate) fn ingest_job(api: &Api, pool: Arc<Vec<Bytes>>, skip: u64, queue: Option<Queue>) -> Job {
    let (api, url) = (api.clone(), Arc::<str>::from(api.ingest_url()));
    job(move |i| {
        let (api, url, queue) = (api.clone(), url.clone(), queue.clone());
        let pooled = pool.get((skip + i) as usize).cloned();
        async move {
            let set = match (pooled, queue) {
                (Some(set), _) => set,
                (None, Some(q)) => q.lock().await.recv().await.ok_or("the signers stopped")?,
                (None, None) => return Err("the pre-signed pool ran out".into()),
            };
            api.ingest(&url, set).await.map(drop)
        }
    })
}

/// `make()` sent once per request, answered with `want` (a machine limit: `/healthz`, a bare
/// receiver).
pub(crate) fn request_job<F>(want: u16, make: F) -> Job
where
    F: Fn() -> RequestBuilder + Send + Sync + 'static,
{
    job(move |_| {
        let req = send(make(), want);
        async move { req.await.map(drop) }
    })
}

pub(crate) fn object(v: Value) -> Map<String, Value> {
    serde_json::from_value(v).expect("an object")
}

/// A realistic CAEP credential-change SET with a complex subject (user email + device), its
/// `reason_admin` padded by `pad` bytes.
pub(crate) fn credential_change(
    iss: &str,
    aud: Value,
    jti: &str,
    txn: Option<&str>,
    pad: usize,
) -> Map<String, Value> {
    let now = ssf_hub::unix_now();
    let reason = "Security key registered after step-up; ticket SEC-48213";
    let reason = format!("{reason}{}", ".".repeat(pad));
    let mut c = object(json!({
        "iss": iss, "aud": aud, "jti": jti, "iat": now,
        "sub_id": {
            "format": "complex",
            "user": {"format": "email", "email": "ana.lopez@corp.example"},
            "device": {"format": "opaque", "id": "dev-7f3a9c21-58e4"}
        },
        "events": { CREDENTIAL_CHANGE: {
            "credential_type": "fido2-roaming", "change_type": "create",
            "friendly_name": "Ana's YubiKey 5C NFC", "initiating_entity": "user",
            "event_timestamp": now, "reason_admin": {"en": reason}
        }}
    }));
    if let Some(t) = txn {
        c.insert("txn".into(), json!(t));
    }
    c
}

/// The padding that makes [`credential_change`] with this `jti`, signed by `signer`, about `len`
/// bytes compact.
pub(crate) fn pad_to(signer: &SetSigner, jti: &str, len: usize) -> usize {
    let claims = credential_change(SOURCE_ISS, json!([SOURCE_AUD]), jti, None, 0);
    let unpadded = signer.sign(&claims).expect("sign").len();
    // Each payload byte costs 4/3 characters of base64url.
    len.saturating_sub(unpadded) * 3 / 4
}

/// A CAEP session-revoked SET for the `iss_sub` subject (SOURCE_ISS, `sub`) at `event_time`.
pub(crate) fn session_revoked(jti: &str, sub: &str, event_time: u64) -> Map<String, Value> {
    object(json!({
        "iss": SOURCE_ISS, "aud": [SOURCE_AUD], "jti": jti, "iat": ssf_hub::unix_now(),
        "sub_id": {"format": "iss_sub", "iss": SOURCE_ISS, "sub": sub},
        "events": { SESSION_REVOKED: {
            "event_timestamp": event_time, "initiating_entity": "policy",
            "reason_admin": {"en": "Landspeed policy violation"}
        }}
    }))
}

/// A new ES256 source key.
pub(crate) fn source_key() -> SetSigner {
    SetSigner::generate(SignAlg::ES256).expect("source key").0
}

/// `claims` signed, in an exact-size allocation (a pool's footprint is just the SETs' bytes).
pub(crate) fn sign(signer: &SetSigner, claims: &Map<String, Value>) -> Bytes {
    let set = signer.sign(claims).expect("sign");
    Bytes::from(set.into_bytes().into_boxed_slice())
}

/// Signs `claims(i)` for every `i` in `range` on every core (threads `load-sign`).
pub(crate) fn presign<F>(signer: &SetSigner, range: Range<u64>, claims: F) -> Vec<Bytes>
where
    F: Fn(u64) -> Map<String, Value> + Sync,
{
    let threads = super::machine::cores() as u64;
    let (chunk, claims) = ((range.end - range.start).div_ceil(threads).max(1), &claims);
    std::thread::scope(|s| {
        let spawn = |from: u64| {
            let part = from..(from + chunk).min(range.end);
            let sign = move || Vec::from_iter(part.map(|i| sign(signer, &claims(i))));
            let thread = std::thread::Builder::new().name("load-sign".into());
            thread.spawn_scoped(s, sign).expect("signer thread")
        };
        let parts: Vec<_> = range.clone().step_by(chunk as usize).map(spawn).collect();
        let parts = parts.into_iter().map(|h| h.join().expect("signer thread"));
        parts.flatten().collect()
    })
}

/// SETs `claims(i)` for `range`, signed by `threads` threads (`load-sign`) into a bounded queue
/// while they are pushed, so the load generator's memory stays flat however many there are.
/// The threads stop when the range is done or the queue is dropped.
pub(crate) fn sign_queue<'s, F>(
    s: &'s std::thread::Scope<'s, '_>,
    threads: usize,
    signer: &'s SetSigner,
    range: Range<u64>,
    claims: &'s F,
) -> Queue
where
    F: Fn(u64) -> Map<String, Value> + Sync,
{
    let (tx, rx) = mpsc::channel(4096);
    let (next, end) = (Arc::new(AtomicU64::new(range.start)), range.end);
    for _ in 0..threads {
        let (tx, next) = (tx.clone(), next.clone());
        let sign = move || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= end || tx.blocking_send(sign(signer, &claims(i))).is_err() {
                return;
            }
        };
        let thread = std::thread::Builder::new().name("load-sign".into());
        thread.spawn_scoped(s, sign).expect("signer thread");
    }
    Arc::new(tokio::sync::Mutex::new(rx))
}

/// Operations per second of `threads` threads each running its own `make()` for `dur`, summed:
/// the machine's limit for that operation on that many cores.
pub(crate) fn rate_on_threads<F, O>(threads: usize, dur: Duration, make: F) -> f64
where
    F: Fn() -> O + Sync,
    O: FnMut(),
{
    let rate = || {
        let mut op = make();
        (0..20).for_each(|_| op());
        let (t, mut n) = (Instant::now(), 0u64);
        while t.elapsed() < dur {
            (0..10).for_each(|_| op());
            n += 10;
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..threads).map(|_| s.spawn(rate)).collect();
        let rates = threads.into_iter().map(|h| h.join().expect("rate thread"));
        rates.sum()
    })
}
