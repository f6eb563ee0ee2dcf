//! The trace receiver: spans sent to the control port over OTLP/HTTP, kept per trace.
//!
//! `POST /v1/traces` takes an OTLP `ExportTraceServiceRequest` in protobuf (what every OTLP/HTTP
//! exporter sends by default, the executor's included; decoded with `opentelemetry-proto`).
//! Spans are grouped by trace id in a bounded store like the journal: at most `max_traces`
//! traces (the oldest trace is evicted whole) and `max_spans` spans per trace (later ones are
//! dropped); both are counted, never silent. Traces are looked up by their W3C id or by the BHIV
//! trace id the executor derives it from (a UUID's hex digits, else the first 16 bytes of its
//! SHA-256), so `GET /traces/{trace_id}` takes an execution's `trace_id` as it is.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// Traces kept by default.
pub(crate) const DEFAULT_MAX_TRACES: usize = 1_000;
/// Spans kept per trace by default.
pub(crate) const DEFAULT_MAX_SPANS: usize = 512;

/// One received span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanRecord {
    /// W3C trace id (32 hex digits).
    pub trace_id: String,
    /// Span id (16 hex digits).
    pub span_id: String,
    /// Parent span id; empty for a root.
    pub parent_span_id: String,
    /// Span name (`workflow`, `provider call`, `store commit`, `deliver event`, ...).
    pub name: String,
    /// `service.name` of the sender.
    pub service: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    /// Start, nanoseconds since the epoch.
    pub start_unix_nano: u64,
    /// End, nanoseconds since the epoch.
    pub end_unix_nano: u64,
    /// `end - start` in milliseconds.
    pub duration_ms: f64,
    /// `ok`, `error` or `unset`.
    pub status: &'static str,
    /// The span's attributes (strings, numbers, booleans).
    pub attributes: BTreeMap<String, Value>,
}

impl SpanRecord {
    /// A string attribute.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
}

/// A trace as served: its spans ordered by start.
#[derive(Debug, Clone, Serialize)]
pub struct TraceView {
    /// W3C trace id.
    pub trace_id: String,
    /// Spans, by start time.
    pub spans: Vec<SpanRecord>,
    /// Spans of this trace dropped beyond the per-trace bound.
    pub dropped_spans: u64,
}

/// One line of the trace list.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    /// W3C trace id.
    pub trace_id: String,
    /// The BHIV trace id, when a span names it (`trace_id` attribute).
    pub bhiv_trace_id: Option<String>,
    /// The earliest span's name.
    pub root: String,
    /// How many spans are kept.
    pub span_count: usize,
    /// Earliest start, nanoseconds since the epoch.
    pub start_unix_nano: u64,
    /// From the earliest start to the latest end, milliseconds.
    pub duration_ms: f64,
    /// Whether any span has an error status.
    pub error: bool,
}

#[derive(Debug, Default)]
struct Stored {
    spans: Vec<SpanRecord>,
    dropped: u64,
}

#[derive(Debug, Default)]
struct Inner {
    traces: HashMap<String, Stored>,
    order: VecDeque<String>,
    received: u64,
    evicted_traces: u64,
    dropped_spans: u64,
}

/// The spans of one stack, per trace, bounded. Read it through [`crate::Stack::traces`].
#[derive(Debug)]
pub struct Traces {
    inner: Mutex<Inner>,
    max_traces: usize,
    max_spans: usize,
    pushed: Notify,
}

/// Why an export request was refused.
#[derive(Debug, thiserror::Error)]
#[error("not an OTLP ExportTraceServiceRequest in protobuf: {0}")]
pub(crate) struct DecodeError(String);

impl Default for Traces {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TRACES, DEFAULT_MAX_SPANS)
    }
}

