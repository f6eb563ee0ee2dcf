//! Steps about Bucket: what it stores for each execution, its append-only routes, its hash
//! chain, its read gates and product isolation.

use std::collections::{HashMap, HashSet};

use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use pillar_sim::Pillar;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::BhivWorld;
use super::params::TraceRef;
use super::support::{WAIT, at_path, eventually, matches_text};
use super::world::StoredView;

/// The fields every workflow event carries in Bucket (DESIGN.md §3, spec profile).
const CONTRACT_FIELDS: [&str; 13] = [
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
    "requester_id",
    "received_at",
];

/// Waits until Bucket holds at least `n` events for `trace` and the executor has nothing left
/// to deliver to Bucket, then returns exactly what Bucket holds (which the caller checks).
pub async fn wait_events(w: &BhivWorld, trace: &str, n: usize) -> Vec<StoredView> {
    eventually(WAIT, &format!("Bucket to hold {n} event(s) for {trace}"), || async {
        let events = w.bucket_events_for(trace).await;
        if events.len() < n {
            return Err(format!("{} so far", events.len()));
        }
        let depth = w.executor_status().await.pointer("/pillars/bucket/outbox_depth").and_then(Value::as_u64);
        if depth.unwrap_or(0) > 0 && !w.is_external() {
            return Err(format!("{depth:?} event(s) still waiting in the executor's Bucket outbox"));
        }
        Ok(())
    })
    .await;
    w.bucket_events_for(trace).await
}

/// The one Bucket event of the scenario's last trace.
async fn last_event(w: &BhivWorld) -> StoredView {
    let trace = w.last_trace();
    let mut events = wait_events(w, &trace, 1).await;
    assert_eq!(events.len(), 1, "Bucket holds {} events for {trace}: {events:?}", events.len());
    events.remove(0)
}

