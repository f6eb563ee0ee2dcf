//! The one fault-rule schema shared by the control API, the CLI, scenario files and the Rust API.
//!
//! A rule names a pillar, optionally narrows it to a route and method, says what goes wrong
//! (`kind` and its parameters), how often (`probability`) and for how long (`for` a duration
//! and/or `count` matching requests). On the wire a rule is one flat JSON object:
//!
//! ```json
//! {"id": "slow-writes", "pillar": "bucket", "route": "/core/write-event", "method": "POST",
//!  "kind": "latency", "dist": "lognormal", "p50_ms": 40, "p99_ms": 400,
//!  "probability": 0.5, "for": "30s", "count": 100}
//! ```
//!
//! | kind | parameters | effect |
//! |---|---|---|
//! | `latency` | `dist`: `fixed` (`ms`), `uniform` (`min_ms`, `max_ms`), `normal` (`mean_ms`, `stddev_ms`), `lognormal` (`p50_ms`, `p99_ms`) | the answer is delayed by a drawn time (before the handler runs) |
//! | `http_error` | `status` (400–599), `retry_after_s` | answered with that status and the pillar's own error body; 429 and 503 carry `Retry-After` (1 s unless given) |
//! | `refuse` | — | the port stops listening (connections are refused) and open connections are dropped; it listens again when the rule ends |
//! | `blackhole` | — | the request is read and never answered |
//! | `reset` | — | the connection is reset (TCP RST) after the request is read |
//! | `slow_body` | `bytes_per_sec` | the answer's body trickles at that rate |
//! | `truncated_body` | — | the body stops halfway through its announced `Content-Length` and the connection closes |
//! | `malformed_json` | — | the body is cut into JSON that does not parse (with a correct `Content-Length`) |
//! | `drop_after` | `bytes` (0 or more) | the first `bytes` bytes of the answer (head included) are sent, then the connection closes (EOF) |
//! | `answer` | `status` (200–599), `body` (any JSON value but `null`, at most 64 KiB serialized) | answered with that status and that JSON body (`Content-Type: application/json`) instead of the pillar's handler: a pillar that says something else than it would. HTTP only |
//!
//! **Adding a kind.** A kind is its variant of [`Fault`] in `src/faults/fault.rs` (serde derives
//! its JSON: the variant's snake_case name is `kind`, its fields are the parameters) and its arm
//! in `Fault::define` there (its checks and its effect: a delay, an early end, a body spoiler, or
//! the whole port, applied by `src/serving/middleware.rs` and `src/serving/listener.rs`), plus its
//! flag in the binary's `FaultRuleArgs` (`src/cli.rs`) when it has a parameter; and its line in
//! the table above.
//!
//! `route` is an exact path, or a prefix when it ends with `*` (`/core/*`). A `refuse` rule covers
//! the whole port, so it takes no route, method, probability or count. For the SMTP sink a
//! "request" is one mail transaction (decided when the message's final `.` arrives), `http_error`'s
//! status is sent as the SMTP reply code, and the body kinds and `answer` do not apply.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::response::Parts;
use axum::http::{HeaderValue, header};
use futures_util::stream;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};

use crate::faults::rng::Draws;
use crate::faults::schema::{Fields, SpecError, format_duration};
use crate::pillar::Pillar;

/// The longest latency a rule may inject (ten minutes).
pub(crate) const MAX_LATENCY_MS: f64 = 600_000.0;

/// The largest `answer` body, serialized.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// z-score of the 99th percentile of the standard normal distribution.
const Z_99: f64 = 2.326_347_874_040_841;

/// How an injected delay is drawn (`dist` on the wire; `fixed` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "lowercase")]
pub enum Latency {
    /// Always the same delay.
    Fixed {
        /// Milliseconds.
        ms: f64,
    },
    /// Uniform between two bounds.
    Uniform {
        /// Lower bound, milliseconds.
        min_ms: f64,
        /// Upper bound, milliseconds.
        max_ms: f64,
    },
    /// Normal, clamped at zero.
    Normal {
        /// Mean, milliseconds.
        mean_ms: f64,
        /// Standard deviation, milliseconds.
        stddev_ms: f64,
    },
    /// Log-normal, fitted so that its median and 99th percentile are the given values.
    LogNormal {
        /// Median, milliseconds.
        p50_ms: f64,
        /// 99th percentile, milliseconds.
        p99_ms: f64,
    },
}

