//! Telemetry to Bucket and Karma: the exact event shapes and headers, responses that never wait
//! for a sink, no event lost across an outage, dead letters for sinks that refuse, both
//! full-outbox policies, and what `/healthz`, `/api/integration/status` and `/metrics` say.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::*;

/// Executes `count` task requests, asserting each succeeds within `budget`; returns the traces.
async fn execute_tasks(app: &TestApp, count: usize, budget: std::time::Duration) -> Vec<String> {
    let mut traces = Vec::with_capacity(count);
    for _ in 0..count {
        let trace = trace_id();
        let response = app.execute(&task_request(&trace)).await;
        response.assert_success(&trace);
        assert!(response.elapsed < budget, "a response took {:?} while a sink was out", response.elapsed);
        traces.push(trace);
    }
    traces
}

/// Waits until `sink` acknowledged an event of each of `traces`; returns its distinct event ids.
async fn wait_for_events(sink: &Sink<'_>, traces: &[String]) -> BTreeSet<String> {
    let wanted: BTreeSet<String> = traces.iter().cloned().collect();
    eventually(secs(15.0), "every event reaches the sink", async || wanted.is_subset(&sink.trace_ids()).then_some(()))
        .await;
    sink.event_ids()
}

#[tokio::test]
async fn events_reach_bucket_and_karma_with_the_documented_shapes_and_headers() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();
    let secret_text = "Your one-time code is 424242";
    let metadata = json!({"campaign": "diwali-2026", "channel": "core", "attempt": 1});
    let request = workflow(
        &trace,
        json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": secret_text,
               "user_id": "user-42", "product": "ai_assistant", "metadata": metadata}),
    );

    app.execute(&request).await.assert_success(&trace);
    wait_for_events(&app.bucket(), std::slice::from_ref(&trace)).await;
    wait_for_events(&app.karma(), std::slice::from_ref(&trace)).await;

    let bucket = app.bucket().event_for(&trace).expect("a bucket event");
    assert_eq!(bucket.body["requester_id"], "workflow_executor");
    let data = &bucket.body["event_data"];
    let keys: BTreeSet<&str> = data.as_object().expect("an object").keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "event_type",
        "event_id",
        "trace_id",
        "action_type",
        "status",
        "execution_result",
        "timestamp",
        "user_id",
        "product",
        "duration_ms",
        "metadata",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected, "{data}");
    assert_eq!(data["event_type"], "workflow_execution");
    assert_eq!(data["trace_id"], trace.as_str());
    assert_eq!(data["action_type"], "whatsapp");
    assert_eq!(data["status"], "success");
    assert_eq!(data["user_id"], "user-42");
    assert_eq!(data["product"], "ai_assistant");
    assert!(data["duration_ms"].is_u64(), "{data}");
    assert!(data["timestamp"].is_string());
    assert_eq!(data["metadata"], metadata, "the caller's metadata object, and only it");
    let result = &data["execution_result"];
    assert_eq!(result["success"], true);
    let sent = app.fakes.stack.providers().whatsapp_messages();
    assert_eq!(result["whatsapp_message_id"], sent[0].message_id.as_str());
    assert_eq!(result["recipient"], "+91******3210", "the recipient is masked");
    let serialized = bucket.body.to_string();
    assert!(!serialized.contains(secret_text), "the message body leaked into the audit trail: {serialized}");
    assert!(!serialized.contains("9876543210"), "the phone number leaked into the audit trail: {serialized}");
    assert_eq!(bucket.header("x-trace-id"), Some(trace.as_str()));
    let traceparent = bucket.header("traceparent").expect("traceparent");
    assert_traceparent(traceparent);
    assert_eq!(traceparent[3..35], trace.replace('-', ""), "a UUID trace id keeps its digits in traceparent");
    assert_eq!(bucket.header("idempotency-key"), data["event_id"].as_str());
    assert!(uuid::Uuid::parse_str(&bucket.event_id()).is_ok(), "{}", bucket.event_id());

    let karma = app.karma().event_for(&trace).expect("a karma event");
    assert_eq!(karma.body["type"], "life_event");
    assert_eq!(karma.body["source"], "workflow_executor");
    let data = &karma.body["data"];
    assert_eq!(data["user_id"], "user-42");
    assert_eq!(data["action"], "workflow_success");
    assert_eq!(data["role"], "user");
    assert_eq!(data["note"], "Workflow execution: whatsapp");
    assert_eq!(data["context"]["trace_id"], trace.as_str());
    assert_eq!(data["context"]["action_type"], "whatsapp");
    assert_eq!(data["context"]["source"], "workflow_executor");
    assert!(!karma.body.to_string().contains(secret_text));
    assert_eq!(karma.header("x-trace-id"), Some(trace.as_str()));
    assert_traceparent(karma.header("traceparent").expect("traceparent"));
    assert_eq!(karma.header("idempotency-key"), karma.body["event_id"].as_str());
    assert_ne!(karma.event_id(), bucket.event_id(), "each event has its own id");
}

