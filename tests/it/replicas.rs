//! Several `ssf-hub` processes on one broker (Kafka mode): they share streams, credentials,
//! keys, cursors and the log, split push delivery between them, survive `kill -9` of one of
//! them and a frozen broker, and a replica with an empty data directory joins and serves.
//! Real processes, a real broker (the suite's tansu, or one of a test's own when it freezes
//! it), real HTTP, an independent websocket client and an independent JOSE verifier.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kafka::{broker, prefix, KEK};
use crate::support::process::HubProcess;
use crate::support::*;

/// Writes `<name>.toml` for a replica on `brokers`/`prefix`, data in `<name>-data`.
fn replica_config(dir: &Path, name: &str, brokers: &str, prefix: &str, extra: &str) -> PathBuf {
    let jwks = dir.join("idp.jwks.json");
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nissuer = \"https://hub.example.test\"\n\
             data_dir = \"{name}-data\"\nadmin_token = \"{ADMIN}\"\n\n\
             [log]\nurl = \"kafka://{brokers}/{prefix}\"\n\n\
             [log.kafka]\nlinger_ms = 1\nheartbeat_ms = 200\nlease_ms = 2000\n\
             key_encryption_key = \"{KEK}\"\n{extra}\n\n\
             [delivery]\nallow_private_targets = [\"127.0.0.0/8\"]\n\
             retry_initial_backoff_ms = 20\nretry_max_backoff_ms = 400\n\n\
             [[sources]]\nid = \"idp\"\nissuer = \"{ISS}\"\njwks_file = \"{}\"\n\
             audiences = [\"{AUD}\"]\n",
            jwks.display()
        ),
    )
    .expect("write config");
    config
}

struct Replica {
    process: HubProcess,
    api: Api,
}

impl std::ops::Deref for Replica {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Starts replica `name` (its config written first) in `dir`.
fn replica(dir: &Path, name: &str, brokers: &str, prefix: &str, extra: &str) -> Replica {
    let config = replica_config(dir, name, brokers, prefix, extra);
    let process = HubProcess::start(&config, dir);
    let api = process.api();
    Replica { process, api }
}

/// A bound on waiting for something that happens behind the API (a follower, a takeover).
struct Deadline(Instant);

impl Deadline {
    fn start() -> Deadline {
        Deadline(Instant::now() + Duration::from_secs(60))
    }

