//! The as-built answers: what the executor sends in the `as-built` Karma encoding, and what the
//! simulator's as-built pillars answer where the real services were measured to differ from the
//! documented contract (Karma's accepted life event and its stand-in profile for an unknown user,
//! Core's stock agent, Bucket's 422 for malformed JSON).

use pillar_sim::{Pillar, Profile, Stack};
use reqwest::Method;
use serde_json::json;
use test_support::TestResponse;

use crate::support::{Contract, TestStack, assert_contract, sent, workflow};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_as_built_pillars_and_the_as_built_karma_encoding() {
    let builder = Stack::builder().profile_all(Profile::AsBuilt).executor_env("EXECUTOR_KARMA_ENCODING", "as-built");
    let app = TestStack::start(builder).await;

    let request = workflow(
        "contract-as-built",
        json!({"action_type": "task", "title": "Call the bank", "user_id": "learner-8", "product": "gurukul"}),
    );
    app.execute(&request).await.expect_status(200);
    let karma = app.journaled(Pillar::Karma, "contract-as-built").await;
    assert_contract(
        "karma_event_as_built_task_success",
        "the Karma life event the executor POSTs for a successful task with EXECUTOR_KARMA_ENCODING=as-built",
        &sent(&karma),
    );
    assert_eq!(karma.status, Some(200), "the as-built Karma accepts it: {karma:?}");

    let karma_url = app.stack.karma_url();
    let event = karma.body.clone();
    let answer = app.request(Method::POST, format!("{karma_url}/v1/event/"), Some(&event)).await;
    assert_contract(
        "karma_as_built_life_event_accepted",
        "as-built Karma: POST /v1/event/ with the executor's as-built event (the same event again: no dedupe)",
        &answer.contract(),
    );
    answer.expect_status(200);

    let answer = app.request(Method::GET, format!("{karma_url}/api/v1/karma/nobody-known"), None).await;
    assert_contract(
        "karma_as_built_profile_unknown_user",
        "as-built Karma: GET /api/v1/karma/<unknown user> (the monorepo Karma's stand-in profile)",
        &answer.contract(),
    );
    answer.expect_status(200);

    let task = json!({"agent": "edumentor_agent", "input": "Create a task: call the bank", "input_type": "text"});
    let answer = app.request(Method::POST, format!("{}/handle_task", app.stack.core_url()), Some(&task)).await;
    assert_contract(
        "core_as_built_handle_task_stock_agent",
        "as-built Core: POST /handle_task with the README's example through the stock edumentor_agent",
        &answer.contract(),
    );
    answer.expect_status(200);

    let malformed = app
        .http
        .post(format!("{}/core/write-event", app.stack.bucket_url()))
        .header("content-type", "application/json")
        .body("{bad json");
    let answer = TestResponse::send(malformed).await;
    assert_contract(
        "bucket_as_built_malformed_json",
        "as-built Bucket: POST /core/write-event with the body `{bad json` (FastAPI's 422)",
        &answer.contract(),
    );
    answer.expect_status(422);
}
