//! The live dashboard on the control port: `GET /ui` is one hand-written page (HTML, CSS and
//! script in `dashboard.html`, embedded with `include_str!`: no build step, no dependency), which
//! polls `GET /ui/state` once a second and drives the control API's own routes for faults and
//! traces.
//!
//! `/ui/state` gathers what the page shows in one answer: each service's state (`down` while a
//! whole-pillar `refuse`, `blackhole` or `reset` rule is active, `degraded` while any other rule
//! is, else `up`; the executor's from its `/api/integration/status`), request counts (the
//! executor's: executions, from its `/metrics`; the page turns them into rates), the executor's outboxes and circuits, the fault rules, the journal's
//! tail with the faults each request met, and the latest traces. Nothing here probes the fakes,
//! so watching never adds to the journal.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::pillar::Pillar;
use crate::record::journal::JournalQuery;
use crate::serving::wire;
use crate::stack::state::Shared;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// Journal entries shown.
const JOURNAL_TAIL: usize = 25;
/// Traces listed.
const TRACES: usize = 15;

static CLIENT: LazyLock<reqwest::Client> =
    LazyLock::new(|| reqwest::Client::builder().timeout(Duration::from_millis(800)).build().unwrap_or_default());

/// `GET /ui`.
pub(crate) async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], PAGE).into_response()
}

/// `GET /ui/state`.
pub(crate) async fn state(State(shared): State<Arc<Shared>>) -> Response {
    let rules: Vec<Value> = shared.sim.faults.list().iter().map(|r| json!(r)).collect();
    let requests = shared.sim.metrics.requests_by_pillar();
    let mut services: Vec<Value> = Pillar::ALL
        .iter()
        .map(|pillar| {
            let name = pillar.as_str();
            let active: Vec<&Value> =
                rules.iter().filter(|r| r["active"] == true && r["rule"]["pillar"] == name).collect();
            let down = active.iter().any(|r| {
                matches!(r["rule"]["kind"].as_str(), Some("refuse" | "blackhole" | "reset"))
                    && r["rule"]["route"].is_null()
                    && r["rule"]["method"].is_null()
                    && r["rule"].get("probability").is_none()
            });
            let state = if down {
                "down"
            } else if active.is_empty() {
                "up"
            } else {
                "degraded"
            };
            json!({
                "name": name,
                "url": shared.url(*pillar),
                "profile": shared.profile(*pillar).as_str(),
                "state": state,
                "active_faults": active.len(),
                "requests": requests.get(name).copied().unwrap_or(0),
            })
        })
        .collect();
    let executor = match shared.executor_addr() {
        None => json!({"name": "executor", "state": "absent"}),
        Some(addr) => {
            let status = CLIENT.get(format!("http://{addr}/api/integration/status")).send().await;
            let status = match status {
                Ok(answer) if answer.status() == StatusCode::OK => answer.json::<Value>().await.ok(),
                _ => None,
            };
            match status {
                Some(status) => json!({
                    "name": "executor",
                    "url": format!("http://{addr}"),
                    "state": if status["store"]["state"] == "ok" { "up" } else { "degraded" },
                    "requests": executions(addr).await,
                    "status": status,
                }),
                None => json!({"name": "executor", "url": format!("http://{addr}"), "state": "down"}),
            }
        }
    };
    services.insert(3, executor);
    let journal = shared.sim.journal.query(&JournalQuery { limit: Some(JOURNAL_TAIL), ..JournalQuery::default() });
    let journal: Vec<Value> = journal
        .iter()
        .rev()
        .map(|e| {
            json!({
                "seq": e.seq,
                "pillar": e.pillar.as_str(),
                "method": e.method,
                "path": e.path,
                "status": e.status,
                "outcome": e.outcome,
                "trace_id": e.trace_id,
                "received_at": e.received_at,
                "duration_ms": e.duration_ms,
                "faults": e.faults.iter().filter(|f| f.hit).map(|f| json!({"rule": f.rule, "kind": f.kind})).collect::<Vec<_>>(),
            })
        })
        .collect();
    wire::json_response(
        StatusCode::OK,
        &json!({
            "services": services,
            "faults": rules,
            "journal": journal,
            "traces": shared.sim.traces.list(TRACES),
            "trace_stats": shared.sim.traces.stats(),
        }),
    )
}

/// The executor's executions so far (the sum of `workflow_executions_total`), for its rate.
async fn executions(addr: std::net::SocketAddr) -> Option<u64> {
    let text = CLIENT.get(format!("http://{addr}/metrics")).send().await.ok()?.text().await.ok()?;
    let total = text
        .lines()
        .filter(|line| line.starts_with("workflow_executions_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    Some(total as u64)
}
