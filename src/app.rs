//! Wiring and lifecycle: builds the hub from a `Config` (log backend, sources, schemas, keys),
//! runs the HTTP server and background tasks, and drains them on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogUrl, Secret};
use crate::ingest::Source;
use crate::log::Log;
use crate::schema::Schemas;
use crate::sign::{SetSigner, SignAlg, SignError};
use crate::storage::{Budgets, Storage};

/// Everything request handlers share.
#[derive(Debug)]
pub struct Hub {
    pub config: Config,
    pub sources: HashMap<String, Source>,
    pub log: Log,
    pub schemas: Schemas,
    pub admin_token: Secret,
    /// The hub's signing keys; streams sign with `default_alg` unless they choose otherwise.
    pub keys: crate::keyring::Keyring,
    pub default_alg: SignAlg,
    pub registry: crate::streams::Registry,
    pub cursors: crate::delivery::Cursors,
    pub recent: crate::delivery::Recent,
    pub revocations: crate::revocation::Revocations,
    pub feeds: crate::feed::Feeds,
    /// Cancelled when the hub shuts down; long-lived connections (websockets) watch it.
    pub closing: CancellationToken,
    pub push_guard: Arc<crate::delivery::guard::Guard>,
    pub push_client: reqwest::Client,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Setup(String),
    #[error("opening storage: {0}")]
    Log(#[from] crate::storage::StorageError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// How often expired de-duplication keys are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl Hub {
    /// Builds the hub: opens the log, loads or creates the signing key and admin token, reads
    /// source keys. Must run inside a tokio runtime (the log starts its committer task).
    pub fn build(config: Config) -> Result<Arc<Hub>, StartError> {
        for risk in config.risks() {
            tracing::warn!("{risk}");
        }
        std::fs::create_dir_all(&config.data_dir)?;
        let storage = match config.log_url()? {
            LogUrl::Fjall(path) => Storage::embedded(
                &config.data_dir,
                &path,
                Budgets {
                    cache_bytes: config.log.cache_capacity_bytes,
                    write_buffer_bytes: config.log.write_buffer_bytes,
                },
            )?,
            LogUrl::Memory => Storage::memory(),
        };
        let flusher = crate::durable::Flusher::new(storage.tables.clone());
        let registry = crate::streams::Registry::open(storage.tables.clone(), flusher.clone())
            .map_err(|e| StartError::Setup(e.to_string()))?;
        let cursors = crate::delivery::Cursors::open(storage.tables.clone(), flusher)
            .map_err(|e| StartError::Setup(e.to_string()))?;
        let (revocations, restored_in) = crate::revocation::timed_open(storage.tables.clone())
            .map_err(|e| StartError::Setup(format!("revocation state: {e}")))?;
        tracing::info!(
            subjects = revocations.subject_count(),
            position = revocations.position(),
            ms = restored_in.as_millis() as u64,
            "revocation state restored"
        );
        let log = Log::start(storage.log.clone());
        let schemas = Schemas::compile().map_err(StartError::Setup)?;
        let sources = config
            .sources
            .iter()
            .map(|c| Source::from_config(c, &config.jwks).map(|s| (s.id.clone(), s)))
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(StartError::Setup)?;
        let alg =
            SignAlg::parse(&config.signing.alg).map_err(|e| StartError::Setup(e.to_string()))?;
        let keys = crate::keyring::Keyring::open(
            &config.data_dir.join("keys"),
            Some((&config.data_dir.join("signing-key.pem"), alg)),
            crate::keyring::Timing {
                activation_delay_secs: config.signing.activation_delay_secs,
                retired_grace_secs: config.signing.retired_grace_secs,
            },
        )
        .map_err(|e| StartError::Setup(format!("hub signing keys: {e}")))?;
        let admin_token = match &config.admin_token {
            Some(t) => t.clone(),
            None => load_or_create_token(&config.data_dir.join("admin-token"))?,
        };
        let push_guard = Arc::new(
            crate::delivery::guard::Guard::new(&config.delivery.allow_private_targets)
                .map_err(StartError::Setup)?,
        );
        let push_client = crate::delivery::push::client(
            push_guard.clone(),
            Duration::from_millis(config.delivery.push_timeout_ms),
        );
        let feeds = crate::feed::Feeds::new(config.feed.ring_capacity);
        Ok(Arc::new(Hub {
            config,
            sources,
            log,
            schemas,
            admin_token,
            keys,
            default_alg: alg,
            registry,
            cursors,
            recent: Default::default(),
            revocations,
            feeds,
            closing: CancellationToken::new(),
            push_guard,
            push_client,
            metrics: crate::telemetry::metrics_handle(),
        }))
    }
}

impl Hub {
    /// The key that signs `stream`'s SETs now: its own `signing_alg`, or the hub's.
    pub fn signer_for(&self, stream: &crate::streams::Stream) -> Result<Arc<SetSigner>, SignError> {
        let alg = match &stream.signing_alg {
            Some(name) => SignAlg::parse(name)?,
            None => self.default_alg,
        };
        self.keys
            .active(alg)
            .ok_or_else(|| SignError::Alg(format!("no active {} key", alg.name())))
    }
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

/// Serves `hub` on `listener` until `shutdown` is cancelled, then drains in-flight requests and
/// stops background tasks. Tests pass a listener on port 0 and their own token.
pub async fn run(
    hub: Arc<Hub>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let mut tasks = JoinSet::new();
    for source in hub.sources.values() {
        // Warm the JWKS cache so the first SET does not pay for the fetch.
        let hub = hub.clone();
        let id = source.id.clone();
        tasks.spawn(async move {
            if let Some(s) = hub.sources.get(&id) {
                s.keys.warm().await;
            }
        });
    }
    {
        let hub = hub.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => match hub.log.prune_keys(crate::unix_now()).await {
                        Ok(n) if n > 0 => tracing::debug!(pruned = n, "pruned expired dedupe keys"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "pruning dedupe keys failed"),
                    },
                }
            }
        });
    }
    tasks.spawn(crate::delivery::push::run(hub.clone(), shutdown.clone()));
    tasks.spawn(crate::revocation::run(hub.clone(), shutdown.clone()));
    tasks.spawn(crate::feed::run(hub.clone(), shutdown.clone()));
    {
        // Upgraded connections are outside axum's graceful shutdown; tell them to finish.
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        tasks.spawn(async move {
            shutdown.cancelled().await;
            hub.closing.cancel();
        });
    }
    let addr = listener.local_addr()?;
    tracing::info!(%addr, sources = hub.sources.len(), "ssf-hub listening");
    let app = crate::http::router(hub.clone());
    let stop = shutdown.clone();
    // Deltas, feed frames and 202s are small writes that must leave at once: without
    // TCP_NODELAY, Nagle's algorithm holds one behind an unacknowledged predecessor (delayed ACK
    // on the peer) and adds up to 40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    shutdown.cancel();
    // Background tasks get a short grace period, then are aborted.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    served.map_err(StartError::Io)
}

