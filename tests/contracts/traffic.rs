//! The observed-traffic contract: a representative workload runs through the stack, and the
//! snapshot pins, per pillar, every distinct call the executor made — method, path, the
//! journaled header names and the JSON shape of the body — with how many times it was made. A
//! new dependency, a dropped header, a renamed field or a changed type is a diff.

use std::collections::BTreeMap;

use pillar_sim::{JournalEntry, Pillar};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Contract, TestStack, assert_contract, shape, workflow};

/// What one call looks like, values left out.
fn signature(entry: &JournalEntry) -> Value {
    let (headers, body) = match entry.pillar {
        // An SMTP "request" is a message: its header names, and the envelope.
        Pillar::Smtp => {
            let data = entry.body["data"].as_str().unwrap_or_default();
            let head = data.split_once("\r\n\r\n").map_or(data, |(head, _)| head);
            let mut names: Vec<String> = head
                .split("\r\n")
                .filter(|line| !line.starts_with([' ', '\t']))
                .filter_map(|line| line.split_once(':').map(|(name, _)| name.to_ascii_lowercase()))
                .collect();
            names.sort();
            names.dedup();
            (names, shape(&entry.body))
        }
        _ => (entry.headers.keys().cloned().collect(), shape(&entry.body)),
    };
    let path = match entry.pillar {
        Pillar::Smtp => "<first recipient>".to_owned(),
        _ => entry.path.clone(),
    };
    json!({"method": entry.method, "path": path, "headers": headers, "body": body})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_calls_exactly_these_endpoints_with_these_shapes() {
    let app = TestStack::default_stack().await;
    let core = format!("{}/handle_task", app.stack.core_url());

    // Through Core: every action type, and one the executor refuses (E.164 forbids a leading 0).
    let inputs = [
        "Remind me: call the bank",
        "Send a WhatsApp to +919876543210: class at 5",
        "Email alice@example.com about the class: it starts at 5",
        "Please summarize: the Gita, chapter 2",
        "Send a WhatsApp to +0123456789: hello",
    ];
    for input in inputs {
        let task = json!({"agent": "edumentor_agent", "input": input, "user_id": "learner-7", "product": "gurukul"});
        let answer = app.request(Method::POST, core.clone(), Some(&task)).await;
        assert_eq!(answer.body["agent_output"]["workflow_dispatched"], true, "{:#}", answer.body);
    }
    // Directly: a task with metadata, then the same request again (a replay calls nobody).
    let direct = workflow(
        "contract-traffic-direct",
        json!({"action_type": "task", "title": "Water the plants", "metadata": {"source": "contract-test"}}),
    );
    app.execute(&direct).await.expect_status(200);
    let replay = app.execute(&direct).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    // Six executions: six audit events, six life events, two HTTP provider calls, one mail.
    for (pillar, n) in [(Pillar::Bucket, 6), (Pillar::Karma, 6), (Pillar::Providers, 2), (Pillar::Smtp, 1)] {
        app.journaled_n(pillar, n).await;
    }
    app.delivered(6).await;

    let mut calls: BTreeMap<&str, BTreeMap<String, (Value, u64)>> = BTreeMap::new();
    for entry in app.stack.journal().entries() {
        // Core's entries are this test's own requests, not the executor's.
        if entry.pillar == Pillar::Core {
            continue;
        }
        let signature = signature(&entry);
        let slot =
            calls.entry(entry.pillar.as_str()).or_default().entry(signature.to_string()).or_insert((signature, 0));
        slot.1 += 1;
    }
    let observed: BTreeMap<&str, Vec<Value>> = calls
        .into_iter()
        .map(|(pillar, signatures)| {
            let list = signatures
                .into_values()
                .map(|(mut signature, count)| {
                    signature["count"] = json!(count);
                    signature
                })
                .collect();
            (pillar, list)
        })
        .collect();
    assert_contract(
        "observed_traffic",
        "every distinct call the executor made to each pillar during a workload of five Core tasks (task, \
         whatsapp, email, ai, an invalid whatsapp recipient) and a direct task sent twice",
        &json!(observed),
    );
}
