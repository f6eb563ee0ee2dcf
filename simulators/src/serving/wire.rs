//! Wire-format helpers the fakes share: timestamps, JSON answers, FastAPI's validation errors
//! (the Python pillars are FastAPI apps, so their 422s look like pydantic's), and the error body
//! each pillar sends for an injected `http_error`.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::pillar::Pillar;

/// The trace id a handler found in the request body, handed to the journal as a response
/// extension.
#[derive(Debug, Clone)]
pub(crate) struct TraceId(pub String);

/// Now, as RFC 3339 in UTC.
pub(crate) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

/// Now, as seconds since the epoch.
pub(crate) fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}

/// FastAPI's `HTTPException` body: `{"detail": message}`.
pub(crate) fn detail(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "detail": message }))
}

/// The JSON type a model field expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Str,
    Dict,
    Int,
}

/// Pydantic's errors for `body` checked against `fields` (name, type, required), as FastAPI
/// reports them; empty when the body fits.
pub(crate) fn model_errors(body: &Value, fields: &[(&str, Expect, bool)]) -> Vec<Value> {
    let Value::Object(map) = body else {
        return vec![json!({"type": "model_attributes_type", "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from", "input": body})];
    };
    let mut errors = Vec::new();
    for (name, expect, required) in fields {
        match map.get(*name) {
            None if *required => {
                errors.push(json!({"type": "missing", "loc": ["body", name], "msg": "Field required", "input": body}))
            }
            None => {}
            Some(value) => {
                let (ok, kind, msg) = match expect {
                    Expect::Str => (value.is_string(), "string_type", "Input should be a valid string"),
                    Expect::Dict => (value.is_object(), "dict_type", "Input should be a valid dictionary"),
                    Expect::Int => (value.is_i64() || value.is_u64(), "int_type", "Input should be a valid integer"),
                };
                if !ok {
                    errors.push(json!({"type": kind, "loc": ["body", name], "msg": msg, "input": value}));
                }
            }
        }
    }
    errors
}

/// Parses a JSON request body, or gives pydantic's `json_invalid` error.
pub(crate) fn parse_body(bytes: &Bytes) -> Result<Value, Vec<Value>> {
    serde_json::from_slice(bytes).map_err(|e| {
        let (position, message) = python_json_error(bytes, &e);
        vec![json!({"type": "json_invalid", "loc": ["body", position], "msg": "JSON decode error",
            "input": {}, "ctx": {"error": message}})]
    })
}

/// Where Python's `json` module stops on `bytes` and what it says (FastAPI puts the character
/// offset in `loc` and the message in `ctx.error`), derived from serde's error: serde stops at
/// the same character for the usual mistakes, and its messages map onto Python's.
fn python_json_error(bytes: &[u8], error: &serde_json::Error) -> (usize, &'static str) {
    let text = String::from_utf8_lossy(bytes);
    // serde counts lines from 1 and columns (characters) from 1 at the character it stopped on.
    let line_start: usize =
        text.split_inclusive('\n').take(error.line().saturating_sub(1)).map(|l| l.chars().count()).sum();
    let total = text.chars().count();
    let mut position = (line_start + error.column().saturating_sub(1)).min(total);
    let described = error.to_string();
    let next = text.chars().skip(position).find(|c| !c.is_whitespace());
    let message = if error.classify() == serde_json::error::Category::Eof {
        position = total;
        if described.contains("parsing a string") {
            "Unterminated string starting at"
        } else if described.contains("parsing an object") {
            "Expecting ',' delimiter"
        } else {
            "Expecting value"
        }
    } else if described.starts_with("key must be a string") {
        "Expecting property name enclosed in double quotes"
    } else if described.starts_with("trailing comma") {
        if next == Some('}') { "Expecting property name enclosed in double quotes" } else { "Expecting value" }
    } else if described.starts_with("expected `:`") {
        "Expecting ':' delimiter"
    } else if described.starts_with("expected `,`") {
        "Expecting ',' delimiter"
    } else if described.starts_with("trailing characters") {
        "Extra data"
    } else if described.starts_with("control character") {
        "Invalid control character at"
    } else if described.starts_with("invalid escape") {
        "Invalid \\escape"
    } else {
        "Expecting value"
    };
    (position, message)
}

