//! The four adapters: one `action_type`, one adapter, one attempt, no retries.
//!
//! The request layer validates the payload into an [`Action`] (field presence and format, with the
//! reference's error codes); an adapter only performs it. [`Adapters::execute`] returns the
//! reference's success fields, or a [`Failure`] with a stable `error_code`. Provider failures map
//! onto a small closed set of codes (`provider_timeout`, `provider_unavailable`,
//! `provider_rejected`, `provider_error`, `provider_bad_response`); provider error texts are
//! passed on truncated, and secrets never leave the adapter.
//!
//! The task adapter's task is recorded by the engine in the same commit as the execution record,
//! so its outcome can never be unknown; the other three call a remote provider.

mod ai;
mod email;
mod task;
mod whatsapp;

use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::Settings;

/// A validated action, ready to perform.
#[derive(Debug, Clone)]
pub enum Action {
    /// Create a task.
    Task {
        /// Task title.
        title: String,
        /// Optional description.
        description: String,
    },
    /// Send a WhatsApp text.
    WhatsApp {
        /// E.164 phone number.
        recipient: String,
        /// Text, at most 4096 characters.
        message: String,
    },
    /// Send an e-mail.
    Email {
        /// Address.
        recipient: String,
        /// Subject line.
        subject: String,
        /// Plain-text body.
        body: String,
    },
    /// Ask an AI model.
    Ai {
        /// The prompt.
        prompt: String,
    },
}

impl Action {
    /// The `action_type` that selects this adapter.
    pub fn action_type(&self) -> &'static str {
        match self {
            Action::Task { .. } => "task",
            Action::WhatsApp { .. } => "whatsapp",
            Action::Email { .. } => "email",
            Action::Ai { .. } => "ai",
        }
    }

    /// Whether the action leaves the process, so a crash mid-call leaves its outcome unknown.
    pub fn is_remote(&self) -> bool {
        !matches!(self, Action::Task { .. })
    }
}

/// A failed execution: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The `error_code` of the result.
    pub code: &'static str,
    /// The `message` of the result.
    pub message: String,
}

impl Failure {
    /// A failure with a code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// What a successful adapter produced: result fields, and the task it created, if any.
#[derive(Debug, Default)]
pub struct Performed {
    /// Fields merged into `execution_result`.
    pub fields: Map<String, Value>,
    /// A task created by the task adapter; it exists once it is recorded with the execution.
    pub created: Option<CreatedTask>,
}

/// A task the task adapter created.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedTask {
    /// Its id (`task_<uuid>`).
    pub id: String,
    /// Its JSON record.
    pub record: Vec<u8>,
}

/// The adapters and their provider clients.
pub struct Adapters {
    http: reqwest::Client,
    whatsapp: whatsapp::WhatsApp,
    email: email::Email,
    ai: ai::Ai,
}

impl Adapters {
    /// Builds every provider client from the settings.
    pub fn new(settings: &Settings) -> Result<Self, crate::config::ConfigError> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| crate::config::ConfigError { variable: "WHATSAPP_API_URL", message: e.to_string() })?;
        Ok(Self {
            http,
            whatsapp: whatsapp::WhatsApp::new(settings.whatsapp.clone()),
            email: email::Email::new(&settings.smtp)?,
            ai: ai::Ai::new(settings.ai.clone()),
        })
    }

    /// Performs `action` once.
    pub async fn execute(&self, action: &Action, trace_id: &str) -> Result<Performed, Failure> {
        match action {
            Action::Task { title, description } => Ok(task::create(title, description, trace_id)),
            Action::WhatsApp { recipient, message } => {
                self.whatsapp.send(&self.http, recipient, message, trace_id).await
            }
            Action::Email { recipient, subject, body } => self.email.send(recipient, subject, body, trace_id).await,
            Action::Ai { prompt } => self.ai.complete(&self.http, prompt, trace_id).await,
        }
    }
}

/// One JSON call to an HTTP provider: bearer token (when configured), trace headers, a bound on the
/// whole exchange. Returns the provider's 2xx answer, or the failure its error maps to (both
/// providers explain errors in `error.message`).
async fn post_json(
    http: &reqwest::Client,
    provider: &str,
    endpoint: &reqwest::Url,
    timeout: Duration,
    token: &crate::config::Secret,
    trace_id: &str,
    body: &Value,
) -> Result<Value, Failure> {
    let mut request =
        http.post(endpoint.clone()).timeout(timeout).headers(crate::trace::trace_headers(trace_id)).json(body);
    if !token.is_empty() {
        request = request.bearer_auth(token.expose());
    }
    let response = request.send().await.map_err(|e| transport_failure(provider, &e))?;
    let status = response.status().as_u16();
    let answer: Value = match response.json().await {
        Ok(answer) => answer,
        Err(e) if e.is_timeout() => return Err(transport_failure(provider, &e)),
        Err(_) => Value::Null,
    };
    if !(200..300).contains(&status) {
        return Err(status_failure(provider, status, answer.pointer("/error/message").and_then(Value::as_str)));
    }
    Ok(answer)
}

/// Maps a transport error of an HTTP provider call.
fn transport_failure(provider: &str, error: &reqwest::Error) -> Failure {
    if error.is_timeout() {
        Failure::new("provider_timeout", format!("{provider} did not answer in time"))
    } else if error.is_connect() {
        Failure::new("provider_unavailable", format!("{provider} could not be reached"))
    } else {
        Failure::new("provider_error", format!("{provider} call failed"))
    }
}

/// Maps a non-2xx answer of an HTTP provider; `detail` is the provider's own error text.
fn status_failure(provider: &str, status: u16, detail: Option<&str>) -> Failure {
    let detail = detail.map(|d| format!(": {}", truncate(d, 200))).unwrap_or_default();
    match status {
        408 | 504 => Failure::new("provider_timeout", format!("{provider} timed out (HTTP {status}){detail}")),
        400..=499 => {
            Failure::new("provider_rejected", format!("{provider} rejected the request (HTTP {status}){detail}"))
        }
        _ => Failure::new("provider_error", format!("{provider} failed (HTTP {status}){detail}")),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// Inserts string fields into a result map.
fn fields<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
