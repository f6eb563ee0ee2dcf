//! Listening, connection by connection, so that faults below HTTP are real.
//!
//! `axum::serve` hides the socket, so each fake runs its own accept loop:
//!
//! - **refuse**: the supervisor follows the fault set; while a `refuse` rule is live it replaces
//!   the listening socket with one that is bound but not listening (the kernel then answers
//!   connection attempts with RST, i.e. "connection refused", and no other process can take the
//!   port meanwhile) and kills every open connection; when the rule ends or is cleared, that same
//!   socket starts listening again.
//! - **reset**: each connection's socket sits in a [`FaultIo`] and its task races a per-connection
//!   kill token. The middleware marks the connection for reset and cancels the token; the task
//!   drops the connection, and `FaultIo`'s `Drop` sets `SO_LINGER` to zero first, so the kernel
//!   sends RST instead of FIN.
//! - **drop_after**: the middleware gives the connection a budget of bytes; [`FaultIo`] writes
//!   no more than that and then fails the write, so hyper drops the connection and the client
//!   reads exactly that many bytes of the answer, then EOF.
//! - **blackhole** needs nothing here: the middleware never completes. hyper notices when the
//!   client gives up (EOF mid-message) and drops the request.
//!
//! Shutdown is a token passed in: the listener closes, HTTP connections get a bounded graceful
//! shutdown, and the supervisor returns once every connection task has ended.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::faults::fault::ConnectionControl;
use crate::faults::injector::Refusal;
use crate::pillar::Pillar;
use crate::serving::sim::Sim;

/// How long open HTTP connections get to finish when the stack stops.
const GRACE: Duration = Duration::from_secs(2);

/// One accepted connection's controls, reachable from request handlers as a request extension.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    kill: CancellationToken,
    reset: Arc<AtomicBool>,
    budget: Arc<AtomicU64>,
}

impl Connection {
    /// Ends the connection with a TCP reset.
    pub(crate) fn reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
        self.kill.cancel();
    }
}

impl ConnectionControl for Connection {
    /// Lets `bytes` more bytes out, then ends the connection (a close, not a reset, so the
    /// client reads every byte that was let out).
    fn drop_after(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }
}

/// No write budget: the connection is not being dropped.
const UNLIMITED: u64 = u64::MAX;

/// A TCP stream that resets (instead of closing) when dropped after [`Connection::reset`].
#[derive(Debug)]
pub(crate) struct FaultIo {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
    budget: Arc<AtomicU64>,
}

impl Drop for FaultIo {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // Zero linger turns the close into an abortive one: the kernel sends RST.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for FaultIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let budget = self.budget.load(Ordering::SeqCst);
        if budget == UNLIMITED {
            return Pin::new(&mut self.stream).poll_write(cx, buf);
        }
        if budget == 0 {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "dropped by pillar-sim")));
        }
        let allowed = buf.len().min(usize::try_from(budget).unwrap_or(usize::MAX));
        let written = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &buf[..allowed]))?;
        self.budget.fetch_sub(written as u64, Ordering::SeqCst);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves one connection until it ends; it is dropped early when its kill token fires.
pub(crate) trait ConnectionHandler: Send + Sync + 'static {
    /// Serves `io` (the stream) with `conn` (its controls) until it ends or `shutdown` fires.
    fn serve(
        &self,
        io: FaultIo,
        conn: Connection,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// Serves an axum router over HTTP/1.1, handing each request its [`Connection`].
#[derive(Clone)]
pub(crate) struct HttpHandler(pub Router);

impl ConnectionHandler for HttpHandler {
    fn serve(
        &self,
        io: FaultIo,
        conn: Connection,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let router = self.0.clone();
        async move {
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(conn.clone());
                router.clone().oneshot(request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GRACE, connection).await;
                }
            }
        }
    }
}

/// A socket bound to `addr` without listening: connection attempts are refused, and the port
/// stays ours. `None` if the address cannot be taken back at once (the caller binds later).
fn hold(addr: std::net::SocketAddr) -> Option<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.ok()?;
    socket.set_reuseaddr(true).ok()?;
    socket.bind(addr).ok()?;
    Some(socket)
}

/// Accepts connections on `listener` for `pillar` until `shutdown`, following refuse rules.
pub(crate) async fn supervise<H: ConnectionHandler>(
    pillar: Pillar,
    listener: TcpListener,
    sim: Arc<Sim>,
    handler: H,
    shutdown: CancellationToken,
) {
    let addr = listener.local_addr().expect("a bound listener has an address");
    let handler = Arc::new(handler);
    let tracker = TaskTracker::new();
    let mut listener = Some(listener);
    // While refusing: the port, bound but not listening.
    let mut held: Option<TcpSocket> = None;
    let mut generation = CancellationToken::new();
    let mut changes = sim.faults.subscribe();
    loop {
        changes.borrow_and_update();
        match sim.faults.refusal(pillar) {
            Refusal::Until(until) => {
                if listener.take().is_some() {
                    held = hold(addr);
                    generation.cancel();
                    generation = CancellationToken::new();
                    sim.metrics.fault(pillar.as_str(), "*", "refuse");
                    tracing::info!(%pillar, %addr, "refusing connections");
                }
                let expiry = async {
                    match until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = changes.changed() => {}
                    () = expiry => {}
                }
            }
            Refusal::No => {
                let Some(open) = listener.as_ref() else {
                    let reopened = match held.take() {
                        Some(socket) => socket.listen(1024),
                        None => TcpListener::bind(addr).await,
                    };
                    match reopened {
                        Ok(l) => {
                            tracing::info!(%pillar, %addr, "listening again");
                            listener = Some(l);
                        }
                        Err(error) => {
                            tracing::warn!(%pillar, %addr, %error, "cannot listen again yet; retrying");
                            tokio::select! {
                                () = shutdown.cancelled() => break,
                                () = tokio::time::sleep(Duration::from_millis(25)) => {}
                            }
                        }
                    }
                    continue;
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = changes.changed() => {}
                    accepted = open.accept() => match accepted {
                        Ok((stream, _peer)) => {
                            let _ = stream.set_nodelay(true);
                            let conn = Connection {
                                kill: generation.child_token(),
                                reset: Arc::new(AtomicBool::new(false)),
                                budget: Arc::new(AtomicU64::new(UNLIMITED)),
                            };
                            let io = FaultIo { stream, reset: conn.reset.clone(), budget: conn.budget.clone() };
                            let kill = conn.kill.clone();
                            let served = handler.serve(io, conn, shutdown.clone());
                            tracker.spawn(async move {
                                tokio::select! {
                                    () = served => {}
                                    () = kill.cancelled() => {}
                                }
                            });
                        }
                        Err(error) => {
                            // Out of descriptors and the like: back off instead of spinning.
                            tracing::warn!(%pillar, %error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    },
                }
            }
        }
    }
    drop(listener);
    drop(held);
    tracker.close();
    tracker.wait().await;
}
