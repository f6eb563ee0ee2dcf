//! The task adapter: a durable local task, recorded in the executor's store.
//!
//! The task is committed in the same transaction as the execution record and its events, so a
//! task exists exactly when its execution is recorded. Task ids are time-ordered (UUIDv7).

use serde::Serialize;
use serde_json::{Value, json};

use super::{CreatedTask, Performed, fields};

/// A stored task (fields in the order the first versions wrote them).
#[derive(Serialize)]
struct TaskRecord<'a> {
    created_at: &'a str,
    description: &'a str,
    status: &'static str,
    task_id: &'a str,
    title: &'a str,
    trace_id: &'a str,
}

/// Creates a task; the returned op stores it.
pub(super) fn create(title: &str, description: &str, trace_id: &str) -> Performed {
    let task_id = format!("task_{}", crate::clock::new_time_ordered_id().simple());
    let created_at = crate::clock::now_rfc3339();
    let record =
        TaskRecord { created_at: &created_at, description, status: "CREATED", task_id: &task_id, title, trace_id };
    let record = serde_json::to_vec(&record).unwrap_or_default();
    Performed {
        fields: fields([
            ("reference", Value::String(format!("local://tasks/{task_id}"))),
            ("task_id", Value::String(task_id.clone())),
            ("task_status", json!("CREATED")),
            ("created_at", Value::String(created_at)),
        ]),
        created: Some(CreatedTask { id: task_id, record }),
    }
}
