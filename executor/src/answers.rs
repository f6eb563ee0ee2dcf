//! Stored answers (for idempotent replays), laid out so that storing one costs an append.
//!
//! Idempotency keys are random, so a B-tree keyed by them takes every insert to a different leaf:
//! each lazy commit rewrote about one 4 KiB page per answer stored. Here answers are kept in
//! three parts instead:
//!
//! - **The answer rows** ([`ANSWERS`]): answers are numbered in the order they are stored, and
//!   each commit's answers are packed into groups of up to [`GROUP_BYTES`], one row per group
//!   keyed by the number of its first answer: storing answers appends to the table's last leaf,
//!   one insert per group instead of one per answer, and retention removes whole groups from
//!   its front once their newest answer has expired. (Earlier versions stored one answer per row;
//!   such rows are read as they are.)
//! - **The recent index**, in memory: (key hash, answer number) for answers not yet in an index
//!   table. It holds at most about [`FLUSH_ENTRIES`] entries and is rebuilt on start from the rows
//!   numbered above the persisted index's high-water mark ([`INDEXED_THROUGH`]). A flush sets the
//!   filled part aside whole ([`Recent`]), so lookups, which share its lock, never wait for a
//!   copy or a removal of thousands of entries.
//! - **The index runs**, in redb: when the recent index is full, its entries are written, sorted,
//!   as a new *run*: a table of chunks, each a packed array of up to [`CHUNK_ENTRIES`]
//!   (key hash, answer number) pairs keyed by its first pair, so writing a run costs one insert
//!   per chunk. (Inserting each entry into one B-tree instead took every entry to a random leaf:
//!   about 1.3 µs of the applier's time per answer, and a rewrite of every leaf of the tree per
//!   flush. Now writing an entry costs about 30 ns and each merge it goes through about 60 ns.)
//!   After a flush, the two newest runs are merged, sequentially, while the newer holds
//!   more than half as many entries as the older and the sum stays within [`RUN_ENTRIES`]: run
//!   sizes double like a binary counter, so an entry is rewritten at most
//!   log2([`RUN_ENTRIES`] / [`FLUSH_ENTRIES`]) times, and a lookup reads about that many small
//!   runs plus one per [`RUN_ENTRIES`] answers retained. A run whose highest answer number has
//!   expired is dropped whole.
//!
//! A lookup hashes the key (the first 8 bytes of its SHA-256, stable across builds and not
//! steerable by callers into collisions), gathers candidate numbers from the recent index and
//! every run, and returns the newest row whose stored key is the key itself, so a hash
//! collision or an entry left behind by retention can only cost a read, never a wrong answer.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::{
    ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};
use sha2::{Digest, Sha256};

use crate::store::{Courtesy, StoreError};

/// Number of a group's first answer -> [`GROUP_MARK`], then per answer: creation time (u64,
/// big-endian ms), key length (u16), answer length (u32), key, answer. A row of earlier versions
/// holds one answer: creation time, key length, key, answer.
pub(crate) const ANSWERS: TableDefinition<u64, &[u8]> = TableDefinition::new("answers");
/// The first byte of a group. A row of earlier versions starts with the top byte of a
/// millisecond timestamp, which is 0.
const GROUP_MARK: u8 = 0xff;
/// A group is written once the next answer would take it past this many bytes: with its leaf's
/// header, a full group fits a 16 KiB page.
#[cfg(not(test))]
const GROUP_BYTES: usize = 16_000;
/// Small enough for unit tests to spread one commit's answers over several groups.
#[cfg(test)]
const GROUP_BYTES: usize = 256;
/// The bytes before an answer's key in a group: creation time, key length, answer length.
const GROUP_ENTRY_HEADER: usize = 8 + 2 + 4;
/// Run number (runs are numbered in the order they are written) -> (highest answer number in
/// it, entries in it).
const RUNS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("answer_index_runs");
/// Single values: [`INDEXED_THROUGH`].
const META: TableDefinition<&str, u64> = TableDefinition::new("answer_meta");
/// Every answer numbered up to this is in a run (or expired).
const INDEXED_THROUGH: &str = "indexed_through";
/// The index of earlier versions: generation number -> (highest answer number, entries), each
/// generation a table of (key hash, answer number) -> () named `answer_index_<number>`. Moved
/// into runs on open.
const OLD_GENERATIONS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("answer_index_generations");

/// Recent-index entries that trigger a flush into a new run (about 2 MiB of memory; as much again
/// may fill while a flush runs).
#[cfg(not(test))]
const FLUSH_ENTRIES: usize = 1 << 16;
/// Entries past which runs are not merged: a merge rewrites at most this many, and a lookup
/// reads one run per this many answers retained.
#[cfg(not(test))]
const RUN_ENTRIES: u64 = 1 << 21;
/// Entries per chunk: a chunk (16 bytes per entry) fills most of a 16 KiB page. Against chunks
/// of one 4 KiB page, writing and merging runs costs about 40% less.
#[cfg(not(test))]
const CHUNK_ENTRIES: usize = 1000;
// Small enough for unit tests to flush and merge many times, and to spread runs over many chunks.
#[cfg(test)]
const FLUSH_ENTRIES: usize = 64;
#[cfg(test)]
const RUN_ENTRIES: u64 = 256;
#[cfg(test)]
const CHUNK_ENTRIES: usize = 8;

