//! The embedded backend: the [`Store`] boundary on fjall, in `EXECUTOR_DATA_DIR`.
//!
//! **Tables.** One fjall keyspace each: `answers` (key → fingerprint and answer), `answer_times`
//! (creation time and key, for expiry), `in_flight` (key → marker), `tasks`, per sink an outbox
//! (sequence number → event) and its dead letters (in the order given up on), and `meta`. fjall
//! checksums every journal batch and table block and checks them on read; a batch is atomic
//! across keyspaces.
//!
//! **One writer, grouped syncs.** Every write goes through one committer thread: it takes all
//! queued jobs, writes them as one fjall batch and syncs the journal once if any of them must be
//! durable, then answers them all. Delivery acknowledgements are not synced on their own; the
//! next durable group or the committer's one-second tick makes them durable.
//!
//! **Lost writes are noticed.** fjall takes some damage in the middle of its journal for the end
//! of it and replays only what comes before. So every group carries a number (in `meta`), and the
//! number of the last synced group is noted in `synced-group` beside the database, after the
//! sync: a start that replays fewer groups refuses instead of forgetting acknowledged work.
//!
//! **Failures.** fjall refuses every write after a failed journal write (it cannot know what
//! reached the disk). The committer then marks the store failing, answers new jobs with
//! [`StoreError::Unavailable`], keeps the outcomes (with their claims), and every second reopens
//! the database (which recovers it from what is durable) and records them. Depth counters are
//! recounted from disk after such a recovery.
//!
//! **Claims** live in memory: one process owns the directory (fjall's lock file), so an
//! in-flight marker found at open belongs to a dead process and is handed out by `abandoned`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, OwnedWriteBatch, PersistMode};
use serde_json::Value;
use tokio::sync::{Notify, oneshot};

use super::{
    Abandoned, Claim, ClaimGuard, Health, InFlightMarker, LeasedEvent, OutboxBound, OutboxDepth, Outcome, Settlement,
    Sink, Store, StoreError, StoreFuture, Write,
};
use crate::clock::now_ms;
use crate::metrics::Metrics;

/// fjall's block cache and each keyspace's memtable: enough for the outbox heads and recent keys.
const CACHE_BYTES: u64 = 16 << 20;
const MEMTABLE_BYTES: u64 = 4 << 20;
static SILENT_PANICS: Mutex<()> = Mutex::new(());
/// The meta key of the last write group, and the file that notes the last one synced.
const GROUP: &str = "group";
const MARK: &str = "synced-group";
/// How long lazy writes (acknowledgements, expiry) may wait for a sync, and how often a failing
/// store tries to recover.
const TICK: Duration = Duration::from_secs(1);
/// Jobs written in one group at most.
const GROUP_JOBS: usize = 4096;

/// Why the store could not be opened; every message names `EXECUTOR_DATA_DIR` and the path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory cannot be created or used.
    #[error("EXECUTOR_DATA_DIR={dir}: cannot use the directory: {1}", dir = .0.display())]
    Directory(PathBuf, std::io::Error),
    /// Another process holds the store.
    #[error("EXECUTOR_DATA_DIR={dir}: another executor holds the lock on {dir}/lock; stop it or use another directory", dir = .0.display())]
    Locked(PathBuf),
    /// No room on the device.
    #[error("EXECUTOR_DATA_DIR={dir}: no space left on the device holding the store; free space or move the directory", dir = .0.display())]
    NoSpace(PathBuf),
    /// A checksum or format check failed.
    #[error(
        "EXECUTOR_DATA_DIR={dir}: the store is damaged ({1}); refusing to start so that no acknowledged execution is lost \
         or repeated. Restore the directory from a backup, or move it aside to start empty (retries of earlier \
         requests would then execute again)", dir = .0.display()
    )]
    Damaged(PathBuf, String),
}

/// The keyspaces of one open database.
struct Tables {
    db: Database,
    answers: Keyspace,
    answer_times: Keyspace,
    in_flight: Keyspace,
    tasks: Keyspace,
    outbox: [Keyspace; 2],
    dead: [Keyspace; 2],
    meta: Keyspace,
}

