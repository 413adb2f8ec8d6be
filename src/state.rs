//! The state every part shares: the running config as an atomically swapped [`Runtime`], and
//! process-wide counters.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::access_log::AccessLogger;
use crate::cache::warm::WarmSource;
use crate::cache::Cache;
use crate::compress::CompressionStats;
use crate::config::Warm;
use crate::config::{BackendSpec, DiscoverSpec, Upstream};
use crate::config::{Config, HostMatch, Route};
use crate::metrics::{Metrics, RefusedConnections, RouteSeries, Snapshot};
use crate::policy::auth::Verified;
use crate::policy::cluster::ClusterLimiter;
use crate::policy::rate::Limiter;
use crate::route::Router;
use crate::upstream::discovery::{self, DiscoverySource, Statuses};
use crate::upstream::health::PoolSource;
use crate::upstream::{Backend, Pool};

/// One version of the running configuration with everything built from it. A request loads it
/// once and uses that version to the end.
#[derive(Debug)]
pub struct Runtime {
    pub version: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// The metric series of each route, in config order.
    pub route_series: Vec<RouteSeries>,
    /// The rate limiter of each route that has one, in config order.
    pub limiters: Vec<Option<Arc<Limiter>>>,
    /// Where `scope: cluster` limits count (`rate_limits.redis`), when a route has one.
    pub cluster: Option<Arc<ClusterLimiter>>,
    /// Successful `basic_auth` verifications of this version (empty after each reload).
    pub verified: Verified,
    /// Backends no longer configured that still had requests in flight at the last reload.
    pub draining: Vec<(String, Arc<Backend>)>,
    /// The TLS server config new handshakes use (`None`: no `tls` block).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Runtime {
    pub fn new(version: u64, config: Config) -> Runtime {
        Runtime::with_previous(version, config, None)
    }

    /// Builds the runtime for `config`, carrying over the live state of backends that stay.
    pub fn with_previous(version: u64, config: Config, previous: Option<&Runtime>) -> Runtime {
        let pools: BTreeMap<String, Arc<Pool>> = config
            .upstreams
            .iter()
            .map(|(name, up)| {
                let before = previous.and_then(|p| p.pools.get(name)).map(Arc::as_ref);
                (
                    name.clone(),
                    Arc::new(Pool::with_previous(name, up, before)),
                )
            })
            .collect();
        let mut draining = Vec::new();
        if let Some(previous) = previous {
            let still_there = |upstream: &str, backend: &Arc<Backend>| {
                pools
                    .get(upstream)
                    .is_some_and(|p| p.backends.iter().any(|b| Arc::ptr_eq(b, backend)))
            };
            let candidates = previous
                .pools
                .iter()
                .flat_map(|(name, pool)| pool.backends.iter().map(move |b| (name, b)))
                .chain(previous.draining.iter().map(|(name, b)| (name, b)));
            for (upstream, backend) in candidates {
                if backend.in_flight() > 0 && !still_there(upstream, backend) {
                    draining.push((upstream.clone(), Arc::clone(backend)));
                }
            }
        }
        let tls = config
            .tls
            .as_ref()
            .and_then(|tls| match crate::tls::server_config(tls) {
                Ok(server) => Some(server),
                Err(e) => {
                    log::error!("{e}; TLS connections are refused");
                    None
                }
            });
        let labels: Vec<String> = config.routes.iter().map(route_label).collect();
        let limiters = config
            .routes
            .iter()
            .zip(&labels)
            .map(|(route, label)| {
                let limit = route.rate_limit.as_ref()?;
                // A route that keeps its label and limit keeps its budgets across a reload.
                let kept = previous.and_then(|p| {
                    p.route_series
                        .iter()
                        .zip(&p.limiters)
                        .find(|(s, _)| s.route() == label)
                        .and_then(|(_, l)| l.clone())
                        .filter(|l| l.limit() == limit)
                });
                Some(kept.unwrap_or_else(|| Arc::new(Limiter::new(limit))))
            })
            .collect();
        // The connection stays when its settings do.
        let cluster = config.rate_limits.as_ref().and_then(|conf| {
            previous
                .and_then(|p| p.cluster.clone())
                .filter(|c| c.conf() == conf)
                .or_else(|| ClusterLimiter::new(conf).map(Arc::new))
        });
        Runtime {
            tls,
            limiters,
            cluster,
            verified: Verified::default(),
            version,
            router: Router::new(&config.routes),
            route_series: config
                .routes
                .iter()
                .zip(labels)
                .map(|(r, label)| RouteSeries::new(label, r.upstream.clone()))
                .collect(),
            pools,
            draining,
            config: Arc::new(config),
        }
    }
}

