//! The wire contract as types: what the executor accepts, answers and emits.
//!
//! The executor serializes its answers and events through these types, and the JSON Schema files
//! in `executor/contracts/` are generated from them ([`schemas`]) and pinned by a test, so the
//! Python pillars can validate against the same definitions the service uses. The request is
//! parsed by hand in [`crate::api::request`] (to give field-precise errors); [`ExecuteRequest`]
//! documents the shape that parser accepts.

use schemars::{JsonSchema, Schema, schema_for};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Header set on a replayed answer.
pub const REPLAY_HEADER: &str = "idempotent-replayed";

/// One of the five decisions Core may send; only `workflow` executes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Core answers the user itself.
    Respond,
    /// Core handles a task itself.
    Task,
    /// Execute a workflow.
    Workflow,
    /// Core produces an insight.
    Insight,
    /// Core's fallback path.
    Fallback,
}

/// `POST /api/workflow/execute` body.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ExecuteRequest {
    /// Core's trace id: 1-128 characters of `[A-Za-z0-9._:-]`.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub trace_id: String,
    /// What Core decided.
    pub decision: Decision,
    /// Required when `decision` is `workflow`.
    pub data: Option<WorkflowData>,
}

/// The `data` object of a request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowData {
    /// Always `"workflow"`.
    #[schemars(regex(pattern = r"^workflow$"))]
    pub workflow_type: String,
    /// The action and its fields.
    pub payload: Payload,
}

/// The workflow payload: `action_type` selects the adapter; the adapter fields ride along.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Payload {
    /// `task`, `whatsapp`, `email` or `ai`.
    pub action_type: Option<String>,
    /// Optional; must equal the top-level `trace_id` when present.
    pub trace_id: Option<String>,
    /// The user the action is for (Karma's subject).
    #[schemars(length(max = 128))]
    pub user_id: Option<String>,
    /// Product label (Bucket's isolation key).
    #[schemars(length(max = 128))]
    pub product: Option<String>,
    /// Caller metadata, copied to the audit event (at most 4 KiB serialized).
    pub metadata: Option<Map<String, Value>>,
    /// task: required.
    #[schemars(length(max = 256))]
    pub title: Option<String>,
    /// task: optional.
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// whatsapp: E.164 phone number; email: address.
    #[schemars(length(max = 254))]
    pub recipient: Option<String>,
    /// whatsapp: alias of `recipient`.
    #[schemars(length(max = 254))]
    pub phone: Option<String>,
    /// whatsapp: the text.
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
    /// email: subject line.
    #[schemars(length(max = 256))]
    pub subject: Option<String>,
    /// email: plain-text body.
    #[schemars(length(max = 32768))]
    pub body: Option<String>,
    /// ai: the prompt.
    #[schemars(length(max = 16384))]
    pub prompt: Option<String>,
    /// ai: alias of `prompt`.
    #[schemars(length(max = 16384))]
    pub content: Option<String>,
}

/// Outcome of an executed workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// The adapter succeeded.
    Success,
    /// Validation, adapter or provider failure.
    Failed,
}

impl ExecutionStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Success => "success",
            ExecutionStatus::Failed => "failed",
        }
    }
}

/// Answer to an executed workflow (HTTP 200).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ExecuteResponse {
    /// The caller's trace id.
    pub trace_id: String,
    /// `success` or `failed`.
    pub status: ExecutionStatus,
    /// What happened.
    pub execution_result: ExecutionResult,
}

/// The `execution_result` object.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionResult {
    /// Whether the action was performed.
    pub success: bool,
    /// The caller's trace id.
    pub trace_id: String,
    /// When the execution finished (RFC 3339, UTC).
    pub timestamp: String,
    /// On failure: `missing_action_type`, `unsupported_action_type`, `missing_task_title`,
    /// `missing_recipient`, `missing_message`, `missing_subject`, `missing_body`,
    /// `missing_prompt`, `invalid_recipient`, `provider_timeout`, `provider_unavailable`,
    /// `provider_rejected`, `provider_error`, `provider_bad_response`, `outcome_unknown`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// On failure: what went wrong, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// On success, the adapter's fields (task: `task_id`, `task_status`, `reference`,
    /// `created_at`; whatsapp: `whatsapp_message_id`, `recipient`, `message`, `status`,
    /// `sent_at`; email: `message_id`, `recipient`, `subject`, `status`, `sent_at`; ai:
    /// `request_id`, `prompt`, `response`, `model`, `requested_at`).
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// Answer when the decision is not `workflow` (HTTP 200).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SkippedResponse {
    /// The caller's trace id.
    pub trace_id: String,
    /// Always `skipped`.
    pub status: String,
    /// Always `decision_not_workflow`.
    pub reason: String,
}

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// Compatibility with the reference: a string, or FastAPI's list of `{type, loc, msg}` for 422.
    pub detail: Value,
    /// The structured error.
    pub error: ErrorInfo,
}

