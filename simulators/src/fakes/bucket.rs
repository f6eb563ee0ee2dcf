//! Bucket (:8001), the central depository: an append-only, hash-chained event store with a
//! requester allow-list.
//!
//! | route | `spec` | `as-built` (PILLARS.md §3) |
//! |---|---|---|
//! | `POST /core/write-event` | allow-listed requesters (`bhiv_core`, `workflow_executor`, `unified_action_orchestrator`); unknown → **403** `{"detail": "Unauthorized requester"}`; dedupe by `event_data.event_id` (a duplicate is stored once and answered 200 with `"duplicate": true`); workflow events refused with **503** + `Retry-After: 60` while `WORKFLOW_EVENTS_ENABLED` is false | unknown requester → **200** `{"success": false, "message": "403: Unauthorized requester"}`; no dedupe; the toggle is not read |
//! | `POST /workflow/write-event` | same as `/core/write-event` (the integration document's route) | 404: the real Bucket has no such route |
//! | `GET /core/events?requester_id&product&limit` | reader must name itself (`requester_id`), be allow-listed and not `workflow_executor` (403 otherwise); sees only its `product` (default `"unknown"`) | open to anyone, every product |
//! | `GET /core/stats?requester_id&product` | gated and scoped like `/core/events` | open |
//! | `GET /core/read-context?agent_id&requester_id` | `bhiv_core` only (403 otherwise), scoped to `product` | `bhiv_core` only |
//! | `GET /core/verify-chain` | simulator extension: recomputes the chain, `{valid, length, first_bad_index, head}` | same |
//! | `GET /health`, `GET /` | the real shapes | same |
//!
//! There is no update or delete route (other methods get 405). Write answers keep the real
//! fields (`success`, `message`) and in `spec` add `event_id`, `sequence` and `hash`.
//!
//! **Stored record.** `spec`: the event's fields, then `requester_id` and the server's
//! `received_at` (server values win, T2). `as-built`: `{"timestamp": <server>, "requester_id"}`
//! with the event's fields spread over them (a client `timestamp` overwrites the server's).
//!
//! **Hash chain.** Each record gets `hash = sha256(prev_hash_hex ‖ canonical_json(record))`, the
//! first one chained to 64 zeros; canonical JSON sorts object keys and has no whitespace. The
//! canonical bytes are computed before the store's lock is taken; under the lock only the
//! dedupe check, one SHA-256 over them and the push happen, and no lock is ever held across an
//! await.
//!
//! **Bounded memory.** The store keeps at most its [`Limits`] of events and bytes (default
//! [`DEFAULT_LIMITS`]) and drops the oldest, counting them ([`Bucket::evicted`]). What it
//! reports as Bucket keeps holding for every event ever stored: `sequence` keeps counting, the
//! `count` of `GET /core/events`, `/core/stats` and `/health` count every event ever stored (per
//! product, for the first [`MAX_PRODUCTS`] products), so an end-to-end loss check by count still
//! holds after eviction. The chain is verified from the oldest event kept (its `prev_hash` is
//! taken on trust), and a duplicate is recognised while its original is kept.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::pillar::{Profile, ProfileCell};
use crate::record::bounded::{ENTRY_OVERHEAD, Limits, Page, Ring};
use crate::serving::wire::{self, Expect, TraceId};

/// The requesters Bucket accepts events from.
pub(crate) const ALLOWED_REQUESTERS: [&str; 3] = ["bhiv_core", "workflow_executor", "unified_action_orchestrator"];

/// The requester that may append but never read.
const EXECUTOR: &str = "workflow_executor";

/// The hash the first event is chained to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    /// Position in the chain, from 1.
    pub sequence: u64,
    /// Who wrote it.
    pub requester_id: String,
    /// `event_data.product`, or `"unknown"`.
    pub product: String,
    /// The stored record (what readers get).
    pub record: Value,
    /// The previous event's hash (or [`GENESIS_HASH`]).
    pub prev_hash: String,
    /// `sha256(prev_hash ‖ canonical_json(record))`, hex.
    pub hash: String,
}

