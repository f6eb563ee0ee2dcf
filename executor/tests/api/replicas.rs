//! Replicas: three executor processes on one PostgreSQL database (a throwaway server from
//! `test_support::postgres`). Racing duplicates run once, a replica killed with SIGKILL loses
//! nothing (its interrupted calls become `outcome_unknown` on the survivors), and a Bucket outage
//! is ridden out with every event delivered exactly once by one of the replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pillar_sim::Pillar;
use serde_json::{Value, json};
use tempfile::TempDir;
use test_support::postgres::new_database;

use crate::helpers::*;

/// The claim lease of the replicas: a dead replica's calls are taken over after about this long.
const LEASE_SECONDS: f64 = 1.0;

/// Three replicas, each with its own (unused) data directory, on the database at `url`.
struct Replicas {
    processes: Vec<ExecutorProcess>,
    _dirs: Vec<TempDir>,
}

impl Replicas {
    async fn start(url: &str, env: &[(&'static str, String)]) -> Self {
        let mut env = env.to_vec();
        env.extend([("EXECUTOR_STORE_URL", url.to_owned()), ("EXECUTOR_STORE_LEASE", LEASE_SECONDS.to_string())]);
        let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().expect("a temp dir")).collect();
        let mut processes = Vec::new();
        for dir in &dirs {
            processes.push(ExecutorProcess::start(EXECUTOR, dir.path(), &env).await);
        }
        Self { processes, _dirs: dirs }
    }

    fn url(&self, n: usize) -> String {
        self.processes[n % self.processes.len()].url()
    }

    /// Waits until every replica's status reports `depth` events waiting for Bucket.
    async fn each_reports_bucket_depth(&self, depth: u64) {
        for process in &self.processes {
            eventually(secs(20.0), &format!("each replica reports a Bucket outbox of {depth}"), async || {
                let url = format!("{}/api/integration/status", process.base_url());
                let status: Value = client().get(url).send().await.ok()?.json().await.ok()?;
                (status["pillars"]["bucket"]["outbox_depth"] == depth).then_some(())
            })
            .await;
        }
    }
}

/// A WhatsApp request whose message names its trace, so the provider's log shows which
/// execution each call belongs to.
fn traced_whatsapp(trace: &str) -> Value {
    workflow(
        trace,
        json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": format!("order {trace}")}),
    )
}

/// How many answered provider calls each trace caused.
fn calls_per_trace(fakes: &Fakes) -> BTreeMap<String, usize> {
    let mut calls = BTreeMap::new();
    for call in fakes.whatsapp_calls() {
        let text = call.body["text"]["body"].as_str().expect("a text message").to_owned();
        *calls.entry(text.trim_start_matches("order ").to_owned()).or_insert(0) += 1;
    }
    calls
}

/// The fakes' variables, with a provider timeout longer than any delay here.
fn whatsapp_env(fakes: &Fakes) -> Vec<(&'static str, String)> {
    let mut env = fakes.env();
    env.push(("WHATSAPP_TIMEOUT", "20".to_owned()));
    env
}

/// `(status, replayed, body)` of one execute call.
async fn send(url: String, body: Value) -> reqwest::Result<(u16, bool, Value)> {
    let response = client().post(url).json(&body).send().await?;
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    Ok((status, replayed, response.json().await?))
}

/// Every sink has exactly one event for each of `traces` (and the executions' events only).
async fn assert_one_event_each(fakes: &Fakes, traces: &BTreeSet<String>) {
    for (name, sink) in [("bucket", fakes.bucket()), ("karma", fakes.karma())] {
        eventually(secs(30.0), &format!("{name} has an event of every execution"), async || {
            traces.is_subset(&sink.trace_ids()).then_some(())
        })
        .await;
        let mut per_trace: BTreeMap<String, usize> = BTreeMap::new();
        for delivery in sink.delivered() {
            *per_trace.entry(delivery.trace_id()).or_default() += 1;
        }
        for trace in traces {
            assert_eq!(per_trace[trace], 1, "{name}: one delivery of {trace}'s event, not one per replica");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_racing_duplicates_over_three_replicas_call_the_provider_once_per_key() {
    let url = new_database().await;
    let fakes = Fakes::start().await;
    fakes.slow_whatsapp(secs(0.2));
    let replicas = Replicas::start(&url, &whatsapp_env(&fakes)).await;

    // 20 keys, 10 copies of each, spread over the replicas and sent at once.
    let traces: Vec<String> = (0..20).map(|_| trace_id()).collect();
    let calls = (0..200).map(|n| {
        let trace = traces[n % traces.len()].clone();
        let url = replicas.url(n / traces.len());
        async move { (trace.clone(), send(url, traced_whatsapp(&trace)).await.expect("an answer")) }
    });
    let answers = futures_util::future::join_all(calls).await;

    let mut answered: BTreeMap<String, Value> = BTreeMap::new();
    for (trace, (status, _, body)) in answers {
        match status {
            200 => {
                assert_eq!(body["status"], "success", "{body}");
                if let Some(earlier) = answered.insert(trace.clone(), body.clone()) {
                    assert_eq!(earlier, body, "two answers for {trace}");
                }
            }
            409 => assert_eq!(body["error"]["code"], "execution_in_progress", "{body}"),
            other => panic!("a racing duplicate got {other}: {body}"),
        }
    }
    let calls = calls_per_trace(&fakes);
    assert_eq!(calls.len(), 20, "every key reached the provider: {calls:?}");
    assert!(calls.values().all(|n| *n == 1), "one provider call per key: {calls:?}");

    // Every replica replays the same answer for every key.
    for trace in &traces {
        for n in 0..3 {
            let (status, replayed, body) = send(replicas.url(n), traced_whatsapp(trace)).await.expect("an answer");
            assert_eq!((status, replayed), (200, true), "replica {n} on {trace}: {body}");
            let first = answered.entry(trace.clone()).or_insert_with(|| body.clone());
            assert_eq!(*first, body, "replica {n} answers {trace} like the others");
        }
    }
    assert_eq!(fakes.whatsapp_arrivals(), 20, "the replays called nobody");
    assert_one_event_each(&fakes, &traces.into_iter().collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_nothing_and_its_interrupted_calls_become_outcome_unknown() {
    let url = new_database().await;
    let fakes = Fakes::start().await;
    fakes.slow_whatsapp(secs(0.3));
    let mut replicas = Replicas::start(&url, &whatsapp_env(&fakes)).await;

    // Two callers per replica; each remembers what was acknowledged and what never was.
    let acknowledged = Arc::new(Mutex::new(BTreeMap::<String, Value>::new()));
    let unanswered = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for n in 0..6 {
        let (url, acknowledged, unanswered, stop) =
            (replicas.url(n), acknowledged.clone(), unanswered.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let trace = trace_id();
                match send(url.clone(), traced_whatsapp(&trace)).await {
                    Ok((200, _, body)) => {
                        assert_eq!(body["status"], "success", "{body}");
                        acknowledged.lock().expect("lock").insert(trace, body);
                    }
                    Ok((status, _, body)) => panic!("an execution answered {status}: {body}"),
                    // The replica died under this call.
                    Err(_) => {
                        unanswered.lock().expect("lock").insert(trace);
                        break;
                    }
                }
            }
        }));
    }
    eventually(secs(60.0), "30 executions are acknowledged", async || {
        (acknowledged.lock().expect("lock").len() >= 30).then_some(())
    })
    .await;
    replicas.processes[0].kill();
    let killed = Instant::now();
    let after_kill = acknowledged.lock().expect("lock").len();
    eventually(secs(60.0), "the survivors acknowledge 20 more", async || {
        (acknowledged.lock().expect("lock").len() >= after_kill + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.expect("a caller");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let unanswered = unanswered.lock().expect("lock").clone();
    assert!(!unanswered.is_empty(), "the killed replica's callers saw it die");

    // Its interrupted calls are settled by a survivor within a bounded time, never re-sent.
    let mut unknown = 0;
    for trace in &unanswered {
        let body = eventually(secs(20.0), "a survivor settles the killed replica's call", async || {
            let (status, _, body) = send(replicas.url(1), traced_whatsapp(trace)).await.expect("an answer");
            (status == 200).then_some(body)
        })
        .await;
        let code = &body["execution_result"]["error_code"];
        assert!(
            body["status"] == "success" || (body["status"] == "failed" && code == "outcome_unknown"),
            "an interrupted call is either recorded or outcome_unknown: {body}"
        );
        unknown += usize::from(code == "outcome_unknown");
    }
    // Each caller of the victim spends 300 of every ~305 ms waiting on the provider.
    assert!(unknown > 0, "none of the killed replica's {} calls was caught mid-call", unanswered.len());
    let settled_after = killed.elapsed();
    assert!(settled_after < secs(15.0), "settled {settled_after:?} after the kill (lease {LEASE_SECONDS} s)");

    // Every acknowledged execution replays on both survivors.
    for (trace, body) in &acknowledged {
        for n in [1, 2] {
            let (status, replayed, replay) = send(replicas.url(n), traced_whatsapp(trace)).await.expect("an answer");
            assert_eq!((status, replayed), (200, true), "replica {n} on {trace}: {replay}");
            assert_eq!(&replay, body, "replica {n} replays {trace}'s answer");
        }
    }
    let calls = calls_per_trace(&fakes);
    assert!(calls.values().all(|n| *n == 1), "no message was sent twice: {calls:?}");
    // A send the kill interrupted reached the fake but was never answered, so only the fake's
    // count of arrivals holds it: any arrival beyond the answered sends and those is a re-send.
    let interrupted = unanswered.iter().filter(|trace| !calls.contains_key(*trace)).count();
    let answered: usize = calls.values().sum();
    let arrivals = fakes.whatsapp_arrivals();
    assert!(
        arrivals <= (answered + interrupted) as u64,
        "{arrivals} sends for {answered} answered and {interrupted} cut"
    );
    let everything: BTreeSet<String> = acknowledged.keys().chain(&unanswered).cloned().collect();
    assert_one_event_each(&fakes, &everything).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_outage_with_three_replicas_loses_nothing_and_delivers_each_event_once() {
    let url = new_database().await;
    let fakes = Fakes::with_bucket_refused().await;
    let replicas = Replicas::start(&url, &fakes.env()).await;

    let mut traces = BTreeSet::new();
    for n in 0..60 {
        let trace = trace_id();
        let (status, _, body) = send(replicas.url(n), task_request(&trace)).await.expect("an answer");
        assert_eq!((status, &body["status"]), (200, &json!("success")), "{body}");
        traces.insert(trace);
    }
    // Every replica reports the shared outbox, not its own share of it.
    replicas.each_reports_bucket_depth(60).await;

    fakes.bucket().come_up();
    assert_one_event_each(&fakes, &traces).await;
    replicas.each_reports_bucket_depth(0).await;
    assert_eq!(fakes.bucket().delivered().len(), 60, "no event was delivered twice");
}

#[tokio::test]
async fn an_unreachable_database_stops_the_start_naming_its_variable_without_the_password() {
    // A stack's port that refuses connections: nobody listens there.
    let fakes = Fakes::start().await;
    fakes.bucket().refuse();
    let data_dir = TempDir::new().expect("a temp dir");
    let url = format!("postgres://exec:s3cret-pw@{}/executor", fakes.stack.addr(Pillar::Bucket));

    let refused = ExecutorProcess::try_start(EXECUTOR, data_dir.path(), &[("DATABASE_URL", url)]).await;

    let Err(NotServing { status: Some(status), logs }) = refused else { panic!("the executor must not start") };
    assert!(!status.success(), "{status}");
    let logs = logs.join("\n");
    assert!(logs.contains("DATABASE_URL") && logs.contains("cannot connect"), "{logs}");
    assert!(!logs.contains("s3cret-pw"), "the password is never printed: {logs}");
}
