//! Prometheus metrics, one registry per application instance.
//!
//! Instances are independent (tests run many executors in one process), so nothing is
//! registered globally; the `process_*` families (Linux) describe the whole process. Every label takes values from a closed set (action types are mapped to
//! `unknown` when not one of the four, routes are matched templates), so cardinality is bounded
//! whatever callers send.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// All metrics of one executor.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Executions by action and final status.
    pub executions: IntCounterVec,
    /// HTTP requests by matched route and status code.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by matched route.
    pub request_seconds: HistogramVec,
    /// Adapter (provider) latency by action.
    pub adapter_seconds: HistogramVec,
    /// Store commit latency (group commit).
    pub commit_seconds: Histogram,
    /// Execute requests being served.
    pub in_flight: IntGauge,
    /// Stored answers replayed for repeated requests.
    pub replays: IntCounter,
    /// Requests refused before execution, by reason.
    pub rejections: IntCounterVec,
    /// Events committed to a sink's outbox.
    pub events_enqueued: IntCounterVec,
    /// Events acknowledged by their sink.
    pub events_delivered: IntCounterVec,
    /// Delivery attempts that will be retried, by sink and failure kind.
    pub events_retried: IntCounterVec,
    /// Events moved to the dead-letter table.
    pub events_dead_lettered: IntCounterVec,
    /// Events discarded by a full outbox (drop-oldest policy).
    pub events_dropped: IntCounterVec,
    /// Events not produced because the encoding maps the outcome to nothing (as-built Karma).
    pub events_skipped: IntCounterVec,
    /// Events waiting in each outbox.
    pub outbox_depth: IntGaugeVec,
    /// Bytes waiting in each outbox.
    pub outbox_bytes: IntGaugeVec,
    /// Age of the oldest waiting event, in seconds (set at scrape time).
    pub outbox_oldest_age: prometheus::GaugeVec,
    /// Circuit state per sink: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let metrics = Self {
            executions: counter(
                "workflow_executions_total",
                "Workflow executions by action type and status.",
                &["action_type", "status"],
            ),
            http_requests: counter(
                "workflow_http_requests_total",
                "HTTP requests by route and status.",
                &["route", "status"],
            ),
            request_seconds: histogram("workflow_request_duration_seconds", "HTTP request latency.", &["route"]),
            adapter_seconds: histogram(
                "workflow_adapter_duration_seconds",
                "Adapter (provider) latency.",
                &["action_type"],
            ),
            commit_seconds: histogram("workflow_store_commit_duration_seconds", "Group commit latency.", &[])
                .with_label_values(&[] as &[&str]),
            in_flight: {
                let g = IntGauge::new("workflow_in_flight_requests", "Execute requests being served.")
                    .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            replays: {
                let c = IntCounter::new("workflow_idempotent_replays_total", "Stored answers replayed.")
                    .expect("valid metric");
                registry.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            rejections: counter(
                "workflow_rejected_requests_total",
                "Requests refused before execution, by reason.",
                &["reason"],
            ),
            events_enqueued: counter("workflow_events_enqueued_total", "Events committed to the outbox.", &["sink"]),
            events_delivered: counter("workflow_events_delivered_total", "Events acknowledged by the sink.", &["sink"]),
            events_retried: counter(
                "workflow_events_retried_total",
                "Failed delivery attempts that will be retried.",
                &["sink", "kind"],
            ),
            events_dead_lettered: counter(
                "workflow_events_dead_lettered_total",
                "Events moved to the dead-letter table.",
                &["sink"],
            ),
            events_dropped: counter("workflow_events_dropped_total", "Events dropped by a full outbox.", &["sink"]),
            events_skipped: counter(
                "workflow_events_skipped_total",
                "Events not sent because the Karma encoding maps the outcome to no action.",
                &["sink"],
            ),
            outbox_depth: gauge("workflow_outbox_depth", "Events waiting in the outbox.", &["sink"]),
            outbox_bytes: gauge("workflow_outbox_bytes", "Bytes waiting in the outbox.", &["sink"]),
            outbox_oldest_age: {
                let g = prometheus::GaugeVec::new(
                    Opts::new("workflow_outbox_oldest_age_seconds", "Age of the oldest waiting event."),
                    &["sink"],
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            circuit_state: gauge(
                "workflow_circuit_state",
                "Circuit breaker state per sink: 0 closed, 1 half-open, 2 open.",
                &["sink"],
            ),
            registry,
        };
        let build = IntGaugeVec::new(Opts::new("workflow_build_info", "Build information."), &["version"])
            .expect("valid metric");
        metrics.registry.register(Box::new(build.clone())).expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Shown at 0 from the start, so a dashboard can tell "none skipped" from "not exported".
        metrics.events_skipped.with_label_values(&["karma"]);
        // CPU, memory and descriptors of this process (`process_*`), as dashboards expect. Every
        // instance reads the same process; tests running several executors see the same values.
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("unique metric");
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text encoder writes UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
