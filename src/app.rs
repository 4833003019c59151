//! The composition root: builds every part from a `Config` (storage, the journal, streams,
//! keys, ingest, upstreams, delivery, revocations, feeds), merges each part's routes, spawns the
//! named background tasks (push delivery, the revocation fold, the feed pump, key warming,
//! dedupe pruning, the upstream links) and drains them on shutdown. Nothing else in the crate
//! imports this module.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogUrl, Secret};
use crate::delivery::Delivery;
use crate::feed::Feeds;
use crate::http::AdminToken;
use crate::ingest::{Ingest, Source};
use crate::log::Log;
use crate::outbound::Minter;
use crate::revocation::Revocations;
use crate::schema::Schemas;
use crate::sign::SignAlg;
use crate::storage::{Budgets, Storage};
use crate::streams::{Cursors, Registry};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Setup(String),
    #[error("opening storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A hub, built and not yet serving: its router and what its background tasks run on.
#[derive(Debug)]
struct Parts {
    storage: Storage,
    log: Log,
    ingest: Ingest,
    upstreams: crate::upstream::Upstreams,
    delivery: Delivery,
    revocations: Arc<Revocations>,
    feeds: Feeds,
    retention: Retention,
    router: Router,
    /// `GET /metrics` without authentication, for `http.metrics_listen`.
    metrics_router: Router,
    http: crate::config::HttpConfig,
    /// Cancelled when the hub shuts down; long-lived connections (websockets) watch it.
    closing: CancellationToken,
}

