//! The admin listener: `GET /health`, `GET /ready`, `GET /stats` (JSON) and `GET /metrics` (Prometheus),
//! behind a bearer token when one is configured, and the live dashboard page (`GET /`).

mod backends;
mod cache;
mod dashboard;
mod guard;
mod live;
mod ready;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::cache::purge::{PurgeMatch, MAX_PATTERN_WILDCARDS};
use crate::cache::Lookup;
use crate::digest::constant_time_eq;
use crate::reload::{self, ReloadError};
use crate::state::{Runtime, Shared};

/// Serves the admin API from the shared state.
pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Admin {
        Admin { shared }
    }

    /// The `/stats` document.
    pub fn stats(&self) -> Value {
        self.stats_for(None)
    }

    /// The `/stats` document; with `route`, only that route and its upstream.
    pub fn stats_for(&self, route: Option<&str>) -> Value {
        let runtime = self.shared.runtime();
        let only = route.and_then(|r| {
            runtime
                .route_series
                .iter()
                .find(|s| s.route() == r)
                .map(|s| s.upstream().to_string())
        });
        let upstreams: serde_json::Map<String, Value> = runtime
            .pools
            .iter()
            .filter(|(name, _)| route.is_none() || only.as_deref() == Some(name.as_str()))
            .map(|(name, pool)| {
                let backends: Vec<Value> = pool
                    .backends
                    .iter()
                    .map(|b| {
                        json!({
                            "address": b.name,
                            "weight": b.weight(),
                            "effective_weight": f64::from(b.capacity.effective()) / 10.0,
                            "admin_state": b.admin_state().as_str(),
                            "max_conns": b.capacity.max_conns(),
                            "backup": b.is_backup(),
                            "healthy": b.is_healthy(),
                            "ejected": b.is_ejected(),
                            "ejections_total": b.ejections_total(),
                            "in_flight": b.in_flight(),
                            "requests_total": b.requests_total(),
                            "failures_total": b.failures_total(),
                        })
                    })
                    .collect();
                (
                    name.clone(),
                    json!({
                        "strategy": pool.strategy.as_str(),
                        "health_check": pool.health_check.is_some(),
                        "sticky": pool.sticky.is_some(),
                        "max_in_flight": pool.max_in_flight,
                        "overloaded_total": pool.overloaded(),
                        "slow_start_seconds": pool.capacity.slow_start.map(|d| d.as_secs_f64()),
                        "queue": pool.capacity.queue.as_ref().map(|q| json!({
                            "size": q.size,
                            "timeout_seconds": q.timeout.as_secs_f64(),
                            "length": pool.waiters.len(),
                            "timeouts_total": pool.waiters.timeouts(),
                            "full_total": pool.waiters.rejected(),
                        })),
                        "keepalive": {
                            "idle": pool.capacity.keepalive.idle,
                            "idle_timeout_seconds": pool.capacity.keepalive.idle_timeout.as_secs_f64(),
                        },
                        "backends": backends,
                        "discovery": self.shared.discovery.json(name),
                    }),
                )
            })
            .collect();
        let draining: Vec<Value> = runtime
            .draining
            .iter()
            .filter(|(_, b)| b.in_flight() > 0)
            .map(|(upstream, b)| {
                json!({"upstream": upstream, "address": b.name, "in_flight": b.in_flight()})
            })
            .collect();
        let last_reload = self.shared.last_reload().map(|r| {
            json!({
                "ok": r.ok,
                "error": r.error,
                "at": humantime::format_rfc3339_millis(r.at).to_string(),
            })
        });
        let routes: Vec<Value> = runtime
            .route_series
            .iter()
            .zip(&runtime.config.routes)
            .filter(|(series, _)| route.is_none_or(|r| series.route() == r))
            .map(|(series, route)| {
                let mut cache = serde_json::Map::new();
                let (mut served, mut lookups) = (0, 0);
                for (lookup, n) in series.lookups() {
                    cache.insert(lookup.as_str().to_string(), json!(n));
                    if matches!(lookup, Lookup::Hit | Lookup::Stale | Lookup::Revalidated) {
                        served += n;
                    }
                    if lookup != Lookup::Bypass {
                        lookups += n;
                    }
                }
                let ratio = if lookups == 0 {
                    0.0
                } else {
                    served as f64 / lookups as f64
                };
                cache.insert("hit_ratio".into(), json!(ratio));
                let refused: serde_json::Map<String, Value> = series
                    .refused()
                    .map(|(reason, n)| (reason.as_str().to_string(), json!(n)))
                    .collect();
                json!({
                    "refused": refused,
                    "route": series.route(),
                    "upstream": series.upstream(),
                    "cache": route.cache.is_some().then_some(Value::Object(cache)),
                })
            })
            .collect();
        let tls = runtime.config.tls.as_ref().map(|tls| {
            let certificates: Vec<Value> = tls
                .certificates
                .iter()
                .map(|c| {
                    json!({
                        "names": c.names,
                        "not_after": c.expires(),
                        "days_left": live::days_left(c.not_after, live::unix_now()),
                        "cert": c.cert_path.as_ref().map(|p| p.display().to_string()),
                        "key": c.key_path.as_ref().map(|p| p.display().to_string()),
                    })
                })
                .collect();
            json!({
                "listen": tls.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "default_certificate": tls.default_certificate,
                "certificates": certificates,
            })
        });
        let mut doc = json!({
            "version": runtime.version,
            "routes": routes,
            "tls": tls,
            "uptime_seconds": self.shared.started.elapsed().as_secs_f64(),
            "requests_total": self.shared.requests_total(),
            "active_requests": self.shared.active_requests(),
            "refused_connections": self.shared.refused_connections.total(),
            "config_file": self.shared.config_path.as_ref().map(|p| p.display().to_string()),
            "last_reload": last_reload,
            "health_check_tasks": self.shared.health_tasks(),
            "upstreams": upstreams,
            "draining": draining,
            "cache": self.shared.cache.stats(),
            "rate_limits": rate_limits(&runtime),
            "compression": self
                .shared
                .compression
                .snapshot()
                .into_iter()
                .map(|(name, responses, bytes_in, bytes_out)| {
                    (
                        name.to_string(),
                        json!({"responses": responses, "bytes_in": bytes_in, "bytes_out": bytes_out}),
                    )
                })
                .collect::<serde_json::Map<String, Value>>(),
        });
        live::add(&mut doc, &self.shared);
        doc
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let runtime = self.shared.runtime();
        let Some(token) = runtime.config.admin.token.as_deref() else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()))
    }
}

