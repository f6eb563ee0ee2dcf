//! The HTTP API: one router, merged from the workflow route and the operational routes.
//!
//! - `POST /api/workflow/execute` ([`execute`]): load shedding, caller tokens, media type and size
//!   checks, then the schema layer ([`request`]) and the engine.
//! - `GET /healthz` (liveness), `GET /readyz` (readiness), `GET /metrics`, `GET /api/integration/status`,
//!   `GET /api/integration/dead-letters` ([`ops`]).
//!
//! A middleware counts every request and its latency by the matched route template (never the
//! raw URI), so metric cardinality stays bounded.

pub mod error;
pub mod execute;
pub mod ops;
pub mod request;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::execution::Engine;
use crate::metrics::Metrics;
use crate::outbox::delivery::SinkState;
use crate::store::SharedStore;

pub use crate::contract::REPLAY_HEADER;

/// Everything the handlers share.
pub struct AppState {
    /// The configuration.
    pub settings: Arc<Settings>,
    /// The execution engine.
    pub engine: Engine,
    /// Metrics registry.
    pub metrics: Metrics,
    /// The durable store (for status reads).
    pub store: SharedStore,
    /// Bucket and Karma delivery state.
    pub sinks: [Arc<SinkState>; 2],
    /// Permits for concurrent execute requests (shared, so an execution's task can own one).
    pub load: Arc<Semaphore>,
    /// Cancelled when shutdown starts: `/readyz` fails from then on.
    pub draining: CancellationToken,
    /// Whether spans are exported (request spans then continue the caller's trace).
    pub exporting: bool,
}

/// The executor's router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/workflow/execute", post(execute::execute))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api/integration/status", get(ops::integration_status))
        .route("/api/integration/dead-letters", get(ops::dead_letters))
        .fallback(|| async { error::ApiError::not_found() })
        .method_not_allowed_fallback(|| async { error::ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(request).await.into_response();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state.metrics.request_seconds.with_label_values(&[route]).observe(started.elapsed().as_secs_f64());
    state.metrics.http_requests.with_label_values(&[route, response.status().as_str()]).inc();
    response
}
