//! The proxy's side of traffic policy: normalises the path, works out the client IP, and
//! applies the body limit, access rules, rate limits, basic auth, the upstream path rewrite and
//! header rules (`crate::policy`) to a routed request.

use std::net::IpAddr;

use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::client;
use super::ctx::RequestCtx;
use super::errors;
use super::limits;
use super::trace;
use crate::config::Scope;
use crate::metrics::Metrics;
use crate::policy::headers::{self, Vars};
use crate::policy::normalize::normalize;
use crate::policy::url::{self, UrlVars};
use crate::policy::{self, auth, rate, Refusal};

/// Rewrites the request path into its normal form (forwarded as such). `false`: the path has
/// a broken escape; the caller answers 400.
pub fn normalise_path(req: &mut RequestHeader) -> bool {
    let path = req.uri.path();
    let normal = match normalize(path) {
        Ok(std::borrow::Cow::Borrowed(_)) => return true,
        Ok(std::borrow::Cow::Owned(normal)) => normal,
        Err(_) => return false,
    };
    let target = match req.uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = req.uri.clone().into_parts();
    let Ok(pq) = http::uri::PathAndQuery::try_from(target) else {
        return false;
    };
    parts.path_and_query = Some(pq);
    match http::Uri::from_parts(parts) {
        Ok(uri) => {
            req.set_uri(uri);
            true
        }
        Err(_) => false,
    }
}

