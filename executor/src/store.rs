//! The embedded durable store (redb), its group-commit writer and its applier.
//!
//! One file, `executor.redb` in the data directory, holds everything that must survive a crash:
//! stored answers (for idempotent replays, laid out as described in [`crate::answers`]), in-flight
//! markers (to report unknown outcomes after a crash), tasks created by the task adapter, and one
//! outbox table plus one dead-letter table per sink.
//!
//! **Two threads, one order.** Every write goes through the *writer* thread: callers send a
//! [`Batch`] of [`Op`]s; the writer drains everything queued, decides sequence numbers and
//! timestamps, appends the whole group to the write-ahead log ([`crate::wal`]) with one write and
//! one `fdatasync`, and passes it on to the *applier* thread, which applies groups to redb in
//! lazy commits. Concurrent requests share one fsync, and, under load, the applier's commits
//! cover many groups at once: a redb commit costs per page it touches, so big commits are much
//! cheaper per insert than one per group.
//!
//! **When a caller is answered.** A durable batch is answered as soon as it is logged: it
//! survives a crash from then on (the log is replayed on start). Its stored answers are readable
//! at once from an in-memory overlay until the applier has applied them. [`Store::get_execution`]
//! reads the overlay, then asks a Bloom filter of the stored keys ([`crate::key_filter`]), which
//! spares a fresh request the index lookups, then the answer indexes and the applier's latest
//! published snapshot.
//! The applier's work is deferrable: its long loops yield the CPU every 100 µs ([`Courtesy`]), so
//! the request path (and a writer woken on the applier's CPU) is not kept waiting, and the writer
//! waits for it only if too much is left to apply ([`APPLY_QUEUE_OPS`]). Batches that remove events
//! from an outbox (acknowledgements, dead letters, expiry) are answered once applied, because
//! their callers read the outbox next. Lazy batches (delivery acknowledgements: losing one only
//! re-sends an event, which sinks drop by `event_id`) skip the log.
//!
//! **Checkpoints.** A checkpoint is one durable redb commit; it makes every lazy commit before it
//! durable, so the log it covers can be emptied. There are two logs: when the active one is half
//! full (`EXECUTOR_WAL_BYTES`) or old, the writer moves new records to the other and asks the
//! applier, in order, to checkpoint; the writer empties the old log when the applier reports
//! back. Requests never wait for a checkpoint unless a whole log fills before the previous
//! checkpoint ends. If an apply or a checkpoint fails, the logs are kept (and grow): the next
//! start replays them.
//!
//! **Outbox accounting.** The applier is the only mutator of the outbox tables, so it keeps each
//! sink's exact depth and byte count in [`OutboxGauge`]s, applies the drop-oldest policy itself,
//! and rings the sink's bell when events become readable. Events logged and not yet applied count
//! as `deferred`. Outbox values are the event's enqueue time (8 bytes, big-endian milliseconds),
//! its ids, then the JSON body to post.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::answers::{self, AnswerLog, AnswerSnapshot, RecentIndex};
use crate::key_filter::KeyFilter;
use crate::metrics::Metrics;
use crate::wal::{Resolved, Wal};

/// Idempotency key -> marker (JSON) for executions whose provider call may have started.
pub(crate) const IN_FLIGHT: TableDefinition<&str, &[u8]> = TableDefinition::new("in_flight");

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

    fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn outbox(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Sink::Bucket => TableDefinition::new("outbox_bucket"),
            Sink::Karma => TableDefinition::new("outbox_karma"),
        }
    }

    pub(crate) fn dead_letters(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Sink::Bucket => TableDefinition::new("dead_letter_bucket"),
            Sink::Karma => TableDefinition::new("dead_letter_karma"),
        }
    }
}

/// Storage failure. Callers answer 500 `internal_execution_error`; the cause is logged once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb reported an error.
    #[error("store error: {0}")]
    Redb(#[from] redb::Error),
    /// The writer thread is gone (shutdown).
    #[error("the store is shut down")]
    Closed,
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(impl From<$t> for StoreError { fn from(e: $t) -> Self { StoreError::Redb(e.into()) } })*};
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// One mutation, applied by the writer thread.
#[derive(Debug)]
pub enum Op {
    /// Store the final answer for an idempotency key (and clear its in-flight marker).
    PutExecution {
        /// Idempotency key.
        key: String,
        /// Creation time, for retention.
        created_ms: u64,
        /// Serialized stored execution (shared with the response body and the in-memory overlay).
        record: Bytes,
        /// Whether an in-flight marker was written for this key and must go.
        clear_in_flight: bool,
    },
    /// Mark an execution whose provider call is about to start.
    PutInFlight {
        /// Idempotency key.
        key: String,
        /// Serialized marker.
        record: Vec<u8>,
    },
    /// Store a created task.
    PutTask {
        /// Task id.
        id: String,
        /// Serialized task.
        record: Vec<u8>,
    },
    /// Queue an event for a sink.
    Enqueue {
        /// Destination.
        sink: Sink,
        /// The event's unique id (sent as `Idempotency-Key`).
        event_id: String,
        /// The trace it belongs to (sent as `X-Trace-Id` and `traceparent`).
        trace_id: String,
        /// JSON body.
        body: Vec<u8>,
    },
    /// The sink acknowledged the event.
    Ack {
        /// Destination.
        sink: Sink,
        /// Outbox sequence number.
        seq: u64,
    },
    /// The event can never be delivered: move it to the dead-letter table with a reason.
    DeadLetter {
        /// Destination.
        sink: Sink,
        /// Outbox sequence number.
        seq: u64,
        /// Why, in plain words.
        reason: String,
    },
    /// Drop execution records older than the cutoff (retention).
    Expire {
        /// Records created before this time (ms) go.
        before_ms: u64,
    },
}

/// A group of ops committed atomically.
#[derive(Debug)]
pub struct Batch {
    /// The mutations.
    pub ops: Vec<Op>,
    /// Whether the commit must reach disk before the caller continues.
    pub durable: bool,
}

impl Op {
    /// Whether the op takes something out of a table its caller reads next (an outbox, the
    /// stored answers): such a batch is answered only once applied.
    fn read_back(&self) -> bool {
        matches!(self, Op::Ack { .. } | Op::DeadLetter { .. } | Op::Expire { .. })
    }
}

