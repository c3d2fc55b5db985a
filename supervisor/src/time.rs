//! Wall-clock timestamps for logs, history and events.

/// Now as RFC 3339 with milliseconds, UTC (`2026-11-22T01:02:03.456Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
