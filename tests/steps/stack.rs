//! Steps about the stack itself: starting it, its profiles, the documented settings of every
//! pillar, stopping and restarting the executor, and the documented start-up order.

use std::time::Duration;

use cucumber::{given, then, when};
use pillar_sim::{Fault, FaultRule, Pillar};

use super::BhivWorld;
use super::params::{PillarArg, ProfileArg};
use super::stub::{HangingService, RenamingProxy};
use super::support::{WAIT, bounded, eventually};

#[given("a running BHIV stack")]
async fn running_stack(w: &mut BhivWorld) {
    w.start().await;
}

/// The stack is configured by the `Given` steps that follow and started by the first step that
/// uses it (so a Background can name it and a scenario still configure it).
#[given("a BHIV stack")]
async fn stack(w: &mut BhivWorld) {
    if w.is_external() {
        w.start().await;
    }
}

#[given(expr = "the executor setting {word} is {string}")]
async fn executor_setting(w: &mut BhivWorld, name: String, value: String) {
    w.configure(|b| b.executor_env(name, value));
}

#[given(expr = "Core's setting {word} is {string}")]
#[when(expr = "Core's setting {word} becomes {string}")]
async fn core_setting(w: &mut BhivWorld, name: String, value: String) {
    w.set_core_env(&name, &value);
}

#[given(expr = "{pillar} runs the {profile} profile")]
async fn pillar_profile(w: &mut BhivWorld, pillar: PillarArg, profile: ProfileArg) {
    if w.is_started() {
        w.stack().set_profile(pillar.0, profile.0).expect("the pillar has that profile");
    } else {
        w.configure(|b| b.profile(pillar.0, profile.0));
    }
}

#[given(expr = "every pillar runs the {profile} profile")]
async fn every_profile(w: &mut BhivWorld, profile: ProfileArg) {
    w.configure(|b| b.profile_all(profile.0));
}

fn parse_bool(value: &str) -> bool {
    match value {
        "true" => true,
        "false" => false,
        other => panic!("expected \"true\" or \"false\", got {other:?}"),
    }
}

#[given(expr = "Bucket's WORKFLOW_EVENTS_ENABLED is {string}")]
#[when(expr = "Bucket's WORKFLOW_EVENTS_ENABLED becomes {string}")]
async fn workflow_events_enabled(w: &mut BhivWorld, value: String) {
    let enabled = parse_bool(&value);
    if w.is_started() {
        w.stack().bucket().set_workflow_events_enabled(enabled);
    } else {
        w.configure(|b| b.workflow_events_enabled(enabled));
    }
}

#[given(expr = "Karma's WORKFLOW_BEHAVIORAL_TRACKING is {string}")]
#[when(expr = "Karma's WORKFLOW_BEHAVIORAL_TRACKING becomes {string}")]
async fn behavioral_tracking(w: &mut BhivWorld, value: String) {
    let enabled = parse_bool(&value);
    if w.is_started() {
        w.stack().karma().set_behavioral_tracking(enabled);
    } else {
        w.configure(|b| b.behavioral_tracking(enabled));
    }
}

#[when("the executor is stopped")]
async fn stop_executor(w: &mut BhivWorld) {
    w.start().await;
    bounded("stopping the executor", Duration::from_secs(20), w.stack().stop_executor())
        .await
        .expect("the executor stops");
}

#[when("the executor is started again")]
async fn start_executor(w: &mut BhivWorld) {
    bounded("starting the executor", Duration::from_secs(30), w.stack().start_executor())
        .await
        .expect("the executor starts");
}

#[when("the executor is restarted")]
async fn restart_executor(w: &mut BhivWorld) {
    stop_executor(w).await;
    start_executor(w).await;
}

#[given("Core's WORKFLOW_EXECUTOR_URL points at a service that never answers")]
async fn core_to_blackhole(w: &mut BhivWorld) {
    w.start().await;
    // The providers' server stands in for the executor; it reads the dispatch and never answers.
    w.set_fault(FaultRule::new(Pillar::Providers, Fault::Blackhole).id("executor-hangs").route("/api/workflow/*"))
        .await;
    let url = w.stack().providers_url();
    w.set_core_env("WORKFLOW_EXECUTOR_URL", &url);
}

#[given("Core's WORKFLOW_EXECUTOR_URL points at a service that never answers and notes when callers hang up")]
async fn core_to_hanging(w: &mut BhivWorld) {
    let hanging = HangingService::start().await;
    let url = hanging.url();
    w.hanging = Some(hanging);
    w.start().await;
    w.set_core_env("WORKFLOW_EXECUTOR_URL", &url);
}

#[then(expr = "Core hung up on it between {int} and {int} ms after connecting")]
async fn core_hung_up(w: &mut BhivWorld, least: u64, most: u64) {
    let hanging = w.hanging.as_ref().expect("a hanging service");
    let waited = eventually(WAIT, "Core to hang up", || async {
        hanging.waits().first().copied().ok_or_else(|| "Core is still waiting".to_owned())
    })
    .await;
    let ms = waited.as_secs_f64() * 1000.0;
    assert!((least as f64..=most as f64).contains(&ms), "Core waited {ms:.0} ms (expected {least}..{most} ms)");
}

#[given("Core's WORKFLOW_EXECUTOR_URL points at the providers' server")]
#[when("Core's WORKFLOW_EXECUTOR_URL is changed to the providers' server")]
async fn core_to_providers(w: &mut BhivWorld) {
    w.start().await;
    let url = w.stack().providers_url();
    w.set_core_env("WORKFLOW_EXECUTOR_URL", &url);
}

#[given("the executor writes to Bucket under a requester id Bucket does not allow")]
async fn renamed_requester(w: &mut BhivWorld) {
    let proxy = RenamingProxy::start().await;
    let url = proxy.url();
    w.proxy = Some(proxy);
    w.configure(|b| b.executor_env("BUCKET_URL", url));
}

#[given("the pillars Karma, Bucket and Core are running without an executor")]
async fn pillars_without_executor(w: &mut BhivWorld) {
    w.configure(|b| b.executor(false));
    w.start().await;
}

#[when("the executor is started after Karma, Bucket and Core answer their health checks, in that order")]
async fn start_in_order(w: &mut BhivWorld) {
    for (name, url) in [("Karma", w.karma_url()), ("Bucket", w.bucket_url()), ("Core", w.core_url())] {
        let health = format!("{url}/health");
        eventually(WAIT, &format!("{name} to answer its health check"), || async {
            match w.http.get(&health).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }
    w.start_own_executor().await;
    let url = w.executor_url();
    eventually(WAIT, "the executor to answer its health check", || async {
        match w.http.get(format!("{url}/healthz")).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    w.set_core_env("WORKFLOW_EXECUTOR_URL", &url);
}

#[then("the health checks reached Karma, Bucket and Core in that order, each answered 200")]
async fn health_order(w: &mut BhivWorld) {
    let order: Vec<(String, Option<u16>)> = w
        .hits(None, None)
        .await
        .into_iter()
        .filter(|h| h.method == "GET" && h.path == "/health")
        .map(|h| (h.pillar, h.status))
        .collect();
    let first = |pillar: Pillar| {
        order
            .iter()
            .position(|(p, status)| p == pillar.as_str() && *status == Some(200))
            .unwrap_or_else(|| panic!("{pillar} never answered its health check 200: {order:?}"))
    };
    let (karma, bucket, core) = (first(Pillar::Karma), first(Pillar::Bucket), first(Pillar::Core));
    assert!(karma < bucket && bucket < core, "health checks out of order: {order:?}");
}
