//! Logging and metrics set-up, metric names, and typed `record_*` helpers so each metric is
//! emitted from one place. Labels are low-cardinality by construction: attacker-chosen strings
//! (unknown source ids, unknown event-type URIs) never become label values.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the `tracing` subscriber once (`RUST_LOG` filters, default `info`, with the storage
/// engine's routine flush and compaction notices at `warn`).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the process-wide Prometheus recorder on first call and returns its handle. Several
/// hubs in one process (tests) share it, which is what a global recorder means.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder is installed already; the handle then renders an
            // empty page, which is visible rather than fatal.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// One ingest request's (or polled SET's) outcome: `accepted`, `duplicate`, `control` (a
/// managed upstream's verification or stream-updated SET, taken and not appended), an RFC 8935
/// code, or an HTTP-level refusal (`unauthorized`, `forbidden`, `too_large`,
/// `unsupported_media_type`, `unknown_source`, `unavailable`, `internal`). `event_type` is `family/name` for known types, else `unknown`.
pub fn record_ingest(source: &str, event_type: &str, outcome: &'static str) {
    metrics::counter!(
        "ssf_hub_ingest_total",
        "source" => source.to_owned(),
        "event_type" => event_type.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
    if outcome == "duplicate" {
        metrics::counter!("ssf_hub_ingest_duplicates_total", "source" => source.to_owned())
            .increment(1);
    }
}

/// Time spent verifying (signature + claims) and normalizing one SET.
pub fn record_verify(elapsed: Duration) {
    metrics::histogram!("ssf_hub_verify_seconds").record(elapsed.as_secs_f64());
}

/// Time from handing a record to the log until it was durable.
pub fn record_append(elapsed: Duration) {
    metrics::histogram!("ssf_hub_append_seconds").record(elapsed.as_secs_f64());
}

/// One group commit: how many appends shared it and how long the durable write took.
pub fn record_log_commit(batch: usize, elapsed: Duration) {
    metrics::histogram!("ssf_hub_log_commit_batch_size").record(batch as f64);
    metrics::histogram!("ssf_hub_log_commit_seconds").record(elapsed.as_secs_f64());
}