impl Traces {
    /// A store of at most `max_traces` traces of at most `max_spans` spans each.
    pub fn new(max_traces: usize, max_spans: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_traces: max_traces.max(1),
            max_spans: max_spans.max(1),
            pushed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decodes an OTLP/HTTP protobuf body and keeps its spans; returns how many were received.
    pub(crate) fn receive_protobuf(&self, body: &[u8]) -> Result<usize, DecodeError> {
        let request = ExportTraceServiceRequest::decode(body).map_err(|e| DecodeError(e.to_string()))?;
        let mut spans = Vec::new();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| json_value(kv).as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned());
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
                    spans.push(SpanRecord {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        service: service.clone(),
                        kind: match span.kind {
                            1 => "internal",
                            2 => "server",
                            3 => "client",
                            4 => "producer",
                            5 => "consumer",
                            _ => "unspecified",
                        },
                        start_unix_nano: start,
                        end_unix_nano: end,
                        duration_ms: end.saturating_sub(start) as f64 / 1e6,
                        status: match span.status.map(|s| s.code) {
                            Some(1) => "ok",
                            Some(2) => "error",
                            _ => "unset",
                        },
                        attributes: span.attributes.iter().map(|kv| (kv.key.clone(), json_value(kv))).collect(),
                    });
                }
            }
        }
        let count = spans.len();
        self.push(spans);
        Ok(count)
    }

    fn push(&self, spans: Vec<SpanRecord>) {
        {
            let mut inner = self.lock();
            for span in spans {
                inner.received += 1;
                if !inner.traces.contains_key(&span.trace_id) {
                    if inner.order.len() == self.max_traces
                        && let Some(oldest) = inner.order.pop_front()
                    {
                        inner.traces.remove(&oldest);
                        inner.evicted_traces += 1;
                    }
                    inner.order.push_back(span.trace_id.clone());
                }
                let max_spans = self.max_spans;
                let stored = inner.traces.entry(span.trace_id.clone()).or_default();
                if stored.spans.len() < max_spans {
                    stored.spans.push(span);
                } else {
                    stored.dropped += 1;
                    inner.dropped_spans += 1;
                }
            }
        }
        self.pushed.notify_waiters();
    }

    /// The trace with this W3C id or BHIV trace id, its spans ordered by start.
    pub fn get(&self, trace_id: &str) -> Option<TraceView> {
        let w3c = w3c_trace_id(trace_id);
        let inner = self.lock();
        let stored = inner.traces.get(&w3c)?;
        let mut spans = stored.spans.clone();
        spans.sort_by_key(|s| (s.start_unix_nano, s.end_unix_nano));
        Some(TraceView { trace_id: w3c, spans, dropped_spans: stored.dropped })
    }

    /// The most recent traces first, at most `limit`.
    pub fn list(&self, limit: usize) -> Vec<TraceSummary> {
        let inner = self.lock();
        inner
            .order
            .iter()
            .rev()
            .filter_map(|id| inner.traces.get(id).map(|t| (id, t)))
            .take(limit)
            .map(|(id, stored)| {
                let first = stored.spans.iter().min_by_key(|s| s.start_unix_nano);
                let start = first.map_or(0, |s| s.start_unix_nano);
                let end = stored.spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(start);
                TraceSummary {
                    trace_id: id.clone(),
                    bhiv_trace_id: stored.spans.iter().find_map(|s| s.attribute("trace_id").map(str::to_owned)),
                    root: first.map(|s| s.name.clone()).unwrap_or_default(),
                    span_count: stored.spans.len(),
                    start_unix_nano: start,
                    duration_ms: end.saturating_sub(start) as f64 / 1e6,
                    error: stored.spans.iter().any(|s| s.status == "error"),
                }
            })
            .collect()
    }

    /// Counters: spans received, traces kept and evicted, spans dropped, and the bounds.
    pub fn stats(&self) -> Value {
        let inner = self.lock();
        json!({
            "spans_received": inner.received,
            "traces": inner.order.len(),
            "evicted_traces": inner.evicted_traces,
            "dropped_spans": inner.dropped_spans,
            "max_traces": self.max_traces,
            "max_spans_per_trace": self.max_spans,
        })
    }

    /// Forgets every trace (the counters stay).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.traces.clear();
        inner.order.clear();
    }

    /// Waits until the trace satisfies `predicate`, for at most `timeout`; returns it then.
    pub async fn wait_for(
        &self,
        trace_id: &str,
        timeout: Duration,
        predicate: impl Fn(&TraceView) -> bool,
    ) -> Option<TraceView> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pushed = self.pushed.notified();
            if let Some(view) = self.get(trace_id).filter(|v| predicate(v)) {
                return Some(view);
            }
            if tokio::time::timeout_at(deadline, pushed).await.is_err() {
                return self.get(trace_id).filter(|v| predicate(v));
            }
        }
    }
}

/// The W3C trace id for a BHIV trace id (the executor's mapping, written independently here so
/// a change on either side fails a test): a 32-hex-digit id (dashes ignored) as is, lowercased;
/// anything else hashed.
pub(crate) fn w3c_trace_id(trace_id: &str) -> String {
    let digits: String = trace_id.chars().filter(|c| *c != '-').collect();
    if digits.len() == 32 && digits.bytes().all(|b| b.is_ascii_hexdigit()) && digits.bytes().any(|b| b != b'0') {
        return digits.to_ascii_lowercase();
    }
    hex(&Sha256::digest(trace_id.as_bytes())[..16])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn json_value(kv: &KeyValue) -> Value {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => json!(s),
        Some(AnyValue::BoolValue(b)) => json!(b),
        Some(AnyValue::IntValue(i)) => json!(i),
        Some(AnyValue::DoubleValue(d)) => json!(d),
        Some(_) => json!("[not recorded]"),
        None => Value::Null,
    }
}

