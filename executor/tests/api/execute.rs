//! Executing workflows: each adapter's success path with the reference's result fields, each
//! executed-failure `error_code` (HTTP 200, `status: "failed"`), and the guard that executes
//! nothing unless `decision == "workflow"`.

use pillar_sim::{Fault, FaultRule, Pillar};
use serde_json::{Value, json};

use crate::helpers::*;

/// Asserts an RFC 3339 UTC timestamp (`2026-11-25T15:14:42.123456789Z`).
fn assert_rfc3339(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}"));
    let shape = text.len() >= 20
        && text.bytes().enumerate().take(19).all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        })
        && text.ends_with('Z');
    assert!(shape, "not an RFC 3339 UTC timestamp: {text}");
}

#[tokio::test]
async fn a_task_request_creates_a_task_and_returns_its_reference() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();

    let response = app.execute(&task_request(&trace)).await;

    response.assert_success(&trace);
    let result = response.result();
    let task_id = result["task_id"].as_str().expect("a task id");
    assert!(task_id.starts_with("task_") && task_id.len() > 10, "{task_id}");
    assert_eq!(result["task_status"], "CREATED");
    assert_eq!(result["reference"], format!("local://tasks/{task_id}"));
    assert_rfc3339(&result["created_at"]);
    assert_rfc3339(&result["timestamp"]);
}

#[tokio::test]
async fn two_tasks_get_different_ids() {
    let app = spawn_app(&[]).await;
    let first = app.execute(&task_request(&trace_id())).await;
    let second = app.execute(&task_request(&trace_id())).await;
    assert_ne!(first.result()["task_id"], second.result()["task_id"]);
}

#[tokio::test]
async fn a_whatsapp_request_sends_a_text_through_the_cloud_api() {
    // The fake answers 401 unless the bearer token is exactly WHATSAPP_TOKEN.
    let app = spawn_app(&[]).await;
    let trace = trace_id();

    let response = app.execute(&whatsapp_request(&trace)).await;

    response.assert_success(&trace);
    let result = response.result();
    let sent = app.fakes.stack.providers().whatsapp_messages();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].message_id.starts_with("wamid."), "{}", sent[0].message_id);
    assert_eq!(result["whatsapp_message_id"], sent[0].message_id.as_str());
    assert_eq!(result["recipient"], "+919876543210");
    assert_eq!(result["status"], "SENT");
    assert_rfc3339(&result["sent_at"]);
    assert!(!response.text.contains(WHATSAPP_TOKEN), "the token leaked: {}", response.text);

    let calls = app.fakes.whatsapp_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, WHATSAPP_PATH);
    assert_eq!(call.status, Some(200), "the fake took the token");
    assert_eq!(call.headers["authorization"], "Bearer [redacted]");
    assert_eq!(call.headers["x-trace-id"], trace.as_str());
    assert_traceparent(&call.headers["traceparent"]);
    let body = &call.body;
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["type"], "text");
    assert_eq!(body["text"]["body"], "Your order has shipped");
    assert_eq!(body["to"], "919876543210");
}

#[tokio::test]
async fn the_phone_alias_names_the_whatsapp_recipient() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();
    let request = workflow(
        &trace,
        json!({"action_type": "whatsapp", "phone": "+14155550123", "message": "Hello from the alias"}),
    );

    let response = app.execute(&request).await;

    response.assert_success(&trace);
    assert_eq!(response.result()["recipient"], "+14155550123");
    let sent = app.fakes.stack.providers().whatsapp_messages();
    assert_eq!(response.result()["whatsapp_message_id"], sent[0].message_id.as_str());
    let body: Value = app.fakes.whatsapp_calls()[0].body.clone();
    assert_eq!(body["to"], "14155550123");
    assert_eq!(body["text"]["body"], "Hello from the alias");
}