impl Tables {
    /// Opens the database and checks that its journal replays every acknowledged write group.
    fn open(dir: &Path) -> Result<Self, fjall::Error> {
        // fjall asserts on some damaged journal entries: a damaged store, reported without a panic
        // message (the hook is process-wide: one open at a time swaps it).
        let opened = {
            let _one_at_a_time = SILENT_PANICS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let opened = std::panic::catch_unwind(|| Self::open_unchecked(dir));
            std::panic::set_hook(hook);
            opened
        };
        let tables = opened.unwrap_or_else(|_| {
            tracing::error!(dir = %dir.display(), "the storage engine failed on the store's files: they are damaged");
            Err(fjall::Error::Unrecoverable)
        })?;
        let replayed = tables.meta.get(GROUP)?.map_or(0, |v| seq_of(&v));
        let marked = std::fs::read(dir.join(MARK)).ok().map_or(0, |v| seq_of(&v));
        if replayed < marked {
            tracing::error!(replayed, marked, dir = %dir.display(), "the journal lost acknowledged write groups \
                (synced-group notes more than it replays); if only synced-group is damaged, remove it to start");
            return Err(fjall::Error::Unrecoverable);
        }
        Ok(tables)
    }

    fn open_unchecked(dir: &Path) -> Result<Self, fjall::Error> {
        let db = Database::builder(dir).manual_journal_persist(true).cache_size(CACHE_BYTES).open()?;
        // Answers and tasks are written once and read by key: their values go to blob files, so
        // compaction moves keys only; a deeper level 0 compacts less often.
        let keyspace = |name: &str| {
            let blobs =
                matches!(name, "answers" | "tasks").then(|| KvSeparationOptions::default().separation_threshold(200));
            let compaction = Arc::new(fjall::compaction::Leveled::default().with_l0_threshold(16));
            let options = KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
            db.keyspace(name, || options.compaction_strategy(compaction).with_kv_separation(blobs))
        };
        Ok(Self {
            answers: keyspace("answers")?,
            answer_times: keyspace("answer_times")?,
            in_flight: keyspace("in_flight")?,
            tasks: keyspace("tasks")?,
            outbox: [keyspace("outbox_bucket")?, keyspace("outbox_karma")?],
            dead: [keyspace("dead_bucket")?, keyspace("dead_karma")?],
            meta: keyspace("meta")?,
            db,
        })
    }

    fn get(&self, table: Table) -> &Keyspace {
        match table {
            Table::Answers => &self.answers,
            Table::AnswerTimes => &self.answer_times,
            Table::InFlight => &self.in_flight,
            Table::Tasks => &self.tasks,
        }
    }
}

/// A lease (or the attempts) of one event.
struct Lease {
    until: Option<Instant>,
    attempts: u32,
    size: u64,
}

/// One sink's counters, leases and bell.
#[derive(Default)]
struct SinkSide {
    depth: AtomicU64,
    bytes: AtomicU64,
    dead: AtomicU64,
    dropped: AtomicU64,
    /// Every sequence number below it is gone from the outbox.
    head: AtomicU64,
    leases: Mutex<HashMap<u64, Lease>>,
    bell: Notify,
}

impl SinkSide {
    fn count(&self, events: i64, bytes: i64) {
        self.depth.fetch_add(events as u64, Ordering::SeqCst);
        self.bytes.fetch_add(bytes as u64, Ordering::SeqCst);
    }
}

/// The tables written by key alone.
#[derive(Clone, Copy)]
enum Table {
    Answers,
    AnswerTimes,
    InFlight,
    Tasks,
}

/// One change, as the committer writes it. An event's sequence number and enqueue time are set
/// when it is first written, in write order, so a lease never passes a number still to be written.
enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Remove(Table, Vec<u8>),
    Event(Sink, Option<u64>, Vec<u8>),
    Delivered(Sink, u64),
    Dead(Sink, u64, Vec<u8>),
}

/// Events taken out by the drop-oldest policy in one write, per sink: (sequence number, bytes).
type Dropped = [Vec<(u64, u64)>; 2];

struct Job {
    ops: Vec<Op>,
    durable: bool,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// Released once the job is recorded (or dropped with it).
    claim: Option<ClaimGuard>,
    keep: bool,
}

enum Msg {
    Job(Job),
    Close(oneshot::Sender<()>),
}

#[derive(Default)]
struct Inner {
    dir: PathBuf,
    tables: RwLock<Option<Arc<Tables>>>,
    claims: Mutex<HashMap<String, String>>,
    sinks: [SinkSide; 2],
    bounds: [OutboxBound; 2],
    next_seq: [AtomicU64; 2],
    next_dead: [AtomicU64; 2],
    failing: Mutex<Option<String>>,
    unrecorded: AtomicU64,
    abandoned: Mutex<Vec<(String, InFlightMarker)>>,
    /// The last write group in the journal, and the file that notes the last one synced.
    group: AtomicU64,
    mark: Mutex<Option<std::fs::File>>,
    closed: AtomicBool,
    metrics: Metrics,
}

