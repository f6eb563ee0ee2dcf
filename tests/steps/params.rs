//! Custom parameter types: the domain words features are written in.
//!
//! | parameter | words | meaning |
//! |---|---|---|
//! | `{pillar}` | `Karma`, `Bucket`, `Core`, `the providers`, `the SMTP sink` | a faked service |
//! | `{service}` | `Karma`, `Bucket`, `Core`, `the executor` | something with a health check |
//! | `{fault}` | `refused`, `blackholed`, `slow`, `erroring`, `failing`, `flapping`, `resetting connections`, `cutting answers off` | how a pillar is broken (see [`FaultKind`]) |
//! | `{action}` | `task`, `whatsapp`, `email`, `ai` | a workflow's `action_type` |
//! | `{profile}` | `spec`, `as-built` | a fake's fidelity profile |
//! | `{outcome}` | `successful`, `failing` | how a workflow ends |
//! | `{measure}` | `execution time`, `event logging time`, `behavioural tracking time`, `executor overhead`, `Core's answer time` | a latency sample set |

use std::fmt;
use std::str::FromStr;

use cucumber::Parameter;
use pillar_sim::{Pillar, Profile};

/// A faked service: `Karma`, `Bucket`, `Core`, `the providers` or `the SMTP sink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "pillar", regex = "Karma|Bucket|Core|the providers|the SMTP sink")]
pub struct PillarArg(pub Pillar);

impl FromStr for PillarArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(match s {
            "Karma" => Pillar::Karma,
            "Bucket" => Pillar::Bucket,
            "Core" => Pillar::Core,
            "the providers" => Pillar::Providers,
            "the SMTP sink" => Pillar::Smtp,
            other => return Err(format!("unknown pillar `{other}`")),
        }))
    }
}

/// The name a feature uses for a pillar.
pub fn pillar_name(pillar: Pillar) -> &'static str {
    match pillar {
        Pillar::Karma => "Karma",
        Pillar::Bucket => "Bucket",
        Pillar::Core => "Core",
        Pillar::Providers => "the providers",
        Pillar::Smtp => "the SMTP sink",
    }
}

/// Something with a health check: a pillar or the executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "service", regex = "Karma|Bucket|Core|the executor")]
pub enum Service {
    /// Karma, `GET /health`.
    Karma,
    /// Bucket, `GET /health`.
    Bucket,
    /// Core, `GET /health`.
    Core,
    /// The executor, `GET /healthz`.
    Executor,
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "Karma" => Service::Karma,
            "Bucket" => Service::Bucket,
            "Core" => Service::Core,
            "the executor" => Service::Executor,
            other => return Err(format!("unknown service `{other}`")),
        })
    }
}

/// How a pillar is broken. The kinds map onto the simulator's fault rules:
///
/// | word | rule |
/// |---|---|
/// | `refused` | `refuse`: the port stops listening |
/// | `blackholed` | `blackhole`: requests are read and never answered |
/// | `slow` | `latency`: every answer takes 1.5 s (longer than the executor's attempt timeout in the degradation features) |
/// | `erroring` | `http_error` 503 (SMTP: 451), a "try again later" answer |
/// | `failing` | `http_error` 500 (SMTP: 554), an answer that says the request itself failed |
/// | `flapping` | a timeline: refused, healthy, 503s, healthy, blackholed, healthy, in 0.4 s steps (2.4 s in all) |
/// | `resetting connections` | `reset`: the connection is reset after the request is read |
/// | `cutting answers off` | `truncated_body`: the pillar acts, but its answer stops halfway |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(
    name = "fault",
    regex = "refused|blackholed|slow|erroring|failing|flapping|resetting connections|cutting answers off"
)]
pub enum FaultKind {
    /// Connections refused.
    Refused,
    /// Requests never answered.
    Blackholed,
    /// Answers delayed by 1.5 s.
    Slow,
    /// 503 (SMTP 451).
    Erroring,
    /// 500 (SMTP 554).
    Failing,
    /// A timeline of outages.
    Flapping,
    /// TCP resets.
    Resetting,
    /// Truncated answers.
    CuttingOff,
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "refused" => FaultKind::Refused,
            "blackholed" => FaultKind::Blackholed,
            "slow" => FaultKind::Slow,
            "erroring" => FaultKind::Erroring,
            "failing" => FaultKind::Failing,
            "flapping" => FaultKind::Flapping,
            "resetting connections" => FaultKind::Resetting,
            "cutting answers off" => FaultKind::CuttingOff,
            other => return Err(format!("unknown fault `{other}`")),
        })
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Refused => "refused",
            FaultKind::Blackholed => "blackholed",
            FaultKind::Slow => "slow",
            FaultKind::Erroring => "erroring",
            FaultKind::Failing => "failing",
            FaultKind::Flapping => "flapping",
            FaultKind::Resetting => "resetting",
            FaultKind::CuttingOff => "cutting-off",
        })
    }
}

