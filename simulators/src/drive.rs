//! The load driver (`pillar-sim drive`) and the baseline handler it is compared with.
//!
//! **Open loop** (`--rate`): request *i* is due at `start + i / rate` whatever happened before,
//! and its latency is measured from that due time, so a slow server cannot hide its queueing
//! (no coordinated omission). **Closed loop** (`--concurrency`): that many workers send
//! back-to-back, which finds the throughput ceiling. Both send Core's request shape with a mix
//! of action types, one fresh trace id per request.
//!
//! After the run, the driver can check end to end that every trace id it sent reached Bucket and
//! Karma, by reading the pillars' own counts (`--check`): lost and duplicated events are counted
//! per sink. Both counts survive the simulator's bounded memory: Bucket's `count` is of every
//! event ever stored for the run's product (kept or evicted), Karma's is the run user's
//! `total_actions` (a user is state, and the run's user is the most recently updated one).
//!
//! The **baseline** (`pillar-sim baseline`) is the ceiling on this machine: a minimal axum handler
//! that parses the same JSON body and answers a constant.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Which actions to send, with weights.
#[derive(Debug, Clone)]
pub struct Mix(pub Vec<(String, u32)>);

impl Mix {
    /// Parses `task=3,whatsapp=1` (a bare name weighs 1).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((n, w)) => {
                    (n, w.parse::<u32>().map_err(|_| format!("mix: weight of `{n}` must be a whole number"))?)
                }
                None => (part, 1),
            };
            if !matches!(name, "task" | "whatsapp" | "email" | "ai") {
                return Err(format!("mix: unknown action `{name}` (task, whatsapp, email, ai)"));
            }
            parts.push((name.to_owned(), weight));
        }
        if parts.iter().map(|(_, w)| w).sum::<u32>() == 0 {
            return Err("mix: at least one action needs a positive weight".into());
        }
        Ok(Self(parts))
    }

    /// The action of request `n` (deterministic round robin by weight).
    fn pick(&self, n: u64) -> &str {
        let total: u64 = self.0.iter().map(|(_, w)| *w as u64).sum();
        let mut slot = n % total;
        for (name, weight) in &self.0 {
            if slot < *weight as u64 {
                return name;
            }
            slot -= *weight as u64;
        }
        &self.0[0].0
    }
}

/// How to load the target.
#[derive(Debug, Clone)]
pub enum Load {
    /// Fixed request rate (requests per second).
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// Fixed number of workers sending back to back.
    Closed {
        /// Workers.
        concurrency: usize,
    },
}

/// What the driver sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /api/workflow/execute` with Core's body (the executor or the baseline).
    Execute,
    /// `POST /core/write-event` with the executor's audit event (Bucket itself).
    Bucket,
}

