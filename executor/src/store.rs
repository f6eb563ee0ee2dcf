//! The embedded durable store (redb) and its group-commit writer.
//!
//! One file, `executor.redb` in the data directory, holds everything that must survive a crash:
//! execution records (for idempotent replays), in-flight markers (to report unknown outcomes after a
//! crash), tasks created by the task adapter, and one outbox table plus one dead-letter table per
//! sink.
//!
//! **Group commit.** All writes go through one writer thread: callers send a [`Batch`] of
//! [`Op`]s and await its commit; the thread drains everything queued and commits it at once, so
//! concurrent requests share one fsync. A batch asks for a durable commit (execution results and
//! their events) or a lazy one (delivery acknowledgements: losing one only re-sends an event,
//! which sinks drop by `event_id`). Durable batches are made durable by the write-ahead log
//! ([`crate::wal`]): one write and fsync, instead of rewriting every B-tree page a batch touched;
//! redb itself is committed lazily and checkpointed periodically.
//!
//! **Checkpoints off the request path.** A checkpoint (the durable redb commit that lets a log be
//! emptied) writes out every page dirtied since the last one, which takes tens of milliseconds.
//! It runs on its own thread while the writer keeps going: there are two logs, and a checkpoint
//! switches new records to the other one. While it runs, durable batches are logged and
//! acknowledged as usual but applied to redb only after it ends; their stored answers are served
//! from an in-memory overlay meanwhile ([`Store::get_execution`]), and their events count in the
//! outbox gauges. Lazy batches (delivery acknowledgements) wait for the apply.
//!
//! **Outbox accounting.** The writer is the only mutator of the outbox tables, so it keeps each
//! sink's exact depth and byte count in [`OutboxGauge`]s and applies the drop-oldest policy itself.
//! Outbox values are the event's enqueue time (8 bytes, big-endian milliseconds) followed by the
//! JSON body to post.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::wal::{Resolved, Wal};

/// Idempotency key -> stored execution (JSON).
pub(crate) const EXECUTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("executions");
/// (created-at millis, idempotency key) -> (); the retention index.
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("execution_expiry");
/// Idempotency key -> marker (JSON) for executions whose provider call may have started.
pub(crate) const IN_FLIGHT: TableDefinition<&str, &[u8]> = TableDefinition::new("in_flight");
/// Task id -> task (JSON).
pub(crate) const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

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
        /// Serialized stored execution.
        record: Vec<u8>,
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

struct Request {
    batch: Batch,
    done: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

/// What the writer thread receives.
enum Msg {
    /// A batch to commit.
    Batch(Request),
    /// A checkpoint thread finished (the writer collects its result).
    CheckpointEnded,
}

/// Stored answers logged but not yet applied to redb (during a checkpoint).
type Overlay = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// Exact depth and size of one sink's outbox, maintained by the writer.
#[derive(Debug, Default)]
pub struct OutboxGauge {
    /// Events waiting.
    pub depth: AtomicU64,
    /// Bytes waiting.
    pub bytes: AtomicU64,
    /// Events logged during a checkpoint and not yet applied (not in `depth` yet).
    pub deferred: AtomicU64,
}

impl OutboxGauge {
    /// Events waiting, including those not applied yet.
    pub fn events(&self) -> u64 {
        self.depth.load(Ordering::SeqCst) + self.deferred.load(Ordering::SeqCst)
    }
}

/// Bounds and policy the writer applies to one outbox.
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
    overlay: Overlay,
}

