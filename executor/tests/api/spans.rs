//! OpenTelemetry export: what the executor sends to an OTLP/HTTP receiver (the stack's, on its
//! control port, which decodes the protobuf it is sent and keeps the spans per trace).

use pillar_sim::{Fault, FaultRule, Pillar, SpanRecord};
use serde_json::json;

use crate::helpers::*;

/// The fakes with the stack's OTLP/HTTP receiver (on its control port).
async fn with_receiver() -> Fakes {
    Fakes::start_with(test_support::neighbours_builder().control(true)).await
}

/// The variables that make an executor export its spans to the stack's receiver, promptly.
fn exporting_to(fakes: &Fakes) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver(fakes)),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("OTEL_SERVICE_NAME", "executor-under-test".to_owned()),
    ]
}

/// The receiver's base URL.
fn receiver(fakes: &Fakes) -> String {
    fakes.stack.control_url().expect("the control port is served")
}

/// The spans the receiver holds of one trace.
fn in_trace(fakes: &Fakes, w3c_trace_id: &str) -> Vec<SpanRecord> {
    fakes.stack.traces().get(w3c_trace_id).map(|trace| trace.spans).unwrap_or_default()
}

/// Waits until the trace holds spans `want` accepts, and returns them.
async fn wait_for(
    fakes: &Fakes,
    w3c_trace_id: &str,
    what: &str,
    want: impl Fn(&[SpanRecord]) -> bool,
) -> Vec<SpanRecord> {
    eventually(secs(10.0), what, async || {
        let spans = in_trace(fakes, w3c_trace_id);
        want(&spans).then_some(spans)
    })
    .await
}

/// Whether a span ended with an error status.
fn failed(span: &SpanRecord) -> bool {
    span.status == "error"
}

/// The W3C trace id the executor uses for a UUID trace id (its hex digits).
fn w3c(trace_id: &str) -> String {
    trace_id.replace('-', "")
}

fn env<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn named<'a>(spans: &'a [SpanRecord], name: &str) -> Vec<&'a SpanRecord> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn delivered_to(spans: &[SpanRecord], sink: &str) -> usize {
    named(spans, "deliver event")
        .iter()
        .filter(|s| s.attribute("sink") == Some(sink) && s.attribute("outcome") == Some("delivered"))
        .count()
}

