//! The state every part shares: the running config as an atomically swapped [`Runtime`], and
//! process-wide counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::{Config, HostMatch, Route};
use crate::metrics::Metrics;
use crate::proxy::route::Router;
use crate::upstream::Pool;

/// One version of the running configuration with everything built from it. A request loads it
/// once and uses that version to the end.
#[derive(Debug)]
pub struct Runtime {
    pub version: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// The `route` label of each route, in config order.
    pub route_labels: Vec<String>,
}

impl Runtime {
    pub fn new(version: u64, config: Config) -> Runtime {
        let pools = config
            .upstreams
            .iter()
            .map(|(name, up)| (name.clone(), Arc::new(Pool::new(name, up))))
            .collect();
        Runtime {
            version,
            router: Router::new(&config.routes),
            route_labels: config.routes.iter().map(route_label).collect(),
            pools,
            config: Arc::new(config),
        }
    }
}

/// `api.example.com/v1/`, `*.example.com/`, or `/static/` for a route without a host.
fn route_label(route: &Route) -> String {
    match &route.host {
        Some(HostMatch::Exact(host)) => format!("{host}{}", route.path_prefix),
        Some(HostMatch::Wildcard(suffix)) => format!("*{suffix}{}", route.path_prefix),
        None => route.path_prefix.clone(),
    }
}

/// Shared by the proxy, the admin endpoint and the health checker.
#[derive(Debug)]
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    pub started: Instant,
    requests_total: AtomicU64,
    active_requests: AtomicU64,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        Arc::new(Shared {
            runtime: ArcSwap::from_pointee(Runtime::new(1, config)),
            metrics: Metrics::new(),
            started: Instant::now(),
            requests_total: AtomicU64::new(0),
            active_requests: AtomicU64::new(0),
        })
    }

    /// The runtime in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    /// Requests being served right now (used to end a graceful shutdown early).
    pub fn active_requests(&self) -> u64 {
        self.active_requests.load(Ordering::Acquire)
    }

    /// Counts a new client request until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> ActiveRequest {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        self.active_requests.fetch_add(1, Ordering::AcqRel);
        ActiveRequest {
            shared: Arc::clone(self),
        }
    }
}

/// A client request in progress; see [`Shared::begin_request`].
#[derive(Debug)]
pub struct ActiveRequest {
    shared: Arc<Shared>,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.shared.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}
