//! Stored answers (for idempotent replays), laid out so that storing one costs an append.
//!
//! Idempotency keys are random, so a B-tree keyed by them takes every insert to a different leaf:
//! each lazy commit rewrote about one 4 KiB page per answer stored. Here answers are kept in
//! three parts instead:
//!
//! - **The answer rows** ([`ANSWERS`]): answer sequence number -> creation time, key and answer.
//!   Numbers grow with every answer, so storing one appends to the table's last leaf, and
//!   retention removes rows from its front.
//! - **The recent index**, in memory: (key hash, answer number) for answers not yet in an index
//!   table. It holds at most about [`FLUSH_ENTRIES`] entries and is rebuilt on start from the rows
//!   numbered above the persisted index's high-water mark ([`INDEXED_THROUGH`]). A flush sets the
//!   filled part aside whole ([`Recent`]), so lookups, which share its lock, never wait for a
//!   copy or a removal of thousands of entries.
//! - **The index generations**, in redb: tables of (key hash, answer number) -> (). When the
//!   recent index is full, its entries are inserted, sorted, into the newest generation in one
//!   commit: thousands of entries share each leaf they touch, and a generation stops growing at
//!   [`GENERATION_ENTRIES`], which bounds the pages a flush can touch. A generation whose highest
//!   answer number has expired is dropped whole.
//!
//! A lookup hashes the key (the first 8 bytes of its SHA-256, stable across builds and not
//! steerable by callers into collisions), gathers candidate numbers from the recent index and
//! every generation, and returns the newest row whose stored key is the key itself, so a hash
//! collision or an entry left behind by retention can only cost a read, never a wrong answer.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::{
    ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};
use sha2::{Digest, Sha256};

use crate::store::{Courtesy, StoreError};

/// Answer number -> creation time (u64, big-endian ms), key length (u16, big-endian), key,
/// answer.
pub(crate) const ANSWERS: TableDefinition<u64, &[u8]> = TableDefinition::new("answers");
/// Index generation number -> (highest answer number in it, entries in it).
const GENERATIONS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("answer_index_generations");
/// Single values: [`INDEXED_THROUGH`].
const META: TableDefinition<&str, u64> = TableDefinition::new("answer_meta");
/// Every answer numbered up to this is in a generation (or expired).
const INDEXED_THROUGH: &str = "indexed_through";

/// Recent-index entries that trigger a flush into the newest generation (about 2 MiB of memory;
/// as much again may fill while a flush runs).
#[cfg(not(test))]
const FLUSH_ENTRIES: usize = 1 << 16;
/// Entries after which a generation takes no more: a flush touches at most its leaves (about
/// 8,000 pages of 256 entries, so at most one page per 8 entries flushed), and a lookup reads one
/// generation per 2 million answers retained.
#[cfg(not(test))]
const GENERATION_ENTRIES: u64 = 1 << 21;
// Small enough for unit tests to flush many times and fill several generations.
#[cfg(test)]
const FLUSH_ENTRIES: usize = 64;
#[cfg(test)]
const GENERATION_ENTRIES: u64 = 256;

fn generation_table(name: &str) -> TableDefinition<'_, (u64, u64), ()> {
    TableDefinition::new(name)
}

fn generation_name(generation: u64) -> String {
    format!("answer_index_{generation}")
}

/// The index hash of an idempotency key.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    let digest = Sha256::digest(key);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn encode_row(created_ms: u64, key: &str, answer: &[u8]) -> Vec<u8> {
    let key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
    let mut row = Vec::with_capacity(10 + key.len() + answer.len());
    row.extend_from_slice(&created_ms.to_be_bytes());
    row.extend_from_slice(&(key.len() as u16).to_be_bytes());
    row.extend_from_slice(key);
    row.extend_from_slice(answer);
    row
}

/// A stored row: creation time, key, answer. `None` for a row too short to be one.
pub(crate) fn decode_row(row: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let (created, rest) = row.split_first_chunk::<8>()?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = u16::from_be_bytes(*len) as usize;
    (rest.len() >= len).then(|| (u64::from_be_bytes(*created), &rest[..len], &rest[len..]))
}

/// The recent index: (key hash, answer number) of answers not in a generation yet. Written by
/// the store's applier only; read by lookups.
pub(crate) type RecentIndex = Arc<Mutex<Recent>>;