/// The route's `name`; else `api.example.com/v1/`, `*.example.com/`, or `/static/` for a
/// route without a host (`=/exact` for `path_exact`, `~regex` appended for `path_regex`).
fn route_label(route: &Route) -> String {
    if let Some(name) = &route.name {
        return name.clone();
    }
    let mut path = match &route.path_exact {
        Some(p) => format!("={p}"),
        None => route.path_prefix.clone(),
    };
    if let Some(re) = &route.path_regex {
        path.push('~');
        path.push_str(re.0.as_str());
    }
    match &route.host {
        Some(HostMatch::Exact(host)) => format!("{host}{path}"),
        Some(HostMatch::Wildcard(suffix)) => format!("*{suffix}{path}"),
        None => path,
    }
}

/// The outcome of a reload, for `/stats`.
#[derive(Debug, Clone)]
pub struct LastReload {
    pub ok: bool,
    pub error: Option<String>,
    pub at: SystemTime,
    /// What asked for it: `signal`, `admin`, `file watch`, …
    pub trigger: String,
    /// The config version running after it.
    pub version: u64,
}

/// Reloads `/stats` lists under `reloads`, the newest last.
pub const RECENT_RELOADS: usize = 10;

/// Shared by the proxy, the admin endpoint, the health checker and the reloader.
#[derive(Debug)]
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    versions: watch::Sender<u64>,
    pub metrics: Metrics,
    /// The response cache; made once, from the config at start.
    pub cache: Cache,
    pub compression: CompressionStats,
    /// The access log writer's handle.
    pub access_log: AccessLogger,
    pub started: Instant,
    /// The config file, when Switchyard was started from one (reloads read it again).
    pub config_path: Option<PathBuf>,
    requests_total: AtomicU64,
    active_requests: AtomicU64,
    /// Requests from their first byte to their response (see [`Shared::start_request`]).
    started_requests: AtomicU64,
    health_tasks: AtomicUsize,
    /// Client connections the front end refused, by reason.
    pub refused_connections: RefusedConnections,
    /// The last [`RECENT_RELOADS`] reloads, oldest first.
    reloads: Mutex<VecDeque<LastReload>>,
    /// Held while a reload builds and swaps, so that reloads never interleave.
    pub(crate) reload_lock: Mutex<()>,
    /// A graceful shutdown began: `/ready` answers 503 from then on.
    shutting_down: AtomicBool,
    /// Service discovery's last results per upstream.
    pub discovery: Statuses,
}

impl Shared {
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Arc<Shared> {
        let metrics = Metrics::new();
        Arc::new(Shared {
            access_log: AccessLogger::start(&config.access_log, metrics.access_log_dropped()),
            cache: Cache::new(&config.cache),
            compression: CompressionStats::default(),
            runtime: ArcSwap::from_pointee(Runtime::new(1, config)),
            versions: watch::channel(1).0,
            metrics,
            started: Instant::now(),
            config_path,
            requests_total: AtomicU64::new(0),
            active_requests: AtomicU64::new(0),
            started_requests: AtomicU64::new(0),
            health_tasks: AtomicUsize::new(0),
            refused_connections: RefusedConnections::default(),
            reloads: Mutex::new(VecDeque::with_capacity(RECENT_RELOADS)),
            reload_lock: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            discovery: Statuses::default(),
        })
    }

    /// The runtime in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Puts `runtime` in force for every new request.
    pub fn install(&self, runtime: Runtime) {
        // A reload reopens the access log, with its new settings.
        self.access_log.configure(&runtime.config.access_log);
        self.swap(runtime);
    }

    fn swap(&self, runtime: Runtime) {
        let version = runtime.version;
        self.runtime.store(Arc::new(runtime));
        self.versions.send_replace(version);
    }

    /// The Prometheus text of everything: the registry and the live values of `runtime` and
    /// the shared parts.
    pub fn render_metrics(&self) -> String {
        let runtime = self.runtime();
        self.metrics.render(&Snapshot {
            config_version: runtime.version,
            storage: &self.cache.storage.memory.stats,
            invalidations: &self.cache.counters.invalidations,
            warm_fetches: (&self.cache.warm.fetches, &self.cache.warm.failures),
            redis: self.cache.storage.redis.as_ref().map(|tier| &tier.stats),
            compression: &self.compression,
            pools: &runtime.pools,
            certificates: runtime
                .config
                .tls
                .as_ref()
                .map_or(&[][..], |t| t.certificates.as_slice()),
            discovery_failures: self.discovery.failures(),
            refused_connections: &self.refused_connections,
        })
    }

