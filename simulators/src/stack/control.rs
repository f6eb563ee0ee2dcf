//! The control API (:8090): drives a running stack at run time. It listens on its own port with
//! no faults applied, so a refused or blackholed pillar never takes control down.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /health` | | `{"status": "ok"}` |
//! | `GET /` | | `{seed, pillars: {<pillar>: {url, profile}}, executor, toggles}` |
//! | `GET /faults` | | `{"rules": [RuleStatus]}` |
//! | `POST /faults?replace` | a fault rule ([`crate::faults::fault`]), optionally `"replace": true` | 201 `RuleStatus`; 409 when its id exists and replace is not asked |
//! | `DELETE /faults` | | `{"cleared": n}` |
//! | `DELETE /faults/{id}` | | `{"cleared": 1}`, 404 when unknown |
//! | `POST /scenarios` | a scenario ([`crate::faults::scenario`]) | 202 `ScenarioStatus` (it runs in the background) |
//! | `GET /scenarios`, `GET /scenarios/{id}` | | `{"scenarios": [ScenarioStatus]}` / one |
//! | `DELETE /scenarios/{id}` | | cancels it (clearing its rules); its status |
//! | `GET /journal?pillar&trace_id&after&limit` | | `{"entries": [JournalEntry], "count", "evicted", "next"}` (see paging) |
//! | `DELETE /journal` | | `{"cleared": true}` |
//! | `POST /reset` | | clears faults, scenarios, journal and every fake's state |
//! | `GET /profiles`, `PUT /profiles/{pillar}` | `{"profile": "spec"\|"as-built"}` | the profiles |
//! | `PATCH /toggles` | `{"workflow_events_enabled"?: bool, "behavioral_tracking"?: bool}` | the toggles |
//! | `GET /bucket/events?trace_id&after&limit`, `GET /bucket/verify` | | Bucket's kept events `{"events", "count", "evicted", "next", "stored"}` / chain report |
//! | `GET /karma/users/{id}`, `GET /karma/qtable`, `GET /karma/events?trace_id&after&limit` | | a Karma user (404 when unknown) / the Q-table / the life events applied (`{event_id, trace_id, user_id, action, reward_value}`), paged |
//! | `GET /smtp/messages?trace_id&after&limit`, `GET /providers/whatsapp`, `GET /providers/chat` (`after`, `limit`) | | what the sinks received, paged |
//! | `GET /executor/replicas` | | `{"replicas": [{index, url, running, served}]}` |
//! | `POST /executor/replicas/{n}/stop`, `…/start` | | stops (gracefully) or starts replica `n`; the replicas |
//! | `GET /metrics` | | Prometheus text |
//! | `POST /v1/traces` | OTLP `ExportTraceServiceRequest`, protobuf | 200 (the OTLP/HTTP receiver; [`crate::record::traces`]) |
//! | `GET /traces?limit` | | `{"traces": [TraceSummary], "stats"}`, most recent first |
//! | `GET /ui`, `GET /ui/state` | | the live dashboard ([`crate::stack::dashboard`]) and what it polls |
//! | `GET /traces/{trace_id}` | | `{trace_id, spans: [SpanRecord], dropped_spans}` by W3C or BHIV id; 404 when unknown |
//!
//! **Paging.** Every list route answers one page: at most `limit` entries (default
//! [`DEFAULT_PAGE`], at most [`MAX_PAGE`]; more is a 422), oldest first, after the cursor `after`
//! (default 0: from the oldest kept), with `next` the cursor of the following page (`null` when
//! this one reached the newest entry) and `evicted` the entries this store dropped to bound
//! memory. Reading `after=next` until `next` is null returns every kept entry exactly once.
//! `/journal` without `after` (or `after_seq`) answers the newest `limit` entries instead.
//!
//! Every rejection is `{"error": {"field", "message"}}`: 400 when the body is not JSON, 422 when
//! a value is wrong (the field is named by its path, e.g. `steps[1].fault.status`; route patterns
//! with control characters or glob syntax other than a trailing `*` included), 404 for unknown
//! ids and routes, 409 for a rule id that exists (unless `?replace=true` or `"replace": true`)
//! and for a rule beyond the cap of [`crate::faults::injector::MAX_RULES`], 413 for a body over 2 MiB.
//! Rejections axum makes itself are rewritten into the same shape, so no answer is plain text.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde_json::{Value, json};