/// The bytes of one (key hash, answer number) entry in a chunk: both big-endian.
const ENTRY_BYTES: usize = 16;

/// A run's table: (first key hash, first answer number) of a chunk -> the chunk.
fn run_table(name: &str) -> TableDefinition<'_, (u64, u64), &'static [u8]> {
    TableDefinition::new(name)
}

fn run_name(run: u64) -> String {
    format!("answer_run_{run}")
}

fn decode_entry(entry: &[u8; ENTRY_BYTES]) -> (u64, u64) {
    let (hash, number) = entry.split_at(8);
    (u64::from_be_bytes(hash.try_into().expect("8 bytes")), u64::from_be_bytes(number.try_into().expect("8 bytes")))
}

fn decode_entries(chunk: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    chunk.as_chunks::<ENTRY_BYTES>().0.iter().map(decode_entry)
}

/// The answer numbers a run holds for `hash`.
fn run_candidates(
    run: &impl ReadableTable<(u64, u64), &'static [u8]>,
    hash: u64,
    candidates: &mut Vec<u64>,
) -> Result<(), StoreError> {
    // The chunks that can hold `hash`: the last one starting at or below it, and, while they
    // start with `hash` itself, the ones before it (a key stored many times spans chunks).
    for chunk in run.range(..=(hash, u64::MAX))?.rev() {
        let (first, entries) = chunk?;
        let (entries, _) = entries.value().as_chunks::<ENTRY_BYTES>();
        let start = entries.partition_point(|entry| decode_entry(entry).0 < hash);
        candidates.extend(
            entries[start..].iter().map(decode_entry).take_while(|&(h, _)| h == hash).map(|(_, number)| number),
        );
        if first.value().0 < hash {
            break;
        }
    }
    Ok(())
}

/// Writes sorted entries into a new run, a chunk at a time.
struct RunWriter<'txn> {
    table: redb::Table<'txn, (u64, u64), &'static [u8]>,
    chunk: Vec<u8>,
    first: Option<(u64, u64)>,
    highest: u64,
    entries: u64,
}

impl<'txn> RunWriter<'txn> {
    fn create(txn: &'txn WriteTransaction, run: u64) -> Result<Self, StoreError> {
        let table = txn.open_table(run_table(&run_name(run)))?;
        Ok(Self { table, chunk: Vec::with_capacity(CHUNK_ENTRIES * ENTRY_BYTES), first: None, highest: 0, entries: 0 })
    }

    fn push(&mut self, (hash, number): (u64, u64)) -> Result<(), StoreError> {
        self.first.get_or_insert((hash, number));
        self.chunk.extend_from_slice(&hash.to_be_bytes());
        self.chunk.extend_from_slice(&number.to_be_bytes());
        self.highest = self.highest.max(number);
        self.entries += 1;
        if self.chunk.len() == CHUNK_ENTRIES * ENTRY_BYTES {
            self.write_chunk()?;
        }
        Ok(())
    }

    fn write_chunk(&mut self) -> Result<(), StoreError> {
        if let Some(first) = self.first.take() {
            self.table.insert(first, self.chunk.as_slice())?;
            self.chunk.clear();
        }
        Ok(())
    }

    /// (highest answer number, entries) of the finished run.
    fn finish(mut self) -> Result<(u64, u64), StoreError> {
        self.write_chunk()?;
        Ok((self.highest, self.entries))
    }
}

/// Reads a run's entries in order, a chunk at a time.
struct RunReader<'a> {
    chunks: redb::Range<'a, (u64, u64), &'static [u8]>,
    buffered: std::vec::IntoIter<(u64, u64)>,
}

impl<'a> RunReader<'a> {
    fn new(run: &'a impl ReadableTable<(u64, u64), &'static [u8]>) -> Result<Self, StoreError> {
        Ok(Self { chunks: run.range::<(u64, u64)>(..)?, buffered: Vec::new().into_iter() })
    }

    fn next_entry(&mut self) -> Result<Option<(u64, u64)>, StoreError> {
        loop {
            if let Some(entry) = self.buffered.next() {
                return Ok(Some(entry));
            }
            match self.chunks.next() {
                None => return Ok(None),
                Some(chunk) => self.buffered = decode_entries(chunk?.1.value()).collect::<Vec<_>>().into_iter(),
            }
        }
    }
}

/// The number of the next run to write.
fn next_run(runs: &impl ReadableTable<u64, (u64, u64)>) -> Result<u64, StoreError> {
    Ok(runs.last()?.map_or(1, |(run, _)| run.value() + 1))
}

