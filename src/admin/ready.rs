//! `GET /ready`: whether this instance should receive traffic. Ready when the config is
//! loaded, the proxy listeners accept, no graceful shutdown has begun and every upstream
//! marked `required` (the default) has an available backend. `/health` stays liveness only.

use std::time::Duration;

use serde_json::{json, Value};

use crate::state::Shared;

/// How long a listener may take to accept the probe connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// `Ok` with the ready document, or `Err` with the reasons it is not ready.
pub async fn check(shared: &Shared) -> Result<Value, Value> {
    let runtime = shared.runtime();
    if shared.shutting_down() {
        return Err(json!({"ready": false, "reasons": ["shutting down"]}));
    }
    let mut reasons = Vec::new();
    let tls = runtime.config.tls.as_ref().map(|t| t.listen.as_slice());
    for addr in runtime
        .config
        .server
        .listen
        .iter()
        .chain(tls.unwrap_or(&[]))
    {
        let probe = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr));
        if !matches!(probe.await, Ok(Ok(_))) {
            reasons.push(format!("not listening on {addr}"));
        }
    }
    for (name, pool) in &runtime.pools {
        let required = runtime
            .config
            .upstreams
            .get(name)
            .is_some_and(|u| u.required);
        if required && !pool.backends.iter().any(|b| b.is_available()) {
            reasons.push(format!("upstream {name} has no healthy backend"));
        }
    }
    if reasons.is_empty() {
        Ok(json!({"ready": true, "version": runtime.version}))
    } else {
        Err(json!({"ready": false, "reasons": reasons}))
    }
}
