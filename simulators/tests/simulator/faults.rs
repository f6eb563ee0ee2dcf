//! Every fault kind, through real sockets.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use pillar_sim::{Fault, FaultRule, JournalQuery, Latency, Outcome, Pillar, Stack};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{client, get, raw, stack};

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n";

async fn refused(addr: std::net::SocketAddr) -> bool {
    matches!(TcpStream::connect(addr).await, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
}

#[tokio::test]
async fn refuse_closes_the_port_and_it_listens_again_when_the_window_ends() {
    let stack = stack().await;
    let addr = stack.addr(Pillar::Bucket);
    stack.faults().set(FaultRule::new(Pillar::Bucket, Fault::Refuse).lasting(Duration::from_millis(400))).unwrap();
    eventually(Duration::from_secs(2), "the port refuses", || async { refused(addr).await.then_some(()) }).await;
    // The control API and the other pillars are unaffected.
    assert_eq!(get(format!("{}/health", stack.control_url().unwrap())).await.0, StatusCode::OK);
    assert_eq!(get(format!("{}/health", stack.karma_url())).await.0, StatusCode::OK);
    // Same port, back after the window.
    eventually(Duration::from_secs(5), "the port listens again", || async { TcpStream::connect(addr).await.ok() })
        .await;
    assert_eq!(get(format!("{}/health", stack.bucket_url())).await.0, StatusCode::OK);
}

#[tokio::test]
async fn refuse_drops_open_connections_and_clearing_it_reopens_the_port() {
    let stack = stack().await;
    let addr = stack.addr(Pillar::Karma);
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"GET /health HTTP/1.1\r\nHost: sim\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    assert!(open.read(&mut buf).await.unwrap() > 0, "a keep-alive connection is served");
    let rule = stack.faults().set(FaultRule::new(Pillar::Karma, Fault::Refuse)).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf)).await.expect("closed promptly");
    assert!(matches!(ended, Ok(0) | Err(_)), "the open connection was dropped: {ended:?}");
    eventually(Duration::from_secs(2), "the port refuses", || async { refused(addr).await.then_some(()) }).await;
    assert!(stack.faults().clear(&rule.id));
    eventually(Duration::from_secs(5), "the port listens again", || async { TcpStream::connect(addr).await.ok() })
        .await;
}

#[tokio::test]
async fn blackhole_hangs_until_the_client_gives_up() {
    let stack = stack().await;
    stack.faults().set(FaultRule::new(Pillar::Core, Fault::Blackhole).route("/health")).unwrap();
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let started = Instant::now();
    let error = quick.get(format!("{}/health", stack.core_url())).send().await.expect_err("never answered");
    assert!(error.is_timeout(), "{error:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let entry = stack.journal().query(&JournalQuery::all().pillar(Pillar::Core)).pop().unwrap();
    assert_eq!((entry.outcome, entry.status), (Outcome::Blackholed, None));
    // Other routes still answer.
    assert_eq!(get(format!("{}/", stack.core_url())).await.0, StatusCode::OK);
}

#[tokio::test]
async fn reset_really_resets_the_connection() {
    let stack = stack().await;
    stack.faults().set(FaultRule::new(Pillar::Bucket, Fault::Reset)).unwrap();
    let error = raw(stack.addr(Pillar::Bucket), HEALTH).await.expect_err("reset");
    assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error:?}");
    let entry = stack.journal().entries().pop().unwrap();
    assert_eq!(entry.outcome, Outcome::Reset);
}

