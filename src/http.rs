//! What every HTTP module shares: the request-id middleware and the credential extractors
//! ([`Admin`], [`Receiver`], [`Reader`], [`Visible`]) that authenticate a request (admin token,
//! receiver credential, or OAuth access token via `access`) and check its scope before its
//! handler runs.
//! Routes live with the stage they serve; `app` merges them.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, OriginalUri, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::access::{Access, AccessError, Scheme, Target};
use crate::config::Secret;
use crate::error::Error;
use crate::streams::{Binding, Registry, SCOPES, SCOPE_MANAGE, SCOPE_READ, SCOPE_REVOCATIONS};

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
/// parameters are never accepted). The scheme name is case-insensitive (RFC 9110 §11.1).
pub fn bearer(headers: &HeaderMap) -> Result<&str, Error> {
    match authorization(headers)? {
        (Scheme::Bearer, token) => Ok(token),
        (Scheme::DPoP, _) => Err(Error::MissingCredential),
    }
}

/// The scheme and credential of the `Authorization` header: `Bearer` or `DPoP` (RFC 9449 §7.1),
/// scheme names in any case.
fn authorization(headers: &HeaderMap) -> Result<(Scheme, &str), Error> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(Error::MissingCredential)?;
    let (scheme, token) = value
        .trim_start()
        .split_once(' ')
        .ok_or(Error::MissingCredential)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::MissingCredential);
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Ok((Scheme::Bearer, token))
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Ok((Scheme::DPoP, token))
    } else {
        Err(Error::MissingCredential)
    }
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

/// Who is calling and what its credential allows: resolved once per request (the first
/// extractor stores it in the request's extensions), from the admin token, a receiver's static
/// credential, or an OAuth access token mapped to a receiver by its `client_id`.
#[derive(Debug, Clone)]
pub struct Credential {
    pub principal: Principal,
    /// The receiver acting; `None` for the operator.
    pub receiver: Option<crate::streams::Receiver>,
    /// The receiver's scopes; for an access token, those both the token and the receiver have.
    pub scopes: Vec<String>,
}

impl Credential {
    /// The operator holds every scope.
    pub fn has(&self, scope: &str) -> bool {
        self.principal == Principal::Admin || self.scopes.iter().any(|s| s == scope)
    }

    /// The subjects this credential may see in the revocation views; empty means all.
    pub fn bound_to(&self) -> &[Binding] {
        self.receiver.as_ref().map_or(&[], |r| &r.bound_to[..])
    }
}

/// The configured OAuth verifier, installed on the router as an extension (`app`); without it
/// only static credentials are accepted.
#[derive(Debug, Clone)]
pub struct OAuth(pub Arc<Access>);

/// The request's [`Credential`], resolved at most once per request.
async fn credential<S>(parts: &mut Parts, state: &S) -> Result<Arc<Credential>, Error>
where
    AdminToken: FromRef<S>,
    Registry: FromRef<S>,
    S: Send + Sync,
{
    if let Some(c) = parts.extensions.get::<Arc<Credential>>() {
        return Ok(c.clone());
    }
    let admin = AdminToken::from_ref(state);
    let registry = Registry::from_ref(state);
    let (scheme, token) = authorization(&parts.headers)?;
    let c = match scheme {
        Scheme::Bearer => match static_credential(&admin, &registry, token) {
            Err(Error::InvalidToken) if looks_like_jwt(token) => {
                oauth_credential(parts, &registry, scheme, token).await?
            }
            other => other?,
        },
        Scheme::DPoP => oauth_credential(parts, &registry, scheme, token).await?,
    };
    let c = Arc::new(c);
    parts.extensions.insert(c.clone());
    Ok(c)
}

/// A compact JWS has two dots; static credentials have none.
fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// An OAuth access token (and its DPoP proof), acting as the receiver registered for its
/// `client_id`.
async fn oauth_credential(
    parts: &Parts,
    registry: &Registry,
    scheme: Scheme,
    token: &str,
) -> Result<Credential, Error> {
    let Some(OAuth(access)) = parts.extensions.get::<OAuth>().cloned() else {
        return Err(match scheme {
            Scheme::Bearer => Error::InvalidToken,
            Scheme::DPoP => AccessError::Token("OAuth is not configured", scheme).into(),
        });
    };
    // Exactly one proof (RFC 9449 §4.3 step 1).
    let mut proofs = parts.headers.get_all("dpop").iter();
    let proof = match (proofs.next(), proofs.next()) {
        (Some(p), None) => Some(
            p.to_str()
                .map_err(|_| AccessError::Proof("the DPoP header is not ASCII"))?,
        ),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(AccessError::Proof("more than one DPoP header").into()),
    };
    // Routers nested below the issuer's path see a shortened URI; the proof names the full one.
    let path = parts
        .extensions
        .get::<OriginalUri>()
        .map_or_else(|| parts.uri.path(), |u| u.0.path());
    let target = Target {
        method: parts.method.as_str(),
        path,
    };
    let grant = access.verify(scheme, token, proof, target).await?;
    let receiver = registry
        .oauth_client(&grant.client_id)?
        .ok_or(AccessError::Token(
            "no registered receiver has this `client_id`",
            scheme,
        ))?;
    // The operator's grant bounds what the authorization server can give.
    let scopes = grant
        .scopes
        .into_iter()
        .filter(|s| receiver.scopes.contains(s))
        .collect();
    Ok(Credential {
        principal: Principal::Receiver(receiver.id.clone()),
        receiver: Some(receiver),
        scopes,
    })
}

