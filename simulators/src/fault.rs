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
//!
//! `route` is an exact path, or a prefix when it ends with `*` (`/core/*`). A `refuse` rule covers
//! the whole port, so it takes no route, method, probability or count. For the SMTP sink a
//! "request" is one mail transaction (decided when the message's final `.` arrives), `http_error`'s
//! status is sent as the SMTP reply code, and the body kinds do not apply.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};

use crate::pillar::Pillar;
use crate::rng::Draws;
use crate::schema::{Fields, SpecError, format_duration};

/// The longest latency a rule may inject (ten minutes).
pub const MAX_LATENCY_MS: f64 = 600_000.0;

/// z-score of the 99th percentile of the standard normal distribution.
const Z_99: f64 = 2.326_347_874_040_841;

/// How an injected delay is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
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

    fn to_json(self, out: &mut Map<String, Value>) {
        let fields = match self {
            Latency::Fixed { ms } => json!({"dist": "fixed", "ms": ms}),
            Latency::Uniform { min_ms, max_ms } => json!({"dist": "uniform", "min_ms": min_ms, "max_ms": max_ms}),
            Latency::Normal { mean_ms, stddev_ms } => {
                json!({"dist": "normal", "mean_ms": mean_ms, "stddev_ms": stddev_ms})
            }
            Latency::LogNormal { p50_ms, p99_ms } => json!({"dist": "lognormal", "p50_ms": p50_ms, "p99_ms": p99_ms}),
        };
        if let Value::Object(map) = fields {
            out.extend(map);
        }
    }

    fn parse(fields: &mut Fields<'_>) -> Result<Self, SpecError> {
        let range = 0.0..=MAX_LATENCY_MS;
        let latency = match fields.opt_str("dist")?.unwrap_or("fixed") {
            "fixed" => Latency::Fixed { ms: fields.f64("ms", range)? },
            "uniform" => {
                let min_ms = fields.f64("min_ms", range.clone())?;
                let max_ms = fields.f64("max_ms", range)?;
                if max_ms < min_ms {
                    return Err(SpecError::new("max_ms", "must not be below min_ms"));
                }
                Latency::Uniform { min_ms, max_ms }
            }
            "normal" => Latency::Normal {
                mean_ms: fields.f64("mean_ms", range.clone())?,
                stddev_ms: fields.f64("stddev_ms", range)?,
            },
            "lognormal" => {
                let p50_ms = fields.f64("p50_ms", 0.001..=MAX_LATENCY_MS)?;
                let p99_ms = fields.f64("p99_ms", 0.001..=MAX_LATENCY_MS)?;
                if p99_ms < p50_ms {
                    return Err(SpecError::new("p99_ms", "must not be below p50_ms"));
                }
                Latency::LogNormal { p50_ms, p99_ms }
            }
            other => {
                return Err(SpecError::new(
                    "dist",
                    format!("unknown distribution `{other}`; expected fixed, uniform, normal or lognormal"),
                ));
            }
        };
        Ok(latency)
    }
}

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Delay the answer.
    Latency(Latency),
    /// Answer with an error status.
    HttpError {
        /// 400–599 (for the SMTP sink: the SMTP reply code).
        status: u16,
        /// `Retry-After` seconds; 429 and 503 default to 1.
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

    /// The `kind` name on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Latency(_) => "latency",
            Fault::HttpError { .. } => "http_error",
            Fault::Refuse => "refuse",
            Fault::Blackhole => "blackhole",
            Fault::Reset => "reset",
            Fault::SlowBody { .. } => "slow_body",
            Fault::TruncatedBody => "truncated_body",
            Fault::MalformedJson => "malformed_json",
        }
    }

    fn is_body_fault(&self) -> bool {
        matches!(self, Fault::SlowBody { .. } | Fault::TruncatedBody | Fault::MalformedJson)
    }

    fn parse(kind: &str, fields: &mut Fields<'_>) -> Result<Self, SpecError> {
        Ok(match kind {
            "latency" => Fault::Latency(Latency::parse(fields)?),
            "http_error" => {
                let status =
                    fields.opt_u64("status", 400..=599)?.ok_or_else(|| SpecError::new("status", "is required"))?;
                Fault::HttpError { status: status as u16, retry_after_s: fields.opt_u64("retry_after_s", 0..=86_400)? }
            }
            "refuse" => Fault::Refuse,
            "blackhole" => Fault::Blackhole,
            "reset" => Fault::Reset,
            "slow_body" => Fault::SlowBody {
                bytes_per_sec: fields
                    .opt_u64("bytes_per_sec", 1..=1_000_000_000)?
                    .ok_or_else(|| SpecError::new("bytes_per_sec", "is required"))?,
            },
            "truncated_body" => Fault::TruncatedBody,
            "malformed_json" => Fault::MalformedJson,
            other => {
                return Err(SpecError::new(
                    "kind",
                    format!(
                        "unknown fault kind `{other}`; expected one of latency, http_error, refuse, blackhole, \
                         reset, slow_body, truncated_body, malformed_json"
                    ),
                ));
            }
        })
    }

    fn to_json(self, out: &mut Map<String, Value>) {
        out.insert("kind".into(), json!(self.kind()));
        match self {
            Fault::Latency(latency) => latency.to_json(out),
            Fault::HttpError { status, retry_after_s } => {
                out.insert("status".into(), json!(status));
                if let Some(s) = retry_after_s {
                    out.insert("retry_after_s".into(), json!(s));
                }
            }
            Fault::SlowBody { bytes_per_sec } => {
                out.insert("bytes_per_sec".into(), json!(bytes_per_sec));
            }
            Fault::Refuse | Fault::Blackhole | Fault::Reset | Fault::TruncatedBody | Fault::MalformedJson => {}
        }
    }
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
            && (d.is_zero() || d > crate::schema::MAX_DURATION)
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
        match self.fault {
            Fault::Refuse => {
                let port_wide = "refuse stops the whole port, so it cannot be limited by";
                if self.route.is_some() {
                    return Err(SpecError::new("route", format!("{port_wide} route")));
                }
                if self.method.is_some() {
                    return Err(SpecError::new("method", format!("{port_wide} method")));
                }
                if self.probability < 1.0 {
                    return Err(SpecError::new("probability", format!("{port_wide} probability")));
                }
                if self.count.is_some() {
                    return Err(SpecError::new(
                        "count",
                        "refused connections are never seen, so refuse takes `for`, not `count`",
                    ));
                }
            }
            Fault::Latency(l) => {
                let values = match l {
                    Latency::Fixed { ms } => [ms, ms],
                    Latency::Uniform { min_ms, max_ms } => [min_ms, max_ms],
                    Latency::Normal { mean_ms, stddev_ms } => [mean_ms, stddev_ms],
                    Latency::LogNormal { p50_ms, p99_ms } => [p50_ms, p99_ms],
                };
                if values.iter().any(|v| !(0.0..=MAX_LATENCY_MS).contains(v)) {
                    return Err(SpecError::new(
                        "dist",
                        format!("latency values must be between 0 and {MAX_LATENCY_MS} ms"),
                    ));
                }
                let ordered = match l {
                    Latency::Uniform { min_ms, max_ms } => min_ms <= max_ms,
                    Latency::LogNormal { p50_ms, p99_ms } => p50_ms > 0.0 && p50_ms <= p99_ms,
                    _ => true,
                };
                if !ordered {
                    return Err(SpecError::new(
                        "dist",
                        "the upper value must not be below the lower one (and p50_ms > 0)",
                    ));
                }
            }
            Fault::HttpError { status, retry_after_s } => {
                if !(400..=599).contains(&status) {
                    return Err(SpecError::new("status", format!("must be between 400 and 599, got {status}")));
                }
                if retry_after_s.is_some_and(|s| s > 86_400) {
                    return Err(SpecError::new("retry_after_s", "must be at most 86400"));
                }
            }
            Fault::SlowBody { bytes_per_sec: 0 } => {
                return Err(SpecError::new("bytes_per_sec", "must be at least 1"));
            }
            _ => {}
        }
        if self.pillar == Pillar::Smtp {
            if self.fault.is_body_fault() {
                return Err(SpecError::new(
                    "kind",
                    format!(
                        "{} does not apply to the SMTP sink (use latency, http_error, refuse, blackhole or reset)",
                        self.fault.kind()
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
        let fault = Fault::parse(kind, &mut f)?;
        let probability = f.opt_f64("probability", 0.0..=1.0)?.unwrap_or(1.0);
        let lasting = f.opt_duration("for")?;
        let count = f.opt_u64("count", 1..=1_000_000_000)?;
        f.finish(&format!("a `{kind}` fault rule"))?;
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
        self.fault.to_json(&mut out);
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
