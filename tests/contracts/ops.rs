//! The operational answers: `/healthz` (healthy and degraded), `/api/integration/status` (all
//! up; dead letters; unreachable pillars), the metric families of `/metrics`, and the 503 of a
//! full audit outbox.

use pillar_sim::{Fault, FaultRule, Pillar, Stack};
use serde_json::{Value, json};

use crate::support::{Contract, TestStack, assert_contract, metric_families, workflow};

fn task(trace: &str) -> Value {
    workflow(trace, json!({"action_type": "task", "title": "Call the bank", "user_id": "learner-7"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_status_report_every_pillar_up() {
    let app = TestStack::default_stack().await;

    let health = app.get("/healthz").await;
    assert_contract("healthz_ok", "GET /healthz with Bucket and Karma up", &health.contract());
    health.expect_status(200);
    assert_eq!(health.body["status"], "ok", "{:#}", health.body);

    app.execute(&task("contract-status")).await.expect_status(200);
    app.delivered(1).await;
    let status = app.get("/api/integration/status").await;
    assert_contract(
        "integration_status_ok",
        "GET /api/integration/status after one execution delivered to Bucket and Karma",
        &status.contract(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_status_and_metrics_report_degraded_pillars() {
    // One unreachable attempt opens a circuit, which then stays open for the whole test; Bucket's
    // outbox holds three events, Karma's one (and then drops the oldest).
    let app = TestStack::start(
        Stack::builder()
            .executor_env("EXECUTOR_BREAKER_THRESHOLD", "1")
            .executor_env("EXECUTOR_BREAKER_OPEN", "600")
            .executor_env("EXECUTOR_DELIVERY_BACKOFF_MAX", "600")
            .executor_env("EXECUTOR_BUCKET_OUTBOX_MAX_EVENTS", "3")
            .executor_env("EXECUTOR_KARMA_OUTBOX_MAX_EVENTS", "1"),
    )
    .await;
    let faults = app.stack.faults();
    faults.set(FaultRule::new(Pillar::Bucket, Fault::http_error(503))).expect("a valid fault rule");
    faults.set(FaultRule::new(Pillar::Karma, Fault::http_error(422)).times(1)).expect("a valid fault rule");

    // 1. Bucket answers 503 (unreachable: the circuit opens); Karma answers 422 (dead-lettered).
    app.execute(&task("contract-degraded-1")).await.expect_status(200);
    app.status_when("Bucket's circuit is open and Karma dead-lettered an event", |s| {
        s["pillars"]["bucket"]["circuit"] == "open" && s["pillars"]["karma"]["dead_lettered"] == 1
    })
    .await;
    let health = app.get("/healthz").await;
    assert_contract(
        "healthz_degraded",
        "GET /healthz with Bucket answering 503 (down) and Karma rejecting an event (degraded)",
        &health.contract(),
    );
    health.expect_status(200);

    // 2. Karma answers 429 (unreachable: its circuit opens too).
    faults.set(FaultRule::new(Pillar::Karma, Fault::http_error(429))).expect("a valid fault rule");
    app.execute(&task("contract-degraded-2")).await.expect_status(200);
    app.status_when("Karma's circuit is open", |s| s["pillars"]["karma"]["circuit"] == "open").await;

    // 3. Karma's full outbox drops the oldest event; Bucket's is now full.
    app.execute(&task("contract-degraded-3")).await.expect_status(200);
    app.status_when("Bucket holds 3 events and Karma 1", |s| {
        s["pillars"]["bucket"]["outbox_depth"] == 3 && s["pillars"]["karma"]["outbox_depth"] == 1
    })
    .await;
    let status = app.get("/api/integration/status").await;
    assert_contract(
        "integration_status_degraded",
        "GET /api/integration/status with both circuits open, a dead letter and queued events",
        &status.contract(),
    );

    // 4. Bucket's outbox is full and its policy is to fail closed.
    let refused = app.execute(&task("contract-degraded-4")).await;
    assert_contract(
        "rejected_503_audit_spool_full",
        "an execution while Bucket's outbox is full (EXECUTOR_BUCKET_FULL_POLICY reject)",
        &refused.contract(),
    );
    refused.expect_status(503);

    let families = metric_families(&app.metrics().await.0);
    assert_contract(
        "metrics_families",
        "GET /metrics: every metric family (name, type, label names) after executions, rejections, \
         retries, a dead letter and a dropped event",
        &json!(families),
    );
}