use crate::faults::fault::FaultRule;
use crate::faults::injector::Refused;
use crate::faults::scenario::Scenario;
use crate::faults::schema::{Fields, SpecError};
use crate::pillar::{Pillar, Profile};
use crate::record::journal::JournalQuery;
use crate::serving::wire;
use crate::stack::state::{Shared, StackError};

type Control = State<Arc<Shared>>;

/// The control API's routes over a stack.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(|| async { wire::json_response(StatusCode::OK, &json!({"status": "ok"})) }))
        .route("/", get(info))
        .route("/faults", get(list_faults).post(set_fault).delete(clear_faults))
        .route("/faults/{id}", delete(clear_fault))
        .route("/scenarios", get(list_scenarios).post(run_scenario))
        .route("/scenarios/{id}", get(get_scenario).delete(cancel_scenario))
        .route("/journal", get(read_journal).delete(clear_journal))
        .route("/reset", post(reset))
        .route("/profiles", get(profiles))
        .route("/profiles/{pillar}", put(set_profile))
        .route("/toggles", axum::routing::patch(set_toggles))
        .route("/bucket/events", get(bucket_events))
        .route("/bucket/verify", get(|State(s): Control| async move { ok(&json!(s.bucket.verify_chain())) }))
        .route("/karma/users/{id}", get(karma_user))
        .route("/karma/qtable", get(|State(s): Control| async move { ok(&json!(s.karma.q_table())) }))
        .route("/karma/events", get(karma_events))
        .route("/smtp/messages", get(smtp_messages))
        .route("/providers/whatsapp", get(whatsapp_messages))
        .route("/providers/chat", get(chat_requests))
        .route(
            "/executor/replicas",
            get(|State(s): Control| async move { ok(&json!({"replicas": s.replicas().await})) }),
        )
        .route("/executor/replicas/{index}/{action}", post(replica_action))
        .route("/metrics", get(metrics))
        .route("/ui", get(crate::stack::dashboard::page))
        .route("/ui/state", get(crate::stack::dashboard::state))
        .route("/v1/traces", post(receive_traces))
        .route("/traces", get(list_traces))
        .route("/traces/{trace_id}", get(get_trace))
        .fallback(|| async { rejected(StatusCode::NOT_FOUND, &SpecError::new("path", "no such control route")) })
        .method_not_allowed_fallback(|| async {
            rejected(StatusCode::METHOD_NOT_ALLOWED, &SpecError::new("method", "this route does not take that method"))
        })
        .layer(axum::middleware::map_response(json_errors))
        .with_state(shared)
}

/// The most bytes of a non-JSON rejection's text kept in its JSON replacement.
const REJECTION_TEXT_LIMIT: usize = 4096;

/// Turns every rejection that is not already JSON (axum's own: an over-limit body's 413, an
/// unreadable path or query) into the control API's `{"error": {field, message}}`.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), REJECTION_TEXT_LIMIT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let (field, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("body", format!("the body is larger than the control API accepts ({BODY_LIMIT_TEXT}): {text}"))
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("content-type", text),
        _ if text.is_empty() => ("request", status.canonical_reason().unwrap_or("rejected").to_owned()),
        _ => ("request", text),
    };
    rejected(status, &SpecError::new(field, message))
}

/// The body limit the control API applies (axum's default).
const BODY_LIMIT_TEXT: &str = "2 MiB";

