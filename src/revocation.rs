//! Revocation service: keeps the `state` fold current with the log, persists subject states and
//! deltas in the hub's state tables (so start-up replays only what is new), and serves the
//! delta feed, the snapshot and the decision API over HTTP.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::http::{AdminToken, Reader, Visible};
use crate::log::Log;
use crate::normalize::Record;
use crate::set::Subject;
use crate::state::{Delta, Query, State, SubjectState};
use crate::storage::{Op, TableView, Tables};
use crate::streams::{Registry, RegistryError};

/// The fold and its storage.
pub struct Revocations {
    state: RwLock<State>,
    /// Deltas at or below this position were removed by retention.
    floor: std::sync::atomic::AtomicU64,
    tables: Arc<dyn Tables>,
    /// The last folded and stored position; wakes delta followers.
    folded: tokio::sync::watch::Sender<u64>,
    /// Deltas already in the in-memory state whose storing failed; stored first next time.
    unstored: std::sync::Mutex<Vec<Delta>>,
    /// Told of every stored delta, in order (the websocket feed subscribes here).
    listeners: RwLock<Vec<Listener>>,
    /// Woken when a batch the committer handed over could not be folded there (see
    /// [`Revocations::fold_next`]): [`run`] catches up from the log.
    lagging: tokio::sync::Notify,
}

type Listener = Box<dyn Fn(&Delta) + Send + Sync>;

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

const POSITION_KEY: &[u8] = b"revocation_position";
/// Every delta at or below this position has been removed (retention).
const FLOOR_KEY: &[u8] = b"deltas_floor";
/// canonical subject key → its state (JSON).
const SUBJECTS: &str = "revocation_subjects";
/// position (BE) → the delta that record caused (JSON).
const DELTAS: &str = "revocation_deltas";
const META: &str = "revocation_meta";