/// Merges runs `older` and `newer` into the new run `into` and drops them; returns the new
/// run's (highest answer number, entries).
fn merge_runs(
    txn: &WriteTransaction,
    older: u64,
    newer: u64,
    into: u64,
    courtesy: &mut Courtesy,
) -> Result<(u64, u64), StoreError> {
    let (older_name, newer_name) = (run_name(older), run_name(newer));
    let merged = {
        let (older_table, newer_table) =
            (txn.open_table(run_table(&older_name))?, txn.open_table(run_table(&newer_name))?);
        let (mut left, mut right) = (RunReader::new(&older_table)?, RunReader::new(&newer_table)?);
        let mut writer = RunWriter::create(txn, into)?;
        let (mut a, mut b) = (left.next_entry()?, right.next_entry()?);
        loop {
            courtesy.offer();
            match (a, b) {
                (Some(x), y) if y.is_none_or(|y| x <= y) => {
                    writer.push(x)?;
                    a = left.next_entry()?;
                }
                (_, Some(y)) => {
                    writer.push(y)?;
                    b = right.next_entry()?;
                }
                (_, None) => break,
            }
        }
        writer.finish()?
    };
    txn.delete_table(run_table(&older_name))?;
    txn.delete_table(run_table(&newer_name))?;
    Ok(merged)
}

/// The index hash of an idempotency key.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    let digest = Sha256::digest(key);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// One stored answer, read from a row of [`ANSWERS`].
struct StoredAnswer<'a> {
    number: u64,
    created_ms: u64,
    key: &'a [u8],
    answer: &'a [u8],
}

/// The answers of the row of [`ANSWERS`] keyed `first`, in order; a truncated entry ends them.
fn decode_rows(first: u64, row: &[u8]) -> impl Iterator<Item = StoredAnswer<'_>> {
    let (grouped, mut rest) = match row.split_first() {
        Some((&GROUP_MARK, rest)) => (true, rest),
        _ => (false, row),
    };
    let mut number = first;
    std::iter::from_fn(move || {
        let (created, after) = rest.split_first_chunk::<8>()?;
        let (key_len, after) = after.split_first_chunk::<2>()?;
        let key_len = u16::from_be_bytes(*key_len) as usize;
        let (answer_len, after) = if grouped {
            let (len, after) = after.split_first_chunk::<4>()?;
            (u32::from_be_bytes(*len) as usize, after)
        } else {
            (after.len().checked_sub(key_len)?, after)
        };
        let (key, after) = after.split_at_checked(key_len)?;
        let (answer, after) = after.split_at_checked(answer_len)?;
        rest = after;
        number += 1;
        Some(StoredAnswer { number: number - 1, created_ms: u64::from_be_bytes(*created), key, answer })
    })
}

/// The recent index: (key hash, answer number) of answers not in a run yet. Written by
/// the store's applier only; read by lookups.
pub(crate) type RecentIndex = Arc<Mutex<Recent>>;

/// The two parts of the recent index.
#[derive(Default)]
pub(crate) struct Recent {
    /// Entries of the answers committed since the last flush took its part.
    filling: BTreeSet<(u64, u64)>,
    /// Entries being written into a run (or whose flush failed and will be retried):
    /// they stay findable here until the flush's commit is published.
    flushing: Arc<BTreeSet<(u64, u64)>>,
}

/// Answer rows and index runs as of one commit, for lookups.
pub(crate) struct AnswerSnapshot {
    rows: ReadOnlyTable<u64, &'static [u8]>,
    runs: Vec<ReadOnlyTable<(u64, u64), &'static [u8]>>,
}

impl AnswerSnapshot {
    pub(crate) fn open(txn: &ReadTransaction) -> Result<Self, StoreError> {
        let rows = txn.open_table(ANSWERS)?;
        let mut runs = Vec::new();
        for entry in txn.open_table(RUNS)?.range::<u64>(..)? {
            runs.push(txn.open_table(run_table(&run_name(entry?.0.value())))?);
        }
        Ok(Self { rows, runs })
    }

    /// The newest answer stored for `key`; `recent` are the candidates from the recent index
    /// (read before this snapshot was taken).
    pub(crate) fn find(&self, key: &str, hash: u64, recent: Vec<u64>) -> Result<Option<Bytes>, StoreError> {
        let mut candidates = recent;
        for run in &self.runs {
            run_candidates(run, hash, &mut candidates)?;
        }
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates.dedup();
        for number in candidates {
            if let Some((first, row)) = self.rows.range(..=number)?.next_back().transpose()?
                && let Some(stored) = decode_rows(first.value(), row.value()).find(|a| a.number == number)
                && stored.key == key.as_bytes()
            {
                return Ok(Some(Bytes::copy_from_slice(stored.answer)));
            }
        }
        Ok(None)
    }
}