/// The result of recomputing the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Whether every link matched.
    pub valid: bool,
    /// How many events the chain holds.
    pub length: usize,
    /// The 0-based index of the first event whose hash or link does not match.
    pub first_bad_index: Option<usize>,
    /// The last stored hash (the chain's head).
    pub head: String,
}

/// Bucket's default limits: 10,000 events, 24 MiB.
pub(crate) const DEFAULT_LIMITS: Limits = Limits::new(10_000, 24);

/// How many products get an exact count of the events ever stored.
pub(crate) const MAX_PRODUCTS: usize = 10_000;

#[derive(Debug)]
struct Store {
    events: Ring<StoredEvent>,
    /// The kept events' dedupe keys: `(sequence, hash)` of the original.
    by_event_id: HashMap<String, (u64, String)>,
    /// Events ever stored (the chain's length).
    stored: u64,
    /// The newest hash.
    head: String,
    /// Events ever stored, per product.
    products: HashMap<String, u64>,
}

impl Store {
    fn new(limits: Limits) -> Self {
        Self {
            events: Ring::new(limits),
            by_event_id: HashMap::new(),
            stored: 0,
            head: GENESIS_HASH.to_owned(),
            products: HashMap::new(),
        }
    }

    /// Events ever stored for a reader's scope (every product when `None`).
    fn count(&self, product: Option<&str>) -> u64 {
        match product {
            None => self.stored,
            Some(p) => self.products.get(p).copied().unwrap_or(0),
        }
    }
}

/// The Bucket fake's state; reach it through [`crate::Stack::bucket`].
#[derive(Debug)]
pub struct Bucket {
    profile: ProfileCell,
    workflow_events_enabled: AtomicBool,
    limits: Limits,
    store: Mutex<Store>,
}

/// Writes `value` as canonical JSON: object keys sorted, no whitespace.
pub fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail");
                out.push(b':');
                canonical_json(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec cannot fail"),
    }
}

fn has_trace(event: &StoredEvent, trace_id: &str) -> bool {
    event.record.get("trace_id").and_then(Value::as_str) == Some(trace_id)
}

