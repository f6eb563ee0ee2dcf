//! The test harness: `spawn_app` builds a real executor on `127.0.0.1:0` against fakes of every
//! neighbour, and [`TestApp`] offers one method per endpoint.
//!
//! Fakes: the WhatsApp and AI providers are plain `wiremock` servers (tests mount what they
//! need); Bucket and Karma are [`SinkFake`]s, wiremock servers with a switchable behaviour
//! (accept, hang, refuse with `success: false`, answer 500) that record what they acknowledged,
//! and that can start *refused* (the port is bound but not listening) and come up later on the
//! same port; e-mail goes to [`SmtpSink`], a tiny SMTP server written here. Nothing waits a fixed
//! time: [`eventually`] polls with a deadline. [`ExecutorProcess`] runs the real binary instead,
//! for tests that kill it or damage its data directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};
use workflow_executor::{Application, Settings, StartError};

/// The Graph API version and sender id the executor is configured with.
pub const WHATSAPP_PATH: &str = "/v21.0/123456789012345/messages";
/// The bearer token the executor sends to the WhatsApp Cloud API.
pub const WHATSAPP_TOKEN: &str = "wa-test-token-not-a-secret";
/// The bearer key the executor sends to the AI provider.
pub const AI_KEY: &str = "sk-test-key-not-a-secret";
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

/// The Cloud API's answer to an accepted message.
pub fn whatsapp_accepted(message_id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": "919876543210", "wa_id": "919876543210"}],
        "messages": [{"id": message_id}],
    }))
}

/// An OpenAI-compatible completion answering `text`.
pub fn ai_completion(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-test-1",
        "object": "chat.completion",
        "model": AI_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }))
}

/// Mounts `response` for every WhatsApp send on `server`.
pub async fn mount_whatsapp(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST")).and(path(WHATSAPP_PATH)).respond_with(response).mount(server).await;
}

/// Mounts `response` for every chat completion on `server`.
pub async fn mount_ai(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(response).mount(server).await;
}

/// The requests a wiremock server received.
pub async fn received(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap_or_default()
}

pub use test_support::eventually;

/// A port that refuses connections until [`ReservedPort::listen`] is called: the socket is bound
/// (so nobody else gets the port) but not listening.
pub struct ReservedPort {
    socket: TcpSocket,
    address: SocketAddr,
}

impl ReservedPort {
    /// Binds a free port on 127.0.0.1 without listening on it.
    pub fn new() -> Self {
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        socket.bind("127.0.0.1:0".parse().expect("literal address")).expect("a free port");
        let address = socket.local_addr().expect("a bound socket has an address");
        Self { socket, address }
    }

    /// Its address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://` URL of the port.
    pub fn uri(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Starts listening and hands the listener over (for a server that comes up on this port).
    pub fn listen(self) -> std::net::TcpListener {
        self.socket.listen(1024).expect("listen on the reserved port").into_std().expect("a std listener")
    }
}

/// How a [`SinkFake`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    /// 200 `{"success": true}`: the event is delivered (and recorded).
    Accept,
    /// Accepts the request and answers only after 30 s.
    Hang,
    /// 200 `{"success": false}`, how the real Bucket refuses an unauthorised requester.
    SuccessFalse,
    /// 500, how the as-built Karma answers the documented workflow event.
    ServerError,
    /// 422: a permanent refusal of this event.
    Unprocessable,
}

/// One event a sink acknowledged.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The posted JSON body.
    pub body: Value,
    /// Request headers (lower-case names).
    pub headers: HashMap<String, String>,
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

#[derive(Debug)]
struct SinkShared {
    mode: Mutex<SinkMode>,
    delivered: Mutex<Vec<Delivery>>,
    attempts: AtomicUsize,
}

/// A fake Bucket or Karma: records acknowledged events; can be down, hanging or refusing.
pub struct SinkFake {
    path: &'static str,
    shared: Arc<SinkShared>,
    address: SocketAddr,
    server: Option<MockServer>,
    reserved: Option<ReservedPort>,
}

