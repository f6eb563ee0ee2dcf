//! Typed settings, read once from the environment and validated at start.
//!
//! Every knob has a documented environment variable (see `executor/executor.env.example` and the
//! README). [`Settings::from_lookup`] takes any `name -> value` function so tests and the
//! simulator can build settings from a map without touching the process environment; errors name
//! the variable that is wrong. Secrets are wrapped in [`Secret`], whose `Debug` never prints them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use reqwest::Url;

/// A configuration value that must never be printed (tokens, passwords, API keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"[redacted]\"" })
    }
}

/// A setting that failed validation; the message names the environment variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it, in plain words.
    pub message: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What happens when a sink's outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Refuse new executions with 503 `audit_spool_full` (nothing is lost, nothing executes).
    Reject,
    /// Make room by discarding the oldest queued events of that sink (counted in metrics).
    DropOldest,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (local sinks only).
    None,
    /// Upgrade with STARTTLS (the usual port 587 setup).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// One telemetry destination (Bucket or Karma).
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Whether events are produced for this sink at all.
    pub enabled: bool,
    /// Base URL of the pillar.
    pub base_url: Url,
    /// Path events are posted to.
    pub path: String,
    /// Outbox bound, in events.
    pub max_events: u64,
    /// Outbox bound, in bytes of serialized events.
    pub max_bytes: u64,
    /// What to do when the bound is reached.
    pub full_policy: FullPolicy,
}

impl SinkSettings {
    /// The full URL events are posted to.
    pub fn endpoint(&self) -> Url {
        let mut url = self.base_url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{}", self.path));
        url
    }
}

/// The roles the deployed Karma accepts (karma_chain_v2 `ROLE_SEQUENCE`).
pub const KARMA_ROLES: [&str; 4] = ["learner", "volunteer", "seva", "guru"];
/// The actions the deployed Karma accepts (karma_chain_v2 `ACTIONS`).
pub const KARMA_ACTIONS: [&str; 5] =
    ["completing_lessons", "helping_peers", "solving_doubts", "selfless_service", "cheat"];

/// How behavioural events are shaped for Karma (`EXECUTOR_KARMA_ENCODING`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KarmaEncoding {
    /// The integration document's event: role `user`, action `workflow_success|workflow_failure`,
    /// `context` an object. The deployed Karma rejects it (500).
    Spec,
    /// What the deployed Karma accepts: `context` as a JSON string, a configured role, and the
    /// outcome mapped to one of Karma's five actions (or to nothing: no event is sent).
    AsBuilt {
        /// `EXECUTOR_KARMA_ROLE`.
        role: String,
        /// The action for a successful workflow (`None`: send nothing).
        on_success: Option<String>,
        /// The action for a failed workflow (`None`: send nothing).
        on_failure: Option<String>,
    },
}

/// How the background deliverers retry.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Bound on every delivery attempt (`WORKFLOW_TIMEOUT`).
    pub attempt_timeout: Duration,
    /// Events in flight per sink. Small by default: a few connections keep up with thousands of
    /// events per second on loopback, and bigger bursts of delivery work show up as request tail
    /// latency on a small machine.
    pub concurrency: usize,
    /// Attempts on a sink that answers with a server error before the event is dead-lettered.
    /// Unreachable sinks (refused, timeouts, 502/503/504, 429) are retried without limit.
    pub max_attempts: u32,
    /// First backoff step.
    pub backoff_base: Duration,
    /// Largest backoff step.
    pub backoff_max: Duration,
    /// Consecutive unreachable attempts that open the circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit first waits before a probe; doubled after each failed probe, up to
    /// 2 s (jittered), so recovery is noticed promptly however long the outage.
    pub breaker_open_for: Duration,
}

/// WhatsApp Business Cloud API.
#[derive(Debug, Clone)]
pub struct WhatsAppSettings {
    /// Base URL (`https://graph.facebook.com` in production).
    pub api_url: Url,
    /// Graph API version segment.
    pub api_version: String,
    /// Sender phone number id.
    pub phone_number_id: String,
    /// Bearer token.
    pub access_token: Secret,
    /// Bound on one send.
    pub timeout: Duration,
}

/// SMTP relay.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Relay host.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Connection security.
    pub tls: SmtpTls,
    /// Login, if the relay needs one.
    pub username: String,
    /// Password for `username`.
    pub password: Secret,
    /// Envelope and header sender.
    pub from: String,
    /// Bound on one send.
    pub timeout: Duration,
}

/// OpenAI-compatible chat-completions endpoint.
#[derive(Debug, Clone)]
pub struct AiSettings {
    /// Base URL; requests go to `{api_url}/v1/chat/completions`.
    pub api_url: Url,
    /// Bearer key.
    pub api_key: Secret,
    /// Model name.
    pub model: String,
    /// Bound on one completion.
    pub timeout: Duration,
}