#[tokio::test]
async fn an_email_request_is_delivered_over_smtp_with_the_trace_id_header() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();
    let request = workflow(
        &trace,
        json!({"action_type": "email", "recipient": "alice@example.com", "subject": "Your invoice",
               "body": "Please find your invoice attached."}),
    );

    let response = app.execute(&request).await;

    response.assert_success(&trace);
    let result = response.result();
    let message_id = result["message_id"].as_str().expect("a message id");
    assert!(message_id.starts_with('<') && message_id.ends_with('>') && message_id.contains('@'), "{message_id}");
    assert_eq!(result["recipient"], "alice@example.com");
    assert_eq!(result["subject"], "Your invoice");
    assert_eq!(result["status"], "SENT");
    assert_rfc3339(&result["sent_at"]);

    assert!(app.fakes.stack.smtp().sessions() >= 2, "the stack's readiness check and the executor's session");
    let messages = app.fakes.stack.smtp().messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.from, "executor@bhiv.local");
    assert_eq!(message.to, vec!["alice@example.com".to_owned()]);
    assert_eq!(message.trace_id.as_deref(), Some(trace.as_str()));
    assert!(message.data.contains(&format!("X-Trace-Id: {trace}")), "{}", message.data);
    assert!(message.data.contains("Subject: Your invoice"), "{}", message.data);
    assert!(message.data.contains(&format!("Message-ID: {message_id}")), "{}", message.data);
    assert!(message.data.contains("Please find your invoice attached."), "{}", message.data);
}

#[tokio::test]
async fn an_ai_request_returns_the_model_text() {
    // The fake answers 401 unless the bearer key is exactly AI_KEY, and echoes the prompt.
    let app = spawn_app(&[]).await;
    let trace = trace_id();
    let request = workflow(&trace, json!({"action_type": "ai", "prompt": "Give me three health tips"}));

    let response = app.execute(&request).await;

    response.assert_success(&trace);
    let result = response.result();
    let answered = app.fakes.stack.providers().chat_requests();
    assert_eq!(answered.len(), 1);
    assert!(answered[0].id.starts_with("chatcmpl-"), "{}", answered[0].id);
    assert_eq!(result["request_id"], answered[0].id.as_str());
    assert_eq!(result["response"], "[AI_RESPONSE] Give me three health tips");
    assert_eq!(result["prompt"], "Give me three health tips");
    assert_eq!(result["health"], "OK", "the reference adapter's field");
    assert_rfc3339(&result["requested_at"]);
    assert!(!response.text.contains(AI_KEY));

    let calls = app.fakes.ai_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, AI_PATH);
    assert_eq!(calls[0].status, Some(200), "the fake took the key");
    assert_eq!(calls[0].headers["authorization"], "Bearer [redacted]");
    assert_eq!(calls[0].headers["x-trace-id"], trace.as_str());
    let body = &calls[0].body;
    assert_eq!(body["model"], AI_MODEL);
    assert_eq!(body["messages"], json!([{"role": "user", "content": "Give me three health tips"}]));
}

#[tokio::test]
async fn the_content_alias_is_the_ai_prompt() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();

    let response = app.execute(&workflow(&trace, json!({"action_type": "ai", "content": "Say aliased"}))).await;

    response.assert_success(&trace);
    assert_eq!(response.result()["prompt"], "Say aliased");
    assert_eq!(response.result()["response"], "[AI_RESPONSE] Say aliased");
    let body: Value = app.fakes.ai_calls()[0].body.clone();
    assert_eq!(body["messages"][0]["content"], "Say aliased");
}

#[tokio::test]
async fn a_payload_without_trace_id_executes_with_the_top_level_one() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();
    let request = json!({"trace_id": trace, "decision": "workflow",
        "data": {"workflow_type": "workflow", "payload": {"action_type": "task", "title": "No inner trace"}}});

    app.execute(&request).await.assert_success(&trace);
}

