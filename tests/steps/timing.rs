//! Steps about timing: load through Core, and the integration document's budgets as
//! percentiles of what the scenario measured.
//!
//! | measure | sample |
//! |---|---|
//! | execution time | client-measured latency of each `POST /api/workflow/execute` |
//! | event logging time | from the execution's answer to Bucket answering the event (journal arrival + handling time) |
//! | behavioural tracking time | the same, for Karma |
//! | executor overhead | execution time minus the provider's own handling time (WhatsApp and AI calls) |
//! | Core's answer time | client-measured latency of each `POST /handle_task`, per run |
//!
//! Event times compare the journal's wall-clock arrival stamps with the wall-clock instant the
//! answer was read, so they do not depend on when the step gets to look; an event that arrived
//! before the client finished reading the answer counts as 0 ms.

use std::collections::HashMap;

use cucumber::{then, when};
use futures_util::StreamExt;
use pillar_sim::Pillar;
use serde_json::json;

use super::BhivWorld;
use super::params::{Action, Measure};
use super::support::{epoch_seconds, percentile, rfc3339_seconds};
use super::world::{CoreReply, Execution, Hit};

/// What a user says to Core to get a workflow of `action`.
fn request_for(action: Action, n: usize) -> String {
    match action {
        Action::Task => format!("Remind me: call the bank, item {n}"),
        Action::WhatsApp => format!("Send a WhatsApp to +919876543210: reminder {n}"),
        Action::Email => format!("Email alice@example.com about item {n}: see you at 10"),
        Action::Ai => format!("Please summarize: chapter {n}"),
    }
}

/// When a pillar finished handling each trace's first accepted event, seconds since the epoch.
fn arrivals(hits: &[Hit], pillar: Pillar) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for hit in hits.iter().filter(|h| h.is(pillar) && h.method == "POST" && h.status == Some(200)) {
        if let (Some(trace), Some(at)) = (&hit.trace_id, rfc3339_seconds(&hit.received_at)) {
            out.entry(trace.clone()).or_insert(at + hit.duration_ms / 1000.0);
        }
    }
    out
}

impl BhivWorld {
    /// The samples of a measure, in milliseconds.
    async fn measure(&self, measure: Measure) -> Vec<f64> {
        let answered: Vec<&Execution> = self.executions.iter().filter(|e| e.reply.is_some()).collect();
        let reply = |e: &Execution| e.reply.clone().expect("answered");
        match measure {
            Measure::Execution => answered.iter().map(|e| reply(e).elapsed.as_secs_f64() * 1000.0).collect(),
            Measure::EventLogging | Measure::BehaviouralTracking => {
                let pillar = if measure == Measure::EventLogging { Pillar::Bucket } else { Pillar::Karma };
                let arrived = arrivals(&self.hits(Some(pillar), None).await, pillar);
                answered
                    .iter()
                    .map(|e| {
                        let at = arrived.get(&e.trace).unwrap_or_else(|| panic!("no {pillar} event for {}", e.trace));
                        ((at - epoch_seconds(reply(e).done_at)) * 1000.0).max(0.0)
                    })
                    .collect()
            }
            Measure::Overhead => {
                let hits = self.hits(Some(Pillar::Providers), None).await;
                let provider: HashMap<&str, f64> =
                    hits.iter().filter_map(|h| h.trace_id.as_deref().map(|t| (t, h.duration_ms))).collect();
                answered
                    .iter()
                    .filter(|e| matches!(e.action, Action::WhatsApp | Action::Ai))
                    .map(|e| {
                        let own = provider
                            .get(e.trace.as_str())
                            .unwrap_or_else(|| panic!("no provider call for {}", e.trace));
                        reply(e).elapsed.as_secs_f64() * 1000.0 - own
                    })
                    .collect()
            }
            Measure::CoreAnswer => self.core_runs.last().cloned().expect("no run through Core yet"),
        }
    }
}

#[when(expr = "{int} users ask Core for a {action} workflow, {int} at a time")]
async fn users_ask_core(w: &mut BhivWorld, count: usize, action: Action, at_once: usize) {
    w.start().await;
    let url = format!("{}/handle_task", w.core_url());
    let user = w.user.clone();
    let world = &*w;
    let replies: Vec<CoreReply> = futures_util::stream::iter(0..count)
        .map(|n| {
            let task = json!({"agent": "workflow_probe_agent", "input": request_for(action, n), "user_id": user});
            let url = url.clone();
            async move {
                let reply = world.request(world.http.post(url).json(&task)).await;
                assert_eq!(reply.status, 200, "Core answered {}: {}", reply.status, reply.body);
                let task_id = reply.body["task_id"].as_str().expect("a task id").to_owned();
                CoreReply { task_id, reply }
            }
        })
        .buffered(at_once.max(1))
        .collect()
        .await;
    let samples = replies.iter().map(|r| r.reply.elapsed.as_secs_f64() * 1000.0).collect();
    w.core_runs.push(samples);
    w.notes.insert("last_core_run".into(), json!(replies.iter().map(|r| r.task_id.clone()).collect::<Vec<_>>()));
    for reply in replies {
        assert_eq!(reply.reply.body.pointer("/agent_output/workflow_dispatched"), Some(&json!(true)));
        w.executions.push(Execution { trace: reply.task_id.clone(), action, user: w.user.clone(), reply: None });
        w.core_replies.push(reply);
    }
}

#[then(expr = "the {int}th percentile of {measure} is under {int} ms")]
async fn percentile_under(w: &mut BhivWorld, p: u32, measure: Measure, budget: u64) {
    let samples = w.measure(measure).await;
    let value = percentile(&samples, f64::from(p));
    let median = percentile(&samples, 50.0);
    let worst = percentile(&samples, 100.0);
    if w.samples.get(&measure) != Some(&samples) {
        println!(
            "      {measure:?} over {} samples: p50 {median:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {worst:.1} ms",
            samples.len(),
            percentile(&samples, 95.0),
            percentile(&samples, 99.0)
        );
    }
    assert!(
        value < budget as f64,
        "p{p} of {measure:?} is {value:.1} ms (budget {budget} ms; p50 {median:.1}, max {worst:.1})"
    );
    w.samples.insert(measure, samples);
}

#[then(expr = "Core's {int}th percentile answer time grew by less than {int} ms over the first run")]
async fn core_grew(w: &mut BhivWorld, p: u32, ms: u64) {
    assert!(w.core_runs.len() >= 2, "two runs through Core are needed");
    let first = percentile(&w.core_runs[0], f64::from(p));
    let last = percentile(w.core_runs.last().expect("a run"), f64::from(p));
    println!("      Core p{p}: first run {first:.1} ms, last run {last:.1} ms");
    assert!(last - first < ms as f64, "Core's p{p} went from {first:.1} ms to {last:.1} ms");
}

#[then(expr = "the executor took at least {int} ms for each workflow of the last run")]
async fn executor_took(w: &mut BhivWorld, ms: u64) {
    let traces: Vec<String> = serde_json::from_value(w.notes["last_core_run"].clone()).expect("task ids");
    super::bucket::all_delivered(w, true).await;
    let stored = w.bucket_events().await;
    for trace in traces {
        let event = stored.iter().find(|e| e.trace() == Some(trace.as_str())).expect("an event");
        let took = event.record["duration_ms"].as_u64().expect("duration_ms");
        assert!(took >= ms, "the executor took {took} ms for {trace}");
    }
}
