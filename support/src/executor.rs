//! One way to set up and call an executor: the fast settings every suite starts from
//! ([`FAST_EXECUTOR`]), a [`pillar_sim::Stack`] of fakes whose providers expect known
//! credentials ([`neighbours_builder`]; [`Stack::neighbours_env`] gives the variables that send
//! an executor to them), and its routes called the same way by every suite ([`ExecutorClient`]).

use pillar_sim::{Stack, StackBuilder};
use serde_json::Value;

use crate::{MetricsText, TestResponse};

/// Short timeouts that keep a suite fast: a workflow times out after 0.3 s, delivery retries
/// after 10 ms to 200 ms, a breaker opens for 100 ms, shutdown waits 0.5 s and does not drain
/// first, and a provider call gets 5 s.
pub const FAST_EXECUTOR: [(&str, &str); 9] = [
    ("WORKFLOW_TIMEOUT", "0.3"),
    ("EXECUTOR_DELIVERY_BACKOFF_BASE", "0.01"),
    ("EXECUTOR_DELIVERY_BACKOFF_MAX", "0.2"),
    ("EXECUTOR_BREAKER_OPEN", "0.1"),
    ("EXECUTOR_SHUTDOWN_GRACE", "0.5"),
    ("EXECUTOR_DRAIN_DELAY", "0"),
    ("WHATSAPP_TIMEOUT", "5"),
    ("AI_TIMEOUT", "5"),
    ("SMTP_TIMEOUT", "5"),
];

/// The bearer token the stack's WhatsApp fake requires and the executor sends.
pub const WHATSAPP_TOKEN: &str = "wa-test-token-not-a-secret";
/// The bearer key the stack's AI fake requires and the executor sends.
pub const AI_KEY: &str = "sk-test-key-not-a-secret";
/// A stack of fakes only (no executor, no control API), on `127.0.0.1:0`, whose providers
/// require [`WHATSAPP_TOKEN`] and [`AI_KEY`].
pub fn neighbours_builder() -> StackBuilder {
    Stack::builder()
        .executor(false)
        .control(false)
        .whatsapp_token(Some(WHATSAPP_TOKEN.to_owned()))
        .ai_api_key(Some(AI_KEY.to_owned()))
}

/// Calls to one executor's routes, each answer read whole as a [`TestResponse`].
#[derive(Debug, Clone)]
pub struct ExecutorClient {
    base: String,
    /// The client the calls go through (for requests of a test's own).
    pub http: reqwest::Client,
}

impl ExecutorClient {
    /// Calls the executor at `base` (`http://host:port`) through `http`.
    pub fn new(base: impl Into<String>, http: reqwest::Client) -> Self {
        Self { base: base.into().trim_end_matches('/').to_owned(), http }
    }

    /// The URL of `path` (`/healthz`, `/api/...?query`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /api/workflow/execute` with a JSON body.
    pub async fn execute(&self, body: &Value) -> TestResponse {
        self.execute_with(body, &[]).await
    }

    /// `POST /api/workflow/execute` with a JSON body and extra headers.
    pub async fn execute_with(&self, body: &Value, headers: &[(&str, &str)]) -> TestResponse {
        let bytes = serde_json::to_vec(body).expect("a JSON value serializes");
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
        TestResponse::send(request).await
    }

    /// `GET` one of its routes.
    pub async fn get(&self, path: &str) -> TestResponse {
        TestResponse::send(self.http.get(self.url(path))).await
    }

    /// `GET /metrics`, which must answer 200.
    pub async fn metrics(&self) -> MetricsText {
        let answer = self.get("/metrics").await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        MetricsText(answer.text)
    }
}
