//! Connectors (`POST /connectors/{id}`): each shipped mapping turns a good, signed vendor
//! webhook into the right event, issued by the hub with the connector as source and the raw
//! webhook kept; a bad signature, a replayed delivery, a malformed payload, an oversized body
//! and a stale signed timestamp are refused with their status and append nothing; Okta's
//! verification handshake; a vendor added as a mapping file; status on `GET /admin/connectors`.

use std::path::Path;

use figment::providers::Format as _;

use serde_json::{json, Value};
use ssf_hub::config::{Config, ConnectorConfig, OwnsConfig, Secret};
use ssf_hub::connectors::auth::{hmac, to_hex};

use crate::support::*;

const GH_SECRET: &str = "github-webhook-secret-0123456789";
const OKTA_SECRET: &str = "okta-event-hook-secret-0123456789";
const JAMF_SECRET: &str = "jamf-header-secret-0123456789";
const GENERIC_SECRET: &str = "generic-hmac-secret-0123456789";
const OKTA_ORG: &str = "https://acme.okta.example.test";

fn connector(id: &str, secret: &str) -> ConnectorConfig {
    ConnectorConfig {
        id: id.into(),
        kind: None,
        mapping_file: None,
        mapping: None,
        secret: Secret::new(secret),
        options: serde_json::Map::new(),
        owns: OwnsConfig::default(),
        max_body_bytes: None,
    }
}

/// A generic connector: Slack-style `v0:{timestamp}:{body}` HMAC, base64, mapping inline.
const GENERIC_MAPPING: &str = r#"
description = "in-house scanner"
filter = '''
.body | {type: .event, id: .id, subject: {format: "email", email: .user}, claims: (.claims // {})}
'''
[auth]
scheme = "hmac-sha256"
header = "X-Signature"
prefix = "v0="
encoding = "base64"
timestamp_header = "X-Timestamp"
signed_payload = "v0:{timestamp}:{body}"
max_skew_secs = 300
"#;

/// A mapping as the configuration holds it inline.
fn inline(toml: &str) -> Value {
    serde_json::to_value(
        figment::Figment::from(figment::providers::Toml::string(toml))
            .extract::<Value>()
            .expect("toml"),
    )
    .expect("value")
}

fn configure(_dir: &Path, c: &mut Config) {
    let mut github = connector("github", GH_SECRET);
    github.kind = Some("github-secret-scanning".into());
    github.max_body_bytes = Some(4096);
    let mut okta = connector("okta", OKTA_SECRET);
    okta.kind = Some("okta".into());
    okta.options.insert("issuer".into(), json!(OKTA_ORG));
    let mut jamf = connector("jamf", JAMF_SECRET);
    jamf.kind = Some("jamf-pro".into());
    jamf.options.insert(
        "noncompliant_group".into(),
        json!("Non-compliant computers"),
    );
    // The MDM owns its device ids: it may also mark them compliant again.
    jamf.owns.formats = vec!["opaque".into()];
    let mut generic = connector("scanner", GENERIC_SECRET);
    generic.mapping = Some(inline(GENERIC_MAPPING));
    c.connectors = vec![github, okta, jamf, generic];
}

async fn post(hub: &TestHub, id: &str, body: &[u8], headers: &[(&str, String)]) -> Reply {
    let mut req = hub
        .client
        .post(format!("{}/connectors/{id}", hub.base))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    Reply::from(req.send().await.expect("request")).await
}

fn github_headers(body: &[u8], delivery: &str, event: &str) -> Vec<(&'static str, String)> {
    let mac = hmac(GH_SECRET.as_bytes(), &[body]).expect("hmac");
    vec![
        ("x-hub-signature-256", format!("sha256={}", to_hex(&mac))),
        ("x-github-delivery", delivery.to_owned()),
        ("x-github-event", event.to_owned()),
    ]
}

