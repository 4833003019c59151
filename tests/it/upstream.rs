//! The hub as a receiver upstream, against an independent SSF transmitter written in Python
//! (`tests/interop/ssf_transmitter.py`: stdlib HTTP server, jwcrypto), run as a real process on
//! loopback. The hub is configured with the transmitter's issuer and a bearer token only.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use ssf_hub::config::{Config, Secret, UpstreamConfig, UpstreamOAuthConfig};

use crate::support::{free_port, Api, TestHub, ADMIN};

const TOKEN: &str = "transmitter-management-token";
const CLIENT_SECRET: &str = "hub-client-secret";

/// The Python transmitter process; killed when dropped.
struct Transmitter {
    child: Child,
    port: u16,
    state: PathBuf,
    aud: String,
}

impl Transmitter {
    fn start(dir: &Path, name: &str, aud: &str, mode: &str) -> Transmitter {
        let port = free_port();
        let state = dir.join(format!("{name}.json"));
        Transmitter::spawn(port, state, aud, mode, &[])
    }

    fn spawn(port: u16, state: PathBuf, aud: &str, mode: &str, extra: &[&str]) -> Transmitter {
        let script = format!(
            "{}/tests/interop/ssf_transmitter.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--token", TOKEN, "--aud", aud])
            .args([
                "--mode",
                mode,
                "--client-id",
                "hub",
                "--client-secret",
                CLIENT_SECRET,
            ])
            .args(extra)
            .arg("--state")
            .arg(&state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (the test command installs tests/requirements.txt)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("transmitter starts");
        assert_eq!(line.trim(), "READY", "transmitter did not start");
        Transmitter {
            child,
            port,
            state,
            aud: aud.to_owned(),
        }
    }

    /// Kills the process and starts it again on the same port and state file.
    fn restart(mut self) -> Transmitter {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Transmitter::spawn(self.port, self.state.clone(), &self.aud, "normal", &[])
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}/tenants/acme", self.port)
    }

    async fn admin(&self, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let client = reqwest::Client::new();
        let resp = match body {
            Some(b) => client.post(url).json(&b).send().await,
            None => client.get(url).send().await,
        }
        .expect("transmitter admin");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.expect("json")
    }

    async fn state(&self) -> Value {
        self.admin("/admin/state", None).await
    }
}

impl Drop for Transmitter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn upstream(id: &str, tx: &Transmitter, delivery: &str) -> UpstreamConfig {
    UpstreamConfig {
        id: id.into(),
        issuer: tx.issuer(),
        delivery: delivery.into(),
        event_types: vec!["caep/session-revoked".into()],
        bearer_token: Some(Secret::new(TOKEN)),
        oauth: None,
        audiences: vec![],
        ingest_url: None,
        algorithms: vec!["ES256".into()],
        legacy: false,
        allow_http: true,
        owns: Default::default(),
    }
}

/// A hub on a fixed loopback port whose `issuer` (the default push target and `aud`) is that
/// address, with short upstream timings.
fn hub_config(c: &mut Config, port: u16, upstreams: Vec<UpstreamConfig>) {
    c.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    c.issuer = format!("http://127.0.0.1:{port}");
    c.upstreams = upstreams;
    c.upstream.retry_initial_backoff_ms = 100;
    c.upstream.retry_max_backoff_ms = 1000;
    c.upstream.status_interval_secs = 1;
    c.upstream.verification_timeout_secs = 10;
    c.upstream.poll_wait_secs = 5;
    c.upstream.poll_max_events = 50;
}

