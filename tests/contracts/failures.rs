//! Executed-and-failed answers (HTTP 200, `status: "failed"`): every validation code the engine
//! reports, and the provider failures the adapters map, made with the simulator's faults (and,
//! for refused connections, a closed port).

use pillar_sim::{Fault, FaultRule, Pillar, Stack};
use serde_json::{Value, json};

use crate::support::{Contract, TestStack, assert_contract, sent, workflow};

/// The route of the WhatsApp Cloud API on the providers' port.
const WHATSAPP_ROUTE: &str = "/v21.0/*";
/// The route of the chat-completions API on the providers' port.
const CHAT_ROUTE: &str = "/v1/chat/completions";

/// Executes `payload`, snapshots the answer, and asserts it failed with `code`.
async fn fails_with(app: &TestStack, name: &str, code: &str, payload: Value, why: &str) {
    let answer = app.execute(&workflow(&format!("contract-{name}"), payload)).await;
    assert_contract(
        &format!("execute_failed_{name}"),
        &format!("POST /api/workflow/execute: {why}"),
        &answer.contract(),
    );
    answer.expect_status(200);
    assert_eq!(answer.body["execution_result"]["error_code"], code, "{:#}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_failure_has_its_code_and_message() {
    let app = TestStack::default_stack().await;
    let cases = [
        ("missing_action_type", "missing_action_type", json!({"title": "x"}), "a payload without action_type"),
        (
            "unsupported_action_type",
            "unsupported_action_type",
            json!({"action_type": "fax", "recipient": "+919876543210"}),
            "an action_type no adapter handles",
        ),
        (
            "missing_task_title",
            "missing_task_title",
            json!({"action_type": "task", "description": "d"}),
            "a task without title",
        ),
        (
            "missing_recipient_whatsapp",
            "missing_recipient",
            json!({"action_type": "whatsapp", "message": "hi"}),
            "a whatsapp message without recipient",
        ),
        (
            "missing_message",
            "missing_message",
            json!({"action_type": "whatsapp", "recipient": "+919876543210"}),
            "a whatsapp message without text",
        ),
        (
            "invalid_recipient_whatsapp",
            "invalid_recipient",
            json!({"action_type": "whatsapp", "recipient": "12345", "message": "hi"}),
            "a whatsapp recipient that is not E.164",
        ),
        (
            "missing_recipient_email",
            "missing_recipient",
            json!({"action_type": "email", "subject": "s", "body": "b"}),
            "an e-mail without recipient",
        ),
        (
            "missing_subject",
            "missing_subject",
            json!({"action_type": "email", "recipient": "alice@example.com", "body": "b"}),
            "an e-mail without subject",
        ),
        (
            "missing_body",
            "missing_body",
            json!({"action_type": "email", "recipient": "alice@example.com", "subject": "s"}),
            "an e-mail without body",
        ),
        (
            "invalid_recipient_email",
            "invalid_recipient",
            json!({"action_type": "email", "recipient": "not-an-address", "subject": "s", "body": "b"}),
            "an e-mail recipient that is not an address",
        ),
        ("missing_prompt", "missing_prompt", json!({"action_type": "ai"}), "an ai request without prompt"),
    ];
    for (name, code, payload, why) in cases {
        fails_with(&app, name, code, payload, why).await;
    }

    // A failure is audited like a success: the error code and message ride along.
    let trace = "contract-missing_task_title";
    let bucket = app.journaled(Pillar::Bucket, trace).await;
    assert_contract(
        "bucket_event_task_failed",
        "the Bucket audit event for a task that failed validation (missing_task_title)",
        &sent(&bucket),
    );
    let karma = app.journaled(Pillar::Karma, trace).await;
    assert_contract(
        "karma_event_task_failed",
        "the Karma life event for a task that failed validation (missing_task_title)",
        &sent(&karma),
    );
}

/// Sets `rule`, executes `payload`, clears the rule, and snapshots the failed answer.
async fn provider_fails(app: &TestStack, name: &str, code: &str, rule: FaultRule, payload: Value, why: &str) {
    let faults = app.stack.faults();
    faults.set(rule.id(name)).expect("a valid fault rule");
    fails_with(app, name, code, payload, why).await;
    faults.clear(name);
}

fn whatsapp() -> Value {
    json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": "Class starts at 5"})
}

fn ai() -> Value {
    json!({"action_type": "ai", "prompt": "Summarize chapter 2"})
}

fn email() -> Value {
    json!({"action_type": "email", "recipient": "alice@example.com", "subject": "Class", "body": "At 5."})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_failures_map_to_their_codes() {
    // Short provider timeouts, so blackholes cost little.
    let app = TestStack::start(
        Stack::builder()
            .executor_env("WHATSAPP_TIMEOUT", "0.5")
            .executor_env("AI_TIMEOUT", "0.5")
            .executor_env("SMTP_TIMEOUT", "0.5"),
    )
    .await;
    let rule = |pillar: Pillar, fault: Fault| FaultRule::new(pillar, fault);
    let http = |status: u16, route: &str| rule(Pillar::Providers, Fault::http_error(status)).route(route);

    let cases: [(&str, &str, FaultRule, Value, &str); 7] = [
        (
            "whatsapp_provider_rejected",
            "provider_rejected",
            http(400, WHATSAPP_ROUTE),
            whatsapp(),
            "WhatsApp answers 400",
        ),
        ("whatsapp_provider_error", "provider_error", http(500, WHATSAPP_ROUTE), whatsapp(), "WhatsApp answers 500"),
        (
            "whatsapp_provider_timeout_504",
            "provider_timeout",
            http(504, WHATSAPP_ROUTE),
            whatsapp(),
            "WhatsApp answers 504",
        ),
        (
            "whatsapp_provider_bad_response",
            "provider_bad_response",
            rule(Pillar::Providers, Fault::MalformedJson).route(WHATSAPP_ROUTE),
            whatsapp(),
            "WhatsApp answers 200 with a body that is not JSON",
        ),
        ("ai_provider_rejected", "provider_rejected", http(401, CHAT_ROUTE), ai(), "the AI endpoint answers 401"),
        ("ai_provider_error", "provider_error", http(503, CHAT_ROUTE), ai(), "the AI endpoint answers 503"),
        (
            "ai_provider_timeout",
            "provider_timeout",
            rule(Pillar::Providers, Fault::Blackhole).route(CHAT_ROUTE),
            ai(),
            "the AI endpoint never answers (AI_TIMEOUT 0.5 s)",
        ),
    ];
    for (name, code, fault, payload, why) in cases {
        provider_fails(&app, name, code, fault, payload, why).await;
    }
    provider_fails(
        &app,
        "whatsapp_provider_timeout",
        "provider_timeout",
        rule(Pillar::Providers, Fault::Blackhole).route(WHATSAPP_ROUTE),
        whatsapp(),
        "WhatsApp never answers (WHATSAPP_TIMEOUT 0.5 s)",
    )
    .await;

    let smtp = |status: u16| rule(Pillar::Smtp, Fault::http_error(status));
    provider_fails(&app, "email_provider_rejected", "provider_rejected", smtp(550), email(), "the relay replies 550")
        .await;
    provider_fails(&app, "email_provider_error", "provider_error", smtp(451), email(), "the relay replies 451").await;
    provider_fails(
        &app,
        "email_provider_timeout",
        "provider_timeout",
        rule(Pillar::Smtp, Fault::Blackhole),
        email(),
        "the relay never replies (SMTP_TIMEOUT 0.5 s)",
    )
    .await;
}

/// The simulator's `refuse` fault closes the port and binds it again when the rule ends, so on
/// a busy machine another stack can take the ephemeral port in between; a refused connection is
/// therefore made with a port nothing listens on (port 1) rather than with a fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_providers_are_unavailable() {
    let app = TestStack::start(
        Stack::builder()
            .executor_env("WHATSAPP_API_URL", "http://127.0.0.1:1")
            .executor_env("AI_API_URL", "http://127.0.0.1:1")
            .executor_env("SMTP_PORT", "1"),
    )
    .await;
    fails_with(
        &app,
        "whatsapp_provider_unavailable",
        "provider_unavailable",
        whatsapp(),
        "WhatsApp refuses connections",
    )
    .await;
    fails_with(&app, "ai_provider_unavailable", "provider_unavailable", ai(), "the AI endpoint refuses connections")
        .await;
    fails_with(
        &app,
        "email_provider_unavailable",
        "provider_unavailable",
        email(),
        "the SMTP relay refuses connections",
    )
    .await;
}