type Done = oneshot::Sender<Result<(), Arc<StoreError>>>;

struct Request {
    batch: Batch,
    done: Done,
}

/// What the writer thread receives.
enum Msg {
    /// A batch to commit.
    Batch(Request),
    /// The applier finished the checkpoint of a log.
    Checkpointed { log: usize, result: Result<Duration, Arc<StoreError>> },
}

/// What the applier thread receives, in log order.
enum Work {
    /// Ops to apply; `done` are the requests answered once they are applied; `generation` is
    /// the overlay generation of the answers they store.
    Apply { ops: Vec<Resolved>, done: Vec<Done>, generation: u64 },
    /// Everything before this is applied: make it durable, so the writer can empty `log`.
    Checkpoint { log: usize },
}

/// Stored answers logged but not yet applied to redb: key -> (overlay generation, record).
type Overlay = Arc<Mutex<HashMap<String, (u64, Bytes)>>>;

/// The stored answers as of the applier's last commit.
type Snapshot = Arc<Mutex<Arc<AnswerSnapshot>>>;

/// Exact depth and size of one sink's outbox, maintained by the applier.
#[derive(Debug, Default)]
pub struct OutboxGauge {
    /// Events waiting (applied).
    pub depth: AtomicU64,
    /// Bytes waiting (applied).
    pub bytes: AtomicU64,
    /// Events logged but not applied yet (not in `depth` yet).
    pub deferred: AtomicU64,
    /// Their bytes.
    pub deferred_bytes: AtomicU64,
}

impl OutboxGauge {
    /// Events waiting, including those not applied yet.
    pub fn events(&self) -> u64 {
        // Applying adds to `depth` before taking from `deferred`: never an undercount.
        self.depth.load(Ordering::SeqCst) + self.deferred.load(Ordering::SeqCst)
    }

    /// Bytes waiting, including those of events not applied yet.
    pub fn total_bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst) + self.deferred_bytes.load(Ordering::SeqCst)
    }
}

/// Bounds and policy the applier enforces on one outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxBound {
    /// Most events kept.
    pub max_events: u64,
    /// Most bytes kept.
    pub max_bytes: u64,
    /// Whether to make room by dropping the oldest events.
    pub drop_oldest: bool,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    sender: mpsc::UnboundedSender<Msg>,
    gauges: Arc<[OutboxGauge; 2]>,
    bells: Arc<[Notify; 2]>,
    overlay: Overlay,
    snapshot: Snapshot,
    recent: RecentIndex,
    keys: Arc<KeyFilter>,
}

