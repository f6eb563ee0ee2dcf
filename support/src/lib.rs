//! What every test suite of the workspace shares (the executor's unit and black-box tests, the
//! simulator's tests, the contract snapshots and the Cucumber features): a real PostgreSQL
//! server started on demand ([`postgres`]) and polling with a deadline ([`eventually`]).
//!
//! Nothing here waits a fixed time or uses a fixed port.

mod poll;
pub mod postgres;

pub use poll::{Probe, eventually};
