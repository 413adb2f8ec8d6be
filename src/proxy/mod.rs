//! The `ProxyHttp` implementation. Each phase only dispatches to the module that owns the
//! concern: routing, balancing, header rewriting, errors, metrics.

pub mod balance;
pub mod client;
pub mod ctx;
pub mod encoding;
pub mod errors;
pub mod frontend;
pub mod gate;
pub mod h2_streams;
pub mod handshake;
pub mod headers;
pub mod hit;
pub mod limits;
pub mod observe;
pub mod proxy_protocol;
pub mod reader;
pub mod redirect;
pub mod refusals;
pub mod retry;
pub mod trace;

use std::sync::Arc;

use async_trait::async_trait;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora_core::modules::http::HttpModules;
use pingora_core::protocols::Digest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::cache::{self, Cache};
use crate::etag;
use crate::fields;
use crate::metrics::UpstreamTiming;
use crate::route;
use crate::state::Shared;
use ctx::RequestCtx;

/// How long a request body may pause between reads.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The proxy: routes a request, picks a backend and forwards to it.
pub struct Proxy {
    shared: Arc<Shared>,
    /// HTTP/2 handlers in flight per connection, shared with the front end.
    streams: Arc<h2_streams::H2Streams>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, streams: Arc<h2_streams::H2Streams>) -> Proxy {
        Proxy { shared, streams }
    }
}

/// The Host the client asked for: the `Host` header, or the authority of an absolute URI.
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The route of `req`, whose path is already in normal form (`gate::normalise_path`).
fn route_of<'r>(
    router: &'r route::Router,
    req: &RequestHeader,
) -> Option<(usize, &'r crate::config::Route)> {
    router.find(&route::Request {
        host: request_host(req).unwrap_or(""),
        path: req.uri.path(),
        query: req.uri.query(),
        method: &req.method,
        headers: &req.headers,
    })
}

