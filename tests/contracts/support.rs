//! What every contract test shares: a stack with the executor ([`TestStack`]), request bodies,
//! waiting on the journal with a deadline, and [`assert_contract`], the one place that redacts a
//! value and snapshots it.
//!
//! Redaction replaces what changes from run to run and keeps everything else, so a renamed
//! field, a changed type or a dropped header still shows up as a diff:
//!
//! | what | becomes |
//! |---|---|
//! | a UUID anywhere in a string (event ids, Core's task ids, `Message-ID`s) | `[uuid]` |
//! | 32 hex digits (task ids `task_…`), journal `seq` numbers | `[id]` |
//! | an RFC 3339 timestamp (a whole string) | `[timestamp]` |
//! | `duration_ms`, `expires_in_ms`, `oldest_event_age_seconds`, `uptime_seconds` | `[duration]` |
//! | `http://127.0.0.1:<port>`, `smtp://127.0.0.1:<port>` / `127.0.0.1:<port>` | `[url]` / `[addr]` |
//! | a `traceparent` of the W3C shape `00-<32 hex>-<16 hex>-01` | `00-[trace-id]-[span-id]-01` |
//! | a non-zero `outbox_bytes`, the crate `version` | `[bytes]`, `[version]` |
//!
//! Maps are rebuilt in sorted key order, so snapshots do not depend on whether some crate in
//! the build turns on `serde_json/preserve_order`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use pillar_sim::{JournalEntry, JournalQuery, Pillar, Stack, StackBuilder};
use serde_json::{Map, Value, json};
use test_support::{ExecutorClient, TestResponse, eventually, read_raw_answer};

/// How long anything the tests wait for may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// The seed every stack uses, so provider ids and fault draws are the same on every run.
pub const SEED: u64 = 7;

/// Response headers left out of snapshots: they change on every answer and are not contract.
const VOLATILE_HEADERS: [&str; 2] = ["date", "content-length"];

/// A stack with the executor; the executor's routes are called through the [`ExecutorClient`]
/// it dereferences to (a plain client: no proxy, bounded by [`WAIT`]).
pub struct TestStack {
    /// The running stack.
    pub stack: Stack,
    executor: ExecutorClient,
}

impl std::ops::Deref for TestStack {
    type Target = ExecutorClient;

    fn deref(&self) -> &ExecutorClient {
        &self.executor
    }
}

/// What the snapshots see of an answer.
pub trait Contract {
    /// The answer as it is snapshotted: `{status, headers, body}`, headers (lower case, sorted)
    /// without [`VOLATILE_HEADERS`].
    fn contract(&self) -> Value;

    /// Asserts the HTTP status, showing the answer when it differs.
    fn expect_status(&self, status: u16) -> &Self;
}

impl Contract for TestResponse {
    fn contract(&self) -> Value {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .iter()
            .filter(|(name, _)| !VOLATILE_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap_or("<binary>")))
            .collect();
        json!({"status": self.status, "headers": headers, "body": self.body})
    }

    fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected answer: {:#}", self.contract());
        self
    }
}

impl TestStack {
    /// Starts a stack with the executor from `builder` (seeded with [`SEED`]) and clears the
    /// journal of start-up health checks.
    pub async fn start(builder: StackBuilder) -> Self {
        let stack = builder.seed(SEED).executor(true).start().await.expect("the stack starts");
        stack.journal().clear();
        let url = stack.executor_url().expect("the stack runs the executor");
        let http = reqwest::Client::builder().no_proxy().timeout(WAIT).build().expect("a plain client builds");
        Self { stack, executor: ExecutorClient::new(url, http) }
    }

    /// A stack with every default.
    pub async fn default_stack() -> Self {
        Self::start(Stack::builder()).await
    }

    /// The control API's URL for `path`.
    pub fn control_url(&self, path: &str) -> String {
        format!("{}{path}", self.stack.control_url().expect("the control API is served"))
    }

    /// Sends `head` (a request line and headers, no body) to the executor over a plain TCP
    /// connection and reads the answer. For answers given before the body is read (413 on a
    /// declared `Content-Length`): a client that also sent the body could meet a reset instead.
    pub async fn execute_head_only(&self, head: &str) -> TestResponse {
        use tokio::io::AsyncWriteExt;
        let addr = self.url("").trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the executor accepts");
        stream.write_all(head.as_bytes()).await.expect("the request head is sent");
        read_raw_answer(&mut stream).await
    }

