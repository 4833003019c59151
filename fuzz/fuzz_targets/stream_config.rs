//! Stream configuration bodies (SSF §8.1.1): create (POST), update (PATCH) and replace (PUT),
//! parsed and validated by a real hub (memory storage, loopback HTTP). The first byte picks the
//! method (`C`reate, `P`atch, `R`eplace; anything else creates); the rest is the body. Update
//! and replace bodies that are JSON objects are pointed at a stream the receiver owns, so
//! validation runs past the ownership check. A panic in a handler aborts the process (the
//! libFuzzer panic hook), so it is found even though it happens on a connection task.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ADMIN: &str = "fuzz-admin-token-0123456789";

struct Hub {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    streams: String,
    token: String,
    stream_id: String,
    _running: ssf_hub::app::Running,
    _dir: tempfile::TempDir,
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            "listen = \"127.0.0.1:0\"\nissuer = \"http://127.0.0.1\"\ndata_dir = {:?}\n\
             admin_token = \"{ADMIN}\"\n[log]\nurl = \"memory://\"\n",
            // A directory the hub creates itself, so it is private (0700) as the hub requires.
            dir.path().join("data").display().to_string()
        );
        let config = ssf_hub::config::Config::from_toml(&toml).expect("fuzz hub config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let running = runtime
            .block_on(ssf_hub::app::spawn(config))
            .expect("hub starts");
        let base = format!("http://{}", running.addr);
        let client = reqwest::Client::new();
        let (token, stream_id) = runtime.block_on(async {
            let r: Value = client
                .post(format!("{base}/admin/receivers"))
                .bearer_auth(ADMIN)
                .body(r#"{"name":"fuzz","audience":"https://rx.example.test"}"#)
                .send()
                .await
                .expect("register receiver")
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .expect("receiver JSON");
            let token = r["token"].as_str().expect("token").to_owned();
            let s: Value = client
                .post(format!("{base}/ssf/streams"))
                .bearer_auth(&token)
                .body("{}")
                .send()
                .await
                .expect("create stream")
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .expect("stream JSON");
            (
                token,
                s["stream_id"].as_str().expect("stream_id").to_owned(),
            )
        });
        Hub {
            runtime,
            client,
            streams: format!("{base}/ssf/streams"),
            token,
            stream_id,
            _running: running,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let h = hub();
    let (method, body) = match data.split_first() {
        Some((b'P', rest)) => (reqwest::Method::PATCH, rest.to_vec()),
        Some((b'R', rest)) => (reqwest::Method::PUT, rest.to_vec()),
        Some((b'C', rest)) => (reqwest::Method::POST, rest.to_vec()),
        Some(_) => (reqwest::Method::POST, data.to_vec()),
        None => (reqwest::Method::POST, Vec::new()),
    };
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut obj)) if method != reqwest::Method::POST => {
            obj.insert("stream_id".into(), Value::from(h.stream_id.as_str()));
            Value::Object(obj).to_string().into_bytes()
        }
        _ => body,
    };
    h.runtime.block_on(async {
        let r = h
            .client
            .request(method, &h.streams)
            .bearer_auth(&h.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the hub answers");
        let status = r.status();
        assert!(
            !status.is_server_error(),
            "a stream configuration body must never cause a 5xx: {status}"
        );
        if status == reqwest::StatusCode::CREATED {
            // Stay under the per-receiver stream cap: remove what was created.
            let created: Value = r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .expect("created stream JSON");
            if let Some(id) = created["stream_id"].as_str() {
                let _ = h
                    .client
                    .delete(format!("{}?stream_id={id}", h.streams))
                    .bearer_auth(&h.token)
                    .send()
                    .await;
            }
        }
    });
});