/// Entries per page when the request names no `limit`.
pub(crate) const DEFAULT_PAGE: usize = 100;
/// The largest `limit` a list route accepts.
pub(crate) const MAX_PAGE: usize = 1000;

/// `after`, `limit` and the filters of a list route.
#[derive(Debug, Default)]
struct PageQuery {
    after: Option<u64>,
    limit: usize,
    trace_id: Option<String>,
    pillar: Option<Pillar>,
}

/// Reads a list route's query; `filters` are the filter parameters it accepts besides `after`
/// and `limit`.
fn page_query(query: &HashMap<String, String>, filters: &[&str]) -> Result<PageQuery, SpecError> {
    let mut page = PageQuery { limit: DEFAULT_PAGE, ..PageQuery::default() };
    for (key, raw) in query {
        let number = |field: &str| {
            raw.parse::<u64>().map_err(|_| SpecError::new(field, format!("expected a whole number, got `{raw}`")))
        };
        match key.as_str() {
            "after" | "after_seq" => page.after = Some(number(key)?),
            "limit" => {
                let n = number("limit")?;
                if n == 0 || n > MAX_PAGE as u64 {
                    return Err(SpecError::new(
                        "limit",
                        format!("must be between 1 and {MAX_PAGE}; page through more with `after` and `next`"),
                    ));
                }
                page.limit = n as usize;
            }
            "trace_id" | "trace" if filters.contains(&"trace_id") => page.trace_id = Some(raw.clone()),
            "pillar" if filters.contains(&"pillar") => page.pillar = Some(parse_pillar("pillar", raw)?),
            other => {
                let mut known = vec!["after", "limit"];
                known.extend_from_slice(filters);
                return Err(SpecError::new(other, format!("unknown query parameter; use {}", known.join(", "))));
            }
        }
    }
    Ok(page)
}

/// A page as JSON: `{<key>: items, count, evicted, next}`.
fn page_json<T: serde::Serialize>(key: &str, page: &crate::record::bounded::Page<T>) -> Value {
    json!({key: page.items, "count": page.items.len(), "evicted": page.evicted, "next": page.next})
}

/// Answers a list route: reads the query, then the page `read` returns.
fn list<T: serde::Serialize>(
    key: &str,
    query: &HashMap<String, String>,
    filters: &[&str],
    read: impl FnOnce(&PageQuery) -> crate::record::bounded::Page<T>,
) -> Response {
    match page_query(query, filters) {
        Ok(page) => ok(&page_json(key, &read(&page))),
        Err(error) => rejected(StatusCode::UNPROCESSABLE_ENTITY, &error),
    }
}

type Params = Query<HashMap<String, String>>;

async fn bucket_events(State(s): Control, Query(q): Params) -> Response {
    match page_query(&q, &["trace_id"]) {
        Ok(p) => {
            let mut answer = page_json("events", &s.bucket.page(p.after.unwrap_or(0), p.limit, p.trace_id.as_deref()));
            answer["stored"] = json!(s.bucket.stored());
            ok(&answer)
        }
        Err(error) => rejected(StatusCode::UNPROCESSABLE_ENTITY, &error),
    }
}

async fn karma_events(State(s): Control, Query(q): Params) -> Response {
    list("events", &q, &["trace_id"], |p| s.karma.events_page(p.after.unwrap_or(0), p.limit, p.trace_id.as_deref()))
}

async fn smtp_messages(State(s): Control, Query(q): Params) -> Response {
    list("messages", &q, &["trace_id"], |p| s.smtp.page(p.after.unwrap_or(0), p.limit, p.trace_id.as_deref()))
}

async fn whatsapp_messages(State(s): Control, Query(q): Params) -> Response {
    list("messages", &q, &[], |p| s.providers.whatsapp_page(p.after.unwrap_or(0), p.limit))
}

async fn chat_requests(State(s): Control, Query(q): Params) -> Response {
    list("requests", &q, &[], |p| s.providers.chat_page(p.after.unwrap_or(0), p.limit))
}

