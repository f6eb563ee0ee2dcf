//! The whole five-pillar stack in one process: [`Stack::builder`] starts Karma, Bucket, Core, the
//! providers, the SMTP sink, the executor (optional) and the control API, in that order, each
//! waited on until healthy, and returns typed handles.
//!
//! By default everything binds `127.0.0.1:0`, so every test gets its own isolated stack;
//! `pillar-sim up` uses the same builder with [`Ports::standard`]. The executor runs in-process
//! (`workflow_executor::Application`) with its pillar and provider URLs pointed at the fakes and a
//! temporary data directory (removed when the stack stops, unless one was given); it can be
//! stopped and started again on the same port and data directory. Dropping a `Stack` stops
//! everything; [`Stack::stop`] does the same and waits for it.
//!
//! **Replicas.** [`StackBuilder::executor_replicas`] runs several executors on one shared
//! PostgreSQL store (`EXECUTOR_STORE_URL`, required then), each on its own loopback port, behind a
//! round-robin front on the executor's port ([`crate::serving::front`]); [`Stack::stop_replica`] and
//! [`Stack::start_replica`] (and the control API's `/executor/replicas` routes) let a user watch
//! the others take over.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::fakes::bucket::Bucket;
use crate::fakes::core::Core;
use crate::fakes::karma::{Karma, KarmaLimits};
use crate::fakes::providers::Providers;
use crate::fakes::smtp::{SmtpHandler, SmtpSink};
use crate::faults::fault::FaultRule;
use crate::faults::injector::RuleStatus;
use crate::faults::scenario::{Scenario, ScenarioStatus, Scenarios};
use crate::faults::schema::SpecError;
use crate::pillar::{Pillar, Profile};
use crate::record::bounded::Limits;
use crate::record::journal::Journal;
use crate::serving::front::Front;
use crate::serving::listener::{HttpHandler, supervise};
use crate::serving::sim::Sim;
use crate::stack::state::{
    ExecutorSlot, HEALTH_DEADLINE, ReplicaStatus, Shared, StackError, local_client, wait_healthy,
};

/// The ports to bind; 0 picks a free one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Karma.
    pub karma: u16,
    /// Bucket.
    pub bucket: u16,
    /// Core.
    pub core: u16,
    /// WhatsApp and OpenAI-compatible providers.
    pub providers: u16,
    /// SMTP sink.
    pub smtp: u16,
    /// The executor.
    pub executor: u16,
    /// The control API.
    pub control: u16,
}

impl Ports {
    /// Every port picked by the system (the default).
    pub fn ephemeral() -> Self {
        Self { karma: 0, bucket: 0, core: 0, providers: 0, smtp: 0, executor: 0, control: 0 }
    }

    /// The documented ports: Karma 8000, Bucket 8001, Core 8002, executor 8003, providers 8010,
    /// SMTP 2525, control 8090.
    pub fn standard() -> Self {
        Self { karma: 8000, bucket: 8001, core: 8002, providers: 8010, smtp: 2525, executor: 8003, control: 8090 }
    }

    fn of(&self, pillar: Pillar) -> u16 {
        match pillar {
            Pillar::Karma => self.karma,
            Pillar::Bucket => self.bucket,
            Pillar::Core => self.core,
            Pillar::Providers => self.providers,
            Pillar::Smtp => self.smtp,
        }
    }
}

/// The limits of every bounded store of a stack; with the defaults, `pillar-sim up` (executor
/// included) peaked at 260 MiB RSS in a 10-minute soak at 1,000 executions/s (README,
/// "Performance").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// The request journal.
    pub journal: Limits,
    /// Bucket's events.
    pub bucket: Limits,
    /// Karma's applied events (`entries`/`bytes`) and users.
    pub karma: KarmaLimits,
    /// Each provider's log (WhatsApp messages; chat completions).
    pub providers: Limits,
    /// The SMTP sink's messages.
    pub smtp: Limits,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            journal: crate::record::journal::DEFAULT_LIMITS,
            bucket: crate::fakes::bucket::DEFAULT_LIMITS,
            karma: crate::fakes::karma::DEFAULT_LIMITS,
            providers: crate::fakes::providers::DEFAULT_LIMITS,
            smtp: crate::fakes::smtp::DEFAULT_LIMITS,
        }
    }
}

