//! The outbox: what is told to Bucket and Karma, and the deliverers that tell them.
//!
//! [`events`] shapes the Bucket (audit) and Karma (behaviour) events from an execution's facts,
//! masking recipients and leaving message content out; [`delivery`] drains each sink's outbox
//! from the store with backoff, a circuit breaker and dead letters.

pub mod delivery;
pub mod events;
