//! Parsing and validating `POST /api/workflow/execute`.
//!
//! Two layers, as in the reference executor. The *schema* layer (this module's [`parse`]) rejects
//! requests that are not the contract: malformed JSON (400), wrong types, a decision outside the
//! five, a bad trace id, a `payload.trace_id` that disagrees, strings over their bounds (422), a
//! workflow without payload (400 `missing_workflow_payload`). The *engine* layer turns a
//! well-formed payload into an [`Action`] or a [`Failure`] with the reference's error codes
//! (`missing_action_type`, `missing_task_title`, ...), which is an executed-and-failed answer
//! (HTTP 200, `status: "failed"`), exactly as the reference answers it.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::adapters::{Action, Failure};
use crate::execution::Request;
use crate::trace::is_valid_trace_id;

/// The five decisions Core may send.
pub const DECISIONS: [&str; 5] = ["respond", "task", "workflow", "insight", "fallback"];

/// Field bounds, in characters.
const MAX_ACTION_TYPE: usize = 64;
const MAX_ID: usize = 128;
const MAX_TITLE: usize = 256;
const MAX_DESCRIPTION: usize = 4096;
const MAX_WHATSAPP_MESSAGE: usize = 4096;
const MAX_RECIPIENT: usize = 254;
const MAX_SUBJECT: usize = 256;
const MAX_EMAIL_BODY: usize = 32 * 1024;
const MAX_PROMPT: usize = 16 * 1024;
/// Bound on the serialized `metadata` object, in bytes.
const MAX_METADATA_BYTES: usize = 4096;

/// A request that passed the schema layer.
#[derive(Debug)]
pub enum Parsed {
    /// `decision` is not `workflow`: nothing executes.
    Skip {
        /// The caller's trace id.
        trace_id: String,
    },
    /// A workflow to execute (or to fail with an engine error code).
    Execute(Request),
}

/// Parses and validates a request body.
pub fn parse(body: &[u8]) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("request body is not valid JSON: {e}"), None))?;
    let Value::Object(request) = value else {
        return Err(ApiError::invalid("invalid_type", "request body must be a JSON object", "body"));
    };
    let trace_id = required_string(&request, "trace_id", "trace_id")?;
    if !is_valid_trace_id(trace_id) {
        return Err(ApiError::invalid(
            "invalid_trace_id",
            "trace_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
            "trace_id",
        ));
    }
    let decision = required_string(&request, "decision", "decision")?;
    if !DECISIONS.contains(&decision) {
        return Err(ApiError::invalid(
            "invalid_decision",
            "decision must be one of respond, task, workflow, insight, fallback",
            "decision",
        ));
    }
    // As in the reference, `data` is validated whenever present, whatever the decision.
    let payload = match request.get("data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(data)) => {
            match data.get("workflow_type") {
                Some(Value::String(t)) if t == "workflow" => {}
                None => {
                    return Err(ApiError::invalid(
                        "missing_field",
                        "data.workflow_type is required",
                        "data.workflow_type",
                    ));
                }
                Some(_) => {
                    return Err(ApiError::invalid(
                        "invalid_workflow_type",
                        "data.workflow_type must be \"workflow\"",
                        "data.workflow_type",
                    ));
                }
            }
            match data.get("payload") {
                None => return Err(ApiError::invalid("missing_field", "data.payload is required", "data.payload")),
                Some(Value::Object(payload)) => Some(payload),
                Some(Value::Null) => None,
                Some(_) => {
                    return Err(ApiError::invalid("invalid_type", "data.payload must be an object", "data.payload"));
                }
            }
        }
        Some(_) => return Err(ApiError::invalid("invalid_type", "data must be an object", "data")),
    };
    if decision != "workflow" {
        return Ok(Parsed::Skip { trace_id: trace_id.to_owned() });
    }
    let Some(payload) = payload.filter(|p| !p.is_empty()) else {
        return Err(ApiError::missing_payload());
    };
    match payload.get("trace_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(inner)) if inner == trace_id => {}
        Some(Value::String(_)) => {
            return Err(ApiError::invalid(
                "trace_id_mismatch",
                "data.payload.trace_id must equal the top-level trace_id",
                "data.payload.trace_id",
            ));
        }
        Some(_) => return Err(type_error("data.payload.trace_id", "a string")),
    }
    let fields = PayloadFields(payload);
    let user_id = fields.optional("user_id", MAX_ID)?.map(str::to_owned);
    let product = fields.optional("product", MAX_ID)?.map(str::to_owned);
    let metadata = match payload.get("metadata") {
        None | Some(Value::Null) => None,
        Some(meta @ Value::Object(_)) => {
            if serde_json::to_vec(meta).map(|b| b.len()).unwrap_or(usize::MAX) > MAX_METADATA_BYTES {
                return Err(ApiError::invalid(
                    "field_too_long",
                    format!("data.payload.metadata must serialize to at most {MAX_METADATA_BYTES} bytes"),
                    "data.payload.metadata",
                ));
            }
            Some(meta.clone())
        }
        Some(_) => return Err(type_error("data.payload.metadata", "an object")),
    };
    let action_type = fields.optional("action_type", MAX_ACTION_TYPE)?;
    let plan = match action_type {
        None => Err(Failure::new("missing_action_type", "payload.action_type is required")),
        Some(action) => fields.action(action)?,
    };
    let fingerprint = {
        // The canonical JSON (object keys sorted) goes straight into the hash.
        let mut hasher = Sha256::new();
        let _ = serde_json::to_writer(&mut hasher, &(trace_id, decision, payload));
        crate::trace::hex(&hasher.finalize())
    };
    Ok(Parsed::Execute(Request {
        trace_id: trace_id.to_owned(),
        plan,
        action_type: action_type.filter(|a| !a.is_empty()).unwrap_or("unknown").to_owned(),
        user_id,
        product,
        metadata,
        fingerprint,
    }))
}

