//! A table of malformed and hostile requests. Each gets a 4xx with the structured error body
//! (or, for valid Unicode content, the documented success), and the service keeps serving.

use serde_json::{Value, json};

use crate::helpers::*;

/// What a hostile case must produce.
enum Expect {
    /// This status with this `error.code`.
    Rejected(u16, &'static str),
    /// An executed success (valid Unicode content).
    Succeeds,
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    expect: Expect,
}

fn case(name: &'static str, body: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case { name, body: body.into(), content_type: Some("application/json"), expect }
}

fn json_case(name: &'static str, body: Value, expect: Expect) -> Case {
    case(name, serde_json::to_vec(&body).expect("serializable"), expect)
}

/// A workflow request around `payload` (trace id `hostile-1`).
fn wf(payload: Value) -> Value {
    json!({"trace_id": "hostile-1", "decision": "workflow", "data": {"workflow_type": "workflow", "payload": payload}})
}

fn nested(depth: usize, open: &str, close: &str) -> String {
    format!("{}{}", open.repeat(depth), close.repeat(depth))
}

fn cases() -> Vec<Case> {
    use Expect::{Rejected, Succeeds};
    let valid = r#"{"trace_id":"hostile-1","decision":"workflow","data":{"workflow_type":"workflow","payload":{"action_type":"task","title":"t"}}}"#;
    let mut invalid_utf8 = br#"{"trace_id":"hostile-1","decision":"workflow","data":{"workflow_type":"workflow","payload":{"action_type":"task","title":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    invalid_utf8.extend_from_slice(br#""}}}"#);
    let mut bom = vec![0xef, 0xbb, 0xbf];
    bom.extend_from_slice(valid.as_bytes());
    let one_mib = format!(r#"{{"trace_id":"hostile-1","decision":"respond","pad":"{}"}}"#, "a".repeat(1 << 20));
    vec![
        // Not JSON at all, or not finished.
        case("empty body", "", Rejected(400, "malformed_json")),
        case("only whitespace", " \r\n\t ", Rejected(400, "malformed_json")),
        case("truncated object", r#"{"trace_id": "hostile-1", "decision": "workf"#, Rejected(400, "malformed_json")),
        case("truncated after a key", &valid[..valid.len() - 20], Rejected(400, "malformed_json")),
        case("trailing garbage", format!("{valid} trailing"), Rejected(400, "malformed_json")),
        case("two objects", format!("{valid}{valid}"), Rejected(400, "malformed_json")),
        case("single quotes", "{'trace_id': 'hostile-1', 'decision': 'respond'}", Rejected(400, "malformed_json")),
        case(
            "a comment",
            "// hi\n{\"trace_id\": \"hostile-1\", \"decision\": \"respond\"}",
            Rejected(400, "malformed_json"),
        ),
        case("NaN literal", r#"{"trace_id": NaN, "decision": "respond"}"#, Rejected(400, "malformed_json")),
        case(
            "Infinity literal",
            r#"{"trace_id": "hostile-1", "decision": "respond", "n": -Infinity}"#,
            Rejected(400, "malformed_json"),
        ),
        case("number out of range", r#"{"trace_id": 1e999, "decision": "respond"}"#, Rejected(400, "malformed_json")),
        case("invalid UTF-8 in a string", invalid_utf8, Rejected(400, "malformed_json")),
        case(
            "lone surrogate escape",
            r#"{"trace_id": "\ud800", "decision": "respond"}"#,
            Rejected(400, "malformed_json"),
        ),
        case("byte order mark", bom, Rejected(400, "malformed_json")),
        case(
            "raw control character in a string",
            "{\"trace_id\": \"a\u{1}b\", \"decision\": \"respond\"}",
            Rejected(400, "malformed_json"),
        ),
        case("10,000 nested arrays", nested(10_000, "[", "]"), Rejected(400, "malformed_json")),
        case(
            "10,000 nested objects",
            nested(10_000, r#"{"a":"#, "}").replace("{\"a\":}", "{\"a\":1}"),
            Rejected(400, "malformed_json"),
        ),
        case(
            "deep nesting inside metadata",
            format!(
                r#"{{"trace_id":"hostile-1","decision":"workflow","data":{{"workflow_type":"workflow","payload":{{"action_type":"task","title":"t","metadata":{{"x":{}}}}}}}}}"#,
                nested(5_000, "[", "]")
            ),
            Rejected(400, "malformed_json"),
        ),
        // JSON, but not an object.
        case("null body", "null", Rejected(422, "invalid_type")),
        case("an array", r#"[{"trace_id": "hostile-1", "decision": "respond"}]"#, Rejected(422, "invalid_type")),
        case("a string", r#""workflow""#, Rejected(422, "invalid_type")),
        case("a number", "42", Rejected(422, "invalid_type")),
        case("a boolean", "true", Rejected(422, "invalid_type")),
        // An object, but not the contract.
        json_case("empty object", json!({}), Rejected(422, "missing_field")),
        json_case("null trace_id", json!({"trace_id": null, "decision": "respond"}), Rejected(422, "missing_field")),
        json_case(
            "number as trace_id",
            json!({"trace_id": 12345, "decision": "respond"}),
            Rejected(422, "invalid_type"),
        ),
        json_case(
            "object as trace_id",
            json!({"trace_id": {"$ne": ""}, "decision": "respond"}),
            Rejected(422, "invalid_type"),
        ),
        json_case(
            "emoji in trace_id",
            json!({"trace_id": "trace-🚀", "decision": "respond"}),
            Rejected(422, "invalid_trace_id"),
        ),
        json_case(
            "NUL in trace_id",
            json!({"trace_id": "abc\u{0}def", "decision": "respond"}),
            Rejected(422, "invalid_trace_id"),
        ),
        json_case(
            "header injection in trace_id",
            json!({"trace_id": "abc\r\nX-Evil: 1", "decision": "respond"}),
            Rejected(422, "invalid_trace_id"),
        ),
        json_case(
            "path traversal in trace_id",
            json!({"trace_id": "../../etc/passwd", "decision": "respond"}),
            Rejected(422, "invalid_trace_id"),
        ),
        json_case(
            "huge trace_id",
            json!({"trace_id": "a".repeat(50_000), "decision": "respond"}),
            Rejected(422, "invalid_trace_id"),
        ),
        json_case("number as decision", json!({"trace_id": "hostile-1", "decision": 3}), Rejected(422, "invalid_type")),
        json_case(
            "boolean as decision",
            json!({"trace_id": "hostile-1", "decision": true}),
            Rejected(422, "invalid_type"),
        ),
        json_case(
            "SQL in decision",
            json!({"trace_id": "hostile-1", "decision": "workflow' OR '1'='1"}),
            Rejected(422, "invalid_decision"),
        ),
        case(
            "duplicate decision, the last one invalid",
            r#"{"trace_id": "hostile-1", "decision": "workflow", "decision": "rm -rf /"}"#,
            Rejected(422, "invalid_decision"),
        ),
        case(
            "duplicate trace_id, the last one invalid",
            r#"{"trace_id": "hostile-1", "trace_id": "bad id", "decision": "respond"}"#,
            Rejected(422, "invalid_trace_id"),
        ),
        json_case(
            "array as data",
            json!({"trace_id": "hostile-1", "decision": "workflow", "data": []}),
            Rejected(422, "invalid_type"),
        ),
        json_case(
            "number as payload",
            json!({"trace_id": "hostile-1", "decision": "workflow", "data": {"workflow_type": "workflow", "payload": 1}}),
            Rejected(422, "invalid_type"),
        ),
        json_case("number as title", wf(json!({"action_type": "task", "title": 1.5})), Rejected(422, "invalid_type")),
        json_case(
            "array as message",
            wf(json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": ["hi"]})),
            Rejected(422, "invalid_type"),
        ),
        json_case("number as action_type", wf(json!({"action_type": 1})), Rejected(422, "invalid_type")),
        json_case(
            "payload trace_id of another trace",
            wf(json!({"action_type": "task", "title": "t", "trace_id": "someone-else"})),
            Rejected(422, "trace_id_mismatch"),
        ),
        json_case(
            "huge title",
            wf(json!({"action_type": "task", "title": "t".repeat(60_000)})),
            Rejected(422, "field_too_long"),
        ),
        json_case(
            "huge prompt",
            wf(json!({"action_type": "ai", "prompt": "p".repeat(20_000)})),
            Rejected(422, "field_too_long"),
        ),
        json_case(
            "huge metadata",
            wf(json!({"action_type": "task", "title": "t", "metadata": {"k": "v".repeat(10_000)}})),
            Rejected(422, "field_too_long"),
        ),
        json_case(
            "terminal escapes in title",
            wf(json!({"action_type": "task", "title": "\u{1b}[31mred\u{7}"})),
            Rejected(422, "invalid_characters"),
        ),
        json_case(
            "NUL in a whatsapp message",
            wf(json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": "a\u{0}b"})),
            Rejected(422, "invalid_characters"),
        ),
        json_case(
            "CRLF injection in an email subject",
            wf(
                json!({"action_type": "email", "recipient": "a@example.com", "subject": "hi\r\nBcc: victim@example.com", "body": "b"}),
            ),
            Rejected(422, "invalid_characters"),
        ),
        json_case(
            "newline in a recipient",
            wf(
                json!({"action_type": "email", "recipient": "a@example.com\nb@example.com", "subject": "s", "body": "b"}),
            ),
            Rejected(422, "invalid_characters"),
        ),
        // Transport-level abuse.
        case("1 MiB body", one_mib, Rejected(413, "body_too_large")),
        Case {
            name: "JSON sent as text/plain",
            body: valid.into(),
            content_type: Some("text/plain"),
            expect: Rejected(415, "unsupported_media_type"),
        },
        Case {
            name: "no content type",
            body: valid.into(),
            content_type: None,
            expect: Rejected(415, "unsupported_media_type"),
        },
        Case {
            name: "content type with a bogus parameter only",
            body: valid.into(),
            content_type: Some("application/xml; x=application/json"),
            expect: Rejected(415, "unsupported_media_type"),
        },
        // Valid Unicode is content, not an attack.
        json_case(
            "emoji in a task title",
            wf(json!({"action_type": "task", "title": "Ship it 🚀🔥", "description": "लॉन्च 🎉\nनमस्ते"})),
            Succeeds,
        ),
        json_case(
            "CJK and RTL in a task title",
            wf(json!({"action_type": "task", "title": "会議 — اجتماع — פגישה"})),
            Succeeds,
        ),
        json_case(
            "combining characters at the title limit",
            wf(json!({"action_type": "task", "title": "é".repeat(256)})),
            Succeeds,
        ),
    ]
}

#[tokio::test]
async fn hostile_requests_get_structured_4xx_answers_and_the_service_keeps_serving() {
    let app = spawn_app(&[]).await;
    let cases = cases();
    assert!(cases.len() >= 30, "the table has {} cases", cases.len());

    for (index, case) in cases.into_iter().enumerate() {
        let response = app.execute_raw(case.body, case.content_type, &[]).await;
        match case.expect {
            Expect::Rejected(status, code) => {
                assert_eq!(response.status, status, "case {index} `{}`: {}", case.name, response.text);
                assert_eq!(response.body["error"]["code"], code, "case {index} `{}`: {}", case.name, response.text);
                response.assert_rejected(status, code);
            }
            Expect::Succeeds => {
                assert_eq!(response.status, 200, "case {index} `{}`: {}", case.name, response.text);
                assert_eq!(response.body["status"], "success", "case {index} `{}`: {}", case.name, response.text);
            }
        }
    }

    let health = app.healthz().await;
    assert_eq!(health.status, 200);
    let trace = trace_id();
    app.execute(&task_request(&trace)).await.assert_success(&trace);
    let metrics = app.metrics().await;
    for status in ["500", "501", "502", "503"] {
        assert_eq!(metrics.get("workflow_http_requests_total", &[("status", status)]), 0.0, "no {status} answers");
    }
}

#[tokio::test]
async fn emoji_in_a_whatsapp_message_reaches_the_provider_intact() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();
    let text = "Namaste 🙏 your order 📦 ships today — धन्यवाद\nLine two";
    let request = workflow(&trace, json!({"action_type": "whatsapp", "recipient": "+919876543210", "message": text}));

    app.execute(&request).await.assert_success(&trace);

    let body: Value = app.fakes.whatsapp_calls()[0].body.clone();
    assert_eq!(body["text"]["body"], text);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_structured_answers() {
    let app = spawn_app(&[]).await;
    let not_found = app.http.get(app.url("/api/workflow/../../etc/passwd")).send().await.expect("answer");
    assert_eq!(not_found.status(), 404);
    let body: Value = not_found.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "not_found");

    let wrong_method = app.http.get(app.url("/api/workflow/execute")).send().await.expect("answer");
    assert_eq!(wrong_method.status(), 405);
    let body: Value = wrong_method.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
