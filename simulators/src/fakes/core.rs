//! Core (:8002): the decision engine's front door, `POST /handle_task`, with an agent that
//! decides by fixed rules whether a task needs a workflow, and dispatches it through the
//! executor's own client ([`workflow_executor::client::WorkflowClient`]), fire-and-forget, with
//! the task id as trace id — answering the user at once, as the real Core's bridge does.
//!
//! **The agent's rules**, tried in order on the task's `input` (keywords are case-insensitive;
//! "the text" is what follows the first `:`, or the whole input when there is none):
//!
//! | # | when the input has | action | payload |
//! |---|---|---|---|
//! | 1 | `whatsapp` and an E.164 number (`+` and 8–15 digits) | `whatsapp` | `recipient`: the number, `message`: the text |
//! | 2 | `email`, `e-mail` or `mail`, and an e-mail address | `email` | `recipient`: the address, `subject`: what stands between the address and the first `:` (a leading "about" dropped), else "Message from BHIV Core", `body`: the text |
//! | 3 | `remind`, `task` or `todo` | `task` | `title`: the text (at most 200 characters), `description`: the whole input |
//! | 4 | `ask ai`, `summarize`, `summarise` or `explain` | `ai` | `prompt`: the text |
//! | 5 | anything else | none | — |
//!
//! The task body is the real `TaskPayload` (`agent`, `input` required; `input_type`, `pdf_path`,
//! `retries`, `fallback_model`, `tags` optional) plus two optional extensions the real model
//! ignores: `user_id` (the workflow's user, default `"system"`) and `product` (forwarded in the
//! payload for Bucket's product isolation). The answer is `{task_id, agent_output, status:
//! "success"}`; `agent_output` carries `requires_workflow`, `workflow_action_type`,
//! `workflow_payload` and `workflow_dispatched` (whether the client accepted the dispatch).
//!
//! **Profiles.** `spec` builds the client from `ENABLE_WORKFLOW_EXECUTION`,
//! `WORKFLOW_EXECUTOR_URL`, `WORKFLOW_TIMEOUT` and `WORKFLOW_EXECUTOR_TOKEN`, and every agent
//! name gets the rule agent. `as-built` is CORE8 with its stock agent configuration: it reads
//! none of the settings but the URL (the real Core hard-codes `http://localhost:8003`, which an
//! in-process stack cannot use), always dispatches with the default 2 s timeout and without
//! `X-Trace-Id` or `traceparent`; its stock agents `edumentor_agent`, `vedas_agent` and
//! `wellness_agent` are HTTP agents configured on Bucket's port, which answers 404, so Core
//! answers `status: "error"` and dispatches nothing; its Python-module agents answer without a
//! workflow; an unknown agent is an error; and `workflow_probe_agent` (the agent the real-pillar
//! scripts register, since no stock agent ever asks for a workflow) decides by the rules above
//! and dispatches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use workflow_executor::client::{ClientSettings, WorkflowClient};
use workflow_executor::config::ConfigError;

use crate::pillar::{Profile, ProfileCell};
use crate::serving::wire::{self, Expect, TraceId};

/// The agents Core lists as available.
const AGENTS: [&str; 3] = ["edumentor_agent", "vedas_agent", "wellness_agent"];
/// The as-built Core's stock HTTP agents and the Bucket routes their configuration points at.
const STOCK_HTTP_AGENTS: [(&str, &str); 3] =
    [("edumentor_agent", "/edumentor"), ("vedas_agent", "/ask-vedas"), ("wellness_agent", "/wellness")];
/// The as-built Core's stock Python-module agents (they never ask for a workflow).
const STOCK_MODULE_AGENTS: [&str; 6] =
    ["archive_agent", "image_agent", "audio_agent", "text_agent", "stream_transformer_agent", "knowledge_agent"];
/// The agent that asks the as-built Core for workflows.
pub(crate) const PROBE_AGENT: &str = "workflow_probe_agent";

