//! OpenTelemetry export: the executor's spans sent as OTLP over HTTP, off unless an endpoint is set.
//!
//! Design, in short:
//!
//! - **Per application, not per process.** [`Telemetry`] owns a tracer provider and a
//!   [`Dispatch`] (an OpenTelemetry layer, plus the process's log layer when
//!   [`crate::logging`] set one up). The application runs its serving and background futures
//!   under that dispatch, so several executors in one process (the simulator's stacks in tests)
//!   each export to their own endpoint. Without an endpoint nothing is built and nothing wraps
//!   anything: the cost is zero.
//! - **Never on the request path.** Spans end into the SDK's batch processor (a bounded queue
//!   drained by its own thread every `OTEL_BSP_SCHEDULE_DELAY`); a full queue drops spans rather
//!   than waiting. The batch thread posts through the executor's reqwest client on the tokio
//!   runtime ([`RuntimeClient`]). Shutdown flushes what is queued.
//! - **One trace with the caller.** The request span continues the incoming `traceparent`, or,
//!   without one, the trace derived from the body's `trace_id` exactly as outbound headers are
//!   ([`crate::trace::w3c_trace_id`]), under a stable stand-in for the caller's span. Delivery
//!   attempts run later, from the outbox, which keeps the `trace_id`: their spans join the same
//!   derived trace under the same stand-in parent, so a waterfall shows them with the request.
//! - **No content.** Spans carry ids, action types, sinks, statuses and error codes; never a
//!   message body, subject, prompt or recipient.

use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry::trace::{Link, SpanKind};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingResult, SdkTracerProvider, ShouldSample,
};
use sha2::{Digest, Sha256};
use tracing::Dispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

use crate::config::{SamplerSetting, TelemetrySettings};

/// How many applications in this process export spans (outbound headers consult the current
/// span only when some do).
static EXPORTING: AtomicUsize = AtomicUsize::new(0);

/// Whether any executor in this process exports spans.
pub fn active() -> bool {
    EXPORTING.load(Ordering::Relaxed) > 0
}

/// Why span export could not be set up (a configuration problem, named by its variable).
#[derive(Debug, thiserror::Error)]
#[error("cannot export spans to {endpoint} (set by OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT): {message}")]
pub struct TelemetryError {
    endpoint: String,
    message: String,
}

/// An application's span export: its tracer provider and the dispatch its futures run under.
pub struct Telemetry {
    provider: SdkTracerProvider,
    dispatch: Dispatch,
}

impl Telemetry {
    /// Builds the exporter when `settings` names an endpoint; `None` (and no cost) otherwise.
    /// Must be called inside a tokio runtime: exports are sent on it.
    pub fn build(settings: &TelemetrySettings) -> Result<Option<Self>, TelemetryError> {
        let Some(endpoint) = &settings.endpoint else { return Ok(None) };
        let error = |message: String| TelemetryError { endpoint: endpoint.to_string(), message };
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| error(e.to_string()))?;
        let client = reqwest::Client::builder().timeout(settings.timeout).build().map_err(|e| error(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.as_str())
            .with_timeout(settings.timeout)
            .with_http_client(RuntimeClient { client, runtime })
            .build()
            .map_err(|e| error(e.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(settings.schedule_delay)
            .with_max_queue_size(settings.max_queue)
            .build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler(settings.sampler))
            .with_resource(Resource::builder_empty().with_service_name(settings.service_name.clone()).build())
            .build();
        let tracer = provider.tracer("workflow-executor");
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            // Parents come from the tracing spans; attaching an OpenTelemetry context on every
            // poll of every instrumented future costs time and serves nothing here.
            .with_context_activation(false)
            // Spans only: log events stay in the log, not in exported spans (each would be an
            // allocation-heavy span event on the request path).
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span()
                    && meta.target().starts_with("workflow_executor")
                    && *meta.level() <= tracing::Level::INFO
            }));
        let subscriber = tracing_subscriber::registry().with(otel).with(crate::logging::scoped_layer());
        EXPORTING.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Self { provider, dispatch: Dispatch::new(subscriber) }))
    }

    /// The dispatch the application's futures run under.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// Exports what is queued and stops the exporter (off the runtime's threads: the flush
    /// blocks until the batch thread's last export, which runs on the runtime).
    pub async fn shutdown(self) {
        let provider = self.provider.clone();
        drop(self);
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "span export did not flush cleanly"),
            Err(error) => tracing::warn!(%error, "span export shutdown failed"),
        }
    }
}

/// The `tracestate` key that marks the stand-in parent of a trace known only by its BHIV id.
const STAND_IN: &str = "bhiv";

impl Drop for Telemetry {
    fn drop(&mut self) {
        EXPORTING.fetch_sub(1, Ordering::Relaxed);
    }
}

fn sampler(setting: SamplerSetting) -> CallerAware {
    let root = match setting {
        SamplerSetting::AlwaysOn | SamplerSetting::ParentBasedAlwaysOn => Sampler::AlwaysOn,
        SamplerSetting::AlwaysOff | SamplerSetting::ParentBasedAlwaysOff => Sampler::AlwaysOff,
        SamplerSetting::Ratio(ratio) | SamplerSetting::ParentBasedRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
    };
    let parent_based = matches!(
        setting,
        SamplerSetting::ParentBasedAlwaysOn
            | SamplerSetting::ParentBasedAlwaysOff
            | SamplerSetting::ParentBasedRatio(_)
    );
    CallerAware { parent_based: parent_based.then(|| Sampler::ParentBased(Box::new(root.clone()))), root }
}

