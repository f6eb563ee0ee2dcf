//! The Karma encodings (`EXECUTOR_KARMA_ENCODING`): `spec` sends the documented life event;
//! `as-built` sends what the deployed Karma accepts (a string `context`, one of its roles, the
//! outcome mapped to one of its actions) and sends nothing for an outcome mapped to nothing,
//! counting it in `/metrics` and `/api/integration/status`.

use pillar_sim::{Pillar, Profile};
use serde_json::{Value, json};

use crate::helpers::*;

/// A task request that fails validation (no title), for `user_id`.
fn failing_task(trace: &str) -> Value {
    workflow(trace, json!({"action_type": "task", "user_id": "user-7"}))
}

/// The fakes with Karma as deployed (its `as-built` profile).
async fn as_built_karma() -> Fakes {
    Fakes::start_with(test_support::neighbours_builder().profile(Pillar::Karma, Profile::AsBuilt)).await
}

/// The `context` of a Karma event, which the `as-built` encoding sends as a JSON string.
fn string_context(event: &Delivery) -> Value {
    let context = event.body["data"]["context"].as_str().expect("context is a string");
    serde_json::from_str(context).expect("context is JSON")
}

#[tokio::test]
async fn as_built_sends_a_learners_completed_lesson_for_a_success_and_nothing_for_a_failure() {
    let app = spawn_app_with(as_built_karma().await, &[("EXECUTOR_KARMA_ENCODING", "as-built")]).await;
    let (ok, failed) = (trace_id(), trace_id());

    app.execute(&task_request(&ok)).await.assert_success(&ok);
    app.execute(&failing_task(&failed)).await.assert_failed("missing_task_title");
    eventually(secs(15.0), "both audit events reach Bucket", async || {
        (app.bucket().event_for(&ok).is_some() && app.bucket().event_for(&failed).is_some()).then_some(())
    })
    .await;
    app.wait_until_outboxes_drain().await;

    let event = app.karma().event_for(&ok).expect("the success reaches Karma");
    let data = &event.body["data"];
    assert_eq!(data["action"], "completing_lessons");
    assert_eq!(data["role"], "learner");
    assert_eq!(data["user_id"], "user-7");
    assert_eq!(data["note"], "Workflow execution: task");
    assert_eq!(event.body["type"], "life_event");
    let context = string_context(&event);
    assert_eq!(context["trace_id"], ok.as_str());
    assert_eq!(context["status"], "success");
    assert_eq!(context["source"], "workflow_executor");
    assert_eq!(event.header("x-trace-id"), Some(ok.as_str()));

    assert!(app.karma().event_for(&failed).is_none(), "a failure is not the user's misconduct: nothing is sent");
    assert_eq!(app.karma().attempts(), 1, "one Karma event in all");
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("workflow_events_skipped_total", &[("sink", "karma")]), 1.0);
    assert_eq!(metrics.get("workflow_events_enqueued_total", &[("sink", "karma")]), 1.0);
    let status = app.status().await.body;
    assert_eq!(status["pillars"]["karma"]["skipped"], 1, "{status}");
    assert_eq!(status["pillars"]["karma"]["dead_lettered"], 0, "{status}");
    assert_eq!(status["pillars"]["bucket"]["skipped"], 0, "{status}");
}

#[tokio::test]
async fn as_built_uses_the_configured_role_and_action_table_for_both_outcomes() {
    let app = spawn_app_with(
        as_built_karma().await,
        &[
            ("EXECUTOR_KARMA_ENCODING", "as-built"),
            ("EXECUTOR_KARMA_ROLE", "volunteer"),
            ("EXECUTOR_KARMA_ACTIONS", "success=helping_peers,failed=solving_doubts"),
        ],
    )
    .await;
    let (ok, failed) = (trace_id(), trace_id());

    app.execute(&task_request(&ok)).await.assert_success(&ok);
    app.execute(&failing_task(&failed)).await.assert_failed("missing_task_title");
    let events = eventually(secs(15.0), "both events reach Karma", async || {
        Some((app.karma().event_for(&ok)?, app.karma().event_for(&failed)?))
    })
    .await;

    let (ok_event, failed_event) = events;
    assert_eq!(ok_event.body["data"]["action"], "helping_peers");
    assert_eq!(failed_event.body["data"]["action"], "solving_doubts");
    assert_eq!(failed_event.body["data"]["role"], "volunteer");
    assert_eq!(string_context(&failed_event)["status"], "failed");
    assert_eq!(app.metrics().await.get("workflow_events_skipped_total", &[("sink", "karma")]), 0.0);
}

#[tokio::test]
async fn spec_is_the_default_and_sends_the_documented_event_for_a_failure() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();

    app.execute(&failing_task(&trace)).await.assert_failed("missing_task_title");
    let event = eventually(secs(15.0), "the failure reaches Karma", async || app.karma().event_for(&trace)).await;

    assert_eq!(event.body["data"]["action"], "workflow_failure");
    assert_eq!(event.body["data"]["role"], "user");
    assert_eq!(event.body["data"]["context"]["trace_id"], trace.as_str(), "context is an object");
    let status = app.status().await.body;
    assert_eq!(status["pillars"]["karma"]["skipped"], 0, "{status}");
}
