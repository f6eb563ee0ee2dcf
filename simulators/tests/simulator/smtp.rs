//! The SMTP sink, with the client the executor uses (lettre) and by hand.

use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use pillar_sim::{Fault, FaultRule, Pillar, Stack};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::stack;

fn mailer(stack: &Stack) -> AsyncSmtpTransport<Tokio1Executor> {
    let addr = stack.smtp_addr();
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .timeout(Some(Duration::from_secs(2)))
        .build()
}

fn message(trace: &str) -> Message {
    Message::builder()
        .from("executor@bhiv.local".parse().unwrap())
        .to("learner@example.com".parse().unwrap())
        .subject("Session reminder")
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("X-Trace-Id"), trace.to_owned()))
        .body(String::from("See you at 10.\n.A line starting with a dot\n"))
        .unwrap()
}

#[tokio::test]
async fn lettre_delivers_to_the_sink_and_the_message_is_recorded() {
    let stack = stack().await;
    let response = mailer(&stack).send(message("trace-mail-1")).await.expect("delivered");
    assert!(response.is_positive());
    let messages = stack.smtp().messages();
    assert_eq!(messages.len(), 1);
    let mail = &messages[0];
    assert_eq!(
        (mail.from.as_str(), mail.to.as_slice()),
        ("executor@bhiv.local", &["learner@example.com".to_owned()][..])
    );
    assert_eq!(mail.header("subject"), Some("Session reminder"));
    assert_eq!(mail.trace_id.as_deref(), Some("trace-mail-1"));
    assert!(mail.data.contains("\r\n.A line starting with a dot"), "dot-stuffing undone: {}", mail.data);
    let entry = stack.journal().for_trace("trace-mail-1").pop().expect("journaled");
    assert_eq!((entry.pillar, entry.method.as_str(), entry.status), (Pillar::Smtp, "DATA", Some(250)));
    assert_eq!(entry.body["to"][0], "learner@example.com");
}

#[tokio::test]
async fn an_injected_error_is_the_smtp_reply_and_nothing_is_recorded() {
    let stack = stack().await;
    stack.faults().set(FaultRule::new(Pillar::Smtp, Fault::http_error(451)).times(1)).unwrap();
    let error = mailer(&stack).send(message("t-451")).await.expect_err("refused");
    assert!(error.is_transient(), "{error:?}");
    assert!(stack.smtp().messages().is_empty());
    mailer(&stack).send(message("t-ok")).await.expect("the window closed after one message");
    assert_eq!(stack.smtp().messages().len(), 1);
}

#[tokio::test]
async fn a_reset_fails_the_send() {
    let stack = stack().await;
    stack.faults().set(FaultRule::new(Pillar::Smtp, Fault::Reset)).unwrap();
    assert!(mailer(&stack).send(message("t-reset")).await.is_err());
    assert!(stack.smtp().messages().is_empty());
    assert_eq!(stack.journal().entries().pop().unwrap().outcome, pillar_sim::Outcome::Reset);
}

/// Sends one line and reads the (possibly multi-line) reply.
async fn say(reader: &mut BufReader<TcpStream>, line: &str) -> String {
    if !line.is_empty() {
        reader.get_mut().write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
    }
    let mut reply = String::new();
    loop {
        let mut next = String::new();
        reader.read_line(&mut next).await.unwrap();
        reply.push_str(&next);
        if next.len() < 4 || next.as_bytes()[3] != b'-' {
            return reply;
        }
    }
}

#[tokio::test]
async fn the_session_follows_smtp_by_hand() {
    let stack = stack().await;
    let mut s = BufReader::new(TcpStream::connect(stack.smtp_addr()).await.unwrap());
    assert!(say(&mut s, "").await.starts_with("220 "));
    let ehlo = say(&mut s, "EHLO tester").await;
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN") && ehlo.ends_with("250 SMTPUTF8\r\n"), "{ehlo}");
    assert!(say(&mut s, "RCPT TO:<a@b.c>").await.starts_with("503 "), "RCPT before MAIL");
    assert!(say(&mut s, "AUTH PLAIN AHVzZXIAcGFzcw==").await.starts_with("235 "));
    assert!(say(&mut s, "MAIL FROM:<me@x.io>").await.starts_with("250 "));
    assert!(say(&mut s, "RSET").await.starts_with("250 "));
    assert!(say(&mut s, "DATA").await.starts_with("503 "), "RSET forgot the transaction");
    assert!(say(&mut s, "NOOP").await.starts_with("250 "));
    assert!(say(&mut s, "MAIL FROM:<me@x.io>").await.starts_with("250 "));
    assert!(say(&mut s, "RCPT TO:<you@y.io>").await.starts_with("250 "));
    assert!(say(&mut s, "DATA").await.starts_with("354 "));
    assert!(say(&mut s, "Subject: hi\r\n\r\n..dot\r\nend\r\n.").await.starts_with("250 "));
    assert!(say(&mut s, "STARTTLS").await.starts_with("454 "));
    assert!(say(&mut s, "FROB").await.starts_with("500 "));
    assert!(say(&mut s, "QUIT").await.starts_with("221 "));
    let mail = stack.smtp().messages().pop().unwrap();
    assert_eq!(mail.data, "Subject: hi\r\n\r\n.dot\r\nend\r\n");
    assert_eq!(mail.auth_user.as_deref(), Some("user"));
}
