//! Helpers shared by the tests: a stack per test, JSON requests, raw sockets.

use std::net::SocketAddr;
use std::time::Duration;

use pillar_sim::Stack;
use reqwest::StatusCode;
use serde_json::Value;
use test_support::TestResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A fresh stack with the defaults (no executor).
pub async fn stack() -> Stack {
    Stack::builder().start().await.expect("stack starts")
}

/// A client that never waits long.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client")
}

/// POSTs JSON; returns the status and the body (see [`TestResponse::body`]).
pub async fn post(url: impl AsRef<str>, body: &Value) -> (StatusCode, Value) {
    status_and_body(client().post(url.as_ref()).json(body)).await
}

/// GETs; returns the status and the body (see [`TestResponse::body`]).
pub async fn get(url: impl AsRef<str>) -> (StatusCode, Value) {
    status_and_body(client().get(url.as_ref())).await
}

async fn status_and_body(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let answer = TestResponse::send(request).await;
    (StatusCode::from_u16(answer.status).expect("an HTTP status"), answer.body)
}

/// Sends raw bytes and reads until the server closes (or the read fails).
pub async fn raw(addr: SocketAddr, request: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(answer)
}
