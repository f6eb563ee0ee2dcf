//! The `pillar-sim` command line.
//!
//! - `pillar-sim up [--profile spec|as-built|<pillar>=<profile>]... [--seed N] [--no-executor]
//!   [--data-dir DIR] [--ip ADDR] [--journal-entries N] [--journal-mib M] [--store-entries N]
//!   [--store-mib M] [--karma-users N]` runs the stack on the documented ports (Karma 8000, Bucket 8001,
//!   Core 8002, executor 8003, providers 8010, SMTP 2525, control 8090), prints what runs where,
//!   and stops cleanly on Ctrl-C or SIGTERM. Bucket reads `WORKFLOW_EVENTS_ENABLED`, Karma
//!   `WORKFLOW_BEHAVIORAL_TRACKING`, Core `ENABLE_WORKFLOW_EXECUTION`, `WORKFLOW_EXECUTOR_URL`
//!   and `WORKFLOW_TIMEOUT`; the executor gets the fakes' URLs plus any `EXECUTOR_*`,
//!   `WORKFLOW_TIMEOUT`, `*_TIMEOUT`, `WHATSAPP_API_VERSION`, `AI_MODEL`, `SMTP_USERNAME`,
//!   `SMTP_PASSWORD` and `OTEL_*` from the environment (its spans go to the control port's OTLP
//!   receiver unless `OTEL_EXPORTER_OTLP_ENDPOINT` says otherwise; empty turns export off).
//! - `pillar-sim fault <pillar> <kind> [--status N] [--probability P] [--retry-after S]
//!   [--ms N | --dist D --min-ms/--max-ms/--mean-ms/--stddev-ms/--p50-ms/--p99-ms]
//!   [--bytes-per-sec N] [--bytes N] [--body JSON] [--for 30s] [--count N] [--route /path]
//!   [--method POST] [--id ID]`
//!   sets a rule; `pillar-sim fault list`, `pillar-sim fault clear [ID]`.
//! - `pillar-sim scenario run FILE [--wait]`, `scenario list`, `scenario cancel ID`.
//! - `pillar-sim journal [--pillar P] [--trace ID] [--limit N] [--json]`.
//! - `pillar-sim trace <TRACE_ID> [--json]`: the spans the executor exported for a trace, as a
//!   waterfall in the terminal (the trace id as the execution has it, or its W3C form).
//! - `pillar-sim reset`, `pillar-sim status`.
//!
//! Every command but `up` talks to the control API at `--control` / `PILLAR_SIM_CONTROL`
//! (default `http://127.0.0.1:8090`); the server validates, and its errors (which name the field)
//! are shown with the matching flag.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use pillar_sim::{Pillar, Ports, Profile, Scenario, Stack, StackError};

/// The default control API address.
pub const DEFAULT_CONTROL: &str = "http://127.0.0.1:8090";

/// `pillar-sim`: fakes of the BHIV pillars with fault injection.
#[derive(Debug, Parser)]
#[command(name = "pillar-sim", version, about)]
pub struct Cli {
    /// The control API of a running simulator.
    #[arg(long, global = true, env = "PILLAR_SIM_CONTROL", default_value = DEFAULT_CONTROL)]
    pub control: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Karma, Bucket, Core, the providers, the SMTP sink, the executor and the control API.
    Up(UpArgs),
    /// Set, list or clear fault rules.
    Fault(Box<FaultArgs>),
    /// Run, list or cancel scenarios.
    #[command(subcommand)]
    Scenario(ScenarioCommand),
    /// Read the request journal.
    Journal(JournalArgs),
    /// Show the spans received for a trace as a waterfall.
    Trace {
        /// The execution's trace id (or the W3C trace id).
        trace_id: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load the executor (or Bucket) open- or closed-loop and report latency, throughput and loss.
    Drive(DriveArgs),
    /// Serve the baseline: a minimal axum handler that parses the request JSON and answers a constant.
    Baseline {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8099")]
        bind: std::net::SocketAddr,
    },
    /// List, stop or start the executor replicas of `up --replicas N`.
    #[command(subcommand)]
    Replica(ReplicaCommand),
    /// Clear faults, scenarios, the journal and every fake's state.
    Reset,
    /// Show what runs where.
    Status,
}

/// `pillar-sim replica …`.
#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// Where each replica listens, whether it runs and what it served through the front.
    List,
    /// Stop replica N gracefully; the others take its traffic.
    Stop {
        /// The replica's number (from 0).
        index: usize,
    },
    /// Start replica N again.
    Start {
        /// The replica's number (from 0).
        index: usize,
    },
}

