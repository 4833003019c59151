//! Test support: a real hub on loopback with a real sled directory (`TestHub`), a JWKS server
//! that counts its fetches (`JwksServer`), keys, SET builders, and the Python interop tool.

#![allow(dead_code)]

pub mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use serde_json::{json, Map, Value};
use ssf_hub::app::Running;
use ssf_hub::config::{Config, Secret, SourceConfig};
use ssf_hub::sign::{SetSigner, SignAlg};
use tempfile::TempDir;

pub const ISS: &str = "https://idp.example.test";
pub const AUD: &str = "https://hub.example.test";
pub const ADMIN: &str = "test-admin-token-0123456789";
pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";

/// Defaults with the environment layer switched off, so a developer's SSF_HUB_* cannot leak in.
/// An existing `data_dir` (a fresh temporary directory, created with the umask) is made private,
/// as the hub requires.
pub fn base_config(data_dir: &Path) -> Config {
    if data_dir.is_dir() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .expect("chmod 700 the data directory");
    }
    let mut c = Config::load_from(
        None,
        figment::providers::Env::prefixed("SSF_HUB_TEST_NONE_"),
    )
    .expect("default config");
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.data_dir = data_dir.to_path_buf();
    c.admin_token = Some(Secret::new(ADMIN));
    // Test receivers listen on loopback; production refuses it unless allowed like this.
    c.delivery.allow_private_targets = vec!["127.0.0.0/8".into()];
    c.delivery.retry_initial_backoff_ms = 20;
    c.delivery.retry_max_backoff_ms = 400;
    c
}

pub fn source(id: &str) -> SourceConfig {
    SourceConfig {
        id: id.into(),
        issuer: ISS.into(),
        jwks_uri: None,
        jwks_file: None,
        audiences: vec![AUD.into()],
        algorithms: ["ES256", "RS256", "PS256", "EdDSA"]
            .map(String::from)
            .to_vec(),
        authorization: None,
        legacy: false,
        event_types: vec![],
        owns: Default::default(),
        allow_insecure_jwks_uri: false,
    }
}

pub fn es256() -> SetSigner {
    SetSigner::generate(SignAlg::ES256).expect("keygen").0
}

/// Writes `{"keys": [...]}` with the public halves of `signers` and returns its path.
pub fn write_jwks(dir: &Path, name: &str, signers: &[&SetSigner]) -> PathBuf {
    let path = dir.join(name);
    let keys: Vec<Value> = signers.iter().map(|s| s.public_jwk()).collect();
    std::fs::write(&path, json!({ "keys": keys }).to_string()).expect("write jwks");
    path
}

/// A well-formed SET's claims for `event`, with `payload` and an email subject.
pub fn claims(event: &str, payload: Value) -> Map<String, Value> {
    json!({
        "iss": ISS,
        "aud": AUD,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": ssf_hub::unix_now(),
        "txn": "txn-1",
        "sub_id": { "format": "email", "email": "ana@corp.example.test" },
        "events": { event: payload }
    })
    .as_object()
    .cloned()
    .expect("object")
}

pub fn session_revoked() -> Map<String, Value> {
    claims(
        SESSION_REVOKED,
        json!({ "event_timestamp": ssf_hub::unix_now() }),
    )
}

/// A running hub, its data directory and an HTTP client ([`Api`], which it derefs to).
pub struct TestHub {
    pub running: Running,
    pub dir: TempDir,
    pub api: Api,
    pub config: Config,
}

