//! The hub's request error and its one mapping to HTTP. Stage errors (`VerifyError`,
//! `NormalizeError`, `LogError`) are typed where they arise; this is the only place that
//! chooses status codes, and its `match` has no wildcard so a new variant forces a choice.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::normalize::NormalizeError;
use crate::storage::StorageError as LogError;
use crate::verify::{ErrCode, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such source")]
    UnknownSource,
    #[error("an Authorization header is required")]
    MissingCredential,
    #[error("the presented credential is not accepted")]
    WrongCredential,
    #[error("Content-Type must be application/secevent+jwt")]
    UnsupportedMediaType,
    #[error("the request body is larger than this hub accepts")]
    TooLarge,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("this source is not allowed to send this event type")]
    AccessDenied,
    #[error("{0}")]
    BadQuery(&'static str),
    /// An upstream verification SET whose `state` the hub did not ask for.
    #[error("the verification state does not match the one requested")]
    InvalidState,
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Normalize(#[from] NormalizeError),
    #[error("storage failure")]
    Log(#[from] LogError),
    #[error("the bearer credential is not valid")]
    InvalidToken,
    #[error("the credential lacks the `{0}` scope")]
    InsufficientScope(&'static str),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    #[error("no such stream")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("too many requests; slow down")]
    TooManyRequests,
    /// 429 with the seconds after which the same request can succeed.
    #[error("too many requests; retry after {0} s")]
    Throttled(u64),
    /// A per-credential cap (websockets) is reached; the text names it.
    #[error("{0}")]
    Limit(String),
    /// A hub-wide cap is reached; the text names it.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Refused(String),
    #[error("state storage failure")]
    Registry(#[from] crate::streams::RegistryError),
    #[error("internal error")]
    Internal(String),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

/// Why a connector (`POST /connectors/{id}`) refused a vendor webhook. Defined here rather than
/// in `connectors`, which imports this module, so the module graph keeps no cycle.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("no such connector")]
    Unknown,
    #[error("the webhook carries no signature or credential where its vendor puts it")]
    MissingSignature,
    #[error("the webhook signature or credential does not match")]
    BadSignature,
    #[error(
        "the webhook's signed timestamp is outside the accepted window (a replay or a skewed clock)"
    )]
    Stale,
    #[error("malformed webhook: {0}")]
    Malformed(String),
    #[error("the webhook could not be mapped to events: {0}")]
    Mapping(String),
    #[error("this connector has no verification handshake")]
    NoHandshake,
}

impl WebhookError {
    /// Short label for metrics, connector status and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            WebhookError::Unknown => "unknown_connector",
            WebhookError::MissingSignature => "missing_signature",
            WebhookError::BadSignature => "bad_signature",
            WebhookError::Stale => "stale",
            WebhookError::Malformed(_) => "malformed",
            WebhookError::Mapping(_) => "mapping",
            WebhookError::NoHandshake => "no_handshake",
        }
    }
}

impl Error {
    /// Short outcome label for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Error::UnknownSource => "unknown_source",
            Error::MissingCredential => "unauthorized",
            Error::WrongCredential => "forbidden",
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::TooLarge => "too_large",
            Error::BodyTimeout => "body_timeout",
            Error::AccessDenied => ErrCode::AccessDenied.as_str(),
            Error::BadQuery(_) => "bad_query",
            Error::InvalidState => ErrCode::InvalidState.as_str(),
            Error::Verify(VerifyError::KeysUnavailable) => "unavailable",
            Error::Verify(e) => e.code().as_str(),
            Error::Normalize(_) => ErrCode::InvalidRequest.as_str(),
            Error::Log(_) => "unavailable",
            Error::InvalidToken => "unauthorized",
            Error::InsufficientScope(_) => "insufficient_scope",
            Error::Access(crate::access::AccessError::ReplayCacheFull) => "unavailable",
            Error::Access(_) => "unauthorized",
            Error::NotFound => "not_found",
            Error::Invalid(_) => "bad_request",
            Error::TooManyRequests | Error::Throttled(_) | Error::Limit(_) => "too_many_requests",
            Error::Unavailable(_) => "unavailable",
            Error::Refused(_) => "forbidden",
            Error::Registry(_) => "unavailable",
            Error::Internal(_) => "internal",
            Error::Webhook(e) => e.kind(),
        }
    }
}

/// RFC 8935 §2.3 error body: 400, JSON, `Content-Language`, `{"err", "description"}`.
fn set_error(code: ErrCode, description: String) -> Response {
    let mut resp = (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "err": code.as_str(), "description": description })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LANGUAGE, HeaderValue::from_static("en"));
    resp
}

