//! Karma (:8000): life events, the Q-learning rule and karma balances (karma_chain_v2, PILLARS.md
//! §4).
//!
//! **Routes.** `POST /v1/event/` (the unified event gateway; `POST /v1/event` answers 307 to the
//! slash form, as FastAPI does), `GET /api/v1/karma/{user_id}`, `GET /v1/stats/user/{user_id}`,
//! `GET /health`, and the simulator extension `GET /v1/qtable`
//! (`{alpha, gamma, roles, actions, q}`, `q[role][action]`). Errors use the real envelope
//! `{"status": "error", "error": {code, message}, path, timestamp[, details]}`.
//!
//! **The rule** (both profiles). Roles are the states (learner, volunteer, seva, guru), actions
//! the actions. For a life event with role `s` and action `a`: the reward `(token, r)` comes from
//! the table below; the next state `s'` is the role implied by the merit the user would have
//! after adding `r` to `token`; then `Q[s][a] += 0.15 · (r + 0.9 · max Q[s'] − Q[s][a])`, `r` is
//! added to the balance and the stored role is recomputed. Merit = Dharma·1.0 + Seva·1.2 +
//! Punya·3.0; role thresholds learner 0, volunteer 50, seva 200, guru 500.
//!
//! | action | token | reward |
//! |---|---|---|
//! | `completing_lessons` | DharmaPoints | +5 |
//! | `helping_peers` | SevaPoints | +10 |
//! | `solving_doubts` | SevaPoints | +8 |
//! | `selfless_service` | PunyaTokens | +25 |
//! | `cheat` | DharmaPoints | −2, −5, −10, −20, −40 for the 1st–5th offence within 30 days, then −100 |
//! | `workflow_success` (spec) | DharmaPoints | +5: a workflow the user asked for was carried out, worth a completed lesson |
//! | `workflow_failure` (spec) | DharmaPoints | 0: a failure is the provider's, not the user's; the Q-value still moves towards γ·max Q(s') |
//!
//! **Profiles.** `spec` accepts the integration document's workflow event: role `user` (mapped
//! to the `learner` state, where every user starts), the two workflow actions, and `context` as a
//! string or an object; it answers bad roles and actions with a 400 envelope; it applies an event
//! once, keyed by the top-level `event_id`, else `data.context.event_id`, else the
//! `Idempotency-Key` header (a duplicate gets the original answer with `"duplicate": true`); and
//! while `WORKFLOW_BEHAVIORAL_TRACKING` is false it answers workflow events (a workflow action
//! or `source: workflow_executor`) 200 `{"status": "skipped"}` and changes nothing — Karma is an
//! observer, losing behavioural events is allowed. `as-built` is KC exactly: `data` that does
//! not fit KC8's `LogActionRequest` (a non-string `user_id`, `note` or `context`, a non-object
//! `metadata`) → 500 "Error processing life_event: …" with pydantic's message; a role outside the four → 500 "Internal
//! server error: 400: Invalid role."; an action outside the five → 500 "… Invalid action."; no
//! dedupe; the toggle is not read; the success body's `data` has exactly KC8's fields
//! (`current_role` is the role after the event, the fixed `action_flow` text, cheat offences
//! named `first_offense` … `repeat_offender`); an unknown user's profile is KC8's stand-in (200,
//! merit 100, Dharma 100, Seva 50, Punya 25: its 404 is swallowed by a catch-all), the answer's
//! `timestamp` is the request's when it sent one, while
//! `/v1/stats/user/{id}` still answers 404 for an unknown user.
//!
//! **Bounded memory.** The applied life events (and, in `spec`, the answers remembered for
//! dedupe) keep at most [`KarmaLimits::events`] entries and bytes, oldest dropped first; a key
//! whose event was dropped is forgotten, so a duplicate that old is applied again. Users are
//! state, not a log: at most [`KarmaLimits::users`] are kept, and the least recently updated one
//! is forgotten when a new one would exceed that (the Q-table is never trimmed). Both count what
//! they dropped ([`Karma::evicted_events`], [`Karma::evicted_users`]).
//!
//! Not modelled: decay and expiry (negligible over a test's lifetime and they would make
//! balances inexact), atonement/appeal/death events beyond their validation (acknowledged only),
//! paap from sources other than the balances' fields.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};

use crate::pillar::{Profile, ProfileCell};
use crate::record::bounded::{ENTRY_OVERHEAD, Limits, Page, Ring};
use crate::serving::wire::{self, Expect, TraceId};