/// What the agent decided about a task.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentDecision {
    /// The adapter to run, when the task needs a workflow.
    pub action_type: Option<&'static str>,
    /// The adapter's fields.
    pub payload: Map<String, Value>,
    /// What the agent tells the user.
    pub response: String,
}

/// The text after the first `:`, or the whole input.
fn tail(input: &str) -> &str {
    input.split_once(':').map_or(input, |(_, rest)| rest).trim()
}

fn e164(input: &str) -> Option<String> {
    input.match_indices('+').find_map(|(i, _)| {
        let digits: String = input[i + 1..].chars().take_while(char::is_ascii_digit).collect();
        (8..=15).contains(&digits.len()).then(|| format!("+{digits}"))
    })
}

fn email_address(input: &str) -> Option<&str> {
    input.split_whitespace().map(|w| w.trim_matches(|c: char| ",;:()<>\"'".contains(c))).find(|w| {
        w.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
    })
}

/// The agent's rules (see the module documentation), as a pure function.
pub(crate) fn decide(input: &str) -> AgentDecision {
    let lower = input.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let text = tail(input);
    let mut payload = Map::new();
    let action = if let Some(number) = e164(input).filter(|_| has(&["whatsapp"])) {
        payload.insert("recipient".into(), json!(number));
        payload.insert("message".into(), json!(text));
        Some("whatsapp")
    } else if let Some(address) = email_address(input).filter(|_| has(&["email", "e-mail", "mail"])) {
        let after = input.split_once(address).map_or("", |(_, rest)| rest);
        let subject = after.split_once(':').map_or("", |(s, _)| s).trim();
        let subject = subject.strip_prefix("about ").unwrap_or(subject).trim();
        let subject = if subject.is_empty() { "Message from BHIV Core" } else { subject };
        payload.insert("recipient".into(), json!(address));
        payload.insert("subject".into(), json!(subject));
        payload.insert("body".into(), json!(text));
        Some("email")
    } else if has(&["remind", "task", "todo"]) {
        payload.insert("title".into(), json!(text.chars().take(200).collect::<String>()));
        payload.insert("description".into(), json!(input));
        Some("task")
    } else if has(&["ask ai", "summarize", "summarise", "explain"]) {
        payload.insert("prompt".into(), json!(text));
        Some("ai")
    } else {
        None
    };
    let response = match action {
        Some(kind) => format!("I will take care of that: a {kind} workflow has been requested."),
        None => "I can help with that. No action is needed.".to_owned(),
    };
    AgentDecision { action_type: action, payload, response }
}

#[derive(Debug, Default)]
struct Counters {
    total: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// The Core fake's state; reach it through [`crate::Stack::core`].
#[derive(Debug)]
pub struct Core {
    profile: ProfileCell,
    started: Instant,
    counters: Counters,
    /// The `spec` and `as-built` clients, once the executor's address is known.
    clients: RwLock<Option<(WorkflowClient, WorkflowClient)>>,
}

impl Core {
    pub(crate) fn new(profile: Profile) -> Self {
        Self {
            profile: ProfileCell::new(profile),
            started: Instant::now(),
            counters: Counters::default(),
            clients: RwLock::new(None),
        }
    }

    /// The current profile.
    pub fn profile(&self) -> Profile {
        self.profile.get()
    }

    /// Switches the profile (takes effect on the next request).
    pub fn set_profile(&self, profile: Profile) {
        self.profile.set(profile);
    }

    /// (Re)configures dispatch from Core's environment (`ENABLE_WORKFLOW_EXECUTION`,
    /// `WORKFLOW_EXECUTOR_URL`, `WORKFLOW_TIMEOUT`, `WORKFLOW_EXECUTOR_TOKEN`).
    pub fn configure(&self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let spec = ClientSettings::from_lookup(|name| env.get(name).cloned())?;
        let mut as_built = ClientSettings::from_lookup(|name| {
            (name == "WORKFLOW_EXECUTOR_URL").then(|| env.get(name).cloned()).flatten()
        })?;
        as_built.trace_headers = false;
        *self.clients.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((WorkflowClient::new(spec), WorkflowClient::new(as_built)));
        Ok(())
    }

