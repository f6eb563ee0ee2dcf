//! The executor suite's harness: `spawn_app` builds a real executor on `127.0.0.1:0` (with the
//! fast settings of [`test_support::FAST_EXECUTOR`]) against a [`pillar_sim::Stack`] of fakes
//! ([`Fakes`]: Bucket, Karma, the WhatsApp and OpenAI-compatible providers and the SMTP sink), and
//! [`TestApp`] offers one method per endpoint.
//!
//! A fake misbehaves through the simulator's fault rules (a [`Sink`] hangs, fails, answers
//! something else or refuses its port; a provider is slow or answers an error) and is observed through the simulator's journal
//! and stores. Nothing waits a fixed time: [`eventually`] polls with a deadline. The real binary
//! runs as a [`test_support::ExecutorProcess`], for tests that kill it or damage its data
//! directory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use pillar_sim::{Fault, FaultRule, JournalEntry, JournalQuery, Outcome, Pillar, Stack, StackBuilder};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use workflow_executor::StartError;

pub use test_support::executor::{AI_KEY, WHATSAPP_TOKEN};
pub use test_support::{
    ExecutorClient, ExecutorProcess, InProcessExecutor, NotServing, TestResponse, assert_traceparent, eventually,
    read_raw_answer,
};

/// The executor binary, for [`ExecutorProcess`].
pub const EXECUTOR: &str = env!("CARGO_BIN_EXE_workflow-executor");
/// Where the executor sends WhatsApp messages (its Graph API version and sender id).
pub const WHATSAPP_PATH: &str = "/v21.0/123456789012345/messages";
/// Where the executor asks for chat completions.
pub const AI_PATH: &str = "/v1/chat/completions";
/// The model the executor asks for.
pub const AI_MODEL: &str = "gpt-test-mini";
/// Where Bucket events are posted.
pub const BUCKET_PATH: &str = "/core/write-event";
/// Where Karma events are posted.
pub const KARMA_PATH: &str = "/v1/event/";

/// Shorthand for a duration in seconds.
pub fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds)
}

/// A fresh trace id, the way Core mints them.
pub fn trace_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A `workflow` request with `payload`, the trace id at the top level and inside the payload
/// (as Core's client sends it).
pub fn workflow(trace_id: &str, mut payload: Value) -> Value {
    if let Some(object) = payload.as_object_mut() {
        object.entry("trace_id").or_insert_with(|| json!(trace_id));
    }
    json!({"trace_id": trace_id, "decision": "workflow", "data": {"workflow_type": "workflow", "payload": payload}})
}

/// A valid task request.
pub fn task_request(trace_id: &str) -> Value {
    workflow(trace_id, json!({"action_type": "task", "title": "Call the customer back", "user_id": "user-7"}))
}

/// A valid WhatsApp request.
pub fn whatsapp_request(trace_id: &str) -> Value {
    workflow(
        trace_id,
        json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": "Your order has shipped"}),
    )
}

/// An HTTP client for calling an [`ExecutorProcess`].
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(secs(10.0)).build().expect("an HTTP client")
}

/// The id of the rule [`Fakes::slow_whatsapp`] sets.
const SLOW_WHATSAPP: &str = "slow-whatsapp";

/// Every neighbour of the executor: a stack of the simulator's fakes (no executor of its own).
pub struct Fakes {
    /// The stack.
    pub stack: Stack,
}

impl Fakes {
    /// Every fake up and accepting (Karma in its `spec` profile).
    pub async fn start() -> Self {
        Self::start_with(test_support::neighbours_builder()).await
    }

    /// The fakes of `builder` (start from [`test_support::neighbours_builder`]), with a journal
    /// large enough for any test here.
    pub async fn start_with(builder: StackBuilder) -> Self {
        let stack = builder.journal_capacity(200_000).start().await.expect("the fakes start");
        Self { stack }
    }

    /// Every fake up, except Bucket, whose port refuses connections until [`Sink::come_up`].
    pub async fn with_bucket_refused() -> Self {
        let fakes = Self::start().await;
        fakes.bucket().refuse();
        fakes
    }

    /// Every fake up, except Karma, whose port refuses connections until [`Sink::come_up`].
    pub async fn with_karma_refused() -> Self {
        let fakes = Self::start().await;
        fakes.karma().refuse();
        fakes
    }