#[tokio::test]
async fn a_failed_execution_is_audited_as_failed_and_is_a_workflow_failure_for_karma() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();
    let request = workflow(
        &trace,
        json!({"action_type": "email", "recipient": "alice@example.com", "subject": "Hi", "user_id": "u-9"}),
    );

    app.execute(&request).await.assert_failed("missing_body");
    wait_for_events(&app.bucket(), std::slice::from_ref(&trace)).await;
    wait_for_events(&app.karma(), std::slice::from_ref(&trace)).await;

    let data = app.bucket().event_for(&trace).expect("bucket event").body["event_data"].clone();
    assert_eq!(data["status"], "failed");
    assert_eq!(data["action_type"], "email");
    assert_eq!(data["execution_result"]["error_code"], "missing_body");
    assert_eq!(data["metadata"], json!({}));
    assert_eq!(data["product"], "unknown");
    let karma = app.karma().event_for(&trace).expect("karma event").body;
    assert_eq!(karma["data"]["action"], "workflow_failure");
    assert_eq!(karma["data"]["note"], "Workflow execution: email");
    assert_eq!(karma["data"]["user_id"], "u-9");
}

#[tokio::test]
async fn audit_events_mask_email_recipients_and_drop_content() {
    let app = spawn_app(&[]).await;
    let (mail, ai) = (trace_id(), trace_id());
    let email = json!({"action_type": "email", "recipient": "alice@example.com", "subject": "Invoice",
                       "body": "confidential body text"});
    app.execute(&workflow(&mail, email)).await.assert_success(&mail);
    app.execute(&workflow(&ai, json!({"action_type": "ai", "prompt": "my private prompt"}))).await.assert_success(&ai);
    wait_for_events(&app.bucket(), &[mail.clone(), ai.clone()]).await;

    let mail_event = app.bucket().event_for(&mail).expect("event").body;
    assert_eq!(mail_event["event_data"]["execution_result"]["recipient"], "a***@example.com");
    assert!(!mail_event.to_string().contains("alice@"), "{mail_event}");
    assert!(!mail_event.to_string().contains("confidential body text"), "{mail_event}");
    let ai_event = app.bucket().event_for(&ai).expect("event").body;
    assert!(!ai_event.to_string().contains("my private prompt"), "{ai_event}");
    assert!(!ai_event.to_string().contains("[AI_RESPONSE]"), "the model's answer is dropped: {ai_event}");
}

#[tokio::test]
async fn responses_stay_fast_and_no_event_is_lost_while_bucket_refuses_connections() {
    let app = spawn_app_with(Fakes::with_bucket_refused().await, &[]).await;

    let traces = execute_tasks(&app, 10, secs(1.0)).await;

    let health = eventually(secs(10.0), "healthz reports bucket down", async || {
        let health = app.healthz().await;
        (health.body["pillars"]["bucket"] == "down").then_some(health)
    })
    .await;
    assert_eq!(health.status, 200, "healthz answers 200 while a pillar is down");
    assert_eq!(health.body["status"], "degraded");
    assert_eq!(health.body["pillars"]["karma"], "up");
    let status = app.status().await.body;
    assert_eq!(status["pillars"]["bucket"]["outbox_depth"], 10, "{status}");
    assert!(status["pillars"]["bucket"]["last_error"].is_string(), "{status}");
    assert!(status["alerts"].as_array().is_some_and(|a| a.iter().any(|x| x["pillar"] == "bucket")), "{status}");
    assert!(app.metrics().await.get("workflow_outbox_depth", &[("sink", "bucket")]) >= 10.0);

    app.bucket().come_up();

    let bucket_ids = wait_for_events(&app.bucket(), &traces).await;
    assert_eq!(bucket_ids.len(), 10, "one event per execution, none lost");
    assert_eq!(wait_for_events(&app.karma(), &traces).await.len(), 10);
    eventually(secs(10.0), "healthz reports ok again", async || {
        let health = app.healthz().await.body;
        (health["status"] == "ok" && health["pillars"]["bucket"] == "up").then_some(())
    })
    .await;
    app.wait_until_outboxes_drain().await;
}