impl Latency {
    /// The delay for one match, from its draws (uniform draws 1 and 2 are used).
    pub(crate) fn sample_ms(&self, draws: &Draws) -> f64 {
        let ms = match *self {
            Latency::Fixed { ms } => ms,
            Latency::Uniform { min_ms, max_ms } => min_ms + draws.uniform(1) * (max_ms - min_ms),
            Latency::Normal { mean_ms, stddev_ms } => mean_ms + stddev_ms * draws.standard_normal(1),
            Latency::LogNormal { p50_ms, p99_ms } => {
                let sigma = (p99_ms.ln() - p50_ms.ln()) / Z_99;
                (p50_ms.ln() + sigma * draws.standard_normal(1)).exp()
            }
        };
        ms.clamp(0.0, MAX_LATENCY_MS)
    }

    fn validate(self) -> Result<(), SpecError> {
        let range = 0.0..=MAX_LATENCY_MS;
        match self {
            Latency::Fixed { ms } => in_range("ms", ms, range),
            Latency::Uniform { min_ms, max_ms } => {
                in_range("min_ms", min_ms, range.clone())?;
                in_range("max_ms", max_ms, range)?;
                ordered("max_ms", "min_ms", min_ms, max_ms)
            }
            Latency::Normal { mean_ms, stddev_ms } => {
                in_range("mean_ms", mean_ms, range.clone())?;
                in_range("stddev_ms", stddev_ms, range)
            }
            Latency::LogNormal { p50_ms, p99_ms } => {
                in_range("p50_ms", p50_ms, 0.001..=MAX_LATENCY_MS)?;
                in_range("p99_ms", p99_ms, 0.001..=MAX_LATENCY_MS)?;
                ordered("p99_ms", "p50_ms", p50_ms, p99_ms)
            }
        }
    }
}

/// `dist` is optional on the wire and defaults to `fixed`.
fn latency_with_default_dist<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Latency, D::Error> {
    let mut fields = Map::<String, Value>::deserialize(deserializer)?;
    fields.entry("dist").or_insert_with(|| json!("fixed"));
    Latency::deserialize(Value::Object(fields)).map_err(|e| match e.to_string().strip_prefix("unknown variant ") {
        Some(rest) => serde::de::Error::custom(format!(
            "dist: unknown distribution {}; expected fixed, uniform, normal or lognormal",
            rest.split(',').next().unwrap_or_default()
        )),
        None => serde::de::Error::custom(e),
    })
}

/// What goes wrong: one variant per fault kind. Its JSON shape (the `kind` tag and its
/// parameters) is derived; its checks and its effect are its arm in `Fault::define`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Delay the answer.
    #[serde(deserialize_with = "latency_with_default_dist")]
    Latency(Latency),
    /// Answer with an error status.
    HttpError {
        /// 400–599 (for the SMTP sink: the SMTP reply code).
        status: u16,
        /// `Retry-After` seconds; 429 and 503 default to 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_s: Option<u64>,
    },
    /// Stop listening: connections are refused until the rule ends.
    Refuse,
    /// Read the request, never answer.
    Blackhole,
    /// Reset the connection (TCP RST) after reading the request.
    Reset,
    /// Trickle the body.
    SlowBody {
        /// Bytes per second, at least 1.
        bytes_per_sec: u64,
    },
    /// Stop the body halfway through its announced length and close the connection.
    TruncatedBody,
    /// Send a body that is not valid JSON.
    MalformedJson,
    /// Send the first `bytes` bytes of the answer (head included), then close the connection.
    DropAfter {
        /// Bytes of the answer that reach the client, at least 0.
        bytes: u64,
    },
    /// Answer with this status and JSON body instead of running the pillar's handler.
    Answer {
        /// 200–599.
        status: u16,
        /// The answer's body (any JSON value but `null`), at most 64 KiB serialized.
        body: Value,
    },
}

