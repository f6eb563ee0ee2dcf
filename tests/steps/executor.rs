//! Steps that call the executor's `POST /api/workflow/execute` directly, and check its answers.

use std::time::Duration;

use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use test_support::TestResponse;

use super::BhivWorld;
use super::params::{Action, Outcome};
use super::payloads::{action_fields, execute_body, hostile, missing_field};
use super::world::{Execution, Sent};

/// The actions a "mixing" batch cycles through.
fn mix(spec: &str) -> Vec<Action> {
    spec.split([',', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty() && *w != "and")
        .map(|w| w.parse().unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

impl BhivWorld {
    /// The payload of a workflow of `action` for the scenario's user.
    pub fn payload(&self, action: Action, outcome: Outcome, product: Option<&str>) -> Map<String, Value> {
        let mut payload = action_fields(action);
        if outcome == Outcome::Failing {
            payload.remove(missing_field(action).0);
        }
        payload.insert("user_id".into(), json!(self.user));
        payload.insert("metadata".into(), json!({"channel": "bdd", "scenario": self.id}));
        if let Some(product) = product {
            payload.insert("product".into(), json!(product));
        }
        payload
    }

    /// Sends an execute request (without recording it as a workflow).
    pub async fn send_execute(&self, sent: &Sent) -> TestResponse {
        let mut request = self.http.post(format!("{}/api/workflow/execute", self.executor_url())).json(&sent.body);
        for (name, value) in &sent.headers {
            request = request.header(name, value);
        }
        self.request(request).await
    }

    /// Records an answer: the last one, and a workflow to follow when the executor executed it.
    pub fn record(&mut self, sent: Sent, action: Action, reply: TestResponse) {
        let executed = reply.status == 200 && matches!(reply.body["status"].as_str(), Some("success" | "failed"));
        if executed && !self.executions.iter().any(|e| e.trace == sent.trace) {
            self.executions.push(Execution {
                trace: sent.trace.clone(),
                action,
                user: self.user.clone(),
                reply: Some(reply.clone()),
            });
        }
        self.last = Some(reply);
        self.last_sent = Some(sent);
    }

    /// Builds, sends and records one workflow.
    pub async fn execute(
        &mut self,
        action: Action,
        outcome: Outcome,
        product: Option<&str>,
        trace: Option<String>,
        headers: Vec<(String, String)>,
    ) -> TestResponse {
        self.start().await;
        let trace = trace.unwrap_or_else(|| self.fresh_trace());
        let body = execute_body(&trace, "workflow", self.payload(action, outcome, product));
        let sent = Sent { trace, body, headers };
        let reply = self.send_execute(&sent).await;
        self.record(sent, action, reply.clone());
        reply
    }

    /// Sends a batch of workflows, `at_once` at a time; records them all.
    pub async fn execute_batch(&mut self, actions: Vec<Action>, at_once: usize) {
        self.start().await;
        let batch: Vec<(Action, Sent)> = actions
            .into_iter()
            .map(|action| {
                let trace = self.fresh_trace();
                let body = execute_body(&trace, "workflow", self.payload(action, Outcome::Successful, None));
                (action, Sent { trace, body, headers: Vec::new() })
            })
            .collect();
        let world = &*self;
        let replies: Vec<(Action, Sent, TestResponse)> = futures_util::stream::iter(batch)
            .map(|(action, sent)| async move {
                let reply = world.send_execute(&sent).await;
                (action, sent, reply)
            })
            .buffered(at_once.max(1))
            .collect()
            .await;
        for (action, sent, reply) in replies {
            self.record(sent, action, reply);
        }
    }

    /// The last answer; panics when there is none.
    pub fn last_reply(&self) -> &TestResponse {
        self.last.as_ref().expect("no request was sent yet")
    }

    /// The last trace executed.
    pub fn last_trace(&self) -> String {
        if let Some(sent) = &self.last_sent {
            return sent.trace.clone();
        }
        self.executions.last().map(|e| e.trace.clone()).expect("no workflow was executed yet")
    }
}

#[when(expr = "I execute a/an {action} workflow")]
#[given(expr = "I executed a/an {action} workflow")]
async fn execute_one(w: &mut BhivWorld, action: Action) {
    w.execute(action, Outcome::Successful, None, None, Vec::new()).await;
}

#[when(expr = "I execute a/an {outcome} {action} workflow")]
async fn execute_outcome(w: &mut BhivWorld, outcome: Outcome, action: Action) {
    w.execute(action, outcome, None, None, Vec::new()).await;
}

#[when(expr = "I execute a/an {action} workflow for product {string}")]
async fn execute_for_product(w: &mut BhivWorld, action: Action, product: String) {
    let trace = w.fresh_trace();
    w.execute(action, Outcome::Successful, Some(&product), Some(trace.clone()), Vec::new()).await;
    w.notes.insert(format!("product:{product}"), json!(trace));
}

#[when(expr = "I execute a/an {action} workflow that is missing its {word}")]
async fn execute_missing(w: &mut BhivWorld, action: Action, field: String) {
    assert_eq!(missing_field(action).0, field, "a failing {} workflow leaves out its {}", action.as_str(), field);
    w.execute(action, Outcome::Failing, None, None, Vec::new()).await;
}

#[when(expr = "I execute a/an {action} workflow with trace id {string}")]
async fn execute_with_trace(w: &mut BhivWorld, action: Action, trace: String) {
    let trace = format!("{trace}-{}", w.id);
    w.execute(action, Outcome::Successful, None, Some(trace), Vec::new()).await;
}

#[when(expr = "I execute a/an {action} workflow with Idempotency-Key {string}")]
async fn execute_with_key(w: &mut BhivWorld, action: Action, key: String) {
    let key = format!("{key}-{}", w.id);
    w.execute(action, Outcome::Successful, None, None, vec![("idempotency-key".into(), key)]).await;
}

#[when(expr = "I execute a/an {action} workflow without a token")]
async fn execute_without_token(w: &mut BhivWorld, action: Action) {
    w.execute(action, Outcome::Successful, None, None, Vec::new()).await;
}

#[when(expr = "I execute a/an {action} workflow with the token {string}")]
async fn execute_with_token(w: &mut BhivWorld, action: Action, token: String) {
    w.execute(action, Outcome::Successful, None, None, vec![("authorization".into(), format!("Bearer {token}"))]).await;
}

#[when(expr = "I execute {int} {action} workflows")]
async fn execute_many(w: &mut BhivWorld, count: usize, action: Action) {
    for _ in 0..count {
        w.execute(action, Outcome::Successful, None, None, Vec::new()).await;
    }
}

#[when(expr = "I execute {int} workflows mixing {word} {word} {word} and {word}")]
async fn execute_mix4(w: &mut BhivWorld, count: usize, a: String, b: String, c: String, d: String) {
    let kinds = mix(&format!("{a} {b} {c} {d}"));
    let actions = (0..count).map(|i| kinds[i % kinds.len()]).collect();
    w.execute_batch(actions, 4).await;
}

#[when(expr = "I execute {int} workflows mixing {word} {word} and {word}, {int} at a time")]
async fn execute_mix3(w: &mut BhivWorld, count: usize, a: String, b: String, c: String, at_once: usize) {
    let kinds = mix(&format!("{a} {b} {c}"));
    let actions = (0..count).map(|i| kinds[i % kinds.len()]).collect();
    w.execute_batch(actions, at_once).await;
}

#[when(expr = "I send the decision {string} with a {action} payload")]
async fn send_decision(w: &mut BhivWorld, decision: String, action: Action) {
    w.start().await;
    let trace = w.fresh_trace();
    let body = execute_body(&trace, &decision, w.payload(action, Outcome::Successful, None));
    let sent = Sent { trace, body, headers: Vec::new() };
    let reply = w.send_execute(&sent).await;
    w.record(sent, action, reply);
}

#[when(expr = "I send the decision {string} with a {action} payload that tries to override it")]
async fn send_overriding(w: &mut BhivWorld, decision: String, action: Action) {
    w.start().await;
    let trace = w.fresh_trace();
    let mut payload = w.payload(action, Outcome::Successful, None);
    for (key, value) in [
        ("decision", json!("workflow")),
        ("force_execute", json!(true)),
        ("override_decision", json!(true)),
        ("status", json!("success")),
        ("execution_result", json!({"success": true})),
    ] {
        payload.insert(key.into(), value);
    }
    let body = execute_body(&trace, &decision, payload);
    let sent = Sent { trace, body, headers: Vec::new() };
    let reply = w.send_execute(&sent).await;
    w.record(sent, action, reply);
}

#[when("I send the same request again")]
async fn send_again(w: &mut BhivWorld) {
    let sent = w.last_sent.clone().expect("a request was sent before");
    let reply = w.send_execute(&sent).await;
    w.last = Some(reply);
}

#[when(expr = "I send a different {action} workflow with the same Idempotency-Key")]
async fn send_other_same_key(w: &mut BhivWorld, action: Action) {
    let previous = w.last_sent.clone().expect("a request was sent before");
    let mut payload = w.payload(action, Outcome::Successful, None);
    payload.insert("title".into(), json!("Something else entirely"));
    let sent = Sent {
        trace: previous.trace.clone(),
        body: execute_body(&previous.trace, "workflow", payload),
        headers: previous.headers,
    };
    let reply = w.send_execute(&sent).await;
    w.last = Some(reply);
}

#[when(expr = "I send the same {action} workflow twice at the same time")]
async fn send_twice_concurrently(w: &mut BhivWorld, action: Action) {
    w.start().await;
    let trace = w.fresh_trace();
    let body = execute_body(&trace, "workflow", w.payload(action, Outcome::Successful, None));
    let sent = Sent { trace, body, headers: Vec::new() };
    let world = &*w;
    let (first, second) = tokio::join!(world.send_execute(&sent), async {
        // Let the first request reach the executor before its twin.
        tokio::task::yield_now().await;
        world.send_execute(&sent).await
    });
    w.batch = vec![first.clone(), second.clone()];
    let winner = if first.status == 200 { first } else { second };
    w.record(sent, action, winner);
}

#[when(expr = "I send the hostile request {string}")]
async fn send_hostile(w: &mut BhivWorld, name: String) {
    w.start().await;
    let trace = w.fresh_trace();
    let request = hostile(&name, &trace).unwrap_or_else(|| panic!("no hostile request named {name:?}"));
    let url = format!("{}{}", w.executor_url(), request.path);
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).expect("a method");
    let mut builder = w.http.request(method, url).body(request.body);
    if let Some(content_type) = request.content_type {
        builder = builder.header("content-type", content_type);
    }
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    let reply = w.request(builder).await;
    w.last = Some(reply);
}

#[when("I send this request to the executor:")]
async fn send_docstring(w: &mut BhivWorld, step: &Step) {
    w.start().await;
    let body = step.docstring.as_deref().expect("a JSON docstring").replace("{trace}", &w.fresh_trace());
    let url = format!("{}/api/workflow/execute", w.executor_url());
    let reply = w.request(w.http.post(url).header("content-type", "application/json").body(body)).await;
    w.last = Some(reply);
}

#[then(expr = "the executor answers {int}")]
async fn answers_status(w: &mut BhivWorld, status: u16) {
    let reply = w.last_reply();
    assert_eq!(reply.status, status, "the executor answered {}: {}", reply.status, reply.body);
}

#[then(expr = "the answer's error code is {string}")]
async fn error_code(w: &mut BhivWorld, code: String) {
    let reply = w.last_reply();
    if code == "none" {
        assert!(reply.body.get("error").is_none(), "unexpected error: {}", reply.body);
        return;
    }
    assert_eq!(reply.error_code(), Some(code.as_str()), "answer: {}", reply.body);
    let message = reply.body.pointer("/error/message").and_then(Value::as_str).unwrap_or_default();
    assert!(!message.is_empty(), "a structured error has a message: {}", reply.body);
    assert!(reply.body.get("detail").is_some(), "the reference's `detail` is kept: {}", reply.body);
}

#[then(expr = "the answer has the header {string} set to {string}")]
async fn header_is(w: &mut BhivWorld, name: String, value: String) {
    let reply = w.last_reply();
    assert_eq!(reply.header(&name), Some(value.as_str()), "headers: {:?}", reply.headers);
}

#[then("the answer is identical to the first one")]
async fn identical_answer(w: &mut BhivWorld) {
    let trace = w.last_trace();
    let first = w
        .executions
        .iter()
        .find(|e| e.trace == trace)
        .and_then(|e| e.reply.clone())
        .expect("the first answer was recorded");
    assert_eq!(w.last_reply().body, first.body, "a replay returns the stored answer");
}

#[then("the execution succeeded")]
async fn execution_succeeded(w: &mut BhivWorld) {
    let trace = w.last_trace();
    let reply = w.last_reply();
    assert_eq!(reply.status, 200, "answer: {}", reply.body);
    assert_eq!(reply.body["status"], "success", "answer: {}", reply.body);
    assert_eq!(reply.body["trace_id"], json!(trace));
    assert_eq!(reply.body.pointer("/execution_result/success"), Some(&json!(true)), "answer: {}", reply.body);
    assert_eq!(reply.body.pointer("/execution_result/trace_id"), Some(&json!(trace)));
}

#[then(expr = "the execution failed with error code {string}")]
async fn execution_failed(w: &mut BhivWorld, code: String) {
    let reply = w.last_reply();
    assert_eq!(reply.status, 200, "an executed failure is still HTTP 200: {}", reply.body);
    assert_eq!(reply.body["status"], "failed", "answer: {}", reply.body);
    assert_eq!(reply.body.pointer("/execution_result/success"), Some(&json!(false)));
    assert_eq!(reply.body.pointer("/execution_result/error_code"), Some(&json!(code)), "answer: {}", reply.body);
}

#[then("every execution succeeded")]
async fn every_succeeded(w: &mut BhivWorld) {
    assert!(!w.executions.is_empty(), "no workflow was executed");
    for execution in &w.executions {
        let reply = execution.reply.as_ref().expect("an answer");
        assert_eq!(
            reply.body["status"],
            "success",
            "{} ({}): {}",
            execution.trace,
            execution.action.as_str(),
            reply.body
        );
    }
}

#[then(expr = "every answer arrived within {int} ms")]
async fn answers_within(w: &mut BhivWorld, ms: u64) {
    let budget = Duration::from_millis(ms);
    for execution in &w.executions {
        let reply = execution.reply.as_ref().expect("an answer");
        assert!(reply.elapsed <= budget, "{} took {:?} (budget {budget:?})", execution.trace, reply.elapsed);
    }
}

#[then("the executor skipped it because the decision is not \"workflow\"")]
async fn skipped(w: &mut BhivWorld) {
    let trace = w.last_trace();
    let reply = w.last_reply();
    assert_eq!(reply.status, 200, "answer: {}", reply.body);
    assert_eq!(reply.body, json!({"trace_id": trace, "status": "skipped", "reason": "decision_not_workflow"}));
}

#[then(expr = "one answer is 200 and the other is 409 with error code {string} and a Retry-After header")]
async fn one_conflict(w: &mut BhivWorld, code: String) {
    let statuses: Vec<u16> = w.batch.iter().map(|r| r.status).collect();
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [200, 409], "statuses: {statuses:?}");
    let conflict = w.batch.iter().find(|r| r.status == 409).expect("a 409");
    assert_eq!(conflict.error_code(), Some(code.as_str()), "{}", conflict.body);
    assert!(conflict.header("retry-after").is_some(), "409 carries Retry-After: {:?}", conflict.headers);
}

#[then("the executor still serves: a task workflow succeeds")]
async fn still_serves(w: &mut BhivWorld) {
    let reply = w.execute(Action::Task, Outcome::Successful, None, None, Vec::new()).await;
    assert_eq!(reply.status, 200, "answer: {}", reply.body);
    assert_eq!(reply.body["status"], "success", "answer: {}", reply.body);
}

#[then("the answer leaks no internals")]
async fn no_internals(w: &mut BhivWorld) {
    let text = w.last_reply().body.to_string();
    for tell in ["panicked", "backtrace", ".rs:", "src/", "thread '", "RUST_"] {
        assert!(!text.contains(tell), "the answer leaks `{tell}`: {text}");
    }
}

#[then(expr = "the answer's {string} is {string}")]
async fn answer_field(w: &mut BhivWorld, field: String, value: String) {
    let reply = w.last_reply();
    let found =
        super::support::at_path(&reply.body, &field).unwrap_or_else(|| panic!("no `{field}` in {}", reply.body));
    assert!(super::support::matches_text(found, &value), "`{field}` is {found}, expected {value}");
}

#[then(expr = "the answer says the execution failed with error code {string}")]
async fn answer_failed(w: &mut BhivWorld, code: String) {
    let reply = w.last_reply();
    assert_eq!(reply.body["status"], "failed", "answer: {}", reply.body);
    assert_eq!(reply.body.pointer("/execution_result/error_code"), Some(&json!(code)), "answer: {}", reply.body);
    assert!(
        reply.body.pointer("/execution_result/message").and_then(Value::as_str).is_some(),
        "a message: {}",
        reply.body
    );
}