#[tokio::test]
async fn responses_stay_fast_and_every_event_arrives_after_a_hanging_sink_recovers() {
    let app = spawn_app(&[]).await;
    app.bucket().hang();
    app.karma().hang();

    let traces = execute_tasks(&app, 12, secs(1.0)).await;
    eventually(secs(5.0), "the sinks were tried", async || {
        (app.bucket().attempts() > 0 && app.karma().attempts() > 0).then_some(())
    })
    .await;
    let more = execute_tasks(&app, 3, secs(1.0)).await;

    app.bucket().accept();
    app.karma().accept();

    let all: Vec<String> = traces.into_iter().chain(more).collect();
    assert_eq!(wait_for_events(&app.bucket(), &all).await.len(), 15);
    assert_eq!(wait_for_events(&app.karma(), &all).await.len(), 15);
    let metrics = app.metrics().await;
    assert!(metrics.get("workflow_events_retried_total", &[("sink", "bucket"), ("kind", "unreachable")]) >= 1.0);
}

#[tokio::test]
async fn sinks_that_refuse_events_are_dead_lettered_and_reported_while_executions_keep_succeeding() {
    // A generous attempt timeout: a slow answer must not count as "unreachable" here.
    // Bucket refuses an unauthorised requester with 200 `success: false`; the executor always
    // names itself and the fake Bucket knows it, so an `answer` rule plays that Bucket here.
    let fakes = Fakes::start().await;
    fakes.bucket().answer(200, json!({"success": false, "message": "403: Unauthorized requester: workflow_executor"}));
    let app = spawn_app_with(fakes, &[("EXECUTOR_DELIVERY_MAX_ATTEMPTS", "2"), ("WORKFLOW_TIMEOUT", "2")]).await;
    app.karma().fail(500);

    let traces = execute_tasks(&app, 3, secs(1.0)).await;

    let status = eventually(secs(10.0), "every event is dead-lettered", async || {
        let status = app.status().await.body;
        let dead = |p: &str| status["pillars"][p]["dead_lettered"].as_u64();
        (dead("bucket") == Some(3) && dead("karma") == Some(3)).then_some(status)
    })
    .await;
    for pillar in ["bucket", "karma"] {
        let report = &status["pillars"][pillar];
        assert_eq!(report["outbox_depth"], 0, "{status}");
        assert_eq!(report["delivered"], 0, "{status}");
        assert!(report["failed_attempts"].as_u64() >= Some(1), "{status}");
        let alert = status["alerts"]
            .as_array()
            .and_then(|alerts| alerts.iter().find(|a| a["pillar"] == pillar && a["kind"] == "dead_letters"))
            .unwrap_or_else(|| panic!("no dead-letter alert for {pillar}: {status}"));
        assert!(alert["message"].as_str().is_some_and(|m| m.contains('3')), "{alert}");
    }
    assert!(
        status["pillars"]["bucket"]["last_error"].as_str().unwrap_or_default().contains("bucket refused"),
        "{status}"
    );
    assert!(status["pillars"]["karma"]["last_error"].as_str().unwrap_or_default().contains("500"), "{status}");
    assert_eq!(app.bucket().attempts(), 6, "two attempts per event, then dead-lettered");
    assert_eq!(app.karma().attempts(), 6, "two attempts per event, then dead-lettered");

    let metrics = app.metrics().await;
    assert_eq!(metrics.get("workflow_events_dead_lettered_total", &[("sink", "bucket")]), 3.0);
    assert_eq!(metrics.get("workflow_events_dead_lettered_total", &[("sink", "karma")]), 3.0);
    assert_eq!(metrics.get("workflow_events_delivered_total", &[]), 0.0);

    let health = app.healthz().await.body;
    assert_eq!(health["status"], "degraded", "a sink that refuses everything is not healthy: {health}");
    assert_eq!(health["pillars"]["bucket"], "degraded", "{health}");
    assert_eq!(health["pillars"]["karma"], "degraded", "{health}");

    let after = execute_tasks(&app, 1, secs(1.0)).await;
    assert_eq!(after.len(), 1, "executions keep succeeding");
    assert!(!traces.is_empty());
}

