//! Streams and delivery under hostile or sloppy receivers (issue 9: findings 2, 4, 12, 16, 19):
//! subject churn keeps the state on disk proportional to live data, re-polls return the SETs
//! signed the first time, long polls are capped per receiver and end when the receiver is
//! revoked (with a stream-updated SET), SETs are RS256 by default, and the conformance details
//! of stream management.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const POLL: &str = "urn:ietf:rfc:8936";
const PUSH: &str = "urn:ietf:rfc:8935";
const STREAM_UPDATED: &str = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";
const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";

async fn create_stream(hub: &TestHub, token: &str, body: Value) -> Value {
    let r = hub.call("POST", "/ssf/streams", token, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

async fn poll_stream(hub: &TestHub, token: &str, stream: &Value, body: Value) -> Reply {
    let id = stream["stream_id"].as_str().expect("id");
    hub.call("POST", &format!("/ssf/poll/{id}"), token, Some(body))
        .await
}

fn sets_of(r: &Reply) -> BTreeMap<String, String> {
    r.sets()
}

/// Events of a kind among the SETs, as their claims.
fn events_of(sets: &BTreeMap<String, String>, kind: &str) -> Vec<Value> {
    sets.values()
        .map(|s| decode_claims(s))
        .filter(|c| c["events"].get(kind).is_some())
        .collect()
}

/// Bytes `dir` takes on disk: allocated blocks, not file lengths (the engine's journal files are
/// sparse, 64 MiB long from the start).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

fn subject(email: &str) -> Value {
    json!({"format": "email", "email": email})
}

fn event_about(email: &str) -> serde_json::Map<String, Value> {
    let mut c = session_revoked();
    c.insert("sub_id".into(), subject(email));
    c
}

async fn revoke(hub: &TestHub, receiver_id: &str) {
    let r = hub
        .client
        .delete(format!("{}/admin/receivers/{receiver_id}", hub.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
}

/// Finding 2: every subject add/remove used to rewrite (and fsync) the whole stream, so churn on
/// a stream with many subjects grew the state database by the stream's size per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_churn_keeps_state_on_disk_bounded_and_subjects_survive_a_restart() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_stream(&hub, &token, json!({"events_requested": [SESSION_REVOKED]})).await;
    let id = stream["stream_id"].as_str().expect("id").to_owned();
    // default_subjects ALL: a removed subject is an exclusion the hub stores.
    let pad = "x".repeat(80);
    let change = |path: &'static str, email: String| {
        let (hub, token, id) = (&hub, &token, &id);
        async move {
            let r = hub
                .call(
                    "POST",
                    path,
                    token,
                    Some(json!({"stream_id": id, "subject": subject(&email)})),
                )
                .await;
            assert!(r.status.is_success(), "{path}: {} {}", r.status, r.body);
        }
    };
    const LISTED: usize = 400;
    for i in 0..LISTED {
        change(
            "/ssf/subjects:remove",
            format!("u{i}.{pad}@corp.example.test"),
        )
        .await;
    }
    let before = dir_bytes(&hub.dir.path().join("db/state"));
    // Churn: one subject removed and added back, over and over. Stored whole, each call wrote
    // the ~50 KB stream: 1,600 calls are 80 MB.
    for _ in 0..800 {
        change("/ssf/subjects:remove", "churn@corp.example.test".into()).await;
        change("/ssf/subjects:add", "churn@corp.example.test".into()).await;
    }
    let after = dir_bytes(&hub.dir.path().join("db/state"));
    eprintln!("state on disk: {before} bytes before the churn, {after} after");
    assert!(
        after < 8 << 20,
        "state grew from {before} to {after} bytes for ~50 KB of subjects"
    );

    let hub = hub.restart().await;
    hub.push(
        "idp",
        key.sign(&event_about(&format!("u7.{pad}@corp.example.test")))
            .expect("sign"),
    )
    .await
    .assert_accepted();
    hub.push(
        "idp",
        key.sign(&event_about("churn@corp.example.test"))
            .expect("sign"),
    )
    .await
    .assert_accepted();
    let sets =
        sets_of(&poll_stream(&hub, &token, &stream, json!({"returnImmediately": true})).await);
    let subjects: Vec<Value> = sets
        .values()
        .map(|s| decode_claims(s)["sub_id"].clone())
        .collect();
    assert_eq!(
        subjects,
        vec![subject("churn@corp.example.test")],
        "the excluded subject stays excluded after a restart"
    );
    hub.stop().await;
}

#[tokio::test]
async fn subject_bytes_are_capped_per_receiver_with_a_403_naming_the_limit() {
    let hub = TestHub::start(|_, c| c.delivery.max_subject_bytes_per_receiver = 4096).await;
    let (_, token) = hub.receiver("gw").await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let s = create_stream(&hub, &token, json!({})).await;
        streams.push(s["stream_id"].as_str().expect("id").to_owned());
    }
    let pad = "y".repeat(200);
    let mut refused = None;
    // Alternating streams: the bound is the receiver's, over all its streams.
    for i in 0..40 {
        let r = hub
            .call(
                "POST",
                "/ssf/subjects:remove",
                &token,
                Some(json!({"stream_id": streams[i % 2], "subject": subject(&format!("{i}.{pad}@x.test"))})),
            )
            .await;
        if r.status != 204 {
            refused = Some((i, r));
            break;
        }
    }
    let (i, r) = refused.expect("the cap refuses at some point");
    assert!(
        (10..=20).contains(&i),
        "refused after {i} subjects of ~230 bytes"
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "forbidden");
    let description = r.json()["description"].as_str().expect("text").to_owned();
    assert!(
        description.contains("delivery.max_subject_bytes_per_receiver"),
        "{description}"
    );
    // Taking a subject off frees its bytes: the same call then succeeds.
    let r = hub
        .call(
            "POST",
            "/ssf/subjects:add",
            &token,
            Some(json!({"stream_id": streams[0], "subject": subject(&format!("0.{pad}@x.test"))})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = hub
        .call(
            "POST",
            "/ssf/subjects:remove",
            &token,
            Some(json!({"stream_id": streams[i % 2], "subject": subject(&format!("{i}.{pad}@x.test"))})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    hub.stop().await;
}

/// Finding 4: a re-poll without ack returns the very bytes handed out before (ES256 signatures
/// are randomized, so signing again would differ).
#[tokio::test]
async fn a_repoll_without_ack_returns_byte_identical_sets() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_stream(
        &hub,
        &token,
        json!({"events_requested": [SESSION_REVOKED], "signing_alg": "ES256"}),
    )
    .await;
    let id = stream["stream_id"].as_str().expect("id");
    let r = hub
        .call(
            "POST",
            "/ssf/verify",
            &token,
            Some(json!({"stream_id": id, "state": "s"})),
        )
        .await;
    assert_eq!(r.status, 204);
    for _ in 0..3 {
        hub.push("idp", key.sign(&session_revoked()).expect("sign"))
            .await
            .assert_accepted();
    }
    let first =
        sets_of(&poll_stream(&hub, &token, &stream, json!({"returnImmediately": true})).await);
    assert_eq!(first.len(), 4, "three events and the verification");
    let second =
        sets_of(&poll_stream(&hub, &token, &stream, json!({"returnImmediately": true})).await);
    assert_eq!(first, second, "the same compact JWS, byte for byte");
    // An acknowledged SET is gone; the rest are still the same bytes.
    let acked = first.keys().next().expect("one").clone();
    let third = sets_of(
        &poll_stream(
            &hub,
            &token,
            &stream,
            json!({"returnImmediately": true, "ack": [acked]}),
        )
        .await,
    );
    let mut expected = first.clone();
    expected.remove(&acked);
    assert_eq!(third, expected);
    hub.stop().await;
}

/// Finding 4: long polls are capped per receiver; one more is answered at once with 429 and
/// Retry-After, while another receiver's long poll still waits for its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_capped_per_receiver() {
    let key = es256();
    let hub = std::sync::Arc::new(
        TestHub::start(|dir, c| {
            let mut s = source("idp");
            s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&key]));
            c.sources = vec![s];
            c.delivery.max_long_polls_per_receiver = 2;
            c.delivery.long_poll_timeout_secs = 120;
        })
        .await,
    );
    let (_, a) = hub.receiver("a").await;
    let (_, b) = hub.receiver("b").await;
    // A's streams want nothing that will be sent, so its long polls keep waiting.
    let a_stream = create_stream(&hub, &a, json!({"events_requested": [CREDENTIAL_CHANGE]})).await;
    let b_stream = create_stream(&hub, &b, json!({"events_requested": [SESSION_REVOKED]})).await;
    let spawn_poll = |token: String, stream: Value| {
        let hub = hub.clone();
        tokio::spawn(async move { poll_stream(&hub, &token, &stream, json!({})).await })
    };
    // Long polls of A, one after another, each left waiting, until one is answered at once.
    let mut waiting = Vec::new();
    let refused = loop {
        assert!(waiting.len() <= 2, "a third long poll of A was let wait");
        let mut next = spawn_poll(a.clone(), a_stream.clone());
        match tokio::time::timeout(Duration::from_secs(5), &mut next).await {
            Ok(r) => break r.expect("join"),
            Err(_) => waiting.push(next),
        }
    };
    assert_eq!(waiting.len(), 2, "the first two wait");
    assert_eq!(refused.status, 429, "{}", refused.body);
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    assert_eq!(refused.json()["error"], "too_many_requests");
    // B is not affected: its long poll waits and gets the event.
    let b_poll = spawn_poll(b.clone(), b_stream.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_poll.is_finished(), "B's long poll waits");
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let r = tokio::time::timeout(Duration::from_secs(30), b_poll)
        .await
        .expect("B's long poll ends with the event")
        .expect("join");
    assert_eq!(sets_of(&r).len(), 1);
    for w in &waiting {
        assert!(!w.is_finished(), "A's long polls still wait");
    }
    for w in waiting {
        w.abort();
    }
}

