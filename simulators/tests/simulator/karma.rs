//! Karma's event gateway, score rule and profiles.

use pillar_sim::{Pillar, Profile, Stack};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{client, get, post, stack};

/// The executor's Karma event, as the integration document defines it.
fn workflow_event(user: &str, action: &str, event_id: &str) -> Value {
    json!({"type": "life_event", "event_id": event_id, "timestamp": "2026-01-01T00:00:00Z",
        "data": {"user_id": user, "action": action, "role": "user", "note": "Workflow execution: task",
            "context": {"trace_id": format!("t-{event_id}"), "action_type": "task", "source": "workflow_executor",
                "event_id": event_id}},
        "source": "workflow_executor"})
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn a_workflow_success_applies_the_documented_reward_once() {
    let stack = stack().await;
    let url = format!("{}/v1/event/", stack.karma_url());
    let (status, body) = post(&url, &workflow_event("u1", "workflow_success", "ev-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(body["data"]["reward_token"], "DharmaPoints");
    assert_eq!(body["data"]["reward_value"], 5.0);
    // Q[learner][workflow_success] = 0 + 0.15 * (5 + 0.9 * 0 - 0)
    let q = stack.karma().q_table();
    assert!(close(q.value("learner", "workflow_success").unwrap(), 0.75));
    // The same event again changes nothing.
    let (status, again) = post(&url, &workflow_event("u1", "workflow_success", "ev-1")).await;
    assert_eq!((status, again["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    assert!(close(stack.karma().q_table().value("learner", "workflow_success").unwrap(), 0.75));
    assert_eq!(stack.karma().user("u1").unwrap().balances.dharma_points, 5.0);
    // A failure rewards 0 but still moves Q towards γ·max Q(s'): 0.15 * (0 + 0.9 * 0.75) = 0.10125
    let (_, failure) = post(&url, &workflow_event("u1", "workflow_failure", "ev-2")).await;
    assert_eq!(failure["data"]["reward_value"], 0.0);
    let (_, table) = get(format!("{}/v1/qtable", stack.karma_url())).await;
    assert_eq!(table["actions"][6], "workflow_failure");
    assert!(close(table["q"][0][6].as_f64().unwrap(), 0.101_25));
    assert_eq!(stack.karma().user("u1").unwrap().total_actions, 2);
}

#[tokio::test]
async fn duplicates_are_recognised_by_context_event_id_and_idempotency_key() {
    let stack = stack().await;
    let url = format!("{}/v1/event/", stack.karma_url());
    let mut by_context = workflow_event("u2", "workflow_success", "ctx-1");
    by_context.as_object_mut().unwrap().remove("event_id");
    post(&url, &by_context).await;
    assert_eq!(post(&url, &by_context).await.1["duplicate"], true);
    let mut by_header = workflow_event("u2", "workflow_success", "x");
    by_header.as_object_mut().unwrap().remove("event_id");
    by_header["data"]["context"] = json!("a string context");
    let send = || client().post(&url).header("Idempotency-Key", "key-9").json(&by_header).send();
    send().await.unwrap();
    let second: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(second["duplicate"], true);
    assert_eq!(stack.karma().user("u2").unwrap().total_actions, 2);
}

#[tokio::test]
async fn as_built_rejects_the_documented_workflow_event_with_500() {
    let stack = Stack::builder().profile(Pillar::Karma, Profile::AsBuilt).start().await.unwrap();
    let url = format!("{}/v1/event/", stack.karma_url());
    let (status, body) = post(&url, &workflow_event("u3", "workflow_success", "ev-1")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["status"], "error");
    assert_eq!(body["error"]["code"], 500);
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Error processing life_event"), "{body}");
    assert_eq!(body["path"], "/v1/event/");
    // With a string context the role is what fails, then the action.
    let mut event = workflow_event("u3", "workflow_success", "ev-2");
    event["data"]["context"] = json!("ctx");
    let (_, body) = post(&url, &event).await;
    assert_eq!(body["error"]["message"], "Internal server error: 400: Invalid role.");
    event["data"]["role"] = json!("learner");
    let (_, body) = post(&url, &event).await;
    assert_eq!(body["error"]["message"], "Internal server error: 400: Invalid action.");
    assert!(stack.karma().user("u3").is_none(), "nothing was applied");
    // KC's own vocabulary works, and is not deduplicated.
    event["data"]["action"] = json!("helping_peers");
    post(&url, &event).await;
    post(&url, &event).await;
    assert_eq!(stack.karma().user("u3").unwrap().balances.seva_points, 20.0);
    assert_eq!(stack.karma().q_table().actions.len(), 5, "KC's table has five actions");
}

#[tokio::test]
async fn the_slashless_route_redirects_like_fastapi() {
    let stack = stack().await;
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = no_redirects.post(format!("{}/v1/event", stack.karma_url())).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(response.headers()["location"], format!("{}/v1/event/", stack.karma_url()).as_str());
    let (status, _) =
        post(format!("{}/v1/event", stack.karma_url()), &workflow_event("u4", "workflow_success", "r")).await;
    assert_eq!(status, StatusCode::OK, "a client following the 307 re-posts the body");
    assert!(stack.karma().user("u4").is_some());
}

#[tokio::test]
async fn user_reads_have_the_real_shapes_and_a_404_envelope() {
    let stack = stack().await;
    let (status, body) = get(format!("{}/api/v1/karma/nobody", stack.karma_url())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!((body["status"].as_str(), body["error"]["message"].as_str()), (Some("error"), Some("User not found")));
    let event =
        json!({"type": "life_event", "data": {"user_id": "u5", "action": "selfless_service", "role": "learner"}});
    post(format!("{}/v1/event/", stack.karma_url()), &event).await;
    let (status, profile) = get(format!("{}/api/v1/karma/u5", stack.karma_url())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(profile["merit_score"], 75.0);
    assert_eq!(profile["role"], "volunteer");
    assert_eq!(profile["balances"]["PunyaTokens"], 25.0);
    for field in ["paap_score", "net_karma", "weighted_karma_score", "action_stats", "module_scores", "last_updated"] {
        assert!(profile.get(field).is_some(), "{field}");
    }
    let (status, stats) = get(format!("{}/v1/stats/user/u5", stack.karma_url())).await;
    assert_eq!(
        (status, stats["status"].as_str(), stats["action_stats"]["total_actions"].as_u64()),
        (StatusCode::OK, Some("success"), Some(1))
    );
    let (status, _) = get(format!("{}/v1/stats/user/nobody", stack.karma_url())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, via_event) =
        post(format!("{}/v1/event/", stack.karma_url()), &json!({"type": "stats_request", "data": {"user_id": "u5"}}))
            .await;
    assert_eq!(via_event["data"]["merit_score"], 75.0);
}

#[tokio::test]
async fn tracking_off_skips_workflow_events_in_spec_only() {
    let stack = Stack::builder().behavioral_tracking(false).start().await.unwrap();
    let url = format!("{}/v1/event/", stack.karma_url());
    let (status, body) = post(&url, &workflow_event("u6", "workflow_success", "s1")).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("skipped")));
    assert!(stack.karma().user("u6").is_none());
    let lesson =
        json!({"type": "life_event", "data": {"user_id": "u6", "action": "completing_lessons", "role": "learner"}});
    assert_eq!(post(&url, &lesson).await.1["status"], "success", "other events are still tracked");
    stack.karma().set_behavioral_tracking(true);
    assert_eq!(post(&url, &workflow_event("u6", "workflow_success", "s2")).await.1["status"], "success");
}

#[tokio::test]
async fn bad_events_get_the_error_envelope() {
    let stack = stack().await;
    let url = format!("{}/v1/event/", stack.karma_url());
    let (status, body) = post(&url, &json!({"type": "party", "data": {}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Invalid event type: party"));
    let (status, body) = post(&url, &json!({"type": "life_event", "data": {"user_id": "u"}})).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some("life_event requires user_id, action, and role in data"))
    );
    let (status, body) = post(&url, &json!({"type": "life_event"})).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("Validation failed"))
    );
    assert_eq!(body["details"][0]["loc"], json!(["body", "data"]));
    let (status, body) =
        post(&url, &json!({"type": "life_event", "data": {"user_id": "u", "role": "king", "action": "cheat"}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "spec answers a bad role with 400: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_are_applied_once_and_listed_with_their_trace() {
    let stack = stack().await;
    let url = format!("{}/v1/event/", stack.karma_url());
    let event = workflow_event("u7", "workflow_success", "race-1");
    let sends = (0..20).map(|_| post(&url, &event));
    let answers = futures_util::future::join_all(sends).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
    assert_eq!(answers.iter().filter(|(_, a)| a["duplicate"] == true).count(), 19);
    assert_eq!(stack.karma().user("u7").unwrap().total_actions, 1);
    let applied = stack.karma().events();
    assert_eq!(applied.len(), 1);
    assert_eq!((applied[0].event_id.as_deref(), applied[0].trace_id.as_deref()), (Some("race-1"), Some("t-race-1")));
    let (_, listed) = get(format!("{}/karma/events", stack.control_url().unwrap())).await;
    assert_eq!(listed["events"][0]["reward_value"], 5.0);
}

#[tokio::test]
async fn as_built_answers_like_the_monorepo_karma_success_body_and_unknown_users() {
    let stack = Stack::builder().profile(Pillar::Karma, Profile::AsBuilt).start().await.unwrap();
    let base = stack.karma_url();
    // The monorepo Karma swallows its own 404: an unknown user gets a fixed stand-in profile.
    let (status, profile) = get(format!("{base}/api/v1/karma/nobody")).await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    assert_eq!((profile["merit_score"].as_f64(), profile["role"].as_str()), (Some(100.0), Some("learner")));
    assert_eq!(profile["balances"], json!({"DharmaPoints": 100, "SevaPoints": 50, "PunyaTokens": 25}));
    assert!(stack.karma().user("nobody").is_none(), "reading creates no user");
    let (status, _) = get(format!("{base}/v1/stats/user/nobody")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the stats route still says 404");
    // What the executor's as-built encoding sends is accepted, with log_action's own fields.
    let event = json!({"type": "life_event", "timestamp": "2026-01-01T00:00:00Z", "source": "workflow_executor",
        "data": {"user_id": "u6", "action": "completing_lessons", "role": "learner", "note": "Workflow execution: task",
            "context": "{\"trace_id\":\"t-6\",\"status\":\"success\"}"}});
    let (status, body) = post(format!("{base}/v1/event/"), &event).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fields: Vec<&str> = body["data"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "action",
            "action_flow",
            "current_role",
            "merit_score",
            "note",
            "predicted_next_role",
            "reward_tier",
            "reward_token",
            "user_id"
        ]
    );
    assert_eq!(body["data"]["action_flow"], "action -> intent -> merit -> reward_tier -> redemption");
    assert_eq!(body["timestamp"], "2026-01-01T00:00:00Z", "the request's own timestamp, as KC8 answers");
    assert_eq!(body["data"]["reward_tier"], "low");
    assert_eq!(stack.karma().user("u6").unwrap().balances.dharma_points, 5.0);
    let (status, stats) = get(format!("{base}/v1/stats/user/u6")).await;
    assert_eq!((status, stats["balances"]["DharmaPoints"].as_f64()), (StatusCode::OK, Some(5.0)));
    // Data that does not fit log_action's model: pydantic's message, as measured on the real one.
    let mut bad = event.clone();
    bad["data"]["user_id"] = json!(7);
    bad["data"]["context"] = json!({"a": 1});
    let (status, body) = post(format!("{base}/v1/event/"), &bad).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body["error"]["message"],
        "Error processing life_event: 2 validation errors for LogActionRequest\nuser_id\n  Input should be a valid string \
         [type=string_type, input_value=7, input_type=int]\n    For further information visit \
         https://errors.pydantic.dev/2.14/v/string_type\ncontext\n  Input should be a valid string [type=string_type, \
         input_value={'a': 1}, input_type=dict]\n    For further information visit https://errors.pydantic.dev/2.14/v/string_type"
    );
    // A cheat names its offence as log_action does.
    let mut cheat = event.clone();
    cheat["data"]["action"] = json!("cheat");
    let (_, body) = post(format!("{base}/v1/event/"), &cheat).await;
    assert_eq!(
        (body["data"]["penalty_name"].as_str(), body["data"]["penalty_value"].as_f64()),
        (Some("first_offense"), Some(-2.0))
    );
    assert_eq!(body["data"]["action_flow"], "action -> intent -> penalty_level -> punishment -> role_adjustment");
    assert!(body["data"].get("reward_token").is_none(), "{body}");
}