/// Joins the store's threads after the last [`Store`] handle is gone.
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Waits for the writer and the applier to apply what is queued and make it durable.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the store writer thread panicked");
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, replays its logs, and starts its threads.
    pub fn open(
        dir: &Path,
        wal_bytes: u64,
        bounds: [OutboxBound; 2],
        metrics: Metrics,
    ) -> Result<(Store, WriterThread), StoreError> {
        let io = |e: std::io::Error| StoreError::Redb(redb::Error::Io(e));
        std::fs::create_dir_all(dir).map_err(io)?;
        let db = Arc::new(Database::builder().set_cache_size(CACHE_BYTES).create(dir.join("executor.redb"))?);
        let gauges: Arc<[OutboxGauge; 2]> = Arc::new(Default::default());
        let recent = RecentIndex::default();
        let answers;
        {
            // Create every table up front and count what a previous run left queued.
            let txn = db.begin_write()?;
            answers = AnswerLog::open(&txn, recent.clone())?;
            txn.open_table(IN_FLIGHT)?;
            crate::tasks::open(&txn)?;
            for sink in Sink::ALL {
                txn.open_table(sink.dead_letters())?;
                let table = txn.open_table(sink.outbox())?;
                let gauge = &gauges[sink.index()];
                let mut bytes = 0;
                for entry in table.range::<u64>(..)? {
                    bytes += entry?.1.value().len() as u64;
                }
                gauge.depth.store(table.len()?, Ordering::Relaxed);
                gauge.bytes.store(bytes, Ordering::Relaxed);
            }
            txn.commit()?;
        }
        let mut next_seq = {
            let txn = db.begin_read()?;
            let mut next = [1u64; 2];
            for sink in Sink::ALL {
                let table = txn.open_table(sink.outbox())?;
                let dead = txn.open_table(sink.dead_letters())?;
                let last = [table.last()?.map(|(k, _)| k.value()), dead.last()?.map(|(k, _)| k.value())];
                next[sink.index()] = last.into_iter().flatten().max().unwrap_or(0) + 1;
            }
            next
        };
        let mut wals = Vec::with_capacity(2);
        let mut logged = Vec::new();
        for i in 0..2 {
            let (wal, batches) = Wal::open(&dir.join(format!("executor.wal.{i}")), wal_bytes).map_err(io)?;
            logged.push((wal.epoch(), batches));
            wals.push(wal);
        }
        // The log with the older epoch holds the older records.
        logged.sort_by_key(|(epoch, _)| *epoch);
        let mut wals: [Wal; 2] = wals.try_into().unwrap_or_else(|_| unreachable!("two logs"));
        let (sender, receiver) = mpsc::unbounded_channel();
        let overlay = Overlay::default();
        let snapshot: Snapshot = Arc::new(Mutex::new(Arc::new(AnswerSnapshot::open(&db.begin_read()?)?)));
        let bells: Arc<[Notify; 2]> = Arc::new([Notify::new(), Notify::new()]);
        let mut applier = Applier {
            db: db.clone(),
            gauges: gauges.clone(),
            bounds,
            metrics: metrics.clone(),
            dropping: [false; 2],
            overlay: overlay.clone(),
            snapshot: snapshot.clone(),
            answers,
            bells: bells.clone(),
            failed: false,
            writer: sender.downgrade(),
        };
        let batches: Vec<Vec<Resolved>> = logged.into_iter().flat_map(|(_, batches)| batches).collect();
        if !batches.is_empty() {
            tracing::info!(batches = batches.len(), "replaying the store's write-ahead log");
            for batch in &batches {
                for op in batch {
                    if let Resolved::Enqueue { sink, seq, .. } = op {
                        let next = &mut next_seq[sink.index()];
                        *next = (*next).max(seq + 1);
                    }
                }
                applier.apply(batch, false)?;
            }
            applier.flush_answer_index();
        }
        let started = Instant::now();
        applier.checkpoint()?;
        clear_logs(&mut wals).map_err(io)?;
        metrics.checkpoint_seconds.observe(started.elapsed().as_secs_f64());
        // Lookups read the state after the replay: the snapshot taken before it misses every
        // answer that was only in the logs, and a retry would act a second time.
        applier.publish_snapshot()?;

        // Every stored key, including those just replayed from the logs.
        let keys = Arc::new(KeyFilter::new());
        answers::for_each_key(&db, |key| keys.insert(key))?;
        let handoff = Arc::new(Handoff::default());
        let queue = handoff.clone();
        let applier =
            std::thread::Builder::new().name("store-applier".into()).spawn(move || applier.run(queue)).map_err(io)?;
        let writer = Writer {
            wals,
            active: 0,
            other: OtherLog::Empty,
            next_seq,
            gauges: gauges.clone(),
            overlay: overlay.clone(),
            keys: keys.clone(),
            generation: 0,
            metrics,
            last_checkpoint: Instant::now(),
            backlog: Vec::new(),
            applier: Some((handoff, applier)),
        };
        let thread =
            std::thread::Builder::new().name("store-writer".into()).spawn(move || writer.run(receiver)).map_err(io)?;
        Ok((Store { db, sender, gauges, bells, overlay, snapshot, recent, keys }, WriterThread(thread)))
    }

    /// Commits `batch` atomically and waits until it is durable (a durable batch) and, for a
    /// batch that takes events out of an outbox, applied.
    pub async fn commit(&self, batch: Batch) -> Result<(), Arc<StoreError>> {
        self.commit_holding(batch, ()).await
    }

    /// [`Store::commit`], keeping `held` alive until the commit ends. The batch is handed to the
    /// writer before the first await, so it is committed even if this future is dropped; `held`
    /// (claims that must outlive the commit, such as an idempotency key's in-progress mark) is
    /// then dropped by a task that waits for the commit in the dropped future's place.
    pub async fn commit_holding<T: Send + 'static>(&self, batch: Batch, held: T) -> Result<(), Arc<StoreError>> {
        let (done, wait) = oneshot::channel();
        self.sender.send(Msg::Batch(Request { batch, done })).map_err(|_| Arc::new(StoreError::Closed))?;
        HeldUntilCommitted { wait: Some(wait), held: Some(held) }.await
    }

    /// Depth and size of a sink's outbox.
    pub fn gauge(&self, sink: Sink) -> &OutboxGauge {
        &self.gauges[sink.index()]
    }

    /// Rung when events of `sink` become readable with [`Store::queued`].
    pub fn outbox_bell(&self, sink: Sink) -> &Notify {
        &self.bells[sink.index()]
    }

    /// The stored answer for an idempotency key, including one logged but not yet applied.
    pub fn get_execution(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        // The overlay first: the applier publishes a snapshot before it forgets what it applied,
        // and the writer adds keys to the filter under the overlay's lock.
        if let Some((_, record)) = self.overlay.lock().expect("overlay lock").get(key) {
            return Ok(Some(record.clone()));
        }
        if !self.keys.may_contain(key) {
            return Ok(None);
        }
        // Then the recent index, then the snapshot: the applier publishes a snapshot before it
        // takes flushed entries out of the recent index.
        let hash = answers::key_hash(key.as_bytes());
        let recent = answers::recent_candidates(&self.recent, hash);
        let snapshot = self.snapshot.lock().expect("snapshot lock").clone();
        snapshot.find(key, hash, recent)
    }

    /// Every entry of a `&str -> bytes` table (used for the small in-flight table at start).
    pub fn entries(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            let (k, v) = entry?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Up to `limit` queued events of `sink`, oldest first.
    pub fn queued(&self, sink: Sink, limit: usize) -> Result<Vec<QueuedEvent>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(sink.outbox())?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in table.range::<u64>(..)?.take(limit) {
            let (k, v) = entry?;
            out.push(decode_outbox_value(k.value(), v.value()));
        }
        Ok(out)
    }

    /// Enqueue time (ms) of the oldest queued event of `sink`.
    pub fn oldest_enqueued_ms(&self, sink: Sink) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(sink.outbox())?;
        Ok(table.first()?.map(|(_, v)| decode_outbox_value(0, v.value()).enqueued_ms))
    }

    /// The newest `limit` dead-lettered events of `sink`, newest first (stored JSON with the
    /// reason and the event).
    pub fn dead_letters(&self, sink: Sink, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(sink.dead_letters())?;
        let mut out = Vec::new();
        for entry in table.range::<u64>(..)?.rev().take(limit) {
            out.push(entry?.1.value().to_vec());
        }
        Ok(out)
    }
}

/// Waits for a commit and drops `held` once it has ended, whether it is awaited to the end or
/// dropped before (then a spawned task does the waiting).
struct HeldUntilCommitted<T: Send + 'static> {
    wait: Option<oneshot::Receiver<Result<(), Arc<StoreError>>>>,
    held: Option<T>,
}

// `held` is never pinned: it is only moved out or dropped.
impl<T: Send + 'static> Unpin for HeldUntilCommitted<T> {}

impl<T: Send + 'static> std::future::Future for HeldUntilCommitted<T> {
    type Output = Result<(), Arc<StoreError>>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let Some(wait) = self.wait.as_mut() else {
            return std::task::Poll::Ready(Err(Arc::new(StoreError::Closed)));
        };
        let outcome = std::task::ready!(std::pin::Pin::new(wait).poll(cx));
        self.wait = None;
        self.held = None;
        std::task::Poll::Ready(outcome.unwrap_or_else(|_| Err(Arc::new(StoreError::Closed))))
    }
}

impl<T: Send + 'static> Drop for HeldUntilCommitted<T> {
    fn drop(&mut self) {
        if let (Some(wait), Some(held)) = (self.wait.take(), self.held.take())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = wait.await;
                drop(held);
            });
        }
    }
}

