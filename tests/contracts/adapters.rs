//! Success through every adapter: the execute response, the provider request the adapter sends,
//! and the Bucket and Karma events the executor delivers for it (captured from the journal,
//! contract headers included); plus the skipped answer and an idempotent replay.

use pillar_sim::Pillar;
use serde_json::{Value, json};

use crate::support::{Contract, TestStack, assert_contract, sent, sent_mail, workflow};

/// Executes `payload` under `trace`; snapshots the answer and both events it produced.
async fn executes_and_reports(app: &TestStack, name: &str, trace: &str, payload: Value) -> Value {
    let request = workflow(trace, payload);
    let answer = app.execute(&request).await;
    assert_contract(
        &format!("execute_success_{name}"),
        &format!("POST /api/workflow/execute, action_type {name}, accepted by the provider fake"),
        &answer.contract(),
    );
    answer.expect_status(200);
    assert_eq!(answer.body["status"], "success", "{:#}", answer.body);
    let bucket = app.journaled(Pillar::Bucket, trace).await;
    assert_contract(
        &format!("bucket_event_{name}_success"),
        &format!("the Bucket audit event the executor POSTs for a successful {name} execution"),
        &sent(&bucket),
    );
    let karma = app.journaled(Pillar::Karma, trace).await;
    assert_contract(
        &format!("karma_event_{name}_success"),
        &format!("the Karma life event the executor POSTs for a successful {name} execution"),
        &sent(&karma),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_adapter_answers_success_and_emits_its_provider_call_and_events() {
    let app = TestStack::default_stack().await;

    let task = executes_and_reports(
        &app,
        "task",
        "contract-task",
        json!({"action_type": "task", "title": "Call the bank", "description": "Before noon, about the loan",
            "trace_id": "contract-task", "user_id": "learner-7", "product": "gurukul",
            "metadata": {"source": "contract-test", "priority": 2, "tags": ["finance"]}}),
    )
    .await;

    executes_and_reports(
        &app,
        "whatsapp",
        "contract-whatsapp",
        json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": "Class starts at 5",
            "user_id": "learner-7", "product": "gurukul"}),
    )
    .await;
    let whatsapp = app.journaled(Pillar::Providers, "contract-whatsapp").await;
    assert_contract(
        "provider_request_whatsapp",
        "the WhatsApp Cloud API send-message request the whatsapp adapter makes",
        &sent(&whatsapp),
    );

    executes_and_reports(
        &app,
        "email",
        "contract-email",
        json!({"action_type": "email", "recipient": "alice@example.com", "subject": "Class schedule",
            "body": "The class starts at 5.\nBring your notes.", "user_id": "learner-7"}),
    )
    .await;
    let mail = app.journaled(Pillar::Smtp, "contract-email").await;
    assert_contract("provider_request_email", "the SMTP message the email adapter sends", &sent_mail(&mail));

    executes_and_reports(
        &app,
        "ai",
        "contract-ai",
        json!({"action_type": "ai", "prompt": "Summarize chapter 2 of the Gita", "user_id": "learner-7"}),
    )
    .await;
    let chat = app.journaled(Pillar::Providers, "contract-ai").await;
    assert_contract(
        "provider_request_ai",
        "the OpenAI-compatible chat-completions request the ai adapter makes",
        &sent(&chat),
    );

    // The alias fields of the integration document are accepted the same way.
    let alias = app
        .execute(&workflow("contract-ai-alias", json!({"action_type": "ai", "content": "Explain dharma in one line"})))
        .await;
    assert_contract(
        "execute_success_ai_content_alias",
        "POST /api/workflow/execute, action_type ai with the `content` alias and no user",
        &alias.contract(),
    );

    let replay = app.execute(&task).await;
    assert_contract(
        "execute_replayed_task",
        "the task request sent again unchanged: the stored answer, marked as replayed",
        &replay.contract(),
    );
    replay.expect_status(200);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    for decision in ["respond", "task", "insight", "fallback"] {
        let skipped =
            app.execute(&json!({"trace_id": format!("contract-skip-{decision}"), "decision": decision})).await;
        if decision == "respond" {
            assert_contract(
                "execute_skipped",
                "POST /api/workflow/execute with decision respond: nothing executes",
                &skipped.contract(),
            );
        }
        skipped.expect_status(200);
        assert_eq!(skipped.body["status"], "skipped", "{:#}", skipped.body);
    }
}
