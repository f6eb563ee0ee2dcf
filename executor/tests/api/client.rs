//! The caller's client (`workflow_executor::client`, what Core uses) against a real executor.

use serde_json::{Map, json};
use workflow_executor::client::{ClientSettings, WorkflowClient};

use crate::helpers::{eventually, secs, spawn_app, trace_id};

fn client_for(url: &str, extra: &[(&str, &str)]) -> WorkflowClient {
    let settings = ClientSettings::from_lookup(|name| match name {
        "WORKFLOW_EXECUTOR_URL" => Some(url.to_owned()),
        _ => extra.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()),
    })
    .expect("valid client settings");
    WorkflowClient::new(settings)
}

fn task_payload() -> Map<String, serde_json::Value> {
    json!({"title": "Call the bank back"}).as_object().expect("an object").clone()
}

#[tokio::test]
async fn the_awaited_call_returns_the_executors_answer_and_a_repeat_is_a_replay() {
    let app = spawn_app(&[]).await;
    let client = client_for(&app.url(""), &[]);
    let trace = trace_id();

    let answer = client.execute_workflow_and_wait(&trace, "task", "learner-1", &task_payload()).await.expect("answer");
    assert_eq!((answer.status, answer.replayed), (200, false));
    assert_eq!(answer.body["status"], "success", "{}", answer.body);
    assert_eq!(answer.body["trace_id"], trace.as_str());

    let again = client.execute_workflow_and_wait(&trace, "task", "learner-1", &task_payload()).await.expect("answer");
    assert!(again.replayed, "the same request again is answered from the store");
    assert_eq!(again.body, answer.body);
}

#[tokio::test]
async fn fire_and_forget_returns_at_once_and_the_workflow_still_runs() {
    let app = spawn_app(&[]).await;
    let client = client_for(&app.url(""), &[]);
    let trace = trace_id();

    assert!(client.execute_workflow(&trace, "task", "learner-2", &task_payload()));
    eventually(secs(10.0), "the dispatched workflow's audit event reaches Bucket", async || {
        app.bucket().trace_ids().contains(&trace).then_some(())
    })
    .await;
}

#[tokio::test]
async fn health_check_is_true_for_a_running_executor_and_false_for_a_dead_address() {
    let app = spawn_app(&[]).await;
    assert!(client_for(&app.url(""), &[]).health_check().await);
    assert!(!client_for("http://127.0.0.1:1", &[("WORKFLOW_TIMEOUT", "0.5")]).health_check().await);
}

#[tokio::test]
async fn a_disabled_client_sends_nothing_and_says_so() {
    let app = spawn_app(&[]).await;
    let client = client_for(&app.url(""), &[("ENABLE_WORKFLOW_EXECUTION", "false")]);
    assert!(!client.execute_workflow(&trace_id(), "task", "u", &task_payload()));
    let error =
        client.execute_workflow_and_wait(&trace_id(), "task", "u", &task_payload()).await.expect_err("disabled");
    assert!(error.to_string().contains("ENABLE_WORKFLOW_EXECUTION"), "{error}");
    assert_eq!(
        app.metrics().await.get("workflow_executions_total", &[("action_type", "task"), ("status", "success")]),
        0.0
    );
}