impl StoreLimits {
    /// The same limits for the journal and every fake's log (Karma's user limit is kept).
    pub fn all(limits: Limits) -> Self {
        let mut all = Self { journal: limits, bucket: limits, providers: limits, smtp: limits, ..Self::default() };
        all.karma.events = limits;
        all
    }
}

/// Configures and starts a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackBuilder {
    seed: u64,
    profiles: BTreeMap<Pillar, Profile>,
    executor: bool,
    executor_replicas: usize,
    executor_env: BTreeMap<String, String>,
    executor_data_dir: Option<PathBuf>,
    core_env: BTreeMap<String, String>,
    ip: IpAddr,
    ports: Ports,
    control: bool,
    workflow_events_enabled: bool,
    behavioral_tracking: bool,
    whatsapp_token: Option<String>,
    ai_api_key: Option<String>,
    limits: StoreLimits,
}

impl Default for StackBuilder {
    fn default() -> Self {
        Self {
            seed: 0,
            profiles: BTreeMap::new(),
            executor: false,
            executor_replicas: 1,
            executor_env: BTreeMap::new(),
            executor_data_dir: None,
            core_env: BTreeMap::new(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: Ports::ephemeral(),
            control: true,
            workflow_events_enabled: true,
            behavioral_tracking: true,
            whatsapp_token: Some("sim-whatsapp-token".into()),
            ai_api_key: Some("sim-ai-key".into()),
            limits: StoreLimits::default(),
        }
    }
}

impl StackBuilder {
    /// The seed of every random fault decision (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The profile of one pillar (default `spec`; only Karma, Bucket and Core have `as-built`).
    pub fn profile(mut self, pillar: Pillar, profile: Profile) -> Self {
        self.profiles.insert(pillar, profile);
        self
    }

    /// The same profile for Karma, Bucket and Core.
    pub fn profile_all(mut self, profile: Profile) -> Self {
        for pillar in Pillar::ALL.into_iter().filter(|p| p.has_profiles()) {
            self.profiles.insert(pillar, profile);
        }
        self
    }

    /// Whether to run the executor in-process (default false).
    pub fn executor(mut self, run: bool) -> Self {
        self.executor = run;
        self
    }

    /// How many executor replicas to run (default 1). More than one needs a shared store
    /// (`EXECUTOR_STORE_URL` or `DATABASE_URL` in [`StackBuilder::executor_env`]); they listen on
    /// ephemeral ports behind a round-robin front on the executor's port.
    pub fn executor_replicas(mut self, replicas: usize) -> Self {
        self.executor_replicas = replicas;
        self
    }

    /// An executor setting (environment variable name and value), over the stack's defaults.
    pub fn executor_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.executor_env.insert(name.into(), value.into());
        self
    }

