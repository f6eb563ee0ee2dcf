//! The scenario's world: its own stack (or the external one) and what the scenario did so far.
//!
//! **In-process** (the default) every scenario builds its own [`Stack`] on 127.0.0.1:0 — Karma,
//! Bucket, Core, the providers, the SMTP sink, the executor and the control API — so scenarios
//! run concurrently without sharing anything. The stack is configured by `Given` steps and
//! started by the first step that needs it (or explicitly by "Given a running BHIV stack");
//! dropping the world stops it.
//!
//! **External** (`BHIV_EXTERNAL=1`): the world talks to already-running services at
//! `BHIV_EXECUTOR_URL`, `BHIV_CORE_URL`, `BHIV_BUCKET_URL`, `BHIV_KARMA_URL` and the simulator's
//! control API at `PILLAR_SIM_CONTROL` (defaults: the fixed ports of `pillar-sim up`). State is
//! read through HTTP: Karma's own routes, Bucket's `/core/verify-chain`, and the control API's
//! `/journal`, `/bucket/events`, `/faults`, `/smtp/messages` and `/providers/*`.
//!
//! When Karma, Bucket or Core are not the simulator's (the control API does not serve the URL
//! the run was given for them: real services), their state is read through their own APIs —
//! Bucket's `GET /core/events`, Karma's `GET /v1/stats/user/{id}` — and the journal only covers
//! what the simulator still serves (the providers, the SMTP sink). [`Simulated`] says which.
//!
//! The read methods here ([`BhivWorld::hits`], [`BhivWorld::bucket_events`],
//! [`BhivWorld::karma_user`], ...) hide which of the two is in use.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use pillar_sim::{FaultRule, JournalQuery, Pillar, Stack, StackBuilder};
use serde::Deserialize;
use serde_json::{Value, json};
use test_support::{InProcessExecutor, TestResponse};

use super::params::{Action, Measure};
use super::stub::{HangingService, RenamingProxy};
use super::support::{WAIT, bounded, eventually};

/// Whether the run targets already-running services (`BHIV_EXTERNAL=1`).
pub fn external_mode() -> bool {
    std::env::var("BHIV_EXTERNAL").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// What the scenarios' executors change in the suites' fast settings
/// ([`test_support::FAST_EXECUTOR`]): a workflow gets 1 s and a provider 2 s (the timing features
/// measure against these), an open breaker waits 0.2 s, and logs are text.
const SCENARIO_EXECUTOR: [(&str, &str); 6] = [
    ("WORKFLOW_TIMEOUT", "1.0"),
    ("EXECUTOR_BREAKER_OPEN", "0.2"),
    ("WHATSAPP_TIMEOUT", "2"),
    ("AI_TIMEOUT", "2"),
    ("SMTP_TIMEOUT", "2"),
    ("EXECUTOR_LOG_FORMAT", "text"),
];

/// The settings every executor of a scenario starts with (later pairs win).
pub fn scenario_executor_env() -> impl Iterator<Item = (&'static str, &'static str)> {
    test_support::FAST_EXECUTOR.into_iter().chain(SCENARIO_EXECUTOR)
}

/// Which of the external Karma, Bucket and Core are the simulator's (all of them in-process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Simulated {
    /// Karma is the simulator's.
    pub karma: bool,
    /// Bucket is the simulator's.
    pub bucket: bool,
    /// Core is the simulator's.
    pub core: bool,
}

impl Simulated {
    /// Every pillar is the simulator's.
    pub fn all(self) -> bool {
        self.karma && self.bucket && self.core
    }
}

static SIMULATED: OnceLock<Simulated> = OnceLock::new();

