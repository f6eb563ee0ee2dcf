//! The telemetry events: exactly the Bucket and Karma shapes of DESIGN.md section 3.
//!
//! Audit events carry what happened, never the content: the caller's `metadata` object rides
//! along, but not the payload, and the execution result loses message bodies, prompts and model
//! answers; recipients are masked unless configured otherwise (Bucket's own governance refuses
//! personal data, and the as-built fork leaked it). Karma events take the configured encoding:
//! the documented one, or what the deployed Karma accepts (`context` as a JSON string, one of its
//! roles, the outcome mapped to one of its actions, or no event at all).

use serde_json::{Map, Value, json};

use crate::config::KarmaEncoding;
use crate::contract::{BucketEvent, BucketEventData, ExecutionStatus, KarmaContext, KarmaEvent, KarmaEventData};

/// What one execution produced, as the event builders need it.
#[derive(Debug)]
pub struct ExecutionFacts<'a> {
    /// The caller's trace id.
    pub trace_id: &'a str,
    /// The requested action (bounded: one of the four, or what the caller sent, truncated).
    pub action_type: &'a str,
    /// `success` or `failed`.
    pub status: ExecutionStatus,
    /// The response's `execution_result`.
    pub result: &'a Map<String, Value>,
    /// `payload.user_id`, if any.
    pub user_id: Option<&'a str>,
    /// `payload.product`, if any.
    pub product: Option<&'a str>,
    /// `payload.metadata`, if it was an object.
    pub metadata: Option<&'a Value>,
    /// Wall time of the execution.
    pub duration_ms: u64,
    /// When it finished (RFC 3339, UTC).
    pub timestamp: &'a str,
}

/// The requester id the executor writes to Bucket as.
pub const REQUESTER_ID: &str = "workflow_executor";

/// The body for `POST {BUCKET_URL}/core/write-event`.
pub fn bucket_event(facts: &ExecutionFacts<'_>, event_id: &str, mask_recipients: bool) -> BucketEvent {
    BucketEvent {
        requester_id: REQUESTER_ID.into(),
        event_data: BucketEventData {
            event_type: "workflow_execution".into(),
            event_id: event_id.into(),
            trace_id: facts.trace_id.into(),
            action_type: facts.action_type.into(),
            status: facts.status,
            execution_result: audit_result(facts.result, mask_recipients),
            timestamp: facts.timestamp.into(),
            user_id: facts.user_id.map(str::to_owned),
            product: facts.product.unwrap_or("unknown").into(),
            duration_ms: facts.duration_ms,
            metadata: facts.metadata.cloned().unwrap_or_else(|| json!({})),
        },
    }
}

/// The body for `POST {KARMA_URL}/v1/event/` in the given encoding; `None` when the encoding
/// maps this outcome to nothing (the event is skipped, not sent).
pub fn karma_event(facts: &ExecutionFacts<'_>, event_id: &str, encoding: &KarmaEncoding) -> Option<Value> {
    let context = KarmaContext {
        trace_id: facts.trace_id.into(),
        action_type: facts.action_type.into(),
        source: REQUESTER_ID.into(),
        event_id: event_id.into(),
    };
    let (action, role, context) = match encoding {
        KarmaEncoding::Spec => {
            let action = match facts.status {
                ExecutionStatus::Success => "workflow_success",
                ExecutionStatus::Failed => "workflow_failure",
            };
            (action.to_owned(), "user".to_owned(), serde_json::to_value(context).ok()?)
        }
        KarmaEncoding::AsBuilt { role, on_success, on_failure } => {
            let action = match facts.status {
                ExecutionStatus::Success => on_success.as_ref()?,
                ExecutionStatus::Failed => on_failure.as_ref()?,
            };
            // The deployed Karma's model types `context` as an optional string.
            let mut context = serde_json::to_value(context).ok()?;
            context["status"] = json!(facts.status);
            (action.clone(), role.clone(), Value::String(context.to_string()))
        }
    };
    let event = KarmaEvent {
        kind: "life_event".into(),
        event_id: event_id.into(),
        timestamp: facts.timestamp.into(),
        data: KarmaEventData {
            user_id: facts.user_id.unwrap_or("system").into(),
            action,
            role,
            note: format!("Workflow execution: {}", facts.action_type),
            context: KarmaContext::default(),
        },
        source: REQUESTER_ID.into(),
    };
    let mut body = serde_json::to_value(event).ok()?;
    body["data"]["context"] = context;
    Some(body)
}

/// Content fields never written to the audit trail: message bodies, prompts, answers, and the
/// e-mail subject (message content too, and often personal).
const CONTENT_FIELDS: &[&str] = &["body", "prompt", "response", "subject"];

