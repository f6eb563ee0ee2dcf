//! An answer of the executor as every suite reads it ([`TestResponse`]), the assertions of the
//! executor's contract on it (success, executed failure, structured rejection), and a raw
//! HTTP/1.1 answer read off a socket ([`read_raw_answer`]) for requests no client would send.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// An answer of the executor.
#[derive(Debug)]
pub struct TestResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
    /// The raw body.
    pub text: String,
    /// How long the call took.
    pub elapsed: Duration,
}

impl TestResponse {
    /// Sends `request` and reads the whole answer, failing the test if none comes.
    pub async fn send(request: reqwest::RequestBuilder) -> Self {
        Self::try_send(request).await.expect("the executor answers")
    }

    /// Sends `request` and reads the whole answer; the error if none came.
    pub async fn try_send(request: reqwest::RequestBuilder) -> Result<Self, reqwest::Error> {
        let started = Instant::now();
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let elapsed = started.elapsed();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Self { status, headers, body, text, elapsed })
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `execution_result`.
    pub fn result(&self) -> &Value {
        &self.body["execution_result"]
    }

    /// Asserts HTTP 200, `status: "success"` and a result for `trace_id`.
    pub fn assert_success(&self, trace_id: &str) {
        assert_eq!(self.status, 200, "{}", self.text);
        assert_eq!(self.body["status"], "success", "{}", self.text);
        assert_eq!(self.body["trace_id"], trace_id, "{}", self.text);
        assert_eq!(self.result()["success"], true, "{}", self.text);
        assert_eq!(self.result()["trace_id"], trace_id, "{}", self.text);
        assert!(self.result()["timestamp"].is_string(), "{}", self.text);
    }

    /// Asserts an executed failure: HTTP 200, `status: "failed"` and `error_code`.
    pub fn assert_failed(&self, error_code: &str) {
        assert_eq!(self.status, 200, "{}", self.text);
        assert_eq!(self.body["status"], "failed", "{}", self.text);
        assert_eq!(self.result()["success"], false, "{}", self.text);
        assert_eq!(self.result()["error_code"], error_code, "{}", self.text);
        assert!(self.result()["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.text);
        assert_eq!(self.result()["trace_id"], self.body["trace_id"], "{}", self.text);
    }

    /// Asserts a rejection with the structured body `{detail, error: {code, message, field}}`.
    pub fn assert_rejected(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert!(!self.body["detail"].is_null(), "no detail: {}", self.text);
        assert_eq!(self.body["error"]["code"], code, "{}", self.text);
        assert!(self.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.text);
        assert!(self.body["error"].get("field").is_some(), "no error.field: {}", self.text);
        assert!(self.body.get("execution_result").is_none(), "{}", self.text);
    }
}

/// Reads a raw HTTP/1.1 answer until the server closes (or 10 s pass): its status and the JSON
/// object of its body (which may itself be chunked: the object between the outer braces).
pub async fn read_raw_answer(stream: &mut TcpStream) -> (u16, Value) {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(start), Some(end)) if end > start => serde_json::from_str(&body[start..=end]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

/// Asserts `value` is a well-formed W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn assert_traceparent(value: &str) {
    let parts: Vec<&str> = value.split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && parts[1] != "0".repeat(32)
            && hex(parts[2], 16)
            && parts[2] != "0".repeat(16)
            && hex(parts[3], 2),
        "malformed traceparent: {value}"
    );
}