/// An event waiting in an outbox.
#[derive(Debug, Clone)]
pub struct QueuedEvent {
    /// Outbox sequence number (delivery order).
    pub seq: u64,
    /// When it was committed (ms since the epoch).
    pub enqueued_ms: u64,
    /// The event's unique id.
    pub event_id: String,
    /// Its trace id.
    pub trace_id: String,
    /// The JSON body to post.
    pub body: Vec<u8>,
}

/// Outbox value layout: enqueue time (u64 BE), event id and trace id (each a u8 length and its
/// bytes), then the body. Ids are validated ASCII of at most 128 bytes, so a u8 length fits.
fn encode_outbox_value(enqueued_ms: u64, event_id: &str, trace_id: &str, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(10 + event_id.len() + trace_id.len() + body.len());
    value.extend_from_slice(&enqueued_ms.to_be_bytes());
    for id in [event_id, trace_id] {
        let id = &id.as_bytes()[..id.len().min(255)];
        value.push(id.len() as u8);
        value.extend_from_slice(id);
    }
    value.extend_from_slice(body);
    value
}

fn decode_outbox_value(seq: u64, value: &[u8]) -> QueuedEvent {
    let (at, mut rest) = value.split_first_chunk::<8>().map(|(a, r)| (u64::from_be_bytes(*a), r)).unwrap_or((0, value));
    let mut ids = [String::new(), String::new()];
    for id in &mut ids {
        let len = rest.first().copied().unwrap_or(0) as usize;
        let end = (1 + len).min(rest.len());
        *id = String::from_utf8_lossy(&rest[1.min(rest.len())..end]).into_owned();
        rest = &rest[end..];
    }
    let [event_id, trace_id] = ids;
    QueuedEvent { seq, enqueued_ms: at, event_id, trace_id, body: rest.to_vec() }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// redb's page cache. Its 1 GiB default would make the executor's memory grow with the store;
/// the hot pages (the outbox heads and the newest records) fit in far less. The cache fills and
/// empties by tens of MiB as the workload moves: at 32 MiB, the executor peaked at 108-114 MiB
/// RSS at 2,000 req/s with telemetry (after the closed-loop phases of the benchmark), at 16 MiB
/// at 79-84 MiB, with no measurable change in throughput.
const CACHE_BYTES: usize = 16 << 20;

/// Checkpoint when the active log is half full (`EXECUTOR_WAL_BYTES`) or its oldest record is
/// this old.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// Ops the writer may hold for the applier before it waits (backpressure: memory stays bounded
/// when redb is slower than the log). Under saturating load the applier pauses for tens of
/// milliseconds at times (a long commit, an answer-index flush, a checkpoint); the queue absorbs
/// that (about half a second of it at 40k req/s) instead of stalling every request. At 16k ops
/// the writer waited several times per second under `wrk` load, and the machine idled meanwhile.
const APPLY_QUEUE_OPS: usize = 65_536;

/// Under sustained load, the applier commits at most this often unless someone waits or
/// [`APPLY_MIN_OPS`] ops are held. A redb commit costs per page it touches: big commits are far
/// cheaper per insert.
const APPLY_DELAY: Duration = Duration::from_millis(20);
const APPLY_MIN_OPS: usize = 8_192;

/// How long the applier's loops run before they offer the CPU ([`Courtesy`]).
const YIELD_EVERY: Duration = Duration::from_micros(100);
/// Steps between two readings of the clock: a step (an insert) takes about a microsecond or more,
/// and reading the clock at every one of them cost about 1.5% of the applier's time.
const STEPS_PER_CLOCK_READ: u32 = 16;

/// Paces the applier's long loops (a commit of thousands of ops, an index flush, an expiry).
///
/// The disk interrupt that completes the writer's `fdatasync` is often taken on the CPU the
/// applier runs on, and wakes the writer there. The scheduler (Linux's EEVDF) lets a running
/// thread finish its slice before a woken one takes over, whatever their nice values
/// (milliseconds), and idle CPUs do not steal it that soon: every request waiting for that commit
/// then waits too, while the other CPUs idle. Under `wrk` load on two cores the machine idled 15%
/// of the time, 8-11% with the yields. Offering the CPU every [`YIELD_EVERY`] lets a queued writer
/// run at once; with nothing else queued, a yield returns at once.
pub(crate) struct Courtesy {
    since: Instant,
    steps: u32,
}

impl Courtesy {
    pub(crate) fn new() -> Self {
        Self { since: Instant::now(), steps: 0 }
    }

    /// One step of a loop: yields the CPU if this thread has run for [`YIELD_EVERY`] since it
    /// last did (checked every [`STEPS_PER_CLOCK_READ`] steps).
    pub(crate) fn offer(&mut self) {
        self.steps += 1;
        if self.steps < STEPS_PER_CLOCK_READ {
            return;
        }
        self.steps = 0;
        if self.since.elapsed() >= YIELD_EVERY {
            std::thread::yield_now();
            self.since = Instant::now();
        }
    }
}

/// Work the applier holds back for its next commit.
#[derive(Default)]
struct Gathered {
    ops: Vec<Resolved>,
    done: Vec<Done>,
    generation: u64,
    checkpoint: Option<usize>,
}

impl Gathered {
    fn add(&mut self, work: Work) {
        match work {
            Work::Apply { ops, done, generation } => {
                self.ops.extend(ops);
                self.done.extend(done);
                self.generation = generation;
            }
            Work::Checkpoint { log } => self.checkpoint = Some(log),
        }
    }

    fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.done.is_empty() && self.checkpoint.is_none()
    }

    /// Someone waits, a checkpoint is asked for, or enough ops are held.
    fn ready(&self) -> bool {
        !self.done.is_empty() || self.checkpoint.is_some() || self.ops.len() >= APPLY_MIN_OPS
    }
}

/// Most requests the writer logs in one group.
const GROUP_MAX_REQUESTS: usize = 4096;

/// Where the writer leaves work for the applier. The writer wakes the applier only when the
/// work is due (someone waits, a checkpoint is asked for, enough is held, or the last commit is
/// [`APPLY_DELAY`] old): under load, the applier sleeps between commits instead of being woken
/// by every group.
#[derive(Default)]
struct Handoff {
    state: Mutex<HandoffState>,
    /// The applier waits here for due work.
    work: std::sync::Condvar,
    /// The writer waits here for room.
    room: std::sync::Condvar,
}