/// The applier's side: numbering, appending, expiring and flushing.
pub(crate) struct AnswerLog {
    recent: RecentIndex,
    next_number: u64,
    /// Entries appended in the open write transaction, for the recent index once it commits.
    pending: Vec<(u64, u64)>,
    /// The lowest answer number still stored (as of the open transaction).
    first_live: u64,
    /// Rows expired in the open transaction: the recent index drops theirs once it commits.
    expired: bool,
    /// The group being filled in the open transaction ([`AnswerLog::finish_appends`] writes it),
    /// and the number of its first answer.
    group: Vec<u8>,
    group_first: u64,
}

impl AnswerLog {
    /// Prepares the tables and rebuilds the recent index from the rows above the high-water
    /// mark. Execution records of the earlier layout (a table keyed by idempotency key) are
    /// moved into it first, oldest first.
    pub(crate) fn open(txn: &WriteTransaction, recent: RecentIndex) -> Result<Self, StoreError> {
        let mut rows = txn.open_table(ANSWERS)?;
        txn.open_table(RUNS)?;
        migrate_generations(txn)?;
        let indexed_through = txn.open_table(META)?.get(INDEXED_THROUGH)?.map_or(0, |v| v.value());
        let last_number = match rows.last()? {
            Some((first, row)) => decode_rows(first.value(), row.value()).last().map_or(first.value(), |a| a.number),
            None => 0,
        };
        let next_number = last_number.max(indexed_through) + 1;
        let first_live = rows.first()?.map_or(next_number, |(k, _)| k.value());
        let mut log = Self {
            recent,
            next_number,
            pending: Vec::new(),
            first_live,
            expired: false,
            group: Vec::with_capacity(GROUP_BYTES),
            group_first: 0,
        };
        log.migrate_keyed_layout(txn, &mut rows)?;
        // The answers above the high-water mark, including any just moved, are the recent index;
        // the row that holds the first of them may start below it.
        log.pending.clear();
        let start = rows.range(..=indexed_through)?.next_back().transpose()?.map_or(0, |(first, _)| first.value());
        let mut recent = log.recent.lock().expect("recent index lock");
        for entry in rows.range(start..)? {
            let (first, row) = entry?;
            for stored in decode_rows(first.value(), row.value()).filter(|a| a.number > indexed_through) {
                recent.filling.insert((key_hash(stored.key), stored.number));
            }
        }
        drop(recent);
        Ok(log)
    }