/// A driver run.
#[derive(Debug, Clone)]
pub struct DriveConfig {
    /// Base URL of the target.
    pub target: String,
    /// What to send.
    pub kind: Kind,
    /// Open or closed loop.
    pub load: Load,
    /// How long to send.
    pub duration: Duration,
    /// Action mix.
    pub mix: Mix,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Prefix of the trace ids (unique per run).
    pub run_id: String,
    /// Product label on every request (lets the end-to-end check read only this run's events).
    pub product: String,
    /// Bearer token, if the executor requires one.
    pub token: Option<String>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Worst.
    pub max: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct DriveReport {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Failures by kind (`http_503`, `timeout`, `connect`, ...).
    pub errors: HashMap<String, u64>,
    /// Answers with `status: success` / `failed` / other.
    pub outcomes: HashMap<String, u64>,
    /// Wall time of the run, seconds.
    pub elapsed_seconds: f64,
    /// Answered requests per second.
    pub throughput: f64,
    /// Latency of answered requests.
    pub latency_ms: Percentiles,
}

/// The Karma user id of a run (each run has its own, so its events can be counted).
pub fn run_user(run_id: &str) -> String {
    format!("drive-{run_id}")
}

/// The request body Core sends for action `action`.
pub fn request_body(trace_id: &str, action: &str, run_id: &str, product: &str) -> Value {
    let mut payload =
        json!({"action_type": action, "trace_id": trace_id, "user_id": run_user(run_id), "product": product});
    let fields = match action {
        "task" => json!({"title": "Follow up with the learner", "description": "created by the load driver"}),
        "whatsapp" => json!({"recipient": "+919876543210", "message": "Your session starts in 10 minutes"}),
        "email" => json!({"recipient": "learner@example.com", "subject": "Session reminder", "body": "See you soon."}),
        _ => json!({"prompt": "Summarize today's lesson in one line"}),
    };
    if let (Some(p), Some(f)) = (payload.as_object_mut(), fields.as_object()) {
        p.extend(f.clone());
    }
    json!({"trace_id": trace_id, "decision": "workflow", "data": {"workflow_type": "workflow", "payload": payload}})
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: HashMap<String, u64>,
    outcomes: HashMap<String, u64>,
    ok: u64,
}

/// Runs the load and reports.
pub async fn run(config: DriveConfig) -> Result<DriveReport, String> {
    let path = match config.kind {
        Kind::Execute => "/api/workflow/execute",
        Kind::Bucket => "/core/write-event",
    };
    let url = format!("{}{path}", config.target.trim_end_matches('/'));
    let workers = match config.load {
        Load::Closed { concurrency } => concurrency.max(1),
        Load::Open { .. } => 256,
    };
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .pool_max_idle_per_host(workers)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let config = Arc::new(config);
    let started = Instant::now();
    let deadline = started + config.duration;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    match config.load {
        Load::Closed { concurrency } => {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..concurrency.max(1) {
                let (client, url, config, tally, sent) =
                    (client.clone(), url.clone(), config.clone(), tally.clone(), sent.clone());
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let due = Instant::now();
                        let result = send(&client, &url, &config, n).await;
                        record(&tally, due, result).await;
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
        Load::Open { rate } => {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("rate must be a positive number of requests per second".into());
            }
            let total = (rate * config.duration.as_secs_f64()).round() as u64;
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..total {
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let (client, url, config, tally) = (client.clone(), url.clone(), config.clone(), tally.clone());
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tasks.spawn(async move {
                    let result = send(&client, &url, &config, n).await;
                    record(&tally, due, result).await;
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    let mut tally = std::mem::take(&mut *tally.lock().await);
    tally.latencies_us.sort_unstable();
    Ok(DriveReport {
        sent,
        ok: tally.ok,
        errors: tally.errors,
        outcomes: tally.outcomes,
        elapsed_seconds: elapsed,
        throughput: tally.ok as f64 / elapsed.max(1e-9),
        latency_ms: percentiles(&tally.latencies_us),
    })
}

fn trace_id(run_id: &str, n: u64) -> String {
    format!("{run_id}-{n}")
}

/// An audit event as the executor writes it to Bucket.
fn bucket_body(trace_id: &str, product: &str) -> Value {
    json!({"requester_id": "workflow_executor", "event_data": {
        "event_type": "workflow_execution", "event_id": uuid::Uuid::new_v4().to_string(), "trace_id": trace_id,
        "action_type": "task", "status": "success", "execution_result": {"success": true, "trace_id": trace_id},
        "timestamp": now_rfc3339(), "user_id": "drive-user", "product": product, "duration_ms": 1,
        "metadata": {}}})
}

async fn send(client: &reqwest::Client, url: &str, config: &DriveConfig, n: u64) -> Result<String, String> {
    let trace = trace_id(&config.run_id, n);
    let body = match config.kind {
        Kind::Execute => request_body(&trace, config.mix.pick(n), &config.run_id, &config.product),
        Kind::Bucket => bucket_body(&trace, &config.product),
    };
    let mut request = client.post(url).header("x-trace-id", &trace).json(&body);
    if let Some(token) = &config.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_owned()
        } else if e.is_connect() {
            "connect".to_owned()
        } else {
            "transport".to_owned()
        }
    })?;
    let status = response.status();
    let answer: Value = response.json().await.map_err(|_| "bad_body".to_owned())?;
    if !status.is_success() {
        return Err(format!("http_{}", status.as_u16()));
    }
    let outcome = match config.kind {
        Kind::Execute => answer.get("status").and_then(Value::as_str),
        Kind::Bucket => answer.get("success").and_then(Value::as_bool).map(|ok| if ok { "success" } else { "failed" }),
    };
    Ok(outcome.unwrap_or("other").to_owned())
}

async fn record(tally: &Mutex<Tally>, due: Instant, result: Result<String, String>) {
    let latency = due.elapsed().as_micros() as u64;
    let mut tally = tally.lock().await;
    match result {
        Ok(outcome) => {
            tally.ok += 1;
            tally.latencies_us.push(latency);
            *tally.outcomes.entry(outcome).or_default() += 1;
        }
        Err(kind) => *tally.errors.entry(kind).or_default() += 1,
    }
}

/// Percentiles of sorted microsecond latencies, in milliseconds.
pub fn percentiles(sorted_us: &[u64]) -> Percentiles {
    if sorted_us.is_empty() {
        return Percentiles::default();
    }
    let at = |q: f64| {
        let index = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len()) - 1;
        sorted_us[index] as f64 / 1000.0
    };
    Percentiles { p50: at(0.50), p90: at(0.90), p99: at(0.99), p999: at(0.999), max: at(1.0) }
}

/// Lost and duplicated events of one sink, from the end-to-end check.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkCheck {
    /// Events the pillar holds for this run.
    pub received: u64,
    /// Executions whose event never arrived.
    pub lost: u64,
    /// Events beyond one per execution.
    pub duplicated: u64,
}

/// The end-to-end check of a run: did every execution reach Bucket and Karma, once?
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Bucket (the run's product, counted through `GET /core/events` as `bhiv_core`; the newest
    /// 1,000 events are also checked to belong to this run, one per trace id).
    pub bucket: SinkCheck,
    /// Karma (the run's user, counted through `GET /v1/stats/user/{id}`).
    pub karma: SinkCheck,
    /// Lost events, both sinks.
    pub lost_total: u64,
    /// Duplicated events, both sinks.
    pub duplicated_total: u64,
    /// How long the check waited for deliveries to settle, seconds.
    pub waited_seconds: f64,
}

/// Waits (up to `patience`) until Bucket and Karma hold one event per answered execution of the
/// run, then counts what is missing or extra.
pub async fn check(
    bucket: &str,
    karma: &str,
    run_id: &str,
    product: &str,
    expected: u64,
    patience: Duration,
) -> Result<CheckReport, String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let deadline = started + patience;
    loop {
        // A pillar that is still down (a fault not yet over) counts as "not yet", until the deadline.
        let (bucket_count, stray) = bucket_events(&client, bucket, run_id, product).await.unwrap_or((0, 0));
        let karma_count = karma_actions(&client, karma, &run_user(run_id)).await.unwrap_or(0);
        let settled = bucket_count >= expected && karma_count >= expected;
        if settled || Instant::now() >= deadline {
            let sink = |received: u64, extra: u64| SinkCheck {
                received,
                lost: expected.saturating_sub(received),
                duplicated: received.saturating_sub(expected).max(extra),
            };
            let report = CheckReport {
                bucket: sink(bucket_count, stray),
                karma: sink(karma_count, 0),
                waited_seconds: started.elapsed().as_secs_f64(),
                ..CheckReport::default()
            };
            return Ok(CheckReport {
                lost_total: report.bucket.lost + report.karma.lost,
                duplicated_total: report.bucket.duplicated + report.karma.duplicated,
                ..report
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The run's event count in Bucket, and how many of the newest 1,000 are duplicates or strangers.
async fn bucket_events(
    client: &reqwest::Client,
    bucket: &str,
    run_id: &str,
    product: &str,
) -> Result<(u64, u64), String> {
    let url = format!("{}/core/events", bucket.trim_end_matches('/'));
    let answer: Value = client
        .get(url)
        .query(&[("requester_id", "bhiv_core"), ("product", product), ("limit", "1000")])
        .send()
        .await
        .map_err(|e| format!("bucket unreachable: {e}"))?
        .json()
        .await
        .map_err(|e| format!("bucket answered garbage: {e}"))?;
    let count = answer.get("count").and_then(Value::as_u64).unwrap_or(0);
    let mut seen = std::collections::HashSet::new();
    let prefix = format!("{run_id}-");
    let stray = answer
        .get("events")
        .and_then(Value::as_array)
        .map(|events| {
            events
                .iter()
                .filter(|e| {
                    let trace = e.get("trace_id").and_then(Value::as_str).unwrap_or("");
                    !trace.starts_with(&prefix) || !seen.insert(trace.to_owned())
                })
                .count() as u64
        })
        .unwrap_or(0);
    Ok((count, stray))
}

/// Life events Karma applied for the run's user (0 when Karma never saw them).
async fn karma_actions(client: &reqwest::Client, karma: &str, user: &str) -> Result<u64, String> {
    let url = format!("{}/v1/stats/user/{user}", karma.trim_end_matches('/'));
    let response = client.get(url).send().await.map_err(|e| format!("karma unreachable: {e}"))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(0);
    }
    let answer: Value = response.json().await.map_err(|e| format!("karma answered garbage: {e}"))?;
    Ok(answer.pointer("/action_stats/total_actions").and_then(Value::as_u64).unwrap_or(0))
}

/// Renders a report as a small markdown table.
pub fn render_table(report: &DriveReport, check: Option<&CheckReport>) -> String {
    let l = &report.latency_ms;
    let mut out = String::new();
    out.push_str("| sent | ok | errors | throughput (req/s) | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let errors: u64 = report.errors.values().sum();
    out.push_str(&format!(
        "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        report.sent, report.ok, errors, report.throughput, l.p50, l.p90, l.p99, l.p999, l.max
    ));
    if !report.errors.is_empty() {
        let mut kinds: Vec<_> = report.errors.iter().collect();
        kinds.sort();
        out.push_str(&format!("\nerrors by kind: {kinds:?}\n"));
    }
    if let Some(check) = check {
        for (sink, c) in [("bucket", &check.bucket), ("karma", &check.karma)] {
            out.push_str(&format!("\n{sink}: received {}, lost {}, duplicated {}", c.received, c.lost, c.duplicated));
        }
        out.push('\n');
    }
    out
}

/// Serves the baseline: parse the JSON body, answer a constant.
pub async fn serve_baseline(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::routing::post;
    async fn handler(body: axum::body::Bytes) -> axum::response::Response {
        use axum::response::IntoResponse;
        match serde_json::from_slice::<Value>(&body) {
            Ok(_) => axum::Json(json!({"status": "success"})).into_response(),
            Err(_) => (axum::http::StatusCode::BAD_REQUEST, "bad json").into_response(),
        }
    }
    let app = axum::Router::new()
        .route("/api/workflow/execute", post(handler))
        .route("/health", axum::routing::get(|| async { axum::Json(json!({"status": "ok"})) }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Now, in RFC 3339 (the pillars' timestamp format).
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_weighted_round_robin() {
        let mix = Mix::parse("task=2,ai").expect("valid");
        let picks: Vec<&str> = (0..6).map(|n| mix.pick(n)).collect();
        assert_eq!(picks, ["task", "task", "ai", "task", "task", "ai"]);
        assert!(Mix::parse("sms").is_err());
        assert!(Mix::parse("task=0").is_err());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let data: Vec<u64> = (1..=1000).map(|n| n * 1000).collect();
        let p = percentiles(&data);
        assert_eq!((p.p50, p.p99, p.max), (500.0, 990.0, 1000.0));
    }
}