/// The learning rate.
pub(crate) const ALPHA: f64 = 0.15;
/// The discount factor.
pub(crate) const GAMMA: f64 = 0.9;
/// The roles (states), in order.
pub(crate) const ROLES: [&str; 4] = ["learner", "volunteer", "seva", "guru"];
/// The merit at which each role starts.
pub(crate) const ROLE_THRESHOLDS: [f64; 4] = [0.0, 50.0, 200.0, 500.0];
/// The actions, in Q-table column order: KC's five, then the two `spec` adds.
pub(crate) const ACTIONS: [&str; 7] = [
    "completing_lessons",
    "helping_peers",
    "solving_doubts",
    "selfless_service",
    "cheat",
    "workflow_success",
    "workflow_failure",
];
/// How many of [`ACTIONS`] the real Karma knows.
const REAL_ACTIONS: usize = 5;
/// Progressive cheat penalties within [`CHEAT_WINDOW`].
const CHEAT_PENALTIES: [f64; 6] = [-2.0, -5.0, -10.0, -20.0, -40.0, -100.0];
const CHEAT_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// KC8's `LogActionRequest`, the model a life event's `data` must fit (field order matters for
/// its error message).
const LOG_ACTION_FIELDS: [(&str, wire::PyField); 8] = [
    ("user_id", wire::PyField::Str),
    ("action", wire::PyField::Str),
    ("role", wire::PyField::Str),
    ("note", wire::PyField::OptStr),
    ("context", wire::PyField::OptStr),
    ("metadata", wire::PyField::OptDict),
    ("affected_user_id", wire::PyField::OptStr),
    ("relationship_description", wire::PyField::OptStr),
];
const EVENT_TYPES: [&str; 5] = ["life_event", "atonement", "appeal", "death_event", "stats_request"];

/// A user's token balances.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Balances {
    /// DharmaPoints.
    pub dharma_points: f64,
    /// SevaPoints.
    pub seva_points: f64,
    /// PunyaTokens.
    pub punya_tokens: f64,
    /// PaapTokens `{minor, medium, maha}`.
    pub paap: [f64; 3],
}

impl Balances {
    fn merit(&self) -> f64 {
        self.dharma_points + 1.2 * self.seva_points + 3.0 * self.punya_tokens
    }

    fn paap_score(&self) -> f64 {
        self.paap[0] + 2.5 * self.paap[1] + 5.0 * self.paap[2]
    }

    fn slot(&mut self, token: Token) -> &mut f64 {
        match token {
            Token::Dharma => &mut self.dharma_points,
            Token::Seva => &mut self.seva_points,
            Token::Punya => &mut self.punya_tokens,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "DharmaPoints": self.dharma_points,
            "SevaPoints": self.seva_points,
            "PunyaTokens": self.punya_tokens,
            "PaapTokens": {"minor": self.paap[0], "medium": self.paap[1], "maha": self.paap[2]},
            "DridhaKarma": 0.0, "AdridhaKarma": 0.0, "SanchitaKarma": 0.0, "PrarabdhaKarma": 0.0,
            "Rnanubandhan": {"minor": 0.0, "medium": 0.0, "major": 0.0},
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Dharma,
    Seva,
    Punya,
}

impl Token {
    fn name(self) -> &'static str {
        match self {
            Token::Dharma => "DharmaPoints",
            Token::Seva => "SevaPoints",
            Token::Punya => "PunyaTokens",
        }
    }

    fn tier(self) -> &'static str {
        match self {
            Token::Punya => "high",
            Token::Seva => "medium",
            Token::Dharma => "low",
        }
    }
}

/// The role a merit score earns.
pub(crate) fn role_for_merit(merit: f64) -> usize {
    ROLE_THRESHOLDS.iter().rposition(|t| merit >= *t).unwrap_or(0)
}

/// A user as Karma holds them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KarmaUser {
    /// The id.
    pub user_id: String,
    /// The role the merit earns.
    pub role: String,
    /// Token balances.
    pub balances: Balances,
    /// Dharma·1.0 + Seva·1.2 + Punya·3.0.
    pub merit_score: f64,
    /// Life events applied.
    pub total_actions: u64,
    /// Life events applied, by action.
    pub action_counts: BTreeMap<String, u64>,
    #[serde(skip)]
    cheats: Vec<SystemTime>,
    /// When it was last updated, in the ledger's update order (for least-recently-updated eviction).
    #[serde(skip)]
    touched: u64,
    /// When it last changed (RFC 3339).
    pub last_updated: String,
}