impl Revocations {
    /// Loads the persisted subject states and the position they reflect.
    pub fn open(tables: Arc<dyn Tables>) -> Result<Revocations, RegistryError> {
        let mut state = State::default();
        for (k, v) in tables.prefix(SUBJECTS, b"")? {
            let s: SubjectState = serde_json::from_slice(&v)?;
            state.restore(String::from_utf8_lossy(&k).into_owned(), s);
        }
        let number = |key: &[u8]| -> Result<u64, RegistryError> {
            Ok(tables
                .get(META, key)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_be_bytes))
        };
        state.position = number(POSITION_KEY)?;
        let floor = std::sync::atomic::AtomicU64::new(number(FLOOR_KEY)?);
        let folded = tokio::sync::watch::channel(state.position).0;
        Ok(Revocations {
            state: RwLock::new(state),
            floor,
            tables,
            folded,
            unstored: Default::default(),
            listeners: Default::default(),
            lagging: tokio::sync::Notify::new(),
        })
    }

    /// The last position folded and stored: every delta up to it can be read back. (The
    /// in-memory state may be a batch ahead while that batch is being stored.)
    pub fn position(&self) -> u64 {
        *self.folded.borrow()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.folded.subscribe()
    }

    /// Calls `listener` with every delta once it is stored, in position order.
    pub fn on_delta(&self, listener: impl Fn(&Delta) + Send + Sync + 'static) {
        self.listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(listener));
    }

    pub fn subject_count(&self) -> usize {
        self.read().subjects.len()
    }

    /// Folds records in log order up to position `through`, then stores the deltas, the changed subjects and the new
    /// position. The write lock is held only for the in-memory fold, so decisions never wait
    /// for storage; readers of stored deltas (replay) are announced the position only after.
    pub fn fold<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Record>,
        through: u64,
    ) -> Result<Vec<Delta>, RegistryError> {
        let mut unstored = self.unstored.lock().unwrap_or_else(|p| p.into_inner());
        let (out, changed, position, count) = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            let mut out = std::mem::take(&mut *unstored);
            for record in records {
                if record.position <= state.position {
                    continue;
                }
                if let Some(delta) = state.apply_record(record) {
                    out.push(delta);
                }
            }
            // Positions without a record (undecodable, skipped by the reader) are passed too.
            state.position = state.position.max(through);
            let keys: std::collections::BTreeSet<&str> =
                out.iter().map(|d| d.subject_key.as_str()).collect();
            let changed: Vec<(String, Arc<crate::state::SubjectState>)> = keys
                .into_iter()
                .filter_map(|k| state.subjects.get(k).map(|s| (k.to_owned(), s.clone())))
                .collect();
            (out, changed, state.position, state.subjects.len())
        };
        // Deltas before the subjects they explain, the position last: what a crash keeps
        // replays from the stored position without losing a delta.
        let stored = (|| -> Result<(), RegistryError> {
            let mut ops = Vec::with_capacity(out.len() + changed.len() + 1);
            for delta in &out {
                ops.push(Op::put(
                    DELTAS,
                    delta.position.to_be_bytes(),
                    serde_json::to_vec(delta)?,
                ));
            }
            for (key, subject) in &changed {
                ops.push(Op::put(
                    SUBJECTS,
                    key.as_bytes(),
                    serde_json::to_vec(&**subject)?,
                ));
            }
            ops.push(Op::put(META, POSITION_KEY, position.to_be_bytes()));
            Ok(self.tables.write(ops)?)
        })();
        if let Err(e) = stored {
            // The state already holds these; without a retry they would never be stored or
            // published.
            *unstored = out;
            return Err(e);
        }
        drop(unstored);
        for delta in &out {
            metrics::counter!("ssf_hub_revocation_deltas_total", "action" => delta.action.label())
                .increment(1);
        }
        metrics::gauge!("ssf_hub_revocation_subjects").set(count as f64);
        self.folded.send_replace(position);
        let listeners = self.listeners.read().unwrap_or_else(|p| p.into_inner());
        for delta in &out {
            listeners.iter().for_each(|l| l(delta));
        }
        Ok(out)
    }

    /// Folds a batch the log just made durable, through position `through`, if it is whole
    /// and directly follows what is folded (the committer calls this: see
    /// [`Log::after_commit`]); anything else, and a failed store, wakes [`run`] to catch up
    /// from the log.
    pub fn fold_next(&self, records: &[Arc<Record>], through: u64) {
        let from = self.position();
        let whole = records.first().map(|r| r.position) == Some(from + 1)
            && records.len() as u64 == through.saturating_sub(from);
        if !whole {
            self.lagging.notify_one();
            return;
        }
        if let Err(e) = self.fold(records.iter().map(|r| &**r), through) {
            tracing::warn!(error = %e, "storing revocation state failed; the fold retries");
            self.lagging.notify_one();
        }
    }

    /// Deltas after `since`, at most `limit`.
    pub fn deltas_after(&self, since: u64, limit: usize) -> Result<Vec<Value>, RegistryError> {
        let Some(from) = since.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.tables
            .scan(DELTAS, b"", &from.to_be_bytes(), limit)?
            .iter()
            .map(|(_, v)| Ok(serde_json::from_slice(v)?))
            .collect()
    }

    /// The first position whose delta (if it caused one) is still kept.
    pub fn earliest(&self) -> u64 {
        self.floor.load(std::sync::atomic::Ordering::Acquire) + 1
    }

    /// Removes deltas at positions before `log_earliest` (their records are gone from the log)
    /// and more than `window` positions behind the fold; returns how many. The state itself is
    /// untouched: a snapshot still holds every subject.
    pub fn trim(&self, log_earliest: u64, window: u64) -> Result<u64, RegistryError> {
        use std::sync::atomic::Ordering;
        let floor = self.floor.load(Ordering::Acquire);
        let target = log_earliest
            .saturating_sub(1)
            .max(self.position().saturating_sub(window))
            .min(self.position());
        if target <= floor {
            return Ok(0);
        }
        let mut removed = 0;
        // In slices, so a large first sweep never builds one huge batch.
        loop {
            let rows = self
                .tables
                .scan(DELTAS, b"", &(floor + 1).to_be_bytes(), 4096)?;
            let doomed: Vec<Op> = rows
                .into_iter()
                .take_while(|(k, _)| crate::storage::from_be(k).is_ok_and(|p| p <= target))
                .map(|(k, _)| Op::delete(DELTAS, k))
                .collect();
            let n = doomed.len();
            removed += n as u64;
            let mut ops = doomed;
            let done = n < 4096;
            if done {
                ops.push(Op::put(META, FLOOR_KEY, target.to_be_bytes()));
            }
            self.tables.write(ops)?;
            if done {
                break;
            }
        }
        self.floor.store(target, Ordering::Release);
        Ok(removed)
    }

    /// A consistent snapshot of the stored state (see [`Snapshot`]). Cheap to take: pages are
    /// read as they are asked for.
    pub fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let view = self.tables.view()?;
        let position = view
            .get(META, POSITION_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(Snapshot {
            position,
            view,
            next: Some(Vec::new()),
        })
    }

    pub fn decide(&self, query: &Query) -> crate::state::Decision {
        self.read().decide(query)
    }
}

