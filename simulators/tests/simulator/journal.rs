//! The request journal, from the Rust API and the control API.

use pillar_sim::{Fault, FaultRule, JournalQuery, Outcome, Pillar, Stack};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{client, get, stack};

#[tokio::test]
async fn each_request_is_journaled_with_its_trace_headers_body_status_and_faults() {
    let stack = stack().await;
    stack.faults().set(FaultRule::new(Pillar::Bucket, Fault::latency_ms(1.0)).id("tiny")).unwrap();
    let body = json!({"requester_id": "workflow_executor", "event_data": {"event_type": "workflow_execution",
        "event_id": "e-1", "trace_id": "trace-1"}});
    client()
        .post(format!("{}/core/write-event?x=1", stack.bucket_url()))
        .header("X-Trace-Id", "trace-1")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .header("Idempotency-Key", "e-1")
        .header("Authorization", "Bearer top-secret")
        .json(&body)
        .send()
        .await
        .unwrap();
    let entry = stack.journal().for_trace("trace-1").pop().expect("journaled");
    assert_eq!(
        (entry.pillar, entry.method.as_str(), entry.path.as_str()),
        (Pillar::Bucket, "POST", "/core/write-event?x=1")
    );
    assert_eq!((entry.status, entry.outcome), (Some(200), Outcome::Answered));
    assert_eq!(entry.body, body);
    assert_eq!(entry.headers["idempotency-key"], "e-1");
    assert!(entry.headers["traceparent"].starts_with("00-0af7"));
    assert_eq!(entry.headers["authorization"], "Bearer [redacted]");
    assert!(!serde_json::to_string(&entry).unwrap().contains("top-secret"), "the secret never enters the journal");
    assert_eq!((entry.faults[0].rule.as_str(), entry.faults[0].match_index, entry.faults[0].hit), ("tiny", 0, true));
    assert!(entry.duration_ms >= 1.0);
    assert!(entry.received_at.ends_with('Z'));
}

#[tokio::test]
async fn a_trace_in_the_body_is_found_without_the_header() {
    let stack = stack().await;
    let event = json!({"type": "life_event", "data": {"user_id": "u", "action": "workflow_success", "role": "user",
        "context": {"trace_id": "body-trace"}}});
    client().post(format!("{}/v1/event/", stack.karma_url())).json(&event).send().await.unwrap();
    assert_eq!(stack.journal().for_trace("body-trace").len(), 1);
}

#[tokio::test]
async fn the_control_api_filters_by_pillar_trace_and_limit() {
    let stack = stack().await;
    for _ in 0..3 {
        client().get(format!("{}/health", stack.karma_url())).header("X-Trace-Id", "k").send().await.unwrap();
    }
    client().get(format!("{}/health", stack.core_url())).header("X-Trace-Id", "c").send().await.unwrap();
    let control = stack.control_url().unwrap();
    let (status, karma) = get(format!("{control}/journal?pillar=karma&limit=2")).await;
    assert_eq!((status, karma["count"].as_u64()), (StatusCode::OK, Some(2)));
    assert!(karma["entries"].as_array().unwrap().iter().all(|e| e["pillar"] == "karma"));
    let (_, core) = get(format!("{control}/journal?trace_id=c")).await;
    assert_eq!(core["entries"][0]["pillar"], "core");
    let (status, error) = get(format!("{control}/journal?pillar=mars")).await;
    assert_eq!((status, error["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("pillar")));
    let (status, error) = get(format!("{control}/journal?limit=lots")).await;
    assert_eq!((status, error["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("limit")));
}

#[tokio::test]
async fn the_journal_is_bounded_and_waits_can_be_awaited() {
    let stack = Stack::builder().journal_capacity(3).start().await.unwrap();
    for i in 0..5 {
        client()
            .get(format!("{}/health", stack.karma_url()))
            .header("X-Trace-Id", format!("t{i}"))
            .send()
            .await
            .unwrap();
    }
    let kept: Vec<String> = stack.journal().entries().into_iter().filter_map(|e| e.trace_id).collect();
    assert_eq!(kept, ["t2", "t3", "t4"]);
    let url = format!("{}/health", stack.bucket_url());
    let waiter = stack.journal().wait_for(std::time::Duration::from_secs(5), |e| e.pillar == Pillar::Bucket);
    let (found, _) = tokio::join!(waiter, client().get(url).send());
    assert_eq!(found.map(|e| e.pillar), Some(Pillar::Bucket));
    assert_eq!(stack.journal().query(&JournalQuery::all().limit(1)).len(), 1);
}