/// What the policy says of a routed request.
pub enum Verdict {
    Admit,
    /// The declared body is over the limit.
    TooLarge(limits::Refusal),
    Access,
    /// Over the rate limit: the `RateLimit` fields of the answer.
    RateLimited([(&'static str, String); 3]),
    /// No valid credentials: the challenge.
    Auth(String),
}

/// The declared body size, access rules, the route's rate limit, then its basic auth. An
/// admitted request has taken its share of the rate limit; a refused one has taken nothing.
pub async fn verdict(req: &RequestHeader, ctx: &RequestCtx) -> Verdict {
    if let Err(refusal) = limits::body_length(req, ctx.max_body_size()) {
        return Verdict::TooLarge(refusal);
    }
    let (Some(runtime), Some(ip)) = (&ctx.runtime, ctx.client_ip) else {
        return Verdict::Admit;
    };
    if !policy::admits(&runtime.config.server, ctx.route(), ip) {
        return Verdict::Access;
    }
    let Some(index) = ctx.route else {
        return Verdict::Admit;
    };
    if let Some(limiter) = runtime.limiters.get(index).and_then(Option::as_ref) {
        let limit = limiter.limit();
        let key = rate::key_of(&limit.key, &req.headers, ip);
        let cluster = runtime
            .cluster
            .as_ref()
            .filter(|_| limit.scope == Scope::Cluster);
        let verdict = match (cluster, ctx.series()) {
            (Some(cluster), Some(series)) => cluster.check(limiter, series.route(), key).await,
            _ => limiter.check(key),
        };
        if let Err(wait) = verdict {
            return Verdict::RateLimited(rate::refusal_fields(limit, wait));
        }
    }
    let Some(basic) = ctx.route().and_then(|r| r.basic_auth.as_ref()) else {
        return Verdict::Admit;
    };
    if auth::admits(basic, &runtime.verified, index, &req.headers).await {
        return Verdict::Admit;
    }
    Verdict::Auth(basic.challenge.clone())
}

/// Answers what [`verdict`] refuses. `Ok(true)`: the request was answered (413, 403, 429 or
/// 401) and goes no further: no upstream, no cache lookup.
pub async fn refuse(session: &mut Session, ctx: &RequestCtx, metrics: &Metrics) -> Result<bool> {
    match verdict(session.req_header(), ctx).await {
        Verdict::Admit => Ok(false),
        Verdict::TooLarge(refusal) => {
            // The body stays unread: the connection cannot carry another request.
            session.set_keepalive(None);
            errors::respond(session, refusal.status(), &refusal.to_string(), ctx.reply()).await?;
            Ok(true)
        }
        Verdict::Access => {
            metrics.observe_refused(ctx.series(), Refusal::Access);
            errors::respond(session, 403, "refused by access rules", ctx.reply()).await?;
            Ok(true)
        }
        Verdict::RateLimited(fields) => {
            metrics.observe_refused(ctx.series(), Refusal::RateLimit);
            errors::respond_with(session, 429, "rate limit exceeded", ctx.reply(), &fields).await?;
            Ok(true)
        }
        Verdict::Auth(challenge) => {
            metrics.observe_refused(ctx.series(), Refusal::Auth);
            let challenge = [("www-authenticate", challenge)];
            errors::respond_with(
                session,
                401,
                "credentials required",
                ctx.reply(),
                &challenge,
            )
            .await?;
            Ok(true)
        }
    }
}

/// The variables of header rules; `$request_id` is the request's id (kept from a trusted peer
/// or made here, see `trace.rs`), not whatever a client sent.
fn vars<'a>(ctx: &'a RequestCtx, host: &'a str) -> Vars<'a> {
    Vars {
        client_ip: ctx.client_ip,
        host,
        request_id: ctx.ids.request_id.as_str(),
        scheme: if ctx.tls { "https" } else { "http" },
    }
}

/// The route's `strip_prefix` or `rewrite`, and `upstream_host`, on the request going upstream
/// (the client's request, and so the cache key, keeps its path and host). The credentials that
/// `basic_auth` checked are not forwarded.
pub fn rewrite_upstream(
    upstream_req: &mut RequestHeader,
    ctx: &RequestCtx,
    host: &str,
) -> Result<()> {
    let Some(route) = ctx.route() else {
        return Ok(());
    };
    let path = upstream_req.uri.path();
    let new_path = if let Some(prefix) = &route.strip_prefix {
        path.strip_prefix(prefix.as_str())
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .map(|rest| if rest.is_empty() { "/" } else { rest }.to_string())
    } else if let Some(rewrite) = &route.rewrite {
        let host = crate::route::strip_port(host).to_ascii_lowercase();
        let vars = UrlVars {
            host: &host,
            path,
            query: None,
        };
        url::rewrite(rewrite, &vars)
    } else {
        None
    };
    if let Some(path) = new_path {
        let target = match upstream_req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = upstream_req.uri.clone().into_parts();
        let uri = http::uri::PathAndQuery::try_from(target)
            .map_err(http::Error::from)
            .and_then(|pq| {
                parts.path_and_query = Some(pq);
                http::Uri::from_parts(parts).map_err(http::Error::from)
            });
        match uri {
            Ok(uri) => upstream_req.set_uri(uri),
            Err(e) => log::warn!("the upstream path rewrite gave no valid target: {e}"),
        }
    }
    if let Some(host) = &route.upstream_host {
        upstream_req.insert_header(http::header::HOST, host.as_str())?;
    }
    if route.basic_auth.is_some() {
        upstream_req.remove_header(&http::header::AUTHORIZATION);
    }
    Ok(())
}

/// `server.request_headers`, then the route's, on the request going upstream.
pub fn on_upstream_request(
    upstream_req: &mut RequestHeader,
    ctx: &RequestCtx,
    host: &str,
) -> Result<()> {
    let Some(runtime) = &ctx.runtime else {
        return Ok(());
    };
    let vars = vars(ctx, host);
    headers::apply(&runtime.config.server.request_headers, upstream_req, &vars)?;
    if let Some(route) = ctx.route() {
        headers::apply(&route.request_headers, upstream_req, &vars)?;
    }
    Ok(())
}

/// `server.response_headers`, then the route's, on every response (cache hits included).
pub fn on_response(resp: &mut ResponseHeader, ctx: &RequestCtx, host: &str) -> Result<()> {
    let Some(runtime) = &ctx.runtime else {
        return Ok(());
    };
    let route = ctx.route();
    if runtime.config.server.response_headers.is_empty()
        && route.is_none_or(|r| r.response_headers.is_empty())
    {
        return Ok(());
    }
    let vars = vars(ctx, host);
    headers::apply(&runtime.config.server.response_headers, resp, &vars)?;
    if let Some(route) = route {
        headers::apply(&route.response_headers, resp, &vars)?;
    }
    Ok(())
}

/// Sets the request's ids and the client's address (`RequestCtx::client_ip`: the TCP peer or
/// the PROXY protocol source, or behind trusted proxies the right-most untrusted
/// `X-Forwarded-For` element), trusting the peer's `X-Request-Id` and `X-Forwarded-For` only
/// when it is one of `trusted_proxies`.
pub fn identify(session: &Session, trusted_proxies: &[ipnet::IpNet], ctx: &mut RequestCtx) {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    identify_request(session.req_header(), peer, trusted_proxies, ctx);
}

/// [`identify`] for a request read from the TCP `peer` (or the PROXY protocol source).
pub fn identify_request(
    req: &RequestHeader,
    peer: Option<IpAddr>,
    trusted_proxies: &[ipnet::IpNet],
    ctx: &mut RequestCtx,
) {
    let trusted = peer.is_some_and(|ip| client::is_trusted(ip, trusted_proxies));
    ctx.ids = trace::ids(req, trusted);
    ctx.client_ip =
        peer.map(|ip| client::client_ip(ip, &client::forwarded_for(req), trusted_proxies));
}