/// Finding 12: revoking a receiver ends its open long polls at once, each carrying the
/// stream-updated SET that announces its stream's disabling (SSF §8.1.2, §8.1.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_receiver_ends_its_long_polls_with_a_stream_updated_set() {
    let hub =
        std::sync::Arc::new(TestHub::start(|_, c| c.delivery.long_poll_timeout_secs = 300).await);
    let (receiver_id, token) = hub.receiver("gw").await;
    let stream = create_stream(&hub, &token, json!({"events_requested": [SESSION_REVOKED]})).await;
    let long_poll = {
        let (hub, token, stream) = (hub.clone(), token.clone(), stream.clone());
        tokio::spawn(async move { poll_stream(&hub, &token, &stream, json!({})).await })
    };
    // Give the long poll time to start waiting (it would get 401 if it came after).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    revoke(&hub, &receiver_id).await;
    let r = tokio::time::timeout(Duration::from_secs(30), long_poll)
        .await
        .expect("the long poll ends well before its 300 s timeout")
        .expect("join");
    let updates = events_of(&sets_of(&r), STREAM_UPDATED);
    assert_eq!(updates.len(), 1, "{}", r.body);
    let update = &updates[0];
    assert_eq!(update["events"][STREAM_UPDATED]["status"], "disabled");
    assert_eq!(update["sub_id"]["id"], stream["stream_id"]);
    assert!(update["events"][STREAM_UPDATED]["reason"]
        .as_str()
        .expect("reason")
        .contains("revoked"));
    let r = poll_stream(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn revoking_a_receiver_pushes_a_stream_updated_set_before_disabling() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (receiver_id, token) = hub.receiver("gw").await;
    let rx = TestReceiver::start(|_, _| (202, vec![], String::new())).await;
    let stream = create_stream(
        &hub,
        &token,
        json!({"events_requested": [SESSION_REVOKED], "delivery": {"method": PUSH, "endpoint_url": rx.url()}}),
    )
    .await;
    revoke(&hub, &receiver_id).await;
    // Pushed before the DELETE answered: no waiting needed.
    let got = rx.received();
    assert_eq!(got.len(), 1, "exactly the announcement");
    let update = &got[0].claims;
    assert_eq!(update["events"][STREAM_UPDATED]["status"], "disabled");
    assert_eq!(update["sub_id"]["id"], stream["stream_id"]);
    // And nothing after it.
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 1);
    hub.stop().await;
}