impl std::ops::Deref for TestHub {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A hub's HTTP API as a client sees it: the in-process [`TestHub`], or a hub process.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn at(base: String) -> Api {
        Api {
            client: reqwest::Client::new(),
            base,
        }
    }

    /// Registers a receiver through the admin API; returns (receiver_id, credential).
    pub async fn receiver(&self, name: &str) -> (String, String) {
        let r = self
            .client
            .post(format!("{}/admin/receivers", self.base))
            .bearer_auth(ADMIN)
            .json(&json!({"name": name, "audience": format!("https://{name}.example.test")}))
            .send()
            .await
            .expect("create receiver");
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.expect("json");
        (
            body["receiver_id"].as_str().expect("id").to_owned(),
            body["token"].as_str().expect("token").to_owned(),
        )
    }

    /// Registers a receiver with extra admin-API fields (`scopes`, `bound_to`,
    /// `oauth_client_id`); returns (receiver_id, credential).
    pub async fn receiver_with(&self, name: &str, extra: Value) -> (String, String) {
        let mut body = json!({"name": name, "audience": format!("https://{name}.example.test")});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        let r = self
            .client
            .post(format!("{}/admin/receivers", self.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .expect("create receiver");
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.expect("json");
        (
            body["receiver_id"].as_str().expect("id").to_owned(),
            body["token"].as_str().expect("token").to_owned(),
        )
    }

    /// A gateway or sidecar credential: the revocation scope only.
    pub async fn gateway(&self, name: &str) -> (String, String) {
        self.receiver_with(name, json!({"scopes": ["revocations.read"]}))
            .await
    }

    /// A management call as a receiver: `method` on `path` (below the hub's base URL).
    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::from(req.send().await.expect("request")).await
    }

    /// POSTs `body` to `/ingest/{source}` as `application/secevent+jwt`.
    pub async fn push(&self, source: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.push_with(source, body, &[]).await
    }

    pub async fn push_with(
        &self,
        source: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .client
            .post(format!("{}/ingest/{source}", self.base))
            .header("content-type", "application/secevent+jwt")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(req.send().await.expect("request")).await
    }

    /// All records in the log, via `GET /events` with the admin token.
    pub async fn events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = 0;
        loop {
            let page = self
                .client
                .get(format!("{}/events?since={since}&limit=1000", self.base))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("events");
            assert_eq!(page.status(), 200);
            let page: Value = page.json().await.expect("json");
            let events = page["events"].as_array().cloned().expect("events array");
            if events.is_empty() {
                return out;
            }
            since = page["next"].as_u64().expect("next");
            out.extend(events);
        }
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

impl TestHub {
    /// A hub with one source `idp` trusting `signer` through a JWKS file.
    pub async fn with_signer(signer: &SetSigner) -> TestHub {
        TestHub::start(|dir, c| {
            let mut s = source("idp");
            s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[signer]));
            c.sources = vec![s];
        })
        .await
    }

    /// A hub whose config `edit` adjusts (data dir and admin token already set).
    pub async fn start(edit: impl FnOnce(&Path, &mut Config)) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = base_config(dir.path());
        edit(dir.path(), &mut config);
        TestHub::boot(dir, config).await
    }

    async fn boot(dir: TempDir, config: Config) -> TestHub {
        let running = ssf_hub::app::spawn(config.clone())
            .await
            .expect("hub starts");
        let api = Api::at(format!("http://{}", running.addr));
        TestHub {
            running,
            dir,
            api,
            config,
        }
    }

    /// Stops the hub cleanly and starts it again on the same data directory and config.
    pub async fn restart(self) -> TestHub {
        let TestHub {
            running,
            dir,
            config,
            ..
        } = self;
        running.stop().await.expect("clean stop");
        TestHub::boot(dir, config).await
    }

    pub async fn stop(self) {
        self.running.stop().await.expect("clean stop");
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// A poll answer's `sets` (jti → compact SET), after checking it is a 200.
    pub fn sets(&self) -> std::collections::BTreeMap<String, String> {
        assert_eq!(self.status, 200, "{}", self.body);
        self.json()["sets"]
            .as_object()
            .expect("sets")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("SET").to_owned()))
            .collect()
    }

    pub async fn from(resp: reqwest::Response) -> Reply {
        let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("body");
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }

    /// Asserts the exact RFC 8935 §2.3 error response: 400, JSON, Content-Language, and a body of
    /// exactly `err` and a non-empty `description`.
    pub fn assert_set_error(&self, code: &str) {
        assert_eq!(self.status, 400, "body: {}", self.body);
        assert_eq!(
            self.headers["content-type"], "application/json",
            "content-type"
        );
        assert!(self.headers.contains_key("content-language"));
        let body = self.json();
        let obj = body.as_object().expect("object");
        assert_eq!(obj.len(), 2, "only err and description: {body}");
        assert_eq!(body["err"], code, "{body}");
        assert!(!body["description"]
            .as_str()
            .expect("description")
            .is_empty());
    }

    pub fn assert_accepted(&self) {
        assert_eq!(self.status, 202, "body: {}", self.body);
        assert!(self.body.is_empty(), "202 has an empty body");
    }
}

/// A JWKS endpoint on loopback whose key set can be swapped, which counts fetches and can be
/// made to fail.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub jwks: Arc<RwLock<Value>>,
    pub failing: Arc<std::sync::atomic::AtomicBool>,
}

