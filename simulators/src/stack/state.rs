//! The state a stack's servers and its control API share: the fakes' handles, the fault set
//! and journal, the scenario runs and the executor replicas, with what fails when changing them
//! ([`StackError`]). It depends on no other part of the stack: the control API and the builder
//! depend on it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fakes::bucket::Bucket;
use crate::fakes::core::Core;
use crate::fakes::karma::Karma;
use crate::fakes::providers::Providers;
use crate::fakes::smtp::SmtpSink;
use crate::faults::scenario::Scenarios;
use crate::pillar::{Pillar, Profile};
use crate::serving::front::Front;
use crate::serving::sim::Sim;

/// How long each service gets to become healthy at start.
pub(super) const HEALTH_DEADLINE: Duration = Duration::from_secs(15);

/// Why a stack did not start (or an executor did not restart).
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A port could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which service.
        what: String,
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A service did not become healthy in time.
    #[error("{what} did not become healthy at {url} within {HEALTH_DEADLINE:?}")]
    Unhealthy {
        /// Which service.
        what: String,
        /// Its health URL.
        url: String,
    },
    /// Only Karma, Bucket and Core have an `as-built` profile.
    #[error("{0} has no as-built profile (only karma, bucket and core do)")]
    NoProfile(Pillar),
    /// The executor's or Core's settings were refused.
    #[error("configuration refused: {0}")]
    Config(String),
    /// The executor failed to start.
    #[error("executor: {0}")]
    Executor(String),
    /// The stack was built without an executor.
    #[error("this stack runs no executor")]
    NoExecutor,
    /// No executor replica has this number.
    #[error("no executor replica {0} (replicas are numbered from 0)")]
    NoReplica(usize),
    /// The data directory could not be prepared.
    #[error("executor data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Replica `index` of `slots`, or why there is none.
fn replica_slot(slots: &mut [ExecutorSlot], index: usize) -> Result<&mut ExecutorSlot, StackError> {
    match slots.len() {
        0 => Err(StackError::NoExecutor),
        _ => slots.get_mut(index).ok_or(StackError::NoReplica(index)),
    }
}

/// One executor replica (the only one without replicas).
pub(super) struct ExecutorSlot {
    pub(super) addr: SocketAddr,
    pub(super) env: HashMap<String, String>,
    pub(super) running: Option<(CancellationToken, JoinHandle<()>)>,
}

/// What the stack's servers and its control API share.
pub(crate) struct Shared {
    pub sim: Arc<Sim>,
    pub karma: Arc<Karma>,
    pub bucket: Arc<Bucket>,
    pub core: Arc<Core>,
    pub providers: Arc<Providers>,
    pub smtp: Arc<SmtpSink>,
    pub scenarios: Scenarios,
    pub addrs: BTreeMap<Pillar, SocketAddr>,
    pub shutdown: CancellationToken,
    pub(super) executors: tokio::sync::Mutex<Vec<ExecutorSlot>>,
    /// The executors' data directory (each replica's is a folder in it), and whether the stack
    /// made it (and removes it).
    pub(super) executor_dir: Mutex<Option<(PathBuf, bool)>>,
    /// The round-robin front, with several replicas.
    pub(super) front: Option<Arc<Front>>,
    pub(super) executor_addr: Mutex<Option<SocketAddr>>,
    pub(super) servers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Sets a pillar's profile.
    pub(crate) fn set_profile(&self, pillar: Pillar, profile: Profile) -> Result<(), StackError> {
        match pillar {
            Pillar::Karma => self.karma.set_profile(profile),
            Pillar::Bucket => self.bucket.set_profile(profile),
            Pillar::Core => self.core.set_profile(profile),
            Pillar::Providers | Pillar::Smtp if profile == Profile::Spec => {}
            Pillar::Providers | Pillar::Smtp => return Err(StackError::NoProfile(pillar)),
        }
        Ok(())
    }

    pub(crate) fn profile(&self, pillar: Pillar) -> Profile {
        match pillar {
            Pillar::Karma => self.karma.profile(),
            Pillar::Bucket => self.bucket.profile(),
            Pillar::Core => self.core.profile(),
            Pillar::Providers | Pillar::Smtp => Profile::Spec,
        }
    }

