//! The BHIV Workflow Executor: the pillar that performs real-world actions for Core.
//!
//! It reasons about nothing: it executes exactly one adapter for a `workflow` decision, answers
//! at once, and reports every execution to Bucket (audit) and Karma (behaviour) through a durable
//! outbox, so a pillar outage never blocks a response nor loses an event.
//!
//! # Layout (each layer uses only the ones below it)
//!
//! - [`app`]: [`Application`] builds everything, binds, serves, and shuts down in order.
//! - [`server`]: the listener's defences: header-read and idle timeouts, the connection cap,
//!   graceful close of connections.
//! - [`api`]: HTTP only: parsing into the request model ([`api::request`]), rejections mapped to
//!   HTTP ([`api::error`]), the execute route and the ops routes.
//! - [`execution`]: the request model and the [`execution::Engine`]: idempotency, the one adapter
//!   call, and the atomic commit of the outcome; its own error type.
//! - [`adapters`]: `task`, `whatsapp` (Cloud API), `email` (SMTP), `ai` (OpenAI-compatible); they
//!   return what they did (and the task they created) as domain values.
//! - [`outbox`]: the Bucket and Karma event shapes with masking, and the background deliverers.
//! - [`store`]: the store boundary ([`store::Store`]) and its backends.
//! - Leaves: [`config`], [`metrics`], [`contract`] (the wire contract as types), [`trace`]
//!   (trace headers), [`clock`] (time and ids), [`client`] (what Core uses to dispatch),
//!   [`logging`], [`telemetry`] (OpenTelemetry span export, off unless configured).

pub mod adapters;
pub mod api;
pub mod app;
pub mod client;
pub mod clock;
pub mod config;
pub mod contract;
pub mod execution;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod trace;

pub use app::{Application, StartError};
pub use config::Settings;
