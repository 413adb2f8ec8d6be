//! The live parts of `/stats` the dashboard reads besides the counters: recent traffic
//! (latency quantiles, status classes), the last reloads, refused connections, and each
//! certificate's days to expiry.

use serde_json::{json, Map, Value};

use crate::state::Shared;

/// Whole days from `now` to `not_after` (both in seconds since the Unix epoch), rounded
/// down; negative once expired.
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Adds `traffic`, `reloads` and `connections_refused` to the `/stats` document.
pub fn add(doc: &mut Value, shared: &Shared) {
    let Some(doc) = doc.as_object_mut() else {
        return;
    };
    doc.insert("traffic".into(), shared.metrics.recent.stats());
    let reloads: Vec<Value> = shared
        .recent_reloads()
        .into_iter()
        .map(|r| {
            json!({
                "ok": r.ok,
                "error": r.error,
                "at": humantime::format_rfc3339_millis(r.at).to_string(),
                "trigger": r.trigger,
                "version": r.version,
            })
        })
        .collect();
    doc.insert("reloads".into(), Value::Array(reloads));
    let refused: Map<String, Value> = shared
        .refused_connections
        .rows()
        .into_iter()
        .map(|(reason, n)| (reason.to_string(), json!(n)))
        .collect();
    doc.insert("connections_refused".into(), Value::Object(refused));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_down_and_go_negative() {
        let now = 1_800_000_000;
        assert_eq!(days_left(now + 86_400 * 30 + 5, now), 30);
        assert_eq!(days_left(now + 86_399, now), 0);
        assert_eq!(days_left(now - 1, now), -1);
    }
}
