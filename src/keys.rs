//! Source public keys: a JWKS from a file or fetched from `jwks_uri`, cached per the digest
//! §11.3 (Cache-Control within a floor and ceiling, one rate-limited forced refresh on an
//! unknown `kid`, stale keys kept while the issuer is unreachable). Turns JWKs into ready
//! verifiers; does not know what a SET is.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use josekit::jwk::Jwk;
use josekit::jws::{self, JwsVerifier};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Asymmetric JWS algorithms the hub can verify. HMAC and `none` are deliberately absent: a
/// source's keys are public, so a MAC "verified" with them proves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    ES256,
    ES384,
    ES512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    EdDSA,
}

impl Alg {
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "ES512" => Alg::ES512,
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    /// A verifier for this algorithm from a public JWK, or `None` if the key does not fit it
    /// (josekit checks `kty`, `crv`, `use`, `key_ops` and a JWK `alg` against the algorithm).
    pub fn verifier(self, jwk: &Jwk) -> Option<Box<dyn JwsVerifier>> {
        fn boxed<V: JwsVerifier + 'static>(
            v: Result<V, josekit::JoseError>,
        ) -> Option<Box<dyn JwsVerifier>> {
            v.ok().map(|v| Box::new(v) as Box<dyn JwsVerifier>)
        }
        match self {
            Alg::ES256 => boxed(jws::ES256.verifier_from_jwk(jwk)),
            Alg::ES384 => boxed(jws::ES384.verifier_from_jwk(jwk)),
            Alg::ES512 => boxed(jws::ES512.verifier_from_jwk(jwk)),
            Alg::RS256 => boxed(jws::RS256.verifier_from_jwk(jwk)),
            Alg::RS384 => boxed(jws::RS384.verifier_from_jwk(jwk)),
            Alg::RS512 => boxed(jws::RS512.verifier_from_jwk(jwk)),
            Alg::PS256 => boxed(jws::PS256.verifier_from_jwk(jwk)),
            Alg::PS384 => boxed(jws::PS384.verifier_from_jwk(jwk)),
            Alg::PS512 => boxed(jws::PS512.verifier_from_jwk(jwk)),
            Alg::EdDSA => boxed(jws::EdDSA.verifier_from_jwk(jwk)),
        }
    }
}

/// Limits of JWKS caching and fetching (`[jwks]` in the configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    pub min_cache_secs: u64,
    pub max_cache_secs: u64,
    pub refresh_cooldown_secs: u64,
    pub fetch_timeout_secs: u64,
    pub max_bytes: usize,
    /// How long a SET whose key is not cached waits for a refresh already in flight.
    pub refresh_wait_ms: u64,
}

/// One public key with a verifier per algorithm it may be used with.
#[derive(Debug)]
pub struct PublicKey {
    verifiers: Vec<(Alg, Box<dyn JwsVerifier>)>,
}

impl PublicKey {
    /// The verifier for `alg`, or `None` when this key may not be used with it.
    pub fn verifier(&self, alg: Alg) -> Option<&dyn JwsVerifier> {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v.as_ref())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key matches the SET's kid")]
    UnknownKey,
    #[error("the source's keys could not be loaded")]
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("JWKS request failed: {0}")]
    Http(String),
    #[error("JWKS endpoint answered HTTP {0}")]
    Status(u16),
    #[error("JWKS is larger than jwks.max_bytes")]
    TooLarge,
    #[error("JWKS is not a JSON object with a `keys` array")]
    Malformed,
    #[error("reading JWKS file: {0}")]
    File(String),
}

/// A parsed key set. Keys without a `kid` are kept apart: they are used only when a SET has no
/// `kid` and they are the sole candidate (digest §2.1).
#[derive(Debug, Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<PublicKey>>,
    anonymous: Vec<Arc<PublicKey>>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<Arc<PublicKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => match (self.by_kid.len(), self.anonymous.as_slice()) {
                (0, [only]) => Some(only.clone()),
                (1, []) => self.by_kid.values().next().cloned(),
                _ => None,
            },
        }
    }

    /// Parses a JWKS document, skipping keys that cannot verify any allowed algorithm (wrong
    /// `use`, private material, unsupported type). Skipped keys are counted, not fatal: one odd
    /// key must not take a whole issuer offline.
    fn parse(body: &[u8], allowed: &[Alg]) -> Result<KeySet, FetchError> {
        let doc: Value = serde_json::from_slice(body).map_err(|_| FetchError::Malformed)?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(FetchError::Malformed)?;
        let mut set = KeySet::default();
        for key in keys {
            let Some(map) = key.as_object() else { continue };
            let Some(public) = public_key(map, allowed) else {
                metrics::counter!("ssf_hub_jwks_keys_skipped_total").increment(1);
                continue;
            };
            match map.get("kid").and_then(Value::as_str) {
                Some(kid) => {
                    set.by_kid.insert(kid.to_owned(), Arc::new(public));
                }
                None => set.anonymous.push(Arc::new(public)),
            }
        }
        Ok(set)
    }
}