/// One subject of a [`Snapshot`].
#[derive(Debug)]
pub struct SnapshotItem {
    pub subject_key: String,
    pub state: SubjectState,
}

/// The stored subject states at one position, read page by page.
///
/// Consistency: the fold stores a batch's deltas, changed subjects and new position in one
/// atomic write, and the snapshot reads everything from one [`TableView`] of the store taken
/// when it starts; so its subjects are exactly the state at its `position` (not a mix of before
/// and after a batch), and every delta after `position` is (or will be) in the delta table.
#[derive(Debug)]
pub struct Snapshot {
    pub position: u64,
    view: Arc<dyn TableView>,
    /// Where the next page starts; `None` after the last page.
    next: Option<Vec<u8>>,
}

impl Snapshot {
    /// The next (at most `n`, at least 1) subjects in `subject_key` order; empty at the end.
    pub fn page(&mut self, n: usize) -> Result<Vec<SnapshotItem>, RegistryError> {
        let n = n.max(1);
        let Some(start) = self.next.take() else {
            return Ok(Vec::new());
        };
        let rows = self.view.scan(SUBJECTS, b"", &start, n)?;
        if rows.len() == n {
            // The smallest key after the last one read.
            self.next = rows.last().map(|(k, _)| [k.as_slice(), &[0]].concat());
        }
        rows.into_iter()
            .map(|(k, v)| {
                Ok(SnapshotItem {
                    subject_key: String::from_utf8_lossy(&k).into_owned(),
                    state: serde_json::from_slice(&v)?,
                })
            })
            .collect()
    }
}

/// Keeps the fold current until `shutdown`, persisted in batches: woken by the log head, or,
/// where the committer folds each batch itself (one writer), only when it could not.
#[tracing::instrument(name = "revocation_fold", skip_all)]
pub async fn run(revocations: Arc<Revocations>, log: Log, shutdown: CancellationToken) {
    let mut head = log.subscribe();
    let follow_head = !log.folds_on_commit();
    loop {
        head.borrow_and_update();
        loop {
            let page = match log.page(revocations.position(), 1000).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "reading the log failed");
                    break;
                }
            };
            let Some(&(through, _)) = page.last() else {
                break;
            };
            let records: Vec<Arc<Record>> = page.into_iter().filter_map(|(_, r)| r).collect();
            // Storing is file I/O that may wait for a sync of the state tables: not on a worker.
            let r = revocations.clone();
            let folded =
                tokio::task::spawn_blocking(move || r.fold(records.iter().map(|r| &**r), through))
                    .await;
            match folded {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "storing revocation state failed");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the revocation fold failed");
                    break;
                }
            }
        }
        // No sync here: the state is derived, and a crash replays from whatever position was
        // stored last (folding is idempotent), so the next sync anyone makes is enough.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = head.changed(), if follow_head => {}
            _ = revocations.lagging.notified() => {}
        }
    }
}

/// What the revocation views and the decision API work with.
#[derive(Debug, Clone)]
pub struct Api {
    pub revocations: Arc<Revocations>,
    pub registry: Registry,
    pub admin: AdminToken,
}

impl axum::extract::FromRef<Api> for AdminToken {
    fn from_ref(api: &Api) -> AdminToken {
        api.admin.clone()
    }
}

impl axum::extract::FromRef<Api> for Registry {
    fn from_ref(api: &Api) -> Registry {
        api.registry.clone()
    }
}

pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/revocations", get(list_deltas))
        .route("/revocations/snapshot", get(get_snapshot))
        .route("/revocations/check", post(check_token))
        .route("/revocations/ext-authz", axum::routing::any(ext_authz))
        .route(
            "/revocations/ext-authz/{*path}",
            axum::routing::any(ext_authz),
        )
        .with_state(api)
}

/// Header carrying the hub credential on ext_authz calls (the request's own `Authorization`
/// header belongs to the end user and is forwarded untouched by Envoy).
pub const EXT_AUTHZ_TOKEN_HEADER: &str = "x-ssf-hub-token";

/// `ANY /revocations/ext-authz[/...]`: an Envoy `ext_authz` HTTP service. Envoy's `jwt_authn`
/// filter has verified the end user's token and forwards its claims, base64url JSON, in
/// `x-jwt-payload`; `iss`+`sub` name the user, `sid` the session, `iat` the issue time, and the
/// [`DEVICE_CLAIM`] claim the device. Answers 200 to allow, 403 to deny, with the reason in
/// `x-ssf-hub-decision`. The hub credential needs the revocation scope.
async fn ext_authz(AxumState(api): AxumState<Api>, headers: HeaderMap) -> Result<Response, Error> {
    let token = headers
        .get(EXT_AUTHZ_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(Error::MissingCredential)?;
    let credential = crate::http::static_credential(&api.admin, &api.registry, token)?;
    if !credential.has(crate::streams::SCOPE_REVOCATIONS) {
        return Err(Error::InsufficientScope(crate::streams::SCOPE_REVOCATIONS));
    }
    let started = Instant::now();
    let claims: Value = headers
        .get("x-jwt-payload")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| Error::Invalid("`x-jwt-payload` must carry the token's claims".into()))?;
    let mut body = json!({ "iss": claims["iss"], "sub": claims["sub"], "iat": claims["iat"] });
    if let Some(sid) = claims.get("sid").and_then(Value::as_str) {
        body["session_id"] = json!(sid);
    }
    // The device comes from the verified token only. A client-supplied `x-device-id` header is
    // ignored: anyone can send one, and naming a compliant device would lift a device denial.
    if let Some(device) = claims.get(DEVICE_CLAIM).and_then(Value::as_str) {
        body["device_id"] = json!(device);
    }
    let query = within(
        &Visible(credential.bound_to().to_vec()),
        parse_check(body.to_string().as_bytes())?,
    )?;
    let decision = api.revocations.decide(&query);
    metrics::histogram!("ssf_hub_decision_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("ssf_hub_decisions_total", "allow" => if decision.allow { "true" } else { "false" })
        .increment(1);
    let status = if decision.allow {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    Ok((
        status,
        [
            ("x-ssf-hub-decision", decision.reason),
            ("x-ssf-hub-position", decision.position.to_string()),
        ],
    )
        .into_response())
}

/// The claim of the end user's verified token that names the device, for `ext_authz`.
pub const DEVICE_CLAIM: &str = "device_id";

/// A decision query checked against what a bound credential may ask about. Every identifying
/// part must be covered by the credential's bindings; opaque parts (session and device ids,
/// which no email-domain or issuer binding can cover) that are not covered are accepted only
/// beside a covered identifying part, so that they describe that user's token. A query about
/// nobody the credential may see is refused, never answered.
fn within(visible: &Visible, query: Query) -> Result<Query, Error> {
    if visible.0.is_empty() {
        return Ok(query);
    }
    let refused =
        || Error::Refused("the query names a subject this credential is not bound to".into());
    let (mut any, mut identifying, mut stray_opaque) = (false, false, false);
    for (_, s) in &query.parts {
        let opaque = s.format() == "opaque";
        match (visible.sees(s), opaque) {
            (true, _) => {
                any = true;
                identifying |= !opaque;
            }
            (false, true) => stray_opaque = true,
            (false, false) => return Err(refused()),
        }
    }
    if !any || (stray_opaque && !identifying) {
        return Err(refused());
    }
    Ok(query)
}

#[derive(Debug, Deserialize)]
struct DeltaParams {
    #[serde(default)]
    since: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    500
}

/// `GET /revocations?since=P&limit=N`: deltas after `P` with the position to continue from.
async fn list_deltas(
    _: Reader,
    visible: Visible,
    AxumState(api): AxumState<Api>,
    params: Result<QueryParams<DeltaParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let QueryParams(p) =
        params.map_err(|_| Error::BadQuery("since and limit must be non-negative integers"))?;
    let position = api.revocations.position();
    let deltas = api
        .revocations
        .deltas_after(p.since, p.limit.clamp(1, 5000))?;
    // Continue after the last delta returned, or (when the page is short) after everything
    // folded so far, which skips positions that produced no delta.
    let next = if deltas.len() < p.limit.clamp(1, 5000) {
        position.max(p.since)
    } else {
        deltas
            .last()
            .and_then(|d| d["position"].as_u64())
            .unwrap_or(p.since)
    };
    // Read after the page: a sweep that ran meanwhile moved it, and the deltas it removed are
    // left out below, so a page never holds deltas from before the `earliest` it reports.
    let earliest = api.revocations.earliest();
    // A bound credential sees its subjects' deltas only; `next` still moves past the others.
    let deltas: Vec<Value> = deltas
        .into_iter()
        .filter(|d| d["position"].as_u64().is_some_and(|p| p >= earliest))
        .filter(|d| {
            visible.0.is_empty() || Subject::parse(&d["subject"]).is_ok_and(|s| visible.sees(&s))
        })
        .collect();
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "deltas": deltas, "next": next, "position": position, "earliest": earliest })),
    )
        .into_response())
}

