//! Scenarios: timelines of fault rules, run against a stack's fault set.
//!
//! A scenario file is JSON:
//!
//! ```json
//! {"name": "bucket-flaky",
//!  "description": "Bucket refuses for 10 s, then 30 % errors for 20 s, then is healthy",
//!  "steps": [
//!    {"at": "0s",  "fault": {"pillar": "bucket", "kind": "refuse", "for": "10s"}},
//!    {"at": "10s", "fault": {"pillar": "bucket", "kind": "http_error", "status": 503,
//!                            "probability": 0.3, "for": "20s"}},
//!    {"at": "30s", "clear": "all"}
//!  ]}
//! ```
//!
//! Each step happens `at` an offset from the start and either sets a fault rule (the same schema
//! as everywhere, see [`crate::faults::fault`]; the step may carry the rule's `for` itself, as in
//! `{"at": "10s", "for": "20s", "fault": {…}}`) or clears rules: `"clear": "all"`, `{"id": "…"}` or
//! `{"pillar": "…"}`. A rule without an id is named `<scenario name>-<step index>`, so runs are
//! reproducible and later steps can clear it. Steps run in `at` order; the runner sleeps on
//! Tokio's clock (so `tokio::time::pause` drives it in tests) and holds no lock while waiting.
//! Cancelling a run clears the rules it set.
//!
//! **Every step ends.** A fault step must end on its own (`for`, or a `count`) or be cleared by
//! a later `clear` step (`all`, its id or its pillar); otherwise the scenario is refused (422,
//! naming `steps[i].for`) rather than given a default: a silent default would hide a typo in a
//! file meant to be replayed. A run's id is the scenario's name (`bucket-flaky`; a second run
//! while the name is taken is `bucket-flaky.2`), the prefix of its rules' ids
//! (`bucket-flaky-0`, …). Its status says `finished` when every step has run and `ended` when,
//! in addition, the last rule it set has expired.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::faults::fault::FaultRule;
use crate::faults::injector::FaultSet;
use crate::faults::schema::{Fields, SpecError, format_duration, type_name};
use crate::pillar::Pillar;

/// The most steps a scenario may have.
const MAX_STEPS: usize = 1_000;

/// What a step clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clear {
    /// Every rule.
    All,
    /// The rule with this id.
    Rule(String),
    /// Every rule for this pillar.
    Pillar(Pillar),
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    /// Sets a rule (its windows start when the step runs).
    Fault(FaultRule),
    /// Clears rules.
    Clear(Clear),
}

/// One step of a timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Offset from the scenario's start.
    pub at: Duration,
    /// What happens then.
    pub action: StepAction,
}

/// A timeline of fault rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Its name (letters, digits, `-`, `_`, `.`); names the rules it sets.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// The steps, sorted by `at`.
    pub steps: Vec<Step>,
}