#[tokio::test]
async fn a_disabled_sink_gets_no_events_and_is_reported_as_disabled() {
    let app = spawn_app(&[("EXECUTOR_KARMA_ENABLED", "false")]).await;

    let traces = execute_tasks(&app, 2, secs(1.0)).await;

    wait_for_events(&app.bucket(), &traces).await;
    app.wait_until_outboxes_drain().await;
    assert_eq!(app.karma().attempts(), 0);
    let health = app.healthz().await.body;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["pillars"]["karma"], "disabled", "{health}");
    assert_eq!(app.metrics().await.get("workflow_events_enqueued_total", &[("sink", "karma")]), 0.0);
}

#[tokio::test]
async fn a_full_audit_outbox_fails_closed_with_503_audit_spool_full() {
    let app = spawn_app_with(Fakes::with_bucket_refused().await, &[("EXECUTOR_BUCKET_OUTBOX_MAX_EVENTS", "2")]).await;
    let accepted = execute_tasks(&app, 2, secs(1.0)).await;

    let refused = app.execute(&whatsapp_request(&trace_id())).await;

    refused.assert_rejected(503, "audit_spool_full");
    assert!(refused.header("retry-after").is_some(), "503 carries Retry-After");
    assert!(app.fakes.whatsapp_calls().is_empty(), "an execution that cannot be audited does not happen");
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("workflow_rejected_requests_total", &[("reason", "audit_spool_full")]), 1.0);
    assert_eq!(metrics.get("workflow_executions_total", &[]), 2.0);

    app.bucket().come_up();
    assert_eq!(wait_for_events(&app.bucket(), &accepted).await.len(), 2);
    app.wait_until_outboxes_drain().await;
    let trace = trace_id();
    app.execute(&whatsapp_request(&trace)).await.assert_success(&trace);
}

#[tokio::test]
async fn a_full_behavioural_outbox_drops_the_oldest_events_and_counts_them() {
    let app = spawn_app_with(Fakes::with_karma_refused().await, &[("EXECUTOR_KARMA_OUTBOX_MAX_EVENTS", "2")]).await;

    let traces = execute_tasks(&app, 5, secs(1.0)).await;

    // The policy is enforced when the events are applied to the store, just after the answers.
    let metrics = eventually(secs(5.0), "three Karma events are dropped", async || {
        let metrics = app.metrics().await;
        (metrics.get("workflow_events_dropped_total", &[("sink", "karma")]) == 3.0).then_some(metrics)
    })
    .await;
    assert_eq!(metrics.get("workflow_events_dropped_total", &[("sink", "bucket")]), 0.0);
    assert_eq!(app.status().await.body["pillars"]["karma"]["outbox_depth"], 2);
    assert_eq!(wait_for_events(&app.bucket(), &traces).await.len(), 5, "the audit trail is complete");

    app.karma().come_up();
    let newest = &traces[3..];
    wait_for_events(&app.karma(), newest).await;
    app.wait_until_outboxes_drain().await;
    assert_eq!(app.karma().trace_ids(), newest.iter().cloned().collect(), "the oldest events were the ones dropped");
}