/// Subjects read from the store per step of a snapshot response: what one request holds in
/// memory (this page, and its encoding), however many subjects there are.
const SNAPSHOT_PAGE: usize = 256;

/// `GET /revocations/snapshot`: every subject's state and the position it reflects, streamed
/// page by page from a consistent view of the store, in `subject_key` order. Follow with
/// `GET /revocations?since=<position>` for a gap-free view.
async fn get_snapshot(
    _: Reader,
    visible: Visible,
    AxumState(api): AxumState<Api>,
) -> Result<Response, Error> {
    let snapshot = api.revocations.snapshot()?;
    let head = Bytes::from(format!(
        "{{\"position\":{},\"subjects\":[",
        snapshot.position
    ));
    // (snapshot, whether an item was written yet, what the credential may see); `None` once
    // the closing bracket is out.
    let start = Some((snapshot, false, visible));
    let pages = futures_util::stream::unfold(start, |step| async move {
        let (mut snapshot, mut wrote, visible) = step?;
        loop {
            // Storage reads block; each page is its own short task, so a slow client never
            // holds a blocking thread.
            let read = tokio::task::spawn_blocking(move || {
                let page = snapshot.page(SNAPSHOT_PAGE);
                (snapshot, page)
            })
            .await;
            let page = match read {
                Ok((s, Ok(page))) => {
                    snapshot = s;
                    page
                }
                Ok((_, Err(e))) => return Some((Err(snapshot_failed(&e)), None)),
                Err(e) => return Some((Err(snapshot_failed(&e)), None)),
            };
            if page.is_empty() {
                return Some((Ok(Bytes::from_static(b"]}")), None));
            }
            // A bound credential sees only its subjects: the filter is per item.
            let chunk = encode_items(
                page.iter().filter(|i| visible.sees(&i.state.subject)),
                &mut wrote,
            );
            // A page whose items were all left out yields nothing; an empty chunk is skipped.
            if !chunk.is_empty() {
                return Some((Ok(chunk), Some((snapshot, wrote, visible))));
            }
        }
    });
    let body = axum::body::Body::from_stream(
        futures_util::stream::once(std::future::ready(Ok(head))).chain(pages),
    );
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// A snapshot that cannot be read to the end is cut off (the client sees a truncated body, not
/// a valid-looking partial state).
fn snapshot_failed(e: &dyn std::fmt::Display) -> std::io::Error {
    tracing::error!(error = %e, "reading the revocation snapshot failed");
    std::io::Error::other("reading the revocation snapshot failed")
}

/// Snapshot items as JSON array elements, comma-separated across chunks (`wrote`: whether an
/// element was written before).
fn encode_items<'a>(items: impl Iterator<Item = &'a SnapshotItem>, wrote: &mut bool) -> Bytes {
    let mut buf = Vec::new();
    for item in items {
        if std::mem::replace(wrote, true) {
            buf.push(b',');
        }
        let element = json!({ "subject_key": item.subject_key, "state": item.state });
        let _ = serde_json::to_writer(&mut buf, &element);
    }
    Bytes::from(buf)
}

