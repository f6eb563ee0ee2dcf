//! The whole stack with the real executor in-process: Core → executor → providers, Bucket and
//! Karma.

use std::time::Duration;

use pillar_sim::{JournalEntry, Pillar, Profile, Stack};
use reqwest::StatusCode;
use serde_json::json;
use test_support::eventually;

use crate::support::{get, post};

const WAIT: Duration = Duration::from_secs(15);

async fn ask_core(stack: &Stack, input: &str) -> String {
    let (status, answer) = post(
        format!("{}/handle_task", stack.core_url()),
        &json!({"agent": "edumentor_agent", "input": input, "user_id": "learner-9", "product": "gurukul"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["agent_output"]["workflow_dispatched"], true, "{answer}");
    answer["task_id"].as_str().unwrap().to_owned()
}

async fn delivered(stack: &Stack, pillar: Pillar, trace: &str) -> JournalEntry {
    let found = stack
        .journal()
        .wait_for(WAIT, |e| e.pillar == pillar && e.trace_id.as_deref() == Some(trace) && e.method == "POST")
        .await;
    found.unwrap_or_else(|| panic!("no {pillar} request for {trace}: {:#?}", stack.journal().entries()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_flows_from_core_through_the_executor_to_bucket_and_karma() {
    let stack = Stack::builder().seed(3).executor(true).start().await.unwrap();
    let trace = ask_core(&stack, "Remind me: call the bank").await;
    let bucket = delivered(&stack, Pillar::Bucket, &trace).await;
    assert_eq!(bucket.status, Some(200));
    assert_eq!(bucket.headers["x-trace-id"], trace.as_str());
    assert!(bucket.headers.contains_key("traceparent") && bucket.headers.contains_key("idempotency-key"));
    let karma = delivered(&stack, Pillar::Karma, &trace).await;
    assert_eq!(karma.status, Some(200), "the spec Karma accepts the documented event: {:?}", karma.body);

    let events = stack.bucket().events_for_trace(&trace);
    assert_eq!(events.len(), 1);
    let record = &events[0].record;
    assert_eq!(
        (record["event_type"].as_str(), record["action_type"].as_str()),
        (Some("workflow_execution"), Some("task"))
    );
    assert_eq!(
        (record["status"].as_str(), record["requester_id"].as_str()),
        (Some("success"), Some("workflow_executor"))
    );
    assert_eq!(events[0].product, "gurukul");
    assert!(stack.bucket().verify_chain().valid);
    let user = eventually(WAIT, "Karma knows learner-9", || async { stack.karma().user("learner-9") }).await;
    assert_eq!(user.action_counts.get("workflow_success"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapters_reach_the_provider_fakes() {
    let stack = Stack::builder().executor(true).start().await.unwrap();
    let wa = ask_core(&stack, "Send a WhatsApp to +919876543210: class at 5").await;
    let mail = ask_core(&stack, "Email alice@example.com about the class: it starts at 5").await;
    let ai = ask_core(&stack, "Ask AI: what is dharma?").await;
    for trace in [&wa, &mail, &ai] {
        delivered(&stack, Pillar::Bucket, trace).await;
    }
    let message =
        eventually(WAIT, "a WhatsApp message is sent", || async { stack.providers().whatsapp_messages().pop() }).await;
    assert_eq!((message.to.trim_start_matches('+'), message.body.as_str()), ("919876543210", "class at 5"));
    let email = eventually(WAIT, "a mail is sent", || async { stack.smtp().messages().pop() }).await;
    assert_eq!(email.to, ["alice@example.com"]);
    assert!(email.data.contains("it starts at 5"));
    let chat =
        eventually(WAIT, "a chat completion is asked for", || async { stack.providers().chat_requests().pop() }).await;
    assert_eq!(chat.content, "[AI_RESPONSE] what is dharma?");
    for trace in [&wa, &mail, &ai] {
        let event = &stack.bucket().events_for_trace(trace)[0];
        assert_eq!(event.record["status"], "success", "{}", event.record);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_restarts_on_the_same_port_and_data_directory() {
    let stack = Stack::builder().executor(true).start().await.unwrap();
    let url = stack.executor_url().unwrap();
    let dir = stack.executor_data_dir().await.unwrap();
    stack.stop_executor().await.unwrap();
    assert!(reqwest::Client::new().get(format!("{url}/healthz")).send().await.is_err(), "stopped");
    stack.start_executor().await.unwrap();
    assert_eq!(stack.executor_url().as_deref(), Some(url.as_str()));
    assert_eq!(stack.executor_data_dir().await, Some(dir.clone()));
    assert_eq!(get(format!("{url}/healthz")).await.0, StatusCode::OK);
    stack.stop().await;
    assert!(!dir.exists(), "a temporary data directory is removed with the stack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_as_built_karma_refuses_the_executors_event_and_bucket_still_gets_its_own() {
    let stack = Stack::builder().executor(true).profile(Pillar::Karma, Profile::AsBuilt).start().await.unwrap();
    let trace = ask_core(&stack, "Remind me: stretch").await;
    let karma = delivered(&stack, Pillar::Karma, &trace).await;
    assert_eq!(karma.status, Some(500), "the gap the integration would hit in production");
    assert_eq!(delivered(&stack, Pillar::Bucket, &trace).await.status, Some(200));
    assert!(stack.karma().user("learner-9").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_as_built_encoding_every_pillar_as_built_tracks_the_users_karma() {
    let stack = Stack::builder()
        .executor(true)
        .executor_env("EXECUTOR_KARMA_ENCODING", "as-built")
        .profile_all(Profile::AsBuilt)
        .start()
        .await
        .unwrap();
    // The as-built Core dispatches only for the probe agent (its stock agents fail).
    let (_, answer) = post(
        format!("{}/handle_task", stack.core_url()),
        &json!({"agent": "workflow_probe_agent", "input": "Remind me: stretch", "user_id": "learner-10"}),
    )
    .await;
    let trace = answer["task_id"].as_str().expect("a task id").to_owned();
    let karma = delivered(&stack, Pillar::Karma, &trace).await;
    assert_eq!(karma.status, Some(200), "{karma:#?}");
    assert_eq!(karma.body["data"]["action"], "completing_lessons");
    assert!(karma.headers.contains_key("x-trace-id"), "the executor's own calls keep their trace headers");
    let user = eventually(WAIT, "Karma knows learner-10", || async { stack.karma().user("learner-10") }).await;
    assert_eq!((user.balances.dharma_points, user.total_actions), (5.0, 1));
    let (_, status) = get(format!("{}/api/integration/status", stack.executor_url().unwrap())).await;
    assert_eq!(status["pillars"]["karma"]["dead_lettered"], 0, "{status}");
}