/// `pillar-sim up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// `spec` or `as-built` for Karma, Bucket and Core, or `<pillar>=<profile>` (repeatable).
    #[arg(long = "profile", value_name = "PROFILE")]
    pub profiles: Vec<String>,
    /// Seed of every random fault decision.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run the fakes only (for a team's own executor on :8003).
    #[arg(long)]
    pub no_executor: bool,
    /// The executor's data directory.
    #[arg(long, default_value = "./data/executor")]
    pub data_dir: PathBuf,
    /// A PostgreSQL URL for the executor's store (the embedded store in `--data-dir` otherwise);
    /// the same as `EXECUTOR_STORE_URL`.
    #[arg(long, value_name = "URL")]
    pub store_url: Option<String>,
    /// How many executor replicas to run behind a round-robin front on :8003 (more than one
    /// needs `--store-url`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub replicas: u16,
    /// The address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: std::net::IpAddr,
    /// The most request-journal entries kept (default 5000; the oldest are dropped and counted).
    #[arg(long, env = "PILLAR_SIM_JOURNAL_ENTRIES", value_name = "N")]
    pub journal_entries: Option<usize>,
    /// The most MiB the journal keeps (default 24).
    #[arg(long, env = "PILLAR_SIM_JOURNAL_MIB", value_name = "MIB")]
    pub journal_mib: Option<usize>,
    /// The most entries each fake's log keeps: Bucket's events, Karma's applied events, the
    /// providers' and the SMTP sink's messages (defaults 10000, 10000, 5000, 5000).
    #[arg(long, env = "PILLAR_SIM_STORE_ENTRIES", value_name = "N")]
    pub store_entries: Option<usize>,
    /// The most MiB each fake's log keeps (defaults 24, 16, 8, 16).
    #[arg(long, env = "PILLAR_SIM_STORE_MIB", value_name = "MIB")]
    pub store_mib: Option<usize>,
    /// The most Karma users kept (default 10000; the least recently updated is forgotten).
    #[arg(long, env = "PILLAR_SIM_KARMA_USERS", value_name = "N")]
    pub karma_users: Option<usize>,
}

impl UpArgs {
    /// The store limits the flags ask for, over the defaults.
    pub fn store_limits(&self) -> pillar_sim::StoreLimits {
        let mut limits = pillar_sim::StoreLimits::default();
        let mib = |n: usize| n.saturating_mul(1024 * 1024);
        if let Some(n) = self.journal_entries {
            limits.journal.entries = n;
        }
        if let Some(n) = self.journal_mib {
            limits.journal.bytes = mib(n);
        }
        for store in [&mut limits.bucket, &mut limits.karma.events, &mut limits.providers, &mut limits.smtp] {
            if let Some(n) = self.store_entries {
                store.entries = n;
            }
            if let Some(n) = self.store_mib {
                store.bytes = mib(n);
            }
        }
        if let Some(n) = self.karma_users {
            limits.karma.users = n;
        }
        limits
    }
}

/// `pillar-sim fault …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct FaultArgs {
    /// `list` or `clear`.
    #[command(subcommand)]
    pub action: Option<FaultAction>,
    /// The rule to set.
    #[command(flatten)]
    pub rule: FaultRuleArgs,
    /// Replace a rule with the same `--id` (without it, a taken id is refused).
    #[arg(long)]
    pub replace: bool,
}

/// `fault list` / `fault clear`.
#[derive(Debug, Subcommand)]
pub enum FaultAction {
    /// List the active rules.
    List,
    /// Clear one rule, or all of them.
    Clear {
        /// The rule's id (all rules when absent).
        id: Option<String>,
    },
}

