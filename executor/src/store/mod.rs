//! The store boundary: everything the executor must not forget, in the engine's own terms.
//!
//! The engine, the deliverers and the ops routes talk to a [`Store`] and nothing else; no type of
//! a storage engine appears above this module. A backend promises:
//!
//! - **Claims.** [`Store::claim`] gives a key to one request at a time ([`Claim::Fresh`]); while it
//!   is held, the same request gets [`Claim::InProgress`] and a different request under the same
//!   key [`Claim::Mismatch`]; once an outcome is recorded, [`Claim::Replay`] of its answer. A
//!   stored answer that fails the engine's checksums is an error, never a replay.
//! - **In-flight markers.** [`Store::record_in_flight`] is durable before it returns, so a remote
//!   call is only made once the executor can tell after a crash that it may have happened;
//!   [`Store::abandoned`] hands such markers (with their claims) back to be reported as
//!   `outcome_unknown`.
//! - **Atomic outcomes.** [`Store::commit`] records the answer, the adapter's writes and the
//!   events together or not at all, durably before it returns. An outcome whose write failed may
//!   or may not have reached the disk: it is kept with its claim (so its key never runs again)
//!   and recorded as soon as the store can write again.
//! - **Outboxes.** Events of a sink are leased oldest first ([`Store::lease`]), at most one lease
//!   per event at a time, and settled ([`Store::settle`]): delivered (removed, durable within about
//!   a second), failed (leased again later, attempts counted) or dead-lettered (kept with a reason).
//!   Depths are exact; a full outbox drops its oldest events only under the drop-oldest policy.
//! - **Health.** [`Store::health`] names the failure while the store cannot write; the backend
//!   recovers by itself when the cause goes away.

pub mod embedded;
pub mod postgres;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod test_postgres;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

/// A future returned by the boundary (boxed, so backends can be chosen at run time).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A telemetry destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sink {
    /// Bucket, the audit trail.
    Bucket,
    /// Karma, behavioural tracking.
    Karma,
}

impl Sink {
    /// Both sinks.
    pub const ALL: [Sink; 2] = [Sink::Bucket, Sink::Karma];

    /// The metric label and display name.
    pub fn name(self) -> &'static str {
        match self {
            Sink::Bucket => "bucket",
            Sink::Karma => "karma",
        }
    }

    /// Position in per-sink arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why the store could not do what was asked. The message names the cause (and the path where
/// there is one); it never contains message content.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot write or read right now (disk full, I/O error, recovering).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Stored data failed its checksum.
    #[error("stored data is damaged: {0}")]
    Damaged(String),
    /// The store is shut down.
    #[error("the store is shut down")]
    Closed,
}

/// The answer to [`Store::claim`].
#[derive(Debug)]
pub enum Claim {
    /// The key is this request's until the guard is committed or dropped.
    Fresh(ClaimGuard),
    /// An identical request was answered before: its stored answer, byte for byte.
    Replay(Bytes),
    /// An identical request holds the key right now.
    InProgress,
    /// The key belongs to a different request (another fingerprint).
    Mismatch,
}

/// A held claim on an idempotency key. Dropping it releases the key (nothing was recorded);
/// [`Store::commit`] consumes it.
pub struct ClaimGuard {
    key: String,
    fingerprint: String,
    /// Whether an in-flight marker was recorded under this claim (its outcome clears it).
    pub(crate) in_flight: AtomicBool,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ClaimGuard {
    /// A guard for `key` that runs `release` when it is dropped unconsumed.
    pub fn new(key: String, fingerprint: String, release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self { key, fingerprint, in_flight: AtomicBool::new(false), release: Some(Box::new(release)) }
    }

    /// The claimed key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fingerprint of the request that holds it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl std::fmt::Debug for ClaimGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClaimGuard({})", self.key)
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// What an execution whose remote call may have started leaves behind, to be reported as
/// `outcome_unknown` if its process dies before the outcome is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlightMarker {
    /// The request's fingerprint.
    pub fingerprint: String,
    /// The caller's trace id.
    pub trace_id: String,
    /// `action_type` as sent.
    pub action_type: String,
    /// `payload.user_id`.
    pub user_id: Option<String>,
    /// `payload.product`.
    pub product: Option<String>,
    /// `payload.metadata`.
    pub metadata: Option<Value>,
    /// When the call started (ms since the epoch).
    pub started_ms: u64,
}

/// An in-flight marker whose execution is gone, claimed for the caller to record its outcome.
pub struct Abandoned {
    /// The marker as recorded.
    pub marker: InFlightMarker,
    /// The claim on its key.
    pub claim: ClaimGuard,
}

/// A row the adapter itself writes, recorded with the outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A task created by the task adapter: its id and JSON record.
    Task {
        /// Task id.
        id: String,
        /// Serialized task.
        record: Vec<u8>,
    },
}