impl KarmaUser {
    fn new(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            role: ROLES[0].to_owned(),
            balances: Balances::default(),
            merit_score: 0.0,
            total_actions: 0,
            action_counts: BTreeMap::new(),
            cheats: Vec::new(),
            touched: 0,
            last_updated: wire::now_rfc3339(),
        }
    }

    fn stats_json(&self) -> Value {
        let paap = self.balances.paap_score();
        json!({
            "status": "success",
            "user_id": self.user_id,
            "role": self.role,
            "merit_score": self.merit_score,
            "paap_score": paap,
            "net_karma": self.merit_score - paap,
            "balances": self.balances.to_json(),
            "action_stats": self.action_stats(),
            "token_attributes": {"DharmaPoints": {"decay_rate": 0.0, "expiry_days": 365},
                "SevaPoints": {"decay_rate": 0.0005, "expiry_days": 365},
                "PunyaTokens": {"decay_rate": 0.0001, "expiry_days": 730}},
        })
    }

    fn profile_json(&self) -> Value {
        let paap = self.balances.paap_score();
        let net = self.merit_score - paap;
        let guidance: Vec<&str> =
            if paap > 0.0 { vec!["Consider an atonement plan to reduce PaapTokens"] } else { vec![] };
        json!({
            "user_id": self.user_id,
            "role": self.role,
            "merit_score": self.merit_score,
            "paap_score": paap,
            "net_karma": net,
            "weighted_karma_score": net,
            "balances": self.balances.to_json(),
            "action_stats": self.action_stats(),
            "corrective_guidance": guidance,
            "module_scores": {"finance": 0.0, "insightflow": 0.0, "gurukul": self.merit_score, "game": 0.0},
            "last_updated": self.last_updated,
        })
    }

    fn action_stats(&self) -> Value {
        json!({"total_actions": self.total_actions, "pending_atonements": 0, "completed_atonements": 0})
    }
}

/// The Q-table as read through [`Karma::q_table`] or `GET /v1/qtable`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QTable {
    /// The learning rate.
    pub alpha: f64,
    /// The discount factor.
    pub gamma: f64,
    /// Row labels.
    pub roles: Vec<&'static str>,
    /// Column labels.
    pub actions: Vec<&'static str>,
    /// `q[role][action]`.
    pub q: Vec<Vec<f64>>,
}

impl QTable {
    /// The value for a role and action, if both exist.
    pub fn value(&self, role: &str, action: &str) -> Option<f64> {
        let r = self.roles.iter().position(|x| *x == role)?;
        let a = self.actions.iter().position(|x| *x == action)?;
        Some(self.q[r][a])
    }
}

/// A life event Karma applied, as read through [`Karma::events`] or `GET /karma/events` on the
/// control API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppliedEvent {
    /// The dedupe key (`event_id`, `data.context.event_id` or `Idempotency-Key`), if any.
    pub event_id: Option<String>,
    /// The trace id the event carried (`data.context.trace_id` or `trace_id`), if any.
    pub trace_id: Option<String>,
    /// The user it was applied to.
    pub user_id: String,
    /// The action.
    pub action: String,
    /// The reward added to the user's balance.
    pub reward_value: f64,
}

/// How much Karma keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KarmaLimits {
    /// The applied life events (with the answers remembered for dedupe).
    pub events: Limits,
    /// The most users kept.
    pub users: usize,
}

/// Karma's default limits: 10,000 events and 16 MiB, 10,000 users.
pub(crate) const DEFAULT_LIMITS: KarmaLimits = KarmaLimits { events: Limits::new(10_000, 16), users: 10_000 };

#[derive(Debug)]
struct Ledger {
    users: HashMap<String, KarmaUser>,
    /// User ids by their `touched` tick, oldest first.
    recency: BTreeMap<u64, String>,
    tick: u64,
    max_users: usize,
    users_evicted: u64,
    q: [[f64; ACTIONS.len()]; ROLES.len()],
    /// The answer given to each dedupe key (`spec`).
    applied: HashMap<String, Value>,
    events: Ring<AppliedEvent>,
}

impl Ledger {
    fn new(limits: KarmaLimits) -> Self {
        Self {
            users: HashMap::new(),
            recency: BTreeMap::new(),
            tick: 0,
            max_users: limits.users.max(1),
            users_evicted: 0,
            q: Default::default(),
            applied: HashMap::new(),
            events: Ring::new(limits.events),
        }
    }

    /// Marks a user as just updated, forgetting the least recently updated ones beyond the limit.
    fn touch(&mut self, user_id: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(user) = self.users.get_mut(user_id) {
            self.recency.remove(&user.touched);
            user.touched = tick;
            self.recency.insert(tick, user_id.to_owned());
        }
        while self.users.len() > self.max_users {
            let Some((_, oldest)) = self.recency.pop_first() else { break };
            self.users.remove(&oldest);
            self.users_evicted += 1;
        }
    }
}

