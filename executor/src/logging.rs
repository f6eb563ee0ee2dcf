//! Tracing setup: `RUST_LOG` filters (default `info`), `EXECUTOR_LOG_FORMAT` picks text or JSON.
//!
//! Spans carry the trace id (`workflow{trace_id=...}`), so every line logged while a request is
//! executed names its trace, in both formats. An invalid `RUST_LOG` is a configuration error (an
//! executor silently logging nothing is worse than one that refuses to start), and colour codes
//! are written only to a terminal and never with `NO_COLOR`, so redirected logs stay plain text.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{ConfigError, LogFormat};

/// The filter `RUST_LOG` describes (`info` when unset or empty), or an error naming it.
pub fn filter(rust_log: Option<&str>) -> Result<EnvFilter, ConfigError> {
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(EnvFilter::new("info")),
        Some(directives) => EnvFilter::builder().parse(directives).map_err(|error| ConfigError {
            variable: "RUST_LOG",
            message: format!("not a log filter ({error}); e.g. `info` or `workflow_executor=debug,info`"),
        }),
    }
}

/// Whether text logs may carry ANSI colour: only on a terminal, and never with `NO_COLOR` set.
pub fn colour(no_color: Option<&str>, is_terminal: bool) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// The process's log set-up, for applications that run under a dispatch of their own (span
/// export, see [`crate::telemetry`]): their lines must still reach the log.
#[derive(Debug, Clone)]
struct LogSetup {
    format: LogFormat,
    ansi: bool,
    /// The filter when `RUST_LOG` is unset.
    default_filter: &'static str,
    stderr: bool,
}

static LOG_SETUP: OnceLock<LogSetup> = OnceLock::new();

/// Installs the global subscriber, writing to stdout; a second call (tests) is a no-op.
pub fn init(format: LogFormat) -> Result<(), ConfigError> {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref())?;
    let ansi = colour(std::env::var("NO_COLOR").ok().as_deref(), std::io::stdout().is_terminal());
    let _ = LOG_SETUP.set(LogSetup { format, ansi, default_filter: "info", stderr: false });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    Ok(())
}

/// For executors embedded in another program (the simulator) that logs to stderr with
/// `default_filter` unless `RUST_LOG` says otherwise: while they export spans, their lines are
/// written the same way (they bypass the program's own subscriber then).
pub fn log_embedded(default_filter: &'static str) {
    let ansi = colour(std::env::var("NO_COLOR").ok().as_deref(), std::io::stderr().is_terminal());
    let _ = LOG_SETUP.set(LogSetup { format: LogFormat::Text, ansi, default_filter, stderr: true });
}

/// The log layer of [`init`] (or [`log_embedded`]) for a scoped dispatch; `None` when the
/// process set up no logging (tests).
pub fn scoped_layer<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let setup = LOG_SETUP.get()?;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::builder().parse(v).ok())
        .unwrap_or_else(|| EnvFilter::new(setup.default_filter));
    let layer = tracing_subscriber::fmt::layer().with_ansi(setup.ansi);
    Some(match (setup.format, setup.stderr) {
        (LogFormat::Text, true) => layer.with_writer(std::io::stderr).with_filter(filter).boxed(),
        (LogFormat::Text, false) => layer.with_target(false).with_filter(filter).boxed(),
        (LogFormat::Json, _) => {
            layer.with_target(false).json().flatten_event(true).with_current_span(true).with_filter(filter).boxed()
        }
    })
}

/// An error with its causes, outermost first (`a: b: c`), as logs and status show it.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_rust_log_is_an_error_naming_it() {
        let error = filter(Some("info,=[")).expect_err("invalid");
        assert_eq!(error.variable, "RUST_LOG");
        assert!(filter(Some("workflow_executor=debug,info")).is_ok());
        assert!(filter(None).is_ok() && filter(Some(" ")).is_ok());
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(None, true));
        assert!(!colour(None, false));
        assert!(!colour(Some("1"), true));
        assert!(colour(Some(""), true), "an empty NO_COLOR does not count (no-color.org)");
    }
}