fn github_alert(action: &str, number: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": action,
        "alert": {
            "number": number,
            "created_at": "2026-11-20T10:00:00Z",
            "updated_at": "2026-11-20T10:05:00Z",
            "html_url": format!("https://github.com/acme/app/security/secret-scanning/{number}"),
            "secret_type": "github_personal_access_token",
            "secret_type_display_name": "GitHub Personal Access Token"
        },
        "repository": {"full_name": "acme/app"},
        "sender": {"login": "octocat"}
    }))
    .expect("json")
}

fn assert_status(r: &Reply, status: u16, what: &str) {
    assert_eq!(r.status.as_u16(), status, "{what}: {}", r.body);
}

#[tokio::test]
async fn github_secret_scanning_alerts_become_credential_compromise_once() {
    let hub = TestHub::start(configure).await;
    let body = github_alert("created", 42);
    let r = post(
        &hub,
        "github",
        &body,
        &github_headers(&body, "d-1", "secret_scanning_alert"),
    )
    .await;
    assert_status(&r, 202, "good webhook");
    assert_eq!(r.json()["appended"], 1);
    let events = hub.events().await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        e["event_type"],
        "https://schemas.openid.net/secevent/risc/event-type/credential-compromise"
    );
    assert_eq!(e["source"], "github");
    assert_eq!(e["iss"], hub.config.issuer.as_str());
    assert_eq!(
        e["subject"],
        json!({"format": "uri", "uri": "https://github.com/acme/app/security/secret-scanning/42"})
    );
    assert_eq!(
        e["claims"]["credential_type"],
        "github_personal_access_token"
    );
    assert_eq!(e["event_timestamp"], 1_795_169_100u64);
    // A scanner denies; it does not own what it reports on.
    assert_eq!(e["authoritative"], false);
    assert_eq!(e["set"], String::from_utf8(body.clone()).expect("utf-8"));

    // The same delivery again (a redelivery, or an attacker replaying it): answered, not
    // appended twice.
    let r = post(
        &hub,
        "github",
        &body,
        &github_headers(&body, "d-1", "secret_scanning_alert"),
    )
    .await;
    assert_status(&r, 200, "replayed delivery");
    assert_eq!(r.json()["duplicates"], 1);
    assert_eq!(
        e["txn"], "d-1",
        "the delivery id, to find it in GitHub's log"
    );
    // GitHub signs the body, not the delivery header: a captured delivery replayed under a
    // fresh id is still the same event.
    let r = post(
        &hub,
        "github",
        &body,
        &github_headers(&body, "d-forged", "secret_scanning_alert"),
    )
    .await;
    assert_status(&r, 200, "replay under a new delivery id");

    // Refusals, none of which appends anything.
    let mut forged = github_headers(&body, "d-2", "secret_scanning_alert");
    forged[0].1 = format!("sha256={}", "0".repeat(64));
    let r = post(&hub, "github", &body, &forged).await;
    assert_status(&r, 403, "bad signature");
    assert_eq!(r.json()["error"], "bad_signature");
    // Signed for one body, sent with another.
    let other = github_alert("created", 43);
    let r = post(
        &hub,
        "github",
        &other,
        &github_headers(&body, "d-3", "secret_scanning_alert"),
    )
    .await;
    assert_status(&r, 403, "signature over another body");
    let mut unsigned = github_headers(&body, "d-4", "secret_scanning_alert");
    unsigned.remove(0);
    assert_status(
        &post(&hub, "github", &body, &unsigned).await,
        401,
        "no signature",
    );
    let bad = br#"{"action": "created"}"#;
    let r = post(
        &hub,
        "github",
        bad,
        &github_headers(bad, "d-5", "secret_scanning_alert"),
    )
    .await;
    assert_status(&r, 400, "malformed payload");
    assert_eq!(r.json()["error"], "invalid_request");
    let bad = b"{not json";
    let r = post(
        &hub,
        "github",
        bad,
        &github_headers(bad, "d-6", "secret_scanning_alert"),
    )
    .await;
    assert_status(&r, 400, "not JSON");
    let mut big = github_alert("created", 44);
    big.truncate(big.len() - 1);
    big.extend_from_slice(format!(r#","padding":"{}"}}"#, "x".repeat(8192)).as_bytes());
    let r = post(
        &hub,
        "github",
        &big,
        &github_headers(&big, "d-7", "secret_scanning_alert"),
    )
    .await;
    assert_status(&r, 413, "oversized body");
    let r = post(
        &hub,
        "nobody",
        &body,
        &github_headers(&body, "d-8", "secret_scanning_alert"),
    )
    .await;
    assert_status(&r, 404, "unknown connector");
    // Deliveries that map to no event: accepted, nothing appended.
    let ping = br#"{"zen": "Keep it logically awesome."}"#;
    let r = post(&hub, "github", ping, &github_headers(ping, "d-9", "ping")).await;
    assert_status(&r, 202, "ping");
    assert_eq!(r.json()["appended"], 0);
    let resolved = github_alert("resolved", 42);
    let r = post(
        &hub,
        "github",
        &resolved,
        &github_headers(&resolved, "d-10", "secret_scanning_alert"),
    )
    .await;
    assert_status(&r, 202, "resolved alert");
    assert_eq!(
        hub.events().await.len(),
        1,
        "nothing appended by any refusal"
    );

    // The fold follows the log: whatever the leaked credential authenticated before the alert
    // no longer stands.
    let (_, token) = hub.gateway("sidecar").await;
    let deltas = wait_for_fold(&hub, &token, 1).await;
    assert_eq!(deltas.len(), 1, "{deltas:?}");
    assert_eq!(deltas[0]["action"], "revoke_tokens_before");
    assert_eq!(deltas[0]["before"], 1_795_169_100u64);

    // Status for operators.
    let r = hub.call("GET", "/admin/connectors", ADMIN, None).await;
    assert_status(&r, 200, "admin status");
    let status = r.json();
    let gh = status["connectors"]
        .as_array()
        .expect("connectors")
        .iter()
        .find(|c| c["id"] == "github")
        .cloned()
        .expect("github status");
    assert_eq!(gh["kind"], "github-secret-scanning");
    assert_eq!(gh["events_by_type"]["risc/credential-compromise"], 1);
    assert_eq!(gh["duplicates"], 2);
    assert!(gh["last_event_at"].as_u64().is_some());
    assert_eq!(gh["errors_by_kind"]["bad_signature"], 2);
    assert_eq!(gh["errors_by_kind"]["missing_signature"], 1);
    assert_eq!(gh["errors_by_kind"]["malformed"], 1);
    assert_eq!(gh["errors_by_kind"]["mapping"], 1);
    assert_eq!(gh["errors_by_kind"]["too_large"], 1);
    assert_eq!(
        hub.call("GET", "/admin/connectors", "wrong", None)
            .await
            .status,
        403
    );
    assert_eq!(
        hub.call("GET", "/admin/connectors", "", None).await.status,
        401
    );
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("ssf_hub_connector_events_total{connector=\"github\",event_type=\"risc/credential-compromise\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ssf_hub_connector_last_event_timestamp_seconds{connector=\"github\"}"),
        "{metrics}"
    );
    hub.stop().await;
}

