//! Configuration: built-in defaults (`deploy/config/hub.toml`) → optional TOML file →
//! `SSF_HUB_*` environment, then `validate()`. Knows nothing about how the values are used.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer};

use crate::keys::Alg;
pub use crate::keys::JwksConfig;

/// The documented defaults, compiled in so that docs and behaviour cannot drift apart.
pub const DEFAULTS: &str = include_str!("../deploy/config/hub.toml");

/// Environment variable prefix; `__` separates a section from its key.
pub const ENV_PREFIX: &str = "SSF_HUB_";

/// A configuration problem, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A secret value (token, credential). Its `Debug` never shows the value, so a config dump or an
/// error message cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison, so response timing does not reveal how much of a guess matched.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret(String::deserialize(d)?))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub issuer: String,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub admin_token: Option<Secret>,
    pub log: LogConfig,
    pub ingest: IngestConfig,
    pub jwks: JwksConfig,
    pub signing: SigningConfig,
    pub delivery: DeliveryConfig,
    pub revocation: RevocationConfig,
    pub feed: FeedConfig,
    pub oauth: OAuthConfig,
    pub http: HttpConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Limits every connector works within (README "Connectors").
    pub connector_limits: ConnectorLimits,
    /// Vendor webhooks received on `POST /connectors/{id}`.
    #[serde(default)]
    pub connectors: Vec<ConnectorConfig>,
    /// `[upstream]`: how the hub acts as a receiver of upstream SSF transmitters.
    pub upstream: UpstreamSettings,
    /// `[[upstreams]]`: SSF transmitters the hub discovers and registers a stream with.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
}

/// `[upstream]`: timings and batch sizes shared by every upstream transmitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub request_timeout_secs: u64,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    pub status_interval_secs: u64,
    pub verification_timeout_secs: u64,
    pub reverify_interval_secs: u64,
    pub poll_max_events: u32,
    pub poll_wait_secs: u64,
}

/// `[[upstreams]]`: one SSF transmitter, configured with its issuer and a management
/// credential; everything else (keys, endpoints, the stream) is discovered and registered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The source id its events carry, and `POST /ingest/{id}` for push.
    pub id: String,
    /// The transmitter's issuer URL; its metadata must name exactly this issuer.
    pub issuer: String,
    /// `push` (the transmitter POSTs to the hub) or `poll` (the hub polls, RFC 8936).
    #[serde(default = "default_upstream_delivery")]
    pub delivery: String,
    /// Event types requested (short names or URIs); empty means every CAEP and RISC type.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// A static bearer token for the transmitter's management API (and poll endpoint).
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// Or OAuth 2.0 client credentials for it.
    #[serde(default)]
    pub oauth: Option<UpstreamOAuthConfig>,
    /// `aud` values accepted in the stream answer and in SETs; default: the hub's `issuer`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The URL the transmitter pushes to; default: `<issuer of the hub>/ingest/<id>`.
    #[serde(default)]
    pub ingest_url: Option<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Pre-1.0 transmitter: legacy delivery-method URNs, event URIs and subject spellings.
    #[serde(default)]
    pub legacy: bool,
    /// Accept an `http://` issuer (metadata, keys and management without TLS): loopback tests.
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub owns: OwnsConfig,
}

/// `upstreams[].oauth`: the client-credentials grant (RFC 6749 §4.4) at a token endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOAuthConfig {
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(default)]
    pub scopes: Vec<String>,
}

fn default_upstream_delivery() -> String {
    "push".into()
}

impl UpstreamConfig {
    /// `aud` values accepted, with the default (the hub's own issuer) filled in.
    pub fn audiences_or(&self, hub_issuer: &str) -> Vec<String> {
        if self.audiences.is_empty() {
            vec![hub_issuer.to_owned()]
        } else {
            self.audiences.clone()
        }
    }

    /// The push endpoint announced to the transmitter.
    pub fn ingest_url_or(&self, hub_issuer: &str) -> String {
        self.ingest_url
            .clone()
            .unwrap_or_else(|| format!("{}/ingest/{}", hub_issuer.trim_end_matches('/'), self.id))
    }

    /// The ownership rules, as for `sources[].owns` (default: the transmitter's issuer).
    pub fn ownership(&self) -> crate::state::Ownership {
        self.owns.ownership(Some(&self.issuer))
    }
}

/// OAuth 2.0 access tokens (RFC 9068 JWTs, optionally DPoP-bound per RFC 9449) on the
/// management and revocation APIs, from one authorization server. Off unless `issuer` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The hub's resource identifier, which `aud` must contain; the hub's `issuer` when unset.
    #[serde(default)]
    pub audience: Option<String>,
    pub algorithms: Vec<String>,
    pub clock_skew_secs: u64,
    pub dpop_max_age_secs: u64,
    pub dpop_replay_capacity: usize,
}

/// The revocation state and its deltas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// Deltas are kept for at most this many log positions behind the fold.
    pub delta_window: u64,
}

/// Websocket feeds (`/feed`, `/revocations/ws`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    pub ring_capacity: usize,
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_sockets_per_credential: usize,
    pub max_sockets: usize,
    pub idle_timeout_secs: u64,
    pub write_timeout_secs: u64,
}

/// The HTTP transport: connection cap and deadlines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    /// Bearer token `GET /metrics` requires on the main listener; the admin token when unset.
    #[serde(default)]
    pub metrics_token: Option<Secret>,
    /// A second listener serving only `GET /metrics`, without authentication (for scrapers on
    /// a private network).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// The largest push window an operator may configure: each SET in flight holds a request and
/// its signed bytes.
pub const MAX_IN_FLIGHT: u32 = 1024;

