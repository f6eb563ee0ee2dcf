//! Steps about health checks and monitoring: every pillar's health route, the executor's
//! `/healthz`, `/api/integration/status` and `/metrics`. Checks of states that change as
//! deliveries are retried poll until they hold (bounded).

use cucumber::then;
use pillar_sim::Pillar;
use serde_json::{Value, json};
use test_support::MetricsText;

use super::BhivWorld;
use super::params::{PillarArg, Service, pillar_name};
use super::support::{WAIT, eventually};

/// The executor's name for a sink.
fn sink(pillar: Pillar) -> &'static str {
    match pillar {
        Pillar::Bucket => "bucket",
        Pillar::Karma => "karma",
        other => panic!("the executor delivers events to Bucket and Karma only, not {other}"),
    }
}

#[then(expr = "{service}'s health check answers {int} with status {string}")]
async fn service_health(w: &mut BhivWorld, service: Service, code: u16, status: String) {
    w.start().await;
    let (url, path) = w.service_url(service);
    let reply = w.get(&format!("{url}{path}")).await;
    assert_eq!(reply.status, code, "{url}{path}: {}", reply.body);
    assert_eq!(reply.body["status"], json!(status), "{url}{path}: {}", reply.body);
}

#[then(expr = "the executor's health check answers {int}")]
async fn executor_health(w: &mut BhivWorld, code: u16) {
    let reply = w.get(&format!("{}/healthz", w.executor_url())).await;
    assert_eq!(reply.status, code, "{}", reply.body);
}

#[then(expr = "(eventually )the executor's health check reports {pillar} as {string}")]
async fn healthz_pillar(w: &mut BhivWorld, pillar: PillarArg, state: String) {
    let url = format!("{}/healthz", w.executor_url());
    let name = sink(pillar.0);
    eventually(WAIT, &format!("/healthz to report {} as {state}", pillar_name(pillar.0)), || async {
        let reply = w.get(&url).await;
        if reply.status != 200 {
            return Err(format!("/healthz answered {} (it must always answer 200)", reply.status));
        }
        let seen = &reply.body["pillars"][name];
        if seen == &json!(state) { Ok(()) } else { Err(format!("{seen} in {}", reply.body)) }
    })
    .await;
}

#[then(expr = "(eventually )the executor's health check says {string}")]
async fn healthz_status(w: &mut BhivWorld, status: String) {
    let url = format!("{}/healthz", w.executor_url());
    eventually(WAIT, &format!("/healthz to say {status}"), || async {
        let reply = w.get(&url).await;
        if reply.status == 200 && reply.body["status"] == json!(status) {
            Ok(())
        } else {
            Err(format!("{} {}", reply.status, reply.body))
        }
    })
    .await;
}

/// Polls the integration status until `check` accepts the pillar's entry and the alerts.
async fn status_until(w: &BhivWorld, what: &str, check: impl Fn(&Value, &[Value]) -> Result<(), String>) {
    eventually(WAIT, what, || async {
        let status = w.executor_status().await;
        let alerts = status["alerts"].as_array().cloned().unwrap_or_default();
        check(&status["pillars"], &alerts).map_err(|e| format!("{e} in {status}"))
    })
    .await;
}

#[then(expr = "(eventually )the integration status reports {pillar} as {string} with circuit {string}")]
async fn status_state(w: &mut BhivWorld, pillar: PillarArg, state: String, circuit: String) {
    let name = sink(pillar.0);
    status_until(w, &format!("the status to report {name} {state}/{circuit}"), |pillars, _| {
        let entry = &pillars[name];
        if entry["state"] == json!(state) && entry["circuit"] == json!(circuit) {
            Ok(())
        } else {
            Err(format!("state {} circuit {}", entry["state"], entry["circuit"]))
        }
    })
    .await;
}

#[then(expr = "(eventually )the integration status reports {int} {pillar} event(s) waiting")]
async fn status_waiting(w: &mut BhivWorld, n: u64, pillar: PillarArg) {
    let name = sink(pillar.0);
    status_until(w, &format!("{n} {name} events waiting"), |pillars, _| {
        let depth = &pillars[name]["outbox_depth"];
        if depth == &json!(n) { Ok(()) } else { Err(format!("outbox_depth {depth}")) }
    })
    .await;
}

#[then(expr = "(eventually )the integration status reports {int} {pillar} event(s) dead-lettered")]
async fn status_dead(w: &mut BhivWorld, n: u64, pillar: PillarArg) {
    let name = sink(pillar.0);
    status_until(w, &format!("{n} {name} events dead-lettered"), |pillars, _| {
        let dead = &pillars[name]["dead_lettered"];
        if dead == &json!(n) { Ok(()) } else { Err(format!("dead_lettered {dead}")) }
    })
    .await;
}

#[then(expr = "(eventually )the integration status shows a(n) {string} alert for {pillar}")]
async fn status_alert(w: &mut BhivWorld, kind: String, pillar: PillarArg) {
    alert_mentioning(w, kind, pillar, String::new()).await;
}

#[then(expr = "(eventually )the integration status shows a(n) {string} alert for {pillar} mentioning {string}")]
async fn alert_mentioning(w: &mut BhivWorld, kind: String, pillar: PillarArg, text: String) {
    let name = sink(pillar.0);
    status_until(w, &format!("a {kind} alert for {name}"), |_, alerts| {
        let found = alerts.iter().any(|a| {
            a["kind"] == json!(kind)
                && a["pillar"] == json!(name)
                && a["message"].as_str().is_some_and(|m| m.contains(text.as_str()))
        });
        if found { Ok(()) } else { Err("no such alert".into()) }
    })
    .await;
}

#[then(expr = "(eventually )the integration status shows no alerts")]
async fn no_alerts(w: &mut BhivWorld) {
    status_until(w, "no alerts", |_, alerts| if alerts.is_empty() { Ok(()) } else { Err("alerts".into()) }).await;
}

#[then(expr = "(eventually )the metric {string} reads {float}")]
async fn metric_reads(w: &mut BhivWorld, series: String, value: f64) {
    eventually(WAIT, &format!("{series} to read {value}"), || async {
        match MetricsText(w.executor_metrics().await).series(&series) {
            Some(v) if (v - value).abs() < 1e-9 => Ok(()),
            other => Err(format!("it reads {other:?}")),
        }
    })
    .await;
}

#[then(expr = "(eventually )the metric {string} is at least {float}")]
async fn metric_at_least(w: &mut BhivWorld, series: String, value: f64) {
    eventually(WAIT, &format!("{series} to reach {value}"), || async {
        match MetricsText(w.executor_metrics().await).series(&series) {
            Some(v) if v >= value => Ok(()),
            other => Err(format!("it reads {other:?}")),
        }
    })
    .await;
}
