//! The step library: reusable Cucumber steps for the BHIV stack, grouped by domain concept.
//!
//! | module | concept |
//! |---|---|
//! | [`world`] | the scenario's world: its own in-process stack (or the external services) and what it did |
//! | [`params`] | custom parameter types: `{pillar}`, `{service}`, `{fault}`, `{action}`, `{profile}`, `{outcome}`, `{measure}`, `{trace}` |
//! | [`stack`] | starting the stack, profiles, documented settings, restarting the executor, start-up order |
//! | [`faults`] | breaking pillars (refused, blackholed, slow, erroring, flapping, ...) and recovery |
//! | [`core`] | users asking Core, its agent's decision, its fire-and-forget dispatch |
//! | [`executor`] | requests to the executor (workflows, replays, hostile input) and its answers |
//! | [`bucket`] | what Bucket stores, its append-only routes, hash chain, read gates, product isolation |
//! | [`karma`] | behavioural events, karma balances and the Q-learning rule |
//! | [`journal`] | what the fakes saw: calls, answers, `X-Trace-Id` and `traceparent` headers |
//! | [`replicas`] | several executors on one PostgreSQL database behind the stack's front; stopping and starting them |
//! | [`health`] | health checks, `/healthz`, `/api/integration/status`, `/metrics` |
//! | [`traces`] | the spans the executor exported, as the simulator's OTLP receiver holds them |
//! | [`timing`] | load and latency percentiles against the integration document's budgets |
//! | [`payloads`], [`support`], [`stub`] | named requests, bounded waits and helpers, test-side stand-ins |
//!
//! `features/README.md` lists every step with its meaning.

pub mod bucket;
pub mod core;
pub mod executor;
pub mod faults;
pub mod health;
pub mod journal;
pub mod karma;
pub mod params;
pub mod payloads;
pub mod replicas;
pub mod stack;
pub mod stub;
pub mod support;
pub mod timing;
pub mod traces;
pub mod world;

pub use world::{BhivWorld, Simulated, detect_simulated, external_mode, simulated};
