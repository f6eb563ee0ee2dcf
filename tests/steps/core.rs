//! Steps about Core: users asking it for tasks, what its agent decided, and its fire-and-forget
//! dispatch to the executor.

use std::time::Duration;

use cucumber::{then, when};
use pillar_sim::Pillar;
use serde_json::{Value, json};

use super::BhivWorld;
use super::params::{Action, Outcome, TraceRef};
use super::support::{WAIT, stays};
use super::world::{CoreReply, Execution};

impl BhivWorld {
    /// Asks Core for a task as the scenario's user; records the answer (and the dispatched
    /// workflow, when Core dispatched one). The agent is `workflow_probe_agent` unless named: the
    /// agent the real-pillar scripts register, because no stock agent of the real Core asks for a
    /// workflow (the spec profile's Core gives every agent name its rule agent).
    pub async fn ask_core(&mut self, input: &str, product: Option<&str>) -> CoreReply {
        self.ask_core_agent("workflow_probe_agent", input, product).await
    }

    /// [`Self::ask_core`] with a named agent.
    pub async fn ask_core_agent(&mut self, agent: &str, input: &str, product: Option<&str>) -> CoreReply {
        self.start().await;
        let mut task = json!({"agent": agent, "input": input, "input_type": "text", "user_id": self.user});
        if let Some(product) = product {
            task["product"] = json!(product);
        }
        let reply = self.request(self.http.post(format!("{}/handle_task", self.core_url())).json(&task)).await;
        assert_eq!(reply.status, 200, "Core answered {}: {}", reply.status, reply.body);
        let task_id = reply.body["task_id"].as_str().expect("Core's answer has a task_id").to_owned();
        let output = &reply.body["agent_output"];
        if output["workflow_dispatched"] == json!(true)
            && let Some(action) = output["workflow_action_type"].as_str()
        {
            self.executions.push(Execution {
                trace: task_id.clone(),
                action: action.parse().expect("a known action"),
                user: self.user.clone(),
                reply: None,
            });
        }
        let answer = CoreReply { task_id, reply };
        self.core_replies.push(answer.clone());
        answer
    }

    /// Core's last answer.
    pub fn last_core(&self) -> &CoreReply {
        self.core_replies.last().expect("no one asked Core anything yet")
    }

    /// The trace a step refers to.
    pub fn trace_of(&self, which: TraceRef) -> String {
        match which {
            TraceRef::Last => self.last_trace(),
            TraceRef::CoreTask => self.last_core().task_id.clone(),
        }
    }
}

#[when(expr = "a user asks Core {string}")]
async fn ask_core(w: &mut BhivWorld, input: String) {
    w.ask_core(&input, None).await;
}

#[when(expr = "a user asks Core's {string} agent {string}")]
async fn ask_core_agent(w: &mut BhivWorld, agent: String, input: String) {
    w.ask_core_agent(&agent, &input, None).await;
}

#[then(expr = "Core answers with status {string}")]
async fn core_status(w: &mut BhivWorld, status: String) {
    let body = &w.last_core().reply.body;
    assert_eq!(body["status"], json!(status), "Core's answer: {body}");
}

#[when(expr = "a user of product {string} asks Core {string}")]
async fn ask_core_product(w: &mut BhivWorld, product: String, input: String) {
    w.ask_core(&input, Some(&product)).await;
}

#[then(expr = "Core answers within {int} ms")]
async fn core_within(w: &mut BhivWorld, ms: u64) {
    let elapsed = w.last_core().reply.elapsed;
    assert!(elapsed <= Duration::from_millis(ms), "Core took {elapsed:?} to answer (budget {ms} ms)");
}

#[then(expr = "Core decided on a {action} workflow")]
async fn core_decided(w: &mut BhivWorld, action: Action) {
    let output = &w.last_core().reply.body["agent_output"];
    assert_eq!(output["requires_workflow"], json!(true), "agent output: {output}");
    assert_eq!(output["workflow_action_type"], json!(action.as_str()), "agent output: {output}");
}

#[then("Core decided that no workflow is needed")]
async fn core_no_workflow(w: &mut BhivWorld) {
    let output = &w.last_core().reply.body["agent_output"];
    assert_eq!(output["requires_workflow"], json!(false), "agent output: {output}");
    assert_eq!(output["workflow_action_type"], Value::Null, "agent output: {output}");
}

#[then("Core reports the workflow as dispatched")]
async fn core_dispatched(w: &mut BhivWorld) {
    let output = &w.last_core().reply.body["agent_output"];
    assert_eq!(output["workflow_dispatched"], json!(true), "agent output: {output}");
}

#[then("Core reports the workflow as not dispatched")]
async fn core_not_dispatched(w: &mut BhivWorld) {
    let output = &w.last_core().reply.body["agent_output"];
    assert_eq!(output["workflow_dispatched"], json!(false), "agent output: {output}");
}

