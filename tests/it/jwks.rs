//! JWKS caching against a live endpoint: rotation via the forced refresh, and stale keys kept
//! while the issuer is unreachable (digest §11.3).

use crate::support::*;

async fn hub_for(jwks: &JwksServer, min_cache: u64) -> TestHub {
    let url = jwks.url();
    TestHub::start(move |_, c| {
        let mut s = source("idp");
        s.jwks_uri = Some(url);
        // The test JWKS server is plain HTTP on loopback.
        s.allow_insecure_jwks_uri = true;
        c.sources = vec![s];
        c.jwks.min_cache_secs = min_cache;
        c.jwks.max_cache_secs = min_cache.max(1);
        c.jwks.refresh_cooldown_secs = 1;
    })
    .await
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_by_the_forced_refresh() {
    let old = es256();
    let new = es256();
    let jwks = JwksServer::start(&[&old], "max-age=3600").await;
    let hub = hub_for(&jwks, 300).await;
    hub.push("idp", old.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    // The issuer publishes the new key next to the old one and starts signing with it.
    jwks.set_keys(&[&old, &new]);
    hub.push("idp", new.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    hub.push("idp", old.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    assert_eq!(hub.events().await.len(), 3);
    hub.stop().await;
}

#[tokio::test]
async fn cached_keys_survive_an_unreachable_issuer() {
    let key = es256();
    let jwks = JwksServer::start(&[&key], "max-age=1").await;
    let hub = hub_for(&jwks, 1).await;
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    jwks.failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Let the one-second cache lifetime lapse so the next SET triggers a (failing) refresh.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let before = jwks.hits();
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    // The refresh runs in the background, after the SET was accepted from the cache.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while jwks.hits() <= before && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(jwks.hits() > before, "the hub did try to refresh");
    assert_eq!(hub.events().await.len(), 2);
    hub.stop().await;
}

#[tokio::test]
async fn an_issuer_never_reached_gets_503_not_a_verdict() {
    let key = es256();
    let jwks = JwksServer::start(&[&key], "max-age=600").await;
    jwks.failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let hub = hub_for(&jwks, 300).await;
    let r = hub
        .push("idp", key.sign(&session_revoked()).expect("sign"))
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "30");
    assert_eq!(r.json()["error"], "keys_unavailable");
    // Once the issuer is back (and the retry cool-down passed), the same SET is accepted.
    jwks.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    hub.stop().await;
}
