//! The task adapter's durable rows, laid out so that storing a task costs an append.
//!
//! Tasks are written once and never updated: each commit's tasks are packed, in log order, into
//! rows of up to [`ROW_BYTES`] keyed by a row number that grows with every row, so storing them
//! appends to the table's last leaf, one insert per row instead of one per task. (Keyed by task
//! id, one row per task, they took about 40% of the applier's CPU under `wrk` load, in B-tree
//! inserts and in writing out the leaves they dirtied: 6.3-6.8 µs per request then, 3.6-4.0
//! now.) Nothing reads tasks by id, so rows need no id order. A row is, per task: id length
//! (u16, big-endian), record length (u32, big-endian), id, record (JSON).
//!
//! Earlier versions kept one row per task in a table keyed by task id; [`open`] moves those rows
//! into the packed layout, in id order (ids are time-ordered), and drops that table.

#[cfg(test)]
use redb::ReadableDatabase;
use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use crate::store::StoreError;

/// Row number -> packed tasks.
const TASK_ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("task_rows");
/// The layout of earlier versions: task id -> record.
const OLD_TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
/// A row is written once the next task would take it past this many bytes: with its leaf's
/// header, a full row fits a 16 KiB page.
#[cfg(not(test))]
const ROW_BYTES: usize = 16_000;
/// Small enough for unit tests to spread one commit's tasks over several rows.
#[cfg(test)]
const ROW_BYTES: usize = 256;
/// The bytes before a task's id in a row: id length, record length.
const ENTRY_HEADER: usize = 2 + 4;

/// Creates the table, and moves the tasks of the earlier layout into it.
pub(crate) fn open(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut rows = TaskRows::open(txn)?;
    if !txn.list_tables()?.any(|table| table.name() == OLD_TASKS.name()) {
        return Ok(());
    }
    let mut moved = 0u64;
    {
        let old = txn.open_table(OLD_TASKS)?;
        for entry in old.range::<&str>(..)? {
            let (id, record) = entry?;
            rows.push(id.value(), record.value())?;
            moved += 1;
        }
    }
    rows.finish()?;
    txn.delete_table(OLD_TASKS)?;
    tracing::info!(moved, "moved stored tasks to the packed layout");
    Ok(())
}

/// Packs one write transaction's tasks into new rows.
pub(crate) struct TaskRows<'txn> {
    table: redb::Table<'txn, u64, &'static [u8]>,
    /// The row being filled.
    row: Vec<u8>,
    /// Its number.
    number: u64,
}

impl<'txn> TaskRows<'txn> {
    /// Opens the table in `txn`; new rows go after its last one.
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        let table = txn.open_table(TASK_ROWS)?;
        let number = table.last()?.map_or(0, |(number, _)| number.value() + 1);
        Ok(Self { table, row: Vec::new(), number })
    }

    /// Adds a task to the row being filled (writing that row first if the task would take it past
    /// [`ROW_BYTES`]). [`TaskRows::finish`] writes the last row.
    pub(crate) fn push(&mut self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        // Ids are validated ASCII far below this bound; the cap only keeps the length field honest.
        let id = &id.as_bytes()[..id.len().min(u16::MAX as usize)];
        let entry_bytes = ENTRY_HEADER + id.len() + record.len();
        if !self.row.is_empty() && self.row.len() + entry_bytes > ROW_BYTES {
            self.write_row()?;
        }
        self.row.reserve(entry_bytes);
        self.row.extend_from_slice(&(id.len() as u16).to_be_bytes());
        self.row.extend_from_slice(&(record.len() as u32).to_be_bytes());
        self.row.extend_from_slice(id);
        self.row.extend_from_slice(record);
        Ok(())
    }

    /// Writes the row being filled, if any.
    pub(crate) fn finish(mut self) -> Result<(), StoreError> {
        if !self.row.is_empty() {
            self.write_row()?;
        }
        Ok(())
    }

    fn write_row(&mut self) -> Result<(), StoreError> {
        self.table.insert(self.number, self.row.as_slice())?;
        self.number += 1;
        self.row.clear();
        Ok(())
    }
}

/// The tasks of one row, in order; a truncated entry ends them.
#[cfg(test)]
fn decode_row(mut row: &[u8]) -> impl Iterator<Item = (&str, &[u8])> {
    std::iter::from_fn(move || {
        let (id_len, after) = row.split_first_chunk::<2>()?;
        let (record_len, after) = after.split_first_chunk::<4>()?;
        let (id, after) = after.split_at_checked(u16::from_be_bytes(*id_len) as usize)?;
        let (record, after) = after.split_at_checked(u32::from_be_bytes(*record_len) as usize)?;
        row = after;
        Some((std::str::from_utf8(id).ok()?, record))
    })
}

/// Every stored task (id, record), in the order they were stored.
#[cfg(test)]
pub(crate) fn all(db: &redb::Database) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(TASK_ROWS)?;
    let mut tasks = Vec::new();
    for entry in table.range::<u64>(..)? {
        let (_, row) = entry?;
        tasks.extend(decode_row(row.value()).map(|(id, record)| (id.to_owned(), record.to_vec())));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{close, open};
    use crate::store::{Batch, Op};

    fn task(n: usize) -> (String, Vec<u8>) {
        (format!("task_{n:04}"), format!("{{\"title\":\"task number {n}\"}}").into_bytes())
    }

    #[tokio::test]
    async fn tasks_are_packed_in_rows_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tasks: Vec<_> = (0..40).map(task).collect();
        let (store, writer) = open(dir.path());
        // One commit spreads over several rows; then single tasks, one commit each.
        let ops = tasks[..30].iter().map(|(id, record)| Op::PutTask { id: id.clone(), record: record.clone() });
        store.commit(Batch { ops: ops.collect(), durable: true }).await.expect("commit");
        for (id, record) in &tasks[30..] {
            let ops = vec![Op::PutTask { id: id.clone(), record: record.clone() }];
            store.commit(Batch { ops, durable: true }).await.expect("commit");
        }
        close(store, writer).await;

        let db = redb::Database::open(dir.path().join("executor.redb")).expect("db");
        assert_eq!(all(&db).expect("tasks"), tasks);
        let txn = db.begin_read().expect("read");
        let rows = redb::ReadableTableMetadata::len(&txn.open_table(TASK_ROWS).expect("rows")).expect("len");
        assert!((3..30).contains(&rows), "30 tasks in one commit take a few rows, not one each: {rows} rows");
    }

    #[tokio::test]
    async fn tasks_of_the_keyed_layout_are_moved_into_rows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old: Vec<_> = (0..20).map(task).collect();
        {
            let db = redb::Database::create(dir.path().join("executor.redb")).expect("db");
            let txn = db.begin_write().expect("write");
            {
                let mut table = txn.open_table(OLD_TASKS).expect("old table");
                for (id, record) in old.iter().rev() {
                    table.insert(id.as_str(), record.as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let (store, writer) = open(dir.path());
        let new = task(20);
        let ops = vec![Op::PutTask { id: new.0.clone(), record: new.1.clone() }];
        store.commit(Batch { ops, durable: true }).await.expect("commit");
        close(store, writer).await;

        let db = redb::Database::open(dir.path().join("executor.redb")).expect("db");
        let mut expected = old;
        expected.push(new);
        assert_eq!(all(&db).expect("tasks"), expected, "old tasks in id order, then the new one");
        let txn = db.begin_read().expect("read");
        assert!(txn.list_tables().expect("tables").all(|t| t.name() != OLD_TASKS.name()), "old table dropped");
    }
}
