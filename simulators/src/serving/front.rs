//! The round-robin front that `up --replicas N` puts on the executor's port: each request goes
//! to the next running replica; a replica that refuses the connection (stopped, or not yet
//! listening) is skipped and the next one tried, so callers see a failover, not an error. A
//! replica that fails after the request reached it is not retried (the request may have acted):
//! the caller gets 502 and, like any executor client, retries with the same idempotency key.
//!
//! Every answer carries `x-executor-replica: <n>`, the replica that served it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::serving::wire;

/// The largest request body the front buffers (the executor's own limit is lower).
const MAX_BODY: usize = 16 << 20;

/// The replicas behind the front: their addresses while they run, and what each served.
pub(crate) struct Front {
    live: RwLock<Vec<Option<SocketAddr>>>,
    served: Vec<AtomicU64>,
    next: AtomicUsize,
    client: reqwest::Client,
}

impl Front {
    /// A front over `replicas` replicas, none running yet.
    pub(crate) fn new(replicas: usize) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a TLS-free HTTP client builds");
        Arc::new(Self {
            live: RwLock::new(vec![None; replicas]),
            served: (0..replicas).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicUsize::new(0),
            client,
        })
    }

    /// Records where replica `index` listens (`None`: it is stopped and gets no new requests).
    pub(crate) fn set(&self, index: usize, addr: Option<SocketAddr>) {
        self.live.write().unwrap_or_else(std::sync::PoisonError::into_inner)[index] = addr;
    }

    /// How many requests replica `index` has answered through the front.
    pub(crate) fn served(&self, index: usize) -> u64 {
        self.served[index].load(Ordering::Relaxed)
    }

    /// The running replicas, starting with the next one in turn.
    fn rotation(&self) -> Vec<(usize, SocketAddr)> {
        let live = self.live.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut running: Vec<(usize, SocketAddr)> =
            live.iter().enumerate().filter_map(|(i, addr)| addr.map(|a| (i, a))).collect();
        if !running.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % running.len();
            running.rotate_left(start);
        }
        running
    }

    /// The front's routes: everything is forwarded.
    pub(crate) fn router(self: Arc<Self>) -> Router {
        Router::new().fallback(forward).with_state(self)
    }
}

/// Hop-by-hop headers, which a proxy does not forward (RFC 9110 §7.6.1), and the host.
fn forwardable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "te" | "trailer" | "upgrade" | "host"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from.iter().filter(|(name, _)| forwardable(name)) {
        to.append(name.clone(), value.clone());
    }
}

fn unavailable(status: StatusCode, detail: String) -> Response {
    wire::json_response(status, &json!({"detail": detail, "error": {"code": "no_replica", "message": detail}}))
}

async fn forward(State(front): State<Arc<Front>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        let detail = format!("the request body is over the front's {MAX_BODY} bytes, or it was cut off");
        return wire::json_response(StatusCode::PAYLOAD_TOO_LARGE, &json!({"detail": detail}));
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    let rotation = front.rotation();
    if rotation.is_empty() {
        return unavailable(StatusCode::SERVICE_UNAVAILABLE, "no executor replica is running".into());
    }
    for (index, addr) in rotation {
        let sent = front
            .client
            .request(parts.method.clone(), format!("http://{addr}{path}"))
            .headers(headers.clone())
            .body(body.clone())
            .send()
            .await;
        let answer = match sent {
            Ok(answer) => answer,
            // Never reached the replica: the next one takes the request.
            Err(error) if error.is_connect() => continue,
            Err(error) => {
                return unavailable(StatusCode::BAD_GATEWAY, format!("replica {index} failed mid-request: {error}"));
            }
        };
        let status = answer.status();
        let mut response_headers = HeaderMap::new();
        copy_headers(answer.headers(), &mut response_headers);
        let Ok(bytes) = answer.bytes().await else {
            return unavailable(StatusCode::BAD_GATEWAY, format!("replica {index} failed while answering"));
        };
        front.served[index].fetch_add(1, Ordering::Relaxed);
        response_headers.remove(header::CONTENT_LENGTH);
        response_headers.insert("x-executor-replica", HeaderValue::from(index));
        return (status, response_headers, Body::from(bytes)).into_response();
    }
    unavailable(StatusCode::SERVICE_UNAVAILABLE, "every executor replica refused the connection".into())
}