    /// Any request to any URL.
    pub async fn request(&self, method: reqwest::Method, url: String, body: Option<&Value>) -> TestResponse {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        TestResponse::send(request).await
    }

    /// A control-API request.
    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> TestResponse {
        self.request(method, self.control_url(path), body).await
    }

    /// Waits until the journal holds a `pillar` request carrying `trace_id`, and returns it.
    pub async fn journaled(&self, pillar: Pillar, trace_id: &str) -> JournalEntry {
        let found = self
            .stack
            .journal()
            .wait_for(WAIT, |e| e.pillar == pillar && e.trace_id.as_deref() == Some(trace_id))
            .await;
        found.unwrap_or_else(|| {
            panic!(
                "no {pillar} request for trace {trace_id} within {WAIT:?}; journal: {:#?}",
                self.stack.journal().entries()
            )
        })
    }

    /// Waits until the journal holds at least `n` requests to `pillar`, and returns them all.
    pub async fn journaled_n(&self, pillar: Pillar, n: usize) -> Vec<JournalEntry> {
        let mut seen = 0;
        let found = self
            .stack
            .journal()
            .wait_for(WAIT, |e| {
                seen += usize::from(e.pillar == pillar);
                seen >= n
            })
            .await;
        assert!(
            found.is_some(),
            "fewer than {n} {pillar} requests within {WAIT:?}: {:#?}",
            self.stack.journal().entries()
        );
        self.stack.journal().query(&JournalQuery::all().pillar(pillar))
    }

    /// Waits until the executor's integration status satisfies `done`, and returns it.
    pub async fn status_when(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        eventually(WAIT, what, async || {
            let status = self.get("/api/integration/status").await.body;
            done(&status).then_some(status)
        })
        .await
    }

    /// Waits until both outboxes are empty and `delivered` events reached each sink.
    pub async fn delivered(&self, delivered: u64) -> Value {
        self.status_when(&format!("{delivered} events delivered to each sink"), |s| {
            ["bucket", "karma"].iter().all(|p| {
                s["pillars"][p]["delivered"] == json!(delivered) && s["pillars"][p]["outbox_depth"] == json!(0)
            })
        })
        .await
    }
}

/// Runs `future` in the background (for requests that must overlap).
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> tokio::task::JoinHandle<T> {
    tokio::spawn(future)
}

/// An execute request body for a workflow.
pub fn workflow(trace_id: &str, payload: Value) -> Value {
    json!({"trace_id": trace_id, "decision": "workflow", "data": {"workflow_type": "workflow", "payload": payload}})
}

/// A request to a pillar, as snapshotted: method, path, the journaled headers and the body.
pub fn sent(entry: &JournalEntry) -> Value {
    json!({"method": entry.method, "path": entry.path, "headers": entry.headers, "body": entry.body})
}

/// An SMTP message from the journal, as snapshotted: envelope, every header of the message
/// (`Date` redacted), and the body text.
pub fn sent_mail(entry: &JournalEntry) -> Value {
    let data = entry.body["data"].as_str().expect("the SMTP journal keeps the message data");
    let (head, body) = data.split_once("\r\n\r\n").unwrap_or((data, ""));
    let mut headers = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            // A folded header continues the previous one.
            if let Some(name) = &last {
                headers.entry(name.clone()).and_modify(|v: &mut String| v.push_str(line));
            }
            continue;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = if name.eq_ignore_ascii_case("date") { "[timestamp]".to_owned() } else { value.trim().to_owned() };
        headers.insert(name.to_owned(), value);
        last = Some(name.to_owned());
    }
    json!({
        "method": entry.method,
        "envelope": {"from": entry.body["from"], "to": entry.body["to"]},
        "headers": headers,
        "body": body.trim_end_matches("\r\n"),
    })
}

/// Redacts `value` (see the module documentation) and asserts it against the committed
/// snapshot `tests/snapshots/contracts__<name>.snap`; `description` says what produced it.
pub fn assert_contract(name: &str, description: &str, value: &Value) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_description(description);
    let redacted = redact(value);
    let name = format!("contracts__{name}");
    settings.bind(|| insta::assert_json_snapshot!(name, redacted));
}