/// An event to queue for a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Destination.
    pub sink: Sink,
    /// Its unique id (sent as `Idempotency-Key`).
    pub event_id: String,
    /// The trace it belongs to.
    pub trace_id: String,
    /// The JSON body to post.
    pub body: Vec<u8>,
}

/// One execution's outcome: recorded whole or not at all.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The answer's JSON, exactly as it is sent.
    pub answer: Bytes,
    /// When it was reached (ms since the epoch), for retention.
    pub created_ms: u64,
    /// The adapter's own writes.
    pub writes: Vec<Write>,
    /// The Bucket and Karma events.
    pub events: Vec<NewEvent>,
}

/// An event leased for delivery.
#[derive(Debug, Clone)]
pub struct LeasedEvent {
    /// Position in the sink's outbox (delivery order).
    pub seq: u64,
    /// When it was committed (ms since the epoch).
    pub enqueued_ms: u64,
    /// The event's unique id.
    pub event_id: String,
    /// Its trace id.
    pub trace_id: String,
    /// The JSON body.
    pub body: Bytes,
    /// Failed attempts before this lease.
    pub attempts: u32,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// The sink took it: remove it.
    Delivered(u64),
    /// Not delivered, the sink answered with an error: count the attempt, lease it again later.
    Failed(u64),
    /// Not delivered, the sink was unreachable: lease it again later without counting.
    Release(u64),
    /// Never deliverable: take it out and keep `record` (the reason and the event) instead.
    DeadLetter {
        /// Outbox position.
        seq: u64,
        /// What to keep, as the deliverer describes it.
        record: Value,
    },
}

/// Depth of one sink's outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxDepth {
    /// Events waiting.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Events dead-lettered and kept.
    pub dead_letters: u64,
    /// Events discarded by the drop-oldest policy since start.
    pub dropped: u64,
}

/// Bounds and policy of one outbox.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxBound {
    /// Most events kept.
    pub max_events: u64,
    /// Most bytes kept.
    pub max_bytes: u64,
    /// Whether to make room by dropping the oldest events (otherwise the engine refuses work).
    pub drop_oldest: bool,
}

/// Whether the store can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Writing normally.
    Ok,
    /// Writes fail; the message names the cause. Outcomes kept for recording are counted.
    Failing {
        /// The cause, in plain words.
        cause: String,
        /// Outcomes reached but not recorded yet.
        unrecorded: usize,
    },
}

/// The store boundary (see the module docs for what every backend promises).
pub trait Store: Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint`.
    fn claim<'a>(&'a self, key: &'a str, fingerprint: &'a str) -> StoreFuture<'a, Claim>;

    /// Durably records that the remote call of `claim`'s execution is about to start.
    fn record_in_flight<'a>(&'a self, claim: &'a ClaimGuard, marker: &'a InFlightMarker) -> StoreFuture<'a, ()>;

    /// Records `outcome` under `claim`'s key atomically and durably (and clears its in-flight
    /// marker). On failure the store keeps the outcome and the claim, and records it later.
    fn commit(&self, claim: ClaimGuard, outcome: Outcome) -> StoreFuture<'_, ()>;

    /// In-flight markers whose execution is gone (for the embedded store: those found at open),
    /// each with its key claimed for the caller.
    fn abandoned(&self) -> StoreFuture<'_, Vec<Abandoned>>;

    /// Leases up to `limit` of the oldest unleased events of `sink` for `lease_for`.
    fn lease(&self, sink: Sink, limit: usize, lease_for: Duration) -> StoreFuture<'_, Vec<LeasedEvent>>;

    /// Settles leased events.
    fn settle(&self, sink: Sink, settlements: Vec<Settlement>) -> StoreFuture<'_, ()>;

    /// Depth of `sink`'s outbox (cheap: called for every request).
    fn depth(&self, sink: Sink) -> OutboxDepth;

    /// Enqueue time (ms) of the oldest event waiting for `sink`.
    fn oldest_enqueued_ms(&self, sink: Sink) -> StoreFuture<'_, Option<u64>>;

    /// The last `limit` dead letters of `sink`, the most recently given up on first (JSON with
    /// the reason and the event).
    fn dead_letters(&self, sink: Sink, limit: usize) -> StoreFuture<'_, Vec<Value>>;

    /// Forgets answers recorded before `before_ms`; returns how many.
    fn expire(&self, before_ms: u64) -> StoreFuture<'_, usize>;

    /// Rung when events of `sink` may have become leasable.
    fn bell(&self, sink: Sink) -> &Notify;

    /// Whether the store can write now.
    fn health(&self) -> Health;

    /// Makes everything recorded durable and stops; later calls answer [`StoreError::Closed`].
    fn close(&self) -> StoreFuture<'_, ()>;
}

/// A shared handle to whichever backend was chosen.
pub type SharedStore = Arc<dyn Store>;