/// The embedded store. Cheap to share; [`Store::close`] stops it.
pub struct Embedded {
    inner: Arc<Inner>,
    jobs: Mutex<Option<mpsc::Sender<Msg>>>,
}

impl Embedded {
    /// Opens (or creates) the store in `dir`. Blocking.
    pub fn open(dir: &Path, bounds: [OutboxBound; 2], metrics: Metrics) -> Result<Arc<Embedded>, OpenError> {
        let directory = |source| OpenError::Directory(dir.to_owned(), source);
        std::fs::create_dir_all(dir).map_err(directory)?;
        let journals = journal_contents(dir);
        let tables = Tables::open(dir).map_err(|error| open_error(dir, error))?;
        for (content, path) in journals {
            let kept = std::fs::metadata(&path).map_or(content, |m| m.len());
            if kept < content {
                tracing::warn!(file = %path.display(), discarded_bytes = content - kept, "the journal's incomplete last \
                    batch (a crash mid-write) was discarded; every synced write group was replayed");
            }
        }
        let inner = Arc::new(Inner { dir: dir.to_owned(), bounds, metrics, ..Inner::default() });
        let mut abandoned = Vec::new();
        for item in tables.in_flight.iter() {
            let (key, value) = item.into_inner().map_err(|e| open_error(dir, e))?;
            let marker = serde_json::from_slice(&value).map_err(|e| OpenError::Damaged(dir.into(), e.to_string()))?;
            abandoned.push((String::from_utf8_lossy(&key).into_owned(), marker));
        }
        *inner.abandoned.lock().expect("abandoned lock") = abandoned;
        inner.recount(&tables).map_err(|e| open_error(dir, e))?;
        let mark = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(MARK));
        *inner.mark.lock().expect("mark lock") = Some(mark.map_err(directory)?);
        *inner.tables.write().expect("tables lock") = Some(Arc::new(tables));
        let (sender, jobs) = mpsc::channel();
        let (committer, thread) = (inner.clone(), std::thread::Builder::new().name("store-committer".into()));
        thread.spawn(move || committer.run(jobs)).map_err(directory)?;
        Ok(Arc::new(Embedded { inner, jobs: Mutex::new(Some(sender)) }))
    }

    fn send(&self, ops: Vec<Op>, durable: bool, claim: Option<ClaimGuard>, keep: bool) -> StoreFuture<'_, ()> {
        let (done, wait) = oneshot::channel();
        let job = Job { ops, durable, done: Some(done), claim, keep };
        // A job that cannot be sent is dropped with its sender: the wait then ends as closed.
        let _ = self.jobs.lock().expect("jobs lock").as_ref().map(|jobs| jobs.send(Msg::Job(job)));
        Box::pin(async move { wait.await.unwrap_or(Err(StoreError::Closed)) })
    }
}