    fn migrate_keyed_layout(
        &mut self,
        txn: &WriteTransaction,
        rows: &mut redb::Table<u64, &[u8]>,
    ) -> Result<(), StoreError> {
        const OLD_RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("executions");
        const OLD_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("execution_expiry");
        let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_owned()).collect();
        if !names.iter().any(|n| n == OLD_RECORDS.name()) {
            return Ok(());
        }
        {
            let records = txn.open_table(OLD_RECORDS)?;
            let expiry = txn.open_table(OLD_EXPIRY)?;
            let mut moved = 0u64;
            for entry in expiry.range::<(u64, &str)>(..)? {
                let (stamp, _) = entry?;
                let (created_ms, key) = stamp.value();
                if let Some(record) = records.get(key)? {
                    self.append(rows, key, created_ms, record.value())?;
                    moved += 1;
                }
            }
            self.finish_appends(rows)?;
            tracing::info!(moved, "moved stored answers to the append-only layout");
        }
        txn.delete_table(OLD_RECORDS)?;
        txn.delete_table(OLD_EXPIRY)?;
        Ok(())
    }

    /// Appends an answer to the group being filled, in the open write transaction (writing the
    /// group first if the answer would take it past [`GROUP_BYTES`]). The transaction must call
    /// [`AnswerLog::finish_appends`] before it commits.
    pub(crate) fn append(
        &mut self,
        rows: &mut redb::Table<u64, &[u8]>,
        key: &str,
        created_ms: u64,
        answer: &[u8],
    ) -> Result<(), StoreError> {
        let number = self.next_number;
        self.next_number += 1;
        let stored_key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
        let entry_bytes = GROUP_ENTRY_HEADER + stored_key.len() + answer.len();
        if !self.group.is_empty() && self.group.len() + entry_bytes > GROUP_BYTES {
            self.finish_appends(rows)?;
        }
        if self.group.is_empty() {
            self.group.push(GROUP_MARK);
            self.group_first = number;
        }
        self.group.extend_from_slice(&created_ms.to_be_bytes());
        self.group.extend_from_slice(&(stored_key.len() as u16).to_be_bytes());
        self.group.extend_from_slice(&(answer.len() as u32).to_be_bytes());
        self.group.extend_from_slice(stored_key);
        self.group.extend_from_slice(answer);
        self.pending.push((key_hash(key.as_bytes()), number));
        Ok(())
    }

    /// Writes the group being filled, if any.
    pub(crate) fn finish_appends(&mut self, rows: &mut redb::Table<u64, &[u8]>) -> Result<(), StoreError> {
        if !self.group.is_empty() {
            rows.insert(self.group_first, self.group.as_slice())?;
            self.group.clear();
        }
        Ok(())
    }

    /// Removes the rows whose answers were all created before `before_ms`, from the oldest, in
    /// the open write transaction; drops the runs that index only removed rows.
    pub(crate) fn expire(
        &mut self,
        txn: &WriteTransaction,
        rows: &mut redb::Table<u64, &[u8]>,
        before_ms: u64,
        courtesy: &mut Courtesy,
    ) -> Result<(), StoreError> {
        self.finish_appends(rows)?;
        self.expired = true;
        loop {
            courtesy.offer();
            let oldest = rows.first()?.map(|(first, row)| {
                let newest = decode_rows(first.value(), row.value()).map(|a| a.created_ms).max().unwrap_or(0);
                (first.value(), newest)
            });
            match oldest {
                None => {
                    self.first_live = self.next_number;
                    break;
                }
                Some((number, created_ms)) if created_ms >= before_ms => {
                    self.first_live = number;
                    break;
                }
                Some((number, _)) => {
                    rows.remove(number)?;
                }
            }
        }
        let mut runs = txn.open_table(RUNS)?;
        let expired: Vec<u64> = runs
            .range::<u64>(..)?
            .filter_map(|e| e.map(|(run, v)| (v.value().0 < self.first_live).then(|| run.value())).transpose())
            .collect::<Result<_, _>>()?;
        for run in expired {
            runs.remove(run)?;
            txn.delete_table(run_table(&run_name(run)))?;
        }
        Ok(())
    }

    /// After the write transaction committed: its answers become findable in the recent index.
    pub(crate) fn committed(&mut self) {
        let mut recent = self.recent.lock().expect("recent index lock");
        let first_live = self.first_live;
        if std::mem::take(&mut self.expired) {
            recent.filling.retain(|&(_, number)| number >= first_live);
            if !recent.flushing.is_empty() {
                Arc::make_mut(&mut recent.flushing).retain(|&(_, number)| number >= first_live);
            }
        }
        recent.filling.extend(self.pending.drain(..).filter(|&(_, number)| number >= first_live));
    }

    /// The write transaction failed: its answers are not stored.
    pub(crate) fn aborted(&mut self) {
        self.pending.clear();
        self.group.clear();
        self.expired = false;
    }

    /// Whether the recent index should be flushed into a run: it is full, or an earlier
    /// flush failed.
    pub(crate) fn wants_flush(&self) -> bool {
        let recent = self.recent.lock().expect("recent index lock");
        recent.filling.len() >= FLUSH_ENTRIES || !recent.flushing.is_empty()
    }

    /// Writes the recent index (the part a failed flush left, if any, else the whole filled part)
    /// as a new run, merges the newest runs (see the module documentation) and raises the
    /// high-water mark, in `txn`. Returns how many entries it wrote: once the commit is
    /// published, [`AnswerLog::forget`] takes them out of the recent index.
    pub(crate) fn flush(&self, txn: &WriteTransaction, courtesy: &mut Courtesy) -> Result<usize, StoreError> {
        let entries = {
            let mut recent = self.recent.lock().expect("recent index lock");
            if recent.flushing.is_empty() {
                recent.flushing = Arc::new(std::mem::take(&mut recent.filling));
            }
            recent.flushing.clone()
        };
        // Every number set aside is below every number still filling, so the highest one is the
        // new high-water mark.
        let Some(highest) = entries.iter().map(|&(_, number)| number).max() else {
            return Ok(0);
        };
        let mut runs = txn.open_table(RUNS)?;
        let mut next = next_run(&runs)?;
        let mut writer = RunWriter::create(txn, next)?;
        for &entry in entries.iter() {
            courtesy.offer();
            writer.push(entry)?;
        }
        runs.insert(next, writer.finish()?)?;
        loop {
            let newest: Vec<(u64, (u64, u64))> = runs
                .range::<u64>(..)?
                .rev()
                .take(2)
                .map(|e| e.map(|(run, v)| (run.value(), v.value())))
                .collect::<Result<_, _>>()?;
            let [(newer, (_, newer_entries)), (older, (_, older_entries))] = newest[..] else { break };
            if newer_entries * 2 <= older_entries || newer_entries + older_entries > RUN_ENTRIES {
                break;
            }
            next += 1;
            let merged = merge_runs(txn, older, newer, next, courtesy)?;
            runs.remove(older)?;
            runs.remove(newer)?;
            runs.insert(next, merged)?;
        }
        txn.open_table(META)?.insert(INDEXED_THROUGH, highest)?;
        Ok(entries.len())
    }

    /// Takes the flushed entries out of the recent index, after the flush's snapshot is
    /// published. They are freed outside the lock.
    pub(crate) fn forget(&self) {
        let flushed = std::mem::take(&mut self.recent.lock().expect("recent index lock").flushing);
        drop(flushed);
    }
}

