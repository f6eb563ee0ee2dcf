//! The simulator's own Prometheus metrics, in a registry per stack (so parallel stacks in one
//! test process do not mix their counts). Routes are labelled by their template
//! (`/api/v1/karma/{user_id}`), never the raw path, to keep label sets bounded.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

/// Counters and histograms of one stack.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    faults: IntCounterVec,
    duration: HistogramVec,
    evicted: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "pillar_sim_requests_total",
                "Requests received by the fakes, by pillar, route, method and status.",
            ),
            &["pillar", "route", "method", "status"],
        )
        .expect("valid metric");
        let faults = IntCounterVec::new(
            Opts::new("pillar_sim_faults_injected_total", "Faults applied, by pillar, route and kind."),
            &["pillar", "route", "kind"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("pillar_sim_request_duration_seconds", "Time from arrival to the answer's head.")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["pillar", "route"],
        )
        .expect("valid metric");
        let evicted = IntCounterVec::new(
            Opts::new(
                "pillar_sim_evicted_total",
                "Entries dropped from a bounded store to bound memory (oldest first), by store.",
            ),
            &["store"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(faults.clone()),
            Box::new(duration.clone()),
            Box::new(evicted.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Self { registry, requests, faults, duration, evicted }
    }

    /// Counts one request (`status` is "none" for a request never answered).
    pub(crate) fn request(&self, pillar: &str, route: &str, method: &str, status: &str, seconds: f64) {
        self.requests.with_label_values(&[pillar, route, method, status]).inc();
        self.duration.with_label_values(&[pillar, route]).observe(seconds);
    }

    /// Counts one applied fault.
    pub(crate) fn fault(&self, pillar: &str, route: &str, kind: &str) {
        self.faults.with_label_values(&[pillar, route, kind]).inc();
    }

    /// Brings a store's eviction counter up to `total` (the store counts; the metric follows
    /// when read).
    pub(crate) fn evicted(&self, store: &str, total: u64) {
        let counter = self.evicted.with_label_values(&[store]);
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// Requests received so far, per pillar (for the dashboard's rates).
    pub(crate) fn requests_by_pillar(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for family in self.registry.gather().iter().filter(|f| f.name() == "pillar_sim_requests_total") {
            for metric in family.get_metric() {
                if let Some(pillar) = metric.get_label().iter().find(|l| l.name() == "pillar") {
                    *out.entry(pillar.value().to_owned()).or_insert(0) += metric.get_counter().get_value() as u64;
                }
            }
        }
        out
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}
