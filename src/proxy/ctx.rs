//! Per-request state carried through the proxy phases.

use std::sync::Arc;
use std::time::Instant;

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
    /// The backend the request is on now; dropping it ends the in-flight count.
    pub attempt: Option<InFlight>,
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
            _active: active,
        }
    }

    /// `(route, upstream)` labels for metrics; `none` when no route matched.
    pub fn labels(&self) -> (&str, &str) {
        match (&self.runtime, self.route) {
            (Some(rt), Some(i)) => (
                rt.route_labels[i].as_str(),
                rt.config.routes[i].upstream.as_str(),
            ),
            _ => ("none", "none"),
        }
    }
}