/// The configured sampler, except that a stand-in parent (no caller `traceparent`) counts as no
/// parent: the root sampler decides, by trace id, so a request and its later deliveries agree.
#[derive(Debug, Clone)]
struct CallerAware {
    parent_based: Option<Sampler>,
    root: Sampler,
}

impl ShouldSample for CallerAware {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let stand_in = parent.is_some_and(|cx| cx.span().span_context().trace_state().get(STAND_IN).is_some());
        match &self.parent_based {
            Some(parent_based) if !stand_in => {
                parent_based.should_sample(parent, trace_id, name, kind, attributes, links)
            }
            _ => self.root.should_sample(None, trace_id, name, kind, attributes, links),
        }
    }
}

/// The OTLP client: the batch thread is not a tokio thread, so each export is spawned on the
/// runtime (where reqwest's connections live) and awaited from there.
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let send = async move {
            let response =
                client.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
            let mut answer = Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                *headers = response.headers().clone();
            }
            let body = response.bytes().await?;
            Ok::<_, HttpError>(answer.body(body)?)
        };
        self.runtime.spawn(send).await?
    }
}

/// Makes `span` (a request's span) continue the caller's trace: the `traceparent` header when it
/// is valid, else the trace derived from `trace_id`.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, trace_id: &str) {
    let parent = traceparent.and_then(parse_traceparent).unwrap_or_else(|| derived_parent(trace_id));
    let _ = span.set_parent(Context::new().with_remote_span_context(parent));
}

/// Puts `span` (a delivery attempt, running after the request) in the trace derived from the
/// event's `trace_id`, under the same stand-in parent as a request that came without
/// `traceparent`.
pub fn join_trace(span: &tracing::Span, trace_id: &str) {
    let _ = span.set_parent(Context::new().with_remote_span_context(derived_parent(trace_id)));
}

/// The current span's `traceparent`, when it is exported (outbound calls then name it as parent).
pub fn current_traceparent() -> Option<String> {
    if !active() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// The remote parent for a trace known only by its BHIV id: its W3C trace id and a span id
/// derived from it (stable, so every span of the trace hangs under the same stand-in).
fn derived_parent(trace_id: &str) -> SpanContext {
    let trace = TraceId::from_hex(&crate::trace::w3c_trace_id(trace_id)).unwrap_or(TraceId::INVALID);
    let digest = Sha256::digest(format!("caller-span:{trace_id}").as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    let state = TraceState::from_key_value([(STAND_IN, "derived")]).unwrap_or_default();
    SpanContext::new(trace, SpanId::from_bytes(id), TraceFlags::SAMPLED, true, state)
}

/// A valid W3C `traceparent` (version 00) as a remote span context.
fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if version != "00"
        || parts.next().is_some()
        || !lower_hex(trace, 32)
        || !lower_hex(span, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let context = SpanContext::new(trace, span, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::SamplingDecision;

    use super::*;

    #[test]
    fn traceparents_are_parsed_strictly() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(valid).expect("valid");
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_remote() && context.is_sampled());
        for invalid in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(invalid).is_none(), "{invalid}");
        }
    }

    #[test]
    fn a_stand_in_parent_leaves_the_decision_to_the_root_sampler_and_a_caller_s_parent_is_followed() {
        let decide = |setting, parent: SpanContext| {
            let cx = Context::new().with_remote_span_context(parent.clone());
            sampler(setting)
                .should_sample(Some(&cx), parent.trace_id(), "workflow", &SpanKind::Server, &[], &[])
                .decision
        };
        let caller = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        let unsampled_caller =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        let stand_in = derived_parent("order-7");
        assert_eq!(decide(SamplerSetting::ParentBasedRatio(0.0), stand_in.clone()), SamplingDecision::Drop);
        assert_eq!(decide(SamplerSetting::ParentBasedRatio(1.0), stand_in.clone()), SamplingDecision::RecordAndSample);
        assert_eq!(decide(SamplerSetting::ParentBasedRatio(0.0), caller), SamplingDecision::RecordAndSample);
        assert_eq!(decide(SamplerSetting::ParentBasedAlwaysOn, unsampled_caller), SamplingDecision::Drop);
        assert_eq!(decide(SamplerSetting::ParentBasedAlwaysOn, stand_in.clone()), SamplingDecision::RecordAndSample);
        assert_eq!(decide(SamplerSetting::AlwaysOff, stand_in), SamplingDecision::Drop);
    }

    #[test]
    fn a_derived_parent_is_stable_and_in_the_outbound_trace() {
        let a = derived_parent("core-task-42");
        assert_eq!(a, derived_parent("core-task-42"));
        assert_eq!(a.trace_id().to_string(), crate::trace::w3c_trace_id("core-task-42"));
        assert_ne!(a.span_id(), derived_parent("core-task-43").span_id());
        assert!(a.is_valid() && a.is_remote());
    }
}