fn public_key(map: &Map<String, Value>, allowed: &[Alg]) -> Option<PublicKey> {
    // Private members mean someone published a private key; refuse to use it at all.
    if ["d", "p", "q", "k"].iter().any(|m| map.contains_key(*m)) {
        return None;
    }
    let jwk = Jwk::from_map(map.clone()).ok()?;
    let verifiers: Vec<_> = allowed
        .iter()
        .filter_map(|alg| alg.verifier(&jwk).map(|v| (*alg, v)))
        .collect();
    (!verifiers.is_empty()).then_some(PublicKey { verifiers })
}

#[derive(Debug)]
enum Origin {
    File,
    Uri {
        url: String,
        client: reqwest::Client,
    },
}

#[derive(Debug)]
struct Cached {
    keys: KeySet,
    /// When the cache should be refreshed; in the past for a never-loaded remote set.
    refresh_at: Instant,
    loaded: bool,
}

/// The keys of one source.
///
/// Requests never wait for the issuer: a SET whose key is cached is verified with it, even when
/// the cache is due for a refresh (the refresh runs in the background, one at a time per source).
/// A `kid` not in the cache, or a source whose keys were never loaded, starts at most one
/// rate-limited background refresh and waits for a refresh in flight at most
/// `jwks.refresh_wait_ms`, then is answered from the cache. So a hanging key endpoint costs a
/// request at most that wait, never the fetch timeout.
#[derive(Debug, Clone)]
pub struct SourceKeys {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source_id: String,
    origin: Origin,
    allowed: Vec<Alg>,
    cfg: JwksConfig,
    cache: RwLock<Cached>,
    /// `true` while a fetch is in flight: the single flight, and what waiters watch.
    refreshing: tokio::sync::watch::Sender<bool>,
    /// When the last refresh forced by an unknown `kid` started (the cool-down).
    last_forced: std::sync::Mutex<Option<Instant>>,
}

impl SourceKeys {
    fn new(
        source_id: &str,
        origin: Origin,
        allowed: Vec<Alg>,
        cfg: JwksConfig,
        cached: Cached,
    ) -> Self {
        SourceKeys {
            inner: Arc::new(Inner {
                source_id: source_id.to_owned(),
                origin,
                allowed,
                cfg,
                cache: RwLock::new(cached),
                refreshing: tokio::sync::watch::channel(false).0,
                last_forced: Default::default(),
            }),
        }
    }

    /// Keys from a local JWKS file, read once at start-up.
    pub fn from_file(
        source_id: &str,
        path: &Path,
        allowed: Vec<Alg>,
        cfg: JwksConfig,
    ) -> Result<SourceKeys, FetchError> {
        let body = std::fs::read(path).map_err(|e| FetchError::File(e.to_string()))?;
        SourceKeys::from_jwks(source_id, &body, allowed, cfg)
    }

    /// Keys from a JWKS document held in memory; like a file, never refreshed (the fuzz targets
    /// and tools that verify against a fixed key set use it).
    pub fn from_jwks(
        source_id: &str,
        jwks: &[u8],
        allowed: Vec<Alg>,
        cfg: JwksConfig,
    ) -> Result<SourceKeys, FetchError> {
        let keys = KeySet::parse(jwks, &allowed)?;
        let cached = Cached {
            keys,
            refresh_at: far_future(),
            loaded: true,
        };
        Ok(SourceKeys::new(
            source_id,
            Origin::File,
            allowed,
            cfg,
            cached,
        ))
    }

    /// Keys fetched lazily from `url` and cached.
    pub fn from_uri(source_id: &str, url: &str, allowed: Vec<Alg>, cfg: JwksConfig) -> SourceKeys {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.fetch_timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ssf-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        SourceKeys::from_uri_with(source_id, url, allowed, cfg, client)
    }

    /// As [`SourceKeys::from_uri`], fetching with `client` (an upstream transmitter's keys go
    /// through the SSRF-guarded client its metadata came through).
    pub fn from_uri_with(
        source_id: &str,
        url: &str,
        allowed: Vec<Alg>,
        cfg: JwksConfig,
        client: reqwest::Client,
    ) -> SourceKeys {
        let origin = Origin::Uri {
            url: url.to_owned(),
            client,
        };
        let cached = Cached {
            keys: KeySet::default(),
            refresh_at: Instant::now(),
            loaded: false,
        };
        SourceKeys::new(source_id, origin, allowed, cfg, cached)
    }

    /// Loads a remote key set that has never been loaded (start-up warm-up), so the first SET
    /// does not wait for the fetch. Waits for the fetch (bounded by `jwks.fetch_timeout_secs`).
    pub async fn warm(&self) {
        if matches!(self.inner.origin, Origin::Uri { .. }) && !self.inner.lookup(None).2 {
            self.inner.start_refresh();
            let mut rx = self.inner.refreshing.subscribe();
            let _ = rx.wait_for(|busy| !*busy).await;
        }
    }