/// The Karma fake's state; reach it through [`crate::Stack::karma`].
#[derive(Debug)]
pub struct Karma {
    profile: ProfileCell,
    tracking: AtomicBool,
    limits: KarmaLimits,
    ledger: Mutex<Ledger>,
}

/// A life event, validated.
struct LifeEvent<'a> {
    user_id: String,
    role: usize,
    action: usize,
    note: Option<&'a str>,
}

/// Why an event is refused, and with which status.
struct Refusal(StatusCode, String);

impl Karma {
    pub(crate) fn new(profile: Profile, behavioral_tracking: bool, limits: KarmaLimits) -> Self {
        Self {
            profile: ProfileCell::new(profile),
            tracking: AtomicBool::new(behavioral_tracking),
            limits,
            ledger: Mutex::new(Ledger::new(limits)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current profile.
    pub fn profile(&self) -> Profile {
        self.profile.get()
    }

    /// Switches the profile (takes effect on the next request).
    pub fn set_profile(&self, profile: Profile) {
        self.profile.set(profile);
    }

    /// Whether workflow events are tracked (`WORKFLOW_BEHAVIORAL_TRACKING`; read in `spec` only).
    pub fn behavioral_tracking(&self) -> bool {
        self.tracking.load(Ordering::Relaxed)
    }

    /// Turns tracking of workflow events on or off.
    pub fn set_behavioral_tracking(&self, enabled: bool) {
        self.tracking.store(enabled, Ordering::Relaxed);
    }

    /// A user, if Karma has seen them.
    pub fn user(&self, user_id: &str) -> Option<KarmaUser> {
        self.lock().users.get(user_id).cloned()
    }

    /// The Q-table (the `as-built` profile shows KC's five actions only).
    pub fn q_table(&self) -> QTable {
        let width = if self.profile() == Profile::AsBuilt { REAL_ACTIONS } else { ACTIONS.len() };
        let ledger = self.lock();
        QTable {
            alpha: ALPHA,
            gamma: GAMMA,
            roles: ROLES.to_vec(),
            actions: ACTIONS[..width].to_vec(),
            q: ledger.q.iter().map(|row| row[..width].to_vec()).collect(),
        }
    }

    /// The life events applied and kept, in order (duplicates are not applied, so not listed).
    pub fn events(&self) -> Vec<AppliedEvent> {
        self.lock().events.iter().map(|(_, e)| e.clone()).collect()
    }

    /// One page of kept life events after cursor `after` (optionally of one trace), oldest first.
    pub fn events_page(&self, after: u64, limit: usize, trace_id: Option<&str>) -> Page<AppliedEvent> {
        self.lock().events.page(
            after,
            limit,
            |e| trace_id.is_none_or(|t| e.trace_id.as_deref() == Some(t)),
            |_, e| e.clone(),
        )
    }

    /// How many applied events were dropped to bound memory since the stack started.
    pub fn evicted_events(&self) -> u64 {
        self.lock().events.evicted()
    }

    /// How many users were forgotten (least recently updated first) since the stack started.
    pub fn evicted_users(&self) -> u64 {
        self.lock().users_evicted
    }

    /// How many users Karma holds.
    pub fn user_count(&self) -> usize {
        self.lock().users.len()
    }

    /// Karma's limits.
    pub fn limits(&self) -> KarmaLimits {
        self.limits
    }

    /// Forgets every user, the Q-table, the applied events and the dedupe memory (the eviction
    /// counts are kept).
    pub fn clear(&self) {
        let mut ledger = self.lock();
        let mut fresh = Ledger::new(self.limits);
        fresh.users_evicted = ledger.users_evicted;
        fresh.events.carry_evicted(&ledger.events);
        *ledger = fresh;
    }

    /// The fake's routes.
    pub(crate) fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(root))
            .route("/health", get(|| async { wire::json_response(StatusCode::OK, &json!({"status": "healthy"})) }))
            .route("/v1/event/", post(post_event))
            .route("/v1/event", post(redirect_to_slash))
            .route("/api/v1/karma/{user_id}", get(get_profile))
            .route("/v1/stats/user/{user_id}", get(get_stats))
            .route("/v1/qtable", get(get_q_table))
            .fallback(|uri: Uri| async move { wire::karma_error(StatusCode::NOT_FOUND, "Not Found", uri.path(), None) })
            .method_not_allowed_fallback(|uri: Uri| async move {
                wire::karma_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", uri.path(), None)
            })
            .with_state(self)
    }

    /// Validates a life event for the profile.
    fn validate<'a>(
        &self,
        profile: Profile,
        data: &'a serde_json::Map<String, Value>,
    ) -> Result<LifeEvent<'a>, Refusal> {
        let field = |name: &str| data.get(name).unwrap_or(&Value::Null);
        if profile == Profile::AsBuilt
            && let Some(errors) = wire::pydantic_type_errors("LogActionRequest", &LOG_ACTION_FIELDS, data)
        {
            return Err(Refusal(StatusCode::INTERNAL_SERVER_ERROR, format!("Error processing life_event: {errors}")));
        }
        let user_id = match field("user_id") {
            Value::String(s) if !s.is_empty() || profile == Profile::AsBuilt => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(Refusal(StatusCode::BAD_REQUEST, "user_id must be a non-empty string".into())),
        };
        let context_ok = match data.get("context") {
            None | Some(Value::Null | Value::String(_)) => true,
            Some(Value::Object(_)) => profile == Profile::Spec,
            Some(_) => false,
        };
        let role_name = field("role").as_str().unwrap_or_default();
        let action_name = field("action").as_str().unwrap_or_default();
        let known_roles: &[&str] =
            if profile == Profile::Spec { &["learner", "volunteer", "seva", "guru", "user"] } else { &ROLES };
        let known_actions = if profile == Profile::Spec { &ACTIONS[..] } else { &ACTIONS[..REAL_ACTIONS] };
        match profile {
            Profile::AsBuilt => {
                if !known_roles.contains(&role_name) {
                    return Err(Refusal(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal server error: 400: Invalid role.".into(),
                    ));
                }
                if !known_actions.contains(&action_name) {
                    return Err(Refusal(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal server error: 400: Invalid action.".into(),
                    ));
                }
            }
            Profile::Spec => {
                if !context_ok {
                    return Err(Refusal(StatusCode::BAD_REQUEST, "context must be a string or an object".into()));
                }
                if !known_roles.contains(&role_name) {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        "Invalid role. Valid roles: learner, volunteer, seva, guru, user".into(),
                    ));
                }
                if !known_actions.contains(&action_name) {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        format!("Invalid action. Valid actions: {}", ACTIONS.join(", ")),
                    ));
                }
            }
        }
        Ok(LifeEvent {
            user_id,
            role: ROLES.iter().position(|r| *r == role_name).unwrap_or(0),
            action: ACTIONS.iter().position(|a| *a == action_name).expect("validated"),
            note: data.get("note").and_then(Value::as_str),
        })
    }

    /// Applies a validated life event once per dedupe key (`None`: no dedupe), in one lock
    /// section so that concurrent duplicates (a retry racing a slow first attempt) apply once.
    /// Returns the answer and whether it is a duplicate's.
    fn apply_once(
        &self,
        event: &LifeEvent<'_>,
        key: Option<String>,
        trace_id: Option<String>,
        as_built: bool,
    ) -> (Value, bool) {
        let mut ledger = self.lock();
        if let Some(original) = key.as_ref().and_then(|k| ledger.applied.get(k)) {
            return (original.clone(), true);
        }
        let data = apply(&mut ledger, event);
        ledger.touch(&event.user_id);
        let applied = AppliedEvent {
            event_id: key.clone(),
            trace_id,
            user_id: event.user_id.clone(),
            action: ACTIONS[event.action].to_owned(),
            reward_value: data["reward_value"].as_f64().unwrap_or_default(),
        };
        let data = if as_built {
            as_built_data(data)
        } else {
            let mut data = data;
            if let Some(map) = data.as_object_mut() {
                map.remove("new_role");
            }
            data
        };
        let mut answer = success("life_event", "Life event logged successfully", data, "/v1/karma/log-action/");
        let mut size = ENTRY_OVERHEAD
            + applied.user_id.len()
            + applied.action.len()
            + applied.trace_id.as_ref().map_or(0, String::len);
        if let Some(key) = key {
            answer["event_id"] = json!(key);
            // The remembered answer is the bulk of the entry: about twice its JSON in memory.
            size += key.len() * 2 + 2 * serde_json::to_vec(&answer).map_or(0, |v| v.len());
            ledger.applied.insert(key, answer.clone());
        }
        let (_, dropped) = ledger.events.push(applied, size);
        for old in &dropped {
            if let Some(key) = &old.event_id {
                ledger.applied.remove(key);
            }
        }
        (answer, false)
    }
}

