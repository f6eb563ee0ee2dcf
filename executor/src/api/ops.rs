//! Operational routes: `/healthz`, `/readyz`, `/metrics` and `/api/integration/status`.
//!
//! `/healthz` always answers 200 while the process serves (so orchestrators do not restart a
//! healthy executor because a neighbour is down) and says which pillars are `up`, `degraded` or
//! `down`. The status endpoint gives the detail per pillar, `/api/integration/dead-letters` the
//! events that could not be delivered and why; `/metrics` is Prometheus text.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::clock::now_ms;
use crate::clock::now_rfc3339;
use crate::outbox::delivery::{CircuitState, SinkState};
use crate::store::{Health, Sink};

/// `GET /healthz`.
pub async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let pillars: serde_json::Map<String, Value> =
        state.sinks.iter().map(|s| (s.sink.name().to_owned(), json!(pillar_state(&state, s)))).collect();
    let store_ok = state.store.health() == Health::Ok;
    let all_up = store_ok && pillars.values().all(|v| v == "up" || v == "disabled");
    axum::Json(json!({
        "status": if all_up { "ok" } else { "degraded" },
        "service": "workflow-executor",
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": now_rfc3339(),
        "store": if store_ok { "ok" } else { "failing" },
        "pillars": pillars,
    }))
}

/// `GET /readyz`: 200 `{"status": "ready"}` only while the store can write and shutdown has not
/// started; 503 `{"status": "not_ready", "reason": ...}` otherwise, so a load balancer stops
/// sending before the listener closes. Liveness stays with `/healthz`.
pub async fn readyz(State(state): State<Arc<AppState>>) -> axum::response::Response {
    let reason = if state.draining.is_cancelled() {
        Some("shutting_down".to_owned())
    } else {
        match state.store.health() {
            Health::Ok => None,
            Health::Failing { cause, .. } => Some(format!("store_failing: {cause}")),
        }
    };
    match reason {
        None => axum::Json(json!({"status": "ready"})).into_response(),
        Some(reason) => {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "not_ready", "reason": reason})))
                .into_response()
        }
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    for sink in Sink::ALL {
        let age = oldest_age_seconds(&state, sink).await.unwrap_or(0.0);
        let depth = state.store.depth(sink);
        state.metrics.outbox_oldest_age.with_label_values(&[sink.name()]).set(age);
        state.metrics.outbox_depth.with_label_values(&[sink.name()]).set(depth.events as i64);
        state.metrics.outbox_bytes.with_label_values(&[sink.name()]).set(depth.bytes as i64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

/// `GET /api/integration/status`.
pub async fn integration_status(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut alerts = Vec::new();
    let mut pillars = serde_json::Map::new();
    for sink_state in state.sinks.iter() {
        let sink = sink_state.sink;
        let report = sink_state.report();
        let depth = state.store.depth(sink);
        // Only Karma's encoding can map an outcome to no event.
        let skipped =
            if sink == Sink::Karma { state.metrics.events_skipped.with_label_values(&["karma"]).get() } else { 0 };
        if depth.dead_letters > 0 {
            alerts.push(json!({
                "pillar": sink.name(),
                "kind": "dead_letters",
                "message": format!("{} {} event(s) could not be delivered and were dead-lettered; last reason: {}",
                    depth.dead_letters, sink.name(), report.last_dead_letter_reason.as_deref().unwrap_or("see /api/integration/dead-letters")),
            }));
        }
        if sink_state.circuit() != CircuitState::Closed {
            alerts.push(json!({
                "pillar": sink.name(),
                "kind": "unreachable",
                "message": format!("{} is unreachable; events are kept and will be delivered after recovery", sink.name()),
            }));
        }
        pillars.insert(
            sink.name().to_owned(),
            json!({
                "state": pillar_state(&state, sink_state),
                "endpoint": sink_state.endpoint.as_str(),
                "circuit": sink_state.circuit(),
                "outbox_depth": depth.events,
                "outbox_bytes": depth.bytes,
                "oldest_event_age_seconds": oldest_age_seconds(&state, sink).await,
                "delivered": report.delivered,
                "failed_attempts": report.failed_attempts,
                "dead_lettered": depth.dead_letters,
                "skipped": skipped,
                "last_dead_letter_reason": report.last_dead_letter_reason,
                "last_success": report.last_success,
                "last_error_at": report.last_error_at,
                "last_error": report.last_error,
            }),
        );
    }
    let store = match state.store.health() {
        Health::Ok => json!({"state": "ok"}),
        Health::Failing { cause, unrecorded } => {
            alerts.push(json!({
                "pillar": "store",
                "kind": "store_failing",
                "message": format!("the store cannot write ({cause}); new executions are refused until it can"),
            }));
            json!({"state": "failing", "cause": cause, "unrecorded_outcomes": unrecorded})
        }
    };
    axum::Json(json!({
        "service": "workflow-executor",
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": now_rfc3339(),
        "store": store,
        "pillars": pillars,
        "alerts": alerts,
    }))
}

/// Query of `GET /api/integration/dead-letters`.
#[derive(Debug, serde::Deserialize)]
pub struct DeadLetterQuery {
    /// `bucket` or `karma`.
    sink: String,
    /// How many, newest first (default 50, at most 1,000).
    limit: Option<usize>,
}

/// `GET /api/integration/dead-letters?sink=bucket|karma&limit=N`: the newest dead-lettered events
/// with the reason each was given up on.
pub async fn dead_letters(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| {
        let parameter = if e.body_text().contains("limit") { "limit" } else { "sink" };
        ApiError::invalid_query("invalid_query", format!("expected ?sink=bucket|karma&limit=N: {e}"), parameter)
    })?;
    let sink = match query.sink.as_str() {
        "bucket" => Sink::Bucket,
        "karma" => Sink::Karma,
        _ => return Err(ApiError::invalid_query("invalid_query", "sink must be bucket or karma", "sink")),
    };
    let events = state.store.dead_letters(sink, query.limit.unwrap_or(50).min(1000)).await.map_err(|error| {
        tracing::error!(%error, "cannot read dead letters");
        ApiError::store_unavailable(false)
    })?;
    Ok(axum::Json(json!({"sink": sink.name(), "count": events.len(), "dead_letters": events})).into_response())
}

fn pillar_state(state: &AppState, sink: &SinkState) -> &'static str {
    let enabled = match sink.sink {
        Sink::Bucket => state.settings.bucket.enabled,
        Sink::Karma => state.settings.karma.enabled,
    };
    if !enabled {
        return "disabled";
    }
    match sink.circuit() {
        CircuitState::Open => "down",
        CircuitState::HalfOpen => "degraded",
        CircuitState::Closed if sink.report().failing => "degraded",
        CircuitState::Closed => "up",
    }
}

async fn oldest_age_seconds(state: &AppState, sink: Sink) -> Option<f64> {
    let oldest = state.store.oldest_enqueued_ms(sink).await.ok().flatten()?;
    Some(now_ms().saturating_sub(oldest) as f64 / 1000.0)
}
