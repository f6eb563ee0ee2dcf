//! The WhatsApp adapter: the Business Cloud API send-message call.
//!
//! `POST {WHATSAPP_API_URL}/{version}/{phone_number_id}/messages` with a bearer token and a text
//! message; the provider's message id (`messages[0].id`) becomes `whatsapp_message_id`. Graph API
//! errors (`{"error": {"message", "code", ...}}`) are passed on as the failure's message.

use serde_json::{Value, json};

use super::{Failure, Performed, fields, status_failure, transport_failure};
use crate::config::WhatsAppSettings;
use crate::trace::trace_headers;

const PROVIDER: &str = "WhatsApp Cloud API";

pub(super) struct WhatsApp {
    settings: WhatsAppSettings,
    endpoint: reqwest::Url,
}

impl WhatsApp {
    pub(super) fn new(settings: WhatsAppSettings) -> Self {
        let mut endpoint = settings.api_url.clone();
        let base = endpoint.path().trim_end_matches('/').to_owned();
        endpoint.set_path(&format!("{base}/{}/{}/messages", settings.api_version, settings.phone_number_id));
        Self { settings, endpoint }
    }

    pub(super) async fn send(
        &self,
        http: &reqwest::Client,
        recipient: &str,
        message: &str,
        trace_id: &str,
    ) -> Result<Performed, Failure> {
        let body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": recipient.trim_start_matches('+'),
            "type": "text",
            "text": {"preview_url": false, "body": message},
        });
        let mut request = http
            .post(self.endpoint.clone())
            .timeout(self.settings.timeout)
            .headers(trace_headers(trace_id))
            .json(&body);
        if !self.settings.access_token.is_empty() {
            request = request.bearer_auth(self.settings.access_token.expose());
        }
        let response = request.send().await.map_err(|e| transport_failure(PROVIDER, &e))?;
        let status = response.status().as_u16();
        let answer: Value = match response.json().await {
            Ok(answer) => answer,
            Err(e) if e.is_timeout() => return Err(transport_failure(PROVIDER, &e)),
            Err(_) => Value::Null,
        };
        if !(200..300).contains(&status) {
            return Err(status_failure(PROVIDER, status, answer.pointer("/error/message").and_then(Value::as_str)));
        }
        let id = answer.pointer("/messages/0/id").and_then(Value::as_str).ok_or_else(|| {
            Failure::new("provider_bad_response", format!("{PROVIDER} answered without a message id"))
        })?;
        Ok(Performed {
            fields: fields([
                ("whatsapp_message_id", json!(id)),
                ("recipient", json!(recipient)),
                ("message", json!(message)),
                ("status", json!("SENT")),
                ("sent_at", json!(crate::now_rfc3339())),
            ]),
            ops: Vec::new(),
        })
    }
}