fn okta_batch(events: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventType": "com.okta.event_hook",
        "eventTypeVersion": "1.0",
        "cloudEventsVersion": "0.1",
        "source": "https://acme.okta.example.test/api/v1/eventHooks/who1",
        "eventId": "b5a188b9-5ece-4636-b041-482ffda96311",
        "eventTime": "2026-11-20T10:00:00.000Z",
        "contentType": "application/json",
        "data": {"events": events}
    }))
    .expect("json")
}

fn okta_event(uuid: &str, event_type: &str, actor: &str, target: Option<&str>) -> Value {
    let user = |id: &str| json!({"id": id, "type": "User", "alternateId": format!("{id}@acme.example.test")});
    json!({
        "uuid": uuid,
        "published": "2026-11-20T10:00:00.123Z",
        "eventType": event_type,
        "actor": user(actor),
        "target": target.map(|t| vec![user(t)]).unwrap_or_default(),
        "outcome": {"result": "SUCCESS"}
    })
}

/// Waits (bounded) until the revocation fold has reached `position`; returns its deltas.
async fn wait_for_fold(hub: &TestHub, token: &str, position: u64) -> Vec<Value> {
    for _ in 0..500 {
        let page = hub
            .call("GET", "/revocations?since=0", token, None)
            .await
            .json();
        if page["position"].as_u64() >= Some(position) {
            return page["deltas"].as_array().cloned().unwrap_or_default();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the fold did not reach position {position}");
}

#[tokio::test]
async fn okta_event_hooks_verify_once_and_map_sessions_credentials_and_lifecycle() {
    let hub = TestHub::start(configure).await;
    // The one-time verification handshake, authenticated like every delivery.
    let handshake = |auth: Option<&'static str>| {
        let hub = &hub;
        async move {
            let mut req = hub
                .client
                .get(format!("{}/connectors/okta", hub.base))
                .header("x-okta-verification-challenge", "chal-0123");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            Reply::from(req.send().await.expect("request")).await
        }
    };
    let r = handshake(Some(OKTA_SECRET)).await;
    assert_status(&r, 200, "verification");
    assert_eq!(r.json(), json!({"verification": "chal-0123"}));
    assert_status(
        &handshake(None).await,
        401,
        "verification without the secret",
    );
    assert_status(
        &handshake(Some("guess")).await,
        403,
        "verification with a wrong secret",
    );
    let r = hub
        .client
        .get(format!("{}/connectors/github", hub.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 405, "github has no handshake");

    let batch = okta_batch(json!([
        okta_event("e-1", "user.session.end", "00u1", None),
        okta_event("e-2", "user.account.update_password", "00u1", Some("00u1")),
        okta_event("e-3", "user.lifecycle.suspend", "00uadmin", Some("00u2")),
        okta_event("e-4", "user.authentication.sso", "00u1", None),
    ]));
    let auth = vec![("authorization", OKTA_SECRET.to_owned())];
    let r = post(&hub, "okta", &batch, &auth).await;
    assert_status(&r, 202, "event hook");
    assert_eq!(r.json()["appended"], 3);
    let events = hub.events().await;
    let types: Vec<_> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
            "https://schemas.openid.net/secevent/caep/event-type/credential-change",
            "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
        ]
    );
    assert_eq!(
        events[0]["subject"],
        json!({"format": "iss_sub", "iss": OKTA_ORG, "sub": "00u1"})
    );
    assert_eq!(events[0]["claims"]["initiating_entity"], "user");
    assert_eq!(events[0]["event_timestamp"], 1_795_168_800u64);
    assert_eq!(events[1]["claims"]["credential_type"], "password");
    assert_eq!(events[2]["subject"]["sub"], "00u2");
    assert_eq!(events[2]["claims"]["initiating_entity"], "admin");
    assert!(events
        .iter()
        .all(|e| e["source"] == "okta" && e["iss"] == hub.config.issuer.as_str()));

    // The revocation fold follows the log: u1's earlier tokens are revoked, u2 is disabled.
    let (_, token) = hub.gateway("sidecar").await;
    wait_for_fold(&hub, &token, 3).await;
    let check = |body: Value| {
        let (hub, token) = (&hub, &token);
        async move {
            hub.call("POST", "/revocations/check", token, Some(body))
                .await
                .json()
        }
    };
    let d = check(json!({"iss": OKTA_ORG, "sub": "00u1", "iat": 1_795_168_700u64})).await;
    assert_eq!(d["allow"], false, "{d}");
    let d = check(json!({"iss": OKTA_ORG, "sub": "00u2", "iat": 1_795_168_900u64})).await;
    assert_eq!(
        (d["allow"].clone(), d["reason"].clone()),
        (json!(false), json!("account_disabled")),
        "{d}"
    );

    // Okta retries the same batch: nothing appended twice.
    let r = post(&hub, "okta", &batch, &auth).await;
    assert_status(&r, 200, "redelivered batch");
    assert_eq!(r.json()["duplicates"], 3);
    // Wrong secret, missing secret, malformed batch: refused, nothing appended.
    let r = post(
        &hub,
        "okta",
        &batch,
        &[("authorization", "nope".to_owned())],
    )
    .await;
    assert_status(&r, 403, "wrong secret");
    assert_status(&post(&hub, "okta", &batch, &[]).await, 401, "no secret");
    let r = post(&hub, "okta", br#"{"data": {}}"#, &auth).await;
    assert_status(&r, 400, "no events array");
    let no_uuid = okta_batch(
        json!([{"eventType": "user.session.end", "actor": {"id": "00u9", "type": "User"}, "published": "2026-11-20T10:00:00Z"}]),
    );
    assert_status(
        &post(&hub, "okta", &no_uuid, &auth).await,
        400,
        "event without uuid",
    );
    assert_eq!(hub.events().await.len(), 3);
    hub.stop().await;
}

fn jamf_change(group: &str, added: &[u64], removed: &[u64], ts: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event": {
            "computer": true,
            "groupAddedDevices": [],
            "groupAddedDevicesIds": added,
            "groupRemovedDevices": [],
            "groupRemovedDevicesIds": removed,
            "jssid": 5,
            "name": group,
            "smartGroup": true
        },
        "webhook": {
            "eventTimestamp": ts,
            "id": 3,
            "name": "ssf-hub compliance",
            "webhookEvent": "SmartGroupComputerMembershipChange"
        }
    }))
    .expect("json")
}