/// A workflow's `action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Parameter)]
#[param(name = "action", regex = "task|whatsapp|email|ai")]
pub enum Action {
    /// Create a task (local; no provider).
    Task,
    /// Send a WhatsApp message (WhatsApp Cloud API).
    WhatsApp,
    /// Send an e-mail (SMTP).
    Email,
    /// Ask an AI model (OpenAI-compatible endpoint).
    Ai,
}

impl Action {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Task => "task",
            Action::WhatsApp => "whatsapp",
            Action::Email => "email",
            Action::Ai => "ai",
        }
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "task" => Action::Task,
            "whatsapp" => Action::WhatsApp,
            "email" => Action::Email,
            "ai" => Action::Ai,
            other => return Err(format!("unknown action type `{other}`")),
        })
    }
}

/// A fake's profile: `spec` or `as-built`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "profile", regex = "spec|as-built")]
pub struct ProfileArg(pub Profile);

impl FromStr for ProfileArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self).map_err(|e: pillar_sim::UnknownName| e.to_string())
    }
}

/// How a workflow ends: `successful` or `failing` (a payload the adapter refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "outcome", regex = "successful|failing")]
pub enum Outcome {
    /// The adapter succeeds.
    Successful,
    /// The adapter reports a failure (a required field is missing).
    Failing,
}

impl FromStr for Outcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "successful" => Ok(Outcome::Successful),
            "failing" => Ok(Outcome::Failing),
            other => Err(format!("unknown outcome `{other}`")),
        }
    }
}

/// A latency sample set recorded by the timing steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Parameter)]
#[param(
    name = "measure",
    regex = "execution time|event logging time|behavioural tracking time|executor overhead|Core's answer time"
)]
pub enum Measure {
    /// Client-measured latency of `POST /api/workflow/execute`.
    Execution,
    /// From the execution's answer to its event in Bucket's journal.
    EventLogging,
    /// From the execution's answer to its event in Karma's journal.
    BehaviouralTracking,
    /// Execution latency minus the provider's own time.
    Overhead,
    /// Client-measured latency of Core's `POST /handle_task`.
    CoreAnswer,
}

impl FromStr for Measure {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "execution time" => Measure::Execution,
            "event logging time" => Measure::EventLogging,
            "behavioural tracking time" => Measure::BehaviouralTracking,
            "executor overhead" => Measure::Overhead,
            "Core's answer time" => Measure::CoreAnswer,
            other => return Err(format!("unknown measure `{other}`")),
        })
    }
}

/// Which trace a step means: `the trace` (the last workflow sent to the executor) or `Core's
/// task id` (the last task Core answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "trace", regex = "the trace|Core's task id")]
pub enum TraceRef {
    /// The last workflow sent to the executor.
    Last,
    /// The task id of Core's last answer.
    CoreTask,
}

impl FromStr for TraceRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "the trace" => Ok(TraceRef::Last),
            "Core's task id" => Ok(TraceRef::CoreTask),
            other => Err(format!("unknown trace reference `{other}`")),
        }
    }
}