/// Whether the client's connection is TLS.
fn arrived_over_tls(session: &Session) -> bool {
    session
        .as_downstream()
        .digest()
        .is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.shared.begin_request())
    }

    /// No Pingora modules: compression is our own (`compress`), so Pingora's disabled
    /// compression module would only cost an allocation and a call per phase per request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let runtime = self.shared.runtime();
        ctx.tls = arrived_over_tls(session);
        if h2_streams::flooded(&self.streams, session.as_downstream()) {
            ctx.runtime = Some(runtime);
            let reason = "too many HTTP/2 streams in flight on this connection";
            errors::respond(session, 429, reason, ctx.reply()).await?;
            return Ok(true);
        }
        gate::identify(session, &runtime.config.server.trusted_proxies, ctx);
        let raw = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        if let Err(refusal) =
            limits::check(session.req_header(), raw.as_deref(), &runtime.config.server)
        {
            ctx.runtime = Some(runtime);
            // The request may be framed ambiguously: never read another from this connection.
            session.set_keepalive(None);
            let reason = refusal.to_string();
            errors::respond(session, refusal.status(), &reason, ctx.reply()).await?;
            return Ok(true);
        }
        // After the header, reads wait as long as a slow upload may pause.
        session.set_read_timeout(Some(BODY_READ_TIMEOUT));
        if !gate::normalise_path(session.req_header_mut()) {
            ctx.runtime = Some(runtime);
            errors::respond(
                session,
                400,
                "malformed percent-escape in the path",
                ctx.reply(),
            )
            .await?;
            return Ok(true);
        }
        let found = route_of(&runtime.router, session.req_header())
            .map(|(index, route)| (index, runtime.pools.get(&route.upstream).cloned()));
        ctx.runtime = Some(runtime);
        ctx.route = found.as_ref().map(|(index, _)| *index);
        // Body size, access, rate limit and basic auth come before anything else answers.
        if gate::refuse(session, ctx, &self.shared.metrics).await? {
            return Ok(true);
        }
        match found {
            Some(_) if !ctx.tls && ctx.route().is_some_and(|r| r.https_redirect) => {
                redirect::to_https(session, ctx).await?;
                Ok(true)
            }
            Some(_) if ctx.route().is_some_and(|r| r.redirect.is_some()) => {
                redirect::answer(session, ctx).await?;
                Ok(true)
            }
            Some((_, pool)) => {
                ctx.upstream.pool = pool;
                balance::prepare(session, ctx);
                Ok(false)
            }
            None => {
                errors::respond(session, 404, errors::detail_for(404), ctx.reply()).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > ctx.max_body_size() {
                let why = "request body larger than max_body_size (the route's or the server's)";
                return Err(Error::explain(ErrorType::HTTPStatus(413), why));
            }
        }
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let max_object_size = ctx
            .runtime
            .as_ref()
            .map_or(0, |rt| rt.config.cache.max_object_size);
        let route = ctx.route_cache().cloned();
        self.shared
            .cache
            .on_request(session, route.as_ref(), max_object_size, &mut ctx.cache);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, _ctx: &mut RequestCtx) -> Result<CacheKey> {
        let req = session.req_header();
        Ok(Cache::key(request_host(req).unwrap_or(""), req))
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(Cache::hit_filter(
            session.req_header(),
            meta,
            &ctx.cache,
            is_fresh,
        ))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let runtime = ctx.runtime.clone();
        let targeted = runtime
            .as_ref()
            .map_or(&[][..], |rt| rt.config.cache.targeted_fields.as_slice());
        let route = ctx.route_cache().cloned();
        Ok(Cache::decide(
            session.req_header(),
            resp,
            route.as_ref(),
            targeted,
            &mut ctx.cache,
        ))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let algorithms = ctx.route_compression().map(|s| s.algorithms.as_slice());
        let cookies = ctx.route_cache().map_or(&[][..], |c| c.keyed_cookies());
        cache::key::variance(meta, req, algorithms, cookies)
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<bool> {
        Ok(etag::not_modified(session.req_header(), resp))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        Cache::serve_stale(&ctx.cache, error)
    }

    /// Picks the first backend here, before the upstream phase: Pingora honours
    /// `FailToProxy::can_reuse_downstream` only for errors raised before it, so a 503 for no
    /// healthy backend or `max_in_flight` found here keeps the client's connection. When a
    /// stale cached answer may stand in for an error, the pick waits for `upstream_peer`,
    /// where Pingora serves it.
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        if !session.cache.can_serve_stale_error() {
            ctx.upstream.peer = Some(balance::pick(session, ctx).await?);
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Each attempt sends the whole body again: a retry replays what was already read
        // through `request_body_filter`, so the count starts over.
        ctx.body_bytes = 0;
        let now = std::time::Instant::now();
        ctx.observed.upstream_started.get_or_insert(now);
        ctx.observed.attempt_started = Some(now);
        match ctx.upstream.peer.take() {
            Some(peer) => Ok(peer),
            None => balance::pick(session, ctx).await,
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.observed.upstream = Some(peer._address.to_string());
        if !reused {
            observe::upstream_timing(&self.shared.metrics, ctx, UpstreamTiming::Connect);
        }
        balance::on_connected(ctx, reused, &self.shared.metrics);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        encoding::on_upstream_request(upstream_request, ctx);
        Cache::on_upstream_request(session, upstream_request);
        trace::on_upstream_request(upstream_request, &ctx.ids)?;
        let host = request_host(session.req_header()).map(str::to_string);
        let hop = headers::Hop {
            peer: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            trusted: ctx.upstream.peer_trusted,
            host: host.as_deref(),
            proto: if ctx.tls { "https" } else { "http" },
            port: session
                .server_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.port()),
        };
        headers::add_forwarded(upstream_request, &hop)?;
        let host = host.as_deref().unwrap_or("");
        gate::rewrite_upstream(upstream_request, ctx, host)?;
        gate::on_upstream_request(upstream_request, ctx, host)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Before the cache sees the response: hop-by-hop fields are never stored (RFC 9111 §3.1).
        headers::strip_hop_by_hop(upstream_response);
        ctx.observed.upstream_status = Some(upstream_response.status.as_u16());
        observe::upstream_timing(&self.shared.metrics, ctx, UpstreamTiming::FirstByte);
        balance::on_upstream_status(ctx, upstream_response.status.as_u16())?;
        encoding::on_upstream_response(session, upstream_response, ctx, &self.shared.compression)?;
        Cache::on_upstream_response(session, upstream_response, &mut ctx.cache);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            observe::upstream_timing(&self.shared.metrics, ctx, UpstreamTiming::Total);
            // The backend is done with this request, even if the client is still reading.
            ctx.upstream.attempt = None;
            ctx.observed.upstream_ms = ctx
                .observed
                .upstream_started
                .map(|t| t.elapsed().as_secs_f64() * 1000.0);
        }
        encoding::on_upstream_body(body, end_of_stream, ctx, &self.shared.compression)?;
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.own_fields(upstream_response)?;
        // Conditional requests on every route, cached or not (hits are Pingora's).
        ctx.drop_body = etag::on_response(
            session.req_header(),
            upstream_response,
            cache::served_from_cache(session),
        );
        let route_caches = ctx.route_cache().is_some();
        if route_caches && !cache::served_from_cache(session) {
            let req = session.req_header();
            let host = request_host(req).unwrap_or("");
            self.shared
                .cache
                .invalidate(host, req, upstream_response)
                .await;
        }
        if let Some(strip) = ctx.strip_targeted() {
            fields::remove_where(upstream_response, |name| strip.contains(name));
        }
        let lookup = self.shared.cache.finish_response(
            session,
            upstream_response,
            route_caches,
            &mut ctx.cache,
        );
        if let Some(lookup) = lookup {
            ctx.observed.cache = Some(lookup.as_str());
            if let Some(series) = ctx.series() {
                self.shared.metrics.observe_cache(series, lookup);
            }
        }
        if let Some(cookie) = ctx.upstream.set_cookie.take() {
            upstream_response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        // After the cache: stored objects keep the origin's fields; hits get the rules too.
        let req = session.req_header();
        gate::on_response(upstream_response, ctx, request_host(req).unwrap_or(""))
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.drop_body {
            *body = None;
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        ctx.observed.upstream = Some(peer._address.to_string());
        balance::on_connect_failure(ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        balance::on_proxy_error(session, ctx, e, client_reused)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Once a response header went out, an error page would be taken for the rest of its
        // body: end the connection without one.
        let code = match session.response_written() {
            Some(_) => None,
            None => errors::status_for(e),
        };
        // Keep the connection only when the next request's start is certain (the request passed
        // our checks, so routing ran, and its body was read to the end) and the failure came
        // before a backend was chosen: after that Pingora closes the client connection whatever
        // we say, so the answer says so, and a keep-alive client does not send its next request
        // into a closed connection.
        let reusable = ctx.runtime.is_some()
            && errors::keeps_connection(e)
            && ctx.upstream.tried.is_empty()
            && session.as_downstream_mut().is_body_done();
        if !reusable {
            session.set_keepalive(None);
        }
        let mut answered = false;
        if let Some(code) = code {
            let detail = errors::detail_for(code);
            match errors::respond(session, code, detail, ctx.reply()).await {
                Ok(()) => answered = true,
                Err(write_err) => log::debug!("cannot send {code} to the client: {write_err}"),
            }
        }
        let can_reuse_downstream = answered && reusable;
        FailToProxy {
            error_code: code.unwrap_or(0),
            can_reuse_downstream,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        observe::finish(&self.shared, session, e, ctx);
        let limit = self
            .shared
            .runtime()
            .config
            .server
            .h2_max_concurrent_streams;
        if h2_streams::finished(&self.streams, session.as_downstream(), e, limit) {
            self.shared.metrics.count_h2_reset_flood();
        }
    }
}