/// What ends a request early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Blackhole,
    Reset,
    Error {
        status: u16,
        retry_after_s: Option<u64>,
    },
    /// A JSON answer: its status and its serialized body. HTTP only.
    Answer {
        status: u16,
        body: Bytes,
    },
}

/// Rewrites an answer on its way out: its head (to adjust), its buffered body, and the
/// connection it leaves on (absent on in-process calls).
pub(crate) type Spoil = Box<dyn FnOnce(&mut Parts, Bytes, Option<&dyn ConnectionControl>) -> Body + Send>;

/// What a body fault can do to the connection an answer leaves on. The serving layer's
/// per-connection handle implements it, so the fault model does not depend on the serving layer.
pub(crate) trait ConnectionControl {
    /// Lets `bytes` more bytes out, then ends the connection (a close, not a reset).
    fn drop_after(&self, bytes: u64);
}

/// What a fault does when it hits.
pub(crate) enum Effect {
    /// Delay the answer (before the handler runs); delays of several rules add up.
    Delay(Latency),
    /// End the request instead of running the handler; the first that hits wins.
    End(Action),
    /// Spoil the answer's body; the first that hits wins. HTTP only.
    Body(Spoil),
    /// Close the port (the listener follows these rules itself).
    Port,
}

/// A fault kind's definition: its name, its checks (beyond the JSON shape) and its effect.
pub(crate) struct Definition {
    pub name: &'static str,
    pub check: Result<(), SpecError>,
    pub effect: Effect,
}

impl Fault {
    /// A fixed delay.
    pub fn latency_ms(ms: f64) -> Self {
        Fault::Latency(Latency::Fixed { ms })
    }

    /// An error status (with the default `Retry-After` for 429 and 503).
    pub fn http_error(status: u16) -> Self {
        Fault::HttpError { status, retry_after_s: None }
    }

    /// An answer with `status` and the JSON `body`, in place of the pillar's own.
    pub fn answer(status: u16, body: Value) -> Self {
        Fault::Answer { status, body }
    }

    /// The `kind` name on the wire.
    pub fn kind(&self) -> &'static str {
        self.define().name
    }

    /// Each kind once: its name on the wire (as derived), what it checks beyond its JSON shape,
    /// and what it does.
    pub(crate) fn define(&self) -> Definition {
        let (name, check, effect) = match *self {
            Fault::Latency(latency) => ("latency", latency.validate(), Effect::Delay(latency)),
            Fault::HttpError { status, retry_after_s } => (
                "http_error",
                whole("status", status.into(), 400..=599)
                    .and_then(|()| retry_after_s.map_or(Ok(()), |s| whole("retry_after_s", s, 0..=86_400))),
                Effect::End(Action::Error { status, retry_after_s }),
            ),
            Fault::Refuse => ("refuse", Ok(()), Effect::Port),
            Fault::Blackhole => ("blackhole", Ok(()), Effect::End(Action::Blackhole)),
            Fault::Reset => ("reset", Ok(()), Effect::End(Action::Reset)),
            Fault::SlowBody { bytes_per_sec } => (
                "slow_body",
                whole("bytes_per_sec", bytes_per_sec, 1..=1_000_000_000),
                Effect::Body(Box::new(move |parts, bytes, _| slow_body(parts, bytes, bytes_per_sec))),
            ),
            Fault::TruncatedBody => {
                ("truncated_body", Ok(()), Effect::Body(Box::new(|parts, bytes, _| truncated_body(parts, bytes))))
            }
            Fault::MalformedJson => {
                ("malformed_json", Ok(()), Effect::Body(Box::new(|parts, bytes, _| malformed_json(parts, bytes))))
            }
            Fault::DropAfter { bytes } => (
                "drop_after",
                whole("bytes", bytes, 0..=1_000_000_000),
                Effect::Body(Box::new(move |_, body, connection| {
                    if let Some(connection) = connection {
                        connection.drop_after(bytes);
                    }
                    Body::from(body)
                })),
            ),
            Fault::Answer { status, ref body } => {
                let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
                let check = whole("status", status.into(), 200..=599).and_then(|()| answer_body(body.len()));
                ("answer", check, Effect::End(Action::Answer { status, body }))
            }
        };
        Definition { name, check, effect }
    }

    /// Reads a fault from its `kind` and parameters (a JSON object without the rule's fields).
    fn from_params(params: Map<String, Value>) -> Result<Self, SpecError> {
        let kind = params.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        serde_json::from_value(Value::Object(params.clone())).map_err(|e| {
            let text = e.to_string();
            let quoted = |rest: &str| rest.split('`').nth(1).unwrap_or_default().to_owned();
            if let Some(rest) = text.strip_prefix("missing field ") {
                SpecError::new(quoted(rest), "is required")
            } else if let Some(rest) = text.strip_prefix("unknown variant ") {
                let expected = rest.split_once("expected one of ").map_or("", |(_, e)| e).replace('`', "");
                SpecError::new("kind", format!("unknown fault kind `{}`; expected one of {expected}", quoted(rest)))
            } else if let Some((field, message)) = text.split_once(": ").filter(|(f, _)| *f == "dist") {
                SpecError::new(field, message)
            } else {
                // serde does not name the field of a wrong type or value: it is the one whose
                // absence changes the error.
                let culprit = params.keys().filter(|name| *name != "kind").find(|name| {
                    let mut without = params.clone();
                    without.remove(name.as_str());
                    serde_json::from_value::<Fault>(Value::Object(without)).map_err(|e| e.to_string()).err()
                        != Some(text.clone())
                });
                SpecError::new(culprit.map_or("kind", String::as_str), format!("bad `{kind}` parameter: {text}"))
            }
        })
    }
}

