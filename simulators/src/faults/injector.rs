//! The live set of fault rules and the decision for each request.
//!
//! Rules sit in a `Vec` behind a `std::sync::RwLock` that is only ever held to copy out the
//! `Arc`s of the matching rules: the decision itself (counters, draws) happens after the lock is
//! released, and the caller sleeps any injected latency long after that. Each rule counts its
//! matches atomically; the n-th match takes its draws from `(seed, rule id, n)` (see
//! [`crate::faults::rng`]), so decisions do not depend on how concurrent requests interleave. A rule that
//! is past its time window or its match count no longer matches and is dropped the next time the
//! set is listed or changed. Every change bumps a `watch` counter that the listeners follow to
//! stop and restart on `refuse` rules.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::faults::fault::{Effect, Fault, FaultRule, Spoil};
use crate::faults::rng::Draws;
use crate::faults::schema::SpecError;
use crate::pillar::Pillar;

/// A rule as the set holds it.
#[derive(Debug)]
struct ActiveRule {
    id: String,
    rule: FaultRule,
    expires_at: Option<Instant>,
    matches: AtomicU64,
    hits: AtomicU64,
}

impl ActiveRule {
    fn live_at(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| now < t) && self.count_left()
    }

    fn count_left(&self) -> bool {
        self.rule.count.is_none_or(|n| self.matches.load(Ordering::Relaxed) < n)
    }

    fn status(&self, now: Instant) -> RuleStatus {
        let matched = self.matches.load(Ordering::Relaxed);
        RuleStatus {
            id: self.id.clone(),
            rule: FaultRule { id: Some(self.id.clone()), ..self.rule.clone() },
            matched: self.rule.count.map_or(matched, |n| matched.min(n)),
            hit: self.hits.load(Ordering::Relaxed),
            remaining_count: self.rule.count.map(|n| n.saturating_sub(matched)),
            expires_in_ms: self.expires_at.map(|t| t.saturating_duration_since(now).as_millis() as u64),
            active: self.live_at(now),
        }
    }
}

/// A rule in the set, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleStatus {
    /// Its id (given or generated).
    pub id: String,
    /// The rule, with its id filled in.
    pub rule: FaultRule,
    /// Requests that matched it so far.
    pub matched: u64,
    /// Matches that the probability turned into a fault.
    pub hit: u64,
    /// Matches left before a `count` window closes.
    pub remaining_count: Option<u64>,
    /// Time left before a `for` window closes.
    pub expires_in_ms: Option<u64>,
    /// Whether it still applies.
    pub active: bool,
}

/// One rule's part in one request's fate, as the journal records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppliedFault {
    /// The rule's id.
    pub rule: String,
    /// The rule's kind.
    pub kind: &'static str,
    /// Which match of the rule this request was (0-based): the draws are a function of it.
    pub match_index: u64,
    /// Whether the fault was applied (the probability draw was below the rule's probability).
    pub hit: bool,
    /// The probability draw in `[0, 1)`, when the rule has a probability below 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draw: Option<f64>,
    /// The drawn delay, for latency rules that hit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

pub(crate) use crate::faults::fault::Action;

/// The fate of one request: every matching rule has had its draw; latencies add up, the first
/// action and the first body fault that hit win.
#[derive(Default)]
pub(crate) struct Decision {
    pub latency: Duration,
    pub action: Option<Action>,
    pub body: Option<Spoil>,
    pub applied: Vec<AppliedFault>,
}

impl Decision {
    /// Whether `kind` hit this request (for metrics).
    pub(crate) fn hits(&self) -> impl Iterator<Item = &AppliedFault> {
        self.applied.iter().filter(|a| a.hit)
    }
}

/// Whether a listener should be refusing connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Listen.
    No,
    /// Stop listening until this instant (or until the rules change, when `None`).
    Until(Option<Instant>),
}

/// The most rules a stack holds at once.
pub(crate) const MAX_RULES: usize = 1_000;

