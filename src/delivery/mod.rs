//! Stage 6: delivery of hub-signed SETs to streams. Every stream is a durable cursor over the
//! log plus a filter, not a copy of the events: the cursor says which positions are done, and
//! what is pending is read from the log when it is needed. `poll` serves RFC 8936 from it.
//! Knows streams, the log and SETs; leaves HTTP parsing to `manage`.

pub mod clients;
pub mod poll;
pub mod push;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::config::DeliveryConfig;
use crate::guard::Guard;
use crate::log::Log;
use crate::normalize::Record;
use crate::outbound::Minter;
use crate::set::events::StreamStatus;
use crate::set::EventKind;
use crate::streams::{Cursor, Cursors, DefaultSubjects, Registry, RegistryError, Stream};

/// Signed SETs handed to a poller and not acknowledged yet, per stream: `jti` → (`kid` that
/// signed it, the compact JWS). A re-poll returns the very same bytes instead of signing again
/// (an RS256 signature costs about a third of a CPU-millisecond).
type Signed = HashMap<String, HashMap<String, (String, Arc<str>)>>;

/// What delivery works with: the log it follows, the streams and their cursors, the keys it
/// signs with, and the guarded HTTP clients it pushes through.
#[derive(Debug, Clone)]
pub struct Delivery {
    log: Log,
    registry: Registry,
    cursors: Cursors,
    minter: Minter,
    config: Arc<DeliveryConfig>,
    guard: Arc<Guard>,
    clients: clients::Clients,
    /// Permits for push requests open at once, over all streams (`delivery.push_max_requests`).
    requests: Arc<tokio::sync::Semaphore>,
    signed: Arc<Mutex<Signed>>,
    /// Long polls waiting now, per receiver id.
    long_polls: Arc<Mutex<HashMap<String, usize>>>,
    /// Which streams this replica pushes (and sweeps for inactivity).
    share: crate::replicas::Share,
}

/// One waiting long poll of a receiver; the count drops with it.
#[derive(Debug)]
pub struct LongPollSlot {
    polls: Arc<Mutex<HashMap<String, usize>>>,
    receiver_id: String,
}

impl Drop for LongPollSlot {
    fn drop(&mut self) {
        let mut polls = self.polls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = polls.get_mut(&self.receiver_id) {
            *n -= 1;
            if *n == 0 {
                polls.remove(&self.receiver_id);
            }
        }
        metrics::gauge!("ssf_hub_long_polls").decrement(1.0);
    }
}

impl Delivery {
    pub fn new(
        log: Log,
        registry: Registry,
        cursors: Cursors,
        minter: Minter,
        config: DeliveryConfig,
        guard: Arc<Guard>,
        share: crate::replicas::Share,
    ) -> Delivery {
        let clients = clients::Clients::new(
            guard.clone(),
            std::time::Duration::from_millis(config.push_timeout_ms),
        );
        let requests = Arc::new(tokio::sync::Semaphore::new(
            config.push_max_requests as usize,
        ));
        Delivery {
            log,
            registry,
            cursors,
            minter,
            config: Arc::new(config),
            guard,
            clients,
            requests,
            signed: Arc::default(),
            long_polls: Arc::default(),
            share,
        }
    }

    /// A long-poll slot of `receiver_id`, unless it already holds
    /// `delivery.max_long_polls_per_receiver` of them.
    pub fn long_poll_slot(&self, receiver_id: &str) -> Option<LongPollSlot> {
        let mut polls = self.long_polls.lock().unwrap_or_else(|p| p.into_inner());
        let n = polls.entry(receiver_id.to_owned()).or_default();
        if *n >= self.config.max_long_polls_per_receiver {
            return None;
        }
        *n += 1;
        metrics::gauge!("ssf_hub_long_polls").increment(1.0);
        Some(LongPollSlot {
            polls: self.long_polls.clone(),
            receiver_id: receiver_id.to_owned(),
        })
    }

    /// The SET signed earlier for `jti` of `stream_id`, if `kid` still signs for the stream.
    fn signed_again(&self, stream_id: &str, jti: &str, kid: &str) -> Option<Arc<str>> {
        let signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
        match signed.get(stream_id)?.get(jti) {
            Some((k, set)) if k == kid => Some(set.clone()),
            _ => None,
        }
    }

    /// Keeps a SET handed out, while the stream keeps fewer than
    /// `delivery.max_signed_sets_per_stream` (beyond that, a re-poll signs again).
    fn keep_signed(&self, stream_id: &str, jti: &str, kid: &str, set: Arc<str>) {
        let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
        let kept = signed.entry(stream_id.to_owned()).or_default();
        if kept.len() < self.config.max_signed_sets_per_stream || kept.contains_key(jti) {
            kept.insert(jti.to_owned(), (kid.to_owned(), set));
        }
    }

    /// Keeps only the signed SETs of `stream_id` that `still` wants (acknowledged ones go).
    fn retain_signed(&self, stream_id: &str, mut still: impl FnMut(&str) -> bool) {
        let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = signed.get_mut(stream_id) {
            kept.retain(|jti, _| still(jti));
            if kept.is_empty() {
                signed.remove(stream_id);
            }
        }
    }

    /// Forgets everything kept for a deleted stream.
    pub fn forget(&self, stream_id: &str) {
        self.signed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(stream_id);
    }

