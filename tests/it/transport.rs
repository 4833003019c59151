//! The transport under hostile clients, over raw sockets: half-sent requests and idle sockets
//! are closed after the header timeout, the connection over the cap gets a `503` at once and the
//! hub recovers when the idlers go, a trickled body is cut off. No timing assertions: waits are
//! bounded generously and the tests assert on what happened.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Upper bound for anything the hub should do "soon"; far above every configured timeout.
const BOUND: Duration = Duration::from_secs(30);

async fn connect(hub: &TestHub) -> TcpStream {
    TcpStream::connect(hub.running.addr).await.expect("connect")
}

/// Reads until the hub closes the connection (end of file or reset); what arrived before. Panics
/// if the connection is still open after [`BOUND`].
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("the hub closed the connection");
    String::from_utf8_lossy(&got).into_owned()
}

/// A fresh client per call, so no pooled connection of an earlier call holds a slot.
async fn healthz(hub: &TestHub) -> Option<u16> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let r = client
        .get(format!("{}/healthz", hub.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    r.ok().map(|r| r.status().as_u16())
}

/// Waits (bounded) until `/healthz` answers 200.
async fn until_healthy(hub: &TestHub) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while healthz(hub).await != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_and_idle_connections_are_closed_after_the_header_timeout() {
    let hub = TestHub::start(|_, c| {
        c.http.header_read_timeout_ms = 500;
        c.http.max_connections = 4;
    })
    .await;
    // Headers that never end.
    let mut half = connect(&hub).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost: hub\r\nx-slow: ")
        .await
        .expect("write");
    assert_eq!(
        read_to_close(&mut half).await,
        "",
        "closed without an answer"
    );

    // A keep-alive connection idle after one answered request is closed too.
    let mut kept = connect(&hub).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: hub\r\n\r\n")
        .await
        .expect("write");
    let answered = read_to_close(&mut kept).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // Silent sockets filling every slot time out, and the hub serves again.
    let mut idlers = Vec::new();
    for _ in 0..4 {
        idlers.push(connect(&hub).await);
    }
    for idler in &mut idlers {
        assert_eq!(read_to_close(idler).await, "");
    }
    until_healthy(&hub).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_the_cap_gets_503_and_the_hub_recovers_when_idlers_go() {
    let signer = es256();
    let hub = TestHub::start(|dir, c| {
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&signer]));
        c.sources = vec![s];
        c.http.max_connections = 4;
        // Far longer than the test: the idlers hold their slots until they leave.
        c.http.header_read_timeout_ms = 120_000;
    })
    .await;
    let mut idlers = Vec::new();
    for _ in 0..4 {
        idlers.push(connect(&hub).await);
    }
    // Connections are accepted in order, so the idlers hold every slot before this arrives.
    let mut over = connect(&hub).await;
    over.write_all(b"GET /healthz HTTP/1.1\r\nhost: hub\r\n\r\n")
        .await
        .expect("write");
    let refusal = read_to_close(&mut over).await;
    assert!(
        refusal.starts_with("HTTP/1.1 503"),
        "refused at once: {refusal}"
    );
    let lower = refusal.to_ascii_lowercase();
    assert!(lower.contains("\r\nretry-after: 1\r\n"), "{refusal}");
    assert!(lower.contains("\r\nconnection: close\r\n"), "{refusal}");
    assert!(refusal.ends_with(
        r#"{"error":"unavailable","description":"too many open connections; retry shortly"}"#
    ));
    // Ingest is refused the same way, not left hanging.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let set = signer.sign(&session_revoked()).expect("sign");
    let refused = client
        .post(format!("{}/ingest/idp", hub.base))
        .header("content-type", "application/secevent+jwt")
        .body(set.clone())
        .timeout(BOUND)
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");

    drop(idlers);
    until_healthy(&hub).await;
    let accepted = client
        .post(format!("{}/ingest/idp", hub.base))
        .header("content-type", "application/secevent+jwt")
        .body(set)
        .timeout(BOUND)
        .send()
        .await
        .expect("ingest");
    assert_eq!(accepted.status(), 202);
    assert_eq!(hub.events().await.len(), 1);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_with_408() {
    let signer = es256();
    let hub = TestHub::start(|dir, c| {
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&signer]));
        c.sources = vec![s];
        c.http.body_read_timeout_ms = 500;
    })
    .await;
    let mut slow = connect(&hub).await;
    slow.write_all(
        b"POST /ingest/idp HTTP/1.1\r\nhost: hub\r\ncontent-type: application/secevent+jwt\r\n\
          content-length: 4000\r\n\r\neyJ",
    )
    .await
    .expect("write");
    // One more byte now and then, as a slow-loris client does, until the hub answers (or for
    // at most 30 s); the hub must not wait for all of it.
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if slow.write_all(b"a").await.is_err() {
            break;
        }
        let mut peek = [0u8; 1];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), slow.peek(&mut peek)).await
        {
            if n > 0 {
                break;
            }
        }
    }
    let answer = read_to_close(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
    assert!(hub.events().await.is_empty());
    // A whole SET still goes through.
    hub.push("idp", signer.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    hub.stop().await;
}
