//! Steps that break pillars on purpose and let them recover, through the simulator's fault rules
//! (in-process) or its control API (external mode).

use std::time::Duration;

use cucumber::{given, when};
use pillar_sim::{Fault, FaultRule, Pillar};
use serde_json::json;

use super::BhivWorld;
use super::params::{FaultKind, PillarArg};

/// How long a `slow` pillar takes to answer.
pub const SLOW_MS: f64 = 1500.0;

/// The rule for a fault kind (none for `flapping`, which is a timeline).
fn rule(pillar: Pillar, kind: FaultKind) -> Option<FaultRule> {
    let smtp = pillar == Pillar::Smtp;
    let fault = match kind {
        FaultKind::Refused => Fault::Refuse,
        FaultKind::Blackholed => Fault::Blackhole,
        FaultKind::Slow => Fault::latency_ms(SLOW_MS),
        FaultKind::Erroring => Fault::http_error(if smtp { 451 } else { 503 }),
        FaultKind::Failing => Fault::http_error(if smtp { 554 } else { 500 }),
        FaultKind::Resetting => Fault::Reset,
        FaultKind::CuttingOff => Fault::TruncatedBody,
        FaultKind::Flapping => return None,
    };
    Some(FaultRule::new(pillar, fault).id(format!("{pillar}-{kind}")))
}

/// Refused, then healthy, then 503s, then healthy, then blackholed, then healthy: 0.4 s each.
fn flapping(pillar: Pillar) -> serde_json::Value {
    let p = pillar.as_str();
    let error = if pillar == Pillar::Smtp { 451 } else { 503 };
    json!({
        "name": format!("{p}-flapping"),
        "description": "refused, healthy, erroring, healthy, blackholed, healthy (0.4 s each)",
        "steps": [
            {"at": "0ms", "fault": {"pillar": p, "kind": "refuse", "for": "400ms"}},
            {"at": "800ms", "fault": {"pillar": p, "kind": "http_error", "status": error, "for": "400ms"}},
            {"at": "1600ms", "fault": {"pillar": p, "kind": "blackhole", "for": "400ms"}},
        ],
    })
}

#[given(expr = "{pillar} is/are {fault}")]
#[when(expr = "{pillar} become(s) {fault}")]
async fn pillar_is(w: &mut BhivWorld, pillar: PillarArg, kind: FaultKind) {
    w.start().await;
    match rule(pillar.0, kind) {
        Some(rule) => w.set_fault(rule).await,
        None => w.run_timeline(flapping(pillar.0)).await,
    }
}

#[given(expr = "{pillar} is/are {fault} for the first {int} requests")]
async fn pillar_is_for(w: &mut BhivWorld, pillar: PillarArg, kind: FaultKind, count: u64) {
    w.start().await;
    let rule = rule(pillar.0, kind).unwrap_or_else(|| panic!("`{kind}` cannot be limited to a number of requests"));
    w.set_fault(rule.times(count)).await;
}

#[given(expr = "{pillar} never answer(s) the first request")]
async fn blackhole_first(w: &mut BhivWorld, pillar: PillarArg) {
    pillar_is_for(w, pillar, FaultKind::Blackholed, 1).await;
}

#[given(expr = "{pillar}'s answers are cut off for the first {int} requests")]
async fn cut_off_first(w: &mut BhivWorld, pillar: PillarArg, count: u64) {
    pillar_is_for(w, pillar, FaultKind::CuttingOff, count).await;
}

#[given(expr = "{pillar} take(s) {int} ms to answer")]
async fn pillar_takes(w: &mut BhivWorld, pillar: PillarArg, ms: u64) {
    w.start().await;
    w.set_fault(FaultRule::new(pillar.0, Fault::latency_ms(ms as f64)).id(format!("{}-latency", pillar.0))).await;
}

#[given(expr = "{pillar} answer(s) {int} to every request for {int} ms")]
async fn pillar_errors_for(w: &mut BhivWorld, pillar: PillarArg, status: u16, ms: u64) {
    w.start().await;
    let rule = FaultRule::new(pillar.0, Fault::http_error(status))
        .id(format!("{}-{status}", pillar.0))
        .lasting(Duration::from_millis(ms));
    w.set_fault(rule).await;
}

#[when(expr = "{pillar} recover(s)")]
async fn pillar_recovers(w: &mut BhivWorld, pillar: PillarArg) {
    w.clear_faults(Some(pillar.0)).await;
}

#[when("every pillar recovers")]
async fn all_recover(w: &mut BhivWorld) {
    w.clear_faults(None).await;
}
