//! Per-request state carried through the proxy phases.

use std::sync::Arc;
use std::time::Instant;

use pingora_core::upstreams::peer::HttpPeer;

use crate::cache::CacheState;
use crate::compress;
use crate::config::RouteCache;
use crate::metrics::RouteSeries;
use crate::state::{ActiveRequest, Runtime};
use crate::upstream::{InFlight, Pool};

/// State of one client request (`ProxyHttp::CTX`).
#[derive(Debug)]
pub struct RequestCtx {
    pub started: Instant,
    /// The config version this request was routed with.
    pub runtime: Option<Arc<Runtime>>,
    /// Index of the matched route in `runtime`.
    pub route: Option<usize>,
    pub pool: Option<Arc<Pool>>,
    /// Backends already tried by this request (indexes into `pool.backends`).
    pub tried: Vec<usize>,
    /// Index in `pool.backends` of the backend the request is on now, with its in-flight
    /// guard; dropping it ends the in-flight count.
    pub attempt: Option<(usize, InFlight)>,
    /// The `ip_hash` key hash of this request.
    pub hash: Option<u64>,
    /// Whether the TCP peer is a trusted proxy.
    pub peer_trusted: bool,
    /// Whether the request may be sent again (idempotent, or no body).
    pub resendable: bool,
    /// A `Set-Cookie` to add to the response (sticky sessions).
    pub set_cookie: Option<String>,
    /// Set when a pooled connection went stale and no other backend is left: go to the same
    /// backend again.
    pub reconnect: Option<usize>,
    /// Retries after a pooled connection failed before any response byte (see
    /// `balance::on_proxy_error`).
    pub stale_retries: u8,
    /// Attempts that do not count against `retries`: those that followed a stale pooled
    /// connection.
    pub free_attempts: usize,
    /// A response header arrived on the current attempt.
    pub answered: bool,
    pub cache: CacheState,
    /// The encoder of the response body, when it is being compressed.
    pub compress: Option<compress::Stream>,
    /// The request went upstream as HEAD (so the response has no body).
    pub upstream_head: bool,
    /// A variant suffix stripped from `If-None-Match` going upstream.
    pub etag_suffix: Option<compress::Algorithm>,
    /// Request body bytes read so far by this attempt.
    pub body_bytes: u64,
    /// The response became a 304 on its way out (`etag::on_response`): its body is not sent.
    pub drop_body: bool,
    /// The request arrived over TLS.
    pub tls: bool,
    /// The first attempt's backend, picked before the upstream phase (see
    /// `proxy_upstream_filter`).
    pub peer: Option<Box<HttpPeer>>,
    pub _active: ActiveRequest,
}

impl RequestCtx {
    pub fn new(active: ActiveRequest) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            runtime: None,
            route: None,
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
            cache: CacheState::default(),
            compress: None,
            upstream_head: false,
            etag_suffix: None,
            body_bytes: 0,
            drop_body: false,
            peer: None,
            tls: false,
            _active: active,
        }
    }

    /// The matched route's metric series; `None` when no route matched.
    pub fn series(&self) -> Option<&RouteSeries> {
        Some(&self.runtime.as_ref()?.route_series[self.route?])
    }
}

impl RequestCtx {
    /// The `Server` header the config asks for (`None`: keep the upstream's).
    pub fn server_header(&self) -> Option<&str> {
        self.runtime
            .as_ref()?
            .config
            .server
            .server_header
            .as_deref()
    }

    /// The matched route.
    pub fn route_config(&self) -> Option<&crate::config::Route> {
        self.route_at(self.route?)
    }

    /// The route at `index` in the running config.
    pub fn route_at(&self, index: usize) -> Option<&crate::config::Route> {
        self.runtime.as_ref()?.config.routes.get(index)
    }

    /// The cache policy of the matched route, when it caches.
    pub fn route_cache(&self) -> Option<&RouteCache> {
        let runtime = self.runtime.as_ref()?;
        runtime.config.routes.get(self.route?)?.cache.as_ref()
    }

    /// The compression settings of the matched route, when it compresses.
    pub fn route_compression(&self) -> Option<&compress::Settings> {
        let runtime = self.runtime.as_ref()?;
        runtime.config.routes.get(self.route?)?.compression.as_ref()
    }

    /// Attempts made so far that count against the pool's `retries`.
    pub fn attempts(&self) -> usize {
        self.tried.len().saturating_sub(self.free_attempts)
    }

    /// The pool and backend index of the current attempt.
    pub fn current(&self) -> Option<(&Arc<Pool>, usize)> {
        Some((self.pool.as_ref()?, self.attempt.as_ref()?.0))
    }
}