/// The execution result as the audit trail keeps it: no content, recipients masked.
pub fn audit_result(result: &Map<String, Value>, mask_recipients: bool) -> Value {
    let succeeded = result.get("success") == Some(&Value::Bool(true));
    let mut audit = Map::with_capacity(result.len());
    for (key, value) in result {
        // On success `message` is the WhatsApp text; on failure it is our own error message.
        if CONTENT_FIELDS.contains(&key.as_str()) || (succeeded && key == "message") {
            continue;
        }
        let value = match (key.as_str(), value) {
            ("recipient", Value::String(r)) if mask_recipients => Value::String(mask_recipient(r)),
            _ => value.clone(),
        };
        audit.insert(key.clone(), value);
    }
    Value::Object(audit)
}

/// Masks a phone number (`+91******3210`) or an e-mail address (`a***@example.com`).
pub fn mask_recipient(recipient: &str) -> String {
    if let Some((local, domain)) = recipient.rsplit_once('@') {
        let first: String = local.chars().take(1).collect();
        return format!("{first}***@{domain}");
    }
    let chars: Vec<char> = recipient.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let keep_start = 3.min(chars.len());
    let keep_end = 4;
    let masked = chars.len() - keep_start - keep_end;
    format!(
        "{}{}{}",
        chars[..keep_start].iter().collect::<String>(),
        "*".repeat(masked),
        chars[chars.len() - keep_end..].iter().collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(status: ExecutionStatus) -> (Map<String, Value>, ExecutionStatus) {
        (Map::new(), status)
    }

    fn karma(status: ExecutionStatus, encoding: &KarmaEncoding) -> Option<Value> {
        let (result, status) = facts(status);
        let facts = ExecutionFacts {
            trace_id: "t-1",
            action_type: "task",
            status,
            result: &result,
            user_id: Some("u-1"),
            product: None,
            metadata: None,
            duration_ms: 3,
            timestamp: "2026-12-06T07:00:00Z",
        };
        karma_event(&facts, "e-1", encoding)
    }

    #[test]
    fn the_spec_karma_event_is_the_documented_one() {
        let body = karma(ExecutionStatus::Failed, &KarmaEncoding::Spec).expect("sent");
        assert_eq!(body["data"]["action"], "workflow_failure");
        assert_eq!(body["data"]["role"], "user");
        assert_eq!(
            body["data"]["context"],
            json!({"trace_id": "t-1", "action_type": "task", "source": "workflow_executor", "event_id": "e-1"})
        );
    }

    #[test]
    fn the_as_built_karma_event_has_a_string_context_and_a_mapped_action() {
        let encoding = KarmaEncoding::AsBuilt {
            role: "learner".into(),
            on_success: Some("completing_lessons".into()),
            on_failure: None,
        };
        let body = karma(ExecutionStatus::Success, &encoding).expect("sent");
        assert_eq!(
            (body["data"]["action"].as_str(), body["data"]["role"].as_str()),
            (Some("completing_lessons"), Some("learner"))
        );
        let context: Value = serde_json::from_str(body["data"]["context"].as_str().expect("a string")).expect("JSON");
        assert_eq!(
            context,
            json!({"trace_id": "t-1", "action_type": "task", "source": "workflow_executor", "event_id": "e-1", "status": "success"})
        );
        assert_eq!(karma(ExecutionStatus::Failed, &encoding), None, "failures send nothing by default");
    }

    #[test]
    fn recipients_are_masked() {
        assert_eq!(mask_recipient("+919876543210"), "+91******3210");
        assert_eq!(mask_recipient("alice@example.com"), "a***@example.com");
        assert_eq!(mask_recipient("12345"), "*****");
    }

    #[test]
    fn audit_result_drops_the_email_subject() {
        let sent = json!({"success": true, "recipient": "a@example.com", "subject": "Your results", "status": "SENT"});
        let audit = audit_result(sent.as_object().expect("object"), true);
        assert_eq!(audit, json!({"success": true, "recipient": "a***@example.com", "status": "SENT"}));
    }

    #[test]
    fn audit_result_drops_content_but_keeps_error_messages() {
        let ok = json!({"success": true, "recipient": "+919876543210", "message": "secret text", "status": "SENT"});
        let audit = audit_result(ok.as_object().expect("object"), true);
        assert_eq!(audit, json!({"success": true, "recipient": "+91******3210", "status": "SENT"}));
        let failed =
            json!({"success": false, "error_code": "missing_message", "message": "message content is required"});
        let audit = audit_result(failed.as_object().expect("object"), true);
        assert_eq!(audit["message"], "message content is required");
    }
}
