//! Steps about what the fakes saw (the simulator's request journal): which calls the executor
//! made, how the pillars answered them, and the trace headers they carried.

use std::collections::HashSet;

use cucumber::gherkin::Step;
use cucumber::then;
use pillar_sim::Pillar;
use serde_json::json;

use super::BhivWorld;
use super::params::{Action, PillarArg, TraceRef, pillar_name};
use super::support::{WAIT, eventually};
use super::world::Hit;

/// The trace-id part of a W3C `traceparent` (`00-<32 hex>-<16 hex>-01`), checking its shape.
fn traceparent_parts(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "a traceparent has four parts: {value}");
    assert_eq!(parts[0], "00", "version 00: {value}");
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    assert!(hex(parts[1], 32) && parts[1] != "0".repeat(32), "a 32-hex-digit trace id: {value}");
    assert!(hex(parts[2], 16) && parts[2] != "0".repeat(16), "a 16-hex-digit span id: {value}");
    assert_eq!(parts[3].len(), 2, "flags: {value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The executor's calls for a trace: to Bucket, Karma and the HTTP providers (headers kept).
async fn outbound_calls(w: &BhivWorld, trace: &str) -> Vec<Hit> {
    w.hits(None, Some(trace))
        .await
        .into_iter()
        .filter(|h| h.is(Pillar::Bucket) || h.is(Pillar::Karma) || h.is(Pillar::Providers))
        .collect()
}

/// The provider calls (HTTP providers and SMTP) for a trace.
async fn provider_calls(w: &BhivWorld, trace: &str) -> Vec<Hit> {
    w.hits(None, Some(trace)).await.into_iter().filter(|h| h.is(Pillar::Providers) || h.is(Pillar::Smtp)).collect()
}

#[then(expr = "(eventually ){pillar} answered {trace}'s event {int}")]
async fn answered(w: &mut BhivWorld, pillar: PillarArg, which: TraceRef, status: u16) {
    let trace = w.trace_of(which);
    w.wait_hit(&format!("{} to answer {trace}'s event {status}", pillar_name(pillar.0)), WAIT, |h| {
        h.is(pillar.0) && h.trace_id.as_deref() == Some(trace.as_str()) && h.status == Some(status)
    })
    .await;
}

#[then(expr = "{pillar} was sent {trace}'s event {int} time(s) in all")]
async fn sent_times(w: &mut BhivWorld, pillar: PillarArg, which: TraceRef, n: usize) {
    let trace = w.trace_of(which);
    let posts = || async {
        w.hits(Some(pillar.0), Some(&trace)).await.into_iter().filter(|h| h.method == "POST").collect::<Vec<Hit>>()
    };
    eventually(WAIT, &format!("{n} deliveries to {}", pillar_name(pillar.0)), || async {
        let hits = posts().await;
        if hits.len() >= n { Ok(()) } else { Err(format!("{} so far", hits.len())) }
    })
    .await;
    let hits = posts().await;
    assert_eq!(hits.len(), n, "{} was sent: {hits:?}", pillar_name(pillar.0));
}

#[then(expr = "the provider call for {action} carried {trace}")]
async fn provider_carried(w: &mut BhivWorld, action: Action, which: TraceRef) {
    let trace = w.trace_of(which);
    match action {
        Action::Task => {
            let calls = provider_calls(w, &trace).await;
            assert!(calls.is_empty(), "a task calls no provider: {calls:?}");
        }
        Action::WhatsApp | Action::Ai => {
            let route_ok = move |path: &str| match action {
                Action::WhatsApp => path.ends_with("/messages"),
                _ => path == "/v1/chat/completions",
            };
            let hit = w
                .wait_hit(&format!("the {} provider call", action.as_str()), WAIT, |h| {
                    h.is(Pillar::Providers) && route_ok(&h.path) && h.header("x-trace-id") == Some(trace.as_str())
                })
                .await;
            let traceparent = hit.header("traceparent").unwrap_or_else(|| panic!("no traceparent: {hit:?}"));
            traceparent_parts(traceparent);
        }
        Action::Email => {
            let mail = eventually(WAIT, "the mail to reach the SMTP sink", || async {
                w.mails()
                    .await
                    .into_iter()
                    .find(|m| m.trace_id.as_deref() == Some(trace.as_str()))
                    .ok_or_else(|| "not yet".to_owned())
            })
            .await;
            assert!(mail.data.contains(&format!("X-Trace-Id: {trace}")), "the mail's header: {}", mail.data);
            assert!(mail.to.iter().any(|to| to == super::payloads::EMAIL), "the mail went to {:?}", mail.to);
            let hit = w
                .wait_hit("the SMTP transaction in the journal", WAIT, |h| {
                    h.is(Pillar::Smtp) && h.trace_id.as_deref() == Some(trace.as_str())
                })
                .await;
            assert_eq!(hit.status, Some(250), "the sink accepted the mail: {hit:?}");
        }
    }
}

#[then(expr = "no provider was called for {trace}")]
async fn no_provider(w: &mut BhivWorld, which: TraceRef) {
    let trace = w.trace_of(which);
    let calls = provider_calls(w, &trace).await;
    assert!(calls.is_empty(), "provider calls: {calls:?}");
}

#[then(expr = "the provider was called {word} for {trace}")]
async fn provider_called(w: &mut BhivWorld, times: String, which: TraceRef) {
    let n = match times.as_str() {
        "never" => 0,
        "once" => 1,
        "twice" => 2,
        other => panic!("expected never, once or twice, got {other:?}"),
    };
    let trace = w.trace_of(which);
    let calls = provider_calls(w, &trace).await;
    assert_eq!(calls.len(), n, "provider calls: {calls:?}");
}

#[then("the provider was called once for each workflow")]
async fn provider_once_each(w: &mut BhivWorld) {
    let traces: Vec<String> = w.executions.iter().map(|e| e.trace.clone()).collect();
    assert!(!traces.is_empty(), "no workflow was executed");
    for trace in traces {
        let calls = provider_calls(w, &trace).await;
        assert_eq!(calls.len(), 1, "provider calls for {trace}: {calls:?}");
    }
}

#[then(expr = "every call for {trace} to Bucket and Karma carried it in X-Trace-Id and traceparent")]
async fn pillar_calls_carry(w: &mut BhivWorld, which: TraceRef) {
    let trace = w.trace_of(which);
    for pillar in [Pillar::Bucket, Pillar::Karma] {
        w.wait_hit(&format!("a call to {pillar} for {trace}"), WAIT, |h| {
            h.is(pillar) && h.trace_id.as_deref() == Some(trace.as_str())
        })
        .await;
    }
    for hit in outbound_calls(w, &trace).await.into_iter().filter(|h| !h.is(Pillar::Providers)) {
        assert_eq!(hit.header("x-trace-id"), Some(trace.as_str()), "X-Trace-Id: {hit:?}");
        traceparent_parts(hit.header("traceparent").unwrap_or_else(|| panic!("no traceparent: {hit:?}")));
    }
}

#[then(expr = "every traceparent of {trace} carries its digits as the W3C trace-id")]
async fn traceparent_digits(w: &mut BhivWorld, which: TraceRef) {
    let trace = w.trace_of(which);
    let expected = trace.replace('-', "");
    let calls = outbound_calls(w, &trace).await;
    assert!(!calls.is_empty(), "no calls for {trace}");
    for hit in calls {
        let (trace_part, _) = traceparent_parts(hit.header("traceparent").expect("a traceparent"));
        assert_eq!(trace_part, expected, "{} {}: {:?}", hit.pillar, hit.path, hit.headers);
    }
}

#[then(expr = "all traceparents of {trace} share one W3C trace-id, with a fresh span id for each call")]
async fn traceparent_shared(w: &mut BhivWorld, which: TraceRef) {
    let trace = w.trace_of(which);
    for pillar in [Pillar::Bucket, Pillar::Karma] {
        w.wait_hit(&format!("a call to {pillar}"), WAIT, |h| {
            h.is(pillar) && h.trace_id.as_deref() == Some(trace.as_str())
        })
        .await;
    }
    let calls = outbound_calls(w, &trace).await;
    assert!(calls.len() >= 3, "the provider, Bucket and Karma were called: {calls:?}");
    let parts: Vec<(String, String)> =
        calls.iter().map(|h| traceparent_parts(h.header("traceparent").expect("a traceparent"))).collect();
    let trace_ids: HashSet<&str> = parts.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(trace_ids.len(), 1, "one trace id across the calls: {parts:?}");
    let spans: HashSet<&str> = parts.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(spans.len(), parts.len(), "a fresh span id per call: {parts:?}");
    for hit in &calls {
        assert_eq!(hit.header("x-trace-id"), Some(trace.as_str()), "X-Trace-Id verbatim: {hit:?}");
    }
}

#[then(expr = "the trace id is in the body of the Bucket event and of the Karma event for {trace}")]
async fn trace_in_bodies(w: &mut BhivWorld, which: TraceRef) {
    let trace = w.trace_of(which);
    let hits = w.hits(None, Some(&trace)).await;
    let bucket = hits.iter().find(|h| h.is(Pillar::Bucket)).expect("a Bucket call");
    assert_eq!(bucket.body.pointer("/event_data/trace_id"), Some(&json!(trace)), "{}", bucket.body);
    assert_eq!(bucket.body.pointer("/event_data/execution_result/trace_id"), Some(&json!(trace)), "{}", bucket.body);
    let karma = hits.iter().find(|h| h.is(Pillar::Karma)).expect("a Karma call");
    assert_eq!(karma.body.pointer("/data/context/trace_id"), Some(&json!(trace)), "{}", karma.body);
}

#[then("the executor called nothing but:")]
async fn called_nothing_but(w: &mut BhivWorld, step: &Step) {
    let table = step.table.as_ref().expect("a table of pillar | method | route");
    let allowed: Vec<(String, String, String)> =
        table.rows.iter().skip(1).map(|r| (r[0].clone(), r[1].clone(), r[2].clone())).collect();
    let hits = w.hits(None, None).await;
    assert!(!hits.is_empty(), "the executor called nothing at all");
    for hit in hits {
        let ok = allowed.iter().any(|(pillar, method, route)| {
            let pillar_ok = pillar_name(hit.pillar.parse().expect("a pillar")) == pillar;
            let route_ok = match route.strip_suffix('*') {
                Some(prefix) => hit.path.starts_with(prefix),
                None => hit.path == *route,
            };
            pillar_ok && hit.method == *method && route_ok
        });
        assert!(ok, "the executor called {} {} {} — not on the list", hit.pillar, hit.method, hit.path);
    }
}

#[then(expr = "the executor tried {pillar} again between {int} and {int} ms after its first attempt")]
async fn tried_again(w: &mut BhivWorld, pillar: PillarArg, least: u64, most: u64) {
    let trace = w.last_trace();
    let attempts = eventually(WAIT, "two delivery attempts", || async {
        let hits: Vec<Hit> =
            w.hits(Some(pillar.0), Some(&trace)).await.into_iter().filter(|h| h.method == "POST").collect();
        if hits.len() >= 2 { Ok(hits) } else { Err(format!("{} so far", hits.len())) }
    })
    .await;
    let stamp = |h: &Hit| super::support::rfc3339_seconds(&h.received_at).expect("an RFC 3339 stamp");
    let gap_ms = (stamp(&attempts[1]) - stamp(&attempts[0])) * 1000.0;
    assert_eq!(attempts[0].outcome, "blackholed", "the first attempt got no answer: {:?}", attempts[0]);
    assert!(
        (least as f64..=most as f64).contains(&gap_ms),
        "the second attempt came {gap_ms:.0} ms after the first (expected {least}..{most} ms)"
    );
}
