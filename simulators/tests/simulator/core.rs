//! Core's agent and its fire-and-forget dispatch through the executor's client, against a tiny
//! recording executor.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use pillar_sim::{Pillar, Ports, Profile, Stack};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::eventually;
use tokio::net::TcpListener;

use crate::support::{get, post as post_json};

type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// An executor stand-in that records `(X-Trace-Id, body)` of each execute call (`traceparent`
/// when there is no `X-Trace-Id`; `None` when neither was sent).
async fn recording_executor() -> (String, Seen) {
    recording_executor_on("127.0.0.1").await
}

/// [`recording_executor`] on another loopback address.
async fn recording_executor_on(ip: &str) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/api/workflow/execute",
        post(move |headers: HeaderMap, axum::Json(body): axum::Json<Value>| {
            let record = record.clone();
            async move {
                let trace = ["x-trace-id", "traceparent"]
                    .iter()
                    .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()).map(str::to_owned));
                record.lock().unwrap().push((trace, body));
                axum::Json(json!({"status": "success"}))
            }
        }),
    );
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

async fn core_with(executor_url: &str, extra: &[(&str, &str)], profile: Profile) -> Stack {
    let mut builder = Stack::builder().core_env("WORKFLOW_EXECUTOR_URL", executor_url).profile(Pillar::Core, profile);
    for (name, value) in extra {
        builder = builder.core_env(*name, *value);
    }
    builder.start().await.unwrap()
}

fn task(input: &str) -> Value {
    json!({"agent": "edumentor_agent", "input": input, "input_type": "text", "user_id": "learner-1", "product": "gurukul"})
}