/// Moves the index of earlier versions ([`OLD_GENERATIONS`]) into runs, one per generation, in
/// `txn`.
fn migrate_generations(txn: &WriteTransaction) -> Result<(), StoreError> {
    if !txn.list_tables()?.any(|t| t.name() == OLD_GENERATIONS.name()) {
        return Ok(());
    }
    let generations: Vec<u64> = txn
        .open_table(OLD_GENERATIONS)?
        .range::<u64>(..)?
        .map(|e| e.map(|(g, _)| g.value()))
        .collect::<Result<_, _>>()?;
    let mut runs = txn.open_table(RUNS)?;
    for generation in &generations {
        let run = next_run(&runs)?;
        let name = format!("answer_index_{generation}");
        let old: TableDefinition<(u64, u64), ()> = TableDefinition::new(&name);
        let written = {
            let mut writer = RunWriter::create(txn, run)?;
            for entry in txn.open_table(old)?.range::<(u64, u64)>(..)? {
                writer.push(entry?.0.value())?;
            }
            writer.finish()?
        };
        runs.insert(run, written)?;
        txn.delete_table(old)?;
    }
    txn.delete_table(OLD_GENERATIONS)?;
    tracing::info!(generations = generations.len(), "moved the answer index to the chunked layout");
    Ok(())
}

/// The recent index's candidates for `hash`.
pub(crate) fn recent_candidates(recent: &RecentIndex, hash: u64) -> Vec<u64> {
    let recent = recent.lock().expect("recent index lock");
    let range = (hash, 0)..=(hash, u64::MAX);
    recent.filling.range(range.clone()).chain(recent.flushing.range(range)).map(|&(_, number)| number).collect()
}

