//! The stack: [`Stack`] and its [`StackBuilder`] start every fake, the executor and the control
//! API ([`control`], with its live page [`dashboard`]), and own them until stopped or dropped.

mod builder;
mod control;
mod dashboard;

pub use builder::{Faults, Ports, ReplicaStatus, Stack, StackBuilder, StackError};