/// The rule itself: reward, Q update, balances, role. Returns the answer's `data`.
fn apply(ledger: &mut Ledger, event: &LifeEvent<'_>) -> Value {
    let now = SystemTime::now();
    let Ledger { users, q, .. } = ledger;
    let user = users.entry(event.user_id.clone()).or_insert_with(|| KarmaUser::new(&event.user_id));
    let action = ACTIONS[event.action];
    let mut cheat_fields = None;
    let (token, reward) = match action {
        "completing_lessons" | "workflow_success" => (Token::Dharma, 5.0),
        "helping_peers" => (Token::Seva, 10.0),
        "solving_doubts" => (Token::Seva, 8.0),
        "selfless_service" => (Token::Punya, 25.0),
        "workflow_failure" => (Token::Dharma, 0.0),
        _ => {
            user.cheats.retain(|t| now.duration_since(*t).unwrap_or_default() < CHEAT_WINDOW);
            user.cheats.push(now);
            let offence = user.cheats.len();
            let penalty = CHEAT_PENALTIES[(offence - 1).min(CHEAT_PENALTIES.len() - 1)];
            cheat_fields = Some(json!({"penalty_token": "DharmaPoints", "penalty_value": penalty,
                    "penalty_level": offence.min(CHEAT_PENALTIES.len()), "penalty_name": "progressive_cheat_penalty",
                    "cheats_in_period": offence}));
            (Token::Dharma, penalty)
        }
    };
    let mut estimated = user.balances.clone();
    *estimated.slot(token) += reward;
    let next_state = role_for_merit(estimated.merit());
    let (s, a) = (event.role, event.action);
    let best_next = q[next_state].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    q[s][a] += ALPHA * (reward + GAMMA * best_next - q[s][a]);
    let q_value = q[s][a];
    *user.balances.slot(token) += reward;
    user.merit_score = user.balances.merit();
    user.role = ROLES[role_for_merit(user.merit_score)].to_owned();
    user.total_actions += 1;
    *user.action_counts.entry(action.to_owned()).or_default() += 1;
    user.last_updated = wire::now_rfc3339();
    let mut data = json!({
        "user_id": user.user_id,
        "action": action,
        "current_role": ROLES[s],
        "predicted_next_role": ROLES[next_state],
        "merit_score": user.merit_score,
        "reward_token": token.name(),
        "reward_value": reward,
        "reward_tier": token.tier(),
        "action_flow": format!("{} --{action}--> {}", ROLES[s], ROLES[next_state]),
        "note": event.note,
        "q_value": q_value,
        "new_role": user.role,
    });
    if let Some(Value::Object(extra)) = cheat_fields
        && let Value::Object(map) = &mut data
    {
        map.extend(extra);
    }
    data
}