fn link_hash(prev_hash: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical);
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Bucket {
    pub(crate) fn new(profile: Profile, workflow_events_enabled: bool, limits: Limits) -> Self {
        Self {
            profile: ProfileCell::new(profile),
            workflow_events_enabled: AtomicBool::new(workflow_events_enabled),
            limits,
            store: Mutex::new(Store::new(limits)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current profile.
    pub fn profile(&self) -> Profile {
        self.profile.get()
    }

    /// Switches the profile (takes effect on the next request).
    pub fn set_profile(&self, profile: Profile) {
        self.profile.set(profile);
    }

    /// Whether workflow events are accepted (`WORKFLOW_EVENTS_ENABLED`; read in `spec` only).
    pub fn workflow_events_enabled(&self) -> bool {
        self.workflow_events_enabled.load(Ordering::Relaxed)
    }

    /// Turns acceptance of workflow events on or off.
    pub fn set_workflow_events_enabled(&self, enabled: bool) {
        self.workflow_events_enabled.store(enabled, Ordering::Relaxed);
    }

    /// Every event kept, in chain order (the oldest may have been evicted).
    pub fn events(&self) -> Vec<StoredEvent> {
        self.lock().events.iter().map(|(_, e)| e.clone()).collect()
    }

    /// How many events are kept.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many events were ever stored (kept or evicted).
    pub fn stored(&self) -> u64 {
        self.lock().stored
    }

    /// How many events were evicted to bound memory since the stack started.
    pub fn evicted(&self) -> u64 {
        self.lock().events.evicted()
    }

    /// The store's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The kept events whose record has this `trace_id`.
    pub fn events_for_trace(&self, trace_id: &str) -> Vec<StoredEvent> {
        self.lock().events.iter().filter(|(_, e)| has_trace(e, trace_id)).map(|(_, e)| e.clone()).collect()
    }

    /// One page of kept events after cursor `after` (optionally of one trace), oldest first.
    pub fn page(&self, after: u64, limit: usize, trace_id: Option<&str>) -> Page<StoredEvent> {
        self.lock().events.page(after, limit, |e| trace_id.is_none_or(|t| has_trace(e, t)), |_, e| e.clone())
    }

    /// Recomputes every link of the chain, from the oldest event kept. `length` counts every
    /// event ever stored and `first_bad_index` is a position in the whole chain.
    pub fn verify_chain(&self) -> ChainReport {
        let store = self.lock();
        let length = usize::try_from(store.stored).unwrap_or(usize::MAX);
        let offset = length - store.events.len();
        let mut prev = store.events.iter().next().map_or_else(|| GENESIS_HASH.to_owned(), |(_, e)| e.prev_hash.clone());
        let mut canonical = Vec::new();
        for (index, (_, event)) in store.events.iter().enumerate() {
            canonical.clear();
            canonical_json(&event.record, &mut canonical);
            if event.prev_hash != prev || link_hash(&prev, &canonical) != event.hash {
                return ChainReport { valid: false, length, first_bad_index: Some(offset + index), head: prev };
            }
            prev.clone_from(&event.hash);
        }
        ChainReport { valid: true, length, first_bad_index: None, head: prev }
    }

    /// For tests of the verifier: edits the stored record at chain position `index` (0-based)
    /// in place, without re-hashing, as an attacker with database access would. False when
    /// there is no such event (or it was evicted).
    pub fn tamper(&self, index: usize, edit: impl FnOnce(&mut Value)) -> bool {
        let mut store = self.lock();
        let offset = usize::try_from(store.stored).unwrap_or(usize::MAX) - store.events.len();
        match index.checked_sub(offset).and_then(|i| store.events.get_mut(i)) {
            Some(event) => {
                edit(&mut event.record);
                true
            }
            None => false,
        }
    }

    /// Forgets every event (and the counts).
    pub fn clear(&self) {
        let mut store = self.lock();
        let evicted = std::mem::replace(&mut *store, Store::new(self.limits));
        // Keep the eviction count (it is a counter since the stack started).
        store.events.carry_evicted(&evicted.events);
    }

    /// Appends a record (or finds its duplicate): `(sequence, hash, duplicate)`.
    fn append(
        &self,
        record: Value,
        requester_id: &str,
        product: String,
        event_id: Option<&str>,
    ) -> (u64, String, bool) {
        let mut canonical = Vec::with_capacity(512);
        canonical_json(&record, &mut canonical);
        let size = ENTRY_OVERHEAD + 2 * canonical.len() + 2 * 64 + requester_id.len() + product.len();
        let mut store = self.lock();
        if let Some((sequence, hash)) = event_id.and_then(|id| store.by_event_id.get(id)) {
            return (*sequence, hash.clone(), true);
        }
        let prev_hash = store.head.clone();
        let hash = link_hash(&prev_hash, &canonical);
        store.stored += 1;
        let sequence = store.stored;
        store.head.clone_from(&hash);
        if let Some(id) = event_id {
            store.by_event_id.insert(id.to_owned(), (sequence, hash.clone()));
        }
        if store.products.len() < MAX_PRODUCTS || store.products.contains_key(&product) {
            *store.products.entry(product.clone()).or_default() += 1;
        }
        let event = StoredEvent {
            sequence,
            requester_id: requester_id.to_owned(),
            product,
            record,
            prev_hash,
            hash: hash.clone(),
        };
        let (_, dropped) = store.events.push(event, size);
        for old in &dropped {
            if let Some(id) = old.record.get("event_id").and_then(Value::as_str)
                && store.by_event_id.get(id).is_some_and(|(seq, _)| *seq == old.sequence)
            {
                store.by_event_id.remove(id);
            }
        }
        drop(store);
        drop(dropped);
        (sequence, hash, false)
    }

    /// The records a reader may see: in `spec` only its product's.
    fn visible(&self, product: Option<&str>) -> Vec<Value> {
        let store = self.lock();
        store
            .events
            .iter()
            .filter(|(_, e)| product.is_none_or(|p| e.product == p))
            .map(|(_, e)| e.record.clone())
            .collect()
    }

    /// The newest `limit` records a reader may see, and how many it has ever been able to see.
    fn newest_visible(&self, product: Option<&str>, limit: usize) -> (Vec<Value>, u64) {
        let store = self.lock();
        let mut newest: Vec<Value> = store
            .events
            .iter()
            .rev()
            .filter(|(_, e)| product.is_none_or(|p| e.product == p))
            .take(limit)
            .map(|(_, e)| e.record.clone())
            .collect();
        newest.reverse();
        (newest, store.count(product))
    }

    /// The fake's routes.
    pub(crate) fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(root))
            .route("/health", get(health))
            .route("/core/write-event", post(write_event))
            .route("/workflow/write-event", post(write_event))
            .route("/core/events", get(read_events))
            .route("/core/stats", get(read_stats))
            .route("/core/read-context", get(read_context))
            .route("/core/verify-chain", get(verify_chain))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self)
    }
}

