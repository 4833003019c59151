//! The README quickstart, end to end with the real binary: `keygen`, `serve`, `send`, `tail`.

use crate::support::process::{run_cli, HubProcess};
use crate::support::{AUD, ISS};

#[test]
fn quickstart_keygen_send_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (ok, out, err) = run_cli(&["keygen", "--alg", "ES256", "--out", "idp"], d);
    assert!(ok, "keygen: {err}");
    assert!(out.contains("idp.key.pem"), "{out}");
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("idp.jwks.json")).expect("jwks"))
            .expect("json");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "the JWKS holds no private material"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("idp.key.pem"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key is owner-only");
    }
    std::fs::write(
        d.join("hub.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\n[[sources]]\nid = \"demo\"\nissuer = \"{ISS}\"\n\
             jwks_file = \"idp.jwks.json\"\naudiences = [\"{AUD}\"]\n"
        ),
    )
    .expect("config");
    // Debug logging on, to prove that even then no SET, subject or token reaches a log line.
    let hub = HubProcess::start_logging(&d.join("hub.toml"), d, "debug");
    let url = format!("{}/ingest/demo", hub.base());
    let (ok, out, err) = run_cli(
        &[
            "send",
            "--url",
            &url,
            "--key",
            "idp.key.pem",
            "--iss",
            ISS,
            "--aud",
            AUD,
            "--event",
            "session-revoked",
            "--email",
            "ana@corp.example.test",
        ],
        d,
    );
    assert!(ok, "send: {out} {err}");
    assert!(out.starts_with("202"), "{out}");
    let (ok, out, err) = run_cli(
        &[
            "send",
            "--url",
            &url,
            "--key",
            "idp.key.pem",
            "--iss",
            "https://wrong.example.test",
            "--aud",
            AUD,
            "--email",
            "ana@corp.example.test",
        ],
        d,
    );
    assert!(!ok, "a refused SET makes send fail");
    assert!(out.contains("invalid_issuer"), "{out} {err}");

    // tail finds the generated admin token in ssf-hub-data/ by default.
    let (ok, out, err) = run_cli(&["tail", "--url", &hub.base()], d);
    assert!(ok, "tail: {err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event_type"], crate::support::SESSION_REVOKED);
    assert_eq!(lines[0]["source"], "demo");
    let (ok, out, _) = run_cli(
        &[
            "tail",
            "--url",
            &hub.base(),
            "--event",
            "risc/account-disabled",
        ],
        d,
    );
    assert!(ok && out.is_empty(), "the event filter applies: {out}");

    // Operators register receivers and rotate keys from the same CLI.
    let base = hub.base();
    let (ok, out, err) = run_cli(
        &[
            "receivers",
            "add",
            "--name",
            "gw",
            "--audience",
            "https://gw.example.test",
            "--url",
            &base,
        ],
        d,
    );
    assert!(ok, "receivers add: {err}");
    let receiver: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let receiver_token = receiver["token"].as_str().expect("token").to_owned();
    let (ok, out, _) = run_cli(&["receivers", "list", "--url", &base], d);
    assert!(ok && out.contains("https://gw.example.test") && !out.contains(&receiver_token));
    let (ok, out, err) = run_cli(&["keys", "rotate", "--alg", "RS256", "--url", &base], d);
    assert!(ok, "keys rotate: {err}");
    assert!(out.contains("\"alg\": \"RS256\""), "{out}");
    let id = receiver["receiver_id"].as_str().expect("id");
    let (ok, _, err) = run_cli(&["receivers", "revoke", id, "--url", &base], d);
    assert!(ok, "receivers revoke: {err}");

    // The session revocation became a revocation delta (the fold runs just behind the log).
    let mut deltas = String::new();
    for _ in 0..100 {
        let (ok, out, err) = run_cli(&["tail", "--revocations", "--url", &base], d);
        assert!(ok, "tail --revocations: {err}");
        deltas = out;
        if !deltas.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let delta: serde_json::Value = serde_json::from_str(deltas.trim()).expect("one JSON line");
    assert_eq!(delta["action"], "revoke_tokens_before");
    assert_eq!(delta["cause"]["source"], "demo");

    // Debug logs were on the whole time; none of them carries a SET, subject or secret.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = hub.log_text();
    assert!(log.contains("SET accepted"), "debug logging was on: {log}");
    assert!(log.contains("SET refused"), "refusals are logged: {log}");
    let admin = std::fs::read_to_string(d.join("ssf-hub-data/admin-token")).expect("token");
    let set = lines[0]["set"].as_str().expect("set");
    for secret in [
        "ana@corp.example.test",
        admin.trim(),
        set,
        &set[..40],
        &receiver_token,
    ] {
        assert!(
            !log.contains(secret),
            "a log line carries a secret or an identifier"
        );
    }
    hub.kill9();
}

#[test]
fn bad_configuration_stops_the_hub_with_the_key_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bad.toml"),
        "[ingest]\nmax_body_bytez = 1\n",
    )
    .expect("write");
    let (ok, _, err) = run_cli(&["serve", "--config", "bad.toml"], dir.path());
    assert!(!ok);
    assert!(err.contains("max_body_bytez"), "{err}");
}
