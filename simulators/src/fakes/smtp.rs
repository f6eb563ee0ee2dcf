//! The SMTP sink (:2525): enough SMTP for `lettre` and any plain client, recording every message.
//!
//! It greets with 220 and understands EHLO/HELO, AUTH PLAIN and LOGIN (any credentials are
//! accepted and the user name recorded), MAIL FROM, RCPT TO, DATA (with dot-stuffing undone),
//! RSET, NOOP, VRFY and QUIT; STARTTLS is declined (454), so clients must be set to plain SMTP
//! (`SMTP_TLS=none`). A message is a "request" for the fault set, decided when its final `.`
//! arrives: latency delays the reply, `http_error`'s status becomes the reply code (the message
//! is then not recorded), blackhole never replies (the connection is held until the client gives
//! up), reset sends RST, refuse closes the port. Each decided message is journaled (method
//! `DATA`, path = first recipient, body `{from, to, data}`), with the trace id taken from an
//! `X-Trace-Id:` header of the message when it has one. Accepted messages are kept in a bounded
//! log ([`DEFAULT_LIMITS`] by default; the oldest dropped first and counted).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::faults::injector::Action;
use crate::pillar::Pillar;
use crate::record::bounded::{ENTRY_OVERHEAD, Limits, Page, Ring};
use crate::record::journal::{BODY_LIMIT, Outcome, Record};
use crate::serving::listener::{Connection, ConnectionHandler, FaultIo};
use crate::serving::sim::Sim;
use crate::serving::wire;

/// The longest command line accepted.
const LINE_LIMIT: usize = 64 * 1024;
/// The largest message accepted (advertised as `SIZE`).
const MESSAGE_LIMIT: usize = 10 * 1024 * 1024;
/// How long an idle connection is kept.
const IDLE: Duration = Duration::from_secs(300);

/// A message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmtpMessage {
    /// The `MAIL FROM` address.
    pub from: String,
    /// The `RCPT TO` addresses.
    pub to: Vec<String>,
    /// The message as sent (headers and body), dot-stuffing undone, CRLF line ends.
    pub data: String,
    /// The message's `X-Trace-Id` header, if any.
    pub trace_id: Option<String>,
    /// The user name given to AUTH, if any.
    pub auth_user: Option<String>,
}

impl SmtpMessage {
    /// The value of a header of the message (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.data, name)
    }
}

fn header_in<'a>(data: &'a str, name: &str) -> Option<&'a str> {
    data.split("\r\n").take_while(|line| !line.is_empty()).find_map(|line| {
        line.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
    })
}

/// The sink's default limits: 5,000 messages, 16 MiB.
pub(crate) const DEFAULT_LIMITS: Limits = Limits::new(5_000, 16);

/// The sink's state; reach it through [`crate::Stack::smtp`].
#[derive(Debug)]
pub struct SmtpSink {
    sim: Arc<Sim>,
    messages: Mutex<Ring<SmtpMessage>>,
    sessions: AtomicU64,
}

impl SmtpSink {
    pub(crate) fn new(sim: Arc<Sim>, limits: Limits) -> Self {
        Self { sim, messages: Mutex::new(Ring::new(limits)), sessions: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring<SmtpMessage>> {
        self.messages.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The messages accepted and kept, in order.
    pub fn messages(&self) -> Vec<SmtpMessage> {
        self.lock().iter().map(|(_, m)| m.clone()).collect()
    }

    /// One page of kept messages after cursor `after` (optionally of one trace), oldest first.
    pub fn page(&self, after: u64, limit: usize, trace_id: Option<&str>) -> Page<SmtpMessage> {
        self.lock().page(after, limit, |m| trace_id.is_none_or(|t| m.trace_id.as_deref() == Some(t)), |_, m| m.clone())
    }

    /// How many connections the sink served since the stack started (the stack's own
    /// readiness check is one), whether or not they sent a message.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// How many messages were dropped to bound memory since the stack started.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted()
    }

    /// Forgets every message (the eviction count is kept).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// Serves SMTP sessions for a sink.
#[derive(Debug, Clone)]
pub(crate) struct SmtpHandler(pub Arc<SmtpSink>);

impl ConnectionHandler for SmtpHandler {
    fn serve(
        &self,
        io: FaultIo,
        conn: Connection,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let sink = self.0.clone();
        sink.sessions.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut session =
                Session { io: BufReader::new(io), sink, conn, from: None, to: Vec::new(), auth_user: None };
            tokio::select! {
                result = session.run() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "smtp session ended");
                    }
                }
                () = shutdown.cancelled() => {
                    let _ = session.io.get_mut().write_all(b"421 4.3.2 Service shutting down\r\n").await;
                }
            }
        }
    }
}