/// Finds out (once per run) which external pillars the simulator serves: those whose URL the
/// control API's `GET /` names. No control API: none.
pub async fn detect_simulated() -> Simulated {
    if let Some(known) = SIMULATED.get() {
        return *known;
    }
    let endpoints = Endpoints::from_env();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("a plain client builds");
    let info: Value = match http.get(format!("{}/", endpoints.control)).send().await {
        Ok(answer) if answer.status().is_success() => answer.json().await.unwrap_or(Value::Null),
        _ => Value::Null,
    };
    // `localhost` and 127.0.0.1 name the same service.
    let same = |url: &str| url.trim_end_matches('/').replace("://localhost", "://127.0.0.1");
    let serves = |pillar: &str, url: &str| {
        info.pointer(&format!("/pillars/{pillar}/url")).and_then(Value::as_str).map(same) == Some(same(url))
    };
    let found = Simulated {
        karma: serves("karma", &endpoints.karma),
        bucket: serves("bucket", &endpoints.bucket),
        core: serves("core", &endpoints.core),
    };
    *SIMULATED.get_or_init(|| found)
}

/// What [`detect_simulated`] found (everything in-process, or before detection).
pub fn simulated() -> Simulated {
    if !external_mode() {
        return Simulated { karma: true, bucket: true, core: true };
    }
    SIMULATED.get().copied().unwrap_or(Simulated { karma: true, bucket: true, core: true })
}

/// The addresses of already-running services.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The executor.
    pub executor: String,
    /// Core.
    pub core: String,
    /// Bucket.
    pub bucket: String,
    /// Karma.
    pub karma: String,
    /// The simulator's control API.
    pub control: String,
}

impl Endpoints {
    fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name).unwrap_or_else(|_| default.to_owned()).trim_end_matches('/').to_owned()
        };
        Self {
            executor: var("BHIV_EXECUTOR_URL", "http://127.0.0.1:8003"),
            core: var("BHIV_CORE_URL", "http://127.0.0.1:8002"),
            bucket: var("BHIV_BUCKET_URL", "http://127.0.0.1:8001"),
            karma: var("BHIV_KARMA_URL", "http://127.0.0.1:8000"),
            control: var("PILLAR_SIM_CONTROL", "http://127.0.0.1:8090"),
        }
    }
}

/// An execute request as sent, so it can be sent again.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The trace id it carries.
    pub trace: String,
    /// The JSON body.
    pub body: Value,
    /// Extra headers (`Idempotency-Key`, `Authorization`).
    pub headers: Vec<(String, String)>,
}

/// One workflow the scenario asked the executor for (directly or through Core).
#[derive(Debug, Clone)]
pub struct Execution {
    /// The trace id (Core's task id when it came through Core).
    pub trace: String,
    /// The action type.
    pub action: Action,
    /// The user it was for.
    pub user: String,
    /// The executor's answer (none when it came through Core).
    pub reply: Option<TestResponse>,
}

/// Core's answer to `POST /handle_task`.
#[derive(Debug, Clone)]
pub struct CoreReply {
    /// `task_id`, the trace id of any dispatched workflow.
    pub task_id: String,
    /// The whole answer.
    pub reply: TestResponse,
}

/// A journal entry, as the in-process journal and the control API both serialize it.
#[derive(Debug, Clone, Deserialize)]
pub struct Hit {
    /// `karma`, `bucket`, `core`, `providers` or `smtp`.
    pub pillar: String,
    /// HTTP method (`DATA` for a mail).
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The trace id the fake saw.
    pub trace_id: Option<String>,
    /// Selected headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body.
    #[serde(default)]
    pub body: Value,
    /// The status answered, if any.
    pub status: Option<u16>,
    /// `answered`, `blackholed` or `reset`.
    pub outcome: String,
    /// Arrival time (RFC 3339).
    pub received_at: String,
    /// Arrival to answer, milliseconds.
    pub duration_ms: f64,
}

impl Hit {
    /// Whether this entry is for `pillar`.
    pub fn is(&self, pillar: Pillar) -> bool {
        self.pillar == pillar.as_str()
    }