fn required_string<'a>(object: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a str, ApiError> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ApiError::invalid("missing_field", format!("{field} is required"), field)),
        Some(_) => Err(type_error(field, "a string")),
    }
}

fn type_error(field: &str, expected: &str) -> ApiError {
    ApiError::invalid("invalid_type", format!("{field} must be {expected}"), field)
}

/// Typed access to payload fields, with bounds and the reference's "missing" semantics.
struct PayloadFields<'a>(&'a Map<String, Value>);

impl<'a> PayloadFields<'a> {
    /// A string field that may be absent; empty strings count as absent (the reference tests
    /// truthiness). Wrong types and over-long values are schema errors.
    fn optional(&self, key: &str, max_chars: usize) -> Result<Option<&'a str>, ApiError> {
        self.first_of(&[key], max_chars, true)
    }

    /// The first present field among `keys` (a name and its aliases).
    fn first_of(&self, keys: &[&str], max_chars: usize, single_line: bool) -> Result<Option<&'a str>, ApiError> {
        for key in keys {
            // The field's name is built only for an error: this runs for every field of every request.
            let field = || format!("data.payload.{key}");
            match self.0.get(*key) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) if s.is_empty() => continue,
                Some(Value::String(s)) => {
                    if s.chars().count() > max_chars {
                        let field = field();
                        return Err(ApiError::invalid(
                            "field_too_long",
                            format!("{field} must be at most {max_chars} characters"),
                            &field,
                        ));
                    }
                    let forbidden = |c: char| c.is_control() && (single_line || !matches!(c, '\n' | '\r' | '\t'));
                    if s.chars().any(forbidden) {
                        let field = field();
                        return Err(ApiError::invalid(
                            "invalid_characters",
                            format!("{field} must not contain control characters"),
                            &field,
                        ));
                    }
                    return Ok(Some(s));
                }
                Some(_) => return Err(type_error(&field(), "a string")),
            }
        }
        Ok(None)
    }

    /// The action for `action_type`, or the engine failure the reference reports.
    fn action(&self, action_type: &str) -> Result<Result<Action, Failure>, ApiError> {
        let missing = |code: &'static str, message: &str| Ok(Err(Failure::new(code, message)));
        Ok(Ok(match action_type {
            "task" => {
                let Some(title) = self.first_of(&["title"], MAX_TITLE, true)? else {
                    return missing("missing_task_title", "title is required to create a task");
                };
                let description = self.first_of(&["description"], MAX_DESCRIPTION, false)?.unwrap_or_default();
                Action::Task { title: title.to_owned(), description: description.to_owned() }
            }
            "whatsapp" => {
                let recipient = self.first_of(&["recipient", "phone"], MAX_RECIPIENT, true)?;
                let message = self.first_of(&["message"], MAX_WHATSAPP_MESSAGE, false)?;
                let Some(recipient) = recipient else {
                    return missing("missing_recipient", "recipient phone number is required");
                };
                let Some(message) = message else {
                    return missing("missing_message", "message content is required");
                };
                if !is_e164(recipient) {
                    return missing("invalid_recipient", "recipient must be an E.164 phone number, e.g. +919876543210");
                }
                Action::WhatsApp { recipient: recipient.to_owned(), message: message.to_owned() }
            }
            "email" => {
                let recipient = self.first_of(&["recipient"], MAX_RECIPIENT, true)?;
                let subject = self.first_of(&["subject"], MAX_SUBJECT, true)?;
                let body = self.first_of(&["body"], MAX_EMAIL_BODY, false)?;
                let Some(recipient) = recipient else {
                    return missing("missing_recipient", "recipient email is required");
                };
                let Some(subject) = subject else { return missing("missing_subject", "email subject is required") };
                let Some(body) = body else { return missing("missing_body", "email body is required") };
                if recipient.parse::<lettre::Address>().is_err() {
                    return missing("invalid_recipient", "recipient must be an e-mail address");
                }
                Action::Email { recipient: recipient.to_owned(), subject: subject.to_owned(), body: body.to_owned() }
            }
            "ai" => {
                let Some(prompt) = self.first_of(&["prompt", "content"], MAX_PROMPT, false)? else {
                    return missing("missing_prompt", "prompt is required for AI execution");
                };
                Action::Ai { prompt: prompt.to_owned() }
            }
            other => {
                let shown: String = other.chars().take(MAX_ACTION_TYPE).collect();
                return Ok(Err(Failure::new(
                    "unsupported_action_type",
                    format!("action_type '{shown}' is not supported"),
                )));
            }
        }))
    }
}