/// A hub running in the background of the current runtime (tests, benchmarks).
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl Running {
    /// Stops the hub and waits until it has released its storage, so the same data directory
    /// can be opened again in this process.
    pub async fn stop(self) -> Result<(), StartError> {
        self.shutdown.cancel();
        let served = self
            .task
            .await
            .map_err(|e| StartError::Setup(format!("hub task: {e}")))?;
        self.hub.log.clone().close().await;
        // Connection tasks may hold the hub a moment longer; the state database closes with
        // the last of them.
        let mut hub = self.hub;
        for _ in 0..500 {
            match Arc::try_unwrap(hub) {
                Ok(hub) => {
                    drop(hub);
                    return served;
                }
                Err(shared) => {
                    hub = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Err(StartError::Setup(
            "the hub is still in use after shutdown".into(),
        ))
    }
}

/// Builds and starts a hub on `config.listen` (port 0 picks a free port).
pub async fn spawn(config: Config) -> Result<Running, StartError> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let hub = Hub::build(config)?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(hub.clone(), listener, shutdown.clone()));
    Ok(Running {
        addr,
        hub,
        shutdown,
        task,
    })
}

/// `ssf-hub serve`: runs until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let listener = TcpListener::bind(config.listen).await?;
    let hub = Hub::build(config)?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    run(hub, listener, shutdown).await
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