struct Session {
    io: BufReader<FaultIo>,
    sink: Arc<SmtpSink>,
    conn: Connection,
    from: Option<String>,
    to: Vec<String>,
    auth_user: Option<String>,
}

/// What a DATA transfer ended with.
enum Next {
    Continue,
    Close,
}

impl Session {
    async fn reply(&mut self, text: &str) -> io::Result<()> {
        let io = self.io.get_mut();
        io.write_all(text.as_bytes()).await?;
        io.write_all(b"\r\n").await?;
        io.flush().await
    }

    /// Reads one line without its line end; `None` at end of stream.
    async fn line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(IDLE, (&mut self.io).take(LINE_LIMIT as u64).read_until(b'\n', &mut line))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle"))??;
        if read == 0 {
            return Ok(None);
        }
        if !line.ends_with(b"\n") && line.len() >= LINE_LIMIT {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        Ok(Some(line))
    }

    async fn run(&mut self) -> io::Result<()> {
        self.reply("220 pillar-sim ESMTP ready").await?;
        while let Some(raw) = self.line().await? {
            let line = String::from_utf8_lossy(&raw).into_owned();
            let (verb, rest) = line.split_once(' ').unwrap_or((&line, ""));
            match verb.to_ascii_uppercase().as_str() {
                "EHLO" => {
                    let greeting = format!(
                        "250-pillar-sim greets {}\r\n250-8BITMIME\r\n250-SIZE {MESSAGE_LIMIT}\r\n250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8",
                        rest.trim()
                    );
                    self.reply(&greeting).await?;
                }
                "HELO" => self.reply("250 pillar-sim").await?,
                "MAIL" if self.from.is_some() => self.reply("503 5.5.1 Error: nested MAIL command").await?,
                "MAIL" => match address(rest, "FROM:") {
                    Some(from) => {
                        self.from = Some(from);
                        self.reply("250 2.1.0 Ok").await?;
                    }
                    None => self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await?,
                },
                "RCPT" if self.from.is_none() => self.reply("503 5.5.1 Error: need MAIL command").await?,
                "RCPT" => match address(rest, "TO:") {
                    Some(to) => {
                        self.to.push(to);
                        self.reply("250 2.1.5 Ok").await?;
                    }
                    None => self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await?,
                },
                "DATA" if self.to.is_empty() => self.reply("503 5.5.1 Error: need RCPT command").await?,
                "DATA" => {
                    if let Next::Close = self.data().await? {
                        return Ok(());
                    }
                }
                "RSET" => {
                    self.from = None;
                    self.to.clear();
                    self.reply("250 2.0.0 Ok").await?;
                }
                "NOOP" => self.reply("250 2.0.0 Ok").await?,
                "VRFY" => self.reply("252 2.0.0 Cannot VRFY user").await?,
                "AUTH" => self.auth(rest).await?,
                "STARTTLS" => self.reply("454 4.7.0 TLS not available").await?,
                "QUIT" => {
                    self.reply("221 2.0.0 Bye").await?;
                    return Ok(());
                }
                _ => self.reply("500 5.5.2 Error: command not recognized").await?,
            }
        }
        Ok(())
    }