pub(crate) async fn not_found() -> Response {
    wire::detail(StatusCode::NOT_FOUND, "Not Found")
}

pub(crate) async fn method_not_allowed() -> Response {
    wire::detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

async fn root() -> Response {
    wire::json_response(
        StatusCode::OK,
        &json!({
            "service": "BHIV Bucket",
            "version": "1.0.0",
            "status": "running",
            "environment": "simulation",
            "endpoints": {"write_event": "/core/write-event", "events": "/core/events", "stats": "/core/stats",
                "read_context": "/core/read-context", "health": "/health"},
            "message": "BHIV Central Depository (pillar-sim)",
        }),
    )
}

async fn health(State(bucket): State<Arc<Bucket>>) -> Response {
    let (events, agents) = {
        let store = bucket.lock();
        let agents: BTreeSet<&str> =
            store.events.iter().filter_map(|(_, e)| e.record.get("agent_id").and_then(Value::as_str)).collect();
        (store.stored, agents.len())
    };
    wire::json_response(
        StatusCode::OK,
        &json!({
            "status": "healthy",
            "bucket_version": "1.0.0",
            "core_integration": {"status": "active", "events_received": events, "agents_tracked": agents},
            "prana_telemetry": {"status": "active", "packets_received": 0},
            "governance": {"gate_active": true, "approved_integrations": ALLOWED_REQUESTERS,
                "certification": "enterprise_ready", "certification_date": "2026-01-19",
                "constitutional_governance": "active"},
            "services": {"mongodb": "connected", "socketio": "disabled", "redis": "connected",
                "audit_middleware": "active", "constitutional_enforcement": "active"},
        }),
    )
}

async fn write_event(State(bucket): State<Arc<Bucket>>, uri: Uri, body: Bytes) -> Response {
    let profile = bucket.profile();
    let workflow_route = uri.path() == "/workflow/write-event";
    if workflow_route && profile == Profile::AsBuilt {
        return not_found().await;
    }
    let body = match wire::parse_body(&body) {
        Ok(value) => value,
        Err(errors) => return wire::unprocessable(errors),
    };
    let errors = wire::model_errors(&body, &[("requester_id", Expect::Str, true), ("event_data", Expect::Dict, true)]);
    if !errors.is_empty() {
        return wire::unprocessable(errors);
    }
    let Value::Object(mut body) = body else { unreachable!("checked to be an object") };
    let Some(Value::String(requester)) = body.remove("requester_id") else { unreachable!("checked to be a string") };
    let Some(Value::Object(event)) = body.remove("event_data") else { unreachable!("checked to be an object") };
    if !ALLOWED_REQUESTERS.contains(&requester.as_str()) {
        return match profile {
            Profile::Spec => wire::detail(StatusCode::FORBIDDEN, "Unauthorized requester"),
            Profile::AsBuilt => wire::json_response(
                StatusCode::OK,
                &json!({"success": false, "message": "403: Unauthorized requester"}),
            ),
        };
    }
    if profile == Profile::Spec {
        for field in ["event_id", "product", "event_type", "trace_id"] {
            if event.get(field).is_some_and(|v| v.as_str().is_none_or(str::is_empty)) {
                return wire::unprocessable(vec![json!({"type": "string_type", "loc": ["body", "event_data", field],
                    "msg": "Input should be a non-empty string", "input": event[field]})]);
            }
        }
        let workflow_event =
            workflow_route || event.get("event_type").and_then(Value::as_str) == Some("workflow_execution");
        if workflow_event && !bucket.workflow_events_enabled() {
            let mut refused = wire::detail(
                StatusCode::SERVICE_UNAVAILABLE,
                "Workflow events are disabled (WORKFLOW_EVENTS_ENABLED=false)",
            );
            refused.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return refused;
        }
    }
    let trace = event.get("trace_id").and_then(Value::as_str).map(str::to_owned);
    let event_id = event.get("event_id").and_then(Value::as_str).map(str::to_owned);
    let product = event.get("product").and_then(Value::as_str).unwrap_or("unknown").to_owned();
    let record = match profile {
        Profile::Spec => {
            let mut record = event;
            record.insert("requester_id".into(), json!(requester));
            record.insert("received_at".into(), json!(wire::now_rfc3339()));
            record
        }
        Profile::AsBuilt => {
            let mut record = Map::new();
            record.insert("timestamp".into(), json!(wire::now_rfc3339()));
            record.insert("requester_id".into(), json!(requester));
            record.extend(event);
            record
        }
    };
    let dedupe_key = if profile == Profile::Spec { event_id.as_deref() } else { None };
    let (sequence, hash, duplicate) = bucket.append(Value::Object(record), &requester, product, dedupe_key);
    let answer = match profile {
        Profile::Spec => {
            let mut answer = json!({"success": true, "message": "Event received", "event_id": event_id,
                "sequence": sequence, "hash": hash});
            if duplicate {
                answer["duplicate"] = json!(true);
            }
            answer
        }
        Profile::AsBuilt => json!({"success": true, "message": "Event received"}),
    };
    let mut response = wire::json_response(StatusCode::OK, &answer);
    if let Some(trace) = trace {
        response.extensions_mut().insert(TraceId(trace));
    }
    response
}

/// The reader's scope (its product in `spec`, everything `as-built`), or the 403 detail.
fn reader_scope(bucket: &Bucket, query: &HashMap<String, String>) -> Result<Option<String>, &'static str> {
    if bucket.profile() == Profile::AsBuilt {
        return Ok(None);
    }
    match query.get("requester_id").map(String::as_str) {
        Some(EXECUTOR) => Err("Unauthorized requester: workflow_executor may append events but never read them"),
        Some(r) if ALLOWED_REQUESTERS.contains(&r) => {
            Ok(Some(query.get("product").cloned().unwrap_or_else(|| "unknown".to_owned())))
        }
        _ => Err("Unauthorized requester"),
    }
}