#[tokio::test]
async fn http_errors_use_each_pillars_error_shape_and_retry_after() {
    let stack = stack().await;
    for (pillar, status) in [(Pillar::Karma, 503), (Pillar::Bucket, 500), (Pillar::Providers, 429)] {
        stack.faults().set(FaultRule::new(pillar, Fault::http_error(status))).unwrap();
    }
    let response = client().get(format!("{}/health", stack.karma_url())).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["status"].as_str(), body["error"]["code"].as_u64()), (Some("error"), Some(503)));

    let response = client().get(format!("{}/health", stack.bucket_url())).send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert!(response.headers().get("retry-after").is_none());
    assert!(response.json::<Value>().await.unwrap()["detail"].as_str().unwrap().contains("Internal Server Error"));

    let chat =
        client().post(format!("{}/v1/chat/completions", stack.providers_url())).json(&json!({})).send().await.unwrap();
    assert_eq!(chat.status(), 429);
    let body: Value = chat.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_exceeded");
    let graph =
        client().post(format!("{}/v21.0/1/messages", stack.providers_url())).json(&json!({})).send().await.unwrap();
    assert_eq!(graph.json::<Value>().await.unwrap()["error"]["code"], 4, "Graph's rate-limit code");

    stack.faults().clear_all();
    stack.faults().set(FaultRule::new(Pillar::Core, Fault::HttpError { status: 502, retry_after_s: Some(7) })).unwrap();
    let response = client().get(format!("{}/health", stack.core_url())).send().await.unwrap();
    assert_eq!((response.status().as_u16(), response.headers()["retry-after"].to_str().unwrap()), (502, "7"));
}

