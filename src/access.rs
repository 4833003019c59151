//! OAuth 2.0 access to the hub's own APIs: verifies RFC 9068 JWT access tokens from the
//! configured authorization server (keys through the JWKS cache in `keys`) and, for
//! DPoP-bound tokens, the RFC 9449 proof (signature by the `jwk` it carries, `htm`, `htu`,
//! `iat` window, `jti` replay, `ath`, and `cnf.jkt`). Answers with the token's `client_id` and
//! scopes; mapping them to a receiver is the extractors' job (`http`).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use josekit::jwk::Jwk;
use serde_json::{Map, Value};

use crate::config::{JwksConfig, OAuthConfig};
use crate::keys::{Alg, KeyError, SourceKeys};

/// The authorization scheme a token came with; errors answer in the same scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    DPoP,
}

/// Why an access token or proof was refused. Messages name the rule broken and never echo
/// token content.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("the access token is not valid: {0}")]
    Token(&'static str, Scheme),
    #[error("the DPoP proof is not valid: {0}")]
    Proof(&'static str),
    #[error("too many DPoP proofs are being remembered; retry shortly")]
    ReplayCacheFull,
}

/// What a verified access token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub client_id: String,
    pub scopes: Vec<String>,
}

/// The request a token is presented on, for the DPoP proof's `htm` and `htu`.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a str,
    /// The request path as the client sent it (before any router stripped a prefix).
    pub path: &'a str,
}

/// The verifier of one authorization server's access tokens.
#[derive(Debug)]
pub struct Access {
    issuer: String,
    audience: String,
    algorithms: Vec<Alg>,
    keys: SourceKeys,
    /// The hub's issuer URL: `htu` must be its origin with the request's path.
    base: reqwest::Url,
    skew: u64,
    max_age: u64,
    replay: Mutex<Replay>,
}

impl Access {
    /// The verifier `[oauth]` describes, or `None` when OAuth is off.
    pub fn from_config(
        oauth: &OAuthConfig,
        jwks: &JwksConfig,
        hub_issuer: &str,
    ) -> Result<Option<Access>, String> {
        let (Some(issuer), Some(jwks_uri)) = (&oauth.issuer, &oauth.jwks_uri) else {
            return Ok(None);
        };
        let algorithms: Vec<Alg> = oauth
            .algorithms
            .iter()
            .filter_map(|a| Alg::parse(a))
            .collect();
        let base = reqwest::Url::parse(hub_issuer).map_err(|e| format!("issuer: {e}"))?;
        Ok(Some(Access {
            issuer: issuer.clone(),
            audience: oauth
                .audience
                .clone()
                .unwrap_or_else(|| hub_issuer.to_owned()),
            keys: SourceKeys::from_uri("oauth", jwks_uri, algorithms.clone(), jwks.clone()),
            algorithms,
            base,
            skew: oauth.clock_skew_secs,
            max_age: oauth.dpop_max_age_secs,
            replay: Mutex::new(Replay::new(oauth.dpop_replay_capacity)),
        }))
    }

