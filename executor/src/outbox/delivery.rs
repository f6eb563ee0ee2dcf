//! Background deliverers: one per sink, draining its durable outbox.
//!
//! Each deliverer leases the oldest queued events from the store, posts them with bounded concurrency (every
//! attempt bounded by `WORKFLOW_TIMEOUT`), and settles them: a delivery removes the event,
//! an event that can never be delivered moves to the dead-letter table with its reason, anything
//! else stays queued for the next round. Outcomes are classified so an outage never loses events:
//!
//! | answer | meaning | what happens |
//! |---|---|---|
//! | 2xx (Bucket: and not `success: false`) | delivered | removed |
//! | refused, timeout, 408, 429, 502, 503, 504, broken answer | sink unreachable | retried without limit; trips the circuit |
//! | other 5xx, Bucket `success: false` | sink up but rejecting | retried up to `max_attempts`, then dead-lettered |
//! | other 4xx | permanent | dead-lettered at once |
//!
//! After a failing round the deliverer waits a full-jitter exponential backoff. A circuit breaker
//! per sink opens after `breaker_threshold` consecutive unreachable attempts; while open nothing is
//! sent, then a single probe decides whether it closes. Probes come at most [`PROBE_EVERY`] apart
//! (with jitter, so many executors do not probe in step) however long the outage, and while the
//! circuit is open the deliverer waits for the next probe rather than for the round backoff: the
//! first delivery follows a sink's recovery within about two seconds, and a sink that stays down
//! sees one small request every second or two. On shutdown deliverers keep draining for the
//! grace period and leave the rest on disk.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Url;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::DeliverySettings;
use crate::metrics::Metrics;
use crate::store::{LeasedEvent, Settlement, SharedStore, Sink};
use crate::trace::trace_headers;

/// Events read per round.
const BATCH: usize = 256;

/// The longest an open circuit waits before its next probe (jittered down to half of it).
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Circuit breaker state, as reported in status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Sending normally.
    Closed,
    /// Sending one probe.
    HalfOpen,
    /// Not sending until the open period ends.
    Open,
}

impl CircuitState {
    fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

#[derive(Debug)]
struct Breaker {
    state: CircuitState,
    open_until: Instant,
    consecutive_unreachable: u32,
    reopenings: u32,
}

/// What the status endpoint reports about one sink.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkReport {
    /// Last acknowledged delivery (RFC 3339).
    pub last_success: Option<String>,
    /// Last failed attempt (RFC 3339).
    pub last_error_at: Option<String>,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// Events acknowledged since start.
    pub delivered: u64,
    /// Failed attempts since start.
    pub failed_attempts: u64,
    /// Events dead-lettered since start.
    pub dead_lettered: u64,
    /// Why the last event was dead-lettered.
    pub last_dead_letter_reason: Option<String>,
    /// Whether the last round failed.
    pub failing: bool,
}

/// Shared state of one sink: breaker and counters.
#[derive(Debug)]
pub struct SinkState {
    /// Which sink.
    pub sink: Sink,
    /// Where events go.
    pub endpoint: Url,
    breaker: Mutex<Breaker>,
    report: Mutex<SinkReport>,
}

impl SinkState {
    /// A fresh state with a closed circuit.
    pub fn new(sink: Sink, endpoint: Url) -> Self {
        Self {
            sink,
            endpoint,
            breaker: Mutex::new(Breaker {
                state: CircuitState::Closed,
                open_until: Instant::now(),
                consecutive_unreachable: 0,
                reopenings: 0,
            }),
            report: Mutex::new(SinkReport::default()),
        }
    }

    /// The circuit's state now.
    pub fn circuit(&self) -> CircuitState {
        let breaker = self.breaker.lock().expect("breaker lock");
        if breaker.state == CircuitState::Open && Instant::now() >= breaker.open_until {
            CircuitState::HalfOpen
        } else {
            breaker.state
        }
    }

    /// How long the circuit stays open from now, if it is open.
    fn open_for(&self) -> Option<Duration> {
        let breaker = self.breaker.lock().expect("breaker lock");
        (breaker.state == CircuitState::Open).then(|| breaker.open_until.saturating_duration_since(Instant::now()))
    }

    /// A snapshot of the counters.
    pub fn report(&self) -> SinkReport {
        self.report.lock().expect("report lock").clone()
    }
}

/// How one attempt ended.
#[derive(Debug)]
enum Outcome {
    Delivered,
    Unreachable(String),
    Rejected(String),
    Permanent(String),
}