/// `sha256(prev_hash ‖ canonical_json(record))`, hex: Bucket's documented link, recomputed here.
fn link(prev_hash: &str, record: &Value) -> String {
    let mut canonical = Vec::new();
    pillar_sim::canonical_json(record, &mut canonical);
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(&canonical);
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The index of the first event whose link does not hold, recomputed independently of Bucket.
fn first_broken_link(events: &[StoredView]) -> Option<usize> {
    let mut prev = pillar_sim::GENESIS_HASH.to_owned();
    for (index, event) in events.iter().enumerate() {
        if event.prev_hash != prev || link(&prev, &event.record) != event.hash {
            return Some(index);
        }
        prev.clone_from(&event.hash);
    }
    None
}

#[given(expr = "(eventually )Bucket holds exactly one event for {trace}")]
#[then(expr = "(eventually )Bucket holds exactly one event for {trace}")]
async fn one_event(w: &mut BhivWorld, which: TraceRef) {
    let trace = w.trace_of(which);
    let events = wait_events(w, &trace, 1).await;
    assert_eq!(events.len(), 1, "Bucket holds {} events for {trace}: {events:?}", events.len());
}

#[then(expr = "(eventually )Bucket holds {int} events for {trace}, all with the same event id")]
async fn n_events_same_id(w: &mut BhivWorld, n: usize, which: TraceRef) {
    let trace = w.trace_of(which);
    let events = wait_events(w, &trace, n).await;
    assert_eq!(events.len(), n, "Bucket holds {} events for {trace}: {events:?}", events.len());
    let ids: Vec<&Value> = events.iter().map(|e| &e.record["event_id"]).collect();
    assert!(ids.iter().all(|id| *id == ids[0] && id.is_string()), "event ids differ: {ids:?}");
}

#[then(expr = "Bucket holds no event for {trace}")]
async fn no_event(w: &mut BhivWorld, which: TraceRef) {
    let trace = w.trace_of(which);
    let events = w.bucket_events_for(&trace).await;
    assert!(events.is_empty(), "Bucket holds events for {trace}: {events:?}");
}

#[then(expr = "(eventually )Bucket holds exactly one event for each trace")]
async fn one_event_each(w: &mut BhivWorld) {
    assert!(!w.executions.is_empty(), "no workflow was executed");
    for execution in w.executions.clone() {
        let events = wait_events(w, &execution.trace, 1).await;
        assert_eq!(events.len(), 1, "Bucket holds {} events for {}: {events:?}", events.len(), execution.trace);
    }
}

#[then("the Bucket event has the contract's fields")]
async fn contract_fields(w: &mut BhivWorld) {
    let event = last_event(w).await;
    let record = &event.record;
    for field in CONTRACT_FIELDS {
        assert!(record.get(field).is_some_and(|v| !v.is_null()), "the Bucket event lacks `{field}`: {record}");
    }
    let execution = w.executions.last().expect("an execution");
    assert_eq!(record["trace_id"], json!(execution.trace), "{record}");
    assert_eq!(record["user_id"], json!(execution.user), "{record}");
    assert!(record["duration_ms"].is_u64(), "duration_ms is a whole number: {record}");
    assert!(record["metadata"].is_object(), "metadata is the caller's object: {record}");
    assert_eq!(record["metadata"]["channel"], "bdd", "the caller's metadata rides along: {record}");
    assert_eq!(record["execution_result"]["trace_id"], json!(execution.trace), "{record}");
    assert!(record.get("payload").is_none() && record.get("data").is_none(), "never the whole payload: {record}");
    if let Some(reply) = &execution.reply {
        assert_eq!(record["status"], reply.body["status"], "the event's status is the answer's: {record}");
    }
}

#[then("the Bucket event says:")]
async fn event_says(w: &mut BhivWorld, step: &Step) {
    let event = last_event(w).await;
    let table = step.table.as_ref().expect("a table of field | value");
    for row in table.rows.iter().skip(1) {
        let (field, expected) = (&row[0], &row[1]);
        let value = at_path(&event.record, field).unwrap_or_else(|| panic!("no `{field}` in {}", event.record));
        let expected = if expected == "the trace id" { w.last_trace() } else { expected.clone() };
        assert!(matches_text(value, &expected), "`{field}` is {value}, expected {expected}: {}", event.record);
    }
}

#[then("the Bucket event does not contain any of:")]
async fn event_lacks(w: &mut BhivWorld, step: &Step) {
    let event = last_event(w).await;
    let text = event.record.to_string();
    let table = step.table.as_ref().expect("a one-column table");
    for row in &table.rows {
        assert!(!text.contains(row[0].as_str()), "the audit event contains {:?}: {text}", row[0]);
    }
}

#[then(expr = "the Bucket event's recipient is masked as {string}")]
async fn recipient_masked(w: &mut BhivWorld, masked: String) {
    let event = last_event(w).await;
    assert_eq!(event.record.pointer("/execution_result/recipient"), Some(&json!(masked)), "{}", event.record);
}

#[then(expr = "every event the executor sent to Bucket went to {string}")]
async fn sent_to_route(w: &mut BhivWorld, route: String) {
    let hits = w.hits(Some(Pillar::Bucket), None).await;
    assert!(!hits.is_empty(), "the executor sent nothing to Bucket");
    for hit in hits {
        assert_eq!((hit.method.as_str(), hit.path.as_str()), ("POST", route.as_str()), "{hit:?}");
    }
}

#[then(expr = "Bucket was sent {trace}'s event {int} times with the same event id")]
async fn sent_n_times(w: &mut BhivWorld, which: TraceRef, n: usize) {
    let trace = w.trace_of(which);
    let hits = eventually(WAIT, &format!("{n} deliveries of {trace}'s event"), || async {
        let hits: Vec<_> =
            w.hits(Some(Pillar::Bucket), Some(&trace)).await.into_iter().filter(|h| h.method == "POST").collect();
        if hits.len() >= n { Ok(hits) } else { Err(format!("{} so far", hits.len())) }
    })
    .await;
    assert_eq!(hits.len(), n, "deliveries: {hits:?}");
    let ids: Vec<&Value> = hits.iter().map(|h| &h.body["event_data"]["event_id"]).collect();
    assert!(ids.iter().all(|id| *id == ids[0] && id.is_string()), "event ids differ: {ids:?}");
}

#[when(expr = "someone sends {word} to Bucket's {string}")]
async fn send_to_bucket(w: &mut BhivWorld, method: String, route: String) {
    w.start().await;
    let before: Vec<Value> = w.bucket_events().await.into_iter().map(|e| e.record).collect();
    w.notes.insert("bucket_before".into(), Value::Array(before));
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let body = json!({"requester_id": "bhiv_core", "event_data": {"status": "tampered"}});
    let reply = w.request(w.http.request(method, format!("{}{route}", w.bucket_url())).json(&body)).await;
    w.last = Some(reply);
}

#[then(expr = "Bucket refuses it with {int}")]
async fn bucket_refuses(w: &mut BhivWorld, status: u16) {
    let reply = w.last_reply();
    assert_eq!(reply.status, status, "Bucket answered {}: {}", reply.status, reply.body);
}

#[then("Bucket still holds every event it held before, unchanged")]
async fn bucket_unchanged(w: &mut BhivWorld) {
    let before = w.notes["bucket_before"].as_array().cloned().expect("the records noted before");
    let events = w.bucket_events().await;
    assert_eq!(events.len(), before.len(), "Bucket's store changed");
    assert!(events.iter().all(|e| e.record.get("status") != Some(&json!("tampered"))), "an event was altered");
    for (index, (event, noted)) in events.iter().zip(&before).enumerate() {
        assert_eq!(&event.record, noted, "stored event {} changed", index + 1);
    }
    // A real Bucket keeps no hash chain; the records themselves were compared above.
    if !super::simulated().bucket {
        return;
    }
    if let Some(index) = first_broken_link(&events) {
        panic!("the hash chain no longer verifies: recomputed, stored event {} does not link", index + 1);
    }
}

#[then("Bucket's hash chain verifies")]
async fn chain_verifies(w: &mut BhivWorld) {
    let events = w.bucket_events().await;
    assert!(!events.is_empty(), "Bucket holds no events");
    let report = w.chain_report().await;
    assert_eq!(report["valid"], json!(true), "Bucket's own check: {report}");
    assert_eq!(report["length"], json!(events.len()), "Bucket's own check: {report}");
    if let Some(index) = first_broken_link(&events) {
        let event = &events[index];
        panic!(
            "Bucket says its chain is valid, but recomputing sha256(prev_hash ‖ canonical record) breaks at stored \
             event {}: prev_hash {} hash {}",
            index + 1,
            event.prev_hash,
            event.hash
        );
    }
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>(), "sequences have gaps");
}