/// How the hub, as a transmitter, serves its streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    pub default_subjects: crate::streams::DefaultSubjects,
    pub latency_budget_ms: u64,
    pub long_poll_timeout_secs: u64,
    pub min_verification_interval_secs: u64,
    pub paused_hold_max_events: u64,
    pub max_subjects_per_stream: usize,
    pub max_subject_bytes_per_receiver: usize,
    pub max_long_polls_per_receiver: usize,
    pub max_signed_sets_per_stream: usize,
    pub inactivity_timeout_secs: u64,
    pub push_timeout_ms: u64,
    /// SETs one push stream may have in flight at once (a stream's `max_in_flight` may lower
    /// it; 1 is strict log order).
    pub push_max_in_flight: u32,
    /// Push requests the hub has open at once over all streams.
    pub push_max_requests: u32,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    pub retry_budget: u32,
    pub permanent_failure_budget: u32,
    pub max_dead_letters_per_stream: usize,
    pub allow_private_targets: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub url: String,
    pub cache_capacity_bytes: u64,
    pub write_buffer_bytes: u64,
    pub retention: crate::log::Retention,
    pub kafka: KafkaConfig,
}

/// `[log.kafka]`: used only when `log.url` is `kafka://...`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Topic names; empty means `<prefix>.events` / `<prefix>.state` (prefix from the URL).
    pub events_topic: String,
    pub state_topic: String,
    pub create_topics: bool,
    pub replication_factor: i32,
    pub linger_ms: u64,
    pub delivery_timeout_ms: u64,
    pub startup_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
    /// Encrypts the hub's private signing keys in the state topic: 32 bytes, base64. Required
    /// in Kafka mode (every replica must sign with the same keys); see [`Config::key_encryption_key`].
    #[serde(default)]
    pub key_encryption_key: Option<Secret>,
    /// librdkafka properties; values are secrets (SASL passwords) and never printed.
    pub properties: std::collections::BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub max_body_bytes: usize,
    pub max_future_iat_secs: u64,
    pub dedupe_retention_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    pub alg: String,
    pub activation_delay_secs: u64,
    pub retired_grace_secs: u64,
}

/// One upstream transmitter whose SETs the hub accepts on `POST /ingest/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub id: String,
    pub issuer: String,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Exact `Authorization` header value the source must present, e.g. `Bearer abc`.
    #[serde(default)]
    pub authorization: Option<Secret>,
    /// Pre-1.0 transmitters: accept a missing `typ` and a subject only inside the payload.
    #[serde(default)]
    pub legacy: bool,
    /// Event types this source may send (short names like `caep/session-revoked` or URIs).
    /// Empty means any. Others are refused with `access_denied` (RFC 8935 §2.4).
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Accept an `http://` `jwks_uri` (keys fetched without TLS can be swapped by anyone on the
    /// path). For loopback test servers only.
    #[serde(default)]
    pub allow_insecure_jwks_uri: bool,
    /// Subjects this source owns: only their owner may restore access (account-enabled, a
    /// device compliant again, ...); deny-type events count from every source (see `state`).
    #[serde(default)]
    pub owns: OwnsConfig,
}

/// `sources[].owns`: which subjects a source is authoritative for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnsConfig {
    /// `iss` of owned `iss_sub` / `jwt_id` subjects (`issuer` of `saml_assertion_id` ones).
    /// Unset means the source's own `issuer`; `[]` owns none.
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
    /// Domains of owned `email` (and `acct:` `account`) subjects.
    #[serde(default)]
    pub email_domains: Vec<String>,
    /// Simple formats owned whatever the value (e.g. `opaque` device ids for an MDM).
    #[serde(default)]
    pub formats: Vec<String>,
}

impl OwnsConfig {
    /// The rules, with unset `issuers` meaning `default_issuer` (none when `None`).
    pub fn ownership(&self, default_issuer: Option<&str>) -> crate::state::Ownership {
        crate::state::Ownership {
            issuers: self
                .issuers
                .clone()
                .unwrap_or_else(|| default_issuer.map(str::to_owned).into_iter().collect()),
            email_domains: self.email_domains.clone(),
            formats: self.formats.clone(),
        }
    }
}

impl SourceConfig {
    /// The ownership rules of this source, with the default filled in.
    pub fn ownership(&self) -> crate::state::Ownership {
        self.owns.ownership(Some(&self.issuer))
    }
}

/// `[connector_limits]`: bounds on what one webhook may cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorLimits {
    pub max_body_bytes: usize,
    pub max_events_per_webhook: usize,
    pub filter_timeout_ms: u64,
    pub replay_window_secs: u64,
}

/// One vendor webhook received on `POST /connectors/{id}` and mapped to CAEP/RISC events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    pub id: String,
    /// A built-in mapping (`github-secret-scanning`, `okta`, `jamf-pro`).
    #[serde(default)]
    pub kind: Option<String>,
    /// An operator's mapping file (same form as the files in `connectors/`).
    #[serde(default)]
    pub mapping_file: Option<PathBuf>,
    /// The whole mapping inline (the generic connector): a table of the same form as a
    /// mapping file, read by `connectors` when the hub starts.
    #[serde(default)]
    pub mapping: Option<serde_json::Value>,
    /// The webhook secret: the HMAC key or the shared secret, as the mapping's scheme says.
    pub secret: Secret,
    /// Values the mapping's filter reads as `.options`.
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Subjects whose access this connector may restore; none by default (a scanner denies,
    /// it does not restore).
    #[serde(default)]
    pub owns: OwnsConfig,
    /// Overrides `connector_limits.max_body_bytes` for this connector.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
}

impl ConnectorConfig {
    /// The ownership rules of this connector: only what `owns` lists (issuers default to none).
    pub fn ownership(&self) -> crate::state::Ownership {
        self.owns.ownership(None)
    }
}

fn default_algorithms() -> Vec<String> {
    ["ES256", "RS256", "PS256", "EdDSA"]
        .map(String::from)
        .to_vec()
}

/// Where the event log (and with it all other durable state) lives, parsed from `log.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogUrl {
    /// The embedded fjall database in this directory.
    Fjall(PathBuf),
    Memory,
    /// `kafka://host:port[,host:port]/topic_prefix`.
    Kafka {
        brokers: String,
        prefix: String,
    },
}

