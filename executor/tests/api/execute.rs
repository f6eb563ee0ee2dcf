//! Executing workflows: each adapter's success path with the reference's result fields, each
//! executed-failure `error_code` (HTTP 200, `status: "failed"`), and the guard that executes
//! nothing unless `decision == "workflow"`.

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

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
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .and(path(WHATSAPP_PATH))
        .and(header("authorization", format!("Bearer {WHATSAPP_TOKEN}").as_str()))
        .respond_with(whatsapp_accepted("wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgS"))
        .mount(&app.whatsapp)
        .await;
    let trace = trace_id();

    let response = app.execute(&whatsapp_request(&trace)).await;

    response.assert_success(&trace);
    let result = response.result();
    assert_eq!(result["whatsapp_message_id"], "wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgS");
    assert_eq!(result["recipient"], "+919876543210");
    assert_eq!(result["status"], "SENT");
    assert_rfc3339(&result["sent_at"]);
    assert!(!response.text.contains(WHATSAPP_TOKEN), "the token leaked: {}", response.text);

    let calls = received(&app.whatsapp).await;
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method.as_str(), "POST");
    assert_eq!(call.url.path(), WHATSAPP_PATH);
    assert_eq!(call.headers["authorization"], format!("Bearer {WHATSAPP_TOKEN}").as_str());
    assert_eq!(call.headers["x-trace-id"], trace.as_str());
    assert_traceparent(call.headers["traceparent"].to_str().expect("ascii"));
    let body: Value = call.body_json().expect("a JSON body");
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["type"], "text");
    assert_eq!(body["text"]["body"], "Your order has shipped");
    assert_eq!(body["to"], "919876543210");
}

#[tokio::test]
async fn the_phone_alias_names_the_whatsapp_recipient() {
    let app = spawn_app(&[]).await;
    mount_whatsapp(&app.whatsapp, whatsapp_accepted("wamid.alias")).await;
    let trace = trace_id();
    let request = workflow(
        &trace,
        json!({"action_type": "whatsapp", "phone": "+14155550123", "message": "Hello from the alias"}),
    );

    let response = app.execute(&request).await;

    response.assert_success(&trace);
    assert_eq!(response.result()["recipient"], "+14155550123");
    assert_eq!(response.result()["whatsapp_message_id"], "wamid.alias");
    let body: Value = received(&app.whatsapp).await[0].body_json().expect("JSON");
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

    let messages = app.smtp.messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.mail_from, "<executor@bhiv.local>");
    assert_eq!(message.rcpt_to, vec!["<alice@example.com>".to_owned()]);
    assert!(message.data.contains(&format!("X-Trace-Id: {trace}")), "{}", message.data);
    assert!(message.data.contains("Subject: Your invoice"), "{}", message.data);
    assert!(message.data.contains(&format!("Message-ID: {message_id}")), "{}", message.data);
    assert!(message.data.contains("Please find your invoice attached."), "{}", message.data);
}

#[tokio::test]
async fn an_ai_request_returns_the_model_text() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {AI_KEY}").as_str()))
        .respond_with(ai_completion("Three short tips: sleep, water, walk."))
        .mount(&app.ai)
        .await;
    let trace = trace_id();
    let request = workflow(&trace, json!({"action_type": "ai", "prompt": "Give me three health tips"}));

    let response = app.execute(&request).await;

    response.assert_success(&trace);
    let result = response.result();
    assert_eq!(result["request_id"], "chatcmpl-test-1");
    assert_eq!(result["response"], "Three short tips: sleep, water, walk.");
    assert_eq!(result["prompt"], "Give me three health tips");
    assert_eq!(result["health"], "OK", "the reference adapter's field");
    assert_rfc3339(&result["requested_at"]);
    assert!(!response.text.contains(AI_KEY));

    let calls = received(&app.ai).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].url.path(), "/v1/chat/completions");
    assert_eq!(calls[0].headers["x-trace-id"], trace.as_str());
    let body: Value = calls[0].body_json().expect("JSON");
    assert_eq!(body["model"], AI_MODEL);
    assert_eq!(body["messages"], json!([{"role": "user", "content": "Give me three health tips"}]));
}

#[tokio::test]
async fn the_content_alias_is_the_ai_prompt() {
    let app = spawn_app(&[]).await;
    mount_ai(&app.ai, ai_completion("aliased")).await;
    let trace = trace_id();

    let response = app.execute(&workflow(&trace, json!({"action_type": "ai", "content": "Say aliased"}))).await;

    response.assert_success(&trace);
    assert_eq!(response.result()["prompt"], "Say aliased");
    assert_eq!(response.result()["response"], "aliased");
    let body: Value = received(&app.ai).await[0].body_json().expect("JSON");
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
    assert!(received(&app.whatsapp).await.is_empty(), "no provider is called for an invalid payload");
    assert!(received(&app.ai).await.is_empty());
    assert_eq!(app.smtp.sessions(), 0);
}

