//! What a stack remembers, always bounded: the request journal ([`journal`]), the spans the
//! executor exported ([`traces`]), and the bounded log behind them and every fake's store
//! ([`bounded`]: at most so many entries and bytes, the oldest dropped and counted).
//!
//! The OTLP receiver lives here rather than with the fakes: it fakes no pillar (no port, profile
//! or faults of its own, it is served on the control port) and, like the journal, it records what
//! the executor did for tests and the dashboard to read.

pub(crate) mod bounded;
pub(crate) mod journal;
pub(crate) mod traces;