impl SinkFake {
    /// A sink accepting events on `path`.
    pub async fn up(path: &'static str) -> Self {
        let mut sink = Self::refused(path);
        sink.come_up().await;
        sink
    }

    /// A sink whose port refuses connections until [`SinkFake::come_up`].
    pub fn refused(path: &'static str) -> Self {
        let reserved = ReservedPort::new();
        let shared = Arc::new(SinkShared {
            mode: Mutex::new(SinkMode::Accept),
            delivered: Mutex::new(Vec::new()),
            attempts: AtomicUsize::new(0),
        });
        Self { path, shared, address: reserved.address(), server: None, reserved: Some(reserved) }
    }

    /// Starts serving on the sink's port.
    pub async fn come_up(&mut self) {
        let Some(reserved) = self.reserved.take() else { return };
        let server = MockServer::builder().listener(reserved.listen()).start().await;
        let shared = self.shared.clone();
        Mock::given(method("POST"))
            .and(path(self.path))
            .respond_with(move |request: &Request| respond(&shared, request))
            .mount(&server)
            .await;
        self.server = Some(server);
    }

    /// Changes how the sink answers from now on.
    pub fn set_mode(&self, mode: SinkMode) {
        *self.shared.mode.lock().expect("mode lock") = mode;
    }

    /// Base URL of the sink.
    pub fn uri(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Events acknowledged so far (with duplicates, if the executor re-sent any).
    pub fn delivered(&self) -> Vec<Delivery> {
        self.shared.delivered.lock().expect("deliveries lock").clone()
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

    /// Requests received on the event path, whatever the answer.
    pub fn attempts(&self) -> usize {
        self.shared.attempts.load(Ordering::SeqCst)
    }
}

fn respond(shared: &SinkShared, request: &Request) -> ResponseTemplate {
    shared.attempts.fetch_add(1, Ordering::SeqCst);
    let mode = *shared.mode.lock().expect("mode lock");
    match mode {
        SinkMode::Accept => {
            let headers = request
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
                .collect();
            let body = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            shared.delivered.lock().expect("deliveries lock").push(Delivery { body, headers });
            ResponseTemplate::new(200).set_body_json(json!({"success": true}))
        }
        SinkMode::Hang => ResponseTemplate::new(200).set_delay(Duration::from_secs(30)),
        SinkMode::SuccessFalse => ResponseTemplate::new(200)
            .set_body_json(json!({"success": false, "message": "403: Unauthorized requester: workflow_executor"})),
        SinkMode::ServerError => ResponseTemplate::new(500).set_body_string("Internal Server Error"),
        SinkMode::Unprocessable => {
            ResponseTemplate::new(422).set_body_json(json!({"detail": [{"msg": "field required", "loc": ["body"]}]}))
        }
    }
}

/// How the [`SmtpSink`] treats a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpMode {
    /// Accept every message.
    Accept,
    /// Answer `550` to `RCPT TO` (a permanent rejection).
    RejectRecipients,
    /// Accept the connection and never say a word.
    Silent,
}

/// One message the SMTP sink accepted.
#[derive(Debug, Clone)]
pub struct SmtpMessage {
    /// `MAIL FROM` argument.
    pub mail_from: String,
    /// `RCPT TO` arguments.
    pub rcpt_to: Vec<String>,
    /// The message as sent after `DATA` (headers and body, dot-unstuffed).
    pub data: String,
}

#[derive(Debug)]
struct SmtpShared {
    mode: Mutex<SmtpMode>,
    messages: Mutex<Vec<SmtpMessage>>,
    sessions: AtomicUsize,
}

/// A tiny SMTP server: enough of RFC 5321 for `lettre`, recording every accepted message.
pub struct SmtpSink {
    address: SocketAddr,
    shared: Arc<SmtpShared>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    /// Listens on an ephemeral port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let address = listener.local_addr().expect("bound");
        let shared = Arc::new(SmtpShared {
            mode: Mutex::new(SmtpMode::Accept),
            messages: Mutex::new(Vec::new()),
            sessions: AtomicUsize::new(0),
        });
        let state = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                state.sessions.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(smtp_session(stream, state.clone()));
            }
        });
        Self { address, shared, task }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Changes how sessions are answered from now on.
    pub fn set_mode(&self, mode: SmtpMode) {
        *self.shared.mode.lock().expect("mode lock") = mode;
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> Vec<SmtpMessage> {
        self.shared.messages.lock().expect("messages lock").clone()
    }

    /// Connections opened so far.
    pub fn sessions(&self) -> usize {
        self.shared.sessions.load(Ordering::SeqCst)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn smtp_session(stream: TcpStream, state: Arc<SmtpShared>) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mode = *state.mode.lock().expect("mode lock");
    if mode == SmtpMode::Silent {
        let mut sink = Vec::new();
        reader.read_to_end(&mut sink).await?;
        return Ok(());
    }
    writer.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let (mut mail_from, mut rcpt_to) = (String::new(), Vec::new());
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let command = String::from_utf8_lossy(&line).trim_end().to_owned();
        let verb = command.split([' ', ':']).next().unwrap_or_default().to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.test greets you\r\n250 8BITMIME\r\n",
            "HELO" | "RSET" | "NOOP" => b"250 OK\r\n",
            "MAIL" => {
                mail_from = command.split_once(':').map(|(_, a)| a.trim().to_owned()).unwrap_or_default();
                b"250 2.1.0 OK\r\n"
            }
            "RCPT" if mode == SmtpMode::RejectRecipients => b"550 5.1.1 mailbox unavailable\r\n",
            "RCPT" => {
                rcpt_to.push(command.split_once(':').map(|(_, a)| a.trim().to_owned()).unwrap_or_default());
                b"250 2.1.5 OK\r\n"
            }
            "DATA" => {
                writer.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut data = Vec::new();
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    let unstuffed = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
                    data.extend_from_slice(unstuffed);
                }
                state.messages.lock().expect("messages lock").push(SmtpMessage {
                    mail_from: std::mem::take(&mut mail_from),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    data: String::from_utf8_lossy(&data).into_owned(),
                });
                b"250 2.0.0 queued\r\n"
            }
            "QUIT" => {
                writer.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 command not recognized\r\n",
        };
        writer.write_all(reply).await?;
    }
}