/// The life event's `data` as KC8's `log_action` returns it: no reward value or Q-value,
/// `current_role` the role after the event, its fixed `action_flow` texts and offence names.
fn as_built_data(mut data: Value) -> Value {
    let Some(map) = data.as_object_mut() else { return data };
    map.remove("reward_value");
    map.remove("q_value");
    let role = map.get("new_role").cloned().unwrap_or(Value::Null);
    map.remove("new_role");
    map.insert("current_role".into(), role);
    let cheat = map.contains_key("penalty_value");
    let flow = if cheat {
        for key in ["reward_token", "reward_tier"] {
            map.remove(key);
        }
        let level = map.get("penalty_level").and_then(Value::as_u64).unwrap_or(6) as usize;
        let name = ["first_offense", "second_offense", "third_offense", "fourth_offense", "fifth_offense"]
            .get(level.saturating_sub(1))
            .copied()
            .unwrap_or("repeat_offender");
        map.insert("penalty_name".into(), json!(name));
        "action -> intent -> penalty_level -> punishment -> role_adjustment"
    } else {
        "action -> intent -> merit -> reward_tier -> redemption"
    };
    map.insert("action_flow".into(), json!(flow));
    data
}

async fn root() -> Response {
    wire::json_response(
        StatusCode::OK,
        &json!({"service": "KarmaChain v2 (Dual-Ledger)", "version": "1.0.0", "status": "running",
            "message": "Karma (pillar-sim)"}),
    )
}

async fn redirect_to_slash(headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1:8000");
    let location =
        HeaderValue::from_str(&format!("http://{host}/v1/event/")).unwrap_or(HeaderValue::from_static("/v1/event/"));
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response()
}

fn success(event_type: &str, message: &str, data: Value, internal: &str) -> Value {
    json!({
        "status": "success",
        "event_type": event_type,
        "message": message,
        "data": data,
        "timestamp": wire::now_rfc3339(),
        "routing_info": {"internal_endpoint": internal, "mapped_from": event_type},
    })
}