/// `limit` (1..=1000, default 100), or pydantic's error for it.
fn parse_limit(query: &HashMap<String, String>) -> Result<usize, Value> {
    let Some(raw) = query.get("limit") else { return Ok(100) };
    let error = |kind: &str, msg: &str| json!({"type": kind, "loc": ["query", "limit"], "msg": msg, "input": raw});
    match raw.parse::<i64>() {
        Err(_) => Err(error("int_parsing", "Input should be a valid integer, unable to parse string as an integer")),
        Ok(n) if n < 1 => Err(error("greater_than_equal", "Input should be greater than or equal to 1")),
        Ok(n) if n > 1000 => Err(error("less_than_equal", "Input should be less than or equal to 1000")),
        Ok(n) => Ok(n as usize),
    }
}

async fn read_events(State(bucket): State<Arc<Bucket>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let scope = match reader_scope(&bucket, &query) {
        Ok(scope) => scope,
        Err(detail) => return wire::detail(StatusCode::FORBIDDEN, detail),
    };
    let limit = match parse_limit(&query) {
        Ok(limit) => limit,
        Err(invalid) => return wire::unprocessable(vec![invalid]),
    };
    let (shown, count) = bucket.newest_visible(scope.as_deref(), limit);
    wire::json_response(StatusCode::OK, &json!({"events": shown, "count": count, "showing": shown.len()}))
}