fn in_range(field: &str, value: f64, range: std::ops::RangeInclusive<f64>) -> Result<(), SpecError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(SpecError::new(field, format!("must be between {} and {}, got {value}", range.start(), range.end())))
    }
}

fn whole(field: &str, value: u64, range: std::ops::RangeInclusive<u64>) -> Result<(), SpecError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!("must be a whole number between {} and {}, got {value}", range.start(), range.end()),
        ))
    }
}

fn ordered(upper_name: &str, lower_name: &str, lower: f64, upper: f64) -> Result<(), SpecError> {
    if upper < lower {
        return Err(SpecError::new(upper_name, format!("must not be below {lower_name}")));
    }
    Ok(())
}

/// `answer`'s body is at most [`MAX_ANSWER_BYTES`] serialized (a `null` body reads as absent).
fn answer_body(len: usize) -> Result<(), SpecError> {
    if len > MAX_ANSWER_BYTES {
        return Err(SpecError::new(
            "body",
            format!("the answer's body must be at most {MAX_ANSWER_BYTES} bytes of JSON, got {len}"),
        ));
    }
    Ok(())
}

/// A fault on the whole port (refuse) cannot be narrowed to some requests.
fn port_wide(rule: &FaultRule) -> Result<(), SpecError> {
    let kind = rule.fault.kind();
    let port_wide = format!("{kind} stops the whole port, so it cannot be limited by");
    if rule.route.is_some() {
        return Err(SpecError::new("route", format!("{port_wide} route")));
    }
    if rule.method.is_some() {
        return Err(SpecError::new("method", format!("{port_wide} method")));
    }
    if rule.probability < 1.0 {
        return Err(SpecError::new("probability", format!("{port_wide} probability")));
    }
    if rule.count.is_some() {
        return Err(SpecError::new(
            "count",
            format!("refused connections are never seen, so {kind} takes `for`, not `count`"),
        ));
    }
    Ok(())
}

/// `malformed_json`: the first half of the body, or a broken object when that half parses.
fn malformed_json(parts: &mut Parts, bytes: Bytes) -> Body {
    let cut = bytes.slice(..bytes.len() / 2);
    let broken = if cut.is_empty() || serde_json::from_slice::<Value>(&cut).is_ok() {
        Bytes::from_static(b"{\"malformed\": ")
    } else {
        cut
    };
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(broken.len()));
    Body::from(broken)
}