    /// Wakes when a new runtime is installed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.versions.subscribe()
    }

    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    /// Requests being served right now (used to end a graceful shutdown early).
    pub fn active_requests(&self) -> u64 {
        self.active_requests.load(Ordering::Acquire)
    }

    /// Requests a graceful shutdown must wait for: those being proxied, and those whose
    /// header is still arriving (counted by the frontend from their first byte).
    pub fn unfinished_requests(&self) -> u64 {
        self.active_requests()
            .max(self.started_requests.load(Ordering::Acquire))
    }

    /// Counts a request from the first byte of its header until the guard drops, after its
    /// response; [`Shared::begin_request`] starts only once the header is parsed.
    pub fn start_request(&self) -> StartedRequest<'_> {
        self.started_requests.fetch_add(1, Ordering::AcqRel);
        StartedRequest(&self.started_requests)
    }

    /// Marks the start of a graceful shutdown (`/ready` answers 503 from now on).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Health-check loops running now.
    pub fn health_tasks(&self) -> usize {
        self.health_tasks.load(Ordering::Relaxed)
    }

    pub fn set_health_tasks(&self, n: usize) {
        self.health_tasks.store(n, Ordering::Relaxed);
    }

    pub fn last_reload(&self) -> Option<LastReload> {
        self.reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .cloned()
    }

    /// The last few reloads, oldest first.
    pub fn recent_reloads(&self) -> Vec<LastReload> {
        let reloads = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        reloads.iter().cloned().collect()
    }

    /// Records a reload's outcome, forgetting the oldest past [`RECENT_RELOADS`].
    pub fn record_reload(&self, reload: LastReload) {
        let mut reloads = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        if reloads.len() == RECENT_RELOADS {
            reloads.pop_front();
        }
        reloads.push_back(reload);
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

impl WarmSource for Shared {
    fn warm_lists(&self) -> Vec<(String, Warm)> {
        let runtime = self.runtime();
        runtime
            .config
            .routes
            .iter()
            .zip(&runtime.route_series)
            .filter_map(|(route, series)| {
                let warm = route.cache.as_ref()?.warm.clone()?;
                Some((series.route().to_string(), warm))
            })
            .collect()
    }

    fn listener(&self) -> Option<std::net::SocketAddr> {
        let mut addr = *self.runtime().config.server.listen.first()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Some(addr)
    }

    fn versions(&self) -> watch::Receiver<u64> {
        self.subscribe()
    }
}

impl PoolSource for Shared {
    fn pools(&self) -> Vec<Arc<Pool>> {
        self.runtime().pools.values().cloned().collect()
    }

    fn versions(&self) -> watch::Receiver<u64> {
        self.subscribe()
    }

    fn checks_running(&self, n: usize) {
        self.set_health_tasks(n);
    }
}

impl DiscoverySource for Shared {
    fn discovering(&self) -> Vec<(String, Upstream)> {
        let runtime = self.runtime();
        runtime
            .config
            .upstreams
            .iter()
            .filter(|(_, up)| !up.discover.is_empty())
            .map(|(name, up)| (name.clone(), up.clone()))
            .collect()
    }

    fn versions(&self) -> watch::Receiver<u64> {
        self.subscribe()
    }

    /// A new runtime version with the upstream's new list, built as a reload builds one (live
    /// backend state carried over, removed backends draining), under the reload lock.
    fn apply(
        &self,
        upstream: &str,
        entries: &[DiscoverSpec],
        found: Vec<BackendSpec>,
    ) -> Option<Vec<BackendSpec>> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.runtime();
        let up = old.config.upstreams.get(upstream)?;
        if up.discover != entries {
            return None;
        }
        let before: Vec<BackendSpec> = up.discovered().cloned().collect();
        if discovery::diff(&before, &found).is_empty() {
            return None;
        }
        let mut config = Config::clone(&old.config);
        let replaced = up.with_discovered(found);
        config.upstreams.insert(upstream.to_string(), replaced);
        // Not `install`: the access log settings did not change, so it is not reopened.
        self.swap(Runtime::with_previous(old.version + 1, config, Some(&old)));
        Some(before)
    }

    fn statuses(&self) -> &Statuses {
        &self.discovery
    }
}

impl ActiveRequest {
    /// Takes the request back out of `requests_total`: another path takes it and counts it.
    pub fn withdraw(self) {
        self.shared.requests_total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.shared.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request whose header has begun to arrive; see [`Shared::start_request`].
#[derive(Debug)]
pub struct StartedRequest<'a>(&'a AtomicU64);

impl Drop for StartedRequest<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