    /// The executor's data directory (kept when the stack stops); a temporary one otherwise.
    pub fn executor_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.executor_data_dir = Some(dir.into());
        self
    }

    /// A setting of Core's environment: `ENABLE_WORKFLOW_EXECUTION`, `WORKFLOW_EXECUTOR_URL`
    /// (default: the in-process executor, else the executor's port on the stack's IP, 8003 for
    /// ephemeral ports), `WORKFLOW_TIMEOUT`,
    /// `WORKFLOW_EXECUTOR_TOKEN`.
    pub fn core_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.core_env.insert(name.into(), value.into());
        self
    }

    /// The address to bind (default 127.0.0.1).
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = ip;
        self
    }

    /// The ports to bind (default: all ephemeral).
    pub fn ports(mut self, ports: Ports) -> Self {
        self.ports = ports;
        self
    }

    /// Whether to serve the control API (default true).
    pub fn control(mut self, serve: bool) -> Self {
        self.control = serve;
        self
    }

    /// Bucket's `WORKFLOW_EVENTS_ENABLED` (default true).
    pub fn workflow_events_enabled(mut self, enabled: bool) -> Self {
        self.workflow_events_enabled = enabled;
        self
    }

    /// Karma's `WORKFLOW_BEHAVIORAL_TRACKING` (default true).
    pub fn behavioral_tracking(mut self, enabled: bool) -> Self {
        self.behavioral_tracking = enabled;
        self
    }

    /// The WhatsApp access token the provider fake requires (default `sim-whatsapp-token`, given
    /// to the executor too); `None` checks no token.
    pub fn whatsapp_token(mut self, token: Option<String>) -> Self {
        self.whatsapp_token = token;
        self
    }

    /// The AI API key the provider fake requires (default `sim-ai-key`, given to the executor
    /// too); `None` accepts any or none.
    pub fn ai_api_key(mut self, key: Option<String>) -> Self {
        self.ai_api_key = key;
        self
    }

    /// How many journal entries are kept (default 5,000).
    pub fn journal_capacity(mut self, capacity: usize) -> Self {
        self.limits.journal.entries = capacity;
        self
    }

    /// How many entries and bytes the journal keeps (default 5,000 and 24 MiB).
    pub fn journal_limits(mut self, limits: Limits) -> Self {
        self.limits.journal = limits;
        self
    }

    /// The limits of the journal and every fake's store (defaults: [`StoreLimits::default`]).
    pub fn store_limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Starts everything, in order, waiting for each to be healthy.
    pub async fn start(self) -> Result<Stack, StackError> {
        Stack::start_with(self).await
    }
}

/// A running stack. See the crate documentation for a tour.
pub struct Stack {
    shared: Arc<Shared>,
    control_addr: Option<SocketAddr>,
    /// The credentials the providers require, handed to every executor pointed at them.
    whatsapp_token: Option<String>,
    ai_api_key: Option<String>,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("seed", &self.shared.sim.seed)
            .field("addrs", &self.shared.addrs)
            .field("executor", &self.shared.executor_addr())
            .field("control", &self.control_addr)
            .finish()
    }
}

/// The fault rules of a stack (borrowed from it).
#[derive(Debug, Clone, Copy)]
pub struct Faults<'a> {
    sim: &'a Sim,
}

impl Faults<'_> {
    /// Validates and sets a rule (replacing one with the same id); its windows start now.
    pub fn set(&self, rule: FaultRule) -> Result<RuleStatus, SpecError> {
        self.sim.faults.set(rule)
    }

    /// Removes a rule; false when there is none with that id.
    pub fn clear(&self, id: &str) -> bool {
        self.sim.faults.clear(id)
    }

    /// Removes every rule; returns how many there were.
    pub fn clear_all(&self) -> usize {
        self.sim.faults.clear_all()
    }

    /// The rules that still apply.
    pub fn list(&self) -> Vec<RuleStatus> {
        self.sim.faults.list()
    }
}