#[derive(Default)]
struct HandoffState {
    gathered: Gathered,
    /// The applier's next commit time under load.
    next_flush: Option<Instant>,
    applier_waiting: bool,
    writer_waiting: bool,
    /// The writer is gone: apply the rest, checkpoint, and stop.
    closed: bool,
}

impl HandoffState {
    fn due(&self) -> bool {
        self.closed
            || self.gathered.ready()
            || (!self.gathered.is_empty() && self.next_flush.is_none_or(|at| Instant::now() >= at))
    }
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, HandoffState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Leaves work for the applier (waiting while too much is held).
    fn give(&self, work: Work) {
        let mut state = self.lock();
        while state.gathered.ops.len() >= APPLY_QUEUE_OPS {
            state.writer_waiting = true;
            state = self.room.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
            state.writer_waiting = false;
        }
        // The applier waits without a deadline while nothing is held: the first work must wake
        // it (it then sleeps until the work is due); later work only if it makes the work due.
        let first = state.gathered.is_empty();
        state.gathered.add(work);
        if state.applier_waiting && (first || state.due()) {
            self.work.notify_one();
        }
    }

    /// The writer is gone.
    fn close(&self) {
        self.lock().closed = true;
        self.work.notify_one();
    }

    /// Waits for due work and takes it; `None` once closed and drained.
    fn take(&self) -> Option<Gathered> {
        let mut state = self.lock();
        while !state.due() {
            state.applier_waiting = true;
            state = match state.next_flush.filter(|_| !state.gathered.is_empty()) {
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    self.work.wait_timeout(state, left).unwrap_or_else(std::sync::PoisonError::into_inner).0
                }
                None => self.work.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner),
            };
            state.applier_waiting = false;
        }
        if state.gathered.is_empty() && state.closed {
            return None;
        }
        if state.writer_waiting {
            self.room.notify_one();
        }
        Some(std::mem::take(&mut state.gathered))
    }

    /// The applier committed: under load, the next commit waits until [`APPLY_DELAY`] from now.
    fn flushed(&self) {
        self.lock().next_flush = Some(Instant::now() + APPLY_DELAY);
    }
}

/// Empties both logs, in new epochs (after a checkpoint covered them).
fn clear_logs(wals: &mut [Wal; 2]) -> std::io::Result<()> {
    let epoch = wals.iter().map(Wal::epoch).max().unwrap_or(0);
    for (i, wal) in wals.iter_mut().enumerate() {
        wal.clear(epoch + 1 + i as u64)?;
    }
    Ok(())
}

/// The state of the log that is not receiving records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OtherLog {
    /// Empty: it can become the active log.
    Empty,
    /// Its checkpoint was asked for and has not ended.
    Checkpointing,
    /// Its checkpoint failed: it is kept for the next start's replay.
    Kept,
}

