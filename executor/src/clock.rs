//! The clock and ids: the only places that read the time or draw random ids, so every layer
//! formats them the same way.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Now, as RFC 3339 in UTC (`2026-11-25T15:14:42.123456789Z`).
pub fn now_rfc3339() -> String {
    // Into a buffer of the final size: `format` grows its output a few bytes at a time.
    let mut out = Vec::with_capacity(32);
    match time::OffsetDateTime::now_utc().format_into(&mut out, &time::format_description::well_known::Rfc3339) {
        Ok(_) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => String::from("1970-01-01T00:00:00Z"),
    }
}

/// A fresh random (version 4) UUID for event and message ids. Ids need uniqueness, not secrecy:
/// they come from the thread's fast generator, where `Uuid::new_v4` makes a system call each.
pub fn new_id() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

/// A fresh time-ordered (version 7) UUID, so ids created in sequence sort by time; random bits
/// as in [`new_id`].
pub fn new_time_ordered_id() -> uuid::Uuid {
    let random: [u8; 10] = fastrand::u128(..).to_le_bytes()[..10].try_into().expect("10 bytes");
    uuid::Builder::from_unix_timestamp_millis(now_ms(), &random).into_uuid()
}
