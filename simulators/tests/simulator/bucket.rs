//! Bucket's governance rules and hash chain, in both profiles.

use pillar_sim::{GENESIS_HASH, canonical_json};
use pillar_sim::{Pillar, Profile, Stack};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{client, get, post, stack};

fn event(requester: &str, event_id: &str, product: &str) -> Value {
    json!({"requester_id": requester, "event_data": {"event_type": "workflow_execution", "event_id": event_id,
        "trace_id": format!("trace-{event_id}"), "action_type": "task", "status": "success", "product": product,
        "execution_result": {"success": true}, "timestamp": "2026-01-01T00:00:00Z"}})
}

async fn as_built() -> Stack {
    Stack::builder().profile(Pillar::Bucket, Profile::AsBuilt).start().await.unwrap()
}

#[tokio::test]
async fn an_unknown_requester_is_refused_with_403_in_spec_and_200_false_as_built() {
    let spec = stack().await;
    let (status, body) = post(format!("{}/core/write-event", spec.bucket_url()), &event("intruder", "e1", "p")).await;
    assert_eq!((status, body), (StatusCode::FORBIDDEN, json!({"detail": "Unauthorized requester"})));
    assert!(spec.bucket().is_empty());

    let built = as_built().await;
    let (status, body) = post(format!("{}/core/write-event", built.bucket_url()), &event("intruder", "e1", "p")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"success": false, "message": "403: Unauthorized requester"})));
    assert!(built.bucket().is_empty());
}