#[tokio::test]
async fn latency_delays_the_answer_and_is_journaled() {
    let stack = stack().await;
    stack.faults().set(FaultRule::new(Pillar::Karma, Fault::latency_ms(150.0))).unwrap();
    let started = Instant::now();
    assert_eq!(get(format!("{}/health", stack.karma_url())).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    let entry = stack.journal().entries().pop().unwrap();
    assert_eq!(entry.faults[0].latency_ms, Some(150.0));
    assert!(entry.duration_ms >= 150.0);
}

#[tokio::test]
async fn slow_body_trickles_the_whole_body() {
    let stack = stack().await;
    let url = format!("{}/health", stack.bucket_url());
    let normal = client().get(&url).send().await.unwrap().bytes().await.unwrap();
    stack.faults().set(FaultRule::new(Pillar::Bucket, Fault::SlowBody { bytes_per_sec: 4_000 })).unwrap();
    let started = Instant::now();
    let response = client().get(&url).send().await.unwrap();
    let head = started.elapsed();
    let slow = response.bytes().await.unwrap();
    let expected = Duration::from_secs_f64(normal.len() as f64 / 4_000.0);
    assert_eq!(slow.len(), normal.len(), "the body is complete");
    assert!(started.elapsed() >= expected.mul_f64(0.8), "{:?} for {} bytes", started.elapsed(), normal.len());
    assert!(head < expected, "the head arrives first, then the body trickles");
}

#[tokio::test]
async fn truncated_body_stops_before_its_announced_length() {
    let stack = stack().await;
    stack.faults().set(FaultRule::new(Pillar::Bucket, Fault::TruncatedBody)).unwrap();
    let answer = raw(stack.addr(Pillar::Bucket), HEALTH).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head was sent");
    let announced: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .expect("content-length")
        .parse()
        .unwrap();
    assert!(body.len() < announced, "{} of {announced} bytes", body.len());
    let error = client().get(format!("{}/health", stack.bucket_url())).send().await.unwrap().bytes().await;
    assert!(error.is_err(), "a client notices the short body");
}

#[tokio::test]
async fn malformed_json_arrives_whole_but_does_not_parse() {
    let stack = stack().await;
    stack.faults().set(FaultRule::new(Pillar::Karma, Fault::MalformedJson).route("/health")).unwrap();
    let response = client().get(format!("{}/health", stack.karma_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let bytes = response.bytes().await.expect("the announced length is sent");
    assert!(serde_json::from_slice::<Value>(&bytes).is_err(), "{}", String::from_utf8_lossy(&bytes));
}

/// The first `bytes` bytes of an answer to `HEALTH` on `addr`, read to EOF; a reset fails it.
async fn cut_answer(addr: std::net::SocketAddr) -> Vec<u8> {
    raw(addr, HEALTH).await.expect("the connection is closed (EOF), not reset")
}

#[tokio::test]
async fn drop_after_lets_n_bytes_out_then_closes_set_by_the_control_api_and_the_cli() {
    let stack = stack().await;
    let addr = stack.addr(Pillar::Bucket);
    let whole = cut_answer(addr).await;
    assert!(whole.len() > 80, "{} bytes", whole.len());

    // Through the control API: the rule's JSON comes back as it was sent.
    let control = stack.control_url().unwrap();
    let rule = json!({"id": "cut", "pillar": "bucket", "route": "/health", "kind": "drop_after", "bytes": 40});
    let (status, body) = crate::support::post(format!("{control}/faults"), &rule).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["rule"], rule);
    let cut = cut_answer(addr).await;
    assert_eq!(cut.len(), 40, "{}", String::from_utf8_lossy(&cut));
    assert_eq!(cut[..], whole[..40], "the first bytes of the same answer");
    let error = client().get(format!("{}/health", stack.bucket_url())).send().await;
    assert!(error.is_err(), "a client notices the cut: {error:?}");
    let entry = stack.journal().entries().pop().unwrap();
    assert_eq!(entry.faults[0].kind, "drop_after");
    // Its parameter is checked once, with the field named.
    let (status, body) =
        crate::support::post(format!("{control}/faults"), &json!({"pillar": "bucket", "kind": "drop_after"})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("bytes")), "{body}");
    assert!(stack.faults().clear("cut"));

    // Through the CLI flag.
    let out =
        crate::cli::pillar_sim(&control, &["fault", "bucket", "drop_after", "--bytes", "12", "--id", "cli-cut"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stack.faults().list()[0].rule.fault, Fault::DropAfter { bytes: 12 });
    assert_eq!(cut_answer(addr).await, b"HTTP/1.1 200");
    // Zero bytes: the connection closes before the head.
    stack.faults().set(FaultRule::new(Pillar::Bucket, Fault::DropAfter { bytes: 0 }).id("cli-cut")).unwrap();
    assert!(cut_answer(addr).await.is_empty());
}

#[tokio::test]
async fn answer_replaces_the_pillars_answer_set_by_the_control_api_and_the_cli() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let lie = json!({"success": false, "message": "403: Unauthorized requester: workflow_executor"});

    // Through the control API: the rule's JSON comes back as it was sent.
    let rule = json!({"id": "lie", "pillar": "bucket", "route": "/core/write-event", "method": "POST",
        "kind": "answer", "status": 200, "body": lie});
    let (status, body) = crate::support::post(format!("{control}/faults"), &rule).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["rule"], rule);
    let event = json!({"requester_id": "workflow_executor", "event_data": {"trace_id": "t-answer"}});
    let response = client().post(format!("{}/core/write-event", stack.bucket_url())).json(&event).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.json::<Value>().await.unwrap(), lie, "exactly the rule's body");
    let entry = stack.journal().query(&JournalQuery::all().pillar(Pillar::Bucket)).pop().unwrap();
    assert_eq!((entry.outcome, entry.status, entry.faults[0].kind), (Outcome::Answered, Some(200), "answer"));
    assert_eq!(stack.faults().list()[0].matched, 1);
    // Other routes keep their own answers.
    let (status, health) = get(format!("{}/health", stack.bucket_url())).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(health, lie);

    // Through the CLI flags: any JSON value, any status from 200 to 599.
    let args = ["fault", "providers", "answer", "--status", "503", "--body", r#"["not", "an", "object"]"#];
    let out = crate::cli::pillar_sim(&control, &[&args[..], &["--route", "/health", "--id", "cli-lie"]].concat()).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = get(format!("{}/health", stack.providers_url())).await;
    assert_eq!((status, body), (StatusCode::SERVICE_UNAVAILABLE, json!(["not", "an", "object"])));
    let out =
        crate::cli::pillar_sim(&control, &["fault", "providers", "answer", "--status", "200", "--body", "{nope"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--body") && stderr.contains("not valid JSON"), "{stderr}");
}

#[tokio::test]
async fn a_count_window_closes_after_n_matching_requests() {
    let stack = stack().await;
    stack.faults().set(FaultRule::new(Pillar::Bucket, Fault::http_error(503)).route("/health").times(2)).unwrap();
    let url = format!("{}/health", stack.bucket_url());
    let statuses = [get(&url).await.0, get(&url).await.0, get(&url).await.0];
    assert_eq!(statuses.map(|s| s.as_u16()), [503, 503, 200]);
    assert!(stack.faults().list().is_empty());
}

#[tokio::test]
async fn a_time_window_closes_after_its_duration() {
    let stack = stack().await;
    let set_at = Instant::now();
    stack
        .faults()
        .set(FaultRule::new(Pillar::Core, Fault::http_error(500)).lasting(Duration::from_millis(300)))
        .unwrap();
    let url = format!("{}/health", stack.core_url());
    assert_eq!(get(&url).await.0, 500);
    eventually(Duration::from_secs(3), "the route answers 200 again", || async {
        (get(&url).await.0 == 200).then_some(())
    })
    .await;
    assert!(set_at.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn routes_and_methods_narrow_a_rule() {
    let stack = stack().await;
    stack.faults().set(FaultRule::new(Pillar::Karma, Fault::http_error(500)).route("/v1/*").method("POST")).unwrap();
    assert_eq!(get(format!("{}/health", stack.karma_url())).await.0, 200);
    assert_eq!(get(format!("{}/v1/qtable", stack.karma_url())).await.0, 200, "GET is not matched");
    let (status, _) = crate::support::post(format!("{}/v1/event/", stack.karma_url()), &json!({})).await;
    assert_eq!(status, 500);
}

/// `(match index, hit, drawn latency)` of every decision, in match order.
fn decisions(stack: &Stack) -> Vec<(String, u64, bool, Option<u64>)> {
    let mut all: Vec<_> = stack
        .journal()
        .entries()
        .into_iter()
        .flat_map(|e| e.faults)
        .map(|f| (f.rule, f.match_index, f.hit, f.latency_ms.map(|ms| (ms * 1000.0) as u64)))
        .collect();
    all.sort();
    all
}

async fn concurrent_traffic(seed: u64, reversed: bool) -> Vec<(String, u64, bool, Option<u64>)> {
    let stack = Stack::builder().seed(seed).start().await.unwrap();
    stack.faults().set(FaultRule::new(Pillar::Bucket, Fault::http_error(503)).probability(0.5).id("coin")).unwrap();
    let jitter = Latency::Normal { mean_ms: 2.0, stddev_ms: 1.0 };
    stack.faults().set(FaultRule::new(Pillar::Bucket, Fault::Latency(jitter)).probability(0.7).id("jitter")).unwrap();
    let mut order: Vec<usize> = (0..40).collect();
    if reversed {
        order.reverse();
    }
    let requests = order.into_iter().map(|i| {
        let url = format!("{}/core/stats?n={i}", stack.bucket_url());
        async move { client().get(url).send().await.map(|r| r.status()) }
    });
    futures_util::future::join_all(requests).await;
    decisions(&stack)
}

#[tokio::test]
async fn the_same_seed_makes_the_same_decisions_whatever_the_interleaving() {
    let (a, b, c) =
        tokio::join!(concurrent_traffic(7, false), concurrent_traffic(7, true), concurrent_traffic(8, false));
    assert_eq!(a.len(), 80, "both rules decided all 40 requests");
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed decides differently");
    let hits = a.iter().filter(|d| d.0 == "coin" && d.2).count();
    assert!((8..=32).contains(&hits), "about half the coin flips hit: {hits}");
}