    /// Finds the key for `kid`. A cached key is returned at once (a due refresh starts in the
    /// background). Otherwise at most one refresh per cool-down is started, and the answer comes
    /// from the cache after waiting at most `jwks.refresh_wait_ms` for a refresh in flight.
    pub async fn key(&self, kid: Option<&str>) -> Result<Arc<PublicKey>, KeyError> {
        let inner = &self.inner;
        let (found, stale, loaded) = inner.lookup(kid);
        if let Some(key) = found {
            if stale {
                inner.start_refresh();
            }
            return Ok(key);
        }
        if matches!(inner.origin, Origin::File) {
            return Err(KeyError::UnknownKey);
        }
        if stale || !loaded {
            // Due anyway; a failed fetch pushes `refresh_at` a cool-down ahead, so an
            // unreachable issuer is retried at most once per cool-down.
            inner.start_refresh();
        } else if inner.cool_down_passed() {
            metrics::counter!("ssf_hub_jwks_forced_refresh_total").increment(1);
            inner.start_refresh();
        }
        let wait = Duration::from_millis(inner.cfg.refresh_wait_ms);
        if !wait.is_zero() {
            let mut rx = inner.refreshing.subscribe();
            let _ = tokio::time::timeout(wait, rx.wait_for(|busy| !*busy)).await;
        }
        match inner.lookup(kid) {
            (Some(key), _, _) => Ok(key),
            (None, _, false) => Err(KeyError::Unavailable),
            (None, _, true) => Err(KeyError::UnknownKey),
        }
    }
}

/// Clears the in-flight flag however the refresh task ends (a panic, or dropped before it ran),
/// so a source can never be stuck with a refresh that nobody runs.
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.refreshing.send_replace(false);
    }
}

impl Inner {
    fn lookup(&self, kid: Option<&str>) -> (Option<Arc<PublicKey>>, bool, bool) {
        let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
        (c.keys.find(kid), c.refresh_at <= Instant::now(), c.loaded)
    }

    /// Whether an unknown `kid` may force a refresh now; if so, starts the cool-down.
    fn cool_down_passed(&self) -> bool {
        let mut last = self.last_forced.lock().unwrap_or_else(|p| p.into_inner());
        let cooled =
            last.is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.refresh_cooldown_secs));
        if cooled {
            *last = Some(Instant::now());
        }
        cooled
    }

    /// Starts a background fetch unless one is already in flight (single flight per source).
    fn start_refresh(self: &Arc<Self>) {
        if !matches!(self.origin, Origin::Uri { .. }) {
            return;
        }
        let started = self
            .refreshing
            .send_if_modified(|busy| !std::mem::replace(busy, true));
        if started {
            let in_flight = InFlight(self.clone());
            tokio::spawn(async move { in_flight.0.refresh().await });
        }
    }

    /// Fetches the JWKS once. On failure the old keys stay in use and the next attempt waits for
    /// the refresh cool-down, so an unreachable issuer is neither fatal nor hammered.
    async fn refresh(&self) {
        let Origin::Uri { url, client } = &self.origin else {
            return;
        };
        let started = Instant::now();
        let result = fetch(client, url, self.cfg.max_bytes).await;
        let outcome = match result {
            Ok((body, max_age)) => match KeySet::parse(&body, &self.allowed) {
                Ok(keys) => {
                    let ttl = max_age
                        .unwrap_or(self.cfg.min_cache_secs)
                        .clamp(self.cfg.min_cache_secs, self.cfg.max_cache_secs);
                    let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
                    *c = Cached {
                        keys,
                        refresh_at: Instant::now() + Duration::from_secs(ttl),
                        loaded: true,
                    };
                    "ok"
                }
                Err(e) => {
                    self.note_failure(&e);
                    "error"
                }
            },
            Err(e) => {
                self.note_failure(&e);
                "error"
            }
        };
        metrics::counter!("ssf_hub_jwks_fetch_total", "source" => self.source_id.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("ssf_hub_jwks_fetch_seconds").record(started.elapsed().as_secs_f64());
    }

    fn note_failure(&self, e: &FetchError) {
        tracing::warn!(source = %self.source_id, error = %e, "JWKS refresh failed; keeping cached keys");
        let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
        c.refresh_at = Instant::now() + Duration::from_secs(self.cfg.refresh_cooldown_secs);
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    max_bytes: usize,
) -> Result<(Vec<u8>, Option<u64>), FetchError> {
    let mut resp = client
        .get(url)
        .header("accept", "application/jwk-set+json, application/json")
        .send()
        .await
        .map_err(|e| FetchError::Http(e.without_url().to_string()))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Status(resp.status().as_u16()));
    }
    let max_age = resp
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(cache_max_age);
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Http(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, max_age))
}

/// Seconds the response may be cached: `max-age`, or 0 for `no-store`/`no-cache` (the caller
/// raises it to the floor; a JWKS that may never be cached would mean a fetch per SET).
fn cache_max_age(header: &str) -> Option<u64> {
    let mut max_age = None;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            max_age = v.trim_matches('"').parse().ok();
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::cache_max_age;

    #[test]
    fn cache_control_is_read_leniently() {
        assert_eq!(cache_max_age("public, max-age=600"), Some(600));
        assert_eq!(cache_max_age("Max-Age=\"30\""), Some(30));
        assert_eq!(cache_max_age("no-store"), Some(0));
        assert_eq!(cache_max_age("private"), None);
    }
}
