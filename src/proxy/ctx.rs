//! Per-request state carried through the proxy phases.

use std::sync::Arc;
use std::time::Instant;

use super::balance::Attempts;
use super::encoding::Encoding;
use crate::cache::CacheState;
use crate::compress;
use crate::config::{Route, RouteCache};
use crate::metrics::RouteSeries;
use crate::state::{ActiveRequest, Runtime};

/// State of one client request (`ProxyHttp::CTX`). Each part belongs to the module that uses
/// it: `upstream` to `balance` (attempts, retries, the backend), `encoding` to `encoding`,
/// `cache` to `cache`.
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
            _active: active,
        }
    }

    /// The matched route; `None` when no route matched.
    pub fn route(&self) -> Option<&Route> {
        self.runtime.as_ref()?.config.routes.get(self.route?)
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

    /// The cache policy of the matched route, when it caches.
    pub fn route_cache(&self) -> Option<&RouteCache> {
        self.route()?.cache.as_ref()
    }

    /// The compression settings of the matched route, when it compresses.
    pub fn route_compression(&self) -> Option<&compress::Settings> {
        self.route()?.compression.as_ref()
    }
}
