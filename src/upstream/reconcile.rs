//! One task per upstream transmitter: discover → find or create the stream (reusing the one
//! recorded, or found by `GET`, so a restart of either side never creates a second) → bring it
//! to the configured events and delivery with `PATCH` (`PUT` if refused) → check the answer →
//! record the stream id → verify (no more often than `min_verification_interval`) → follow its
//! status. A failed step is logged, counted, shown in the status and retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::discover::{self, DiscoverError, Metadata};
use super::manage::{self, CallError, Client, Desired, Stream};
use super::{lock, Link, Upstreams};
use crate::keys::SourceKeys;
use crate::set::EventKind;

/// A step that failed: its kind (a label), a message, and how long the transmitter asked us to
/// wait. `gone` means the stream no longer exists there.
#[derive(Debug)]
pub(super) struct Failure {
    pub kind: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    pub refused: bool,
}

impl Failure {
    fn call(kind: &'static str, what: &str, e: CallError) -> Failure {
        Failure {
            kind,
            retry_after: e.retry_after(),
            message: format!("{what}: {e}"),
            refused: false,
        }
    }

    fn refused(kind: &'static str, message: String) -> Failure {
        Failure {
            kind,
            message,
            retry_after: None,
            refused: true,
        }
    }
}

/// The working link to a registered, checked stream.
#[derive(Debug, Clone)]
pub(super) struct Established {
    pub meta: Metadata,
    pub stream: Stream,
}

/// A doubling backoff between `initial` and `max`, honouring a longer `Retry-After`.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            next: Duration::from_millis(initial_ms),
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    pub(super) fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The wait before the next attempt; doubles the one after.
    pub(super) fn step(&mut self, retry_after: Option<u64>) -> Duration {
        let wait = self.next.max(Duration::from_secs(retry_after.unwrap_or(0)));
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

pub(super) async fn run(
    up: Upstreams,
    ingest: crate::ingest::Ingest,
    link: Arc<Link>,
    shutdown: CancellationToken,
) {
    let s = &up.inner.settings;
    let client = Arc::new(Client::new(
        manage::http_client(up.inner.guard.clone(), s.request_timeout_secs),
        up.inner.guard.clone(),
        &link.config,
    ));
    let mut backoff = Backoff::new(s.retry_initial_backoff_ms, s.retry_max_backoff_ms);
    let key = format!("upstream/{}", link.config.id);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // Kafka mode: one replica manages and polls each upstream.
        if !up.inner.share.owns(&key) {
            link.set_state("standby");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        let failure = match establish(&up, &link, &client).await {
            Ok(est) => {
                backoff.reset();
                link.set_state("ready");
                match follow(&up, &ingest, &link, &client, est, &shutdown).await {
                    Ok(()) => return,
                    Err(f) => f,
                }
            }
            Err(f) => f,
        };
        link.set_state(if failure.refused { "refused" } else { "error" });
        link.error(failure.kind, &failure.message);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.step(failure.retry_after)) => {}
        }
    }
}