/// A field of a pydantic model as the deployed services declare it: a string or a dictionary,
/// required or optional (`None` allowed).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PyField {
    /// `str`.
    Str,
    /// `Optional[str]`.
    OptStr,
    /// `Optional[Dict[str, Any]]`.
    OptDict,
}

/// pydantic v2's message for constructing `model` from `data` with these `fields` (in the
/// model's order), or `None` when it would succeed: `N validation error(s) for Model`, then per
/// field its name, the error with the input's Python repr (shortened past 50 characters, as
/// pydantic does) and type, and the documentation link. Only type errors are modelled; fields
/// absent from `data` are the caller's to check; an object's keys are shown sorted (serde_json
/// does not keep their order).
pub(crate) fn pydantic_type_errors(
    model: &str,
    fields: &[(&str, PyField)],
    data: &Map<String, Value>,
) -> Option<String> {
    let mut errors = Vec::new();
    for (name, kind) in fields {
        let Some(value) = data.get(*name) else { continue };
        let (ok, kind_name, expected) = match kind {
            PyField::Str => (value.is_string(), "string_type", "a valid string"),
            PyField::OptStr => (value.is_string() || value.is_null(), "string_type", "a valid string"),
            PyField::OptDict => (value.is_object() || value.is_null(), "dict_type", "a valid dictionary"),
        };
        if ok {
            continue;
        }
        let mut shown = py_repr(value);
        if shown.chars().count() > 50 {
            let chars: Vec<char> = shown.chars().collect();
            shown = format!(
                "{}...{}",
                chars[..25].iter().collect::<String>(),
                chars[chars.len() - 24..].iter().collect::<String>()
            );
        }
        errors.push(format!(
            "{name}\n  Input should be {expected} [type={kind_name}, input_value={shown}, input_type={}]\n    For further information visit https://errors.pydantic.dev/2.14/v/{kind_name}",
            py_type(value)
        ));
    }
    if errors.is_empty() {
        return None;
    }
    let plural = if errors.len() == 1 { "" } else { "s" };
    Some(format!("{} validation error{plural} for {model}\n{}", errors.len(), errors.join("\n")))
}

/// Python's `repr` of a JSON value as `json.loads` would build it.
fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            if f.fract() == 0.0 && f.abs() < 1e16 { format!("{f:.1}") } else { f.to_string() }
        }
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(items) => format!("[{}]", items.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&Value::String(k.clone())), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python's type name for a JSON value.
fn py_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// FastAPI's 422 answer for `errors`.
pub(crate) fn unprocessable(errors: Vec<Value>) -> Response {
    json_response(StatusCode::UNPROCESSABLE_ENTITY, &json!({ "detail": errors }))
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Karma's error envelope (`{"status": "error", "error": {code, message}, path, timestamp}`).
pub(crate) fn karma_error(status: StatusCode, message: &str, path: &str, details: Option<Value>) -> Response {
    let mut body = json!({
        "status": "error",
        "error": {"code": status.as_u16(), "message": message},
        "path": path,
        "timestamp": now_rfc3339(),
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    json_response(status, &body)
}

/// The Graph API's error body, as the WhatsApp Cloud API sends it.
pub(crate) fn graph_error(status: StatusCode, code: u32, message: &str, fbtrace_id: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": fbtrace_id}}),
    )
}

/// OpenAI's error body.
pub(crate) fn openai_error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    json_response(status, &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}))
}