impl Scenario {
    /// Reads a scenario from JSON, strictly; errors name the field (`steps[1].fault.status`).
    pub fn from_json(value: &Value) -> Result<Self, SpecError> {
        let mut fields = Fields::of(value)?;
        let name = fields.opt_str("name")?.unwrap_or("scenario").to_owned();
        if name.is_empty()
            || name.len() > 48
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(SpecError::new("name", "must be 1 to 48 characters of letters, digits, '-', '_' or '.'"));
        }
        let description = fields.opt_str("description")?.map(str::to_owned);
        let steps = match fields.opt_value("steps") {
            None => return Err(SpecError::new("steps", "is required")),
            Some(Value::Array(steps)) if steps.is_empty() => {
                return Err(SpecError::new("steps", "must have at least one step"));
            }
            Some(Value::Array(steps)) if steps.len() > MAX_STEPS => {
                return Err(SpecError::new("steps", format!("must have at most {MAX_STEPS} steps")));
            }
            Some(Value::Array(steps)) => steps,
            Some(other) => return Err(SpecError::new("steps", format!("expected an array, got {}", type_name(other)))),
        };
        fields.finish("a scenario")?;
        let mut parsed = Vec::with_capacity(steps.len());
        for (index, step) in steps.iter().enumerate() {
            let path = format!("steps[{index}]");
            parsed.push(parse_step(step, &name, index).map_err(|e| e.within(&path))?);
        }
        for (index, step) in parsed.iter().enumerate() {
            if let StepAction::Fault(rule) = &step.action
                && rule.lasting.is_none()
                && rule.count.is_none()
                && !parsed.iter().any(|later| later.at > step.at && clears(&later.action, rule))
            {
                return Err(SpecError::new(
                    "for",
                    "this step's rule would never end: give it a `for` (or a `count`), or clear it in a later step",
                )
                .within(&format!("steps[{index}]")));
            }
        }
        parsed.sort_by_key(|s| s.at);
        Ok(Self { name, description, steps: parsed })
    }

    /// How long after its start the last rule it sets ends (expires or is cleared; a rule that
    /// ends after a `count` of matches counts as ending when it is set).
    pub fn duration(&self) -> Duration {
        self.steps
            .iter()
            .map(|s| match &s.action {
                StepAction::Fault(rule) => {
                    let cleared = self.steps.iter().find(|l| l.at > s.at && clears(&l.action, rule)).map(|l| l.at);
                    let expires = rule.lasting.map(|d| s.at + d);
                    match (expires, cleared) {
                        (Some(e), Some(c)) => e.min(c),
                        (Some(end), None) | (None, Some(end)) => end,
                        (None, None) => s.at,
                    }
                }
                StepAction::Clear(_) => s.at,
            })
            .max()
            .unwrap_or_default()
    }
}

/// Whether a clear step removes `rule`.
fn clears(action: &StepAction, rule: &FaultRule) -> bool {
    match action {
        StepAction::Clear(Clear::All) => true,
        StepAction::Clear(Clear::Rule(id)) => rule.id.as_deref() == Some(id.as_str()),
        StepAction::Clear(Clear::Pillar(pillar)) => rule.pillar == *pillar,
        StepAction::Fault(_) => false,
    }
}

fn parse_step(step: &Value, scenario: &str, index: usize) -> Result<Step, SpecError> {
    let mut fields = Fields::of(step)?;
    let at =
        fields.opt_duration("at")?.ok_or_else(|| SpecError::new("at", "is required (an offset such as \"10s\")"))?;
    let lasting = fields.opt_duration("for")?;
    let fault = fields.opt_value("fault");
    let clear = fields.opt_value("clear");
    fields.finish("a scenario step")?;
    let action = match (fault, clear) {
        (Some(_), Some(_)) => {
            return Err(SpecError::new("clear", "a step either sets a `fault` or does a `clear`, not both"));
        }
        (None, None) => return Err(SpecError::new("fault", "a step needs a `fault` to set or a `clear`")),
        (Some(fault), None) => {
            // `body` names the whole input only when the fault is not an object; in an object it
            // is a field (`answer`'s body).
            let mut rule = FaultRule::from_json(fault).map_err(|e| {
                if fault.is_object() {
                    SpecError::new(format!("fault.{}", e.field), e.message)
                } else {
                    e.within("fault")
                }
            })?;
            rule.id.get_or_insert_with(|| format!("{scenario}-{index}"));
            if let Some(lasting) = lasting {
                if rule.lasting.is_some() {
                    return Err(SpecError::new("for", "give `for` on the step or in its fault, not both"));
                }
                if lasting.is_zero() {
                    return Err(SpecError::new("for", "must be longer than zero"));
                }
                rule.lasting = Some(lasting);
            }
            StepAction::Fault(rule)
        }
        (None, Some(_)) if lasting.is_some() => return Err(SpecError::new("for", "a clear step takes no `for`")),
        (None, Some(Value::String(all))) if all == "all" => StepAction::Clear(Clear::All),
        (None, Some(clear @ Value::Object(_))) => {
            let mut f = Fields::of(clear).map_err(|e| e.within("clear"))?;
            let id = f.opt_str("id").map_err(|e| e.within("clear"))?;
            let pillar = f.opt_str("pillar").map_err(|e| e.within("clear"))?;
            f.finish("a clear").map_err(|e| e.within("clear"))?;
            match (id, pillar) {
                (Some(id), None) => StepAction::Clear(Clear::Rule(id.to_owned())),
                (None, Some(p)) => StepAction::Clear(Clear::Pillar(
                    p.parse().map_err(|e: crate::pillar::UnknownName| SpecError::new("clear.pillar", e.to_string()))?,
                )),
                _ => return Err(SpecError::new("clear", "give exactly one of `id` or `pillar`")),
            }
        }
        (None, Some(_)) => return Err(SpecError::new("clear", "expected \"all\", {\"id\": …} or {\"pillar\": …}")),
    };
    Ok(Step { at, action })
}

