//! The requests features talk about by name: a workflow of each action type (succeeding or
//! missing a required field) and the hostile requests of the input-hardening list.

use serde_json::{Map, Value, json};

use super::params::Action;

/// The WhatsApp recipient every generated workflow uses.
pub const PHONE: &str = "+919876543210";
/// The WhatsApp text every generated workflow sends.
pub const WHATSAPP_TEXT: &str = "Your class starts at 5 pm";
/// The e-mail recipient every generated workflow uses.
pub const EMAIL: &str = "alice@example.com";
/// The e-mail body every generated workflow sends.
pub const EMAIL_BODY: &str = "We go live at 10, see you there";
/// The AI prompt every generated workflow sends.
pub const PROMPT: &str = "Summarize chapter 2 of the Gita";

/// The adapter fields of a valid workflow of `action`.
pub fn action_fields(action: Action) -> Map<String, Value> {
    let fields = match action {
        Action::Task => json!({"action_type": "task", "title": "Call the bank", "description": "About the loan"}),
        Action::WhatsApp => json!({"action_type": "whatsapp", "recipient": PHONE, "message": WHATSAPP_TEXT}),
        Action::Email => {
            json!({"action_type": "email", "recipient": EMAIL, "subject": "The launch", "body": EMAIL_BODY})
        }
        Action::Ai => json!({"action_type": "ai", "prompt": PROMPT}),
    };
    match fields {
        Value::Object(map) => map,
        _ => unreachable!("literal objects"),
    }
}

/// The required field a failing workflow of `action` leaves out, and the error code the
/// executor reports for it.
pub fn missing_field(action: Action) -> (&'static str, &'static str) {
    match action {
        Action::Task => ("title", "missing_task_title"),
        Action::WhatsApp => ("message", "missing_message"),
        Action::Email => ("subject", "missing_subject"),
        Action::Ai => ("prompt", "missing_prompt"),
    }
}

/// An execute request body.
pub fn execute_body(trace_id: &str, decision: &str, payload: Map<String, Value>) -> Value {
    json!({"trace_id": trace_id, "decision": decision, "data": {"workflow_type": "workflow", "payload": payload}})
}

/// A named hostile request: body bytes, content type, extra headers.
#[derive(Debug, Clone)]
pub struct Hostile {
    /// The raw body.
    pub body: Vec<u8>,
    /// The `Content-Type` sent (none when `None`).
    pub content_type: Option<&'static str>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The HTTP method.
    pub method: &'static str,
    /// The path.
    pub path: &'static str,
}

fn valid(trace: &str) -> Value {
    execute_body(trace, "workflow", action_fields(Action::Task))
}

/// The hostile requests of the input-hardening list, by the name a feature table uses.
pub fn hostile(name: &str, trace: &str) -> Option<Hostile> {
    let json = |value: Value| serde_json::to_vec(&value).expect("serializable");
    let mut request = Hostile {
        body: Vec::new(),
        content_type: Some("application/json"),
        headers: Vec::new(),
        method: "POST",
        path: "/api/workflow/execute",
    };
    let with_payload = |edit: &dyn Fn(&mut Map<String, Value>)| {
        let mut payload = action_fields(Action::Task);
        edit(&mut payload);
        json(execute_body(trace, "workflow", payload))
    };
    request.body = match name {
        "malformed JSON" => br#"{"trace_id": "t", "decision": "workflow", "data": {"#.to_vec(),
        "a JSON array" => b"[1, 2, 3]".to_vec(),
        "an empty body" => Vec::new(),
        "deeply nested JSON" => {
            let mut nested = "[".repeat(10_000);
            nested.push_str(&"]".repeat(10_000));
            format!(r#"{{"trace_id": "{trace}", "decision": "workflow", "data": {nested}}}"#).into_bytes()
        }
        "a body over 64 KiB" => {
            let mut payload = action_fields(Action::Task);
            payload.insert("description".into(), json!("x".repeat(70 * 1024)));
            json(execute_body(trace, "workflow", payload))
        }
        "a form instead of JSON" => {
            request.content_type = Some("application/x-www-form-urlencoded");
            b"trace_id=t&decision=workflow".to_vec()
        }
        "no content type" => {
            request.content_type = None;
            json(valid(trace))
        }
        "a missing trace id" => json(json!({"decision": "workflow", "data": {"workflow_type": "workflow",
            "payload": action_fields(Action::Task)}})),
        "an empty trace id" => json(execute_body("", "workflow", action_fields(Action::Task))),
        "a numeric trace id" => json(json!({"trace_id": 42, "decision": "workflow", "data": {
            "workflow_type": "workflow", "payload": action_fields(Action::Task)}})),
        "a trace id with spaces" => json(execute_body("a trace; DROP TABLE", "workflow", action_fields(Action::Task))),
        "a trace id with a newline" => {
            json(execute_body("abc\r\nX-Injected: 1", "workflow", action_fields(Action::Task)))
        }
        "a 129-character trace id" => json(execute_body(&"t".repeat(129), "workflow", action_fields(Action::Task))),
        "an unknown decision" => json(execute_body(trace, "delete_everything", action_fields(Action::Task))),
        "a missing decision" => json(json!({"trace_id": trace, "data": {"workflow_type": "workflow",
            "payload": action_fields(Action::Task)}})),
        "a workflow without payload" => json(json!({"trace_id": trace, "decision": "workflow"})),
        "an empty payload" => json(execute_body(trace, "workflow", Map::new())),
        "a wrong workflow type" => json(json!({"trace_id": trace, "decision": "workflow", "data": {
            "workflow_type": "respond", "payload": action_fields(Action::Task)}})),
        "a payload that is a string" => json(json!({"trace_id": trace, "decision": "workflow", "data": {
            "workflow_type": "workflow", "payload": "rm -rf /"}})),
        "a payload trace id that disagrees" => with_payload(&|p| {
            p.insert("trace_id".into(), json!("someone-else"));
        }),
        "a 300-character title" => with_payload(&|p| {
            p.insert("title".into(), json!("t".repeat(300)));
        }),
        "a title with control characters" => with_payload(&|p| {
            p.insert("title".into(), json!("Call\u{0}the\u{1b}[31mbank"));
        }),
        "a numeric title" => with_payload(&|p| {
            p.insert("title".into(), json!(12345));
        }),
        "metadata over 4 KiB" => with_payload(&|p| {
            p.insert("metadata".into(), json!({"blob": "m".repeat(5000)}));
        }),
        "metadata that is a list" => with_payload(&|p| {
            p.insert("metadata".into(), json!(["not", "an", "object"]));
        }),
        "a 65-character action type" => with_payload(&|p| {
            p.insert("action_type".into(), json!("a".repeat(65)));
        }),
        "an invalid Idempotency-Key" => {
            request.headers.push(("idempotency-key", "key with spaces".to_owned()));
            json(valid(trace))
        }
        "a GET on the execute route" => {
            request.method = "GET";
            Vec::new()
        }
        "an unknown route" => {
            request.path = "/api/workflow/../../etc/passwd";
            json(valid(trace))
        }
        _ => return None,
    };
    Some(request)
}
