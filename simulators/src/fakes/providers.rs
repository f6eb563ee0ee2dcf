//! The outside providers the executor's adapters call, on one HTTP server (:8010).
//!
//! - **WhatsApp Cloud API**: `POST /{version}/{phone_number_id}/messages` with
//!   `{"messaging_product": "whatsapp", "to", "type": "text", "text": {"body"}}` (body at most
//!   4096 characters) answers `{"messaging_product": "whatsapp", "contacts": [{"input", "wa_id"}],
//!   "messages": [{"id": "wamid.…"}]}`. Errors use the Graph API's shape `{"error": {message,
//!   type: "OAuthException", code, fbtrace_id}}`: when a token is configured, none → 401 code
//!   104 and a wrong one → 401 code 190 (with none configured, any or no token passes); bad parameters → 400 code 100, a recipient that is not
//!   8–15 digits → 400 code 131009, an unknown version segment → 400 code 2500.
//! - **OpenAI-compatible chat**: `POST /v1/chat/completions` with `{"model", "messages": [{role,
//!   content}]}` answers a `chat.completion` whose content is `"[AI_RESPONSE] <last user
//!   message>"` (the reference executor's mock text, so outputs stay deterministic). Errors use
//!   OpenAI's `{"error": {message, type, param, code}}`: a wrong or missing key (when one is
//!   configured) → 401 `invalid_api_key`, bad bodies → 400 `invalid_request_error`.
//!
//! Both record what they accepted ([`Providers::whatsapp_messages`], [`Providers::chat_requests`]),
//! each in a bounded log ([`DEFAULT_LIMITS`] by default; the oldest dropped first and counted).
//! Message ids are deterministic for a seed and arrival order.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};

use crate::record::bounded::{ENTRY_OVERHEAD, Limits, Page, Ring};
use crate::serving::sim::Sim;
use crate::serving::wire;

/// A WhatsApp message the fake accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhatsAppMessage {
    /// The `phone_number_id` path segment (the sender).
    pub phone_number_id: String,
    /// The recipient as sent.
    pub to: String,
    /// The text.
    pub body: String,
    /// The `wamid.…` id answered.
    pub message_id: String,
}

/// A chat completion the fake answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatRequest {
    /// The requested model.
    pub model: String,
    /// The messages as sent.
    pub messages: Value,
    /// The answered content.
    pub content: String,
    /// The `chatcmpl-…` id answered.
    pub id: String,
}

/// The default limits of each provider's log: 5,000 entries, 8 MiB.
pub(crate) const DEFAULT_LIMITS: Limits = Limits::new(5_000, 8);

/// The providers' state; reach it through [`crate::Stack::providers`].
#[derive(Debug)]
pub struct Providers {
    sim: Arc<Sim>,
    whatsapp_token: Option<String>,
    ai_api_key: Option<String>,
    whatsapp: Mutex<Ring<WhatsAppMessage>>,
    chats: Mutex<Ring<ChatRequest>>,
}

fn locked<T>(ring: &Mutex<Ring<T>>) -> std::sync::MutexGuard<'_, Ring<T>> {
    ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Providers {
    pub(crate) fn new(
        sim: Arc<Sim>,
        whatsapp_token: Option<String>,
        ai_api_key: Option<String>,
        limits: Limits,
    ) -> Self {
        Self {
            sim,
            whatsapp_token,
            ai_api_key,
            whatsapp: Mutex::new(Ring::new(limits)),
            chats: Mutex::new(Ring::new(limits)),
        }
    }

    /// The WhatsApp messages accepted and kept, in order.
    pub fn whatsapp_messages(&self) -> Vec<WhatsAppMessage> {
        locked(&self.whatsapp).iter().map(|(_, m)| m.clone()).collect()
    }

    /// The chat completions answered and kept, in order.
    pub fn chat_requests(&self) -> Vec<ChatRequest> {
        locked(&self.chats).iter().map(|(_, m)| m.clone()).collect()
    }

    /// One page of kept WhatsApp messages after cursor `after`, oldest first.
    pub fn whatsapp_page(&self, after: u64, limit: usize) -> Page<WhatsAppMessage> {
        locked(&self.whatsapp).page(after, limit, |_| true, |_, m| m.clone())
    }

    /// One page of kept chat completions after cursor `after`, oldest first.
    pub fn chat_page(&self, after: u64, limit: usize) -> Page<ChatRequest> {
        locked(&self.chats).page(after, limit, |_| true, |_, m| m.clone())
    }

    /// How many WhatsApp messages and chat completions were dropped to bound memory.
    pub fn evicted(&self) -> (u64, u64) {
        (locked(&self.whatsapp).evicted(), locked(&self.chats).evicted())
    }

    /// Forgets what was received (the eviction counts are kept).
    pub fn clear(&self) {
        locked(&self.whatsapp).clear();
        locked(&self.chats).clear();
    }

    /// The server's routes.
    pub(crate) fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(|| async { wire::json_response(StatusCode::OK, &json!({"status": "ok"})) }))
            .route("/v1/chat/completions", post(chat_completion))
            .route("/{version}/{phone_number_id}/messages", post(send_whatsapp))
            .fallback(crate::fakes::bucket::not_found)
            .method_not_allowed_fallback(crate::fakes::bucket::method_not_allowed)
            .with_state(self)
    }
}

fn is_version(segment: &str) -> bool {
    segment.strip_prefix('v').is_some_and(|rest| {
        let mut parts = rest.split('.');
        let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        ok(parts.next()) && parts.next().is_none_or(|p| ok(Some(p))) && parts.next().is_none()
    })
}

