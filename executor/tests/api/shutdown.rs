//! Graceful shutdown: cancelling the token flushes queued events before `run_until_stopped`
//! returns; what cannot be flushed stays on disk and a restart delivers it.

use crate::helpers::*;

#[tokio::test]
async fn cancelling_the_token_flushes_queued_events_before_run_until_stopped_returns() {
    let app = spawn_app(&[("EXECUTOR_SHUTDOWN_GRACE", "5")]).await;
    app.bucket().hang();
    app.karma().hang();
    let mut traces = Vec::new();
    for _ in 0..5 {
        let trace = trace_id();
        app.execute(&task_request(&trace)).await.assert_success(&trace);
        traces.push(trace);
    }
    let status = app.status().await.body;
    assert_eq!(status["pillars"]["bucket"]["outbox_depth"], 5, "events are queued: {status}");
    assert_eq!(status["pillars"]["karma"]["outbox_depth"], 5, "events are queued: {status}");
    app.bucket().accept();
    app.karma().accept();

    let stopped = app.stop().await;

    stopped.result.expect("a clean stop");
    for sink in [&stopped.fakes.bucket(), &stopped.fakes.karma()] {
        assert_eq!(sink.trace_ids(), traces.iter().cloned().collect(), "flushed before returning");
        assert_eq!(sink.event_ids().len(), 5);
    }
    // Nothing is left on disk either: a restart has nothing to resume.
    let restarted = spawn_app_in(stopped.fakes, stopped.data_dir, &[]).await;
    let status = restarted.status().await.body;
    assert_eq!(status["pillars"]["bucket"]["outbox_depth"], 0, "{status}");
    assert_eq!(status["pillars"]["karma"]["outbox_depth"], 0, "{status}");
}

#[tokio::test]
async fn events_left_on_disk_by_a_stop_are_delivered_after_a_restart() {
    let app = spawn_app_with(Fakes::with_bucket_refused().await, &[("EXECUTOR_SHUTDOWN_GRACE", "0.2")]).await;
    app.karma().hang();
    let mut traces = Vec::new();
    for _ in 0..4 {
        let trace = trace_id();
        app.execute(&task_request(&trace)).await.assert_success(&trace);
        traces.push(trace);
    }

    let stopping = std::time::Instant::now();
    let stopped = app.stop().await;
    assert!(stopping.elapsed() < secs(3.0), "a refused or hanging sink does not hold shutdown past the grace");
    stopped.result.expect("a clean stop");
    assert!(stopped.fakes.bucket().delivered().is_empty());
    assert!(stopped.fakes.karma().delivered().is_empty());
    stopped.fakes.bucket().come_up();
    stopped.fakes.karma().accept();
    let restarted = spawn_app_in(stopped.fakes, stopped.data_dir, &[]).await;

    let wanted: std::collections::BTreeSet<String> = traces.into_iter().collect();
    eventually(secs(10.0), "the restarted executor delivers what was left", async || {
        (restarted.bucket().trace_ids() == wanted).then_some(())
    })
    .await;
    assert_eq!(restarted.bucket().event_ids().len(), 4);
    eventually(secs(10.0), "karma gets what was left too", async || {
        (restarted.karma().trace_ids() == wanted).then_some(())
    })
    .await;
    restarted.wait_until_outboxes_drain().await;
}

#[tokio::test]
async fn a_request_in_flight_when_shutdown_begins_is_finished_and_answered() {
    let app = spawn_app(&[]).await;
    app.fakes.slow_whatsapp(secs(0.5));
    let trace = trace_id();
    let in_flight = {
        let (http, url, body) = (app.http.clone(), app.url("/api/workflow/execute"), whatsapp_request(&trace));
        tokio::spawn(async move { http.post(url).json(&body).send().await?.json::<serde_json::Value>().await })
    };
    eventually(secs(5.0), "the provider call is in progress", async || {
        (app.fakes.whatsapp_arrivals() > 0).then_some(())
    })
    .await;

    let stopped = app.stop().await;

    stopped.result.expect("a clean stop");
    let answer = in_flight.await.expect("joined").expect("the caller got its answer");
    assert_eq!(answer["status"], "success", "{answer}");
    let sent = stopped.fakes.stack.providers().whatsapp_messages();
    assert_eq!(answer["execution_result"]["whatsapp_message_id"], sent[0].message_id.as_str());
    assert_eq!(stopped.fakes.bucket().trace_ids().into_iter().collect::<Vec<_>>(), vec![trace], "and audited");
}
