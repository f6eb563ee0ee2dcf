//! Building and running the executor: the caller owns the listener and the shutdown trigger.
//!
//! [`Application::build`] opens the store, recovers executions interrupted by a crash, and binds;
//! [`Application::run_until_stopped`] serves until the token fires, then shuts down in order:
//! `/readyz` fails at once while the listener stays open for the drain delay (so load balancers
//! stop sending before connections are refused), then it stops accepting and finishes in-flight
//! requests, lets the deliverers drain for the grace period, and lets the store writer make
//! everything durable. Undelivered events stay on disk and are
//! delivered after the next start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;

use crate::adapters::Adapters;
use crate::api::{AppState, router};
use crate::clock::now_ms;
use crate::config::{BindSource, ConfigError, FullPolicy, Settings};
use crate::execution::Engine;
use crate::metrics::Metrics;
use crate::outbox::delivery::{Deliverer, SinkState};
use crate::store::embedded::{Embedded, OpenError};
use crate::store::postgres::{ConnectError, Postgres, Target};
use crate::store::{OutboxBound, SharedStore, Sink, StoreError};
use crate::telemetry::{Telemetry, TelemetryError};

/// Why the executor could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address cannot be bound; names the variable that set it.
    #[error("cannot listen on {address} (set by {variable}): {source}")]
    Bind {
        /// `EXECUTOR_BIND` or `PORT`.
        variable: &'static str,
        /// The address.
        address: SocketAddr,
        /// Why (in use, no permission, not a local address).
        source: std::io::Error,
    },
    /// The listener or the server failed.
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The PostgreSQL store could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The store could not record the recovery of interrupted executions.
    #[error("recovering executions interrupted by the last stop: {0}")]
    Store(#[from] StoreError),
    /// Span export is configured but cannot be set up.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// A built executor, bound and ready to serve.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    telemetry: Option<Telemetry>,
}