async fn send_whatsapp(
    State(providers): State<Arc<Providers>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fbtrace = providers.sim.token("A");
    let fail = |status: StatusCode, code: u32, message: &str| wire::graph_error(status, code, message, &fbtrace);
    if !is_version(&version) {
        return fail(
            StatusCode::BAD_REQUEST,
            2500,
            &format!("Unknown path components: /{version}/{phone_number_id}/messages"),
        );
    }
    match (wire::bearer(&headers), &providers.whatsapp_token) {
        (None, Some(_)) => {
            return fail(StatusCode::UNAUTHORIZED, 104, "An access token is required to request this resource.");
        }
        (Some(given), Some(expected)) if given != expected => {
            return fail(StatusCode::UNAUTHORIZED, 190, "Invalid OAuth access token - Cannot parse access token");
        }
        _ => {}
    }
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return fail(StatusCode::BAD_REQUEST, 100, "(#100) Invalid parameter");
    };
    if message["messaging_product"] != "whatsapp" {
        return fail(StatusCode::BAD_REQUEST, 100, "(#100) The parameter messaging_product is required.");
    }
    let Some(to) = message["to"].as_str() else {
        return fail(StatusCode::BAD_REQUEST, 100, "(#100) The parameter to is required.");
    };
    if !matches!(message.get("type"), None | Some(Value::Null)) && message["type"] != "text" {
        return fail(
            StatusCode::BAD_REQUEST,
            100,
            "(#100) Param type must be \"text\" (the only type pillar-sim models)",
        );
    }
    let Some(text) = message["text"]["body"].as_str().filter(|t| !t.is_empty()) else {
        return fail(StatusCode::BAD_REQUEST, 100, "(#100) The parameter text['body'] is required.");
    };
    if text.chars().count() > 4096 {
        return fail(StatusCode::BAD_REQUEST, 100, "(#100) Param text['body'] must be at most 4096 characters long.");
    }
    let digits = to.strip_prefix('+').unwrap_or(to);
    if !(8..=15).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit()) {
        return fail(StatusCode::BAD_REQUEST, 131_009, "(#131009) Parameter value is not valid");
    }
    let message_id = providers.sim.token("wamid.HBgM");
    let size = ENTRY_OVERHEAD + phone_number_id.len() + to.len() + text.len() + message_id.len();
    let message =
        WhatsAppMessage { phone_number_id, to: to.to_owned(), body: text.to_owned(), message_id: message_id.clone() };
    let dropped = locked(&providers.whatsapp).push(message, size).1;
    drop(dropped);
    wire::json_response(
        StatusCode::OK,
        &json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": digits}],
            "messages": [{"id": message_id}]}),
    )
}

fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" "))
        }
        _ => None,
    }
}

async fn chat_completion(State(providers): State<Arc<Providers>>, headers: HeaderMap, body: Bytes) -> Response {
    let invalid = |message: &str, param: Option<&str>| {
        wire::openai_error(StatusCode::BAD_REQUEST, message, "invalid_request_error", param, None)
    };
    if let Some(expected) = &providers.ai_api_key {
        match wire::bearer(&headers) {
            None => {
                return wire::openai_error(
                    StatusCode::UNAUTHORIZED,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth.",
                    "invalid_request_error",
                    None,
                    None,
                );
            }
            Some(given) if given != expected => {
                let tail: String = given.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
                return wire::openai_error(
                    StatusCode::UNAUTHORIZED,
                    &format!("Incorrect API key provided: ...{tail}."),
                    "invalid_request_error",
                    None,
                    Some("invalid_api_key"),
                );
            }
            Some(_) => {}
        }
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return invalid("We could not parse the JSON body of your request.", None);
    };
    let Some(model) = request["model"].as_str().filter(|m| !m.is_empty()) else {
        return invalid("you must provide a model parameter", None);
    };
    let Some(messages) = request["messages"].as_array().filter(|m| !m.is_empty()) else {
        return invalid("'messages' is a required property and must be a non-empty array", Some("messages"));
    };
    let mut last_user = None;
    let mut prompt_tokens = 0;
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
            return invalid(
                &format!("Invalid value for 'role' in messages[{i}]"),
                Some(&format!("messages.[{i}].role")),
            );
        }
        let Some(text) = content_text(&message["content"]) else {
            return invalid(&format!("Invalid content in messages[{i}]"), Some(&format!("messages.[{i}].content")));
        };
        prompt_tokens += text.split_whitespace().count();
        if role == "user" {
            last_user = Some(text);
        }
    }
    let content = format!("[AI_RESPONSE] {}", last_user.unwrap_or_default());
    let completion_tokens = content.split_whitespace().count();
    let id = providers.sim.token("chatcmpl-");
    // The messages as sent are about the request body; twice that in memory as a `Value`.
    let size = ENTRY_OVERHEAD + 2 * body.len() + content.len() + id.len();
    let request = ChatRequest {
        model: model.to_owned(),
        messages: Value::Array(messages.clone()),
        content: content.clone(),
        id: id.clone(),
    };
    let dropped = locked(&providers.chats).push(request, size).1;
    drop(dropped);
    wire::json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "object": "chat.completion",
            "created": wire::now_unix(),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens},
            "system_fingerprint": "fp_pillar_sim",
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_versions_look_like_v21_0() {
        assert!(is_version("v21.0"));
        assert!(is_version("v19"));
        assert!(!is_version("21.0"));
        assert!(!is_version("v21."));
        assert!(!is_version("v1.2.3"));
    }
}