#[tokio::test]
async fn metrics_and_status_move_with_executions_deliveries_and_replays() {
    let app = spawn_app(&[]).await;
    let (first, second) = (trace_id(), trace_id());
    app.execute(&task_request(&first)).await.assert_success(&first);
    app.execute(&task_request(&second)).await.assert_success(&second);
    let replayed = app.execute(&task_request(&first)).await;
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    let failed = workflow(&trace_id(), json!({"action_type": "whatsapp", "recipient": "+919876543210"}));
    app.execute(&failed).await.assert_failed("missing_message");
    app.wait_until_outboxes_drain().await;

    let metrics = app.metrics().await;
    let m = |name: &str, labels: &[(&str, &str)]| metrics.get(name, labels);
    assert_eq!(m("workflow_executions_total", &[("action_type", "task"), ("status", "success")]), 2.0);
    assert_eq!(m("workflow_executions_total", &[("action_type", "whatsapp"), ("status", "failed")]), 1.0);
    assert_eq!(m("workflow_idempotent_replays_total", &[]), 1.0);
    for sink in ["bucket", "karma"] {
        assert_eq!(m("workflow_events_enqueued_total", &[("sink", sink)]), 3.0, "replays emit no event");
        assert_eq!(m("workflow_events_delivered_total", &[("sink", sink)]), 3.0);
        assert_eq!(m("workflow_outbox_depth", &[("sink", sink)]), 0.0);
        assert_eq!(m("workflow_circuit_state", &[("sink", sink)]), 0.0);
    }
    assert_eq!(m("workflow_in_flight_requests", &[]), 0.0);
    assert_eq!(m("workflow_build_info", &[]), 1.0);
    assert!(m("workflow_request_duration_seconds_count", &[("route", "/api/workflow/execute")]) >= 4.0);
    assert_eq!(m("workflow_adapter_duration_seconds_count", &[("action_type", "task")]), 2.0);
    assert_eq!(m("workflow_http_requests_total", &[("route", "/api/workflow/execute"), ("status", "200")]), 4.0);
    assert!(metrics.0.contains("# TYPE workflow_request_duration_seconds histogram"));

    let status = app.status().await.body;
    for pillar in ["bucket", "karma"] {
        let report = &status["pillars"][pillar];
        assert_eq!(report["state"], "up", "{status}");
        assert_eq!(report["circuit"], "closed", "{status}");
        assert_eq!(report["delivered"], 3, "{status}");
        assert_eq!(report["dead_lettered"], 0, "{status}");
        assert!(report["last_success"].is_string(), "{status}");
        assert!(report["last_error"].is_null(), "{status}");
    }
    assert_eq!(status["alerts"], json!([]));
    let health = app.healthz().await.body;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["service"], "workflow-executor");
    assert_eq!(health["pillars"], json!({"bucket": "up", "karma": "up"}));
    let _: &Value = &health["version"];
}

#[tokio::test]
async fn a_permanent_4xx_from_a_sink_is_dead_lettered_at_once_with_its_reason() {
    let app = spawn_app(&[("EXECUTOR_DELIVERY_MAX_ATTEMPTS", "5"), ("WORKFLOW_TIMEOUT", "2")]).await;
    app.karma().fail(422);

    let traces = execute_tasks(&app, 2, secs(1.0)).await;

    let status = eventually(secs(10.0), "karma's events are dead-lettered", async || {
        let status = app.status().await.body;
        (status["pillars"]["karma"]["dead_lettered"] == 2).then_some(status)
    })
    .await;
    assert_eq!(app.karma().attempts(), 2, "a permanent refusal is not retried");
    assert!(status["pillars"]["karma"]["last_error"].as_str().unwrap_or_default().contains("422"), "{status}");
    assert_eq!(wait_for_events(&app.bucket(), &traces).await.len(), 2, "the other sink is unaffected");

    // Operators can read what was given up on, and why.
    let listed = app.dead_letters("sink=karma&limit=10").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["count"], 2, "{}", listed.body);
    let mut listed_traces: Vec<String> = listed.body["dead_letters"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| {
            assert!(d["reason"].as_str().unwrap_or_default().contains("HTTP 422"), "{d}");
            assert_eq!(d["event"]["type"], "life_event", "{d}");
            d["trace_id"].as_str().expect("a trace id").to_owned()
        })
        .collect();
    listed_traces.sort();
    let mut expected = traces.clone();
    expected.sort();
    assert_eq!(listed_traces, expected);
    assert_eq!(app.dead_letters("sink=bucket").await.body["count"], 0);
    let bad = app.dead_letters("sink=core").await;
    assert_eq!((bad.status, bad.body["error"]["code"].as_str()), (422, Some("invalid_query")), "{}", bad.body);
}

#[tokio::test]
async fn recipients_stay_unmasked_in_audit_events_when_so_configured() {
    let app = spawn_app(&[("EXECUTOR_AUDIT_MASK_RECIPIENTS", "false")]).await;
    let trace = trace_id();

    app.execute(&whatsapp_request(&trace)).await.assert_success(&trace);

    wait_for_events(&app.bucket(), std::slice::from_ref(&trace)).await;
    let event = app.bucket().event_for(&trace).expect("an event").body;
    assert_eq!(event["event_data"]["execution_result"]["recipient"], "+919876543210");
    assert!(!event.to_string().contains("Your order has shipped"), "content is still dropped: {event}");
}