/// The flags of a fault rule (see the fault schema).
#[derive(Debug, Args, serde::Serialize)]
pub struct FaultRuleArgs {
    /// karma, bucket, core, providers or smtp.
    #[arg(required = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pillar: Option<String>,
    /// latency, http_error, refuse, blackhole, reset, slow_body, truncated_body, malformed_json,
    /// drop_after, answer.
    #[arg(required = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// HTTP status for http_error and answer.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The JSON body answer sends (`'{"success": false}'`).
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Chance that a matching request is hit (0 to 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Retry-After seconds for http_error.
    #[arg(long)]
    #[serde(rename = "retry_after_s", skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Latency distribution: fixed, uniform, normal, lognormal.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dist: Option<String>,
    /// Fixed latency, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
    /// Uniform lower bound, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ms: Option<f64>,
    /// Uniform upper bound, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// Normal mean, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_ms: Option<f64>,
    /// Normal standard deviation, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stddev_ms: Option<f64>,
    /// Log-normal median, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// Log-normal 99th percentile, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Bytes of the answer that get out before drop_after closes the connection.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Body rate for slow_body.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// How long the rule lasts (`30s`, `500ms`, `2m`).
    #[arg(long = "for", value_name = "DURATION")]
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub lasting: Option<String>,
    /// How many matching requests the rule lasts.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Exact path, or a prefix ending with `*`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// HTTP method.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The rule's id.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A flag's value as JSON.
fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

impl FaultRuleArgs {
    /// The rule's JSON form (validated by the server): each flag set is the field of its name.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// `pillar-sim scenario …`.
#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Run a scenario file.
    Run {
        /// The JSON scenario file.
        file: PathBuf,
        /// Wait until every step has run.
        #[arg(long)]
        wait: bool,
    },
    /// List scenario runs.
    List,
    /// Cancel a run (clearing the rules it set).
    Cancel {
        /// The run's id.
        id: String,
    },
}

/// `pillar-sim journal`.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Only this pillar's requests.
    #[arg(long)]
    pub pillar: Option<String>,
    /// Only requests with this trace id.
    #[arg(long)]
    pub trace: Option<String>,
    /// At most this many (the most recent).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

/// `pillar-sim drive`.
#[derive(Debug, Args)]
pub struct DriveArgs {
    /// Base URL of the target (the executor, the baseline, or Bucket with `--kind bucket`).
    #[arg(long, default_value = "http://127.0.0.1:8003")]
    pub target: String,
    /// `execute` (Core's request to the executor) or `bucket` (audit events straight to Bucket).
    #[arg(long, default_value = "execute", value_parser = ["execute", "bucket"])]
    pub kind: String,
    /// Open loop: requests per second (latency measured from each request's due time).
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: workers sending back to back.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long to send, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = pillar_sim::parse_duration)]
    pub duration: Duration,
    /// Action mix, e.g. `task=3,whatsapp=1` (task, whatsapp, email, ai).
    #[arg(long, default_value = "task")]
    pub mix: String,
    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = pillar_sim::parse_duration)]
    pub timeout: Duration,
    /// Bearer token for the executor.
    #[arg(long, env = "WORKFLOW_EXECUTOR_TOKEN")]
    pub token: Option<String>,
    /// After the run, wait until Bucket and Karma hold every execution's event and count losses.
    #[arg(long)]
    pub check: bool,
    /// Skip sending: re-check the run recorded in this JSON report (from `--json`).
    #[arg(long, value_name = "FILE")]
    pub check_only: Option<PathBuf>,
    /// How long the check waits for deliveries.
    #[arg(long, default_value = "120s", value_parser = pillar_sim::parse_duration)]
    pub check_patience: Duration,
    /// Bucket's URL, for the check.
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    pub bucket: String,
    /// Karma's URL, for the check.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub karma: String,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The control API could not be reached.
    #[error(
        "cannot reach the pillar-sim control API at {url} ({source}); is `pillar-sim up` running? \
         Point PILLAR_SIM_CONTROL or --control at it"
    )]
    Unreachable {
        /// The control URL.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The control API refused the request.
    #[error("{0}")]
    Rejected(String),
    /// Bad command-line input.
    #[error("{0}")]
    Usage(String),
    /// The stack failed.
    #[error(transparent)]
    Stack(#[from] StackError),
}

/// A client of the control API.
struct ControlClient {
    base: String,
    http: reqwest::Client,
}

impl ControlClient {
    fn new(base: &str) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a plain client builds");
        Self { base: base.trim_end_matches('/').to_owned(), http }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response =
            request.send().await.map_err(|source| CliError::Unreachable { url: self.base.clone(), source })?;
        let status = response.status();
        let text = response.text().await.map_err(|source| CliError::Unreachable { url: self.base.clone(), source })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        let field = value["error"]["field"].as_str().unwrap_or("?");
        let message = value["error"]["message"].as_str().unwrap_or("(no message)");
        let flag = flag_for(field).map(|f| format!(" (set with {f})")).unwrap_or_default();
        Err(CliError::Rejected(format!("the simulator refused this ({status}): {field}: {message}{flag}")))
    }
}