/// Why a rule was not added.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The rule itself is wrong.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// A rule with this id exists and the request did not ask to replace it.
    #[error("a fault rule with id `{0}` exists; clear it first or ask to replace it (?replace=true, --replace)")]
    Duplicate(String),
    /// The set already holds [`MAX_RULES`] live rules.
    #[error("the simulator holds at most {MAX_RULES} fault rules; clear some first")]
    Full,
}

impl Refused {
    /// The field an error names.
    pub(crate) fn into_spec(self) -> SpecError {
        match self {
            Refused::Invalid(error) => error,
            Refused::Duplicate(_) => SpecError::new("id", self.to_string()),
            Refused::Full => SpecError::new("rules", self.to_string()),
        }
    }
}

/// The live fault rules of one stack.
#[derive(Debug)]
pub(crate) struct FaultSet {
    seed: u64,
    rules: RwLock<Vec<Arc<ActiveRule>>>,
    generated: AtomicU64,
    version: watch::Sender<u64>,
}

impl FaultSet {
    pub(crate) fn new(seed: u64) -> Self {
        Self { seed, rules: RwLock::new(Vec::new()), generated: AtomicU64::new(0), version: watch::Sender::new(0) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<ActiveRule>>> {
        self.rules.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<ActiveRule>>> {
        self.rules.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that changes whenever a rule is set or cleared.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Validates and adds a rule (replacing one with the same id); its windows start now.
    pub(crate) fn set(&self, rule: FaultRule) -> Result<RuleStatus, SpecError> {
        self.add(rule, true).map_err(Refused::into_spec)
    }

    /// Validates and adds a rule; one with the same id is replaced only when `replace` is true.
    /// At most [`MAX_RULES`] live rules are held.
    pub(crate) fn add(&self, rule: FaultRule, replace: bool) -> Result<RuleStatus, Refused> {
        rule.validate()?;
        let now = Instant::now();
        let id = match &rule.id {
            Some(id) => id.clone(),
            None => {
                let n = self.generated.fetch_add(1, Ordering::Relaxed) + 1;
                format!("{}-{}-{n}", rule.pillar, rule.fault.kind())
            }
        };
        let active = Arc::new(ActiveRule {
            id: id.clone(),
            expires_at: rule.lasting.map(|d| now + d),
            rule,
            matches: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        });
        let status = active.status(now);
        {
            let mut rules = self.write();
            rules.retain(|r| r.live_at(now));
            let existing = rules.iter().position(|r| r.id == id);
            match existing {
                Some(_) if !replace => return Err(Refused::Duplicate(id)),
                Some(index) => {
                    rules.remove(index);
                }
                None if rules.len() >= MAX_RULES => return Err(Refused::Full),
                None => {}
            }
            rules.push(active);
        }
        self.bump();
        Ok(status)
    }

    /// Removes a rule; false when no rule has that id.
    pub(crate) fn clear(&self, id: &str) -> bool {
        let removed = {
            let mut rules = self.write();
            let before = rules.len();
            rules.retain(|r| r.id != id);
            before != rules.len()
        };
        if removed {
            self.bump();
        }
        removed
    }

    /// Removes every rule; returns how many there were.
    pub(crate) fn clear_all(&self) -> usize {
        let n = std::mem::take(&mut *self.write()).len();
        self.bump();
        n
    }

    /// Removes every rule and restarts generated ids, as on a fresh stack.
    pub(crate) fn reset(&self) {
        self.clear_all();
        self.generated.store(0, Ordering::Relaxed);
    }

    /// The rules that still apply, oldest first (spent ones are dropped).
    pub(crate) fn list(&self) -> Vec<RuleStatus> {
        let now = Instant::now();
        let mut rules = self.write();
        rules.retain(|r| r.live_at(now));
        rules.iter().map(|r| r.status(now)).collect()
    }

    /// Decides the fate of one request to `pillar`.
    pub(crate) fn decide(&self, pillar: Pillar, method: &str, path: &str) -> Decision {
        let now = Instant::now();
        let matching: Vec<Arc<ActiveRule>> = {
            let rules = self.read();
            if rules.is_empty() {
                return Decision::default();
            }
            rules
                .iter()
                .filter(|r| {
                    r.rule.pillar == pillar
                        && r.rule.fault != Fault::Refuse
                        && r.expires_at.is_none_or(|t| now < t)
                        && r.rule.matches(method, path)
                })
                .cloned()
                .collect()
        };
        let mut decision = Decision::default();
        for rule in matching {
            let index = rule.matches.fetch_add(1, Ordering::Relaxed);
            if rule.rule.count.is_some_and(|n| index >= n) {
                continue; // its count window closed under a concurrent request
            }
            let draws = Draws::new(self.seed, &rule.id, index);
            let (hit, draw) = if rule.rule.probability >= 1.0 {
                (true, None)
            } else {
                let u = draws.uniform(0);
                (u < rule.rule.probability, Some(u))
            };
            let definition = rule.rule.fault.define();
            let mut applied = AppliedFault {
                rule: rule.id.clone(),
                kind: definition.name,
                match_index: index,
                hit,
                draw,
                latency_ms: None,
            };
            if hit {
                rule.hits.fetch_add(1, Ordering::Relaxed);
                match definition.effect {
                    Effect::Delay(latency) => {
                        let ms = latency.sample_ms(&draws);
                        applied.latency_ms = Some(ms);
                        decision.latency += Duration::from_secs_f64(ms / 1000.0);
                    }
                    Effect::End(action) => {
                        decision.action.get_or_insert(action);
                    }
                    Effect::Body(spoil) => {
                        decision.body.get_or_insert(spoil);
                    }
                    Effect::Port => {}
                }
            }
            decision.applied.push(applied);
        }
        decision
    }

    /// Whether `pillar`'s port should be closed now, and until when.
    pub(crate) fn refusal(&self, pillar: Pillar) -> Refusal {
        let now = Instant::now();
        let rules = self.read();
        let mut refusal = Refusal::No;
        for r in rules.iter().filter(|r| r.rule.pillar == pillar && r.rule.fault == Fault::Refuse && r.live_at(now)) {
            refusal = match (refusal, r.expires_at) {
                (Refusal::Until(None), _) | (_, None) => Refusal::Until(None),
                (Refusal::Until(Some(a)), Some(b)) => Refusal::Until(Some(a.max(b))),
                (Refusal::No, Some(b)) => Refusal::Until(Some(b)),
            };
        }
        refusal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::fault::Latency;

    fn outcomes(set: &FaultSet, n: usize) -> Vec<(u64, bool)> {
        (0..n)
            .flat_map(|_| set.decide(Pillar::Bucket, "POST", "/core/write-event").applied)
            .map(|a| (a.match_index, a.hit))
            .collect()
    }

    #[test]
    fn count_windows_close_after_n_matches() {
        let set = FaultSet::new(1);
        set.set(FaultRule::new(Pillar::Bucket, Fault::http_error(503)).times(2)).unwrap();
        let actions: Vec<_> = (0..3).map(|_| set.decide(Pillar::Bucket, "GET", "/").action).collect();
        assert_eq!(actions[0], Some(Action::Error { status: 503, retry_after_s: None }));
        assert!(actions[1].is_some());
        assert_eq!(actions[2], None);
        assert!(set.list().is_empty(), "a spent rule is dropped from the list");
    }

    #[tokio::test(start_paused = true)]
    async fn time_windows_close_after_their_duration() {
        let set = FaultSet::new(1);
        set.set(FaultRule::new(Pillar::Karma, Fault::Blackhole).lasting(Duration::from_secs(10))).unwrap();
        assert_eq!(set.list()[0].expires_in_ms, Some(10_000));
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(set.decide(Pillar::Karma, "GET", "/health").action, Some(Action::Blackhole));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(set.decide(Pillar::Karma, "GET", "/health").action, None);
        assert!(set.list().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn refusal_lasts_as_long_as_the_longest_refuse_rule() {
        let set = FaultSet::new(1);
        assert_eq!(set.refusal(Pillar::Bucket), Refusal::No);
        let start = Instant::now();
        set.set(FaultRule::new(Pillar::Bucket, Fault::Refuse).lasting(Duration::from_secs(5))).unwrap();
        set.set(FaultRule::new(Pillar::Bucket, Fault::Refuse).lasting(Duration::from_secs(9))).unwrap();
        assert_eq!(set.refusal(Pillar::Bucket), Refusal::Until(Some(start + Duration::from_secs(9))));
        assert_eq!(set.refusal(Pillar::Karma), Refusal::No);
        set.set(FaultRule::new(Pillar::Bucket, Fault::Refuse).id("forever")).unwrap();
        assert_eq!(set.refusal(Pillar::Bucket), Refusal::Until(None));
        assert!(set.clear("forever"));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(set.refusal(Pillar::Bucket), Refusal::No);
    }

    #[test]
    fn the_same_seed_makes_the_same_decisions() {
        let rule = || FaultRule::new(Pillar::Bucket, Fault::http_error(500)).probability(0.5).id("coin");
        let (a, b, c) = (FaultSet::new(42), FaultSet::new(42), FaultSet::new(43));
        for set in [&a, &b, &c] {
            set.set(rule()).unwrap();
        }
        let (oa, ob, oc) = (outcomes(&a, 64), outcomes(&b, 64), outcomes(&c, 64));
        assert_eq!(oa, ob);
        assert_ne!(oa, oc);
        let hits = oa.iter().filter(|(_, hit)| *hit).count();
        assert!((20..=44).contains(&hits), "about half of 64 hit, got {hits}");
    }

    #[test]
    fn latencies_add_and_the_first_action_wins() {
        let set = FaultSet::new(1);
        set.set(FaultRule::new(Pillar::Core, Fault::latency_ms(20.0))).unwrap();
        set.set(FaultRule::new(Pillar::Core, Fault::Latency(Latency::Fixed { ms: 30.0 })).route("/handle_task"))
            .unwrap();
        set.set(FaultRule::new(Pillar::Core, Fault::http_error(502))).unwrap();
        set.set(FaultRule::new(Pillar::Core, Fault::Reset)).unwrap();
        let d = set.decide(Pillar::Core, "POST", "/handle_task");
        assert_eq!(d.latency, Duration::from_millis(50));
        assert_eq!(d.action, Some(Action::Error { status: 502, retry_after_s: None }));
        assert_eq!(d.applied.len(), 4);
        let other = set.decide(Pillar::Core, "GET", "/health");
        assert_eq!(other.latency, Duration::from_millis(20));
    }

    #[test]
    fn generated_ids_are_deterministic_and_replacing_keeps_one_rule() {
        let set = FaultSet::new(1);
        assert_eq!(set.set(FaultRule::new(Pillar::Smtp, Fault::Reset)).unwrap().id, "smtp-reset-1");
        assert_eq!(set.set(FaultRule::new(Pillar::Bucket, Fault::Blackhole)).unwrap().id, "bucket-blackhole-2");
        set.set(FaultRule::new(Pillar::Bucket, Fault::Blackhole).id("x")).unwrap();
        set.set(FaultRule::new(Pillar::Bucket, Fault::Reset).id("x")).unwrap();
        let list = set.list();
        assert_eq!(list.len(), 3);
        assert_eq!(list[2].rule.fault, Fault::Reset);
        set.reset();
        assert_eq!(set.set(FaultRule::new(Pillar::Smtp, Fault::Reset)).unwrap().id, "smtp-reset-1");
    }
}