    /// The variables that point an executor at these fakes, with the suite's WhatsApp sender
    /// ([`WHATSAPP_PATH`]) and model ([`AI_MODEL`]).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.stack.neighbours_env();
        env.extend([
            ("WHATSAPP_API_VERSION", "v21.0".to_owned()),
            ("WHATSAPP_PHONE_NUMBER_ID", "123456789012345".to_owned()),
            ("AI_MODEL", AI_MODEL.to_owned()),
        ]);
        env
    }

    /// Bucket, as the executor's audit sink.
    pub fn bucket(&self) -> Sink<'_> {
        Sink { stack: &self.stack, pillar: Pillar::Bucket, path: BUCKET_PATH }
    }

    /// Karma, as the executor's behavioural sink.
    pub fn karma(&self) -> Sink<'_> {
        Sink { stack: &self.stack, pillar: Pillar::Karma, path: KARMA_PATH }
    }

    /// Sets a fault rule.
    pub fn set(&self, rule: FaultRule) {
        self.stack.faults().set(rule).expect("a valid fault rule");
    }

    /// Delays every WhatsApp send by `delay` (before the fake handles it); see
    /// [`Fakes::whatsapp_arrivals`].
    pub fn slow_whatsapp(&self, delay: Duration) {
        let rule = FaultRule::new(Pillar::Providers, Fault::latency_ms(delay.as_secs_f64() * 1000.0))
            .id(SLOW_WHATSAPP)
            .route(WHATSAPP_PATH);
        self.set(rule);
    }

    /// WhatsApp sends that reached the fake since [`Fakes::slow_whatsapp`], answered or not yet.
    pub fn whatsapp_arrivals(&self) -> u64 {
        let rules = self.stack.faults().list();
        rules.iter().find(|r| r.id == SLOW_WHATSAPP).map_or(0, |r| r.matched)
    }

    /// The WhatsApp sends the fake answered (or that a fault ended), oldest first.
    pub fn whatsapp_calls(&self) -> Vec<JournalEntry> {
        self.calls(Pillar::Providers, WHATSAPP_PATH)
    }

    /// The chat completions the fake answered (or that a fault ended), oldest first.
    pub fn ai_calls(&self) -> Vec<JournalEntry> {
        self.calls(Pillar::Providers, AI_PATH)
    }

    /// The mail transactions the SMTP sink decided (accepted or refused by a fault).
    pub fn smtp_transactions(&self) -> Vec<JournalEntry> {
        self.stack.journal().query(&JournalQuery::all().pillar(Pillar::Smtp))
    }

    fn calls(&self, pillar: Pillar, path: &str) -> Vec<JournalEntry> {
        let entries = self.stack.journal().query(&JournalQuery::all().pillar(pillar));
        entries.into_iter().filter(|e| e.path == path).collect()
    }
}

/// One event a sink acknowledged (answered 200), as the journal recorded it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The posted JSON body.
    pub body: Value,
    /// The request's headers (lower-case names; the journal keeps the values of `x-trace-id`,
    /// `traceparent`, `idempotency-key` and `content-type`).
    pub headers: BTreeMap<String, String>,
}

impl Delivery {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The event id the executor sent as `Idempotency-Key`.
    pub fn event_id(&self) -> String {
        self.header("idempotency-key").unwrap_or_default().to_owned()
    }

    /// The event's trace id, from `X-Trace-Id`.
    pub fn trace_id(&self) -> String {
        self.header("x-trace-id").unwrap_or_default().to_owned()
    }
}

/// Bucket or Karma as an event sink: what it acknowledged, and how it misbehaves.
pub struct Sink<'a> {
    stack: &'a Stack,
    pillar: Pillar,
    path: &'static str,
}

impl Sink<'_> {
    /// Every request to the event route, whatever its fate, oldest first.
    fn entries(&self) -> Vec<JournalEntry> {
        let entries = self.stack.journal().query(&JournalQuery::all().pillar(self.pillar));
        entries.into_iter().filter(|e| e.path == self.path).collect()
    }

    /// Events the fake acknowledged so far (with duplicates, if the executor re-sent any); an
    /// [`Sink::answer`] is not the fake's.
    pub fn delivered(&self) -> Vec<Delivery> {
        self.entries()
            .into_iter()
            .filter(|e| e.outcome == Outcome::Answered && e.status == Some(200))
            .filter(|e| !e.faults.iter().any(|f| f.hit && f.kind == "answer"))
            .map(|e| Delivery { body: e.body, headers: e.headers })
            .collect()
    }

    /// Distinct event ids acknowledged so far.
    pub fn event_ids(&self) -> BTreeSet<String> {
        self.delivered().iter().map(Delivery::event_id).collect()
    }

    /// Distinct trace ids of acknowledged events.
    pub fn trace_ids(&self) -> BTreeSet<String> {
        self.delivered().iter().map(Delivery::trace_id).collect()
    }

    /// The first acknowledged event of `trace_id`.
    pub fn event_for(&self, trace_id: &str) -> Option<Delivery> {
        self.delivered().into_iter().find(|d| d.trace_id() == trace_id)
    }

    /// Requests that reached the event route, whatever the answer (a refused port sees none).
    pub fn attempts(&self) -> usize {
        self.entries().len()
    }

    fn rule_id(&self, what: &str) -> String {
        format!("{}-{what}", self.pillar)
    }

    /// From now on, reads every event and never answers.
    pub fn hang(&self) {
        let rule = FaultRule::new(self.pillar, Fault::Blackhole).id(self.rule_id("hang")).route(self.path);
        self.stack.faults().set(rule).expect("a valid rule");
    }

    /// From now on, answers every event with `status` (and the pillar's own error body).
    pub fn fail(&self, status: u16) {
        let rule = FaultRule::new(self.pillar, Fault::http_error(status)).id(self.rule_id("fail")).route(self.path);
        self.stack.faults().set(rule).expect("a valid rule");
    }

    /// From now on, answers every event with `status` and the JSON `body` instead of handling it
    /// (a sink that says something else than the fake would).
    pub fn answer(&self, status: u16, body: Value) {
        let rule = FaultRule::new(self.pillar, Fault::answer(status, body)).id(self.rule_id("answer")).route(self.path);
        self.stack.faults().set(rule).expect("a valid rule");
    }

    /// Closes the port: connections are refused until [`Sink::come_up`].
    pub fn refuse(&self) {
        self.stack.faults().set(FaultRule::new(self.pillar, Fault::Refuse).id(self.rule_id("refuse"))).expect("a rule");
    }

    /// Listens again on the same port, after [`Sink::refuse`].
    pub fn come_up(&self) {
        self.stack.faults().clear(&self.rule_id("refuse"));
    }

    /// Accepts every event again, after [`Sink::hang`], [`Sink::fail`] or [`Sink::answer`].
    pub fn accept(&self) {
        for what in ["hang", "fail", "answer"] {
            self.stack.faults().clear(&self.rule_id(what));
        }
    }
}

