//! Small tools every step group uses: bounded waits, percentiles, timestamps and JSON paths.
//!
//! Nothing here sleeps a fixed time to wait for something: [`eventually`] polls a check until it
//! holds or a deadline passes (and then fails the step with the last reason), [`bounded`] puts a
//! deadline on any future, so a hang fails the scenario instead of the run.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long a step waits for something that should happen soon (an event delivered, a state
/// reached) before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// How often [`stays`] re-checks.
const POLL: Duration = Duration::from_millis(20);

pub use test_support::eventually;

/// Checks that `check` keeps returning `Ok` for `window` (polling); panics on the first `Err`.
/// Used only to show that something does *not* happen, after a positive control showed that
/// the thing it is compared with did.
pub async fn stays<F, Fut>(what: &str, window: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + window;
    loop {
        if let Err(reason) = check().await {
            panic!("{what}: {reason}");
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Awaits `future` for at most `timeout`; panics naming `what` when it takes longer.
pub async fn bounded<T>(what: &str, timeout: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {timeout:?}"),
    }
}

/// The `p`-th percentile (nearest rank) of `samples`; panics when there are none.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    assert!(!samples.is_empty(), "no samples to take a percentile of");
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp (`2026-11-25T15:14:42.123456Z`),
/// as the pillars write them.
pub fn rfc3339_seconds(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let time = time.trim_end_matches('Z');
    let (time, offset) = match time.rfind(['+', '-']) {
        Some(i) if i > 0 => (&time[..i], Some(&time[i..])),
        _ => (time, None),
    };
    let mut hms = time.split(':');
    let hours: f64 = hms.next()?.parse().ok()?;
    let minutes: f64 = hms.next()?.parse().ok()?;
    let seconds: f64 = hms.next()?.parse().ok()?;
    let offset_seconds = match offset {
        None => 0.0,
        Some(o) => {
            let sign = if o.starts_with('-') { -1.0 } else { 1.0 };
            let (h, m) = o[1..].split_once(':')?;
            sign * (h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hours * 3600.0 + minutes * 60.0 + seconds - offset_seconds)
}

/// Seconds since the Unix epoch of a wall-clock instant.
pub fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// The value at a dotted path (`execution_result.success`, `data.context.trace_id`).
pub fn at_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| match v {
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => v.get(key),
    })
}

/// Whether a JSON value matches how a feature table writes it: strings verbatim, everything
/// else by its JSON text (`true`, `5`, `null`).
pub fn matches_text(value: &Value, expected: &str) -> bool {
    match value {
        Value::String(s) => s == expected,
        Value::Number(n) => expected.parse::<f64>().is_ok_and(|e| n.as_f64().is_some_and(|v| (v - e).abs() < 1e-9)),
        other => expected.parse::<Value>().is_ok_and(|e| e == *other),
    }
}