/// A running (or finished) scenario, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScenarioStatus {
    /// The run's id (`<name>-<n>`).
    pub id: String,
    /// The scenario's name.
    pub name: String,
    /// How many steps it has.
    pub steps: usize,
    /// How many have run.
    pub steps_done: usize,
    /// Whether every step has run.
    pub finished: bool,
    /// Whether every step has run and the last rule it set has expired (`duration_ms` passed).
    pub ended: bool,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// Milliseconds from its start to the end of the last rule it sets.
    pub duration_ms: u64,
}

/// The handle of one run.
#[derive(Debug)]
pub(crate) struct ScenarioRun {
    id: String,
    scenario: Scenario,
    done: AtomicUsize,
    ended: AtomicBool,
    cancelled: AtomicBool,
    cancel: CancellationToken,
    set_ids: Mutex<Vec<String>>,
}

impl ScenarioRun {
    pub(crate) fn status(&self) -> ScenarioStatus {
        let done = self.done.load(Ordering::SeqCst);
        ScenarioStatus {
            id: self.id.clone(),
            name: self.scenario.name.clone(),
            steps: self.scenario.steps.len(),
            steps_done: done,
            finished: done == self.scenario.steps.len(),
            ended: self.ended.load(Ordering::SeqCst),
            cancelled: self.cancelled.load(Ordering::SeqCst),
            duration_ms: self.scenario.duration().as_millis() as u64,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Stops the run and clears the rules it set.
    pub(crate) fn cancel(&self, faults: &FaultSet) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel.cancel();
        for id in self.set_ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            faults.clear(&id);
        }
    }
}

/// The scenario runs of one stack.
#[derive(Debug, Default)]
pub(crate) struct Scenarios {
    runs: Mutex<Vec<Arc<ScenarioRun>>>,
}

impl Scenarios {
    /// Starts `scenario` now; `shutdown` stops it with the stack.
    pub(crate) fn start(
        &self,
        faults: Arc<FaultSet>,
        scenario: Scenario,
        shutdown: &CancellationToken,
    ) -> ScenarioStatus {
        let mut runs = self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken = |id: &str| runs.iter().any(|r| r.id == id);
        let id = (1..)
            .map(|n| if n == 1 { scenario.name.clone() } else { format!("{}.{n}", scenario.name) })
            .find(|id| !taken(id))
            .unwrap_or_else(|| scenario.name.clone());
        let run = Arc::new(ScenarioRun {
            id,
            scenario,
            done: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            cancel: shutdown.child_token(),
            set_ids: Mutex::default(),
        });
        runs.push(run.clone());
        drop(runs);
        let status = run.status();
        tokio::spawn(drive(faults, run));
        status
    }