async fn post_event(State(karma): State<Arc<Karma>>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let path = uri.path();
    let profile = karma.profile();
    let invalid = |details: Vec<Value>| {
        wire::karma_error(StatusCode::UNPROCESSABLE_ENTITY, "Validation failed", path, Some(Value::Array(details)))
    };
    let body = match wire::parse_body(&body) {
        Ok(body) => body,
        Err(details) => return invalid(details),
    };
    let mut errors = wire::model_errors(
        &body,
        &[("type", Expect::Str, true), ("data", Expect::Dict, true), ("source", Expect::Str, false)],
    );
    if let Some(ts) = body.get("timestamp").filter(|t| !t.is_null() && !t.is_string() && !t.is_number()) {
        errors.push(json!({"type": "datetime_type", "loc": ["body", "timestamp"], "msg": "Input should be a valid datetime", "input": ts}));
    }
    if !errors.is_empty() {
        return invalid(errors);
    }
    let trace = crate::record::journal::trace_from_value(&body);
    let mut response = handle_event(&karma, profile, &body, &headers, path, trace.clone());
    if let Some(trace) = trace {
        response.extensions_mut().insert(TraceId(trace));
    }
    response
}

/// Answers a well-formed event (`type` a string, `data` an object).
fn handle_event(
    karma: &Karma,
    profile: Profile,
    body: &Value,
    headers: &HeaderMap,
    path: &str,
    trace_id: Option<String>,
) -> Response {
    let event_type = body["type"].as_str().unwrap_or_default();
    let empty = serde_json::Map::new();
    let data = body["data"].as_object().unwrap_or(&empty);
    let error = |status: StatusCode, message: &str| wire::karma_error(status, message, path, None);
    if !EVENT_TYPES.contains(&event_type) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid event type: {event_type}. Valid types: {}", EVENT_TYPES.join(", ")),
        );
    }
    let (required, sentence): (&[&str], &str) = match event_type {
        "life_event" => (&["user_id", "action", "role"], "user_id, action, and role"),
        "atonement" => {
            (&["user_id", "plan_id", "atonement_type", "amount"], "user_id, plan_id, atonement_type, and amount")
        }
        "appeal" => (&["user_id", "action"], "user_id and action"),
        _ => (&["user_id"], "user_id"),
    };
    // KC checks presence only ("not in"): a null reaches its model, which refuses it (as-built).
    let missing = |k: &&str| match profile {
        Profile::AsBuilt => !data.contains_key(*k),
        Profile::Spec => data.get(*k).is_none_or(Value::is_null),
    };
    if required.iter().any(missing) {
        return error(StatusCode::BAD_REQUEST, &format!("{event_type} requires {sentence} in data"));
    }
    let user_id = match &data.get("user_id") {
        Some(Value::String(s)) => s.clone(),
        other => other.map(Value::to_string).unwrap_or_default(),
    };
    match event_type {
        "life_event" => {}
        "stats_request" => {
            return match karma.user(&user_id) {
                None => error(StatusCode::NOT_FOUND, "User not found"),
                Some(user) => wire::json_response(
                    StatusCode::OK,
                    &success(event_type, "Stats retrieved successfully", user.stats_json(), "/v1/stats/user/{user_id}"),
                ),
            };
        }
        other => {
            let message = format!("{other} received (acknowledged; not modelled by pillar-sim)");
            return wire::json_response(
                StatusCode::OK,
                &success(other, &message, json!({"user_id": user_id}), &format!("/v1/{other}/")),
            );
        }
    }
    let event = match karma.validate(profile, data) {
        Ok(event) => event,
        Err(Refusal(status, message)) => return error(status, &message),
    };
    if profile == Profile::AsBuilt {
        let mut answer = karma.apply_once(&event, None, trace_id, true).0;
        // KC8 answers with the request's own timestamp when it has one.
        if let Some(stamp) = body.get("timestamp").filter(|t| t.is_string()) {
            answer["timestamp"] = stamp.clone();
        }
        return wire::json_response(StatusCode::OK, &answer);
    }
    let workflow = ACTIONS[event.action].starts_with("workflow_") || body["source"] == "workflow_executor";
    if workflow && !karma.behavioral_tracking() {
        return wire::json_response(
            StatusCode::OK,
            &json!({"status": "skipped", "event_type": event_type,
                "message": "Workflow behavioural tracking is disabled (WORKFLOW_BEHAVIORAL_TRACKING=false)"}),
        );
    }
    let key = body["event_id"]
        .as_str()
        .or_else(|| data.get("context").and_then(|c| c.get("event_id")).and_then(Value::as_str))
        .or_else(|| headers.get("idempotency-key").and_then(|v| v.to_str().ok()))
        .map(str::to_owned);
    let (mut answer, duplicate) = karma.apply_once(&event, key, trace_id, false);
    if duplicate {
        answer["duplicate"] = json!(true);
    }
    wire::json_response(StatusCode::OK, &answer)
}