/// `/stats` `rate_limits`: the cluster limits' Redis state (`null` when no route counts in the
/// cluster).
fn rate_limits(runtime: &Runtime) -> Value {
    let Some(cluster) = &runtime.cluster else {
        return json!({ "cluster": null });
    };
    let stats = &crate::policy::cluster::STATS;
    json!({
        "cluster": {
            "key_prefix": cluster.conf().key_prefix,
            "connected": stats.connected.load(Ordering::Relaxed),
            "checks": stats.checks.load(Ordering::Relaxed),
            "fallbacks": stats.fallbacks.load(Ordering::Relaxed),
        }
    })
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    reply(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn json_reply(status: StatusCode, value: &Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let allowed: &[Method] = match path.as_str() {
            "/health" | "/ready" | "/stats" | "/metrics" | "/cache/entry" | "/cache/top" | "/"
            | "/dashboard" => &[Method::GET, Method::HEAD],
            "/reload" | "/cache/purge" => &[Method::POST],
            p if backends::target(p).is_some() => &[Method::POST],
            _ => return text(StatusCode::NOT_FOUND, "404 Not Found\n"),
        };
        if path != "/health" {
            let runtime = self.shared.runtime();
            let admin = &runtime.config.admin;
            let headers = &session.req_header().headers;
            let checked = guard::check_host(headers, admin.listen, &admin.hosts).and_then(|()| {
                if allowed.contains(&Method::POST) {
                    guard::check_mutation(headers)
                } else {
                    Ok(())
                }
            });
            if let Err(refused) = checked {
                log::warn!("admin {method} {path} refused: {refused}");
                return text(refused.status(), &format!("{refused}\n"));
            }
        }
        let authorized = self.authorized(session);
        // An orchestrator's readiness probe holds no token: it gets the verdict alone.
        if path == "/ready" && !authorized {
            let ready = ready::check(&self.shared).await.is_ok();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return json_reply(status, &json!({ "ready": ready }));
        }
        // The page holds no data: it asks for the token and sends it on its own requests.
        let page = path == "/" || path == "/dashboard";
        if path != "/health" && !page && !authorized {
            let mut resp = text(
                StatusCode::UNAUTHORIZED,
                "401 Unauthorized: bearer token required\n",
            );
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"switchyard-admin\""),
            );
            return resp;
        }
        if !allowed.contains(&method) {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(value) = http::HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(http::header::ALLOW, value);
            }
            return resp;
        }
        match path.as_str() {
            "/health" => text(StatusCode::OK, "ok"),
            "/" | "/dashboard" => dashboard::page(method == Method::HEAD),
            "/ready" => match ready::check(&self.shared).await {
                Ok(doc) => json_reply(StatusCode::OK, &doc),
                Err(doc) => json_reply(StatusCode::SERVICE_UNAVAILABLE, &doc),
            },
            "/stats" => {
                let route = cache::query_param(session.req_header().uri.query(), "route");
                json_reply(StatusCode::OK, &self.stats_for(route.as_deref()))
            }
            "/reload" => self.reload().await,
            p if p.starts_with("/upstreams/") => match backends::target(p) {
                Some(target) => match read_body(session).await {
                    Ok(body) => backends::apply(&self.shared, target, &body),
                    Err(e) => json_reply(StatusCode::BAD_REQUEST, &json!({ "error": e })),
                },
                None => text(StatusCode::NOT_FOUND, "404 Not Found\n"),
            },
            "/cache/purge" => self.purge(session).await,
            "/cache/entry" => {
                let query = session.req_header().uri.query();
                match cache::query_param(query, "key").filter(|k| !k.is_empty()) {
                    Some(key) => {
                        json_reply(StatusCode::OK, &cache::entry(&self.shared.cache, &key))
                    }
                    None => json_reply(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "give the key: /cache/entry?key=<host><path?query>"}),
                    ),
                }
            }
            "/cache/top" => {
                let query = session.req_header().uri.query();
                let n = cache::query_param(query, "n")
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(20)
                    .clamp(1, 256);
                json_reply(StatusCode::OK, &cache::top(&self.shared.cache, n))
            }
            _ => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.shared.render_metrics().into_bytes(),
            ),
        }
    }
}