/// How the listener treats connections (hostile and careless clients).
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Longest time a client may take to send a request's head, counted from the connection's
    /// start for its first request, from the request's first byte for later ones
    /// (`EXECUTOR_HEADER_READ_TIMEOUT`).
    pub header_read_timeout: Duration,
    /// Longest time a kept-alive connection may wait, with no request, for its next one
    /// (`EXECUTOR_IDLE_TIMEOUT`).
    pub idle_timeout: Duration,
    /// Open connections at most (`EXECUTOR_MAX_CONNECTIONS`); beyond it the longest-idle one is
    /// closed to make room, or the new one is answered 503 and closed if none is idle.
    pub max_connections: usize,
    /// How long `/readyz` fails before the listener closes on SIGTERM (`EXECUTOR_DRAIN_DELAY`).
    pub drain_delay: Duration,
}

/// Input limits and load shedding.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Execute requests served at once; beyond it, 503 with `Retry-After`.
    pub max_concurrent: usize,
}

/// Which store the executor keeps its state in.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// A PostgreSQL URL (`EXECUTOR_STORE_URL`, else `DATABASE_URL`) selects the shared
    /// PostgreSQL store; without one the embedded store in `EXECUTOR_DATA_DIR` is used. A secret:
    /// it may carry a password.
    pub url: Option<Secret>,
    /// Which variable the URL came from (for start-up messages).
    pub url_variable: &'static str,
    /// Connections in the PostgreSQL pool (`EXECUTOR_STORE_POOL_SIZE`).
    pub pool_size: usize,
    /// How long a claim of a replica that stopped renewing it holds its key
    /// (`EXECUTOR_STORE_LEASE`); its in-flight executions are reported as `outcome_unknown` after
    /// it.
    pub lease: Duration,
    /// Certificates (PEM) trusted for the database's TLS certificate besides the Mozilla roots
    /// (`EXECUTOR_STORE_CA_FILE`); used with `sslmode=require` in the URL.
    pub ca_file: Option<PathBuf>,
}

/// The executor's whole configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address (`EXECUTOR_BIND`, else `0.0.0.0:$PORT`, else 127.0.0.1:8003); port 0 picks
    /// a free port.
    pub bind: SocketAddr,
    /// Which setting the listen address came from (for start-up messages).
    pub bind_source: BindSource,
    /// Timeouts and the cap on open connections.
    pub connections: ConnectionSettings,
    /// Where the embedded store lives (`EXECUTOR_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Which store to use (embedded or PostgreSQL).
    pub store: StoreSettings,
    /// Log format (`EXECUTOR_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Bucket sink.
    pub bucket: SinkSettings,
    /// Karma sink.
    pub karma: SinkSettings,
    /// The shape of Karma events.
    pub karma_encoding: KarmaEncoding,
    /// Retry policy shared by both sinks.
    pub delivery: DeliverySettings,
    /// How long a stored result answers replays.
    pub idempotency_retention: Duration,
    /// Mask phone numbers and e-mail addresses in audit events.
    pub mask_recipients: bool,
    /// `caller -> token`; empty means no authentication.
    pub caller_tokens: HashMap<String, Secret>,
    /// Input limits.
    pub limits: LimitSettings,
    /// How long shutdown may spend flushing events.
    pub shutdown_grace: Duration,
    /// WhatsApp provider.
    pub whatsapp: WhatsAppSettings,
    /// E-mail provider.
    pub smtp: SmtpSettings,
    /// AI provider.
    pub ai: AiSettings,
    /// OpenTelemetry span export (the standard `OTEL_*` variables).
    pub telemetry: TelemetrySettings,
}

