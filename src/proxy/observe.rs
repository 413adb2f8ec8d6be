//! The end of a request: its metrics and its access log line (see [`crate::access_log`]).
//! Runs in the `logging` phase, after the response finished or failed.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use pingora_error::Error;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::{arrived_over_tls, request_host};
use crate::access_log::Entry;
use crate::metrics::{Metrics, UpstreamTiming};
use crate::state::Shared;

/// Records a stage of the current upstream attempt (connect, first byte, end of body) in the
/// per-backend latency histograms.
pub fn upstream_timing(metrics: &Metrics, ctx: &RequestCtx, stage: UpstreamTiming) {
    let (Some((pool, index)), Some(started)) =
        (ctx.upstream.current(), ctx.observed.attempt_started)
    else {
        return;
    };
    metrics.observe_upstream_timing(
        &pool.name,
        &pool.backends[index].name,
        stage,
        started.elapsed().as_secs_f64(),
    );
}

/// The status the request ended with: the one sent, 499 (nginx's "client closed request")
/// when the request failed before an answer, 0 when nothing was sent.
fn final_status(session: &Session, e: Option<&Error>) -> u16 {
    match session.response_written() {
        Some(resp) => resp.status.as_u16(),
        None if e.is_some() => 499,
        None => 0,
    }
}

/// What the end of a request reports of its connection and response.
pub struct Finished<'a> {
    pub req: &'a RequestHeader,
    /// The status sent (see [`final_status`]).
    pub code: u16,
    pub tls: bool,
    pub h2: bool,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    /// The TCP peer (or the PROXY protocol source).
    pub peer: Option<IpAddr>,
    pub encoding: Option<&'a http::HeaderValue>,
    pub tls_version: Option<String>,
}

/// Records the request Pingora handled in the metrics and the access log.
pub fn finish(shared: &Shared, session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
    let downstream = session.as_downstream();
    let facts = Finished {
        req: session.req_header(),
        code: final_status(session, e),
        tls: arrived_over_tls(session),
        h2: downstream.is_http2(),
        bytes_read: downstream.body_bytes_read() as u64,
        bytes_sent: downstream.body_bytes_sent() as u64,
        peer: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        encoding: session
            .response_written()
            .and_then(|r| r.headers.get(http::header::CONTENT_ENCODING)),
        tls_version: downstream
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|s| s.version.to_string()),
    };
    record(shared, &facts, e, ctx);
}

/// Records a finished request in the metrics and the access log, whichever path served it.
pub fn record(shared: &Shared, facts: &Finished<'_>, e: Option<&Error>, ctx: &mut RequestCtx) {
    let code = facts.code;
    // The request is over: give the backend slot back before metrics work.
    ctx.upstream.attempt = None;
    shared.metrics.observe_protocol(facts.h2, facts.tls);
    let duration = ctx.started.elapsed();
    let seconds = duration.as_secs_f64();
    let bytes_sent = facts.bytes_sent;
    match ctx.series() {
        Some(series) => {
            shared
                .metrics
                .observe_route_sizes(series, facts.bytes_read, bytes_sent);
            shared.metrics.observe_route_request(series, code, seconds)
        }
        None => shared
            .metrics
            .observe_request("none", "none", code, seconds),
    }
    let Some(runtime) = ctx.runtime.as_ref() else {
        return;
    };
    let settings = &runtime.config.access_log;
    if !settings.enabled {
        return;
    }
    // 2xx and 3xx are sampled; every failure is logged.
    if code < 400 && settings.sample < 1.0 && rand::random::<f64>() >= settings.sample {
        return;
    }
    let req = facts.req;
    let header = |name: http::header::HeaderName| {
        req.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let upstream_ms = ctx.observed.upstream_ms.or_else(|| {
        ctx.observed
            .upstream_started
            .map(|t| Instant::now().duration_since(t).as_secs_f64() * 1000.0)
    });
    let entry = Entry {
        time: Some(SystemTime::now() - duration),
        client_ip: ctx.client_ip.or(facts.peer),
        method: req.method.as_str().to_string(),
        host: request_host(req).unwrap_or("").to_string(),
        path: req.uri.path().to_string(),
        query: req.uri.query().map(str::to_string),
        protocol: if facts.h2 { "HTTP/2.0" } else { "HTTP/1.1" },
        status: code,
        bytes_sent,
        duration,
        upstream: ctx.observed.upstream.clone(),
        upstream_status: ctx.observed.upstream_status,
        upstream_ms,
        cache: ctx.observed.cache,
        encoding: facts
            .encoding
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        route: ctx.series().map(|s| s.route().to_string()),
        request_id: Some(ctx.ids.request_id.clone()).filter(|id| !id.is_empty()),
        trace_id: Some(ctx.ids.trace_id.clone()).filter(|id| !id.is_empty()),
        tls_version: facts.tls_version.clone(),
        user_agent: header(http::header::USER_AGENT),
        referer: header(http::header::REFERER),
        error: e.map(|e| e.to_string()),
    };
    shared.access_log.log(entry);
}
