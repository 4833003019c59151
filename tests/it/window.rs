//! The push window: many SETs of one stream in flight at once, against a receiver that answers
//! slowly and out of order. Every SET arrives; the durable cursor never passes one that is not
//! acknowledged, so a kill -9 skips nothing; a window of 1 is strict log order; a SET refused
//! for good mid-window is dead-lettered alone.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::process::HubProcess;
use crate::support::*;

/// A receiver that takes a few milliseconds per SET (a different delay for each position, so
/// answers overtake each other), answers 503 to the `held` position until `release`, and 400
/// `invalid_request` to the `refused` one. Records what it answered and how many requests it
/// had open at once.
#[derive(Default)]
struct SlowReceiver {
    /// (position, status) in the order answered.
    answered: Mutex<Vec<(u64, u16)>>,
    open: AtomicUsize,
    most_open: AtomicUsize,
    held: AtomicU64,
    release: AtomicBool,
    refused: AtomicU64,
}

impl SlowReceiver {
    async fn start() -> (Arc<SlowReceiver>, String) {
        let rx = Arc::new(SlowReceiver::default());
        let state = rx.clone();
        let app = axum::Router::new().route(
            "/rx",
            axum::routing::post(move |body: String| {
                let rx = state.clone();
                async move { rx.answer(&body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/rx", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (rx, url)
    }

    async fn answer(&self, body: &str) -> (axum::http::StatusCode, String) {
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_open.fetch_max(open, Ordering::SeqCst);
        let claims = decode_claims(body);
        let position = position(&claims);
        // 0–29 ms, scattered over positions.
        let ms = position.unwrap_or(0).wrapping_mul(2_654_435_761) % 30;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let status = match position {
            // Control SETs (no position) and events alike.
            Some(p) if p == self.refused.load(Ordering::SeqCst) => 400,
            Some(p)
                if p == self.held.load(Ordering::SeqCst)
                    && !self.release.load(Ordering::SeqCst) =>
            {
                503
            }
            _ => 202,
        };
        if let Some(p) = position {
            self.answered.lock().expect("lock").push((p, status));
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
        let body = if status == 400 {
            json!({"err": "invalid_request", "description": "refused by the test"}).to_string()
        } else {
            String::new()
        };
        (
            axum::http::StatusCode::from_u16(status).expect("status"),
            body,
        )
    }

    /// Positions answered 202, in answer order (repeats included).
    fn accepted(&self) -> Vec<u64> {
        let answered = self.answered.lock().expect("lock");
        answered
            .iter()
            .filter(|(_, s)| *s == 202)
            .map(|(p, _)| *p)
            .collect()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&BTreeSet<u64>) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got: BTreeSet<u64> = self.accepted().into_iter().collect();
            if done(&got) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; accepted {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The log position of an event SET (its `jti` ends with it); `None` for control SETs.
fn position(claims: &Value) -> Option<u64> {
    let events = claims["events"].as_object()?;
    if !events.contains_key(SESSION_REVOKED) {
        return None;
    }
    claims["jti"].as_str()?.rsplit('.').next()?.parse().ok()
}

async fn push_stream(api: &Api, token: &str, url: &str, extra: Value) -> Value {
    let mut body = json!({
        "events_requested": [SESSION_REVOKED],
        "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": url},
    });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    let r = api.call("POST", "/ssf/streams", token, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

/// The stream's progress as `GET /admin/streams` reports it.
async fn progress(api: &Api, stream_id: &str) -> Value {
    let r = api.call("GET", "/admin/streams", ADMIN, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let all = r.json();
    let stream = all
        .as_array()
        .expect("array")
        .iter()
        .find(|s| s["stream_id"] == stream_id)
        .expect("the stream is listed")
        .clone();
    stream["progress"].clone()
}

async fn ingest(api: &Api, key: &ssf_hub::sign::SetSigner, n: usize) {
    for _ in 0..n {
        api.push("idp", key.sign(&session_revoked()).expect("sign"))
            .await
            .assert_accepted();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_of_16_delivers_everything_never_passes_an_unacknowledged_set_and_survives_kill_9()
{
    const EVENTS: u64 = 60;
    const HELD: u64 = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = es256();
    // The held SET is retried quickly and for long enough to outlast the test.
    let config = crate::support::process::write_config(
        dir.path(),
        &key,
        "allow_private_targets = [\"127.0.0.0/8\"]\npush_max_in_flight = 16\n\
         retry_initial_backoff_ms = 20\nretry_max_backoff_ms = 100\nretry_budget = 100000",
    );
    let (rx, url) = SlowReceiver::start().await;
    rx.held.store(HELD, Ordering::SeqCst);
    let hub = HubProcess::start(&config, dir.path());
    let api = hub.api();
    let (_, token) = api.receiver("gw").await;
    let stream = push_stream(&api, &token, &url, json!({})).await;
    assert_eq!(stream["max_in_flight"], 16, "the hub's window by default");
    let id = stream["stream_id"].as_str().expect("id").to_owned();
    ingest(&api, &key, EVENTS as usize).await;

    // Everything but the held SET gets through while it is retried.
    rx.wait_for("every SET but the held one", |got| {
        (1..=EVENTS).all(|p| p == HELD || got.contains(&p))
    })
    .await;
    let most = rx.most_open.load(Ordering::SeqCst);
    assert!(
        (2..=16).contains(&most),
        "several SETs in flight at once, never more than the window: {most}"
    );
    let accepted = rx.accepted();
    assert!(
        accepted.windows(2).any(|w| w[0] > w[1]),
        "answers overtook each other: {accepted:?}"
    );
    // Wait for the settled SETs to be staged, then look at the stored cursor: it stops
    // right below the held SET, whatever was settled above it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = progress(&api, &id).await;
        assert_eq!(
            p["through"],
            HELD - 1,
            "the cursor never passes the held SET: {p}"
        );
        if p["settled_above"] == EVENTS - HELD {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "progress not staged: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The supervisor makes staged progress durable every 100 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    hub.kill9();

    // After the crash the held SET is delivered, and nothing was skipped.
    rx.release.store(true, Ordering::SeqCst);
    let hub = HubProcess::start(&config, dir.path());
    rx.wait_for("the held SET after the restart", |got| got.contains(&HELD))
        .await;
    let got: BTreeSet<u64> = rx.accepted().into_iter().collect();
    assert_eq!(
        got,
        (1..=EVENTS).collect::<BTreeSet<u64>>(),
        "every position"
    );
    let api = hub.api();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = progress(&api, &id).await;
        if p["through"] == EVENTS && p["behind"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cursor did not catch up: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.kill9();
}

#[tokio::test]
async fn a_window_of_1_delivers_in_strict_log_order() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (rx, url) = SlowReceiver::start().await;
    let (_, token) = hub.receiver("gw").await;
    let stream = push_stream(&hub, &token, &url, json!({"max_in_flight": 1})).await;
    assert_eq!(stream["max_in_flight"], 1);
    ingest(&hub, &key, 30).await;
    rx.wait_for("thirty SETs", |got| got.len() == 30).await;
    let accepted = rx.accepted();
    assert!(
        accepted.windows(2).all(|w| w[0] < w[1]),
        "strict log order, none twice: {accepted:?}"
    );
    assert_eq!(rx.most_open.load(Ordering::SeqCst), 1);
    hub.stop().await;
}

#[tokio::test]
async fn a_set_refused_for_good_mid_window_is_dead_lettered_and_the_rest_delivered() {
    const EVENTS: u64 = 20;
    const REFUSED: u64 = 7;
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (rx, url) = SlowReceiver::start().await;
    rx.refused.store(REFUSED, Ordering::SeqCst);
    let (_, token) = hub.receiver("gw").await;
    let stream = push_stream(&hub, &token, &url, json!({})).await;
    let id = stream["stream_id"].as_str().expect("id").to_owned();
    ingest(&hub, &key, EVENTS as usize).await;
    rx.wait_for("every other SET", |got| {
        (1..=EVENTS).all(|p| p == REFUSED || got.contains(&p))
    })
    .await;
    let r = hub
        .call(
            "GET",
            &format!("/admin/streams/{id}/dead-letters"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let letters = r.json();
    let letters = letters.as_array().expect("array");
    assert_eq!(letters.len(), 1, "only the refused SET: {letters:?}");
    let claims = decode_claims(letters[0]["set"].as_str().expect("set"));
    assert_eq!(position(&claims), Some(REFUSED));
    let refusals = rx
        .answered
        .lock()
        .expect("lock")
        .iter()
        .filter(|(p, _)| *p == REFUSED)
        .count();
    assert_eq!(refusals, 1, "a permanent refusal is not retried");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = progress(&hub, &id).await;
        if p["through"] == EVENTS {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dead-lettered counts as settled: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = hub.call("GET", "/admin/streams", ADMIN, None).await;
    assert!(
        r.body.contains("\"enabled\""),
        "one refusal does not pause: {}",
        r.body
    );
    hub.stop().await;
}

#[tokio::test]
async fn max_in_flight_is_checked_and_can_only_lower_the_hub_window() {
    let hub = TestHub::with_signer(&es256()).await;
    let (_, url) = SlowReceiver::start().await;
    let (_, token) = hub.receiver("gw").await;
    for bad in [json!(0), json!(17), json!(-1), json!("4"), json!(2.5)] {
        let body = json!({
            "events_requested": [SESSION_REVOKED],
            "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": url},
            "max_in_flight": bad,
        });
        let r = hub.call("POST", "/ssf/streams", &token, Some(body)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.body.contains("max_in_flight"), "{}", r.body);
    }
    let stream = push_stream(&hub, &token, &url, json!({"max_in_flight": 4})).await;
    assert_eq!(stream["max_in_flight"], 4);
    let id = stream["stream_id"].as_str().expect("id");
    let r = hub
        .call(
            "PATCH",
            "/ssf/streams",
            &token,
            Some(json!({"stream_id": id, "max_in_flight": null})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["max_in_flight"], 16, "back to the hub's window");
    hub.stop().await;
}

#[tokio::test]
async fn push_max_requests_bounds_requests_over_all_streams() {
    let key = es256();
    let hub = TestHub::start(|dir, c| {
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&key]));
        c.sources = vec![s];
        c.delivery.push_max_requests = 3;
    })
    .await;
    let (rx, url) = SlowReceiver::start().await;
    let (_, token) = hub.receiver("gw").await;
    for _ in 0..4 {
        push_stream(&hub, &token, &url, json!({})).await;
    }
    ingest(&hub, &key, 10).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rx.accepted().len() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "every SET on every stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let most = rx.most_open.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&most),
        "four windows of 16 share three requests: {most} were open at once"
    );
    hub.stop().await;
}