    /// Changes a stream's status on the hub's own initiative (SSF §8.1.2, §8.1.5): first a
    /// stream-updated SET announcing it goes out (pushed at once to an enabled push stream, and
    /// queued if that fails; queued for a poll stream, so it is in the next poll response),
    /// then the cursor moves and the status is recorded with `reason`. Does nothing when the
    /// stream is gone, already has `status`, or `still` says it changed meanwhile.
    pub async fn change_status(
        &self,
        stream_id: &str,
        status: StreamStatus,
        reason: &str,
        still: impl FnOnce(&Stream) -> bool,
    ) -> Result<bool, RegistryError> {
        let lock = self.cursors.lock_for(stream_id);
        let _guard = lock.lock().await;
        let Some(mut stream) = self.registry.stream(stream_id)? else {
            return Ok(false);
        };
        if stream.status == status || !still(&stream) {
            return Ok(false);
        }
        let announcement = crate::outbound::control(
            &stream,
            EventKind::StreamUpdated,
            json!({ "status": status, "reason": reason }),
        );
        let pushed = !stream.delivery.is_poll()
            && stream.status == StreamStatus::Enabled
            && push::send_control(self, &stream, &announcement).await;
        if !pushed {
            self.cursors.push_control(stream_id, announcement).await?;
        }
        crate::streams::set_cursor_for_status(
            &self.cursors,
            self.log.head(),
            self.config.paused_hold_max_events,
            stream_id,
            stream.status,
            status,
        )
        .await?;
        stream.status = status;
        stream.reason = Some(reason.to_owned());
        self.registry.put_stream(&stream).await?;
        Ok(true)
    }

    /// Pauses enabled streams whose receiver has not acted on them for `inactivity_timeout`
    /// (SSF §8.1.1; digest §8.2), announcing it with a stream-updated SET. Pausing rather than
    /// disabling keeps what the stream would have received, up to `paused_hold_max_events`.
    pub async fn pause_inactive(&self) {
        let timeout_ms = self.config.inactivity_timeout_secs.saturating_mul(1000);
        if timeout_ms == 0 {
            return;
        }
        let streams = match self.registry.streams() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "reading streams failed");
                return;
            }
        };
        let now = crate::unix_now_ms();
        // Another replica sweeps the streams it owns.
        for s in streams
            .into_iter()
            .filter(|s| self.share.owns(&s.stream_id))
        {
            let idle = |s: &Stream| {
                s.status == StreamStatus::Enabled
                    && now.saturating_sub(self.registry.last_activity_ms(s)) >= timeout_ms
            };
            if !idle(&s) {
                continue;
            }
            let reason = format!(
                "no receiver activity for inactivity_timeout ({} s)",
                self.config.inactivity_timeout_secs
            );
            match self
                .change_status(&s.stream_id, StreamStatus::Paused, &reason, idle)
                .await
            {
                Ok(true) => {
                    metrics::counter!("ssf_hub_streams_paused_inactive_total").increment(1);
                    tracing::info!(stream = %s.stream_id, "stream paused for inactivity");
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "pausing an inactive stream failed"),
            }
        }
    }
}

/// Records pending for `stream` after its cursor, oldest first, at most `limit`. Advances the
/// cursor over positions that are done or do not concern the stream. Returns the records and
/// whether more pending records may follow.
pub async fn pending(
    log: &Log,
    method: &'static str,
    stream: &Stream,
    default_subjects: DefaultSubjects,
    cursor: &mut Cursor,
    limit: usize,
) -> Result<(Vec<Arc<Record>>, bool), crate::log::LogError> {
    const PAGE: usize = 256;
    skip_removed(log.earliest(), method, cursor);
    let head = log.head();
    let mut out: Vec<Arc<Record>> = Vec::new();
    let mut after = cursor.through;
    let mut irrelevant = BTreeSet::new();
    while after < head {
        let page = log.page(after, PAGE).await?;
        let Some(&(last, _)) = page.last() else { break };
        after = last;
        for (position, record) in page {
            if cursor.is_done(position) {
                continue;
            }
            let Some(record) = record else {
                irrelevant.insert(position);
                continue;
            };
            if !(stream.wants_event(&record.event_type)
                && stream.wants_subject(&record.subject, default_subjects))
            {
                irrelevant.insert(position);
                continue;
            }
            if out.len() == limit {
                cursor.advance(|p| irrelevant.contains(&p), head);
                return Ok((out, true));
            }
            out.push(record);
        }
    }
    cursor.advance(|p| irrelevant.contains(&p), head);
    Ok((out, false))
}

/// A cursor that fell behind retention continues from the earliest record still kept. The
/// positions it never got (done or handed-out ones aside) are counted, in
/// `ssf_hub_delivery_skipped_total`; they include records the stream would not have wanted.
fn skip_removed(earliest: u64, method: &'static str, cursor: &mut Cursor) {
    let gone_through = earliest.saturating_sub(1);
    if cursor.through >= gone_through {
        return;
    }
    let settled = cursor
        .done_above
        .range(..=gone_through)
        .chain(cursor.outstanding.range(..=gone_through))
        .count() as u64;
    let skipped = (gone_through - cursor.through).saturating_sub(settled);
    metrics::counter!("ssf_hub_delivery_skipped_total", "method" => method).increment(skipped);
    tracing::warn!(
        method,
        skipped,
        "a stream fell behind log retention; it continues from the earliest record kept"
    );
    cursor.through = gone_through;
    cursor.done_above.retain(|p| *p > gone_through);
    cursor.outstanding.retain(|p| *p > gone_through);
}

/// Records how long a record took from the log to the receiver, against the stream's budget.
pub fn record_latency(method: &'static str, record: &Record, budget_ms: u64) {
    let now = crate::unix_now_ms();
    let ms = now.saturating_sub(record.received_at_ms);
    metrics::histogram!("ssf_hub_delivery_latency_seconds", "method" => method)
        .record(ms as f64 / 1000.0);
    metrics::counter!("ssf_hub_delivered_sets_total", "method" => method).increment(1);
    if ms > budget_ms {
        metrics::counter!("ssf_hub_delivery_budget_violations_total", "method" => method)
            .increment(1);
    }
}
