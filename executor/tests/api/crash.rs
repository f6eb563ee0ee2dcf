//! Crash safety with the real binary: `SIGKILL` mid-load loses no committed event, and a provider
//! call interrupted by a crash is reported as `outcome_unknown` and never re-sent.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_executor_mid_load_loses_no_committed_event() {
    kill_mid_load_then_restart(&[], 40).await;
}

async fn kill_mid_load_then_restart(extra_env: &[(&str, String)], acknowledged_before_kill: usize) {
    let data_dir = TempDir::new().expect("a temp dir");
    let fakes = Fakes::start().await;
    let (bucket, karma) = (fakes.bucket(), fakes.karma());
    bucket.refuse();
    karma.refuse();
    let mut env = fakes.env();
    env.extend(extra_env.iter().cloned());
    let mut first = ExecutorProcess::start(EXECUTOR, &data_dir, &env).await;

    // Four callers load the executor until it dies; each remembers what was acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (http, url, acknowledged, stop) = (client(), first.url(), acknowledged.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let trace = trace_id();
                let Ok(response) = http.post(&url).json(&task_request(&trace)).send().await else { break };
                let Ok(body) = response.json::<Value>().await else { break };
                assert_eq!(body["status"], "success", "{body}");
                acknowledged.lock().expect("lock").push(trace);
            }
        }));
    }
    eventually(secs(60.0), "enough executions are acknowledged", async || {
        (acknowledged.lock().expect("lock").len() >= acknowledged_before_kill).then_some(())
    })
    .await;
    first.kill();
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.expect("a caller task");
    }
    let acknowledged: BTreeSet<String> = acknowledged.lock().expect("lock").iter().cloned().collect();

    bucket.come_up();
    karma.come_up();
    let second = ExecutorProcess::start(EXECUTOR, &data_dir, &env).await;

    for (name, sink) in [("bucket", &bucket), ("karma", &karma)] {
        eventually(secs(20.0), "every acknowledged execution's event arrives", async || {
            acknowledged.is_subset(&sink.trace_ids()).then_some(())
        })
        .await;
        let mut ids_per_trace: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for delivery in sink.delivered() {
            ids_per_trace.entry(delivery.trace_id()).or_default().insert(delivery.event_id());
        }
        for trace in &acknowledged {
            assert_eq!(ids_per_trace[trace].len(), 1, "{name}: exactly one event for {trace}");
        }
    }
    assert!(
        second.logs().iter().any(|l| l.contains("resuming delivery")),
        "the restart says it resumes delivery: {:#?}",
        second.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_call_interrupted_by_a_crash_is_outcome_unknown_and_never_resent() {
    let data_dir = TempDir::new().expect("a temp dir");
    let fakes = Fakes::start().await;
    fakes.slow_whatsapp(secs(30.0));
    let (bucket, karma) = (fakes.bucket(), fakes.karma());
    let mut env = fakes.env();
    env.extend([
        ("WHATSAPP_TIMEOUT", "25".to_owned()),
        ("SMTP_PASSWORD", "smtp-password-not-a-secret".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ]);
    let mut first = ExecutorProcess::start(EXECUTOR, &data_dir, &env).await;
    let trace = trace_id();
    let pending = {
        let (http, url, body) = (client(), first.url(), whatsapp_request(&trace));
        tokio::spawn(async move { http.post(url).json(&body).send().await })
    };
    eventually(secs(10.0), "the provider call is in progress", async || (fakes.whatsapp_arrivals() > 0).then_some(()))
        .await;

    first.kill();
    assert!(pending.await.expect("joined").is_err(), "the caller saw the connection die");

    let second = ExecutorProcess::start(EXECUTOR, &data_dir, &env).await;
    let response = client().post(second.url()).json(&whatsapp_request(&trace)).send().await.expect("an answer");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));
    let body: Value = response.json().await.expect("JSON");

    assert_eq!(body["status"], "failed", "{body}");
    assert_eq!(body["execution_result"]["error_code"], "outcome_unknown", "{body}");
    assert_eq!(fakes.whatsapp_arrivals(), 1, "the message is never re-sent");
    let event = eventually(secs(10.0), "the failed execution is audited", async || bucket.event_for(&trace)).await;
    let data = &event.body["event_data"];
    assert_eq!(data["status"], "failed", "{data}");
    assert_eq!(data["action_type"], "whatsapp");
    assert_eq!(data["execution_result"]["error_code"], "outcome_unknown");
    let karma_event = eventually(secs(10.0), "karma hears of the failure", async || karma.event_for(&trace)).await;
    assert_eq!(karma_event.body["data"]["action"], "workflow_failure");
    assert!(second.logs().iter().any(|l| l.contains("outcome_unknown")), "{:#?}", second.logs());
    for line in first.logs().iter().chain(&second.logs()) {
        for secret in [WHATSAPP_TOKEN, AI_KEY, "smtp-password-not-a-secret"] {
            assert!(!line.contains(secret), "a provider secret reached the logs: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_before_a_kill_is_replayed_after_the_restart_without_acting_again() {
    let data_dir = TempDir::new().expect("a temp dir");
    let fakes = Fakes::start().await;
    let bucket = fakes.bucket();
    bucket.refuse();
    fakes.karma().refuse();
    let env = fakes.env();
    let mut first = ExecutorProcess::start(EXECUTOR, &data_dir, &env).await;
    let (sent, task) = (trace_id(), trace_id());
    let answer = |url: String, body: Value| async move {
        client().post(url).json(&body).send().await.expect("an answer").json::<Value>().await.expect("JSON")
    };
    let sent_answer = answer(first.url(), whatsapp_request(&sent)).await;
    let task_answer = answer(first.url(), task_request(&task)).await;
    assert_eq!(sent_answer["status"], "success", "{sent_answer}");
    assert_eq!(task_answer["status"], "success", "{task_answer}");

    first.kill();
    bucket.come_up();
    let second = ExecutorProcess::start(EXECUTOR, &data_dir, &env).await;

    for (trace, request, stored) in
        [(&sent, whatsapp_request(&sent), &sent_answer), (&task, task_request(&task), &task_answer)]
    {
        let response = client().post(second.url()).json(&request).send().await.expect("an answer");
        assert_eq!(response.headers().get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]), "{trace}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(&body, stored, "the answer given before the kill is the one stored");
    }
    assert_eq!(fakes.whatsapp_calls().len(), 1, "the message is sent once");
    let wanted: BTreeSet<String> = [sent.clone(), task.clone()].into_iter().collect();
    eventually(secs(20.0), "both executions are audited after the restart", async || {
        wanted.is_subset(&bucket.trace_ids()).then_some(())
    })
    .await;
    let audited = bucket.event_for(&sent).expect("an event");
    assert_eq!(audited.body["event_data"]["status"], "success", "a completed call is not outcome_unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_binary_gracefully_after_flushing_queued_events() {
    let data_dir = TempDir::new().expect("a temp dir");
    let fakes = Fakes::start().await;
    let (bucket, karma) = (fakes.bucket(), fakes.karma());
    bucket.hang();
    let mut env = fakes.env();
    env.push(("EXECUTOR_SHUTDOWN_GRACE", "5".to_owned()));
    let mut process = ExecutorProcess::start(EXECUTOR, &data_dir, &env).await;
    let mut traces = BTreeSet::new();
    for _ in 0..3 {
        let trace = trace_id();
        let body: Value = client()
            .post(process.url())
            .json(&task_request(&trace))
            .send()
            .await
            .expect("answer")
            .json()
            .await
            .expect("JSON");
        assert_eq!(body["status"], "success", "{body}");
        traces.insert(trace);
    }
    eventually(secs(5.0), "bucket was tried", async || (bucket.attempts() > 0).then_some(())).await;
    bucket.accept();

    let status = process.terminate().await;

    assert!(status.success(), "a clean exit: {status}, {:#?}", process.logs());
    assert_eq!(bucket.trace_ids(), traces, "queued events were flushed before exiting");
    assert_eq!(karma.trace_ids(), traces);
    let logs = process.logs();
    assert!(logs.iter().any(|l| l.contains("shutdown requested")), "{logs:#?}");
    assert!(logs.iter().any(|l| l.contains("workflow executor stopped")), "{logs:#?}");
}

#[test]
fn a_bad_setting_stops_the_binary_at_start_naming_the_variable() {
    let data_dir = TempDir::new().expect("a temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_workflow-executor"))
        .env_clear()
        .env("EXECUTOR_BIND", "127.0.0.1:0")
        .env("EXECUTOR_DATA_DIR", data_dir.path())
        .env("WORKFLOW_TIMEOUT", "soon")
        .output()
        .expect("the binary runs");

    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WORKFLOW_TIMEOUT"), "the error names the variable: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_held_by_another_executor_or_unusable_stops_the_start_naming_it() {
    let data_dir = TempDir::new().expect("a temp dir");
    let _first = ExecutorProcess::start(EXECUTOR, &data_dir, &[]).await;
    let path = data_dir.path().display().to_string();

    let Err(second) = ExecutorProcess::try_start(EXECUTOR, &data_dir, &[]).await else {
        panic!("a second executor started on a directory another one holds");
    };
    assert!(second.status.is_some_and(|status| !status.success()), "it exits with an error: {:?}", second.status);
    let said = second.logs.join("\n");
    assert!(
        said.contains("EXECUTOR_DATA_DIR") && said.contains(&path) && said.contains("another executor holds the lock"),
        "the error names the variable, the directory and the lock: {said}"
    );

    let file = data_dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("a file");
    let Err(on_a_file) = ExecutorProcess::try_start(EXECUTOR, &file, &[]).await else {
        panic!("an executor started with a file as its data directory");
    };
    let said = on_a_file.logs.join("\n");
    assert!(
        said.contains("EXECUTOR_DATA_DIR") && said.contains(&file.display().to_string()),
        "the error names the variable and the path: {said}"
    );
}