/// The value with everything that changes between runs replaced by a placeholder.
pub fn redact(value: &Value) -> Value {
    redact_under(None, value)
}

fn redact_under(key: Option<&str>, value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), redact_under(Some(k), &map[k]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| redact_under(None, v)).collect()),
        Value::String(s) => Value::String(redact_string(key, s)),
        Value::Number(n) => match key {
            Some("duration_ms" | "expires_in_ms" | "oldest_event_age_seconds" | "uptime_seconds") => {
                json!("[duration]")
            }
            Some("seq") => json!("[id]"),
            Some("outbox_bytes") if n.as_u64() != Some(0) => json!("[bytes]"),
            _ => value.clone(),
        },
        Value::Null | Value::Bool(_) => value.clone(),
    }
}

fn redact_string(key: Option<&str>, s: &str) -> String {
    if key == Some("traceparent") {
        return traceparent_shape(s);
    }
    if key == Some("version") && s == env!("CARGO_PKG_VERSION") {
        return "[version]".into();
    }
    if is_rfc3339(s) {
        return "[timestamp]".into();
    }
    replace_addresses(&replace_ids(&replace_timestamps(s)))
}

/// RFC 3339 timestamps inside a longer string (e.g. a sink's error body quoted in a reason)
/// → `[timestamp]`.
fn replace_timestamps(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        // Cheap test of the fixed `YYYY-MM-DDTHH:MM:SS` head before looking for where it ends.
        let head = s.get(i..i + 19).is_some_and(|head| is_rfc3339(&format!("{head}Z")));
        let end = head.then(|| (i + 19..=s.len()).rev().find(|&end| s.is_char_boundary(end) && is_rfc3339(&s[i..end])));
        if let Some(end) = end.flatten() {
            out.push_str("[timestamp]");
            i = end;
            continue;
        }
        let ch = s[i..].chars().next().expect("i is on a char boundary");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// `00-[trace-id]-[span-id]-01` for a well-formed `traceparent`; anything else unchanged (so a
/// broken one shows in the diff).
fn traceparent_shape(value: &str) -> String {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    match parts.as_slice() {
        ["00", trace, span, flags] if hex(trace, 32) && hex(span, 16) && hex(flags, 2) => {
            format!("00-[trace-id]-[span-id]-{flags}")
        }
        _ => value.to_owned(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| b.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(digits(0..4) && at(4, b'-') && digits(5..7) && at(7, b'-') && digits(8..10)) {
        return false;
    }
    if !((at(10, b'T') || at(10, b't')) && digits(11..13) && at(13, b':') && digits(14..16) && at(16, b':')) {
        return false;
    }
    if !digits(17..19) {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    let rest = &s[i..];
    rest == "Z"
        || rest == "z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':'
            && rest[1..3].bytes().chain(rest[4..6].bytes()).all(|d| d.is_ascii_digit()))
}

/// UUIDs → `[uuid]`, runs of exactly 32 hex digits → `[id]`.
fn replace_ids(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |i: usize| b.get(i).is_some_and(u8::is_ascii_hexdigit);
    let is_uuid_at = |i: usize| {
        (0..36).all(|k| if matches!(k, 8 | 13 | 18 | 23) { b.get(i + k) == Some(&b'-') } else { hex(i + k) })
    };
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if i == 0 || !hex(i - 1) {
            if is_uuid_at(i) && !hex(i + 36) {
                out.push_str("[uuid]");
                i += 36;
                continue;
            }
            let run = (i..b.len()).take_while(|&k| hex(k)).count();
            if run == 32 {
                out.push_str("[id]");
                i += 32;
                continue;
            }
        }
        let ch = s[i..].chars().next().expect("i is on a char boundary");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// `http://127.0.0.1:<port>` and `smtp://…` → `[url]`; a bare `127.0.0.1:<port>` → `[addr]`.
fn replace_addresses(s: &str) -> String {
    const HOST: &str = "127.0.0.1:";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(HOST) {
        let port_len = rest[at + HOST.len()..].bytes().take_while(u8::is_ascii_digit).count();
        if port_len == 0 {
            out.push_str(&rest[..at + HOST.len()]);
            rest = &rest[at + HOST.len()..];
            continue;
        }
        let before = &rest[..at];
        let scheme = ["http://", "https://", "smtp://"].into_iter().find(|p| before.ends_with(p));
        match scheme {
            Some(p) => {
                out.push_str(&before[..before.len() - p.len()]);
                out.push_str("[url]");
            }
            None => {
                out.push_str(before);
                out.push_str("[addr]");
            }
        }
        rest = &rest[at + HOST.len() + port_len..];
    }
    out.push_str(rest);
    out
}

/// The JSON type structure of a value: objects map each field to its shape, arrays list the
/// distinct shapes of their elements, scalars become `"string"`, `"integer"`, `"number"`,
/// `"boolean"` or `"null"`.
pub fn shape(value: &Value) -> Value {
    match value {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("boolean"),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!("integer"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(items) => {
            let mut shapes: Vec<Value> = Vec::new();
            for item in items {
                let s = shape(item);
                if !shapes.contains(&s) {
                    shapes.push(s);
                }
            }
            shapes.sort_by_key(Value::to_string);
            Value::Array(shapes)
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), shape(&map[k]))).collect())
        }
    }
}

/// Metric families of a Prometheus text exposition as sorted `name type {label, …}` lines
/// (histogram series folded into their family, `le` dropped; values ignored).
pub fn metric_families(text: &str) -> Vec<String> {
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_owned(), kind.to_owned());
            }
        }
    }
    let mut families = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let series = &line[..name_end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| series.strip_suffix(suffix))
            .find(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            .unwrap_or(series);
        let labels = if line[name_end..].starts_with('{') { label_names(&line[name_end + 1..]) } else { Vec::new() };
        let labels: Vec<String> = labels.into_iter().filter(|l| l != "le").collect();
        let kind = types.get(family).map_or("untyped", String::as_str);
        families.insert(format!("{family} {kind} {{{}}}", labels.join(", ")));
    }
    families.into_iter().collect()
}

