//! Rejections: every status the executor refuses a request with, each with the structured body
//! `{detail, error: {code, message, field}}`, and proof that nothing executed.

use serde_json::{Value, json};

use crate::execute::assert_only_marker_events_arrive;
use crate::helpers::*;

#[tokio::test]
async fn malformed_json_is_400_malformed_json() {
    let app = spawn_app(&[]).await;

    let response = app.execute_raw(r#"{"trace_id": "t-1", "decision": "#, Some("application/json"), &[]).await;

    response.assert_rejected(400, "malformed_json");
    assert!(response.body["detail"].is_string());
    assert!(!response.text.to_lowercase().contains("panick"), "{}", response.text);
}

#[tokio::test]
async fn a_workflow_decision_without_payload_is_400_missing_workflow_payload() {
    let app = spawn_app(&[]).await;
    let bodies = [
        json!({"trace_id": "t-1", "decision": "workflow"}),
        json!({"trace_id": "t-2", "decision": "workflow", "data": null}),
        json!({"trace_id": "t-3", "decision": "workflow", "data": {"workflow_type": "workflow", "payload": null}}),
        json!({"trace_id": "t-4", "decision": "workflow", "data": {"workflow_type": "workflow", "payload": {}}}),
    ];
    for body in bodies {
        let response = app.execute(&body).await;
        response.assert_rejected(400, "missing_workflow_payload");
        assert_eq!(response.body["detail"], "missing_workflow_payload", "as the reference answers: {body}");
        assert_eq!(response.body["error"]["field"], "data.payload");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_whether_its_length_is_declared_or_chunked() {
    let app = spawn_app(&[("EXECUTOR_MAX_BODY_BYTES", "1024")]).await;
    let trace = trace_id();
    let mut big = task_request(&trace);
    big["data"]["payload"]["description"] = json!("x".repeat(2000));

    let declared = app.execute(&big).await;
    declared.assert_rejected(413, "body_too_large");

    let bytes = serde_json::to_vec(&big).expect("serializable");
    let chunks: Vec<Vec<u8>> = bytes.chunks(300).map(<[u8]>::to_vec).collect();
    app.execute_chunked(&chunks).await.assert_rejected(413, "body_too_large");

    // Under the limit, chunked or not, it executes.
    let small = serde_json::to_vec(&task_request(&trace)).expect("serializable");
    app.execute_chunked(&[small[..40].to_vec(), small[40..].to_vec()]).await.assert_success(&trace);
}

#[tokio::test]
async fn a_body_that_is_not_json_by_content_type_is_415() {
    let app = spawn_app(&[]).await;
    let body = serde_json::to_vec(&task_request(&trace_id())).expect("serializable");
    for content_type in
        [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data"), None]
    {
        let response = app.execute_raw(body.clone(), content_type, &[]).await;
        response.assert_rejected(415, "unsupported_media_type");
    }
    let with_charset = app.execute_raw(body, Some("application/json; charset=utf-8"), &[]).await;
    assert_eq!(with_charset.status, 200, "{}", with_charset.text);
    assert_eq!(app.metrics().await.get("workflow_executions_total", &[]), 1.0, "only the JSON one executed");
}

#[tokio::test]
async fn schema_violations_are_422_naming_the_field() {
    let app = spawn_app(&[]).await;
    let t = "core-trace-1";
    let payload =
        |p: Value| json!({"trace_id": t, "decision": "workflow", "data": {"workflow_type": "workflow", "payload": p}});
    let cases = [
        ("invalid_decision", "decision", json!({"trace_id": t, "decision": "execute"})),
        ("invalid_decision", "decision", json!({"trace_id": t, "decision": "Workflow"})),
        ("missing_field", "decision", json!({"trace_id": t})),
        ("missing_field", "trace_id", json!({"decision": "respond"})),
        ("invalid_trace_id", "trace_id", json!({"trace_id": "has spaces", "decision": "respond"})),
        ("invalid_trace_id", "trace_id", json!({"trace_id": "", "decision": "respond"})),
        ("invalid_trace_id", "trace_id", json!({"trace_id": "a".repeat(129), "decision": "respond"})),
        ("invalid_trace_id", "trace_id", json!({"trace_id": "semi;colon", "decision": "respond"})),
        (
            "trace_id_mismatch",
            "data.payload.trace_id",
            payload(json!({"action_type": "task", "title": "x", "trace_id": "other"})),
        ),
        ("invalid_type", "trace_id", json!({"trace_id": 42, "decision": "respond"})),
        ("invalid_type", "decision", json!({"trace_id": t, "decision": ["workflow"]})),
        ("invalid_type", "data", json!({"trace_id": t, "decision": "workflow", "data": "payload"})),
        (
            "invalid_workflow_type",
            "data.workflow_type",
            json!({"trace_id": t, "decision": "workflow", "data": {"workflow_type": "batch", "payload": {"action_type": "task"}}}),
        ),
        (
            "missing_field",
            "data.workflow_type",
            json!({"trace_id": t, "decision": "workflow", "data": {"payload": {"action_type": "task"}}}),
        ),
        (
            "invalid_type",
            "data.payload",
            json!({"trace_id": t, "decision": "workflow", "data": {"workflow_type": "workflow", "payload": [1, 2]}}),
        ),
        ("invalid_type", "data.payload.title", payload(json!({"action_type": "task", "title": 7}))),
        ("invalid_type", "data.payload.action_type", payload(json!({"action_type": {"name": "task"}}))),
        (
            "invalid_type",
            "data.payload.recipient",
            payload(json!({"action_type": "whatsapp", "recipient": 919876543210_u64, "message": "hi"})),
        ),
        (
            "invalid_type",
            "data.payload.metadata",
            payload(json!({"action_type": "task", "title": "x", "metadata": "tags"})),
        ),
        ("invalid_type", "data.payload.user_id", payload(json!({"action_type": "task", "title": "x", "user_id": 12}))),
        ("field_too_long", "data.payload.title", payload(json!({"action_type": "task", "title": "t".repeat(257)}))),
        (
            "field_too_long",
            "data.payload.message",
            payload(json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": "m".repeat(4097)})),
        ),
        (
            "field_too_long",
            "data.payload.subject",
            payload(
                json!({"action_type": "email", "recipient": "a@example.com", "subject": "s".repeat(257), "body": "b"}),
            ),
        ),
        ("field_too_long", "data.payload.action_type", payload(json!({"action_type": "a".repeat(65)}))),
        (
            "field_too_long",
            "data.payload.metadata",
            payload(json!({"action_type": "task", "title": "x", "metadata": {"blob": "b".repeat(5000)}})),
        ),
        ("invalid_characters", "data.payload.title", payload(json!({"action_type": "task", "title": "line\nbreak"}))),
    ];
    for (code, field, body) in cases {
        let response = app.execute(&body).await;
        response.assert_rejected(422, code);
        assert_eq!(response.body["error"]["field"], field, "{body}");
        let detail = &response.body["detail"][0];
        assert_eq!(detail["type"], code, "FastAPI-style detail: {}", response.text);
        assert_eq!(detail["loc"][0], "body", "{}", response.text);
        assert!(detail["msg"].is_string(), "{}", response.text);
    }
    assert_eq!(app.metrics().await.get("workflow_executions_total", &[]), 0.0, "nothing executed");

    // The bounds are inclusive.
    let longest = "t".repeat(128);
    let at_limit = payload(json!({"action_type": "task", "title": "t".repeat(256), "description": "d".repeat(4096)}));
    let mut at_limit = at_limit;
    at_limit["trace_id"] = json!(longest);
    app.execute(&at_limit).await.assert_success(&longest);
}

const TOKENS: &str = "core:core-secret-token,ops:ops-secret-token";

#[tokio::test]
async fn without_a_caller_token_the_request_is_401_and_nothing_executes() {
    let app = spawn_app(&[("EXECUTOR_CALLER_TOKENS", TOKENS)]).await;

    let missing = app.execute(&whatsapp_request(&trace_id())).await;
    missing.assert_rejected(401, "missing_token");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let not_bearer = app.execute_with(&whatsapp_request(&trace_id()), &[("authorization", "Basic Y29yZTpw")]).await;
    not_bearer.assert_rejected(401, "missing_token");

    assert!(app.fakes.whatsapp_calls().is_empty(), "no provider call");
    assert_only_marker_events_arrive(&app, &[("authorization", "Bearer core-secret-token")]).await;
}

#[tokio::test]
async fn with_a_wrong_caller_token_the_request_is_403_and_nothing_executes() {
    let app = spawn_app(&[("EXECUTOR_CALLER_TOKENS", TOKENS)]).await;

    for token in ["Bearer wrong-token", "Bearer core-secret-tokeN", "Bearer core-secret-token-and-more", "Bearer core"]
    {
        let response = app.execute_with(&whatsapp_request(&trace_id()), &[("authorization", token)]).await;
        response.assert_rejected(403, "invalid_token");
        assert!(!response.text.contains("core-secret-token"), "{}", response.text);
    }

    assert!(app.fakes.whatsapp_calls().is_empty(), "no provider call");
    assert_only_marker_events_arrive(&app, &[("authorization", "Bearer ops-secret-token")]).await;
}

#[tokio::test]
async fn with_a_valid_caller_token_the_request_executes() {
    let app = spawn_app(&[("EXECUTOR_CALLER_TOKENS", TOKENS)]).await;
    let trace = trace_id();

    let response = app.execute_with(&whatsapp_request(&trace), &[("authorization", "Bearer ops-secret-token")]).await;

    response.assert_success(&trace);
    assert_eq!(app.fakes.whatsapp_calls().len(), 1);
}

#[tokio::test]
async fn beyond_the_concurrency_limit_requests_are_shed_with_503_and_retry_after() {
    let app = spawn_app(&[("EXECUTOR_MAX_CONCURRENT", "1")]).await;
    app.fakes.slow_whatsapp(secs(1.0));
    let slow_trace = trace_id();
    let slow = {
        let (http, url, body) = (app.http.clone(), app.url("/api/workflow/execute"), whatsapp_request(&slow_trace));
        tokio::spawn(async move { http.post(url).json(&body).send().await.expect("answer").json::<Value>().await })
    };
    eventually(secs(5.0), "the slow request reaches the provider", async || {
        (app.fakes.whatsapp_arrivals() > 0).then_some(())
    })
    .await;

    let shed = app.execute(&task_request(&trace_id())).await;

    shed.assert_rejected(503, "overloaded");
    let retry_after: u64 = shed.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!(retry_after >= 1);
    let first = slow.await.expect("joined").expect("JSON");
    assert_eq!(first["status"], "success", "{first}");
    assert_eq!(app.metrics().await.get("workflow_rejected_requests_total", &[("reason", "overloaded")]), 1.0);
    let after = trace_id();
    app.execute(&task_request(&after)).await.assert_success(&after);
}

#[tokio::test]
async fn an_execution_abandoned_by_its_caller_still_counts_against_the_concurrency_limit() {
    let app = spawn_app(&[("EXECUTOR_MAX_CONCURRENT", "1")]).await;
    app.fakes.slow_whatsapp(secs(1.0));
    let impatient = reqwest::Client::builder().timeout(secs(0.2)).build().expect("a client");
    let hung_up = impatient.post(app.url("/api/workflow/execute")).json(&whatsapp_request(&trace_id())).send().await;
    assert!(hung_up.is_err(), "the caller gave up while the provider call runs");

    let next = app.execute(&whatsapp_request(&trace_id())).await;

    next.assert_rejected(503, "overloaded");
    assert_eq!(app.fakes.whatsapp_arrivals(), 1, "never more provider calls at once than the limit");
    eventually(secs(5.0), "the abandoned execution ends and frees its permit", async || {
        let trace = trace_id();
        let response = app.execute(&task_request(&trace)).await;
        (response.status == 200).then_some(())
    })
    .await;
}
