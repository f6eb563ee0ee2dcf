//! The serving machinery every fake's port runs on.
//!
//! [`listener`] accepts each connection itself, so `refuse` really closes the port and `reset`
//! really sends RST; [`middleware`] applies the injector's decision to each HTTP request and
//! journals it; [`sim`] is the state one stack's servers share (seed, fault set, journal, metrics,
//! received spans); [`wire`] holds the JSON and header helpers the fakes answer with; [`metrics`]
//! is the Prometheus registry; [`front`] is the round-robin front before executor replicas. It
//! applies faults and records requests, and knows no fake and no stack.

pub(crate) mod front;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod middleware;
pub(crate) mod sim;
pub(crate) mod wire;
