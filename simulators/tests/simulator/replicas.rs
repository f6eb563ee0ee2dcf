//! Executor replicas on one PostgreSQL database behind the stack's round-robin front: requests
//! are spread, a stopped replica's share goes to the others, duplicates run once, and the control
//! API stops and starts replicas.

use std::collections::BTreeSet;

use pillar_sim::{Stack, StackError};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::postgres::new_database;

use crate::support::{client, get, post};

async fn replicated(replicas: usize) -> Stack {
    let url = new_database().await;
    let builder = Stack::builder().executor(true).executor_replicas(replicas).executor_env("EXECUTOR_STORE_URL", url);
    builder.start().await.expect("a stack with replicas starts")
}

fn task(trace: &str) -> Value {
    json!({"trace_id": trace, "decision": "workflow", "data": {"workflow_type": "workflow",
        "payload": {"action_type": "task", "title": "Call the customer back", "user_id": "learner-3"}}})
}

/// Sends `task(trace)` through the front; the answer and the replica that served it.
async fn through_front(stack: &Stack, trace: &str) -> (Value, usize) {
    let url = format!("{}/api/workflow/execute", stack.executor_url().expect("an executor"));
    let response = client().post(url).json(&task(trace)).send().await.expect("the front answers");
    assert_eq!(response.status(), StatusCode::OK);
    let replica = response.headers()["x-executor-replica"].to_str().expect("ascii").parse().expect("a number");
    (response.json().await.expect("JSON"), replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_spreads_requests_and_a_stopped_replicas_share_goes_to_the_others() {
    let stack = replicated(3).await;
    let mut served = BTreeSet::new();
    for _ in 0..6 {
        let trace = uuid::Uuid::new_v4().to_string();
        let (answer, replica) = through_front(&stack, &trace).await;
        assert_eq!(answer["status"], "success", "{answer}");
        served.insert(replica);
    }
    assert_eq!(served, BTreeSet::from([0, 1, 2]), "round robin reaches every replica");

    stack.stop_replica(1).await.expect("replica 1 stops");
    let mut served = BTreeSet::new();
    let mut traces = Vec::new();
    for _ in 0..6 {
        let trace = uuid::Uuid::new_v4().to_string();
        let (answer, replica) = through_front(&stack, &trace).await;
        assert_eq!(answer["status"], "success", "{answer}");
        served.insert(replica);
        traces.push((trace, answer));
    }
    assert_eq!(served, BTreeSet::from([0, 2]), "the stopped replica gets nothing");

    stack.start_replica(1).await.expect("replica 1 starts again");
    // Replays are the same whichever replica answers them.
    for (trace, answer) in &traces {
        for _ in 0..3 {
            assert_eq!(&through_front(&stack, trace).await.0, answer, "the replay of {trace}");
        }
    }
    let list = stack.replicas().await;
    assert!(list.iter().all(|r| r.running), "{list:?}");
    assert!(list[1].served.is_some_and(|n| n >= 1), "replica 1 serves again after its start: {list:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_stops_and_starts_replicas() {
    let stack = replicated(2).await;
    let control = stack.control_url().expect("a control API");
    let (status, answer) = post(format!("{control}/executor/replicas/0/stop"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["replicas"][0]["running"], false, "{answer}");
    assert_eq!(answer["replicas"][1]["running"], true, "{answer}");
    let trace = uuid::Uuid::new_v4().to_string();
    assert_eq!(through_front(&stack, &trace).await.1, 1, "replica 1 serves alone");

    let (status, answer) = post(format!("{control}/executor/replicas/7/stop"), &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(answer["error"]["field"], "index", "{answer}");
    let (status, _) = post(format!("{control}/executor/replicas/0/start"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = get(format!("{control}/executor/replicas")).await;
    let running: Vec<&Value> = list["replicas"].as_array().expect("a list").iter().map(|r| &r["running"]).collect();
    assert_eq!(running, [&json!(true), &json!(true)], "{list}");
    stack.stop().await;
}

#[tokio::test]
async fn several_replicas_without_a_shared_store_are_refused_at_start() {
    let refused = Stack::builder().executor(true).executor_replicas(3).start().await;
    let Err(StackError::Config(message)) = refused else { panic!("three replicas on three embedded stores started") };
    assert!(message.contains("EXECUTOR_STORE_URL"), "{message}");
}