async fn sources(api: &Api) -> Vec<Value> {
    let r = api.call("GET", "/admin/sources", ADMIN, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["sources"].as_array().cloned().expect("sources")
}

async fn source(api: &Api, id: &str) -> Value {
    sources(api)
        .await
        .into_iter()
        .find(|s| s["id"] == id)
        .expect("source listed")
}

/// Polls `check` until it holds (bounded generously; never a timing assertion).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn wait_ready(api: &Api, id: &str) {
    let mut last = Value::Null;
    for _ in 0..1200 {
        last = source(api, id).await;
        if last["state"] == "ready"
            && last["verification"] == "verified"
            && last["stream_status"] == "enabled"
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {id} ready and verified: {last}");
}

/// `(source, jti)` of every record, asserting none is stored twice.
async fn records(api: &Api) -> Vec<(String, String)> {
    let all: Vec<(String, String)> = api
        .events()
        .await
        .iter()
        .map(|e| {
            (
                e["source"].as_str().unwrap_or_default().to_owned(),
                e["jti"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a SET was appended twice");
    all
}

async fn count(api: &Api, source: &str) -> usize {
    records(api)
        .await
        .iter()
        .filter(|(s, _)| s == source)
        .count()
}

async fn wait_count(api: &Api, source: &str, n: usize) {
    eventually(&format!("{n} records from {source}"), || async {
        count(api, source).await >= n
    })
    .await;
    assert_eq!(
        count(api, source).await,
        n,
        "{source}: more records than SETs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transmitter_found_by_issuer_delivers_by_push_and_poll_across_restarts() {
    let txdir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let tx = Transmitter::start(
        txdir.path(),
        "tx",
        &format!("http://127.0.0.1:{port}"),
        "normal",
    );
    let ups = vec![
        upstream("up-push", &tx, "push"),
        upstream("up-poll", &tx, "poll"),
    ];
    let hub = TestHub::start(|_, c| hub_config(c, port, ups)).await;

    // Discovery (path-suffixed issuer), one stream each, verified: push through ingest, poll
    // through the poll loop.
    wait_ready(&hub, "up-push").await;
    wait_ready(&hub, "up-poll").await;
    let st = tx.state().await;
    assert_eq!(st["creates"], 2, "{st}");
    assert!(st["verify_requests"].as_u64() >= Some(2));
    let push = source(&hub, "up-push").await;
    assert_eq!(push["delivery"], "push");
    assert!(push["stream_id"].is_string());

    tx.admin("/admin/emit", Some(json!({"count": 3}))).await;
    wait_count(&hub, "up-push", 3).await;
    wait_count(&hub, "up-poll", 3).await;
    let s = source(&hub, "up-poll").await;
    assert_eq!(s["events_by_type"]["caep/session-revoked"], 3, "{s}");
    assert!(s["last_event_at"].is_u64());

    // The hub restarts: the same streams, nothing appended twice.
    let hub = hub.restart().await;
    wait_ready(&hub, "up-push").await;
    wait_ready(&hub, "up-poll").await;
    tx.admin("/admin/emit", Some(json!({"count": 2}))).await;
    wait_count(&hub, "up-push", 5).await;
    wait_count(&hub, "up-poll", 5).await;

    // The hub is down while the transmitter emits: nothing is lost.
    let TestHub {
        running,
        dir,
        config,
        ..
    } = hub;
    running.stop().await.expect("clean stop");
    tx.admin("/admin/emit", Some(json!({"count": 2}))).await;
    let running = ssf_hub::app::spawn(config.clone()).await.expect("restart");
    let hub = TestHub {
        api: Api::at(format!("http://{}", running.addr)),
        running,
        dir,
        config,
    };
    wait_count(&hub, "up-push", 7).await;
    wait_count(&hub, "up-poll", 7).await;

    // The transmitter restarts (its streams kept in its state file): still two streams.
    let tx = tx.restart();
    tx.admin("/admin/emit", Some(json!({"count": 2}))).await;
    wait_count(&hub, "up-push", 9).await;
    wait_count(&hub, "up-poll", 9).await;
    let st = tx.state().await;
    assert_eq!(st["creates"], 2, "a second stream was created: {st}");
    assert_eq!(st["streams"].as_array().map(Vec::len), Some(2));

    // Every polled SET is acknowledged once durable (in the next request).
    eventually("poll queue drained by acknowledgements", || async {
        let st = tx.state().await;
        st["queued"]
            .as_object()
            .is_some_and(|q| q.values().all(|n| n == 0))
    })
    .await;

    // A SET for someone else: refused with its RFC 8935 code, by push (400) and by poll
    // (`setErrs`), and not appended.
    let out = tx
        .admin(
            "/admin/emit",
            Some(json!({"count": 1, "aud": "https://someone-else.example"})),
        )
        .await;
    let jtis: Vec<String> = out["jtis"]
        .as_array()
        .expect("jtis")
        .iter()
        .filter_map(|j| j.as_str().map(str::to_owned))
        .collect();
    assert_eq!(jtis.len(), 2);
    eventually("both refusals reported to the transmitter", || async {
        let st = tx.state().await;
        jtis.iter()
            .all(|j| st["set_errs"][j]["err"] == "invalid_audience")
    })
    .await;
    assert_eq!(count(&hub, "up-push").await, 9);
    assert_eq!(count(&hub, "up-poll").await, 9);
    let s = source(&hub, "up-poll").await;
    assert!(
        s["errors_by_kind"]["set_invalid_audience"].as_u64() >= Some(1),
        "{s}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ssf-hub"))
        .args(["sources", "--url", &hub.base, "--token", ADMIN])
        .output()
        .expect("cli runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed["sources"].as_array().map(Vec::len), Some(2));
    assert!(
        listed["connectors"].is_array(),
        "connectors are listed too: {listed}"
    );
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("ssf_hub_upstream_stream_status"),
        "{metrics}"
    );
    assert!(metrics.contains("ssf_hub_upstream_polls_total"));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_and_stream_answers_are_refused_and_retried() {
    let txdir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let aud = format!("http://127.0.0.1:{port}");
    // (mode, delivery the hub wants, what the status must say)
    let cases = [
        (
            "bad_issuer",
            "push",
            "metadata",
            "is not the configured issuer",
        ),
        (
            "bad_aud",
            "push",
            "stream_answer",
            "`aud` does not name this hub",
        ),
        (
            "no_events_delivered",
            "poll",
            "stream_answer",
            "no `events_delivered`",
        ),
        (
            "poll_only",
            "push",
            "metadata",
            "does not support push delivery",
        ),
        (
            "ssrf",
            "push",
            "metadata",
            "an address the hub may not reach",
        ),
    ];
    let txs: Vec<Transmitter> = cases
        .iter()
        .map(|(mode, ..)| Transmitter::start(txdir.path(), mode, &aud, mode))
        .collect();
    let ups = cases
        .iter()
        .zip(&txs)
        .map(|((mode, delivery, ..), tx)| upstream(mode, tx, delivery))
        .collect();
    let hub = TestHub::start(|_, c| hub_config(c, port, ups)).await;
    for (mode, _, kind, message) in cases {
        eventually(&format!("{mode} refused twice"), || async {
            let s = source(&hub, mode).await;
            s["state"] == "refused"
                && s["errors_by_kind"][kind].as_u64() >= Some(2)
                && s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(message))
        })
        .await;
    }
    assert!(hub.events().await.is_empty());
    // Fixed upstream: the retry succeeds, reusing a stream created before the refusal.
    for tx in &txs {
        tx.admin("/admin/mode", Some(json!({"mode": "normal"})))
            .await;
    }
    for (mode, ..) in cases {
        wait_ready(&hub, mode).await;
    }
    for (tx, (mode, ..)) in txs.iter().zip(cases) {
        let st = tx.state().await;
        assert_eq!(st["creates"], 1, "{mode}: {st}");
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_or_disabled_upstream_stream_is_surfaced() {
    let txdir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let tx = Transmitter::start(
        txdir.path(),
        "tx",
        &format!("http://127.0.0.1:{port}"),
        "normal",
    );
    // The poll source authenticates with OAuth 2.0 client credentials instead of a static token.
    let mut poll = upstream("up-poll", &tx, "poll");
    poll.bearer_token = None;
    poll.oauth = Some(UpstreamOAuthConfig {
        token_endpoint: format!("http://127.0.0.1:{}/token", tx.port),
        client_id: "hub".into(),
        client_secret: Secret::new(CLIENT_SECRET),
        scopes: vec!["ssf.manage".into(), "ssf.poll".into()],
    });
    let ups = vec![upstream("up-push", &tx, "push"), poll];
    let hub = TestHub::start(|_, c| hub_config(c, port, ups)).await;
    wait_ready(&hub, "up-push").await;
    wait_ready(&hub, "up-poll").await;
    let st = tx.state().await;
    assert!(st["tokens_issued"].as_u64() >= Some(1), "{st}");
    assert_eq!(st["last_scope"], "ssf.manage ssf.poll");
    for status in ["paused", "disabled"] {
        tx.admin(
            "/admin/status",
            Some(json!({"status": status, "reason": "maintenance"})),
        )
        .await;
        for id in ["up-push", "up-poll"] {
            eventually(&format!("{id} {status}"), || async {
                let s = source(&hub, id).await;
                s["stream_status"] == status
            })
            .await;
        }
    }
    let metrics = hub.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ssf_hub_upstream_stream_status")
                && l.contains("status=\"disabled\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    // Control events are link state, not appended.
    assert!(hub.events().await.is_empty());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_1_0_transmitter_is_accepted_in_legacy_mode_and_normalized() {
    let txdir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let tx = Transmitter::start(
        txdir.path(),
        "tx",
        &format!("http://127.0.0.1:{port}"),
        "legacy",
    );
    let mut strict = upstream("strict", &tx, "push");
    strict.legacy = false;
    let mut ups = vec![strict];
    for (id, delivery) in [("old-push", "push"), ("old-poll", "poll")] {
        let mut u = upstream(id, &tx, delivery);
        u.legacy = true;
        ups.push(u);
    }
    let hub = TestHub::start(|_, c| hub_config(c, port, ups)).await;
    // /.well-known/sse-configuration, no spec_version, RISC delivery-method URIs, ID1
    // `delivery_method`/`url`, RISC verification and CAEP stream-updated URIs.
    wait_ready(&hub, "old-push").await;
    wait_ready(&hub, "old-poll").await;
    // Without `legacy`, a transmitter that names no spec_version is refused.
    // Without `legacy`, the pre-1.0 metadata location is not even tried.
    eventually("strict source finds no metadata", || async {
        let s = source(&hub, "strict").await;
        s["state"] == "error"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("HTTP 404"))
    })
    .await;
    tx.admin(
        "/admin/emit",
        Some(json!({"count": 2, "email": "a@example.com"})),
    )
    .await;
    wait_count(&hub, "old-push", 2).await;
    wait_count(&hub, "old-poll", 2).await;
    for e in hub.events().await {
        // `http://` CAEP URI, in-payload subject with `subject_type`: stored in 1.0 form.
        assert_eq!(
            e["event_type"], "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
            "{e}"
        );
        assert_eq!(e["subject"]["format"], "email", "{e}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn admin_sources_also_shows_the_traffic_of_configured_push_sources() {
    let key = crate::support::es256();
    let hub = TestHub::with_signer(&key).await;
    let set = key.sign(&crate::support::session_revoked()).expect("sign");
    hub.push("idp", set).await.assert_accepted();
    hub.push("idp", "not a SET")
        .await
        .assert_set_error("invalid_request");
    let s = source(&hub, "idp").await;
    assert_eq!(s["managed"], false, "{s}");
    assert_eq!(s["state"], "configured");
    assert_eq!(s["events_by_type"]["caep/session-revoked"], 1, "{s}");
    assert_eq!(s["errors_by_kind"]["set_invalid_request"], 1, "{s}");
    assert!(s["last_event_at"].is_u64());
    // Without the admin token: refused.
    let r = hub.call("GET", "/admin/sources", "wrong-token", None).await;
    assert_eq!(r.status, 403);
    hub.stop().await;
}

/// The log's head position (how many records it holds, with no retention at work).
async fn head(api: &Api) -> u64 {
    let r = api
        .call("GET", "/events?since=0&limit=1", ADMIN, None)
        .await;
    r.json()["head"].as_u64().expect("head")
}

/// Issue 11's performance bar: a poll source's backlog (default 100,000 SETs, or
/// `SSF_HUB_POLL_BACKLOG`) drains at no less than half the hub's push-ingest rate, both
/// measured in this run on this machine. A benchmark, so not part of the default suite:
/// `cargo test --release --test it poll_backlog -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run explicitly with --ignored (see the doc comment)"]
async fn a_poll_backlog_drains_at_least_half_as_fast_as_push_ingest() {
    let n: u64 = std::env::var("SSF_HUB_POLL_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let txdir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let tx = Transmitter::spawn(
        free_port(),
        txdir.path().join("tx.json"),
        &format!("http://127.0.0.1:{port}"),
        "normal",
        &["--volatile", "--long-poll", "0.2"],
    );
    let key = crate::support::es256();
    let ups = vec![upstream("backlog", &tx, "poll")];
    let hub = TestHub::start(|dir, c| {
        let mut s = crate::support::source("idp");
        s.jwks_file = Some(crate::support::write_jwks(dir, "idp.jwks.json", &[&key]));
        c.sources = vec![s];
        hub_config(c, port, ups);
        c.upstream.poll_max_events = 1000;
    })
    .await;
    wait_ready(&hub, "backlog").await;

    // The backlog builds up while the hub is down.
    let TestHub {
        running,
        dir,
        config,
        ..
    } = hub;
    running.stop().await.expect("clean stop");
    tx.admin("/admin/backlog", Some(json!({"count": n}))).await;
    let started = std::time::Instant::now();
    let running = ssf_hub::app::spawn(config.clone()).await.expect("restart");
    let hub = TestHub {
        api: Api::at(format!("http://{}", running.addr)),
        running,
        dir,
        config,
    };
    eventually("the backlog drained", || async { head(&hub).await >= n }).await;
    let drain = n as f64 / started.elapsed().as_secs_f64();

    // Push ingest of as many SETs (up to 20,000), 16 connections at a time.
    let m = n.min(20_000);
    let sets: Vec<String> = (0..m)
        .map(|_| key.sign(&crate::support::session_revoked()).expect("sign"))
        .collect();
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in sets.chunks(sets.len().div_ceil(16)) {
        let (api, chunk) = (hub.api.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for set in chunk {
                api.push("idp", set).await.assert_accepted();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let push = m as f64 / started.elapsed().as_secs_f64();
    println!("poll backlog drain: {drain:.0} SETs/s; push ingest: {push:.0} SETs/s");
    assert_eq!(head(&hub).await, n + m, "every SET appended exactly once");
    assert!(
        drain >= push / 2.0,
        "poll drained {drain:.0}/s, less than half of push ingest {push:.0}/s"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_changes_update_the_one_stream_in_place() {
    let txdir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let tx = Transmitter::start(
        txdir.path(),
        "tx",
        &format!("http://127.0.0.1:{port}"),
        "normal",
    );
    let ups = vec![upstream("up", &tx, "push")];
    let hub = TestHub::start(|_, c| hub_config(c, port, ups)).await;
    wait_ready(&hub, "up").await;
    let before = source(&hub, "up").await["stream_id"].clone();

    // More event types and poll instead of push; this transmitter refuses PATCH, so PUT.
    tx.admin("/admin/mode", Some(json!({"mode": "no_patch"})))
        .await;
    let TestHub {
        running,
        dir,
        mut config,
        ..
    } = hub;
    running.stop().await.expect("clean stop");
    config.upstreams[0].delivery = "poll".into();
    config.upstreams[0]
        .event_types
        .push("caep/credential-change".into());
    let running = ssf_hub::app::spawn(config.clone()).await.expect("restart");
    let hub = TestHub {
        api: Api::at(format!("http://{}", running.addr)),
        running,
        dir,
        config,
    };
    wait_ready(&hub, "up").await;
    let st = tx.state().await;
    assert_eq!(st["creates"], 1, "{st}");
    assert!(st["updates"]["PUT"].as_u64() >= Some(1), "{st}");
    let stream = &st["streams"][0];
    assert_eq!(stream["delivery"]["method"], "urn:ietf:rfc:8936", "{st}");
    assert_eq!(stream["events_requested"].as_array().map(Vec::len), Some(2));
    assert_eq!(source(&hub, "up").await["stream_id"], before);
    tx.admin("/admin/emit", Some(json!({"count": 2}))).await;
    wait_count(&hub, "up", 2).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_verification_state_is_refused_and_verification_retried() {
    let txdir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let tx = Transmitter::start(
        txdir.path(),
        "tx",
        &format!("http://127.0.0.1:{port}"),
        "wrong_state",
    );
    let ups = vec![
        upstream("up-push", &tx, "push"),
        upstream("up-poll", &tx, "poll"),
    ];
    let hub = TestHub::start(|_, c| {
        hub_config(c, port, ups);
        c.upstream.verification_timeout_secs = 1;
    })
    .await;
    for id in ["up-push", "up-poll"] {
        eventually(&format!("{id} verification failed"), || async {
            let s = source(&hub, id).await;
            s["verification"] == "failed"
                && s["errors_by_kind"]["set_invalid_state"].as_u64() >= Some(1)
        })
        .await;
    }
    // Reported to the transmitter: a 400 `invalid_state` for the push, `setErrs` for the poll.
    eventually("both refusals reported", || async {
        let st = tx.state().await;
        st["set_errs"]
            .as_object()
            .is_some_and(|e| e.values().filter(|v| v["err"] == "invalid_state").count() >= 2)
    })
    .await;
    tx.admin("/admin/mode", Some(json!({"mode": "normal"})))
        .await;
    wait_ready(&hub, "up-push").await;
    wait_ready(&hub, "up-poll").await;
    assert!(hub.events().await.is_empty());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_is_repeated_but_never_sooner_than_the_transmitter_allows() {
    let txdir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let aud = format!("http://127.0.0.1:{port}");
    // The hub would verify every second; one transmitter allows it, the other only hourly.
    let eager = Transmitter::spawn(
        free_port(),
        txdir.path().join("eager.json"),
        &aud,
        "normal",
        &["--min-verification-interval", "1"],
    );
    let strict = Transmitter::spawn(
        free_port(),
        txdir.path().join("strict.json"),
        &aud,
        "normal",
        &["--min-verification-interval", "3600"],
    );
    let ups = vec![
        upstream("eager", &eager, "push"),
        upstream("strict", &strict, "push"),
    ];
    let hub = TestHub::start(|_, c| {
        hub_config(c, port, ups);
        c.upstream.reverify_interval_secs = 1;
    })
    .await;
    wait_ready(&hub, "strict").await;
    eventually("the eager stream verified three times", || async {
        eager.state().await["verify_requests"].as_u64() >= Some(3)
    })
    .await;
    // A restart does not reset the clock either.
    let hub = hub.restart().await;
    wait_ready(&hub, "strict").await;
    eventually(
        "the eager stream verified again after the restart",
        || async { eager.state().await["verify_requests"].as_u64() >= Some(4) },
    )
    .await;
    assert_eq!(strict.state().await["verify_requests"], 1);
    hub.stop().await;
}

/// A hub process (so it can be killed like a crash) with one poll upstream, small batches.
fn write_process_config(dir: &Path, port: u16, tx: &Transmitter) -> PathBuf {
    let path = dir.join("hub.toml");
    let toml = format!(
        r#"listen = "127.0.0.1:{port}"
issuer = "http://127.0.0.1:{port}"
admin_token = "{ADMIN}"
data_dir = "data"

[delivery]
allow_private_targets = ["127.0.0.0/8"]

[upstream]
retry_initial_backoff_ms = 100
retry_max_backoff_ms = 1000
status_interval_secs = 1
poll_max_events = 7
poll_wait_secs = 5

[[upstreams]]
id = "crashy"
issuer = "{issuer}"
delivery = "poll"
event_types = ["caep/session-revoked"]
bearer_token = "{TOKEN}"
allow_http = true
"#,
        issuer = tx.issuer()
    );
    std::fs::write(&path, toml).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_source_loses_nothing_and_appends_nothing_twice_when_the_hub_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let tx = Transmitter::spawn(
        free_port(),
        dir.path().join("tx.json"),
        &format!("http://127.0.0.1:{port}"),
        "normal",
        &["--poll-delay", "0.05"],
    );
    let config = write_process_config(dir.path(), port, &tx);
    let hub = crate::support::process::HubProcess::start(&config, dir.path());
    let api = hub.api();
    wait_ready(&api, "crashy").await;
    let n = 400;
    tx.admin("/admin/backlog", Some(json!({"count": n}))).await;
    // Killed mid-drain: batches appended and not yet acknowledged, or half appended.
    eventually("the drain under way", || async {
        count(&api, "crashy").await >= 60
    })
    .await;
    let before = count(&api, "crashy").await;
    hub.kill9();
    assert!(before < n, "the backlog drained before the kill");
    let hub = crate::support::process::HubProcess::start(&config, dir.path());
    let api = hub.api();
    // `count` asserts that no SET is stored twice; every one arrives.
    wait_count(&api, "crashy", n).await;
    eventually("every SET acknowledged", || async {
        let st = tx.state().await;
        st["queued"]
            .as_object()
            .is_some_and(|q| q.values().all(|n| n == 0))
    })
    .await;
    assert_eq!(tx.state().await["creates"], 1);
    hub.kill9();
}
