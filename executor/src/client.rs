//! The caller's side: what Core (or any pillar) uses to ask the executor for a workflow.
//!
//! It speaks exactly the body Core's Python client sends (`trace_id` both at the top level and
//! inside the payload, caller keys merged last), honours `ENABLE_WORKFLOW_EXECUTION`,
//! `WORKFLOW_EXECUTOR_URL` and `WORKFLOW_TIMEOUT`, and offers the fire-and-forget call Core makes
//! ([`WorkflowClient::execute_workflow`], which returns at once) next to one that awaits the
//! executor's answer ([`WorkflowClient::execute_workflow_and_wait`]).

use std::time::Duration;

use reqwest::Url;
use serde_json::{Map, Value, json};

use crate::config::{ConfigError, Secret};
use crate::trace::trace_headers;

/// Settings of the client, read from the caller's environment.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `ENABLE_WORKFLOW_EXECUTION` (default true): when false, nothing is sent.
    pub enabled: bool,
    /// `WORKFLOW_EXECUTOR_URL` (default `http://127.0.0.1:8003`).
    pub base_url: Url,
    /// `WORKFLOW_TIMEOUT` in seconds (default 2.0): bounds each call.
    pub timeout: Duration,
    /// `WORKFLOW_EXECUTOR_TOKEN`: sent as `Authorization: Bearer` when set.
    pub token: Secret,
    /// Send `X-Trace-Id` and `traceparent` (true; not an environment setting: the simulator's
    /// as-built Core turns it off, as the real Core's client sends neither).
    pub trace_headers: bool,
}

impl ClientSettings {
    /// Reads the settings through `lookup` (an environment variable name to its value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let enabled = match lookup("ENABLE_WORKFLOW_EXECUTION").as_deref().map(str::trim) {
            None => true,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(_) => {
                return Err(ConfigError {
                    variable: "ENABLE_WORKFLOW_EXECUTION",
                    message: "expected true or false".into(),
                });
            }
        };
        let base_url = match lookup("WORKFLOW_EXECUTOR_URL") {
            None => Url::parse("http://127.0.0.1:8003").expect("literal URL"),
            Some(raw) => Url::parse(raw.trim())
                .map_err(|e| ConfigError { variable: "WORKFLOW_EXECUTOR_URL", message: format!("not a URL ({e})") })?,
        };
        let timeout = match lookup("WORKFLOW_TIMEOUT") {
            None => Duration::from_secs(2),
            Some(raw) => raw
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or(ConfigError {
                    variable: "WORKFLOW_TIMEOUT",
                    message: "expected a positive number of seconds".into(),
                })?,
        };
        let token = Secret::new(lookup("WORKFLOW_EXECUTOR_TOKEN").unwrap_or_default());
        Ok(Self { enabled, base_url, timeout, token, trace_headers: true })
    }
}

/// Why an awaited call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `ENABLE_WORKFLOW_EXECUTION` is false.
    #[error("workflow execution is disabled (ENABLE_WORKFLOW_EXECUTION=false)")]
    Disabled,
    /// The executor could not be reached in time or answered garbage.
    #[error("executor call failed: {0}")]
    Transport(#[from] reqwest::Error),
}

/// The executor's answer to an awaited call.
#[derive(Debug, Clone)]
pub struct ExecuteAnswer {
    /// HTTP status.
    pub status: u16,
    /// Whether the answer was a stored replay.
    pub replayed: bool,
    /// The JSON body.
    pub body: Value,
}

/// A client for `POST /api/workflow/execute` and `GET /healthz`.
#[derive(Debug, Clone)]
pub struct WorkflowClient {
    http: reqwest::Client,
    settings: ClientSettings,
}

impl WorkflowClient {
    /// A client with explicit settings.
    pub fn new(settings: ClientSettings) -> Self {
        let http =
            reqwest::Client::builder().timeout(settings.timeout).build().expect("a plain HTTP client always builds");
        Self { http, settings }
    }

