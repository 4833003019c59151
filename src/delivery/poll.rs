//! RFC 8936 poll delivery for one stream: applies `ack` and `setErrs`, then returns pending SETs
//! (control SETs first, then events in log order), long-polling until something is pending or
//! the timeout passes. Woken by the log's head watch, not by a timer.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{pending, record_latency, Cursor};
use crate::app::Hub;
use crate::outbound::{mint_event, position_of};
use crate::set::events::StreamStatus;
use crate::streams::Stream;

/// An RFC 8936 §2.2 request. Wire names are camelCase, unlike SSF's snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollRequest {
    #[serde(default)]
    pub max_events: Option<u32>,
    #[serde(default)]
    pub return_immediately: Option<bool>,
    #[serde(default)]
    pub ack: Vec<String>,
    #[serde(default)]
    pub set_errs: BTreeMap<String, SetErr>,
}

#[derive(Debug, Deserialize)]
pub struct SetErr {
    pub err: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PollResponse {
    pub sets: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more_available: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Registry(#[from] crate::streams::RegistryError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error("signing failed: {0}")]
    Sign(#[from] crate::sign::SignError),
}

/// Most SETs one poll response carries when the receiver sets no `maxEvents`.
pub const DEFAULT_MAX_EVENTS: usize = 100;

/// Serves one poll request for `stream` (already authorized).
pub async fn poll(hub: &Hub, stream: &Stream, req: PollRequest) -> Result<PollResponse, PollError> {
    let cursors = &hub.cursors;
    let limit = req
        .max_events
        .map_or(DEFAULT_MAX_EVENTS, |n| (n as usize).min(1000));
    let timeout = Duration::from_secs(hub.config.delivery.long_poll_timeout_secs);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut head = hub.log.subscribe();
    let mut control = cursors.subscribe_control();
    let mut first = true;
    loop {
        // Mark the watches seen before looking, so an append after the look still wakes us.
        head.borrow_and_update();
        control.borrow_and_update();
        let lock = cursors.lock_for(&stream.stream_id);
        let guard = lock.lock().await;
        let mut cursor = cursors.get(&stream.stream_id)?;
        let before = cursor.clone();
        if first {
            apply_acks(&mut cursor, stream, &req);
            first = false;
        }
        let response = if limit == 0 {
            PollResponse {
                sets: BTreeMap::new(),
                more_available: false,
            }
        } else {
            collect(hub, stream, &mut cursor, limit).await?
        };
        if cursor != before {
            cursors.put(&stream.stream_id, &cursor).await?;
        }
        drop(guard);
        let immediate = req.return_immediately.unwrap_or(false) || limit == 0;
        if !response.sets.is_empty() || immediate {
            return Ok(response);
        }
        tokio::select! {
            _ = head.changed() => {}
            _ = control.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(response),
        }
    }
}

fn apply_acks(cursor: &mut Cursor, stream: &Stream, req: &PollRequest) {
    let released = req
        .ack
        .iter()
        .map(|jti| (jti.as_str(), None))
        .chain(req.set_errs.iter().map(|(jti, e)| (jti.as_str(), Some(e))));
    for (jti, err) in released {
        if let Some(e) = err {
            // setErrs are reported, not redelivered (RFC 8936 §2.4): a SET that failed
            // validation will fail again.
            const CODES: [&str; 7] = [
                "invalid_request",
                "invalid_key",
                "invalid_issuer",
                "invalid_audience",
                "authentication_failed",
                "access_denied",
                "invalid_state",
            ];
            // A static label: the receiver's string never becomes a metric label.
            let code = CODES
                .iter()
                .find(|c| **c == e.err)
                .copied()
                .unwrap_or("other");
            tracing::warn!(stream = %stream.stream_id, jti, err = code, "receiver reported a SET error");
            metrics::counter!("ssf_hub_poll_set_errors_total", "err" => code).increment(1);
        }
        match position_of(&stream.stream_id, jti) {
            Some(p) => cursor.mark_done(p),
            // Unknown jtis are ignored (RFC 8936 §2.4 lets the receiver re-ack freely).
            None => cursor.control.retain(|(j, _)| j != jti),
        }
    }
}

async fn collect(
    hub: &Hub,
    stream: &Stream,
    cursor: &mut Cursor,
    limit: usize,
) -> Result<PollResponse, PollError> {
    let mut sets = BTreeMap::new();
    for (jti, set) in cursor.control.iter().take(limit) {
        sets.insert(jti.clone(), set.clone());
    }
    let room = limit - sets.len();
    let mut more_available = cursor.control.len() > sets.len();
    // Paused streams hold their events (the cursor stays); disabled streams were moved to the
    // head when disabled; neither delivers.
    if stream.status == StreamStatus::Enabled && room > 0 {
        let (records, more) = pending(
            &hub.log,
            &hub.recent,
            stream,
            hub.config.delivery.default_subjects,
            cursor,
            room,
        )
        .await?;
        let budget = stream
            .latency_budget_ms
            .unwrap_or(hub.config.delivery.latency_budget_ms);
        for record in &records {
            let (jti, set) = mint_event(
                &*hub.signer_for(stream)?,
                &hub.config.issuer,
                stream,
                record,
            )?;
            record_latency("poll", record, budget);
            sets.insert(jti, set);
        }
        more_available |= more;
    }
    Ok(PollResponse {
        sets,
        more_available,
    })
}

/// Parses a poll body. Anything but a JSON object of the RFC 8936 members is a 400.
pub fn parse_request(body: &[u8]) -> Result<PollRequest, &'static str> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(PollRequest::default());
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| "the poll request is not JSON")?;
    if !value.is_object() {
        return Err("the poll request must be a JSON object");
    }
    serde_json::from_value(value).map_err(|_| "the poll request has a member of the wrong type")
}
