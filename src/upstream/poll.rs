//! The RFC 8936 poll client of one upstream poll stream: long-polls for up to
//! `upstream.poll_max_events` SETs, runs each through ingest's verify → normalize path, appends
//! the good ones as one batch (the journal's group commit), and acknowledges only those that
//! are durable (or were already), in the next request. SETs that fail validation are reported
//! in `setErrs` with their RFC 8935 code. A SET whose keys cannot be fetched yet, or whose
//! append failed, is neither acknowledged nor reported, so the transmitter delivers it again.
//! A restart loses at most unsent acknowledgements: the redelivered SETs are duplicates by their
//! `(iss, jti)` key, acknowledged again, and never appended twice.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::manage::{CallError, Client};
use super::reconcile::{Backoff, Failure};
use super::{Link, Upstreams};
use crate::error::Error;
use crate::ingest::Ingest;
use crate::storage::Appended;
use crate::verify::VerifyError;

/// Runs until `stop`, or until the stream is gone (404), which ends it with that failure.
pub(super) async fn run(
    up: Upstreams,
    ingest: Ingest,
    link: Arc<Link>,
    client: Arc<Client>,
    url: String,
    stop: CancellationToken,
) -> Failure {
    let s = up.inner.settings.clone();
    let id = link.config.id.clone();
    let mut backoff = Backoff::new(s.retry_initial_backoff_ms, s.retry_max_backoff_ms);
    let mut acks: Vec<String> = Vec::new();
    let mut errs: Map<String, Value> = Map::new();
    let wait = Duration::from_secs(s.poll_wait_secs + s.request_timeout_secs);
    loop {
        let body = json!({
            "maxEvents": s.poll_max_events,
            "returnImmediately": false,
            "ack": acks,
            "setErrs": errs,
        });
        // Error descriptions are in English (RFC 8936 §2.4 wants the language named).
        let headers: &[(&str, &str)] = if errs.is_empty() {
            &[]
        } else {
            &[("content-language", "en")]
        };
        let answer = tokio::select! {
            _ = stop.cancelled() => {
                if !acks.is_empty() || !errs.is_empty() {
                    // Best effort: hand back what is durable, without waiting for new SETs.
                    let body = json!({"maxEvents": 0, "returnImmediately": true, "ack": acks, "setErrs": errs});
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.call(Method::POST, &url, None, Some(&body), Some(wait), headers),
                    )
                    .await;
                }
                return Failure { kind: "poll", message: "stopped".into(), retry_after: None, refused: false };
            }
            r = client.call(Method::POST, &url, None, Some(&body), Some(wait), headers) => r,
        };
        let doc = match answer {
            Ok((_, doc)) => doc,
            Err(e @ CallError::Status { status: 404, .. }) => {
                return Failure {
                    kind: "stream_gone",
                    message: format!("poll: {e}"),
                    retry_after: None,
                    refused: false,
                }
            }
            Err(e) => {
                metrics::counter!("ssf_hub_upstream_polls_total", "source" => id.clone(), "outcome" => "error").increment(1);
                link.error("poll", &format!("poll: {e}"));
                // The acknowledgements stay for the next request.
                let pause = backoff.step(e.retry_after());
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        metrics::counter!("ssf_hub_upstream_polls_total", "source" => id.clone(), "outcome" => "ok")
            .increment(1);
        backoff.reset();
        // Sent: the transmitter has them.
        acks.clear();
        errs.clear();
        let sets = match doc.get("sets") {
            Some(Value::Object(sets)) => sets.clone(),
            None => Map::new(),
            Some(_) => {
                link.error("poll", "the poll answer's `sets` is not an object");
                tokio::time::sleep(backoff.step(None)).await;
                continue;
            }
        };
        // Every SET of the answer is verified and appended at once: verification uses every
        // core, and the concurrent appends are committed together by the journal.
        let mut work = tokio::task::JoinSet::new();
        for (jti, set) in sets {
            let Some(set) = set.as_str().map(str::to_owned) else {
                errs.insert(
                    jti,
                    json!({"err": "invalid_request", "description": "not a compact SET"}),
                );
                continue;
            };
            let (ingest, id) = (ingest.clone(), id.clone());
            work.spawn(async move {
                let mut event_type = "none";
                let outcome = match ingest.source(&id) {
                    Some(source) => {
                        match ingest.check(source, set.as_bytes(), &mut event_type).await {
                            Ok(Some(checked)) => ingest.append(checked).await.map(Some),
                            Ok(None) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                    None => Err(Error::UnknownSource),
                };
                (jti, event_type, outcome)
            });
        }
        let mut failed = false;
        while let Some(done) = work.join_next().await {
            let Ok((jti, event_type, outcome)) = done else {
                failed = true;
                continue;
            };
            let label = match &outcome {
                Ok(Some(Appended::New(_))) => "accepted",
                Ok(Some(Appended::Duplicate(_))) => "duplicate",
                Ok(None) => "control",
                Err(e) => e.outcome(),
            };
            crate::telemetry::record_ingest(&id, event_type, label);
            ingest.observe(&id, event_type, label);
            match outcome {
                Ok(_) => acks.push(jti),
                // Keys not fetched yet: not the SET's fault; it comes again.
                Err(Error::Verify(VerifyError::KeysUnavailable)) => {}
                // What is wrong with the SET itself: reported with its RFC 8935 code.
                Err(
                    e @ (Error::Verify(_)
                    | Error::Normalize(_)
                    | Error::AccessDenied
                    | Error::InvalidState),
                ) => {
                    tracing::info!(source = %id, outcome = label, reason = %e, "polled SET refused");
                    errs.insert(jti, json!({"err": label, "description": e.to_string()}));
                }
                // The SET may be fine; storing it failed. It comes again.
                Err(e) => {
                    failed = true;
                    tracing::warn!(source = %id, reason = %e, "appending a polled SET failed; it will be delivered again");
                }
            }
        }
        if failed {
            link.error("append", "appending polled SETs failed");
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(backoff.step(None)) => {}
            }
        }
    }
}
