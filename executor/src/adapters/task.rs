//! The task adapter: a durable local task store in the executor's data directory.
//!
//! The task row is committed in the same transaction as the execution record and its events, so
//! a task exists exactly when its execution is recorded. Task ids are time-ordered (UUIDv7), so
//! inserts land at the end of the table's B-tree.

use serde_json::{Value, json};

use super::{Performed, fields};
use crate::store::Op;

/// Creates a task; the returned op stores it.
pub(super) fn create(title: &str, description: &str, trace_id: &str) -> Performed {
    let task_id = format!("task_{}", crate::new_time_ordered_id().simple());
    let created_at = crate::now_rfc3339();
    let record = json!({
        "task_id": task_id, "title": title, "description": description, "status": "CREATED",
        "trace_id": trace_id, "created_at": created_at,
    });
    Performed {
        fields: fields([
            ("task_id", Value::String(task_id.clone())),
            ("task_status", json!("CREATED")),
            ("reference", Value::String(format!("local://tasks/{task_id}"))),
            ("created_at", Value::String(created_at)),
        ]),
        ops: vec![Op::PutTask { id: task_id, record: serde_json::to_vec(&record).unwrap_or_default() }],
    }
}