#[tokio::test]
async fn every_invalid_payload_is_an_executed_failure_with_the_reference_code() {
    let app = spawn_app(&[]).await;
    let smtp_sessions = app.fakes.stack.smtp().sessions();
    let cases = [
        ("missing_action_type", json!({"title": "no action"})),
        ("missing_action_type", json!({"action_type": "", "title": "empty action"})),
        ("unsupported_action_type", json!({"action_type": "fax", "recipient": "+919876543210"})),
        ("missing_task_title", json!({"action_type": "task", "description": "no title"})),
        ("missing_task_title", json!({"action_type": "task", "title": ""})),
        ("missing_recipient", json!({"action_type": "whatsapp", "message": "hi"})),
        ("missing_message", json!({"action_type": "whatsapp", "recipient": "+919876543210"})),
        ("invalid_recipient", json!({"action_type": "whatsapp", "recipient": "9876543210", "message": "hi"})),
        ("invalid_recipient", json!({"action_type": "whatsapp", "recipient": "+12", "message": "hi"})),
        ("missing_recipient", json!({"action_type": "email", "subject": "s", "body": "b"})),
        ("missing_subject", json!({"action_type": "email", "recipient": "a@example.com", "body": "b"})),
        ("missing_body", json!({"action_type": "email", "recipient": "a@example.com", "subject": "s"})),
        (
            "invalid_recipient",
            json!({"action_type": "email", "recipient": "not-an-address", "subject": "s", "body": "b"}),
        ),
        ("missing_prompt", json!({"action_type": "ai"})),
        ("missing_prompt", json!({"action_type": "ai", "prompt": ""})),
    ];
    for (code, payload) in cases {
        let trace = trace_id();
        let response = app.execute(&workflow(&trace, payload.clone())).await;
        assert_eq!(response.body["trace_id"], trace.as_str());
        response.assert_failed(code);
        assert_eq!(response.result()["trace_id"], trace.as_str(), "{payload}");
    }
    assert!(app.fakes.whatsapp_calls().is_empty(), "no provider is called for an invalid payload");
    assert!(app.fakes.ai_calls().is_empty());
    assert_eq!(app.fakes.stack.smtp().sessions(), smtp_sessions, "no SMTP connection is opened");
}

#[tokio::test]
async fn a_provider_slower_than_its_timeout_is_provider_timeout() {
    let app = spawn_app(&[("WHATSAPP_TIMEOUT", "0.2")]).await;
    app.fakes.slow_whatsapp(secs(5.0));

    let response = app.execute(&whatsapp_request(&trace_id())).await;

    response.assert_failed("provider_timeout");
    assert!(response.elapsed < secs(2.0), "the timeout bounds the call: {:?}", response.elapsed);
}

#[tokio::test]
async fn a_provider_4xx_is_provider_rejected_with_the_providers_reason() {
    // The Cloud API refuses a token it did not issue: 401 with its reason in `error.message`.
    let wrong_token = "wa-wrong-token-not-a-secret";
    let app = spawn_app(&[("WHATSAPP_ACCESS_TOKEN", wrong_token)]).await;

    let response = app.execute(&whatsapp_request(&trace_id())).await;

    response.assert_failed("provider_rejected");
    let message = response.result()["message"].as_str().expect("a message");
    assert!(message.contains("401") && message.contains("Invalid OAuth access token"), "{message}");
    assert!(!response.text.contains(wrong_token));
    assert_eq!(app.fakes.whatsapp_calls()[0].status, Some(401));
}

#[tokio::test]
async fn a_provider_5xx_is_provider_error() {
    let app = spawn_app(&[]).await;
    app.fakes.set(FaultRule::new(Pillar::Providers, Fault::http_error(500)).route(WHATSAPP_PATH));
    app.fakes.set(FaultRule::new(Pillar::Providers, Fault::http_error(503)).route(AI_PATH));

    app.execute(&whatsapp_request(&trace_id())).await.assert_failed("provider_error");
    app.execute(&workflow(&trace_id(), json!({"action_type": "ai", "prompt": "hi"})))
        .await
        .assert_failed("provider_error");
}

#[tokio::test]
async fn a_refused_provider_port_is_provider_unavailable() {
    let app = spawn_app(&[]).await;
    app.fakes.set(FaultRule::new(Pillar::Providers, Fault::Refuse));
    app.fakes.set(FaultRule::new(Pillar::Smtp, Fault::Refuse));

    app.execute(&whatsapp_request(&trace_id())).await.assert_failed("provider_unavailable");
    app.execute(&workflow(&trace_id(), json!({"action_type": "ai", "prompt": "hi"})))
        .await
        .assert_failed("provider_unavailable");
    let email = json!({"action_type": "email", "recipient": "bob@example.com", "subject": "s", "body": "Hello Bob"});
    app.execute(&workflow(&trace_id(), email)).await.assert_failed("provider_unavailable");
}

