//! Stage 2: `Unverified` bytes → `Verified` SET. Parses the compact JWS, pins the algorithm to the
//! source's allow-list, checks `typ`, finds the key, checks the signature and the envelope claims
//! (digest §2.3 steps 1–8). Event payloads and subjects are left to `normalize`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

pub use crate::keys::Alg;
use crate::keys::{KeyError, SourceKeys};
use crate::set::SET_TYP;

/// The RFC 8935 §2.4 error codes (plus SSF's `invalid_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrCode {
    InvalidRequest,
    InvalidKey,
    InvalidIssuer,
    InvalidAudience,
    AuthenticationFailed,
    AccessDenied,
    /// A verification SET whose `state` is not the one the hub asked for (SSF §8.1.4.1).
    InvalidState,
}

impl ErrCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrCode::InvalidRequest => "invalid_request",
            ErrCode::InvalidKey => "invalid_key",
            ErrCode::InvalidIssuer => "invalid_issuer",
            ErrCode::InvalidAudience => "invalid_audience",
            ErrCode::AuthenticationFailed => "authentication_failed",
            ErrCode::AccessDenied => "access_denied",
            ErrCode::InvalidState => "invalid_state",
        }
    }
}

/// Why a SET was refused. Messages describe the rule broken and never echo token content.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the body is not a compact JWS: {0}")]
    Malformed(&'static str),
    #[error("encrypted SETs (JWE) are not accepted; send a signed compact JWS")]
    Encrypted,
    #[error("the JWS algorithm is not allowed for this source")]
    AlgNotAllowed,
    #[error("the JOSE header `typ` must be `secevent+jwt`")]
    BadTyp,
    #[error("the JOSE header has a `crit` parameter, and no critical extension is supported")]
    Critical,
    #[error("no published key of this source matches the SET's `kid` and algorithm")]
    UnknownKey,
    #[error("the source's signing keys are not available yet; retry later")]
    KeysUnavailable,
    #[error("the signature does not verify with the source's key")]
    BadSignature,
    #[error("`iss` is not this source's issuer")]
    Issuer,
    #[error("`aud` does not contain an audience this hub accepts from the source")]
    Audience,
    #[error("the `{0}` claim must not appear in a SET (SSF 1.0 §4.1.2, §4.1.7)")]
    Forbidden(&'static str),
    #[error("claim `{0}` is {1}")]
    Claim(&'static str, &'static str),
    #[error("`iat` lies further in the future than the clock skew allowance")]
    FutureIat,
    #[error(
        "`iat` is older than the de-duplication window (ingest.dedupe_retention_secs), so a \
         replay could not be recognized"
    )]
    StaleIat,
}

impl VerifyError {
    pub fn code(&self) -> ErrCode {
        match self {
            VerifyError::UnknownKey | VerifyError::KeysUnavailable => ErrCode::InvalidKey,
            // Documented choice (digest §2.3 step 3): a signature that fails with the right key
            // means the transmitter could not be authenticated.
            VerifyError::BadSignature => ErrCode::AuthenticationFailed,
            VerifyError::Issuer => ErrCode::InvalidIssuer,
            VerifyError::Audience => ErrCode::InvalidAudience,
            VerifyError::Malformed(_)
            | VerifyError::Encrypted
            | VerifyError::AlgNotAllowed
            | VerifyError::BadTyp
            | VerifyError::Critical
            | VerifyError::Forbidden(_)
            | VerifyError::Claim(..)
            | VerifyError::FutureIat
            | VerifyError::StaleIat => ErrCode::InvalidRequest,
        }
    }
}

/// What the verifier needs to know about a source.
#[derive(Debug)]
pub struct Policy<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub algorithms: &'a [Alg],
    /// Accept a missing `typ` (pre-1.0 transmitters).
    pub legacy: bool,
    pub max_future_iat_secs: u64,
    /// Oldest `iat` accepted, as an age in seconds: the de-duplication window. A SET older than
    /// the window could be a replay whose `(iss, jti)` the hub has already forgotten.
    pub max_iat_age_secs: u64,
}

/// A pushed body that nobody has checked yet. Nothing in it may be trusted.
#[derive(Debug, Clone, Copy)]
pub struct Unverified<'a>(pub &'a [u8]);

/// A SET whose signature, issuer, audience and envelope claims have been checked.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Map<String, Value>,
    pub alg: Alg,
    pub kid: Option<String>,
    pub iss: String,
    pub jti: String,
    pub iat: i64,
    /// The compact SET as received, for audit.
    pub compact: String,
}

/// Parts of a compact JWS after the structural checks, before any key is looked up.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    text: &'a str,
    signing_input: &'a [u8],
    signature: Vec<u8>,
    payload: &'a str,
}