#[then(expr = "Core's health check reports dispatch as {word}")]
async fn core_health_dispatch(w: &mut BhivWorld, state: String) {
    let reply = w.get(&format!("{}/health", w.core_url())).await;
    let expected = match state.as_str() {
        "enabled" => true,
        "disabled" => false,
        other => panic!("expected enabled or disabled, got {other}"),
    };
    assert_eq!(reply.body.pointer("/workflow_executor/dispatch_enabled"), Some(&json!(expected)), "{}", reply.body);
}

#[then("the workflow for Core's task has not finished yet")]
async fn not_finished_yet(w: &mut BhivWorld) {
    let task = w.last_core().task_id.clone();
    let events = w.bucket_events_for(&task).await;
    assert!(events.is_empty(), "the workflow already reached Bucket: {events:?}");
    let provider_answers: Vec<_> = w.hits(Some(Pillar::Providers), Some(&task)).await;
    assert!(
        provider_answers.iter().all(|h| h.status.is_none()),
        "the provider already answered the workflow: {provider_answers:?}"
    );
}

#[then(expr = "the executor performs the workflow under {trace}")]
async fn performed_under(w: &mut BhivWorld, which: TraceRef) {
    let trace = w.trace_of(which);
    let event = super::bucket::wait_events(w, &trace, 1).await.remove(0);
    assert_eq!(event.record["status"], "success", "the workflow failed: {}", event.record);
    let action = w.executions.iter().find(|e| e.trace == trace).map(|e| e.action).expect("a dispatched workflow");
    assert_eq!(event.record["action_type"], json!(action.as_str()), "{}", event.record);
}

async fn dispatch_received(w: &BhivWorld, hanging: bool, trace_headers: bool) {
    let task = w.last_core().task_id.clone();
    let hit = w
        .wait_hit("Core's dispatch to reach the stand-in executor", WAIT, |h| {
            h.is(Pillar::Providers)
                && h.method == "POST"
                && h.path == "/api/workflow/execute"
                && h.trace_id.as_deref() == Some(task.as_str())
        })
        .await;
    if hanging {
        assert_eq!(hit.outcome, "blackholed", "{hit:?}");
    } else {
        assert_eq!(hit.status, Some(404), "the providers' server does not know the route: {hit:?}");
    }
    assert_eq!(hit.body["trace_id"], json!(task), "top-level trace id: {}", hit.body);
    assert_eq!(hit.body["decision"], "workflow", "{}", hit.body);
    assert_eq!(hit.body.pointer("/data/payload/trace_id"), Some(&json!(task)), "payload trace id: {}", hit.body);
    if !trace_headers {
        assert_eq!((hit.header("x-trace-id"), hit.header("traceparent")), (None, None), "{hit:?}");
        return;
    }
    assert_eq!(hit.header("x-trace-id"), Some(task.as_str()), "X-Trace-Id of the dispatch: {hit:?}");
    let expected = task.replace('-', "");
    let traceparent = hit.header("traceparent").unwrap_or_else(|| panic!("no traceparent on the dispatch: {hit:?}"));
    assert_eq!(traceparent.split('-').nth(1), Some(expected.as_str()), "traceparent {traceparent}");
}

#[then("the hanging service received Core's dispatch for the task")]
async fn hanging_received(w: &mut BhivWorld) {
    dispatch_received(w, true, true).await;
}

#[then("the providers' server received Core's dispatch for the task, with the task id in its body and headers")]
async fn providers_received(w: &mut BhivWorld) {
    dispatch_received(w, false, true).await;
}

#[then(
    "the providers' server received Core's dispatch for the task, with the task id in its body and no trace headers"
)]
async fn providers_received_without_headers(w: &mut BhivWorld) {
    dispatch_received(w, false, false).await;
}

#[then(expr = "nothing reaches Bucket, Karma or a provider for {trace}")]
async fn nothing_reaches(w: &mut BhivWorld, which: TraceRef) {
    let trace = w.trace_of(which);
    // Positive control: a workflow sent directly after it does reach Bucket and Karma.
    let control = w.execute(Action::Task, Outcome::Successful, None, None, Vec::new()).await;
    assert_eq!(control.status, 200, "control workflow: {}", control.body);
    let control_trace = w.last_trace();
    super::bucket::wait_events(w, &control_trace, 1).await;
    // A real Karma has no read by trace; there the journal (providers, SMTP) and Bucket speak.
    if super::simulated().karma {
        super::karma::wait_karma_event(w, &control_trace).await;
    }
    stays("nothing arrives for the undispatched trace", Duration::from_millis(300), || async {
        let hits = w.hits(None, Some(&trace)).await;
        // Core's own request and a stand-in executor's are not the workflow reaching anyone.
        let stray: Vec<_> = hits
            .iter()
            .filter(|h| !(h.is(Pillar::Core) || (h.is(Pillar::Providers) && h.path == "/api/workflow/execute")))
            .collect();
        if stray.is_empty() { Ok(()) } else { Err(format!("requests for {trace}: {stray:?}")) }
    })
    .await;
    assert!(w.bucket_events_for(&trace).await.is_empty(), "Bucket has an event for {trace}");
}
