//! The stack: [`Stack`] and its [`StackBuilder`] start every fake, the executor and the control
//! API, and own them until stopped or dropped.
//!
//! Dependencies go one way: [`state`] is what the servers and the control API share (the fakes'
//! handles, the executor replicas, [`StackError`]); [`control`] (the control API) and
//! [`dashboard`] (its live page) read and change that state; [`builder`] starts everything,
//! wires the state into the control API and hands out the typed handles.

mod builder;
mod control;
mod dashboard;
mod state;

pub use builder::{Faults, Ports, Stack, StackBuilder, StoreLimits};
pub use state::{ReplicaStatus, StackError};