/// `truncated_body`: announce the whole length, send half, then fail the body: hyper aborts the
/// connection, so the client sees the stream end early. The pause between the two lets hyper
/// flush the head and the half (it writes when the body is pending; an immediate error would
/// discard them).
fn truncated_body(parts: &mut Parts, bytes: Bytes) -> Body {
    let announced = bytes.len().max(1);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(announced));
    let half = bytes.slice(..bytes.len() / 2);
    Body::from_stream(stream::unfold(Some(half), |state| async move {
        match state {
            Some(half) => Some((Ok(half), None)),
            None => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Err(std::io::Error::other("truncated by pillar-sim")), None))
            }
        }
    }))
}

/// `slow_body`: twenty chunks a second (or one byte at a time when slower than that).
fn slow_body(parts: &mut Parts, bytes: Bytes, bytes_per_sec: u64) -> Body {
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let chunk = (bytes_per_sec / 20).max(1) as usize;
    let pause = Duration::from_secs_f64(chunk as f64 / bytes_per_sec as f64);
    Body::from_stream(stream::unfold(bytes, move |mut rest| async move {
        if rest.is_empty() {
            return None;
        }
        tokio::time::sleep(pause).await;
        let piece = rest.split_to(chunk.min(rest.len()));
        Some((Ok::<Bytes, std::io::Error>(piece), rest))
    }))
}

/// One fault rule: where, what, how often, how long. See the module documentation for the JSON
/// form; build one in Rust with [`FaultRule::new`] and the chained setters.
///
/// ```
/// use std::time::Duration;
/// use pillar_sim::{Fault, FaultRule, Pillar};
///
/// let rule = FaultRule::new(Pillar::Bucket, Fault::http_error(503))
///     .route("/core/write-event")
///     .probability(0.3)
///     .lasting(Duration::from_secs(20));
/// assert_eq!(rule.to_json()["for"], "20s");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// A name to list and clear it by; generated (`bucket-http_error-1`) when absent. Setting a
    /// rule whose id exists replaces it.
    pub id: Option<String>,
    /// The pillar it breaks.
    pub pillar: Pillar,
    /// Exact path, or a prefix ending with `*`; every path when absent.
    pub route: Option<String>,
    /// HTTP method (upper case); every method when absent.
    pub method: Option<String>,
    /// What goes wrong.
    pub fault: Fault,
    /// Chance that a matching request is hit, in `[0, 1]` (default 1).
    pub probability: f64,
    /// Active for this long from when it is set (`for` on the wire); until cleared when absent.
    pub lasting: Option<Duration>,
    /// Active for this many matching requests (whether or not the probability hit them).
    pub count: Option<u64>,
}

impl FaultRule {
    /// A rule that hits every request to `pillar`, until cleared.
    pub fn new(pillar: Pillar, fault: Fault) -> Self {
        Self { id: None, pillar, route: None, method: None, fault, probability: 1.0, lasting: None, count: None }
    }

