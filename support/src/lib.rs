//! What every test suite of the workspace shares (the executor's unit and black-box tests, the
//! simulator's tests, the contract snapshots and the Cucumber features).
//!
//! - [`eventually`]: polling with a deadline, the one way a test waits.
//! - [`executor`]: the fast executor settings ([`FAST_EXECUTOR`]), a [`pillar_sim::Stack`] of
//!   fakes for an executor of the test's own ([`neighbours_builder`]), and its routes called
//!   the same way everywhere ([`ExecutorClient`]).
//! - [`process`]: the executor binary as a child process ([`ExecutorProcess`]);
//!   [`in_process`]: the executor on a task of the test process ([`InProcessExecutor`]).
//! - [`response`]: an executor's answer ([`TestResponse`]) and the contract's assertions on it.
//! - [`metrics`]: Prometheus text looked up by name and labels ([`MetricsText`]).
//! - [`postgres`]: a real PostgreSQL server started on demand.
//!
//! Nothing here waits a fixed time or uses a fixed port.

pub mod executor;
pub mod in_process;
pub mod metrics;
mod poll;
pub mod postgres;
pub mod process;
pub mod response;

pub use executor::{ExecutorClient, FAST_EXECUTOR, neighbours_builder};
pub use in_process::InProcessExecutor;
pub use metrics::MetricsText;
pub use poll::{Probe, eventually};
pub use process::{ExecutorProcess, NotServing};
pub use response::{TestResponse, assert_traceparent, read_raw_answer};