impl Inner {
    fn tables(&self) -> Result<Arc<Tables>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let tables = self.tables.read().expect("tables lock").clone();
        tables.ok_or_else(|| StoreError::Unavailable(self.cause()))
    }

    fn cause(&self) -> String {
        self.failing.lock().expect("failing lock").clone().unwrap_or_else(|| "recovering".into())
    }

    /// Counts what each outbox holds and where the sequence numbers go on.
    fn recount(&self, tables: &Tables) -> Result<(), fjall::Error> {
        self.group.store(tables.meta.get(GROUP)?.map_or(0, |v| seq_of(&v)), Ordering::SeqCst);
        for sink in Sink::ALL {
            let i = sink.index();
            let (mut depth, mut bytes, mut first, mut last) = (0, 0, None, 0);
            for item in tables.outbox[i].iter() {
                let (key, value) = item.into_inner()?;
                let seq = seq_of(&key);
                first.get_or_insert(seq);
                last = seq;
                depth += 1;
                bytes += value.len() as u64;
            }
            let side = &self.sinks[i];
            side.depth.store(depth, Ordering::SeqCst);
            side.bytes.store(bytes, Ordering::SeqCst);
            side.head.store(first.unwrap_or(last + 1), Ordering::SeqCst);
            side.dead.store(tables.dead[i].len()? as u64, Ordering::SeqCst);
            let order = tables.dead[i].last_key_value().map(|g| g.key()).transpose()?;
            self.next_dead[i]
                .fetch_max(order.map_or(0, |k| seq_of(k.get(..8).unwrap_or_default())) + 1, Ordering::SeqCst);
            // Numbers of delivered events may come again: nothing refers to them any more.
            self.next_seq[i].fetch_max(last + 1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The committer thread: groups jobs, writes them, and recovers from write failures.
    fn run(self: Arc<Self>, jobs: mpsc::Receiver<Msg>) {
        let mut kept: Vec<Job> = Vec::new();
        let (mut unsynced, mut last_try) = (false, Instant::now());
        loop {
            let mut group = Vec::new();
            let mut close = None;
            match jobs.recv_timeout(TICK) {
                Ok(Msg::Job(job)) => group.push(job),
                Ok(Msg::Close(done)) => close = Some(done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while close.is_none() && group.len() < GROUP_JOBS {
                match jobs.try_recv() {
                    Ok(Msg::Job(job)) => group.push(job),
                    Ok(Msg::Close(done)) => close = Some(done),
                    Err(_) => break,
                }
            }
            // A failing store tries to recover at most once a tick, whatever the traffic.
            let failing = self.failing.lock().expect("failing lock").is_some();
            let retry = failing && last_try.elapsed() >= TICK;
            if retry {
                last_try = Instant::now();
            }
            let writable = !failing || (retry && self.recover());
            if writable && !kept.is_empty() {
                let count = kept.len();
                match self.write(std::mem::take(&mut kept)) {
                    Ok(()) => tracing::warn!(count, "outcomes reached while the store failed are recorded now"),
                    Err(jobs) => kept = jobs,
                }
                // A failed write may have reached the journal after all: count what is there.
                if let (true, Ok(tables)) = (kept.is_empty(), self.tables()) {
                    let _ = self.recount(&tables);
                }
                self.unrecorded.store(kept.len() as u64, Ordering::SeqCst);
            }
            // Recovered once what was kept is recorded, not when the probe passes.
            if failing && writable && kept.is_empty() {
                self.recovered();
            }
            if !group.is_empty() {
                let lazy = group.iter().all(|job| !job.durable);
                match writable && kept.is_empty() {
                    true => match self.write(group) {
                        Ok(()) => unsynced = lazy,
                        Err(failed) => self.refuse(failed, &mut kept),
                    },
                    false => self.refuse(group, &mut kept),
                }
            } else if unsynced && let Ok(tables) = self.tables() {
                unsynced = tables.db.persist(PersistMode::SyncData).is_err();
            }
            if let Some(done) = close {
                if let Ok(tables) = self.tables()
                    && tables.db.persist(PersistMode::SyncAll).is_ok()
                {
                    self.mark(self.group.load(Ordering::SeqCst));
                }
                self.closed.store(true, Ordering::Release);
                *self.tables.write().expect("tables lock") = None;
                let _ = done.send(());
                break;
            }
        }
    }

    /// Answers jobs the store cannot write now; keeps those that asked to be kept.
    fn refuse(&self, jobs: Vec<Job>, kept: &mut Vec<Job>) {
        for mut job in jobs {
            let _ = job.done.take().map(|done| done.send(Err(StoreError::Unavailable(self.cause()))));
            if job.keep {
                kept.push(job);
            }
        }
        self.unrecorded.store(kept.len() as u64, Ordering::SeqCst);
    }

    /// Whether a failing database takes writes again, reopening it if fjall refuses them.
    fn recover(&self) -> bool {
        // A probe: a write and a sync on the running database, or a reopen if fjall refuses.
        if let Ok(tables) = self.tables() {
            let mut probe = tables.db.batch();
            probe.remove(&tables.in_flight, "\0probe");
            if probe.commit().and_then(|()| tables.db.persist(PersistMode::SyncData)).is_ok() {
                return true;
            }
            drop(tables);
            *self.tables.write().expect("tables lock") = None;
        }
        self.reopen()
    }

    fn reopen(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        match Tables::open(&self.dir).and_then(|tables| self.recount(&tables).map(|()| tables)) {
            Ok(tables) => {
                tracing::warn!(dir = %self.dir.display(), "the store was reopened after a write failure");
                *self.tables.write().expect("tables lock") = Some(Arc::new(tables));
                true
            }
            Err(error) => {
                self.fail(format!("reopening {} failed: {error}", self.dir.display()));
                false
            }
        }
    }

    fn fail(&self, cause: String) {
        let mut failing = self.failing.lock().expect("failing lock");
        if failing.replace(cause.clone()).as_ref() != Some(&cause) {
            tracing::error!(%cause, "the store cannot write; new executions are refused until it can");
        }
    }

    fn recovered(&self) {
        if self.failing.lock().expect("failing lock").take().is_some() {
            tracing::info!("the store can write again");
        }
    }

    /// Notes `group` as synced, so a start that replays less refuses instead of losing it. Not
    /// synced itself: it never runs ahead of the journal, which is synced before it is written.
    fn mark(&self, group: u64) {
        if let Some(file) = &*self.mark.lock().expect("mark lock") {
            let _ = std::os::unix::fs::FileExt::write_all_at(file, &group.to_be_bytes(), 0);
        }
    }

    /// Writes `jobs` as one batch (one sync if any is durable), then answers them.
    fn write(&self, mut jobs: Vec<Job>) -> Result<(), Vec<Job>> {
        let started = Instant::now();
        let Ok(tables) = self.tables() else { return Err(jobs) };
        let now = now_ms();
        for op in jobs.iter_mut().flat_map(|job| job.ops.iter_mut()) {
            if let Op::Event(sink, seq @ None, value) = op {
                *seq = Some(self.next_seq[sink.index()].fetch_add(1, Ordering::SeqCst));
                value[4..12].copy_from_slice(&now.to_be_bytes());
            }
        }
        let group = self.group.load(Ordering::SeqCst) + 1;
        let mut batch = tables.db.batch();
        batch.insert(&tables.meta, GROUP, group.to_be_bytes());
        let mut added = [(0u64, 0u64); 2];
        let mut removed: Vec<(Sink, u64, bool)> = Vec::new();
        for job in &jobs {
            for op in &job.ops {
                match op {
                    Op::Put(table, key, value) => batch.insert(tables.get(*table), key.as_slice(), value.as_slice()),
                    Op::Remove(table, key) => batch.remove(tables.get(*table), key.as_slice()),
                    Op::Event(sink, seq, value) => {
                        batch.insert(
                            &tables.outbox[sink.index()],
                            seq.unwrap_or_default().to_be_bytes(),
                            value.as_slice(),
                        );
                        added[sink.index()].0 += 1;
                        added[sink.index()].1 += value.len() as u64;
                    }
                    Op::Delivered(sink, seq) => {
                        batch.remove(&tables.outbox[sink.index()], seq.to_be_bytes());
                        removed.push((*sink, *seq, false));
                    }
                    Op::Dead(sink, seq, record) => {
                        batch.remove(&tables.outbox[sink.index()], seq.to_be_bytes());
                        // Keyed by the order it was given up in, then its position: newest last.
                        let order = self.next_dead[sink.index()].fetch_add(1, Ordering::SeqCst);
                        let key = [order.to_be_bytes(), seq.to_be_bytes()].concat();
                        batch.insert(&tables.dead[sink.index()], key, record.as_slice());
                        removed.push((*sink, *seq, true));
                    }
                }
            }
        }
        let mode = if jobs.iter().any(|job| job.durable) { PersistMode::SyncData } else { PersistMode::Buffer };
        let written = self.make_room(&tables, &mut batch, &added);
        let dropped =
            match written.and_then(|dropped| batch.commit().and_then(|()| tables.db.persist(mode)).map(|()| dropped)) {
                Ok(dropped) => dropped,
                Err(error) => {
                    self.fail(format!("writing to {} failed: {error}", self.dir.display()));
                    return Err(jobs);
                }
            };
        self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        self.group.store(group, Ordering::SeqCst);
        if mode == PersistMode::SyncData {
            self.mark(group);
        }
        // The outbox counters: whoever takes an event out of the lease table counts it out.
        for (sink, seq, dead) in removed {
            let side = &self.sinks[sink.index()];
            if let Some(lease) = side.leases.lock().expect("leases lock").remove(&seq) {
                side.count(-1, -(lease.size as i64));
                side.dead.fetch_add(u64::from(dead), Ordering::SeqCst);
            }
        }
        for sink in Sink::ALL {
            let side = &self.sinks[sink.index()];
            let (events, bytes) = added[sink.index()];
            side.count(events as i64, bytes as i64);
            for (seq, size) in &dropped[sink.index()] {
                side.leases.lock().expect("leases lock").remove(seq);
                side.count(-1, -(*size as i64));
                side.dropped.fetch_add(1, Ordering::SeqCst);
                self.metrics.events_dropped.with_label_values(&[sink.name()]).inc();
            }
            if events > 0 {
                side.bell.notify_waiters();
                side.bell.notify_one();
            }
        }
        for job in &mut jobs {
            // The answer is readable now: the key may be claimed again (and replays it).
            drop(job.claim.take());
            let _ = job.done.take().map(|done| done.send(Ok(())));
        }
        Ok(())
    }

    /// Under the drop-oldest policy, removes the oldest events so the outbox stays within its
    /// bound once `added` is in. Returns what it removed, per sink.
    fn make_room(
        &self,
        tables: &Tables,
        batch: &mut OwnedWriteBatch,
        added: &[(u64, u64); 2],
    ) -> fjall::Result<Dropped> {
        let mut dropped = Dropped::default();
        for sink in Sink::ALL {
            let (i, bound) = (sink.index(), self.bounds[sink.index()]);
            let side = &self.sinks[i];
            let mut depth = side.depth.load(Ordering::SeqCst) + added[i].0;
            let mut bytes = side.bytes.load(Ordering::SeqCst) + added[i].1;
            if !bound.drop_oldest || (depth <= bound.max_events && bytes <= bound.max_bytes) {
                continue;
            }
            let start = side.head.load(Ordering::SeqCst);
            for item in tables.outbox[i].range(start.to_be_bytes()..) {
                if depth <= bound.max_events && bytes <= bound.max_bytes {
                    break;
                }
                let (key, value) = item.into_inner()?;
                dropped[i].push((seq_of(&key), value.len() as u64));
                batch.remove(&tables.outbox[i], key);
                depth -= 1;
                bytes = bytes.saturating_sub(value.len() as u64);
            }
        }
        Ok(dropped)
    }
}

impl Store for Embedded {
    fn claim<'a>(&'a self, key: &'a str, fingerprint: &'a str) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            {
                let mut claims = self.inner.claims.lock().expect("claims lock");
                match claims.get(key) {
                    Some(held) if held == fingerprint => return Ok(Claim::InProgress),
                    Some(_) => return Ok(Claim::Mismatch),
                    None => claims.insert(key.to_owned(), fingerprint.to_owned()),
                };
            }
            let guard = self.guard(key, fingerprint);
            let stored = self.inner.tables()?.answers.get(key).map_err(|e| read_error(&self.inner.dir, &e))?;
            let Some(stored) = stored else { return Ok(Claim::Fresh(guard)) };
            let Some([stored_fingerprint, answer]) = unpack::<2>(&stored) else {
                return Err(StoreError::Damaged(format!("the stored answer of a key in {}", self.inner.dir.display())));
            };
            if stored_fingerprint != fingerprint.as_bytes() {
                return Ok(Claim::Mismatch);
            }
            Ok(Claim::Replay(Bytes::copy_from_slice(answer)))
        })
    }

    fn record_in_flight<'a>(&'a self, claim: &'a ClaimGuard, marker: &'a InFlightMarker) -> StoreFuture<'a, ()> {
        claim.in_flight.store(true, Ordering::SeqCst);
        let value = serde_json::to_vec(marker).unwrap_or_default();
        self.send(vec![Op::Put(Table::InFlight, claim.key().as_bytes().to_vec(), value)], true, None, false)
    }

    fn commit(&self, claim: ClaimGuard, outcome: Outcome) -> StoreFuture<'_, ()> {
        let key = claim.key().to_owned();
        let record = pack(&[claim.fingerprint().as_bytes(), &outcome.answer]);
        let mut ops = Vec::with_capacity(3 + outcome.writes.len() + outcome.events.len());
        if claim.in_flight.load(Ordering::SeqCst) {
            ops.push(Op::Remove(Table::InFlight, key.as_bytes().to_vec()));
        }
        ops.push(Op::Put(Table::AnswerTimes, time_key(outcome.created_ms, &key), Vec::new()));
        ops.push(Op::Put(Table::Answers, key.into_bytes(), record));
        for Write::Task { id, record } in outcome.writes {
            ops.push(Op::Put(Table::Tasks, id.into_bytes(), record));
        }
        for event in outcome.events {
            let ids = [event.event_id.as_bytes(), event.trace_id.as_bytes()];
            let value = pack(&[&[0; 8], ids[0], ids[1], &event.body]);
            ops.push(Op::Event(event.sink, None, value));
        }
        self.send(ops, true, Some(claim), true)
    }

    fn abandoned(&self) -> StoreFuture<'_, Vec<Abandoned>> {
        Box::pin(async move {
            self.inner.tables()?;
            let markers = std::mem::take(&mut *self.inner.abandoned.lock().expect("abandoned lock"));
            let mut claims = self.inner.claims.lock().expect("claims lock");
            let mut out = Vec::with_capacity(markers.len());
            for (key, marker) in markers {
                claims.insert(key.clone(), marker.fingerprint.clone());
                let claim = self.guard(&key, &marker.fingerprint);
                claim.in_flight.store(true, Ordering::SeqCst);
                out.push(Abandoned { marker, claim });
            }
            Ok(out)
        })
    }

    fn lease(&self, sink: Sink, limit: usize, lease_for: Duration) -> StoreFuture<'_, Vec<LeasedEvent>> {
        Box::pin(async move {
            let tables = self.inner.tables()?;
            let side = &self.inner.sinks[sink.index()];
            let now = Instant::now();
            let mut leases = side.leases.lock().expect("leases lock");
            let mut out = Vec::new();
            let mut first = None;
            for item in tables.outbox[sink.index()].range(side.head.load(Ordering::SeqCst).to_be_bytes()..) {
                let (key, value) = item.into_inner().map_err(|e| read_error(&self.inner.dir, &e))?;
                let seq = seq_of(&key);
                first.get_or_insert(seq);
                let lease = leases.entry(seq).or_insert(Lease { until: None, attempts: 0, size: value.len() as u64 });
                if lease.until.is_some_and(|until| until > now) {
                    continue;
                }
                lease.until = Some(now + lease_for);
                let damaged = || StoreError::Damaged(format!("an event in {}", self.inner.dir.display()));
                out.push(decode_event(seq, &value, lease.attempts).ok_or_else(damaged)?);
                if out.len() >= limit {
                    break;
                }
            }
            let _ = first.map(|first| side.head.fetch_max(first, Ordering::SeqCst));
            Ok(out)
        })
    }

    fn settle(&self, sink: Sink, settlements: Vec<Settlement>) -> StoreFuture<'_, ()> {
        let mut ops = Vec::new();
        let mut durable = false;
        {
            let mut leases = self.inner.sinks[sink.index()].leases.lock().expect("leases lock");
            for settlement in settlements {
                match settlement {
                    Settlement::Delivered(seq) => ops.push(Op::Delivered(sink, seq)),
                    Settlement::Failed(seq) | Settlement::Release(seq) => {
                        if let Some(lease) = leases.get_mut(&seq) {
                            lease.until = None;
                            lease.attempts += u32::from(matches!(settlement, Settlement::Failed(_)));
                        }
                    }
                    Settlement::DeadLetter { seq, record } => {
                        durable = true;
                        ops.push(Op::Dead(sink, seq, serde_json::to_vec(&record).unwrap_or_default()));
                    }
                }
            }
        }
        if ops.is_empty() {
            let open = self.inner.tables().map(drop);
            return Box::pin(async move { open });
        }
        self.send(ops, durable, None, false)
    }

    fn depth(&self, sink: Sink) -> OutboxDepth {
        let side = &self.inner.sinks[sink.index()];
        OutboxDepth {
            events: side.depth.load(Ordering::SeqCst),
            bytes: side.bytes.load(Ordering::SeqCst),
            dead_letters: side.dead.load(Ordering::SeqCst),
            dropped: side.dropped.load(Ordering::SeqCst),
        }
    }

    fn oldest_enqueued_ms(&self, sink: Sink) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let tables = self.inner.tables()?;
            let head = self.inner.sinks[sink.index()].head.load(Ordering::SeqCst);
            let Some(item) = tables.outbox[sink.index()].range(head.to_be_bytes()..).next() else { return Ok(None) };
            let (key, value) = item.into_inner().map_err(|e| read_error(&self.inner.dir, &e))?;
            Ok(decode_event(seq_of(&key), &value, 0).map(|event| event.enqueued_ms))
        })
    }

    fn dead_letters(&self, sink: Sink, limit: usize) -> StoreFuture<'_, Vec<Value>> {
        Box::pin(async move {
            let read = |item: fjall::Guard| item.value().map(|v| serde_json::from_slice(&v).unwrap_or_default());
            let dead: fjall::Result<_> =
                self.inner.tables()?.dead[sink.index()].iter().rev().take(limit).map(read).collect();
            dead.map_err(|e| read_error(&self.inner.dir, &e))
        })
    }

    fn expire(&self, before_ms: u64) -> StoreFuture<'_, usize> {
        let ops: Result<Vec<Op>, StoreError> = self.inner.tables().and_then(|tables| {
            let mut ops = Vec::new();
            for item in tables.answer_times.range(..before_ms.to_be_bytes()).take(100_000) {
                let time_key = item.key().map_err(|e| read_error(&self.inner.dir, &e))?;
                ops.push(Op::Remove(Table::Answers, time_key[8..].to_vec()));
                ops.push(Op::Remove(Table::AnswerTimes, time_key.to_vec()));
            }
            Ok(ops)
        });
        Box::pin(async move {
            let ops = ops?;
            let count = ops.len() / 2;
            if count > 0 {
                self.send(ops, false, None, false).await?;
            }
            Ok(count)
        })
    }

    fn bell(&self, sink: Sink) -> &Notify {
        &self.inner.sinks[sink.index()].bell
    }

    fn health(&self) -> Health {
        match self.inner.failing.lock().expect("failing lock").clone() {
            None => Health::Ok,
            Some(cause) => Health::Failing { cause, unrecorded: self.inner.unrecorded.load(Ordering::SeqCst) as usize },
        }
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        let (done, wait) = oneshot::channel();
        let _ = self.jobs.lock().expect("jobs lock").take().map(|jobs| jobs.send(Msg::Close(done)));
        Box::pin(async move {
            let _ = wait.await;
            Ok(())
        })
    }
}

