//! # ssf-hub
//!
//! An OpenID Shared Signals (SSF 1.0 / CAEP 1.0 / RISC 1.0) event hub. Identity providers and
//! scanners push Security Event Tokens (RFC 8417) to the hub; the hub verifies every signature
//! and claim, normalizes the event, and appends it to an ordered, durable log.
//!
//! ```text
//!  POST /ingest/{source}     verify.rs           normalize.rs         log.rs            storage/
//!  ──────────────────► ingest ────────► Verified ───────────► Record ───────► Log ─────────► EventLog
//!   RFC 8935 push       (HTTP, keys.rs:        schema.rs: JSON      group commit,   (fjall, memory,
//!                       auth,  JWKS cache      Schemas; set/:       202 after         Kafka)
//!                       limits)                typed events         durable
//!                                                                     │ head watch + decoded-record cache
//!            ┌─────────────────────────┬──────────────────────────┬───┴──────────────────┐
//!            ▼                         ▼                          ▼                      ▼
//!   delivery/push.rs, poll.rs    revocation.rs (fold,       feed.rs (/feed)        ops.rs (GET /events,
//!   per stream: streams/         state.rs) → deltas ──────► /revocations/ws         `ssf-hub tail`)
//!   cursors, outbound.rs Minter  snapshot, decisions        by subscription
//! ```
//!
//! Modules, in data-flow order:
//! - [`config`]: layered configuration (defaults → file → `SSF_HUB_*`), validated at start.
//! - [`set`]: protocol types: event catalogue, typed payloads, RFC 9493 subjects. No I/O.
//! - [`ingest`]: stage 1, the RFC 8935 push endpoint and configured sources; [`connectors`]:
//!   vendor webhooks authenticated, mapped (jq) and appended as the hub's own events.
//! - [`upstream`]: the hub as a receiver of SSF transmitters configured by issuer and
//!   credential: discovery, stream registration and verification, the RFC 8936 poll client.
//! - [`keys`] and [`verify`]: stage 2, JWKS caching and JWS/claims verification.
//! - [`schema`] and [`normalize`]: stage 3, schema-checked, typed, canonical records.
//! - [`log`]: stage 4, the journal: group commit, the record codec and a decoded-record cache,
//!   head notifications, retention.
//! - [`storage`]: the storage seams (`EventLog`, `Tables`, `Cluster`) and their backends
//!   (fjall, memory, Kafka); [`replicas`]: which replica does work with one owner at a time.
//! - [`streams`], [`manage`], [`outbound`]: stage 5, the SSF transmitter: receivers and streams
//!   with their cursors, the management API, and the SETs the hub signs.
//! - The log's followers, each woken by its head: [`delivery`] (stage 6, push and poll per
//!   stream), [`revocation`] with [`state`] (stage 5a, the fold, deltas and decisions) and
//!   [`feed`] (websockets; it subscribes to the fold's deltas).
//! - [`sign`], [`keyring`]: signing keys and SET encoding (operator tools, the hub's own keys).
//! - [`transport`] (accept loop, timeouts, connection cap), [`http`] with [`access`]
//!   (credentials, scopes, OAuth access tokens and DPoP proofs), [`error`], [`ops`], [`guard`],
//!   [`telemetry`]: the edges. [`app`] composes the
//!   parts and is imported by nothing but [`cli`]; the module graph has no cycle.

pub mod access;
pub mod app;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod delivery;
pub mod durable;
pub mod error;
pub mod feed;
pub mod guard;
pub mod http;
pub mod ingest;
pub mod keyring;
pub mod keys;
pub mod log;
pub mod manage;
pub mod normalize;
pub mod ops;
pub mod outbound;
pub mod replicas;
pub mod revocation;
pub mod schema;
pub mod set;
pub mod sign;
pub mod state;
pub mod storage;
pub mod streams;
pub mod telemetry;
pub mod transport;
pub mod upstream;
pub mod verify;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An untrusted string (a receiver's error code, a member name, a JSON pointer) cut to a short,
/// plain form before it is echoed in an error description, a status reason or a log line: only
/// letters, digits and `_-./:`, at most `max` of them, so nothing hostile gets through.
pub fn plain(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_-./:".contains(*c))
        .take(max)
        .collect()
}
