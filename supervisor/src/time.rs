//! Wall-clock timestamps for logs, history and events.

/// Now as RFC 3339 with milliseconds, UTC (`2026-11-22T01:02:03.456Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Sleeps until `t`, or forever when there is no `t` (an unarmed timer in a `select!`).
pub async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