/// The admin token or a receiver's static credential.
pub fn static_credential(
    admin: &AdminToken,
    registry: &Registry,
    token: &str,
) -> Result<Credential, Error> {
    if admin.0.matches(token.as_bytes()) {
        return Ok(Credential {
            principal: Principal::Admin,
            receiver: None,
            scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        });
    }
    match registry.authenticate(token)? {
        Some(r) => Ok(Credential {
            principal: Principal::Receiver(r.id.clone()),
            scopes: r.scopes.clone(),
            receiver: Some(r),
        }),
        None => Err(Error::InvalidToken),
    }
}

/// The registered, unrevoked receiver behind the request's credential, which holds the scope
/// the call needs: `ssf.read` (or `ssf.manage`) for reading stream configuration and status and
/// for polling, `ssf.manage` for everything else. The rule lives here, beside the credential,
/// so no handler can forget it.
#[derive(Debug, Clone)]
pub struct Receiver(pub crate::streams::Receiver);

impl<S> FromRequestParts<S> for Receiver
where
    AdminToken: FromRef<S>,
    Registry: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Receiver, Error> {
        // In Kafka mode the previous call may have gone to another replica: see its effects
        // (the credential, the stream, the acknowledgements) before this one is answered.
        Registry::from_ref(state).catch_up().await?;
        let c = credential(parts, state).await?;
        // The operator is not a receiver and owns no stream.
        let receiver = c.receiver.clone().ok_or(Error::InvalidToken)?;
        let reads = parts.method == Method::GET
            || parts.method == Method::HEAD
            || parts.uri.path().contains("/ssf/poll/");
        if c.has(SCOPE_MANAGE) || (reads && c.has(SCOPE_READ)) {
            Ok(Receiver(receiver))
        } else if reads {
            Err(Error::InsufficientScope(SCOPE_READ))
        } else {
            Err(Error::InsufficientScope(SCOPE_MANAGE))
        }
    }
}

/// Who a [`Reader`] is: the operator, or one registered receiver (by id). Per-credential limits
/// (sockets, long polls) and revocation of open connections key on this.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Admin,
    Receiver(String),
}

/// The request's credential, if it may read the revocation views (`revocations.read`).
async fn revocation_reader<S>(parts: &mut Parts, state: &S) -> Result<Arc<Credential>, Error>
where
    AdminToken: FromRef<S>,
    Registry: FromRef<S>,
    S: Send + Sync,
{
    let c = credential(parts, state).await?;
    if c.has(SCOPE_REVOCATIONS) {
        Ok(c)
    } else {
        Err(Error::InsufficientScope(SCOPE_REVOCATIONS))
    }
}

/// A request from an operator or from a receiver whose credential has the revocation scope
/// (`revocations.read`): the revocation views and decisions.
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
        Ok(Reader(
            revocation_reader(parts, state).await?.principal.clone(),
        ))
    }
}

/// The subjects a [`Reader`] may see (its credential's bindings; empty means all). Takes the
/// same credential and scope as `Reader`.
#[derive(Debug, Clone)]
pub struct Visible(pub Vec<Binding>);

impl<S> FromRequestParts<S> for Visible
where
    AdminToken: FromRef<S>,
    Registry: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Visible, Error> {
        Ok(Visible(
            revocation_reader(parts, state).await?.bound_to().to_vec(),
        ))
    }
}

impl Visible {
    pub fn sees(&self, subject: &crate::set::Subject) -> bool {
        crate::streams::visible(&self.0, subject)
    }
}

/// Accepts the admin token or a receiver's static credential, and says whose it is.
pub fn admit(admin: &AdminToken, registry: &Registry, token: &str) -> Result<Principal, Error> {
    static_credential(admin, registry, token).map(|c| c.principal)
}

/// Reads a request body of at most `limit` bytes: a declared `Content-Length` over it is refused
/// before anything is read (413). With that checked, a read error is a body too slow to arrive
/// (the transport's deadline, 408), a chunked body that outgrew the limit (413), or a client that
/// went away (who will not read the answer anyway).
pub async fn read_body(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, Error> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::TooLarge);
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if crate::transport::is_body_timeout(&e) {
            Error::BodyTimeout
        } else {
            Error::TooLarge
        }
    })
}