    fn client(&self) -> Option<WorkflowClient> {
        let clients = self.clients.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients.as_ref().map(|(spec, as_built)| match self.profile() {
            Profile::Spec => spec.clone(),
            Profile::AsBuilt => as_built.clone(),
        })
    }

    /// Whether dispatch is configured and enabled for the current profile.
    pub fn dispatch_enabled(&self) -> bool {
        self.client().is_some_and(|c| c.settings().enabled)
    }

    /// The fake's routes.
    pub(crate) fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(root))
            .route("/health", get(health))
            .route("/handle_task", post(handle_task))
            .fallback(crate::fakes::bucket::not_found)
            .method_not_allowed_fallback(crate::fakes::bucket::method_not_allowed)
            .with_state(self)
    }
}

async fn root() -> Response {
    wire::json_response(
        StatusCode::OK,
        &json!({"service": "BHIV Core MCP Bridge", "version": "2.0.0", "status": "running",
            "endpoints": ["/handle_task", "/health"]}),
    )
}

async fn health(State(core): State<Arc<Core>>) -> Response {
    let total = core.counters.total.load(Ordering::Relaxed);
    let ok = core.counters.ok.load(Ordering::Relaxed);
    let rate = if total == 0 { 100.0 } else { ok as f64 * 100.0 / total as f64 };
    let agent_status: Map<String, Value> = AGENTS.iter().map(|a| ((*a).to_owned(), json!("active"))).collect();
    wire::json_response(
        StatusCode::OK,
        &json!({
            "status": "healthy",
            "timestamp": wire::now_rfc3339(),
            "uptime_seconds": core.started.elapsed().as_secs_f64(),
            "services": {"mongodb": "connected", "agent_registry": "active", "available_agents": AGENTS.len()},
            "metrics": {"total_requests": total, "successful_requests": ok,
                "failed_requests": core.counters.failed.load(Ordering::Relaxed), "success_rate_percent": rate},
            "agent_status": agent_status,
            "workflow_executor": {"dispatch_enabled": core.dispatch_enabled()},
        }),
    )
}

async fn handle_task(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    core.counters.total.fetch_add(1, Ordering::Relaxed);
    let task = match wire::parse_body(&body) {
        Ok(task) => task,
        Err(errors) => return refuse(&core, errors),
    };
    let errors = wire::model_errors(
        &task,
        &[
            ("agent", Expect::Str, true),
            ("input", Expect::Str, true),
            ("input_type", Expect::Str, false),
            ("pdf_path", Expect::Str, false),
            ("retries", Expect::Int, false),
            ("fallback_model", Expect::Str, false),
            ("user_id", Expect::Str, false),
            ("product", Expect::Str, false),
        ],
    );
    if !errors.is_empty() {
        return refuse(&core, errors);
    }
    let text = |name: &str| task.get(name).and_then(Value::as_str);
    let task_id = uuid::Uuid::new_v4().to_string();
    let agent = text("agent").unwrap_or_default();
    if core.profile() == Profile::AsBuilt && agent != PROBE_AGENT {
        return stock_agent(&core, agent, task_id);
    }
    let decision = decide(text("input").unwrap_or_default());
    let user_id = text("user_id").unwrap_or("system");
    let mut payload = decision.payload;
    if let Some(product) = text("product") {
        payload.insert("product".into(), json!(product));
    }
    let dispatched = match (decision.action_type, core.client()) {
        (Some(action), Some(client)) => client.execute_workflow(&task_id, action, user_id, &payload),
        _ => false,
    };
    let mut agent_output = json!({
        "agent": text("agent"),
        "response": decision.response,
        "input_type": text("input_type").unwrap_or("text"),
        "requires_workflow": decision.action_type.is_some(),
        "workflow_action_type": decision.action_type,
        "user_id": user_id,
        "workflow_dispatched": dispatched,
    });
    if decision.action_type.is_some() {
        agent_output["workflow_payload"] = Value::Object(payload);
    }
    core.counters.ok.fetch_add(1, Ordering::Relaxed);
    let mut response = wire::json_response(
        StatusCode::OK,
        &json!({"task_id": task_id, "agent_output": agent_output, "status": "success"}),
    );
    response.extensions_mut().insert(TraceId(task_id));
    response
}