/// Starts an executor with every fake up; `env` overrides the defaults.
pub async fn spawn_app(env: &[(&str, &str)]) -> TestApp {
    spawn_app_with(Fakes::start().await, env).await
}

/// Starts an executor against `fakes`, in a fresh data directory.
pub async fn spawn_app_with(fakes: Fakes, env: &[(&str, &str)]) -> TestApp {
    spawn_app_in(fakes, TempDir::new().expect("a temp dir"), env).await
}

/// Starts an executor against `fakes` on an existing data directory (a restart).
pub async fn spawn_app_in(fakes: Fakes, data_dir: TempDir, env: &[(&str, &str)]) -> TestApp {
    let vars = (test_support::FAST_EXECUTOR.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
        .chain(fakes.env().into_iter().map(|(k, v)| (k.to_owned(), v)))
        .chain([("EXECUTOR_DATA_DIR".to_owned(), data_dir.path().display().to_string())])
        .chain(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let executor = InProcessExecutor::start(vars).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("an HTTP client");
    let client = ExecutorClient::new(executor.url(), http);
    TestApp { address: executor.address(), client, fakes, data_dir, executor }
}

/// A running executor and its fakes; its routes are called through the [`ExecutorClient`] it
/// dereferences to.
pub struct TestApp {
    /// Where the executor listens.
    pub address: SocketAddr,
    client: ExecutorClient,
    /// Its neighbours.
    pub fakes: Fakes,
    data_dir: TempDir,
    executor: InProcessExecutor,
}

/// What is left of a stopped executor: its data directory and its fakes, for a restart.
pub struct Stopped {
    /// The data directory (removed when dropped).
    pub data_dir: TempDir,
    /// The fakes, still running.
    pub fakes: Fakes,
    /// How `run_until_stopped` ended.
    pub result: Result<(), StartError>,
}

impl std::ops::Deref for TestApp {
    type Target = ExecutorClient;

    fn deref(&self) -> &ExecutorClient {
        &self.client
    }
}

impl TestApp {
    /// Bucket, as the executor's audit sink.
    pub fn bucket(&self) -> Sink<'_> {
        self.fakes.bucket()
    }

    /// Karma, as the executor's behavioural sink.
    pub fn karma(&self) -> Sink<'_> {
        self.fakes.karma()
    }

    /// `POST /api/workflow/execute` with a chunked body (no `Content-Length`), over a raw
    /// connection.
    pub async fn execute_chunked(&self, chunks: &[Vec<u8>]) -> TestResponse {
        let mut stream = TcpStream::connect(self.address).await.expect("connect");
        let mut request = format!(
            "POST /api/workflow/execute HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            self.address
        )
        .into_bytes();
        for chunk in chunks {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        // The executor may answer before reading everything; a failed write is not the verdict.
        let _ = stream.write_all(&request).await;
        read_raw_answer(&mut stream).await
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> TestResponse {
        self.get("/healthz").await
    }

    /// `GET /api/integration/status`.
    pub async fn status(&self) -> TestResponse {
        self.get("/api/integration/status").await
    }

    /// `GET /api/integration/dead-letters?{query}`.
    pub async fn dead_letters(&self, query: &str) -> TestResponse {
        self.get(&format!("/api/integration/dead-letters?{query}")).await
    }

    /// Waits until every event the executor committed has been acknowledged by both sinks.
    pub async fn wait_until_outboxes_drain(&self) {
        eventually(secs(10.0), "both outboxes are empty", async || {
            let status = self.status().await.body;
            let depth = |p: &str| status["pillars"][p]["outbox_depth"].as_u64();
            (depth("bucket") == Some(0) && depth("karma") == Some(0)).then_some(())
        })
        .await;
    }

    /// Stops the executor and waits for how its run ended.
    pub async fn stop(self) -> Stopped {
        let TestApp { fakes, data_dir, executor, .. } = self;
        Stopped { data_dir, fakes, result: executor.stop().await }
    }
}
