//! Running the service: open the store, make sure a key exists, serve HTTP until SIGTERM or
//! SIGINT, then stop taking requests and drain the write queue before exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use axum::Router;

use crate::api::{AccessLimits, AppState, BodyMemory, Services, router};
use crate::audit::AuditLog;
use crate::audit::security::SecurityRecorder;
use crate::auth::rate_limit::{MemoryRateLimiter, RateLimiter, RedisRateLimiter};
use crate::auth::{Authenticator, IssuedKey, KeyService};
use crate::bus::{DeliveryConfig, DeliveryWorker};
use crate::config::DEFAULT_RATE_LIMIT;
use crate::config::{DatabaseLocation, ServeArgs, StoreArgs};
use crate::domain::masking::MaskPolicy;
use crate::ingest::latency::LatencyRecorder;
use crate::jobs;
use crate::store::Store;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::sqlite::serve_lock::{self, ServeLock};

/// Opens the configured store (creating and migrating it as needed).
pub async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    match args.location()? {
        DatabaseLocation::Sqlite(path) => {
            let options = args.sqlite_options(path);
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(options))
                .await
                .context("opening the store")??;
            Ok(Arc::new(store))
        }
        DatabaseLocation::Postgres(url) => {
            let store = PostgresStore::open(args.postgres_options(url)).await?;
            Ok(Arc::new(store))
        }
    }
}

/// A server running in the background.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The admin key created on first start of an empty store, if any (shown once).
    pub bootstrap_key: Option<IssuedKey>,
    pub store: Arc<dyn Store>,
    /// Key management wired to this server's authenticator (changes apply at once).
    pub keys: KeyService,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
    audit_writer: Option<JoinHandle<()>>,
    retention: Option<JoinHandle<()>>,
    security: SecurityRecorder,
    security_flusher: JoinHandle<()>,
    latency: LatencyRecorder,
    latency_flusher: JoinHandle<()>,
    deliveries: DeliveryWorker,
    /// The Merkle tree keeper (`integrity::keeper`).
    tree_keeper: JoinHandle<()>,
    /// Raised when the server stops: open event streams end, so the drain need not wait.
    stopping: tokio::sync::watch::Sender<bool>,
    /// A SQLite store's one-server lock, given up once the store has stopped.
    serve_lock: Option<ServeLock>,
}

impl RunningServer {
    /// Stops accepting connections, finishes in-flight requests, then drains the store's queue.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stopping.send(true);
        let _ = self.shutdown.send(());
        self.task.await.context("server task")?;
        self.deliveries.stop().await;
        self.tree_keeper.abort();
        if let Some(job) = self.retention {
            job.abort();
        }
        self.security_flusher.abort();
        self.security.flush(self.store.as_ref()).await;
        self.latency_flusher.abort();
        self.latency.flush(self.store.as_ref()).await;
        // The router (and so the audit queue's sender) is gone: the writer stores what is left.
        if let Some(writer) = self.audit_writer {
            let _ = writer.await;
        }
        self.store.shutdown().await;
        drop(self.serve_lock);
        Ok(())
    }
}

/// Starts the service on `args.listen` and returns once it accepts connections.
pub async fn start(args: ServeArgs) -> anyhow::Result<RunningServer> {
    start_with(args, Router::new()).await
}

