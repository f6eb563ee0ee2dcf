//! What every test suite of the workspace shares (the executor's unit and black-box tests, the
//! simulator's tests, the contract snapshots and the Cucumber features): a real PostgreSQL
//! server started on demand ([`postgres`]) and polling with a deadline ([`eventually`]).
//!
//! Nothing here waits a fixed time or uses a fixed port.

pub mod postgres;

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
