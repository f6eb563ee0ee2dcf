//! The AI adapter: an OpenAI-compatible chat-completions call.
//!
//! `POST {AI_API_URL}/v1/chat/completions` with `{model, messages: [{role: "user", content}]}`;
//! the first choice's text becomes `response` and the completion id `request_id`.

use serde_json::{Value, json};

use super::{Failure, Performed, fields, status_failure, transport_failure};
use crate::config::AiSettings;
use crate::trace::trace_headers;

const PROVIDER: &str = "AI provider";

pub(super) struct Ai {
    settings: AiSettings,
    endpoint: reqwest::Url,
}

impl Ai {
    pub(super) fn new(settings: AiSettings) -> Self {
        let mut endpoint = settings.api_url.clone();
        let base = endpoint.path().trim_end_matches('/').trim_end_matches("/v1").to_owned();
        endpoint.set_path(&format!("{base}/v1/chat/completions"));
        Self { settings, endpoint }
    }

    pub(super) async fn complete(
        &self,
        http: &reqwest::Client,
        prompt: &str,
        trace_id: &str,
    ) -> Result<Performed, Failure> {
        let requested_at = crate::now_rfc3339();
        let body = json!({"model": self.settings.model, "messages": [{"role": "user", "content": prompt}]});
        let mut request = http
            .post(self.endpoint.clone())
            .timeout(self.settings.timeout)
            .headers(trace_headers(trace_id))
            .json(&body);
        if !self.settings.api_key.is_empty() {
            request = request.bearer_auth(self.settings.api_key.expose());
        }
        let response = request.send().await.map_err(|e| transport_failure(PROVIDER, &e))?;
        let status = response.status().as_u16();
        let answer: Value = match response.json().await {
            Ok(answer) => answer,
            Err(e) if e.is_timeout() => return Err(transport_failure(PROVIDER, &e)),
            Err(_) => Value::Null,
        };
        if !(200..300).contains(&status) {
            return Err(status_failure(PROVIDER, status, answer.pointer("/error/message").and_then(Value::as_str)));
        }
        let text = answer.pointer("/choices/0/message/content").and_then(Value::as_str).ok_or_else(|| {
            Failure::new("provider_bad_response", format!("{PROVIDER} answered without a completion"))
        })?;
        let request_id = answer.get("id").and_then(Value::as_str).unwrap_or_default();
        Ok(Performed {
            fields: fields([
                ("request_id", json!(request_id)),
                ("prompt", json!(prompt)),
                ("response", json!(text)),
                ("model", answer.get("model").cloned().unwrap_or_else(|| json!(self.settings.model))),
                ("requested_at", json!(requested_at)),
            ]),
            ops: Vec::new(),
        })
    }
}
