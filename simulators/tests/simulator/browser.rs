//! The dashboard in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver) with fantoccini. Chromium and chromedriver come from the `chromium` and
//! `chromium-driver` packages (`scripts/test.sh` installs them when it may); `CHROMIUM` and
//! `CHROMEDRIVER` name other binaries. A screenshot is written to
//! `target/dashboard-e2e.png` for a person to look at.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use pillar_sim::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::eventually;

use crate::support::{get, post};

const WAIT: Duration = Duration::from_secs(20);

/// A chromedriver process, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$variable`, else `name` on `PATH`.
fn binary(variable: &str, name: &str) -> PathBuf {
    let found = match std::env::var_os(variable) {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file())),
    };
    found.filter(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "{name} not found: install Debian's chromium and chromium-driver (apt-get install -y chromium \
             chromium-driver; scripts/test.sh does when it may) or set {variable}"
        )
    })
}

/// Starts chromedriver on a free port (it cannot report a port it picked itself, so one is
/// picked here and released just before; a lost race is retried).
async fn start_driver() -> Driver {
    let chromedriver = binary("CHROMEDRIVER", "chromedriver");
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut driver = Driver { child, port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if driver.child.try_wait().ok().flatten().is_some() {
                break;
            }
            let status = crate::support::client().get(format!("http://127.0.0.1:{port}/status")).send().await;
            if let Ok(answer) = status
                && let Ok(body) = answer.json::<Value>().await
                && body["value"]["ready"] == true
            {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = driver.child.kill();
    }
    panic!("chromedriver did not start");
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let chromium = binary("CHROMIUM", "chromium");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.display()), "--window-size=1280,1000",
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a headless chromium session")
}

/// Polls an element's attribute until it has `want`.
async fn wait_attr(client: &Client, css: &str, attribute: &str, want: &str) {
    eventually(WAIT, &format!("{css} [{attribute}] becomes {want:?}"), async || {
        let element = client.find(Locator::Css(css)).await.map_err(|e| format!("not found: {e}"))?;
        let last = element.attr(attribute).await.ok().flatten();
        if last.as_deref() == Some(want) { Ok(()) } else { Err(format!("last: {last:?}")) }
    })
    .await;
}

/// Polls until `css` matches elements whose `attribute` values satisfy `want`; returns them.
async fn wait_all(client: &Client, css: &str, attribute: &str, want: impl Fn(&[String]) -> bool) -> Vec<String> {
    eventually(WAIT, &format!("{css}: as wanted"), async || {
        let mut values = Vec::new();
        for element in client.find_all(Locator::Css(css)).await.unwrap_or_default() {
            if let Ok(Some(value)) = element.attr(attribute).await {
                values.push(value);
            }
        }
        if want(&values) { Ok(values) } else { Err(format!("last {attribute}s: {values:?}")) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium_shows_the_pillars_breaks_bucket_and_shows_a_trace() {
    let stack = Stack::builder().seed(11).executor(true).start().await.expect("stack starts");
    let control = stack.control_url().expect("control");
    let profile = std::env::temp_dir().join(format!("pillar-sim-chromium-{}", uuid::Uuid::new_v4()));
    let driver = start_driver().await;
    let client = browser(&driver, &profile).await;
    client.goto(&format!("{control}/ui")).await.expect("the page loads");

    // Every service shows up.
    for name in ["karma", "bucket", "core", "executor", "providers", "smtp"] {
        wait_attr(&client, &format!("#pillar-{name}"), "data-state", "up").await;
    }

    // "refuse Bucket": Bucket shows down, and the rule is in the control API.
    let button = client.find(Locator::Css("#fault-bucket-refuse")).await.expect("the button");
    assert_eq!(button.text().await.expect("its label"), "refuse Bucket");
    button.click().await.expect("clicked");
    wait_attr(&client, "#pillar-bucket", "data-state", "down").await;
    let (_, faults) = get(format!("{control}/faults")).await;
    let rules = faults["rules"].as_array().cloned().unwrap_or_default();
    assert!(
        rules.iter().any(|r| r["id"] == "ui-bucket-refuse" && r["rule"]["kind"] == "refuse" && r["active"] == true),
        "{faults}"
    );
    wait_attr(&client, "#pillar-karma", "data-state", "up").await;

    // An execution during the outage: its trace, selected in the list, shows its spans, the
    // failed delivery to Bucket among them.
    let trace = "browser-1";
    let body = json!({"trace_id": trace, "decision": "workflow", "data": {"workflow_type": "workflow",
        "payload": {"action_type": "whatsapp", "recipient": "+919876543210", "message": "hi", "user_id": "u-1"}}});
    let (status, answer): (StatusCode, Value) =
        post(format!("{}/api/workflow/execute", stack.executor_url().unwrap()), &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let item = format!(".trace-item[data-trace=\"{trace}\"]");
    wait_all(&client, &item, "data-trace", |found| !found.is_empty()).await;
    client.find(Locator::Css(&item)).await.expect("the trace is listed").click().await.expect("clicked");
    let names = wait_all(&client, "#waterfall .span-row", "data-name", |names| {
        ["workflow", "provider call", "store commit", "deliver event"].iter().all(|n| names.iter().any(|x| x == n))
    })
    .await;
    assert_eq!(names.iter().filter(|n| *n == "workflow").count(), 1, "{names:?}");
    wait_all(&client, "#waterfall .bar.error", "class", |bars| !bars.is_empty()).await;

    let png = client.screenshot().await.expect("a screenshot");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).expect("target/");
    std::fs::write(target.join("dashboard-e2e.png"), &png).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");

    client.close().await.expect("the session ends");
    drop(driver);
    let _ = std::fs::remove_dir_all(&profile);
    stack.stop().await;
}