/// Builds the hub: opens storage, loads or creates the signing keys and admin token, reads
/// source keys. Must run inside a tokio runtime (the log starts its committer task).
fn build(config: Config) -> Result<Parts, StartError> {
    for risk in config.risks() {
        tracing::warn!("{risk}");
    }
    // Installs the metrics recorder before the first thing is counted (start-up included).
    let metrics = crate::telemetry::metrics_handle();
    crate::storage::create_private_dir(&config.data_dir)?;
    crate::storage::check_private_dir(&config.data_dir).map_err(StartError::Setup)?;
    let storage = match config.log_url()? {
        LogUrl::Fjall(path) => {
            // A database outside the data directory (`fjall://PATH`) is held to the same rule.
            if !path.starts_with(&config.data_dir) {
                crate::storage::create_private_dir(&path)?;
                crate::storage::check_private_dir(&path).map_err(StartError::Setup)?;
            }
            Storage::embedded(
                &config.data_dir,
                &path,
                Budgets {
                    cache_bytes: config.log.cache_capacity_bytes,
                    write_buffer_bytes: config.log.write_buffer_bytes,
                },
            )?
        }
        LogUrl::Memory => Storage::memory(),
        #[cfg(feature = "kafka")]
        LogUrl::Kafka { brokers, prefix } => {
            // Before reaching the brokers: a missing secret is a configuration error.
            config.kafka_secrets()?;
            let settings = config.kafka_settings(brokers, &prefix);
            tracing::info!(?settings, "opening the kafka storage");
            // Blocks while it reads the topics back, as opening the embedded engine does.
            Storage::kafka(settings)?
        }
        #[cfg(not(feature = "kafka"))]
        LogUrl::Kafka { .. } => {
            return Err(StartError::Setup(
                "log.url is kafka:// but this binary was built without the `kafka` feature".into(),
            ))
        }
    };
    let setup = |what: &str| {
        let what = what.to_owned();
        move |e: crate::streams::RegistryError| StartError::Setup(format!("{what}: {e}"))
    };
    let flusher = crate::durable::Flusher::new(storage.tables.clone());
    let registry =
        Registry::open(storage.tables.clone(), flusher.clone()).map_err(setup("streams"))?;
    let cursors = Cursors::open(storage.tables.clone(), flusher).map_err(setup("cursors"))?;
    let (revocations, restored_in) =
        crate::revocation::timed_open(storage.local.clone()).map_err(setup("revocation state"))?;
    tracing::info!(
        subjects = revocations.subject_count(),
        position = revocations.position(),
        ms = restored_in.as_millis() as u64,
        "revocation state restored"
    );
    let removed = storage.log.take_removed();
    if !removed.is_empty() {
        let n = removed.len();
        crate::revocation::fold_removed(&revocations, removed, storage.log.earliest())
            .map_err(setup("folding records retention removed"))?;
        tracing::info!(
            records = n,
            "folded the records kept in kafka below the retention floor"
        );
    }
    let revocations = Arc::new(revocations);
    let log = Log::start(storage.log.clone());
    // On one machine the committer folds each batch as it makes it durable, so a revocation
    // is in the decision API before its 202, without a wake-up of its own.
    let fold = revocations.clone();
    log.after_commit(Box::new(move |records, through| {
        fold.fold_next(records, through)
    }));

    let mut sources = config
        .sources
        .iter()
        .map(|c| Source::from_config(c, &config.jwks))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StartError::Setup)?;
    let guard = Arc::new(
        crate::guard::Guard::new(&config.delivery.allow_private_targets)
            .map_err(StartError::Setup)?,
    );
    let shared_secret = match (&storage.cluster, config.upstreams.is_empty()) {
        (Some(_), false) => Some(config.kafka_secrets()?),
        _ => None,
    };
    let (upstreams, upstream_sources) = crate::upstream::Upstreams::new(
        &config.upstreams,
        &config.sources,
        shared_secret,
        config.upstream.clone(),
        config.jwks.clone(),
        &config.issuer,
        storage.tables.clone(),
        guard.clone(),
        crate::replicas::Share::new(storage.cluster.clone()),
    )
    .map_err(StartError::Setup)?;
    sources.extend(upstream_sources);
    let schemas = Schemas::compile().map_err(StartError::Setup)?;
    let ingest = Ingest::new(sources, schemas, log.clone(), config.ingest.clone())
        .with_control(Arc::new(upstreams.clone()));

    let alg = SignAlg::parse(&config.signing.alg).map_err(|e| StartError::Setup(e.to_string()))?;
    let timing = crate::keyring::Timing {
        activation_delay_secs: config.signing.activation_delay_secs,
        retired_grace_secs: config.signing.retired_grace_secs,
    };
    let keys = if storage.cluster.is_some() {
        // Every replica signs with, and publishes, the same keys.
        crate::keyring::Keyring::open_shared(
            storage.tables.clone(),
            config.kafka_secrets()?,
            timing,
        )
    } else {
        crate::keyring::Keyring::open(
            &config.data_dir.join("keys"),
            Some((&config.data_dir.join("signing-key.pem"), alg)),
            timing,
        )
    }
    .map_err(|e| StartError::Setup(format!("hub signing keys: {e}")))?;
    let minter = Minter::new(keys, alg, &config.issuer);
    let admin = AdminToken(match &config.admin_token {
        Some(t) => t.clone(),
        None => load_or_create_token(&config.data_dir.join("admin-token"))?,
    });
    let delivery = Delivery::new(
        log.clone(),
        registry.clone(),
        cursors.clone(),
        minter.clone(),
        config.delivery.clone(),
        guard.clone(),
        crate::replicas::Share::new(storage.cluster.clone()),
    );
    let closing = CancellationToken::new();
    if let Some(mut remote) = storage.tables.remote_changes() {
        // Other replicas' writes (Kafka mode): stream followers reload what they cached.
        let (registry, cursors, closing) = (registry.clone(), cursors.clone(), closing.clone());
        let minter = minter.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = closing.cancelled() => break,
                    changed = remote.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        registry.remote_changed();
                        cursors.wake();
                        // Another replica may have rotated a key.
                        if let Err(e) = minter.keys().reload() {
                            tracing::error!(error = %e, "reloading the signing keys");
                        }
                    }
                }
            }
        });
    }
    let feeds = Feeds::new(
        config.feed.clone(),
        log.clone(),
        revocations.clone(),
        closing.clone(),
        admin.clone(),
        registry.clone(),
    );

    let manage = crate::manage::Manage {
        registry: registry.clone(),
        cursors,
        log: log.clone(),
        minter,
        config: Arc::new(config.delivery.clone()),
        guard,
        delivery: delivery.clone(),
        admin: admin.clone(),
        dpop: config.oauth.issuer.is_some(),
    };
    let api = crate::revocation::Api {
        revocations: revocations.clone(),
        registry: registry.clone(),
        admin: admin.clone(),
    };
    let connectors =
        crate::connectors::Connectors::from_config(&config, log.clone(), admin.clone())
            .map_err(StartError::Setup)?;
    let metrics_token = config
        .http
        .metrics_token
        .clone()
        .unwrap_or_else(|| admin.0.clone());
    let metrics_router = crate::ops::metrics_routes(metrics.clone());
    let upstream_routes = crate::upstream::routes(upstreams.clone(), admin.clone());
    let ops = crate::ops::Ops {
        log: log.clone(),
        admin,
        metrics,
        metrics_token,
    };
    let oauth = crate::access::Access::from_config(&config.oauth, &config.jwks, &config.issuer)
        .map_err(StartError::Setup)?;
    let mut router = Router::new()
        .merge(crate::manage::routes(manage))
        .merge(crate::revocation::routes(api))
        .merge(crate::feed::routes(feeds.clone()))
        .merge(ingest.clone().routes())
        .merge(connectors.routes())
        .merge(upstream_routes)
        .merge(crate::ops::routes(ops));
    if let Some(access) = oauth {
        // The credential extractors find the access-token verifier here.
        router = router.layer(axum::Extension(crate::http::OAuth(Arc::new(access))));
    }
    let router = router.layer(axum::middleware::from_fn(crate::http::request_id));
    Ok(Parts {
        storage,
        log,
        ingest,
        upstreams,
        delivery,
        revocations,
        feeds,
        retention: Retention {
            log: config.log.retention,
            delta_window: config.revocation.delta_window,
        },
        router,
        metrics_router,
        http: config.http.clone(),
        closing,
    })
}