async fn get_profile(State(karma): State<Arc<Karma>>, Path(user_id): Path<String>, uri: Uri) -> Response {
    match karma.user(&user_id) {
        Some(user) => wire::json_response(StatusCode::OK, &user.profile_json()),
        None if karma.profile() == Profile::AsBuilt => wire::json_response(StatusCode::OK, &stand_in_profile(&user_id)),
        None => wire::karma_error(StatusCode::NOT_FOUND, "User not found", uri.path(), None),
    }
}

/// KC8's answer for a user it does not know: its "User not found" is raised inside a catch-all
/// meant for database failures, which answers with this fixed profile instead.
fn stand_in_profile(user_id: &str) -> Value {
    json!({
        "user_id": user_id,
        "role": "learner",
        "merit_score": 100.0,
        "paap_score": 0.0,
        "net_karma": 100.0,
        "weighted_karma_score": 100.0,
        "balances": {"DharmaPoints": 100, "SevaPoints": 50, "PunyaTokens": 25},
        "action_stats": {"total_actions": 0, "pending_atonements": 0, "completed_atonements": 0},
        "corrective_guidance": [],
        "module_scores": {"finance": 50.0, "insightflow": 75.0, "gurukul": 60.0, "game": 65.0},
        "last_updated": wire::now_rfc3339(),
    })
}

async fn get_stats(State(karma): State<Arc<Karma>>, Path(user_id): Path<String>, uri: Uri) -> Response {
    match karma.user(&user_id) {
        Some(user) => wire::json_response(StatusCode::OK, &user.stats_json()),
        None => wire::karma_error(StatusCode::NOT_FOUND, "User not found", uri.path(), None),
    }
}

async fn get_q_table(State(karma): State<Arc<Karma>>) -> Response {
    (StatusCode::OK, axum::Json(karma.q_table())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(karma: &Karma, user: &str, role: &str, action: &str) -> Value {
        let data = json!({"user_id": user, "role": role, "action": action});
        let event = karma.validate(Profile::Spec, data.as_object().unwrap()).ok().expect("valid");
        karma.apply_once(&event, None, None, false).0["data"].clone()
    }

    #[test]
    fn roles_follow_merit_thresholds() {
        assert_eq!(role_for_merit(-5.0), 0);
        assert_eq!(role_for_merit(49.9), 0);
        assert_eq!(role_for_merit(50.0), 1);
        assert_eq!(role_for_merit(200.0), 2);
        assert_eq!(role_for_merit(500.0), 3);
    }

    #[test]
    fn the_q_update_follows_the_rule_step_by_step() {
        let karma = Karma::new(Profile::Spec, true, DEFAULT_LIMITS);
        // 1: learner helps peers: r = 10, s' = learner (merit 12): Q = 0.15 * (10 + 0.9*0 - 0) = 1.5
        life(&karma, "u", "learner", "helping_peers");
        // 2: again: max Q[learner] = 1.5: Q = 1.5 + 0.15 * (10 + 0.9*1.5 - 1.5) = 2.9775
        life(&karma, "u", "learner", "helping_peers");
        // 3: completing_lessons: r = 5, max Q[learner] = 2.9775: Q = 0.15 * (5 + 0.9*2.9775) = 1.1519625
        let data = life(&karma, "u", "learner", "completing_lessons");
        let q = karma.q_table();
        assert!((q.value("learner", "helping_peers").unwrap() - 2.9775).abs() < 1e-12);
        assert!((q.value("learner", "completing_lessons").unwrap() - 1.151_962_5).abs() < 1e-12);
        assert_eq!(data["merit_score"], json!(29.0));
        // 4: selfless service as a learner with merit 29: 29 + 75 = 104 → s' = volunteer (row all 0).
        let data = life(&karma, "u", "learner", "selfless_service");
        assert_eq!(data["predicted_next_role"], "volunteer");
        assert!((karma.q_table().value("learner", "selfless_service").unwrap() - 3.75).abs() < 1e-12);
        assert_eq!(karma.user("u").unwrap().role, "volunteer");
    }

    #[test]
    fn cheating_is_punished_progressively() {
        let karma = Karma::new(Profile::Spec, true, DEFAULT_LIMITS);
        let penalties: Vec<Value> =
            (0..7).map(|_| life(&karma, "c", "learner", "cheat")["penalty_value"].clone()).collect();
        assert_eq!(penalties, [-2.0, -5.0, -10.0, -20.0, -40.0, -100.0, -100.0].map(|v| json!(v)));
        assert_eq!(karma.user("c").unwrap().balances.dharma_points, -277.0);
    }
}