    /// A client configured from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        ClientSettings::from_lookup(|k| std::env::var(k).ok()).map(Self::new)
    }

    /// The settings in use.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The request body Core sends: `payload` keys are merged last, as Core's client does.
    pub fn request_body(trace_id: &str, action_type: &str, user_id: &str, payload: &Map<String, Value>) -> Value {
        let mut inner = Map::new();
        inner.insert("action_type".into(), json!(action_type));
        inner.insert("user_id".into(), json!(user_id));
        inner.insert("trace_id".into(), json!(trace_id));
        inner.extend(payload.iter().map(|(k, v)| (k.clone(), v.clone())));
        json!({
            "trace_id": trace_id,
            "decision": "workflow",
            "data": {"workflow_type": "workflow", "payload": inner},
        })
    }

    /// Fire-and-forget: schedules the call on the current Tokio runtime and returns at once.
    /// Returns false when execution is disabled or there is no runtime to run it on; the outcome
    /// of the call itself is logged, never returned (as Core's client does).
    pub fn execute_workflow(
        &self,
        trace_id: &str,
        action_type: &str,
        user_id: &str,
        payload: &Map<String, Value>,
    ) -> bool {
        if !self.settings.enabled {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let client = self.clone();
        let body = Self::request_body(trace_id, action_type, user_id, payload);
        let trace_id = trace_id.to_owned();
        runtime.spawn(async move {
            match client.post(&trace_id, &body).await {
                Ok(answer) => tracing::debug!(%trace_id, status = answer.status, "workflow dispatched"),
                Err(error) => tracing::warn!(%trace_id, %error, "workflow dispatch failed"),
            }
        });
        true
    }

    /// Sends the request and waits for the executor's answer (bounded by `WORKFLOW_TIMEOUT`).
    pub async fn execute_workflow_and_wait(
        &self,
        trace_id: &str,
        action_type: &str,
        user_id: &str,
        payload: &Map<String, Value>,
    ) -> Result<ExecuteAnswer, ClientError> {
        if !self.settings.enabled {
            return Err(ClientError::Disabled);
        }
        let body = Self::request_body(trace_id, action_type, user_id, payload);
        self.post(trace_id, &body).await
    }

    /// `GET /healthz` answered 200 within the timeout.
    pub async fn health_check(&self) -> bool {
        let Ok(url) = self.settings.base_url.join("/healthz") else { return false };
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    async fn post(&self, trace_id: &str, body: &Value) -> Result<ExecuteAnswer, ClientError> {
        let url = self.settings.base_url.join("/api/workflow/execute").expect("static path joins");
        let mut request = self.http.post(url).json(body);
        if self.settings.trace_headers {
            request = request.headers(trace_headers(trace_id));
        }
        if !self.settings.token.is_empty() {
            request = request.bearer_auth(self.settings.token.expose());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key(crate::contract::REPLAY_HEADER);
        let body = response.json::<Value>().await?;
        Ok(ExecuteAnswer { status, replayed, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matches_cores_client_with_caller_keys_last() {
        let mut payload = Map::new();
        payload.insert("title".into(), json!("Call back"));
        payload.insert("user_id".into(), json!("u-9"));
        let body = WorkflowClient::request_body("t-1", "task", "system", &payload);
        assert_eq!(
            body,
            json!({"trace_id": "t-1", "decision": "workflow", "data": {"workflow_type": "workflow",
                "payload": {"action_type": "task", "user_id": "u-9", "trace_id": "t-1", "title": "Call back"}}})
        );
    }

    #[test]
    fn disabled_client_sends_nothing() {
        let settings =
            ClientSettings::from_lookup(|k| (k == "ENABLE_WORKFLOW_EXECUTION").then(|| "false".into())).expect("valid");
        let client = WorkflowClient::new(settings);
        assert!(!client.execute_workflow("t", "task", "u", &Map::new()));
    }
}