#[when(expr = "an attacker with database access changes the status of stored event {int}")]
async fn tamper(w: &mut BhivWorld, number: usize) {
    let changed = w.stack().bucket().tamper(number - 1, |record| record["status"] = json!("failed"));
    assert!(changed, "there is no stored event {number}");
}

#[then(expr = "Bucket's hash chain is broken at stored event {int}")]
async fn chain_broken(w: &mut BhivWorld, number: usize) {
    let report = w.chain_report().await;
    assert_eq!(report["valid"], json!(false), "Bucket's own check: {report}");
    assert_eq!(report["first_bad_index"], json!(number - 1), "Bucket's own check: {report}");
    let events = w.bucket_events().await;
    assert_eq!(first_broken_link(&events), Some(number - 1), "recomputed links");
}

#[when(expr = "{string} reads Bucket's events for product {string}")]
async fn read_events_product(w: &mut BhivWorld, requester: String, product: String) {
    w.start().await;
    let url = format!("{}/core/events?requester_id={requester}&product={product}&limit=1000", w.bucket_url());
    let reply = w.get(&url).await;
    w.last = Some(reply);
}

#[when(expr = "{string} reads Bucket's {word}")]
async fn read_bucket(w: &mut BhivWorld, requester: String, what: String) {
    w.start().await;
    let route = match what.as_str() {
        "events" => "/core/events",
        "stats" => "/core/stats",
        other => panic!("Bucket has no `{other}` to read"),
    };
    let reply = w.get(&format!("{}{route}?requester_id={requester}", w.bucket_url())).await;
    w.last = Some(reply);
}

#[then(expr = "Bucket answers {int}")]
async fn bucket_answers(w: &mut BhivWorld, status: u16) {
    let reply = w.last_reply();
    assert_eq!(reply.status, status, "Bucket answered {}: {}", reply.status, reply.body);
}