    /// Verifies `token` presented with `scheme` (and, for DPoP, `proof`) on `target`.
    pub async fn verify(
        &self,
        scheme: Scheme,
        token: &str,
        proof: Option<&str>,
        target: Target<'_>,
    ) -> Result<Grant, AccessError> {
        let bad = |why| AccessError::Token(why, scheme);
        let jws = Jws::parse(token, &self.algorithms).map_err(bad)?;
        match jws.header.get("typ").and_then(Value::as_str) {
            // RFC 9068 §4: `at+jwt`; the full media type is the same thing (RFC 7515 §4.1.9).
            Some(t)
                if t.eq_ignore_ascii_case("at+jwt")
                    || t.eq_ignore_ascii_case("application/at+jwt") => {}
            _ => return Err(bad("the JOSE header `typ` must be `at+jwt`")),
        }
        let kid = match jws.header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(bad("`kid` must be a string")),
        };
        let key = self.keys.key(kid).await.map_err(|e| match e {
            KeyError::UnknownKey => bad("no key of the authorization server matches its `kid`"),
            KeyError::Unavailable => bad("the authorization server's keys are unavailable"),
        })?;
        let verifier = key
            .verifier(jws.alg)
            .ok_or_else(|| bad("no key of the authorization server matches its `kid`"))?;
        verifier
            .verify(jws.signing_input.as_bytes(), &jws.signature)
            .map_err(|_| bad("the signature does not verify"))?;
        let claims = &jws.claims;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(bad("`iss` is not the configured authorization server"));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&self.audience)),
            _ => false,
        };
        if !aud_ok {
            return Err(bad("`aud` does not name this hub"));
        }
        let now = crate::unix_now();
        let exp =
            numeric(claims, "exp").ok_or_else(|| bad("`exp` is missing or not a NumericDate"))?;
        if now >= exp.saturating_add(self.skew) {
            return Err(bad("the token has expired"));
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = v
                .as_u64()
                .ok_or_else(|| bad("`nbf` is not a NumericDate"))?;
            if nbf > now.saturating_add(self.skew) {
                return Err(bad("the token is not valid yet (`nbf`)"));
            }
        }
        let iat =
            numeric(claims, "iat").ok_or_else(|| bad("`iat` is missing or not a NumericDate"))?;
        if iat > now.saturating_add(self.skew) {
            return Err(bad("`iat` lies in the future"));
        }
        let client_id = match claims.get("client_id") {
            Some(Value::String(c)) if !c.is_empty() && c.len() <= 256 => c.clone(),
            _ => return Err(bad("`client_id` is missing")),
        };
        let scopes = match claims.get("scope") {
            None => Vec::new(),
            Some(Value::String(s)) => s.split_ascii_whitespace().map(String::from).collect(),
            Some(_) => return Err(bad("`scope` must be a space-separated string")),
        };
        let jkt = match claims.get("cnf").map(|c| c.get("jkt")) {
            None => None,
            Some(Some(Value::String(j))) => Some(j.as_str()),
            Some(_) => return Err(bad("`cnf` must carry a `jkt` string")),
        };
        match (scheme, jkt) {
            // RFC 9449 §7.2: a bound token presented as a bearer token is refused, or stealing
            // it would be enough to use it.
            (Scheme::Bearer, Some(_)) => {
                return Err(bad(
                    "a DPoP-bound token must be presented with the DPoP scheme",
                ))
            }
            (Scheme::Bearer, None) => {}
            (Scheme::DPoP, None) => return Err(bad("the token is not DPoP-bound (`cnf.jkt`)")),
            (Scheme::DPoP, Some(jkt)) => {
                let proof = proof.ok_or(AccessError::Proof("the DPoP header is missing"))?;
                self.check_proof(proof, token, jkt, target, now)?;
            }
        }
        Ok(Grant { client_id, scopes })
    }

    /// RFC 9449 §4.3: the checks on a proof, replay last so that only proofs that are
    /// otherwise valid take a place in the replay cache.
    fn check_proof(
        &self,
        proof: &str,
        token: &str,
        jkt: &str,
        target: Target<'_>,
        now: u64,
    ) -> Result<(), AccessError> {
        let bad = AccessError::Proof;
        let jws = Jws::parse(proof, &self.algorithms).map_err(bad)?;
        if !jws
            .header
            .get("typ")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
        {
            return Err(bad("the JOSE header `typ` must be `dpop+jwt`"));
        }
        let Some(Value::Object(jwk)) = jws.header.get("jwk") else {
            return Err(bad("the JOSE header must carry the public `jwk`"));
        };
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|m| jwk.contains_key(*m))
        {
            return Err(bad("the `jwk` must be a public key"));
        }
        let verifier = Jwk::from_map(jwk.clone())
            .ok()
            .and_then(|k| jws.alg.verifier(&k))
            .ok_or(bad("the `jwk` does not fit the algorithm"))?;
        verifier
            .verify(jws.signing_input.as_bytes(), &jws.signature)
            .map_err(|_| bad("the signature does not verify with its `jwk`"))?;
        let c = &jws.claims;
        let jti = match c.get("jti") {
            Some(Value::String(j)) if !j.is_empty() && j.len() <= 256 => j,
            _ => return Err(bad("`jti` is missing")),
        };
        if c.get("htm").and_then(Value::as_str) != Some(target.method) {
            return Err(bad("`htm` is not the request's method"));
        }
        if !self.htu_matches(c.get("htu").and_then(Value::as_str), target.path) {
            return Err(bad("`htu` is not the request's URL"));
        }
        let iat = numeric(c, "iat").ok_or(bad("`iat` is missing or not a NumericDate"))?;
        if iat > now.saturating_add(self.skew) || iat.saturating_add(self.max_age) < now {
            return Err(bad("`iat` is outside the accepted window"));
        }
        let ath = URL_SAFE_NO_PAD.encode(openssl::sha::sha256(token.as_bytes()));
        if c.get("ath").and_then(Value::as_str) != Some(ath.as_str()) {
            return Err(bad("`ath` is not the hash of the access token"));
        }
        if crate::sign::thumbprint(jwk) != jkt {
            return Err(bad("the proof's key is not the one the token is bound to"));
        }
        let mut seen = Vec::with_capacity(jkt.len() + jti.len() + 1);
        seen.extend_from_slice(jkt.as_bytes());
        seen.push(0);
        seen.extend_from_slice(jti.as_bytes());
        let key = openssl::sha::sha256(&seen);
        // Remembered until the proof's `iat` leaves the window (skew included).
        let until = iat
            .saturating_add(self.max_age)
            .saturating_add(self.skew)
            .max(now);
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, until, now)
    }

    /// `htu` without query and fragment (RFC 9449 §4.3 step 9) equals the hub's origin with the
    /// request's path. `Url` normalises scheme and host case and default ports on both sides.
    fn htu_matches(&self, htu: Option<&str>, path: &str) -> bool {
        let Some(mut got) = htu.and_then(|h| reqwest::Url::parse(h).ok()) else {
            return false;
        };
        got.set_query(None);
        got.set_fragment(None);
        // A websocket client may name the URL it dialled (`ws`/`wss`); the request is the same
        // HTTP GET (RFC 6455 §3).
        let http = match got.scheme() {
            "ws" => Some("http"),
            "wss" => Some("https"),
            _ => None,
        };
        if let Some(scheme) = http {
            if got.set_scheme(scheme).is_err() {
                return false;
            }
        }
        let mut want = self.base.clone();
        want.set_path(path);
        want.set_query(None);
        want.set_fragment(None);
        got == want
    }
}

