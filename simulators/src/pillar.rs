//! The names every part of the simulator shares: which fake ([`Pillar`]) and how faithful it is
//! ([`Profile`]).
//!
//! A pillar is anything the simulator serves and can break on purpose: the three BHIV pillars the
//! executor talks to, the HTTP providers its adapters call (WhatsApp Cloud API and an
//! OpenAI-compatible endpoint share one server) and the SMTP sink. Fault rules, the journal and
//! the metrics are all keyed by it.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// One faked service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pillar {
    /// Karma (:8000): behavioural tracking, Q-learning, karma scores.
    Karma,
    /// Bucket (:8001): the append-only, hash-chained event depository.
    Bucket,
    /// Core (:8002): the decision engine that dispatches workflows to the executor.
    Core,
    /// The executor's HTTP providers (:8010): WhatsApp Cloud API and OpenAI-compatible chat.
    Providers,
    /// The SMTP sink (:2525) the email adapter sends to.
    Smtp,
}

impl Pillar {
    /// Every pillar, in startup order.
    pub const ALL: [Pillar; 5] = [Pillar::Karma, Pillar::Bucket, Pillar::Core, Pillar::Providers, Pillar::Smtp];

    /// The lower-case name used on the wire, in the CLI and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Pillar::Karma => "karma",
            Pillar::Bucket => "bucket",
            Pillar::Core => "core",
            Pillar::Providers => "providers",
            Pillar::Smtp => "smtp",
        }
    }

    /// The port `pillar-sim up` uses for it.
    pub fn standard_port(self) -> u16 {
        match self {
            Pillar::Karma => 8000,
            Pillar::Bucket => 8001,
            Pillar::Core => 8002,
            Pillar::Providers => 8010,
            Pillar::Smtp => 2525,
        }
    }

    /// Whether the pillar has an `as-built` profile that differs from `spec`.
    pub fn has_profiles(self) -> bool {
        matches!(self, Pillar::Karma | Pillar::Bucket | Pillar::Core)
    }

    /// Whether the pillar speaks HTTP (everything but the SMTP sink).
    pub fn is_http(self) -> bool {
        self != Pillar::Smtp
    }
}

impl fmt::Display for Pillar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a name that is not a pillar or profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{given}`; expected one of {expected}")]
pub struct UnknownName {
    /// What was being named ("pillar", "profile").
    pub what: &'static str,
    /// What was given.
    pub given: String,
    /// The accepted names.
    pub expected: &'static str,
}

impl FromStr for Pillar {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pillar::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownName {
            what: "pillar",
            given: s.to_owned(),
            expected: "karma, bucket, core, providers, smtp",
        })
    }
}

/// How faithful a fake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Profile {
    /// The integration document's contract, enforced strictly (the default).
    #[default]
    #[serde(rename = "spec")]
    Spec,
    /// What the Python services actually do (PILLARS.md), quirks included.
    #[serde(rename = "as-built")]
    AsBuilt,
}

impl Profile {
    /// `spec` or `as-built`.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Spec => "spec",
            Profile::AsBuilt => "as-built",
        }
    }
}

/// A fake's profile, switchable while it serves (read on every request, so lock-free).
#[derive(Debug)]
pub(crate) struct ProfileCell(AtomicBool);

impl ProfileCell {
    pub(crate) fn new(profile: Profile) -> Self {
        Self(AtomicBool::new(profile == Profile::AsBuilt))
    }

    pub(crate) fn get(&self) -> Profile {
        if self.0.load(Ordering::Relaxed) { Profile::AsBuilt } else { Profile::Spec }
    }

    pub(crate) fn set(&self, profile: Profile) {
        self.0.store(profile == Profile::AsBuilt, Ordering::Relaxed);
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spec" => Ok(Profile::Spec),
            "as-built" | "as_built" | "asbuilt" => Ok(Profile::AsBuilt),
            _ => Err(UnknownName { what: "profile", given: s.to_owned(), expected: "spec, as-built" }),
        }
    }
}
