//! Request rejections and their one HTTP mapping.
//!
//! Every rejection has a stable body: `detail` for compatibility with the reference (a string,
//! or FastAPI's list of `{type, loc, msg}` for 422) next to a structured
//! `error: {code, message, field}`. Internal causes are logged where they happen and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::contract::{ErrorBody, ErrorInfo};

/// A request the executor refuses, with everything needed to answer it.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    detail: Option<Value>,
    retry_after_secs: Option<u64>,
    close: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: field.map(str::to_owned),
            detail: None,
            retry_after_secs: None,
            close: false,
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>, field: Option<&str>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message, field)
    }

    /// 422: the body is JSON but not the contract.
    pub fn invalid(code: &'static str, message: impl Into<String>, field: &str) -> Self {
        let message = message.into();
        let mut loc = vec![json!("body")];
        if field != "body" {
            loc.extend(field.split('.').map(|part| json!(part)));
        }
        let detail = json!([{"type": code, "loc": loc, "msg": message}]);
        Self { detail: Some(detail), ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message, Some(field)) }
    }

    /// 422: the query string is not what the route takes; located in `query`, not in `body`.
    pub fn invalid_query(code: &'static str, message: impl Into<String>, parameter: &str) -> Self {
        let message = message.into();
        let detail = json!([{"type": code, "loc": ["query", parameter], "msg": message}]);
        let field = format!("query.{parameter}");
        Self { detail: Some(detail), ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message, Some(&field)) }
    }

    /// 400 `missing_workflow_payload`, exactly as the reference answers it.
    pub fn missing_payload() -> Self {
        Self::bad_request(
            "missing_workflow_payload",
            "decision is workflow but data.payload is missing or empty",
            Some("data.payload"),
        )
        .with_detail(json!("missing_workflow_payload"))
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("request body exceeds {limit} bytes"), None)
    }

    /// 415.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
            None,
        )
    }

    /// 401: no credentials.
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "missing_token", "an Authorization: Bearer token is required", None)
    }

    /// 403: wrong credentials.
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "invalid_token", "the caller token is not valid", None)
    }

    /// 409: the same request is being executed right now.
    pub fn in_progress() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "execution_in_progress",
            "an identical request is being executed; retry later for its result",
            None,
        )
        .with_retry_after(1)
    }

    /// 422: an `Idempotency-Key` reused with another request.
    pub fn key_reused() -> Self {
        Self::invalid(
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
            "Idempotency-Key",
        )
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message, None).with_retry_after(retry_after_secs)
    }

    /// 503 `store_unavailable`: the store cannot record; nothing was executed, or the outcome
    /// is kept and recorded when the store can write again (a retry then replays it).
    pub fn store_unavailable(outcome_kept: bool) -> Self {
        let message = if outcome_kept {
            "the execution's outcome could not be recorded yet; it is recorded as soon as the store can write, and \
             a retry then returns it"
        } else {
            "the executor cannot record executions right now; nothing was executed"
        };
        Self::unavailable("store_unavailable", message, 5)
    }

    /// 500 for a failure of our own (store); the cause is logged by the caller.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the executor could not record this execution",
            None,
        )
    }

    /// 404 for unknown routes.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route", None)
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route", None)
    }

    /// Asks for the connection to be closed after this answer (`Connection: close`), e.g. when
    /// the rest of the request was not read.
    pub fn closing(mut self, close: bool) -> Self {
        self.close = close;
        self
    }

    fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            detail: self.detail.unwrap_or_else(|| json!(self.message)),
            error: ErrorInfo { code: self.code.to_owned(), message: self.message, field: self.field },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.close {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<crate::execution::ExecutionError> for ApiError {
    fn from(error: crate::execution::ExecutionError) -> Self {
        use crate::execution::ExecutionError;
        match error {
            ExecutionError::InProgress => Self::in_progress(),
            ExecutionError::KeyReused => Self::key_reused(),
            ExecutionError::OutboxFull { sink } => Self::unavailable(
                "audit_spool_full",
                format!("the {sink} outbox is full; executions resume when it drains"),
                5,
            ),
            ExecutionError::StoreUnavailable { outcome_kept, .. } => Self::store_unavailable(outcome_kept),
        }
    }
}
