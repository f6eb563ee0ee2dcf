//! The e-mail adapter: SMTP through `lettre` (async, Tokio).
//!
//! Each message gets its own `Message-ID` (returned as `message_id`) and an `X-Trace-Id` header.
//! SMTP replies map to codes: permanent (5xx) → `provider_rejected`, transient (4xx) →
//! `provider_error`, timeouts → `provider_timeout`, connection failures → `provider_unavailable`.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::json;

use super::{Failure, Performed, fields};
use crate::config::{ConfigError, SmtpSettings, SmtpTls};

const PROVIDER: &str = "SMTP relay";

pub(super) struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    domain: String,
    /// Bounds the whole send: lettre's own async timeout only covers the TCP connect, so a relay
    /// that accepts and then never answers would otherwise hold the request forever.
    timeout: std::time::Duration,
}

impl Email {
    pub(super) fn new(settings: &SmtpSettings) -> Result<Self, ConfigError> {
        let tls_error =
            |e: lettre::transport::smtp::Error| ConfigError { variable: "SMTP_HOST", message: e.to_string() };
        let tls = match settings.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(TlsParameters::new(settings.host.clone()).map_err(tls_error)?),
            SmtpTls::Tls => Tls::Wrapper(TlsParameters::new(settings.host.clone()).map_err(tls_error)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.clone())
            .port(settings.port)
            .tls(tls)
            .timeout(Some(settings.timeout));
        if !settings.username.is_empty() {
            builder =
                builder.credentials(Credentials::new(settings.username.clone(), settings.password.expose().to_owned()));
        }
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| ConfigError { variable: "SMTP_FROM", message: format!("not a mailbox: {e}") })?;
        let domain = from.email.domain().to_owned();
        Ok(Self { transport: builder.build(), from, domain, timeout: settings.timeout })
    }

    pub(super) async fn send(
        &self,
        recipient: &str,
        subject: &str,
        body: &str,
        trace_id: &str,
    ) -> Result<Performed, Failure> {
        let to: Mailbox = recipient
            .parse()
            .map_err(|_| Failure::new("invalid_recipient", "recipient is not a valid e-mail address"))?;
        let message_id = format!("<{}@{}>", crate::clock::new_id(), self.domain);
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id.clone()))
            .header(ContentType::TEXT_PLAIN)
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("X-Trace-Id"), trace_id.to_owned()))
            .body(body.to_owned())
            .map_err(|_| Failure::new("invalid_email", "the e-mail could not be built from the payload"))?;
        let sent = tokio::time::timeout(self.timeout, self.transport.send(message))
            .await
            .map_err(|_| Failure::new("provider_timeout", format!("{PROVIDER} did not answer in time")))?;
        sent.map_err(|e| {
            if e.is_timeout() {
                Failure::new("provider_timeout", format!("{PROVIDER} did not answer in time"))
            } else if e.is_permanent() {
                Failure::new("provider_rejected", format!("{PROVIDER} rejected the message ({})", code(&e)))
            } else if e.is_transient() {
                Failure::new("provider_error", format!("{PROVIDER} deferred the message ({})", code(&e)))
            } else {
                Failure::new("provider_unavailable", format!("{PROVIDER} could not be reached"))
            }
        })?;
        Ok(Performed {
            fields: fields([
                ("message_id", json!(message_id)),
                ("recipient", json!(recipient)),
                ("subject", json!(subject)),
                ("status", json!("SENT")),
                ("sent_at", json!(crate::clock::now_rfc3339())),
            ]),
            created: None,
        })
    }
}

fn code(error: &lettre::transport::smtp::Error) -> String {
    error.status().map(|c| format!("SMTP {c}")).unwrap_or_else(|| "no reply code".into())
}