/// Delivers one sink's outbox until cancelled.
pub struct Deliverer {
    state: Arc<SinkState>,
    store: SharedStore,
    http: reqwest::Client,
    settings: DeliverySettings,
    metrics: Metrics,
    failing_rounds: u32,
}

impl Deliverer {
    /// A deliverer for `state.sink`.
    pub fn new(
        state: Arc<SinkState>,
        store: SharedStore,
        http: reqwest::Client,
        settings: DeliverySettings,
        metrics: Metrics,
    ) -> Self {
        metrics.circuit_state.with_label_values(&[state.sink.name()]).set(0);
        Self { state, store, http, settings, metrics, failing_rounds: 0 }
    }

    /// Delivers until `stop` fires, then drains for at most `grace` and returns.
    pub async fn run(mut self, stop: CancellationToken, grace: Duration) {
        tokio::select! {
            _ = self.deliver_forever() => {}
            _ = stop.cancelled() => {}
        }
        let sink = self.state.sink.name();
        let drained = tokio::time::timeout(grace, async {
            while self.store.depth(self.state.sink).events > 0 {
                match self.round().await {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => tokio::task::yield_now().await,
                }
            }
        })
        .await;
        let left = self.store.depth(self.state.sink).events;
        match drained {
            Ok(()) => tracing::info!(sink, "outbox drained"),
            Err(_) => {
                tracing::warn!(sink, left, "shutdown grace over; undelivered events stay on disk for the next start")
            }
        }
    }

    async fn deliver_forever(&mut self) {
        loop {
            let store = self.store.clone();
            let notified = store.bell(self.state.sink).notified();
            match self.round().await {
                Some(wait) => tokio::time::sleep(wait).await,
                None if self.store.depth(self.state.sink).events == 0 => {
                    // Idle: wait for the bell, with a slow tick as a safety net.
                    let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                }
                None => {}
            }
        }
    }

    /// One round: send what is due and commit the outcomes. Returns how long to wait before the
    /// next round, if anything failed or the circuit is open.
    async fn round(&mut self) -> Option<Duration> {
        let sink = self.state.sink;
        let limit = match self.admit() {
            Ok(limit) => limit,
            Err(wait) => return Some(wait),
        };
        // A lease outlives every attempt of the round, so no other deliverer sends these meanwhile.
        let lease_for = self.settings.attempt_timeout * 4 + Duration::from_secs(5);
        let events = match self.store.lease(sink, limit, lease_for).await {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(sink = sink.name(), %error, "cannot read the outbox");
                return Some(Duration::from_secs(1));
            }
        };
        if events.is_empty() {
            // Nothing leasable while events wait: they are leased elsewhere (or their lease has
            // not expired yet). Wait instead of asking again at once.
            return (self.store.depth(sink).events > 0).then_some(Duration::from_millis(200));
        }
        // If this round is dropped half-way (shutdown), its leases are given back at once.
        let mut held = Held { store: self.store.clone(), sink, seqs: events.iter().map(|e| e.seq).collect() };
        let this = &*self;
        let outcomes: Vec<(LeasedEvent, Outcome)> = futures_util::stream::iter(events)
            .map(|event| async move {
                let outcome = this.send(&event).await;
                (event, outcome)
            })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;