/// The two parts of the recent index.
#[derive(Default)]
pub(crate) struct Recent {
    /// Entries of the answers committed since the last flush took its part.
    filling: BTreeSet<(u64, u64)>,
    /// Entries being written into a generation (or whose flush failed and will be retried):
    /// they stay findable here until the flush's commit is published.
    flushing: Arc<BTreeSet<(u64, u64)>>,
}

/// Answer rows and index generations as of one commit, for lookups.
pub(crate) struct AnswerSnapshot {
    rows: ReadOnlyTable<u64, &'static [u8]>,
    /// Newest first.
    generations: Vec<ReadOnlyTable<(u64, u64), ()>>,
}

impl AnswerSnapshot {
    pub(crate) fn open(txn: &ReadTransaction) -> Result<Self, StoreError> {
        let rows = txn.open_table(ANSWERS)?;
        let mut generations = Vec::new();
        for entry in txn.open_table(GENERATIONS)?.range::<u64>(..)?.rev() {
            let generation = entry?.0.value();
            generations.push(txn.open_table(generation_table(&generation_name(generation)))?);
        }
        Ok(Self { rows, generations })
    }

    /// The newest answer stored for `key`; `recent` are the candidates from the recent index
    /// (read before this snapshot was taken).
    pub(crate) fn find(&self, key: &str, hash: u64, recent: Vec<u64>) -> Result<Option<Bytes>, StoreError> {
        let mut candidates = recent;
        for generation in &self.generations {
            for entry in generation.range((hash, 0)..=(hash, u64::MAX))? {
                candidates.push(entry?.0.value().1);
            }
        }
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates.dedup();
        for number in candidates {
            if let Some(row) = self.rows.get(number)?
                && let Some((_, stored_key, answer)) = decode_row(row.value())
                && stored_key == key.as_bytes()
            {
                return Ok(Some(Bytes::copy_from_slice(answer)));
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
}

impl AnswerLog {
    /// Prepares the tables and rebuilds the recent index from the rows above the high-water
    /// mark. Execution records of the earlier layout (a table keyed by idempotency key) are
    /// moved into it first, oldest first.
    pub(crate) fn open(txn: &WriteTransaction, recent: RecentIndex) -> Result<Self, StoreError> {
        let mut rows = txn.open_table(ANSWERS)?;
        txn.open_table(GENERATIONS)?;
        let indexed_through = txn.open_table(META)?.get(INDEXED_THROUGH)?.map_or(0, |v| v.value());
        let next_number = rows.last()?.map_or(0, |(k, _)| k.value()).max(indexed_through) + 1;
        let first_live = rows.first()?.map_or(next_number, |(k, _)| k.value());
        let mut log = Self { recent, next_number, pending: Vec::new(), first_live, expired: false };
        log.migrate_keyed_layout(txn, &mut rows)?;
        // The rows above the high-water mark, including any just moved, are the recent index.
        log.pending.clear();
        let mut recent = log.recent.lock().expect("recent index lock");
        for entry in rows.range(indexed_through + 1..)? {
            let (number, row) = entry?;
            if let Some((_, key, _)) = decode_row(row.value()) {
                recent.filling.insert((key_hash(key), number.value()));
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
            tracing::info!(moved, "moved stored answers to the append-only layout");
        }
        txn.delete_table(OLD_RECORDS)?;
        txn.delete_table(OLD_EXPIRY)?;
        Ok(())
    }

    /// Appends an answer in the open write transaction.
    pub(crate) fn append(
        &mut self,
        rows: &mut redb::Table<u64, &[u8]>,
        key: &str,
        created_ms: u64,
        answer: &[u8],
    ) -> Result<(), StoreError> {
        let number = self.next_number;
        self.next_number += 1;
        rows.insert(number, encode_row(created_ms, key, answer).as_slice())?;
        self.pending.push((key_hash(key.as_bytes()), number));
        Ok(())
    }

    /// Removes the rows created before `before_ms`, from the oldest, in the open write
    /// transaction; drops the generations that index only removed rows.
    pub(crate) fn expire(
        &mut self,
        txn: &WriteTransaction,
        rows: &mut redb::Table<u64, &[u8]>,
        before_ms: u64,
        courtesy: &mut Courtesy,
    ) -> Result<(), StoreError> {
        self.expired = true;
        loop {
            courtesy.offer();
            let oldest =
                rows.first()?.map(|(n, row)| (n.value(), decode_row(row.value()).map_or(0, |(created, _, _)| created)));
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
        let mut generations = txn.open_table(GENERATIONS)?;
        let expired: Vec<u64> = generations
            .range::<u64>(..)?
            .filter_map(|e| e.map(|(g, v)| (v.value().0 < self.first_live).then(|| g.value())).transpose())
            .collect::<Result<_, _>>()?;
        for generation in expired {
            generations.remove(generation)?;
            txn.delete_table(generation_table(&generation_name(generation)))?;
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
        self.expired = false;
    }

    /// Whether the recent index should be flushed into a generation: it is full, or an earlier
    /// flush failed.
    pub(crate) fn wants_flush(&self) -> bool {
        let recent = self.recent.lock().expect("recent index lock");
        recent.filling.len() >= FLUSH_ENTRIES || !recent.flushing.is_empty()
    }

    /// Inserts the recent index (the part a failed flush left, if any, else the whole filled
    /// part), sorted, into the newest generation (a new one when it is full) and raises the
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
        let mut generations = txn.open_table(GENERATIONS)?;
        let (generation, (max_number, count)) = match generations.last()? {
            Some((g, v)) if v.value().1 < GENERATION_ENTRIES => (g.value(), v.value()),
            Some((g, _)) => (g.value() + 1, (0, 0)),
            None => (1, (0, 0)),
        };
        {
            let name = generation_name(generation);
            let mut table = txn.open_table(generation_table(&name))?;
            for &entry in entries.iter() {
                courtesy.offer();
                table.insert(entry, ())?;
            }
        }
        generations.insert(generation, (max_number.max(highest), count + entries.len() as u64))?;
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

/// The recent index's candidates for `hash`.
pub(crate) fn recent_candidates(recent: &RecentIndex, hash: u64) -> Vec<u64> {
    let recent = recent.lock().expect("recent index lock");
    let range = (hash, 0)..=(hash, u64::MAX);
    recent.filling.range(range.clone()).chain(recent.flushing.range(range)).map(|&(_, number)| number).collect()
}

/// Every stored key (to fill the key filter on start).
pub(crate) fn for_each_key(db: &redb::Database, mut each: impl FnMut(&str)) -> Result<(), StoreError> {
    for entry in db.begin_read()?.open_table(ANSWERS)?.range::<u64>(..)? {
        if let Some(key) = decode_row(entry?.1.value()).and_then(|(_, key, _)| std::str::from_utf8(key).ok()) {
            each(key);
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

    fn assert_answers(store: &Store, keys: impl Iterator<Item = String>, present: bool) {
        for key in keys {
            let expected = present.then(|| Bytes::from(format!("answer for {key}")));
            assert_eq!(store.get_execution(&key).expect("read"), expected, "answer for {key}");
        }
    }

    fn generations(dir: &std::path::Path) -> Vec<u64> {
        let db = redb::Database::open(dir.join("executor.redb")).expect("db");
        let txn = db.begin_read().expect("read");
        txn.open_table(GENERATIONS)
            .expect("generations")
            .range::<u64>(..)
            .expect("range")
            .map(|e| e.expect("entry").0.value())
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

    /// Many flushes into several generations: every answer is found, through the recent index
    /// or a generation, before and after a restart; unknown keys are not.
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
        assert!(generations(dir.path()).len() >= 3, "1000 entries fill several generations of 256");

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

    /// Retention removes old answers (rows and whole generations) and keeps newer ones findable.
    #[tokio::test]
    async fn expiry_drops_old_answers_and_their_generations() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, writer) = open(dir.path());
        let old = || (0..600).map(|i| format!("old-{i}"));
        let new = || (0..300).map(|i| format!("new-{i}"));
        store_applied(&store, old().enumerate().map(|(i, k)| put(&k, 1_000 + i as u64)).collect()).await;
        store_applied(&store, new().map(|k| put(&k, now_ms())).collect()).await;
        close(store, writer).await;
        let before = generations(dir.path());

        let (store, writer) = open(dir.path());
        store.commit(Batch { ops: vec![Op::Expire { before_ms: 1_000_000 }], durable: true }).await.expect("expire");
        assert_answers(&store, old(), false);
        assert_answers(&store, new(), true);
        close(store, writer).await;
        let after = generations(dir.path());
        assert!(after.len() < before.len(), "generations of expired answers are dropped ({before:?} -> {after:?})");
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
}