/// Finding 16: a fresh hub signs RS256 with a key of at least 2048 bits, and jwcrypto verifies
/// the SET against the published JWKS.
#[tokio::test]
async fn a_fresh_hub_signs_rs256_with_a_2048_bit_key() {
    use base64::Engine as _;
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_stream(&hub, &token, json!({"events_requested": [SESSION_REVOKED]})).await;
    assert_eq!(stream["signing_alg"], "RS256");
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let sets =
        sets_of(&poll_stream(&hub, &token, &stream, json!({"returnImmediately": true})).await);
    let set = sets.values().next().expect("one SET");
    let jwks = hub.call("GET", "/jwks.json", "", None).await.json();
    let path = hub.dir.path().join("hub.jwks.json");
    std::fs::write(&path, jwks.to_string()).expect("write");
    let out = jwcrypto_verify(&path, set)
        .unwrap_or_else(|e| panic!("jwcrypto refused the hub's SET: {e}"));
    assert_eq!(out["header"]["alg"], "RS256");
    let kid = out["header"]["kid"].as_str().expect("kid");
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("the signing key is published");
    assert_eq!(jwk["kty"], "RSA");
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk["n"].as_str().expect("n"))
        .expect("base64url");
    let bits = n.len() * 8 - n[0].leading_zeros() as usize;
    assert!(bits >= 2048, "{bits}-bit modulus");
    hub.stop().await;
}

