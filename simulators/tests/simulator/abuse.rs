//! Abuse of the control API: malformed, huge, duplicate, too many, odd routes, endless steps.
//! Every rejection is a JSON `{"error": {field, message}}` and the simulator keeps serving.

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{client, get, post, stack};

/// Sends a raw body; returns status, content type and JSON body.
async fn send(method: reqwest::Method, url: String, body: Vec<u8>) -> (StatusCode, String, Value) {
    let response = client().request(method, url).header("content-type", "application/json").body(body).send().await;
    let response = response.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, content_type, response.json().await.unwrap_or(Value::Null))
}

async fn still_serving(control: &str) {
    assert_eq!(get(format!("{control}/health")).await.0, StatusCode::OK, "the control API keeps serving");
}

#[tokio::test]
async fn a_huge_body_gets_a_json_413() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let huge = format!("{{\"pillar\": \"bucket\", \"kind\": \"refuse\", \"pad\": \"{}\"}}", "x".repeat(3 << 20));
    for route in ["/faults", "/scenarios", "/toggles"] {
        let method = if route == "/toggles" { reqwest::Method::PATCH } else { reqwest::Method::POST };
        let (status, content_type, error) = send(method, format!("{control}{route}"), huge.clone().into_bytes()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{route}");
        assert!(content_type.starts_with("application/json"), "{route}: {content_type}");
        assert_eq!(error["error"]["field"], "body", "{route}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains("2 MiB"), "{error}");
    }
    let (status, _, error) = send(reqwest::Method::DELETE, format!("{control}/faults/%FF"), Vec::new()).await;
    assert_eq!((status, error["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("request")), "{error}");
    still_serving(&control).await;
}

#[tokio::test]
async fn a_taken_rule_id_is_409_unless_the_request_says_replace() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let rule = json!({"id": "dup", "pillar": "bucket", "kind": "http_error", "status": 503});
    assert_eq!(post(format!("{control}/faults"), &rule).await.0, StatusCode::CREATED);
    let second = json!({"id": "dup", "pillar": "bucket", "kind": "http_error", "status": 502});
    let (status, error) = post(format!("{control}/faults"), &second).await;
    assert_eq!((status, error["error"]["field"].as_str()), (StatusCode::CONFLICT, Some("id")), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("replace"), "{error}");
    assert_eq!(stack.faults().list()[0].rule.fault, pillar_sim::Fault::http_error(503), "the first rule stays");
    let (status, _) = post(format!("{control}/faults?replace=true"), &second).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut third = second.clone();
    third["status"] = json!(500);
    third["replace"] = json!(true);
    assert_eq!(post(format!("{control}/faults"), &third).await.0, StatusCode::CREATED);
    let rules = stack.faults().list();
    assert_eq!((rules.len(), &rules[0].rule.fault), (1, &pillar_sim::Fault::http_error(500)));
    let (status, error) = post(format!("{control}/faults?replace=maybe"), &second).await;
    assert_eq!((status, error["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("replace")));
}

#[tokio::test]
async fn ten_thousand_rules_stop_at_the_cap_and_the_simulator_keeps_serving() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let http = client();
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..10_000)
        .map(|n| {
            let request = http.post(format!("{control}/faults")).json(&json!({"id": format!("r{n}"),
                "pillar": "karma", "kind": "latency", "ms": 1, "route": format!("/nowhere/{n}")}));
            async move { request.send().await.unwrap().status() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let conflict = statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count();
    assert_eq!((created, conflict), (1000, 9000));
    let (status, error) = post(
        format!("{control}/faults"),
        &json!({"pillar": "karma", "kind": "latency", "ms": 1, "route": "/one-more"}),
    )
    .await;
    assert_eq!((status, error["error"]["field"].as_str()), (StatusCode::CONFLICT, Some("rules")), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("at most 1000"), "{error}");
    assert_eq!(get(format!("{}/health", stack.karma_url())).await.0, StatusCode::OK, "Karma keeps answering");
    still_serving(&control).await;
    assert_eq!(stack.faults().list().len(), 1000);
}

#[tokio::test]
async fn odd_route_patterns_are_refused_by_name() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    for route in ["/core\u{0}x", "/a b", "/tab\t", "/a*b", "/a/**", "/a?x=1", "/[ab]", "/{x}", "core", ""] {
        let rule = json!({"pillar": "core", "kind": "reset", "route": route});
        let (status, error) = post(format!("{control}/faults"), &rule).await;
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("route")),
            "{route:?}: {error}"
        );
    }
    let (status, _) =
        post(format!("{control}/faults"), &json!({"pillar": "core", "kind": "reset", "route": "/core/*"})).await;
    assert_eq!(status, StatusCode::CREATED, "a trailing '*' is a prefix");
    still_serving(&control).await;
}

#[tokio::test]
async fn answer_rules_with_a_bad_status_or_body_or_for_the_smtp_sink_are_refused_by_name() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let huge = "x".repeat(64 * 1024);
    for (rule, field) in [
        (json!({"pillar": "bucket", "kind": "answer", "status": 200}), "body"),
        (json!({"pillar": "bucket", "kind": "answer", "status": 200, "body": null}), "body"),
        (json!({"pillar": "bucket", "kind": "answer", "status": 200, "body": huge}), "body"),
        (json!({"pillar": "bucket", "kind": "answer", "body": {}}), "status"),
        (json!({"pillar": "bucket", "kind": "answer", "status": 101, "body": {}}), "status"),
        (json!({"pillar": "bucket", "kind": "answer", "status": 600, "body": {}}), "status"),
        (json!({"pillar": "bucket", "kind": "answer", "status": "200", "body": {}}), "status"),
        (json!({"pillar": "smtp", "kind": "answer", "status": 250, "body": {}}), "kind"),
    ] {
        let (status, content_type, error) =
            send(reqwest::Method::POST, format!("{control}/faults"), rule.to_string().into_bytes()).await;
        assert!(content_type.starts_with("application/json"), "{content_type}");
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{field}: {error}"
        );
    }
    let (_, _, error) = send(
        reqwest::Method::POST,
        format!("{control}/faults"),
        json!({"pillar": "smtp", "kind": "answer", "status": 250, "body": {}}).to_string().into_bytes(),
    )
    .await;
    assert!(error["error"]["message"].as_str().unwrap().contains("does not apply to the SMTP sink"), "{error}");
    assert!(stack.faults().list().is_empty());
    still_serving(&control).await;
}

#[tokio::test]
async fn endless_and_negative_scenario_steps_are_refused() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let endless = json!({"name": "endless", "steps": [{"at": "0s", "fault": {"pillar": "bucket", "kind": "refuse"}}]});
    let (status, error) = post(format!("{control}/scenarios"), &endless).await;
    assert_eq!((status, error["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("steps[0].for")));
    assert!(error["error"]["message"].as_str().unwrap().contains("never end"), "{error}");
    let negative = json!({"steps": [{"at": "0s", "for": "-5s", "fault": {"pillar": "bucket", "kind": "refuse"}}]});
    let (status, error) = post(format!("{control}/scenarios"), &negative).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error["error"]["message"].as_str().unwrap().contains("negative duration"), "{error}");
    let negative_rule = json!({"pillar": "bucket", "kind": "refuse", "for": "-5s"});
    let (_, error) = post(format!("{control}/faults"), &negative_rule).await;
    assert!(error["error"]["message"].as_str().unwrap().contains("negative duration"), "{error}");
    // Ended by a later clear: accepted.
    let cleared = json!({"name": "cleared", "steps": [{"at": "0s", "fault": {"pillar": "bucket", "kind": "refuse"}},
        {"at": "50ms", "clear": {"pillar": "bucket"}}]});
    let (status, run) = post(format!("{control}/scenarios"), &cleared).await;
    assert_eq!((status, run["duration_ms"].as_u64()), (StatusCode::ACCEPTED, Some(50)));
    still_serving(&control).await;
}