/// The command-line flag that sets a rule field, if there is one.
fn flag_for(field: &str) -> Option<String> {
    match field {
        "pillar" | "kind" => Some(format!("the <{}> argument", field.to_uppercase())),
        "for" => Some("--for".into()),
        "retry_after_s" => Some("--retry-after".into()),
        // Every other field of a rule is the flag of its name.
        "body" | "rules" | "replace" | "?" => None,
        _ => Some(format!("--{}", field.replace('_', "-"))),
    }
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let control = ControlClient::new(&cli.control);
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Fault(args) => fault(&control, *args).await,
        Command::Scenario(command) => scenario(&control, command).await,
        Command::Journal(args) => journal(&control, args).await,
        Command::Trace { trace_id, json } => {
            if !trace_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
                return Err(CliError::Usage(format!("`{trace_id}` is not a trace id")));
            }
            let trace = control.call(reqwest::Method::GET, &format!("/traces/{trace_id}"), None).await?;
            if json {
                print_json(&trace);
            } else {
                print!("{}", pillar_sim::waterfall(&trace, 40));
            }
            Ok(())
        }
        Command::Drive(args) => drive(args).await,
        Command::Baseline { bind } => {
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .map_err(|e| CliError::Usage(format!("cannot listen on {bind}: {e}")))?;
            println!("baseline handler on http://{bind}/api/workflow/execute");
            let stop = tokio_util::sync::CancellationToken::new();
            let trigger = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                trigger.cancel();
            });
            crate::drive::serve_baseline(listener, stop).await.map_err(|e| CliError::Usage(e.to_string()))
        }
        Command::Replica(command) => {
            let (method, path) = match command {
                ReplicaCommand::List => (reqwest::Method::GET, "/executor/replicas".to_owned()),
                ReplicaCommand::Stop { index } => (reqwest::Method::POST, format!("/executor/replicas/{index}/stop")),
                ReplicaCommand::Start { index } => (reqwest::Method::POST, format!("/executor/replicas/{index}/start")),
            };
            let answer = control.call(method, &path, None).await?;
            for replica in answer["replicas"].as_array().into_iter().flatten() {
                let state = if replica["running"] == true { "running" } else { "stopped" };
                let served = replica["served"].as_u64().map(|n| format!("served {n}")).unwrap_or_default();
                println!(
                    "replica {}  {:<28} {state:<8} {served}",
                    replica["index"],
                    replica["url"].as_str().unwrap_or("-")
                );
            }
            Ok(())
        }
        Command::Reset => {
            control.call(reqwest::Method::POST, "/reset", None).await?;
            println!("reset");
            Ok(())
        }
        Command::Status => {
            print_json(&control.call(reqwest::Method::GET, "/", None).await?);
            Ok(())
        }
    }
}