#[tokio::test]
async fn a_provider_slower_than_its_timeout_is_provider_timeout() {
    let app = spawn_app(&[("WHATSAPP_TIMEOUT", "0.2")]).await;
    mount_whatsapp(&app.whatsapp, whatsapp_accepted("late").set_delay(secs(5.0))).await;

    let response = app.execute(&whatsapp_request(&trace_id())).await;

    response.assert_failed("provider_timeout");
    assert!(response.elapsed < secs(2.0), "the timeout bounds the call: {:?}", response.elapsed);
}

#[tokio::test]
async fn a_provider_4xx_is_provider_rejected_with_the_providers_reason() {
    let app = spawn_app(&[]).await;
    let graph_error = json!({"error": {"message": "(#131030) Recipient phone number not in allowed list",
        "type": "OAuthException", "code": 131030, "fbtrace_id": "AbC"}});
    mount_whatsapp(&app.whatsapp, ResponseTemplate::new(400).set_body_json(graph_error)).await;

    let response = app.execute(&whatsapp_request(&trace_id())).await;

    response.assert_failed("provider_rejected");
    let message = response.result()["message"].as_str().expect("a message");
    assert!(message.contains("131030") && message.contains("400"), "{message}");
    assert!(!response.text.contains(WHATSAPP_TOKEN));
}

#[tokio::test]
async fn a_provider_5xx_is_provider_error() {
    let app = spawn_app(&[]).await;
    mount_whatsapp(&app.whatsapp, ResponseTemplate::new(500).set_body_string("upstream exploded")).await;
    mount_ai(&app.ai, ResponseTemplate::new(503)).await;

    app.execute(&whatsapp_request(&trace_id())).await.assert_failed("provider_error");
    app.execute(&workflow(&trace_id(), json!({"action_type": "ai", "prompt": "hi"})))
        .await
        .assert_failed("provider_error");
}

#[tokio::test]
async fn a_refused_provider_port_is_provider_unavailable() {
    let refused = ReservedPort::new();
    let smtp_refused = ReservedPort::new();
    let port = smtp_refused.address().port().to_string();
    let app =
        spawn_app(&[("WHATSAPP_API_URL", &refused.uri()), ("AI_API_URL", &refused.uri()), ("SMTP_PORT", &port)]).await;

    app.execute(&whatsapp_request(&trace_id())).await.assert_failed("provider_unavailable");
    app.execute(&workflow(&trace_id(), json!({"action_type": "ai", "prompt": "hi"})))
        .await
        .assert_failed("provider_unavailable");
    let email = json!({"action_type": "email", "recipient": "bob@example.com", "subject": "s", "body": "Hello Bob"});
    app.execute(&workflow(&trace_id(), email)).await.assert_failed("provider_unavailable");
}

#[tokio::test]
async fn a_provider_answer_without_the_expected_fields_is_provider_bad_response() {
    let app = spawn_app(&[]).await;
    mount_whatsapp(&app.whatsapp, ResponseTemplate::new(200).set_body_json(json!({"messaging_product": "whatsapp"})))
        .await;
    mount_ai(&app.ai, ResponseTemplate::new(200).set_body_string("<html>not json</html>")).await;

    app.execute(&whatsapp_request(&trace_id())).await.assert_failed("provider_bad_response");
    app.execute(&workflow(&trace_id(), json!({"action_type": "ai", "prompt": "hi"})))
        .await
        .assert_failed("provider_bad_response");
}

#[tokio::test]
async fn an_smtp_550_is_provider_rejected() {
    let app = spawn_app(&[]).await;
    app.smtp.set_mode(SmtpMode::RejectRecipients);
    let email =
        json!({"action_type": "email", "recipient": "nobody@example.com", "subject": "s", "body": "Hello nobody"});

    let response = app.execute(&workflow(&trace_id(), email)).await;

    response.assert_failed("provider_rejected");
    assert!(response.result()["message"].as_str().unwrap_or_default().contains("550"), "{}", response.text);
    assert!(app.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_silent_smtp_relay_is_provider_timeout() {
    let app = spawn_app(&[("SMTP_TIMEOUT", "0.2")]).await;
    app.smtp.set_mode(SmtpMode::Silent);
    let email = json!({"action_type": "email", "recipient": "carol@example.com", "subject": "s", "body": "Hi"});

    let response = app.execute(&workflow(&trace_id(), email)).await;

    response.assert_failed("provider_timeout");
    assert!(response.elapsed < secs(2.0), "{:?}", response.elapsed);
}

#[tokio::test]
async fn every_decision_but_workflow_is_skipped_and_executes_nothing() {
    let app = spawn_app(&[]).await;
    mount_whatsapp(&app.whatsapp, whatsapp_accepted("never")).await;
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

    assert!(received(&app.whatsapp).await.is_empty(), "a skipped decision calls no provider");
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
        (!app.bucket.event_ids().is_empty() && !app.karma.event_ids().is_empty()).then_some(())
    })
    .await;
    app.wait_until_outboxes_drain().await;
    for sink in [&app.bucket, &app.karma] {
        let traces = sink.trace_ids();
        assert_eq!(traces.into_iter().collect::<Vec<_>>(), vec![marker.clone()], "only the marker emitted events");
    }
}
