//! One way to point an executor at a [`pillar_sim::Stack`]: the fast settings every suite starts
//! from ([`FAST_EXECUTOR`]), a stack whose providers expect known credentials
//! ([`neighbours_builder`]) and the variables that send an executor to that stack's fakes
//! ([`neighbours_env`]).

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

/// The WhatsApp Cloud API version the executor is given.
pub const WHATSAPP_VERSION: &str = "v21.0";
/// The WhatsApp sender id the executor is given.
pub const WHATSAPP_PHONE_NUMBER_ID: &str = "123456789012345";
/// The bearer token the stack's WhatsApp fake requires and the executor sends.
pub const WHATSAPP_TOKEN: &str = "wa-test-token-not-a-secret";
/// The bearer key the stack's AI fake requires and the executor sends.
pub const AI_KEY: &str = "sk-test-key-not-a-secret";
/// The model the executor asks for.
pub const AI_MODEL: &str = "gpt-test-mini";

/// A stack of fakes only (no executor, no control API), on `127.0.0.1:0`, whose providers
/// require [`WHATSAPP_TOKEN`] and [`AI_KEY`].
pub fn neighbours_builder() -> StackBuilder {
    Stack::builder()
        .executor(false)
        .control(false)
        .whatsapp_token(Some(WHATSAPP_TOKEN.to_owned()))
        .ai_api_key(Some(AI_KEY.to_owned()))
}

/// The variables that point an executor at `stack`'s Bucket, Karma, providers and SMTP sink,
/// with the credentials of [`neighbours_builder`].
pub fn neighbours_env(stack: &Stack) -> Vec<(&'static str, String)> {
    let providers = stack.providers_url();
    let smtp = stack.smtp_addr();
    vec![
        ("BUCKET_URL", stack.bucket_url()),
        ("KARMA_URL", stack.karma_url()),
        ("WHATSAPP_API_URL", providers.clone()),
        ("WHATSAPP_API_VERSION", WHATSAPP_VERSION.to_owned()),
        ("WHATSAPP_PHONE_NUMBER_ID", WHATSAPP_PHONE_NUMBER_ID.to_owned()),
        ("WHATSAPP_ACCESS_TOKEN", WHATSAPP_TOKEN.to_owned()),
        ("AI_API_URL", providers),
        ("AI_API_KEY", AI_KEY.to_owned()),
        ("AI_MODEL", AI_MODEL.to_owned()),
        ("SMTP_HOST", smtp.ip().to_string()),
        ("SMTP_PORT", smtp.port().to_string()),
        ("SMTP_TLS", "none".to_owned()),
    ]
}