fn ok(body: &Value) -> Response {
    wire::json_response(StatusCode::OK, body)
}

fn rejected(status: StatusCode, error: &SpecError) -> Response {
    wire::json_response(status, &json!({"error": {"field": error.field, "message": error.message}}))
}

/// Parses a JSON body (the error is answered with 400).
fn json_body(bytes: &Bytes) -> Result<Value, SpecError> {
    if bytes.is_empty() {
        return Err(SpecError::new("body", "a JSON body is required"));
    }
    serde_json::from_slice(bytes).map_err(|e| SpecError::new("body", format!("not valid JSON: {e}")))
}

fn parse_pillar(field: &str, raw: &str) -> Result<Pillar, SpecError> {
    raw.parse().map_err(|e: crate::pillar::UnknownName| SpecError::new(field, e.to_string()))
}

fn profiles_json(shared: &Shared) -> Value {
    Pillar::ALL.iter().map(|p| (p.as_str().to_owned(), json!(shared.profile(*p).as_str()))).collect()
}

fn toggles_json(shared: &Shared) -> Value {
    json!({"workflow_events_enabled": shared.bucket.workflow_events_enabled(),
        "behavioral_tracking": shared.karma.behavioral_tracking(),
        "core_dispatch_enabled": shared.core.dispatch_enabled()})
}

async fn info(State(shared): Control) -> Response {
    let pillars: serde_json::Map<String, Value> = Pillar::ALL
        .iter()
        .map(|p| (p.as_str().to_owned(), json!({"url": shared.url(*p), "profile": shared.profile(*p).as_str()})))
        .collect();
    ok(&json!({
        "seed": shared.sim.seed,
        "pillars": pillars,
        "executor": shared.executor_addr().map(|a| format!("http://{a}")),
        "toggles": toggles_json(&shared),
    }))
}

async fn replica_action(State(shared): Control, Path((index, action)): Path<(String, String)>) -> Response {
    let Ok(index) = index.parse::<usize>() else {
        return rejected(StatusCode::NOT_FOUND, &SpecError::new("index", "a replica number (0, 1, …)"));
    };
    let done = match action.as_str() {
        "stop" => shared.stop_replica(index).await,
        "start" => shared.start_replica(index).await,
        _ => return rejected(StatusCode::NOT_FOUND, &SpecError::new("action", "stop or start")),
    };
    match done {
        Ok(()) => ok(&json!({"replicas": shared.replicas().await})),
        Err(error @ (StackError::NoReplica(_) | StackError::NoExecutor)) => {
            rejected(StatusCode::NOT_FOUND, &SpecError::new("index", error.to_string()))
        }
        Err(error) => rejected(StatusCode::INTERNAL_SERVER_ERROR, &SpecError::new("executor", error.to_string())),
    }
}

async fn list_faults(State(shared): Control) -> Response {
    ok(&json!({"rules": shared.sim.faults.list()}))
}

async fn set_fault(State(shared): Control, Query(query): Params, body: Bytes) -> Response {
    let mut value = match json_body(&body) {
        Ok(value) => value,
        Err(error) => return rejected(StatusCode::BAD_REQUEST, &error),
    };
    let mut replace = false;
    for (key, raw) in &query {
        match (key.as_str(), raw.as_str()) {
            ("replace", "true" | "1" | "") => replace = true,
            ("replace", "false" | "0") => replace = false,
            ("replace", _) => {
                return rejected(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &SpecError::new("replace", "expected true or false"),
                );
            }
            (other, _) => {
                return rejected(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &SpecError::new(other, "unknown query parameter; use replace"),
                );
            }
        }
    }
    // `replace` may also ride in the body; it is not part of the rule.
    if let Some(flag) = value.as_object_mut().and_then(|rule| rule.remove("replace")) {
        match flag {
            Value::Bool(flag) => replace |= flag,
            _ => {
                return rejected(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &SpecError::new("replace", "expected true or false"),
                );
            }
        }
    }
    let rule = match FaultRule::from_json(&value) {
        Ok(rule) => rule,
        Err(error) => return rejected(StatusCode::UNPROCESSABLE_ENTITY, &error),
    };
    match shared.sim.faults.add(rule, replace) {
        Ok(status) => wire::json_response(StatusCode::CREATED, &json!(status)),
        Err(Refused::Invalid(error)) => rejected(StatusCode::UNPROCESSABLE_ENTITY, &error),
        Err(refused) => rejected(StatusCode::CONFLICT, &refused.into_spec()),
    }
}

