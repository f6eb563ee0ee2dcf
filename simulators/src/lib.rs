//! # pillar-sim: the BHIV pillars, faked faithfully and broken on purpose
//!
//! Karma, Bucket and Core (each an independent model of the real service's contract, in a
//! `spec` and an `as-built` profile), the providers the executor's adapters call (WhatsApp Cloud
//! API, an OpenAI-compatible endpoint, an SMTP sink), seeded fault injection down to the TCP
//! level, a request journal, Prometheus metrics and a control API — as a library for tests and
//! as the `pillar-sim` binary for people.
//!
//! ## A stack in a test
//!
//! ```no_run
//! use std::time::Duration;
//! use pillar_sim::{Fault, FaultRule, JournalQuery, Pillar, Profile, Stack};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Karma, Bucket, Core, providers, SMTP sink, executor and control API on 127.0.0.1:0.
//! let stack = Stack::builder()
//!     .seed(7)
//!     .profile(Pillar::Karma, Profile::AsBuilt)
//!     .executor(true)
//!     .executor_env("WORKFLOW_TIMEOUT", "2.0")
//!     .start()
//!     .await?;
//!
//! // Break Bucket: 30 % of writes fail with 503 for the next 20 s.
//! stack.faults().set(
//!     FaultRule::new(Pillar::Bucket, Fault::http_error(503))
//!         .route("/core/write-event")
//!         .probability(0.3)
//!         .lasting(Duration::from_secs(20)),
//! )?;
//!
//! // Ask Core for a task; it dispatches to the executor with the task id as trace id.
//! let answer: serde_json::Value = reqwest::Client::new()
//!     .post(format!("{}/handle_task", stack.core_url()))
//!     .json(&serde_json::json!({"agent": "edumentor_agent", "input": "Remind me: call the bank"}))
//!     .send().await?.json().await?;
//! let trace = answer["task_id"].as_str().unwrap();
//!
//! // Wait until the executor's audit event reached Bucket, then read what happened.
//! stack.journal()
//!     .wait_for(Duration::from_secs(10), |e| e.pillar == Pillar::Bucket && e.trace_id.as_deref() == Some(trace))
//!     .await;
//! let events = stack.bucket().events_for_trace(trace);
//! assert!(stack.bucket().verify_chain().valid);
//! let calls = stack.journal().query(&JournalQuery::all().trace(trace));
//! let karma_user = stack.karma().user("system");
//! let mails = stack.smtp().messages();
//! # let _ = (events, calls, karma_user, mails);
//! stack.stop().await;
//! # Ok(()) }
//! ```
//!
//! The executor can be stopped and started again on the same port and data directory
//! ([`Stack::stop_executor`], [`Stack::start_executor`]); [`Stack::reset`] clears every fake's
//! state between scenarios; dropping the stack stops everything.
//!
//! ## Layout
//!
//! Every module is private; what a test needs is re-exported here. Dependencies go one way,
//! down this list (a folder uses only those above it, and `pillar.rs`):
//!
//! - `pillar.rs`: [`Pillar`] and [`Profile`], the names everything is keyed by.
//! - `faults/`: the fault model. `fault.rs` is the one rule schema ([`FaultRule`], [`Fault`],
//!   [`Latency`]) shared by the control API, the CLI, scenario files and Rust; `schema.rs` its
//!   strict JSON reader ([`SpecError`]); `injector.rs` the live rule set and each request's
//!   seeded decision ([`RuleStatus`], [`AppliedFault`]); `rng.rs` splitmix64 draws keyed by
//!   (seed, rule, match index); `scenario.rs` timelines of rules ([`Scenario`]).
//! - `record/`: what a stack remembers, bounded: `journal.rs` the request journal ([`Journal`]),
//!   `traces.rs` the OTLP/HTTP receiver's span store and the terminal waterfall ([`Traces`]),
//!   `bounded.rs` the bounded log behind them and every fake's store ([`Limits`], [`Page`]). A
//!   folder of its own, below `serving/` (which journals every request) and `fakes/` (whose
//!   stores are bounded logs); the OTLP receiver is here, not in `fakes/`, as it fakes no pillar.
//! - `serving/`: the machinery every port runs on: `listener.rs` serves each connection itself,
//!   so `refuse` really closes the port and `reset` really sends RST; `middleware.rs` applies
//!   faults and journals each request; `sim.rs` the state one stack's servers share; `wire.rs`
//!   the fakes' JSON and header helpers; `metrics.rs` the Prometheus registry; `front.rs` the
//!   round-robin front before executor replicas.
//! - `fakes/`: `karma.rs`, `bucket.rs`, `core.rs`, `providers.rs`, `smtp.rs` (each documents its
//!   routes, rules and profile differences); their handles ([`Bucket`], [`Karma`], …) and
//!   records are what [`Stack`]'s accessors return.
//! - `stack/`: `state.rs` what the servers and the control API share; `control.rs` the control
//!   API (its routes and JSON shapes) and `dashboard.rs` + `dashboard.html` its live page at
//!   `/ui`; `builder.rs` [`StackBuilder`], [`Stack`] and [`StoreLimits`].
//!
//! The `pillar-sim` binary (`src/main.rs`) has the command line (`cli.rs`: `up`, `fault`,
//! `scenario`, `journal`, `trace`, `replica`, `drive`, `baseline`) and the load driver
//! (`drive.rs`) as its own modules; it uses only this public surface.

mod fakes;
mod faults;
mod pillar;
mod record;
mod serving;
mod stack;

pub use fakes::bucket::{Bucket, ChainReport, GENESIS_HASH, StoredEvent, canonical_json};
pub use fakes::core::Core;
pub use fakes::karma::{AppliedEvent, Balances, Karma, KarmaLimits, KarmaUser, QTable};
pub use fakes::providers::{ChatRequest, Providers, WhatsAppMessage};
pub use fakes::smtp::{SmtpMessage, SmtpSink};
pub use faults::fault::{Fault, FaultRule, Latency};
pub use faults::injector::{AppliedFault, RuleStatus};
pub use faults::scenario::{Clear, Scenario, ScenarioStatus, Step, StepAction};
pub use faults::schema::{SpecError, format_duration, parse_duration};
pub use pillar::{Pillar, Profile, UnknownName};
pub use record::bounded::{Limits, Page};
pub use record::journal::{Journal, JournalEntry, JournalQuery, Outcome};
pub use record::traces::{SpanRecord, TraceSummary, TraceView, Traces, waterfall};
pub use stack::{Faults, Ports, ReplicaStatus, Stack, StackBuilder, StackError, StoreLimits};