    /// Clears faults, scenarios, the journal and every fake's state.
    pub(crate) fn reset(&self) {
        self.scenarios.reset(&self.sim.faults);
        self.sim.faults.reset();
        self.sim.journal.clear();
        self.sim.traces.clear();
        self.bucket.clear();
        self.karma.clear();
        self.providers.clear();
        self.smtp.clear();
    }

    /// The Prometheus text, with every store's eviction count brought up to date.
    pub(crate) fn render_metrics(&self) -> String {
        let metrics = &self.sim.metrics;
        let (whatsapp, chat) = self.providers.evicted();
        metrics.evicted("journal", self.sim.journal.evicted());
        metrics.evicted("bucket", self.bucket.evicted());
        metrics.evicted("karma_events", self.karma.evicted_events());
        metrics.evicted("karma_users", self.karma.evicted_users());
        metrics.evicted("whatsapp", whatsapp);
        metrics.evicted("chat", chat);
        metrics.evicted("smtp", self.smtp.evicted());
        metrics.render()
    }

    pub(crate) fn executor_addr(&self) -> Option<SocketAddr> {
        *self.executor_addr.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) async fn start_replica(&self, index: usize) -> Result<(), StackError> {
        let mut slots = self.executors.lock().await;
        let slot = replica_slot(&mut slots, index)?;
        if slot.running.is_some() {
            return Ok(());
        }
        let mut env = slot.env.clone();
        env.insert("EXECUTOR_BIND".into(), slot.addr.to_string());
        let settings = workflow_executor::Settings::from_lookup(|name| env.get(name).cloned())
            .map_err(|e| StackError::Config(e.to_string()))?;
        // The port may still be held by the previous run's last connections for a moment.
        let deadline = tokio::time::Instant::now() + HEALTH_DEADLINE;
        let app = loop {
            match workflow_executor::Application::build(settings.clone()).await {
                Ok(app) => break app,
                Err(error) if tokio::time::Instant::now() < deadline && slot.addr.port() != 0 => {
                    tracing::debug!(%error, "executor not bound yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(StackError::Executor(error.to_string())),
            }
        };
        slot.addr = app.local_addr();
        let token = self.shutdown.child_token();
        let stop = token.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = app.run_until_stopped(stop).await {
                tracing::error!(%error, "executor stopped with an error");
            }
        });
        slot.running = Some((token, task));
        let addr = slot.addr;
        wait_healthy(&local_client(), "executor", format!("http://{addr}/healthz")).await?;
        match &self.front {
            Some(front) => front.set(index, Some(addr)),
            None => *self.executor_addr.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr),
        }
        Ok(())
    }

    pub(crate) async fn stop_replica(&self, index: usize) -> Result<(), StackError> {
        let mut slots = self.executors.lock().await;
        let slot = replica_slot(&mut slots, index)?;
        if let Some(front) = &self.front {
            front.set(index, None);
        }
        if let Some((token, task)) = slot.running.take() {
            token.cancel();
            let _ = task.await;
        }
        Ok(())
    }

    pub(crate) async fn replicas(&self) -> Vec<ReplicaStatus> {
        let slots = self.executors.lock().await;
        let served = |index| self.front.as_ref().map(|front| front.served(index));
        slots
            .iter()
            .enumerate()
            .map(|(index, slot)| ReplicaStatus {
                index,
                url: format!("http://{}", slot.addr),
                running: slot.running.is_some(),
                served: served(index),
            })
            .collect()
    }

    pub(crate) fn url(&self, pillar: Pillar) -> String {
        let addr = self.addrs[&pillar];
        if pillar.is_http() { format!("http://{addr}") } else { format!("smtp://{addr}") }
    }
}

/// One executor replica, as [`crate::Stack::replicas`] and `GET /executor/replicas` report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaStatus {
    /// Its number, from 0.
    pub index: usize,
    /// Where it listens (or last listened).
    pub url: String,
    /// Whether it runs.
    pub running: bool,
    /// Requests it answered through the front (`None` without replicas: there is no front).
    pub served: Option<u64>,
}

/// A client for the stack's own health checks (never through a proxy: everything is local).
pub(super) fn local_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build().expect("a plain client builds")
}

pub(super) async fn wait_healthy(client: &reqwest::Client, what: &str, url: String) -> Result<(), StackError> {
    let deadline = tokio::time::Instant::now() + HEALTH_DEADLINE;
    loop {
        if let Ok(response) = client.get(&url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StackError::Unhealthy { what: what.to_owned(), url });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
