//! The Cucumber runner: every feature in `features/`, each scenario on its own in-process stack.
//!
//! `cargo test --test cucumber` runs them all (and so does `cargo test --workspace`); arguments
//! after `--` are Cucumber's (`--tags @phase2`, `--name regex`, `--fail-fast`, ...). Flags that
//! `cargo test` forwards to every test binary (`--nocapture`, `--test-threads N`, `--quiet`,
//! ...) are accepted and ignored, and a bare word is taken as a scenario-name filter, as libtest
//! would.
//!
//! Output: Cucumber's report, then a last line `N passed, N failed` counting scenarios. The
//! process fails on any failed, undefined or skipped step (`fail_on_skipped`) and on parse
//! errors. With `CUCUMBER_JUNIT=path` a JUnit XML report is written there too.
//!
//! With `BHIV_EXTERNAL=1` only `@external` scenarios run, against already-running services
//! (see `features/README.md`), one at a time; when Karma, Bucket or Core are not the simulator's,
//! `@simulator-only` scenarios are skipped with their reason printed. Selection (`--name`,
//! `--tags`, external mode) is done here, so `--name` and `--tags` combine (Cucumber's own CLI
//! refuses both at once).

mod steps;

use std::collections::HashSet;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use cucumber::cli::{self, Parser as _};
use cucumber::event::{self, Source};
use cucumber::gherkin::tagexpr::TagOperation;
use cucumber::tag::Ext as _;
use cucumber::{World as _, WriterExt as _, parser, writer};
use steps::{BhivWorld, Simulated, detect_simulated, external_mode};

/// Scenarios run at once in-process: each runs a whole stack, and the machine has 2 cores.
const CONCURRENCY: usize = 6;

/// What the closing line reports.
#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: usize,
    errors: usize,
    failing: HashSet<Source<cucumber::gherkin::Scenario>>,
}

/// A writer that counts scenarios by outcome (it sees events after `fail_on_skipped`, so a
/// skipped or undefined step counts as a failure).
#[derive(Debug, Clone, Default)]
struct Counter(Arc<Mutex<Tally>>);

impl Counter {
    fn scenario(&self, scenario: Source<cucumber::gherkin::Scenario>, event: event::Scenario<BhivWorld>) {
        let mut tally = self.0.lock().expect("tally lock");
        let failed = matches!(
            event,
            event::Scenario::Step(_, event::Step::Failed(..) | event::Step::Skipped)
                | event::Scenario::Background(_, event::Step::Failed(..) | event::Step::Skipped)
                | event::Scenario::Hook(_, event::Hook::Failed(..))
        );
        if failed {
            tally.failing.insert(scenario);
        } else if matches!(event, event::Scenario::Finished) {
            if tally.failing.remove(&scenario) {
                tally.failed += 1;
            } else {
                tally.passed += 1;
            }
        }
    }
}

impl cucumber::Writer<BhivWorld> for Counter {
    type Cli = cli::Empty;

    async fn handle_event(&mut self, event: parser::Result<event::Event<event::Cucumber<BhivWorld>>>, _: &Self::Cli) {
        let Ok(event) = event else {
            self.0.lock().expect("tally lock").errors += 1;
            return;
        };
        match event.value {
            event::Cucumber::Feature(_, event::Feature::Scenario(scenario, retryable))
            | event::Cucumber::Feature(_, event::Feature::Rule(_, event::Rule::Scenario(scenario, retryable))) => {
                self.scenario(scenario, retryable.event);
            }
            _ => {}
        }
    }
}

/// libtest flags that `cargo test` may forward to every test binary, with whether they take a
/// value.
const LIBTEST_FLAGS: [(&str, bool); 14] = [
    ("--nocapture", false),
    ("--no-capture", false),
    ("--show-output", false),
    ("--quiet", false),
    ("-q", false),
    ("--test-threads", true),
    ("--format", true),
    ("-Z", true),
    ("--exact", false),
    ("--ignored", false),
    ("--include-ignored", false),
    ("--test", false),
    ("--bench", false),
    ("--report-time", false),
];

/// Cucumber's arguments (libtest's dropped, a bare word turned into `--name`) and the tag
/// expression (`--tags`, else `CUCUMBER_FILTER_TAGS`), which is applied by [`select`] instead of
/// Cucumber's CLI.
fn cucumber_args() -> (Vec<String>, Option<String>) {
    let mut raw = std::env::args();
    let mut args = vec![raw.next().unwrap_or_else(|| "cucumber".into())];
    let mut tags = std::env::var("CUCUMBER_FILTER_TAGS").ok().filter(|t| !t.trim().is_empty());
    let mut rest = raw.peekable();
    while let Some(arg) = rest.next() {
        let (flag, inline_value) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if let Some((_, takes_value)) = LIBTEST_FLAGS.iter().find(|(f, _)| *f == flag) {
            if *takes_value && inline_value.is_none() {
                rest.next();
            }
            continue;
        }
        if flag == "--tags" || flag == "-t" {
            tags = inline_value.or_else(|| rest.next());
            continue;
        }
        if !arg.starts_with('-') && args.last().is_none_or(|prev| !prev.starts_with('-') || prev.contains('=')) {
            args.push("--name".into());
        }
        args.push(arg);
    }
    (args, tags)
}