    async fn auth(&mut self, rest: &str) -> io::Result<()> {
        let (mechanism, initial) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
        let user = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let response = if initial.is_empty() {
                    self.reply("334 ").await?;
                    self.line().await?.unwrap_or_default()
                } else {
                    initial.as_bytes().to_vec()
                };
                base64_decode(&response)
                    .and_then(|d| d.split(|b| *b == 0).nth(1).map(|u| String::from_utf8_lossy(u).into_owned()))
            }
            "LOGIN" => {
                self.reply("334 VXNlcm5hbWU6").await?;
                let user = self.line().await?.unwrap_or_default();
                self.reply("334 UGFzc3dvcmQ6").await?;
                let _password = self.line().await?;
                base64_decode(&user).map(|u| String::from_utf8_lossy(&u).into_owned())
            }
            _ => return self.reply("504 5.5.4 Unrecognized authentication type").await,
        };
        match user {
            Some(user) => {
                self.auth_user = Some(user);
                self.reply("235 2.7.0 Authentication successful").await
            }
            None => self.reply("501 5.5.2 Cannot decode response").await,
        }
    }

    async fn data(&mut self) -> io::Result<Next> {
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let started = Instant::now();
        let received_at = wire::now_rfc3339();
        let mut data = Vec::new();
        let mut too_big = false;
        loop {
            let Some(line) = self.line().await? else { return Ok(Next::Close) };
            if line == b"." {
                break;
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            if data.len() + line.len() + 2 > MESSAGE_LIMIT {
                too_big = true;
                continue;
            }
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        let from = self.from.take().unwrap_or_default();
        let to = std::mem::take(&mut self.to);
        if too_big {
            return self.reply("552 5.3.4 Message too big").await.map(|()| Next::Continue);
        }
        let data = String::from_utf8_lossy(&data).into_owned();
        let sim = self.sink.sim.clone();
        let decision = sim.faults.decide(Pillar::Smtp, "DATA", "/");
        for hit in decision.hits() {
            sim.metrics.fault(Pillar::Smtp.as_str(), "DATA", hit.kind);
        }
        if !decision.latency.is_zero() {
            tokio::time::sleep(decision.latency).await;
        }
        let trace_id = header_in(&data, "x-trace-id").map(str::to_owned);
        // `answer` does not apply to the sink (its rules are refused), so it leaves mail alone.
        let (status, outcome) = match decision.action {
            None | Some(Action::Answer { .. }) => (Some(250), Outcome::Answered),
            Some(Action::Error { status, .. }) => (Some(status), Outcome::Answered),
            Some(Action::Blackhole) => (None, Outcome::Blackholed),
            Some(Action::Reset) => (None, Outcome::Reset),
        };
        let mut journal_body = serde_json::to_vec(&json!({"from": from, "to": to, "data": data})).unwrap_or_default();
        let body_truncated = journal_body.len() > BODY_LIMIT;
        journal_body.truncate(BODY_LIMIT);
        sim.journal.push(Record {
            pillar: Pillar::Smtp,
            method: "DATA".into(),
            path: to.first().cloned().unwrap_or_default(),
            trace_id: trace_id.clone(),
            headers: BTreeMap::new(),
            body: Bytes::from(journal_body),
            body_truncated,
            status,
            outcome,
            faults: decision.applied.clone(),
            received_at,
            duration: started.elapsed(),
        });
        let status_label = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        sim.metrics.request(Pillar::Smtp.as_str(), "DATA", "DATA", &status_label, started.elapsed().as_secs_f64());
        match decision.action {
            None | Some(Action::Answer { .. }) => {
                let id = sim.token("");
                let size = ENTRY_OVERHEAD
                    + from.len()
                    + to.iter().map(String::len).sum::<usize>()
                    + data.len()
                    + trace_id.as_ref().map_or(0, String::len);
                let message = SmtpMessage { from, to, data, trace_id, auth_user: self.auth_user.clone() };
                let dropped = self.sink.lock().push(message, size).1;
                drop(dropped);
                self.reply(&format!("250 2.0.0 Ok: queued as {id}")).await?;
                Ok(Next::Continue)
            }
            Some(Action::Error { status, .. }) => {
                let class = if status < 500 { 4 } else { 5 };
                self.reply(&format!("{status} {class}.3.0 Injected failure (pillar-sim)")).await?;
                Ok(Next::Continue)
            }
            Some(Action::Blackhole) => {
                // Hold the connection, answering nothing, until the client gives up.
                let mut sink = [0u8; 1024];
                while self.io.read(&mut sink).await? > 0 {}
                Ok(Next::Close)
            }
            Some(Action::Reset) => {
                self.conn.reset();
                Ok(Next::Close)
            }
        }
    }
}

/// The address in `FROM:<a@b> PARAMS` / `TO:<a@b>`.
fn address(rest: &str, prefix: &str) -> Option<String> {
    let rest = rest.trim();
    let head = rest.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let value = rest[prefix.len()..].trim_start();
    let value = value.split_whitespace().next().unwrap_or("");
    let address = value.strip_prefix('<').and_then(|v| v.strip_suffix('>')).unwrap_or(value);
    Some(address.to_owned())
}

/// Standard base64 (with or without padding); `None` when malformed.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let trimmed: Vec<u8> = input.iter().copied().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_auth_responses() {
        assert_eq!(base64_decode(b"AHVzZXIAcGFzcw==").unwrap(), b"\0user\0pass");
        assert_eq!(base64_decode(b"VXNlcm5hbWU6").unwrap(), b"Username:");
        assert!(base64_decode(b"!!").is_none());
    }

    #[test]
    fn addresses_and_headers_are_parsed() {
        assert_eq!(address("FROM:<a@b.c> BODY=8BITMIME", "FROM:").as_deref(), Some("a@b.c"));
        assert_eq!(address("to: <x@y.z>", "TO:").as_deref(), Some("x@y.z"));
        assert_eq!(address("FROMa@b", "TO:"), None);
        let data = "Subject: Hi\r\nX-Trace-Id: t-1\r\n\r\nX-Trace-Id: not-a-header\r\n";
        assert_eq!(header_in(data, "x-trace-id"), Some("t-1"));
        assert_eq!(header_in(data, "from"), None);
    }
}
