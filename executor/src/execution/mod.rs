//! Execution: the request model and the engine that runs it.
//!
//! [`Request`] is a workflow request after the API's schema layer: the plan (an action, or the
//! reference's failure code for a payload that cannot run) and the facts events carry. The
//! [`Engine`] executes it under an idempotency claim and records the outcome through the store
//! boundary; its [`ExecutionError`]s are mapped to HTTP by the API layer, not here.

mod engine;

pub use engine::Engine;

use bytes::Bytes;
use serde_json::Value;

use crate::adapters::{Action, Failure};

/// A workflow request, validated.
#[derive(Debug)]
pub struct Request {
    /// The caller's trace id.
    pub trace_id: String,
    /// What to do, or why it cannot be done (an executed failure).
    pub plan: Result<Action, Failure>,
    /// `action_type` as sent (bounded), for events; `unknown` when missing.
    pub action_type: String,
    /// `payload.user_id`.
    pub user_id: Option<String>,
    /// `payload.product`.
    pub product: Option<String>,
    /// `payload.metadata` (an object).
    pub metadata: Option<Value>,
    /// SHA-256 of the canonical request (trace id, decision and payload), hex.
    pub fingerprint: String,
}

impl Request {
    /// Whether executing it calls a remote provider.
    pub fn is_remote(&self) -> bool {
        self.plan.as_ref().is_ok_and(Action::is_remote)
    }
}

/// The engine's answer to a workflow request: the JSON body, serialized once.
#[derive(Debug)]
pub enum Answer {
    /// Executed now.
    Fresh(Bytes),
    /// The stored answer of an earlier identical request.
    Replay(Bytes),
}

/// Why a request was not executed (or its outcome not recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutionError {
    /// An identical request holds the key right now.
    #[error("an identical request is being executed")]
    InProgress,
    /// The key belongs to a different request.
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    /// A fail-closed outbox is full.
    #[error("the {sink} outbox is full")]
    OutboxFull {
        /// The sink's name.
        sink: &'static str,
    },
    /// The store cannot record; nothing was executed, or the outcome is kept until it can be.
    #[error("the store is unavailable: {cause}")]
    StoreUnavailable {
        /// Why, in plain words (no message content).
        cause: String,
        /// Whether the action was performed and its outcome waits to be recorded.
        outcome_kept: bool,
    },
}