#[tokio::test]
async fn jamf_smart_group_changes_become_device_compliance_changes() {
    let hub = TestHub::start(configure).await;
    let auth = vec![("authorization", format!("Bearer {JAMF_SECRET}"))];
    let body = jamf_change("Non-compliant computers", &[7], &[8], 1_795_168_800_123);
    let r = post(&hub, "jamf", &body, &auth).await;
    assert_status(&r, 202, "membership change");
    assert_eq!(r.json()["appended"], 2);
    let events = hub.events().await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0]["event_type"],
        "https://schemas.openid.net/secevent/caep/event-type/device-compliance-change"
    );
    assert_eq!(
        events[0]["subject"],
        json!({"format": "opaque", "id": "jamf:computer:7"})
    );
    assert_eq!(events[0]["claims"]["current_status"], "not-compliant");
    assert_eq!(events[1]["subject"]["id"], "jamf:computer:8");
    assert_eq!(events[1]["claims"]["current_status"], "compliant");
    assert_eq!(events[0]["event_timestamp"], 1_795_168_800u64);
    assert_eq!(events[0]["authoritative"], true, "owns.formats = [opaque]");
    let (_, token) = hub.gateway("sidecar").await;
    let deltas = wait_for_fold(&hub, &token, 2).await;
    assert_eq!(deltas[0]["action"], "restrict_device", "{deltas:?}");
    // Device 7 leaves the group later: the MDM owns its device ids, so this restores it.
    let back = jamf_change("Non-compliant computers", &[], &[7], 1_795_168_900_000);
    assert_status(
        &post(&hub, "jamf", &back, &auth).await,
        202,
        "compliant again",
    );
    let deltas = wait_for_fold(&hub, &token, 3).await;
    assert_eq!(
        deltas.last().map(|d| d["action"].clone()),
        Some(json!("unrestrict_device")),
        "{deltas:?}"
    );

    // The same notification again; another group; wrong credential: nothing appended.
    assert_status(
        &post(&hub, "jamf", &body, &auth).await,
        200,
        "resent notification",
    );
    let other = jamf_change("Macs in Berlin", &[9], &[], 1_795_168_900_000);
    let r = post(&hub, "jamf", &other, &auth).await;
    assert_status(&r, 202, "another group");
    assert_eq!(r.json()["appended"], 0);
    let r = post(
        &hub,
        "jamf",
        &body,
        &[("authorization", format!("Bearer {GH_SECRET}"))],
    )
    .await;
    assert_status(&r, 403, "wrong bearer");
    let r = post(&hub, "jamf", br#"{"event": {}}"#, &auth).await;
    assert_status(&r, 400, "no webhook member");
    assert_eq!(hub.events().await.len(), 3);
    hub.stop().await;
}

