//! The AI adapter: an OpenAI-compatible chat-completions call.
//!
//! `POST {AI_API_URL}/v1/chat/completions` with `{model, messages: [{role: "user", content}]}`;
//! the first choice's text becomes `response` and the completion id `request_id`; the result also
//! carries the reference's `health: "OK"` and the model that answered.

use serde_json::{Value, json};

use super::{Failure, Performed, fields, post_json};
use crate::config::AiSettings;

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
        let requested_at = crate::clock::now_rfc3339();
        let body = json!({"model": self.settings.model, "messages": [{"role": "user", "content": prompt}]});
        let settings = &self.settings;
        let answer =
            post_json(http, PROVIDER, &self.endpoint, settings.timeout, &settings.api_key, trace_id, &body).await?;
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
                // The reference adapter reports `health: "OK"`; its clients may read it.
                ("health", json!("OK")),
                ("requested_at", json!(requested_at)),
            ]),
            created: None,
        })
    }
}