impl<'a> Unverified<'a> {
    /// Steps 1–2: compact serialization, header JSON, `alg` on the allow-list, `typ`, `crit`.
    pub fn parse(self, policy: &Policy<'_>) -> Result<Parsed<'a>, VerifyError> {
        let text = std::str::from_utf8(self.0)
            .map_err(|_| VerifyError::Malformed("not ASCII text"))?
            .trim_ascii();
        let parts: Vec<&str> = text.split('.').collect();
        match parts.len() {
            3 => {}
            5 => return Err(VerifyError::Encrypted),
            _ => return Err(VerifyError::Malformed("expected three dot-separated parts")),
        }
        let header = decode_json(parts[0]).ok_or(VerifyError::Malformed("bad JOSE header"))?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Alg::parse)
            .filter(|a| policy.algorithms.contains(a))
            .ok_or(VerifyError::AlgNotAllowed)?;
        match header.get("typ") {
            Some(Value::String(t))
                if t.eq_ignore_ascii_case(SET_TYP)
                    || t.eq_ignore_ascii_case(crate::set::SET_MEDIA_TYPE) => {}
            None if policy.legacy => {}
            Some(Value::String(t)) if policy.legacy && t.eq_ignore_ascii_case("JWT") => {}
            _ => return Err(VerifyError::BadTyp),
        }
        if header.contains_key("crit") {
            return Err(VerifyError::Critical);
        }
        // `jku`, `x5u`, `jwk` and `x5c` are ignored on purpose: keys come only from the source's
        // configured JWKS, never from the token that wants to be trusted.
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(VerifyError::Malformed("`kid` must be a string")),
        };
        let signature = decode_b64(parts[2]).ok_or(VerifyError::Malformed("bad signature"))?;
        let split = parts[0].len() + 1 + parts[1].len();
        Ok(Parsed {
            alg,
            kid,
            text,
            signing_input: &text.as_bytes()[..split],
            signature,
            payload: parts[1],
        })
    }
}

impl Parsed<'_> {
    /// Steps 3–8: key by `kid`, signature, then `iss`, `aud`, `sub`/`exp`, `jti`, `iat`.
    pub async fn verify(
        self,
        keys: &SourceKeys,
        policy: &Policy<'_>,
    ) -> Result<Verified, VerifyError> {
        let key = keys.key(self.kid.as_deref()).await.map_err(|e| match e {
            KeyError::UnknownKey => VerifyError::UnknownKey,
            KeyError::Unavailable => VerifyError::KeysUnavailable,
        })?;
        let verifier = key.verifier(self.alg).ok_or(VerifyError::UnknownKey)?;
        verifier
            .verify(self.signing_input, &self.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        let claims = decode_json(self.payload).ok_or(VerifyError::Malformed("bad claims JSON"))?;
        let verified = check_claims(claims, policy)?;
        Ok(Verified {
            alg: self.alg,
            kid: self.kid,
            compact: self.text.to_owned(),
            ..verified
        })
    }
}

fn check_claims(claims: Map<String, Value>, policy: &Policy<'_>) -> Result<Verified, VerifyError> {
    let iss = match claims.get("iss") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(VerifyError::Claim("iss", "not a string")),
        None => return Err(VerifyError::Claim("iss", "missing")),
    };
    if iss != policy.issuer {
        return Err(VerifyError::Issuer);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => policy.audiences.contains(a),
        Some(Value::Array(list)) => {
            if !list.iter().all(Value::is_string) {
                return Err(VerifyError::Claim(
                    "aud",
                    "not a string or array of strings",
                ));
            }
            list.iter()
                .filter_map(Value::as_str)
                .any(|a| policy.audiences.iter().any(|ok| ok == a))
        }
        Some(_) => {
            return Err(VerifyError::Claim(
                "aud",
                "not a string or array of strings",
            ))
        }
        None => false,
    };
    if !aud_ok {
        return Err(VerifyError::Audience);
    }
    for forbidden in ["sub", "exp"] {
        if claims.contains_key(forbidden) {
            return Err(VerifyError::Forbidden(forbidden));
        }
    }
    let jti = match claims.get("jti") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
        Some(Value::String(_)) => {
            return Err(VerifyError::Claim("jti", "empty or longer than 256 bytes"))
        }
        Some(_) => return Err(VerifyError::Claim("jti", "not a string")),
        None => return Err(VerifyError::Claim("jti", "missing")),
    };
    let iat = match claims.get("iat").and_then(Value::as_f64) {
        Some(t) if t.is_finite() && t >= 0.0 => t as i64,
        Some(_) => return Err(VerifyError::Claim("iat", "not a valid NumericDate")),
        None if claims.contains_key("iat") => {
            return Err(VerifyError::Claim("iat", "not a number"))
        }
        None => return Err(VerifyError::Claim("iat", "missing")),
    };
    // Late delivery is normal (paused streams and backlogs), but only within the de-duplication
    // window: past it, the hub no longer remembers `(iss, jti)` and would store a replay again.
    // The future is bounded by the clock skew allowance.
    let now = crate::unix_now() as i64;
    if iat > now.saturating_add(policy.max_future_iat_secs as i64) {
        return Err(VerifyError::FutureIat);
    }
    if iat < now.saturating_sub(policy.max_iat_age_secs as i64) {
        return Err(VerifyError::StaleIat);
    }
    Ok(Verified {
        claims,
        alg: Alg::ES256,
        kid: None,
        iss,
        jti,
        iat,
        compact: String::new(),
    })
}

fn decode_b64(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part).ok()
}

/// Decodes one base64url JSON object part. serde_json's recursion limit (128) turns deeply nested
/// input into an error rather than a stack overflow.
fn decode_json(part: &str) -> Option<Map<String, Value>> {
    let bytes = decode_b64(part)?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}