/// The as-built Core's answer for an agent other than [`PROBE_AGENT`]: its stock HTTP agents fail
/// (their endpoints are Bucket routes that do not exist), its module agents need no workflow, and
/// an unknown agent is an error. Nothing is dispatched.
fn stock_agent(core: &Core, agent: &str, task_id: String) -> Response {
    let failure = if let Some((_, route)) = STOCK_HTTP_AGENTS.iter().find(|(name, _)| *name == agent) {
        Some(format!("404 Client Error: Not Found for url: http://localhost:8001{route}"))
    } else if STOCK_MODULE_AGENTS.contains(&agent) {
        None
    } else {
        Some(format!("404: Agent {agent} not found"))
    };
    let (status, agent_output) = match failure {
        Some(error) => {
            core.counters.failed.fetch_add(1, Ordering::Relaxed);
            ("error", json!({"error": format!("Task processing failed: {error}"), "status": 500}))
        }
        None => {
            core.counters.ok.fetch_add(1, Ordering::Relaxed);
            (
                "success",
                json!({"agent": agent, "response": "Processed by the agent. No action is needed.",
                "status": 200, "requires_workflow": false, "workflow_dispatched": false}),
            )
        }
    };
    let mut response = wire::json_response(
        StatusCode::OK,
        &json!({"task_id": task_id, "agent_output": agent_output, "status": status}),
    );
    response.extensions_mut().insert(TraceId(task_id));
    response
}

fn refuse(core: &Core, errors: Vec<Value>) -> Response {
    core.counters.failed.fetch_add(1, Ordering::Relaxed);
    wire::unprocessable(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_table_picks_the_first_matching_action() {
        let wa = decide("Send a WhatsApp to +919876543210: the class starts at 5");
        assert_eq!(wa.action_type, Some("whatsapp"));
        assert_eq!(wa.payload["recipient"], "+919876543210");
        assert_eq!(wa.payload["message"], "the class starts at 5");

        let mail = decide("Email alice@example.com about the launch: we go live at 10");
        assert_eq!(mail.action_type, Some("email"));
        assert_eq!(mail.payload["recipient"], "alice@example.com");
        assert_eq!(mail.payload["subject"], "the launch");
        assert_eq!(mail.payload["body"], "we go live at 10");
        assert_eq!(decide("mail bob@example.org").payload["subject"], "Message from BHIV Core");

        let task = decide("Remind me: call the bank");
        assert_eq!(task.action_type, Some("task"));
        assert_eq!(task.payload["title"], "call the bank");
        assert_eq!(task.payload["description"], "Remind me: call the bank");

        let ai = decide("Please summarize: the Gita, chapter 2");
        assert_eq!((ai.action_type, ai.payload["prompt"].as_str()), (Some("ai"), Some("the Gita, chapter 2")));

        assert_eq!(decide("What is dharma?").action_type, None);
        assert_eq!(decide("whatsapp my friend").action_type, None, "no number, no whatsapp");
        assert_eq!(decide("email someone about a task").action_type, Some("task"), "no address falls through");
        assert_eq!(decide("whatsapp +12 then email x@y.io").action_type, Some("email"), "too short for E.164");
    }
}