impl Config {
    /// Loads defaults, then `file` if given, then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// As [`Config::load`], with the environment layer supplied (tests use a fixed one).
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a file", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment.merge(env).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads defaults, then `toml` (the text of a configuration file), and validates the
    /// result. No environment layer, so the outcome depends on the text alone (the config
    /// loader's fuzz target and tools that check a file they were handed).
    pub fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Toml::string(DEFAULTS))
            .merge(Toml::string(toml))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: consistency, ranges, and dangerous choices.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url("issuer", &self.issuer)?;
        if self.issuer.contains(['?', '#']) {
            return Err(invalid("issuer", "must not have a query or fragment"));
        }
        if matches!(&self.admin_token, Some(t) if t.expose().len() < 16) {
            return Err(invalid("admin_token", "must be at least 16 characters"));
        }
        self.log_url()?;
        if self.log.cache_capacity_bytes < 1 << 20 {
            return Err(invalid(
                "log.cache_capacity_bytes",
                "must be at least 1 MiB",
            ));
        }
        if self.log.write_buffer_bytes < 1 << 20 {
            return Err(invalid("log.write_buffer_bytes", "must be at least 1 MiB"));
        }
        if self.log.retention.sweep_secs == 0 {
            return Err(invalid("log.retention.sweep_secs", "must be at least 1"));
        }
        if self.revocation.delta_window == 0 {
            return Err(invalid("revocation.delta_window", "must be at least 1"));
        }
        if !(256..=16 << 20).contains(&self.ingest.max_body_bytes) {
            return Err(invalid(
                "ingest.max_body_bytes",
                "must be between 256 bytes and 16 MiB",
            ));
        }
        if self.ingest.dedupe_retention_secs < 60 {
            return Err(invalid(
                "ingest.dedupe_retention_secs",
                "must be at least 60",
            ));
        }
        let j = &self.jwks;
        if j.min_cache_secs == 0 || j.min_cache_secs > j.max_cache_secs {
            return Err(invalid(
                "jwks.min_cache_secs",
                "must be positive and not above jwks.max_cache_secs",
            ));
        }
        if j.fetch_timeout_secs == 0 {
            return Err(invalid("jwks.fetch_timeout_secs", "must be positive"));
        }
        if j.refresh_wait_ms > 10_000 {
            return Err(invalid(
                "jwks.refresh_wait_ms",
                "must be at most 10000 (a request must not wait for a slow key endpoint)",
            ));
        }
        if j.max_bytes < 1024 {
            return Err(invalid("jwks.max_bytes", "must be at least 1024"));
        }
        let d = &self.delivery;
        if d.latency_budget_ms == 0 {
            return Err(invalid("delivery.latency_budget_ms", "must be positive"));
        }
        if !(1..=300).contains(&d.long_poll_timeout_secs) {
            return Err(invalid(
                "delivery.long_poll_timeout_secs",
                "must be between 1 and 300",
            ));
        }
        if d.max_subjects_per_stream == 0 {
            return Err(invalid(
                "delivery.max_subjects_per_stream",
                "must be at least 1",
            ));
        }
        if d.max_subject_bytes_per_receiver < 4096 {
            return Err(invalid(
                "delivery.max_subject_bytes_per_receiver",
                "must be at least 4096 (one subject of the largest size)",
            ));
        }
        if d.max_long_polls_per_receiver == 0 {
            return Err(invalid(
                "delivery.max_long_polls_per_receiver",
                "must be at least 1",
            ));
        }
        if d.max_signed_sets_per_stream > 100_000 {
            return Err(invalid(
                "delivery.max_signed_sets_per_stream",
                "must be at most 100000",
            ));
        }
        if d.inactivity_timeout_secs > 0 && d.inactivity_timeout_secs < d.long_poll_timeout_secs {
            return Err(invalid(
                "delivery.inactivity_timeout_secs",
                "must be 0 (off) or at least delivery.long_poll_timeout_secs",
            ));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&d.push_max_in_flight) {
            return Err(invalid(
                "delivery.push_max_in_flight",
                "must be between 1 and 1024",
            ));
        }
        if !(1..=65_536).contains(&d.push_max_requests) {
            return Err(invalid(
                "delivery.push_max_requests",
                "must be between 1 and 65536",
            ));
        }
        if d.push_timeout_ms == 0 || d.retry_initial_backoff_ms == 0 {
            return Err(invalid(
                "delivery.push_timeout_ms",
                "timeouts and backoffs must be positive",
            ));
        }
        if d.retry_initial_backoff_ms > d.retry_max_backoff_ms {
            return Err(invalid(
                "delivery.retry_initial_backoff_ms",
                "must not exceed delivery.retry_max_backoff_ms",
            ));
        }
        if d.retry_budget == 0 || d.permanent_failure_budget == 0 {
            return Err(invalid(
                "delivery.retry_budget",
                "budgets must be at least 1",
            ));
        }
        if let Err(e) = crate::guard::Guard::new(&d.allow_private_targets) {
            return Err(invalid("delivery.allow_private_targets", e));
        }
        if !(16..=1 << 20).contains(&self.feed.ring_capacity) {
            return Err(invalid(
                "feed.ring_capacity",
                "must be between 16 and 1048576",
            ));
        }
        let f = &self.feed;
        if !(125..=1 << 20).contains(&f.max_frame_bytes) {
            return Err(invalid(
                "feed.max_frame_bytes",
                "must be between 125 and 1048576",
            ));
        }
        if !(f.max_frame_bytes..=1 << 20).contains(&f.max_message_bytes) {
            return Err(invalid(
                "feed.max_message_bytes",
                "must be at least feed.max_frame_bytes and at most 1048576",
            ));
        }
        if f.max_sockets_per_credential == 0 || f.max_sockets == 0 {
            return Err(invalid(
                "feed.max_sockets_per_credential",
                "socket caps must be at least 1",
            ));
        }
        if f.idle_timeout_secs == 0 || f.write_timeout_secs == 0 {
            return Err(invalid(
                "feed.idle_timeout_secs",
                "timeouts must be at least 1 second",
            ));
        }
        let h = &self.http;
        if h.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        if h.header_read_timeout_ms < 100 {
            return Err(invalid(
                "http.header_read_timeout_ms",
                "must be at least 100",
            ));
        }
        if h.body_read_timeout_ms < 100 {
            return Err(invalid("http.body_read_timeout_ms", "must be at least 100"));
        }
        if matches!(&h.metrics_token, Some(t) if t.expose().len() < 16) {
            return Err(invalid(
                "http.metrics_token",
                "must be at least 16 characters",
            ));
        }
        if h.metrics_listen.is_some_and(|m| m == self.listen) {
            return Err(invalid(
                "http.metrics_listen",
                "must differ from `listen` (metrics there need the token)",
            ));
        }
        self.validate_oauth()?;
        self.validate_upstreams()?;
        if !matches!(self.signing.alg.as_str(), "ES256" | "RS256") {
            return Err(invalid("signing.alg", "must be ES256 or RS256"));
        }
        let mut ids = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = |k: &str| format!("sources[{i}].{k}");
            if s.id.is_empty()
                || !s
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(invalid(key("id"), "must be non-empty [A-Za-z0-9._-]"));
            }
            if !ids.insert(s.id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!("duplicate source id {:?}", s.id),
                ));
            }
            if s.issuer.is_empty() || s.issuer.chars().any(char::is_control) {
                return Err(invalid(
                    key("issuer"),
                    "must be non-empty, without control characters",
                ));
            }
            match (&s.jwks_uri, &s.jwks_file) {
                (Some(uri), None) => {
                    check_url(&key("jwks_uri"), uri)?;
                    if uri
                        .get(..7)
                        .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
                        && !s.allow_insecure_jwks_uri
                    {
                        return Err(invalid(
                            key("jwks_uri"),
                            format!(
                                "is http://: keys fetched without TLS can be replaced by anyone \
                                 on the path; use https://, or set \
                                 sources[{i}].allow_insecure_jwks_uri = true (loopback tests only)"
                            ),
                        ));
                    }
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(invalid(
                        key("jwks_uri"),
                        "set exactly one of jwks_uri and jwks_file",
                    ))
                }
            }
            if s.audiences.is_empty() || s.audiences.iter().any(String::is_empty) {
                return Err(invalid(
                    key("audiences"),
                    "needs at least one non-empty value",
                ));
            }
            if s.algorithms.is_empty() {
                return Err(invalid(key("algorithms"), "needs at least one algorithm"));
            }
            for alg in &s.algorithms {
                if Alg::parse(alg).is_none() {
                    return Err(invalid(
                        key("algorithms"),
                        format!(
                            "{alg:?} is not allowed: use asymmetric JWS algorithms \
                             (ES256, ES384, ES512, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA)"
                        ),
                    ));
                }
            }
            for t in &s.event_types {
                if crate::set::EventKind::parse_name(t).is_none() {
                    return Err(invalid(
                        key("event_types"),
                        format!("unknown event type {t:?}"),
                    ));
                }
            }
            let owns = &s.owns;
            if owns.issuers.iter().flatten().any(String::is_empty) {
                return Err(invalid(key("owns.issuers"), "values must not be empty"));
            }
            if owns
                .email_domains
                .iter()
                .any(|d| d.is_empty() || d.contains('@') || d.contains(char::is_whitespace))
            {
                return Err(invalid(
                    key("owns.email_domains"),
                    "values must be domain names, without `@`",
                ));
            }
            for f in &owns.formats {
                if f.is_empty() || matches!(f.as_str(), "complex" | "aliases") {
                    return Err(invalid(
                        key("owns.formats"),
                        format!(
                            "{f:?} is not a simple format (complex and aliases subjects are \
                             owned when every identifier in them is)"
                        ),
                    ));
                }
            }
            if let Some(auth) = &s.authorization {
                if auth.expose().trim().is_empty() {
                    return Err(invalid(key("authorization"), "must not be empty"));
                }
            }
        }
        self.validate_connectors(&ids)?;
        Ok(())
    }

    fn validate_connectors(&self, source_ids: &HashSet<&str>) -> Result<(), ConfigError> {
        let l = &self.connector_limits;
        if l.max_body_bytes == 0 {
            return Err(invalid(
                "connector_limits.max_body_bytes",
                "must be at least 1",
            ));
        }
        if l.max_events_per_webhook == 0 {
            return Err(invalid(
                "connector_limits.max_events_per_webhook",
                "must be at least 1",
            ));
        }
        if l.filter_timeout_ms == 0 {
            return Err(invalid(
                "connector_limits.filter_timeout_ms",
                "must be at least 1",
            ));
        }
        if l.replay_window_secs < 60 {
            return Err(invalid(
                "connector_limits.replay_window_secs",
                "must be at least 60 (redeliveries inside it are recognized as duplicates)",
            ));
        }
        let mut ids = HashSet::new();
        for (i, c) in self.connectors.iter().enumerate() {
            let key = |k: &str| format!("connectors[{i}].{k}");
            if c.id.is_empty()
                || !c
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(invalid(key("id"), "must be non-empty [A-Za-z0-9._-]"));
            }
            if !ids.insert(c.id.as_str()) || source_ids.contains(c.id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!(
                        "duplicate id {:?} (connector and source ids share one namespace)",
                        c.id
                    ),
                ));
            }
            let set = [
                c.kind.is_some(),
                c.mapping_file.is_some(),
                c.mapping.is_some(),
            ];
            if set.iter().filter(|b| **b).count() != 1 {
                return Err(invalid(
                    key("kind"),
                    "set exactly one of kind (a built-in mapping), mapping_file and mapping",
                ));
            }
            // Whether `kind` names a built-in mapping, and whether a mapping parses and its
            // filter compiles, is checked when the hub starts (`connectors`), naming the key.
            if c.secret.expose().len() < 16 {
                return Err(invalid(
                    key("secret"),
                    "must be at least 16 characters (a webhook secret is a password)",
                ));
            }
            if c.max_body_bytes == Some(0) {
                return Err(invalid(key("max_body_bytes"), "must be at least 1"));
            }
            if c.owns
                .email_domains
                .iter()
                .any(|d| d.is_empty() || d.contains('@'))
            {
                return Err(invalid(
                    key("owns.email_domains"),
                    "values must be domain names, without `@`",
                ));
            }
        }
        Ok(())
    }

    fn validate_upstreams(&self) -> Result<(), ConfigError> {
        let u = &self.upstream;
        if u.request_timeout_secs == 0 || u.verification_timeout_secs == 0 {
            return Err(invalid(
                "upstream.request_timeout_secs",
                "timeouts must be positive",
            ));
        }
        if u.retry_initial_backoff_ms == 0 || u.retry_initial_backoff_ms > u.retry_max_backoff_ms {
            return Err(invalid(
                "upstream.retry_initial_backoff_ms",
                "must be positive and not above upstream.retry_max_backoff_ms",
            ));
        }
        if u.status_interval_secs == 0 {
            return Err(invalid("upstream.status_interval_secs", "must be positive"));
        }
        if !(1..=10_000).contains(&u.poll_max_events) {
            return Err(invalid(
                "upstream.poll_max_events",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=300).contains(&u.poll_wait_secs) {
            return Err(invalid(
                "upstream.poll_wait_secs",
                "must be between 1 and 300",
            ));
        }
        // Sources, upstreams and connectors name the `source` of what they append: one namespace.
        let mut ids: HashSet<&str> = self
            .sources
            .iter()
            .map(|s| s.id.as_str())
            .chain(self.connectors.iter().map(|c| c.id.as_str()))
            .collect();
        for (i, s) in self.upstreams.iter().enumerate() {
            let key = |k: &str| format!("upstreams[{i}].{k}");
            if s.id.is_empty()
                || !s
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(invalid(key("id"), "must be non-empty [A-Za-z0-9._-]"));
            }
            if !ids.insert(s.id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!(
                        "duplicate source id {:?} (sources, upstreams and connectors share ids)",
                        s.id
                    ),
                ));
            }
            check_url(&key("issuer"), &s.issuer)?;
            if s.issuer.contains(['?', '#']) || s.issuer.chars().any(char::is_control) {
                return Err(invalid(key("issuer"), "must not have a query or fragment"));
            }
            let plain_http = |u: &str| {
                u.get(..7)
                    .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
            };
            if plain_http(&s.issuer) && !s.allow_http {
                return Err(invalid(
                    key("issuer"),
                    format!(
                        "is http://: metadata, keys and credentials would travel without TLS; \
                         use https://, or set upstreams[{i}].allow_http = true (loopback tests only)"
                    ),
                ));
            }
            if !matches!(s.delivery.as_str(), "push" | "poll") {
                return Err(invalid(key("delivery"), "must be \"push\" or \"poll\""));
            }
            match (&s.bearer_token, &s.oauth) {
                (Some(t), None) if !t.expose().trim().is_empty() => {}
                (None, Some(o)) => {
                    check_url(&key("oauth.token_endpoint"), &o.token_endpoint)?;
                    if o.client_id.is_empty() {
                        return Err(invalid(key("oauth.client_id"), "must not be empty"));
                    }
                }
                _ => {
                    return Err(invalid(
                        key("bearer_token"),
                        "set exactly one of bearer_token and oauth (the management credential)",
                    ))
                }
            }
            for t in &s.event_types {
                if crate::set::EventKind::parse_name(t).is_none() {
                    return Err(invalid(
                        key("event_types"),
                        format!("unknown event type {t:?}"),
                    ));
                }
            }
            if s.audiences.iter().any(String::is_empty) {
                return Err(invalid(key("audiences"), "values must not be empty"));
            }
            if let Some(url) = &s.ingest_url {
                check_url(&key("ingest_url"), url)?;
            }
            if s.algorithms.is_empty() || s.algorithms.iter().any(|a| Alg::parse(a).is_none()) {
                return Err(invalid(
                    key("algorithms"),
                    "needs asymmetric JWS algorithms (ES256, RS256, PS256, EdDSA, ...)",
                ));
            }
        }
        Ok(())
    }

    fn validate_oauth(&self) -> Result<(), ConfigError> {
        let o = &self.oauth;
        match (&o.issuer, &o.jwks_uri) {
            (None, None) => {}
            (Some(iss), Some(uri)) => {
                if iss.is_empty() || iss.chars().any(char::is_control) {
                    return Err(invalid(
                        "oauth.issuer",
                        "must be non-empty, without control characters",
                    ));
                }
                check_url("oauth.jwks_uri", uri)?;
            }
            (Some(_), None) => {
                return Err(invalid("oauth.jwks_uri", "is required with oauth.issuer"))
            }
            (None, Some(_)) => {
                return Err(invalid("oauth.issuer", "is required with oauth.jwks_uri"))
            }
        }
        if matches!(&o.audience, Some(a) if a.is_empty()) {
            return Err(invalid("oauth.audience", "must not be empty"));
        }
        if o.algorithms.is_empty() {
            return Err(invalid("oauth.algorithms", "needs at least one algorithm"));
        }
        for alg in &o.algorithms {
            if Alg::parse(alg).is_none() {
                return Err(invalid(
                    "oauth.algorithms",
                    format!("{alg:?} is not allowed: use asymmetric JWS algorithms"),
                ));
            }
        }
        if o.clock_skew_secs > 600 {
            return Err(invalid("oauth.clock_skew_secs", "must be at most 600"));
        }
        if !(10..=3600).contains(&o.dpop_max_age_secs) {
            return Err(invalid(
                "oauth.dpop_max_age_secs",
                "must be between 10 and 3600",
            ));
        }
        if !(1000..=10_000_000).contains(&o.dpop_replay_capacity) {
            return Err(invalid(
                "oauth.dpop_replay_capacity",
                "must be between 1000 and 10000000",
            ));
        }
        Ok(())
    }

    /// The log backend selected by `log.url`.
    pub fn log_url(&self) -> Result<LogUrl, ConfigError> {
        let url = self.log.url.as_str();
        if let Some(path) = url.strip_prefix("fjall://") {
            Ok(LogUrl::Fjall(if path.is_empty() {
                self.data_dir.join("db")
            } else {
                PathBuf::from(path)
            }))
        } else if url.starts_with("sled://") {
            Err(invalid(
                "log.url",
                "sled:// is gone: the embedded engine is fjall now (fjall://); data written by \
                 sled cannot be read and is not migrated",
            ))
        } else if url == "memory://" {
            Ok(LogUrl::Memory)
        } else if let Some(rest) = url.strip_prefix("kafka://") {
            if !cfg!(feature = "kafka") {
                return Err(invalid(
                    "log.url",
                    "kafka:// needs the `kafka` cargo feature, and this ssf-hub binary was built \
                     without it; rebuild with `cargo build --release --features kafka`",
                ));
            }
            let (brokers, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if brokers.is_empty() || brokers.split(',').any(|b| !b.contains(':')) {
                return Err(invalid(
                    "log.url",
                    "kafka:// needs brokers as host:port[,host:port], then /topic_prefix",
                ));
            }
            if prefix.is_empty() || prefix.len() > 200 || !prefix.chars().all(legal) {
                return Err(invalid(
                    "log.url",
                    "kafka://brokers/topic_prefix: the prefix is required and may hold only \
                     ASCII letters, digits, '.', '_' and '-'",
                ));
            }
            let k = &self.log.kafka;
            if k.replication_factor < 1 {
                return Err(invalid(
                    "log.kafka.replication_factor",
                    "must be at least 1",
                ));
            }
            if k.delivery_timeout_ms == 0 || k.startup_timeout_ms == 0 {
                return Err(invalid(
                    "log.kafka.delivery_timeout_ms",
                    "delivery_timeout_ms and startup_timeout_ms must be above 0",
                ));
            }
            // The secrets usually come from the environment at start; a file without them is
            // valid, and `serve` names what is missing (see `kafka_secrets`).
            if k.key_encryption_key.is_some() {
                self.key_encryption_key()?;
            }
            if k.heartbeat_ms == 0 || k.lease_ms < k.heartbeat_ms.saturating_mul(2) {
                return Err(invalid(
                    "log.kafka.lease_ms",
                    "heartbeat_ms must be above 0 and lease_ms at least twice heartbeat_ms",
                ));
            }
            Ok(LogUrl::Kafka {
                brokers: brokers.to_owned(),
                prefix: prefix.to_owned(),
            })
        } else {
            Err(invalid(
                "log.url",
                "scheme must be fjall://, memory:// or kafka://",
            ))
        }
    }

    /// What Kafka mode needs besides the file, checked when the hub starts: the admin token and
    /// the key-encryption key, the same on every replica. Returns the latter.
    pub fn kafka_secrets(&self) -> Result<[u8; 32], ConfigError> {
        if self.admin_token.is_none() {
            return Err(invalid(
                "admin_token",
                "is required with a kafka:// log: every replica must accept the same one \
                 (give it as a secret, SSF_HUB_ADMIN_TOKEN)",
            ));
        }
        self.key_encryption_key()
    }

    /// The 32-byte key that encrypts the signing keys in Kafka (`log.kafka.key_encryption_key`,
    /// base64 with or without padding, standard or URL alphabet).
    pub fn key_encryption_key(&self) -> Result<[u8; 32], ConfigError> {
        use base64::Engine as _;
        const KEY: &str = "log.kafka.key_encryption_key";
        let Some(secret) = &self.log.kafka.key_encryption_key else {
            return Err(invalid(
                KEY,
                "is required with a kafka:// log: the replicas share their signing keys through \
                 Kafka, encrypted with it. Make one with `openssl rand -base64 32` and give every \
                 replica the same (SSF_HUB_LOG__KAFKA__KEY_ENCRYPTION_KEY)",
            ));
        };
        let text = secret.expose().trim().trim_end_matches('=');
        let engines = [
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines
            .iter()
            .find_map(|e| e.decode(text).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                invalid(
                    KEY,
                    "must be 32 bytes in base64 (`openssl rand -base64 32`)",
                )
            })
    }

    /// What the Kafka backend needs, from `log.url`'s parts and `[log.kafka]`.
    #[cfg(feature = "kafka")]
    pub fn kafka_settings(&self, brokers: String, prefix: &str) -> crate::storage::KafkaSettings {
        let k = &self.log.kafka;
        let name = |set: &str, suffix: &str| match set {
            "" => format!("{prefix}.{suffix}"),
            s => s.to_owned(),
        };
        crate::storage::KafkaSettings {
            brokers,
            events_topic: name(&k.events_topic, "events"),
            state_topic: name(&k.state_topic, "state"),
            create_topics: k.create_topics,
            replication_factor: k.replication_factor,
            linger_ms: k.linger_ms,
            delivery_timeout_ms: k.delivery_timeout_ms,
            startup_timeout_ms: k.startup_timeout_ms,
            heartbeat_ms: k.heartbeat_ms,
            lease_ms: k.lease_ms,
            properties: k
                .properties
                .iter()
                .map(|(name, v)| (name.clone(), v.expose().to_owned()))
                .collect(),
        }
    }

    /// Warnings about legal but risky settings, logged once at start-up.
    pub fn risks(&self) -> Vec<String> {
        let mut out = Vec::new();
        let exposed = !self.listen.ip().is_loopback();
        for s in &self.sources {
            if exposed && s.authorization.is_none() {
                out.push(format!(
                    "source {:?} has no `authorization`: anyone who can reach {} can make the hub \
                     verify signatures on its behalf",
                    s.id, self.listen
                ));
            }
            if !s.owns.formats.is_empty() {
                out.push(format!(
                    "source {:?} owns every subject of the formats {:?}: it can restore access \
                     for any of them",
                    s.id, s.owns.formats
                ));
            }
            if s.allow_insecure_jwks_uri {
                out.push(format!(
                    "source {:?} allows an http:// jwks_uri: its keys travel without TLS",
                    s.id
                ));
            }
            if s.legacy {
                out.push(format!(
                    "source {:?} runs in legacy mode (SETs without `typ` accepted)",
                    s.id
                ));
            }
        }
        if let Some(uri) = &self.oauth.jwks_uri {
            if uri.starts_with("http://") {
                out.push(
                    "oauth.jwks_uri is plain http://: whoever can change it in transit can mint \
                     access tokens"
                        .into(),
                );
            }
        }
        if matches!(self.log_url(), Ok(LogUrl::Kafka { .. }))
            && self.log.kafka.create_topics
            && self.log.kafka.replication_factor < 3
        {
            out.push(format!(
                "log.kafka.replication_factor is {}: the topics the hub creates (all its state) \
                 survive the loss of at most {} brokers; 3 replicas are usual in production",
                self.log.kafka.replication_factor,
                self.log.kafka.replication_factor - 1
            ));
        }
        if self.log_url().ok() == Some(LogUrl::Memory) {
            out.push("log.url is memory://: events are lost when the hub stops".into());
        }
        out
    }
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(invalid(key, "must be an absolute http(s) URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, toml).expect("write");
        Config::load_from(Some(&path), Env::prefixed("SSF_HUB_TEST_UNUSED_"))
    }

    #[test]
    fn defaults_alone_make_a_working_config() {
        let c = Config::load_from(None, Env::prefixed("SSF_HUB_TEST_UNUSED_")).expect("defaults");
        assert!(c.listen.ip().is_loopback());
        assert_eq!(
            c.log_url().expect("url"),
            LogUrl::Fjall(PathBuf::from("ssf-hub-data/db"))
        );
        assert!(c.sources.is_empty());
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_urls_name_brokers_and_prefix_and_hide_property_values() {
        let c = Config::from_toml(
            "admin_token = \"0123456789abcdef0123\"\n[log]\n\
             url = \"kafka://k1:9092,k2:9092/hub.prod\"\n[log.kafka]\n\
             key_encryption_key = \"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\"\n\
             properties = { \"sasl.password\" = \"hunter2\" }\n",
        )
        .expect("kafka config");
        assert_eq!(c.kafka_secrets().expect("kek").len(), 32);
        // Kafka mode without a shared key-encryption key or admin token does not start; the
        // error names what is missing. A malformed key is refused with the file.
        let err = Config::from_toml(
            "[log]\nurl = \"kafka://k:1/p\"\n[log.kafka]\nkey_encryption_key = \"c2hvcnQ=\"\n",
        )
        .expect_err("short key")
        .to_string();
        assert!(err.contains("log.kafka.key_encryption_key"), "{err}");
        for (missing, toml) in [
            (
                "log.kafka.key_encryption_key",
                "admin_token = \"0123456789abcdef0123\"\n[log]\nurl = \"kafka://k:1/p\"\n",
            ),
            (
                "admin_token",
                "[log]\nurl = \"kafka://k:1/p\"\n[log.kafka]\n\
                 key_encryption_key = \"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\"\n",
            ),
        ] {
            let c = Config::from_toml(toml).expect("valid without its secrets");
            let err = c.kafka_secrets().expect_err(missing).to_string();
            assert!(err.contains(missing), "{missing}: {err}");
        }
        let LogUrl::Kafka { brokers, prefix } = c.log_url().expect("url") else {
            panic!("not kafka")
        };
        assert_eq!(
            (brokers.as_str(), prefix.as_str()),
            ("k1:9092,k2:9092", "hub.prod")
        );
        let settings = c.kafka_settings(brokers, &prefix);
        assert_eq!(settings.events_topic, "hub.prod.events");
        assert_eq!(settings.state_topic, "hub.prod.state");
        assert!(!format!("{c:?}{settings:?}").contains("hunter2"));
        for bad in [
            "kafka://k1:9092",
            "kafka://k1:9092/",
            "kafka:///p",
            "kafka://k1/p",
            "kafka://k1:9092/a b",
        ] {
            let err = Config::from_toml(&format!("[log]\nurl = \"{bad}\"\n")).expect_err(bad);
            assert!(err.to_string().contains("log.url"), "{bad}: {err}");
        }
    }

    #[cfg(not(feature = "kafka"))]
    #[test]
    fn kafka_urls_need_the_kafka_feature() {
        let err =
            Config::from_toml("[log]\nurl = \"kafka://k1:9092/hub\"\n").expect_err("no kafka");
        assert!(err.to_string().contains("`kafka` cargo feature"), "{err}");
    }

    #[test]
    fn toml_text_loads_like_a_file_without_the_environment() {
        let c = Config::from_toml("[jwks]\nrefresh_wait_ms = 250\n").expect("text");
        assert_eq!(c.jwks.refresh_wait_ms, 250);
        assert_eq!(c.listen, load("").expect("file").listen);
        let err = Config::from_toml("[jwks]\nrefresh_wait_ms = 60000\n").expect_err("too long");
        assert!(err.to_string().contains("jwks.refresh_wait_ms"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let err = load("[ingest]\nmax_body_byte = 5\n").expect_err("typo");
        assert!(err.to_string().contains("max_body_byte"), "{err}");
        let err = load("colour = 1\n").expect_err("unknown top-level");
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn inconsistent_sources_name_the_key() {
        let src = |extra: &str| {
            format!("[[sources]]\nid = \"a\"\nissuer = \"https://i\"\naudiences = [\"x\"]\n{extra}")
        };
        let err = load(&src("")).expect_err("no keys");
        assert!(err.to_string().contains("sources[0].jwks_uri"), "{err}");
        let err = load(&src("jwks_file = \"k\"\nalgorithms = [\"HS256\"]")).expect_err("hmac");
        assert!(err.to_string().contains("sources[0].algorithms"), "{err}");
        let err = load(&src("jwks_file = \"k\"\nalgorithms = [\"none\"]")).expect_err("none");
        assert!(err.to_string().contains("sources[0].algorithms"), "{err}");
        assert!(load(&src("jwks_file = \"k\"")).is_ok());
    }

    #[test]
    fn upstreams_are_validated_and_errors_name_the_key() {
        let up = |extra: &str| {
            load(&format!(
                "[[upstreams]]\nid = \"u\"\nissuer = \"https://tx.test/t\"\n{extra}"
            ))
        };
        let c = up("bearer_token = \"tok\"").expect("minimal upstream");
        assert_eq!(c.upstreams[0].delivery, "push");
        assert_eq!(c.upstreams[0].audiences_or("https://hub"), ["https://hub"]);
        assert_eq!(
            c.upstreams[0].ingest_url_or("https://hub/"),
            "https://hub/ingest/u"
        );
        for (extra, key) in [
            ("", "upstreams[0].bearer_token"),
            (
                "bearer_token = \"t\"\noauth = { token_endpoint = \"https://as\", client_id = \"c\", client_secret = \"s\" }",
                "upstreams[0].bearer_token",
            ),
            ("bearer_token = \"t\"\ndelivery = \"carrier-pigeon\"", "upstreams[0].delivery"),
            ("bearer_token = \"t\"\nevent_types = [\"nope\"]", "upstreams[0].event_types"),
            ("bearer_token = \"t\"\nalgorithms = [\"HS256\"]", "upstreams[0].algorithms"),
            (
                "oauth = { token_endpoint = \"nope\", client_id = \"c\", client_secret = \"s\" }",
                "upstreams[0].oauth.token_endpoint",
            ),
        ] {
            let err = up(extra).expect_err(extra).to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let err =
            load("[[upstreams]]\nid = \"u\"\nissuer = \"http://tx.test\"\nbearer_token = \"t\"")
                .expect_err("http issuer")
                .to_string();
        assert!(err.contains("upstreams[0].issuer"), "{err}");
        let err = load(
            "[[sources]]\nid = \"u\"\nissuer = \"https://i\"\naudiences = [\"x\"]\njwks_file = \"k\"\n\
             [[upstreams]]\nid = \"u\"\nissuer = \"https://tx.test\"\nbearer_token = \"t\"",
        )
        .expect_err("shared id")
        .to_string();
        assert!(err.contains("upstreams[0].id"), "{err}");
    }

    #[test]
    fn ownership_defaults_to_the_source_issuer_and_is_validated() {
        let src = |extra: &str| {
            format!(
                "[[sources]]\nid = \"a\"\nissuer = \"https://i\"\naudiences = [\"x\"]\n\
                 jwks_file = \"k\"\n{extra}"
            )
        };
        let c = load(&src("")).expect("default ownership");
        assert_eq!(
            c.sources[0].ownership().issuers,
            vec!["https://i".to_owned()]
        );
        let c = load(&src(
            "owns = { issuers = [], email_domains = [\"corp.test\"] }",
        ))
        .expect("explicit ownership");
        let owns = c.sources[0].ownership();
        assert!(owns.issuers.is_empty());
        assert_eq!(owns.email_domains, vec!["corp.test".to_owned()]);
        for (bad, key) in [
            (
                "owns.email_domains = [\"@corp.test\"]",
                "sources[0].owns.email_domains",
            ),
            ("owns.formats = [\"complex\"]", "sources[0].owns.formats"),
            ("owns.issuers = [\"\"]", "sources[0].owns.issuers"),
            ("owns.domains = [\"corp.test\"]", "domains"),
        ] {
            let err = load(&src(bad)).expect_err(bad);
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn oauth_needs_issuer_and_jwks_uri_together() {
        let err = load("[oauth]\nissuer = \"https://as.test\"\n").expect_err("no jwks");
        assert!(err.to_string().contains("oauth.jwks_uri"), "{err}");
        let err = load("[oauth]\nissuer = \"https://as.test\"\njwks_uri = \"https://as.test/j\"\nalgorithms = [\"HS256\"]\n")
            .expect_err("hmac");
        assert!(err.to_string().contains("oauth.algorithms"), "{err}");
        let ok = load("[oauth]\nissuer = \"https://as.test\"\njwks_uri = \"https://as.test/j\"\n")
            .expect("valid");
        assert_eq!(ok.oauth.issuer.as_deref(), Some("https://as.test"));
    }

    #[test]
    #[expect(
        clippy::result_large_err,
        reason = "figment::Jail's closure signature is fixed"
    )]
    fn environment_overrides_file_and_secrets_stay_hidden() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("hub.toml", "listen = \"127.0.0.1:9000\"\n")?;
            jail.set_env("SSF_HUB_LISTEN", "127.0.0.1:9001");
            jail.set_env("SSF_HUB_INGEST__MAX_BODY_BYTES", "1024");
            jail.set_env("SSF_HUB_ADMIN_TOKEN", "correct-horse-battery-staple");
            let c = Config::load(Some(Path::new("hub.toml"))).expect("load");
            assert_eq!(c.listen.port(), 9001);
            assert_eq!(c.ingest.max_body_bytes, 1024);
            assert!(!format!("{c:?}").contains("correct-horse"));
            Ok(())
        });
    }
}
