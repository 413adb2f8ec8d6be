//! The `ProxyHttp` implementation. Each phase only dispatches to the module that owns the
//! concern: routing, upstream selection, header rewriting, errors, metrics.

pub mod ctx;
pub mod errors;
pub mod headers;
pub mod route;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::state::Shared;
use ctx::RequestCtx;

/// How long an idle upstream connection stays in the reuse pool.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The proxy: routes a request, picks a backend and forwards to it.
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Proxy {
        Proxy { shared }
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The Host the client asked for: the `Host` header, or the authority of an absolute URI.
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.shared.begin_request())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let runtime = self.shared.runtime();
        let req = session.req_header();
        let found = runtime
            .router
            .find(request_host(req).unwrap_or(""), req.uri.path())
            .map(|(index, route)| (index, runtime.pools.get(&route.upstream).cloned()));
        ctx.runtime = Some(runtime);
        match found {
            Some((index, pool)) => {
                ctx.route = Some(index);
                ctx.pool = pool;
                Ok(false)
            }
            None => {
                errors::respond(session, 404, errors::detail_for(404)).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "route without a pool"))?;
        // Leaving the previous attempt (if any) ends its in-flight count.
        ctx.attempt = None;
        let Some((index, backend)) = pool.select(&ctx.tried) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("upstream {}: no healthy backend", pool.name),
            ));
        };
        ctx.tried.push(index);
        ctx.attempt = Some(backend.start_request());
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        peer.options.write_timeout = Some(pool.read_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        let host = request_host(session.req_header()).map(str::to_string);
        headers::add_forwarded(upstream_request, client_ip(session), host.as_deref())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        headers::strip_hop_by_hop(upstream_response);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        if let Some(attempt) = &ctx.attempt {
            attempt.backend().record_failure();
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if e.esource() == &ErrorSource::Upstream {
            if let Some(attempt) = &ctx.attempt {
                attempt.backend().record_failure();
            }
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = errors::status_for(e);
        if let Some(code) = code {
            if let Err(write_err) = errors::respond(session, code, errors::detail_for(code)).await {
                log::debug!("cannot send {code} to the client: {write_err}");
            }
        }
        FailToProxy {
            error_code: code.unwrap_or(0),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let code = match session.response_written() {
            Some(resp) => resp.status.as_u16(),
            // nginx's "client closed request".
            None if e.is_some() => 499,
            None => 0,
        };
        // The request is over: give the backend slot back before metrics work.
        ctx.attempt = None;
        let (route, upstream) = ctx.labels();
        self.shared.metrics.observe_request(
            route,
            upstream,
            code,
            ctx.started.elapsed().as_secs_f64(),
        );
    }
}