    /// Fails the test once the deadline passed; else waits a little before the next look.
    async fn tick(&self, what: &str) {
        assert!(Instant::now() < self.0, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many live replicas `api` sees (its `ssf_hub_kafka_replicas_live` gauge).
async fn live(api: &Api) -> u64 {
    api.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("ssf_hub_kafka_replicas_live "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Two replicas on fresh topics of the suite's broker, trusting `key` as source `idp`, once
/// each sees the other.
async fn pair(key: &ssf_hub::sign::SetSigner) -> (tempfile::TempDir, Replica, Replica) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_jwks(dir.path(), "idp.jwks.json", &[key]);
    let (b, p) = (broker(), prefix());
    let r1 = replica(dir.path(), "r1", &b, &p, "");
    let r2 = replica(dir.path(), "r2", &b, &p, "");
    both_see_two(&r1, &r2).await;
    (dir, r1, r2)
}

async fn both_see_two(a: &Api, b: &Api) {
    let d = Deadline::start();
    while live(a).await != 2 || live(b).await != 2 {
        d.tick("both replicas to see each other").await;
    }
}

async fn status_of(api: &Api, path: &str) -> u16 {
    api.client
        .get(format!("{}{path}", api.base))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// A SET for `user`, revoking its sessions now.
fn revoke(key: &ssf_hub::sign::SetSigner, user: &str) -> String {
    let mut c = session_revoked();
    c["sub_id"] = json!({"format": "email", "email": format!("{user}@corp.example.test")});
    key.sign(&c).expect("sign")
}

fn user_of(claims: &Value) -> String {
    claims["sub_id"]["email"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn create_stream(api: &Api, token: &str, delivery: Value) -> String {
    let r = api
        .call(
            "POST",
            "/ssf/streams",
            token,
            Some(json!({"events_requested": [SESSION_REVOKED], "delivery": delivery})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["stream_id"].as_str().expect("id").to_owned()
}

async fn poll(api: &Api, id: &str, token: &str, body: Value) -> BTreeMap<String, String> {
    api.call("POST", &format!("/ssf/poll/{id}"), token, Some(body))
        .await
        .sets()
}

/// Poll SETs that carry a revocation (verification and other control SETs set aside).
fn revocations(sets: &BTreeMap<String, String>) -> Vec<(String, String)> {
    sets.iter()
        .filter(|(_, s)| decode_claims(s)["events"].get(SESSION_REVOKED).is_some())
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_delivery_polls_feeds_and_decisions() {
    let key = es256();
    let (dir, r1, r2) = pair(&key).await;

    let rx = TestReceiver::start(|_, _| (202, vec![], String::new())).await;
    // Credentials made on replica 1 are good on replica 2 at once (it catches up first).
    let (_, pusher) = r1.receiver("pusher").await;
    let (_, poller) = r1.receiver("poller").await;
    let (_, gateway) = r1.gateway("gw").await;
    let push_id = create_stream(
        &r1,
        &pusher,
        json!({"method": "urn:ietf:rfc:8935", "endpoint_url": rx.url()}),
    )
    .await;
    let poll_id = create_stream(&r2, &poller, json!({"method": "urn:ietf:rfc:8936"})).await;
    assert_ne!(push_id, poll_id);

    // Replica 2's revocation feed, read by an independent websocket client.
    let ws = format!("ws://{}/revocations/ws?since=0", r2.process.addr);
    let feed = tokio::task::spawn_blocking({
        let gateway = gateway.clone();
        move || {
            run_python(
                "ws_client.py",
                &["collect".into(), ws, gateway, "1".into(), "60".into()],
            )
        }
    });

    r1.push("idp", revoke(&key, "ana")).await.assert_accepted();

    // Pushed by whichever replica owns the stream, signed with the keys both publish.
    rx.wait_for("the pushed SET", |got| {
        got.iter()
            .any(|r| r.claims["events"].get(SESSION_REVOKED).is_some())
    })
    .await;
    let pushed = rx
        .accepted()
        .into_iter()
        .find(|r| r.claims["events"].get(SESSION_REVOKED).is_some())
        .expect("pushed");
    assert_eq!(user_of(&pushed.claims), "ana@corp.example.test");
    let jwks = r2.call("GET", "/jwks.json", "", None).await;
    assert_eq!(jwks.status, 200);
    let jwks_file = dir.path().join("hub.jwks.json");
    std::fs::write(&jwks_file, &jwks.body).expect("write jwks");
    jwcrypto_verify(&jwks_file, &pushed.set)
        .unwrap_or_else(|e| panic!("replica 2's JWKS verifies what was pushed: {e}"));

    // Polled through replica 2 and acknowledged there; replica 1 honours the acknowledgement.
    let d = Deadline::start();
    let got = loop {
        let got =
            revocations(&poll(&r2, &poll_id, &poller, json!({"returnImmediately": true})).await);
        if !got.is_empty() {
            break got;
        }
        d.tick("the SET to be pollable on replica 2").await;
    };
    assert_eq!(got.len(), 1);
    jwcrypto_verify(&jwks_file, &got[0].1).expect("polled SET verifies");
    let acked = poll(
        &r2,
        &poll_id,
        &poller,
        json!({"returnImmediately": true, "ack": [got[0].0]}),
    )
    .await;
    assert!(revocations(&acked).is_empty(), "{acked:?}");
    let after = poll(&r1, &poll_id, &poller, json!({"returnImmediately": true})).await;
    assert!(
        revocations(&after).is_empty(),
        "replica 1 must honour replica 2's acknowledgement: {after:?}"
    );

    // Replica 2's feed, delta API and decision API all show the revocation.
    let feed: Value = serde_json::from_str(
        &feed
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("websocket client: {e}")),
    )
    .expect("json");
    assert_eq!(
        feed["positions"].as_array().map(Vec::len),
        Some(1),
        "{feed}"
    );
    let deltas = r2
        .call("GET", "/revocations?since=0", &gateway, None)
        .await
        .json();
    assert_eq!(
        deltas["deltas"][0]["action"], "revoke_tokens_before",
        "{deltas}"
    );
    let decision = r2
        .call(
            "POST",
            "/revocations/check",
            &gateway,
            Some(json!({
                "subjects": {"user": {"format": "email", "email": "ana@corp.example.test"}},
                "iat": ssf_hub::unix_now() - 100,
            })),
        )
        .await
        .json();
    assert_eq!(decision["allow"], false, "{decision}");
    rx.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_on_one_replica_is_managed_through_the_other() {
    let (_dir, r1, r2) = pair(&es256()).await;
    let (_, token) = r1.receiver("rp").await;
    let id = create_stream(&r1, &token, json!({"method": "urn:ietf:rfc:8936"})).await;
    let on = |api: &Api, path: String| {
        let (api, token) = (api.clone(), token.clone());
        async move { api.call("GET", &path, &token, None).await }
    };
    let read = on(&r2, format!("/ssf/streams?stream_id={id}")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["stream_id"], id.as_str());
    for status in ["paused", "enabled"] {
        let r = r2
            .call(
                "POST",
                "/ssf/status",
                &token,
                Some(json!({"stream_id": id, "status": status})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let seen = on(&r1, format!("/ssf/status?stream_id={id}")).await;
        assert_eq!(seen.json()["status"], status, "replica 1 sees {status}");
    }
    let r = r2
        .call(
            "DELETE",
            &format!("/ssf/streams?stream_id={id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        on(&r1, format!("/ssf/streams?stream_id={id}")).await.status,
        404,
        "deleted for replica 1 too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_under_load_loses_no_acknowledged_event() {
    let key = es256();
    let (_dir, r1, r2) = pair(&key).await;
    let rx = TestReceiver::start(|_, _| (202, vec![], String::new())).await;
    let (_, token) = r2.receiver("rp").await;
    create_stream(
        &r2,
        &token,
        json!({"method": "urn:ietf:rfc:8935", "endpoint_url": rx.url()}),
    )
    .await;

    // Two senders, one per replica; the one on replica 1 stops at its first failure (the kill).
    const N: usize = 150;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for (s, api) in [(1, r1.api.clone()), (2, r2.api.clone())] {
        let acked = acked.clone();
        let sets: Vec<(String, String)> = (0..N)
            .map(|i| {
                let user = format!("u{s}-{i}");
                (revoke(&key, &user), user)
            })
            .collect();
        senders.spawn(async move {
            for (set, user) in sets {
                match api.push("idp", set).await.status.as_u16() {
                    202 => acked.lock().expect("lock").push(user),
                    _ if s == 1 => return,
                    other => panic!("replica 2 answered {other}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    let d = Deadline::start();
    while acked.lock().expect("lock").len() < N * 2 / 3 {
        d.tick("a third of the load").await;
    }
    r1.process.kill9();
    while senders.join_next().await.is_some() {}
    let acked: HashSet<String> = acked
        .lock()
        .expect("lock")
        .iter()
        .map(|u| format!("{u}@corp.example.test"))
        .collect();
    assert!(acked.len() > N, "both replicas took load: {}", acked.len());

    // Every acknowledged event reaches the receiver, whichever replica pushed it.
    rx.wait_for("every acknowledged event", |got| {
        let users: HashSet<String> = got
            .iter()
            .filter(|r| r.answered < 300)
            .map(|r| user_of(&r.claims))
            .collect();
        acked.is_subset(&users)
    })
    .await;
    // At-least-once: a repeat is the same SET (same jti, same event), never a different one.
    let mut by_jti: HashMap<String, String> = HashMap::new();
    for r in rx.accepted() {
        let jti = r.claims["jti"].as_str().expect("jti").to_owned();
        let user = user_of(&r.claims);
        if let Some(before) = by_jti.insert(jti, user.clone()) {
            assert_eq!(before, user, "one jti, one event");
        }
    }
    // And the surviving replica's log holds every one of them.
    let logged: HashSet<String> = r2
        .events()
        .await
        .iter()
        .filter_map(|e| e["subject"]["email"].as_str().map(str::to_owned))
        .collect();
    assert!(acked.is_subset(&logged), "every 202 is in Kafka");
    rx.stop();
}

/// A tansu broker of the test's own (on a free port, in-memory), to freeze and stop.
struct OwnBroker {
    child: Child,
    addr: String,
}

impl OwnBroker {
    fn start() -> OwnBroker {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu on the PATH (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnBroker { child, addr }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_then_stopped_broker_gets_503_never_a_false_202_and_the_hub_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = es256();
    write_jwks(dir.path(), "idp.jwks.json", &[&key]);
    let mut kafka = OwnBroker::start();
    let hub = replica(
        dir.path(),
        "r1",
        &kafka.addr,
        &prefix(),
        "delivery_timeout_ms = 3000",
    );
    let mut acked = Vec::new();
    let mut sent = 0;
    // One new SET per call; its user goes on `acked` when it gets a 202.
    let mut ingest = async |hub: &Api, acked: &mut Vec<String>| {
        sent += 1;
        let user = format!("f{sent}");
        let r = hub.push("idp", revoke(&key, &user)).await;
        if r.status == 202 {
            acked.push(format!("{user}@corp.example.test"));
        }
        r
    };
    ingest(&hub, &mut acked).await.assert_accepted();

    kafka.signal("-STOP");
    // While the broker is frozen: 503 with Retry-After, never a 202 for what is not written
    // (a 202 for a SET written before the freeze took hold is checked below); /readyz follows.
    let d = Deadline::start();
    let mut refused = 0;
    while refused < 3 || status_of(&hub, "/readyz").await != 503 {
        let r = ingest(&hub, &mut acked).await;
        match r.status.as_u16() {
            202 => {}
            503 => {
                assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
                refused += 1;
            }
            other => panic!("frozen broker: {other} {}", r.body),
        }
        d.tick("refusals and not ready").await;
    }
    assert_eq!(status_of(&hub, "/healthz").await, 200, "still alive");

    // Thawed: ready again, without a restart, and accepting.
    kafka.signal("-CONT");
    let d = Deadline::start();
    while status_of(&hub, "/readyz").await != 200 {
        d.tick("ready again").await;
    }
    loop {
        let r = ingest(&hub, &mut acked).await;
        if r.status == 202 {
            break;
        }
        d.tick("a 202 again").await;
    }
    let logged: HashSet<String> = hub
        .events()
        .await
        .iter()
        .filter_map(|e| e["subject"]["email"].as_str().map(str::to_owned))
        .collect();
    for user in &acked {
        assert!(logged.contains(user), "{user} got a 202 and is in Kafka");
    }

    // Stopped for good: refusals, not ready, still alive.
    let _ = kafka.child.kill();
    let _ = kafka.child.wait();
    let before = acked.len();
    for _ in 0..3 {
        let r = ingest(&hub, &mut acked).await;
        assert_eq!(r.status, 503, "no broker: {}", r.body);
    }
    assert_eq!(acked.len(), before, "no broker, no 202");
    let d = Deadline::start();
    while status_of(&hub, "/readyz").await != 503 {
        d.tick("not ready").await;
    }
    assert_eq!(status_of(&hub, "/healthz").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_with_an_empty_data_directory_catches_up_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = es256();
    write_jwks(dir.path(), "idp.jwks.json", &[&key]);
    let (b, p) = (broker(), prefix());
    let r1 = replica(dir.path(), "r1", &b, &p, "");
    let (_, token) = r1.receiver("rp").await;
    let (_, gateway) = r1.gateway("gw").await;
    let id = create_stream(&r1, &token, json!({"method": "urn:ietf:rfc:8936"})).await;
    r1.push("idp", revoke(&key, "ana")).await.assert_accepted();

    let fresh = replica(dir.path(), "fresh", &b, &p, "");
    assert!(
        !dir.path()
            .join("r1-data")
            .starts_with(dir.path().join("fresh-data")),
        "a data directory of its own"
    );
    let d = Deadline::start();
    let got = loop {
        let got = revocations(&poll(&fresh, &id, &token, json!({"returnImmediately": true})).await);
        if !got.is_empty() {
            break got;
        }
        d.tick("the event to be pollable on the new replica").await;
    };
    assert_eq!(user_of(&decode_claims(&got[0].1)), "ana@corp.example.test");
    let check = json!({
        "subjects": {"user": {"format": "email", "email": "ana@corp.example.test"}},
        "iat": ssf_hub::unix_now() - 100,
    });
    let d = Deadline::start();
    let decision = loop {
        let decision = fresh
            .call("POST", "/revocations/check", &gateway, Some(check.clone()))
            .await
            .json();
        if decision["allow"] == false {
            break decision;
        }
        d.tick("the new replica's decision").await;
    };
    assert_eq!(decision["reason"], "revoked", "{decision}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_keeps_revocations_whose_records_retention_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = es256();
    write_jwks(dir.path(), "idp.jwks.json", &[&key]);
    let (b, p) = (broker(), prefix());
    // Keep one record: the first revocation's record is removed once the second arrives.
    let retention = "\n[log.retention]\nmax_events = 1\nsweep_secs = 1";
    let r1 = replica(dir.path(), "r1", &b, &p, retention);
    let (_, gateway) = r1.gateway("gw").await;
    r1.push("idp", revoke(&key, "ana")).await.assert_accepted();
    r1.push("idp", revoke(&key, "bob")).await.assert_accepted();
    let d = Deadline::start();
    loop {
        let page = r1.call("GET", "/events?since=0", ADMIN, None).await.json();
        if page["earliest"] == 2 {
            break;
        }
        d.tick("retention to remove the first record").await;
    }

    let fresh = replica(dir.path(), "fresh", &b, &p, retention);
    let page = fresh
        .call("GET", "/events?since=0", ADMIN, None)
        .await
        .json();
    assert_eq!(
        page["earliest"], 2,
        "the new replica serves what retention kept: {page}"
    );
    for user in ["ana", "bob"] {
        let check = json!({
            "subjects": {"user": {"format": "email", "email": format!("{user}@corp.example.test")}},
            "iat": ssf_hub::unix_now() - 100,
        });
        let d = Deadline::start();
        loop {
            let decision = fresh
                .call("POST", "/revocations/check", &gateway, Some(check.clone()))
                .await
                .json();
            if decision["allow"] == false {
                break;
            }
            d.tick(&format!("{user} to be revoked on the new replica"))
                .await;
        }
    }
}
