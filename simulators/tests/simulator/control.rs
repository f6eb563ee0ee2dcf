//! The control API: faults, scenarios, profiles, toggles, reads, reset, metrics, and bad input.

use std::time::Duration;

use pillar_sim::{Pillar, Profile, Scenario};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::eventually;

use crate::support::{client, get, post, stack};

async fn send(method: reqwest::Method, url: String, body: Option<&str>) -> (StatusCode, Value) {
    let mut request = client().request(method, url);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn faults_are_set_listed_and_cleared_over_http() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let (status, set) = post(
        format!("{control}/faults"),
        &json!({"pillar": "bucket", "kind": "http_error", "status": 503, "route": "/health", "count": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(set["id"], "bucket-http_error-1");
    assert_eq!(get(format!("{}/health", stack.bucket_url())).await.0, 503);
    let (_, list) = get(format!("{control}/faults")).await;
    assert_eq!(
        (list["rules"][0]["matched"].as_u64(), list["rules"][0]["remaining_count"].as_u64()),
        (Some(1), Some(4))
    );
    let (status, _) = send(reqwest::Method::DELETE, format!("{control}/faults/bucket-http_error-1"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = send(reqwest::Method::DELETE, format!("{control}/faults/bucket-http_error-1"), None).await;
    assert_eq!((status, error["error"]["field"].as_str()), (StatusCode::NOT_FOUND, Some("id")));
    assert_eq!(get(format!("{}/health", stack.bucket_url())).await.0, 200);
    post(format!("{control}/faults"), &json!({"pillar": "karma", "kind": "reset"})).await;
    let (_, cleared) = send(reqwest::Method::DELETE, format!("{control}/faults"), None).await;
    assert_eq!(cleared["cleared"], 1);
}

#[tokio::test]
async fn bad_control_input_is_refused_with_the_field_named() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let cases: &[(&str, &str, StatusCode, &str)] = &[
        ("/faults", "{not json", StatusCode::BAD_REQUEST, "body"),
        ("/faults", "", StatusCode::BAD_REQUEST, "body"),
        ("/faults", "[1, 2]", StatusCode::UNPROCESSABLE_ENTITY, "body"),
        (
            "/faults",
            r#"{"pillar": "bucket", "kind": "http_error", "status": 99999999999999999999}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "status",
        ),
        ("/faults", r#"{"pillar": "bucket", "kind": "latency", "ms": 1e308}"#, StatusCode::UNPROCESSABLE_ENTITY, "ms"),
        (
            "/faults",
            r#"{"pillar": "bucket", "kind": "latency", "dist": "cauchy"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "dist",
        ),
        (
            "/faults",
            r#"{"pillar": "bucket", "kind": "slow_body", "bytes_per_sec": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "bytes_per_sec",
        ),
        ("/faults", r#"{"pillar": "bucket", "kind": "reset", "for": "-5s"}"#, StatusCode::UNPROCESSABLE_ENTITY, "for"),
        ("/faults", r#"{"pillar": "bucket", "kind": "reset", "count": -1}"#, StatusCode::UNPROCESSABLE_ENTITY, "count"),
        (
            "/faults",
            r#"{"pillar": "bucket", "kind": "reset", "id": "../../etc"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "id",
        ),
        ("/faults", r#"{"pillar": {"nested": true}, "kind": "reset"}"#, StatusCode::UNPROCESSABLE_ENTITY, "pillar"),
        (
            "/scenarios",
            r#"{"steps": [{"at": "0s", "fault": {"pillar": "core", "kind": "refuse", "count": 2}}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "steps[0].fault.count",
        ),
        ("/scenarios", r#"{"name": "x", "steps": {}}"#, StatusCode::UNPROCESSABLE_ENTITY, "steps"),
        ("/scenarios", "\u{0}", StatusCode::BAD_REQUEST, "body"),
    ];
    for (route, body, status, field) in cases {
        let (got, error) = send(reqwest::Method::POST, format!("{control}{route}"), Some(body)).await;
        assert_eq!((got, error["error"]["field"].as_str()), (*status, Some(*field)), "{route} {body}: {error}");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
    let (status, error) =
        send(reqwest::Method::PUT, format!("{control}/profiles/smtp"), Some(r#"{"profile": "as-built"}"#)).await;
    assert_eq!((status, error["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("profile")));
    let (status, _) = send(reqwest::Method::GET, format!("{control}/no/such/route"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing was set, and the control API is still up.
    assert!(stack.faults().list().is_empty());
    assert_eq!(get(format!("{control}/health")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_scenario_runs_through_the_control_api() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let scenario = json!({"name": "blip", "steps": [
        {"at": "0s", "fault": {"pillar": "core", "kind": "http_error", "status": 503, "for": "10m"}},
        {"at": "150ms", "clear": {"pillar": "core"}},
    ]});
    let (status, run) = post(format!("{control}/scenarios"), &scenario).await;
    assert_eq!((status, run["id"].as_str(), run["steps"].as_u64()), (StatusCode::ACCEPTED, Some("blip"), Some(2)));
    let url = format!("{}/health", stack.core_url());
    eventually(Duration::from_secs(2), "the route answers 503", || async { (get(&url).await.0 == 503).then_some(()) })
        .await;
    eventually(Duration::from_secs(3), "the route answers 200 again", || async {
        (get(&url).await.0 == 200).then_some(())
    })
    .await;
    let (_, done) = get(format!("{control}/scenarios/blip")).await;
    assert_eq!(done["finished"], true);
    // A long scenario can be cancelled, which clears what it set.
    let long = json!({"name": "long", "steps": [{"at": "0s", "fault": {"pillar": "karma", "kind": "blackhole"}},
        {"at": "1h", "clear": "all"}]});
    post(format!("{control}/scenarios"), &long).await;
    eventually(Duration::from_secs(2), "the scenario sets its rule", || async {
        (!stack.faults().list().is_empty()).then_some(())
    })
    .await;
    let (_, cancelled) = send(reqwest::Method::DELETE, format!("{control}/scenarios/long"), None).await;
    assert_eq!(cancelled["cancelled"], true);
    assert!(stack.faults().list().is_empty());
}

#[tokio::test]
async fn profiles_toggles_reads_and_reset() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let (status, profiles) =
        send(reqwest::Method::PUT, format!("{control}/profiles/karma"), Some(r#"{"profile": "as-built"}"#)).await;
    assert_eq!((status, profiles["karma"].as_str()), (StatusCode::OK, Some("as-built")));
    assert_eq!(stack.profile(Pillar::Karma), Profile::AsBuilt);
    let (_, toggles) =
        send(reqwest::Method::PATCH, format!("{control}/toggles"), Some(r#"{"workflow_events_enabled": false}"#)).await;
    assert_eq!(
        (toggles["workflow_events_enabled"].as_bool(), toggles["behavioral_tracking"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(!stack.bucket().workflow_events_enabled());
    let (status, error) =
        send(reqwest::Method::PATCH, format!("{control}/toggles"), Some(r#"{"behavioral_tracking": "no"}"#)).await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("behavioral_tracking"))
    );

    let write = json!({"requester_id": "bhiv_core", "event_data": {"event_type": "agent_result", "event_id": "r1"}});
    post(format!("{}/core/write-event", stack.bucket_url()), &write).await;
    let (_, events) = get(format!("{control}/bucket/events")).await;
    assert_eq!(events["events"][0]["sequence"], 1);
    let (_, verify) = get(format!("{control}/bucket/verify")).await;
    assert_eq!(verify["valid"], true);
    let (status, _) = get(format!("{control}/karma/users/nobody")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, table) = get(format!("{control}/karma/qtable")).await;
    assert_eq!(table["alpha"], 0.15);
    let (_, info) = get(format!("{control}/")).await;
    assert_eq!(info["pillars"]["bucket"]["url"], stack.bucket_url().as_str());

    post(format!("{control}/faults"), &json!({"pillar": "core", "kind": "reset"})).await;
    let (status, _) = post(format!("{control}/reset"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(stack.bucket().is_empty() && stack.faults().list().is_empty() && stack.journal().is_empty());
}

#[tokio::test]
async fn metrics_count_requests_and_faults_by_route_template() {
    let stack = stack().await;
    stack
        .faults()
        .set(pillar_sim::FaultRule::new(Pillar::Karma, pillar_sim::Fault::http_error(500)).route("/api/*"))
        .unwrap();
    get(format!("{}/api/v1/karma/someone", stack.karma_url())).await;
    let (status, text) = {
        let response = client().get(format!("{}/metrics", stack.control_url().unwrap())).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains(
            r#"pillar_sim_requests_total{method="GET",pillar="karma",route="/api/v1/karma/{user_id}",status="500"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"pillar_sim_faults_injected_total{kind="http_error",pillar="karma",route="/api/v1/karma/{user_id}"} 1"#
    ));
    assert!(!text.contains("someone"), "raw paths never become labels");
}

#[test]
fn the_example_scenarios_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut seen = 0;
    for file in std::fs::read_dir(dir).unwrap() {
        let path = file.unwrap().path();
        let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        Scenario::from_json(&value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 2);
}