    /// A kept header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One stored Bucket event.
#[derive(Debug, Clone, Deserialize)]
pub struct StoredView {
    /// Position in the chain, from 1.
    pub sequence: u64,
    /// The stored record.
    pub record: Value,
    /// The previous hash.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

impl StoredView {
    /// The record's trace id.
    pub fn trace(&self) -> Option<&str> {
        self.record.get("trace_id").and_then(Value::as_str)
    }
}

/// What Karma holds about a user.
#[derive(Debug, Clone, PartialEq)]
pub struct KarmaView {
    /// The role the merit earns.
    pub role: String,
    /// DharmaPoints.
    pub dharma: f64,
    /// Merit score.
    pub merit: f64,
    /// Life events applied.
    pub total_actions: u64,
}

/// Karma's Q-table.
#[derive(Debug, Clone, Deserialize)]
pub struct QView {
    /// Learning rate.
    pub alpha: f64,
    /// Discount factor.
    pub gamma: f64,
    /// Row labels.
    pub roles: Vec<String>,
    /// Column labels.
    pub actions: Vec<String>,
    /// `q[role][action]`.
    pub q: Vec<Vec<f64>>,
}

impl QView {
    /// Q(role, action), 0 for an unknown cell.
    pub fn value(&self, role: &str, action: &str) -> f64 {
        let r = self.roles.iter().position(|x| x == role);
        let a = self.actions.iter().position(|x| x == action);
        match (r, a) {
            (Some(r), Some(a)) => self.q[r][a],
            _ => 0.0,
        }
    }