/// The answer of an `answer` fault: `status` with the JSON `body`, serialized already.
pub(crate) fn injected_answer(status: u16, body: Bytes) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// The answer for an injected `http_error`, in the pillar's own error shape, with `Retry-After`
/// for 429 and 503 (1 s unless the rule says otherwise) or whenever the rule gives one.
pub(crate) fn injected_error(
    pillar: Pillar,
    status: u16,
    retry_after_s: Option<u64>,
    path: &str,
    fbtrace_id: &str,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("Error");
    let message = format!("{reason} (injected by pillar-sim)");
    let mut response = match pillar {
        Pillar::Karma => karma_error(status, &message, path, None),
        Pillar::Providers if path.ends_with("/chat/completions") => {
            let kind = match status.as_u16() {
                429 => "rate_limit_exceeded",
                500..=599 => "server_error",
                _ => "invalid_request_error",
            };
            openai_error(status, &message, kind, None, None)
        }
        Pillar::Providers => {
            let code = match status.as_u16() {
                401 | 403 => 190,
                429 => 4,
                500..=599 => 2,
                _ => 100,
            };
            graph_error(status, code, &message, fbtrace_id)
        }
        Pillar::Bucket | Pillar::Core | Pillar::Smtp => detail(status, &message),
    };
    let retry = retry_after_s.or(matches!(status.as_u16(), 429 | 503).then_some(1));
    if let Some(seconds) = retry {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(body: &str) -> (usize, &'static str) {
        let error = serde_json::from_str::<Value>(body).expect_err("malformed");
        python_json_error(body.as_bytes(), &error)
    }

    #[test]
    fn pydantic_errors_read_as_the_deployed_karma_answers() {
        // Measured against the monorepo Karma (pydantic 2.14).
        let fields = [
            ("user_id", PyField::Str),
            ("note", PyField::OptStr),
            ("context", PyField::OptStr),
            ("metadata", PyField::OptDict),
        ];
        let data = json!({"user_id": 7, "note": [1, 2.5, true, null, "s"],
            "context": {"action_type": "task", "source": "workflow_executor", "trace_id": "0123456789abcdef0123456789"},
            "metadata": "abcdefghij".repeat(8)});
        let message = pydantic_type_errors("LogActionRequest", &fields, data.as_object().unwrap()).expect("errors");
        assert!(message.starts_with("4 validation errors for LogActionRequest\nuser_id\n  Input should be a valid string [type=string_type, input_value=7, input_type=int]\n    For further information visit https://errors.pydantic.dev/2.14/v/string_type\nnote\n"), "{message}");
        assert!(message.contains("input_value=[1, 2.5, True, None, 's'], input_type=list]"), "{message}");
        // (Keys in sorted order: serde_json does not keep an object's order, Python does.)
        assert!(
            message.contains("input_value={'action_type': 'task', '...456789abcdef0123456789'}, input_type=dict]"),
            "{message}"
        );
        assert!(message.contains("metadata\n  Input should be a valid dictionary [type=dict_type, input_value='abcdefghijabcdefghijabcd...hijabcdefghijabcdefghij', input_type=str]"), "{message}");
        let fine = json!({"user_id": "u", "note": null, "context": "c", "metadata": {}});
        assert_eq!(pydantic_type_errors("LogActionRequest", &fields, fine.as_object().unwrap()), None);
    }

    #[test]
    fn malformed_json_is_located_and_described_as_python_does() {
        // What CPython's json.loads raises for each (JSONDecodeError.msg, .pos).
        assert_eq!(python("{bad"), (1, "Expecting property name enclosed in double quotes"));
        assert_eq!(python("{\"a\": }"), (6, "Expecting value"));
        assert_eq!(python("{\"a\" 1}"), (5, "Expecting ':' delimiter"));
        assert_eq!(python("{\"a\": 1,}"), (8, "Expecting property name enclosed in double quotes"));
        assert_eq!(python("{\"a\": 1"), (7, "Expecting ',' delimiter"));
        assert_eq!(python("{\"a\": 1} x"), (9, "Extra data"));
        assert_eq!(python("[1,]"), (3, "Expecting value"));
        assert_eq!(python("{\"a\": 1 \"b\": 2}"), (8, "Expecting ',' delimiter"));
        assert_eq!(python("[1  2]"), (4, "Expecting ',' delimiter"));
        assert_eq!(python("{\"a\"  1}"), (6, "Expecting ':' delimiter"));
        assert_eq!(python("{\"a\": 1  "), (9, "Expecting ',' delimiter"));
        assert_eq!(python("{ bad"), (2, "Expecting property name enclosed in double quotes"));
        assert_eq!(python("{\"a\":1}}"), (7, "Extra data"));
    }
}
