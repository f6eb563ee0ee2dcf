//! Steps about Karma: the behavioural events it receives and how the user's karma and the
//! Q-table move, checked against Karma's documented rule:
//!
//! `Q(s, a) += 0.15 · (r + 0.9 · max Q(s', ·) − Q(s, a))`, with `s` the event's role (the
//! executor's `user` is Karma's `learner` state), `s'` the role the user's merit reaches after
//! the reward, `r` = +5 DharmaPoints for `workflow_success` and 0 for `workflow_failure`.

use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use pillar_sim::Pillar;
use serde_json::{Value, json};

use super::BhivWorld;
use super::params::{Action, Outcome, TraceRef};
use super::support::{WAIT, at_path, eventually, matches_text};
use super::world::{Hit, KarmaView};

/// Karma's learning rate, as documented.
const ALPHA: f64 = 0.15;
/// Karma's discount factor, as documented.
const GAMMA: f64 = 0.9;
/// The merit at which each role starts.
const ROLES: [(&str, f64); 4] = [("learner", 0.0), ("volunteer", 50.0), ("seva", 200.0), ("guru", 500.0)];

/// The role a merit earns.
fn role_for(merit: f64) -> &'static str {
    ROLES.iter().rev().find(|(_, at)| merit >= *at).map_or("learner", |(r, _)| r)
}

/// Waits until Karma accepted (200) an event for `trace`; returns the journal entry.
pub async fn wait_karma_event(w: &BhivWorld, trace: &str) -> Hit {
    w.wait_hit(&format!("Karma to accept the event of {trace}"), WAIT, |h| {
        h.is(Pillar::Karma) && h.method == "POST" && h.status == Some(200) && h.trace_id.as_deref() == Some(trace)
    })
    .await
}

#[given("a new user")]
async fn new_user(w: &mut BhivWorld) {
    w.user = w.fresh("user");
}

#[given("I note the user's karma and Karma's Q-table")]
async fn note_karma(w: &mut BhivWorld) {
    w.start().await;
    let user = w.karma_user(&w.user).await;
    let table = w.q_table().await;
    w.karma_before = Some((user, table));
}

#[then(expr = "(eventually )Karma receives a {string} life event for {trace}")]
async fn receives_event(w: &mut BhivWorld, action: String, which: TraceRef) {
    let trace = w.trace_of(which);
    let hit = w
        .wait_hit(&format!("a {action} event for {trace} to reach Karma"), WAIT, |h| {
            h.is(Pillar::Karma) && h.method == "POST" && h.trace_id.as_deref() == Some(trace.as_str())
        })
        .await;
    assert_eq!(hit.path, "/v1/event/", "{hit:?}");
    assert_eq!(hit.body.pointer("/data/action"), Some(&json!(action)), "{}", hit.body);
    w.notes.insert("karma_event".into(), hit.body);
}

#[then("the Karma event says:")]
async fn karma_event_says(w: &mut BhivWorld, step: &Step) {
    let event = w.notes.get("karma_event").cloned().expect("a Karma event was received");
    let trace = w.last_trace();
    let table = step.table.as_ref().expect("a table of field | value");
    for row in table.rows.iter().skip(1) {
        let (field, expected) = (&row[0], &row[1]);
        let value = at_path(&event, field).unwrap_or_else(|| panic!("no `{field}` in {event}"));
        let expected = if expected == "the trace id" { trace.clone() } else { expected.clone() };
        assert!(matches_text(value, &expected), "`{field}` is {value}, expected {expected}: {event}");
    }
}

#[when(expr = "the user's workflows end as follows: {string}")]
async fn workflows_sequence(w: &mut BhivWorld, sequence: String) {
    for outcome in sequence.split(',').map(str::trim) {
        let outcome = match outcome {
            "success" => Outcome::Successful,
            "failure" => Outcome::Failing,
            other => panic!("expected success or failure, got {other:?}"),
        };
        w.execute(Action::Task, outcome, None, None, Vec::new()).await;
        let trace = w.last_trace();
        // One at a time: the next workflow starts once Karma applied this one, so the rule is
        // applied in the order the feature lists.
        wait_karma_event(w, &trace).await;
    }
}