/// Discovers, finds or creates, updates, checks and records the stream.
async fn establish(up: &Upstreams, link: &Link, client: &Client) -> Result<Established, Failure> {
    let config = &link.config;
    link.set_state("discovering");
    let meta = match discover::discover(client, config).await {
        Ok(m) => m,
        Err(DiscoverError::Refused(m)) => return Err(Failure::refused("metadata", m)),
        Err(DiscoverError::Failed(e)) => return Err(Failure::call("discovery", "metadata", e)),
    };
    // The key fetch resolves host names through the guard; an IP literal is checked here.
    let jwks_ok = reqwest::Url::parse(&meta.jwks_uri).is_ok_and(|u| up.inner.guard.permits_url(&u));
    if !jwks_ok {
        return Err(Failure::refused(
            "metadata",
            "`jwks_uri` is an address the hub may not reach".into(),
        ));
    }
    if link.stored().jwks_uri.as_deref() != Some(meta.jwks_uri.as_str()) {
        // The discovered keys become the source's keys (through the guarded client).
        link.keys.set(SourceKeys::from_uri_with(
            &config.id,
            &meta.jwks_uri,
            link.algorithms.clone(),
            up.inner.jwks.clone(),
            manage::http_client(up.inner.guard.clone(), up.inner.jwks.fetch_timeout_secs),
        ));
        let uri = meta.jwks_uri.clone();
        link.store(up, |s| s.jwks_uri = Some(uri));
    }
    link.set_state("registering");
    let desired = desired(up, link, &meta);
    let audiences = config.audiences_or(&up.inner.hub_issuer);
    // A stream found there is checked before it is updated, so not yet for its delivery.
    let check = |doc: &Value, method: Option<&str>| {
        manage::check_stream(doc, config, &audiences, method)
            .map_err(|m| Failure::refused("stream_answer", m))
    };
    let endpoint = meta.configuration_endpoint.as_str();
    let mgmt = |what: &'static str| move |e: CallError| Failure::call("management", what, e);

    // 1. The stream recorded here; 2. one of ours the transmitter lists; 3. a new one.
    let mut found: Option<Value> = None;
    if let Some(id) = link.stored().stream_id {
        match client
            .call(
                Method::GET,
                endpoint,
                Some(("stream_id", &id)),
                None,
                None,
                &[],
            )
            .await
        {
            Ok((_, doc)) if doc.is_object() => found = Some(doc),
            Ok(_) => {}
            Err(CallError::Status { status: 404, .. }) => {
                tracing::warn!(source = %config.id, "the recorded upstream stream is gone; looking for another");
            }
            Err(e) => return Err(mgmt("reading the stream")(e)),
        }
    }
    if found.is_none() {
        let (_, list) = client
            .call(Method::GET, endpoint, None, None, None, &[])
            .await
            .map_err(mgmt("listing streams"))?;
        found = ours(&list, &desired);
    }
    let answer = match found {
        Some(existing) => {
            let current = check(&existing, None)?;
            if needs_update(&current, &desired) {
                update(client, endpoint, &current.stream_id, &desired).await?
            } else {
                existing
            }
        }
        None => {
            match client
                .call(
                    Method::POST,
                    endpoint,
                    None,
                    Some(&desired.body()),
                    None,
                    &[],
                )
                .await
            {
                Ok((_, doc)) => {
                    metrics::counter!("ssf_hub_upstream_streams_created_total", "source" => config.id.clone())
                        .increment(1);
                    tracing::info!(source = %config.id, "created the upstream stream");
                    doc
                }
                // One stream per receiver there, and it exists: take it over (SSF §8.1.1.1).
                Err(CallError::Status { status: 409, .. }) => {
                    let (_, list) = client
                        .call(Method::GET, endpoint, None, None, None, &[])
                        .await
                        .map_err(mgmt("listing streams"))?;
                    let first = list
                        .as_array()
                        .and_then(|a| a.first().cloned())
                        .or_else(|| list.is_object().then_some(list))
                        .ok_or_else(|| {
                            Failure::refused(
                                "stream_answer",
                                "creating answered 409 but no stream is listed".into(),
                            )
                        })?;
                    let current = check(&first, None)?;
                    update(client, endpoint, &current.stream_id, &desired).await?
                }
                Err(e) => return Err(mgmt("creating the stream")(e)),
            }
        }
    };
    let stream = check(&answer, Some(&meta.method))?;
    if let Some((url, _)) = &desired.push {
        if stream.endpoint_url.as_deref() != Some(url.as_str()) {
            return Err(Failure::refused(
                "stream_answer",
                "the stream answer's push endpoint_url is not the hub's ingest URL".into(),
            ));
        }
    } else if stream.endpoint_url.is_none() {
        return Err(Failure::refused(
            "stream_answer",
            "the poll stream answer has no delivery endpoint_url".into(),
        ));
    }
    let missing: Vec<&String> = desired
        .events_requested
        .iter()
        .filter(|e| !stream.events_delivered.contains(e))
        .collect();
    if !missing.is_empty() {
        tracing::info!(source = %config.id, missing = missing.len(), "the transmitter delivers fewer event types than requested");
    }
    let previous = link.stored().stream_id;
    let id = stream.stream_id.clone();
    if previous.as_deref() != Some(id.as_str()) {
        // A different stream has not been verified yet.
        link.store(up, |s| {
            s.stream_id = Some(id);
            s.verified_at = None;
        });
        link.update(|s| {
            s.verification = "unverified".into();
            s.verified_at = None;
        });
    }
    link.update(|s| {
        s.stream_id = Some(stream.stream_id.clone());
        s.events_delivered = stream.events_delivered.clone();
        s.min_verification_interval = stream.min_verification_interval;
    });
    let est = Established { meta, stream };
    read_status(link, client, &est).await?;
    Ok(est)
}

