//! An HTTP answer as every suite reads it ([`TestResponse`]: status, headers, body as JSON or
//! text, timing), the assertions of the executor's contract on it (success, executed failure,
//! structured rejection), and an answer read off a raw socket ([`read_raw_answer`]) for requests
//! no client would send.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long [`read_raw_answer`] waits for a whole answer.
const RAW_PATIENCE: Duration = Duration::from_secs(10);

/// One HTTP answer, read whole.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body as JSON; the text as a JSON string when it is not JSON; `null` when empty.
    pub body: Value,
    /// The raw body.
    pub text: String,
    /// From sending to the whole body read.
    pub elapsed: Duration,
    /// When the whole body was read (wall clock).
    pub done_at: SystemTime,
}

impl TestResponse {
    /// Sends `request` and reads the whole answer, failing the test (naming a timeout as such)
    /// if none comes.
    pub async fn send(request: reqwest::RequestBuilder) -> Self {
        Self::try_send(request).await.unwrap_or_else(|e| {
            if e.is_timeout() {
                panic!("no answer in time: {e}");
            }
            panic!("no answer: {e}")
        })
    }

    /// Sends `request` and reads the whole answer; the error if none came.
    pub async fn try_send(request: reqwest::RequestBuilder) -> Result<Self, reqwest::Error> {
        let started = Instant::now();
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        Ok(Self::new(status, headers, text, started.elapsed()))
    }

    fn new(status: u16, headers: HeaderMap, text: String, elapsed: Duration) -> Self {
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()))
        };
        Self { status, headers, body, text, elapsed, done_at: SystemTime::now() }
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `execution_result`.
    pub fn result(&self) -> &Value {
        &self.body["execution_result"]
    }

    /// The structured rejection's `error.code`, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(Value::as_str)
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

/// Reads one HTTP/1.1 answer off `stream` (for requests no client would send): until its
/// `Content-Length` body or its last chunk is in, or the server closes; fails the test when no
/// whole answer head came within 10 s.
pub async fn read_raw_answer(stream: &mut TcpStream) -> TestResponse {
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let answer = loop {
        if let Some(answer) = parse_answer(&raw, false, started) {
            break Some(answer);
        }
        let left = RAW_PATIENCE.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&chunk[..n]),
            // Closed (or reset): what came is the answer.
            Ok(_) => break parse_answer(&raw, true, started),
            Err(_) => break None,
        }
    };
    answer
        .unwrap_or_else(|| panic!("no whole HTTP answer within {RAW_PATIENCE:?}: {:?}", String::from_utf8_lossy(&raw)))
}

/// The answer in `raw` once it is complete (or, when the server `closed`, whatever body came).
fn parse_answer(raw: &[u8], closed: bool, started: Instant) -> Option<TestResponse> {
    let mut parsed = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut parsed);
    let httparse::Status::Complete(head_len) = head.parse(raw).ok()? else { return None };
    let mut headers = HeaderMap::new();
    for header in head.headers.iter() {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(header.name.as_bytes()), HeaderValue::from_bytes(header.value))
        {
            headers.append(name, value);
        }
    }
    let status = head.code?;
    let rest = &raw[head_len..];
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let chunked = headers
        .get("transfer-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = headers.get("content-length").and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
    let body = if chunked {
        match dechunk(rest) {
            Some(body) => body,
            None if closed => return Some(TestResponse::new(status, headers, text(rest), started.elapsed())),
            None => return None,
        }
    } else if let Some(length) = length {
        if rest.len() < length && !closed {
            return None;
        }
        rest[..length.min(rest.len())].to_vec()
    } else if closed {
        rest.to_vec()
    } else {
        return None;
    };
    Some(TestResponse::new(status, headers, text(&body), started.elapsed()))
}

/// A chunked body, once its last (empty) chunk is in.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        if rest.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, closed: bool) -> Option<TestResponse> {
        parse_answer(raw.as_bytes(), closed, Instant::now())
    }

    #[test]
    fn a_content_length_answer_is_whole_once_its_body_is_in() {
        let head = "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n";
        assert!(parse(&format!("{head}{{\"detail\":"), false).is_none());
        let answer = parse(&format!("{head}{{\"detail\":1}}"), false).expect("whole");
        assert_eq!(answer.status, 413);
        assert_eq!(answer.body, serde_json::json!({"detail": 1}));
        assert_eq!(answer.header("content-type"), Some("application/json"));
    }

    #[test]
    fn a_chunked_answer_is_whole_at_its_last_chunk() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse(&format!("{head}5\r\n{{\"a\":\r\n"), false).is_none());
        let answer = parse(&format!("{head}5\r\n{{\"a\":\r\n2\r\n1}}\r\n0\r\n\r\n"), false).expect("whole");
        assert_eq!(answer.body, serde_json::json!({"a": 1}));
    }

    #[test]
    fn without_framing_the_body_ends_when_the_server_closes() {
        let raw = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nnot json";
        assert!(parse(raw, false).is_none());
        let answer = parse(raw, true).expect("closed");
        assert_eq!(answer.body, Value::String("not json".into()));
        assert_eq!(answer.text, "not json");
    }
}