fn load_or_create_token(path: &Path) -> Result<Secret, StartError> {
    if path.exists() {
        let token = std::fs::read_to_string(path)?.trim().to_owned();
        if token.len() < 16 {
            return Err(StartError::Setup(format!(
                "{} holds a token shorter than 16 characters",
                path.display()
            )));
        }
        return Ok(Secret::new(token));
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    crate::sign::write_private(path, token.as_bytes())?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(Secret::new(token))
}

/// Serves `parts` on `listener` until `shutdown` is cancelled, then drains in-flight requests
/// and stops background tasks.
async fn run(
    parts: Parts,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let Parts {
        storage: _,
        log,
        ingest,
        upstreams,
        delivery,
        revocations,
        feeds,
        retention,
        router,
        metrics_router,
        http,
        closing,
    } = parts;
    let mut tasks = JoinSet::new();
    let sources = ingest.source_count();
    tasks.spawn(upstreams.run(ingest.clone(), shutdown.clone()));
    tasks.spawn(ingest.warm_keys());
    tasks.spawn(sweep(
        log.clone(),
        revocations.clone(),
        retention,
        shutdown.clone(),
    ));
    tasks.spawn(crate::delivery::push::run(delivery, shutdown.clone()));
    tasks.spawn(crate::revocation::run(revocations, log, shutdown.clone()));
    tasks.spawn(crate::feed::run(feeds, shutdown.clone()));
    {
        // Upgraded connections are outside axum's graceful shutdown; tell them to finish.
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            shutdown.cancelled().await;
            closing.cancel();
        });
    }
    let limits = crate::transport::Limits::new(&http, crate::transport::raise_fd_limit());
    if let Some(addr) = http.metrics_listen {
        let listener = TcpListener::bind(addr).await?;
        tracing::info!(metrics_addr = %listener.local_addr()?, "metrics listening (no authentication)");
        // Scrapers are few; their own small cap keeps the main one for API clients.
        let metrics_limits = crate::transport::Limits {
            max_connections: limits.max_connections.min(64),
            ..limits
        };
        tasks.spawn(crate::transport::serve(
            listener,
            metrics_router,
            metrics_limits,
            shutdown.clone(),
        ));
    }
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        sources,
        max_connections = limits.max_connections,
        "ssf-hub listening"
    );
    crate::transport::serve(listener, router, limits, shutdown.clone()).await;
    shutdown.cancel();
    // Background tasks get a short grace period, then are aborted.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    Ok(())
}

