//! Stand-ins the simulator cannot play, served by the test itself on 127.0.0.1:0.
//!
//! [`RenamingProxy`] sits between the executor and Bucket and renames the executor's
//! `requester_id`, so Bucket sees a requester outside its allow-list: the way to make the
//! as-built Bucket answer the executor "200 with `success: false`" (the simulator has no switch
//! for Bucket's allow-list). It speaks just enough HTTP/1.1 for one request per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// The requester id the proxy writes in place of the executor's.
pub const RENAMED_REQUESTER: &str = "workflow_executor_unlisted";

/// A proxy to Bucket that renames the requester; stops when dropped.
#[derive(Debug)]
pub struct RenamingProxy {
    addr: SocketAddr,
    upstream: Arc<OnceCell<String>>,
    stop: CancellationToken,
}

impl RenamingProxy {
    /// Binds 127.0.0.1:0 and serves until dropped; the upstream is set later by [`Self::point_at`].
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("bound");
        let upstream: Arc<OnceCell<String>> = Arc::new(OnceCell::new());
        let stop = CancellationToken::new();
        let (up, token) = (upstream.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (up, http) = (up.clone(), http.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), serve(stream, up, http)).await;
                });
            }
        });
        Self { addr, upstream, stop }
    }

    /// The base URL to give the executor as `BUCKET_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the real Bucket's base URL.
    pub fn point_at(&self, bucket_url: String) {
        let _ = self.upstream.set(bucket_url);
    }
}

impl Drop for RenamingProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(mut stream: TcpStream, upstream: Arc<OnceCell<String>>, http: reqwest::Client) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, content_length) = loop {
        let Ok(n) = stream.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buffer.len() < head_end + content_length {
        let Ok(n) = stream.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut body: serde_json::Value =
        serde_json::from_slice(&buffer[head_end..head_end + content_length]).unwrap_or_default();
    if body.get("requester_id").is_some() {
        body["requester_id"] = serde_json::json!(RENAMED_REQUESTER);
    }
    let Some(base) = upstream.get() else { return };
    let mut request = http.post(format!("{base}{path}")).json(&body);
    for name in ["x-trace-id", "traceparent", "idempotency-key"] {
        if let Some(value) = header(name) {
            request = request.header(name, value);
        }
    }
    let (status, answer) = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
        }
        Err(_) => (502, b"{\"detail\": \"proxy could not reach Bucket\"}".to_vec()),
    };
    let reply = format!(
        "HTTP/1.1 {status} Proxied\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
}

/// A service that accepts connections and never answers, noting how long each caller waited
/// before hanging up (the simulator's blackhole journals a request when it arrives, not when
/// the caller gives up). Stops when dropped.
#[derive(Debug)]
pub struct HangingService {
    addr: SocketAddr,
    waits: Arc<std::sync::Mutex<Vec<Duration>>>,
    stop: CancellationToken,
}

impl HangingService {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the hanging service");
        let addr = listener.local_addr().expect("bound");
        let waits = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (noted, token) = (waits.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut stream, _)) = accepted else { continue };
                let (noted, token) = (noted.clone(), token.clone());
                tokio::spawn(async move {
                    let since = tokio::time::Instant::now();
                    let mut sink = [0u8; 4096];
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => return,
                            read = stream.read(&mut sink) => match read {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            },
                        }
                    }
                    noted.lock().expect("waits lock").push(since.elapsed());
                });
            }
        });
        Self { addr, waits, stop }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How long each caller that hung up had waited.
    pub fn waits(&self) -> Vec<Duration> {
        self.waits.lock().expect("waits lock").clone()
    }
}

impl Drop for HangingService {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
