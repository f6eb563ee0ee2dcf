//! The execution engine: an idempotency claim, one adapter call, and one atomic commit.
//!
//! For each workflow request:
//!
//! 1. **Admission.** If a sink whose full-outbox policy is `reject` has no room, nothing executes
//!    (an execution that cannot be audited does not happen).
//! 2. **Claim.** The key is the `Idempotency-Key` header, or the trace id plus the request's
//!    fingerprint. The store answers with a fresh claim, the stored answer (a replay), "in
//!    progress" (409), or "another request" (422), whether the first request is running or done.
//! 3. **In-flight marker.** Before a remote provider call, a durable marker is recorded; if the
//!    process dies before the outcome is stored, the marker becomes a `failed` result with
//!    `error_code: "outcome_unknown"` (and its audit events). Nothing is re-sent. A store that
//!    cannot record the marker refuses the execution before any provider call.
//! 4. **One attempt.** The adapter runs once; no retries.
//! 5. **One commit.** The answer, the created task and the Bucket and Karma events are recorded
//!    together before the response is sent; delivery happens later, in the background. If the
//!    store cannot record the outcome, it keeps it with its claim (retries answer 409) and records
//!    it when it can; the caller is told the store is unavailable, never `success` for something
//!    not recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};
use tracing::Instrument;

use super::{Answer, ExecutionError, Request};
use crate::adapters::{Adapters, Failure, Performed};
use crate::clock::{now_ms, now_rfc3339};
use crate::config::{FullPolicy, KarmaEncoding, Settings, SinkSettings};
use crate::contract::{ExecuteResponse, ExecutionResult, ExecutionStatus};
use crate::metrics::Metrics;
use crate::outbox::events::{ExecutionFacts, bucket_event, karma_event};
use crate::store::{
    Claim, ClaimGuard, Health, InFlightMarker, NewEvent, Outcome, SharedStore, Sink, StoreError, Write,
};

/// Executes workflow requests.
pub struct Engine {
    store: SharedStore,
    adapters: Adapters,
    metrics: Metrics,
    sinks: Vec<(Sink, SinkSettings)>,
    mask_recipients: bool,
    karma_encoding: KarmaEncoding,
    full: [AtomicBool; 2],
    /// Outbox slots promised to admitted executions whose events are not committed yet, per
    /// sink: without them, concurrent requests all pass the fail-closed check before any of
    /// them commits, and the bound is exceeded by up to the concurrency limit.
    reserved: Arc<[AtomicU64; 2]>,
}

