//! The request journal: what every fake received, what it answered and which faults it applied.
//!
//! A bounded ring ([`crate::record::bounded`]): at most [`Limits`] entries and bytes (defaults
//! [`DEFAULT_LIMITS`]); the oldest fall off and are counted ([`Journal::evicted`], the
//! `pillar_sim_evicted_total{store="journal"}` metric and the control API's `evicted`). It sits
//! behind a `std::sync::Mutex` held only to push or copy. Bodies are kept as the raw bytes the fake read (a cheap reference-counted slice, cut
//! at [`BODY_LIMIT`]) and parsed into JSON only when someone reads the journal, so recording
//! costs the hot path almost nothing. Secrets never enter it: of `Authorization` only the scheme
//! is kept. Readers can wait for an entry without polling: every push wakes them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;

use crate::faults::injector::AppliedFault;
use crate::pillar::Pillar;
use crate::record::bounded::{ENTRY_OVERHEAD, Limits, Page, Ring};

/// The most body bytes an entry keeps.
pub(crate) const BODY_LIMIT: usize = 16 * 1024;

/// The default number of entries kept.
pub(crate) const DEFAULT_CAPACITY: usize = 5_000;

/// The journal's default limits: 5,000 entries, 24 MiB.
pub(crate) const DEFAULT_LIMITS: Limits = Limits::new(DEFAULT_CAPACITY, 24);

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// An answer was sent (see `status`).
    Answered,
    /// The request was read and never answered (a blackhole fault).
    Blackholed,
    /// The connection was reset (a reset fault).
    Reset,
}

/// One journaled request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JournalEntry {
    /// Position in the journal, increasing from 1 across all pillars.
    pub seq: u64,
    /// Which fake received it.
    pub pillar: Pillar,
    /// HTTP method (`DATA` for an SMTP message).
    pub method: String,
    /// Path and query (the first recipient for an SMTP message).
    pub path: String,
    /// `X-Trace-Id`, else the trace id the fake found in the body (Core: the task id it minted).
    pub trace_id: Option<String>,
    /// Every header name received. Values are kept for `x-trace-id`, `traceparent`,
    /// `idempotency-key` and `content-type`; `authorization` keeps only its scheme (never its
    /// secret); any other header's value reads `[not recorded]`.
    pub headers: BTreeMap<String, String>,
    /// The body: JSON when it parses, else text; `null` when empty.
    pub body: Value,
    /// Whether the body was longer than the journal's body limit (16 KiB) and was cut.
    pub body_truncated: bool,
    /// The status sent (the SMTP reply code for the sink); none when no answer was sent.
    pub status: Option<u16>,
    /// How the request ended.
    pub outcome: Outcome,
    /// Every rule that matched, with its draws, whether or not it hit.
    pub faults: Vec<AppliedFault>,
    /// When the request arrived (RFC 3339, UTC).
    pub received_at: String,
    /// From arrival to the answer's head (or to the fault that ended it), milliseconds.
    pub duration_ms: f64,
}

/// What a fake hands the journal; the journal assigns `seq`.
#[derive(Debug)]
pub(crate) struct Record {
    pub pillar: Pillar,
    pub method: String,
    pub path: String,
    pub trace_id: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
    pub body_truncated: bool,
    pub status: Option<u16>,
    pub outcome: Outcome,
    pub faults: Vec<AppliedFault>,
    pub received_at: String,
    pub duration: Duration,
}

impl Record {
    /// About what the record costs in memory.
    fn size(&self) -> usize {
        ENTRY_OVERHEAD
            + self.body.len()
            + self.method.len()
            + self.path.len()
            + self.trace_id.as_ref().map_or(0, String::len)
            + self.received_at.len()
            + self.headers.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>()
            + self.faults.len() * 160
    }

    fn entry(&self, seq: u64) -> JournalEntry {
        let body = if self.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
        };
        JournalEntry {
            seq,
            pillar: self.pillar,
            method: self.method.clone(),
            path: self.path.clone(),
            trace_id: self.trace_id.clone(),
            headers: self.headers.clone(),
            body,
            body_truncated: self.body_truncated,
            status: self.status,
            outcome: self.outcome,
            faults: self.faults.clone(),
            received_at: self.received_at.clone(),
            duration_ms: self.duration.as_secs_f64() * 1000.0,
        }
    }
}

/// The headers an entry keeps.
pub(crate) fn selected_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in ["x-trace-id", "traceparent", "idempotency-key", "content-type"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            out.insert(name.to_owned(), v.to_owned());
        }
    }
    if let Some(auth) = headers.get("authorization") {
        let scheme = auth.to_str().ok().and_then(|v| v.split_whitespace().next()).unwrap_or("");
        out.insert("authorization".to_owned(), format!("{scheme} [redacted]").trim_start().to_owned());
    }
    for name in headers.keys() {
        out.entry(name.as_str().to_owned()).or_insert_with(|| "[not recorded]".to_owned());
    }
    out
}

