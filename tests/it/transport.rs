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

// ---- websockets, over raw sockets: frames exactly as a hostile client would send them ----

/// Opens a websocket on `path` with `token`: the handshake's status, its head (and body, when
/// refused), and the socket.
async fn ws_open(hub: &TestHub, path: &str, token: &str) -> (u16, String, TcpStream) {
    let mut tcp = connect(hub).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: hub\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         authorization: Bearer {token}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(BOUND, tcp.read(&mut byte))
            .await
            .expect("handshake answered")
            .expect("read");
        assert!(n > 0, "closed during the handshake");
        head.push(byte[0]);
    }
    let mut head = String::from_utf8_lossy(&head).into_owned();
    let status = head[9..12].parse().expect("status");
    if status != 101 {
        // The refusal's body (the connection stays open for keep-alive).
        let len = head
            .to_ascii_lowercase()
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length: ").map(str::to_owned))
            .and_then(|l| l.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        tokio::time::timeout(BOUND, tcp.read_exact(&mut body))
            .await
            .expect("body in time")
            .expect("body");
        head.push_str(&String::from_utf8_lossy(&body));
    }
    (status, head, tcp)
}

/// A client frame (masked, as RFC 6455 §5.3 requires).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// How a websocket ended: the text frames the hub sent, and its close code (`None` when the
/// connection just ended). Pings are read and not answered. Panics if still open after BOUND.
async fn ws_until_closed(tcp: &mut TcpStream) -> (Vec<String>, Option<u16>) {
    let mut texts = Vec::new();
    let read = async {
        loop {
            let mut h = [0u8; 2];
            if tcp.read_exact(&mut h).await.is_err() {
                return None;
            }
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    tcp.read_exact(&mut l).await.ok()?;
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    tcp.read_exact(&mut l).await.ok()?;
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await.ok()?;
            match h[0] & 0x0f {
                0x1 => texts.push(String::from_utf8_lossy(&payload).into_owned()),
                0x8 => return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
                _ => {}
            }
        }
    };
    let code = tokio::time::timeout(BOUND, read)
        .await
        .expect("the hub closed the websocket");
    (texts, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_never_finished_websocket_messages_close_only_that_socket() {
    let hub = TestHub::start(|_, c| {
        c.feed.max_message_bytes = 4096;
        c.feed.max_frame_bytes = 4096;
        c.feed.idle_timeout_secs = 1;
    })
    .await;
    // A fragmented message that grows past the message cap, never finished.
    let (status, _, mut big) = ws_open(&hub, "/revocations/ws", ADMIN).await;
    assert_eq!(status, 101);
    let mut chunk = frame(false, 0x1, &[b'x'; 1000]);
    for _ in 0..10 {
        chunk.extend(frame(false, 0x0, &[b'x'; 1000]));
    }
    // The hub may close before all of it is written.
    let _ = big.write_all(&chunk).await;
    ws_until_closed(&mut big).await;

    // One frame over the frame cap.
    let (_, _, mut wide) = ws_open(&hub, "/revocations/ws", ADMIN).await;
    let _ = wide.write_all(&frame(true, 0x1, &[b'y'; 5000])).await;
    ws_until_closed(&mut wide).await;

    // A message begun and never finished, small enough to fit: the idle timeout ends it (the
    // client answers no ping, and a fragment is not a message).
    let (_, _, mut stalled) = ws_open(&hub, "/revocations/ws", ADMIN).await;
    stalled
        .write_all(&frame(false, 0x1, b"{\"never\":"))
        .await
        .expect("write");
    let (_, code) = ws_until_closed(&mut stalled).await;
    assert_eq!(code, Some(1001), "closed as idle");

    // The hub keeps serving, websockets included.
    assert_eq!(healthz(&hub).await, Some(200));
    let (status, _, _ok) = ws_open(&hub, "/revocations/ws", ADMIN).await;
    assert_eq!(status, 101);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_capped_per_credential_and_in_total() {
    let hub = TestHub::start(|_, c| {
        c.feed.max_sockets_per_credential = 2;
        c.feed.max_sockets = 3;
    })
    .await;
    let (_, token) = hub.gateway("sidecar").await;
    let (_, other) = hub.gateway("other").await;
    let (a, _, first) = ws_open(&hub, "/revocations/ws", &token).await;
    let (b, _, _second) = ws_open(&hub, "/revocations/ws", &token).await;
    assert_eq!((a, b), (101, 101));
    let (status, refused, _) = ws_open(&hub, "/revocations/ws", &token).await;
    assert_eq!(status, 429, "{refused}");
    let lower = refused.to_ascii_lowercase();
    assert!(lower.contains("\r\nretry-after: 5\r\n"), "{refused}");
    assert!(
        refused.contains("\"error\":\"too_many_requests\""),
        "{refused}"
    );
    assert!(
        refused.contains("feed.max_sockets_per_credential"),
        "{refused}"
    );

    // Another credential has its own allowance, up to the hub's total.
    let (status, _, _third) = ws_open(&hub, "/feed", ADMIN).await;
    assert_eq!(status, 101);
    let (status, full, _) = ws_open(&hub, "/revocations/ws", &other).await;
    assert_eq!(status, 503, "{full}");
    assert!(full.contains("feed.max_sockets"), "{full}");

    // A closed socket gives its slot back.
    drop(first);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let (status, _, _again) = ws_open(&hub, "/revocations/ws", &token).await;
        if status == 101 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_receivers_websocket_closes_at_once_and_gets_no_further_delta() {
    let signer = es256();
    let hub = TestHub::with_signer(&signer).await;
    let (id, token) = hub.gateway("sidecar").await;
    let (status, _, mut socket) = ws_open(&hub, "/revocations/ws", &token).await;
    assert_eq!(status, 101);
    // The admin's socket stays open and sees the delta the receiver must not.
    let (_, _, mut admin) = ws_open(&hub, "/revocations/ws", ADMIN).await;

    let r = hub
        .call("DELETE", &format!("/admin/receivers/{id}"), ADMIN, None)
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    // A revocation right after: its delta reaches the admin, never the revoked receiver.
    hub.push("idp", signer.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let (texts, code) = ws_until_closed(&mut socket).await;
    assert_eq!(code, Some(1008), "closed with policy violation");
    assert!(texts.is_empty(), "no delta after the revocation: {texts:?}");

    let mut h = [0u8; 2];
    tokio::time::timeout(BOUND, admin.read_exact(&mut h))
        .await
        .expect("the admin's delta")
        .expect("read");
    assert_eq!(h[0] & 0x0f, 0x1, "a text frame");
    // And the credential is refused from now on.
    let (status, _, _) = ws_open(&hub, "/revocations/ws", &token).await;
    assert_eq!(status, 401);
    hub.stop().await;
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_and_a_readable_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut config = base_config(&data);
    // Generated, so its file is written too.
    config.admin_token = None;
    let running = ssf_hub::app::spawn(config.clone()).await.expect("starts");
    running.stop().await.expect("stops");
    for d in ["", "db", "db/log", "db/state", "keys"] {
        assert_eq!(mode(&data.join(d)), 0o700, "{d:?} is private");
    }
    assert_eq!(mode(&data.join("admin-token")), 0o600);
    let keys: Vec<_> = std::fs::read_dir(data.join("keys"))
        .expect("keys")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    assert!(!keys.is_empty());
    for key in keys {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }

    // A directory others can read is refused, by name, with the fix.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let err = ssf_hub::app::spawn(config)
        .await
        .expect_err("a readable data directory stops the hub");
    let msg = err.to_string();
    assert!(msg.contains(&data.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("chmod 700 {}", data.display())),
        "{msg}"
    );
    assert!(msg.contains("0755"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_on_the_api_listener_and_none_on_their_own() {
    let port = free_port();
    let hub = TestHub::start(|_, c| {
        c.http.metrics_listen = Some(format!("127.0.0.1:{port}").parse().expect("addr"));
    })
    .await;
    let (_, receiver) = hub.receiver("sidecar").await;
    let r = hub.call("GET", "/metrics", "", None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "unauthorized");
    let r = hub.call("GET", "/metrics", &receiver, None).await;
    assert_eq!(r.status, 403, "a receiver credential is not enough");
    let r = hub.call("GET", "/metrics", ADMIN, None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("ssf_hub_"), "{}", r.body);

    // The metrics listener: /metrics without a credential, and nothing else.
    let scrape = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(scrape.status(), 200);
    assert!(scrape.text().await.expect("text").contains("ssf_hub_"));
    let other = reqwest::get(format!("http://127.0.0.1:{port}/events"))
        .await
        .expect("events");
    assert_eq!(other.status(), 404);
    hub.stop().await;

    // A metrics token of its own replaces the admin token there.
    const METRICS: &str = "metrics-scraper-token-0123";
    let hub = TestHub::start(|_, c| {
        c.http.metrics_token = Some(ssf_hub::config::Secret::new(METRICS));
    })
    .await;
    assert_eq!(hub.call("GET", "/metrics", METRICS, None).await.status, 200);
    assert_eq!(hub.call("GET", "/metrics", ADMIN, None).await.status, 403);
    hub.stop().await;
}

#[test]
fn an_http_jwks_uri_is_refused_unless_explicitly_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let load = |extra: &str| {
        let path = dir.path().join("hub.toml");
        std::fs::write(
            &path,
            format!(
                "[[sources]]\nid = \"idp\"\nissuer = \"https://idp.example\"\n\
                 audiences = [\"https://hub.example\"]\n{extra}"
            ),
        )
        .expect("write");
        ssf_hub::config::Config::load_from(
            Some(&path),
            figment::providers::Env::prefixed("SSF_HUB_TEST_NONE_"),
        )
    };
    let err = load("jwks_uri = \"http://idp.example/jwks\"").expect_err("plain http");
    let msg = err.to_string();
    assert!(msg.contains("sources[0].jwks_uri"), "{msg}");
    assert!(msg.contains("allow_insecure_jwks_uri"), "{msg}");
    let err = load("jwks_uri = \"HTTP://idp.example/jwks\"").expect_err("any case");
    assert!(err.to_string().contains("sources[0].jwks_uri"));
    load("jwks_uri = \"https://idp.example/jwks\"").expect("https");
    let allowed = load("jwks_uri = \"http://127.0.0.1:9/jwks\"\nallow_insecure_jwks_uri = true")
        .expect("explicitly allowed");
    assert!(allowed
        .risks()
        .iter()
        .any(|r| r.contains("http:// jwks_uri")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    use serde_json::json;
    use ssf_hub::normalize::Record;
    use ssf_hub::set::{EventKind, Subject};
    use ssf_hub::storage::Append;

    let hub = TestHub::start(|_, c| c.feed.write_timeout_secs = 1).await;
    // ~12 MB of records: more than a blocked socket's buffers hold on both ends.
    let subject = Subject::parse(&json!({"format": "email", "email": "ana@corp.example.test"}))
        .expect("subject");
    for i in 0..3000u64 {
        let jti = uuid::Uuid::new_v4().to_string();
        let record = Record {
            position: 0,
            received_at_ms: ssf_hub::unix_now_ms(),
            source: "idp".into(),
            iss: ISS.into(),
            jti: jti.clone(),
            txn: None,
            iat: 1000,
            event_type: EventKind::SessionRevoked.uri(),
            known: true,
            subject_key: subject.canonical_key(),
            subject: subject.clone(),
            event_timestamp: Some(1000 + i),
            claims: json!({"event_timestamp": 1000 + i, "note": "x".repeat(4000)}),
            set: String::new(),
            authoritative: true,
        };
        hub.running
            .log
            .append(Append {
                key: jti.into_bytes(),
                key_expires_at: ssf_hub::unix_now() + 3600,
                record: serde_json::to_vec(&record).expect("json"),
            })
            .await
            .expect("append");
    }
    // A client with a tiny fixed receive buffer that reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut tcp = socket.connect(hub.running.addr).await.expect("connect");
    tcp.write_all(
        format!(
            "GET /feed?since=0 HTTP/1.1\r\nhost: hub\r\nconnection: upgrade\r\n\
             upgrade: websocket\r\nsec-websocket-version: 13\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nauthorization: Bearer {ADMIN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    // The hub gives up on it: counted, without the client having read a byte.
    let deadline = tokio::time::Instant::now() + BOUND;
    while !hub
        .metrics()
        .await
        .lines()
        .any(|l| l.starts_with("ssf_hub_ws_closed_total") && l.contains("write_timeout"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the blocked socket was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What was queued still arrives, then the connection ends (it would stay open, replaying
    // and then following live, had the hub kept waiting).
    read_to_close(&mut tcp).await;
    hub.stop().await;
}

/// Sends `request` on a fresh connection; the answer's status and JSON `error` member.
async fn exchange(hub: &TestHub, request: &[u8]) -> (u16, String) {
    let mut tcp = connect(hub).await;
    tcp.write_all(request).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .to_ascii_lowercase()
                    .split("\r\n")
                    .find_map(|l| l.strip_prefix("content-length: ").map(str::to_owned))
                    .and_then(|l| l.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return (head.to_owned(), body.to_owned());
                }
            }
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => panic!("closed before a whole answer: {text:?}"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let (head, body) = tokio::time::timeout(BOUND, answer).await.expect("answered");
    let status = head[9..12].parse().expect("status");
    let error = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, error)
}

/// The hostile-input rows of this area: each request, raw, and the exact status and error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_transport_requests_get_their_exact_status_and_error() {
    let signer = es256();
    let hub = TestHub::start(|dir, c| {
        let mut s = source("idp");
        s.jwks_file = Some(write_jwks(dir, "idp.jwks.json", &[&signer]));
        c.sources = vec![s];
        c.http.body_read_timeout_ms = 500;
    })
    .await;
    let (_, receiver) = hub.receiver("sidecar").await;
    let upgrade = "connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
                   sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let rows: Vec<(&str, String, u16, &str)> = vec![
        (
            "metrics without a credential",
            "GET /metrics HTTP/1.1\r\nhost: hub\r\n\r\n".into(),
            401,
            "unauthorized",
        ),
        (
            "metrics with a wrong token",
            "GET /metrics HTTP/1.1\r\nhost: hub\r\nauthorization: Bearer not-the-token\r\n\r\n"
                .into(),
            403,
            "forbidden",
        ),
        (
            "metrics with a receiver credential",
            format!("GET /metrics HTTP/1.1\r\nhost: hub\r\nauthorization: Bearer {receiver}\r\n\r\n"),
            403,
            "forbidden",
        ),
        (
            "an ingest body that never arrives whole",
            "POST /ingest/idp HTTP/1.1\r\nhost: hub\r\ncontent-type: application/secevent+jwt\r\n\
             content-length: 4000\r\n\r\neyJ"
                .into(),
            408,
            "request_timeout",
        ),
        (
            "a revocation websocket with an unknown credential",
            format!(
                "GET /revocations/ws HTTP/1.1\r\nhost: hub\r\n{upgrade}\
                 authorization: Bearer ssfhub_unknown\r\n\r\n"
            ),
            401,
            "invalid_token",
        ),
        (
            "the event feed with a receiver credential",
            format!(
                "GET /feed HTTP/1.1\r\nhost: hub\r\n{upgrade}authorization: Bearer {receiver}\r\n\r\n"
            ),
            403,
            "forbidden",
        ),
        (
            "a request head far over 32 KiB",
            format!(
                "GET /healthz HTTP/1.1\r\nhost: hub\r\nx-pad: {}\r\n\r\n",
                "a".repeat(100 << 10)
            ),
            431,
            "",
        ),
    ];
    for (what, request, status, error) in rows {
        let got = exchange(&hub, request.as_bytes()).await;
        assert_eq!(got, (status, error.to_owned()), "{what}");
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_take_every_connection() {
    let hub = TestHub::start(|_, c| {
        c.http.max_connections = 16;
        c.http.max_connections_per_ip = 2;
        c.http.header_read_timeout_ms = 120_000;
    })
    .await;
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        let addr = hub.running.addr;
        async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind((ip, 0).into()).expect("bind");
            socket.connect(addr).await.expect("connect")
        }
    };
    let _idlers = [from("127.0.0.1").await, from("127.0.0.1").await];
    let mut third = from("127.0.0.1").await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: hub\r\n\r\n")
        .await
        .expect("write");
    let refusal = read_to_close(&mut third).await;
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    // Another address still gets in (all of 127.0.0.0/8 is loopback on Linux).
    let mut other = from("127.0.0.2").await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: hub\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut other).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    hub.stop().await;
}