impl Embedded {
    fn guard(&self, key: &str, fingerprint: &str) -> ClaimGuard {
        let inner = Arc::downgrade(&self.inner);
        let owned = key.to_owned();
        ClaimGuard::new(key.to_owned(), fingerprint.to_owned(), move || {
            if let Some(inner) = inner.upgrade() {
                inner.claims.lock().expect("claims lock").remove(&owned);
            }
        })
    }
}

/// Each journal with the length of its content (fjall preallocates journals with zeros and cuts
/// them to what it replays), so a start can tell that recovery discarded a tail.
fn journal_contents(dir: &Path) -> Vec<(u64, PathBuf)> {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
    let journals = entries.filter(|p| p.extension().is_some_and(|x| x == "jnl"));
    journals.filter_map(|path| Some((content_len(&std::fs::File::open(&path).ok()?)?, path))).collect()
}

fn content_len(file: &std::fs::File) -> Option<u64> {
    let (mut end, mut chunk) = (file.metadata().ok()?.len(), vec![0; 1 << 16]);
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        std::os::unix::fs::FileExt::read_exact_at(file, part, start).ok()?;
        if let Some(last) = part.iter().rposition(|b| *b != 0) {
            return Some(start + last as u64 + 1);
        }
        end = start;
    }
    Some(0)
}