/// A trace id named in a JSON body: `trace_id`, `event_data.trace_id` (Bucket events) or
/// `data.context.trace_id` (Karma events; `context` may be an object or, as the deployed Karma
/// wants it, a JSON string).
pub(crate) fn trace_from_body(body: &[u8]) -> Option<String> {
    if body.first() != Some(&b'{') {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    trace_from_value(&value)
}

/// The same lookup on a parsed body.
pub(crate) fn trace_from_value(value: &Value) -> Option<String> {
    ["/trace_id", "/event_data/trace_id", "/data/context/trace_id"]
        .iter()
        .find_map(|p| value.pointer(p).and_then(Value::as_str))
        .map(str::to_owned)
        .or_else(|| {
            let context = value.pointer("/data/context")?.as_str()?;
            let context: Value = serde_json::from_str(context).ok()?;
            context.get("trace_id")?.as_str().map(str::to_owned)
        })
}

/// Which entries to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalQuery {
    /// Only this pillar's requests.
    pub pillar: Option<Pillar>,
    /// Only requests carrying this trace id.
    pub trace_id: Option<String>,
    /// Only entries after this sequence number.
    pub after_seq: Option<u64>,
    /// At most this many (the most recent ones).
    pub limit: Option<usize>,
}

impl JournalQuery {
    /// Every entry.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only `pillar`'s entries.
    pub fn pillar(mut self, pillar: Pillar) -> Self {
        self.pillar = Some(pillar);
        self
    }

    /// Only entries with this trace id.
    pub fn trace(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// At most the `n` most recent entries.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    fn matches(&self, seq: u64, record: &Record) -> bool {
        self.pillar.is_none_or(|p| p == record.pillar)
            && self.after_seq.is_none_or(|s| seq > s)
            && self.trace_id.as_deref().is_none_or(|t| record.trace_id.as_deref() == Some(t))
    }
}

/// The journal of one stack. Read it through [`crate::Stack::journal`].
#[derive(Debug)]
pub struct Journal {
    records: Mutex<Ring<Record>>,
    pushed: Notify,
}

