//! Tracing setup: `RUST_LOG` filters (default `info`), `EXECUTOR_LOG_FORMAT` picks text or JSON.
//!
//! Spans carry the trace id (`workflow{trace_id=...}`), so every line logged while a request is
//! executed names its trace, in both formats.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}
