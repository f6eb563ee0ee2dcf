//! The `pillar-sim` binary against a stack's control API.

use std::process::Output;

use pillar_sim::Pillar;

use crate::support::stack;

/// Runs the binary off the runtime's thread, so the in-process stack keeps answering it.
pub(crate) async fn pillar_sim(control: &str, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pillar-sim"));
    command.args(args).env("PILLAR_SIM_CONTROL", control).env("RUST_LOG", "off");
    tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn fault_commands_set_list_and_clear_rules() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let out = pillar_sim(&control, &["fault", "bucket", "refuse", "--for", "30s", "--id", "outage"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("set outage"));
    assert_eq!(stack.faults().list()[0].rule.pillar, Pillar::Bucket);
    let out = pillar_sim(&control, &["fault", "list"]).await;
    assert!(text(&out.stdout).contains("outage"), "{}", text(&out.stdout));
    let out = pillar_sim(&control, &["fault", "clear", "outage"]).await;
    assert!(out.status.success());
    assert!(stack.faults().list().is_empty());
}

#[tokio::test]
async fn refused_input_and_an_unreachable_control_api_give_clear_errors() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let out = pillar_sim(&control, &["fault", "karma", "http_error", "--status", "200"]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("status") && stderr.contains("--status"), "{stderr}");

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let out = pillar_sim(&closed, &["fault", "list"]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot reach the pillar-sim control API") && stderr.contains("PILLAR_SIM_CONTROL"),
        "{stderr}"
    );
}

#[tokio::test]
async fn scenario_run_validates_the_file_and_starts_it() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let out = pillar_sim(&control, &["scenario", "run", dir.join("bucket-flaky.json").to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("started bucket-flaky:"), "{}", text(&out.stdout));
    assert_eq!(stack.scenarios()[0].name, "bucket-flaky");

    let bad = std::env::temp_dir().join(format!("pillar-sim-bad-{}.json", std::process::id()));
    std::fs::write(&bad, r#"{"steps": [{"at": "0s", "fault": {"pillar": "bucket", "kind": "teleport"}}]}"#).unwrap();
    let out = pillar_sim(&control, &["scenario", "run", bad.to_str().unwrap()]).await;
    std::fs::remove_file(&bad).unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("steps[0].fault.kind"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn journal_prints_what_the_fakes_received() {
    let stack = stack().await;
    crate::support::client()
        .get(format!("{}/health", stack.karma_url()))
        .header("X-Trace-Id", "cli-trace")
        .send()
        .await
        .unwrap();
    let out = pillar_sim(&stack.control_url().unwrap(), &["journal", "--trace", "cli-trace"]).await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("karma") && stdout.contains("/health") && stdout.contains("trace=cli-trace"), "{stdout}");
    assert!(stdout.starts_with("   SEQ PILLAR"), "a header first: {stdout}");
    stack.reset();
    let out = pillar_sim(&stack.control_url().unwrap(), &["journal"]).await;
    assert_eq!(text(&out.stdout).trim(), "the journal has no entries", "{}", text(&out.stderr));
}

#[tokio::test]
async fn a_taken_rule_id_is_refused_unless_replace_is_asked() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let set = ["fault", "bucket", "http_error", "--status", "503", "--id", "x"];
    assert!(pillar_sim(&control, &set).await.status.success());
    let out = pillar_sim(&control, &["fault", "bucket", "http_error", "--status", "502", "--id", "x"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--replace"), "{}", text(&out.stderr));
    let out =
        pillar_sim(&control, &["fault", "bucket", "http_error", "--status", "502", "--id", "x", "--replace"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rules = stack.faults().list();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].rule.fault, pillar_sim::Fault::http_error(502));
}

#[tokio::test]
async fn scenario_run_wait_waits_for_the_end_with_a_line_per_step() {
    let stack = stack().await;
    let control = stack.control_url().unwrap();
    let file = std::env::temp_dir().join(format!("pillar-sim-wait-{}.json", std::process::id()));
    std::fs::write(
        &file,
        r#"{"name": "short", "steps": [
            {"at": "0s", "fault": {"pillar": "bucket", "kind": "refuse", "for": "600ms"}},
            {"at": "100ms", "fault": {"pillar": "karma", "kind": "http_error", "status": 503, "for": "300ms"}}]}"#,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = pillar_sim(&control, &["scenario", "run", file.to_str().unwrap(), "--wait"]).await;
    std::fs::remove_file(&file).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(started.elapsed() >= std::time::Duration::from_millis(600), "returned before the refuse window ended");
    assert!(stdout.contains("short: step 1/2 at 0s: set short-0 (bucket refuse for 600ms)"), "{stdout}");
    assert!(stdout.contains("short: step 2/2 at 100ms: set short-1 (karma http_error for 300ms)"), "{stdout}");
    assert!(stdout.contains("short: ended after"), "{stdout}");
    assert!(stack.faults().list().is_empty(), "every rule is over when --wait returns");
}
