//! Per-request state carried through the proxy phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use pingora_core::upstreams::peer::HttpPeer;

use crate::cache::CacheState;
use crate::compress;
use crate::config::{Route, RouteCache};
use crate::metrics::RouteSeries;
use crate::state::{ActiveRequest, Runtime};
use crate::upstream::{InFlight, Pool};

/// State of one client request (`ProxyHttp::CTX`). Each part belongs to the module that uses
/// it: `upstream` to `balance` (attempts, retries, the backend), `encoding` to `encoding`,
/// `cache` to `cache`. The parts are defined here so that no module imports another's state.
#[derive(Debug)]
pub struct RequestCtx {
    pub(super) started: Instant,
    /// The config version this request was routed with.
    pub(super) runtime: Option<Arc<Runtime>>,
    /// Index of the matched route in `runtime`'s config (see [`RequestCtx::route`]).
    pub(super) route: Option<usize>,
    pub(super) upstream: Attempts,
    pub(super) cache: CacheState,
    pub(super) encoding: Encoding,
    /// Request body bytes read so far by this attempt.
    pub(super) body_bytes: u64,
    /// The response became a 304 on its way out (`etag::on_response`): its body is not sent.
    pub(super) drop_body: bool,
    /// The request arrived over TLS.
    pub(super) tls: bool,
    /// The request id and trace context (`trace.rs`).
    pub(super) ids: super::trace::Ids,
    /// What the access log reports besides the session (`observe.rs`).
    pub(super) observed: Observed,
    /// The client's address, after trusted proxies and the PROXY protocol (`gate::identify`).
    pub(super) client_ip: Option<IpAddr>,
    _active: ActiveRequest,
}

impl RequestCtx {
    pub fn new(active: ActiveRequest) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            runtime: None,
            route: None,
            upstream: Attempts::default(),
            cache: CacheState::default(),
            encoding: Encoding::default(),
            body_bytes: 0,
            drop_body: false,
            tls: false,
            ids: Default::default(),
            observed: Observed::default(),
            client_ip: None,
            _active: active,
        }
    }

    /// Gives up the request before it was answered: the path it goes to counts it again.
    pub fn withdraw(self) {
        self._active.withdraw();
    }

    /// The matched route; `None` when no route matched.
    pub fn route(&self) -> Option<&Route> {
        self.route_at(self.route?)
    }

    /// The route at `index` in the running config.
    pub fn route_at(&self, index: usize) -> Option<&Route> {
        self.runtime.as_ref()?.config.routes.get(index)
    }

    /// The matched route's metric series; `None` when no route matched.
    pub fn series(&self) -> Option<&RouteSeries> {
        Some(&self.runtime.as_ref()?.route_series[self.route?])
    }

    /// The `Server` header the config asks for (`None`: keep the upstream's).
    pub fn server_header(&self) -> Option<&str> {
        self.runtime
            .as_ref()?
            .config
            .server
            .server_header
            .as_deref()
    }

    /// The fields the proxy puts on every response it sends, from the upstream or the cache:
    /// `Server` (when configured), the request id, and the route's HSTS over TLS.
    pub fn own_fields(&self, resp: &mut pingora_http::ResponseHeader) -> pingora_error::Result<()> {
        if let Some(server) = self.server_header() {
            resp.insert_header(http::header::SERVER, server)?;
        }
        resp.insert_header(super::trace::REQUEST_ID, &self.ids.request_id)?;
        if self.tls {
            if let Some(hsts) = self.route().and_then(|r| r.hsts.as_deref()) {
                resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts)?;
            }
        }
        Ok(())
    }

    /// What an error answer carries: the `Server` header, the request id and the error pages.
    pub fn reply(&self) -> super::errors::Reply<'_> {
        super::errors::Reply {
            server: self.server_header(),
            request_id: Some(self.ids.request_id.as_str()).filter(|id| !id.is_empty()),
            pages: [
                self.route()
                    .map(|r| &r.error_pages)
                    .filter(|p| !p.is_empty()),
                self.runtime
                    .as_ref()
                    .map(|rt| &rt.config.server.error_pages)
                    .filter(|p| !p.is_empty()),
            ],
        }
    }

    /// The largest request body: the route's `max_body_size`, else the server's.
    pub fn max_body_size(&self) -> u64 {
        match (self.route().and_then(|r| r.max_body_size), &self.runtime) {
            (Some(limit), _) => limit,
            (None, Some(rt)) => rt.config.server.max_body_size,
            (None, None) => u64::MAX,
        }
    }

    /// The targeted cache-control fields to remove from responses, when `cache.strip_targeted`.
    pub fn strip_targeted(&self) -> Option<&[http::HeaderName]> {
        let cache = &self.runtime.as_ref()?.config.cache;
        cache
            .strip_targeted
            .then_some(cache.targeted_fields.as_slice())
    }

    /// The cache policy of the matched route, when it caches.
    pub fn route_cache(&self) -> Option<&RouteCache> {
        self.route()?.cache.as_ref()
    }

    /// The compression settings of the matched route, when it compresses.
    pub fn route_compression(&self) -> Option<&compress::Settings> {
        self.route()?.compression.as_ref()
    }
}

