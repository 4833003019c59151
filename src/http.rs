//! What every HTTP module shares: the request-id middleware and the credential extractors
//! ([`Admin`], [`Receiver`], [`Reader`]) that authorize a request before its handler runs.
//! Routes live with the stage they serve; `app` merges them.

use axum::extract::{FromRef, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::config::Secret;
use crate::error::Error;
use crate::streams::Registry;

/// Gives every request an id, in its tracing span and in the `x-request-id` response header,
/// so a client's report can be matched to the hub's log lines.
pub async fn request_id(req: Request, next: Next) -> Response {
    // Unique within the process and cheap: a counter, not a random UUID per request.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = format!(
        "{:x}-{:x}",
        process_epoch(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1; tokens in query
/// parameters are never accepted).
pub fn bearer(headers: &HeaderMap) -> Result<&str, Error> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(Error::MissingCredential)
}

/// When this process started (ms), so request ids differ across restarts.
fn process_epoch() -> u64 {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(crate::unix_now_ms)
}

/// The operators' bearer token; a state that holds one lets handlers take [`Admin`].
#[derive(Debug, Clone)]
pub struct AdminToken(pub Secret);

/// A request that presented `Authorization: Bearer <admin_token>` (compared in constant time).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    AdminToken: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Admin, Error> {
        if AdminToken::from_ref(state)
            .0
            .matches(bearer(&parts.headers)?.as_bytes())
        {
            Ok(Admin)
        } else {
            Err(Error::WrongCredential)
        }
    }
}

/// The registered, unrevoked receiver behind `Authorization: Bearer <credential>`.
#[derive(Debug, Clone)]
pub struct Receiver(pub crate::streams::Receiver);

impl<S> FromRequestParts<S> for Receiver
where
    Registry: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Receiver, Error> {
        let token = bearer(&parts.headers)?;
        Registry::from_ref(state)
            .authenticate(token)?
            .map(Receiver)
            .ok_or(Error::InvalidToken)
    }
}

/// Who a [`Reader`] is: the operator, or one registered receiver (by id). Per-credential limits
/// (sockets, long polls) and revocation of open connections key on this.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Admin,
    Receiver(String),
}

/// A request from an operator or from any receiver (the revocation views are for both).
#[derive(Debug, Clone)]
pub struct Reader(pub Principal);

impl<S> FromRequestParts<S> for Reader
where
    AdminToken: FromRef<S>,
    Registry: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Reader, Error> {
        let token = bearer(&parts.headers)?;
        admit(
            &AdminToken::from_ref(state),
            &Registry::from_ref(state),
            token,
        )
        .map(Reader)
    }
}

/// Accepts the admin token or a receiver's credential, and says whose it is.
pub fn admit(admin: &AdminToken, registry: &Registry, token: &str) -> Result<Principal, Error> {
    if admin.0.matches(token.as_bytes()) {
        return Ok(Principal::Admin);
    }
    match registry.authenticate(token)? {
        Some(r) => Ok(Principal::Receiver(r.id)),
        None => Err(Error::InvalidToken),
    }
}
