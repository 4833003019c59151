//! Credentials over real HTTP: the case-insensitive Bearer scheme, scopes that keep stream
//! credentials out of the revocation state and gateway credentials out of stream management,
//! credentials bound to subjects, OAuth 2.0 access tokens and DPoP proofs made by an independent
//! JOSE library (Python's jwcrypto) against a real JWKS server, and the Envoy ext_authz device.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};

use crate::support::*;

const DEVICE_COMPLIANCE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/device-compliance-change";

/// Pushes `claims` about `subject` with `event` and waits until the fold has it.
async fn push_about(
    hub: &TestHub,
    key: &ssf_hub::sign::SetSigner,
    event: &str,
    payload: Value,
    subject: Value,
) {
    let mut c = claims(event, payload);
    c["sub_id"] = subject;
    hub.push("idp", key.sign(&c).expect("sign"))
        .await
        .assert_accepted();
}

/// Waits (bounded) until the revocation fold reaches `position`.
async fn folded(hub: &TestHub, position: u64) {
    for _ in 0..500 {
        let r = hub
            .call("GET", "/revocations?since=0&limit=1", ADMIN, None)
            .await;
        if r.json()["position"].as_u64() >= Some(position) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the fold never reached {position}");
}

async fn raw(
    hub: &TestHub,
    method: &str,
    path: &str,
    authorization: &str,
    body: Option<Value>,
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = hub
        .client
        .request(method, format!("{}{path}", hub.base))
        .header("authorization", authorization);
    if let Some(b) = body {
        req = req.json(&b);
    }
    Reply::from(req.send().await.expect("request")).await
}

#[tokio::test]
async fn the_bearer_scheme_name_is_case_insensitive() {
    let hub = TestHub::start(|_, _| {}).await;
    let (_, token) = hub.receiver("gw").await;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let r = raw(
            &hub,
            "GET",
            "/ssf/streams",
            &format!("{scheme} {token}"),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
        let r = raw(
            &hub,
            "GET",
            "/admin/receivers",
            &format!("{scheme} {ADMIN}"),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
    }
    hub.stop().await;
}

/// Asserts an RFC 6750 §3.1 insufficient_scope refusal naming `scope`.
fn assert_insufficient(r: &Reply, scope: &str, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", r.body);
    assert_eq!(r.json()["error"], "insufficient_scope", "{what}");
    let challenge = r.headers["www-authenticate"].to_str().expect("ascii");
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains(&format!("scope=\"{scope}\"")),
        "{what}: {challenge}"
    );
}

// Multi-threaded: the CLI child process is waited for on one worker while the hub serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_revocation_credentials_each_stay_in_their_scope() {
    let hub = TestHub::start(|_, _| {}).await;
    let (stream_receiver, stream) = hub.receiver("gw").await;
    let (_, gateway) = hub.gateway("edge").await;
    let (_, reader) = hub
        .receiver_with("siem", json!({"scopes": ["ssf.read"]}))
        .await;
    let check = json!({"iss": ISS, "sub": "u-1"});
    let ws = |path: &str| format!("ws://{}{path}", hub.running.addr);

    // A stream credential (the default for new receivers) reads no revocation state.
    for (method, path, body) in [
        ("GET", "/revocations?since=0", None),
        ("GET", "/revocations/snapshot", None),
        ("POST", "/revocations/check", Some(check.clone())),
    ] {
        let r = hub.call(method, path, &stream, body).await;
        assert_insufficient(&r, "revocations.read", path);
    }
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws("/revocations/ws").as_str(),
    )
    .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {stream}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403, "websocket upgrade refused")
        }
        other => panic!(
            "a stream credential opened /revocations/ws: {:?}",
            other.map(|_| ())
        ),
    }
    let r = hub
        .client
        .get(format!("{}/revocations/ext-authz", hub.base))
        .header("x-ssf-hub-token", &stream)
        .header("x-jwt-payload", "e30")
        .send()
        .await
        .expect("ext_authz");
    assert_eq!(r.status(), 403, "ext_authz with a stream credential");

    // A gateway credential manages and polls no stream.
    for (method, path) in [
        ("GET", "/ssf/streams"),
        ("POST", "/ssf/streams"),
        ("GET", "/ssf/status?stream_id=x"),
    ] {
        let body = (method == "POST").then(|| json!({"events_requested": [SESSION_REVOKED]}));
        let r = hub.call(method, path, &gateway, body).await;
        let scope = if method == "GET" {
            "ssf.read"
        } else {
            "ssf.manage"
        };
        assert_insufficient(&r, scope, path);
    }
    // ...but reads the revocation views.
    let r = hub
        .call("POST", "/revocations/check", &gateway, Some(check.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A read-only stream credential reads and may not change.
    let r = hub.call("GET", "/ssf/streams", &reader, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = hub
        .call(
            "POST",
            "/ssf/streams",
            &reader,
            Some(json!({"events_requested": [SESSION_REVOKED]})),
        )
        .await;
    assert_insufficient(&r, "ssf.manage", "POST with ssf.read");

    // The operator keeps full access.
    let r = hub
        .call("POST", "/revocations/check", ADMIN, Some(check))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Unknown scopes are refused at registration.
    let r = hub
        .call(
            "POST",
            "/admin/receivers",
            ADMIN,
            Some(json!({"name": "x", "audience": "https://x.test", "scopes": ["everything"]})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // An operator grants the revocation scope to an existing credential (how receivers stored
    // before scopes existed get it back), through the CLI.
    let (ok, _, stderr) = crate::support::process::run_cli(
        &[
            "receivers",
            "update",
            &stream_receiver,
            "--scope",
            "ssf.manage,revocations.read",
            "--url",
            &hub.base,
            "--token",
            ADMIN,
        ],
        hub.dir.path(),
    );
    assert!(ok, "{stderr}");
    let r = hub.call("GET", "/revocations?since=0", &stream, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = hub.call("GET", "/ssf/streams", &stream, None).await;
    assert_eq!(r.status, 200, "ssf.manage covers the reads: {}", r.body);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_credential_sees_only_its_subjects() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let now = ssf_hub::unix_now();
    let ana = json!({"format": "email", "email": "ana@corp.example.test"});
    let bob = json!({"format": "email", "email": "bob@other.example.test"});
    let carl = json!({"format": "iss_sub", "iss": ISS, "sub": "carl"});
    for subject in [&ana, &bob, &carl] {
        push_about(
            &hub,
            &key,
            SESSION_REVOKED,
            json!({"event_timestamp": now}),
            subject.clone(),
        )
        .await;
    }
    folded(&hub, 3).await;
    // Registered through the CLI, as an operator would.
    let (ok, stdout, stderr) = crate::support::process::run_cli(
        &[
            "receivers",
            "add",
            "--name",
            "corp-edge",
            "--audience",
            "https://corp-edge.example.test",
            "--scope",
            "revocations.read",
            "--bind-email-domain",
            "corp.example.test",
            "--url",
            &hub.base,
            "--token",
            ADMIN,
        ],
        hub.dir.path(),
    );
    assert!(ok, "{stderr}");
    let added: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(added["scopes"], json!(["revocations.read"]));
    let bound = added["token"].as_str().expect("token").to_owned();
    let (_, unbound) = hub.gateway("all-edge").await;

    let subjects = |v: &Value, list: &str, member: &str| -> Vec<Value> {
        v[list]
            .as_array()
            .expect("list")
            .iter()
            .map(|d| d[member].clone())
            .collect()
    };
    let deltas = hub
        .call("GET", "/revocations?since=0", &bound, None)
        .await
        .json();
    assert_eq!(subjects(&deltas, "deltas", "subject"), vec![ana.clone()]);
    assert_eq!(
        deltas["next"], 3,
        "the page still moves past what it may not see"
    );
    let all = hub
        .call("GET", "/revocations?since=0", &unbound, None)
        .await
        .json();
    assert_eq!(
        subjects(&all, "deltas", "subject"),
        vec![ana.clone(), bob.clone(), carl.clone()]
    );

    let snapshot = hub
        .call("GET", "/revocations/snapshot", &bound, None)
        .await
        .json();
    let seen: Vec<Value> = snapshot["subjects"]
        .as_array()
        .expect("subjects")
        .iter()
        .map(|s| s["state"]["subject"].clone())
        .collect();
    assert_eq!(seen, vec![ana.clone()]);

    // Decisions: its own subjects are answered, others refused (not "allowed").
    let r = hub
        .call(
            "POST",
            "/revocations/check",
            &bound,
            Some(json!({"subjects": {"user": ana}, "iat": now - 10})),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["reason"].clone()),
        (200, json!("revoked")),
        "{}",
        r.body
    );
    // An opaque session beside a covered user is that user's; alone it is nobody's.
    let r = hub
        .call(
            "POST",
            "/revocations/check",
            &bound,
            Some(json!({"subjects": {"user": ana}, "session_id": "s-1", "iat": now + 10})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = hub
        .call(
            "POST",
            "/revocations/check",
            &bound,
            Some(json!({"session_id": "s-1"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    for other in [
        json!({"subjects": {"user": bob}, "iat": now - 10}),
        json!({"iss": ISS, "sub": "carl", "iat": now - 10}),
    ] {
        let r = hub
            .call("POST", "/revocations/check", &bound, Some(other))
            .await;
        assert_eq!(r.status, 403, "{}", r.body);
    }

    // The websocket replays its subjects only.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/revocations/ws?since=0", hub.running.addr).as_str(),
    )
    .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {bound}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let frame = loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame")
            .expect("open")
            .expect("message");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            break serde_json::from_str::<Value>(&t).expect("json");
        }
    };
    assert_eq!(
        subjects(&frame, "items", "subject"),
        vec![ana.clone()],
        "{frame}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn ext_authz_takes_the_device_from_the_verified_claim_not_a_client_header() {
    use base64::Engine as _;
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.gateway("envoy").await;
    push_about(
        &hub,
        &key,
        DEVICE_COMPLIANCE,
        json!({"previous_status": "compliant", "current_status": "not-compliant",
               "event_timestamp": ssf_hub::unix_now()}),
        json!({"format": "opaque", "id": "dev-bad"}),
    )
    .await;
    folded(&hub, 1).await;
    let ask = |claims: Value, device_header: Option<&'static str>| {
        let (hub, token) = (&hub, &token);
        async move {
            let mut req = hub
                .client
                .get(format!("{}/revocations/ext-authz/orders/1", hub.base))
                .header("x-ssf-hub-token", token)
                .header(
                    "x-jwt-payload",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string()),
                );
            if let Some(d) = device_header {
                req = req.header("x-device-id", d);
            }
            let r = req.send().await.expect("ext_authz");
            let reason = r
                .headers()
                .get("x-ssf-hub-decision")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            (r.status().as_u16(), reason)
        }
    };
    let user = json!({"iss": ISS, "sub": "u-9", "iat": ssf_hub::unix_now()});
    // A client naming the non-compliant device in a header changes nothing...
    assert_eq!(
        ask(user.clone(), Some("dev-bad")).await,
        (200, Some("ok".into()))
    );
    // ...nor can a client hide its device behind a header naming another one.
    let mut with_claim = user.clone();
    with_claim["device_id"] = json!("dev-bad");
    assert_eq!(
        ask(with_claim.clone(), Some("dev-good")).await,
        (403, Some("device_not_compliant".into()))
    );
    assert_eq!(
        ask(with_claim, None).await,
        (403, Some("device_not_compliant".into()))
    );
    hub.stop().await;
}

/// An authorization server made of jwcrypto keys, and a DPoP key, for the OAuth tests.
struct AuthServer {
    dir: tempfile::TempDir,
    jwks: JwksServer,
}

const AS_ISSUER: &str = "https://as.example.test";

impl AuthServer {
    async fn start() -> AuthServer {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, alg) in [
            ("as", "ES256"),
            ("other-as", "ES256"),
            ("dpop", "ES256"),
            ("dpop2", "EdDSA"),
        ] {
            let private = dir.path().join(format!("{name}.jwk.json"));
            let jwks = dir.path().join(format!("{name}.jwks.json"));
            jose_tool(
                &[
                    "keygen",
                    "--alg",
                    alg,
                    "--kid",
                    name,
                    "--private",
                    private.to_str().expect("utf8"),
                    "--jwks",
                    jwks.to_str().expect("utf8"),
                ],
                None,
            )
            .expect("jwcrypto keygen");
        }
        let server = JwksServer::start(&[], "max-age=300").await;
        let published: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("as.jwks.json")).expect("read"),
        )
        .expect("json");
        *server.jwks.write().expect("lock") = published;
        AuthServer { dir, jwks: server }
    }

    fn key(&self, name: &str) -> String {
        self.dir
            .path()
            .join(format!("{name}.jwk.json"))
            .to_str()
            .expect("utf8")
            .to_owned()
    }

    /// An RFC 9068 access token signed by `signer` with `claims` over a valid default set.
    fn token(&self, signer: &str, typ: &str, claims: Value) -> String {
        let now = ssf_hub::unix_now();
        let mut c = json!({"iss": AS_ISSUER, "aud": "http://127.0.0.1:8080", "sub": "client-1",
            "client_id": "client-1", "scope": "ssf.manage ssf.read", "iat": now, "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string()});
        for (k, v) in claims.as_object().cloned().unwrap_or_default() {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(&k);
            } else {
                c[k] = v;
            }
        }
        jose_tool(
            &[
                "sign",
                "--key",
                &self.key(signer),
                "--alg",
                "ES256",
                "--typ",
                typ,
                "--claims",
                "-",
            ],
            Some(&c.to_string()),
        )
        .expect("jwcrypto signs the token")
    }

    fn jkt(&self, key: &str) -> String {
        run_python(
            "dpop_tool.py",
            &["jkt".into(), "--key".into(), self.key(key)],
        )
        .expect("jkt")
    }

    /// A DPoP proof by `key` for `htm` `htu`, bound to `token`.
    fn proof(&self, key: &str, alg: &str, htm: &str, htu: &str, token: &str) -> String {
        let args: Vec<String> = [
            "proof",
            "--key",
            &self.key(key),
            "--alg",
            alg,
            "--htm",
            htm,
            "--htu",
            htu,
            "--token",
            token,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        run_python("dpop_tool.py", &args).expect("proof")
    }
}

async fn oauth_hub(server: &AuthServer) -> TestHub {
    let url = server.jwks.url();
    TestHub::start(move |_, c| {
        c.oauth.issuer = Some(AS_ISSUER.into());
        c.oauth.jwks_uri = Some(url);
    })
    .await
}

async fn dpop_call(
    hub: &TestHub,
    token: &str,
    proofs: &[&str],
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = hub
        .client
        .request(method, format!("{}{path}", hub.base))
        .header("authorization", format!("DPoP {token}"));
    for p in proofs {
        req = req.header("dpop", *p);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    Reply::from(req.send().await.expect("request")).await
}

fn assert_unauthorized(r: &Reply, scheme: &str, error: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    assert_eq!(r.json()["error"], error, "{what}: {}", r.body);
    let challenge = r.headers["www-authenticate"].to_str().expect("ascii");
    assert_eq!(challenge, format!("{scheme} error=\"{error}\""), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_access_tokens_from_the_configured_server_manage_the_clients_streams() {
    let server = AuthServer::start().await;
    let hub = oauth_hub(&server).await;
    let (receiver_id, _) = hub
        .receiver_with("oauth-gw", json!({"oauth_client_id": "client-1"}))
        .await;
    let create = json!({"events_requested": [SESSION_REVOKED]});
    // Discovery says sender-constrained tokens are accepted, beside plain bearer tokens.
    let meta = hub
        .call("GET", "/.well-known/ssf-configuration", "", None)
        .await
        .json();
    assert_eq!(
        meta["authorization_schemes"],
        json!([{"spec_urn": "urn:ietf:rfc:6749"}, {"spec_urn": "urn:ietf:rfc:9449"}])
    );

    let token = server.token("as", "at+jwt", json!({}));
    let r = hub
        .call("POST", "/ssf/streams", &token, Some(create.clone()))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.json()["aud"],
        "https://oauth-gw.example.test",
        "the receiver's audience"
    );
    let stream_id = r.json()["stream_id"].clone();
    // The token owns the receiver's streams, and `application/at+jwt` is the same type.
    let token = server.token("as", "application/at+jwt", json!({}));
    let r = hub.call("GET", "/ssf/streams", &token, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()[0]["stream_id"], stream_id);

    let now = ssf_hub::unix_now();
    for (what, signer, typ, claims) in [
        (
            "wrong audience",
            "as",
            "at+jwt",
            json!({"aud": "https://elsewhere.test"}),
        ),
        (
            "wrong issuer",
            "as",
            "at+jwt",
            json!({"iss": "https://evil.test"}),
        ),
        (
            "expired",
            "as",
            "at+jwt",
            json!({"iat": now - 7200, "exp": now - 3600}),
        ),
        ("not yet valid", "as", "at+jwt", json!({"nbf": now + 3600})),
        ("no exp", "as", "at+jwt", json!({"exp": null})),
        ("an ID token, not an access token", "as", "JWT", json!({})),
        (
            "signed by another server's key",
            "other-as",
            "at+jwt",
            json!({}),
        ),
        (
            "an unregistered client",
            "as",
            "at+jwt",
            json!({"client_id": "client-9"}),
        ),
    ] {
        let t = server.token(signer, typ, claims);
        let r = hub
            .call("POST", "/ssf/streams", &t, Some(create.clone()))
            .await;
        assert_unauthorized(&r, "Bearer", "invalid_token", what);
    }
    // The right token with too little scope.
    let t = server.token("as", "at+jwt", json!({"scope": "ssf.read"}));
    let r = hub
        .call("POST", "/ssf/streams", &t, Some(create.clone()))
        .await;
    assert_insufficient(&r, "ssf.manage", "scope ssf.read");
    let t = server.token("as", "at+jwt", json!({"scope": "revocations.read"}));
    let r = hub.call("GET", "/revocations?since=0", &t, None).await;
    assert_insufficient(
        &r,
        "revocations.read",
        "a scope the receiver was not granted",
    );

    // Revoking the receiver revokes its OAuth access.
    let r = hub
        .call(
            "DELETE",
            &format!("/admin/receivers/{receiver_id}"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let t = server.token("as", "at+jwt", json!({}));
    let r = hub.call("GET", "/ssf/streams", &t, None).await;
    assert_unauthorized(&r, "Bearer", "invalid_token", "revoked receiver");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_bound_tokens_need_a_fresh_matching_proof() {
    let server = AuthServer::start().await;
    let hub = oauth_hub(&server).await;
    hub.receiver_with("dpop-gw", json!({"oauth_client_id": "client-1"}))
        .await;
    let create = json!({"events_requested": [SESSION_REVOKED]});
    let htu = "http://127.0.0.1:8080/ssf/streams";
    let bound = server.token("as", "at+jwt", json!({"cnf": {"jkt": server.jkt("dpop")}}));

    let proof = server.proof("dpop", "ES256", "POST", htu, &bound);
    let r = dpop_call(
        &hub,
        &bound,
        &[&proof],
        "POST",
        "/ssf/streams",
        Some(create.clone()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // The same proof again is a replay.
    let r = dpop_call(
        &hub,
        &bound,
        &[&proof],
        "POST",
        "/ssf/streams",
        Some(create.clone()),
    )
    .await;
    assert_unauthorized(&r, "DPoP", "invalid_dpop_proof", "replayed proof");
    // A query string on htu is ignored, as RFC 9449 says.
    let p = server.proof("dpop", "ES256", "GET", &format!("{htu}?x=1#f"), &bound);
    let r = dpop_call(&hub, &bound, &[&p], "GET", "/ssf/streams", None).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let other = server.token(
        "as",
        "at+jwt",
        json!({"cnf": {"jkt": server.jkt("dpop")}, "jti": "x"}),
    );
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "wrong htm",
            vec![server.proof("dpop", "ES256", "GET", htu, &bound)],
        ),
        (
            "wrong htu",
            vec![server.proof(
                "dpop",
                "ES256",
                "POST",
                "http://127.0.0.1:8080/ssf/status",
                &bound,
            )],
        ),
        (
            "wrong host in htu",
            vec![server.proof(
                "dpop",
                "ES256",
                "POST",
                "http://evil.test:8080/ssf/streams",
                &bound,
            )],
        ),
        (
            "wrong ath",
            vec![server.proof("dpop", "ES256", "POST", htu, &other)],
        ),
        (
            "a key the token is not bound to",
            vec![server.proof("dpop2", "EdDSA", "POST", htu, &bound)],
        ),
        ("missing proof", vec![]),
        (
            "two proofs",
            vec![
                server.proof("dpop", "ES256", "POST", htu, &bound),
                server.proof("dpop", "ES256", "POST", htu, &bound),
            ],
        ),
    ];
    for (what, proofs) in cases {
        let refs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let r = dpop_call(
            &hub,
            &bound,
            &refs,
            "POST",
            "/ssf/streams",
            Some(create.clone()),
        )
        .await;
        assert_unauthorized(&r, "DPoP", "invalid_dpop_proof", what);
    }
    // A stale proof.
    let args: Vec<String> = [
        "proof",
        "--key",
        &server.key("dpop"),
        "--alg",
        "ES256",
        "--htm",
        "POST",
        "--htu",
        htu,
        "--token",
        &bound,
        "--iat",
        &(ssf_hub::unix_now() - 3600).to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let stale = run_python("dpop_tool.py", &args).expect("proof");
    let r = dpop_call(
        &hub,
        &bound,
        &[&stale],
        "POST",
        "/ssf/streams",
        Some(create.clone()),
    )
    .await;
    assert_unauthorized(&r, "DPoP", "invalid_dpop_proof", "stale iat");

    // A bound token presented as a bearer token is refused, and so is an unbound one as DPoP.
    let r = hub
        .call("POST", "/ssf/streams", &bound, Some(create.clone()))
        .await;
    assert_unauthorized(&r, "Bearer", "invalid_token", "bound token as Bearer");
    let unbound = server.token("as", "at+jwt", json!({}));
    let p = server.proof("dpop", "ES256", "POST", htu, &unbound);
    let r = dpop_call(&hub, &unbound, &[&p], "POST", "/ssf/streams", Some(create)).await;
    assert_unauthorized(&r, "DPoP", "invalid_token", "unbound token as DPoP");
    hub.stop().await;
}
