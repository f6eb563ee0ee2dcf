//! Steps on the spans the executor exported: the trace the simulator's OTLP receiver holds
//! (`GET /traces/{trace_id}` on the control API), so they work in-process and against a running
//! `pillar-sim up` alike.

use cucumber::then;
use serde_json::Value;

use super::BhivWorld;
use super::support::{WAIT, eventually};

impl BhivWorld {
    /// The trace id of the scenario's last executed workflow.
    fn last_execution_trace(&self) -> String {
        self.executions.last().map(|e| e.trace.clone()).expect("a workflow was executed in this scenario")
    }

    /// The spans the receiver holds for `trace` (empty until some arrive).
    async fn spans(&self, trace: &str) -> Vec<Value> {
        let reply = self.get(&format!("{}/traces/{trace}", self.control_url())).await;
        match reply.status {
            200 => reply.body["spans"].as_array().cloned().unwrap_or_default(),
            404 => Vec::new(),
            status => panic!("GET /traces/{trace}: {status} {:?}", reply.body),
        }
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn deliveries<'a>(spans: &'a [Value], sink: &str) -> Vec<&'a Value> {
    named(spans, "deliver event").into_iter().filter(|s| s["attributes"]["sink"] == sink).collect()
}

fn delivered(spans: &[Value], sink: &str) -> usize {
    deliveries(spans, sink).iter().filter(|s| s["attributes"]["outcome"] == "delivered").count()
}

#[then("the trace of that execution shows the provider call and one delivery to each pillar")]
async fn trace_shows_call_and_deliveries(w: &mut BhivWorld) {
    let trace = w.last_execution_trace();
    let spans = eventually(WAIT, "the execution's spans reach the simulator", || async {
        let spans = w.spans(&trace).await;
        let complete = !named(&spans, "workflow").is_empty()
            && !named(&spans, "provider call").is_empty()
            && delivered(&spans, "bucket") >= 1
            && delivered(&spans, "karma") >= 1;
        if complete { Ok(spans) } else { Err(format!("spans so far: {spans:?}")) }
    })
    .await;
    let request = named(&spans, "workflow");
    assert_eq!(request.len(), 1, "one request span: {spans:#?}");
    assert_eq!(request[0]["attributes"]["trace_id"], trace.as_str());
    let calls = named(&spans, "provider call");
    assert_eq!(calls.len(), 1, "one provider call: {spans:#?}");
    assert_eq!(calls[0]["parent_span_id"], request[0]["span_id"], "the provider call is a child of the request span");
    for sink in ["bucket", "karma"] {
        assert_eq!(delivered(&spans, sink), 1, "one delivery to {sink}: {spans:#?}");
    }
}

fn failed<'a>(spans: &'a [Value], sink: &str) -> Vec<&'a Value> {
    deliveries(spans, sink).into_iter().filter(|s| s["status"] == "error").collect()
}

/// Waits for the executor to have tried Bucket during the outage (refused connections never reach
/// the simulator's journal, so the failed attempt's span is the evidence): recovering before that
/// would let the first attempt succeed.
#[then("eventually the trace of that execution shows a failed delivery attempt to Bucket")]
async fn trace_shows_a_failed_attempt(w: &mut BhivWorld) {
    let trace = w.last_execution_trace();
    eventually(WAIT, "a failed delivery span for Bucket reaches the simulator", || async {
        let spans = w.spans(&trace).await;
        if failed(&spans, "bucket").is_empty() { Err(format!("spans so far: {spans:?}")) } else { Ok(()) }
    })
    .await;
}

#[then("the trace of that execution shows failed delivery attempts to Bucket before the delivery")]
async fn trace_shows_failed_attempts(w: &mut BhivWorld) {
    let trace = w.last_execution_trace();
    let spans = eventually(WAIT, "Bucket's delivery span reaches the simulator", || async {
        let spans = w.spans(&trace).await;
        if delivered(&spans, "bucket") == 1 { Ok(spans) } else { Err(format!("spans so far: {spans:?}")) }
    })
    .await;
    let bucket = deliveries(&spans, "bucket");
    let done = bucket.iter().find(|s| s["attributes"]["outcome"] == "delivered").expect("delivered");
    let failures = failed(&spans, "bucket");
    assert!(!failures.is_empty(), "failed attempts are spans too: {bucket:#?}");
    let start = |s: &Value| s["start_unix_nano"].as_u64().unwrap_or(0);
    assert!(failures.iter().all(|s| start(s) < start(done)), "the failures came first: {bucket:#?}");
}
