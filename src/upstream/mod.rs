//! The hub as a receiver upstream: SSF transmitters configured with only their issuer and a
//! management credential (`[[upstreams]]`). Per transmitter one task ([`reconcile`]) discovers
//! the metadata ([`discover`]), creates or reuses the hub's one stream there through the
//! management API ([`manage`]), checks the answer, verifies the stream and follows its status;
//! for poll streams it runs the RFC 8936 client ([`poll`]). SETs take the same verify →
//! normalize → append path as pushes (`ingest::Ingest::check`); the verification and
//! stream-updated SETs of these sources come back here through [`crate::ingest::Control`].
//! What each link is doing is kept in a [`Status`], served by `GET /admin/sources`.

pub mod discover;
pub mod manage;
pub mod poll;
pub mod reconcile;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{FromRef, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{JwksConfig, Secret, UpstreamConfig, UpstreamSettings};
use crate::error::Error;
use crate::guard::Guard;
use crate::http::{Admin, AdminToken};
use crate::ingest::{Ingest, KeySlot, Source};
use crate::keys::{Alg, SourceKeys};
use crate::normalize::Record;
use crate::replicas::Share;
use crate::set::EventKind;
use crate::storage::{Op, Tables};

/// Durable per-upstream state: `id` → [`Stored`] (JSON).
const TABLE: &str = "upstream_streams";

/// What survives a restart of the hub: the stream it registered (so it is reused, never created
/// twice), the credential it gave the transmitter for pushes, the discovered key location, and
/// when the stream was last verified (so a restart does not re-verify sooner than allowed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    stream_id: Option<String>,
    #[serde(default)]
    push_token: Option<String>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    verified_at: Option<u64>,
}

/// What `GET /admin/sources` shows of one source: an upstream (`managed`), or a push source
/// configured by hand in `[[sources]]` (only its traffic: no stream, status or verification).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub id: String,
    pub issuer: String,
    pub managed: bool,
    pub delivery: String,
    /// `starting`, `discovering`, `registering`, `ready`, `refused` (metadata or stream answer
    /// failed a check; retried later) or `error` (the transmitter could not be reached).
    pub state: String,
    pub stream_id: Option<String>,
    /// The transmitter's stream status: `enabled`, `paused` or `disabled`.
    pub stream_status: Option<String>,
    pub stream_status_reason: Option<String>,
    /// `unverified`, `pending`, `verified`, `failed`, or `unsupported` (no verification
    /// endpoint in the metadata).
    pub verification: String,
    pub verified_at: Option<u64>,
    pub min_verification_interval: Option<u64>,
    pub events_delivered: Vec<String>,
    pub last_event_at: Option<u64>,
    pub events_by_type: BTreeMap<String, u64>,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

/// One configured upstream transmitter and what the hub knows of it.
#[derive(Debug)]
pub struct Link {
    pub config: UpstreamConfig,
    keys: KeySlot,
    algorithms: Vec<Alg>,
    status: Mutex<Status>,
    stored: Mutex<Stored>,
    /// `state` values of verification requests still unanswered (the latest few).
    pending_states: Mutex<Vec<String>>,
    /// Counts verification SETs that matched a requested `state`.
    verified: watch::Sender<u64>,
}

#[derive(Debug)]
struct Inner {
    links: HashMap<String, Arc<Link>>,
    /// The `[[sources]]` configured by hand: their traffic only.
    configured: HashMap<String, Mutex<Status>>,
    settings: UpstreamSettings,
    jwks: JwksConfig,
    hub_issuer: String,
    tables: Arc<dyn Tables>,
    guard: Arc<Guard>,
    share: Share,
}

/// Every upstream link, shared by the reconcile tasks, ingest's control hook and the admin API.
#[derive(Debug, Clone)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