fn generic_headers(body: &[u8], ts: u64) -> Vec<(&'static str, String)> {
    use base64::Engine;
    let mac = hmac(
        GENERIC_SECRET.as_bytes(),
        &[format!("v0:{ts}:").as_bytes(), body],
    )
    .expect("hmac");
    vec![
        ("x-timestamp", ts.to_string()),
        (
            "x-signature",
            format!(
                "v0={}",
                base64::engine::general_purpose::STANDARD.encode(mac)
            ),
        ),
    ]
}

#[tokio::test]
async fn a_generic_connector_is_mapped_by_configuration_and_checks_its_signed_timestamp() {
    let hub = TestHub::start(configure).await;
    let body = serde_json::to_vec(&json!({
        "event": "caep/session-revoked", "id": "s-1", "user": "ana@corp.example.test"
    }))
    .expect("json");
    let now = ssf_hub::unix_now();
    let r = post(&hub, "scanner", &body, &generic_headers(&body, now)).await;
    assert_status(&r, 202, "signed, fresh");
    let events = hub.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["source"], "scanner");
    assert_eq!(events[0]["jti"], "scanner:s-1");
    assert_eq!(
        events[0]["subject"],
        json!({"format": "email", "email": "ana@corp.example.test"})
    );

    // A captured request replayed after the window: its signature is good, its time is not.
    let old = now - 3600;
    let r = post(&hub, "scanner", &body, &generic_headers(&body, old)).await;
    assert_status(&r, 403, "stale timestamp");
    assert_eq!(r.json()["error"], "stale");
    // The timestamp is signed: moving it forward breaks the signature.
    let mut moved = generic_headers(&body, old);
    moved[0].1 = now.to_string();
    assert_status(&post(&hub, "scanner", &body, &moved).await, 403, "re-dated");
    // Within the window, the event id makes it a duplicate, across a restart too: the
    // dedupe key is stored with the record.
    let hub = hub.restart().await;
    assert_status(
        &post(&hub, "scanner", &body, &generic_headers(&body, now)).await,
        200,
        "replay after a restart",
    );
    // A mapping that yields a type the hub does not know, or no subject: 400.
    let bad = br#"{"event": "caep/no-such-event", "id": "s-2", "user": "ana@corp.example.test"}"#;
    assert_status(
        &post(&hub, "scanner", bad, &generic_headers(bad, now)).await,
        400,
        "unknown type",
    );
    let bad = br#"{"event": "caep/session-revoked", "id": "s-3", "user": "not an email"}"#;
    assert_status(
        &post(&hub, "scanner", bad, &generic_headers(bad, now)).await,
        400,
        "bad subject",
    );
    assert_eq!(hub.events().await.len(), 1);
    hub.stop().await;
}

