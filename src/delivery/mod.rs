//! Stage 6: delivery of hub-signed SETs to streams. Every stream is a durable cursor over the
//! log plus a filter, not a copy of the events: the cursor says which positions are done, and
//! what is pending is read from the log when it is needed. `poll` serves RFC 8936 from it.
//! Knows streams, the log and SETs; leaves HTTP parsing to `manage`.

pub mod poll;
pub mod push;

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::DeliveryConfig;
use crate::guard::Guard;
use crate::log::Log;
use crate::normalize::Record;
use crate::outbound::Minter;
use crate::streams::{Cursor, Cursors, DefaultSubjects, Registry, Stream};

/// What delivery works with: the log it follows, the streams and their cursors, the keys it
/// signs with, and the guarded HTTP client it pushes through.
#[derive(Debug, Clone)]
pub struct Delivery {
    log: Log,
    registry: Registry,
    cursors: Cursors,
    minter: Minter,
    config: Arc<DeliveryConfig>,
    guard: Arc<Guard>,
    client: reqwest::Client,
}

impl Delivery {
    pub fn new(
        log: Log,
        registry: Registry,
        cursors: Cursors,
        minter: Minter,
        config: DeliveryConfig,
        guard: Arc<Guard>,
    ) -> Delivery {
        let client = push::client(
            guard.clone(),
            std::time::Duration::from_millis(config.push_timeout_ms),
        );
        Delivery {
            log,
            registry,
            cursors,
            minter,
            config: Arc::new(config),
            guard,
            client,
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