/// Finding 19, as a table over real HTTP: each row is a request on a fresh stream of the
/// row's kind and the exact status it gets, with what else must hold.
#[tokio::test]
async fn stream_management_conformance_details() {
    let hub = TestHub::start(|_, _| {}).await;
    let (_, token) = hub.receiver("gw").await;
    let rx = TestReceiver::start(|_, _| (202, vec![], String::new())).await;
    let push = json!({"delivery": {"method": PUSH, "endpoint_url": rx.url()}});
    let many: Vec<String> = (0..100)
        .map(|i| format!("https://example.test/unknown/{i}"))
        .chain([SESSION_REVOKED.to_owned()])
        .collect();
    type Check = fn(&Reply, &Value);
    let rows: Vec<(&str, Value, &str, &str, Value, u16, Check)> = vec![
        (
            "PUT without delivery falls back to poll",
            push.clone(),
            "PUT",
            "/ssf/streams",
            json!({}),
            200,
            |r, s| {
                assert_eq!(r.json()["delivery"]["method"], POLL);
                let url = r.json()["delivery"]["endpoint_url"]
                    .as_str()
                    .expect("url")
                    .to_owned();
                assert!(url.ends_with(&format!(
                    "/ssf/poll/{}",
                    s["stream_id"].as_str().expect("id")
                )));
            },
        ),
        (
            "an echoed aud as a one-element array is the same aud",
            json!({}),
            "PATCH",
            "/ssf/streams",
            json!({"aud": ["https://gw.example.test"], "description": "d"}),
            200,
            |r, _| assert_eq!(r.json()["description"], "d"),
        ),
        (
            "an echoed aud of another value is refused",
            json!({}),
            "PATCH",
            "/ssf/streams",
            json!({"aud": ["https://other.example.test"]}),
            400,
            |r, _| assert_eq!(r.json()["error"], "invalid_request"),
        ),
        (
            "more than 64 events_requested are ignored, not refused",
            json!({}),
            "PATCH",
            "/ssf/streams",
            json!({"events_requested": many}),
            200,
            |r, _| {
                assert_eq!(r.json()["events_requested"], json!([SESSION_REVOKED]));
                assert_eq!(r.json()["events_delivered"], json!([SESSION_REVOKED]));
            },
        ),
        (
            "a second verification inside the interval is 429 with Retry-After",
            json!({}),
            "POST",
            "/ssf/verify",
            json!({}),
            429,
            |r, _| {
                let secs: u64 = r.headers["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("seconds");
                assert!((1..=30).contains(&secs), "{secs}");
            },
        ),
    ];
    for (name, create, method, path, mut body, status, check) in rows {
        let stream = create_stream(&hub, &token, create).await;
        body["stream_id"] = stream["stream_id"].clone();
        if path == "/ssf/verify" {
            // The first one is accepted; the row is about the second.
            let r = hub.call(method, path, &token, Some(body.clone())).await;
            assert_eq!(r.status, 204, "{name}: {}", r.body);
        }
        let r = hub.call(method, path, &token, Some(body)).await;
        assert_eq!(r.status.as_u16(), status, "{name}: {}", r.body);
        check(&r, &stream);
    }
    // Creating with more than 64 entries is accepted the same way.
    let s = create_stream(&hub, &token, json!({"events_requested": many})).await;
    assert_eq!(s["events_delivered"], json!([SESSION_REVOKED]));
    hub.stop().await;
}

/// Finding 19: a verification SET requested on a paused stream is held, not delivered, until
/// the stream is enabled again; on a disabled stream it is dropped.
#[tokio::test]
async fn verification_is_held_while_paused_and_dropped_while_disabled() {
    let hub = TestHub::start(|_, c| c.delivery.min_verification_interval_secs = 0).await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_stream(&hub, &token, json!({})).await;
    let id = stream["stream_id"].as_str().expect("id");
    let set_status = |status: &'static str| {
        hub.call(
            "POST",
            "/ssf/status",
            &token,
            Some(json!({"stream_id": id, "status": status})),
        )
    };
    let verify = |state: &'static str| {
        hub.call(
            "POST",
            "/ssf/verify",
            &token,
            Some(json!({"stream_id": id, "state": state})),
        )
    };
    assert_eq!(set_status("paused").await.status, 200);
    assert_eq!(verify("while-paused").await.status, 204);
    let r = poll_stream(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    assert!(
        sets_of(&r).is_empty(),
        "nothing is transmitted while paused: {}",
        r.body
    );
    assert_eq!(set_status("enabled").await.status, 200);
    let r = poll_stream(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    let held = events_of(&sets_of(&r), VERIFICATION);
    assert_eq!(held.len(), 1, "held, then delivered: {}", r.body);
    assert_eq!(held[0]["events"][VERIFICATION]["state"], "while-paused");
    let jti = held[0]["jti"].clone();
    poll_stream(
        &hub,
        &token,
        &stream,
        json!({"returnImmediately": true, "ack": [jti]}),
    )
    .await;

    assert_eq!(set_status("disabled").await.status, 200);
    assert_eq!(verify("while-disabled").await.status, 204);
    assert_eq!(set_status("enabled").await.status, 200);
    let r = poll_stream(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    assert!(
        events_of(&sets_of(&r), VERIFICATION).is_empty(),
        "{}",
        r.body
    );
    hub.stop().await;
}

/// Finding 19: `inactivity_timeout` is advertised, and a stream nobody polls or manages is
/// paused when it runs out, announced with a stream-updated SET.
#[tokio::test]
async fn an_inactive_stream_is_paused_with_an_announcement() {
    let hub = TestHub::start(|_, c| {
        c.delivery.inactivity_timeout_secs = 4;
        c.delivery.long_poll_timeout_secs = 1;
    })
    .await;
    let (_, token) = hub.receiver("gw").await;
    let stream = create_stream(&hub, &token, json!({})).await;
    assert_eq!(stream["inactivity_timeout"], 4);
    let id = stream["stream_id"].clone();
    // Watched through the admin API, which is not receiver activity.
    let admin_view = || async {
        let all: Value = hub
            .client
            .get(format!("{}/admin/streams", hub.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("streams")
            .json()
            .await
            .expect("json");
        all.as_array()
            .expect("array")
            .iter()
            .find(|s| s["stream_id"] == id)
            .cloned()
            .expect("listed")
    };
    // Polling is activity: each poll restarts the timer, so a stream polled for longer than
    // the timeout stays enabled.
    let polling_until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < polling_until {
        poll_stream(&hub, &token, &stream, json!({"returnImmediately": true})).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(admin_view().await["status"], "enabled");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = admin_view().await;
        if s["status"] == "paused" {
            assert!(s["reason"].as_str().expect("reason").contains("inactivity"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never paused: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = poll_stream(&hub, &token, &stream, json!({"returnImmediately": true})).await;
    let updates = events_of(&sets_of(&r), STREAM_UPDATED);
    assert_eq!(updates.len(), 1, "{}", r.body);
    assert_eq!(updates[0]["events"][STREAM_UPDATED]["status"], "paused");
    hub.stop().await;
}