struct Writer {
    /// Two logs: records go to `wals[active]`.
    wals: [Wal; 2],
    active: usize,
    other: OtherLog,
    next_seq: [u64; 2],
    gauges: Arc<[OutboxGauge; 2]>,
    overlay: Overlay,
    /// Keys with a stored answer; added before the answer is readable.
    keys: Arc<KeyFilter>,
    /// Overlay generation of the last logged group.
    generation: u64,
    metrics: Metrics,
    last_checkpoint: Instant,
    /// Requests received while waiting for a checkpoint, handled next.
    backlog: Vec<Request>,
    /// The applier's queue and thread; taken at shutdown.
    applier: Option<(Arc<Handoff>, ApplierThread)>,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Msg>) {
        loop {
            if self.backlog.is_empty() {
                match receiver.blocking_recv() {
                    Some(msg) => self.take(msg),
                    None => break,
                }
            }
            while self.backlog.len() < GROUP_MAX_REQUESTS {
                match receiver.try_recv() {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                }
            }
            if !self.backlog.is_empty() {
                let started = Instant::now();
                let group = std::mem::take(&mut self.backlog);
                self.write(group, &mut receiver);
                self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
            }
            let active = &self.wals[self.active];
            let due = active.len() >= active.capacity() / 2 || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
            if active.len() > 0 && due && self.other == OtherLog::Empty {
                self.switch_logs();
            }
        }
        self.finish();
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Batch(request) => self.backlog.push(request),
            Msg::Checkpointed { log, result } => match result {
                Ok(took) => {
                    let epoch = self.wals.iter().map(Wal::epoch).max().unwrap_or(0) + 1;
                    match self.wals[log].clear(epoch) {
                        Ok(()) => self.other = OtherLog::Empty,
                        Err(error) => {
                            tracing::error!(%error, "cannot empty the write-ahead log; it is kept for replay");
                            self.other = OtherLog::Kept;
                        }
                    }
                    self.metrics.checkpoint_seconds.observe(took.as_secs_f64());
                }
                Err(error) => {
                    tracing::error!(%error, "store checkpoint failed; the logs are kept for the next start's replay");
                    self.other = OtherLog::Kept;
                }
            },
        }
    }

    /// Logs a group (one write, one fsync) if any batch is durable, answers the durable
    /// batches, and hands the group to the applier.
    fn write(&mut self, group: Vec<Request>, receiver: &mut mpsc::UnboundedReceiver<Msg>) {
        let durable = group.iter().any(|r| r.batch.durable);
        let mut resolved = Vec::with_capacity(group.iter().map(|r| r.batch.ops.len()).sum());
        let mut answers = Vec::with_capacity(group.len());
        for Request { batch, done } in group {
            let when_applied = !batch.durable || batch.ops.iter().any(Op::read_back);
            answers.push((done, when_applied));
            for op in batch.ops {
                resolved.push(self.resolve(op));
            }
        }
        if durable {
            if !self.wals[self.active].fits(&resolved) {
                self.make_room(receiver);
            }
            if let Err(e) = self.wals[self.active].append(&resolved) {
                let error = Arc::new(StoreError::Redb(redb::Error::Io(e)));
                tracing::error!(%error, "write-ahead log append failed");
                for (done, _) in answers {
                    let _ = done.send(Err(error.clone()));
                }
                return;
            }
        }
        self.generation += 1;
        {
            let mut overlay = self.overlay.lock().expect("overlay lock");
            for op in &resolved {
                match op {
                    Resolved::PutExecution { key, record, .. } => {
                        self.keys.insert(key);
                        overlay.insert(key.clone(), (self.generation, record.clone()));
                    }
                    Resolved::Enqueue { sink, value, .. } => {
                        let gauge = &self.gauges[sink.index()];
                        gauge.deferred.fetch_add(1, Ordering::SeqCst);
                        gauge.deferred_bytes.fetch_add(value.len() as u64, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        }
        let mut later = Vec::new();
        for (done, when_applied) in answers {
            if when_applied {
                later.push(done);
            } else {
                let _ = done.send(Ok(()));
            }
        }
        self.send(Work::Apply { ops: resolved, done: later, generation: self.generation });
    }

    /// The active log cannot take the next group: switch logs, waiting for the other log's
    /// checkpoint if it runs. If the other log is kept after a failure, the active one grows.
    fn make_room(&mut self, receiver: &mut mpsc::UnboundedReceiver<Msg>) {
        while self.other == OtherLog::Checkpointing {
            match receiver.blocking_recv() {
                Some(msg) => self.take(msg),
                None => return,
            }
        }
        if self.other == OtherLog::Empty {
            self.switch_logs();
        }
    }

    /// Sends new records to the other (empty) log and asks the applier to checkpoint the one
    /// left, after everything already handed to it.
    fn switch_logs(&mut self) {
        let left = self.active;
        self.active = 1 - left;
        self.other = OtherLog::Checkpointing;
        self.last_checkpoint = Instant::now();
        self.send(Work::Checkpoint { log: left });
    }

    fn send(&mut self, work: Work) {
        if let Some((handoff, _)) = &self.applier {
            handoff.give(work);
        }
    }

    /// Every handle is gone: let the applier apply everything and checkpoint, then empty the
    /// logs.
    fn finish(mut self) {
        let Some((handoff, applier)) = self.applier.take() else { return };
        handoff.close();
        match applier.join() {
            Ok(Ok(())) => {
                if let Err(error) = clear_logs(&mut self.wals) {
                    tracing::error!(%error, "cannot empty the write-ahead logs; they are replayed at the next start");
                }
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "final store checkpoint failed; the logs are kept for replay")
            }
            Err(_) => tracing::error!("the store applier thread panicked; the logs are kept for replay"),
        }
    }

    /// Decides sequence numbers and timestamps, so the logged op replays identically.
    fn resolve(&mut self, op: Op) -> Resolved {
        match op {
            Op::PutExecution { key, created_ms, record, clear_in_flight } => {
                Resolved::PutExecution { key, created_ms, record, clear_in_flight }
            }
            Op::PutInFlight { key, record } => Resolved::PutInFlight { key, record },
            Op::PutTask { id, record } => Resolved::PutTask { id, record },
            Op::Enqueue { sink, event_id, trace_id, body } => {
                let seq = self.next_seq[sink.index()];
                self.next_seq[sink.index()] += 1;
                Resolved::Enqueue { sink, seq, value: encode_outbox_value(now_ms(), &event_id, &trace_id, &body) }
            }
            Op::Ack { sink, seq } => Resolved::Ack { sink, seq },
            Op::DeadLetter { sink, seq, reason } => Resolved::DeadLetter { sink, seq, reason, at_ms: now_ms() },
            Op::Expire { before_ms } => Resolved::Expire { before_ms },
        }
    }
}

/// The applier thread; it returns the result of its final checkpoint.
type ApplierThread = std::thread::JoinHandle<Result<(), StoreError>>;

struct Applier {
    db: Arc<Database>,
    gauges: Arc<[OutboxGauge; 2]>,
    bounds: [OutboxBound; 2],
    metrics: Metrics,
    /// Whether each sink is in a drop-oldest episode (logged once when it starts and ends).
    dropping: [bool; 2],
    overlay: Overlay,
    snapshot: Snapshot,
    /// The stored answers' numbering and indexes.
    answers: AnswerLog,
    bells: Arc<[Notify; 2]>,
    /// An apply failed: redb misses logged ops, so nothing may be checkpointed any more.
    failed: bool,
    /// Reports checkpoints without keeping the writer's channel open.
    writer: mpsc::WeakUnboundedSender<Msg>,
}

impl Applier {
    /// Applies what the writer hands over until it hangs up, then checkpoints. Under sustained
    /// load (the last commit is less than [`APPLY_DELAY`] old), groups nobody waits on are held
    /// back until then, so one commit covers many of them; otherwise they apply at once.
    fn run(mut self, handoff: Arc<Handoff>) -> Result<(), StoreError> {
        while let Some(gathered) = handoff.take() {
            self.flush(gathered);
            handoff.flushed();
        }
        self.checkpoint()
    }

    /// Applies what was gathered and checkpoints if asked.
    fn flush(&mut self, gathered: Gathered) {
        let Gathered { ops, done, generation, checkpoint } = gathered;
        if !ops.is_empty() || !done.is_empty() {
            self.apply_live(&ops, done, generation);
        }
        if let Some(log) = checkpoint {
            let started = Instant::now();
            let result = self.checkpoint().map(|()| started.elapsed()).map_err(Arc::new);
            if let Some(writer) = self.writer.upgrade() {
                let _ = writer.send(Msg::Checkpointed { log, result });
            }
        }
    }

    /// Applies a group of groups, publishes the new state to readers, and answers the requests
    /// that waited for it.
    fn apply_live(&mut self, ops: &[Resolved], done: Vec<Done>, generation: u64) {
        let result = if self.failed {
            Err(Arc::new(StoreError::Redb(redb::Error::Io(std::io::Error::other(
                "an earlier store commit failed; restart the executor to replay the write-ahead log",
            )))))
        } else {
            self.apply(ops, true).and_then(|()| self.publish(ops, generation)).map_err(|e| {
                tracing::error!(error = %e, "store commit failed; the write-ahead log keeps the records for replay");
                self.failed = true;
                Arc::new(e)
            })
        };
        for done in done {
            let _ = done.send(result.clone());
        }
        if result.is_ok() {
            self.flush_answer_index();
        }
    }

    /// After a commit: the deferred counts drop, readers see the new snapshot, the overlay
    /// forgets what it holds, and deliverers of sinks with new events are woken.
    fn publish(&self, ops: &[Resolved], generation: u64) -> Result<(), StoreError> {
        // The applied events leave `deferred` first, right after the commit added them to
        // `depth`: until then a sink's events are counted twice (never less than they are), and
        // a fail-closed outbox near its bound refuses executions meanwhile, so the window is kept
        // to a few instructions.
        let mut enqueued = [(0u64, 0u64); 2];
        for op in ops {
            if let Resolved::Enqueue { sink, value, .. } = op {
                enqueued[sink.index()].0 += 1;
                enqueued[sink.index()].1 += value.len() as u64;
            }
        }
        for sink in Sink::ALL {
            let (count, bytes) = enqueued[sink.index()];
            if count > 0 {
                let gauge = &self.gauges[sink.index()];
                gauge.deferred.fetch_sub(count, Ordering::SeqCst);
                gauge.deferred_bytes.fetch_sub(bytes, Ordering::SeqCst);
            }
        }
        self.publish_snapshot()?;
        {
            // Every lookup takes this lock first: hold it only for the answers.
            let mut overlay = self.overlay.lock().expect("overlay lock");
            for op in ops {
                // A newer answer for the same key stays until it is applied too.
                if let Resolved::PutExecution { key, .. } = op
                    && overlay.get(key).is_some_and(|(g, _)| *g <= generation)
                {
                    overlay.remove(key);
                }
            }
        }
        for sink in Sink::ALL {
            if enqueued[sink.index()].0 > 0 {
                self.bells[sink.index()].notify_one();
            }
        }
        Ok(())
    }

    /// Readers see the state as of the last commit.
    fn publish_snapshot(&self) -> Result<(), StoreError> {
        let snapshot = Arc::new(AnswerSnapshot::open(&self.db.begin_read()?)?);
        *self.snapshot.lock().expect("snapshot lock") = snapshot;
        Ok(())
    }

    /// Moves the recent answer index into redb when it is full (see [`crate::answers`]). The
    /// index is derived from the answer rows, so a failure here loses nothing: the entries stay
    /// in memory and the next flush retries.
    fn flush_answer_index(&mut self) {
        if !self.answers.wants_flush() {
            return;
        }
        let started = Instant::now();
        let flushed = (|| {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)?;
            let flushed = self.answers.flush(&txn, &mut Courtesy::new())?;
            txn.commit()?;
            self.publish_snapshot()?;
            Ok::<_, StoreError>(flushed)
        })();
        match flushed {
            Ok(entries) => {
                self.answers.forget();
                tracing::debug!(entries, elapsed = ?started.elapsed(), "answer index flushed");
            }
            Err(error) => tracing::error!(%error, "cannot flush the answer index; it stays in memory"),
        }
    }

    /// One durable commit: every lazy commit before it becomes durable.
    fn checkpoint(&self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Redb(redb::Error::Io(std::io::Error::other(
                "an earlier store commit failed; not checkpointing a store that misses logged records",
            ))));
        }
        self.db.begin_write()?.commit()?;
        Ok(())
    }

    /// Applies resolved ops in one lazy redb commit. `live` is false while replaying the log:
    /// then the drop-oldest policy is not re-applied (replay restores, it does not decide).
    fn apply(&mut self, ops: &[Resolved], live: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        // Gauge changes are published only after the commit succeeds.
        let mut delta = [(0i64, 0i64); 2];
        let mut dropped = [0u64; 2];
        let written = self.write_ops(&txn, ops, live, &mut delta, &mut dropped);
        if let Err(error) = written.and_then(|()| Ok(txn.commit()?)) {
            self.answers.aborted();
            return Err(error);
        }
        self.answers.committed();
        for sink in Sink::ALL {
            let i = sink.index();
            let gauge = &self.gauges[i];
            gauge
                .depth
                .store((gauge.depth.load(Ordering::Relaxed) as i64 + delta[i].0).max(0) as u64, Ordering::Relaxed);
            gauge
                .bytes
                .store((gauge.bytes.load(Ordering::Relaxed) as i64 + delta[i].1).max(0) as u64, Ordering::Relaxed);
            if dropped[i] > 0 {
                self.metrics.events_dropped.with_label_values(&[sink.name()]).inc_by(dropped[i]);
                if !self.dropping[i] {
                    self.dropping[i] = true;
                    tracing::warn!(sink = sink.name(), "outbox full: dropping the oldest events (drop_oldest policy)");
                }
            } else if self.dropping[i] && delta[i].0 > 0 {
                self.dropping[i] = false;
                tracing::info!(sink = sink.name(), "outbox has room again: no longer dropping events");
            }
        }
        Ok(())
    }

    /// Writes `ops` into `txn`, counting outbox changes into `delta` and `dropped`.
    fn write_ops(
        &mut self,
        txn: &redb::WriteTransaction,
        ops: &[Resolved],
        live: bool,
        delta: &mut [(i64, i64); 2],
        dropped: &mut [u64; 2],
    ) -> Result<(), StoreError> {
        {
            let mut answers = txn.open_table(crate::answers::ANSWERS)?;
            let mut in_flight = txn.open_table(IN_FLIGHT)?;
            let mut tasks = crate::tasks::TaskRows::open(txn)?;
            let mut outboxes = [txn.open_table(Sink::Bucket.outbox())?, txn.open_table(Sink::Karma.outbox())?];
            let mut dead = [txn.open_table(Sink::Bucket.dead_letters())?, txn.open_table(Sink::Karma.dead_letters())?];
            let mut courtesy = Courtesy::new();
            for op in ops {
                courtesy.offer();
                match op {
                    Resolved::PutExecution { key, created_ms, record, clear_in_flight } => {
                        self.answers.append(&mut answers, key, *created_ms, record)?;
                        if *clear_in_flight {
                            in_flight.remove(key.as_str())?;
                        }
                    }
                    Resolved::PutInFlight { key, record } => {
                        in_flight.insert(key.as_str(), record.as_slice())?;
                    }
                    Resolved::PutTask { id, record } => tasks.push(id, record)?,
                    Resolved::Enqueue { sink, seq, value } => {
                        let i = sink.index();
                        let bound = self.bounds[i];
                        let gauge = &self.gauges[i];
                        let size = value.len() as i64;
                        if live && bound.drop_oldest {
                            loop {
                                let depth = gauge.depth.load(Ordering::Relaxed) as i64 + delta[i].0;
                                let bytes = gauge.bytes.load(Ordering::Relaxed) as i64 + delta[i].1;
                                if depth < bound.max_events as i64 && bytes + size <= bound.max_bytes as i64 {
                                    break;
                                }
                                let Some((_, old)) = outboxes[i].pop_first()? else { break };
                                delta[i].0 -= 1;
                                delta[i].1 -= old.value().len() as i64;
                                dropped[i] += 1;
                            }
                        }
                        if outboxes[i].insert(*seq, value.as_slice())?.is_none() {
                            delta[i].0 += 1;
                            delta[i].1 += size;
                        }
                    }
                    Resolved::Ack { sink, seq } => {
                        let i = sink.index();
                        if let Some(old) = outboxes[i].remove(*seq)? {
                            delta[i].0 -= 1;
                            delta[i].1 -= old.value().len() as i64;
                        }
                    }
                    Resolved::DeadLetter { sink, seq, reason, at_ms } => {
                        let i = sink.index();
                        let removed = outboxes[i].remove(*seq)?.map(|old| old.value().to_vec());
                        if let Some(old) = removed {
                            delta[i].0 -= 1;
                            delta[i].1 -= old.len() as i64;
                            let event = decode_outbox_value(0, &old);
                            let record = serde_json::json!({
                                "reason": reason,
                                "event_id": event.event_id,
                                "trace_id": event.trace_id,
                                "enqueued_ms": event.enqueued_ms,
                                "dead_lettered_ms": at_ms,
                                "event": serde_json::from_slice::<serde_json::Value>(&event.body).unwrap_or_default(),
                            });
                            dead[i].insert(*seq, serde_json::to_vec(&record).unwrap_or_default().as_slice())?;
                        }
                    }
                    Resolved::Expire { before_ms } => {
                        self.answers.expire(txn, &mut answers, *before_ms, &mut courtesy)?;
                    }
                }
            }
            self.answers.finish_appends(&mut answers)?;
            tasks.finish()?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Opens a store in `dir` with small outbox bounds.
    pub(crate) fn open(dir: &Path) -> (Store, WriterThread) {
        let bound = OutboxBound { max_events: 10, max_bytes: 1 << 20, drop_oldest: false };
        Store::open(dir, 1 << 20, [bound; 2], Metrics::new()).expect("store")
    }

    /// Drops the last handle and waits for the store's threads.
    pub(crate) async fn close(store: Store, writer: WriterThread) {
        drop(store);
        tokio::task::spawn_blocking(move || writer.join()).await.expect("writer joined");
    }

    /// Stores the answer `answer for <key>`.
    pub(crate) fn put(key: &str, created_ms: u64) -> Op {
        Op::PutExecution {
            key: key.to_owned(),
            created_ms,
            record: Bytes::from(format!("answer for {key}")),
            clear_in_flight: false,
        }
    }

    /// An `Expire` removes the answers logged before it (in the same commit too), not those
    /// logged after it.
    #[tokio::test]
    async fn expiry_removes_answers_logged_before_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, writer) = open(dir.path());
        let now = now_ms();
        let ops =
            vec![put("z-before", now), put("a-before", now), Op::Expire { before_ms: now + 1 }, put("m-after", now)];
        // An `Expire` is answered once applied, so the lookups below read redb, not the overlay.
        store.commit(Batch { ops, durable: true }).await.expect("commit");
        assert_eq!(store.get_execution("z-before").expect("read"), None);
        assert_eq!(store.get_execution("a-before").expect("read"), None);
        assert_eq!(store.get_execution("m-after").expect("read"), Some(Bytes::from("answer for m-after")));
        close(store, writer).await;
    }

    /// Answers only in the write-ahead log (the process died before applying them) are found
    /// right after the next start, before anything else is committed.
    #[tokio::test]
    async fn answers_replayed_from_the_log_are_found_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (mut wal, _) = Wal::open(&dir.path().join("executor.wal.0"), 1 << 20).expect("log");
            let answer = Bytes::from("answer for logged");
            let logged = Resolved::PutExecution {
                key: "logged".into(),
                created_ms: now_ms(),
                record: answer,
                clear_in_flight: false,
            };
            wal.append(&[logged]).expect("append");
        }
        let (store, writer) = open(dir.path());
        assert_eq!(store.get_execution("logged").expect("read"), Some(Bytes::from("answer for logged")));
        close(store, writer).await;
    }

    /// Reports, when dropped, whether the answer for `key` was readable by then.
    struct Claim {
        store: Store,
        key: &'static str,
        report: Option<oneshot::Sender<bool>>,
    }

    impl Drop for Claim {
        fn drop(&mut self) {
            let stored = self.store.get_execution(self.key).is_ok_and(|answer| answer.is_some());
            if let Some(report) = self.report.take() {
                let _ = report.send(stored);
            }
        }
    }

    /// A commit whose waiter is dropped after its first poll (a caller that hung up) still
    /// happens, and what it holds is released only once the commit has ended.
    #[tokio::test]
    async fn a_dropped_commit_completes_and_holds_its_claim_until_then() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, writer) = open(dir.path());
        let (report, released) = oneshot::channel();
        let claim = Claim { store: store.clone(), key: "dropped", report: Some(report) };
        let mut commit =
            Box::pin(store.commit_holding(Batch { ops: vec![put("dropped", now_ms())], durable: true }, claim));
        let first = commit.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        assert!(first.is_pending(), "a commit cannot be durable before the writer has run");
        drop(commit);
        let stored_when_released =
            tokio::time::timeout(Duration::from_secs(30), released).await.expect("claim released").expect("report");
        assert!(stored_when_released, "the claim was released before the answer was stored");
        assert_eq!(store.get_execution("dropped").expect("read"), Some(Bytes::from("answer for dropped")));
        close(store, writer).await;
    }
}