#[then(expr = "the reader sees the {string} workflow and nothing of {string}")]
async fn reader_isolated(w: &mut BhivWorld, mine: String, theirs: String) {
    let trace_of = |product: &str| {
        w.notes
            .get(&format!("product:{product}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .expect("a workflow for the product")
    };
    let (my_trace, their_trace) = (trace_of(&mine), trace_of(&theirs));
    let events = w.last_reply().body["events"].as_array().cloned().expect("an events list");
    let traces: Vec<&str> = events.iter().filter_map(|e| e["trace_id"].as_str()).collect();
    assert!(traces.contains(&my_trace.as_str()), "the reader does not see its own product's event: {traces:?}");
    assert!(!traces.contains(&their_trace.as_str()), "the reader sees another product's event");
    let foreign: Vec<&Value> = events.iter().filter(|e| e["product"] != json!(mine)).collect();
    assert!(foreign.is_empty(), "events of other products leak: {foreign:?}");
}

#[then("the executor only ever appended to Bucket")]
async fn only_appended(w: &mut BhivWorld) {
    let hits = w.hits(Some(Pillar::Bucket), None).await;
    assert!(!hits.is_empty(), "the executor sent nothing to Bucket");
    let mut by_route: HashMap<(String, String), usize> = HashMap::new();
    for hit in &hits {
        *by_route.entry((hit.method.clone(), hit.path.clone())).or_default() += 1;
    }
    let others: Vec<_> = by_route.keys().filter(|(m, p)| !(m == "POST" && p == "/core/write-event")).collect();
    assert!(others.is_empty(), "the executor called Bucket with something other than an append: {others:?}");
    assert!(hits.iter().all(|h| h.body["requester_id"] == "workflow_executor"), "it writes as workflow_executor");
}

/// Waits until every workflow's events reached Bucket and Karma and the executor has nothing
/// left to deliver; then checks each landed exactly once (`at_most_once` false: at least once).
pub async fn all_delivered(w: &BhivWorld, exactly_once: bool) {
    assert!(!w.executions.is_empty(), "no workflow was executed");
    let traces: Vec<String> = w.executions.iter().map(|e| e.trace.clone()).collect();
    eventually(WAIT, "every workflow's events to reach Bucket and Karma", || async {
        let stored = w.bucket_events().await;
        let in_bucket: HashSet<&str> = stored.iter().filter_map(StoredView::trace).collect();
        let missing_bucket = traces.iter().filter(|t| !in_bucket.contains(t.as_str())).count();
        let missing_karma = if super::simulated().karma {
            let karma: HashSet<String> = w
                .hits(Some(Pillar::Karma), None)
                .await
                .into_iter()
                .filter(|h| h.method == "POST" && h.status == Some(200))
                .filter_map(|h| h.trace_id)
                .collect();
            traces.iter().filter(|t| !karma.contains(t.as_str())).count()
        } else {
            // A real Karma cannot be asked about a trace: each user's applied actions must reach
            // the number of their workflows.
            let mut missing = 0;
            for (user, n) in per_user_counts(w) {
                let applied = w.karma_user(user).await.map_or(0, |v| v.total_actions);
                missing += n.saturating_sub(applied);
            }
            missing as usize
        };
        if missing_bucket + missing_karma > 0 {
            return Err(format!("{missing_bucket} missing in Bucket, {missing_karma} missing in Karma"));
        }
        if !w.is_external() {
            let status = w.executor_status().await;
            for sink in ["bucket", "karma"] {
                let depth = status["pillars"][sink]["outbox_depth"].as_u64().unwrap_or(0);
                if depth > 0 {
                    return Err(format!("{depth} {sink} event(s) still waiting"));
                }
            }
        }
        Ok(())
    })
    .await;
    let stored = w.bucket_events().await;
    let mut per_trace: HashMap<&str, usize> = HashMap::new();
    for event in &stored {
        if let Some(trace) = event.trace() {
            *per_trace.entry(trace).or_default() += 1;
        }
    }
    for trace in &traces {
        let n = per_trace.get(trace.as_str()).copied().unwrap_or(0);
        if exactly_once {
            assert_eq!(n, 1, "Bucket holds {n} events for {trace}");
        } else {
            assert!(n >= 1, "Bucket holds no event for {trace}");
        }
    }
    if exactly_once {
        for (user, n) in per_user_counts(w) {
            let view = w.karma_user(user).await.unwrap_or_else(|| panic!("Karma does not know {user}"));
            assert_eq!(view.total_actions, n, "Karma applied {} events for {user}, expected {n}", view.total_actions);
        }
    }
}

/// How many of the scenario's workflows each user asked for.
fn per_user_counts(w: &BhivWorld) -> HashMap<&str, u64> {
    let mut per_user: HashMap<&str, u64> = HashMap::new();
    for execution in &w.executions {
        *per_user.entry(execution.user.as_str()).or_default() += 1;
    }
    per_user
}

#[then(expr = "(eventually )every workflow's events reach Bucket and Karma exactly once")]
async fn every_exactly_once(w: &mut BhivWorld) {
    all_delivered(w, true).await;
}

#[then(expr = "(eventually )every workflow reaches Bucket at least once")]
async fn every_at_least_once(w: &mut BhivWorld) {
    let traces: Vec<String> = w.executions.iter().map(|e| e.trace.clone()).collect();
    eventually(WAIT, "every workflow to reach Bucket", || async {
        let stored = w.bucket_events().await;
        let in_bucket: HashSet<&str> = stored.iter().filter_map(StoredView::trace).collect();
        let missing: Vec<&String> = traces.iter().filter(|t| !in_bucket.contains(t.as_str())).collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("missing: {missing:?}")) }
    })
    .await;
}