async fn clear_faults(State(shared): Control) -> Response {
    ok(&json!({"cleared": shared.sim.faults.clear_all()}))
}

async fn clear_fault(State(shared): Control, Path(id): Path<String>) -> Response {
    if shared.sim.faults.clear(&id) {
        ok(&json!({"cleared": 1}))
    } else {
        rejected(StatusCode::NOT_FOUND, &SpecError::new("id", format!("no fault rule with id `{id}`")))
    }
}

async fn run_scenario(State(shared): Control, body: Bytes) -> Response {
    let value = match json_body(&body) {
        Ok(value) => value,
        Err(error) => return rejected(StatusCode::BAD_REQUEST, &error),
    };
    match Scenario::from_json(&value) {
        Ok(scenario) => {
            let status = shared.scenarios.start(shared.sim.faults.clone(), scenario, &shared.shutdown);
            wire::json_response(StatusCode::ACCEPTED, &json!(status))
        }
        Err(error) => rejected(StatusCode::UNPROCESSABLE_ENTITY, &error),
    }
}

async fn list_scenarios(State(shared): Control) -> Response {
    ok(&json!({"scenarios": shared.scenarios.list()}))
}

fn unknown_scenario(id: &str) -> Response {
    rejected(StatusCode::NOT_FOUND, &SpecError::new("id", format!("no scenario run with id `{id}`")))
}

async fn get_scenario(State(shared): Control, Path(id): Path<String>) -> Response {
    match shared.scenarios.get(&id) {
        Some(run) => ok(&json!(run.status())),
        None => unknown_scenario(&id),
    }
}

async fn cancel_scenario(State(shared): Control, Path(id): Path<String>) -> Response {
    match shared.scenarios.get(&id) {
        Some(run) => {
            run.cancel(&shared.sim.faults);
            ok(&json!(run.status()))
        }
        None => unknown_scenario(&id),
    }
}

async fn read_journal(State(shared): Control, Query(query): Params) -> Response {
    let page = match page_query(&query, &["pillar", "trace_id"]) {
        Ok(page) => page,
        Err(error) => return rejected(StatusCode::UNPROCESSABLE_ENTITY, &error),
    };
    let journal = &shared.sim.journal;
    let filter = JournalQuery { pillar: page.pillar, trace_id: page.trace_id.clone(), ..JournalQuery::default() };
    let answer = match page.after {
        Some(after) => journal.page(&filter, after, page.limit),
        // No cursor: the newest `limit` entries (a tail, so nothing newer to page to).
        None => crate::record::bounded::Page {
            items: journal.query(&JournalQuery { limit: Some(page.limit), ..filter }),
            next: None,
            evicted: journal.evicted(),
        },
    };
    ok(&page_json("entries", &answer))
}

async fn clear_journal(State(shared): Control) -> Response {
    shared.sim.journal.clear();
    ok(&json!({"cleared": true}))
}

async fn reset(State(shared): Control) -> Response {
    shared.reset();
    ok(&json!({"reset": true}))
}

async fn profiles(State(shared): Control) -> Response {
    ok(&profiles_json(&shared))
}

