//! Every rejection the execute route gives, with its status, headers and error body
//! (`{detail, error: {code, message, field}}`): 400, 401, 403, 404, 405, 409, 413, 415, 422 and
//! 503 (shedding; the full audit outbox is in `ops`).

use pillar_sim::{Fault, FaultRule, Pillar, Stack};
use serde_json::{Value, json};
use test_support::{TestResponse, eventually};

use crate::support::{Contract, TestStack, WAIT, assert_contract, spawn, workflow};

fn task(trace: &str) -> Value {
    workflow(trace, json!({"action_type": "task", "title": "Call the bank"}))
}

fn rejected(name: &str, why: &str, answer: &TestResponse, status: u16, code: &str) {
    assert_contract(&format!("rejected_{status}_{name}"), why, &answer.contract());
    answer.expect_status(status);
    assert_eq!(answer.body["error"]["code"], code, "{:#}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_rejected_with_a_stable_error_body() {
    let app = TestStack::default_stack().await;

    let answer = app.execute_raw(b"{\"trace_id\": \"t\", ".to_vec(), Some("application/json"), &[]).await;
    rejected("malformed_json", "a body that is not valid JSON", &answer, 400, "malformed_json");

    let answer = app
        .execute(&json!({"trace_id": "contract-no-payload", "decision": "workflow",
            "data": {"workflow_type": "workflow", "payload": {}}}))
        .await;
    rejected(
        "missing_workflow_payload",
        "decision workflow with an empty payload",
        &answer,
        400,
        "missing_workflow_payload",
    );

    let answer = app.execute_raw(b"trace_id=t".to_vec(), Some("text/plain"), &[]).await;
    rejected("unsupported_media_type", "a text/plain body", &answer, 415, "unsupported_media_type");

    let head = "POST /api/workflow/execute HTTP/1.1\r\nhost: executor\r\ncontent-type: application/json\r\n\
                content-length: 70000\r\n\r\n";
    let answer = app.execute_head_only(head).await;
    rejected("body_too_large", "a declared Content-Length over the 64 KiB limit", &answer, 413, "body_too_large");

    let invalid: [(&str, &str, Value, &str); 11] = [
        ("body_not_object", "invalid_type", json!([1, 2]), "a JSON array instead of an object"),
        ("missing_trace_id", "missing_field", json!({"decision": "workflow"}), "no trace_id"),
        (
            "invalid_trace_id",
            "invalid_trace_id",
            json!({"trace_id": "has spaces", "decision": "respond"}),
            "a trace_id with forbidden characters",
        ),
        ("trace_id_not_string", "invalid_type", json!({"trace_id": 42, "decision": "respond"}), "a numeric trace_id"),
        ("invalid_decision", "invalid_decision", json!({"trace_id": "t", "decision": "panic"}), "an unknown decision"),
        (
            "missing_workflow_type",
            "missing_field",
            json!({"trace_id": "t", "decision": "workflow", "data": {"payload": {"action_type": "task"}}}),
            "data without workflow_type",
        ),
        (
            "invalid_workflow_type",
            "invalid_workflow_type",
            json!({"trace_id": "t", "decision": "workflow",
                "data": {"workflow_type": "batch", "payload": {"action_type": "task"}}}),
            "data.workflow_type other than workflow",
        ),
        (
            "missing_payload_field",
            "missing_field",
            json!({"trace_id": "t", "decision": "workflow", "data": {"workflow_type": "workflow"}}),
            "data without payload",
        ),
        (
            "trace_id_mismatch",
            "trace_id_mismatch",
            workflow("t", json!({"action_type": "task", "title": "x", "trace_id": "other"})),
            "a payload.trace_id that differs from the top-level one",
        ),
        (
            "field_too_long",
            "field_too_long",
            workflow("t", json!({"action_type": "task", "title": "x".repeat(257)})),
            "a task title over 256 characters",
        ),
        (
            "invalid_characters",
            "invalid_characters",
            workflow("t", json!({"action_type": "task", "title": "line\nbreak"})),
            "a control character in a single-line field",
        ),
    ];
    for (name, code, body, why) in invalid {
        rejected(name, why, &app.execute(&body).await, 422, code);
    }

    let answer = app.execute_with(&task("contract-bad-key"), &[("idempotency-key", "has space")]).await;
    rejected("invalid_idempotency_key", "an Idempotency-Key with a space", &answer, 422, "invalid_idempotency_key");

    app.execute_with(&task("contract-key-1"), &[("idempotency-key", "contract-key")]).await.expect_status(200);
    let answer = app.execute_with(&task("contract-key-2"), &[("idempotency-key", "contract-key")]).await;
    rejected(
        "idempotency_key_reused",
        "an Idempotency-Key reused for another request",
        &answer,
        422,
        "idempotency_key_reused",
    );

    let answer = app.get("/api/workflow/nope").await;
    rejected("not_found", "GET on an unknown route", &answer, 404, "not_found");
    let answer = app.get("/api/workflow/execute").await;
    rejected("method_not_allowed", "GET on the execute route", &answer, 405, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_tokens_reject_missing_and_wrong_tokens() {
    let app =
        TestStack::start(Stack::builder().executor_env("EXECUTOR_CALLER_TOKENS", "core:core-secret,ops:ops-secret"))
            .await;

    let answer = app.execute(&task("contract-no-token")).await;
    rejected("missing_token", "EXECUTOR_CALLER_TOKENS set, no Authorization header", &answer, 401, "missing_token");

    let answer = app.execute_with(&task("contract-bad-token"), &[("authorization", "Bearer not-a-token")]).await;
    rejected("invalid_token", "EXECUTOR_CALLER_TOKENS set, a wrong bearer token", &answer, 403, "invalid_token");

    let answer = app.execute_with(&task("contract-good-token"), &[("authorization", "Bearer core-secret")]).await;
    answer.expect_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_get_409_and_overload_gets_503() {
    let app = TestStack::start(Stack::builder().executor_env("EXECUTOR_MAX_CONCURRENT", "2")).await;
    // Every WhatsApp send takes a second, so requests overlap.
    let slow = FaultRule::new(Pillar::Providers, Fault::latency_ms(1000.0)).route("/v21.0/*");
    app.stack.faults().set(slow).expect("a valid fault rule");
    let slow_request = |trace: &str| {
        let body = workflow(trace, json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": "hi"}));
        let (http, url) = (app.http.clone(), app.url("/api/workflow/execute"));
        spawn(async move { TestResponse::send(http.post(url).json(&body)).await })
    };
    let in_flight = async |n: f64| {
        eventually(WAIT, &format!("{n} execute requests are in flight"), async || {
            (app.metrics().await.get("workflow_in_flight_requests", &[]) == n).then_some(())
        })
        .await;
    };

    // Whichever of the two identical requests arrives second gets 409.
    let first = slow_request("contract-duplicate");
    in_flight(1.0).await;
    let duplicate = app
        .execute(&workflow(
            "contract-duplicate",
            json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": "hi"}),
        ))
        .await;
    let first = first.await.expect("joined");
    let (refused, executed) = if duplicate.status == 409 { (duplicate, first) } else { (first, duplicate) };
    executed.expect_status(200);
    rejected(
        "execution_in_progress",
        "the same request again while the first is executing",
        &refused,
        409,
        "execution_in_progress",
    );

    let (a, b) = (slow_request("contract-load-a"), slow_request("contract-load-b"));
    in_flight(2.0).await;
    let answer = app.execute(&task("contract-shed")).await;
    rejected("overloaded", "a third request while EXECUTOR_MAX_CONCURRENT=2 are in flight", &answer, 503, "overloaded");
    a.await.expect("joined").expect_status(200);
    b.await.expect("joined").expect_status(200);
}