/// Outbox slots held by one admitted execution; released when it ends (after its commit, whose
/// events the outbox depth then counts).
struct Reservation {
    reserved: Arc<[AtomicU64; 2]>,
    held: [bool; 2],
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for (slots, held) in self.reserved.iter().zip(self.held) {
            if held {
                slots.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl Engine {
    /// An engine recording into `store`.
    pub fn new(settings: &Settings, store: SharedStore, adapters: Adapters, metrics: Metrics) -> Self {
        let sinks = [(Sink::Bucket, settings.bucket.clone()), (Sink::Karma, settings.karma.clone())]
            .into_iter()
            .filter(|(_, s)| s.enabled)
            .collect();
        Self {
            store,
            adapters,
            metrics,
            sinks,
            mask_recipients: settings.mask_recipients,
            karma_encoding: settings.karma_encoding.clone(),
            full: [AtomicBool::new(false), AtomicBool::new(false)],
            reserved: Arc::default(),
        }
    }

    /// Executes one workflow request.
    pub async fn execute(&self, request: Request, idempotency_key: Option<&str>) -> Result<Answer, ExecutionError> {
        let reservation = self.admit()?;
        let key = match idempotency_key {
            Some(k) => format!("key:{k}"),
            None => format!("trace:{}:{}", request.trace_id, request.fingerprint),
        };
        let claim = match self.store.claim(&key, &request.fingerprint).await.map_err(unavailable)? {
            Claim::Fresh(claim) => claim,
            Claim::Replay(body) => {
                self.metrics.replays.inc();
                tracing::info!("EXECUTION_REPLAYED");
                return Ok(Answer::Replay(body));
            }
            Claim::InProgress => return Err(ExecutionError::InProgress),
            Claim::Mismatch => return Err(ExecutionError::KeyReused),
        };
        if let Health::Failing { cause, .. } = self.store.health() {
            return Err(ExecutionError::StoreUnavailable { cause, outcome_kept: false });
        }

        let started = Instant::now();
        let remote = request.is_remote();
        if remote {
            let marker = InFlightMarker {
                fingerprint: request.fingerprint.clone(),
                trace_id: request.trace_id.clone(),
                action_type: request.action_type.clone(),
                user_id: request.user_id.clone(),
                product: request.product.clone(),
                metadata: request.metadata.clone(),
                started_ms: now_ms(),
            };
            if let Err(error) = self.store.record_in_flight(&claim, &marker).await {
                tracing::error!(%error, "cannot record the in-flight marker; not executing");
                return Err(unavailable(error));
            }
        }
        let outcome = match &request.plan {
            Ok(action) => {
                let adapter_started = Instant::now();
                let span = tracing::info_span!(
                    "provider call",
                    action_type = action.action_type(),
                    otel.kind = "client",
                    error_code = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                );
                let outcome = self.adapters.execute(action, &request.trace_id).instrument(span.clone()).await;
                if let Err(failure) = &outcome {
                    span.record("error_code", failure.code).record("otel.status_code", "ERROR");
                }
                self.metrics
                    .adapter_seconds
                    .with_label_values(&[action.action_type()])
                    .observe(adapter_started.elapsed().as_secs_f64());
                outcome
            }
            Err(failure) => Err(failure.clone()),
        };
        let (response, outcome) = self.conclude(&request, outcome, started.elapsed());
        let body = outcome.answer.clone();
        let committed = self.commit(claim, outcome).await;
        drop(reservation);
        self.metrics
            .executions
            .with_label_values(&[metric_label(&request.action_type), response.status.as_str()])
            .inc();
        match committed {
            Ok(()) => Ok(Answer::Fresh(body)),
            Err(error) => {
                tracing::error!(%error, "cannot record the execution yet; the store keeps it and records it later");
                Err(ExecutionError::StoreUnavailable { cause: error.to_string(), outcome_kept: true })
            }
        }
    }

    async fn commit(&self, claim: ClaimGuard, outcome: Outcome) -> Result<(), StoreError> {
        let sinks: Vec<Sink> = outcome.events.iter().map(|event| event.sink).collect();
        let span = tracing::info_span!("store commit", events = sinks.len());
        self.store.commit(claim, outcome).instrument(span).await?;
        for sink in sinks {
            self.metrics.events_enqueued.with_label_values(&[sink.name()]).inc();
        }
        Ok(())
    }

    /// Builds the response and the outcome that records it (created task and events).
    fn conclude(
        &self,
        request: &Request,
        outcome: Result<Performed, Failure>,
        duration: Duration,
    ) -> (ExecuteResponse, Outcome) {
        let timestamp = now_rfc3339();
        let mut writes = Vec::new();
        let result = match outcome {
            Ok(performed) => {
                if let Some(task) = performed.created {
                    writes.push(Write::Task { id: task.id, record: task.record });
                }
                tracing::info!(duration_ms = duration.as_millis() as u64, "EXECUTION_SUCCESS");
                ExecutionResult {
                    success: true,
                    trace_id: request.trace_id.clone(),
                    timestamp: timestamp.clone(),
                    error_code: None,
                    message: None,
                    fields: performed.fields,
                }
            }
            Err(failure) => {
                tracing::info!(error_code = failure.code, "EXECUTION_FAILED");
                ExecutionResult {
                    success: false,
                    trace_id: request.trace_id.clone(),
                    timestamp: timestamp.clone(),
                    error_code: Some(failure.code.to_owned()),
                    message: Some(failure.message),
                    fields: Map::new(),
                }
            }
        };
        let status = if result.success { ExecutionStatus::Success } else { ExecutionStatus::Failed };
        let response = ExecuteResponse { trace_id: request.trace_id.clone(), status, execution_result: result };
        let answer = Bytes::from(serde_json::to_vec(&response).unwrap_or_default());
        let mut events = Vec::new();
        if !self.sinks.is_empty() {
            let result_map = match serde_json::to_value(&response.execution_result) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            };
            let facts = ExecutionFacts {
                trace_id: &request.trace_id,
                action_type: &request.action_type,
                status,
                result: &result_map,
                user_id: request.user_id.as_deref(),
                product: request.product.as_deref(),
                metadata: request.metadata.as_ref(),
                duration_ms: duration.as_millis() as u64,
                timestamp: &timestamp,
            };
            events = self.events(&facts);
        }
        (response, Outcome { answer, created_ms: now_ms(), writes, events })
    }

    fn events(&self, facts: &ExecutionFacts<'_>) -> Vec<NewEvent> {
        self.sinks
            .iter()
            .filter_map(|(sink, _)| {
                let event_id = crate::clock::new_id().to_string();
                let body = match sink {
                    Sink::Bucket => serde_json::to_vec(&bucket_event(facts, &event_id, self.mask_recipients)),
                    Sink::Karma => match karma_event(facts, &event_id, &self.karma_encoding) {
                        Some(body) => serde_json::to_vec(&body),
                        None => {
                            // The encoding maps this outcome to no Karma action: nothing to send.
                            self.metrics.events_skipped.with_label_values(&[sink.name()]).inc();
                            return None;
                        }
                    },
                };
                Some(NewEvent {
                    sink: *sink,
                    event_id,
                    trace_id: facts.trace_id.to_owned(),
                    body: body.unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Refuses new executions while a fail-closed outbox is full.
    fn admit(&self) -> Result<Reservation, ExecutionError> {
        let mut reservation = Reservation { reserved: self.reserved.clone(), held: [false; 2] };
        for (sink, settings) in &self.sinks {
            if settings.full_policy != FullPolicy::Reject {
                continue;
            }
            let depth = self.store.depth(*sink);
            let slots = &self.reserved[sink.index()];
            // This execution's slot plus those of every admitted execution not yet committed.
            let promised = slots.fetch_add(1, Ordering::SeqCst) + 1;
            let full = depth.events + promised > settings.max_events || depth.bytes >= settings.max_bytes;
            if full {
                slots.fetch_sub(1, Ordering::SeqCst);
            } else {
                reservation.held[sink.index()] = true;
            }
            let flag = &self.full[sink.index()];
            if full {
                if !flag.swap(true, Ordering::Relaxed) {
                    tracing::error!(sink = sink.name(), "outbox full: refusing executions until it drains");
                }
                return Err(ExecutionError::OutboxFull { sink: sink.name() });
            }
            if flag.swap(false, Ordering::Relaxed) {
                tracing::info!(sink = sink.name(), "outbox has room again: accepting executions");
            }
        }
        Ok(reservation)
    }

    /// Turns executions whose process died during the provider call into `outcome_unknown`
    /// failures (with their events). Returns how many.
    pub async fn recover_interrupted(&self) -> Result<usize, StoreError> {
        let abandoned = self.store.abandoned().await?;
        let count = abandoned.len();
        for entry in abandoned {
            let marker = entry.marker;
            tracing::warn!(trace_id = %marker.trace_id, action_type = %marker.action_type,
                "execution interrupted by a stop: outcome unknown, not retried");
            let failure = Failure::new(
                "outcome_unknown",
                "the executor stopped while the provider call was in progress; the action may or may not have happened and is not retried",
            );
            let request = Request {
                trace_id: marker.trace_id,
                plan: Err(failure.clone()),
                action_type: marker.action_type,
                user_id: marker.user_id,
                product: marker.product,
                metadata: marker.metadata,
                fingerprint: marker.fingerprint,
            };
            let elapsed = Duration::from_millis(now_ms().saturating_sub(marker.started_ms));
            let (_, outcome) = self.conclude(&request, Err(failure), elapsed);
            self.commit(entry.claim, outcome).await?;
        }
        Ok(count)
    }
}

fn unavailable(error: StoreError) -> ExecutionError {
    ExecutionError::StoreUnavailable { cause: error.to_string(), outcome_kept: false }
}

/// Bounded metric label for an action type.
fn metric_label(action_type: &str) -> &'static str {
    match action_type {
        "task" => "task",
        "whatsapp" => "whatsapp",
        "email" => "email",
        "ai" => "ai",
        "unknown" => "unknown",
        _ => "unsupported",
    }
}