/// What the configuration asks for.
fn desired(up: &Upstreams, link: &Link, meta: &Metadata) -> Desired {
    let c = &link.config;
    let events_requested: Vec<String> = if c.event_types.is_empty() {
        crate::streams::events_supported()
    } else {
        c.event_types
            .iter()
            .filter_map(|t| EventKind::parse_name(t))
            .map(|k| k.uri())
            .collect()
    };
    let push = (c.delivery == "push").then(|| {
        let token = link.stored().push_token.unwrap_or_default();
        (
            c.ingest_url_or(&up.inner.hub_issuer),
            format!("Bearer {token}"),
        )
    });
    Desired {
        method: meta.method.clone(),
        push,
        events_requested,
        description: format!("ssf-hub {} source {}", up.inner.hub_issuer, c.id),
    }
}

/// The hub's stream among those the transmitter lists: ours by description or push URL.
fn ours(list: &Value, desired: &Desired) -> Option<Value> {
    let items: Vec<&Value> = match list {
        Value::Array(a) => a.iter().collect(),
        // Pre-1.0 transmitters had one implicit stream and answered with it.
        Value::Object(_) => vec![list],
        _ => vec![],
    };
    items
        .into_iter()
        .find(|s| {
            s.get("description").and_then(Value::as_str) == Some(desired.description.as_str())
                || desired.push.as_ref().is_some_and(|(url, _)| {
                    s.pointer("/delivery/endpoint_url").and_then(Value::as_str)
                        == Some(url.as_str())
                })
        })
        .cloned()
}

/// Whether the stream differs from the configuration. A push stream is always brought up to
/// date once per establishment: the transmitter does not echo `authorization_header`, so only
/// sending it proves it current.
fn needs_update(current: &Stream, desired: &Desired) -> bool {
    let mut requested = current.events_requested.clone();
    requested.sort();
    let mut wanted = desired.events_requested.clone();
    wanted.sort();
    desired.push.is_some() || requested != wanted || current.method != desired.method
}

/// `PATCH` the receiver-supplied fields; a transmitter that refuses it gets a `PUT`.
async fn update(
    client: &Client,
    endpoint: &str,
    stream_id: &str,
    desired: &Desired,
) -> Result<Value, Failure> {
    let mut body = desired.body();
    body["stream_id"] = json!(stream_id);
    let answer = match client
        .call(Method::PATCH, endpoint, None, Some(&body), None, &[])
        .await
    {
        Ok(ok) => ok,
        Err(CallError::Status {
            status: 400 | 405 | 501,
            ..
        }) => client
            .call(Method::PUT, endpoint, None, Some(&body), None, &[])
            .await
            .map_err(|e| Failure::call("management", "replacing the stream", e))?,
        Err(e) => return Err(Failure::call("management", "updating the stream", e)),
    };
    match answer {
        // Accepted, not yet applied (SSF §8.1.1.3): read it back.
        (202, _) | (_, Value::Null) => client
            .call(
                Method::GET,
                endpoint,
                Some(("stream_id", stream_id)),
                None,
                None,
                &[],
            )
            .await
            .map(|(_, d)| d)
            .map_err(|e| Failure::call("management", "reading the stream", e)),
        (_, doc) => Ok(doc),
    }
}

/// Reads the stream's status (when the transmitter has a status endpoint).
async fn read_status(link: &Link, client: &Client, est: &Established) -> Result<(), Failure> {
    let Some(endpoint) = &est.meta.status_endpoint else {
        return Ok(());
    };
    match client
        .call(
            Method::GET,
            endpoint,
            Some(("stream_id", &est.stream.stream_id)),
            None,
            None,
            &[],
        )
        .await
    {
        Ok((_, doc)) => {
            let status = doc
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            let reason = doc.get("reason").and_then(Value::as_str).map(str::to_owned);
            link.stream_status(status, reason);
            Ok(())
        }
        Err(e @ CallError::Status { status: 404, .. }) => Err(Failure::call(
            "stream_gone",
            "the stream no longer exists upstream",
            e,
        )),
        Err(e) => Err(Failure::call("management", "reading the stream status", e)),
    }
}

