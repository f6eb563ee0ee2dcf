//! `POST /api/workflow/execute`: the checks that come before the engine, in cost order.
//!
//! Shedding (503 + `Retry-After` beyond `EXECUTOR_MAX_CONCURRENT`), caller tokens (401/403),
//! media type (415), size (413, checked on `Content-Length` and while reading), the
//! `Idempotency-Key` header, then the schema layer and the engine, inside a span that carries the
//! trace id so every log line of the request has it.
//!
//! A 413 is answered only after the rest of the body has been read and discarded, up to
//! [`discard_bound`]: many clients (Python's `urllib`, most HTTP/1.1 libraries) send the whole body
//! before they read, and a socket closed under them shows a broken pipe instead of the 413.
//! Beyond the bound (or after [`DISCARD_FOR`]) the 413 is sent and the connection closed.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::error::ApiError;
use super::request::{Parsed, parse};
use super::{AppState, REPLAY_HEADER};
use crate::contract::SkippedResponse;
use crate::execution::Answer;

/// How long an over-limit body may take to be discarded before the 413 is sent anyway.
pub const DISCARD_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// How long discarding waits for the next part of an over-limit body: a client sending its body
/// keeps it coming far faster, and one that sent only the head (waiting for an answer) gets its
/// 413 after this instead of after [`DISCARD_FOR`].
pub const DISCARD_STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// How many bytes of an over-limit body are read and discarded before answering 413: eight times
/// the limit, and at least 4 MiB so a 2 MiB body sees its 413 with the default 64 KiB limit.
/// Discarding costs bandwidth only, never memory.
pub fn discard_bound(limit: usize) -> u64 {
    (limit as u64).saturating_mul(8).max(4 << 20)
}

/// The longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Handles one execute request.
pub async fn execute(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // The request by value: its headers are read in place, not cloned by an extractor.
    let (parts, body) = request.into_parts();
    let Ok(permit) = state.load.clone().try_acquire_owned() else {
        state.metrics.rejections.with_label_values(&["overloaded"]).inc();
        return ApiError::unavailable("overloaded", "too many concurrent requests; retry shortly", 1).into_response();
    };
    state.metrics.in_flight.inc();
    // Decremented on every exit, including when the caller hangs up and this future is dropped.
    let _in_flight = InFlight(state.metrics.in_flight.clone());
    match handle(&state, &parts.headers, body, permit).await {
        Ok(response) => response,
        Err(error) => {
            if error.status().is_client_error() || error.status() == StatusCode::SERVICE_UNAVAILABLE {
                state.metrics.rejections.with_label_values(&[error.code()]).inc();
            }
            error.into_response()
        }
    }
}