    pub(crate) fn list(&self) -> Vec<ScenarioStatus> {
        self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().map(|r| r.status()).collect()
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<ScenarioRun>> {
        self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().find(|r| r.id() == id).cloned()
    }

    /// Cancels every run and forgets them.
    pub(crate) fn reset(&self, faults: &FaultSet) {
        for run in std::mem::take(&mut *self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
            run.cancel(faults);
        }
    }
}

async fn drive(faults: Arc<FaultSet>, run: Arc<ScenarioRun>) {
    let start = tokio::time::Instant::now();
    for step in &run.scenario.steps {
        tokio::select! {
            () = run.cancel.cancelled() => return,
            () = tokio::time::sleep_until(start + step.at) => {}
        }
        match &step.action {
            StepAction::Fault(rule) => match faults.set(rule.clone()) {
                Ok(status) => run.set_ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(status.id),
                Err(error) => tracing::warn!(scenario = %run.id, %error, "step rejected"),
            },
            StepAction::Clear(Clear::All) => {
                faults.clear_all();
            }
            StepAction::Clear(Clear::Rule(id)) => {
                faults.clear(id);
            }
            StepAction::Clear(Clear::Pillar(pillar)) => {
                for status in faults.list().into_iter().filter(|s| s.rule.pillar == *pillar) {
                    faults.clear(&status.id);
                }
            }
        }
        tracing::info!(scenario = %run.id, at = %format_duration(step.at), "scenario step applied");
        run.done.fetch_add(1, Ordering::SeqCst);
    }
    tokio::select! {
        () = run.cancel.cancelled() => return,
        () = tokio::time::sleep_until(start + run.scenario.duration()) => {}
    }
    run.ended.store(true, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::fault::Fault;
    use serde_json::json;

    #[test]
    fn bad_scenarios_name_the_step_and_field() {
        let cases = [
            (json!({"steps": []}), "steps"),
            (json!({"name": "x y", "steps": [{"at": "0s", "clear": "all"}]}), "name"),
            (json!({"steps": [{"clear": "all"}]}), "steps[0].at"),
            (
                json!({"steps": [{"at": "0s", "clear": "all"}, {"at": "1s", "fault": {"pillar": "bucket", "kind": "http_error", "status": 700}}]}),
                "steps[1].fault.status",
            ),
            (json!({"steps": [{"at": "0s"}]}), "steps[0].fault"),
            (json!({"steps": [{"at": "0s", "fault": "reset"}]}), "steps[0].fault"),
            (
                json!({"steps": [{"at": "0s", "fault": {"pillar": "bucket", "kind": "answer", "status": 200}}]}),
                "steps[0].fault.body",
            ),
            (json!({"steps": [{"at": "0s", "clear": "some"}]}), "steps[0].clear"),
            (json!({"steps": [{"at": "0s", "clear": {"pillar": "mars"}}]}), "steps[0].clear.pillar"),
            (json!({"steps": [{"at": "soon", "clear": "all"}]}), "steps[0].at"),
            (json!({"steps": [{"at": "0s", "clear": "all", "extra": 1}]}), "steps[0].extra"),
            (json!({"steps": "all"}), "steps"),
            (json!({"steps": [{"at": "0s", "for": "1s", "clear": "all"}]}), "steps[0].for"),
            (
                json!({"steps": [{"at": "0s", "for": "1s", "fault": {"pillar": "core", "kind": "reset", "for": "2s"}}]}),
                "steps[0].for",
            ),
            (json!({"steps": [{"at": "0s", "fault": {"pillar": "bucket", "kind": "refuse"}}]}), "steps[0].for"),
            (
                json!({"steps": [{"at": "0s", "fault": {"pillar": "bucket", "kind": "refuse"}},
                    {"at": "1s", "clear": {"pillar": "karma"}}]}),
                "steps[0].for",
            ),
            (
                json!({"steps": [{"at": "0s", "for": "-5s", "fault": {"pillar": "core", "kind": "reset"}}]}),
                "steps[0].for",
            ),
        ];
        for (input, field) in cases {
            let err = Scenario::from_json(&input).expect_err(&input.to_string());
            assert_eq!(err.field, field, "{input} -> {err}");
        }
        let negative = json!({"steps": [{"at": "0s", "for": "-5s", "fault": {"pillar": "core", "kind": "reset"}}]});
        let err = Scenario::from_json(&negative).unwrap_err();
        assert!(err.message.contains("negative duration"), "{err}");
    }

    #[test]
    fn a_rule_cleared_by_a_later_step_ends_there() {
        let s = Scenario::from_json(&json!({"name": "blip", "steps": [
            {"at": "0s", "fault": {"pillar": "core", "kind": "http_error", "status": 503, "for": "10m"}},
            {"at": "150ms", "clear": {"pillar": "core"}},
            {"at": "1s", "fault": {"pillar": "bucket", "kind": "refuse"}},
            {"at": "2s", "clear": "all"},
        ]}))
        .unwrap();
        assert_eq!(s.duration(), Duration::from_secs(2));
    }

    #[test]
    fn rules_get_named_after_the_scenario_and_steps_are_sorted() {
        let s = Scenario::from_json(&json!({"name": "flaky", "steps": [
            {"at": "10s", "fault": {"pillar": "bucket", "kind": "http_error", "status": 503, "for": "20s"}},
            {"at": "0s", "for": "10s", "fault": {"pillar": "bucket", "kind": "refuse"}},
        ]}))
        .unwrap();
        assert_eq!(s.steps[0].at, Duration::ZERO);
        let StepAction::Fault(rule) = &s.steps[0].action else { panic!("a fault step") };
        assert_eq!((rule.id.as_deref(), &rule.fault), (Some("flaky-1"), &Fault::Refuse));
        assert_eq!(s.duration(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeline_sets_and_clears_rules_on_time() {
        let faults = Arc::new(FaultSet::new(1));
        let scenarios = Scenarios::default();
        let scenario = Scenario::from_json(&json!({"name": "outage", "steps": [
            {"at": "0s", "fault": {"pillar": "bucket", "kind": "refuse", "for": "10s"}},
            {"at": "10s", "fault": {"pillar": "bucket", "kind": "http_error", "status": 503, "probability": 0.3}},
            {"at": "30s", "clear": {"id": "outage-1"}},
        ]}))
        .unwrap();
        let shutdown = CancellationToken::new();
        let status = scenarios.start(faults.clone(), scenario, &shutdown);
        let kinds = |faults: &FaultSet| faults.list().into_iter().map(|s| s.rule.fault.kind()).collect::<Vec<_>>();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(kinds(&faults), ["refuse"]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(kinds(&faults), ["http_error"]);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(kinds(&faults).is_empty());
        let run = scenarios.get(&status.id).unwrap();
        assert!(run.status().finished && run.status().ended);
        assert_eq!(status.id, "outage", "the run is named like its rules (outage-0, outage-1)");
        let again = Scenario::from_json(&json!({"name": "outage", "steps": [{"at": "1h", "clear": "all"}]})).unwrap();
        assert_eq!(scenarios.start(faults.clone(), again, &shutdown).id, "outage.2");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_clears_what_the_run_set() {
        let faults = Arc::new(FaultSet::new(1));
        let scenarios = Scenarios::default();
        let scenario = Scenario::from_json(&json!({"name": "c", "steps": [
            {"at": "0s", "fault": {"pillar": "karma", "kind": "blackhole"}},
            {"at": "1h", "clear": "all"},
        ]}))
        .unwrap();
        let status = scenarios.start(faults.clone(), scenario, &CancellationToken::new());
        tokio::time::sleep(Duration::from_millis(1)).await;
        faults.set(FaultRule::new(Pillar::Core, Fault::Reset).id("mine")).unwrap();
        scenarios.get(&status.id).unwrap().cancel(&faults);
        let left: Vec<String> = faults.list().into_iter().map(|s| s.id).collect();
        assert_eq!(left, ["mine"], "only the run's own rules are cleared");
        assert!(scenarios.list()[0].cancelled);
    }
}