    /// Names the rule.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Narrows the rule to a path (a prefix when it ends with `*`).
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// Narrows the rule to an HTTP method.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into().to_ascii_uppercase());
        self
    }

    /// Hits a matching request with this probability.
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p;
        self
    }

    /// Ends the rule this long after it is set.
    pub fn lasting(mut self, d: Duration) -> Self {
        self.lasting = Some(d);
        self
    }

    /// Ends the rule after this many matching requests.
    pub fn times(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }

    /// Whether `method` and `path` fall under this rule's route and method.
    pub(crate) fn matches(&self, method: &str, path: &str) -> bool {
        let route_ok = match self.route.as_deref() {
            None => true,
            Some(route) => match route.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == route,
            },
        };
        route_ok && self.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
    }

    /// Checks the rule's values; the same checks apply to rules from JSON and from Rust.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(id) = &self.id {
            let ok_chars = id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if id.is_empty() || id.len() > 64 || !ok_chars {
                return Err(SpecError::new("id", "must be 1 to 64 characters of letters, digits, '-', '_' or '.'"));
            }
        }
        if let Some(route) = &self.route {
            validate_route(route)?;
        }
        if let Some(method) = &self.method
            && (method.is_empty() || method.len() > 16 || !method.chars().all(|c| c.is_ascii_alphabetic()))
        {
            return Err(SpecError::new("method", "must be an HTTP method name such as GET or POST"));
        }
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(SpecError::new("probability", format!("must be between 0 and 1, got {}", self.probability)));
        }
        if let Some(d) = self.lasting
            && (d.is_zero() || d > crate::faults::schema::MAX_DURATION)
        {
            return Err(SpecError::new("for", "must be longer than zero and at most 24h"));
        }
        if let Some(n) = self.count
            && !(1..=1_000_000_000).contains(&n)
        {
            return Err(SpecError::new("count", "must be between 1 and 1000000000"));
        }
        self.validate_kind()
    }

    fn validate_kind(&self) -> Result<(), SpecError> {
        let definition = self.fault.define();
        definition.check?;
        if matches!(definition.effect, Effect::Port) {
            port_wide(self)?;
        }
        if self.pillar == Pillar::Smtp {
            if matches!(definition.effect, Effect::Body(_) | Effect::End(Action::Answer { .. })) {
                return Err(SpecError::new(
                    "kind",
                    format!(
                        "{} does not apply to the SMTP sink (use latency, http_error, refuse, blackhole or reset)",
                        definition.name
                    ),
                ));
            }
            if self.route.is_some() || self.method.is_some() {
                return Err(SpecError::new(
                    "route",
                    "the SMTP sink has no routes or methods; a rule covers every message",
                ));
            }
        }
        Ok(())
    }

    /// Reads a rule from its JSON form, strictly (unknown fields are errors).
    pub fn from_json(value: &Value) -> Result<Self, SpecError> {
        let mut f = Fields::of(value)?;
        let id = f.opt_str("id")?.map(str::to_owned);
        let pillar = f.str("pillar")?.parse::<Pillar>().map_err(|e| SpecError::new("pillar", e.to_string()))?;
        let route = f.opt_str("route")?.map(str::to_owned);
        let method = f.opt_str("method")?.map(str::to_ascii_uppercase);
        let kind = f.str("kind")?;
        let probability = f.opt_f64("probability", 0.0..=1.0)?.unwrap_or(1.0);
        let lasting = f.opt_duration("for")?;
        let count = f.opt_u64("count", 1..=1_000_000_000)?;
        // Everything else is the kind's: `kind` and its parameters, read by the derived form.
        let params: Map<String, Value> = value
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, v)| !RULE_FIELDS.contains(&name.as_str()) && !v.is_null())
            .map(|(name, v)| (name.clone(), v.clone()))
            .collect();
        let fault = Fault::from_params(params.clone())?;
        let known = serde_json::to_value(&fault).unwrap_or_default();
        if let Some(unknown) = params.keys().find(|name| known.get(name.as_str()).is_none()) {
            let mut allowed: Vec<&str> = RULE_FIELDS
                .iter()
                .copied()
                .chain(known.as_object().into_iter().flatten().map(|(k, _)| k.as_str()))
                .collect();
            allowed.sort_unstable();
            allowed.dedup();
            return Err(SpecError::new(
                unknown.as_str(),
                format!("unknown field for a `{kind}` fault rule; allowed fields: {}", allowed.join(", ")),
            ));
        }
        let rule = Self { id, pillar, route, method, fault, probability, lasting, count };
        rule.validate()?;
        Ok(rule)
    }

    /// The rule's JSON form (what [`FaultRule::from_json`] reads).
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        if let Some(id) = &self.id {
            out.insert("id".into(), json!(id));
        }
        out.insert("pillar".into(), json!(self.pillar.as_str()));
        if let Some(route) = &self.route {
            out.insert("route".into(), json!(route));
        }
        if let Some(method) = &self.method {
            out.insert("method".into(), json!(method));
        }
        if let Ok(Value::Object(fault)) = serde_json::to_value(&self.fault) {
            out.extend(fault);
        }
        if self.probability < 1.0 {
            out.insert("probability".into(), json!(self.probability));
        }
        if let Some(d) = self.lasting {
            out.insert("for".into(), json!(format_duration(d)));
        }
        if let Some(n) = self.count {
            out.insert("count".into(), json!(n));
        }
        Value::Object(out)
    }
}

