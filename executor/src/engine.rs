//! The execution engine: idempotency, one adapter call, and one atomic commit of the outcome.
//!
//! For each workflow request:
//!
//! 1. **Admission.** If a sink whose full-outbox policy is `reject` has no room, nothing executes:
//!    503 `audit_spool_full` (an execution that cannot be audited does not happen).
//! 2. **Idempotency.** The key is the `Idempotency-Key` header, or the trace id plus the request's
//!    fingerprint. A key being executed right now answers 409; a stored key replays the stored
//!    answer (422 if an `Idempotency-Key` comes back with a different request).
//! 3. **In-flight marker.** Before a remote provider call, a durable marker is committed; if the
//!    process dies before the outcome is stored, the next start turns the marker into a `failed`
//!    result with `error_code: "outcome_unknown"` (and its audit events). Nothing is re-sent.
//! 4. **One attempt.** The adapter runs once; no retries.
//! 5. **One commit.** The answer, the adapter's own writes (the task row) and the Bucket and Karma
//!    events are committed in one durable (group) commit before the response is sent. Delivery
//!    happens later, in the background, so the response never waits for a pillar. The key stays
//!    claimed (a duplicate answers 409) until that commit ends, even if the caller hangs up
//!    during it ([`Store::commit_holding`]), so a retry replays the answer instead of acting again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::adapters::{Adapters, Failure, Performed};
use crate::api::error::ApiError;
use crate::api::request::ExecuteRequest;
use crate::config::{FullPolicy, Settings, SinkSettings};
use crate::contract::{ExecuteResponse, ExecutionResult, ExecutionStatus};
use crate::delivery::SinkState;
use crate::events::{ExecutionFacts, bucket_event, karma_event};
use crate::metrics::Metrics;
use crate::now_rfc3339;
use crate::store::{Batch, IN_FLIGHT, Op, Sink, Store, now_ms};

/// The engine's answer to a workflow request: the JSON body, serialized once.
#[derive(Debug)]
pub enum Answer {
    /// Executed now.
    Fresh(Bytes),
    /// The stored answer of an earlier identical request.
    Replay(Bytes),
}

/// What the store keeps per idempotency key: the request's fingerprint (64 hex digits) followed
/// by the answer's JSON, exactly as it is sent. The response is serialized once, into the record;
/// the returned body is a view of it (no copy).
fn stored_execution(fingerprint: &str, response: &ExecuteResponse) -> (Bytes, Bytes) {
    let mut record = Vec::with_capacity(fingerprint.len() + 512);
    record.extend_from_slice(fingerprint.as_bytes());
    if serde_json::to_writer(&mut record, response).is_err() {
        record.truncate(fingerprint.len());
    }
    let record = Bytes::from(record);
    let body = record.slice(fingerprint.len()..);
    (record, body)
}

/// A SHA-256 fingerprint in hex.
const FINGERPRINT_LEN: usize = 64;

/// What the store keeps for an execution whose provider call may have started.
#[derive(Debug, Serialize, Deserialize)]
struct InFlightMarker {
    fingerprint: String,
    trace_id: String,
    action_type: String,
    user_id: Option<String>,
    product: Option<String>,
    metadata: Option<Value>,
    started_ms: u64,
}

/// Executes workflow requests.
pub struct Engine {
    store: Store,
    adapters: Adapters,
    metrics: Metrics,
    sinks: Vec<(Arc<SinkState>, SinkSettings)>,
    mask_recipients: bool,
    executing: Arc<Mutex<HashSet<String>>>,
    full: [AtomicBool; 2],
    /// Outbox slots promised to admitted executions whose events are not committed yet, per
    /// sink: without them, concurrent requests all pass the fail-closed check before any of
    /// them commits, and the bound is exceeded by up to the concurrency limit.
    reserved: Arc<[AtomicU64; 2]>,
}

/// Outbox slots held by one admitted execution; released when it ends (after its commit, whose
/// events the outbox gauge then counts).
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

/// Removes a key from the executing set when the request ends, however it ends (if the request
/// is dropped while its outcome is being committed, once the commit ends).
struct ExecutingGuard {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for ExecutingGuard {
    fn drop(&mut self) {
        self.set.lock().expect("executing set lock").remove(&self.key);
    }
}

impl Engine {
    /// An engine writing to `store` and waking the given sinks.
    pub fn new(
        settings: &Settings,
        store: Store,
        adapters: Adapters,
        metrics: Metrics,
        sinks: &[Arc<SinkState>; 2],
    ) -> Self {
        let sinks = [(sinks[0].clone(), settings.bucket.clone()), (sinks[1].clone(), settings.karma.clone())]
            .into_iter()
            .filter(|(_, s)| s.enabled)
            .collect();
        Self {
            store,
            adapters,
            metrics,
            sinks,
            mask_recipients: settings.mask_recipients,
            executing: Arc::default(),
            full: [AtomicBool::new(false), AtomicBool::new(false)],
            reserved: Arc::default(),
        }
    }

