//! The layer every HTTP fake sits behind: it reads the request, asks the fault set for the
//! request's fate, applies it, and journals and counts what happened.
//!
//! Order per request: read the body (bounded), decide (a brief read lock), sleep any latency
//! (holding nothing), then either end the request (blackhole, reset, injected error) or run the
//! fake's handler, journal the answer's head, and finally spoil the body on its way out if a body
//! fault hit (slow, truncated, malformed). A fault-free request costs one body read, one
//! uncontended read lock and one journal push.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio::time::Instant;

use crate::injector::{Action, BodyFault, Decision};
use crate::journal::{BODY_LIMIT, Outcome, Record, selected_headers, trace_from_body};
use crate::listener::Connection;
use crate::pillar::Pillar;
use crate::sim::Sim;
use crate::wire::{self, TraceId};

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
    let decision = layer.sim.faults.decide(layer.pillar, &seen.method, parts.uri.path());
    for hit in decision.hits() {
        layer.sim.metrics.fault(layer.pillar.as_str(), &seen.route, hit.kind);
    }
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    let connection = parts.extensions.get::<Connection>().cloned();
    let response = match decision.action {
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
        None => next.run(Request::from_parts(parts, Body::from(seen.body.clone()))).await,
    };
    let trace = response.extensions().get::<TraceId>().map(|t| t.0.clone());
    layer.record(&seen, trace, Some(response.status().as_u16()), Outcome::Answered, &decision);
    match decision.body {
        None => response,
        Some(fault) => spoil(response, fault).await,
    }
}

/// Rewrites an answer's body according to a body fault.
async fn spoil(response: Response, fault: BodyFault) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, RESPONSE_LIMIT).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let body = match fault {
        BodyFault::Malformed => {
            let cut = bytes.slice(..bytes.len() / 2);
            let broken = if cut.is_empty() || serde_json::from_slice::<serde_json::Value>(&cut).is_ok() {
                Bytes::from_static(b"{\"malformed\": ")
            } else {
                cut
            };
            parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(broken.len()));
            Body::from(broken)
        }
        BodyFault::Truncated => {
            // Announce the whole length, send half, then fail the body: hyper aborts the
            // connection, so the client sees the stream end early. The pause between the two
            // lets hyper flush the head and the half (it writes when the body is pending; an
            // immediate error would discard them).
            let announced = bytes.len().max(1);
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(announced));
            let half = bytes.slice(..bytes.len() / 2);
            Body::from_stream(stream::unfold(Some(half), |state| async move {
                match state {
                    Some(half) => Some((Ok(half), None)),
                    None => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Some((Err(std::io::Error::other("truncated by pillar-sim")), None))
                    }
                }
            }))
        }
        BodyFault::Slow { bytes_per_sec } => {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            // Twenty chunks a second (or one byte at a time when slower than that).
            let chunk = (bytes_per_sec / 20).max(1) as usize;
            let pause = Duration::from_secs_f64(chunk as f64 / bytes_per_sec as f64);
            Body::from_stream(stream::unfold(bytes, move |mut rest| async move {
                if rest.is_empty() {
                    return None;
                }
                tokio::time::sleep(pause).await;
                let piece = rest.split_to(chunk.min(rest.len()));
                Some((Ok::<Bytes, std::io::Error>(piece), rest))
            }))
        }
    };
    Response::from_parts(parts, body)
}