/// Errors that are not about the SET itself: plain JSON with an `error` member, deliberately not
/// `err`, so a receiver never mistakes an HTTP-level refusal for an RFC 8935 code.
fn http_error(status: StatusCode, error: &str, description: String) -> Response {
    let mut resp = (
        status,
        axum::Json(json!({ "error": error, "description": description })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LANGUAGE, HeaderValue::from_static("en"));
    resp
}

/// `Retry-After` of a 429 whose cause does not say when it clears.
const DEFAULT_RETRY_AFTER_SECS: u64 = 1;

fn too_many(retry_after_secs: u64, description: String) -> Response {
    let mut r = http_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        description,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

/// 503 with `Retry-After`: the hub cannot do it now and will be able to later.
fn unavailable(description: String) -> Response {
    let mut r = http_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", description);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let description = self.to_string();
        match self {
            Error::UnknownSource => http_error(StatusCode::NOT_FOUND, "not_found", description),
            Error::MissingCredential => {
                let mut r = http_error(StatusCode::UNAUTHORIZED, "unauthorized", description);
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            Error::WrongCredential => http_error(StatusCode::FORBIDDEN, "forbidden", description),
            Error::UnsupportedMediaType => http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                description,
            ),
            Error::TooLarge => http_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", description),
            Error::BodyTimeout => {
                // The rest of the body is not waited for: the connection closes after this.
                let mut r = http_error(StatusCode::REQUEST_TIMEOUT, "request_timeout", description);
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            }
            Error::AccessDenied => set_error(ErrCode::AccessDenied, description),
            Error::InvalidState => set_error(ErrCode::InvalidState, description),
            Error::BadQuery(_) => http_error(StatusCode::BAD_REQUEST, "bad_request", description),
            Error::Verify(VerifyError::KeysUnavailable) => {
                // Not the SET's fault: the source's JWKS has never been reachable. 503 tells the
                // transmitter to retry, which a 400 would not.
                let mut r = http_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "keys_unavailable",
                    description,
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
                r
            }
            Error::Verify(e) => set_error(e.code(), description),
            Error::Normalize(_) => set_error(ErrCode::InvalidRequest, description),
            // Storage that cannot keep a write now (a full disk, brokers out of reach) is a
            // condition to retry after, not a fault of the request: 503 with Retry-After.
            Error::Log(e) => {
                tracing::error!(error = %e, "request failed on storage");
                unavailable("storage is unavailable; the SET was not stored".into())
            }
            Error::InvalidToken => {
                // RFC 6750 §3.1: an invalid token is 401 with `error="invalid_token"`.
                let mut r = http_error(StatusCode::UNAUTHORIZED, "invalid_token", description);
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                r
            }
            Error::InsufficientScope(scope) => {
                // RFC 6750 §3.1: 403, naming the scope the request needs.
                let mut r = http_error(StatusCode::FORBIDDEN, "insufficient_scope", description);
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
                )) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                r
            }
            Error::Access(e) => {
                use crate::access::{AccessError, Scheme};
                // RFC 6750 §3.1 and RFC 9449 §7.1: 401 with a challenge in the scheme used.
                let (status, error, challenge) = match e {
                    AccessError::Token(_, Scheme::Bearer) => (
                        StatusCode::UNAUTHORIZED,
                        "invalid_token",
                        "Bearer error=\"invalid_token\"",
                    ),
                    AccessError::Token(_, Scheme::DPoP) => (
                        StatusCode::UNAUTHORIZED,
                        "invalid_token",
                        "DPoP error=\"invalid_token\"",
                    ),
                    AccessError::Proof(_) => (
                        StatusCode::UNAUTHORIZED,
                        "invalid_dpop_proof",
                        "DPoP error=\"invalid_dpop_proof\"",
                    ),
                    AccessError::ReplayCacheFull => {
                        let mut r =
                            http_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", description);
                        r.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                        return r;
                    }
                };
                let mut r = http_error(status, error, description);
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                r
            }
            Error::NotFound => http_error(StatusCode::NOT_FOUND, "not_found", description),
            Error::Invalid(_) => {
                http_error(StatusCode::BAD_REQUEST, "invalid_request", description)
            }
            Error::Refused(_) => http_error(StatusCode::FORBIDDEN, "forbidden", description),
            // Every 429 says when to come back (RFC 6585 §4): without it, clients retry at once.
            Error::TooManyRequests => too_many(DEFAULT_RETRY_AFTER_SECS, description),
            Error::Throttled(secs) => too_many(secs.max(1), description),
            Error::Limit(_) => too_many(5, description),
            Error::Unavailable(_) => unavailable(description),
            Error::Registry(e) => {
                tracing::error!(error = %e, "request failed on state storage");
                unavailable("state storage is unavailable; nothing was changed".into())
            }
            Error::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                http_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", description)
            }
            Error::Webhook(e) => {
                use WebhookError as C;
                let (status, error) = match e {
                    C::Unknown => (StatusCode::NOT_FOUND, "not_found"),
                    C::MissingSignature => (StatusCode::UNAUTHORIZED, "unauthorized"),
                    C::BadSignature => (StatusCode::FORBIDDEN, "bad_signature"),
                    C::Stale => (StatusCode::FORBIDDEN, "stale"),
                    C::Malformed(_) | C::Mapping(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
                    C::NoHandshake => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
                };
                http_error(status, error, description)
            }
        }
    }
}