async fn wait_smtp_greeting(addr: SocketAddr) -> Result<(), StackError> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + HEALTH_DEADLINE;
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            let mut greeting = [0u8; 3];
            if stream.read_exact(&mut greeting).await.is_ok() && &greeting == b"220" {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StackError::Unhealthy { what: "smtp".into(), url: format!("smtp://{addr}") });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Stack {
    /// A builder with the defaults: seed 0, `spec` everywhere, no executor, ephemeral ports on
    /// 127.0.0.1, control API on.
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    async fn start_with(b: StackBuilder) -> Result<Self, StackError> {
        for (pillar, profile) in &b.profiles {
            if *profile == Profile::AsBuilt && !pillar.has_profiles() {
                return Err(StackError::NoProfile(*pillar));
            }
        }
        if b.executor && b.executor_replicas == 0 {
            return Err(StackError::Config("executor replicas: at least 1".into()));
        }
        let shared_store = ["EXECUTOR_STORE_URL", "DATABASE_URL"].iter().any(|v| b.executor_env.contains_key(*v));
        if b.executor && b.executor_replicas > 1 && !shared_store {
            return Err(StackError::Config(format!(
                "{} executor replicas need a shared store: set EXECUTOR_STORE_URL to a PostgreSQL URL \
                 (pillar-sim up --store-url)",
                b.executor_replicas
            )));
        }
        let profile = |p: Pillar| b.profiles.get(&p).copied().unwrap_or_default();
        let sim = Arc::new(Sim::new(b.seed, b.limits.journal));
        let shutdown = CancellationToken::new();
        // Until the stack is handed out, any early return stops what was started.
        let guard = shutdown.clone().drop_guard();
        let karma = Arc::new(Karma::new(profile(Pillar::Karma), b.behavioral_tracking, b.limits.karma));
        let bucket = Arc::new(Bucket::new(profile(Pillar::Bucket), b.workflow_events_enabled, b.limits.bucket));
        let core = Arc::new(Core::new(profile(Pillar::Core)));
        let providers =
            Arc::new(Providers::new(sim.clone(), b.whatsapp_token.clone(), b.ai_api_key.clone(), b.limits.providers));
        let smtp = Arc::new(SmtpSink::new(sim.clone(), b.limits.smtp));
        let client = local_client();

        let mut addrs = BTreeMap::new();
        let mut servers = Vec::new();
        for pillar in Pillar::ALL {
            let wanted = SocketAddr::new(b.ip, b.ports.of(pillar));
            let listener = TcpListener::bind(wanted).await.map_err(|source| StackError::Bind {
                what: pillar.to_string(),
                addr: wanted,
                source,
            })?;
            let addr = listener.local_addr().expect("bound");
            let token = shutdown.clone();
            let server = match pillar {
                Pillar::Smtp => {
                    tokio::spawn(supervise(pillar, listener, sim.clone(), SmtpHandler(smtp.clone()), token))
                }
                _ => {
                    let router = match pillar {
                        Pillar::Karma => karma.clone().router(),
                        Pillar::Bucket => bucket.clone().router(),
                        Pillar::Core => core.clone().router(),
                        _ => providers.clone().router(),
                    };
                    let router = crate::serving::middleware::faulted(router, pillar, sim.clone());
                    tokio::spawn(supervise(pillar, listener, sim.clone(), HttpHandler(router), token))
                }
            };
            servers.push(server);
            addrs.insert(pillar, addr);
            match pillar {
                Pillar::Smtp => wait_smtp_greeting(addr).await?,
                _ => wait_healthy(&client, pillar.as_str(), format!("http://{addr}/health")).await?,
            }
        }

        let shared = Arc::new(Shared {
            sim,
            karma,
            bucket,
            core,
            providers,
            smtp,
            scenarios: Scenarios::default(),
            addrs,
            shutdown: shutdown.clone(),
            executors: tokio::sync::Mutex::new(Vec::new()),
            executor_dir: Mutex::new(None),
            front: (b.executor && b.executor_replicas > 1).then(|| Front::new(b.executor_replicas)),
            executor_addr: Mutex::new(None),
            servers: Mutex::new(servers),
        });
        guard.disarm();
        // From here on, dropping `stack` (an early return) stops everything.
        let mut stack = Stack {
            shared: shared.clone(),
            control_addr: None,
            whatsapp_token: b.whatsapp_token.clone(),
            ai_api_key: b.ai_api_key.clone(),
        };

        // The control port is bound before the executor starts: it receives the executor's spans.
        let control_listener = if b.control {
            let wanted = SocketAddr::new(b.ip, b.ports.control);
            let listener = TcpListener::bind(wanted).await.map_err(|source| StackError::Bind {
                what: "control".into(),
                addr: wanted,
                source,
            })?;
            Some(listener)
        } else {
            None
        };
        let control_addr = control_listener.as_ref().and_then(|l| l.local_addr().ok());

        if b.executor {
            stack.start_executors(&b, control_addr).await?;
        }

        let mut core_env: HashMap<String, String> = b.core_env.into_iter().collect();
        // Without an executor of its own, Core dispatches to the executor's port on the stack's IP.
        let own_port = if b.ports.executor == 0 { 8003 } else { b.ports.executor };
        let executor_url = shared
            .executor_addr()
            .map_or_else(|| format!("http://{}", SocketAddr::new(b.ip, own_port)), |a| format!("http://{a}"));
        core_env.entry("WORKFLOW_EXECUTOR_URL".into()).or_insert(executor_url);
        shared.core.configure(&core_env).map_err(|e| StackError::Config(e.to_string()))?;

        stack.control_addr = if let Some(listener) = control_listener {
            let addr = listener.local_addr().expect("bound");
            let router = crate::stack::control::router(shared.clone());
            let token = shutdown.clone();
            let server = tokio::spawn(async move {
                let serve = axum::serve(listener, router).with_graceful_shutdown(token.cancelled_owned());
                if let Err(error) = serve.await {
                    tracing::warn!(%error, "control API stopped");
                }
            });
            shared.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(server);
            wait_healthy(&client, "control", format!("http://{addr}/health")).await?;
            Some(addr)
        } else {
            None
        };
        // The health checks above are not part of anyone's story.
        stack.shared.sim.journal.clear();
        Ok(stack)
    }

    fn executor_defaults(
        &self,
        b: &StackBuilder,
        data_dir: &std::path::Path,
        control: Option<SocketAddr>,
    ) -> HashMap<String, String> {
        let mut env: HashMap<String, String> =
            self.neighbours_env().into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
        env.insert("EXECUTOR_DATA_DIR".into(), data_dir.display().to_string());
        // No load balancer in front of the simulator: stop without a readiness drain.
        env.insert("EXECUTOR_DRAIN_DELAY".into(), "0".into());
        if let Some(control) = control {
            // Spans go to the control port's OTLP receiver, a fifth of a second after they end.
            env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://{control}"));
            env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into());
        }
        env.extend(b.executor_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// Creates the executors' data directory and slots, starts every replica and, with several,
    /// the front on the executor's port.
    async fn start_executors(&self, b: &StackBuilder, control: Option<SocketAddr>) -> Result<(), StackError> {
        let (base, temporary) = match &b.executor_data_dir {
            Some(dir) => (dir.clone(), false),
            None => (std::env::temp_dir().join(format!("pillar-sim-executor-{}", uuid::Uuid::new_v4())), true),
        };
        std::fs::create_dir_all(&base).map_err(|source| StackError::DataDir { path: base.clone(), source })?;
        *self.shared.executor_dir.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((base.clone(), temporary));
        let wanted = b
            .executor_env
            .get("EXECUTOR_BIND")
            .and_then(|a| a.parse().ok())
            .unwrap_or(SocketAddr::new(b.ip, b.ports.executor));
        let replicated = b.executor_replicas > 1;
        let mut slots = Vec::new();
        for index in 0..b.executor_replicas {
            let data_dir = if replicated { base.join(format!("replica-{index}")) } else { base.clone() };
            std::fs::create_dir_all(&data_dir)
                .map_err(|source| StackError::DataDir { path: data_dir.clone(), source })?;
            let env = self.executor_defaults(b, &data_dir, control);
            let addr = if replicated { SocketAddr::new(b.ip, 0) } else { wanted };
            slots.push(ExecutorSlot { addr, env, running: None });
        }
        *self.shared.executors.lock().await = slots;
        for index in 0..b.executor_replicas {
            self.start_replica(index).await?;
        }
        let Some(front) = &self.shared.front else {
            return Ok(());
        };
        let listener = TcpListener::bind(wanted).await.map_err(|source| StackError::Bind {
            what: "executor front".into(),
            addr: wanted,
            source,
        })?;
        let addr = listener.local_addr().expect("bound");
        let (router, token) = (front.clone().router(), self.shared.shutdown.clone());
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(token.cancelled_owned());
            if let Err(error) = serve.await {
                tracing::warn!(%error, "executor front stopped");
            }
        });
        self.shared.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(server);
        *self.shared.executor_addr.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr);
        Ok(())
    }

    /// How many executor replicas the stack has (an error when it runs no executor).
    async fn replica_count(&self) -> Result<usize, StackError> {
        match self.shared.executors.lock().await.len() {
            0 => Err(StackError::NoExecutor),
            replicas => Ok(replicas),
        }
    }

    /// Starts every executor replica again after [`Stack::stop_executor`]; a no-op for those
    /// that run.
    pub async fn start_executor(&self) -> Result<(), StackError> {
        for index in 0..self.replica_count().await? {
            self.start_replica(index).await?;
        }
        Ok(())
    }

    /// Stops every executor replica gracefully (each finishes its in-flight work and keeps its
    /// outbox); ports and data directories are kept for [`Stack::start_executor`].
    pub async fn stop_executor(&self) -> Result<(), StackError> {
        for index in 0..self.replica_count().await? {
            self.stop_replica(index).await?;
        }
        Ok(())
    }

    /// Starts replica `index` (numbered from 0) on its port and data directory; a no-op when it
    /// runs. The front sends it requests again once it is healthy.
    pub async fn start_replica(&self, index: usize) -> Result<(), StackError> {
        self.shared.start_replica(index).await
    }

    /// Stops replica `index` gracefully: the front sends it nothing new, it finishes what it
    /// runs, and the other replicas take its traffic (and, with a shared store, its outbox).
    pub async fn stop_replica(&self, index: usize) -> Result<(), StackError> {
        self.shared.stop_replica(index).await
    }

    /// The executor replicas (one without replicas): where each listens, whether it runs and
    /// how many requests it answered through the front.
    pub async fn replicas(&self) -> Vec<ReplicaStatus> {
        self.shared.replicas().await
    }

    /// The executors' data directory, when the stack runs executors (with replicas, each has a
    /// `replica-<n>` folder in it).
    pub async fn executor_data_dir(&self) -> Option<PathBuf> {
        let dir = self.shared.executor_dir.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        dir.as_ref().map(|(dir, _)| dir.clone())
    }

    /// The seed of every random fault decision.
    pub fn seed(&self) -> u64 {
        self.shared.sim.seed
    }

    /// Where a pillar listens.
    pub fn addr(&self, pillar: Pillar) -> SocketAddr {
        self.shared.addrs[&pillar]
    }

    /// A pillar's base URL (`http://…`, or `smtp://…` for the sink).
    pub fn url(&self, pillar: Pillar) -> String {
        self.shared.url(pillar)
    }

    /// Karma's base URL.
    pub fn karma_url(&self) -> String {
        self.url(Pillar::Karma)
    }

    /// Bucket's base URL.
    pub fn bucket_url(&self) -> String {
        self.url(Pillar::Bucket)
    }

    /// Core's base URL.
    pub fn core_url(&self) -> String {
        self.url(Pillar::Core)
    }

    /// The providers' base URL (WhatsApp Cloud API and OpenAI-compatible chat).
    pub fn providers_url(&self) -> String {
        self.url(Pillar::Providers)
    }

    /// The SMTP sink's address.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.addr(Pillar::Smtp)
    }

    /// The executor's base URL, when it runs one.
    pub fn executor_url(&self) -> Option<String> {
        self.shared.executor_addr().map(|a| format!("http://{a}"))
    }

    /// The control API's base URL, when it is served.
    pub fn control_url(&self) -> Option<String> {
        self.control_addr.map(|a| format!("http://{a}"))
    }

    /// The variables that point an executor at this stack's fakes: Bucket, Karma, the WhatsApp
    /// and AI providers (with the credentials they require) and the SMTP sink. The stack's own
    /// executors start from these; a test that runs an executor of its own starts from them too.
    pub fn neighbours_env(&self) -> Vec<(&'static str, String)> {
        let providers = self.providers_url();
        let smtp = self.smtp_addr();
        let mut env = vec![
            ("BUCKET_URL", self.bucket_url()),
            ("KARMA_URL", self.karma_url()),
            ("WHATSAPP_API_URL", providers.clone()),
            ("WHATSAPP_PHONE_NUMBER_ID", "100000000000001".to_owned()),
            ("AI_API_URL", providers),
            ("AI_MODEL", "sim-model".to_owned()),
            ("SMTP_HOST", smtp.ip().to_string()),
            ("SMTP_PORT", smtp.port().to_string()),
            ("SMTP_TLS", "none".to_owned()),
            ("SMTP_FROM", "executor@bhiv.local".to_owned()),
        ];
        env.extend(self.whatsapp_token.clone().map(|token| ("WHATSAPP_ACCESS_TOKEN", token)));
        env.extend(self.ai_api_key.clone().map(|key| ("AI_API_KEY", key)));
        env
    }

    /// The fault rules.
    pub fn faults(&self) -> Faults<'_> {
        Faults { sim: &self.shared.sim }
    }

    /// The request journal.
    pub fn journal(&self) -> &Journal {
        &self.shared.sim.journal
    }

    /// The spans the control port's OTLP receiver got (the executor's, by default).
    pub fn traces(&self) -> &crate::record::traces::Traces {
        &self.shared.sim.traces
    }

    /// Bucket's store.
    pub fn bucket(&self) -> &Bucket {
        &self.shared.bucket
    }

    /// Karma's users and Q-table.
    pub fn karma(&self) -> &Karma {
        &self.shared.karma
    }

    /// Core.
    pub fn core(&self) -> &Core {
        &self.shared.core
    }

    /// What the WhatsApp and AI providers received.
    pub fn providers(&self) -> &Providers {
        &self.shared.providers
    }

    /// What the SMTP sink received.
    pub fn smtp(&self) -> &SmtpSink {
        &self.shared.smtp
    }

    /// A pillar's current profile.
    pub fn profile(&self, pillar: Pillar) -> Profile {
        self.shared.profile(pillar)
    }

    /// Switches a pillar's profile at run time.
    pub fn set_profile(&self, pillar: Pillar, profile: Profile) -> Result<(), StackError> {
        self.shared.set_profile(pillar, profile)
    }

    /// Starts a scenario now.
    pub fn run_scenario(&self, scenario: Scenario) -> ScenarioStatus {
        self.shared.scenarios.start(self.shared.sim.faults.clone(), scenario, &self.shared.shutdown)
    }

    /// Every scenario run so far.
    pub fn scenarios(&self) -> Vec<ScenarioStatus> {
        self.shared.scenarios.list()
    }

    /// The simulator's metrics in Prometheus text format.
    pub fn metrics(&self) -> String {
        self.shared.render_metrics()
    }

    /// Clears faults, scenarios, the journal and every fake's state (the executor is untouched).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops everything and waits for it (the executor shuts down gracefully).
    pub async fn stop(self) {
        let _ = self.stop_executor().await;
        self.shared.shutdown.cancel();
        let servers =
            std::mem::take(&mut *self.shared.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for server in servers {
            let _ = server.await;
        }
        // Drop removes a temporary data directory.
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        let dir = self.shared.executor_dir.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((dir, true)) = dir.as_ref() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