    /// max over actions of Q(role, ·).
    pub fn best(&self, role: &str) -> f64 {
        self.roles
            .iter()
            .position(|x| x == role)
            .map_or(0.0, |r| self.q[r].iter().copied().fold(f64::NEG_INFINITY, f64::max))
    }
}

/// A message the SMTP sink accepted.
#[derive(Debug, Clone, Deserialize)]
pub struct MailView {
    /// `RCPT TO` addresses.
    pub to: Vec<String>,
    /// The message as sent.
    pub data: String,
    /// Its `X-Trace-Id` header.
    pub trace_id: Option<String>,
}

/// An executor the scenario started itself (the start-up order scenario).
pub struct OwnExecutor {
    executor: InProcessExecutor,
    data_dir: PathBuf,
}

impl OwnExecutor {
    /// Its base URL.
    pub fn url(&self) -> String {
        self.executor.url()
    }
}

impl Drop for OwnExecutor {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The world of one scenario.
#[derive(cucumber::World)]
#[world(init = Self::new)]
pub struct BhivWorld {
    /// A short id unique to this scenario, for trace ids, user ids and keys.
    pub id: String,
    /// The client every step uses (bounded by a timeout).
    pub http: reqwest::Client,
    pending: Option<StackBuilder>,
    stack: Option<Stack>,
    external: Option<Endpoints>,
    started: bool,
    core_env: BTreeMap<String, String>,
    /// An executor this scenario started itself.
    pub own_executor: Option<OwnExecutor>,
    /// A proxy standing in front of Bucket.
    pub proxy: Option<RenamingProxy>,
    /// A service that never answers.
    pub hanging: Option<HangingService>,
    /// The user the scenario's workflows are for.
    pub user: String,
    /// Every workflow asked for, in order.
    pub executions: Vec<Execution>,
    /// The last answer of any request a step made to the executor or a pillar.
    pub last: Option<TestResponse>,
    /// The answers of a batch of concurrent requests.
    pub batch: Vec<TestResponse>,
    /// The last execute request, to send it again.
    pub last_sent: Option<Sent>,
    /// Core's answers, in order.
    pub core_replies: Vec<CoreReply>,
    /// Karma's view of the user and the Q-table, noted before a workflow.
    pub karma_before: Option<(Option<KarmaView>, QView)>,
    /// Latency samples, milliseconds.
    pub samples: HashMap<Measure, Vec<f64>>,
    /// Core answer-time samples, one set per run.
    pub core_runs: Vec<Vec<f64>>,
    /// Free-form values a step leaves for a later one.
    pub notes: HashMap<String, Value>,
    counter: usize,
}

impl fmt::Debug for BhivWorld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BhivWorld")
            .field("id", &self.id)
            .field("stack", &self.stack)
            .field("external", &self.external)
            .field("user", &self.user)
            .field("traces", &self.executions.iter().map(|e| &e.trace).collect::<Vec<_>>())
            .field("core_tasks", &self.core_replies.iter().map(|c| &c.task_id).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl BhivWorld {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let external = external_mode().then(Endpoints::from_env);
        let pending = external.is_none().then(|| {
            scenario_executor_env()
                .fold(Stack::builder().seed(7).executor(true), |b, (name, value)| b.executor_env(name, value))
        });
        Self {
            user: format!("user-{id}"),
            id,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a plain client builds"),
            pending,
            stack: None,
            external,
            started: false,
            core_env: BTreeMap::new(),
            own_executor: None,
            proxy: None,
            hanging: None,
            executions: Vec::new(),
            last: None,
            batch: Vec::new(),
            last_sent: None,
            core_replies: Vec::new(),
            karma_before: None,
            samples: HashMap::new(),
            core_runs: Vec::new(),
            notes: HashMap::new(),
            counter: 0,
        }
    }

    // ----- configuration and start -----

    /// Whether the run targets external services.
    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    /// Changes the stack's configuration; only before it starts, and only in-process.
    pub fn configure(&mut self, change: impl FnOnce(StackBuilder) -> StackBuilder) {
        assert!(!self.is_external(), "this step configures an in-process stack; it cannot run in external mode");
        let builder = self.pending.take().expect("the stack is already running: configure it before it starts");
        self.pending = Some(change(builder));
    }

    /// Whether the stack (or the external connection) is up.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// A setting of Core's environment: before the start it goes to the builder, after it Core
    /// is reconfigured at once.
    pub fn set_core_env(&mut self, name: &str, value: &str) {
        self.core_env.insert(name.to_owned(), value.to_owned());
        if self.started {
            let mut env: HashMap<String, String> = self.core_env.clone().into_iter().collect();
            env.entry("WORKFLOW_EXECUTOR_URL".into()).or_insert_with(|| self.executor_url());
            self.stack().core().configure(&env).expect("Core accepts the setting");
        } else {
            let (name, value) = (name.to_owned(), value.to_owned());
            self.configure(|b| b.core_env(name, value));
        }
    }

    /// Starts the stack (in-process) or checks the external services answer; a no-op when done.
    pub async fn start(&mut self) {
        if self.started {
            return;
        }
        if let Some(endpoints) = self.external.clone() {
            for url in [
                format!("{}/healthz", endpoints.executor),
                format!("{}/health", endpoints.core),
                format!("{}/health", endpoints.bucket),
                format!("{}/health", endpoints.karma),
                format!("{}/health", endpoints.control),
            ] {
                let answer = bounded(&url, Duration::from_secs(10), self.http.get(&url).send()).await;
                assert!(
                    answer.as_ref().is_ok_and(|r| r.status().is_success()),
                    "external mode: {url} does not answer (is `pillar-sim up` running?): {answer:?}"
                );
            }
        } else {
            let builder = self.pending.take().expect("a pending configuration");
            let stack = bounded("starting the stack", Duration::from_secs(60), builder.start())
                .await
                .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
            if let Some(proxy) = &self.proxy {
                proxy.point_at(stack.bucket_url());
            }
            self.stack = Some(stack);
        }
        self.started = true;
    }

    /// The in-process stack; panics in external mode or before the start.
    pub fn stack(&self) -> &Stack {
        assert!(!self.is_external(), "this step needs the in-process stack (not available in external mode)");
        self.stack.as_ref().expect("the stack is not running yet")
    }

    /// A fresh id with a prefix (`trace-…`, `key-…`), unique across scenarios and runs.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{}-{}", self.id, self.counter)
    }

    /// A fresh UUID trace id (Core mints UUIDs too).
    pub fn fresh_trace(&mut self) -> String {
        uuid::Uuid::new_v4().to_string()
    }

    // ----- addresses -----

    /// The executor's base URL.
    pub fn executor_url(&self) -> String {
        if let Some(own) = &self.own_executor {
            return own.url();
        }
        match &self.external {
            Some(e) => e.executor.clone(),
            None => self.stack().executor_url().expect("the stack runs an executor"),
        }
    }