/// A terminal waterfall of a trace: one line per span, indented under its parent, with a bar
/// placed on the trace's time line.
pub fn waterfall(trace: &Value, width: usize) -> String {
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let mut out = format!("trace {}  ({} spans)\n", trace["trace_id"].as_str().unwrap_or("?"), spans.len());
    if spans.is_empty() {
        return out;
    }
    let num = |s: &Value, k: &str| s[k].as_u64().unwrap_or(0);
    let start = spans.iter().map(|s| num(s, "start_unix_nano")).min().unwrap_or(0);
    let end = spans.iter().map(|s| num(s, "end_unix_nano")).max().unwrap_or(start).max(start + 1);
    let ids: Vec<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
    let mut children: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut roots = Vec::new();
    for span in &spans {
        let parent = span["parent_span_id"].as_str().unwrap_or("");
        if parent.is_empty() || !ids.contains(&parent) {
            roots.push(span);
        } else {
            children.entry(parent).or_default().push(span);
        }
    }
    let mut lines = Vec::new();
    let mut stack: Vec<(&Value, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
    while let Some((span, depth)) = stack.pop() {
        lines.push((span, depth));
        if let Some(kids) = span["span_id"].as_str().and_then(|id| children.get(id)) {
            stack.extend(kids.iter().rev().map(|s| (*s, depth + 1)));
        }
    }
    let label_width = lines.iter().map(|(s, d)| d * 2 + label(s).chars().count()).max().unwrap_or(0).min(48);
    let scale = |t: u64| ((t - start) as f64 / (end - start) as f64 * width as f64) as usize;
    for (span, depth) in lines {
        let name = format!("{}{}", "  ".repeat(depth), label(span));
        let from = scale(num(span, "start_unix_nano")).min(width.saturating_sub(1));
        let to = scale(num(span, "end_unix_nano")).clamp(from + 1, width);
        let mark = if span["status"] == "error" { '!' } else { '█' };
        let bar: String = (0..width).map(|i| if i >= from && i < to { mark } else { ' ' }).collect();
        let ms = span["duration_ms"].as_f64().unwrap_or(0.0);
        out.push_str(&format!("{name:<label_width$} |{bar}| {ms:>9.3} ms\n"));
    }
    out
}

fn label(span: &Value) -> String {
    let name = span["name"].as_str().unwrap_or("?");
    let attribute = |k: &str| span["attributes"][k].as_str();
    match (attribute("sink"), attribute("outcome"), attribute("action_type")) {
        (Some(sink), Some(outcome), _) => format!("{name} {sink} ({outcome})"),
        (None, _, Some(action)) => format!("{name} [{action}]"),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: &str, id: &str, name: &str) -> SpanRecord {
        SpanRecord {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: String::new(),
            name: name.into(),
            service: "s".into(),
            kind: "internal",
            start_unix_nano: 1,
            end_unix_nano: 2,
            duration_ms: 0.0,
            status: "unset",
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn the_oldest_trace_is_evicted_and_spans_beyond_the_bound_dropped_and_both_counted() {
        let traces = Traces::new(2, 2);
        let (a, b, c) = ("a".repeat(32), "b".repeat(32), "c".repeat(32));
        traces.push(vec![span(&a, "1", "x"), span(&a, "2", "y"), span(&a, "3", "z")]);
        traces.push(vec![span(&b, "1", "x")]);
        assert_eq!(traces.get(&a).expect("kept").spans.len(), 2);
        assert_eq!(traces.get(&a).expect("kept").dropped_spans, 1);
        traces.push(vec![span(&c, "1", "x")]);
        assert!(traces.get(&a).is_none(), "the oldest trace is evicted");
        assert!(traces.get(&b).is_some() && traces.get(&c).is_some());
        let stats = traces.stats();
        assert_eq!((stats["evicted_traces"].as_u64(), stats["dropped_spans"].as_u64()), (Some(1), Some(1)));
        assert_eq!(traces.list(10)[0].trace_id, c, "most recent first");
    }

    #[test]
    fn traces_are_found_by_their_bhiv_trace_id() {
        assert_eq!(w3c_trace_id("4bf92f35-77b3-4da6-a3ce-929d0e0e4736"), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(w3c_trace_id("trace-abc").len(), 32);
        assert_eq!(
            w3c_trace_id("trace-abc"),
            workflow_executor::trace::w3c_trace_id("trace-abc"),
            "the executor derives the same id"
        );
        assert!(Traces::default().receive_protobuf(b"\xff\xff not protobuf").is_err());
    }

    #[test]
    fn the_waterfall_indents_children_under_their_parent() {
        let trace = json!({"trace_id": "t", "spans": [
            {"span_id": "a", "parent_span_id": "ff", "name": "workflow", "start_unix_nano": 0, "end_unix_nano": 100,
             "duration_ms": 0.0001, "attributes": {"action_type": "task"}},
            {"span_id": "b", "parent_span_id": "a", "name": "store commit", "start_unix_nano": 50, "end_unix_nano": 90,
             "duration_ms": 0.00004, "attributes": {}},
            {"span_id": "c", "parent_span_id": "ff", "name": "deliver event", "start_unix_nano": 100, "end_unix_nano": 200,
             "duration_ms": 0.0001, "status": "error", "attributes": {"sink": "bucket", "outcome": "unreachable"}},
        ]});
        let text = waterfall(&trace, 20);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("workflow [task]"), "{text}");
        assert!(lines[2].starts_with("  store commit"), "{text}");
        assert!(lines[3].starts_with("deliver event bucket (unreachable)") && lines[3].contains('!'), "{text}");
    }
}
