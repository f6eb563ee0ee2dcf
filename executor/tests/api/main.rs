//! Black-box tests of the Workflow Executor: one binary, every test spawns a real executor on
//! `127.0.0.1:0` against fakes of its neighbours (see [`helpers`]).
//!
//! - [`execute`]: every adapter's success path, every executed-failure `error_code`, the guard.
//! - [`rejections`]: every rejection status with its structured body, caller tokens, shedding.
//! - [`hostile`]: a table of malformed and hostile requests; the service keeps serving.
//! - [`telemetry`]: Bucket and Karma event shapes and headers, outages, dead letters, full
//!   outboxes, `/healthz`, `/api/integration/status` and `/metrics`.
//! - [`karma_encoding`]: the `spec` and `as-built` Karma events; outcomes mapped to nothing are
//!   skipped and counted.
//! - [`idempotency`]: replays, 409 for a concurrent duplicate, 422 for a reused key.
//! - [`crash`]: the real binary killed with SIGKILL and restarted on the same data directory.
//! - [`store_faults`]: damaged store files, a journal cut short, a full disk, repeated SIGKILLs.
//! - [`shutdown`]: graceful shutdown flushes queued events; a restart resumes delivery.
//! - [`edge`]: hostile clients (slowloris, idle sockets, the connection cap, an over-limit body
//!   sent whole), readiness and drain, process metrics, start-up errors, plain redirected logs,
//!   prompt recovery of a sink.
//! - [`spans`]: OpenTelemetry export: the spans of every adapter, a continued `traceparent`,
//!   delivery spans after an outage, nothing exported when export is off.
//! - [`replicas`]: three processes on one PostgreSQL database: racing duplicates, a replica
//!   killed under load, a Bucket outage.
//! - [`client`]: the caller's client (what Core uses), awaited, fire-and-forget and health check.

mod client;
mod crash;
mod edge;
mod execute;
mod helpers;
mod hostile;
mod idempotency;
mod karma_encoding;
mod rejections;
mod replicas;
mod shutdown;
mod spans;
mod store_faults;
mod telemetry;