    /// Core's base URL.
    pub fn core_url(&self) -> String {
        self.external.as_ref().map_or_else(|| self.stack().core_url(), |e| e.core.clone())
    }

    /// Bucket's base URL.
    pub fn bucket_url(&self) -> String {
        self.external.as_ref().map_or_else(|| self.stack().bucket_url(), |e| e.bucket.clone())
    }

    /// Karma's base URL.
    pub fn karma_url(&self) -> String {
        self.external.as_ref().map_or_else(|| self.stack().karma_url(), |e| e.karma.clone())
    }

    /// The base URL of a service with a health check.
    pub fn service_url(&self, service: super::params::Service) -> (String, &'static str) {
        use super::params::Service;
        match service {
            Service::Karma => (self.karma_url(), "/health"),
            Service::Bucket => (self.bucket_url(), "/health"),
            Service::Core => (self.core_url(), "/health"),
            Service::Executor => (self.executor_url(), "/healthz"),
        }
    }

    /// The simulator's control API (the in-process stack's, or `PILLAR_SIM_CONTROL`).
    pub fn control_url(&self) -> String {
        match &self.external {
            Some(e) => e.control.clone(),
            None => self.stack().control_url().expect("the control API is served"),
        }
    }

    // ----- HTTP -----

    /// Sends a request and reads the whole answer.
    pub async fn request(&self, request: reqwest::RequestBuilder) -> TestResponse {
        TestResponse::send(request).await
    }

    /// `GET` a URL and read the answer.
    pub async fn get(&self, url: &str) -> TestResponse {
        self.request(self.http.get(url)).await
    }

    /// `GET` a JSON document from the control API.
    async fn control_get(&self, path: &str) -> Value {
        let reply = self.get(&format!("{}{path}", self.control_url())).await;
        assert_eq!(reply.status, 200, "control API {path}: {:?}", reply.body);
        reply.body
    }

    /// Every entry of a paged control API list (`after` + `limit`, following `next` to the end).
    async fn control_pages(&self, path: &str, key: &str) -> Vec<Value> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let (mut all, mut after) = (Vec::new(), 0u64);
        loop {
            let answer = self.control_get(&format!("{path}{separator}limit=1000&after={after}")).await;
            all.extend(answer[key].as_array().cloned().unwrap_or_default());
            match answer["next"].as_u64() {
                Some(next) => after = next,
                None => return all,
            }
        }
    }

    /// The executor's integration status document.
    pub async fn executor_status(&self) -> Value {
        let reply = self.get(&format!("{}/api/integration/status", self.executor_url())).await;
        assert_eq!(reply.status, 200, "integration status: {:?}", reply.body);
        reply.body
    }

    /// The executor's Prometheus metrics.
    pub async fn executor_metrics(&self) -> String {
        let reply = self.get(&format!("{}/metrics", self.executor_url())).await;
        assert_eq!(reply.status, 200, "metrics: {:?}", reply.body);
        reply.body.as_str().map(str::to_owned).unwrap_or_else(|| reply.body.to_string())
    }

    // ----- what the fakes saw -----

    /// Journal entries, oldest first, optionally for one pillar and/or trace.
    pub async fn hits(&self, pillar: Option<Pillar>, trace: Option<&str>) -> Vec<Hit> {
        if self.is_external() {
            let mut path = "/journal?".to_owned();
            if let Some(p) = pillar {
                path.push_str(&format!("pillar={p}&"));
            }
            if let Some(t) = trace {
                path.push_str(&format!("trace_id={t}&"));
            }
            let entries = self.control_pages(path.trim_end_matches(['&', '?']), "entries").await;
            return serde_json::from_value(Value::Array(entries)).expect("journal entries");
        }
        let mut query = JournalQuery::all();
        query.pillar = pillar;
        query.trace_id = trace.map(str::to_owned);
        let entries = self.stack().journal().query(&query);
        serde_json::from_value(serde_json::to_value(entries).expect("serializable")).expect("journal entries")
    }