#[tokio::test]
async fn a_new_vendor_is_a_mapping_file_not_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("acme-edr.toml");
    std::fs::write(
        &file,
        r#"
description = "ACME EDR host isolation -> caep/device-compliance-change"
filter = '''
.body.detections[]
| {type: "device-compliance-change", id: .detection_id,
   subject: {format: "opaque", id: ("acme:" + .host_id)},
   claims: {previous_status: "compliant", current_status: "not-compliant", initiating_entity: "system"},
   event_timestamp: .at}
'''
[auth]
scheme = "shared-secret"
header = "X-Acme-Token"
"#,
    )
    .expect("write mapping");
    let hub = TestHub::start(|_, c| {
        let mut acme = connector("acme", "acme-shared-secret-0123456789");
        acme.mapping_file = Some(file.clone());
        c.connectors = vec![acme];
    })
    .await;
    let body = br#"{"detections": [{"detection_id": "det-1", "host_id": "h-9", "at": 1795168800}, {"detection_id": "det-2", "host_id": "h-10", "at": 1795168801}]}"#;
    let r = post(
        &hub,
        "acme",
        body,
        &[("x-acme-token", "acme-shared-secret-0123456789".into())],
    )
    .await;
    assert_status(&r, 202, "vendor from a file");
    let events = hub.events().await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1]["subject"],
        json!({"format": "opaque", "id": "acme:h-10"})
    );
    assert_eq!(events[1]["claims"]["current_status"], "not-compliant");
    // No `owns`: a connector denies but restores nothing by default.
    assert_eq!(events[1]["authoritative"], false);
    let r = hub
        .call("GET", "/admin/connectors", ADMIN, None)
        .await
        .json();
    assert_eq!(r["connectors"][0]["kind"], "file");
    hub.stop().await;
}