#[tokio::test]
async fn a_workflow_task_is_dispatched_with_the_task_id_as_trace_id() {
    let (executor, seen) = recording_executor().await;
    let stack = core_with(&executor, &[], Profile::Spec).await;
    let (status, answer) = post_json(
        format!("{}/handle_task", stack.core_url()),
        &task("Email alice@example.com about the launch: at 10"),
    )
    .await;
    assert_eq!((status, answer["status"].as_str()), (StatusCode::OK, Some("success")));
    let task_id = answer["task_id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&task_id).is_ok(), "a uuid4 task id");
    let output = &answer["agent_output"];
    assert_eq!(
        (output["requires_workflow"].as_bool(), output["workflow_action_type"].as_str()),
        (Some(true), Some("email"))
    );
    assert_eq!(output["workflow_dispatched"], true);

    let (trace_header, body) = eventually(Duration::from_secs(5), "Core dispatches to the executor", || async {
        seen.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(trace_header.as_deref(), Some(task_id.as_str()));
    assert_eq!(body["trace_id"], task_id.as_str());
    assert_eq!(body["decision"], "workflow");
    let payload = &body["data"]["payload"];
    assert_eq!(payload["trace_id"], task_id.as_str(), "Core's client copies the trace into the payload");
    assert_eq!((payload["action_type"].as_str(), payload["user_id"].as_str()), (Some("email"), Some("learner-1")));
    assert_eq!(payload["recipient"], "alice@example.com");
    assert_eq!((payload["subject"].as_str(), payload["body"].as_str()), (Some("the launch"), Some("at 10")));
    assert_eq!(payload["product"], "gurukul");
    // The journal finds Core's request by the task id it minted.
    assert_eq!(stack.journal().for_trace(&task_id)[0].pillar, Pillar::Core);
}

#[tokio::test]
async fn a_plain_question_dispatches_nothing() {
    let (executor, seen) = recording_executor().await;
    let stack = core_with(&executor, &[], Profile::Spec).await;
    let (_, answer) = post_json(format!("{}/handle_task", stack.core_url()), &task("What is dharma?")).await;
    assert_eq!(answer["agent_output"]["requires_workflow"], false);
    assert_eq!(answer["agent_output"]["workflow_action_type"], Value::Null);
    assert_eq!(answer["agent_output"]["workflow_dispatched"], false);
    // A later workflow task is the first (and only) thing the executor sees.
    post_json(format!("{}/handle_task", stack.core_url()), &task("Remind me: water the plants")).await;
    let bodies = eventually(Duration::from_secs(5), "Core dispatches to the executor", || async {
        let seen = seen.lock().unwrap();
        (!seen.is_empty()).then(|| seen.clone())
    })
    .await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].1["data"]["payload"]["title"], "water the plants");
}

#[tokio::test]
async fn disabled_execution_is_honoured_in_spec_and_ignored_as_built() {
    let (executor, seen) = recording_executor().await;
    let stack = core_with(&executor, &[("ENABLE_WORKFLOW_EXECUTION", "false")], Profile::Spec).await;
    let url = format!("{}/handle_task", stack.core_url());
    let (_, answer) = post_json(&url, &task("Ask AI: what is karma?")).await;
    assert_eq!(answer["agent_output"]["requires_workflow"], true);
    assert_eq!(answer["agent_output"]["workflow_dispatched"], false, "the client refused to send");
    let (_, health) = get(format!("{}/health", stack.core_url())).await;
    assert_eq!(health["workflow_executor"]["dispatch_enabled"], false);

    stack.set_profile(Pillar::Core, Profile::AsBuilt).unwrap();
    let mut probe = task("Ask AI: what is karma?");
    probe["agent"] = json!("workflow_probe_agent");
    let (_, answer) = post_json(&url, &probe).await;
    assert_eq!(answer["agent_output"]["workflow_dispatched"], true, "the real Core reads no such variable");
    let sent = eventually(Duration::from_secs(5), "Core dispatches to the executor", || async {
        seen.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(sent.1["data"]["payload"]["prompt"], "what is karma?");
    assert_eq!(sent.0, None, "the real Core's client sends neither X-Trace-Id nor traceparent");
    assert_eq!(seen.lock().unwrap().len(), 1, "only the as-built request reached the executor");
}

#[tokio::test]
async fn as_built_stock_agents_answer_an_error_or_no_workflow_and_dispatch_nothing() {
    let (executor, seen) = recording_executor().await;
    let stack = core_with(&executor, &[], Profile::AsBuilt).await;
    let url = format!("{}/handle_task", stack.core_url());
    // The README's example: the stock edumentor_agent is configured on Bucket's port (404).
    let (status, answer) = post_json(&url, &task("Create a task: call the bank")).await;
    assert_eq!((status, answer["status"].as_str()), (StatusCode::OK, Some("error")), "{answer}");
    assert_eq!(
        answer["agent_output"]["error"],
        "Task processing failed: 404 Client Error: Not Found for url: http://localhost:8001/edumentor"
    );
    let mut other = task("Remind me: call the bank");
    other["agent"] = json!("text_agent");
    let (_, answer) = post_json(&url, &other).await;
    assert_eq!(
        (answer["status"].as_str(), answer["agent_output"]["requires_workflow"].as_bool()),
        (Some("success"), Some(false))
    );
    other["agent"] = json!("no_such_agent");
    let (_, answer) = post_json(&url, &other).await;
    assert_eq!(answer["agent_output"]["error"], "Task processing failed: 404: Agent no_such_agent not found");
    // A control request through the probe agent does reach the executor, so nothing above did.
    other["agent"] = json!("workflow_probe_agent");
    let (_, answer) = post_json(&url, &other).await;
    let task_id = answer["task_id"].as_str().unwrap().to_owned();
    let sent = eventually(Duration::from_secs(5), "Core dispatches to the executor", || async {
        seen.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(sent.1["trace_id"], task_id.as_str());
    assert_eq!(seen.lock().unwrap().len(), 1, "the stock agents dispatched nothing");
}

#[tokio::test]
async fn core_answers_at_once_when_the_executor_hangs() {
    // An executor that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let stack = core_with(&url, &[], Profile::Spec).await;
    let started = Instant::now();
    let (status, answer) =
        post_json(format!("{}/handle_task", stack.core_url()), &task("Send a WhatsApp to +919876543210: hi")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["agent_output"]["workflow_dispatched"], true);
    assert!(started.elapsed() < Duration::from_secs(1), "answered in {:?}", started.elapsed());
    held.abort();
}

#[tokio::test]
async fn malformed_tasks_get_fastapis_422() {
    let stack = Stack::builder().start().await.unwrap();
    let (status, body) = post_json(format!("{}/handle_task", stack.core_url()), &json!({"input": "hello"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "agent"]));
    let (_, health) = get(format!("{}/health", stack.core_url())).await;
    assert_eq!(
        (health["metrics"]["total_requests"].as_u64(), health["metrics"]["failed_requests"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn without_an_executor_core_dispatches_to_the_executor_port_on_the_stacks_ip() {
    // `up --no-executor --ip X`: Core's dispatch goes to X, not to 127.0.0.1.
    let (executor, seen) = recording_executor_on("127.0.0.3").await;
    let port: u16 = executor.rsplit(':').next().unwrap().parse().unwrap();
    let ports = Ports { executor: port, ..Ports::ephemeral() };
    let ip = "127.0.0.3".parse().unwrap();
    let stack = Stack::builder().ip(ip).ports(ports).executor(false).start().await.unwrap();
    let (_, answer) =
        post_json(format!("{}/handle_task", stack.core_url()), &task("Remind me: water the plants")).await;
    assert_eq!(answer["agent_output"]["workflow_dispatched"], true, "{answer}");
    let sent = eventually(Duration::from_secs(5), "Core dispatches to the executor", || async {
        seen.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(sent.1["trace_id"], answer["task_id"]);
}
