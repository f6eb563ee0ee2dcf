//! The simulator's own answers: Core's `/handle_task`, and the control API (stack info, fault
//! rules set, listed and cleared, scenario runs, journal entries, profiles, toggles, Bucket's
//! chain report, Karma users, and its error answers for bad input).

use pillar_sim::Pillar;
use reqwest::Method;
use serde_json::json;
use test_support::TestResponse;

use crate::support::{Contract, TestStack, assert_contract};

fn control(name: &str, why: &str, answer: &TestResponse, status: u16) {
    assert_contract(&format!("control_{name}"), why, &answer.contract());
    answer.expect_status(status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_answers_tasks_with_and_without_a_workflow() {
    let app = TestStack::default_stack().await;
    let url = format!("{}/handle_task", app.stack.core_url());

    let task = json!({"agent": "edumentor_agent", "input": "Remind me: call the bank", "input_type": "text",
        "user_id": "learner-7", "product": "gurukul"});
    let answer = app.request(Method::POST, url.clone(), Some(&task)).await;
    assert_contract(
        "core_handle_task_workflow",
        "POST /handle_task whose input needs a task workflow (dispatched to the executor)",
        &answer.contract(),
    );
    answer.expect_status(200);
    assert_eq!(answer.body["agent_output"]["workflow_dispatched"], true, "{:#}", answer.body);
    // Core's dispatch reaches the executor, which reports to Bucket under Core's task id.
    let trace = answer.body["task_id"].as_str().expect("a task id");
    app.journaled(Pillar::Bucket, trace).await;

    let chat = json!({"agent": "vedas_agent", "input": "What is dharma?"});
    let answer = app.request(Method::POST, url.clone(), Some(&chat)).await;
    assert_contract("core_handle_task_no_workflow", "POST /handle_task that needs no workflow", &answer.contract());
    answer.expect_status(200);

    let answer = app.request(Method::POST, url, Some(&json!({"input": 5}))).await;
    assert_contract(
        "core_handle_task_invalid",
        "POST /handle_task without agent and with a numeric input (FastAPI's 422)",
        &answer.contract(),
    );
    answer.expect_status(422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_answers_with_stable_shapes() {
    let app = TestStack::default_stack().await;
    let get = async |path: &str| app.control(Method::GET, path, None).await;

    control("info", "GET / (the stack: seed, pillars, executor, toggles)", &get("/").await, 200);

    let slow_karma = json!({"id": "slow-karma", "pillar": "karma", "route": "/v1/event/", "method": "POST",
        "kind": "latency", "dist": "uniform", "min_ms": 1, "max_ms": 3, "probability": 0.5, "for": "10m",
        "count": 100});
    let answer = app.control(Method::POST, "/faults", Some(&slow_karma)).await;
    control("fault_set_latency", "POST /faults with a latency rule", &answer, 201);
    let failing_bucket = json!({"pillar": "bucket", "route": "/core/write-event", "kind": "http_error",
        "status": 503, "count": 1});
    let answer = app.control(Method::POST, "/faults", Some(&failing_bucket)).await;
    control("fault_set_http_error", "POST /faults with an http_error rule and no id", &answer, 201);
    let bad = json!({"pillar": "bucket", "kind": "http_error", "status": 700});
    let answer = app.control(Method::POST, "/faults", Some(&bad)).await;
    control("fault_set_invalid", "POST /faults with a status outside 400-599", &answer, 422);
    let answer = app.request(Method::POST, app.control_url("/faults"), None).await;
    control("fault_set_no_body", "POST /faults without a body", &answer, 400);

    // Two requests to the fakes, each meeting a rule, for the journal.
    let event = json!({"requester_id": "workflow_executor", "event_data": {"event_type": "workflow_execution",
        "event_id": "contract-event-1", "trace_id": "contract-journal", "action_type": "task", "status": "success",
        "execution_result": {"success": true}, "timestamp": "2026-01-01T00:00:00Z"}});
    let bucket = app.request(Method::POST, format!("{}/core/write-event", app.stack.bucket_url()), Some(&event)).await;
    assert_contract("bucket_injected_503", "Bucket's answer to a write hit by an injected 503", &bucket.contract());
    let life_event = json!({"type": "life_event", "event_id": "contract-event-2", "source": "workflow_executor",
        "data": {"user_id": "learner-7", "action": "workflow_success", "role": "user",
            "note": "Workflow execution: task", "context": {"trace_id": "contract-journal", "action_type": "task",
            "source": "workflow_executor", "event_id": "contract-event-2"}}});
    let karma = app.request(Method::POST, format!("{}/v1/event/", app.stack.karma_url()), Some(&life_event)).await;
    karma.expect_status(200);

    control("faults_list", "GET /faults after both rules matched once", &get("/faults").await, 200);
    control("journal", "GET /journal?trace_id=contract-journal", &get("/journal?trace_id=contract-journal").await, 200);
    control("journal_by_pillar", "GET /journal?pillar=karma&limit=1", &get("/journal?pillar=karma&limit=1").await, 200);
    control("journal_bad_pillar", "GET /journal?pillar=mars", &get("/journal?pillar=mars").await, 422);
    control("journal_bad_param", "GET /journal?colour=blue", &get("/journal?colour=blue").await, 422);

    let answer = app.control(Method::DELETE, "/faults/slow-karma", None).await;
    control("fault_clear_one", "DELETE /faults/slow-karma", &answer, 200);
    let answer = app.control(Method::DELETE, "/faults/nope", None).await;
    control("fault_clear_unknown", "DELETE /faults/nope", &answer, 404);
    let answer = app.control(Method::DELETE, "/faults", None).await;
    control("faults_clear_all", "DELETE /faults", &answer, 200);

    // Its steps lie far in the future, so the run is deterministically at step 0.
    let scenario = json!({"name": "bucket-flaky", "description": "Bucket refuses, then errors, then recovers",
        "steps": [
            {"at": "10m", "fault": {"pillar": "bucket", "kind": "refuse", "for": "10s"}},
            {"at": "11m", "fault": {"pillar": "bucket", "kind": "http_error", "status": 503, "probability": 0.3,
                "for": "20s"}},
            {"at": "12m", "clear": "all"}]});
    let answer = app.control(Method::POST, "/scenarios", Some(&scenario)).await;
    control("scenario_started", "POST /scenarios", &answer, 202);
    let id = answer.body["id"].as_str().expect("a run id").to_owned();
    control("scenario_status", "GET /scenarios/{id}", &get(&format!("/scenarios/{id}")).await, 200);
    control("scenarios_list", "GET /scenarios", &get("/scenarios").await, 200);
    let answer = app.control(Method::DELETE, &format!("/scenarios/{id}"), None).await;
    control("scenario_cancelled", "DELETE /scenarios/{id}", &answer, 200);
    let bad = json!({"name": "broken", "steps": [{"at": "1s", "fault": {"pillar": "mars", "kind": "refuse"}}]});
    let answer = app.control(Method::POST, "/scenarios", Some(&bad)).await;
    control("scenario_invalid", "POST /scenarios with an unknown pillar in a step", &answer, 422);

    control("profiles", "GET /profiles", &get("/profiles").await, 200);
    let answer = app.control(Method::PUT, "/profiles/karma", Some(&json!({"profile": "as-built"}))).await;
    control("profile_set", "PUT /profiles/karma to as-built", &answer, 200);
    let answer = app.control(Method::PUT, "/profiles/smtp", Some(&json!({"profile": "as-built"}))).await;
    control("profile_invalid", "PUT /profiles/smtp to as-built (it has none)", &answer, 422);
    let answer = app.control(Method::PATCH, "/toggles", Some(&json!({"workflow_events_enabled": false}))).await;
    control("toggles", "PATCH /toggles", &answer, 200);

    control("bucket_verify", "GET /bucket/verify", &get("/bucket/verify").await, 200);
    control("karma_user", "GET /karma/users/learner-7", &get("/karma/users/learner-7").await, 200);
    control("karma_user_unknown", "GET /karma/users/nobody", &get("/karma/users/nobody").await, 404);
    control("not_found", "GET /nope", &get("/nope").await, 404);
}
