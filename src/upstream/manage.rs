//! The client of a transmitter's management API (SSF §8): its credential (a static bearer
//! token, or an OAuth 2.0 client-credentials token fetched and cached), JSON calls with a
//! deadline through the SSRF guard and a size cap, and the checks of a stream answer
//! (`iss`, `aud`, `events_delivered`, `delivery`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use crate::config::{Secret, UpstreamConfig, UpstreamOAuthConfig};
use crate::guard::Guard;

/// Largest answer read: a poll answer carries up to `upstream.poll_max_events` SETs.
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// Why a call failed. `Status` carries `Retry-After` seconds when the transmitter sent them.
#[derive(Debug)]
pub enum CallError {
    Transport(String),
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    Answer(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "request failed: {e}"),
            CallError::Status { status, .. } => write!(f, "answered HTTP {status}"),
            CallError::Answer(e) => write!(f, "unusable answer: {e}"),
        }
    }
}

impl CallError {
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            CallError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The SSRF-guarded client every upstream request goes through (no proxy, no redirects).
pub fn http_client(guard: Arc<Guard>, timeout_secs: u64) -> reqwest::Client {
    crate::delivery::clients::guarded(guard, Duration::from_secs(timeout_secs))
}

#[derive(Debug)]
enum Credential {
    Bearer(Secret),
    OAuth(UpstreamOAuthConfig),
}

/// A management-API client for one transmitter.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    guard: Arc<Guard>,
    credential: Credential,
    /// The cached client-credentials token and when to fetch a new one.
    token: Mutex<Option<(Secret, Instant)>>,
}

impl Client {
    pub fn new(http: reqwest::Client, guard: Arc<Guard>, config: &UpstreamConfig) -> Client {
        let credential = match (&config.bearer_token, &config.oauth) {
            (_, Some(o)) => Credential::OAuth(o.clone()),
            (Some(t), None) => Credential::Bearer(t.clone()),
            // Config validation requires one of them.
            (None, None) => Credential::Bearer(Secret::new(String::new())),
        };
        Client {
            http,
            guard,
            credential,
            token: Mutex::new(None),
        }
    }

    /// Forgets a cached access token (after a 401), so the next call fetches a new one.
    pub fn reset_token(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn authorization(&self) -> Result<String, CallError> {
        let oauth = match &self.credential {
            Credential::Bearer(t) => return Ok(format!("Bearer {}", t.expose())),
            Credential::OAuth(o) => o,
        };
        if let Some((token, until)) = &*self.token.lock().unwrap_or_else(|p| p.into_inner()) {
            if Instant::now() < *until {
                return Ok(format!("Bearer {}", token.expose()));
            }
        }
        let mut form =
            Url::parse("http://form.invalid/").map_err(|e| CallError::Answer(e.to_string()))?;
        form.query_pairs_mut()
            .append_pair("grant_type", "client_credentials");
        if !oauth.scopes.is_empty() {
            form.query_pairs_mut()
                .append_pair("scope", &oauth.scopes.join(" "));
        }
        let body = form.query().unwrap_or_default().to_owned();
        let url = self.url(&oauth.token_endpoint)?;
        let req = self
            .http
            .post(url)
            .basic_auth(&oauth.client_id, Some(oauth.client_secret.expose()))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body);
        let doc = self.send(req).await?.1;
        let token = doc
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| CallError::Answer("token answer has no access_token".into()))?;
        let lifetime = doc.get("expires_in").and_then(Value::as_u64).unwrap_or(300);
        // Renew a little early so a token never expires on its way.
        let until = Instant::now() + Duration::from_secs(lifetime.saturating_sub(30).max(5));
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Secret::new(token.to_owned()), until));
        Ok(format!("Bearer {token}"))
    }

    fn url(&self, url: &str) -> Result<Url, CallError> {
        let parsed = Url::parse(url).map_err(|_| CallError::Answer("not a URL".into()))?;
        // IP literals never reach the guarded resolver.
        if !self.guard.permits_url(&parsed) {
            return Err(CallError::Transport(
                "the URL is an address the hub may not reach".into(),
            ));
        }
        Ok(parsed)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), CallError> {
        let mut resp = req
            .send()
            .await
            .map_err(|e| CallError::Transport(without_url(e)))?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            return Err(CallError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| CallError::Transport(without_url(e)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER_BYTES {
                return Err(CallError::Answer("the answer is too large".into()));
            }
        }
        if body.is_empty() || status == StatusCode::NO_CONTENT {
            return Ok((status.as_u16(), Value::Null));
        }
        let doc = serde_json::from_slice(&body)
            .map_err(|_| CallError::Answer("the answer is not JSON".into()))?;
        Ok((status.as_u16(), doc))
    }

    /// GET without credentials (transmitter metadata).
    pub async fn get_public(&self, url: Url) -> Result<Value, CallError> {
        let url = self.url(url.as_str())?;
        let req = self.http.get(url).header("accept", "application/json");
        Ok(self.send(req).await?.1)
    }

    /// One authenticated JSON call; a 401 drops a cached OAuth token and is tried once more.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        query: Option<(&str, &str)>,
        body: Option<&Value>,
        timeout: Option<Duration>,
        extra: &[(&str, &str)],
    ) -> Result<(u16, Value), CallError> {
        let mut url = self.url(url)?;
        if let Some((k, v)) = query {
            url.query_pairs_mut().append_pair(k, v);
        }
        for attempt in 0..2 {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header("authorization", self.authorization().await?)
                .header("accept", "application/json");
            for (k, v) in extra {
                req = req.header(*k, *v);
            }
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            match self.send(req).await {
                Err(CallError::Status { status: 401, .. })
                    if attempt == 0 && matches!(self.credential, Credential::OAuth(_)) =>
                {
                    self.reset_token();
                }
                other => return other,
            }
        }
        Err(CallError::Status {
            status: 401,
            retry_after: None,
        })
    }
}

