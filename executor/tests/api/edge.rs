//! The executor's edge (issue 17): hostile and careless clients, platforms, operators.
//!
//! Raw sockets play the clients that libraries hide (a body sent whole before reading, a head
//! trickled a byte at a time, sockets that never speak); the real binary plays the process a
//! platform starts (start-up errors, redirected logs). Nothing sleeps a fixed time to wait for
//! something: every wait is a poll with a deadline.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use workflow_executor::{Application, Settings};

use crate::helpers::*;

/// Writes `request` whole, then reads the answer.
async fn send_then_read(address: SocketAddr, request: &[u8]) -> TestResponse {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request).await.expect("the executor reads the whole body");
    read_raw_answer(&mut stream).await
}

/// Whether the server closed `stream` (end of file or reset), reading and dropping what it sent.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// `GET {route}` on a fresh connection, with a 2 s bound; the status, or `None` if no answer.
async fn get_status(address: SocketAddr, route: &str) -> Option<u16> {
    let request = format!("GET {route} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    tokio::time::timeout(secs(2.0), async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        String::from_utf8_lossy(&answer).split(' ').nth(1)?.parse().ok()
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test]
async fn a_2_mib_body_sent_whole_before_reading_gets_the_json_413() {
    let app = spawn_app(&[]).await;
    let body = vec![b'x'; 2 << 20];
    let mut request = format!(
        "POST /api/workflow/execute HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        app.address,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);

    let answer = send_then_read(app.address, &request).await;

    assert_eq!(answer.status, 413, "{}", answer.text);
    assert_eq!(answer.error_code(), Some("body_too_large"), "{}", answer.text);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_sent_whole_gets_the_json_413() {
    let app = spawn_app(&[]).await;
    let mut request = format!(
        "POST /api/workflow/execute HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.address
    )
    .into_bytes();
    for _ in 0..32 {
        request.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        request.extend_from_slice(&[b'x'; 64 * 1024]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");

    let answer = send_then_read(app.address, &request).await;

    assert_eq!(answer.status, 413, "{}", answer.text);
    assert_eq!(answer.error_code(), Some("body_too_large"), "{}", answer.text);
}

#[tokio::test]
async fn slowloris_and_idle_sockets_are_closed_after_their_timeouts_while_healthz_answers() {
    let app = spawn_app(&[("EXECUTOR_HEADER_READ_TIMEOUT", "1"), ("EXECUTOR_IDLE_TIMEOUT", "2")]).await;
    // Slowloris: a head trickled a byte every 100 ms, never finished.
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(TcpStream::connect(app.address).await.expect("connect"));
    }
    let trickle = tokio::spawn(async move {
        let opened = Instant::now();
        let head =
            b"GET /healthz HTTP/1.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for byte in head.iter().cycle() {
            let mut open = 0;
            for stream in slow.iter_mut() {
                if stream.write_all(&[*byte]).await.is_ok() {
                    open += 1;
                }
            }
            if open == 0 {
                return opened.elapsed();
            }
            assert!(opened.elapsed() < secs(15.0), "{open} slowloris sockets still open after 15 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        unreachable!("the cycle never ends")
    });
    // Silent: connected, never a byte.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(app.address).await.expect("connect"));
    }
    // Kept alive: one request answered, then nothing.
    let mut kept = TcpStream::connect(app.address).await.expect("connect");
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", app.address).as_bytes()).await.expect("write");
    let mut first = [0u8; 16];
    kept.read_exact(&mut first).await.expect("an answer");
    let answered = Instant::now();
    assert!(first.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first));

    assert_eq!(app.healthz().await.status, 200, "/healthz answers during the attack");
    eventually(secs(10.0), "every silent socket is closed", async || {
        let mut all = true;
        for stream in silent.iter_mut() {
            all &= closed_by_server(stream).await;
        }
        all.then_some(())
    })
    .await;
    eventually(secs(10.0), "the idle kept-alive socket is closed", async || {
        closed_by_server(&mut kept).await.then_some(())
    })
    .await;
    assert!(answered.elapsed() >= secs(1.9), "the idle timeout (2 s) applies, not the header timeout (1 s)");
    let lasted = tokio::time::timeout(secs(20.0), trickle).await.expect("slowloris ends").expect("no panic");
    assert!(lasted < secs(10.0), "slowloris sockets were closed after {lasted:?}");
    assert_eq!(app.healthz().await.status, 200, "/healthz answers after the attack");
}

#[tokio::test]
async fn healthz_answers_under_300_slowloris_and_1000_idle_sockets() {
    let app = spawn_app(&[]).await;
    let mut attackers = Vec::new();
    for i in 0..1300 {
        let mut stream = TcpStream::connect(app.address).await.expect("connect");
        if i < 300 {
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").await;
        }
        attackers.push(stream);
    }
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(get_status(app.address, "/healthz").await, Some(200), "/healthz answers under the attack");
        assert!(started.elapsed() < secs(2.0));
    }
    assert_eq!(app.healthz().await.status, 200);
}

#[tokio::test]
async fn at_the_connection_cap_the_longest_idle_connection_makes_room() {
    let app = spawn_app(&[("EXECUTOR_MAX_CONNECTIONS", "8")]).await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(app.address).await.expect("connect"));
        // Accepted in order, so the first is the longest idle.
        tokio::task::yield_now().await;
    }
    eventually(secs(5.0), "a ninth connection is served", async || {
        (get_status(app.address, "/healthz").await == Some(200)).then_some(())
    })
    .await;
    let first = &mut idle[0];
    eventually(secs(5.0), "the longest idle connection was closed", async || {
        closed_by_server(first).await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn at_the_connection_cap_with_every_connection_busy_a_new_one_gets_503() {
    let app = spawn_app(&[("EXECUTOR_MAX_CONNECTIONS", "4")]).await;
    app.fakes.slow_whatsapp(secs(3.0));
    let mut busy = Vec::new();
    for _ in 0..4 {
        let http = reqwest::Client::new();
        let url = app.url("/api/workflow/execute");
        let trace = trace_id();
        busy.push(tokio::spawn(async move {
            http.post(url).json(&whatsapp_request(&trace)).send().await.map(|r| r.status().as_u16())
        }));
    }
    eventually(secs(5.0), "four requests are in flight", async || (app.fakes.whatsapp_arrivals() == 4).then_some(()))
        .await;

    let answer =
        send_then_read(app.address, format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", app.address).as_bytes()).await;

    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!(answer.error_code(), Some("too_many_connections"), "{}", answer.text);
    for request in busy {
        assert_eq!(request.await.expect("no panic").expect("an answer"), 200, "busy requests finish");
    }
}

/// Settings for an executor without neighbours (both sinks disabled).
fn lone_settings(data_dir: &TempDir, extra: &[(&str, &str)]) -> Settings {
    let mut vars: std::collections::HashMap<String, String> = [
        ("EXECUTOR_BIND", "127.0.0.1:0".to_owned()),
        ("EXECUTOR_DATA_DIR", data_dir.path().display().to_string()),
        ("EXECUTOR_BUCKET_ENABLED", "false".to_owned()),
        ("EXECUTOR_KARMA_ENABLED", "false".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Settings::from_lookup(|name| vars.get(name).cloned()).expect("valid settings")
}

#[tokio::test]
async fn readyz_is_200_while_serving_and_503_during_the_drain_while_the_listener_stays_open() {
    let data_dir = TempDir::new().expect("a temp dir");
    let app = Application::build(lone_settings(&data_dir, &[("EXECUTOR_DRAIN_DELAY", "2")])).await.expect("starts");
    let address = app.local_addr();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let http = client();
    let ready = http.get(format!("http://{address}/readyz")).send().await.expect("an answer");
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.expect("JSON"), json!({"status": "ready"}));

    let stopping = Instant::now();
    shutdown.cancel();
    let draining = eventually(secs(1.5), "/readyz fails", async || {
        let answer = http.get(format!("http://{address}/readyz")).send().await.ok()?;
        (answer.status() == 503).then_some(answer)
    })
    .await;
    let body: Value = draining.json().await.expect("JSON");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["reason"], "shutting_down");
    assert_eq!(get_status(address, "/healthz").await, Some(200), "the listener still serves during the drain");

    tokio::time::timeout(secs(15.0), server).await.expect("stops").expect("no panic").expect("a clean stop");
    assert!(stopping.elapsed() >= secs(1.9), "the listener stayed open for the drain delay");
    assert_eq!(get_status(address, "/readyz").await, None, "the listener is closed after the drain");
}

#[tokio::test]
async fn process_metrics_are_exported() {
    let app = spawn_app(&[]).await;
    let metrics = app.metrics().await;
    assert!(metrics.get("process_resident_memory_bytes", &[]) > 0.0, "{}", metrics.0);
    assert!(metrics.get("process_open_fds", &[]) > 0.0, "{}", metrics.0);
    assert!(metrics.0.contains("process_cpu_seconds_total"), "{}", metrics.0);
    assert!(metrics.0.contains("process_start_time_seconds"), "{}", metrics.0);
}

#[tokio::test]
async fn audit_events_carry_no_email_subject() {
    let app = spawn_app(&[]).await;
    let trace = trace_id();
    let request = workflow(
        &trace,
        json!({"action_type": "email", "recipient": "alice@example.com", "subject": "Your biopsy results",
               "body": "Please call us."}),
    );
    app.execute(&request).await.assert_success(&trace);

    let event =
        eventually(secs(10.0), "bucket receives the audit event", async || app.bucket().event_for(&trace)).await;

    let result = &event.body["event_data"]["execution_result"];
    assert!(result.get("subject").is_none(), "{result}");
    assert!(!event.body.to_string().contains("biopsy"), "{}", event.body);
    assert_eq!(result["status"], "SENT", "{result}");
}

#[tokio::test]
async fn the_first_delivery_follows_a_sinks_recovery_within_2_seconds_after_a_long_outage() {
    let fakes = Fakes::with_bucket_refused().await;
    // Settings under which the old breaker waited 16 s between probes after a long outage.
    let app = spawn_app_with(
        fakes,
        &[("EXECUTOR_BREAKER_OPEN", "1"), ("EXECUTOR_DELIVERY_BACKOFF_MAX", "30"), ("EXECUTOR_BREAKER_THRESHOLD", "2")],
    )
    .await;
    let trace = trace_id();
    app.execute(&task_request(&trace)).await.assert_success(&trace);
    // A long outage: the circuit has opened and its probes have failed several times.
    eventually(secs(20.0), "several probes have failed", async || {
        let status = app.status().await.body;
        (status["pillars"]["bucket"]["failed_attempts"].as_u64() >= Some(6)).then_some(())
    })
    .await;

    app.bucket().come_up();
    let recovered = Instant::now();
    eventually(secs(10.0), "bucket receives the event", async || app.bucket().event_for(&trace)).await;

    let after = recovered.elapsed();
    assert!(after < secs(2.5), "first delivery {after:?} after the sink recovered");
}

#[tokio::test]
async fn a_bad_dead_letter_query_is_located_in_the_query() {
    let app = spawn_app(&[]).await;
    let response = app.dead_letters("sink=foo").await;
    response.assert_rejected(422, "invalid_query");
    assert_eq!(response.body["error"]["field"], "query.sink", "{}", response.text);
    assert_eq!(response.body["detail"][0]["loc"], json!(["query", "sink"]), "{}", response.text);
    let response = app.dead_letters("limit=2").await;
    response.assert_rejected(422, "invalid_query");
    assert_eq!(response.body["detail"][0]["loc"][0], "query", "{}", response.text);
}

#[tokio::test]
async fn an_address_in_use_is_a_start_up_error_naming_executor_bind_and_the_address() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = held.local_addr().expect("bound").to_string();
    let data_dir = TempDir::new().expect("a temp dir");

    let refused = ExecutorProcess::try_start(EXECUTOR, data_dir.path(), &[("EXECUTOR_BIND", address.clone())]).await;

    let Err(NotServing { status: Some(status), logs }) = refused else { panic!("the executor must not start") };
    assert!(!status.success(), "{status}");
    let logs = logs.join("\n");
    assert!(logs.contains("EXECUTOR_BIND") && logs.contains(&address), "{logs}");
}

#[tokio::test]
async fn configuration_errors_exit_2_naming_their_variable() {
    let cases = [
        ("RUST_LOG", "info,=["),
        ("EXECUTOR_CALLER_TOKENS", "core:same-token,ops:same-token"),
        ("EXECUTOR_CALLER_TOKENS", "core:a b"),
        ("EXECUTOR_CALLER_TOKENS", "core:a:b"),
        ("EXECUTOR_MAX_BODY_BYTES", "17000000"),
        ("EXECUTOR_MAX_CONNECTIONS", "0"),
        ("EXECUTOR_HEADER_READ_TIMEOUT", "soon"),
        ("EXECUTOR_KARMA_ENCODING", "legacy"),
        ("EXECUTOR_KARMA_ROLE", "user"),
        ("EXECUTOR_KARMA_ACTIONS", "success=workflow_success"),
    ];
    for (variable, value) in cases {
        let data_dir = TempDir::new().expect("a temp dir");
        let refused = ExecutorProcess::try_start(EXECUTOR, data_dir.path(), &[(variable, value.to_owned())]).await;
        let Err(NotServing { status: Some(status), logs }) = refused else {
            panic!("{variable}={value} must not start")
        };
        assert_eq!(status.code(), Some(2), "{variable}={value}: {logs:?}");
        let logs = logs.join("\n");
        assert!(logs.contains(variable), "{variable}={value}: {logs}");
        assert!(!logs.contains("same-token"), "no token is printed: {logs}");
    }
}

#[tokio::test]
async fn logs_redirected_to_a_pipe_carry_no_colour_codes() {
    let data_dir = TempDir::new().expect("a temp dir");
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_workflow-executor"))
            .env_clear()
            .env("EXECUTOR_BIND", "127.0.0.1:0")
            .env("EXECUTOR_DATA_DIR", data_dir.path())
            .env("EXECUTOR_BUCKET_ENABLED", "false")
            .env("EXECUTOR_KARMA_ENABLED", "false")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the executor starts");
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                text.push_str(&line);
                text.push('\n');
                if line.contains("workflow executor listening") {
                    break;
                }
            }
            text
        });
        let started = Instant::now();
        while !reader.is_finished() && started.elapsed() < secs(20.0) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let mut stderr = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr);
        (reader.join().expect("no panic"), stderr)
    })
    .await
    .expect("no panic");
    let (stdout, stderr) = output;
    assert!(stdout.contains("workflow executor listening"), "{stdout}{stderr}");
    assert!(!stdout.contains("\x1b[") && !stderr.contains("\x1b["), "{stdout:?}{stderr:?}");
}
