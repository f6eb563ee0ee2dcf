//! The WhatsApp adapter: the Business Cloud API send-message call.
//!
//! `POST {WHATSAPP_API_URL}/{version}/{phone_number_id}/messages` with a bearer token and a text
//! message; the provider's message id (`messages[0].id`) becomes `whatsapp_message_id`. Graph API
//! errors (`{"error": {"message", "code", ...}}`) are passed on as the failure's message.

use serde_json::{Value, json};

use super::{Failure, Performed, fields, post_json};
use crate::config::WhatsAppSettings;

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
        let settings = &self.settings;
        let answer =
            post_json(http, PROVIDER, &self.endpoint, settings.timeout, &settings.access_token, trace_id, &body)
                .await?;
        let id = answer.pointer("/messages/0/id").and_then(Value::as_str).ok_or_else(|| {
            Failure::new("provider_bad_response", format!("{PROVIDER} answered without a message id"))
        })?;
        Ok(Performed {
            fields: fields([
                ("whatsapp_message_id", json!(id)),
                ("recipient", json!(recipient)),
                ("message", json!(message)),
                ("status", json!("SENT")),
                ("sent_at", json!(crate::clock::now_rfc3339())),
            ]),
            created: None,
        })
    }
}