fn open_error(dir: &Path, error: fjall::Error) -> OpenError {
    match error {
        fjall::Error::Locked => OpenError::Locked(dir.to_owned()),
        fjall::Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => OpenError::NoSpace(dir.to_owned()),
        fjall::Error::Io(source) => OpenError::Directory(dir.to_owned(), source),
        fjall::Error::Unrecoverable => OpenError::Damaged(dir.to_owned(), "see the error above".into()),
        other => OpenError::Damaged(dir.to_owned(), other.to_string()),
    }
}

fn read_error(dir: &Path, error: &fjall::Error) -> StoreError {
    match error {
        fjall::Error::Storage(fjall::LsmError::ChecksumMismatch { .. }) => {
            tracing::error!(dir = %dir.display(), "stored data failed its checksum; it is not served");
            StoreError::Damaged(format!("a table in {} failed its checksum", dir.display()))
        }
        other => StoreError::Unavailable(format!("reading {} failed: {other}", dir.display())),
    }
}

fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn time_key(created_ms: u64, key: &str) -> Vec<u8> {
    [&created_ms.to_be_bytes(), key.as_bytes()].concat()
}

/// A value of several parts, each behind its length (u32, big-endian).
fn pack(parts: &[&[u8]]) -> Vec<u8> {
    let mut value = Vec::with_capacity(parts.iter().map(|p| 4 + p.len()).sum());
    for part in parts {
        value.extend_from_slice(&(part.len() as u32).to_be_bytes());
        value.extend_from_slice(part);
    }
    value
}

/// The parts of a [`pack`]ed value, or `None` if it is not one.
fn unpack<const N: usize>(mut value: &[u8]) -> Option<[&[u8]; N]> {
    let mut parts = [&value[..0]; N];
    for part in &mut parts {
        let (len, rest) = value.split_first_chunk::<4>()?;
        (*part, value) = rest.split_at_checked(u32::from_be_bytes(*len) as usize)?;
    }
    value.is_empty().then_some(parts)
}

/// An outbox value: enqueue time (set when written), event id, trace id, body.
fn decode_event(seq: u64, value: &[u8], attempts: u32) -> Option<LeasedEvent> {
    let [at, event_id, trace_id, body] = unpack::<4>(value)?;
    Some(LeasedEvent {
        seq,
        enqueued_ms: seq_of(at),
        event_id: String::from_utf8_lossy(event_id).into_owned(),
        trace_id: String::from_utf8_lossy(trace_id).into_owned(),
        body: Bytes::copy_from_slice(body),
        attempts,
    })
}