async fn set_profile(State(shared): Control, Path(pillar): Path<String>, body: Bytes) -> Response {
    let pillar = match parse_pillar("pillar", &pillar) {
        Ok(pillar) => pillar,
        Err(error) => return rejected(StatusCode::UNPROCESSABLE_ENTITY, &error),
    };
    let value = match json_body(&body) {
        Ok(value) => value,
        Err(error) => return rejected(StatusCode::BAD_REQUEST, &error),
    };
    let profile = Fields::of(&value).and_then(|mut f| {
        let raw = f.str("profile")?;
        let profile: Profile =
            raw.parse().map_err(|e: crate::pillar::UnknownName| SpecError::new("profile", e.to_string()))?;
        f.finish("a profile change")?;
        Ok(profile)
    });
    match profile.map(|p| shared.set_profile(pillar, p)) {
        Ok(Ok(())) => ok(&profiles_json(&shared)),
        Ok(Err(error)) => rejected(StatusCode::UNPROCESSABLE_ENTITY, &SpecError::new("profile", error.to_string())),
        Err(error) => rejected(StatusCode::UNPROCESSABLE_ENTITY, &error),
    }
}

async fn set_toggles(State(shared): Control, body: Bytes) -> Response {
    let value = match json_body(&body) {
        Ok(value) => value,
        Err(error) => return rejected(StatusCode::BAD_REQUEST, &error),
    };
    let parsed = Fields::of(&value).and_then(|mut f| {
        let flag = |v: Option<&Value>, name: &str| match v {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(SpecError::new(name, "expected true or false")),
        };
        let events = flag(f.opt_value("workflow_events_enabled"), "workflow_events_enabled")?;
        let tracking = flag(f.opt_value("behavioral_tracking"), "behavioral_tracking")?;
        f.finish("the toggles")?;
        Ok((events, tracking))
    });
    match parsed {
        Ok((events, tracking)) => {
            if let Some(enabled) = events {
                shared.bucket.set_workflow_events_enabled(enabled);
            }
            if let Some(enabled) = tracking {
                shared.karma.set_behavioral_tracking(enabled);
            }
            ok(&toggles_json(&shared))
        }
        Err(error) => rejected(StatusCode::UNPROCESSABLE_ENTITY, &error),
    }
}

async fn karma_user(State(shared): Control, Path(id): Path<String>) -> Response {
    match shared.karma.user(&id) {
        Some(user) => ok(&json!(user)),
        None => rejected(StatusCode::NOT_FOUND, &SpecError::new("id", format!("Karma has no user `{id}`"))),
    }
}

async fn receive_traces(State(shared): Control, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/x-protobuf") {
        let error = SpecError::new("content-type", "OTLP/HTTP in protobuf only (application/x-protobuf)");
        return rejected(StatusCode::UNSUPPORTED_MEDIA_TYPE, &error);
    }
    match shared.sim.traces.receive_protobuf(&body) {
        // An empty ExportTraceServiceResponse: everything was accepted.
        Ok(_) => ([(header::CONTENT_TYPE, "application/x-protobuf")], Bytes::new()).into_response(),
        Err(error) => rejected(StatusCode::BAD_REQUEST, &SpecError::new("body", error.to_string())),
    }
}

async fn list_traces(State(shared): Control, Query(query): Query<HashMap<String, String>>) -> Response {
    let limit = match query.get("limit").map(|raw| raw.parse::<usize>()) {
        None => 50,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => {
            return rejected(StatusCode::UNPROCESSABLE_ENTITY, &SpecError::new("limit", "expected a whole number"));
        }
    };
    ok(&json!({"traces": shared.sim.traces.list(limit), "stats": shared.sim.traces.stats()}))
}

async fn get_trace(State(shared): Control, Path(trace_id): Path<String>) -> Response {
    match shared.sim.traces.get(&trace_id) {
        Some(trace) => ok(&json!(trace)),
        None => rejected(
            StatusCode::NOT_FOUND,
            &SpecError::new("trace_id", format!("no spans received for trace `{trace_id}`")),
        ),
    }
}

async fn metrics(State(shared): Control) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.render_metrics()).into_response()
}