/// Every stored key (to fill the key filter on start).
pub(crate) fn for_each_key(db: &redb::Database, mut each: impl FnMut(&str)) -> Result<(), StoreError> {
    for entry in db.begin_read()?.open_table(ANSWERS)?.range::<u64>(..)? {
        let (first, row) = entry?;
        for stored in decode_rows(first.value(), row.value()) {
            if let Ok(key) = std::str::from_utf8(stored.key) {
                each(key);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{close, open, put};
    use crate::store::{Batch, Op, Store, now_ms};

    /// Commits `ops` 50 at a time, each time followed by an `Expire` (answered once applied), so
    /// that every answer is in redb and the in-memory overlay has forgotten it (lookups go
    /// through the indexes), and the recent index is flushed many times.
    async fn store_applied(store: &Store, ops: Vec<Op>) {
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let mut chunk: Vec<Op> = ops.by_ref().take(50).collect();
            chunk.push(Op::Expire { before_ms: 0 });
            store.commit(Batch { ops: chunk, durable: true }).await.expect("commit");
        }
    }

    /// A row of earlier versions: one answer (creation time, key length, key, answer).
    fn single_row(created_ms: u64, key: &str, answer: &[u8]) -> Vec<u8> {
        [&created_ms.to_be_bytes()[..], &(key.len() as u16).to_be_bytes(), key.as_bytes(), answer].concat()
    }

    fn assert_answers(store: &Store, keys: impl Iterator<Item = String>, present: bool) {
        for key in keys {
            let expected = present.then(|| Bytes::from(format!("answer for {key}")));
            assert_eq!(store.get_execution(&key).expect("read"), expected, "answer for {key}");
        }
    }

    /// The index's runs: (run number, entries).
    fn runs(dir: &std::path::Path) -> Vec<(u64, u64)> {
        let db = redb::Database::open(dir.join("executor.redb")).expect("db");
        let txn = db.begin_read().expect("read");
        txn.open_table(RUNS)
            .expect("runs")
            .range::<u64>(..)
            .expect("range")
            .map(|e| e.map(|(run, v)| (run.value(), v.value().1)).expect("entry"))
            .collect()
    }

    /// A flush whose transaction does not commit (as when its commit fails) loses nothing: its
    /// entries stay findable in the recent index while new answers keep arriving, the next flush
    /// writes them again, and only then does the recent index let them go.
    #[test]
    fn a_flush_that_does_not_commit_keeps_its_entries_and_is_retried() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = redb::Database::create(dir.path().join("answers.redb")).expect("database");
        let recent = RecentIndex::default();
        let key = |i: usize| format!("key-{i}");
        let store_answers = |log: &mut AnswerLog, keys: std::ops::Range<usize>| {
            let txn = db.begin_write().expect("write");
            {
                let mut rows = txn.open_table(ANSWERS).expect("rows");
                for i in keys {
                    log.append(&mut rows, &key(i), 1, format!("answer {i}").as_bytes()).expect("append");
                }
                log.finish_appends(&mut rows).expect("finish");
            }
            txn.commit().expect("commit");
            log.committed();
        };
        let found = |i: usize| {
            let hash = key_hash(key(i).as_bytes());
            let candidates = recent_candidates(&recent, hash);
            let snapshot = AnswerSnapshot::open(&db.begin_read().expect("read")).expect("snapshot");
            snapshot.find(&key(i), hash, candidates).expect("find")
        };
        let txn = db.begin_write().expect("write");
        let mut log = AnswerLog::open(&txn, recent.clone()).expect("open");
        txn.commit().expect("commit");
        store_answers(&mut log, 0..FLUSH_ENTRIES);
        assert!(log.wants_flush());

        let txn = db.begin_write().expect("write");
        assert_eq!(log.flush(&txn, &mut Courtesy::new()).expect("flush"), FLUSH_ENTRIES);
        drop(txn);
        store_answers(&mut log, FLUSH_ENTRIES..FLUSH_ENTRIES + 3);
        for i in 0..FLUSH_ENTRIES + 3 {
            assert_eq!(found(i), Some(Bytes::from(format!("answer {i}"))), "{} after the failed flush", key(i));
        }
        assert!(log.wants_flush(), "the failed flush is retried");

        let txn = db.begin_write().expect("write");
        assert_eq!(log.flush(&txn, &mut Courtesy::new()).expect("flush"), FLUSH_ENTRIES, "the same entries");
        txn.commit().expect("commit");
        log.forget();
        assert!(!log.wants_flush());
        let left = recent.lock().expect("recent index lock");
        assert_eq!((left.filling.len(), left.flushing.len()), (3, 0), "only the answers stored since");
        drop(left);
        for i in 0..FLUSH_ENTRIES + 3 {
            assert_eq!(found(i), Some(Bytes::from(format!("answer {i}"))), "{} after the retry", key(i));
        }
        assert_eq!(found(FLUSH_ENTRIES + 3), None);
    }

    /// Many flushes and merges into several runs: every answer is found, through the recent index
    /// or a run, before and after a restart; unknown keys are not.
    #[tokio::test]
    async fn answers_are_found_through_every_index_part_and_after_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        // 1030: the last 30 are still in the recent index at the restart.
        let keys = || (0..1030).map(|i| format!("trace:t{i}:fingerprint"));
        let (store, writer) = open(dir.path());
        store_applied(&store, keys().map(|k| put(&k, now_ms())).collect()).await;
        assert_answers(&store, keys(), true);
        assert_answers(&store, (0..50).map(|i| format!("trace:unknown{i}:fingerprint")), false);
        close(store, writer).await;
        let runs = runs(dir.path());
        assert!(runs.len() >= 3, "1000 entries fill several runs of at most 256: {runs:?}");
        assert!(runs.iter().all(|&(_, entries)| entries <= RUN_ENTRIES), "merges stop at RUN_ENTRIES: {runs:?}");
        assert!(
            runs.iter().any(|&(_, entries)| entries > 2 * FLUSH_ENTRIES as u64),
            "runs hold more than a flush writes, so they were merged: {runs:?}"
        );

        let (store, writer) = open(dir.path());
        assert_answers(&store, keys(), true);
        // A key stored again later: the newest answer wins.
        store
            .commit(Batch {
                ops: vec![Op::PutExecution {
                    key: "trace:t7:fingerprint".into(),
                    created_ms: now_ms(),
                    record: Bytes::from("newer"),
                    clear_in_flight: false,
                }],
                durable: true,
            })
            .await
            .expect("commit");
        store.commit(Batch { ops: vec![Op::Expire { before_ms: 0 }], durable: true }).await.expect("expire");
        assert_eq!(store.get_execution("trace:t7:fingerprint").expect("read"), Some(Bytes::from("newer")));
        close(store, writer).await;
    }

    /// Retention removes old answers (rows and whole runs) and keeps newer ones findable.
    #[tokio::test]
    async fn expiry_drops_old_answers_and_their_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, writer) = open(dir.path());
        let old = || (0..600).map(|i| format!("old-{i}"));
        let new = || (0..300).map(|i| format!("new-{i}"));
        store_applied(&store, old().enumerate().map(|(i, k)| put(&k, 1_000 + i as u64)).collect()).await;
        store_applied(&store, new().map(|k| put(&k, now_ms())).collect()).await;
        close(store, writer).await;
        let before = runs(dir.path());

        let (store, writer) = open(dir.path());
        store.commit(Batch { ops: vec![Op::Expire { before_ms: 1_000_000 }], durable: true }).await.expect("expire");
        assert_answers(&store, old(), false);
        assert_answers(&store, new(), true);
        close(store, writer).await;
        let after = runs(dir.path());
        assert!(after.len() < before.len(), "runs of expired answers are dropped ({before:?} -> {after:?})");
    }

    /// A store written by earlier versions (answers keyed by idempotency key) is moved to the
    /// append-only layout on open, oldest first, and its answers replay.
    #[tokio::test]
    async fn the_keyed_layout_of_earlier_versions_is_migrated() {
        const OLD_RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("executions");
        const OLD_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("execution_expiry");
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let db = redb::Database::create(dir.path().join("executor.redb")).expect("db");
            let txn = db.begin_write().expect("write");
            {
                let mut records = txn.open_table(OLD_RECORDS).expect("records");
                let mut expiry = txn.open_table(OLD_EXPIRY).expect("expiry");
                for i in 0..100u64 {
                    let key = format!("legacy-{i}");
                    records.insert(key.as_str(), format!("answer for {key}").as_bytes()).expect("insert");
                    expiry.insert((now_ms() - 1_000 + i, key.as_str()), ()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let (store, writer) = open(dir.path());
        assert_answers(&store, (0..100).map(|i| format!("legacy-{i}")), true);
        close(store, writer).await;
        let db = redb::Database::open(dir.path().join("executor.redb")).expect("db");
        let names: Vec<String> =
            db.begin_read().expect("read").list_tables().expect("tables").map(|t| t.name().to_owned()).collect();
        assert!(!names.iter().any(|n| n == "executions" || n == "execution_expiry"), "old tables left: {names:?}");
    }

    /// A run's chunks are found by their first entry: a hash whose entries span several chunks
    /// (a key stored many times) yields all of them, and hashes at or past either end none.
    #[test]
    fn a_hash_spanning_chunks_yields_every_entry() {
        use redb::ReadableTableMetadata;
        let dir = tempfile::tempdir().expect("temp dir");
        let db = redb::Database::create(dir.path().join("runs.redb")).expect("database");
        let mut entries: Vec<(u64, u64)> = (0..5).map(|n| (1, n)).collect();
        entries.extend((5..25).map(|n| (42, n)));
        entries.extend((25..30).map(|n| (43, n)));
        let txn = db.begin_write().expect("write");
        let mut writer = RunWriter::create(&txn, 1).expect("run");
        for &entry in &entries {
            writer.push(entry).expect("push");
        }
        assert_eq!(writer.finish().expect("finish"), (29, 30));
        txn.commit().expect("commit");

        let txn = db.begin_read().expect("read");
        let run = txn.open_table(run_table(&run_name(1))).expect("run table");
        assert!(run.len().expect("len") >= 4, "30 entries in chunks of {CHUNK_ENTRIES}");
        let candidates = |hash: u64| {
            let mut found = Vec::new();
            run_candidates(&run, hash, &mut found).expect("candidates");
            found.sort_unstable();
            found
        };
        assert_eq!(candidates(42), (5..25).collect::<Vec<_>>());
        assert_eq!(candidates(1), (0..5).collect::<Vec<_>>());
        assert_eq!(candidates(43), (25..30).collect::<Vec<_>>());
        for absent in [0, 2, 41, 44, u64::MAX] {
            assert_eq!(candidates(absent), Vec::<u64>::new(), "hash {absent}");
        }
    }

    /// A store whose index is in the generations of earlier versions is moved into runs on
    /// open, and its answers replay.
    #[tokio::test]
    async fn the_index_generations_of_earlier_versions_are_migrated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = || (1..=300u64).map(|i| (i, format!("trace:old{i}:fingerprint")));
        {
            let db = redb::Database::create(dir.path().join("executor.redb")).expect("db");
            let txn = db.begin_write().expect("write");
            {
                let mut rows = txn.open_table(ANSWERS).expect("rows");
                let mut registry = txn.open_table(OLD_GENERATIONS).expect("generations");
                for (generation, numbers) in [(1u64, 1..=200u64), (2, 201..=300)] {
                    let name = format!("answer_index_{generation}");
                    let mut index = txn.open_table(TableDefinition::<(u64, u64), ()>::new(&name)).expect("index");
                    for (number, key) in keys().filter(|(n, _)| numbers.contains(n)) {
                        let answer = format!("answer for {key}");
                        rows.insert(number, single_row(now_ms(), &key, answer.as_bytes()).as_slice()).expect("row");
                        index.insert((key_hash(key.as_bytes()), number), ()).expect("entry");
                    }
                    registry.insert(generation, (*numbers.end(), numbers.count() as u64)).expect("registry");
                }
                txn.open_table(META).expect("meta").insert(INDEXED_THROUGH, 300).expect("mark");
            }
            txn.commit().expect("commit");
        }
        let (store, writer) = open(dir.path());
        assert_answers(&store, keys().map(|(_, key)| key), true);
        assert_answers(&store, (0..20).map(|i| format!("trace:unknown{i}:fingerprint")), false);
        // New answers are numbered after the old rows, in groups, and both stay findable.
        let new = || (0..10).map(|i| format!("trace:new{i}:fingerprint"));
        store_applied(&store, new().map(|k| put(&k, now_ms())).collect()).await;
        assert_answers(&store, new(), true);
        assert_answers(&store, keys().map(|(_, key)| key), true);
        close(store, writer).await;
        assert_eq!(runs(dir.path()), [(1, 200), (2, 100)]);
        let db = redb::Database::open(dir.path().join("executor.redb")).expect("db");
        let names: Vec<String> =
            db.begin_read().expect("read").list_tables().expect("tables").map(|t| t.name().to_owned()).collect();
        let old = |n: &String| {
            n == OLD_GENERATIONS.name()
                || n.strip_prefix("answer_index_").is_some_and(|g| g.bytes().all(|b| b.is_ascii_digit()))
        };
        assert!(!names.iter().any(old), "old tables left: {names:?}");
    }
}