impl Upstreams {
    /// Loads (or creates) each upstream's durable state and builds the ingest [`Source`] its
    /// SETs are checked as. The push credential is generated once and kept, so the transmitter
    /// can keep pushing across restarts of the hub. With `shared_secret` (Kafka mode: the
    /// key-encryption key every replica has) it is derived from it instead, so replicas
    /// starting together cannot each store a different one and refuse the others' pushes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        configs: &[UpstreamConfig],
        configured: &[crate::config::SourceConfig],
        shared_secret: Option<[u8; 32]>,
        settings: UpstreamSettings,
        jwks: JwksConfig,
        hub_issuer: &str,
        tables: Arc<dyn Tables>,
        guard: Arc<Guard>,
        share: Share,
    ) -> Result<(Upstreams, Vec<Source>), String> {
        let mut links = HashMap::new();
        let mut sources = Vec::new();
        let client = manage::http_client(guard.clone(), settings.request_timeout_secs);
        for c in configs {
            let mut stored: Stored = match tables
                .get(TABLE, c.id.as_bytes())
                .map_err(|e| format!("upstream {:?}: reading state: {e}", c.id))?
            {
                Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                None => Stored::default(),
            };
            if let Some(token) = shared_secret.and_then(|k| derive_token(&k, &c.id)) {
                if stored.push_token.as_deref() != Some(token.as_str()) {
                    stored.push_token = Some(token);
                    save(&*tables, &c.id, &stored)
                        .map_err(|e| format!("upstream {:?}: saving state: {e}", c.id))?;
                }
            }
            if stored.push_token.is_none() {
                stored.push_token = Some(format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                ));
                save(&*tables, &c.id, &stored)
                    .map_err(|e| format!("upstream {:?}: saving state: {e}", c.id))?;
            }
            let algorithms: Vec<Alg> = c.algorithms.iter().filter_map(|a| Alg::parse(a)).collect();
            // Until discovery names the key set, nothing verifies (and pushes are refused with
            // a retryable key error); a key location discovered before is used at once.
            let keys = match &stored.jwks_uri {
                Some(uri) => SourceKeys::from_uri_with(
                    &c.id,
                    uri,
                    algorithms.clone(),
                    jwks.clone(),
                    client.clone(),
                ),
                None => SourceKeys::from_jwks(
                    &c.id,
                    br#"{"keys":[]}"#,
                    algorithms.clone(),
                    jwks.clone(),
                )
                .map_err(|e| e.to_string())?,
            };
            let keys = KeySlot::new(keys);
            let push = c.delivery == "push";
            sources.push(Source {
                id: c.id.clone(),
                issuer: c.issuer.clone(),
                audiences: c.audiences_or(hub_issuer),
                algorithms: algorithms.clone(),
                // Poll sources never push; without a credential nobody may push for them.
                authorization: Some(Secret::new(match (&stored.push_token, push) {
                    (Some(t), true) => format!("Bearer {t}"),
                    _ => format!("Bearer poll-only-{}", uuid::Uuid::new_v4().simple()),
                })),
                legacy: c.legacy,
                event_types: c
                    .event_types
                    .iter()
                    .filter_map(|t| EventKind::parse_name(t))
                    .collect(),
                owns: c.ownership(),
                keys: keys.clone(),
            });
            let status = Status {
                id: c.id.clone(),
                issuer: c.issuer.clone(),
                managed: true,
                delivery: c.delivery.clone(),
                state: "starting".into(),
                stream_id: stored.stream_id.clone(),
                verification: if stored.verified_at.is_some() {
                    "verified".into()
                } else {
                    "unverified".into()
                },
                verified_at: stored.verified_at,
                ..Status::default()
            };
            links.insert(
                c.id.clone(),
                Arc::new(Link {
                    config: c.clone(),
                    keys,
                    algorithms,
                    status: Mutex::new(status),
                    stored: Mutex::new(stored),
                    pending_states: Mutex::new(Vec::new()),
                    verified: watch::channel(0).0,
                }),
            );
        }
        let configured = configured
            .iter()
            .map(|c| {
                let status = Status {
                    id: c.id.clone(),
                    issuer: c.issuer.clone(),
                    delivery: "push".into(),
                    state: "configured".into(),
                    verification: "unsupported".into(),
                    ..Status::default()
                };
                (c.id.clone(), Mutex::new(status))
            })
            .collect();
        let upstreams = Upstreams {
            inner: Arc::new(Inner {
                links,
                configured,
                settings,
                jwks,
                hub_issuer: hub_issuer.to_owned(),
                tables,
                guard,
                share,
            }),
        };
        Ok((upstreams, sources))
    }

    pub fn is_empty(&self) -> bool {
        self.inner.links.is_empty()
    }

    /// Runs one reconcile task per upstream until `shutdown`. `ingest` (which holds these
    /// upstreams as its control hook, so they must not hold it) checks and appends polled SETs.
    pub async fn run(self, ingest: Ingest, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for link in self.inner.links.values() {
            tasks.spawn(reconcile::run(
                self.clone(),
                ingest.clone(),
                link.clone(),
                shutdown.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
    }

    pub fn statuses(&self) -> Vec<Status> {
        let mut out: Vec<Status> = self
            .inner
            .links
            .values()
            .map(|l| lock(&l.status).clone())
            .chain(self.inner.configured.values().map(|s| lock(s).clone()))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// HMAC-SHA256(secret, label ‖ id) in hex: the same push credential on every replica.
fn derive_token(secret: &[u8; 32], id: &str) -> Option<String> {
    let key = openssl::pkey::PKey::hmac(secret).ok()?;
    let mut mac = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).ok()?;
    mac.update(b"ssf-hub upstream push credential\0").ok()?;
    mac.update(id.as_bytes()).ok()?;
    let bytes = mac.sign_to_vec().ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn save(tables: &dyn Tables, id: &str, stored: &Stored) -> Result<(), String> {
    let value = serde_json::to_vec(stored).map_err(|e| e.to_string())?;
    tables
        .write(vec![Op::put(TABLE, id.as_bytes().to_vec(), value)])
        .and_then(|()| tables.sync())
        .map_err(|e| e.to_string())
}

impl Link {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.status));
    }

    /// Records a failure of `kind` (counted, shown with its message, logged, in metrics).
    fn error(&self, kind: &'static str, message: &str) {
        tracing::warn!(source = %self.config.id, kind, error = %message, "upstream");
        metrics::counter!(
            "ssf_hub_upstream_errors_total",
            "source" => self.config.id.clone(),
            "kind" => kind
        )
        .increment(1);
        self.update(|s| {
            *s.errors_by_kind.entry(kind.to_owned()).or_default() += 1;
            s.last_error = Some(format!("{kind}: {message}"));
            s.last_error_at = Some(crate::unix_now());
        });
    }

    fn set_state(&self, state: &str) {
        self.update(|s| s.state = state.to_owned());
    }

    /// The transmitter's status of the stream, from a status read or a stream-updated SET.
    fn stream_status(&self, status: &str, reason: Option<String>) {
        let status = crate::plain(status, 16);
        let reason = reason.map(|r| r.chars().take(200).collect::<String>());
        let changed = {
            let mut s = lock(&self.status);
            let changed = s.stream_status.as_deref() != Some(status.as_str());
            s.stream_status = Some(status.clone());
            s.stream_status_reason = reason.clone();
            changed
        };
        for value in ["enabled", "paused", "disabled"] {
            metrics::gauge!(
                "ssf_hub_upstream_stream_status",
                "source" => self.config.id.clone(),
                "status" => value
            )
            .set(if value == status { 1.0 } else { 0.0 });
        }
        if changed {
            if status == "enabled" {
                tracing::info!(source = %self.config.id, status, "upstream stream status");
            } else {
                tracing::warn!(source = %self.config.id, status, reason = ?reason, "upstream stream is not enabled");
            }
        }
    }

    fn stored(&self) -> Stored {
        lock(&self.stored).clone()
    }

    fn store(&self, up: &Upstreams, f: impl FnOnce(&mut Stored)) {
        let stored = {
            let mut s = lock(&self.stored);
            f(&mut s);
            s.clone()
        };
        if let Err(e) = save(&*up.inner.tables, &self.config.id, &stored) {
            self.error("storage", &e);
        }
    }

    fn mark_verified(&self, up: &Upstreams) {
        let now = crate::unix_now();
        self.store(up, |s| s.verified_at = Some(now));
        self.update(|s| {
            s.verification = "verified".into();
            s.verified_at = Some(now);
        });
        metrics::gauge!("ssf_hub_upstream_verified", "source" => self.config.id.clone()).set(1.0);
        tracing::info!(source = %self.config.id, "upstream stream verified");
        self.verified.send_modify(|n| *n += 1);
    }
}

impl crate::ingest::Control for Upstreams {
    fn handles(&self, source: &str) -> bool {
        self.inner.links.contains_key(source)
    }

    fn control(&self, source: &str, record: &Record) -> Result<(), Error> {
        let Some(link) = self.inner.links.get(source) else {
            return Ok(());
        };
        match EventKind::from_uri(&record.event_type) {
            Some(EventKind::Verification) => {
                let state = record.claims.get("state").and_then(Value::as_str);
                match state {
                    // Sent unprompted (SSF §8.1.4): the link is alive, nothing to match.
                    None => Ok(()),
                    Some(state) => {
                        let matched = {
                            let mut pending = lock(&link.pending_states);
                            let found = pending.iter().any(|s| s == state);
                            if found {
                                pending.clear();
                            }
                            found
                        };
                        if matched {
                            link.mark_verified(self);
                            Ok(())
                        } else {
                            link.error(
                                "verification",
                                "a verification SET carried a state the hub did not request",
                            );
                            Err(Error::InvalidState)
                        }
                    }
                }
            }
            Some(EventKind::StreamUpdated) => {
                let status = record
                    .claims
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                let reason = record
                    .claims
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                link.stream_status(status, reason);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn observe(&self, source: &str, event_type: &str, outcome: &str) {
        let status = match (
            self.inner.links.get(source),
            self.inner.configured.get(source),
        ) {
            (Some(link), _) => &link.status,
            (None, Some(status)) => status,
            // Never a name a client chose: ingest reports only configured sources.
            (None, None) => return,
        };
        let mut s = lock(status);
        match outcome {
            "accepted" | "duplicate" | "control" => {
                let now = crate::unix_now();
                metrics::gauge!("ssf_hub_source_last_event_timestamp_seconds", "source" => source.to_owned())
                    .set(now as f64);
                s.last_event_at = Some(now);
                if outcome == "accepted" {
                    *s.events_by_type.entry(event_type.to_owned()).or_default() += 1;
                }
            }
            other => *s.errors_by_kind.entry(format!("set_{other}")).or_default() += 1,
        }
    }
}

/// `GET /admin/sources` (admin token): the status of every upstream source.
#[derive(Debug, Clone)]
struct AdminApi {
    upstreams: Upstreams,
    admin: AdminToken,
}

impl FromRef<AdminApi> for AdminToken {
    fn from_ref(api: &AdminApi) -> AdminToken {
        api.admin.clone()
    }
}

pub fn routes(upstreams: Upstreams, admin: AdminToken) -> Router {
    Router::new()
        .route("/admin/sources", get(list_sources))
        .with_state(AdminApi { upstreams, admin })
}

async fn list_sources(_: Admin, State(api): State<AdminApi>) -> Json<Value> {
    Json(json!({ "sources": api.upstreams.statuses() }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn derived_push_credentials_are_stable_per_source_and_secret() {
        let a = super::derive_token(&[1; 32], "idp");
        assert_eq!(a, super::derive_token(&[1; 32], "idp"));
        assert_ne!(a, super::derive_token(&[1; 32], "idp2"));
        assert_ne!(a, super::derive_token(&[2; 32], "idp"));
        assert_eq!(a.map(|t| t.len()), Some(64));
    }
}
