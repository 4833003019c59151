//! RFC 8936 poll delivery for one stream: applies `ack` and `setErrs`, then returns pending SETs
//! (control SETs first, then events in log order), long-polling until something is pending or
//! the timeout passes. Woken by the log's head watch, not by a timer.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{pending, record_latency, Delivery};
use crate::outbound::{mint_control, mint_event, position_of};
use crate::set::events::StreamStatus;
use crate::streams::Cursor;
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
    #[error("the stream no longer exists")]
    Gone,
}

/// Most SETs one poll response carries when the receiver sets no `maxEvents`.
pub const DEFAULT_MAX_EVENTS: usize = 100;

/// Most `ack` plus `setErrs` entries one request may carry: a receiver never holds more than
/// `maxEvents` (at most 1000) unacknowledged SETs per response.
pub const MAX_RELEASES: usize = 2000;

/// Serves one poll request for `stream` (already authorized). The stream and its cursor are
/// read again on every wake, so a pause, an update or a delete during a long poll counts.
pub async fn poll(
    d: &Delivery,
    stream: &Stream,
    req: PollRequest,
) -> Result<PollResponse, PollError> {
    let cursors = &d.cursors;
    let limit = req
        .max_events
        .map_or(DEFAULT_MAX_EVENTS, |n| (n as usize).min(1000));
    let timeout = Duration::from_secs(d.config.long_poll_timeout_secs);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut head = d.log.subscribe();
    let mut control = cursors.subscribe_control();
    let mut changes = d.registry.subscribe();
    let mut first = true;
    loop {
        // Mark the watches seen before looking, so a change after the look still wakes us.
        head.borrow_and_update();
        control.borrow_and_update();
        changes.borrow_and_update();
        let lock = cursors.lock_for(&stream.stream_id);
        let guard = lock.lock().await;
        let stream = d
            .registry
            .owned_stream(&stream.receiver_id, &stream.stream_id)?
            .filter(|s| s.delivery.is_poll())
            .ok_or(PollError::Gone)?;
        let mut cursor = cursors.get(&stream.stream_id)?.ok_or(PollError::Gone)?;
        let before = cursor.clone();
        if first {
            apply_acks(&mut cursor, &stream, &req);
            first = false;
        }
        let response = if limit == 0 {
            PollResponse {
                sets: BTreeMap::new(),
                more_available: false,
            }
        } else {
            collect(d, &stream, &mut cursor, limit).await?
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
            _ = changes.changed() => {}
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
        let known = match position_of(&stream.stream_id, jti) {
            // Only what was handed out can be released: an ack for a position not yet
            // delivered must not suppress it when it arrives.
            Some(p) => cursor.outstanding.remove(&p),
            None => {
                let n = cursor.control.len();
                cursor.control.retain(|c| c.jti != jti);
                n != cursor.control.len()
            }
        };
        if let (Some(e), true) = (err, known) {
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
    }
}

/// Control events first, then SETs handed out before and not yet acknowledged, then new ones.
async fn collect(
    d: &Delivery,
    stream: &Stream,
    cursor: &mut Cursor,
    limit: usize,
) -> Result<PollResponse, PollError> {
    let signer = d.minter.signer_for(stream)?;
    let mut sets = BTreeMap::new();
    for c in cursor.control.iter().take(limit) {
        let set = mint_control(&signer, d.minter.issuer(), stream, c)?;
        sets.insert(c.jti.clone(), set);
    }
    let mut more_available = cursor.control.len() > sets.len();
    // Paused streams hold their events (the cursor stays); disabled streams were moved to the
    // head when disabled; neither delivers.
    if stream.status != StreamStatus::Enabled {
        return Ok(PollResponse {
            sets,
            more_available,
        });
    }
    let budget = stream
        .latency_budget_ms
        .unwrap_or(d.config.latency_budget_ms);
    let again: Vec<u64> = cursor.outstanding.iter().copied().collect();
    for position in again {
        if sets.len() == limit {
            more_available = true;
            break;
        }
        let Some(record) = d.log.record_at(position).await? else {
            cursor.outstanding.remove(&position);
            continue;
        };
        let (jti, set) = mint_event(&signer, d.minter.issuer(), stream, &record)?;
        sets.insert(jti, set);
    }
    let room = limit - sets.len();
    // With no room left, a zero-sized look still tells whether more is waiting.
    let (records, more) = pending(
        &d.log,
        "poll",
        stream,
        d.config.default_subjects,
        cursor,
        room,
    )
    .await?;
    for record in &records {
        let (jti, set) = mint_event(&signer, d.minter.issuer(), stream, record)?;
        record_latency("poll", record, budget);
        cursor.outstanding.insert(record.position);
        sets.insert(jti, set);
    }
    cursor.compact(d.log.head());
    Ok(PollResponse {
        sets,
        more_available: more_available || more,
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
    let req: PollRequest = serde_json::from_value(value)
        .map_err(|_| "the poll request has a member of the wrong type")?;
    if req.ack.len() + req.set_errs.len() > MAX_RELEASES {
        return Err("the poll request acknowledges more SETs than were handed out");
    }
    Ok(req)
}
