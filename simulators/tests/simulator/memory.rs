//! Bounded memory: every store drops its oldest entries past its limits and counts them, list
//! routes answer pages, and the counts an end-to-end check needs survive the eviction.

use std::collections::BTreeSet;

use futures_util::StreamExt;
use pillar_sim::{Limits, Stack, StoreLimits};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{client, get, post};

async fn stack_with(limits: StoreLimits) -> Stack {
    Stack::builder().store_limits(limits).start().await.expect("stack starts")
}

/// Reads every page of a list route; returns the entries and how many pages it took.
async fn every_page(url: &str, key: &str, limit: usize) -> (Vec<Value>, usize) {
    let (mut all, mut after, mut pages) = (Vec::new(), 0u64, 0);
    loop {
        let (status, page) = get(format!("{url}?limit={limit}&after={after}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        all.extend(page[key].as_array().cloned().unwrap());
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => return (all, pages),
        }
    }
}

#[tokio::test]
async fn bucket_drops_the_oldest_counts_them_and_still_counts_every_event() {
    let limits = StoreLimits { bucket: Limits { entries: 50, bytes: 1 << 30 }, ..StoreLimits::default() };
    let stack = stack_with(limits).await;
    let write = format!("{}/core/write-event", stack.bucket_url());
    for n in 1..=120 {
        let event = json!({"requester_id": "bhiv_core",
            "event_data": {"event_id": format!("e-{n}"), "trace_id": format!("t-{n}"), "product": "soak"}});
        assert_eq!(post(&write, &event).await.0, StatusCode::OK);
    }
    assert_eq!((stack.bucket().len(), stack.bucket().evicted(), stack.bucket().stored()), (50, 70, 120));
    assert_eq!(stack.bucket().events()[0].sequence, 71, "the oldest are the ones gone");
    assert!(stack.bucket().events_for_trace("t-70").is_empty());
    let chain = stack.bucket().verify_chain();
    assert!(chain.valid, "{chain:?}");
    assert_eq!(chain.length, 120);

    // Bucket's own count, which drive --check reads, still counts every event ever stored.
    let (_, events) =
        get(format!("{}/core/events?requester_id=bhiv_core&product=soak&limit=5", stack.bucket_url())).await;
    assert_eq!((events["count"].as_u64(), events["showing"].as_u64()), (Some(120), Some(5)));

    let control = stack.control_url().unwrap();
    let (events, pages) = every_page(&format!("{control}/bucket/events"), "events", 7).await;
    let sequences: Vec<u64> = events.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert_eq!(sequences, (71..=120).collect::<Vec<_>>(), "every kept event once, in order");
    assert_eq!(pages, 8);
    let (_, first) = get(format!("{control}/bucket/events?limit=1")).await;
    assert_eq!((first["evicted"].as_u64(), first["stored"].as_u64()), (Some(70), Some(120)));
    let (_, one) = get(format!("{control}/bucket/events?trace_id=t-100")).await;
    assert_eq!(one["events"].as_array().map(Vec::len), Some(1));

    let metrics = stack.metrics();
    assert!(metrics.contains(r#"pillar_sim_evicted_total{store="bucket"} 70"#), "{metrics}");
}

#[tokio::test]
async fn karma_forgets_the_least_recently_updated_user_and_keeps_learning() {
    let mut limits = StoreLimits::default();
    limits.karma.users = 3;
    limits.karma.events = Limits { entries: 4, bytes: 1 << 30 };
    let stack = stack_with(limits).await;
    let event = format!("{}/v1/event/", stack.karma_url());
    for user in ["u1", "u2", "u3", "u1", "u4"] {
        let life = json!({"type": "life_event",
            "data": {"user_id": user, "action": "completing_lessons", "role": "learner", "context": {"trace_id": user}}});
        assert_eq!(post(&event, &life).await.0, StatusCode::OK);
    }
    let karma = stack.karma();
    assert!(karma.user("u2").is_none(), "u2 was updated least recently");
    assert_eq!(karma.user("u1").map(|u| u.total_actions), Some(2));
    assert!(karma.user("u3").is_some() && karma.user("u4").is_some());
    assert_eq!((karma.user_count(), karma.evicted_users(), karma.evicted_events()), (3, 1, 1));
    assert!(karma.q_table().value("learner", "completing_lessons").unwrap() > 0.0);
    let control = stack.control_url().unwrap();
    let (events, _) = every_page(&format!("{control}/karma/events"), "events", 3).await;
    let users: Vec<&str> = events.iter().map(|e| e["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, ["u2", "u3", "u1", "u4"]);
    let metrics = stack.metrics();
    assert!(metrics.contains(r#"pillar_sim_evicted_total{store="karma_users"} 1"#), "{metrics}");
}

#[tokio::test]
async fn a_large_journal_answers_pages_not_a_huge_body() {
    let stack = stack_with(StoreLimits::default()).await;
    let write = format!("{}/core/write-event", stack.bucket_url());
    // 1,200 requests with 8 KiB bodies: about 10 MB of journal.
    let body = format!("{{\"padding\": \"{}\"", "x".repeat(8 * 1024));
    let client = client();
    futures_util::stream::iter(0..1200)
        .for_each_concurrent(16, |_| {
            let request = client.post(&write).header("content-type", "application/json").body(body.clone());
            async move {
                assert_eq!(request.send().await.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY);
            }
        })
        .await;
    assert_eq!(stack.journal().len(), 1200);
    let control = stack.control_url().unwrap();
    let response = client.get(format!("{control}/journal")).send().await.unwrap();
    let text = response.text().await.unwrap();
    assert!(text.len() < 2 * 1024 * 1024, "GET /journal answered {} bytes", text.len());
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["count"], 100, "the newest 100 by default");
    assert_eq!(page["entries"][99]["seq"], stack.journal().entries().last().unwrap().seq);
    let (status, error) = get(format!("{control}/journal?limit=100000")).await;
    assert_eq!((status, error["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("limit")));
    let (entries, pages) = every_page(&format!("{control}/journal"), "entries", 1000).await;
    let seqs: BTreeSet<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!((seqs.len(), entries.len(), pages), (1200, 1200, 2), "every entry exactly once");
}

#[tokio::test]
async fn the_journal_drops_the_oldest_by_bytes_and_says_so() {
    let limits = StoreLimits { journal: Limits { entries: 10_000, bytes: 256 * 1024 }, ..StoreLimits::default() };
    let stack = stack_with(limits).await;
    let write = format!("{}/core/write-event", stack.bucket_url());
    let body = format!("{{\"padding\": \"{}\"", "x".repeat(8 * 1024));
    for _ in 0..100 {
        let response = client().post(&write).header("content-type", "application/json").body(body.clone());
        response.send().await.unwrap();
    }
    let kept = stack.journal().len() as u64;
    assert!(kept < 40, "256 KiB holds about 30 entries of 8 KiB, kept {kept}");
    assert_eq!(stack.journal().evicted(), 100 - kept);
    let (_, page) = get(format!("{}/journal?after=0&limit=1", stack.control_url().unwrap())).await;
    assert_eq!(page["evicted"].as_u64(), Some(100 - kept));
    let newest = stack.journal().entries().last().unwrap().seq;
    assert_eq!(page["entries"][0]["seq"].as_u64(), Some(newest + 1 - kept), "the oldest kept comes first");
}
