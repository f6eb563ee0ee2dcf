//! What every test suite of the workspace shares (the executor's unit and black-box tests, the
//! simulator's tests, the contract snapshots and the Cucumber features).
//!
//! - [`eventually`]: polling with a deadline, the one way a test waits.
//! - [`executor`]: the fast executor settings ([`FAST_EXECUTOR`]) and an executor's variables
//!   for a [`pillar_sim::Stack`] of fakes ([`neighbours_env`]).
//! - [`process`]: the executor binary as a child process ([`ExecutorProcess`]).
//! - [`response`]: an executor's answer ([`TestResponse`]) and the contract's assertions on it.
//! - [`metrics`]: Prometheus text looked up by name and labels ([`MetricsText`]).
//! - [`postgres`]: a real PostgreSQL server started on demand.
//!
//! Nothing here waits a fixed time or uses a fixed port.

pub mod executor;
pub mod metrics;
pub mod postgres;
pub mod process;
pub mod response;

pub use executor::{FAST_EXECUTOR, neighbours_builder, neighbours_env};
pub use metrics::MetricsText;
pub use process::{ExecutorProcess, NotServing};
pub use response::{TestResponse, assert_traceparent, read_raw_answer};

use std::time::{Duration, Instant};

/// Polls `probe` until it yields a value, failing the test with `what` after `deadline`. The
/// pause between probes starts at 5 ms and doubles up to 50 ms.
pub async fn eventually<T>(deadline: Duration, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if started.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