/// What the retention sweep keeps.
#[derive(Debug, Clone, Copy)]
struct Retention {
    log: crate::log::Retention,
    delta_window: u64,
}

/// Every `log.retention.sweep_secs` until `shutdown`: removes the records retention no longer
/// keeps, the deltas of removed records (and those beyond the delta window), and expired
/// de-duplication keys. Runs beside ingest on the blocking pool, in slices, never holding the
/// log's committer.
#[tracing::instrument(name = "retention_sweep", skip_all)]
async fn sweep(
    log: Log,
    revocations: Arc<Revocations>,
    retention: Retention,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(retention.log.sweep_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match log.retain(&retention.log, crate::unix_now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, earliest = log.earliest(), "log retention"),
            Err(e) => tracing::warn!(error = %e, "log retention failed"),
        }
        let (earliest, window, r) = (log.earliest(), retention.delta_window, revocations.clone());
        match tokio::task::spawn_blocking(move || r.trim(earliest, window)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(removed = n, "revocation delta retention"),
            Ok(Err(e)) => tracing::warn!(error = %e, "revocation delta retention failed"),
            Err(e) => tracing::warn!(error = %e, "revocation delta retention failed"),
        }
        match log.prune_keys(crate::unix_now()).await {
            Ok(n) if n > 0 => tracing::debug!(pruned = n, "pruned expired dedupe keys"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning dedupe keys failed"),
        }
    }
}

/// A hub running in the background of the current runtime (tests, benchmarks).
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// The journal, for test fixtures that append records without going through ingest.
    pub log: Log,
    storage: Storage,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl Running {
    /// Stops the hub and waits until it has released its storage, so the same data directory
    /// can be opened again in this process.
    pub async fn stop(self) -> Result<(), StartError> {
        let Running {
            log,
            storage,
            shutdown,
            task,
            ..
        } = self;
        shutdown.cancel();
        let served = task
            .await
            .map_err(|e| StartError::Setup(format!("hub task: {e}")))?;
        log.close().await;
        // Connection tasks may hold parts of the hub a moment longer; the storage closes with
        // the last of them, and this handle is then the only one left.
        // (`local` is the same tables as `tables` except in Kafka mode.)
        let own = if Arc::ptr_eq(&storage.tables, &storage.local) {
            2
        } else {
            1
        };
        for _ in 0..500 {
            if Arc::strong_count(&storage.log) == 1
                && Arc::strong_count(&storage.tables) == own
                && Arc::strong_count(&storage.local) == own
            {
                drop(storage);
                return served;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(StartError::Setup(
            "the hub's storage is still in use after shutdown".into(),
        ))
    }
}

/// Builds and starts a hub on `config.listen` (port 0 picks a free port).
pub async fn spawn(config: Config) -> Result<Running, StartError> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let parts = build(config)?;
    let (log, storage) = (parts.log.clone(), parts.storage.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(parts, listener, shutdown.clone()));
    Ok(Running {
        addr,
        log,
        storage,
        shutdown,
        task,
    })
}

/// `ssf-hub serve`: runs until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let listener = TcpListener::bind(config.listen).await?;
    let parts = build(config)?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    run(parts, listener, shutdown).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
