//! The HTTP/1.1 listener: hyper connections over a manual accept loop, with the defences that
//! `axum::serve` lacks.
//!
//! What is guaranteed, and why:
//!
//! - **Header-read timeout**: a connection must deliver a request's head within
//!   `EXECUTOR_HEADER_READ_TIMEOUT`, counted from its start for the first request and from the
//!   first byte for later ones; a slowloris client is closed, however steadily it trickles bytes.
//! - **Idle timeout**: a kept-alive connection with no request for `EXECUTOR_IDLE_TIMEOUT` is
//!   closed. (hyper's own header timer also runs while a connection idles between requests, so it
//!   would make the idle timeout the shorter of the two; a watchdog per connection keeps them apart.)
//! - **Connection cap**: at most `EXECUTOR_MAX_CONNECTIONS` connections are served. At the cap a
//!   new connection makes room by closing the connection that has been waiting longest without a
//!   request in flight (idle, or still trickling a head): an attacker's sockets are the ones that
//!   go, so `/healthz` keeps answering under a flood of idle and slow sockets. Only when every
//!   connection has a request in flight is the new one answered 503 and closed.
//! - **Graceful shutdown**: [`serve`] stops accepting when `shutdown` fires, asks every connection
//!   to finish its in-flight request and close, and returns when all are closed (or after
//!   [`CLOSE_WAIT`], leaving the rest to be cut by the process exit).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ConnectionSettings;

/// How long shutdown waits for connections with a request in flight before giving up on them.
pub const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// The answer to a connection beyond the cap when no connection can be closed to make room.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 133\r\n\r\n\
{\"detail\":\"too many open connections\",\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open connections\",\"field\":null}}";

/// "Not set" for the millisecond marks below.
const UNSET: u64 = u64::MAX;

/// What the watchdog and the cap need to know about one connection.
struct Activity {
    /// When the connection was accepted; the marks below are milliseconds since then.
    opened: Instant,
    /// Requests being answered on this connection.
    in_flight: AtomicUsize,
    /// When the head being read started (`UNSET` while idle or while a request is in flight).
    head_started: AtomicU64,
    /// When the connection last became idle (the last answer was produced, or the connection opened).
    idle_since: AtomicU64,
    /// Wakes the watchdog when a head starts (its deadline moves earlier).
    changed: Notify,
    /// Closes the connection at once (eviction to make room for a new one).
    evict: CancellationToken,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            // The first request's head is awaited from the start: a silent socket is a slow head.
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            changed: Notify::new(),
            evict: CancellationToken::new(),
        }
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Bytes arrived: if nothing is in flight they begin a head, whose clock starts now.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.compare_exchange(UNSET, self.now(), Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// Since when the connection has had nothing in flight, if it has nothing in flight now.
    fn waiting_since(&self) -> Option<u64> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_started.load(Ordering::Acquire);
        Some(if head == UNSET { self.idle_since.load(Ordering::Acquire) } else { head })
    }

    /// When the connection must close if nothing changes, or `None` while a request is in flight.
    fn deadline(&self, settings: &ConnectionSettings) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_started.load(Ordering::Acquire);
        let (since, allowed) = if head == UNSET {
            (self.idle_since.load(Ordering::Acquire), settings.idle_timeout)
        } else {
            (head, settings.header_read_timeout)
        };
        Some(self.opened + Duration::from_millis(since) + allowed)
    }
}

/// Marks a request in flight on its connection for as long as it lives.
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(UNSET, Ordering::Release);
        Self(activity.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.changed.notify_one();
    }
}

/// A socket that reports the bytes it reads to its connection's [`Activity`].
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The open connections, for the cap's choice of which one makes room.
#[derive(Default)]
struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Connections {
    fn add(&self, activity: Arc<Activity>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open.lock().expect("connections lock").insert(id, activity);
        id
    }

    fn remove(&self, id: u64) {
        self.open.lock().expect("connections lock").remove(&id);
    }

    /// Closes the connection waiting longest with nothing in flight; false if there is none.
    fn evict_longest_waiting(&self) -> bool {
        let open = self.open.lock().expect("connections lock");
        let victim = open
            .values()
            .filter(|a| !a.evict.is_cancelled())
            .filter_map(|a| a.waiting_since().map(|since| (a.opened + Duration::from_millis(since), a)))
            .min_by_key(|(since, _)| *since);
        match victim {
            Some((_, activity)) => {
                activity.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then closes connections gracefully.
pub async fn serve(listener: TcpListener, router: Router, settings: ConnectionSettings, shutdown: CancellationToken) {
    let settings = Arc::new(settings);
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let connections = Arc::new(Connections::default());
    let tracker = TaskTracker::new();
    // Refusals write a few bytes and linger briefly; bounded so they cannot hold many descriptors.
    let refusals = Arc::new(Semaphore::new(32));
    let closing = CancellationToken::new();
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning; connections will close.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let made_room = connections.evict_longest_waiting();
                let acquired = if made_room {
                    tokio::time::timeout(Duration::from_millis(500), permits.clone().acquire_owned()).await.ok()
                } else {
                    None
                };
                match acquired.and_then(Result::ok) {
                    Some(permit) => permit,
                    None => {
                        refuse(stream, &refusals);
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let id = connections.add(activity.clone());
        let connections = connections.clone();
        let router = router.clone();
        let settings = settings.clone();
        let closing = closing.clone();
        let connection = async move {
            serve_connection(stream, activity, router, &settings, closing).await;
            connections.remove(id);
            drop(permit);
        };
        if crate::telemetry::active() {
            // Keeps the exporting application's dispatch (see `telemetry`).
            tracker.spawn(tracing::instrument::WithSubscriber::with_current_subscriber(connection));
        } else {
            tracker.spawn(connection);
        }
    }
    drop(listener);
    closing.cancel();
    tracker.close();
    if tokio::time::timeout(CLOSE_WAIT, tracker.wait()).await.is_err() {
        tracing::warn!(open = tracker.len(), "connections still busy after {CLOSE_WAIT:?}; closing them");
    }
}

/// Answers 503 to a connection beyond the cap, then closes it.
fn refuse(mut stream: TcpStream, refusals: &Arc<Semaphore>) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(OVER_CAPACITY).await?;
            stream.shutdown().await?;
            // Read what the client sent, so closing does not reset the answer away.
            let mut sink = [0u8; 4096];
            let mut left = 64 * 1024usize;
            while left > 0 {
                let n = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await?;
                if n == 0 {
                    break;
                }
                left = left.saturating_sub(n);
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// Serves one connection until it closes, times out, is evicted, or shutdown closes it.
async fn serve_connection(
    stream: TcpStream,
    activity: Arc<Activity>,
    router: Router,
    settings: &ConnectionSettings,
    closing: CancellationToken,
) {
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let guard = RequestGuard::begin(&service_activity);
        let mut router = router.clone();
        async move {
            let response = tower_service::Service::call(&mut router, request).await;
            drop(guard);
            response
        }
    });
    let io = TokioIo::new(Watched { stream, activity: activity.clone() });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog below enforces the header-read timeout (hyper's would also cut idle connections).
    builder.header_read_timeout(None);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut shutting_down = false;
    loop {
        let deadline = activity.deadline(settings);
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = activity.changed.notified() => {}
            _ = activity.evict.cancelled() => return,
            _ = closing.cancelled(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = expired => {
                // Re-check: the state may have changed between computing the deadline and now.
                if activity.deadline(settings).is_some_and(|d| d <= Instant::now()) {
                    return;
                }
            }
        }
    }
}
