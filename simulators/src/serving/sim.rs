//! What every fake of one stack shares: the seed, the fault set, the journal, the metrics and the
//! received traces.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::faults::injector::FaultSet;
use crate::faults::rng;
use crate::record::bounded::Limits;
use crate::record::journal::Journal;
use crate::record::traces::Traces;
use crate::serving::metrics::Metrics;

/// The shared state of one stack (held in an `Arc` by every server).
#[derive(Debug)]
pub(crate) struct Sim {
    pub seed: u64,
    pub faults: Arc<FaultSet>,
    pub journal: Journal,
    pub metrics: Metrics,
    pub traces: Traces,
    ids: AtomicU64,
}

impl Sim {
    pub(crate) fn new(seed: u64, journal: Limits) -> Self {
        Self {
            seed,
            faults: Arc::new(FaultSet::new(seed)),
            journal: Journal::new(journal),
            metrics: Metrics::new(),
            traces: Traces::default(),
            ids: AtomicU64::new(0),
        }
    }

    /// A fresh identifier, deterministic for a given seed and issue order (`wamid.…`, `chatcmpl-…`).
    pub(crate) fn token(&self, prefix: &str) -> String {
        rng::token(prefix, self.seed, self.ids.fetch_add(1, Ordering::Relaxed))
    }
}
