//! The fault model: what a fault rule is, how it is read, and whether it hits a request.
//!
//! Rules have one schema ([`fault`]) shared by the control API, the CLI, scenario files and Rust,
//! read strictly from JSON ([`schema`]: errors name the field). The live rule set ([`injector`])
//! decides per request from seeded draws ([`rng`]), so a seed replays the same faults whatever
//! the interleaving; [`scenario`] sets and clears rules on a timeline. Nothing here serves a
//! request or knows a fake: the serving layer applies what the injector decides.

pub(crate) mod fault;
pub(crate) mod injector;
pub(crate) mod rng;
pub(crate) mod scenario;
pub(crate) mod schema;