/// `+` followed by 8 to 15 digits, the first not zero.
fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else { return false };
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(value: Value) -> Result<Parsed, ApiError> {
        parse(&serde_json::to_vec(&value).expect("serializable"))
    }

    #[test]
    fn e164_numbers() {
        assert!(is_e164("+919876543210"));
        assert!(!is_e164("919876543210"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+12"));
    }

    #[test]
    fn fingerprint_ignores_key_order_but_not_values() {
        let a = br#"{"trace_id":"t","decision":"workflow","data":{"workflow_type":"workflow","payload":{"action_type":"task","title":"x"}}}"#;
        let b = br#"{"decision":"workflow","trace_id":"t","data":{"payload":{"title":"x","action_type":"task"},"workflow_type":"workflow"}}"#;
        let fp = |body: &[u8]| match parse(body) {
            Ok(Parsed::Execute(r)) => r.fingerprint,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(fp(a), fp(b));
        let c = br#"{"trace_id":"t","decision":"workflow","data":{"workflow_type":"workflow","payload":{"action_type":"task","title":"y"}}}"#;
        assert_ne!(fp(a), fp(c));
    }

    #[test]
    fn engine_failures_are_plans_not_rejections() {
        let parsed = parse_json(json!({"trace_id": "t", "decision": "workflow",
            "data": {"workflow_type": "workflow", "payload": {"action_type": "email", "recipient": "a@b.co"}}}));
        match parsed {
            Ok(Parsed::Execute(r)) => assert_eq!(r.plan.expect_err("fails").code, "missing_subject"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