#[test]
fn connector_configuration_errors_name_the_key() {
    let cases = [
        (
            "[[connectors]]\nid = \"a\"\nsecret = \"0123456789abcdef\"\n",
            "connectors[0].kind",
        ),
        (
            "[[connectors]]\nid = \"a\"\nkind = \"okta\"\nsecret = \"short\"\n",
            "connectors[0].secret",
        ),
        (
            "[[connectors]]\nid = \"a b\"\nkind = \"okta\"\nsecret = \"0123456789abcdef\"\n",
            "connectors[0].id",
        ),
        (
            "[connector_limits]\nmax_events_per_webhook = 0\n",
            "connector_limits.max_events_per_webhook",
        ),
    ];
    for (toml, key) in cases {
        let err = Config::from_toml(toml).expect_err(toml).to_string();
        assert!(err.contains(key), "{toml}: {err}");
    }
    // Mappings are read and compiled when the hub starts; a bad one stops it, naming the key.
    let refused = |edit: &dyn Fn(&mut ConnectorConfig)| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = base_config(dir.path());
        let mut bad = connector("bad", "0123456789abcdef");
        edit(&mut bad);
        c.connectors = vec![bad];
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(ssf_hub::app::spawn(c))
            .expect_err("refused")
            .to_string()
    };
    let filter = "filter = \".[\"\n[auth]\nscheme = \"shared-secret\"\nheader = \"X-T\"\n";
    let err = refused(&|c| c.mapping = Some(inline(filter)));
    assert!(err.contains("connectors[0].mapping.filter"), "{err}");
    let err =
        refused(&|c| c.mapping = Some(inline("filter = \".\"\n[auth]\nscheme = \"rot13\"\n")));
    assert!(err.contains("connectors[0].mapping"), "{err}");
    let err = refused(&|c| {
        c.mapping = Some(inline(
            "filter = \".\"\n[auth]\nscheme = \"shared-secret\"\nheader = \"X Bad\"\n",
        ))
    });
    assert!(err.contains("not a valid HTTP header name"), "{err}");
    let err = refused(&|c| c.kind = Some("nope".into()));
    assert!(err.contains("connectors[0].kind"), "{err}");
    let err = refused(&|c| c.mapping_file = Some("/nonexistent/acme.toml".into()));
    assert!(err.contains("connectors[0].mapping_file"), "{err}");
}
