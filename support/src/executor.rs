//! One way to point an executor at a [`pillar_sim::Stack`]: the fast settings every suite starts
//! from ([`FAST_EXECUTOR`]) and a stack of fakes whose providers expect known credentials
//! ([`neighbours_builder`]); [`Stack::neighbours_env`] gives the variables that send an executor
//! to them.

use pillar_sim::{Stack, StackBuilder};

/// Short timeouts that keep a suite fast: a workflow times out after 0.3 s, delivery retries
/// after 10 ms to 200 ms, a breaker opens for 100 ms, shutdown waits 0.5 s and does not drain
/// first, and a provider call gets 5 s.
pub const FAST_EXECUTOR: [(&str, &str); 9] = [
    ("WORKFLOW_TIMEOUT", "0.3"),
    ("EXECUTOR_DELIVERY_BACKOFF_BASE", "0.01"),
    ("EXECUTOR_DELIVERY_BACKOFF_MAX", "0.2"),
    ("EXECUTOR_BREAKER_OPEN", "0.1"),
    ("EXECUTOR_SHUTDOWN_GRACE", "0.5"),
    ("EXECUTOR_DRAIN_DELAY", "0"),
    ("WHATSAPP_TIMEOUT", "5"),
    ("AI_TIMEOUT", "5"),
    ("SMTP_TIMEOUT", "5"),
];

/// The bearer token the stack's WhatsApp fake requires and the executor sends.
pub const WHATSAPP_TOKEN: &str = "wa-test-token-not-a-secret";
/// The bearer key the stack's AI fake requires and the executor sends.
pub const AI_KEY: &str = "sk-test-key-not-a-secret";
/// A stack of fakes only (no executor, no control API), on `127.0.0.1:0`, whose providers
/// require [`WHATSAPP_TOKEN`] and [`AI_KEY`].
pub fn neighbours_builder() -> StackBuilder {
    Stack::builder()
        .executor(false)
        .control(false)
        .whatsapp_token(Some(WHATSAPP_TOKEN.to_owned()))
        .ai_api_key(Some(AI_KEY.to_owned()))
}