/// `POST /revocations/check`: is this token still good?
///
/// Body: `{"subjects": {"user": <RFC 9493 id>, "session": ..., "device": ..., "tenant": ...},
/// "iss": ..., "sub": ..., "session_id": ..., "device_id": ..., "iat": ...}`; every member is
/// optional. `iss`+`sub` become a `user` `iss_sub` identifier, `session_id`/`device_id` opaque
/// `session`/`device` identifiers.
async fn check_token(
    _: Reader,
    visible: Visible,
    AxumState(api): AxumState<Api>,
    body: Bytes,
) -> Result<Response, Error> {
    let started = Instant::now();
    let query = within(&visible, parse_check(&body)?)?;
    let decision = api.revocations.decide(&query);
    metrics::histogram!("ssf_hub_decision_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("ssf_hub_decisions_total", "allow" => if decision.allow { "true" } else { "false" })
        .increment(1);
    Ok(Json(decision).into_response())
}

fn parse_check(body: &[u8]) -> Result<Query, Error> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| Error::Invalid("the body must be JSON".into()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::Invalid("the body must be a JSON object".into()))?;
    let mut parts = Vec::new();
    if let Some(subjects) = obj.get("subjects") {
        let subjects = subjects.as_object().ok_or_else(|| {
            Error::Invalid("`subjects` must be an object of role to identifier".into())
        })?;
        for (role, id) in subjects {
            let mut id = id.clone();
            Subject::upgrade_legacy(&mut id);
            let s = Subject::parse(&id).map_err(|e| {
                Error::Invalid(format!("`subjects.{}`: {e}", crate::plain(role, 32)))
            })?;
            parts.push((role.clone(), s));
        }
    }
    let string = |k: &str| obj.get(k).and_then(Value::as_str);
    if let (Some(iss), Some(sub)) = (string("iss"), string("sub")) {
        let s = Subject::parse(&json!({"format": "iss_sub", "iss": iss, "sub": sub}))
            .map_err(|e| Error::Invalid(format!("`iss`/`sub`: {e}")))?;
        parts.push(("user".into(), s));
    }
    for (field, role) in [("session_id", "session"), ("device_id", "device")] {
        if let Some(id) = string(field) {
            let s = Subject::parse(&json!({"format": "opaque", "id": id}))
                .map_err(|e| Error::Invalid(format!("`{field}`: {e}")))?;
            parts.push((role.into(), s));
        }
    }
    if parts.is_empty() {
        return Err(Error::Invalid("name at least one subject".into()));
    }
    let iat = match obj.get("iat") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| Error::Invalid("`iat` must be a NumericDate".into()))?,
        ),
    };
    Ok(Query { parts, iat })
}

/// How long start-up took to restore the persisted state, for the start-time figure.
/// Folds records retention removed but the log still held (a fresh replica in Kafka mode
/// replays the whole topic), then drops the deltas below `earliest` as the sweep would: what
/// they changed stays in the subjects' state, and the delta feed starts where the log does.
pub fn fold_removed(
    revocations: &Revocations,
    removed: Vec<crate::storage::Entry>,
    earliest: u64,
) -> Result<(), RegistryError> {
    for chunk in removed.chunks(1000) {
        let records: Vec<Record> = chunk
            .iter()
            .filter_map(|e| {
                let mut r: Record = serde_json::from_slice(&e.record).ok()?;
                r.position = e.position;
                Some(r)
            })
            .collect();
        if let Some(last) = chunk.last() {
            revocations.fold(records.iter(), last.position)?;
        }
    }
    revocations.trim(earliest, u64::MAX)?;
    Ok(())
}

pub fn timed_open(tables: Arc<dyn Tables>) -> Result<(Revocations, Duration), RegistryError> {
    let started = Instant::now();
    let r = Revocations::open(tables)?;
    Ok((r, started.elapsed()))
}
