//! # Contract snapshots
//!
//! Every JSON shape the stack speaks, pinned with insta through a real in-process stack
//! (`pillar_sim::Stack` with the executor, all on ephemeral ports, one stack per test). The
//! snapshots live in `tests/snapshots/contracts__*.snap`; a renamed field, a changed type, a
//! dropped header or a new outbound call fails the suite with a diff.
//!
//! - [`adapters`]: success per adapter — the execute answer, the provider request, the Bucket
//!   and Karma events (with their contract headers) — the skipped answer and a replay.
//! - [`as_built`]: the `as-built` Karma encoding and the as-built pillars' measured answers.
//! - [`failures`]: every validation failure code, and the provider failure codes made with
//!   the simulator's faults.
//! - [`rejections`]: 400, 401, 403, 404, 405, 409, 413, 415, 422 and 503 with their error bodies.
//! - [`ops`]: `/healthz` and `/api/integration/status`, healthy and degraded; the metric
//!   families of `/metrics`; 503 for a full audit outbox.
//! - [`simulator`]: Core's `/handle_task` and the control API.
//! - [`traffic`]: the observed-traffic contract (per pillar: method, path, header names and the
//!   body's JSON shape of every call the executor makes under a representative workload).
//! - [`support`]: the stack helper, redaction (`[uuid]`, `[timestamp]`, `[duration]`, `[url]`,
//!   ...) and the one snapshot assertion.
//!
//! Review changes with `cargo insta review` (or `INSTA_UPDATE=always` and `git diff`); with
//! `CI=true` nothing is written and any difference fails.

#[path = "contracts/adapters.rs"]
mod adapters;
#[path = "contracts/as_built.rs"]
mod as_built;
#[path = "contracts/failures.rs"]
mod failures;
#[path = "contracts/ops.rs"]
mod ops;
#[path = "contracts/rejections.rs"]
mod rejections;
#[path = "contracts/simulator.rs"]
mod simulator;
#[path = "contracts/support.rs"]
mod support;
#[path = "contracts/traffic.rs"]
mod traffic;