impl JwksServer {
    pub async fn start(signers: &[&SetSigner], cache_control: &'static str) -> JwksServer {
        use axum::routing::get;
        let hits = Arc::new(AtomicUsize::new(0));
        let keys: Vec<Value> = signers.iter().map(|s| s.public_jwk()).collect();
        let jwks = Arc::new(RwLock::new(json!({ "keys": keys })));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, j, f) = (hits.clone(), jwks.clone(), failing.clone());
        let app = axum::Router::new().route(
            "/jwks",
            get(move || {
                let (h, j, f) = (h.clone(), j.clone(), f.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if f.load(Ordering::SeqCst) {
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [("cache-control", cache_control)],
                            String::new(),
                        );
                    }
                    let body = j.read().expect("lock").to_string();
                    (StatusCode::OK, [("cache-control", cache_control)], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        JwksServer {
            addr,
            hits,
            jwks,
            failing,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_keys(&self, signers: &[&SetSigner]) {
        let keys: Vec<Value> = signers.iter().map(|s| s.public_jwk()).collect();
        *self.jwks.write().expect("lock") = json!({ "keys": keys });
    }
}

/// Verifies a compact JWS with jwcrypto against the JWKS file at `jwks`; the decoded header and
/// claims (`{"header": .., "claims": ..}`), or jwcrypto's refusal.
pub fn jwcrypto_verify(jwks: &std::path::Path, token: &str) -> Result<Value, String> {
    let jwks = jwks.to_str().expect("utf8 path");
    let out = jose_tool(&["verify", "--jwks", jwks, "--token", "-"], Some(token))?;
    Ok(serde_json::from_str(&out).expect("jose_tool prints JSON"))
}

/// Runs `tests/interop/jose_tool.py` (jwcrypto, an independent JOSE implementation).
pub fn jose_tool(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/jose_tool.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (the test command installs tests/requirements.txt)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("wait");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The `jti` claim of a compact SET.
pub fn jti_of(set: &str) -> String {
    use base64::Engine as _;
    let payload = set.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("b64");
    let claims: Value = serde_json::from_slice(&bytes).expect("json");
    claims["jti"].as_str().expect("jti").to_owned()
}

/// What a [`TestReceiver`] answers: status, extra headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, String);

/// One SET as a test receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub set: String,
    pub claims: Value,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub answered: u16,
}

/// An RFC 8935 receiver on loopback that records every push and answers as `policy` says
/// (given the number of pushes so far and the SET's claims).
pub struct TestReceiver {
    pub addr: SocketAddr,
    pub got: Arc<std::sync::Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestReceiver {
    pub async fn start(
        policy: impl Fn(usize, &Value) -> Answer + Send + Sync + 'static,
    ) -> TestReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        TestReceiver::serve(listener, policy)
    }

    /// Starts on a given port (one reserved earlier, for "receiver comes back up" tests).
    pub async fn start_on(
        port: u16,
        policy: impl Fn(usize, &Value) -> Answer + Send + Sync + 'static,
    ) -> TestReceiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("rebind");
        TestReceiver::serve(listener, policy)
    }

    fn serve(
        listener: tokio::net::TcpListener,
        policy: impl Fn(usize, &Value) -> Answer + Send + Sync + 'static,
    ) -> TestReceiver {
        use axum::response::IntoResponse;
        let addr = listener.local_addr().expect("addr");
        let got: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
        let policy = Arc::new(policy);
        let sink = got.clone();
        let app = axum::Router::new().route(
            "/rx",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (sink, policy) = (sink.clone(), policy.clone());
                async move {
                    let claims = decode_claims(&body);
                    let n = sink.lock().expect("lock").len();
                    let (status, extra, reply) = policy(n, &claims);
                    let header = |k: &str| {
                        headers
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .map(String::from)
                    };
                    sink.lock().expect("lock").push(Received {
                        set: body,
                        claims,
                        authorization: header("authorization"),
                        content_type: header("content-type"),
                        answered: status,
                    });
                    let mut resp =
                        (StatusCode::from_u16(status).expect("status"), reply).into_response();
                    for (k, v) in extra {
                        resp.headers_mut().insert(k, v.parse().expect("header"));
                    }
                    resp
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestReceiver { addr, got, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/rx", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// SETs answered with a 2xx, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.answered < 300)
            .collect()
    }

    /// Waits (bounded) until `done` holds for what was received.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done(&self.received()) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.received()
                    .iter()
                    .map(|r| r.answered)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// The claims of a compact SET, without verifying it (tests verify separately).
pub fn decode_claims(set: &str) -> Value {
    use base64::Engine as _;
    set.split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// A free loopback port, released for a server that starts later.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Runs a Python script from `tests/interop/` with `args`; stdout on success, stderr on failure.
pub fn run_python(script: &str, args: &[String]) -> Result<String, String> {
    let path = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("python3 runs (the test command installs tests/requirements.txt)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