/// A non-negative integer NumericDate claim.
fn numeric(claims: &Map<String, Value>, name: &str) -> Option<u64> {
    match claims.get(name)? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

/// A compact JWS split and decoded, before any signature check.
struct Jws<'a> {
    alg: Alg,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    fn parse(text: &'a str, allowed: &[Alg]) -> Result<Jws<'a>, &'static str> {
        let mut parts = text.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS");
        };
        let object = |part: &str| -> Option<Map<String, Value>> {
            match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()? {
                Value::Object(m) => Some(m),
                _ => None,
            }
        };
        let header = object(h).ok_or("bad JOSE header")?;
        let claims = object(p).ok_or("bad claims")?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Alg::parse)
            .filter(|a| allowed.contains(a))
            .ok_or("the algorithm is not allowed")?;
        if header.contains_key("crit") {
            return Err("no critical header parameter is supported");
        }
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "bad signature encoding")?;
        Ok(Jws {
            alg,
            header,
            claims,
            signing_input: &text[..h.len() + 1 + p.len()],
            signature,
        })
    }
}

/// Proof `jti`s seen and not yet expired, bounded: when full of live entries it refuses new
/// ones rather than forget one early (forgetting would let that proof be replayed).
#[derive(Debug)]
struct Replay {
    seen: HashSet<[u8; 32]>,
    /// In insertion order with their expiry; expired entries leave from the front.
    order: VecDeque<(u64, [u8; 32])>,
    capacity: usize,
}

impl Replay {
    fn new(capacity: usize) -> Replay {
        Replay {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn insert(&mut self, key: [u8; 32], until: u64, now: u64) -> Result<(), AccessError> {
        while let Some(&(expiry, old)) = self.order.front() {
            if expiry >= now {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if self.seen.contains(&key) {
            metrics::counter!("ssf_hub_dpop_replays_total").increment(1);
            return Err(AccessError::Proof(
                "the proof was used before (`jti` replay)",
            ));
        }
        if self.seen.len() >= self.capacity {
            return Err(AccessError::ReplayCacheFull);
        }
        self.seen.insert(key);
        self.order.push_back((until, key));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(hub_issuer: &str) -> Access {
        let oauth = OAuthConfig {
            issuer: Some("https://as.test".into()),
            jwks_uri: Some("https://as.test/jwks".into()),
            audience: None,
            algorithms: vec!["ES256".into()],
            clock_skew_secs: 60,
            dpop_max_age_secs: 300,
            dpop_replay_capacity: 1000,
        };
        let jwks = JwksConfig {
            min_cache_secs: 300,
            max_cache_secs: 3600,
            refresh_cooldown_secs: 60,
            fetch_timeout_secs: 5,
            max_bytes: 65536,
            refresh_wait_ms: 1000,
        };
        Access::from_config(&oauth, &jwks, hub_issuer)
            .expect("valid")
            .expect("configured")
    }

    #[test]
    fn htu_is_the_issuer_origin_with_the_request_path() {
        let a = access("https://hub.test/tenant");
        assert_eq!(
            a.audience, "https://hub.test/tenant",
            "aud defaults to the issuer"
        );
        let path = "/tenant/ssf/streams";
        for ok in [
            "https://hub.test/tenant/ssf/streams",
            "https://HUB.test:443/tenant/ssf/streams?stream_id=1#x",
            "wss://hub.test/tenant/ssf/streams",
        ] {
            assert!(a.htu_matches(Some(ok), path), "{ok}");
        }
        for bad in [
            "http://hub.test/tenant/ssf/streams",
            "https://hub.test:8443/tenant/ssf/streams",
            "https://evil.test/tenant/ssf/streams",
            "https://hub.test/ssf/streams",
            "https://hub.test/tenant/ssf/status",
            "not a url",
        ] {
            assert!(!a.htu_matches(Some(bad), path), "{bad}");
        }
        assert!(!a.htu_matches(None, path));
    }

    #[test]
    fn replay_cache_refuses_repeats_and_forgets_only_expired_entries() {
        let mut r = Replay::new(2);
        assert!(r.insert([1; 32], 100, 10).is_ok());
        assert!(matches!(
            r.insert([1; 32], 100, 11),
            Err(AccessError::Proof(_))
        ));
        assert!(r.insert([2; 32], 100, 12).is_ok());
        assert!(matches!(
            r.insert([3; 32], 100, 13),
            Err(AccessError::ReplayCacheFull)
        ));
        // Once the first two expire, there is room again, and they may not come back early.
        assert!(r.insert([3; 32], 300, 101).is_ok());
        assert!(matches!(
            r.insert([3; 32], 300, 102),
            Err(AccessError::Proof(_))
        ));
    }
}