    /// Executes one workflow request.
    pub async fn execute(&self, request: ExecuteRequest, idempotency_key: Option<&str>) -> Result<Answer, ApiError> {
        let reservation = self.admit()?;
        let key = match idempotency_key {
            Some(k) => format!("key:{k}"),
            None => format!("trace:{}:{}", request.trace_id, request.fingerprint),
        };
        let guard = {
            let mut executing = self.executing.lock().expect("executing set lock");
            if !executing.insert(key.clone()) {
                self.metrics.rejections.with_label_values(&["in_progress"]).inc();
                return Err(ApiError::in_progress());
            }
            ExecutingGuard { set: self.executing.clone(), key: key.clone() }
        };
        match self.store.get_execution(&key) {
            Ok(Some(stored)) => return self.replay(stored, &request.fingerprint),
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, "cannot read stored executions");
                return Err(ApiError::internal());
            }
        }

        let started = Instant::now();
        if let Ok(action) = &request.plan
            && action.is_remote()
        {
            let marker = InFlightMarker {
                fingerprint: request.fingerprint.clone(),
                trace_id: request.trace_id.clone(),
                action_type: request.action_type.clone(),
                user_id: request.user_id.clone(),
                product: request.product.clone(),
                metadata: request.metadata.clone(),
                started_ms: now_ms(),
            };
            let record = serde_json::to_vec(&marker).unwrap_or_default();
            if let Err(error) = self
                .store
                .commit(Batch { ops: vec![Op::PutInFlight { key: key.clone(), record }], durable: true })
                .await
            {
                tracing::error!(%error, "cannot record the in-flight marker; not executing");
                return Err(ApiError::internal());
            }
        }
        let outcome = match &request.plan {
            Ok(action) => {
                let adapter_started = Instant::now();
                let outcome = self.adapters.execute(action, &request.trace_id).await;
                self.metrics
                    .adapter_seconds
                    .with_label_values(&[action.action_type()])
                    .observe(adapter_started.elapsed().as_secs_f64());
                outcome
            }
            Err(failure) => Err(failure.clone()),
        };
        let duration = started.elapsed();
        let (response, ops) = self.conclude(&request, outcome, duration);
        let (record, body) = stored_execution(&request.fingerprint, &response);
        let mut batch = vec![Op::PutExecution {
            key,
            created_ms: now_ms(),
            record,
            clear_in_flight: request.plan.as_ref().is_ok_and(|action| action.is_remote()),
        }];
        batch.extend(ops);
        // The key stays claimed and the outbox slots reserved until the commit ends, even if the
        // caller goes away meanwhile: a retry then replays instead of acting a second time.
        let committed = self.store.commit_holding(Batch { ops: batch, durable: true }, (guard, reservation)).await;
        self.metrics
            .executions
            .with_label_values(&[metric_label(&request.action_type), response.status.as_str()])
            .inc();
        match committed {
            Ok(()) => {
                for (state, _) in &self.sinks {
                    self.metrics.events_enqueued.with_label_values(&[state.sink.name()]).inc();
                }
                Ok(Answer::Fresh(body))
            }
            Err(error) => {
                tracing::error!(%error, "cannot store the execution and its events");
                match request.plan {
                    // The provider acted: report what happened rather than invite a retry.
                    Ok(action) if action.is_remote() => Ok(Answer::Fresh(body)),
                    // Nothing happened (the task row shares the failed commit).
                    _ => Err(ApiError::internal()),
                }
            }
        }
    }

    /// Builds the response and the ops that record it (adapter writes and events).
    fn conclude(
        &self,
        request: &ExecuteRequest,
        outcome: Result<Performed, Failure>,
        duration: Duration,
    ) -> (ExecuteResponse, Vec<Op>) {
        let timestamp = now_rfc3339();
        let mut ops = Vec::new();
        let result = match outcome {
            Ok(performed) => {
                ops.extend(performed.ops);
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
        if self.sinks.is_empty() {
            return (response, ops);
        }
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
        ops.extend(self.event_ops(&facts));
        (response, ops)
    }

    fn event_ops(&self, facts: &ExecutionFacts<'_>) -> Vec<Op> {
        self.sinks
            .iter()
            .map(|(state, _)| {
                let event_id = crate::new_id().to_string();
                let body = match state.sink {
                    Sink::Bucket => serde_json::to_vec(&bucket_event(facts, &event_id, self.mask_recipients)),
                    Sink::Karma => serde_json::to_vec(&karma_event(facts, &event_id)),
                };
                Op::Enqueue {
                    sink: state.sink,
                    event_id,
                    trace_id: facts.trace_id.to_owned(),
                    body: body.unwrap_or_default(),
                }
            })
            .collect()
    }

    fn replay(&self, stored: Bytes, fingerprint: &str) -> Result<Answer, ApiError> {
        if stored.len() < FINGERPRINT_LEN {
            tracing::error!("stored execution is unreadable");
            return Err(ApiError::internal());
        }
        if stored[..FINGERPRINT_LEN] != *fingerprint.as_bytes() {
            self.metrics.rejections.with_label_values(&["idempotency_key_reused"]).inc();
            return Err(ApiError::key_reused());
        }
        self.metrics.replays.inc();
        tracing::info!("EXECUTION_REPLAYED");
        Ok(Answer::Replay(stored.slice(FINGERPRINT_LEN..)))
    }

    /// Refuses new executions while a fail-closed outbox is full.
    fn admit(&self) -> Result<Reservation, ApiError> {
        let mut reservation = Reservation { reserved: self.reserved.clone(), held: [false; 2] };
        for (state, settings) in &self.sinks {
            if settings.full_policy != FullPolicy::Reject {
                continue;
            }
            let gauge = self.store.gauge(state.sink);
            let slots = &self.reserved[state.sink as usize];
            // This execution's slot plus those of every admitted execution not yet committed.
            let promised = slots.fetch_add(1, Ordering::SeqCst) + 1;
            let full = gauge.events() + promised > settings.max_events || gauge.total_bytes() >= settings.max_bytes;
            if full {
                slots.fetch_sub(1, Ordering::SeqCst);
            } else {
                reservation.held[state.sink as usize] = true;
            }
            let flag = &self.full[state.sink as usize];
            if full {
                if !flag.swap(true, Ordering::Relaxed) {
                    tracing::error!(sink = state.sink.name(), "outbox full: refusing executions until it drains");
                }
                self.metrics.rejections.with_label_values(&["audit_spool_full"]).inc();
                return Err(ApiError::unavailable(
                    "audit_spool_full",
                    format!("the {} outbox is full; executions resume when it drains", state.sink.name()),
                    5,
                ));
            }
            if flag.swap(false, Ordering::Relaxed) {
                tracing::info!(sink = state.sink.name(), "outbox has room again: accepting executions");
            }
        }
        Ok(reservation)
    }

    /// Turns executions interrupted by a crash into `outcome_unknown` failures (with events).
    pub async fn recover_interrupted(&self) -> Result<usize, Arc<crate::store::StoreError>> {
        let markers = self.store.entries(IN_FLIGHT).map_err(Arc::new)?;
        let count = markers.len();
        for (key, bytes) in markers {
            let Ok(marker) = serde_json::from_slice::<InFlightMarker>(&bytes) else {
                tracing::error!(key, "unreadable in-flight marker left as is");
                continue;
            };
            tracing::warn!(trace_id = %marker.trace_id, action_type = %marker.action_type,
                "execution interrupted by a restart: outcome unknown, not retried");
            let request = ExecuteRequest {
                trace_id: marker.trace_id,
                plan: Err(Failure::new(
                    "outcome_unknown",
                    "the executor stopped while the provider call was in progress; the action may or may not have happened and is not retried",
                )),
                action_type: marker.action_type,
                user_id: marker.user_id,
                product: marker.product,
                metadata: marker.metadata,
                fingerprint: marker.fingerprint,
            };
            let elapsed = Duration::from_millis(now_ms().saturating_sub(marker.started_ms));
            let (response, mut ops) = self.conclude(&request, Err(request.plan.clone().expect_err("failure")), elapsed);
            let (record, _) = stored_execution(&request.fingerprint, &response);
            ops.push(Op::PutExecution { key, created_ms: now_ms(), record, clear_in_flight: true });
            self.store.commit(Batch { ops, durable: true }).await?;
        }
        Ok(count)
    }
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