#[tokio::test]
async fn allow_listed_writes_are_stored_with_server_fields_and_chained() {
    let stack = stack().await;
    for requester in ["bhiv_core", "workflow_executor", "unified_action_orchestrator"] {
        let (status, body) =
            post(format!("{}/core/write-event", stack.bucket_url()), &event(requester, requester, "p")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!((body["success"].as_bool(), body["message"].as_str()), (Some(true), Some("Event received")));
    }
    let events = stack.bucket().events();
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(events[1].record["requester_id"], "workflow_executor");
    assert!(events[1].record["received_at"].is_string(), "the server's own timestamp");
    assert_eq!(events[1].record["timestamp"], "2026-01-01T00:00:00Z", "the client's timestamp is kept as sent");
    // The chain, recomputed independently: sha256(prev_hash_hex || canonical json).
    let mut prev = GENESIS_HASH.to_owned();
    for stored in &events {
        let mut canonical = Vec::new();
        canonical_json(&stored.record, &mut canonical);
        let digest = Sha256::new().chain_update(prev.as_bytes()).chain_update(&canonical).finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(stored.hash, hex);
        prev = hex;
    }
}

#[tokio::test]
async fn verification_catches_a_tampered_event() {
    let stack = stack().await;
    for i in 0..4 {
        post(format!("{}/core/write-event", stack.bucket_url()), &event("bhiv_core", &format!("e{i}"), "p")).await;
    }
    let url = format!("{}/core/verify-chain", stack.bucket_url());
    let (status, report) = get(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((report["valid"].as_bool(), report["length"].as_u64()), (Some(true), Some(4)));
    assert_eq!(report["first_bad_index"], Value::Null);
    assert!(stack.bucket().tamper(2, |record| record["status"] = json!("failed")));
    let (_, report) = get(&url).await;
    assert_eq!((report["valid"].as_bool(), report["first_bad_index"].as_u64()), (Some(false), Some(2)));
}

#[tokio::test]
async fn the_executor_may_append_but_never_read() {
    let stack = stack().await;
    post(format!("{}/core/write-event", stack.bucket_url()), &event("workflow_executor", "e1", "unknown")).await;
    let base = stack.bucket_url();
    for route in ["/core/events", "/core/stats"] {
        for requester in ["?requester_id=workflow_executor", "?requester_id=intruder", ""] {
            let (status, body) = get(format!("{base}{route}{requester}")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{route}{requester}");
            assert!(body["detail"].as_str().unwrap().starts_with("Unauthorized requester"));
        }
    }
    let (status, body) = get(format!("{base}/core/events?requester_id=bhiv_core&product=unknown")).await;
    assert_eq!((status, body["count"].as_u64(), body["showing"].as_u64()), (StatusCode::OK, Some(1), Some(1)));
    let (status, _) =
        get(format!("{base}/core/read-context?agent_id=a&requester_id=unified_action_orchestrator")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "read-context is bhiv_core's only");
}

#[tokio::test]
async fn as_built_reads_are_open_and_the_workflow_route_does_not_exist() {
    let stack = as_built().await;
    post(format!("{}/core/write-event", stack.bucket_url()), &event("workflow_executor", "e1", "a")).await;
    post(format!("{}/core/write-event", stack.bucket_url()), &event("bhiv_core", "e2", "b")).await;
    let (status, body) = get(format!("{}/core/events?limit=1", stack.bucket_url())).await;
    assert_eq!((status, body["count"].as_u64(), body["showing"].as_u64()), (StatusCode::OK, Some(2), Some(1)));
    assert_eq!(body["events"][0]["event_id"], "e2", "the most recent, every product");
    let (status, _) =
        post(format!("{}/workflow/write-event", stack.bucket_url()), &event("workflow_executor", "e3", "a")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        get(format!("{}/core/read-context?agent_id=x&requester_id=workflow_executor", stack.bucket_url())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_duplicate_event_id_is_stored_once_in_spec_and_twice_as_built() {
    let stack = stack().await;
    let url = format!("{}/workflow/write-event", stack.bucket_url());
    let (_, first) = post(&url, &event("workflow_executor", "dup", "p")).await;
    let (status, second) = post(&url, &event("workflow_executor", "dup", "p")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["duplicate"], true);
    assert_eq!(
        (second["sequence"].clone(), second["hash"].clone()),
        (first["sequence"].clone(), first["hash"].clone())
    );
    assert_eq!(stack.bucket().len(), 1);

    stack.set_profile(Pillar::Bucket, Profile::AsBuilt).unwrap();
    let url = format!("{}/core/write-event", stack.bucket_url());
    post(&url, &event("workflow_executor", "again", "p")).await;
    post(&url, &event("workflow_executor", "again", "p")).await;
    assert_eq!(stack.bucket().len(), 3);
}

#[tokio::test]
async fn readers_see_only_their_product() {
    let stack = stack().await;
    let write = format!("{}/core/write-event", stack.bucket_url());
    for (id, product) in [("a1", "gurukul"), ("a2", "gurukul"), ("b1", "finance")] {
        let mut e = event("bhiv_core", id, product);
        e["event_data"]["agent_id"] = json!("agent-7");
        post(&write, &e).await;
    }
    let base = stack.bucket_url();
    let (_, gurukul) = get(format!("{base}/core/events?requester_id=bhiv_core&product=gurukul")).await;
    let ids: Vec<&str> =
        gurukul["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a1", "a2"]);
    let (_, stats) = get(format!("{base}/core/stats?requester_id=bhiv_core&product=finance")).await;
    assert_eq!(stats["stats"]["total_events"], 1);
    assert_eq!(stats["stats"]["tracked_agents"], json!(["agent-7"]));
    let (_, context) =
        get(format!("{base}/core/read-context?agent_id=agent-7&requester_id=bhiv_core&product=finance")).await;
    assert_eq!(context["context"]["event_count"], 1);
    let (_, none) = get(format!("{base}/core/events?requester_id=bhiv_core&product=other")).await;
    assert_eq!(none["count"], 0);
}

#[tokio::test]
async fn the_store_is_append_only() {
    let stack = stack().await;
    post(format!("{}/core/write-event", stack.bucket_url()), &event("bhiv_core", "e1", "p")).await;
    for (method, route) in [
        (reqwest::Method::DELETE, "/core/events"),
        (reqwest::Method::PUT, "/core/events"),
        (reqwest::Method::PATCH, "/core/write-event"),
        (reqwest::Method::DELETE, "/core/write-event"),
    ] {
        let response = client().request(method.clone(), format!("{}{route}", stack.bucket_url())).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {route}");
    }
    let (status, _) = client()
        .delete(format!("{}/core/events/1", stack.bucket_url()))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(stack.bucket().len(), 1);
    assert!(stack.bucket().verify_chain().valid);
}

#[tokio::test]
async fn workflow_events_are_refused_while_disabled_in_spec_only() {
    let stack = Stack::builder().workflow_events_enabled(false).start().await.unwrap();
    let url = format!("{}/core/write-event", stack.bucket_url());
    let response = client().post(&url).json(&event("workflow_executor", "w1", "p")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "60");
    let mut other = event("bhiv_core", "o1", "p");
    other["event_data"]["event_type"] = json!("agent_result");
    assert_eq!(post(&url, &other).await.0, StatusCode::OK, "other events still flow");
    assert_eq!(stack.bucket().len(), 1);

    stack.set_profile(Pillar::Bucket, Profile::AsBuilt).unwrap();
    assert_eq!(post(&url, &event("workflow_executor", "w2", "p")).await.0, StatusCode::OK, "as-built reads no toggle");
    stack.set_profile(Pillar::Bucket, Profile::Spec).unwrap();
    stack.bucket().set_workflow_events_enabled(true);
    assert_eq!(post(&url, &event("workflow_executor", "w3", "p")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn malformed_writes_get_fastapis_422() {
    let stack = stack().await;
    let url = format!("{}/core/write-event", stack.bucket_url());
    let (status, body) = post(&url, &json!({"requester_id": "bhiv_core"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "event_data"]));
    let (status, body) = post(&url, &json!({"requester_id": "bhiv_core", "event_data": "text"})).await;
    assert_eq!((status, body["detail"][0]["type"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("dict_type")));
    let (status, body) = post(&url, &json!({"requester_id": "bhiv_core", "event_data": {"event_id": 5}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "event_data", "event_id"]));
    let response = client().post(&url).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = get(format!("{}/core/events?requester_id=bhiv_core&limit=5000", stack.bucket_url())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(stack.bucket().is_empty());
}

#[tokio::test]
async fn health_has_the_real_shape() {
    let stack = stack().await;
    post(format!("{}/core/write-event", stack.bucket_url()), &event("bhiv_core", "e1", "p")).await;
    let (status, health) = get(format!("{}/health", stack.bucket_url())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["core_integration"]["events_received"], 1);
    assert_eq!(health["governance"]["approved_integrations"].as_array().unwrap().len(), 3);
}