impl Journal {
    pub(crate) fn new(limits: Limits) -> Self {
        Self { records: Mutex::new(Ring::new(limits)), pushed: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring<Record>> {
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn push(&self, record: Record) {
        let size = record.size();
        // The dropped records are freed after the lock is released.
        let dropped = self.lock().push(record, size).1;
        drop(dropped);
        self.pushed.notify_waiters();
    }

    /// The entries a query selects, oldest first (with a `limit`, the newest `limit` of them).
    pub fn query(&self, query: &JournalQuery) -> Vec<JournalEntry> {
        let guard = self.lock();
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut picked: Vec<JournalEntry> = guard
            .iter()
            .rev()
            .filter(|(seq, r)| query.matches(*seq, r))
            .take(limit)
            .map(|(seq, r)| r.entry(seq))
            .collect();
        picked.reverse();
        picked
    }

    /// One page: the entries `query` selects after cursor `after` (a `seq`), oldest first, at
    /// most `limit`; `next` is the cursor for the following page (`query.limit` and
    /// `query.after_seq` are ignored).
    pub fn page(&self, query: &JournalQuery, after: u64, limit: usize) -> Page<JournalEntry> {
        let query = JournalQuery { after_seq: None, limit: None, ..query.clone() };
        self.lock().page(after, limit, |r| query.matches(u64::MAX, r), |seq, r| r.entry(seq))
    }

    /// How many entries fell off since the stack started.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted()
    }

    /// About how many bytes the kept entries take.
    pub fn bytes(&self) -> usize {
        self.lock().bytes()
    }

    /// The journal's limits.
    pub fn limits(&self) -> Limits {
        self.lock().limits()
    }

    /// Every entry kept, oldest first.
    pub fn entries(&self) -> Vec<JournalEntry> {
        self.query(&JournalQuery::all())
    }

    /// The entries carrying `trace_id`, oldest first.
    pub fn for_trace(&self, trace_id: &str) -> Vec<JournalEntry> {
        self.query(&JournalQuery::all().trace(trace_id))
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the journal is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries kept before the oldest fall off.
    pub fn capacity(&self) -> usize {
        self.limits().entries
    }

    /// Forgets every entry (sequence numbers keep increasing).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Waits until an entry satisfies `predicate` (checking those already there first), for at
    /// most `timeout`; returns the first such entry.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&JournalEntry) -> bool,
    ) -> Option<JournalEntry> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut checked = 0;
        loop {
            let notified = self.pushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let fresh = self.query(&JournalQuery { after_seq: Some(checked), ..JournalQuery::default() });
            if let Some(found) = fresh.iter().find(|e| predicate(e)) {
                return Some(found.clone());
            }
            checked = fresh.last().map_or(checked, |e| e.seq);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pillar: Pillar, trace: Option<&str>, body: &'static [u8]) -> Record {
        Record {
            pillar,
            method: "POST".into(),
            path: "/x".into(),
            trace_id: trace.map(str::to_owned),
            headers: BTreeMap::new(),
            body: Bytes::from_static(body),
            body_truncated: false,
            status: Some(200),
            outcome: Outcome::Answered,
            faults: Vec::new(),
            received_at: "2026-01-01T00:00:00Z".into(),
            duration: Duration::from_millis(1),
        }
    }

    #[test]
    fn ring_keeps_the_newest_and_queries_filter() {
        let journal = Journal::new(Limits::new(3, 1));
        journal.push(record(Pillar::Karma, Some("a"), b""));
        journal.push(record(Pillar::Bucket, Some("a"), b"{\"k\":1}"));
        journal.push(record(Pillar::Bucket, Some("b"), b"not json"));
        journal.push(record(Pillar::Core, None, b""));
        let all = journal.entries();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(all[0].body, serde_json::json!({"k": 1}));
        assert_eq!(all[1].body, "not json");
        assert_eq!(journal.query(&JournalQuery::all().pillar(Pillar::Bucket).limit(1))[0].seq, 3);
        assert_eq!(journal.for_trace("a").len(), 1);
    }

    #[test]
    fn big_bodies_push_the_oldest_out_by_bytes_and_pages_cover_the_rest_once() {
        static BIG: [u8; 4096] = [b'x'; 4096];
        let journal = Journal::new(Limits { entries: 1000, bytes: 64 * 1024 });
        for _ in 0..100 {
            journal.push(record(Pillar::Bucket, Some("t"), &BIG));
        }
        let kept = journal.len();
        assert!(kept < 20, "64 KiB holds at most 15 entries of 4 KiB, kept {kept}");
        assert_eq!(journal.evicted(), 100 - kept as u64);
        assert!(journal.bytes() <= 64 * 1024);
        assert_eq!(journal.entries().first().map(|e| e.seq), Some(101 - kept as u64), "the oldest are gone");
        let (mut seqs, mut after) = (Vec::new(), 0);
        loop {
            let page = journal.page(&JournalQuery::all().pillar(Pillar::Bucket), after, 4);
            assert_eq!(page.evicted, 100 - kept as u64);
            seqs.extend(page.items.iter().map(|e| e.seq));
            match page.next {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(seqs, (101 - kept as u64..=100).collect::<Vec<_>>());
    }

    #[test]
    fn authorization_keeps_only_its_scheme() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer s3cr3t".parse().unwrap());
        headers.insert("x-trace-id", "t-1".parse().unwrap());
        headers.insert("x-api-key", "k3y".parse().unwrap());
        let kept = selected_headers(&headers);
        assert_eq!(kept["authorization"], "Bearer [redacted]");
        assert_eq!(kept["x-trace-id"], "t-1");
        assert_eq!(kept["x-api-key"], "[not recorded]", "every header name is kept, not every value");
    }

    #[test]
    fn trace_ids_are_found_in_pillar_bodies() {
        assert_eq!(trace_from_body(br#"{"event_data":{"trace_id":"t-9"}}"#).as_deref(), Some("t-9"));
        assert_eq!(trace_from_body(br#"{"data":{"context":{"trace_id":"t-8"}}}"#).as_deref(), Some("t-8"));
        let string_context = br#"{"data":{"context":"{\"trace_id\":\"t-7\"}"}}"#;
        assert_eq!(trace_from_body(string_context).as_deref(), Some("t-7"));
        assert_eq!(trace_from_body(b"[1]"), None);
    }

    #[tokio::test]
    async fn waiting_wakes_on_push() {
        let journal = std::sync::Arc::new(Journal::new(Limits::new(10, 1)));
        let writer = journal.clone();
        let handle = tokio::spawn(async move {
            writer.push(record(Pillar::Karma, Some("x"), b""));
            writer.push(record(Pillar::Karma, Some("wanted"), b""));
        });
        let found = journal.wait_for(Duration::from_secs(5), |e| e.trace_id.as_deref() == Some("wanted")).await;
        handle.await.unwrap();
        assert_eq!(found.map(|e| e.seq), Some(2));
        assert!(journal.wait_for(Duration::from_millis(10), |_| false).await.is_none());
    }
}