/// Why a `@simulator-only` scenario cannot run against real services, from its other tags.
fn simulator_only_reason(tags: &[&String]) -> &'static str {
    let has = |t: &str| tags.iter().any(|tag| *tag == t);
    if has("journal") {
        "it reads what a pillar received from the simulator's journal; the real Karma and Core cannot be asked what they were sent"
    } else if has("qtable") {
        "it reads Karma's Q-table through /v1/qtable, a simulator route"
    } else if has("hash_chain") {
        "it checks Bucket's hash chain through /core/verify-chain; the real Bucket keeps no chain"
    } else if has("agent_rules") {
        "it relies on the simulator's Core agent rules; the real Core's probe agent only asks for task or whatsapp workflows"
    } else {
        "it needs the simulator's pillars"
    }
}

/// Whether a scenario runs: its name matches `--name`, its tags (feature, rule and scenario)
/// satisfy `--tags`, and in external mode it is `@external` and, unless every pillar is the
/// simulator's, not `@simulator-only` (printed with its reason).
fn select(
    name_ok: impl Fn(&str) -> bool,
    tags: Option<&TagOperation>,
    external: Option<Simulated>,
    feature: &cucumber::gherkin::Feature,
    rule: Option<&cucumber::gherkin::Rule>,
    scenario: &cucumber::gherkin::Scenario,
) -> bool {
    let all: Vec<&String> =
        feature.tags.iter().chain(rule.iter().flat_map(|r| &r.tags)).chain(scenario.tags.iter()).collect();
    if !name_ok(&scenario.name) || tags.is_some_and(|t| !t.eval(all.iter())) {
        return false;
    }
    let Some(simulated) = external else { return true };
    if !all.iter().any(|t| *t == "external") {
        return false;
    }
    if all.iter().any(|t| *t == "simulator-only") && !simulated.all() {
        println!("skipped in external mode: \"{}\": {}", scenario.name, simulator_only_reason(&all));
        return false;
    }
    true
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a Tokio runtime");
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let external = external_mode();
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/features");
    let junit: Box<dyn Write> = match std::env::var_os("CUCUMBER_JUNIT") {
        Some(path) => match std::fs::File::create(&path) {
            Ok(file) => Box::new(file),
            Err(error) => {
                eprintln!("cannot write the JUnit report to {}: {error}", path.to_string_lossy());
                return ExitCode::FAILURE;
            }
        },
        None => Box::new(io::sink()),
    };
    let counter = Counter::default();
    let tally = counter.0.clone();
    let writer = writer::Basic::raw(io::stdout(), writer::Coloring::Auto, 0)
        .summarized()
        .tee::<BhivWorld, _>(writer::JUnit::for_tee(junit, 0))
        .tee::<BhivWorld, _>(counter.discard_stats_writes().discard_arbitrary_writes())
        .normalized();
    let cucumber = BhivWorld::cucumber()
        .max_concurrent_scenarios(if external { 1 } else { CONCURRENCY })
        .with_writer(writer)
        .fail_on_skipped();
    let (args, tags) = cucumber_args();
    let mut opts = match cli::Opts::<_, _, _, cli::Empty>::try_parse_from(args) {
        Ok(opts) => opts,
        Err(error) => {
            let _ = error.print();
            println!("0 passed, 0 failed");
            return ExitCode::FAILURE;
        }
    };
    let tags = match tags.as_deref().map(str::parse::<TagOperation>).transpose() {
        Ok(tags) => tags,
        Err(error) => {
            eprintln!("invalid tag expression {tags:?}: {error}");
            println!("0 passed, 0 failed");
            return ExitCode::FAILURE;
        }
    };
    let name = opts.re_filter.take();
    let external = if external { Some(detect_simulated().await) } else { None };
    if let Some(simulated) = external.filter(|s| !s.all()) {
        println!(
            "external mode against real services (simulated: {simulated:?}): @simulator-only scenarios are skipped"
        );
    }
    let filter = move |feature: &cucumber::gherkin::Feature,
                       rule: Option<&cucumber::gherkin::Rule>,
                       scenario: &cucumber::gherkin::Scenario| {
        let name_ok = |n: &str| name.as_ref().is_none_or(|re| re.is_match(n));
        select(name_ok, tags.as_ref(), external, feature, rule, scenario)
    };
    let written = cucumber.with_cli(opts).filter_run(features, filter).await;
    drop(written);
    let tally = tally.lock().expect("tally lock");
    let failed = tally.failed + tally.errors;
    io::stdout().flush().ok();
    println!("{} passed, {} failed", tally.passed, failed);
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
