//! Trace propagation: the caller's `trace_id` goes out on every outbound request.
//!
//! Two headers carry it: `X-Trace-Id` (the BHIV convention, the id verbatim) and a W3C
//! `traceparent`. W3C trace ids are 32 lowercase hex digits; Core mints UUIDs, so a UUID trace id
//! maps to its own hex digits and a downstream tracer shows the same id. Any other trace id is
//! hashed (SHA-256, first 16 bytes) so the mapping stays stable for the whole trace. The span id
//! is fresh for every outbound call, or, when spans are exported, the current span's (so the
//! provider or pillar sees the span that called it as parent).

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

/// `X-Trace-Id`.
pub const TRACE_ID_HEADER: &str = "x-trace-id";
/// W3C `traceparent`.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The longest accepted trace id.
pub const MAX_TRACE_ID_CHARS: usize = 128;

/// Whether `trace_id` is acceptable: 1..=128 characters of `[A-Za-z0-9._:-]`, which keeps it safe
/// in headers, log lines and store keys.
pub fn is_valid_trace_id(trace_id: &str) -> bool {
    !trace_id.is_empty()
        && trace_id.len() <= MAX_TRACE_ID_CHARS
        && trace_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The 32-hex-digit W3C trace id for a BHIV trace id.
pub fn w3c_trace_id(trace_id: &str) -> String {
    let hex: String = trace_id.chars().filter(|c| *c != '-').collect();
    if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && hex != "0".repeat(32) {
        return hex.to_ascii_lowercase();
    }
    let digest = Sha256::digest(trace_id.as_bytes());
    to_hex(&digest[..16])
}

/// A `traceparent` value for a new outbound span of `trace_id`.
pub fn traceparent(trace_id: &str) -> String {
    let span = fastrand::u64(1..=u64::MAX);
    format!("00-{}-{span:016x}-01", w3c_trace_id(trace_id))
}

/// Both trace headers for one outbound request.
pub fn trace_headers(trace_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(2);
    // Validated trace ids are always valid header values; anything else is sent hashed only.
    if let Ok(value) = HeaderValue::from_str(trace_id) {
        headers.insert(HeaderName::from_static(TRACE_ID_HEADER), value);
    }
    // With span export on, the current span (the provider call, the delivery attempt) is the
    // parent downstream services see.
    let parent = crate::telemetry::current_traceparent().unwrap_or_else(|| traceparent(trace_id));
    if let Ok(value) = HeaderValue::from_str(&parent) {
        headers.insert(HeaderName::from_static(TRACEPARENT_HEADER), value);
    }
    headers
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
    out
}

/// Lowercase hex of a byte string (used for fingerprints and ids).
pub(crate) fn hex(bytes: &[u8]) -> String {
    to_hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_trace_ids_keep_their_digits() {
        let id = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736";
        assert_eq!(w3c_trace_id(id), "4bf92f3577b34da6a3ce929d0e0e4736");
        let tp = traceparent(id);
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
        assert!(tp.ends_with("-01") && tp.len() == 55, "{tp}");
    }

    #[test]
    fn other_trace_ids_hash_stably() {
        assert_eq!(w3c_trace_id("trace-abc"), w3c_trace_id("trace-abc"));
        assert_ne!(w3c_trace_id("trace-abc"), w3c_trace_id("trace-abd"));
        assert_eq!(w3c_trace_id("trace-abc").len(), 32);
    }

    #[test]
    fn trace_id_charset_and_length_are_bounded() {
        assert!(is_valid_trace_id("core-123_abc.def:9"));
        assert!(!is_valid_trace_id(""));
        assert!(!is_valid_trace_id("has space"));
        assert!(!is_valid_trace_id("emoji-😀"));
        assert!(!is_valid_trace_id(&"a".repeat(129)));
    }
}