impl Application {
    /// Binds `settings.bind` and builds the executor.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let listener = TcpListener::bind(settings.bind).await.map_err(|source| StartError::Bind {
            variable: settings.bind_source.variable(),
            address: settings.bind,
            source,
        })?;
        Self::build_with_listener(settings, listener).await
    }

    /// Builds the executor on a listener the caller bound.
    pub async fn build_with_listener(settings: Settings, listener: TcpListener) -> Result<Self, StartError> {
        let metrics = Metrics::new();
        let bound = |s: &crate::config::SinkSettings| OutboxBound {
            max_events: s.max_events,
            max_bytes: s.max_bytes,
            drop_oldest: s.full_policy == FullPolicy::DropOldest,
        };
        let bounds = [bound(&settings.bucket), bound(&settings.karma)];
        let store_metrics = metrics.clone();
        let store: SharedStore = match &settings.store.url {
            Some(url) => {
                let target = Target {
                    variable: settings.store.url_variable,
                    url: url.expose(),
                    ca_file: settings.store.ca_file.as_deref(),
                    pool_size: settings.store.pool_size,
                    lease: settings.store.lease,
                };
                Postgres::connect(target, bounds, store_metrics).await?
            }
            None => {
                let dir = settings.data_dir.clone();
                tokio::task::spawn_blocking(move || Embedded::open(&dir, bounds, store_metrics))
                    .await
                    .map_err(std::io::Error::other)??
            }
        };
        let sinks = [
            Arc::new(SinkState::new(Sink::Bucket, settings.bucket.endpoint())),
            Arc::new(SinkState::new(Sink::Karma, settings.karma.endpoint())),
        ];
        let adapters = Adapters::new(&settings)?;
        let engine = Engine::new(&settings, store.clone(), adapters, metrics.clone());
        let recovered = engine.recover_interrupted().await?;
        if recovered > 0 {
            tracing::warn!(recovered, "executions interrupted by the last stop are reported as outcome_unknown");
        }
        let queued: u64 = Sink::ALL.iter().map(|s| store.depth(*s).events).sum();
        if queued > 0 {
            tracing::info!(queued, "resuming delivery of events queued before the last stop");
        }
        // Last, so that nothing can fail once the exporter and its thread exist.
        let telemetry = Telemetry::build(&settings.telemetry)?;
        let state = Arc::new(AppState {
            load: Arc::new(Semaphore::new(settings.limits.max_concurrent)),
            settings: Arc::new(settings),
            engine,
            metrics,
            store,
            sinks,
            draining: CancellationToken::new(),
            exporting: telemetry.is_some(),
        });
        Ok(Self { listener, state, telemetry })
    }

    /// The address the executor listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` fires, then shuts down gracefully.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let telemetry = self.telemetry;
        let run = Self::run(self.listener, self.state, shutdown);
        let result = match &telemetry {
            // Everything the executor does (connections, executions, deliveries) runs under the
            // exporting dispatch; spawned tasks inherit it.
            Some(telemetry) => run.with_subscriber(telemetry.dispatch().clone()).await,
            None => run.await,
        };
        if let Some(telemetry) = telemetry {
            telemetry.shutdown().await;
        }
        result
    }

    async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) -> Result<(), StartError> {
        let settings = state.settings.clone();
        let background = CancellationToken::new();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(settings.delivery.concurrency)
            .build()
            .map_err(std::io::Error::other)?;
        let mut tasks = tokio::task::JoinSet::new();
        for (sink_state, enabled) in state.sinks.iter().zip([settings.bucket.enabled, settings.karma.enabled]) {
            if !enabled {
                continue;
            }
            let deliverer = Deliverer::new(
                sink_state.clone(),
                state.store.clone(),
                http.clone(),
                settings.delivery.clone(),
                state.metrics.clone(),
            );
            tasks.spawn(deliverer.run(background.clone(), settings.shutdown_grace).with_current_subscriber());
        }
        tasks.spawn(expire_old_executions(state.store.clone(), settings.idempotency_retention, background.clone()));
        if settings.store.url.is_some() {
            // Replicas share the store: a dead one's interrupted executions are found while running.
            tasks.spawn(recover_abandoned(state.clone(), settings.store.lease, background.clone()));
        }

        let address = listener.local_addr()?;
        match settings.bind_source {
            BindSource::Port => {
                tracing::info!(%address, source = "PORT", "workflow executor listening");
            }
            BindSource::ExecutorBind | BindSource::Default => {
                tracing::info!(%address, "workflow executor listening");
            }
        }
        // Readiness fails first; the listener keeps serving for the drain delay, then closes.
        let stop_serving = CancellationToken::new();
        let drain = {
            let (state, stop_serving, delay) = (state.clone(), stop_serving.clone(), settings.connections.drain_delay);
            async move {
                shutdown.cancelled().await;
                state.draining.cancel();
                if !delay.is_zero() {
                    tracing::info!(?delay, "draining: /readyz fails while load balancers stop sending");
                    tokio::time::sleep(delay).await;
                }
                stop_serving.cancel();
            }
        };
        let serving = crate::server::serve(listener, router(state.clone()), settings.connections.clone(), stop_serving);
        tokio::join!(serving, drain);
        tracing::info!("stopped accepting requests; flushing events");
        background.cancel();
        while tasks.join_next().await.is_some() {}
        if tokio::time::timeout(Duration::from_secs(10), state.store.close()).await.is_err() {
            tracing::error!("the store did not close in time");
        }
        tracing::info!("workflow executor stopped");
        Ok(())
    }
}

/// Reports executions of replicas that died during a provider call as `outcome_unknown`, every
/// half lease (their claims are handed out once the lease expires).
async fn recover_abandoned(state: Arc<AppState>, lease: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(lease / 2) => {}
        }
        match state.engine.recover_interrupted().await {
            Ok(0) => {}
            Ok(recovered) => {
                tracing::warn!(recovered, "executions of a replica that stopped are reported as outcome_unknown")
            }
            Err(error) => tracing::warn!(%error, "cannot recover executions of stopped replicas"),
        }
    }
}

/// Drops stored answers older than the retention, every tenth of it (at most hourly).
async fn expire_old_executions(store: SharedStore, retention: Duration, stop: CancellationToken) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let before_ms = now_ms().saturating_sub(retention.as_millis() as u64);
        match store.expire(before_ms).await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "expired stored answers"),
            Err(error) => tracing::warn!(%error, "cannot expire old executions"),
        }
    }
}