        let mut settlements = Vec::with_capacity(outcomes.len());
        let (mut delivered, mut dead, mut unreachable, mut failed) = (0u64, 0u64, 0u32, false);
        let mut last_error = None;
        let mut dead_reason = None;
        for (event, outcome) in outcomes {
            match outcome {
                Outcome::Delivered => {
                    settlements.push(Settlement::Delivered(event.seq));
                    delivered += 1;
                }
                Outcome::Permanent(reason) => {
                    last_error = Some(reason.clone());
                    dead_reason = Some(reason.clone());
                    settlements
                        .push(Settlement::DeadLetter { seq: event.seq, record: dead_letter_record(&event, &reason) });
                    dead += 1;
                    failed = true;
                }
                Outcome::Rejected(reason) => {
                    failed = true;
                    if event.attempts + 1 >= self.settings.max_attempts {
                        let reason = format!("{reason} (after {} attempts)", self.settings.max_attempts);
                        let record = dead_letter_record(&event, &reason);
                        settlements.push(Settlement::DeadLetter { seq: event.seq, record });
                        dead += 1;
                        dead_reason = Some(reason.clone());
                        last_error = Some(reason);
                    } else {
                        self.metrics.events_retried.with_label_values(&[sink.name(), "rejected"]).inc();
                        settlements.push(Settlement::Failed(event.seq));
                        last_error = Some(reason);
                    }
                }
                Outcome::Unreachable(reason) => {
                    failed = true;
                    unreachable += 1;
                    self.metrics.events_retried.with_label_values(&[sink.name(), "unreachable"]).inc();
                    settlements.push(Settlement::Release(event.seq));
                    last_error = Some(reason);
                }
            }
        }
        // Counted as soon as the sink accepted them, before their acknowledgements are recorded:
        // whoever sees the outbox empty also sees them delivered. (If recording the
        // acknowledgements fails, the events are sent and counted again; sinks drop them by id.)
        self.metrics.events_delivered.with_label_values(&[sink.name()]).inc_by(delivered);
        held.seqs.clear();
        if let Err(error) = self.store.settle(sink, settlements).await {
            tracing::error!(sink = sink.name(), %error, "cannot record delivery outcomes");
            return Some(Duration::from_secs(1));
        }
        if dead > 0 {
            self.metrics.events_dead_lettered.with_label_values(&[sink.name()]).inc_by(dead);
            tracing::warn!(sink = sink.name(), count = dead, reason = dead_reason.as_deref(), "events dead-lettered");
        }
        self.record(delivered, dead, unreachable, failed, last_error, dead_reason);
        if failed {
            self.failing_rounds += 1;
            // An open circuit's probe schedule is the wait; the backoff is for rejecting sinks.
            Some(self.state.open_for().unwrap_or_else(|| self.backoff()))
        } else {
            self.failing_rounds = 0;
            None
        }
    }

    /// How many events the breaker lets through now, or how long to wait.
    fn admit(&self) -> Result<usize, Duration> {
        let mut breaker = self.state.breaker.lock().expect("breaker lock");
        match breaker.state {
            CircuitState::Closed => Ok(BATCH),
            CircuitState::HalfOpen => Ok(1),
            CircuitState::Open => {
                let now = Instant::now();
                if now >= breaker.open_until {
                    breaker.state = CircuitState::HalfOpen;
                    self.metrics.circuit_state.with_label_values(&[self.state.sink.name()]).set(1);
                    Ok(1)
                } else {
                    Err(breaker.open_until - now)
                }
            }
        }
    }

    fn record(
        &self,
        delivered: u64,
        dead: u64,
        unreachable: u32,
        failed: bool,
        last_error: Option<String>,
        dead_reason: Option<String>,
    ) {
        let sink = self.state.sink.name();
        let now = crate::clock::now_rfc3339();
        {
            let mut report = self.state.report.lock().expect("report lock");
            report.delivered += delivered;
            report.dead_lettered += dead;
            report.failing = failed;
            if dead_reason.is_some() {
                report.last_dead_letter_reason = dead_reason;
            }
            if delivered > 0 {
                report.last_success = Some(now.clone());
            }
            if let Some(error) = last_error {
                report.failed_attempts += 1;
                report.last_error_at = Some(now);
                report.last_error = Some(error);
            }
        }
        let mut breaker = self.state.breaker.lock().expect("breaker lock");
        let before = breaker.state;
        if unreachable > 0 && delivered == 0 {
            breaker.consecutive_unreachable += unreachable;
            if breaker.state == CircuitState::HalfOpen
                || breaker.consecutive_unreachable >= self.settings.breaker_threshold
            {
                let factor = 1u32 << breaker.reopenings.min(4);
                let open_for =
                    (self.settings.breaker_open_for * factor).min(self.settings.backoff_max).min(PROBE_EVERY);
                let open_for = open_for.mul_f64(0.5 + 0.5 * fastrand::f64());
                breaker.state = CircuitState::Open;
                breaker.open_until = Instant::now() + open_for;
                breaker.reopenings += 1;
            }
        } else if delivered > 0 || !failed || breaker.state == CircuitState::HalfOpen {
            breaker.state = CircuitState::Closed;
            breaker.consecutive_unreachable = 0;
            breaker.reopenings = 0;
        }
        if breaker.state != before {
            self.metrics.circuit_state.with_label_values(&[sink]).set(breaker.state.gauge());
            match breaker.state {
                CircuitState::Open if breaker.reopenings == 1 => {
                    tracing::warn!(sink, "circuit opened: sink unreachable")
                }
                CircuitState::Open => tracing::debug!(sink, "circuit re-opened after a failed probe"),
                CircuitState::Closed => tracing::info!(sink, "circuit closed: sink reachable again"),
                CircuitState::HalfOpen => {}
            }
        }
    }

    /// Full-jitter exponential backoff: uniform in `[0, min(max, base * 2^rounds)]`.
    fn backoff(&self) -> Duration {
        let exp = self.failing_rounds.saturating_sub(1).min(20);
        let ceiling = (self.settings.backoff_base.saturating_mul(1 << exp)).min(self.settings.backoff_max);
        ceiling.mul_f64(fastrand::f64())
    }

    /// One delivery attempt, in a span of the event's trace (see `telemetry`).
    async fn send(&self, event: &LeasedEvent) -> Outcome {
        let span = tracing::info_span!(
            "deliver event",
            sink = self.state.sink.name(),
            event_id = %event.event_id,
            rejected_before = event.attempts,
            otel.kind = "client",
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if crate::telemetry::active() {
            crate::telemetry::join_trace(&span, &event.trace_id);
        }
        let outcome = self.attempt(event).instrument(span.clone()).await;
        let (name, failed) = match &outcome {
            Outcome::Delivered => ("delivered", false),
            Outcome::Unreachable(_) => ("unreachable", true),
            Outcome::Rejected(_) => ("rejected", true),
            Outcome::Permanent(_) => ("permanent", true),
        };
        span.record("outcome", name);
        if failed {
            span.record("otel.status_code", "ERROR");
        }
        outcome
    }

    async fn attempt(&self, event: &LeasedEvent) -> Outcome {
        let request = self
            .http
            .post(self.state.endpoint.clone())
            .timeout(self.settings.attempt_timeout)
            .headers(trace_headers(&event.trace_id))
            .header("idempotency-key", &event.event_id)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(event.body.clone());
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Outcome::Unreachable(describe(&error)),
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => {
                return Outcome::Unreachable(format!("HTTP {}: broken answer ({})", status.as_u16(), describe(&error)));
            }
        };
        classify(self.state.sink, status.as_u16(), &body)
    }
}