/// Joins the writer thread after the last [`Store`] handle is gone.
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Waits for the writer to apply what is queued and make it durable.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the store writer thread panicked");
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts the writer thread.
    pub fn open(
        dir: &Path,
        wal_bytes: u64,
        bounds: [OutboxBound; 2],
        metrics: Metrics,
    ) -> Result<(Store, WriterThread), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Redb(redb::Error::Io(e)))?;
        let db = Arc::new(Database::builder().set_cache_size(CACHE_BYTES).create(dir.join("executor.redb"))?);
        let gauges: Arc<[OutboxGauge; 2]> = Arc::new(Default::default());
        {
            // Create every table up front and count what a previous run left queued.
            let txn = db.begin_write()?;
            txn.open_table(EXECUTIONS)?;
            txn.open_table(EXPIRY)?;
            txn.open_table(IN_FLIGHT)?;
            txn.open_table(TASKS)?;
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
        let next_seq = {
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
            let (wal, batches) = Wal::open(&dir.join(format!("executor.wal.{i}")), wal_bytes)
                .map_err(|e| StoreError::Redb(redb::Error::Io(e)))?;
            logged.push((wal.epoch(), batches));
            wals.push(wal);
        }
        // The log with the older epoch holds the older records.
        logged.sort_by_key(|(epoch, _)| *epoch);
        let wals: [Wal; 2] = wals.try_into().unwrap_or_else(|_| unreachable!("two logs"));
        let (sender, receiver) = mpsc::unbounded_channel();
        let overlay = Overlay::default();
        let mut writer = Writer {
            db: db.clone(),
            wals,
            active: 0,
            gauges: gauges.clone(),
            bounds,
            next_seq,
            metrics,
            dropping: [false; 2],
            last_checkpoint: Instant::now(),
            overlay: overlay.clone(),
            wake: sender.downgrade(),
            checkpoint: None,
            deferred: Vec::new(),
            waiting: Vec::new(),
        };
        let batches: Vec<Vec<Resolved>> = logged.into_iter().flat_map(|(_, batches)| batches).collect();
        if !batches.is_empty() {
            tracing::info!(batches = batches.len(), "replaying the store's write-ahead log");
            for batch in &batches {
                for op in batch {
                    if let Resolved::Enqueue { sink, seq, .. } = op {
                        let next = &mut writer.next_seq[sink.index()];
                        *next = (*next).max(seq + 1);
                    }
                }
                writer.apply(batch, false)?;
            }
        }
        writer.checkpoint_now()?;
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Redb(redb::Error::Io(e)))?;
        Ok((Store { db, sender, gauges, overlay }, WriterThread(thread)))
    }

    /// Applies `batch` atomically and waits for its commit.
    pub async fn commit(&self, batch: Batch) -> Result<(), Arc<StoreError>> {
        let (done, wait) = oneshot::channel();
        self.sender.send(Msg::Batch(Request { batch, done })).map_err(|_| Arc::new(StoreError::Closed))?;
        wait.await.map_err(|_| Arc::new(StoreError::Closed))?
    }

    /// Depth and size of a sink's outbox.
    pub fn gauge(&self, sink: Sink) -> &OutboxGauge {
        &self.gauges[sink.index()]
    }

    /// The stored answer for an idempotency key, including one logged but not yet applied.
    pub fn get_execution(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(record) = self.overlay.lock().expect("overlay lock").get(key) {
            return Ok(Some(record.clone()));
        }
        self.get(EXECUTIONS, key)
    }

    /// Reads one value of a `&str -> bytes` table.
    pub fn get(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
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
/// the hot pages (the outbox heads and the newest records) fit in far less.
const CACHE_BYTES: usize = 32 << 20;

/// Checkpoint when the log is full (`EXECUTOR_WAL_BYTES`) or when the last checkpoint is this old.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

struct Writer {
    db: Arc<Database>,
    /// Two logs: records go to `wals[active]`; the other is empty, or being checkpointed.
    wals: [Wal; 2],
    active: usize,
    gauges: Arc<[OutboxGauge; 2]>,
    bounds: [OutboxBound; 2],
    next_seq: [u64; 2],
    metrics: Metrics,
    /// Whether each sink is in a drop-oldest episode (logged once when it starts and ends).
    dropping: [bool; 2],
    last_checkpoint: Instant,
    overlay: Overlay,
    /// Lets a checkpoint thread wake the writer without keeping the channel open.
    wake: mpsc::WeakUnboundedSender<Msg>,
    /// The running checkpoint, if any.
    checkpoint: Option<std::thread::JoinHandle<Result<Duration, StoreError>>>,
    /// Ops logged while a checkpoint runs, applied when it ends.
    deferred: Vec<Resolved>,
    /// Requests answered only once their ops are applied.
    waiting: Vec<oneshot::Sender<Result<(), Arc<StoreError>>>>,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Msg>) {
        let mut pending = Vec::new();
        while let Some(first) = receiver.blocking_recv() {
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                if let Msg::Batch(request) = msg {
                    pending.push(request);
                }
                if pending.len() < 4096 {
                    next = receiver.try_recv().ok();
                }
            }
            if self.checkpoint.as_ref().is_some_and(|c| c.is_finished()) {
                self.end_checkpoint();
            }
            if !pending.is_empty() {
                let started = Instant::now();
                self.write(&mut pending);
                self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
            }
            let active = &self.wals[self.active];
            let due = active.len() >= active.capacity() / 2 || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
            if self.checkpoint.is_none() && active.len() > 0 && due {
                self.start_checkpoint();
            }
        }
        // Every handle is gone: finish, make everything durable in redb and empty the logs.
        if self.checkpoint.is_some() {
            self.end_checkpoint();
        }
        if let Err(e) = self.checkpoint_now() {
            tracing::error!(error = %e, "final store checkpoint failed; the log is kept for replay");
        }
    }

    /// Resolves the batches, logs them if any must be durable, then applies them to redb (or,
    /// during a checkpoint, defers them), and answers the requests.
    fn write(&mut self, pending: &mut Vec<Request>) {
        let durable = pending.iter().any(|r| r.batch.durable);
        let resolved: Vec<Resolved> =
            pending.iter_mut().flat_map(|r| r.batch.ops.drain(..)).map(|op| self.resolve(op)).collect();
        if durable {
            if !self.wals[self.active].fits(&resolved) {
                // The log is full: the other one must be free before records can go there.
                if self.checkpoint.is_some() {
                    self.end_checkpoint();
                }
                self.start_checkpoint();
            }
            if let Err(e) = self.wals[self.active].append(&resolved) {
                let error = Arc::new(StoreError::Redb(redb::Error::Io(e)));
                tracing::error!(%error, "write-ahead log append failed");
                for request in pending.drain(..) {
                    let _ = request.done.send(Err(error.clone()));
                }
                return;
            }
        }
        if self.checkpoint.is_some() {
            let mut overlay = self.overlay.lock().expect("overlay lock");
            for op in &resolved {
                match op {
                    Resolved::PutExecution { key, record, .. } => {
                        overlay.insert(key.clone(), record.clone());
                    }
                    Resolved::Enqueue { sink, .. } => {
                        self.gauges[sink.index()].deferred.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
            drop(overlay);
            self.deferred.extend(resolved);
            for request in pending.drain(..) {
                if request.batch.durable {
                    let _ = request.done.send(Ok(()));
                } else {
                    self.waiting.push(request.done);
                }
            }
            return;
        }
        let result = self.apply(&resolved, true).map_err(|e| {
            tracing::error!(error = %e, "store commit failed");
            Arc::new(e)
        });
        for request in pending.drain(..) {
            let _ = request.done.send(result.clone());
        }
    }

    /// Switches records to the other log and checkpoints on another thread everything applied
    /// so far (which includes every record of the log just left).
    fn start_checkpoint(&mut self) {
        let other = 1 - self.active;
        if self.wals[other].len() > 0 {
            // The other log was not emptied (a failed checkpoint): checkpoint both, here.
            if let Err(e) = self.checkpoint_now() {
                tracing::error!(error = %e, "store checkpoint failed; the logs are kept for replay");
            }
            return;
        }
        self.active = other;
        let db = self.db.clone();
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new().name("store-checkpoint".into()).spawn(move || {
            let started = Instant::now();
            let result = db.begin_write().map_err(StoreError::from).and_then(|txn| Ok(txn.commit()?));
            if let Some(sender) = wake.upgrade() {
                let _ = sender.send(Msg::CheckpointEnded);
            }
            result.map(|()| started.elapsed())
        });
        match spawned {
            Ok(handle) => self.checkpoint = Some(handle),
            Err(e) => tracing::error!(error = %e, "cannot start a checkpoint thread"),
        }
    }

    /// Collects the checkpoint's result, applies what was deferred, and empties the log it
    /// made durable.
    fn end_checkpoint(&mut self) {
        let Some(handle) = self.checkpoint.take() else { return };
        let outcome = handle.join().unwrap_or_else(|_| {
            Err(StoreError::Redb(redb::Error::Io(std::io::Error::other("the checkpoint thread panicked"))))
        });
        let deferred = std::mem::take(&mut self.deferred);
        for op in &deferred {
            if let Resolved::Enqueue { sink, .. } = op {
                self.gauges[sink.index()].deferred.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let applied = self.apply(&deferred, true).map_err(|e| {
            tracing::error!(error = %e, "store commit failed");
            Arc::new(e)
        });
        self.overlay.lock().expect("overlay lock").clear();
        for done in self.waiting.drain(..) {
            let _ = done.send(applied.clone());
        }
        match outcome {
            Ok(took) => {
                let checkpointed = 1 - self.active;
                let epoch = self.wals.iter().map(Wal::epoch).max().unwrap_or(0) + 1;
                if let Err(e) = self.wals[checkpointed].clear(epoch) {
                    tracing::error!(error = %e, "cannot empty the write-ahead log");
                }
                self.last_checkpoint = Instant::now();
                self.metrics.checkpoint_seconds.observe(took.as_secs_f64());
            }
            Err(e) => tracing::error!(error = %e, "store checkpoint failed; the log is kept for replay"),
        }
    }

    /// Checkpoints on this thread and empties both logs (start and shutdown).
    fn checkpoint_now(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.db.begin_write()?.commit()?;
        let epoch = self.wals.iter().map(Wal::epoch).max().unwrap_or(0);
        for (i, wal) in self.wals.iter_mut().enumerate() {
            wal.clear(epoch + 1 + i as u64).map_err(|e| StoreError::Redb(redb::Error::Io(e)))?;
        }
        self.active = 0;
        self.last_checkpoint = Instant::now();
        self.metrics.checkpoint_seconds.observe(started.elapsed().as_secs_f64());
        Ok(())
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

    /// Applies resolved ops in one lazy redb commit. `live` is false while replaying the log:
    /// then the drop-oldest policy is not re-applied (replay restores, it does not decide).
    fn apply(&mut self, ops: &[Resolved], live: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        // Gauge changes are published only after the commit succeeds.
        let mut delta = [(0i64, 0i64); 2];
        let mut dropped = [0u64; 2];
        {
            let mut executions = txn.open_table(EXECUTIONS)?;
            let mut expiry = txn.open_table(EXPIRY)?;
            let mut in_flight = txn.open_table(IN_FLIGHT)?;
            let mut tasks = txn.open_table(TASKS)?;
            let mut outboxes = [txn.open_table(Sink::Bucket.outbox())?, txn.open_table(Sink::Karma.outbox())?];
            let mut dead = [txn.open_table(Sink::Bucket.dead_letters())?, txn.open_table(Sink::Karma.dead_letters())?];
            for op in ops {
                match op {
                    Resolved::PutExecution { key, created_ms, record, clear_in_flight } => {
                        executions.insert(key.as_str(), record.as_slice())?;
                        expiry.insert((*created_ms, key.as_str()), ())?;
                        if *clear_in_flight {
                            in_flight.remove(key.as_str())?;
                        }
                    }
                    Resolved::PutInFlight { key, record } => {
                        in_flight.insert(key.as_str(), record.as_slice())?;
                    }
                    Resolved::PutTask { id, record } => {
                        tasks.insert(id.as_str(), record.as_slice())?;
                    }
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
                        let old: Vec<(u64, String)> = expiry
                            .range::<(u64, &str)>(..(*before_ms, ""))?
                            .map(|e| e.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                            .collect::<Result<_, _>>()?;
                        for (at, key) in old {
                            expiry.remove((at, key.as_str()))?;
                            executions.remove(key.as_str())?;
                        }
                    }
                }
            }
        }
        txn.commit()?;
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
            self.metrics.outbox_depth.with_label_values(&[sink.name()]).set(gauge.depth.load(Ordering::Relaxed) as i64);
            self.metrics.outbox_bytes.with_label_values(&[sink.name()]).set(gauge.bytes.load(Ordering::Relaxed) as i64);
        }
        Ok(())
    }
}