    /// Waits until a journal entry satisfies `wanted`; returns it.
    pub async fn wait_hit(&self, what: &str, timeout: Duration, wanted: impl Fn(&Hit) -> bool) -> Hit {
        if !self.is_external() {
            let found = self
                .stack()
                .journal()
                .wait_for(timeout, |entry| {
                    let hit: Hit = serde_json::from_value(serde_json::to_value(entry).expect("serializable"))
                        .expect("journal entry");
                    wanted(&hit)
                })
                .await;
            let entry = found.unwrap_or_else(|| panic!("{what}: nothing like it in the journal within {timeout:?}"));
            return serde_json::from_value(serde_json::to_value(entry).expect("serializable")).expect("entry");
        }
        eventually(timeout, what, || async {
            self.hits(None, None).await.into_iter().find(|h| wanted(h)).ok_or_else(|| "not yet".to_owned())
        })
        .await
    }

    /// Every event Bucket stores, in chain order.
    pub async fn bucket_events(&self) -> Vec<StoredView> {
        let events = if self.is_external() && !simulated().bucket {
            // Bucket's own read route (open in the as-built Bucket): its newest 1,000 records,
            // the event fields at the top level.
            let reply = self.get(&format!("{}/core/events?limit=1000&requester_id=bhiv_core", self.bucket_url())).await;
            assert_eq!(reply.status, 200, "Bucket's GET /core/events: {:?}", reply.body);
            let records = reply.body["events"].as_array().cloned().unwrap_or_default();
            return records
                .into_iter()
                .enumerate()
                .map(|(i, record)| StoredView {
                    sequence: i as u64 + 1,
                    record,
                    prev_hash: String::new(),
                    hash: String::new(),
                })
                .collect();
        } else if self.is_external() {
            Value::Array(self.control_pages("/bucket/events", "events").await)
        } else {
            serde_json::to_value(self.stack().bucket().events()).expect("serializable")
        };
        serde_json::from_value(events).expect("stored events")
    }

    /// Bucket's stored events for one trace (asked per trace of the simulator's Bucket, so the
    /// answer does not depend on how many other events it keeps).
    pub async fn bucket_events_for(&self, trace: &str) -> Vec<StoredView> {
        if self.is_external() && simulated().bucket {
            let events = self.control_pages(&format!("/bucket/events?trace_id={trace}"), "events").await;
            return serde_json::from_value(Value::Array(events)).expect("stored events");
        }
        self.bucket_events().await.into_iter().filter(|e| e.trace() == Some(trace)).collect()
    }

    /// Bucket's own verdict on its hash chain (`{valid, length, first_bad_index, head}`).
    pub async fn chain_report(&self) -> Value {
        if self.is_external() {
            let reply = self.get(&format!("{}/core/verify-chain", self.bucket_url())).await;
            assert_eq!(reply.status, 200, "verify-chain: {:?}", reply.body);
            return reply.body;
        }
        serde_json::to_value(self.stack().bucket().verify_chain()).expect("serializable")
    }

    /// Karma's view of a user, if Karma knows them.
    pub async fn karma_user(&self, user: &str) -> Option<KarmaView> {
        if !self.is_external() {
            return self.stack().karma().user(user).map(|u| KarmaView {
                role: u.role,
                dharma: u.balances.dharma_points,
                merit: u.merit_score,
                total_actions: u.total_actions,
            });
        }
        // The stats route, not the profile: the monorepo Karma answers an unknown user's profile
        // with a stand-in (merit 100), its stats with 404.
        let reply = self.get(&format!("{}/v1/stats/user/{user}", self.karma_url())).await;
        if reply.status == 404 {
            return None;
        }
        assert_eq!(reply.status, 200, "Karma stats of {user}: {:?}", reply.body);
        let b = &reply.body;
        Some(KarmaView {
            role: b["role"].as_str().unwrap_or_default().to_owned(),
            dharma: b.pointer("/balances/DharmaPoints").and_then(Value::as_f64).unwrap_or_default(),
            merit: b["merit_score"].as_f64().unwrap_or_default(),
            total_actions: b.pointer("/action_stats/total_actions").and_then(Value::as_u64).unwrap_or_default(),
        })
    }