/// The structured part of an error body.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorInfo {
    /// Stable machine-readable code.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The offending field (dotted path), when there is one.
    pub field: Option<String>,
}

/// The event posted to Bucket's `/core/write-event`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BucketEvent {
    /// Always `workflow_executor`.
    pub requester_id: String,
    /// The audit record.
    pub event_data: BucketEventData,
}

/// The audit record of one execution.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BucketEventData {
    /// Always `workflow_execution`.
    pub event_type: String,
    /// Unique per event; Bucket drops duplicates by it.
    pub event_id: String,
    /// The caller's trace id.
    pub trace_id: String,
    /// The requested action.
    pub action_type: String,
    /// `success` or `failed`.
    pub status: ExecutionStatus,
    /// The execution result without content fields, recipients masked.
    pub execution_result: Value,
    /// When the execution finished (RFC 3339, UTC).
    pub timestamp: String,
    /// The user, if the caller named one.
    pub user_id: Option<String>,
    /// Product label (`unknown` when absent).
    pub product: String,
    /// Execution wall time.
    pub duration_ms: u64,
    /// The caller's `metadata` object (never the payload).
    pub metadata: Value,
}

/// The behavioural event posted to Karma's `/v1/event/`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct KarmaEvent {
    /// Always `life_event`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unique per event; Karma drops duplicates by it.
    pub event_id: String,
    /// When the execution finished (RFC 3339, UTC).
    pub timestamp: String,
    /// The life event.
    pub data: KarmaEventData,
    /// Always `workflow_executor`.
    pub source: String,
}

/// The `data` of a Karma life event.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct KarmaEventData {
    /// The user (`system` when the caller named none).
    pub user_id: String,
    /// `workflow_success` or `workflow_failure` (`as-built`: the mapped Karma action).
    pub action: String,
    /// Always `user` (`as-built`: `EXECUTOR_KARMA_ROLE`).
    pub role: String,
    /// `Workflow execution: <action_type>`.
    pub note: String,
    /// Where the event comes from (`as-built` encoding: this object plus `status`, serialized
    /// to a JSON string, as the deployed Karma requires).
    pub context: KarmaContext,
}

/// The `context` of a Karma life event (`as-built` encoding: this object as a JSON string, plus
/// `status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct KarmaContext {
    /// The caller's trace id.
    pub trace_id: String,
    /// The requested action.
    pub action_type: String,
    /// Always `workflow_executor`.
    pub source: String,
    /// Same as the event's `event_id`.
    pub event_id: String,
}

/// Every published schema, by file name.
pub fn schemas() -> Vec<(&'static str, Schema)> {
    vec![
        ("execute_request.schema.json", schema_for!(ExecuteRequest)),
        ("execute_response.schema.json", schema_for!(ExecuteResponse)),
        ("skipped_response.schema.json", schema_for!(SkippedResponse)),
        ("error_body.schema.json", schema_for!(ErrorBody)),
        ("bucket_event.schema.json", schema_for!(BucketEvent)),
        ("karma_event.schema.json", schema_for!(KarmaEvent)),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The files in `executor/contracts/` are exactly what the types generate. Run with
    /// `UPDATE_CONTRACTS=1` to rewrite them after a deliberate contract change (never in CI).
    #[test]
    fn published_json_schemas_match_the_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contracts");
        let update = std::env::var_os("UPDATE_CONTRACTS").is_some() && std::env::var_os("CI").is_none();
        let mut stale = Vec::new();
        for (name, schema) in schemas() {
            let generated = serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n";
            let path = dir.join(name);
            if update {
                std::fs::create_dir_all(&dir).expect("contracts dir");
                std::fs::write(&path, &generated).expect("write schema");
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(generated.as_str()) {
                stale.push(name);
            }
        }
        let expected: Vec<&str> = schemas().iter().map(|(n, _)| *n).collect();
        let on_disk: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let unexpected: Vec<&String> = on_disk.iter().filter(|f| !expected.contains(&f.as_str())).collect();
        assert!(
            stale.is_empty() && unexpected.is_empty(),
            "executor/contracts/ is out of date (stale: {stale:?}, unexpected: {unexpected:?}); \
             review the contract change, then run `UPDATE_CONTRACTS=1 cargo test -p workflow-executor contract`"
        );
    }
}
