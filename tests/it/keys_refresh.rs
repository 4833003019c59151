//! JWKS refresh never holds ingest (finding 5): once a source's cache has expired and its key
//! endpoint hangs, a SET with a cached `kid` is still accepted promptly, and an unknown `kid`
//! gets its `invalid_key` without waiting out the hang.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// Far longer than any bound below: a request that waited for the fetch would miss them all.
const HANG: Duration = Duration::from_secs(120);
/// A generous bound on one request on a loaded machine: an outcome, not a timing measurement.
const PROMPT: Duration = Duration::from_secs(30);

/// A JWKS endpoint that answers normally until `hang` is set, then accepts each request and
/// never answers it (for `HANG`).
struct HangingJwks {
    url: String,
    hang: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

impl HangingJwks {
    async fn start(signer: &ssf_hub::sign::SetSigner) -> HangingJwks {
        let body = json!({ "keys": [signer.public_jwk()] }).to_string();
        let hang = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (h, n) = (hang.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (h, n, body) = (h.clone(), n.clone(), body.clone());
                async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    if h.load(Ordering::SeqCst) {
                        tokio::time::sleep(HANG).await;
                    }
                    ([("cache-control", "max-age=1")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        HangingJwks { url, hang, hits }
    }
}

#[tokio::test]
async fn a_hanging_key_endpoint_does_not_hold_ingest() {
    let key = es256();
    let jwks = HangingJwks::start(&key).await;
    let url = jwks.url.clone();
    let hub = TestHub::start(move |_, c| {
        let mut s = source("idp");
        s.jwks_uri = Some(url);
        c.sources = vec![s];
        c.jwks.min_cache_secs = 1;
        c.jwks.max_cache_secs = 1;
        c.jwks.refresh_cooldown_secs = 1;
        // The fetch itself may take as long as the hang: only the hub's design keeps it off
        // the request path.
        c.jwks.fetch_timeout_secs = 600;
    })
    .await;
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();

    jwks.hang.store(true, Ordering::SeqCst);
    // Let the one-second cache lifetime lapse: the next SET finds its key due for a refresh.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = jwks.hits.load(Ordering::SeqCst);
    for _ in 0..3 {
        let r = tokio::time::timeout(
            PROMPT,
            hub.push("idp", key.sign(&session_revoked()).expect("sign")),
        )
        .await
        .expect("a SET with a cached kid is answered without waiting for the JWKS fetch");
        r.assert_accepted();
    }

    // A kid the hub has never seen: refused without waiting out the hanging fetch.
    let stranger = es256();
    let r = tokio::time::timeout(
        PROMPT,
        hub.push("idp", stranger.sign(&session_revoked()).expect("sign")),
    )
    .await
    .expect("an unknown kid is answered without waiting for the JWKS fetch");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["err"], "invalid_key");

    // The refresh did start, once (single flight), and is still hanging.
    let started = wait_until(PROMPT, || jwks.hits.load(Ordering::SeqCst) > before).await;
    assert!(started, "the expired cache started a background refresh");
    assert_eq!(
        jwks.hits.load(Ordering::SeqCst),
        before + 1,
        "one background refresh, not one per request"
    );
    assert_eq!(hub.events().await.len(), 4);
    hub.stop().await;
}

async fn wait_until(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn keys_never_loaded_from_a_hanging_endpoint_answer_503_promptly() {
    let key = es256();
    let jwks = HangingJwks::start(&key).await;
    // Hanging from the start: the start-up warm-up fetch never completes.
    jwks.hang.store(true, Ordering::SeqCst);
    let url = jwks.url.clone();
    let hub = TestHub::start(move |_, c| {
        let mut s = source("idp");
        s.jwks_uri = Some(url);
        c.sources = vec![s];
        c.jwks.fetch_timeout_secs = 600;
    })
    .await;
    let r = tokio::time::timeout(
        PROMPT,
        hub.push("idp", key.sign(&session_revoked()).expect("sign")),
    )
    .await
    .expect("a source whose keys never loaded is answered without waiting for the fetch");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "keys_unavailable");
    hub.stop().await;
}