/// Counts one execute request in the in-flight gauge for as long as it lives.
struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn handle(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let caller = authenticate(state, headers)?;
    let is_json =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).is_some_and(
            |mime| {
                let mime = mime.trim().as_bytes();
                let (kind, suffix) = (b"application/".as_slice(), b"+json".as_slice());
                mime.eq_ignore_ascii_case(b"application/json")
                    || (mime.len() >= kind.len() + suffix.len()
                        && mime[..kind.len()].eq_ignore_ascii_case(kind)
                        && mime[mime.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
            },
        );
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    let limit = state.settings.limits.max_body_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|len| *len > limit as u64) {
        // Declared over the bound: nothing to gain by reading it; answer and close.
        // A client that asked `Expect: 100-continue` waits for this answer before sending.
        let expects_continue = headers
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let drained =
            !expects_continue && declared <= discard_bound(limit) && discard(body.into_data_stream(), declared).await;
        return Err(ApiError::too_large(limit).closing(!drained));
    }
    let mut stream = body.into_data_stream();
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = futures_util::StreamExt::next(&mut stream).await {
        let frame =
            frame.map_err(|_| ApiError::bad_request("unreadable_body", "the request body could not be read", None))?;
        if collected.len() + frame.len() > limit {
            let drained =
                discard(stream, discard_bound(limit).saturating_sub((collected.len() + frame.len()) as u64)).await;
            return Err(ApiError::too_large(limit).closing(!drained));
        }
        collected.extend_from_slice(&frame);
    }
    let bytes = collected.freeze();
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_idempotency_key",
                        format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                        "Idempotency-Key",
                    )
                })?,
        ),
    };
    match parse(&bytes)? {
        Parsed::Skip { trace_id } => {
            tracing::info!(trace_id = %trace_id, caller, "EXECUTION_SKIPPED");
            let skipped =
                SkippedResponse { trace_id, status: "skipped".into(), reason: "decision_not_workflow".into() };
            Ok(axum::Json(skipped).into_response())
        }
        Parsed::Execute(request) => {
            let span = tracing::info_span!("workflow", trace_id = %request.trace_id, action_type = %request.action_type, caller, otel.kind = "server");
            if state.exporting {
                let traceparent = headers.get(crate::trace::TRACEPARENT_HEADER).and_then(|v| v.to_str().ok());
                crate::telemetry::continue_trace(&span, traceparent, &request.trace_id);
            }
            let answer = if request.is_remote() {
                // A remote action runs in its own task so that a caller hanging up cannot cancel
                // it half-way: the provider may already have acted, and a dropped future would
                // store neither the result nor its events, so a retry would act a second time.
                // The task owns the request's permit, so an abandoned execution still counts as
                // load.
                let engine = Arc::clone(state);
                let key = idempotency_key.map(str::to_owned);
                let execution = async move {
                    let _permit = permit;
                    engine.engine.execute(request, key.as_deref()).await
                }
                .instrument(span);
                let task = if state.exporting {
                    tokio::spawn(tracing::instrument::WithSubscriber::with_current_subscriber(execution))
                } else {
                    tokio::spawn(execution)
                };
                task.await
                    .map_err(|error| {
                        tracing::error!(%error, "the execution task failed");
                        ApiError::internal()
                    })?
                    .map_err(ApiError::from)?
            } else {
                // A local action (a task, or a failure decided by validation) acts only through
                // its commit, which the engine hands to the store before it first waits and
                // which completes even if the caller hangs up: it runs in place, without the cost
                // of a task of its own.
                let _permit = permit;
                state.engine.execute(request, idempotency_key).instrument(span).await?
            };
            let (body, replayed) = match answer {
                Answer::Fresh(body) => (body, false),
                Answer::Replay(body) => (body, true),
            };
            let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            if replayed {
                response.headers_mut().insert(REPLAY_HEADER, HeaderValue::from_static("true"));
            }
            Ok(response)
        }
    }
}

/// Reads and drops the rest of a body, at most `bound` more bytes, for at most [`DISCARD_FOR`],
/// and no longer than [`DISCARD_STALL`] without a byte; true if the body ended within all three
/// (the connection can then be kept).
async fn discard(mut stream: axum::body::BodyDataStream, bound: u64) -> bool {
    let mut left = bound;
    let reading = async {
        loop {
            let next = tokio::time::timeout(DISCARD_STALL, futures_util::StreamExt::next(&mut stream)).await;
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => return true,
                Err(_) => return false,
            };
            let Ok(frame) = frame else { return false };
            match left.checked_sub(frame.len() as u64) {
                Some(rest) => left = rest,
                None => return false,
            }
        }
    };
    tokio::time::timeout(DISCARD_FOR, reading).await.unwrap_or(false)
}

/// The caller's name when tokens are configured (`anonymous` otherwise).
fn authenticate<'a>(state: &'a AppState, headers: &HeaderMap) -> Result<&'a str, ApiError> {
    let tokens = &state.settings.caller_tokens;
    if tokens.is_empty() {
        return Ok("anonymous");
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthenticated)?;
    tokens
        .iter()
        .find(|(_, token)| constant_time_eq(token.expose().as_bytes(), presented.as_bytes()))
        .map(|(caller, _)| caller.as_str())
        .ok_or_else(ApiError::forbidden)
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