async fn read_stats(State(bucket): State<Arc<Bucket>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let scope = match reader_scope(&bucket, &query) {
        Ok(scope) => scope,
        Err(detail) => return wire::detail(StatusCode::FORBIDDEN, detail),
    };
    let visible = bucket.visible(scope.as_deref());
    let total = bucket.lock().count(scope.as_deref());
    let agents: BTreeSet<&str> = visible.iter().filter_map(|e| e.get("agent_id").and_then(Value::as_str)).collect();
    wire::json_response(
        StatusCode::OK,
        &json!({"stats": {"total_events": total, "agents_with_context": agents.len(),
            "tracked_agents": agents}, "integration_status": "active"}),
    )
}

async fn read_context(State(bucket): State<Arc<Bucket>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let Some(agent_id) = query.get("agent_id") else {
        return wire::unprocessable(vec![json!({"type": "missing", "loc": ["query", "agent_id"],
            "msg": "Field required", "input": null})]);
    };
    if query.get("requester_id").map(String::as_str) != Some("bhiv_core") {
        return wire::detail(StatusCode::FORBIDDEN, "Unauthorized requester");
    }
    let scope = match bucket.profile() {
        Profile::Spec => Some(query.get("product").map_or("unknown", String::as_str)),
        Profile::AsBuilt => None,
    };
    let events: Vec<Value> = bucket
        .visible(scope)
        .into_iter()
        .filter(|e| e.get("agent_id").and_then(Value::as_str) == Some(agent_id))
        .collect();
    let context = events.last().map(|last| {
        let recent: Vec<&Value> = events.iter().rev().take(5).filter_map(|e| e.get("event_type")).collect();
        json!({
            "agent_id": agent_id,
            "event_count": events.len(),
            "last_updated": last.get("received_at").or_else(|| last.get("timestamp")),
            "recent_event_types": recent,
        })
    });
    wire::json_response(StatusCode::OK, &json!({"success": true, "context": context}))
}

async fn verify_chain(State(bucket): State<Arc<Bucket>>) -> Response {
    (StatusCode::OK, axum::Json(bucket.verify_chain())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let mut out = Vec::new();
        canonical_json(&json!({"b": [1, {"z": null, "a": "x\"y"}], "a": true}), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":true,"b":[1,{"a":"x\"y","z":null}]}"#);
    }

    #[test]
    fn the_chain_links_each_record_to_the_previous_hash() {
        let bucket = Bucket::new(Profile::Spec, true, DEFAULT_LIMITS);
        let (s1, h1, _) = bucket.append(json!({"n": 1}), "bhiv_core", "unknown".into(), Some("e1"));
        let (s2, h2, _) = bucket.append(json!({"n": 2}), "bhiv_core", "unknown".into(), None);
        assert_eq!((s1, s2), (1, 2));
        assert_eq!(h1, link_hash(GENESIS_HASH, br#"{"n":1}"#));
        assert_eq!(h2, link_hash(&h1, br#"{"n":2}"#));
        assert_eq!(bucket.append(json!({"n": 3}), "bhiv_core", "unknown".into(), Some("e1")), (1, h1, true));
        assert_eq!(bucket.verify_chain(), ChainReport { valid: true, length: 2, first_bad_index: None, head: h2 });
        assert!(bucket.tamper(1, |r| r["n"] = json!(20)));
        assert_eq!(bucket.verify_chain().first_bad_index, Some(1));
        assert!(!bucket.tamper(5, |_| {}));
    }
}
