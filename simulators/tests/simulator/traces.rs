//! The OTLP receiver on the control port, `GET /traces/{id}` and the dashboard's state: with the
//! real executor exporting to it (as `pillar-sim up` wires it).

use std::time::Duration;

use pillar_sim::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::eventually;

use crate::support::{client, get, post};

const WAIT: Duration = Duration::from_secs(15);

fn execute_body(trace: &str) -> Value {
    json!({"trace_id": trace, "decision": "workflow", "data": {"workflow_type": "workflow",
        "payload": {"action_type": "whatsapp", "recipient": "+919876543210", "message": "hello there", "user_id": "u-3"}}})
}

async fn executing_stack() -> Stack {
    Stack::builder().seed(5).executor(true).start().await.expect("stack starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_exports_its_spans_to_the_control_port_and_they_are_served_by_trace_id() {
    let stack = executing_stack().await;
    let control = stack.control_url().expect("control");
    let trace = "order-77:attempt_1";
    let (status, _) =
        post(format!("{}/api/workflow/execute", stack.executor_url().unwrap()), &execute_body(trace)).await;
    assert_eq!(status, StatusCode::OK);

    let spans = eventually(WAIT, "the spans arrive", || async {
        let (status, body) = get(format!("{control}/traces/{trace}")).await;
        let spans = body["spans"].as_array().cloned().unwrap_or_default();
        let deliveries =
            spans.iter().filter(|s| s["name"] == "deliver event" && s["attributes"]["outcome"] == "delivered");
        (status == StatusCode::OK && deliveries.count() == 2).then_some(spans)
    })
    .await;
    let names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
    for name in ["workflow", "provider call", "store commit"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(spans.iter().all(|s| s["service"] == "workflow-executor"));
    let text = serde_json::to_string(&spans).unwrap();
    assert!(!text.contains("hello there") && !text.contains("+919876543210"), "no content in spans: {text}");

    let (status, list) = get(format!("{control}/traces")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["traces"][0]["bhiv_trace_id"], trace);
    assert!(stack.traces().get(trace).is_some(), "the library sees the same store");

    let (status, missing) = get(format!("{control}/traces/never-seen")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    stack.stop().await;
}

#[tokio::test]
async fn the_receiver_takes_protobuf_only_and_refuses_garbage() {
    let stack = Stack::builder().start().await.expect("stack starts");
    let url = format!("{}/v1/traces", stack.control_url().unwrap());
    let json = client().post(&url).json(&json!({"resourceSpans": []})).send().await.unwrap();
    assert_eq!(json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let garbage = client()
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff_u8, 0xff, 0xff, 0x01])
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    let empty =
        client().post(&url).header("content-type", "application/x-protobuf").body(Vec::new()).send().await.unwrap();
    assert_eq!(empty.status(), StatusCode::OK, "an empty export is a valid one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_state_shows_a_refused_bucket_as_down_and_the_fault_on_the_journal() {
    let stack = executing_stack().await;
    let control = stack.control_url().expect("control");
    let page = client().get(format!("{control}/ui")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("refuse Bucket"));

    let state = |body: &Value, name: &str| {
        body["services"].as_array().and_then(|s| s.iter().find(|s| s["name"] == name)).map(|s| s["state"].clone())
    };
    let (_, before) = get(format!("{control}/ui/state")).await;
    for name in ["karma", "bucket", "core", "executor", "providers", "smtp"] {
        assert_eq!(state(&before, name), Some(json!("up")), "{name}: {before}");
    }

    let (status, _) =
        post(format!("{control}/faults"), &json!({"id": "ui-bucket-refuse", "pillar": "bucket", "kind": "refuse"}))
            .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, after) = get(format!("{control}/ui/state")).await;
    assert_eq!(state(&after, "bucket"), Some(json!("down")), "{after}");
    assert_eq!(state(&after, "karma"), Some(json!("up")));

    // Karma answering 503: its requests are journaled with the rule that met them; the refused
    // Bucket's events wait in the executor's outbox.
    let (status, _) = post(
        format!("{control}/faults"),
        &json!({"id": "ui-karma-503", "pillar": "karma", "kind": "http_error", "status": 503}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    post(format!("{}/api/workflow/execute", stack.executor_url().unwrap()), &execute_body("dash-1")).await;
    eventually(WAIT, "the trace is complete", || async {
        let (_, body) = get(format!("{control}/ui/state")).await;
        let journaled = body["journal"].as_array()?.iter().any(|e| {
            e["pillar"] == "karma"
                && e["status"] == 503
                && e["faults"].as_array().is_some_and(|f| f.iter().any(|f| f["rule"] == "ui-karma-503"))
        });
        let executor = body["services"].as_array()?.iter().find(|s| s["name"] == "executor")?.clone();
        let waiting = executor["status"]["pillars"]["bucket"]["outbox_depth"].as_u64() >= Some(1);
        (journaled && waiting && state(&body, "karma") == Some(json!("degraded"))).then_some(())
    })
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_without_an_endpoint_exports_nothing() {
    let stack = Stack::builder()
        .executor(true)
        .executor_env("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        .start()
        .await
        .expect("stack starts");
    let trace = "no-export-1";
    let (status, _) =
        post(format!("{}/api/workflow/execute", stack.executor_url().unwrap()), &execute_body(trace)).await;
    assert_eq!(status, StatusCode::OK);
    // The execution happened (its event reached Bucket), and stopping the executor would flush
    // any span it had queued.
    stack
        .journal()
        .wait_for(WAIT, |e| e.pillar == pillar_sim::Pillar::Bucket && e.trace_id.as_deref() == Some(trace))
        .await
        .expect("the event reached Bucket");
    stack.stop_executor().await.expect("stops");
    assert_eq!(stack.traces().stats()["spans_received"], 0, "{}", stack.traces().stats());
    stack.stop().await;
}