/// Span export: OTLP over HTTP (protobuf) to `endpoint`, off when no endpoint is set.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// The traces URL: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/traces`; `None` (export off) when neither is set
    /// or `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    pub endpoint: Option<Url>,
    /// `OTEL_SERVICE_NAME` (default `workflow-executor`).
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`).
    pub sampler: SamplerSetting,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds, default 10000): the bound on one export.
    pub timeout: Duration,
    /// `OTEL_BSP_SCHEDULE_DELAY` (milliseconds, default 5000): how often queued spans are sent.
    pub schedule_delay: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048): spans beyond it are dropped, never waited for.
    pub max_queue: usize,
}

/// The standard samplers (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with `OTEL_TRACES_SAMPLER_ARG`.
    Ratio(f64),
    /// `parentbased_always_on` (the default).
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with `OTEL_TRACES_SAMPLER_ARG`.
    ParentBasedRatio(f64),
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (an environment variable name to its value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let bucket = SinkSettings {
            enabled: env.parse("EXECUTOR_BUCKET_ENABLED", true, parse_bool)?,
            base_url: env.parse("BUCKET_URL", url("http://127.0.0.1:8001"), parse_url)?,
            path: env.parse("EXECUTOR_BUCKET_EVENT_PATH", "/core/write-event".into(), parse_path)?,
            max_events: env.parse("EXECUTOR_BUCKET_OUTBOX_MAX_EVENTS", 200_000, parse_positive)?,
            max_bytes: env.parse("EXECUTOR_BUCKET_OUTBOX_MAX_BYTES", 256 << 20, parse_positive)?,
            full_policy: env.parse("EXECUTOR_BUCKET_FULL_POLICY", FullPolicy::Reject, parse_policy)?,
        };
        let karma = SinkSettings {
            enabled: env.parse("EXECUTOR_KARMA_ENABLED", true, parse_bool)?,
            base_url: env.parse("KARMA_URL", url("http://127.0.0.1:8000"), parse_url)?,
            path: env.parse("EXECUTOR_KARMA_EVENT_PATH", "/v1/event/".into(), parse_path)?,
            max_events: env.parse("EXECUTOR_KARMA_OUTBOX_MAX_EVENTS", 200_000, parse_positive)?,
            max_bytes: env.parse("EXECUTOR_KARMA_OUTBOX_MAX_BYTES", 256 << 20, parse_positive)?,
            full_policy: env.parse("EXECUTOR_KARMA_FULL_POLICY", FullPolicy::DropOldest, parse_policy)?,
        };
        let delivery = DeliverySettings {
            attempt_timeout: env.parse("WORKFLOW_TIMEOUT", Duration::from_secs(2), parse_seconds)?,
            concurrency: env.parse("EXECUTOR_DELIVERY_CONCURRENCY", 4, parse_positive)?,
            max_attempts: env.parse("EXECUTOR_DELIVERY_MAX_ATTEMPTS", 8, parse_positive)?,
            backoff_base: env.parse("EXECUTOR_DELIVERY_BACKOFF_BASE", Duration::from_millis(100), parse_seconds)?,
            backoff_max: env.parse("EXECUTOR_DELIVERY_BACKOFF_MAX", Duration::from_secs(30), parse_seconds)?,
            breaker_threshold: env.parse("EXECUTOR_BREAKER_THRESHOLD", 5, parse_positive)?,
            breaker_open_for: env.parse("EXECUTOR_BREAKER_OPEN", Duration::from_secs(2), parse_seconds)?,
        };
        let (bind, bind_source) = match lookup("EXECUTOR_BIND") {
            Some(_) => (
                env.parse("EXECUTOR_BIND", DEFAULT_BIND, |v| {
                    v.parse().map_err(|_| "expected host:port, e.g. 127.0.0.1:8003".into())
                })?,
                BindSource::ExecutorBind,
            ),
            None => match lookup("PORT") {
                // The PaaS convention: the platform routes to this port on every interface.
                Some(_) => {
                    let port: u16 = env.parse("PORT", 0, |v| v.parse().map_err(|_| "expected a port number".into()))?;
                    (SocketAddr::from(([0, 0, 0, 0], port)), BindSource::Port)
                }
                None => (DEFAULT_BIND, BindSource::Default),
            },
        };
        let connections = ConnectionSettings {
            header_read_timeout: env.parse("EXECUTOR_HEADER_READ_TIMEOUT", Duration::from_secs(10), parse_seconds)?,
            idle_timeout: env.parse("EXECUTOR_IDLE_TIMEOUT", Duration::from_secs(60), parse_seconds)?,
            max_connections: env.parse("EXECUTOR_MAX_CONNECTIONS", 512, |v| {
                parse_positive(v).and_then(|n: usize| {
                    if n <= MAX_CONNECTIONS_LIMIT {
                        Ok(n)
                    } else {
                        Err(format!("at most {MAX_CONNECTIONS_LIMIT} (each connection holds a file descriptor)"))
                    }
                })
            })?,
            drain_delay: env.parse("EXECUTOR_DRAIN_DELAY", Duration::from_secs(5), parse_seconds_or_zero)?,
        };
        let settings = Settings {
            bind,
            bind_source,
            connections,
            data_dir: env
                .parse("EXECUTOR_DATA_DIR", PathBuf::from("./data/executor"), |v| non_empty(v).map(PathBuf::from))?,
            store: store_settings(&env)?,
            log_format: env.parse("EXECUTOR_LOG_FORMAT", LogFormat::Text, |v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected `text` or `json`".into()),
            })?,
            bucket,
            karma,
            karma_encoding: karma_encoding(&env)?,
            delivery,
            idempotency_retention: env.parse(
                "EXECUTOR_IDEMPOTENCY_RETENTION",
                Duration::from_secs(24 * 3600),
                parse_seconds,
            )?,
            mask_recipients: env.parse("EXECUTOR_AUDIT_MASK_RECIPIENTS", true, parse_bool)?,
            caller_tokens: env.parse("EXECUTOR_CALLER_TOKENS", HashMap::new(), parse_tokens)?,
            limits: LimitSettings {
                max_body_bytes: env.parse("EXECUTOR_MAX_BODY_BYTES", 64 * 1024, |v| {
                    parse_positive(v).and_then(|n: usize| {
                        if n <= MAX_BODY_LIMIT {
                            Ok(n)
                        } else {
                            Err(format!("at most {MAX_BODY_LIMIT} bytes (16 MiB)"))
                        }
                    })
                })?,
                max_concurrent: env.parse("EXECUTOR_MAX_CONCURRENT", 512, parse_positive)?,
            },
            shutdown_grace: env.parse("EXECUTOR_SHUTDOWN_GRACE", Duration::from_secs(5), parse_seconds)?,
            whatsapp: WhatsAppSettings {
                api_url: env.parse("WHATSAPP_API_URL", url("http://127.0.0.1:8010"), parse_url)?,
                api_version: env.parse("WHATSAPP_API_VERSION", "v21.0".into(), |v| non_empty(v).map(str::to_owned))?,
                phone_number_id: env
                    .parse("WHATSAPP_PHONE_NUMBER_ID", "100000000000001".into(), |v| non_empty(v).map(str::to_owned))?,
                access_token: env.secret("WHATSAPP_ACCESS_TOKEN"),
                timeout: env.parse("WHATSAPP_TIMEOUT", Duration::from_secs(5), parse_seconds)?,
            },
            smtp: SmtpSettings {
                host: env.parse("SMTP_HOST", "127.0.0.1".into(), |v| non_empty(v).map(str::to_owned))?,
                port: env.parse("SMTP_PORT", 2525, |v| v.parse().map_err(|_| "expected a port number".into()))?,
                tls: env.parse("SMTP_TLS", SmtpTls::None, |v| match v {
                    "none" => Ok(SmtpTls::None),
                    "starttls" => Ok(SmtpTls::StartTls),
                    "tls" => Ok(SmtpTls::Tls),
                    _ => Err("expected `none`, `starttls` or `tls`".into()),
                })?,
                username: env.parse("SMTP_USERNAME", String::new(), |v| Ok(v.to_owned()))?,
                password: env.secret("SMTP_PASSWORD"),
                from: env.parse("SMTP_FROM", "Workflow Executor <executor@bhiv.local>".into(), |v| {
                    v.parse::<lettre::message::Mailbox>()
                        .map(|_| v.to_owned())
                        .map_err(|e| format!("not a mailbox: {e}"))
                })?,
                timeout: env.parse("SMTP_TIMEOUT", Duration::from_secs(10), parse_seconds)?,
            },
            ai: AiSettings {
                api_url: env.parse("AI_API_URL", url("http://127.0.0.1:8010"), parse_url)?,
                api_key: env.secret("AI_API_KEY"),
                model: env.parse("AI_MODEL", "gpt-4o-mini".into(), |v| non_empty(v).map(str::to_owned))?,
                timeout: env.parse("AI_TIMEOUT", Duration::from_secs(20), parse_seconds)?,
            },
            telemetry: telemetry_settings(&env)?,
        };
        Ok(settings)
    }
}

/// Where the listen address came from, so start-up messages name the right variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindSource {
    /// `EXECUTOR_BIND`.
    ExecutorBind,
    /// `PORT` (bound on `0.0.0.0`).
    Port,
    /// Neither was set: the default loopback address.
    Default,
}

impl BindSource {
    /// The variable that sets the address (`EXECUTOR_BIND` also for the default).
    pub fn variable(self) -> &'static str {
        match self {
            BindSource::Port => "PORT",
            BindSource::ExecutorBind | BindSource::Default => "EXECUTOR_BIND",
        }
    }
}

/// The listen address without `EXECUTOR_BIND` or `PORT`.
const DEFAULT_BIND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8003);

/// `EXECUTOR_MAX_BODY_BYTES` at most: 16 MiB (over-limit bodies are read and discarded up to a
/// multiple of it, so an unbounded value would make that bound meaningless).
const MAX_BODY_LIMIT: usize = 16 << 20;

/// `EXECUTOR_MAX_CONNECTIONS` at most: well above the default, and every connection holds a
/// descriptor, so a value over the usual 1,024 descriptor limit would fail with `EMFILE` instead.
const MAX_CONNECTIONS_LIMIT: usize = 65_536;

/// A lookup with typed, variable-naming parse helpers.
struct Env<'a, F>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn parse<T>(
        &self,
        variable: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match (self.0)(variable) {
            None => Ok(default),
            Some(raw) => parse(raw.trim()).map_err(|message| ConfigError { variable, message }),
        }
    }

    fn secret(&self, variable: &'static str) -> Secret {
        Secret::new((self.0)(variable).unwrap_or_default().trim())
    }
}

/// The `OTEL_*` variables of the OpenTelemetry specification that the executor honours.
fn telemetry_settings<F: Fn(&str) -> Option<String>>(env: &Env<'_, F>) -> Result<TelemetrySettings, ConfigError> {
    let set = |variable: &str| (env.0)(variable).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let disabled = env.parse("OTEL_SDK_DISABLED", false, |v| if v.is_empty() { Ok(false) } else { parse_bool(v) })?
        || env.parse("OTEL_TRACES_EXPORTER", false, |v| match v {
            "otlp" | "" => Ok(false),
            "none" => Ok(true),
            _ => Err("expected `otlp` or `none` (only OTLP over HTTP is built in)".into()),
        })?;
    let otlp_url = |v: &str| {
        let url = parse_url(v)?;
        if url.scheme() == "http" || url.scheme() == "https" {
            Ok(url)
        } else {
            Err("expected an http:// or https:// URL, e.g. http://127.0.0.1:4318".to_owned())
        }
    };
    let endpoint = if disabled {
        None
    } else if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() {
        Some(env.parse("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url("http://127.0.0.1:4318/v1/traces"), otlp_url)?)
    } else if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        Some(env.parse("OTEL_EXPORTER_OTLP_ENDPOINT", url("http://127.0.0.1:4318"), |v| {
            otlp_url(&format!("{}/v1/traces", v.trim_end_matches('/')))
        })?)
    } else {
        None
    };
    let ratio = env.parse("OTEL_TRACES_SAMPLER_ARG", 1.0, |v| match v.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("expected a sampling ratio between 0 and 1, e.g. 0.25".into()),
    })?;
    let sampler = env.parse("OTEL_TRACES_SAMPLER", SamplerSetting::ParentBasedAlwaysOn, |v| match v {
        "always_on" => Ok(SamplerSetting::AlwaysOn),
        "always_off" => Ok(SamplerSetting::AlwaysOff),
        "traceidratio" => Ok(SamplerSetting::Ratio(ratio)),
        "parentbased_always_on" => Ok(SamplerSetting::ParentBasedAlwaysOn),
        "parentbased_always_off" => Ok(SamplerSetting::ParentBasedAlwaysOff),
        "parentbased_traceidratio" => Ok(SamplerSetting::ParentBasedRatio(ratio)),
        _ => Err("expected always_on, always_off, traceidratio, parentbased_always_on, \
                  parentbased_always_off or parentbased_traceidratio"
            .into()),
    })?;
    let millis = |v: &str| match v.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err("expected a positive number of milliseconds".to_owned()),
    };
    Ok(TelemetrySettings {
        endpoint,
        service_name: env
            .parse("OTEL_SERVICE_NAME", "workflow-executor".into(), |v| non_empty(v).map(str::to_owned))?,
        sampler,
        timeout: env.parse("OTEL_EXPORTER_OTLP_TIMEOUT", Duration::from_secs(10), millis)?,
        schedule_delay: env.parse("OTEL_BSP_SCHEDULE_DELAY", Duration::from_secs(5), millis)?,
        max_queue: env.parse("OTEL_BSP_MAX_QUEUE_SIZE", 2048, parse_positive)?,
    })
}

/// `EXECUTOR_KARMA_ENCODING`, `EXECUTOR_KARMA_ROLE` and `EXECUTOR_KARMA_ACTIONS`, validated even
/// when the encoding is `spec`, so a typo is caught before it is switched on.
fn karma_encoding<F: Fn(&str) -> Option<String>>(env: &Env<'_, F>) -> Result<KarmaEncoding, ConfigError> {
    let as_built = env.parse("EXECUTOR_KARMA_ENCODING", false, |v| match v {
        "spec" => Ok(false),
        "as-built" => Ok(true),
        _ => Err("expected `spec` or `as-built`".into()),
    })?;
    let role = env.parse("EXECUTOR_KARMA_ROLE", "learner".to_owned(), |v| {
        if KARMA_ROLES.contains(&v) {
            Ok(v.to_owned())
        } else {
            Err(format!("`{v}` is not a role Karma accepts; expected one of {}", KARMA_ROLES.join(", ")))
        }
    })?;
    let (on_success, on_failure) =
        env.parse("EXECUTOR_KARMA_ACTIONS", (Some("completing_lessons".to_owned()), None), parse_action_table)?;
    Ok(if as_built { KarmaEncoding::AsBuilt { role, on_success, on_failure } } else { KarmaEncoding::Spec })
}

/// `success=ACTION,failed=ACTION` where ACTION is one of Karma's five or `none` (send nothing);
/// an outcome left out sends nothing.
fn parse_action_table(value: &str) -> Result<(Option<String>, Option<String>), String> {
    let (mut success, mut failed) = (None, None);
    let mut seen = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((outcome, action)) = entry.split_once('=').map(|(o, a)| (o.trim(), a.trim())) else {
            return Err(format!("`{entry}` is not OUTCOME=ACTION (e.g. success=completing_lessons,failed=none)"));
        };
        if seen.contains(&outcome) {
            return Err(format!("`{outcome}` is mapped twice"));
        }
        seen.push(outcome);
        let action = match action {
            "none" => None,
            a if KARMA_ACTIONS.contains(&a) => Some(a.to_owned()),
            a => {
                return Err(format!(
                    "`{a}` is not an action Karma accepts; expected one of {} or none",
                    KARMA_ACTIONS.join(", ")
                ));
            }
        };
        match outcome {
            "success" => success = action,
            "failed" | "failure" => failed = action,
            other => return Err(format!("unknown outcome `{other}`; expected success or failed")),
        }
    }
    Ok((success, failed))
}

/// The store selection: `EXECUTOR_STORE_URL`, else `DATABASE_URL`, else the embedded store.
fn store_settings<F: Fn(&str) -> Option<String>>(env: &Env<'_, F>) -> Result<StoreSettings, ConfigError> {
    let mut url = None;
    let mut url_variable = "EXECUTOR_STORE_URL";
    for variable in ["EXECUTOR_STORE_URL", "DATABASE_URL"] {
        let Some(value) = (env.0)(variable).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) else {
            continue;
        };
        if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
            let message = "expected a PostgreSQL URL (postgres://user:password@host:port/database)".into();
            return Err(ConfigError { variable, message });
        }
        (url, url_variable) = (Some(Secret::new(value)), variable);
        break;
    }
    Ok(StoreSettings {
        url,
        url_variable,
        pool_size: env.parse("EXECUTOR_STORE_POOL_SIZE", 8, parse_positive)?,
        lease: env.parse("EXECUTOR_STORE_LEASE", Duration::from_secs(10), parse_seconds)?,
        ca_file: (env.0)("EXECUTOR_STORE_CA_FILE").filter(|v| !v.trim().is_empty()).map(PathBuf::from),
    })
}

fn url(literal: &str) -> Url {
    Url::parse(literal).expect("default URLs are valid")
}

fn non_empty(value: &str) -> Result<&str, String> {
    if value.is_empty() { Err("must not be empty".into()) } else { Ok(value) }
}

fn parse_url(value: &str) -> Result<Url, String> {
    let parsed = Url::parse(value).map_err(|e| format!("not a URL ({e})"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(format!("scheme must be http or https, not `{other}`")),
    }
}

fn parse_path(value: &str) -> Result<String, String> {
    if value.starts_with('/') { Ok(value.to_owned()) } else { Err("must start with `/`".into()) }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_positive<T: FromStr + PartialOrd + Default>(value: &str) -> Result<T, String> {
    match value.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err("expected a positive whole number".into()),
    }
}

fn parse_seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 7.0 * 24.0 * 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| "expected a positive number of seconds, e.g. 2.0".into())
}

fn parse_seconds_or_zero(value: &str) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_seconds(value).map_err(|_| "expected zero or a positive number of seconds, e.g. 5".into()),
    }
}

fn parse_policy(value: &str) -> Result<FullPolicy, String> {
    match value {
        "reject" => Ok(FullPolicy::Reject),
        "drop_oldest" => Ok(FullPolicy::DropOldest),
        _ => Err("expected `reject` or `drop_oldest`".into()),
    }
}

fn parse_tokens(value: &str) -> Result<HashMap<String, Secret>, String> {
    let mut tokens: HashMap<String, Secret> = HashMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let shape = "expected `caller:token` pairs separated by commas (no spaces, one `:` each)";
        let (caller, token) = pair
            .split_once(':')
            .filter(|(c, t)| !c.is_empty() && !t.is_empty())
            .filter(|(c, t)| !t.contains(':') && !c.contains(char::is_whitespace) && !t.contains(char::is_whitespace))
            .ok_or_else(|| shape.to_owned())?;
        // One token per caller: a shared token would make the caller named in logs a guess.
        if tokens.values().any(|known| known.expose() == token) {
            return Err(format!("caller `{caller}` has the token of another caller; give each caller its own"));
        }
        if tokens.insert(caller.to_owned(), Secret::new(token)).is_some() {
            return Err(format!("caller `{caller}` is listed twice"));
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn span_export_is_off_without_an_endpoint_and_follows_the_otel_variables() {
        let off = settings(&[("OTEL_SERVICE_NAME", "x"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).expect("valid");
        assert_eq!(off.telemetry.endpoint, None);
        let on = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .expect("valid")
        .telemetry;
        assert_eq!(on.endpoint.expect("on").as_str(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(on.sampler, SamplerSetting::ParentBasedRatio(0.25));
        assert_eq!(on.service_name, "workflow-executor");
        let traces = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4318/custom"),
        ])
        .expect("valid");
        assert_eq!(traces.telemetry.endpoint.expect("on").as_str(), "http://b:4318/custom");
        for off in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")] {
            let settings = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"), off]).expect("valid");
            assert_eq!(settings.telemetry.endpoint, None, "{off:?}");
        }
    }

    #[test]
    fn bad_otel_settings_name_their_variable() {
        for (variable, value) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://collector:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x/v1/traces"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ("OTEL_TRACES_EXPORTER", "jaeger"),
            ("OTEL_SDK_DISABLED", "maybe"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            ("OTEL_SERVICE_NAME", ""),
        ] {
            let error = settings(&[(variable, value)]).expect_err(value);
            assert_eq!(error.variable, variable, "{value}: {error}");
        }
    }

    #[test]
    fn defaults_match_the_documented_ports_and_timeout() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!(s.bind.port(), 8003);
        assert_eq!(s.bucket.endpoint().as_str(), "http://127.0.0.1:8001/core/write-event");
        assert_eq!(s.karma.endpoint().as_str(), "http://127.0.0.1:8000/v1/event/");
        assert_eq!(s.delivery.attempt_timeout, Duration::from_secs(2));
        assert!(s.caller_tokens.is_empty());
    }

    #[test]
    fn a_postgres_url_selects_the_shared_store_and_bad_values_name_their_variable() {
        let s = settings(&[]).expect("valid");
        assert!(s.store.url.is_none(), "without a URL the embedded store is used");
        assert_eq!((s.store.pool_size, s.store.lease), (8, Duration::from_secs(10)));
        let s = settings(&[("DATABASE_URL", "postgres://u:pw@db/x")]).expect("valid");
        assert_eq!(
            (s.store.url.as_ref().map(Secret::expose), s.store.url_variable),
            (Some("postgres://u:pw@db/x"), "DATABASE_URL")
        );
        assert!(!format!("{s:?}").contains("pw@"), "the URL's password is not printed");
        let s = settings(&[("EXECUTOR_STORE_URL", "postgresql://a@b/c"), ("DATABASE_URL", "postgres://d@e/f")])
            .expect("valid");
        assert_eq!(s.store.url_variable, "EXECUTOR_STORE_URL");
        for (variable, value) in [
            ("EXECUTOR_STORE_URL", "mysql://x"),
            ("DATABASE_URL", "x"),
            ("EXECUTOR_STORE_POOL_SIZE", "0"),
            ("EXECUTOR_STORE_LEASE", "-1"),
        ] {
            let err = settings(&[(variable, value)]).expect_err("invalid");
            assert_eq!(err.variable, variable, "{err}");
        }
    }

    #[test]
    fn errors_name_the_variable() {
        let err = settings(&[("WORKFLOW_TIMEOUT", "soon")]).expect_err("invalid");
        assert_eq!(err.variable, "WORKFLOW_TIMEOUT");
        let err = settings(&[("BUCKET_URL", "ftp://x")]).expect_err("invalid");
        assert!(err.to_string().contains("BUCKET_URL"), "{err}");
        let err = settings(&[("EXECUTOR_CALLER_TOKENS", "core")]).expect_err("invalid");
        assert_eq!(err.variable, "EXECUTOR_CALLER_TOKENS");
    }

    #[test]
    fn port_binds_every_interface_when_executor_bind_is_unset() {
        let s = settings(&[("PORT", "9123")]).expect("valid");
        assert_eq!(s.bind, "0.0.0.0:9123".parse().expect("literal"));
        assert_eq!(s.bind_source, BindSource::Port);
        let s = settings(&[("PORT", "9123"), ("EXECUTOR_BIND", "127.0.0.1:9200")]).expect("valid");
        assert_eq!(s.bind, "127.0.0.1:9200".parse().expect("literal"));
        assert_eq!(s.bind_source.variable(), "EXECUTOR_BIND");
        let s = settings(&[]).expect("valid");
        assert_eq!(s.bind, "127.0.0.1:8003".parse().expect("literal"));
        assert_eq!(settings(&[("PORT", "http")]).expect_err("invalid").variable, "PORT");
    }

    #[test]
    fn connection_settings_have_platform_defaults_and_name_their_variable() {
        let s = settings(&[]).expect("valid");
        assert_eq!(s.connections.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.connections.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.connections.max_connections, 512);
        assert_eq!(s.connections.drain_delay, Duration::from_secs(5));
        assert_eq!(settings(&[("EXECUTOR_DRAIN_DELAY", "0")]).expect("valid").connections.drain_delay, Duration::ZERO);
        for variable in [
            "EXECUTOR_HEADER_READ_TIMEOUT",
            "EXECUTOR_IDLE_TIMEOUT",
            "EXECUTOR_MAX_CONNECTIONS",
            "EXECUTOR_DRAIN_DELAY",
        ] {
            let err = settings(&[(variable, "-1")]).expect_err("invalid");
            assert_eq!(err.variable, variable);
        }
        assert_eq!(
            settings(&[("EXECUTOR_MAX_CONNECTIONS", "1000000")]).expect_err("too many").variable,
            "EXECUTOR_MAX_CONNECTIONS"
        );
    }

    #[test]
    fn caller_tokens_are_one_token_per_caller_without_spaces_or_extra_colons() {
        for bad in ["core:t1,ops:t1", "core:to ken", "core:t:1", "co re:t1", "core"] {
            let err = settings(&[("EXECUTOR_CALLER_TOKENS", bad)]).expect_err(bad);
            assert_eq!(err.variable, "EXECUTOR_CALLER_TOKENS", "{bad}");
            assert!(!err.to_string().contains("t1"), "the message never prints a token: {err}");
        }
        let s = settings(&[("EXECUTOR_CALLER_TOKENS", "core:t1, ops:t2")]).expect("valid");
        assert_eq!(s.caller_tokens.len(), 2);
    }

    #[test]
    fn the_body_limit_is_bounded_to_16_mib() {
        assert!(settings(&[("EXECUTOR_MAX_BODY_BYTES", "16777216")]).is_ok());
        let err = settings(&[("EXECUTOR_MAX_BODY_BYTES", "16777217")]).expect_err("too large");
        assert_eq!(err.variable, "EXECUTOR_MAX_BODY_BYTES");
    }

    #[test]
    fn the_karma_encoding_defaults_to_spec_and_as_built_maps_only_success() {
        assert_eq!(settings(&[]).expect("valid").karma_encoding, KarmaEncoding::Spec);
        let s = settings(&[("EXECUTOR_KARMA_ENCODING", "as-built")]).expect("valid");
        assert_eq!(
            s.karma_encoding,
            KarmaEncoding::AsBuilt {
                role: "learner".into(),
                on_success: Some("completing_lessons".into()),
                on_failure: None
            }
        );
        let s = settings(&[
            ("EXECUTOR_KARMA_ENCODING", "as-built"),
            ("EXECUTOR_KARMA_ROLE", "seva"),
            ("EXECUTOR_KARMA_ACTIONS", "success=helping_peers, failed=cheat"),
        ])
        .expect("valid");
        assert_eq!(
            s.karma_encoding,
            KarmaEncoding::AsBuilt {
                role: "seva".into(),
                on_success: Some("helping_peers".into()),
                on_failure: Some("cheat".into())
            }
        );
    }

    #[test]
    fn bad_karma_settings_name_their_variable() {
        for (variable, value) in [
            ("EXECUTOR_KARMA_ENCODING", "legacy"),
            ("EXECUTOR_KARMA_ROLE", "user"),
            ("EXECUTOR_KARMA_ACTIONS", "success=workflow_success"),
            ("EXECUTOR_KARMA_ACTIONS", "succeeded=completing_lessons"),
            ("EXECUTOR_KARMA_ACTIONS", "success"),
            ("EXECUTOR_KARMA_ACTIONS", "success=none,success=cheat"),
        ] {
            let err = settings(&[(variable, value)]).expect_err(value);
            assert_eq!(err.variable, variable, "{err}");
        }
        let err = settings(&[("EXECUTOR_KARMA_ROLE", "user")]).expect_err("invalid");
        assert!(err.to_string().contains("learner, volunteer, seva, guru"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let s = settings(&[("EXECUTOR_CALLER_TOKENS", "core:hunter2"), ("AI_API_KEY", "sk-1")]).expect("valid");
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("sk-1"), "{printed}");
    }
}