/// A request's dealings with its upstream (`RequestCtx::upstream`), kept by `balance.rs`: the pool, the backends
/// tried, the attempt in progress and what the request allows.
#[derive(Debug)]
pub struct Attempts {
    pub(super) pool: Option<Arc<Pool>>,
    /// Backends already tried by this request (indexes into `pool.backends`).
    pub(super) tried: Vec<usize>,
    /// Index in `pool.backends` of the backend the request is on now, with its in-flight
    /// guard; dropping it ends the in-flight count.
    pub(super) attempt: Option<(usize, InFlight)>,
    /// The `ip_hash` key hash of this request.
    pub(super) hash: Option<u64>,
    /// Whether the TCP peer is a trusted proxy.
    pub(super) peer_trusted: bool,
    /// Whether the request may be sent again (idempotent, or no body).
    pub(super) resendable: bool,
    /// A `Set-Cookie` to add to the response (sticky sessions).
    pub(super) set_cookie: Option<String>,
    /// Set when a pooled connection went stale and no other backend is left: go to the same
    /// backend again.
    pub(super) reconnect: Option<usize>,
    /// Retries after a pooled connection failed before any response byte (see
    /// `balance::on_proxy_error`).
    pub(super) stale_retries: u8,
    /// Attempts that do not count against `retries`: those that followed a stale pooled
    /// connection.
    pub(super) free_attempts: usize,
    /// A response header arrived on the current attempt.
    pub(super) answered: bool,
    /// The first attempt's backend, picked before the upstream phase (see
    /// `proxy_upstream_filter`).
    pub(super) peer: Option<Box<HttpPeer>>,
}

impl Default for Attempts {
    fn default() -> Attempts {
        Attempts {
            pool: None,
            tried: Vec::new(),
            attempt: None,
            hash: None,
            peer_trusted: false,
            resendable: true,
            set_cookie: None,
            reconnect: None,
            stale_retries: 0,
            free_attempts: 0,
            answered: false,
            peer: None,
        }
    }
}

impl Attempts {
    /// Attempts made so far that count against the pool's `retries`.
    pub fn attempts(&self) -> usize {
        self.tried.len().saturating_sub(self.free_attempts)
    }

    /// The pool and backend index of the current attempt.
    pub fn current(&self) -> Option<(&Arc<Pool>, usize)> {
        Some((self.pool.as_ref()?, self.attempt.as_ref()?.0))
    }
}

/// The response encoding of one request (`RequestCtx::encoding`), kept by `encoding.rs`.
#[derive(Debug, Default)]
pub struct Encoding {
    /// The encoder of the response body, when it is being compressed.
    pub(super) stream: Option<compress::Stream>,
    /// The request went upstream as HEAD (so the response has no body).
    pub(super) upstream_head: bool,
    /// A variant suffix stripped from `If-None-Match` going upstream.
    pub(super) etag_suffix: Option<compress::Algorithm>,
}

/// What a request met on its way, for the access log (`RequestCtx::observed`).
#[derive(Debug, Default)]
pub struct Observed {
    /// The backend address of the last attempt.
    pub(super) upstream: Option<String>,
    /// When the first attempt began.
    pub(super) upstream_started: Option<Instant>,
    /// When the current attempt began.
    pub(super) attempt_started: Option<Instant>,
    /// Milliseconds from the first attempt to the end of the upstream response.
    pub(super) upstream_ms: Option<f64>,
    pub(super) upstream_status: Option<u16>,
    /// The cache lookup result on a caching route.
    pub(super) cache: Option<&'static str>,
}