/// Every neighbour of the executor, faked.
pub struct Fakes {
    /// WhatsApp Cloud API.
    pub whatsapp: MockServer,
    /// OpenAI-compatible provider.
    pub ai: MockServer,
    /// Bucket.
    pub bucket: SinkFake,
    /// Karma.
    pub karma: SinkFake,
    /// SMTP relay.
    pub smtp: SmtpSink,
}

impl Fakes {
    /// Every fake up and accepting.
    pub async fn start() -> Self {
        Self {
            whatsapp: MockServer::builder().start().await,
            ai: MockServer::builder().start().await,
            bucket: SinkFake::up(BUCKET_PATH).await,
            karma: SinkFake::up(KARMA_PATH).await,
            smtp: SmtpSink::start().await,
        }
    }

    /// Every fake up, except Bucket, whose port refuses connections.
    pub async fn with_bucket_refused() -> Self {
        Self { bucket: SinkFake::refused(BUCKET_PATH), ..Self::start().await }
    }

    /// Every fake up, except Karma, whose port refuses connections.
    pub async fn with_karma_refused() -> Self {
        Self { karma: SinkFake::refused(KARMA_PATH), ..Self::start().await }
    }
}

/// The environment every test executor starts from (small timeouts keep the suite fast).
fn base_env(fakes: &Fakes, data_dir: &TempDir) -> BTreeMap<String, String> {
    let pairs = [
        ("EXECUTOR_BIND", "127.0.0.1:0".to_owned()),
        ("EXECUTOR_DATA_DIR", data_dir.path().display().to_string()),
        ("EXECUTOR_DRAIN_DELAY", "0".to_owned()),
        ("BUCKET_URL", fakes.bucket.uri()),
        ("KARMA_URL", fakes.karma.uri()),
        ("WHATSAPP_API_URL", fakes.whatsapp.uri()),
        ("WHATSAPP_PHONE_NUMBER_ID", "123456789012345".to_owned()),
        ("WHATSAPP_ACCESS_TOKEN", WHATSAPP_TOKEN.to_owned()),
        ("WHATSAPP_TIMEOUT", "5".to_owned()),
        ("AI_API_URL", fakes.ai.uri()),
        ("AI_API_KEY", AI_KEY.to_owned()),
        ("AI_MODEL", AI_MODEL.to_owned()),
        ("AI_TIMEOUT", "5".to_owned()),
        ("SMTP_HOST", "127.0.0.1".to_owned()),
        ("SMTP_PORT", fakes.smtp.port().to_string()),
        ("SMTP_TIMEOUT", "5".to_owned()),
        ("WORKFLOW_TIMEOUT", "0.3".to_owned()),
        ("EXECUTOR_DELIVERY_BACKOFF_BASE", "0.01".to_owned()),
        ("EXECUTOR_DELIVERY_BACKOFF_MAX", "0.2".to_owned()),
        ("EXECUTOR_BREAKER_OPEN", "0.1".to_owned()),
        ("EXECUTOR_SHUTDOWN_GRACE", "0.5".to_owned()),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
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
    let mut vars = base_env(&fakes, &data_dir);
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let settings = Settings::from_lookup(|name| vars.get(name).cloned()).expect("valid test settings");
    let application = Application::build(settings).await.expect("the executor starts");
    let address = application.local_addr();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("an HTTP client");
    TestApp {
        address,
        http,
        whatsapp: fakes.whatsapp,
        ai: fakes.ai,
        bucket: fakes.bucket,
        karma: fakes.karma,
        smtp: fakes.smtp,
        data_dir,
        cancel_on_drop: shutdown.clone().drop_guard(),
        shutdown,
        server,
    }
}

/// A running executor and its fakes.
pub struct TestApp {
    /// Where the executor listens.
    pub address: SocketAddr,
    /// The client tests call it with.
    pub http: reqwest::Client,
    /// WhatsApp Cloud API fake.
    pub whatsapp: MockServer,
    /// AI provider fake.
    pub ai: MockServer,
    /// Bucket fake.
    pub bucket: SinkFake,
    /// Karma fake.
    pub karma: SinkFake,
    /// SMTP fake.
    pub smtp: SmtpSink,
    data_dir: TempDir,
    shutdown: CancellationToken,
    cancel_on_drop: DropGuard,
    server: JoinHandle<Result<(), StartError>>,
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

impl TestApp {
    /// `http://host:port` of the executor.
    pub fn url(&self, route: &str) -> String {
        format!("http://{}{route}", self.address)
    }

    /// `POST /api/workflow/execute` with a JSON body.
    pub async fn execute(&self, body: &Value) -> TestResponse {
        self.execute_with(body, &[]).await
    }

    /// `POST /api/workflow/execute` with a JSON body and extra headers.
    pub async fn execute_with(&self, body: &Value, headers: &[(&str, &str)]) -> TestResponse {
        let bytes = serde_json::to_vec(body).expect("serializable");
        self.execute_raw(bytes, Some("application/json"), headers).await
    }

    /// `POST /api/workflow/execute` with any bytes, content type and headers.
    pub async fn execute_raw(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        let mut request = self.http.post(self.url("/api/workflow/execute")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        TestResponse::from(request).await
    }

    /// `POST /api/workflow/execute` with a chunked body (no `Content-Length`), over a raw
    /// connection; returns the status and the JSON body.
    pub async fn execute_chunked(&self, chunks: &[Vec<u8>]) -> (u16, Value) {
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
        TestResponse::from(self.http.get(self.url("/healthz"))).await
    }

    /// `GET /api/integration/status`.
    pub async fn status(&self) -> TestResponse {
        TestResponse::from(self.http.get(self.url("/api/integration/status"))).await
    }

    /// `GET /api/integration/dead-letters?{query}`.
    pub async fn dead_letters(&self, query: &str) -> TestResponse {
        TestResponse::from(self.http.get(self.url(&format!("/api/integration/dead-letters?{query}")))).await
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> MetricsText {
        let response = self.http.get(self.url("/metrics")).send().await.expect("metrics answer");
        assert_eq!(response.status(), 200);
        MetricsText(response.text().await.expect("metrics text"))
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

    /// Cancels the shutdown token and waits for `run_until_stopped` to return.
    pub async fn stop(self) -> Stopped {
        let TestApp { whatsapp, ai, bucket, karma, smtp, data_dir, shutdown, server, cancel_on_drop, .. } = self;
        shutdown.cancel();
        drop(cancel_on_drop);
        let result = tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .expect("run_until_stopped returns in time")
            .expect("the server task does not panic");
        Stopped { data_dir, fakes: Fakes { whatsapp, ai, bucket, karma, smtp }, result }
    }
}

/// Reads a raw HTTP/1.1 answer until the server closes (or 10 s pass): its status and the JSON
/// object of its body (which may itself be chunked: the object between the outer braces).
pub async fn read_raw_answer(stream: &mut TcpStream) -> (u16, Value) {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(start), Some(end)) if end > start => serde_json::from_str(&body[start..=end]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

/// An answer of the executor.
#[derive(Debug)]
pub struct TestResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
    /// The raw body.
    pub text: String,
    /// How long the call took.
    pub elapsed: Duration,
}

impl TestResponse {
    async fn from(request: reqwest::RequestBuilder) -> Self {
        let started = Instant::now();
        let response = request.send().await.expect("the executor answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a readable body");
        let elapsed = started.elapsed();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self { status, headers, body, text, elapsed }
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `execution_result`.
    pub fn result(&self) -> &Value {
        &self.body["execution_result"]
    }

    /// Asserts HTTP 200, `status: "success"` and a result for `trace_id`.
    pub fn assert_success(&self, trace_id: &str) {
        assert_eq!(self.status, 200, "{}", self.text);
        assert_eq!(self.body["status"], "success", "{}", self.text);
        assert_eq!(self.body["trace_id"], trace_id, "{}", self.text);
        assert_eq!(self.result()["success"], true, "{}", self.text);
        assert_eq!(self.result()["trace_id"], trace_id, "{}", self.text);
        assert!(self.result()["timestamp"].is_string(), "{}", self.text);
    }

    /// Asserts an executed failure: HTTP 200, `status: "failed"` and `error_code`.
    pub fn assert_failed(&self, error_code: &str) {
        assert_eq!(self.status, 200, "{}", self.text);
        assert_eq!(self.body["status"], "failed", "{}", self.text);
        assert_eq!(self.result()["success"], false, "{}", self.text);
        assert_eq!(self.result()["error_code"], error_code, "{}", self.text);
        assert!(self.result()["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.text);
        assert_eq!(self.result()["trace_id"], self.body["trace_id"], "{}", self.text);
    }

    /// Asserts a rejection with the structured body `{detail, error: {code, message, field}}`.
    pub fn assert_rejected(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert!(!self.body["detail"].is_null(), "no detail: {}", self.text);
        assert_eq!(self.body["error"]["code"], code, "{}", self.text);
        assert!(self.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.text);
        assert!(self.body["error"].get("field").is_some(), "no error.field: {}", self.text);
        assert!(self.body.get("execution_result").is_none(), "{}", self.text);
    }
}

/// Prometheus text, with a lookup by name and labels.
#[derive(Debug)]
pub struct MetricsText(pub String);

impl MetricsText {
    /// The sum of the samples of `name` whose labels include `labels` (0 when there is none).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_sample)
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, value)| value)
            .sum()
    }
}

fn parse_sample(line: &str) -> Option<(String, HashMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_owned(), HashMap::new()),
        Some((name, rest)) => {
            let labels = rest
                .trim_end_matches('}')
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect();
            (name.to_owned(), labels)
        }
    };
    Some((name, labels, value))
}

/// Asserts `value` is a well-formed W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn assert_traceparent(value: &str) {
    let parts: Vec<&str> = value.split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && parts[1] != "0".repeat(32)
            && hex(parts[2], 16)
            && parts[2] != "0".repeat(16)
            && hex(parts[3], 2),
        "malformed traceparent: {value}"
    );
}

/// The `workflow-executor` binary running as a child process.
pub struct ExecutorProcess {
    child: Child,
    address: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

/// Why [`ExecutorProcess::try_start`] has no serving executor to give.
#[derive(Debug)]
pub struct NotServing {
    /// How the process exited; `None` if it neither listened nor exited in time (it was killed).
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout and stderr.
    pub logs: Vec<String>,
}

impl ExecutorProcess {
    /// Starts the binary on `127.0.0.1:0` with `data_dir` and `env`, and waits until it listens.
    pub async fn start(data_dir: impl AsRef<Path>, env: &[(&str, String)]) -> Self {
        match Self::try_start(data_dir, env).await {
            Ok(process) => process,
            Err(NotServing { status: Some(status), logs }) => panic!("the executor exited with {status}: {logs:#?}"),
            Err(NotServing { status: None, logs }) => panic!("the executor never listened: {logs:#?}"),
        }
    }

    /// Starts the binary like [`ExecutorProcess::start`], but hands back its exit status and
    /// logs if it exits (or does not listen within 20 s) instead of failing the test.
    pub async fn try_start(data_dir: impl AsRef<Path>, env: &[(&str, String)]) -> Result<Self, NotServing> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_workflow-executor"));
        command
            .env_clear()
            .env("EXECUTOR_BIND", "127.0.0.1:0")
            .env("EXECUTOR_DATA_DIR", data_dir.as_ref())
            .env("EXECUTOR_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("WORKFLOW_TIMEOUT", "0.3")
            .env("EXECUTOR_DELIVERY_BACKOFF_BASE", "0.01")
            .env("EXECUTOR_DELIVERY_BACKOFF_MAX", "0.2")
            .env("EXECUTOR_BREAKER_OPEN", "0.1")
            .env("EXECUTOR_SHUTDOWN_GRACE", "0.5")
            .env("EXECUTOR_DRAIN_DELAY", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the executor binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        // Drain both pipes for the whole life of the process so logging never blocks it.
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut readers = Vec::new();
        for pipe in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
            let logs = logs.clone();
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    logs.lock().expect("logs lock").push(line);
                }
            }));
        }
        let started = Instant::now();
        let status = loop {
            let address = listening_address(&logs.lock().expect("logs lock"));
            if let Some(address) = address {
                return Ok(Self { child, address, logs });
            }
            if let Some(status) = child.try_wait().ok().flatten() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The pipes close with the process: wait until every line it wrote has been read.
        eventually(secs(5.0), "the executor's output is read to the end", async || {
            readers.iter().all(|reader| reader.is_finished()).then_some(())
        })
        .await;
        let logs = logs.lock().expect("logs lock").clone();
        Err(NotServing { status, logs })
    }

    /// `http://host:port` of the executor.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The execute route.
    pub fn url(&self) -> String {
        format!("http://{}/api/workflow/execute", self.address)
    }

    /// `SIGKILL`: no shutdown code runs.
    pub fn kill(&mut self) {
        self.child.kill().expect("the process can be killed");
        self.child.wait().expect("the killed process is reaped");
    }

    /// `SIGTERM`, then waits for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill(1) runs");
        assert!(sent.success(), "SIGTERM was delivered");
        let child = &mut self.child;
        eventually(secs(15.0), "the executor exits after SIGTERM", async || child.try_wait().ok().flatten()).await
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Every line it wrote to stdout and stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs lock").clone()
    }
}

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address from the JSON line `{"message": "workflow executor listening", "address": ...}`.
pub fn listening_address(lines: &[String]) -> Option<SocketAddr> {
    lines.iter().find_map(|line| {
        let entry: Value = serde_json::from_str(line).ok()?;
        let message = entry.get("message").or_else(|| entry.pointer("/fields/message"))?.as_str()?;
        if message != "workflow executor listening" {
            return None;
        }
        entry.get("address").or_else(|| entry.pointer("/fields/address"))?.as_str()?.parse().ok()
    })
}

/// An HTTP client for calling an [`ExecutorProcess`].
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(secs(10.0)).build().expect("an HTTP client")
}
