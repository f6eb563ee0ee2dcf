//! The BHIV Workflow Executor: the pillar that performs real-world actions for Core.
//!
//! It reasons about nothing: it executes exactly one adapter for a `workflow` decision, answers
//! at once, and reports every execution to Bucket (audit) and Karma (behaviour) through a durable
//! outbox, so a pillar outage never blocks a response nor loses an event.
//!
//! # Layout
//!
//! - [`config`]: the typed settings tree, read from the environment and validated at start.
//! - [`app`]: [`Application`] builds everything, binds, serves, and shuts down in order.
//! - [`api`]: the HTTP routes; [`api::request`] is the wire contract's schema layer,
//!   [`api::error`] the one mapping of rejections to HTTP.
//! - [`contract`]: the wire contract as types; `executor/contracts/` holds their JSON Schemas.
//! - [`engine`]: idempotency, the one adapter call, and the atomic commit of answer and events.
//! - [`adapters`]: `task` (local durable store), `whatsapp` (Cloud API), `email` (SMTP), `ai`
//!   (OpenAI-compatible).
//! - [`store`]: the embedded redb store, its group-commit writer and its applier; `wal` its
//!   write-ahead log, `answers` the append-only layout of stored answers, `key_filter` the Bloom
//!   filter that spares fresh requests a lookup, `tasks` the packed rows of the task adapter's
//!   tasks.
//! - [`events`]: the Bucket and Karma event shapes, with recipient masking.
//! - [`delivery`]: background deliverers with backoff, circuit breakers and dead letters.
//! - [`metrics`]: the Prometheus registry.
//! - [`trace`]: trace-id rules and the `X-Trace-Id` / `traceparent` headers.
//! - [`client`]: the caller's client (what Core uses to dispatch workflows).
//! - [`logging`]: tracing subscriber setup (text or JSON).

pub mod adapters;
mod answers;
pub mod api;
pub mod app;
pub mod client;
pub mod config;
pub mod contract;
pub mod delivery;
pub mod engine;
pub mod events;
mod key_filter;
pub mod logging;
pub mod metrics;
pub mod store;
mod tasks;
pub mod trace;
mod wal;

pub use app::{Application, StartError};
pub use config::Settings;

/// A fresh random (version 4) UUID for event and message ids. Ids need uniqueness, not secrecy:
/// they come from the thread's fast generator, where `Uuid::new_v4` makes a system call each.
pub fn new_id() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

/// A fresh time-ordered (version 7) UUID, so ids created in sequence land at the end of a
/// B-tree; random bits as in [`new_id`].
pub fn new_time_ordered_id() -> uuid::Uuid {
    let random: [u8; 10] = fastrand::u128(..).to_le_bytes()[..10].try_into().expect("10 bytes");
    uuid::Builder::from_unix_timestamp_millis(store::now_ms(), &random).into_uuid()
}

/// Now, as RFC 3339 in UTC (`2026-11-25T15:14:42.123456789Z`).
pub fn now_rfc3339() -> String {
    // Into a buffer of the final size: `format` grows its output a few bytes at a time.
    let mut out = Vec::with_capacity(32);
    match time::OffsetDateTime::now_utc().format_into(&mut out, &time::format_description::well_known::Rfc3339) {
        Ok(_) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => String::from("1970-01-01T00:00:00Z"),
    }
}
