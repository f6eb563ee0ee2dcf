//! Idempotency: a repeated request replays the stored answer without acting again; a concurrent
//! duplicate gets 409; an `Idempotency-Key` reused for another request gets 422.

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn the_same_request_twice_returns_the_stored_answer_without_acting_again() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();

    let first = app.execute(&whatsapp_request(&trace)).await;
    let second = app.execute(&whatsapp_request(&trace)).await;

    first.assert_success(&trace);
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body, first.body, "the stored answer, byte for byte");
    assert_eq!(app.fakes.whatsapp_calls().len(), 1, "the provider is called once");
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("workflow_idempotent_replays_total", &[]), 1.0);
    assert_eq!(metrics.get("workflow_events_enqueued_total", &[("sink", "bucket")]), 1.0, "a replay emits no event");
}

#[tokio::test]
async fn the_same_trace_with_a_different_payload_is_a_new_execution() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();
    let mut other = task_request(&trace);
    other["data"]["payload"]["title"] = json!("Another task");

    let first = app.execute(&task_request(&trace)).await;
    let second = app.execute(&other).await;

    first.assert_success(&trace);
    second.assert_success(&trace);
    assert_eq!(second.header("idempotent-replayed"), None);
    assert_ne!(first.result()["task_id"], second.result()["task_id"]);
}

#[tokio::test]
async fn the_same_idempotency_key_and_request_replays_the_stored_answer() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();
    let key = [("idempotency-key", "order-1234-confirmation")];

    let first = app.execute_with(&task_request(&trace), &key).await;
    let again = app.execute_with(&task_request(&trace), &key).await;

    first.assert_success(&trace);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
}

#[tokio::test]
async fn an_idempotency_key_reused_with_a_different_payload_is_422() {
    let app = spawn_app(&[]).await;
    let key = [("idempotency-key", "core-msg-77")];
    let trace = trace_id();
    app.execute_with(&whatsapp_request(&trace), &key).await.assert_success(&trace);
    let mut different = whatsapp_request(&trace);
    different["data"]["payload"]["message"] = json!("A different text");

    let reused = app.execute_with(&different, &key).await;

    reused.assert_rejected(422, "idempotency_key_reused");
    assert_eq!(reused.body["error"]["field"], "Idempotency-Key");
    assert_eq!(app.fakes.whatsapp_calls().len(), 1, "nothing was sent for the reused key");
    let bad_key = app.execute_with(&whatsapp_request(&trace_id()), &[("idempotency-key", "has space")]).await;
    bad_key.assert_rejected(422, "invalid_idempotency_key");
}

#[tokio::test]
async fn a_duplicate_arriving_while_the_first_still_runs_gets_409() {
    let app = spawn_app(&[]).await;
    app.fakes.slow_whatsapp(secs(1.0));
    let trace = trace_id();
    let first = {
        let (http, url, body) = (app.http.clone(), app.url("/api/workflow/execute"), whatsapp_request(&trace));
        tokio::spawn(async move { http.post(url).json(&body).send().await.expect("answer").json::<Value>().await })
    };
    eventually(secs(5.0), "the first request reaches the provider", async || {
        (app.fakes.whatsapp_arrivals() > 0).then_some(())
    })
    .await;

    let duplicate = app.execute(&whatsapp_request(&trace)).await;

    duplicate.assert_rejected(409, "execution_in_progress");
    assert!(duplicate.header("retry-after").is_some());
    let first = first.await.expect("joined").expect("JSON");
    assert_eq!(first["status"], "success", "{first}");
    let later = app.execute(&whatsapp_request(&trace)).await;
    assert_eq!(later.header("idempotent-replayed"), Some("true"));
    assert_eq!(later.body, first);
    assert_eq!(app.fakes.whatsapp_arrivals(), 1, "the provider is called once in all");
}

#[tokio::test]
async fn a_stored_answer_is_forgotten_after_the_retention() {
    let app = spawn_app(&[("EXECUTOR_IDEMPOTENCY_RETENTION", "0.2")]).await;
    let trace = trace_id();
    let first = app.execute(&task_request(&trace)).await;
    first.assert_success(&trace);

    let fresh = eventually(secs(10.0), "the same request executes again", async || {
        let response = app.execute(&task_request(&trace)).await;
        response.header("idempotent-replayed").is_none().then_some(response)
    })
    .await;

    fresh.assert_success(&trace);
    assert_ne!(fresh.result()["task_id"], first.result()["task_id"], "a new execution, not the stored answer");
}

#[tokio::test]
async fn a_caller_that_hangs_up_mid_call_does_not_cause_a_second_send() {
    let app = spawn_app(&[]).await;
    app.fakes.slow_whatsapp(secs(0.5));
    let trace = trace_id();
    let impatient = reqwest::Client::builder().timeout(secs(0.2)).build().expect("a client");
    let hung_up = impatient.post(app.url("/api/workflow/execute")).json(&whatsapp_request(&trace)).send().await;
    assert!(hung_up.is_err(), "the caller gave up before the provider answered");
    assert_eq!(app.fakes.whatsapp_arrivals(), 1, "the provider call had started");

    eventually(secs(5.0), "the abandoned request is no longer in flight", async || {
        (app.metrics().await.get("workflow_in_flight_requests", &[]) == 0.0).then_some(())
    })
    .await;
    let retried = eventually(secs(5.0), "the retry is answered with the first execution's result", async || {
        let response = app.execute(&whatsapp_request(&trace)).await;
        (response.status != 409).then_some(response)
    })
    .await;

    assert_eq!(retried.status, 200, "{}", retried.text);
    assert_eq!(retried.header("idempotent-replayed"), Some("true"), "{}", retried.text);
    assert_eq!(retried.body["status"], "success", "{}", retried.text);
    assert_eq!(app.fakes.whatsapp_arrivals(), 1, "the message is sent once, whatever the caller does");
    app.wait_until_outboxes_drain().await;
    assert_eq!(app.bucket().trace_ids().len(), 1, "and audited once");
    assert_eq!(app.bucket().event_ids().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_and_different_payloads_get_422_whether_the_first_runs_or_is_done() {
    let app = spawn_app(&[]).await;
    app.fakes.slow_whatsapp(secs(0.3));
    let key = "core-msg-race";
    let trace = trace_id();
    let answers = futures_util::future::join_all((0..50).map(|n| {
        let mut request = whatsapp_request(&trace);
        request["data"]["payload"]["message"] = json!(format!("text number {n}"));
        let (http, url) = (app.http.clone(), app.url("/api/workflow/execute"));
        async move {
            let response = http.post(url).header("idempotency-key", key).json(&request).send().await.expect("answer");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    }))
    .await;

    let succeeded = answers.iter().filter(|(status, _)| *status == 200).count();
    let reused = answers
        .iter()
        .filter(|(status, body)| *status == 422 && body["error"]["code"] == "idempotency_key_reused")
        .count();
    assert_eq!((succeeded, reused), (1, 49), "one execution, 49 × 422 and no 409: {answers:#?}");
    assert_eq!(app.fakes.whatsapp_arrivals(), 1, "the provider is called once");
}
