//! Strict, explainable parsing of the simulator's JSON inputs (fault rules, scenarios, control
//! requests).
//!
//! Inputs are read from a `serde_json::Value` by hand (a fault kind's own parameters are derived,
//! see [`crate::faults::fault`], and checked once by its definition): every rejection names
//! the offending field by its path (`steps[2].fault.status`), unknown fields are errors rather
//! than silently ignored typos, and numbers are range-checked before anything can overflow.

use std::time::Duration;

use serde_json::{Map, Value};

/// A rejected input: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The path of the offending field (`kind`, `steps[1].at`, or `body` for the whole input).
    pub field: String,
    /// What is wrong with it, in plain words.
    pub message: String,
}

impl SpecError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// The same error, with its field nested under `parent`.
    pub fn within(self, parent: &str) -> Self {
        let field = if self.field == "body" { parent.to_owned() } else { format!("{parent}.{}", self.field) };
        Self { field, message: self.message }
    }
}

/// Reads fields from a JSON object and tracks which ones were used, so leftovers can be reported.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    /// Expects `value` to be an object.
    pub(crate) fn of(value: &'a Value) -> Result<Self, SpecError> {
        match value {
            Value::Object(map) => Ok(Self { map, used: Vec::new() }),
            other => Err(SpecError::new("body", format!("expected a JSON object, got {}", type_name(other)))),
        }
    }

    fn take(&mut self, name: &'static str) -> Option<&'a Value> {
        self.used.push(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// An optional string field.
    pub(crate) fn opt_str(&mut self, name: &'static str) -> Result<Option<&'a str>, SpecError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(SpecError::new(name, format!("expected a string, got {}", type_name(other)))),
        }
    }

    /// A required string field.
    pub(crate) fn str(&mut self, name: &'static str) -> Result<&'a str, SpecError> {
        self.opt_str(name)?.ok_or_else(|| SpecError::new(name, "is required"))
    }

    /// An optional number field, checked to lie in `range`.
    pub(crate) fn opt_f64(
        &mut self,
        name: &'static str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<Option<f64>, SpecError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let v = n.as_f64().unwrap_or(f64::NAN);
                if range.contains(&v) {
                    Ok(Some(v))
                } else {
                    Err(SpecError::new(name, format!("must be between {} and {}, got {v}", range.start(), range.end())))
                }
            }
            Some(other) => Err(SpecError::new(name, format!("expected a number, got {}", type_name(other)))),
        }
    }

    /// An optional whole-number field, checked to lie in `range`.
    pub(crate) fn opt_u64(
        &mut self,
        name: &'static str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, SpecError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if range.contains(&v) => Ok(Some(v)),
                _ => Err(SpecError::new(
                    name,
                    format!("must be a whole number between {} and {}, got {n}", range.start(), range.end()),
                )),
            },
            Some(other) => Err(SpecError::new(name, format!("expected a whole number, got {}", type_name(other)))),
        }
    }

    /// An optional duration field (`"250ms"`, `"10s"`, `"1.5m"`, `"1h"`).
    pub(crate) fn opt_duration(&mut self, name: &'static str) -> Result<Option<Duration>, SpecError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => parse_duration(s).map(Some).map_err(|m| SpecError::new(name, m)),
            Some(Value::Number(n)) => {
                Err(SpecError::new(name, format!("use a duration string with a unit, like \"{n}s\" or \"{n}ms\"")))
            }
            Some(other) => Err(SpecError::new(name, format!("expected a duration string, got {}", type_name(other)))),
        }
    }

    /// An optional field of any JSON type.
    pub(crate) fn opt_value(&mut self, name: &'static str) -> Option<&'a Value> {
        self.take(name)
    }

    /// Fails on any field that was never asked for.
    pub(crate) fn finish(self, context: &str) -> Result<(), SpecError> {
        let mut unknown: Vec<&String> = self.map.keys().filter(|k| !self.used.contains(&k.as_str())).collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(first) => {
                let mut known = self.used.clone();
                known.sort_unstable();
                known.dedup();
                Err(SpecError::new(
                    first.as_str(),
                    format!("unknown field for {context}; allowed fields: {}", known.join(", ")),
                ))
            }
        }
    }
}

/// The JSON type of a value, for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The longest duration any input may name (a day).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses `"250ms"`, `"10s"`, `"1.5s"`, `"2m"`, `"1h"` (at most a day).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('-') {
        return Err(format!("`{text}` is a negative duration; durations count forward from now, e.g. \"{rest}\""));
    }
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("`{text}` has no unit; write e.g. \"{text}s\" or \"{text}ms\"")),
        other => return Err(format!("unknown unit `{other}` in `{text}`; use ms, s, m or h")),
    };
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration like \"500ms\" or \"30s\""))?;
    let seconds = value * scale;
    if !(0.0..=MAX_DURATION.as_secs_f64()).contains(&seconds) {
        return Err(format!("`{text}` is longer than the maximum of 24h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Formats a duration the way [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_round_trip() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("3 weeks").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("25h").unwrap_err().contains("maximum"));
        assert!(parse_duration("abc").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(parse_duration(&format_duration(Duration::from_secs(30))), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn leftover_fields_are_named() {
        let value = serde_json::json!({"pillar": "bucket", "stauts": 503});
        let mut fields = Fields::of(&value).unwrap();
        fields.str("pillar").unwrap();
        let err = fields.finish("a fault rule").unwrap_err();
        assert_eq!(err.field, "stauts");
        assert!(err.message.contains("allowed fields: pillar"), "{}", err.message);
    }
}