#[tokio::test]
async fn an_outage_longer_than_one_delivery_batch_loses_nothing() {
    let app = spawn_app_with(Fakes::with_bucket_refused().await, &[]).await;
    let mut load = tokio::task::JoinSet::new();
    let (traces, per_caller) = (std::sync::Arc::new(std::sync::Mutex::new(Vec::new())), 75);
    for _ in 0..4 {
        let (http, url, traces) = (app.http.clone(), app.url("/api/workflow/execute"), traces.clone());
        load.spawn(async move {
            for _ in 0..per_caller {
                let trace = trace_id();
                let body: Value = http
                    .post(&url)
                    .json(&task_request(&trace))
                    .send()
                    .await
                    .expect("answer")
                    .json()
                    .await
                    .expect("JSON");
                assert_eq!(body["status"], "success", "{body}");
                traces.lock().expect("lock").push(trace);
            }
        });
    }
    while let Some(caller) = load.join_next().await {
        caller.expect("a caller");
    }
    let traces = traces.lock().expect("lock").clone();
    assert_eq!(traces.len(), 300, "more than one delivery batch (256)");
    assert_eq!(app.status().await.body["pillars"]["bucket"]["outbox_depth"], 300);

    app.bucket().come_up();

    assert_eq!(wait_for_events(&app.bucket(), &traces).await.len(), 300);
    app.wait_until_outboxes_drain().await;
}

#[tokio::test]
async fn concurrent_requests_cannot_overfill_a_fail_closed_outbox() {
    let app = spawn_app_with(Fakes::with_bucket_refused().await, &[("EXECUTOR_BUCKET_OUTBOX_MAX_EVENTS", "5")]).await;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, url) = (app.http.clone(), app.url("/api/workflow/execute"));
        burst.spawn(async move {
            let response = http.post(url).json(&task_request(&trace_id())).send().await.expect("an answer");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("JSON");
            (status, body)
        });
    }
    let (mut accepted, mut refused) = (0, 0);
    while let Some(answer) = burst.join_next().await {
        match answer.expect("a caller") {
            (200, body) if body["status"] == "success" => accepted += 1,
            (503, body) if body["error"]["code"] == "audit_spool_full" => refused += 1,
            (status, body) => panic!("unexpected answer {status}: {body}"),
        }
    }

    assert_eq!(accepted + refused, 20);
    // Near the bound a burst may be refused a little early (an event is briefly counted both
    // as committed and as promised); it is never admitted past the bound.
    assert!((1..=5).contains(&accepted), "the bound holds under a burst: {accepted} accepted");
    for _ in accepted..5 {
        let trace = trace_id();
        app.execute(&task_request(&trace)).await.assert_success(&trace);
    }
    app.execute(&task_request(&trace_id())).await.assert_rejected(503, "audit_spool_full");
    assert_eq!(app.status().await.body["pillars"]["bucket"]["outbox_depth"], 5, "filled exactly to the bound");
}

#[tokio::test]
async fn dead_letters_are_counted_and_alerted_in_the_status_after_a_restart() {
    let app = spawn_app(&[("WORKFLOW_TIMEOUT", "2")]).await;
    app.karma().fail(422);
    execute_tasks(&app, 2, secs(1.0)).await;
    eventually(secs(10.0), "karma's events are dead-lettered", async || {
        (app.status().await.body["pillars"]["karma"]["dead_lettered"] == 2).then_some(())
    })
    .await;

    let stopped = app.stop().await;
    let restarted = spawn_app_in(stopped.fakes, stopped.data_dir, &[]).await;

    let status = restarted.status().await.body;
    assert_eq!(status["pillars"]["karma"]["dead_lettered"], 2, "{status}");
    let alert = status["alerts"]
        .as_array()
        .and_then(|alerts| alerts.iter().find(|alert| alert["pillar"] == "karma" && alert["kind"] == "dead_letters"));
    assert!(alert.is_some(), "a dead-letter alert after the restart: {status}");
    assert_eq!(restarted.dead_letters("sink=karma").await.body["count"], 2);
}
