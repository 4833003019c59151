//! The hub under load, reached over HTTP only: start it on its own runtime, ask it for its log
//! head, revocation position and metrics, push SETs to it; plus the SETs a source signs and the
//! machine's bare rate of any operation on every core.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use serde_json::{json, Map, Value};
use ssf_hub::config::{Config, Secret, SourceConfig};
use ssf_hub::sign::{SetSigner, SignAlg};
use tokio::runtime::Runtime;

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
        let kind = if n < workers { "w" } else { "blk" };
        format!("{name}-{kind}{n}")
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.worker_threads(workers).thread_name_fn(thread_name);
    rt.enable_all().build().expect("runtime")
}

/// Keep-alive HTTP/1.1 client without a proxy or Nagle delay; a request gets 30 s.
pub(crate) fn http_client() -> reqwest::Client {
    let c = reqwest::Client::builder().no_proxy().tcp_nodelay(true);
    let c = c.pool_max_idle_per_host(usize::MAX);
    c.timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// The documented defaults, on a free loopback port, with data in `dir/data`, the bench's admin
/// token and one ES256 source (`SOURCE`) whose keys are `jwks`.
pub(crate) fn config(dir: &Path, jwks: &Value) -> Config {
    let env = figment::providers::Env::prefixed("SSF_BENCH_UNUSED_");
    let mut c = Config::load_from(None, env).expect("default config");
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
    let source: SourceConfig = serde_json::from_value(source).expect("source config");
    c.sources = vec![source];
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
        let (base, client) = (format!("http://{}", running.addr), http_client());
        let api = Api { base, client };
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

/// A hub's HTTP API: its base URL and a keep-alive client.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
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
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.bearer_auth(bearer).send().await;
        let resp = resp.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status != want {
            let text = text.get(..300).unwrap_or(&text);
            return Err(format!(
                "{method} {path}: HTTP {status} (expected {want}): {text}"
            ));
        }
        Ok(serde_json::from_str(&text).unwrap_or_default())
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
        self.number("/revocations?since=0&limit=1", "position")
            .await
    }

    /// `GET /metrics` (the process-wide recorder: every hub in this process counts into it).
    pub(crate) async fn metrics(&self) -> Result<String, String> {
        let r = self.client.get(format!("{}/metrics", self.base));
        let r = r.send().await.map_err(|e| e.to_string())?;
        r.text().await.map_err(|e| e.to_string())
    }

    /// Registers a receiver; its bearer token.
    pub(crate) async fn receiver(&self, audience: &str) -> String {
        let body = json!({"name": "bench", "audience": audience});
        let r = self.call(Method::POST, "/admin/receivers", ADMIN, Some(body), 201);
        let token = r.await.expect("receiver")["token"].take();
        token.as_str().expect("token").to_owned()
    }
}

/// Sum of a Prometheus metric's samples whose labels contain `filter`.
pub(crate) fn metric(page: &str, name: &str, filter: &str) -> f64 {
    let named = |k: &str| {
        k.strip_prefix(name)
            .is_some_and(|r| r.is_empty() || r.starts_with('{'))
    };
    let samples = page.lines().filter(|l| !l.starts_with('#'));
    let samples = samples.filter_map(|l| l.rsplit_once(' '));
    let wanted = samples.filter(|(k, _)| named(k) && k.contains(filter));
    wanted
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// Pushes one SET; the instant its 202 arrived.
pub(crate) async fn ingest(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
) -> Result<Instant, String> {
    let req = client
        .post(url)
        .header("content-type", "application/secevent+jwt");
    let resp = req.body(body).send().await;
    let resp = resp.map_err(|e| format!("transport error: {e}"))?;
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if status != reqwest::StatusCode::ACCEPTED {
        let text = String::from_utf8_lossy(body.get(..300).unwrap_or(&body)).into_owned();
        return Err(format!("HTTP {status}: {text}"));
    }
    Ok(Instant::now())
}

/// Pushes `sets[i]` for request `i`.
pub(crate) fn ingest_job(api: &Api, sets: Arc<Vec<Bytes>>) -> Job {
    let (client, url) = (api.client.clone(), Arc::<str>::from(api.ingest_url()));
    job(move |i| {
        let (client, url, set) = (client.clone(), url.clone(), sets[i as usize].clone());
        async move { ingest(&client, &url, set).await.map(|_| 0) }
    })
}

pub(crate) fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("an object literal"),
    }
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

/// Signs `claims(i)` for every `i` in `range` on every core (threads `load-sign`).
pub(crate) fn presign<F>(signer: &SetSigner, range: std::ops::Range<u64>, claims: F) -> Vec<Bytes>
where
    F: Fn(u64) -> Map<String, Value> + Sync,
{
    let threads = super::machine::cores() as u64;
    let chunk = (range.end - range.start).div_ceil(threads).max(1);
    // Exact-size allocations: a pool's footprint is just the SETs' bytes.
    let sign = |i| {
        Bytes::from(
            signer
                .sign(&claims(i))
                .expect("sign")
                .into_bytes()
                .into_boxed_slice(),
        )
    };
    let part = |t: u64| {
        (range.start + t * chunk).min(range.end)..(range.start + (t + 1) * chunk).min(range.end)
    };
    std::thread::scope(|s| {
        let spawn = |t| {
            let (b, sign) = (std::thread::Builder::new().name("load-sign".into()), &sign);
            b.spawn_scoped(s, move || part(t).map(sign).collect::<Vec<_>>())
        };
        let parts: Vec<_> = (0..threads)
            .map(|t| spawn(t).expect("signer thread"))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("signer thread"))
            .collect()
    })
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
        threads
            .into_iter()
            .map(|h| h.join().expect("rate thread"))
            .sum()
    })
}