#[then(expr = "(eventually )Karma has applied {int} event(s) for the user")]
async fn applied_events(w: &mut BhivWorld, n: u64) {
    let user = w.user.clone();
    let view = eventually(WAIT, &format!("Karma to apply {n} events for {user}"), || async {
        match w.karma_user(&user).await {
            Some(v) if v.total_actions >= n => Ok(v),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(view.total_actions, n, "Karma applied more events than sent: {view:?}");
}

#[then(expr = "the user has {float} DharmaPoints and the role {string}")]
async fn user_has(w: &mut BhivWorld, dharma: f64, role: String) {
    let view = w.karma_user(&w.user).await.expect("Karma knows the user");
    assert!((view.dharma - dharma).abs() < 1e-9, "DharmaPoints {} (expected {dharma})", view.dharma);
    assert_eq!(view.role, role);
}

#[then(expr = "Q\\({word}, {word}\\) is {float}")]
async fn q_is(w: &mut BhivWorld, role: String, action: String, expected: f64) {
    let table = w.q_table().await;
    assert_eq!((table.alpha, table.gamma), (ALPHA, GAMMA), "Karma's documented alpha and gamma");
    let value = table.value(&role, &action);
    assert!((value - expected).abs() < 1e-7, "Q({role}, {action}) = {value}, expected {expected}");
}

#[then(expr = "Q\\(learner, {word}\\) moved as the rule says for a reward of {float}")]
async fn q_moved(w: &mut BhivWorld, action: String, reward: f64) {
    let (user_before, before) = w.karma_before.clone().expect("the Q-table was noted before");
    let merit_before = user_before.as_ref().map_or(0.0, |u: &KarmaView| u.merit);
    let next_role = role_for(merit_before + reward);
    let q0 = before.value("learner", &action);
    let expected = q0 + ALPHA * (reward + GAMMA * before.best(next_role) - q0);
    let after = w.q_table().await.value("learner", &action);
    assert!(
        (after - expected).abs() < 1e-9,
        "Q(learner, {action}) went {q0} -> {after}; the rule gives {q0} + {ALPHA}·({reward} + {GAMMA}·{} − {q0}) = {expected}",
        before.best(next_role)
    );
}

#[then(expr = "the user's DharmaPoints grew by {float}")]
async fn dharma_grew(w: &mut BhivWorld, reward: f64) {
    let (user_before, _) = w.karma_before.clone().expect("the user's karma was noted before");
    let before = user_before.map_or(0.0, |u| u.dharma);
    let after = w.karma_user(&w.user).await.expect("Karma knows the user").dharma;
    assert!((after - before - reward).abs() < 1e-9, "DharmaPoints went {before} -> {after}, expected +{reward}");
}

#[then("Karma has no record of the user")]
async fn no_record(w: &mut BhivWorld) {
    let user = w.karma_user(&w.user).await;
    assert_eq!(user, None, "Karma changed the user");
}

#[then(expr = "(eventually )Karma answered {trace}'s event with {string}")]
async fn karma_answered_with(w: &mut BhivWorld, which: TraceRef, status: String) {
    let trace = w.trace_of(which);
    let hit = wait_karma_event(w, &trace).await;
    // The journal keeps requests; the answer's own status word is checked through Karma's
    // effect: a skipped event changes nothing.
    assert_eq!(hit.status, Some(200), "{hit:?}");
    if status == "skipped" {
        let user = hit.body.pointer("/data/user_id").and_then(Value::as_str).unwrap_or_default().to_owned();
        assert_eq!(w.karma_user(&user).await, None, "a skipped event changed {user}");
    }
}