/// Label names of `a="x",b="y"} 1`, in order.
fn label_names(labels: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = labels.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() || name.contains('}') {
            break;
        }
        names.push(name.trim_start_matches(',').trim().to_owned());
        // The quoted value, with backslash escapes.
        if chars.next() != Some('"') {
            break;
        }
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => {}
            }
        }
        match chars.next() {
            Some(',') => {}
            _ => break,
        }
    }
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_what_is_stable() {
        let value = json!({
            "event_id": "0b5c7b64-2a1c-4a5e-9a43-6b9d2e8f0a11",
            "task_id": "task_0190f4b2c3d47e8f9a0b1c2d3e4f5a6b",
            "message_id": "<0b5c7b64-2a1c-4a5e-9a43-6b9d2e8f0a11@bhiv.local>",
            "timestamp": "2026-01-02T03:04:05.678901Z",
            "endpoint": "http://127.0.0.1:40123/core/write-event",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "duration_ms": 12, "outbox_bytes": 0, "trace_id": "contract-task",
            "note": "Workflow execution: task",
        });
        assert_eq!(
            redact(&value),
            json!({
                "duration_ms": "[duration]", "endpoint": "[url]/core/write-event", "event_id": "[uuid]",
                "message_id": "<[uuid]@bhiv.local>", "note": "Workflow execution: task", "outbox_bytes": 0,
                "task_id": "task_[id]", "timestamp": "[timestamp]", "trace_id": "contract-task",
                "traceparent": "00-[trace-id]-[span-id]-01",
            })
        );
    }

    #[test]
    fn shapes_name_json_types() {
        let value = json!({"a": [1, 2.5, "x", 3], "b": {"c": null, "d": true}});
        assert_eq!(shape(&value), json!({"a": ["integer", "number", "string"], "b": {"c": "null", "d": "boolean"}}));
    }

    #[test]
    fn metric_families_fold_histograms_and_drop_values() {
        let text = "# TYPE h histogram\nh_bucket{route=\"/x\",le=\"0.1\"} 1\nh_sum{route=\"/x\"} 1\n\
                    h_count{route=\"/x\"} 1\n# TYPE c counter\nc{b=\"1,2\",a=\"q\\\"\"} 3\nc{a=\"z\",b=\"w\"} 1\n";
        assert_eq!(metric_families(text), ["c counter {a, b}", "h histogram {route}"]);
    }
}
