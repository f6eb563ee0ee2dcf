//! The fakes: Karma ([`karma`]), Bucket ([`bucket`]), Core ([`core`]), the providers the
//! executor's adapters call ([`providers`]: WhatsApp Cloud API and an OpenAI-compatible endpoint)
//! and the SMTP sink ([`smtp`]).
//!
//! Each is an independent model of its service's contract (routes, validation, profile
//! differences, documented in its module), served through [`crate::serving`] so faults and the
//! journal apply to it, and keeps its state in a bounded store read through the handle
//! [`crate::Stack`] returns. No fake knows the stack or another fake's state.

pub(crate) mod bucket;
pub(crate) mod core;
pub(crate) mod karma;
pub(crate) mod providers;
pub(crate) mod smtp;
