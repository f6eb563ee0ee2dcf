//! The layer every HTTP fake sits behind: it reads the request, asks the fault set for the
//! request's fate, applies it, and journals and counts what happened.
//!
//! Order per request: read the body (bounded), decide (a brief read lock), sleep any latency
//! (holding nothing), then either end the request (blackhole, reset, injected error or answer) or run the
//! fake's handler, journal the answer's head, and finally spoil the body on its way out if a body
//! fault hit (slow, truncated, malformed). A fault-free request costs one body read, one
//! uncontended read lock and one journal push.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::faults::fault::{ConnectionControl, Spoil};
use crate::faults::injector::{Action, Decision};
use crate::pillar::Pillar;
use crate::record::journal::{BODY_LIMIT, Outcome, Record, selected_headers, trace_from_body};
use crate::serving::listener::Connection;
use crate::serving::sim::Sim;
use crate::serving::wire::{self, TraceId};

/// The largest request body a fake reads.
const REQUEST_LIMIT: usize = 2 * 1024 * 1024;

/// The largest answer body a body fault will buffer.
const RESPONSE_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Clone)]
struct Layer {
    pillar: Pillar,
    sim: Arc<Sim>,
}

/// Puts `router` behind the fault and journal layer for `pillar`.
pub(crate) fn faulted(router: Router, pillar: Pillar, sim: Arc<Sim>) -> Router {
    router.layer(from_fn_with_state(Layer { pillar, sim }, handle))
}

/// What the journal needs to know about a request, gathered before the handler consumes it.
struct Seen {
    method: String,
    path: String,
    route: String,
    headers: std::collections::BTreeMap<String, String>,
    header_trace: Option<String>,
    body: Bytes,
    received_at: String,
    started: Instant,
}

impl Layer {
    fn record(&self, seen: &Seen, trace: Option<String>, status: Option<u16>, outcome: Outcome, decision: &Decision) {
        let elapsed = seen.started.elapsed();
        let trace_id = seen.header_trace.clone().or(trace).or_else(|| trace_from_body(&seen.body));
        let kept = seen.body.len().min(BODY_LIMIT);
        self.sim.journal.push(Record {
            pillar: self.pillar,
            method: seen.method.clone(),
            path: seen.path.clone(),
            trace_id,
            headers: seen.headers.clone(),
            body: seen.body.slice(..kept),
            body_truncated: seen.body.len() > kept,
            status,
            outcome,
            faults: decision.applied.clone(),
            received_at: seen.received_at.clone(),
            duration: elapsed,
        });
        let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        self.sim.metrics.request(self.pillar.as_str(), &seen.route, &seen.method, &status, elapsed.as_secs_f64());
    }
}

async fn handle(State(layer): State<Layer>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let received_at = wire::now_rfc3339();
    let (parts, body) = request.into_parts();
    let body = match to_bytes(body, REQUEST_LIMIT).await {
        Ok(bytes) => bytes,
        Err(_) => return wire::detail(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
    };
    let seen = Seen {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        route: parts.extensions.get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned(),
        headers: selected_headers(&parts.headers),
        header_trace: parts.headers.get("x-trace-id").and_then(|v| v.to_str().ok()).map(str::to_owned),
        body,
        received_at,
        started,
    };
    let mut decision = layer.sim.faults.decide(layer.pillar, &seen.method, parts.uri.path());
    for hit in decision.hits() {
        layer.sim.metrics.fault(layer.pillar.as_str(), &seen.route, hit.kind);
    }
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    let connection = parts.extensions.get::<Connection>().cloned();
    let response = match decision.action.take() {
        Some(Action::Blackhole) => {
            layer.record(&seen, None, None, Outcome::Blackholed, &decision);
            return std::future::pending().await;
        }
        Some(Action::Reset) => {
            layer.record(&seen, None, None, Outcome::Reset, &decision);
            if let Some(connection) = connection {
                connection.reset();
            }
            return std::future::pending().await;
        }
        Some(Action::Error { status, retry_after_s }) => {
            let fbtrace = layer.sim.token("A");
            wire::injected_error(layer.pillar, status, retry_after_s, parts.uri.path(), &fbtrace)
        }
        Some(Action::Answer { status, body }) => wire::injected_answer(status, body),
        None => next.run(Request::from_parts(parts, Body::from(seen.body.clone()))).await,
    };
    let trace = response.extensions().get::<TraceId>().map(|t| t.0.clone());
    layer.record(&seen, trace, Some(response.status().as_u16()), Outcome::Answered, &decision);
    match decision.body {
        None => response,
        Some(spoil) => spoiled(response, spoil, connection.as_ref()).await,
    }
}

/// Rewrites an answer according to the body fault that hit it (see [`crate::faults::fault`]).
async fn spoiled(response: Response, spoil: Spoil, connection: Option<&Connection>) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, RESPONSE_LIMIT).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let body = spoil(&mut parts, bytes, connection.map(|c| c as &dyn ConnectionControl));
    Response::from_parts(parts, body)
}