async fn drive(args: DriveArgs) -> Result<(), CliError> {
    use crate::drive::{self, DriveConfig, Kind, Load, Mix};
    let (run_id, product, report) = match &args.check_only {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
            let previous: Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Usage(format!("{} is not a drive report: {e}", file.display())))?;
            let field = |name: &str| previous[name].as_str().map(str::to_owned);
            let (Some(run_id), Some(product)) = (field("run_id"), field("product")) else {
                return Err(CliError::Usage(format!("{} has no run_id/product", file.display())));
            };
            (run_id, product, previous["report"].clone())
        }
        None => {
            let load = match (args.rate, args.concurrency) {
                (Some(rate), _) => Load::Open { rate },
                (None, concurrency) => Load::Closed { concurrency: concurrency.unwrap_or(32) },
            };
            let run_id = format!("drive-{}", uuid::Uuid::new_v4().simple());
            let config = DriveConfig {
                target: args.target.clone(),
                kind: if args.kind == "bucket" { Kind::Bucket } else { Kind::Execute },
                load,
                duration: args.duration,
                mix: Mix::parse(&args.mix).map_err(CliError::Usage)?,
                timeout: args.timeout,
                product: run_id.clone(),
                run_id: run_id.clone(),
                token: args.token.clone(),
            };
            let report = drive::run(config).await.map_err(CliError::Usage)?;
            println!("{}", drive::render_table(&report, None));
            let value = serde_json::to_value(&report).unwrap_or_default();
            (run_id.clone(), run_id, value)
        }
    };
    let check = if args.check || args.check_only.is_some() {
        let expected = report["ok"].as_u64().unwrap_or(0);
        let check = drive::check(&args.bucket, &args.karma, &run_id, &product, expected, args.check_patience)
            .await
            .map_err(CliError::Usage)?;
        println!(
            "end to end: bucket received {} (lost {}, duplicated {}), karma received {} (lost {}, duplicated {}) after {:.1}s",
            check.bucket.received,
            check.bucket.lost,
            check.bucket.duplicated,
            check.karma.received,
            check.karma.lost,
            check.karma.duplicated,
            check.waited_seconds
        );
        Some(check)
    } else {
        None
    };
    if let Some(path) = &args.json {
        let out = serde_json::json!({"run_id": run_id, "product": product, "report": report, "check": check});
        std::fs::write(path, serde_json::to_vec_pretty(&out).unwrap_or_default())
            .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

async fn fault(control: &ControlClient, args: FaultArgs) -> Result<(), CliError> {
    match args.action {
        Some(FaultAction::List) => {
            let rules = control.call(reqwest::Method::GET, "/faults", None).await?;
            let list = rules["rules"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no active fault rules");
            }
            for rule in list {
                let ends = rule["expires_in_ms"].as_u64().map(|ms| format!("  ends in {:.1}s", ms as f64 / 1000.0));
                println!(
                    "{:<28} {:<60} matched {:>5}  hit {:>5}{}",
                    rule["id"].as_str().unwrap_or_default(),
                    rule["rule"].to_string(),
                    rule["matched"],
                    rule["hit"],
                    ends.unwrap_or_default(),
                );
            }
        }
        Some(FaultAction::Clear { id }) => {
            let path = id.map_or_else(|| "/faults".to_owned(), |id| format!("/faults/{id}"));
            let cleared = control.call(reqwest::Method::DELETE, &path, None).await?;
            println!("cleared {}", cleared["cleared"]);
        }
        None => {
            let path = if args.replace { "/faults?replace=true" } else { "/faults" };
            let status = control.call(reqwest::Method::POST, path, Some(&args.rule.to_json())).await?;
            println!("set {}: {}", status["id"].as_str().unwrap_or_default(), status["rule"]);
        }
    }
    Ok(())
}

async fn scenario(control: &ControlClient, command: ScenarioCommand) -> Result<(), CliError> {
    match command {
        ScenarioCommand::Run { file, wait } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Usage(format!("{} is not valid JSON: {e}", file.display())))?;
            let parsed =
                Scenario::from_json(&value).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            let status = control.call(reqwest::Method::POST, "/scenarios", Some(&value)).await?;
            let id = status["id"].as_str().unwrap_or_default().to_owned();
            println!("started {id}: {} steps over {} ms", status["steps"], status["duration_ms"]);
            if !wait {
                return Ok(());
            }
            let started = std::time::Instant::now();
            let mut reported = 0;
            loop {
                let now = control.call(reqwest::Method::GET, &format!("/scenarios/{id}"), None).await?;
                let done = now["steps_done"].as_u64().unwrap_or(0) as usize;
                for (index, step) in parsed.steps.iter().enumerate().take(done).skip(reported) {
                    println!(
                        "{id}: step {}/{} at {}: {}",
                        index + 1,
                        parsed.steps.len(),
                        pillar_sim::format_duration(step.at),
                        describe_step(&step.action)
                    );
                }
                reported = reported.max(done);
                if now["cancelled"] == true {
                    println!("{id}: cancelled after {reported} of {} steps", parsed.steps.len());
                    return Ok(());
                }
                if now["ended"] == true {
                    println!("{id}: ended after {:.1}s (every rule it set is over)", started.elapsed().as_secs_f64());
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        ScenarioCommand::List => print_json(&control.call(reqwest::Method::GET, "/scenarios", None).await?),
        ScenarioCommand::Cancel { id } => {
            print_json(&control.call(reqwest::Method::DELETE, &format!("/scenarios/{id}"), None).await?)
        }
    }
    Ok(())
}

/// One line about what a scenario step does.
fn describe_step(action: &pillar_sim::StepAction) -> String {
    use pillar_sim::{Clear, StepAction};
    match action {
        StepAction::Fault(rule) => {
            let lasting = rule.lasting.map(|d| format!(" for {}", pillar_sim::format_duration(d))).unwrap_or_default();
            format!(
                "set {} ({} {}{}{lasting})",
                rule.id.as_deref().unwrap_or("?"),
                rule.pillar,
                rule.fault.kind(),
                rule.route.as_deref().map(|r| format!(" on {r}")).unwrap_or_default()
            )
        }
        StepAction::Clear(Clear::All) => "clear every rule".to_owned(),
        StepAction::Clear(Clear::Rule(id)) => format!("clear {id}"),
        StepAction::Clear(Clear::Pillar(pillar)) => format!("clear {pillar}'s rules"),
    }
}

async fn journal(control: &ControlClient, args: JournalArgs) -> Result<(), CliError> {
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(pillar) = &args.pillar {
        query.push(format!("pillar={pillar}"));
    }
    if let Some(trace) = &args.trace {
        query.push(format!(
            "trace_id={}",
            trace.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_', "")
        ));
    }
    let answer = control.call(reqwest::Method::GET, &format!("/journal?{}", query.join("&")), None).await?;
    if args.json {
        print_json(&answer);
        return Ok(());
    }
    let entries = answer["entries"].as_array().cloned().unwrap_or_default();
    let evicted = answer["evicted"].as_u64().unwrap_or(0);
    if entries.is_empty() {
        let filtered = args.pillar.is_some() || args.trace.is_some();
        println!(
            "the journal has no entries{}{}",
            if filtered { " matching the filter" } else { "" },
            if evicted > 0 {
                format!(" ({evicted} older entries were dropped to bound memory)")
            } else {
                String::new()
            }
        );
        return Ok(());
    }
    println!(
        "{:>6} {:<9} {:<6} {:<40} {:<5} {:>10} TRACE / FAULTS",
        "SEQ", "PILLAR", "METHOD", "PATH", "STATUS", "DURATION"
    );
    for entry in entries {
        let faults: Vec<String> = entry["faults"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["hit"] == true)
            .map(|f| f["kind"].as_str().unwrap_or_default().to_owned())
            .collect();
        println!(
            "{:>6} {:<9} {:<6} {:<40} {:<5} {:>8.1}ms trace={} {}",
            entry["seq"],
            entry["pillar"].as_str().unwrap_or_default(),
            entry["method"].as_str().unwrap_or_default(),
            entry["path"].as_str().unwrap_or_default(),
            entry["status"]
                .as_u64()
                .map_or_else(|| entry["outcome"].as_str().unwrap_or_default().to_owned(), |s| s.to_string()),
            entry["duration_ms"].as_f64().unwrap_or_default(),
            entry["trace_id"].as_str().unwrap_or("-"),
            if faults.is_empty() { String::new() } else { format!("faults={}", faults.join(",")) },
        );
    }
    Ok(())
}

/// Reads `--profile` values: `spec`, `as-built`, or `<pillar>=<profile>`.
pub fn parse_profiles(values: &[String]) -> Result<Vec<(Pillar, Profile)>, CliError> {
    let mut out = Vec::new();
    for value in values {
        let usage = |e: pillar_sim::UnknownName| CliError::Usage(format!("--profile {value}: {e}"));
        match value.split_once('=') {
            None => {
                let profile: Profile = value.parse().map_err(usage)?;
                out.extend(Pillar::ALL.into_iter().filter(|p| p.has_profiles()).map(|p| (p, profile)));
            }
            Some((pillar, profile)) => {
                let pillar: Pillar = pillar.parse().map_err(usage)?;
                let profile: Profile = profile.parse().map_err(usage)?;
                if !pillar.has_profiles() && profile == Profile::AsBuilt {
                    return Err(CliError::Usage(format!("--profile {value}: {pillar} has no as-built profile")));
                }
                out.push((pillar, profile));
            }
        }
    }
    Ok(out)
}

fn env_flag(name: &str) -> Result<Option<bool>, CliError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(Some(true)),
        Ok(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(Some(false)),
        Ok(v) => Err(CliError::Usage(format!("{name}={v}: expected true or false"))),
    }
}

/// Whether an environment variable is passed to the executor by `up`.
fn executor_passthrough(name: &str) -> bool {
    name.starts_with("EXECUTOR_")
        || name.starts_with("OTEL_")
        || name.ends_with("_TIMEOUT")
        || matches!(name, "WHATSAPP_API_VERSION" | "AI_MODEL" | "SMTP_USERNAME" | "SMTP_PASSWORD" | "DATABASE_URL")
}

async fn up(args: UpArgs) -> Result<(), CliError> {
    let mut builder = Stack::builder()
        .seed(args.seed)
        .ip(args.ip)
        .ports(Ports::standard())
        .executor(!args.no_executor)
        .executor_replicas(args.replicas.into())
        .executor_data_dir(args.data_dir.clone())
        .store_limits(args.store_limits());
    for (pillar, profile) in parse_profiles(&args.profiles)? {
        builder = builder.profile(pillar, profile);
    }
    if let Some(enabled) = env_flag("WORKFLOW_EVENTS_ENABLED")? {
        builder = builder.workflow_events_enabled(enabled);
    }
    if let Some(enabled) = env_flag("WORKFLOW_BEHAVIORAL_TRACKING")? {
        builder = builder.behavioral_tracking(enabled);
    }
    for name in ["ENABLE_WORKFLOW_EXECUTION", "WORKFLOW_EXECUTOR_URL", "WORKFLOW_TIMEOUT", "WORKFLOW_EXECUTOR_TOKEN"] {
        if let Ok(value) = std::env::var(name) {
            builder = builder.core_env(name, value);
        }
    }
    for (name, value) in std::env::vars().filter(|(n, _)| executor_passthrough(n)) {
        builder = builder.executor_env(name, value);
    }
    if let Some(url) = &args.store_url {
        builder = builder.executor_env("EXECUTOR_STORE_URL", url);
    }
    let stack = builder.start().await?;
    println!("pillar-sim is up (seed {})", stack.seed());
    for pillar in [Pillar::Karma, Pillar::Bucket, Pillar::Core] {
        println!("  {:<10} {:<28} profile {}", pillar.as_str(), stack.url(pillar), stack.profile(pillar));
    }
    let store = match &args.store_url {
        Some(_) => "store PostgreSQL (--store-url)".to_owned(),
        None => format!("data {}", args.data_dir.display()),
    };
    match stack.executor_url() {
        Some(url) if args.replicas > 1 => {
            println!("  {:<10} {url:<28} round-robin front, {store}", "executor");
            for replica in stack.replicas().await {
                println!(
                    "  {:<10} {:<28} pillar-sim replica stop {}",
                    format!("replica {}", replica.index),
                    replica.url,
                    replica.index
                );
            }
        }
        Some(url) => println!("  {:<10} {url:<28} {store}", "executor"),
        None => println!("  {:<10} {:<28} (not started: --no-executor)", "executor", "-"),
    }
    println!(
        "  {:<10} {:<28} WhatsApp /{{version}}/{{phone_number_id}}/messages, AI /v1/chat/completions",
        "providers",
        stack.providers_url()
    );
    if stack.executor_url().is_none() {
        println!(
            "  {:<10} {:<28} an executor of your own needs WHATSAPP_ACCESS_TOKEN=sim-whatsapp-token AI_API_KEY=sim-ai-key",
            "", ""
        );
    }
    println!("  {:<10} {:<28} plain SMTP (SMTP_TLS=none)", "smtp", stack.url(Pillar::Smtp));
    let control = stack.control_url().unwrap_or_default();
    println!("  {:<10} {:<28} PILLAR_SIM_CONTROL; OTLP/HTTP receiver at /v1/traces", "control", control);
    println!("  {:<10} {:<28} the live dashboard", "dashboard", format!("{control}/ui"));
    println!("For the CLI and the Cucumber suite's external mode (BHIV_EXTERNAL=1), in another shell:");
    for line in exports(&stack) {
        println!("  {line}");
    }
    println!("Ctrl-C to stop.");
    shutdown_signal().await;
    println!("stopping…");
    stack.stop().await;
    println!("stopped");
    Ok(())
}

/// The `export` lines that point the CLI and the external Cucumber mode at this stack's
/// addresses (what `--ip` bound, not the defaults).
pub fn exports(stack: &Stack) -> Vec<String> {
    let mut vars = vec![("PILLAR_SIM_CONTROL", stack.control_url().unwrap_or_default())];
    if let Some(url) = stack.executor_url() {
        vars.push(("BHIV_EXECUTOR_URL", url));
    }
    vars.extend([
        ("BHIV_CORE_URL", stack.core_url()),
        ("BHIV_BUCKET_URL", stack.bucket_url()),
        ("BHIV_KARMA_URL", stack.karma_url()),
    ]);
    vars.into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("export {k}={v}")).collect()
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_globally_and_per_pillar() {
        let parsed = parse_profiles(&["as-built".into(), "core=spec".into()]).unwrap();
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed[3], (Pillar::Core, Profile::Spec));
        assert!(parse_profiles(&["smtp=as-built".into()]).is_err());
        assert!(parse_profiles(&["karma=fancy".into()]).unwrap_err().to_string().contains("fancy"));
    }

    #[test]
    fn fault_flags_become_the_rule_schema() {
        let cli = Cli::parse_from([
            "pillar-sim",
            "fault",
            "bucket",
            "http_error",
            "--status",
            "503",
            "--for",
            "30s",
            "--route",
            "/core/*",
        ]);
        let Command::Fault(args) = cli.command else { panic!("a fault command") };
        let rule = pillar_sim::FaultRule::from_json(&args.rule.to_json()).expect("valid rule");
        assert_eq!(rule.lasting, Some(Duration::from_secs(30)));
        let list = Cli::parse_from(["pillar-sim", "fault", "list"]);
        assert!(matches!(list.command, Command::Fault(args) if matches!(args.action, Some(FaultAction::List))));
        assert_eq!(flag_for("retry_after_s").as_deref(), Some("--retry-after"));
    }

    #[test]
    fn the_answer_body_flag_is_parsed_as_json() {
        let cli = Cli::parse_from([
            "pillar-sim",
            "fault",
            "bucket",
            "answer",
            "--status",
            "200",
            "--body",
            r#"{"success": false}"#,
        ]);
        let Command::Fault(args) = cli.command else { panic!("a fault command") };
        let rule = pillar_sim::FaultRule::from_json(&args.rule.to_json()).expect("valid rule");
        assert_eq!(rule.fault, pillar_sim::Fault::answer(200, serde_json::json!({"success": false})));
        let error =
            Cli::try_parse_from(["pillar-sim", "fault", "bucket", "answer", "--status", "200", "--body", "{oops"])
                .expect_err("not JSON");
        assert!(error.to_string().contains("--body") && error.to_string().contains("not valid JSON"), "{error}");
    }

    #[tokio::test]
    async fn up_prints_exports_for_the_address_it_bound() {
        let stack = pillar_sim::Stack::builder().ip("127.0.0.1".parse().unwrap()).start().await.unwrap();
        let exports = exports(&stack);
        let control = format!("export PILLAR_SIM_CONTROL={}", stack.control_url().unwrap());
        assert!(exports.contains(&control), "{exports:?}");
        for (name, url) in [
            ("BHIV_CORE_URL", stack.core_url()),
            ("BHIV_BUCKET_URL", stack.bucket_url()),
            ("BHIV_KARMA_URL", stack.karma_url()),
        ] {
            assert!(exports.contains(&format!("export {name}={url}")), "{name}: {exports:?}");
        }
        assert!(!exports.iter().any(|e| e.contains("BHIV_EXECUTOR_URL")), "no executor, no executor URL: {exports:?}");
    }
}
