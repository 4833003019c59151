//! HTTP/2 push delivery against a receiver we did not write: Python hypercorn
//! (`tests/interop/h2_receiver.py`) records the HTTP version and connection of every POST.
//! Over TLS the hub negotiates h2 by ALPN (and keeps HTTP/1.1 with a receiver that does not
//! offer it); on `http://` a stream opts in to h2c with `http2_prior_knowledge`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::process::HubProcess;
use crate::support::*;

const PUSH: &str = "urn:ietf:rfc:8935";

/// The hypercorn receiver process; killed when dropped.
struct Hypercorn {
    child: Child,
    port: u16,
    out: PathBuf,
    tls: bool,
}

impl Hypercorn {
    /// Cleartext (h2c by prior knowledge, HTTP/1.1 otherwise), or TLS with `cert`
    /// (certificate, key) offering `h2` by ALPN unless `no_h2`.
    async fn start(dir: &Path, name: &str, cert: Option<(&Path, &Path)>, no_h2: bool) -> Self {
        let port = free_port();
        let out = dir.join(format!("{name}.jsonl"));
        let script = format!(
            "{}/tests/interop/h2_receiver.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--port", &port.to_string(), "--out"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some((certfile, keyfile)) = cert {
            cmd.arg("--certfile")
                .arg(certfile)
                .arg("--keyfile")
                .arg(keyfile);
        }
        if no_h2 {
            cmd.arg("--no-h2");
        }
        let child = cmd
            .spawn()
            .expect("python3 runs (the test command installs tests/requirements.txt)");
        let rx = Hypercorn {
            child,
            port,
            out,
            tls: cert.is_some(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "hypercorn did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rx
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// Every POST recorded so far (whole lines only).
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The event SETs (not control SETs) received on `path`, once there are `n` distinct ones.
    async fn events_on(&self, path: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got: Vec<Value> = self
                .received()
                .into_iter()
                .filter(|r| r["path"] == path && is_event(r))
                .collect();
            if jtis(&got).len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} events on {path} in 60 s; got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Hypercorn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_event(r: &Value) -> bool {
    decode_claims(r["set"].as_str().unwrap_or_default())["events"]
        .get(SESSION_REVOKED)
        .is_some()
}

fn jtis(got: &[Value]) -> HashSet<String> {
    got.iter()
        .filter_map(|r| {
            decode_claims(r["set"].as_str()?)["jti"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

fn versions(got: &[Value]) -> HashSet<String> {
    got.iter()
        .filter_map(|r| r["http_version"].as_str().map(String::from))
        .collect()
}

fn connections(got: &[Value]) -> HashSet<u64> {
    got.iter()
        .filter_map(|r| r["client_port"].as_u64())
        .collect()
}

fn one<T: std::hash::Hash + Eq + std::fmt::Debug + Clone>(set: &HashSet<T>) -> T {
    assert_eq!(set.len(), 1, "{set:?}");
    set.iter().next().cloned().expect("one")
}

fn push_stream(url: &str, extra: Value) -> Value {
    let mut body = json!({
        "events_requested": [SESSION_REVOKED],
        "delivery": {"method": PUSH, "endpoint_url": url},
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        body[k] = v;
    }
    body
}

async fn create(api: &Api, token: &str, body: Value) -> Value {
    let r = api.call("POST", "/ssf/streams", token, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_opt_in_per_stream() {
    let key = es256();
    let hub = TestHub::with_signer(&key).await;
    let (_, token) = hub.receiver("gw").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rx = Hypercorn::start(dir.path(), "h2c", None, false).await;
    let h2c = create(
        &hub,
        &token,
        push_stream(&rx.url("/h2c"), json!({"http2_prior_knowledge": true})),
    )
    .await;
    assert_eq!(h2c["http2_prior_knowledge"], true, "echoed: {h2c}");
    let plain = create(&hub, &token, push_stream(&rx.url("/plain"), json!({}))).await;
    assert_eq!(plain["http2_prior_knowledge"], false, "echoed: {plain}");

    let n = 12;
    for _ in 0..n {
        hub.push("idp", key.sign(&session_revoked()).expect("sign"))
            .await
            .assert_accepted();
    }
    let over_h2c = rx.events_on("/h2c", n).await;
    let over_h1 = rx.events_on("/plain", n).await;
    assert_eq!(one(&versions(&over_h2c)), "2", "every SET over HTTP/2");
    assert_eq!(one(&versions(&over_h1)), "1.1", "no opt-in, no HTTP/2");
    one(&connections(&over_h2c));
    let metrics = hub.metrics().await;
    for version in ["HTTP/2", "HTTP/1.1"] {
        assert!(
            metrics.contains(&format!(
                "ssf_hub_push_http_version_total{{version=\"{version}\"}}"
            )),
            "{version} counted"
        );
    }

    // Turned off by PATCH: the next SET goes over HTTP/1.1.
    let r = hub
        .call(
            "PATCH",
            "/ssf/streams",
            &token,
            Some(json!({"stream_id": h2c["stream_id"], "http2_prior_knowledge": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["http2_prior_knowledge"], false);
    hub.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let after = rx.events_on("/h2c", n + 1).await;
    let known = jtis(&over_h2c);
    let last: Vec<&Value> = after
        .iter()
        .filter(|r| {
            let jti = decode_claims(r["set"].as_str().unwrap_or_default())["jti"].clone();
            !known.contains(jti.as_str().unwrap_or_default())
        })
        .collect();
    assert!(!last.is_empty());
    assert!(last.iter().all(|r| r["http_version"] == "1.1"), "{last:?}");
    hub.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_for_push_streams_and_a_boolean() {
    let hub = TestHub::start(|_, _| {}).await;
    let (_, token) = hub.receiver("gw").await;
    let poll = json!({"method": "urn:ietf:rfc:8936"});
    let push_url = "http://127.0.0.1:9/rx";
    // (request, method, body) → exact status and error code.
    let bad = [
        (
            "POST",
            json!({"delivery": poll, "http2_prior_knowledge": true}),
        ),
        ("POST", json!({"http2_prior_knowledge": true})),
        (
            "POST",
            push_stream(push_url, json!({"http2_prior_knowledge": "yes"})),
        ),
        (
            "POST",
            push_stream(push_url, json!({"http2_prior_knowledge": 1})),
        ),
    ];
    for (method, body) in bad {
        let r = hub
            .call(method, "/ssf/streams", &token, Some(body.clone()))
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["error"], "invalid_request", "{body}");
    }
    // A poll stream may say `false`, and its configuration does not mention the field.
    let polled = create(
        &hub,
        &token,
        json!({"delivery": poll, "http2_prior_knowledge": false}),
    )
    .await;
    assert!(polled.get("http2_prior_knowledge").is_none(), "{polled}");
    // A push stream with it cannot become a poll stream that keeps it...
    let pushed = create(
        &hub,
        &token,
        push_stream(push_url, json!({"http2_prior_knowledge": true})),
    )
    .await;
    let id = pushed["stream_id"].clone();
    for (method, body) in [
        (
            "PATCH",
            json!({"stream_id": id, "delivery": poll, "http2_prior_knowledge": true}),
        ),
        (
            "PUT",
            json!({"stream_id": id, "delivery": poll, "http2_prior_knowledge": true}),
        ),
        (
            "PATCH",
            json!({"stream_id": polled["stream_id"], "http2_prior_knowledge": true}),
        ),
    ] {
        let r = hub
            .call(method, "/ssf/streams", &token, Some(body.clone()))
            .await;
        assert_eq!(r.status, 400, "{method} {body}: {}", r.body);
        assert_eq!(r.json()["error"], "invalid_request", "{method} {body}");
    }
    // ...but moving it to poll without naming the field drops it.
    let r = hub
        .call(
            "PATCH",
            "/ssf/streams",
            &token,
            Some(json!({"stream_id": id, "delivery": poll})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json().get("http2_prior_knowledge").is_none(),
        "{}",
        r.body
    );
    hub.stop().await;
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files:
/// (CA certificate, server certificate, server key).
fn write_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::{
        AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage,
        SubjectAlternativeName, SubjectKeyIdentifier,
    };
    use openssl::x509::{X509Name, X509};

    fn key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
        PKey::from_ec_key(EcKey::generate(&group).expect("ec key")).expect("pkey")
    }
    fn name(cn: &str) -> X509Name {
        let mut n = X509Name::builder().expect("name");
        n.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
        n.build()
    }
    fn serial() -> openssl::asn1::Asn1Integer {
        let mut bn = BigNum::new().expect("bn");
        bn.rand(64, MsbOption::MAYBE_ZERO, false).expect("rand");
        bn.to_asn1_integer().expect("serial")
    }

    let ca_key = key();
    let mut ca = X509::builder().expect("builder");
    ca.set_version(2).expect("v3");
    ca.set_serial_number(&serial()).expect("serial");
    ca.set_subject_name(&name("ssf-hub test CA"))
        .expect("subject");
    ca.set_issuer_name(&name("ssf-hub test CA"))
        .expect("issuer");
    ca.set_pubkey(&ca_key).expect("pubkey");
    ca.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
        .expect("nb");
    ca.set_not_after(&Asn1Time::days_from_now(2).expect("t"))
        .expect("na");
    ca.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
        .expect("ext");
    ca.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .expect("ku"),
    )
    .expect("ext");
    let skid = SubjectKeyIdentifier::new()
        .build(&ca.x509v3_context(None, None))
        .expect("skid");
    ca.append_extension(skid).expect("ext");
    ca.sign(&ca_key, MessageDigest::sha256()).expect("sign");
    let ca = ca.build();

    let server_key = key();
    let mut leaf = X509::builder().expect("builder");
    leaf.set_version(2).expect("v3");
    leaf.set_serial_number(&serial()).expect("serial");
    leaf.set_subject_name(&name("localhost")).expect("subject");
    leaf.set_issuer_name(ca.subject_name()).expect("issuer");
    leaf.set_pubkey(&server_key).expect("pubkey");
    leaf.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
        .expect("nb");
    leaf.set_not_after(&Asn1Time::days_from_now(2).expect("t"))
        .expect("na");
    leaf.append_extension(BasicConstraints::new().build().expect("bc"))
        .expect("ext");
    leaf.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .build()
            .expect("ku"),
    )
    .expect("ext");
    leaf.append_extension(ExtendedKeyUsage::new().server_auth().build().expect("eku"))
        .expect("ext");
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .dns("localhost")
        .build(&leaf.x509v3_context(Some(&ca), None))
        .expect("san");
    leaf.append_extension(san).expect("ext");
    let akid = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&leaf.x509v3_context(Some(&ca), None))
        .expect("akid");
    leaf.append_extension(akid).expect("ext");
    leaf.sign(&ca_key, MessageDigest::sha256()).expect("sign");
    let leaf = leaf.build();

    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.to_pem().expect("pem")).expect("write");
    std::fs::write(&paths.1, leaf.to_pem().expect("pem")).expect("write");
    std::fs::write(
        &paths.2,
        server_key.private_key_to_pem_pkcs8().expect("pem"),
    )
    .expect("write");
    (paths.0, paths.1, paths.2)
}

/// A hub process config with the `idp` source trusting `key`, loopback receivers allowed.
fn write_hub_config(dir: &Path, key: &ssf_hub::sign::SetSigner) -> PathBuf {
    crate::support::process::write_config(
        dir,
        key,
        "allow_private_targets = [\"127.0.0.0/8\"]\nretry_initial_backoff_ms = 20",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_is_negotiated_by_alpn_over_tls_and_http11_kept_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, cert_key) = write_certs(dir.path());
    let h2 = Hypercorn::start(dir.path(), "alpn-h2", Some((&cert, &cert_key)), false).await;
    let h1 = Hypercorn::start(dir.path(), "alpn-h1", Some((&cert, &cert_key)), true).await;
    let key = es256();
    let config = write_hub_config(dir.path(), &key);
    // The hub trusts the test CA the way openssl programs do: native-tls takes its CA file from
    // `SSL_CERT_FILE` (through openssl-probe; the system certificate directory stays trusted
    // too). Verification stays on: there is no switch to turn it off.
    let ca = ca.to_str().expect("utf-8 path");
    let hub = HubProcess::start_env(&config, dir.path(), &[("SSL_CERT_FILE", ca)]);
    let api = hub.api();
    let (_, token) = api.receiver("gw").await;
    // Even a stream that asks for prior knowledge leaves HTTPS to ALPN.
    create(
        &api,
        &token,
        push_stream(&h1.url("/rx"), json!({"http2_prior_knowledge": true})),
    )
    .await;
    create(&api, &token, push_stream(&h2.url("/rx"), json!({}))).await;
    // One SET first, so the connection is up before a window of SETs could race to open
    // more (ALPN only tells the pool that an origin speaks h2 once a handshake finishes).
    api.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    h2.events_on("/rx", 1).await;
    let n = 12;
    for _ in 1..n {
        api.push("idp", key.sign(&session_revoked()).expect("sign"))
            .await
            .assert_accepted();
    }
    let over_h2 = h2.events_on("/rx", n).await;
    let over_h1 = h1.events_on("/rx", n).await;
    assert_eq!(jtis(&over_h2).len(), n, "every SET arrived");
    assert_eq!(jtis(&over_h1).len(), n, "every SET arrived");
    assert_eq!(one(&versions(&h2.received())), "2", "h2 by ALPN");
    assert_eq!(one(&versions(&h1.received())), "1.1", "no h2 offered");
    one(&connections(&h2.received()));
    let metrics = api.metrics().await;
    assert!(metrics.contains("ssf_hub_push_http_version_total{version=\"HTTP/2\"}"));
    hub.kill9();

    // The same receivers, to a hub that trusts another CA: the handshake fails and nothing
    // is delivered, so it was the test CA (and certificate verification) that let SETs through.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let (other_ca, _, _) = write_certs(&other);
    let config = write_hub_config(&other, &key);
    let other_ca = other_ca.to_str().expect("utf-8 path");
    let hub = HubProcess::start_env(&config, &other, &[("SSL_CERT_FILE", other_ca)]);
    let api = hub.api();
    let (_, token) = api.receiver("gw").await;
    create(&api, &token, push_stream(&h2.url("/untrusted"), json!({}))).await;
    api.push("idp", key.sign(&session_revoked()).expect("sign"))
        .await
        .assert_accepted();
    let deadline = Instant::now() + Duration::from_secs(60);
    while transient_attempts(&api.metrics().await) < 2 {
        assert!(Instant::now() < deadline, "no failed attempt in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        h2.received().iter().all(|r| r["path"] != "/untrusted"),
        "an untrusted receiver got a SET"
    );
    hub.kill9();
}

fn transient_attempts(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ssf_hub_push_attempts_total{outcome=\"transient\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