/// `start`, with `extra` routes behind the API's access and audit layers (`api::router`).
pub async fn start_with(args: ServeArgs, extra: Router<AppState>) -> anyhow::Result<RunningServer> {
    let limits = args.limits()?;
    let default_client = args.default_client()?;
    // The port first: a start that can't listen leaves no files behind.
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let serve_lock = match args.store.location()? {
        DatabaseLocation::Sqlite(path) => Some(serve_lock::claim(&path)?),
        DatabaseLocation::Postgres(_) => None,
    };
    let signer = args
        .integrity
        .signer(&args.store.location()?)
        .context("the checkpoint signing key")?;
    let store = open_store(&args.store).await?;
    let auth = Arc::new(Authenticator::new(
        store.clone(),
        args.api_key.as_deref(),
        default_client.clone(),
        args.rate_limit_per_minute,
    ));
    auth.watch_key_changes();
    let keys = KeyService::new(store.clone(), Some(auth.clone()));
    let limiter: Arc<dyn RateLimiter> =
        match &args.redis_url {
            Some(url) => Arc::new(RedisRateLimiter::connect(url).await.context(
                "ANNALS_REDIS_URL is no Redis URL (redis://[:password@]host[:port][/db])",
            )?),
            None => Arc::new(MemoryRateLimiter::default()),
        };
    // The last step that can fail: a first admin key made by a start that then failed would
    // never be shown, and the next start, finding a key, would make none.
    let bootstrap_key = if args.api_key.is_none() {
        keys.bootstrap_admin(&default_client)
            .await
            .context("creating the first admin key")?
    } else {
        None
    };
    let (audit, audit_writer) = if args.audit_log {
        let (log, writer) = AuditLog::start(store.clone());
        (Some(log), Some(writer))
    } else {
        (None, None)
    };
    let retention = jobs::retention::spawn(
        store.clone(),
        jobs::retention::RetentionConfig {
            audit_days: args.audit_retention_days,
            event_days: args.event_retention_days,
            delivery_days: args.delivery_retention_days,
            interval: std::time::Duration::from_secs(args.retention_interval_secs.max(1)),
        },
    );
    let (security, security_flusher) = SecurityRecorder::start(
        store.clone(),
        MaskPolicy::new(&args.mask_fields, args.anonymize_ip),
    );
    let (latency, latency_flusher) = LatencyRecorder::start(store.clone());
    let (stopping, stop_streams) = tokio::sync::watch::channel(false);
    let deliveries = DeliveryWorker::start(
        store.clone(),
        DeliveryConfig {
            allow_private: args.webhook_allow_private,
            timeout: Duration::from_secs(args.webhook_timeout_secs),
            retry_base: Duration::from_millis(args.webhook_retry_base_ms),
            concurrency: args.webhook_concurrency as usize,
            poll: Duration::from_millis(500),
        },
    )
    .context("starting the webhook delivery worker")?;
    let tree_keeper = crate::integrity::keeper::spawn(
        store.clone(),
        signer.clone(),
        args.integrity.tree_interval,
        Duration::from_secs(args.integrity.checkpoint_interval_secs),
    );
    let app = router(
        AppState::new(Services {
            store: store.clone(),
            auth,
            keys: keys.clone(),
            limits,
            body_memory: BodyMemory::new(limits.body_memory_bytes),
            access: AccessLimits {
                limiter,
                default_rate_limit: args.rate_limit_per_minute.unwrap_or(DEFAULT_RATE_LIMIT),
                failure_limiter: Arc::new(MemoryRateLimiter::default()),
                failed_auth_per_minute: args.failed_auth_per_minute,
            },
            audit,
            security: security.clone(),
            mask: MaskPolicy::new(&args.mask_fields, args.anonymize_ip),
            type_policy: args.event_type_policy,
            audit_bodies: args.audit_bodies,
            webhook_allow_private: args.webhook_allow_private,
            webhook_retry_base: Duration::from_millis(args.webhook_retry_base_ms),
            streams: crate::api::stream::Streams::new(stop_streams),
            latency: latency.clone(),
            telemetry: Default::default(),
            signer,
        }),
        extra,
    );
    let listen_options = crate::listener::Options {
        read_timeout: limits.read_timeout,
        drain_timeout: Duration::from_secs(args.shutdown_timeout_secs),
        max_connections: args.max_connections,
        trusted_proxies: args.trusted_proxies.clone(),
    };
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        crate::listener::serve(listener, app, listen_options, async {
            let _ = stopped.await;
        })
        .await;
    });
    Ok(RunningServer {
        addr,
        bootstrap_key,
        store,
        keys,
        shutdown,
        task,
        audit_writer,
        retention,
        security,
        security_flusher,
        latency,
        latency_flusher,
        deliveries,
        tree_keeper,
        stopping,
        serve_lock,
    })
}

/// `annals serve`: runs until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while starting must still mean a clean stop.
    let stop = shutdown_signal()?;
    let server = start(args).await?;
    if let Some(issued) = &server.bootstrap_key {
        println!(
            "Created the first admin key (client '{}'). It is shown only this once; store it now:\n\n    {}\n",
            issued.record.client_id, issued.key
        );
    }
    tracing::info!(addr = %server.addr, store = server.store.backend(), database = %server.store.location(), "annals is listening");
    stop.await;
    tracing::info!("shutting down: finishing requests and draining the write queue");
    server.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
