//! RFC 8936 poll delivery for one stream: applies `ack` and `setErrs`, then returns pending SETs
//! (control SETs first, then events in log order), long-polling until something is pending or
//! the timeout passes. Woken by the log's head watch, not by a timer.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{pending, record_latency, Delivery};
use crate::outbound::{event_jti, mint_control, position_of};
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
    #[error("this receiver already has as many long polls waiting as the hub allows")]
    TooManyLongPolls,
}

/// Most SETs one poll response carries when the receiver sets no `maxEvents`.
pub const DEFAULT_MAX_EVENTS: usize = 100;

/// Most `ack` plus `setErrs` entries one request may carry: a receiver never holds more than
/// `maxEvents` (at most 1000) unacknowledged SETs per response.
pub const MAX_RELEASES: usize = 2000;

/// Serves one poll request for `stream` (already authorized). The stream and its cursor are
/// read again on every wake, so a pause, an update or a delete during a long poll counts.
///
/// A long poll holds one of its receiver's `delivery.max_long_polls_per_receiver` slots while
/// it runs; over the cap it is refused before anything is done (`TooManyLongPolls`, a 429 with
/// `Retry-After`), so the receiver can repeat the same request, acks included. When the
/// receiver's credential is revoked, its long polls end at once, carrying the stream-updated
/// SET that announces the stream's disabling.
pub async fn poll(
    d: &Delivery,
    stream: &Stream,
    req: PollRequest,
) -> Result<PollResponse, PollError> {
    let cursors = &d.cursors;
    let limit = req
        .max_events
        .map_or(DEFAULT_MAX_EVENTS, |n| (n as usize).min(1000));
    let immediate = req.return_immediately.unwrap_or(false) || limit == 0;
    let _slot = if immediate {
        None
    } else {
        Some(
            d.long_poll_slot(&stream.receiver_id)
                .ok_or(PollError::TooManyLongPolls)?,
        )
    };
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
        let revoked = d
            .registry
            .receiver(&stream.receiver_id)?
            .is_none_or(|r| r.revoked);
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
        prune_signed(d, &stream, &cursor);
        drop(guard);
        // Revocation disables the receiver's streams one by one, each after its announcement
        // is queued: a long poll ends once its own stream is disabled, with that announcement.
        let ended = revoked && stream.status == StreamStatus::Disabled;
        if !response.sets.is_empty() || immediate || ended {
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

/// Drops the signed copies of SETs no longer handed out: acknowledged, reported, or cleared
/// by a status change. What stays is bounded by what the cursor holds.
fn prune_signed(d: &Delivery, stream: &Stream, cursor: &Cursor) {
    d.retain_signed(&stream.stream_id, |jti| {
        match position_of(&stream.stream_id, jti) {
            Some(p) => cursor.outstanding.contains(&p),
            None => cursor.control.iter().any(|c| c.jti == jti),
        }
    });
}

/// Control events first, then SETs handed out before and not yet acknowledged, then new ones.
/// What was handed out before is returned as it was signed then (byte for byte), as long as the
/// same key still signs for the stream.
async fn collect(
    d: &Delivery,
    stream: &Stream,
    cursor: &mut Cursor,
    limit: usize,
) -> Result<PollResponse, PollError> {
    let signer = d.minter.signer_for(stream)?;
    let kid = signer.kid().to_owned();
    let sign_once = |jti: &str, sign: &dyn Fn() -> Result<String, crate::sign::SignError>| {
        if let Some(set) = d.signed_again(&stream.stream_id, jti, &kid) {
            return Ok::<_, PollError>(set.to_string());
        }
        let set = sign()?;
        d.keep_signed(&stream.stream_id, jti, &kid, set.as_str().into());
        Ok(set)
    };
    let enabled = stream.status == StreamStatus::Enabled;
    let mut sets = BTreeMap::new();
    // A paused or disabled stream transmits nothing but the announcements of its status: a
    // verification SET waits for the stream to be enabled again (SSF §8.1.2: paused streams
    // hold events; disabling drops queued verifications, see `set_cursor_for_status`).
    let deliverable = cursor
        .control
        .iter()
        .filter(|c| enabled || c.event_type == crate::set::EventKind::StreamUpdated);
    let mut waiting = 0;
    for c in deliverable {
        if sets.len() == limit {
            waiting += 1;
            continue;
        }
        let set = sign_once(&c.jti, &|| {
            mint_control(&signer, d.minter.issuer(), stream, c)
        })?;
        sets.insert(c.jti.clone(), set);
    }
    let mut more_available = waiting > 0;
    // Paused streams hold their events (the cursor stays); disabled streams were moved to the
    // head when disabled; neither delivers.
    if !enabled {
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
        let jti = event_jti(&record);
        if let Some(set) = d.signed_again(&stream.stream_id, &jti, &kid) {
            sets.insert(jti, set.to_string());
            continue;
        }
        let (jti, set) = d.minter.event(&signer, stream, &record)?;
        d.keep_signed(&stream.stream_id, &jti, &kid, set.clone());
        sets.insert(jti, set.to_string());
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
        let (jti, set) = d.minter.event(&signer, stream, record)?;
        d.keep_signed(&stream.stream_id, &jti, &kid, set.clone());
        record_latency("poll", record, budget);
        cursor.outstanding.insert(record.position);
        sets.insert(jti, set.to_string());
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