/// Largest request body the admin endpoint reads.
const MAX_ADMIN_BODY: usize = 64 << 10;

/// Reads a small request body.
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ADMIN_BODY {
                    return Err(format!("body larger than {MAX_ADMIN_BODY} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("cannot read the body: {e}")),
        }
    }
}

/// `{"key": …}`, `{"prefix": …}`, `{"tag": …}` or `{"pattern": …}` (a glob: `*` within a
/// path segment, `**` across segments).
fn purge_target(body: &[u8]) -> Result<PurgeMatch, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = doc
        .as_object()
        .ok_or("expected an object like {\"key\": \"host/path\"}")?;
    if obj.len() != 1 {
        return Err("give exactly one of key, prefix, tag or pattern".into());
    }
    let (kind, value) = obj.iter().next().ok_or("empty object")?;
    let value = value
        .as_str()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{kind} must be a non-empty string"))?
        .to_string();
    match kind.as_str() {
        "key" => Ok(PurgeMatch::Key(value)),
        "prefix" => Ok(PurgeMatch::Prefix(value)),
        "tag" => Ok(PurgeMatch::Tag(value)),
        "pattern" if value.matches('*').count() > MAX_PATTERN_WILDCARDS => {
            Err(format!("pattern has more than {MAX_PATTERN_WILDCARDS} `*`"))
        }
        "pattern" => Ok(PurgeMatch::Pattern(value)),
        other => Err(format!(
            "unknown field `{other}`; give key, prefix, tag or pattern"
        )),
    }
}

impl Admin {
    /// `POST /cache/purge`: removes what the body names; answers `{"purged": n}`, or 503 with
    /// what was done when the shared tier could not complete it.
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let target = match read_body(session).await.and_then(|b| purge_target(&b)) {
            Ok(t) => t,
            Err(e) => return json_reply(StatusCode::BAD_REQUEST, &json!({ "error": e })),
        };
        let (purged, shared) = self.shared.cache.purge(target.clone()).await;
        let mut body = json!({ "purged": purged });
        let Some(shared) = shared else {
            log::info!("cache purge {target:?}: {purged} entries");
            return json_reply(StatusCode::OK, &body);
        };
        body["redis_deleted"] = json!(shared.deleted);
        if shared.complete() {
            log::info!(
                "cache purge {target:?}: {purged} entries in memory, {} in redis",
                shared.deleted
            );
            return json_reply(StatusCode::OK, &body);
        }
        // Partial: say what was done, and that the purge must be repeated.
        log::warn!(
            "cache purge {target:?} incomplete ({} failed): {purged} entries in memory, {} in redis",
            shared.failed.join(", "),
            shared.deleted
        );
        body["incomplete"] = json!(shared.failed);
        body["error"] = json!("the shared tier did not complete the purge; repeat it");
        json_reply(StatusCode::SERVICE_UNAVAILABLE, &body)
    }

    /// `POST /reload`: 200 with the new version and what changed, or 422 with the error.
    async fn reload(&self) -> Response<Vec<u8>> {
        let shared = Arc::clone(&self.shared);
        let result = tokio::task::spawn_blocking(move || reload::reload(&shared, "admin")).await;
        match result {
            Ok(Ok(outcome)) => json_reply(StatusCode::OK, &json!(outcome)),
            Ok(Err(e @ ReloadError::NoFile)) => {
                json_reply(StatusCode::CONFLICT, &json!({ "error": e.to_string() }))
            }
            Ok(Err(e)) => json_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "error": e.to_string() }),
            ),
            Err(e) => json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "error": format!("reload task failed: {e}") }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_bodies() {
        assert!(matches!(purge_target(br#"{"key": "h/a"}"#), Ok(PurgeMatch::Key(k)) if k == "h/a"));
        assert!(matches!(
            purge_target(br#"{"pattern": "h/*/x"}"#),
            Ok(PurgeMatch::Pattern(p)) if p == "h/*/x"
        ));
        assert!(matches!(
            purge_target(br#"{"prefix": "h/"}"#),
            Ok(PurgeMatch::Prefix(_))
        ));
        assert!(matches!(
            purge_target(br#"{"tag": "t1"}"#),
            Ok(PurgeMatch::Tag(_))
        ));
        for bad in [
            &b"nope"[..],
            br#"[]"#,
            br#"{}"#,
            br#"{"key": ""}"#,
            br#"{"key": 1}"#,
            br#"{"url": "x"}"#,
            br#"{"key": "a", "tag": "b"}"#,
        ] {
            assert!(
                purge_target(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