/// The fields of a rule that are not its kind's.
const RULE_FIELDS: [&str; 7] = ["id", "pillar", "route", "method", "probability", "for", "count"];

impl Serialize for FaultRule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for FaultRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        FaultRule::from_json(&value).map_err(serde::de::Error::custom)
    }
}

/// A route pattern: a path starting with `/`, at most 512 characters, optionally ending with
/// `*` (a prefix); no other glob syntax, and nothing a request path cannot hold.
fn validate_route(route: &str) -> Result<(), SpecError> {
    let shape = "must be a path starting with '/' (at most 512 characters), optionally ending with '*' for a prefix";
    if !route.starts_with('/') || route.len() > 512 {
        return Err(SpecError::new("route", shape));
    }
    if let Some(c) = route.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(SpecError::new(
            "route",
            format!("must not contain control or whitespace characters (found U+{:04X})", u32::from(c)),
        ));
    }
    let body = route.strip_suffix('*').unwrap_or(route);
    if let Some(c) = body.chars().find(|c| matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '#')) {
        return Err(SpecError::new(
            "route",
            format!("`{c}` is not supported: the only pattern is one '*' at the end, for a prefix ({shape})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_round_trips() {
        let text = json!({"id": "x", "pillar": "bucket", "route": "/core/*", "method": "post",
            "kind": "latency", "dist": "lognormal", "p50_ms": 40.0, "p99_ms": 400.0,
            "probability": 0.5, "for": "30s", "count": 10});
        let rule = FaultRule::from_json(&text).expect("valid");
        assert_eq!(rule.method.as_deref(), Some("POST"));
        assert_eq!(FaultRule::from_json(&rule.to_json()).expect("round trip"), rule);
    }

    #[test]
    fn bad_rules_name_their_field() {
        let cases = [
            (json!({"pillar": "bucket", "kind": "http_error"}), "status"),
            (json!({"pillar": "bucket", "kind": "http_error", "status": 200}), "status"),
            (json!({"pillar": "buckett", "kind": "reset"}), "pillar"),
            (json!({"pillar": "bucket", "kind": "explode"}), "kind"),
            (json!({"pillar": "bucket", "kind": "refuse", "count": 3}), "count"),
            (json!({"pillar": "bucket", "kind": "refuse", "route": "/x"}), "route"),
            (json!({"pillar": "bucket", "kind": "reset", "for": 30}), "for"),
            (json!({"pillar": "bucket", "kind": "reset", "probability": 1.5}), "probability"),
            (json!({"pillar": "bucket", "kind": "latency", "dist": "uniform", "min_ms": 9, "max_ms": 1}), "max_ms"),
            (json!({"pillar": "bucket", "kind": "latency", "ms": -1}), "ms"),
            (json!({"pillar": "smtp", "kind": "slow_body", "bytes_per_sec": 9}), "kind"),
            (json!({"pillar": "bucket", "kind": "reset", "route": "core"}), "route"),
            (json!({"pillar": "bucket", "kind": "reset", "route": "/*/é"}), "route"),
            (json!({"pillar": "bucket", "kind": "reset", "id": "a b"}), "id"),
            (json!({"pillar": "bucket", "kind": "reset", "status": 500}), "status"),
            (json!(["not", "an", "object"]), "body"),
        ];
        for (input, field) in cases {
            let err = FaultRule::from_json(&input).expect_err(&input.to_string());
            assert_eq!(err.field, field, "{input} -> {err}");
        }
    }

    #[test]
    fn every_kind_is_named_as_derived_and_round_trips() {
        let kinds = [
            Fault::latency_ms(5.0),
            Fault::http_error(503),
            Fault::Refuse,
            Fault::Blackhole,
            Fault::Reset,
            Fault::SlowBody { bytes_per_sec: 10 },
            Fault::TruncatedBody,
            Fault::MalformedJson,
            Fault::DropAfter { bytes: 7 },
            Fault::answer(200, json!({"success": false, "message": "403: Unauthorized requester"})),
        ];
        for fault in kinds {
            let kind = fault.kind();
            let rule = FaultRule::new(Pillar::Bucket, fault);
            let json = rule.to_json();
            assert_eq!(json["kind"], kind, "{json}");
            assert_eq!(FaultRule::from_json(&json).expect("round trip"), rule, "{json}");
        }
        let drop = json!({"pillar": "bucket", "kind": "drop_after", "bytes": 3});
        assert_eq!(FaultRule::from_json(&drop).unwrap().fault, Fault::DropAfter { bytes: 3 });
        let fixed = json!({"pillar": "bucket", "kind": "latency", "ms": 5});
        assert_eq!(FaultRule::from_json(&fixed).unwrap().fault, Fault::latency_ms(5.0), "dist defaults to fixed");
        for (input, field) in [
            (json!({"pillar": "bucket", "kind": "drop_after"}), "bytes"),
            (json!({"pillar": "bucket", "kind": "drop_after", "bytes": "ten"}), "bytes"),
            (json!({"pillar": "bucket", "kind": "http_error", "status": -1, "retry_after_s": 2}), "status"),
            (json!({"pillar": "bucket", "kind": "drop_after", "bytes": 3, "bytes_per_sec": 1}), "bytes_per_sec"),
            (json!({"pillar": "smtp", "kind": "drop_after", "bytes": 3}), "kind"),
            (json!({"pillar": "bucket", "kind": "latency", "dist": "gamma", "ms": 1}), "dist"),
            (json!({"pillar": "bucket", "kind": "answer", "body": {}}), "status"),
            (json!({"pillar": "bucket", "kind": "answer", "status": 200}), "body"),
            (json!({"pillar": "bucket", "kind": "answer", "status": 200, "body": null}), "body"),
            (json!({"pillar": "bucket", "kind": "answer", "status": 199, "body": {}}), "status"),
            (json!({"pillar": "bucket", "kind": "answer", "status": 600, "body": {}}), "status"),
            (
                json!({"pillar": "bucket", "kind": "answer", "status": 200, "body": "x".repeat(MAX_ANSWER_BYTES)}),
                "body",
            ),
            (json!({"pillar": "smtp", "kind": "answer", "status": 250, "body": {}}), "kind"),
        ] {
            assert_eq!(FaultRule::from_json(&input).expect_err(&input.to_string()).field, field, "{input}");
        }
    }

    #[test]
    fn routes_match_exactly_or_by_prefix() {
        let rule = FaultRule::new(Pillar::Bucket, Fault::Reset).route("/core/*").method("post");
        assert!(rule.matches("POST", "/core/write-event"));
        assert!(!rule.matches("GET", "/core/write-event"));
        assert!(!rule.matches("POST", "/workflow/write-event"));
        let exact = FaultRule::new(Pillar::Bucket, Fault::Reset).route("/health");
        assert!(exact.matches("GET", "/health"));
        assert!(!exact.matches("GET", "/healthz"));
    }

    #[test]
    fn lognormal_is_fitted_to_its_percentiles() {
        let latency = Latency::LogNormal { p50_ms: 50.0, p99_ms: 400.0 };
        let mut samples: Vec<f64> = (0..20_000).map(|i| latency.sample_ms(&Draws::new(11, "ln", i))).collect();
        samples.sort_by(f64::total_cmp);
        let p50 = samples[10_000];
        let p99 = samples[19_800];
        assert!((p50 / 50.0 - 1.0).abs() < 0.05, "p50 {p50}");
        assert!((p99 / 400.0 - 1.0).abs() < 0.12, "p99 {p99}");
    }

    #[test]
    fn other_distributions_stay_in_their_shape() {
        let uniform = Latency::Uniform { min_ms: 10.0, max_ms: 20.0 };
        let normal = Latency::Normal { mean_ms: 5.0, stddev_ms: 50.0 };
        for i in 0..2_000 {
            let d = Draws::new(5, "u", i);
            assert!((10.0..=20.0).contains(&uniform.sample_ms(&d)));
            assert!(normal.sample_ms(&d) >= 0.0, "clamped at zero");
        }
        assert_eq!(Latency::Fixed { ms: 50.0 }.sample_ms(&Draws::new(1, "f", 0)), 50.0);
    }
}