    /// Karma's Q-table.
    pub async fn q_table(&self) -> QView {
        let table = if self.is_external() {
            let reply = self.get(&format!("{}/v1/qtable", self.karma_url())).await;
            assert_eq!(reply.status, 200, "Karma's Q-table: {:?}", reply.body);
            reply.body
        } else {
            serde_json::to_value(self.stack().karma().q_table()).expect("serializable")
        };
        serde_json::from_value(table).expect("a Q-table")
    }

    /// Every mail the SMTP sink accepted.
    pub async fn mails(&self) -> Vec<MailView> {
        let mails = if self.is_external() {
            Value::Array(self.control_pages("/smtp/messages", "messages").await)
        } else {
            serde_json::to_value(self.stack().smtp().messages()).expect("serializable")
        };
        serde_json::from_value(mails).expect("mails")
    }

    // ----- faults -----

    /// Sets a fault rule.
    pub async fn set_fault(&self, rule: FaultRule) {
        if self.is_external() {
            // Like `Faults::set` in-process: a rule with a taken id replaces it.
            let url = format!("{}/faults?replace=true", self.control_url());
            let reply = self.request(self.http.post(url).json(&rule.to_json())).await;
            assert_eq!(reply.status, 201, "the control API refused the rule: {:?}", reply.body);
        } else {
            self.stack().faults().set(rule).unwrap_or_else(|e| panic!("the fault rule is invalid: {e}"));
        }
    }

    /// Starts a timeline of fault rules (a simulator scenario, as JSON).
    pub async fn run_timeline(&self, timeline: Value) {
        if self.is_external() {
            let url = format!("{}/scenarios", self.control_url());
            let reply = self.request(self.http.post(url).json(&timeline)).await;
            assert_eq!(reply.status, 202, "the control API refused the timeline: {:?}", reply.body);
        } else {
            let scenario = pillar_sim::Scenario::from_json(&timeline).expect("a valid timeline");
            self.stack().run_scenario(scenario);
        }
    }

    /// Waits for every timeline to finish, then clears the rules of `pillar` (all when `None`).
    pub async fn clear_faults(&self, pillar: Option<Pillar>) {
        eventually(WAIT, "the fault timelines to finish", || async {
            let unfinished = if self.is_external() {
                let all = self.control_get("/scenarios").await;
                all["scenarios"].as_array().map_or(0, |s| s.iter().filter(|s| s["finished"] != json!(true)).count())
            } else {
                self.stack().scenarios().iter().filter(|s| !s.finished).count()
            };
            if unfinished == 0 { Ok(()) } else { Err(format!("{unfinished} still running")) }
        })
        .await;
        if self.is_external() {
            let rules = self.control_get("/faults").await;
            for rule in rules["rules"].as_array().cloned().unwrap_or_default() {
                if pillar.is_none_or(|p| rule.pointer("/rule/pillar") == Some(&json!(p.as_str()))) {
                    let id = rule["id"].as_str().unwrap_or_default();
                    let url = format!("{}/faults/{id}", self.control_url());
                    let _ = self.request(self.http.delete(url)).await;
                }
            }
        } else {
            let faults = self.stack().faults();
            for rule in faults.list() {
                if pillar.is_none_or(|p| rule.rule.pillar == p) {
                    faults.clear(&rule.id);
                }
            }
        }
    }

    // ----- the scenario's own executor -----

    /// Starts an executor of the scenario's own (not the stack's), pointed at the stack's fakes.
    pub async fn start_own_executor(&mut self) {
        let stack = self.stack();
        let data_dir = std::env::temp_dir().join(format!("bhiv-bdd-executor-{}", self.id));
        std::fs::create_dir_all(&data_dir).expect("a temporary directory");
        let vars = scenario_executor_env()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .chain(stack.neighbours_env().into_iter().map(|(name, value)| (name.to_owned(), value)))
            .chain([("EXECUTOR_DATA_DIR".to_owned(), data_dir.display().to_string())]);
        let executor = InProcessExecutor::start(vars).await;
        self.own_executor = Some(OwnExecutor { executor, data_dir });
    }
}