/// Keeps an established stream: runs the poll loop, verifies when due, reads the status. Ends
/// with `Ok` on shutdown, or the failure after which the stream must be established again.
async fn follow(
    up: &Upstreams,
    ingest: &crate::ingest::Ingest,
    link: &Arc<Link>,
    client: &Arc<Client>,
    est: Established,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    let s = &up.inner.settings;
    let stop = shutdown.child_token();
    let _stop_poll = stop.clone().drop_guard();
    let mut poll_task = if link.config.delivery == "poll" {
        let url = est.stream.endpoint_url.clone().unwrap_or_default();
        Some(tokio::spawn(super::poll::run(
            up.clone(),
            ingest.clone(),
            link.clone(),
            client.clone(),
            url,
            stop.clone(),
        )))
    } else {
        None
    };
    if est.meta.verification_endpoint.is_none() {
        // Nothing to ask; the link works without it (the interop profile requires one).
        link.update(|st| st.verification = "unsupported".into());
    }
    let min_interval = est.stream.min_verification_interval.unwrap_or(0);
    let every = s.reverify_interval_secs.max(min_interval);
    let mut next_verify = match link.stored().verified_at {
        Some(at) => at.saturating_add(every),
        None => 0,
    };
    let mut failures = Backoff::new(s.retry_initial_backoff_ms, s.retry_max_backoff_ms);
    let mut status_tick = tokio::time::interval(Duration::from_secs(s.status_interval_secs));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status_tick.tick().await;
    loop {
        let until_verify = Duration::from_secs(next_verify.saturating_sub(crate::unix_now()));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ended = async {
                match poll_task.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            }, if poll_task.is_some() => {
                return Err(match ended {
                    Ok(f) => f,
                    Err(e) => Failure::refused("poll", format!("the poll loop stopped: {e}")),
                });
            }
            _ = tokio::time::sleep(until_verify), if est.meta.verification_endpoint.is_some() => {
                match verify(link, client, &est, s.verification_timeout_secs, shutdown).await {
                    Ok(true) => {
                        failures.reset();
                        next_verify = crate::unix_now().saturating_add(every);
                    }
                    Ok(false) => return Ok(()),
                    Err(f) => {
                        let gone = f.kind == "stream_gone";
                        link.update(|st| st.verification = "failed".into());
                        metrics::gauge!("ssf_hub_upstream_verified", "source" => link.config.id.clone()).set(0.0);
                        if gone {
                            return Err(f);
                        }
                        link.error(f.kind, &f.message);
                        // Never sooner than the transmitter allows.
                        let wait = failures.step(f.retry_after).as_secs().max(min_interval).max(1);
                        next_verify = crate::unix_now().saturating_add(wait);
                    }
                }
            }
            _ = status_tick.tick() => {
                if let Err(f) = read_status(link, client, &est).await {
                    if f.kind == "stream_gone" {
                        return Err(f);
                    }
                    link.error(f.kind, &f.message);
                }
            }
        }
    }
}

/// Asks for a verification SET with a fresh random `state` and waits for it to arrive (through
/// ingest for push, the poll loop for poll). `Ok(false)`: shut down while waiting.
async fn verify(
    link: &Link,
    client: &Client,
    est: &Established,
    timeout_secs: u64,
    shutdown: &CancellationToken,
) -> Result<bool, Failure> {
    let Some(endpoint) = &est.meta.verification_endpoint else {
        return Ok(true);
    };
    let state = uuid::Uuid::new_v4().simple().to_string();
    {
        let mut pending = lock(&link.pending_states);
        pending.push(state.clone());
        // An answer to one of the last few requests still counts (it may arrive late).
        let excess = pending.len().saturating_sub(4);
        pending.drain(..excess);
    }
    let mut verified = link.verified.subscribe();
    let seen = *verified.borrow_and_update();
    link.update(|s| s.verification = "pending".into());
    let body = json!({ "stream_id": est.stream.stream_id, "state": state });
    match client
        .call(Method::POST, endpoint, None, Some(&body), None, &[])
        .await
    {
        Ok(_) => {}
        Err(e @ CallError::Status { status: 404, .. }) => {
            return Err(Failure::call("stream_gone", "verification", e))
        }
        Err(e) => return Err(Failure::call("verification", "requesting verification", e)),
    }
    let wait = verified.wait_for(|n| *n > seen);
    tokio::select! {
        _ = shutdown.cancelled() => Ok(false),
        r = tokio::time::timeout(Duration::from_secs(timeout_secs), wait) => match r {
            Ok(Ok(_)) => Ok(true),
            _ => Err(Failure {
                kind: "verification",
                message: format!("no verification SET arrived within {timeout_secs} s"),
                retry_after: None,
                refused: false,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_to_its_ceiling_and_honours_a_longer_retry_after() {
        let mut b = Backoff::new(100, 350);
        assert_eq!(b.step(None), Duration::from_millis(100));
        assert_eq!(b.step(None), Duration::from_millis(200));
        assert_eq!(b.step(Some(2)), Duration::from_secs(2));
        assert_eq!(b.step(None), Duration::from_millis(350));
        b.reset();
        assert_eq!(b.step(None), Duration::from_millis(100));
    }
}
