//! Waiting without fixed sleeps: [`eventually`] polls a probe until it holds or a deadline
//! passes, and then fails the test naming what it waited for and, when the probe gave one, why
//! the last check failed. A probe that hangs is cut off at the deadline instead of hanging the
//! test.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// What one check of [`eventually`] found: a value when the condition holds, or "not yet" with
/// the reason when the probe has one. `Option<T>` (no reason) and `Result<T, E: Display>` (the
/// error is the reason) are probes.
pub trait Probe<T> {
    /// The value, or the reason (if any) it is not there yet.
    fn check(self) -> Result<T, Option<String>>;
}

impl<T> Probe<T> for Option<T> {
    fn check(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Probe<T> for Result<T, E> {
    fn check(self) -> Result<T, Option<String>> {
        self.map_err(|reason| Some(reason.to_string()))
    }
}

/// Polls `probe` until it yields a value, failing the test with `what` (and the last reason)
/// after `deadline`. The pause between checks starts at 5 ms and doubles up to 50 ms.
pub async fn eventually<T, P: Probe<T>>(deadline: Duration, what: &str, mut probe: impl AsyncFnMut() -> P) -> T {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        let last = match tokio::time::timeout(left.max(Duration::from_millis(1)), probe()).await {
            Ok(found) => match found.check() {
                Ok(value) => return value,
                Err(reason) => reason,
            },
            Err(_) => Some("the last check itself did not finish".to_owned()),
        };
        if started.elapsed() >= deadline {
            match last {
                Some(reason) => panic!("{what}: not within {deadline:?}: {reason}"),
                None => panic!("{what}: not within {deadline:?}"),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_the_first_value_a_probe_yields() {
        let calls = AtomicUsize::new(0);
        let found = eventually(Duration::from_secs(5), "the third call", async || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n)
        })
        .await;
        assert_eq!(found, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "it is ready: not within 30ms: not ready: 7 left")]
    async fn names_the_last_reason_when_the_deadline_passes() {
        eventually(Duration::from_millis(30), "it is ready", async || Err::<(), _>("not ready: 7 left")).await;
    }

    #[tokio::test]
    #[should_panic(expected = "the last check itself did not finish")]
    async fn cuts_off_a_probe_that_hangs() {
        eventually(Duration::from_millis(30), "a hanging probe answers", async || {
            std::future::pending::<Option<()>>().await
        })
        .await;
    }
}