/// What is kept of a dead-lettered event: the reason, the ids and the event itself.
fn dead_letter_record(event: &LeasedEvent, reason: &str) -> serde_json::Value {
    serde_json::json!({
        "reason": reason,
        "event_id": event.event_id,
        "trace_id": event.trace_id,
        "enqueued_ms": event.enqueued_ms,
        "dead_lettered_ms": crate::clock::now_ms(),
        "event": serde_json::from_slice::<serde_json::Value>(&event.body).unwrap_or_default(),
    })
}

/// The leases of a round in progress; released if the round is dropped before it settles them.
struct Held {
    store: SharedStore,
    sink: Sink,
    seqs: Vec<u64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let seqs = std::mem::take(&mut self.seqs);
        if let (false, Ok(runtime)) = (seqs.is_empty(), tokio::runtime::Handle::try_current()) {
            let (store, sink) = (self.store.clone(), self.sink);
            runtime.spawn(async move {
                let _ = store.settle(sink, seqs.into_iter().map(Settlement::Release).collect()).await;
            });
        }
    }
}

fn classify(sink: Sink, status: u16, body: &[u8]) -> Outcome {
    let excerpt = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    match status {
        200..=299 => {
            if sink == Sink::Bucket
                && let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body)
                && answer.get("success") == Some(&serde_json::Value::Bool(false))
            {
                let message = answer.get("message").and_then(|m| m.as_str()).unwrap_or("no message");
                return Outcome::Rejected(format!("bucket refused the event: {message}"));
            }
            Outcome::Delivered
        }
        408 | 429 | 502 | 503 | 504 => Outcome::Unreachable(format!("HTTP {status}")),
        400..=499 => Outcome::Permanent(format!("HTTP {status}: {}", excerpt())),
        _ => Outcome::Rejected(format!("HTTP {status}: {}", excerpt())),
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "connection failed".into()
    } else {
        crate::logging::error_chain(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_success_false_is_a_rejection_not_a_delivery() {
        let body = br#"{"success": false, "message": "403: Unauthorized requester"}"#;
        assert!(matches!(classify(Sink::Bucket, 200, body), Outcome::Rejected(m) if m.contains("Unauthorized")));
        assert!(matches!(classify(Sink::Karma, 200, body), Outcome::Delivered));
        assert!(matches!(classify(Sink::Bucket, 200, br#"{"success": true}"#), Outcome::Delivered));
    }

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(classify(Sink::Karma, 503, b""), Outcome::Unreachable(_)));
        assert!(matches!(classify(Sink::Karma, 429, b""), Outcome::Unreachable(_)));
        assert!(matches!(classify(Sink::Karma, 500, b"Invalid role"), Outcome::Rejected(_)));
        assert!(matches!(classify(Sink::Karma, 422, b"{}"), Outcome::Permanent(_)));
    }
}