#[tokio::test]
async fn every_adapter_exports_the_request_span_with_its_provider_call_commit_and_one_delivery_per_pillar() {
    let fakes = with_receiver().await;
    let vars = exporting_to(&fakes);
    let app = spawn_app_with(fakes, &env(&vars)).await;
    let requests = [
        ("task", json!({"action_type": "task", "title": "Call the bank", "user_id": "u-1"})),
        (
            "whatsapp",
            json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": "Your order has shipped"}),
        ),
        (
            "email",
            json!({"action_type": "email", "recipient": "alice@example.com", "subject": "Secret subject",
                   "body": "Secret body"}),
        ),
        ("ai", json!({"action_type": "ai", "prompt": "my private prompt"})),
    ];
    for (action, payload) in requests {
        let trace = trace_id();
        app.execute(&workflow(&trace, payload)).await.assert_success(&trace);

        let spans = wait_for(&app.fakes, &w3c(&trace), &format!("the {action} execution's spans"), |spans| {
            !named(spans, "workflow").is_empty()
                && delivered_to(spans, "bucket") == 1
                && delivered_to(spans, "karma") == 1
        })
        .await;

        let root = named(&spans, "workflow");
        assert_eq!(root.len(), 1, "{action}: one request span: {spans:#?}");
        let root = root[0];
        assert_eq!(root.service, "executor-under-test");
        assert_eq!(root.attribute("trace_id"), Some(trace.as_str()));
        assert_eq!(root.attribute("action_type"), Some(action));
        for child in ["provider call", "store commit"] {
            let found = named(&spans, child);
            assert_eq!(found.len(), 1, "{action}: one {child} span: {spans:#?}");
            assert_eq!(found[0].parent_span_id, root.span_id, "{action}: {child} is a child of the request span");
        }
        assert_eq!(named(&spans, "provider call")[0].attribute("action_type"), Some(action));
        for delivery in named(&spans, "deliver event") {
            assert_eq!(delivery.parent_span_id, root.parent_span_id, "deliveries hang in the request's trace");
        }
        let everything = format!("{spans:?}");
        for secret in ["+919876543210", "Your order has shipped", "alice@example.com", "Secret", "private prompt"] {
            assert!(!everything.contains(secret), "{action}: spans carry no content ({secret}): {everything}");
        }
    }
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued_and_the_provider_sees_its_call_span_as_parent() {
    let fakes = with_receiver().await;
    let vars = exporting_to(&fakes);
    let app = spawn_app_with(fakes, &env(&vars)).await;
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let trace = trace_id();

    app.execute_with(&whatsapp_request(&trace), &[("traceparent", &format!("00-{caller_trace}-{caller_span}-01"))])
        .await
        .assert_success(&trace);

    let spans = wait_for(&app.fakes, caller_trace, "the request span in the caller's trace", |spans| {
        !named(spans, "workflow").is_empty() && !named(spans, "provider call").is_empty()
    })
    .await;
    let root = named(&spans, "workflow")[0];
    assert_eq!(root.parent_span_id, caller_span, "the caller's span is the parent");
    let call = named(&spans, "provider call")[0];
    let sent = app.fakes.whatsapp_calls();
    let traceparent = sent[0].headers.get("traceparent").expect("a traceparent");
    assert_eq!(*traceparent, format!("00-{caller_trace}-{}-01", call.span_id));
}

#[tokio::test]
async fn delivery_attempts_during_an_outage_and_after_it_are_spans_of_the_execution_trace() {
    let fakes = with_receiver().await;
    fakes.bucket().refuse();
    let vars = exporting_to(&fakes);
    let app = spawn_app_with(fakes, &env(&vars)).await;
    let trace = trace_id();
    app.execute(&task_request(&trace)).await.assert_success(&trace);

    let failing = wait_for(&app.fakes, &w3c(&trace), "a failed delivery attempt to Bucket", |spans| {
        named(spans, "deliver event")
            .iter()
            .any(|s| s.attribute("sink") == Some("bucket") && s.attribute("outcome") == Some("unreachable"))
    })
    .await;
    let failed = named(&failing, "deliver event").into_iter().find(|s| s.attribute("sink") == Some("bucket")).cloned();
    assert!(failed.is_some_and(|s| s.status == "error"), "a failed attempt has an error status");

    app.bucket().come_up();

    let spans = wait_for(&app.fakes, &w3c(&trace), "the delivery to Bucket after it recovered", |spans| {
        delivered_to(spans, "bucket") == 1
    })
    .await;
    let outcomes: Vec<&str> = named(&spans, "deliver event")
        .iter()
        .filter(|s| s.attribute("sink") == Some("bucket"))
        .filter_map(|s| s.attribute("outcome"))
        .collect();
    assert!(outcomes.len() >= 2 && outcomes.contains(&"unreachable"), "every attempt is a span: {outcomes:?}");
    let root = named(&spans, "workflow")[0];
    assert!(named(&spans, "deliver event").iter().all(|s| s.parent_span_id == root.parent_span_id));
}

#[tokio::test]
async fn nothing_is_exported_when_export_is_off() {
    let mut fakes = with_receiver().await;
    let endpoint = receiver(&fakes);
    for off in [[("OTEL_SDK_DISABLED", "true")], [("OTEL_TRACES_EXPORTER", "none")]] {
        let mut vars = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
        vars.extend(off);
        let app = spawn_app_with(fakes, &vars).await;
        let trace = trace_id();
        app.execute(&task_request(&trace)).await.assert_success(&trace);
        app.wait_until_outboxes_drain().await;
        let stopped = app.stop().await;
        assert!(stopped.result.is_ok());
        fakes = stopped.fakes;
    }
    // The same set-up with export on does reach the receiver (so the silence above means
    // something); with a minute between scheduled exports, only the flush on shutdown sends them.
    let settings = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "60000")];
    let app = spawn_app_with(fakes, &settings).await;
    let trace = trace_id();
    app.execute(&task_request(&trace)).await.assert_success(&trace);
    app.wait_until_outboxes_drain().await;
    let traces = app.fakes.stack.traces().list(usize::MAX);
    assert!(traces.is_empty(), "nothing exported yet: {traces:?}");
    let stopped = app.stop().await;
    assert!(stopped.result.is_ok());
    assert!(!in_trace(&stopped.fakes, &w3c(&trace)).is_empty(), "spans are flushed on shutdown");
    let traces = stopped.fakes.stack.traces().list(usize::MAX);
    assert!(traces.iter().all(|t| t.trace_id == w3c(&trace)), "the disabled executors sent nothing: {traces:?}");
}

#[tokio::test]
async fn a_failed_provider_call_is_an_error_span_with_its_error_code() {
    let fakes = with_receiver().await;
    let vars = exporting_to(&fakes);
    let app = spawn_app_with(fakes, &env(&vars)).await;
    app.fakes.set(FaultRule::new(Pillar::Providers, Fault::http_error(500)).route(WHATSAPP_PATH));
    let trace = trace_id();
    app.execute(&whatsapp_request(&trace)).await;

    let spans =
        wait_for(&app.fakes, &w3c(&trace), "the provider call span", |s| !named(s, "provider call").is_empty()).await;
    let call = named(&spans, "provider call")[0];
    assert!(failed(call), "{call:?}");
    assert!(call.attribute("error_code").is_some_and(|c| c.starts_with("provider_")), "{call:?}");
}
