//! The runtime upstream API: `POST /upstreams/<name>/backends/<address>` sets a backend's
//! admin state (`ready`, `drain`, `maint`), `POST /upstreams/<name>/weights` sets weights
//! without a reload. Both act on the running pools; the state survives reloads while the
//! backend stays configured, the weights last until the next reload.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::json_reply;
use crate::config::MAX_WEIGHT;
use crate::state::Shared;
use crate::upstream::capacity::AdminState;
use crate::upstream::Pool;

/// What a request to `/upstreams/…` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Backend { upstream: String, backend: String },
    Weights { upstream: String },
}

/// Reads `/upstreams/<name>/backends/<address>` or `/upstreams/<name>/weights` (segments
/// percent-decoded, so `%5B%3A%3A1%5D%3A80` names `[::1]:80`).
pub fn target(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/upstreams/")?;
    let parts: Vec<String> = rest.split('/').map(decode).collect::<Option<_>>()?;
    match parts.as_slice() {
        [upstream, what, backend] if what == "backends" && !backend.is_empty() => {
            Some(Target::Backend {
                upstream: upstream.clone(),
                backend: backend.clone(),
            })
        }
        [upstream, what] if what == "weights" => Some(Target::Weights {
            upstream: upstream.clone(),
        }),
        _ => None,
    }
}

/// Percent-decodes one path segment; `None` when it is not valid UTF-8.
fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h)? * 16 + hex(l)?) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn error(status: StatusCode, message: String) -> Response<Vec<u8>> {
    json_reply(status, &json!({ "error": message }))
}

/// Applies `target` with the JSON `body` to the running pools.
pub fn apply(shared: &Shared, target: Target, body: &[u8]) -> Response<Vec<u8>> {
    let doc: Value = match serde_json::from_slice(body) {
        Ok(doc) => doc,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let runtime = shared.runtime();
    let name = match &target {
        Target::Backend { upstream, .. } | Target::Weights { upstream } => upstream,
    };
    let Some(pool) = runtime.pools.get(name) else {
        return error(StatusCode::NOT_FOUND, format!("no upstream `{name}`"));
    };
    match target {
        Target::Backend { backend, .. } => set_state(pool, &backend, &doc),
        Target::Weights { .. } => set_weights(pool, &doc),
    }
}

fn set_state(pool: &Pool, backend: &str, doc: &Value) -> Response<Vec<u8>> {
    let Some(index) = pool.backend_index(backend) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("upstream `{}` has no backend `{backend}`", pool.name),
        );
    };
    let state = doc
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("state"))
        .and_then(Value::as_str)
        .and_then(AdminState::parse);
    let Some(state) = state else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"state\": \"ready\" | \"drain\" | \"maint\"}".into(),
        );
    };
    let before = pool.set_admin_state(index, state);
    let b = &pool.backends[index];
    json_reply(
        StatusCode::OK,
        &json!({
            "upstream": pool.name,
            "backend": b.name,
            "admin_state": state.as_str(),
            "previous": before.as_str(),
            "in_flight": b.in_flight(),
        }),
    )
}

/// `{"<address>": <weight>, …}`: all checked before any is set.
fn set_weights(pool: &Pool, doc: &Value) -> Response<Vec<u8>> {
    let Some(entries) = doc.as_object().filter(|o| !o.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected an object like {\"10.0.0.1:8080\": 3}".into(),
        );
    };
    let mut changes = Vec::with_capacity(entries.len());
    for (backend, weight) in entries {
        let Some(index) = pool.backend_index(backend) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("upstream `{}` has no backend `{backend}`", pool.name),
            );
        };
        match weight.as_i64() {
            Some(w) if (1..=MAX_WEIGHT).contains(&w) => changes.push((index, w as u32)),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "weight of `{backend}`: {weight} is not a whole number from 1 to {MAX_WEIGHT} (to stop traffic, set the backend's state to drain)"
                    ),
                )
            }
        }
    }
    pool.set_weights(&changes);
    let weights: serde_json::Map<String, Value> = pool
        .backends
        .iter()
        .map(|b| (b.name.clone(), json!(b.weight())))
        .collect();
    json_reply(
        StatusCode::OK,
        &json!({"upstream": pool.name, "weights": weights}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            target("/upstreams/api/backends/10.0.0.1:80"),
            Some(Target::Backend {
                upstream: "api".into(),
                backend: "10.0.0.1:80".into()
            })
        );
        assert_eq!(
            target("/upstreams/api/backends/%5B%3A%3A1%5D%3A80"),
            Some(Target::Backend {
                upstream: "api".into(),
                backend: "[::1]:80".into()
            })
        );
        assert_eq!(
            target("/upstreams/api/weights"),
            Some(Target::Weights {
                upstream: "api".into()
            })
        );
        for bad in [
            "/upstreams/api",
            "/upstreams/api/backends/",
            "/upstreams/api/backends/a/b",
            "/upstreams/api/other",
            "/upstreams/%FF/weights",
        ] {
            assert_eq!(target(bad), None, "{bad}");
        }
    }
}