/// A transport error's text without the URL (which may carry a query the operator set).
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    kind.to_owned()
}

/// What the hub asks of its stream there.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The delivery-method URI as the transmitter spells it.
    pub method: String,
    /// Push: the hub's ingest URL and the header the transmitter must send.
    pub push: Option<(String, String)>,
    pub events_requested: Vec<String>,
    pub description: String,
}

impl Desired {
    /// The receiver-supplied fields (SSF §8.1.1), for create and replace.
    pub fn body(&self) -> Value {
        let mut delivery = json!({ "method": self.method });
        if let Some((url, auth)) = &self.push {
            delivery["endpoint_url"] = json!(url);
            delivery["authorization_header"] = json!(auth);
        }
        json!({
            "delivery": delivery,
            "events_requested": self.events_requested,
            "description": self.description,
        })
    }
}

/// A stream answer that passed the checks.
#[derive(Debug, Clone)]
pub struct Stream {
    pub stream_id: String,
    pub method: String,
    pub endpoint_url: Option<String>,
    pub events_requested: Vec<String>,
    pub events_delivered: Vec<String>,
    pub min_verification_interval: Option<u64>,
    pub description: Option<String>,
}

/// Checks a configuration-returning answer (SSF §8.1.1.1–§8.1.1.4, digest §8.3): `iss` equals
/// the issuer, `aud` names this hub, `events_delivered` is present, `delivery` is what was
/// asked for (`wanted_method`; `None` for a stream found before it is brought up to date).
/// Legacy sources may answer with pre-1.0 delivery spellings.
pub fn check_stream(
    doc: &Value,
    config: &UpstreamConfig,
    audiences: &[String],
    wanted_method: Option<&str>,
) -> Result<Stream, String> {
    let stream_id = doc
        .get("stream_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("the stream answer has no `stream_id`")?;
    let iss = doc.get("iss").and_then(Value::as_str).unwrap_or_default();
    if iss != config.issuer {
        return Err(format!(
            "the stream answer `iss` {:?} is not the issuer {:?}",
            crate::plain(iss, 200),
            config.issuer
        ));
    }
    let aud: Vec<&str> = match doc.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !aud.iter().any(|a| audiences.iter().any(|x| x == a)) {
        return Err(format!(
            "the stream answer `aud` does not name this hub (expected one of {audiences:?})"
        ));
    }
    let strings = |k: &str| -> Option<Vec<String>> {
        doc.get(k).and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
    };
    let events_delivered =
        strings("events_delivered").ok_or("the stream answer has no `events_delivered`")?;
    let delivery = doc
        .get("delivery")
        .and_then(Value::as_object)
        .ok_or("the stream answer has no `delivery`")?;
    // ID1 spelled them `delivery_method` and `url` (digest §14.1).
    let pick = |new: &str, old: &str| {
        delivery
            .get(new)
            .or_else(|| config.legacy.then(|| delivery.get(old)).flatten())
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let method = pick("method", "delivery_method").unwrap_or_default();
    let legacy = config.legacy;
    if let Some(wanted) = wanted_method {
        if super::discover::method_1_0(&method, legacy)
            != super::discover::method_1_0(wanted, legacy)
        {
            return Err(format!(
                "the stream answer's delivery method {:?} is not the requested {wanted:?}",
                crate::plain(&method, 80)
            ));
        }
    }
    let endpoint_url = pick("endpoint_url", "url");
    Ok(Stream {
        stream_id: stream_id.to_owned(),
        method,
        endpoint_url,
        events_requested: strings("events_requested").unwrap_or_default(),
        events_delivered,
        min_verification_interval: doc.get("min_verification_interval").and_then(Value::as_u64),
        description: doc
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(legacy: bool) -> UpstreamConfig {
        UpstreamConfig {
            id: "u".into(),
            issuer: "https://tx.test/t".into(),
            delivery: "poll".into(),
            event_types: vec![],
            bearer_token: Some(Secret::new("t")),
            oauth: None,
            audiences: vec![],
            ingest_url: None,
            algorithms: vec!["ES256".into()],
            legacy,
            allow_http: false,
            owns: Default::default(),
        }
    }

    #[test]
    fn stream_answers_are_checked_member_by_member() {
        let aud = vec!["https://hub".to_owned()];
        let good = json!({"stream_id": "s1", "iss": "https://tx.test/t", "aud": ["x", "https://hub"],
            "events_delivered": [], "min_verification_interval": 30,
            "delivery": {"method": "urn:ietf:rfc:8936", "endpoint_url": "https://tx.test/poll/s1"}});
        let s = check_stream(&good, &config(false), &aud, Some("urn:ietf:rfc:8936")).expect("good");
        assert_eq!(s.stream_id, "s1");
        assert_eq!(s.min_verification_interval, Some(30));
        assert_eq!(s.endpoint_url.as_deref(), Some("https://tx.test/poll/s1"));
        for (pointer, value, message) in [
            ("/iss", json!("https://evil.test"), "`iss`"),
            ("/aud", json!("https://other"), "`aud`"),
            (
                "/delivery/method",
                json!("urn:ietf:rfc:8935"),
                "delivery method",
            ),
            ("/stream_id", json!(""), "`stream_id`"),
        ] {
            let mut bad = good.clone();
            *bad.pointer_mut(pointer).expect("member") = value;
            let err = check_stream(&bad, &config(false), &aud, Some("urn:ietf:rfc:8936"))
                .expect_err(pointer);
            assert!(err.contains(message), "{pointer}: {err}");
        }
        let mut bad = good.clone();
        bad.as_object_mut()
            .expect("object")
            .remove("events_delivered");
        assert!(
            check_stream(&bad, &config(false), &aud, Some("urn:ietf:rfc:8936"))
                .expect_err("no events_delivered")
                .contains("events_delivered")
        );
        // ID1 spellings, for a legacy source only.
        let old = json!({"stream_id": "s1", "iss": "https://tx.test/t", "aud": "https://hub",
            "events_delivered": [], "delivery": {
                "delivery_method": "https://schemas.openid.net/secevent/risc/delivery-method/poll",
                "url": "https://tx.test/poll/s1"}});
        let wanted = "https://schemas.openid.net/secevent/risc/delivery-method/poll";
        let s = check_stream(&old, &config(true), &aud, Some(wanted)).expect("legacy");
        assert_eq!(s.endpoint_url.as_deref(), Some("https://tx.test/poll/s1"));
        assert!(check_stream(&old, &config(false), &aud, Some(wanted)).is_err());
    }
}
