//! OpenTelemetry export: what the executor sends to an OTLP/HTTP receiver (a [`SpanSink`] on
//! `127.0.0.1:0` that decodes the protobuf it is sent).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use pillar_sim::{Fault, FaultRule, Pillar};
use prost::Message;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::helpers::*;

/// One exported span, decoded.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
    error: bool,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// An OTLP/HTTP receiver that records every span it is sent.
struct SpanSink {
    address: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    task: JoinHandle<()>,
}

impl Drop for SpanSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SpanSink {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let router = axum::Router::new().route("/v1/traces", post(receive)).with_state(spans.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { address, spans, task }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("not poisoned").clone()
    }

    fn in_trace(&self, w3c_trace_id: &str) -> Vec<Span> {
        self.spans().into_iter().filter(|s| s.trace_id == w3c_trace_id).collect()
    }

    /// Waits until the trace holds spans `want` accepts, and returns them.
    async fn wait_for(&self, w3c_trace_id: &str, what: &str, want: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        eventually(secs(10.0), what, async || {
            let spans = self.in_trace(w3c_trace_id);
            want(&spans).then_some(spans)
        })
        .await
    }
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> axum::http::StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let mut decoded = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                decoded.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
                        .collect(),
                    error: span.status.is_some_and(|s| s.code == 2),
                });
            }
        }
    }
    spans.lock().expect("not poisoned").extend(decoded);
    axum::http::StatusCode::OK
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The W3C trace id the executor uses for a UUID trace id (its hex digits).
fn w3c(trace_id: &str) -> String {
    trace_id.replace('-', "")
}

fn exporting_to(sink: &SpanSink) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("OTEL_SERVICE_NAME", "executor-under-test".to_owned()),
    ]
}

fn env<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn delivered_to(spans: &[Span], sink: &str) -> usize {
    named(spans, "deliver event")
        .iter()
        .filter(|s| s.attribute("sink") == Some(sink) && s.attribute("outcome") == Some("delivered"))
        .count()
}

#[tokio::test]
async fn every_adapter_exports_the_request_span_with_its_provider_call_commit_and_one_delivery_per_pillar() {
    let sink = SpanSink::start().await;
    let vars = exporting_to(&sink);
    let app = spawn_app(&env(&vars)).await;
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

        let spans = sink
            .wait_for(&w3c(&trace), &format!("the {action} execution's spans"), |spans| {
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
    let sink = SpanSink::start().await;
    let vars = exporting_to(&sink);
    let app = spawn_app(&env(&vars)).await;
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let trace = trace_id();

    app.execute_with(&whatsapp_request(&trace), &[("traceparent", &format!("00-{caller_trace}-{caller_span}-01"))])
        .await
        .assert_success(&trace);

    let spans = sink
        .wait_for(caller_trace, "the request span in the caller's trace", |spans| {
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
    let sink = SpanSink::start().await;
    let vars = exporting_to(&sink);
    let app = spawn_app_with(Fakes::with_bucket_refused().await, &env(&vars)).await;
    let trace = trace_id();
    app.execute(&task_request(&trace)).await.assert_success(&trace);

    let failing = sink
        .wait_for(&w3c(&trace), "a failed delivery attempt to Bucket", |spans| {
            named(spans, "deliver event")
                .iter()
                .any(|s| s.attribute("sink") == Some("bucket") && s.attribute("outcome") == Some("unreachable"))
        })
        .await;
    let failed = named(&failing, "deliver event").into_iter().find(|s| s.attribute("sink") == Some("bucket")).cloned();
    assert!(failed.is_some_and(|s| s.error), "a failed attempt has an error status");

    app.bucket().come_up();

    let spans = sink
        .wait_for(&w3c(&trace), "the delivery to Bucket after it recovered", |spans| delivered_to(spans, "bucket") == 1)
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
    let sink = SpanSink::start().await;
    let endpoint = sink.endpoint();
    for off in [[("OTEL_SDK_DISABLED", "true")], [("OTEL_TRACES_EXPORTER", "none")]] {
        let mut vars = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
        vars.extend(off);
        let app = spawn_app(&vars).await;
        let trace = trace_id();
        app.execute(&task_request(&trace)).await.assert_success(&trace);
        app.wait_until_outboxes_drain().await;
        assert!(app.stop().await.result.is_ok());
    }
    // The same set-up with export on does reach the sink (so the silence above means something);
    // with a minute between scheduled exports, only the flush on shutdown sends them.
    let app =
        spawn_app(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "60000")]).await;
    let trace = trace_id();
    app.execute(&task_request(&trace)).await.assert_success(&trace);
    app.wait_until_outboxes_drain().await;
    assert!(sink.spans().is_empty(), "nothing exported yet: {:?}", sink.spans());
    assert!(app.stop().await.result.is_ok());
    assert!(!sink.in_trace(&w3c(&trace)).is_empty(), "spans are flushed on shutdown");
    assert!(sink.spans().iter().all(|s| s.trace_id == w3c(&trace)), "the disabled executors sent nothing");
}

#[tokio::test]
async fn a_failed_provider_call_is_an_error_span_with_its_error_code() {
    let sink = SpanSink::start().await;
    let vars = exporting_to(&sink);
    let app = spawn_app(&env(&vars)).await;
    app.fakes.set(FaultRule::new(Pillar::Providers, Fault::http_error(500)).route(WHATSAPP_PATH));
    let trace = trace_id();
    app.execute(&whatsapp_request(&trace)).await;

    let spans = sink.wait_for(&w3c(&trace), "the provider call span", |s| !named(s, "provider call").is_empty()).await;
    let call = named(&spans, "provider call")[0];
    assert!(call.error, "{call:?}");
    assert!(call.attribute("error_code").is_some_and(|c| c.starts_with("provider_")), "{call:?}");
}