#[tokio::test]
async fn a_provider_answer_without_the_expected_fields_is_provider_bad_response() {
    // WhatsApp: valid JSON without `messages`; the AI: a 200 whose body does not parse.
    let app = spawn_app(&[]).await;
    let no_messages = Fault::answer(200, json!({"messaging_product": "whatsapp"}));
    app.fakes.set(FaultRule::new(Pillar::Providers, no_messages).route(WHATSAPP_PATH));
    app.fakes.set(FaultRule::new(Pillar::Providers, Fault::MalformedJson).route(AI_PATH));

    app.execute(&whatsapp_request(&trace_id())).await.assert_failed("provider_bad_response");
    let sends = app.fakes.whatsapp_calls();
    assert_eq!((sends.len(), sends[0].status, sends[0].faults[0].kind), (1, Some(200), "answer"), "one valid 200");
    app.execute(&workflow(&trace_id(), json!({"action_type": "ai", "prompt": "hi"})))
        .await
        .assert_failed("provider_bad_response");
}

#[tokio::test]
async fn an_smtp_550_is_provider_rejected() {
    let app = spawn_app(&[]).await;
    app.fakes.set(FaultRule::new(Pillar::Smtp, Fault::http_error(550)));
    let email =
        json!({"action_type": "email", "recipient": "nobody@example.com", "subject": "s", "body": "Hello nobody"});

    let response = app.execute(&workflow(&trace_id(), email)).await;

    response.assert_failed("provider_rejected");
    assert!(response.result()["message"].as_str().unwrap_or_default().contains("550"), "{}", response.text);
    assert!(app.fakes.stack.smtp().messages().is_empty());
    assert_eq!(app.fakes.smtp_transactions()[0].status, Some(550));
}

#[tokio::test]
async fn a_silent_smtp_relay_is_provider_timeout() {
    let app = spawn_app(&[("SMTP_TIMEOUT", "0.2")]).await;
    app.fakes.set(FaultRule::new(Pillar::Smtp, Fault::Blackhole));
    let email = json!({"action_type": "email", "recipient": "carol@example.com", "subject": "s", "body": "Hi"});

    let response = app.execute(&workflow(&trace_id(), email)).await;

    response.assert_failed("provider_timeout");
    assert!(response.elapsed < secs(2.0), "{:?}", response.elapsed);
}

#[tokio::test]
async fn every_decision_but_workflow_is_skipped_and_executes_nothing() {
    let app = spawn_app(&[]).await;
    for decision in ["respond", "task", "insight", "fallback"] {
        let trace = trace_id();
        let mut request = whatsapp_request(&trace);
        request["decision"] = json!(decision);

        let response = app.execute(&request).await;

        assert_eq!(response.status, 200, "{}", response.text);
        assert_eq!(response.body, json!({"trace_id": trace, "status": "skipped", "reason": "decision_not_workflow"}));
    }
    let bare = app.execute(&json!({"trace_id": "core-1", "decision": "respond"})).await;
    assert_eq!(bare.body, json!({"trace_id": "core-1", "status": "skipped", "reason": "decision_not_workflow"}));

    assert!(app.fakes.whatsapp_calls().is_empty(), "a skipped decision calls no provider");
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("workflow_events_enqueued_total", &[]), 0.0, "a skipped decision emits no event");
    assert_eq!(metrics.get("workflow_executions_total", &[]), 0.0);
    assert_only_marker_events_arrive(&app, &[]).await;
}

/// Executes a marker task and waits for its events: the sinks deliver in commit order, so any
/// event committed before the marker would have arrived with or before it.
/// `headers` go with the marker request (a caller token, say).
pub async fn assert_only_marker_events_arrive(app: &TestApp, headers: &[(&str, &str)]) {
    let marker = trace_id();
    app.execute_with(&task_request(&marker), headers).await.assert_success(&marker);
    eventually(secs(10.0), "the marker's events arrive", async || {
        (!app.bucket().event_ids().is_empty() && !app.karma().event_ids().is_empty()).then_some(())
    })
    .await;
    app.wait_until_outboxes_drain().await;
    for sink in [&app.bucket(), &app.karma()] {
        let traces = sink.trace_ids();
        assert_eq!(traces.into_iter().collect::<Vec<_>>(), vec![marker.clone()], "only the marker emitted events");
    }
}
