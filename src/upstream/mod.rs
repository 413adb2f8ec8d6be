//! Upstream pools: the backends of one upstream, their live state, and picking one for a request.

pub mod capacity;
mod check_tls;
mod control;
pub mod discovery;
pub mod health;
pub mod queue;
pub mod selection;
pub mod sticky;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{self, HashKey, HealthCheck, PassiveHealth, RetryPolicy, Strategy};
use capacity::{AdminState, BackendCapacity};
use queue::WaitQueue;
use selection::{least_conn, Ring, RoundRobin};
use sticky::{BackendId, StickyCodec};

/// One backend and its counters. Shared by the pool, in-flight guards and health checks.
#[derive(Debug)]
pub struct Backend {
    /// The address as written in the config (`<name>/<address>` when discovered).
    pub name: String,
    pub addr: SocketAddr,
    /// `host:port` for SNI and the checks' `Host`.
    pub host: String,
    /// Changes on reload; the backend's other state carries over.
    weight: AtomicU32,
    /// A backup backend takes requests only when no primary is available; changes on reload.
    backup: AtomicBool,
    /// Set by active health checks.
    healthy: AtomicBool,
    /// Set by passive health (outlier ejection) for `ejection_time`.
    ejected: AtomicBool,
    in_flight: AtomicU64,
    requests_total: AtomicU64,
    failures_total: AtomicU64,
    ejections_total: AtomicU64,
    /// Consecutive failures seen in live traffic.
    passive_failures: AtomicU32,
    /// Consecutive health-check results, counted by the health checker only.
    pub(crate) check_successes: AtomicU32,
    pub(crate) check_failures: AtomicU32,
    /// Admin state, `max_conns`, slow start.
    pub capacity: BackendCapacity,
}

impl Backend {
    pub fn new(spec: &config::BackendSpec) -> Backend {
        Backend {
            name: spec.name.clone(),
            addr: spec.addr,
            host: spec.host.clone(),
            weight: AtomicU32::new(spec.weight),
            backup: AtomicBool::new(spec.backup),
            healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            ejections_total: AtomicU64::new(0),
            passive_failures: AtomicU32::new(0),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            capacity: BackendCapacity::new(spec.weight, spec.max_conns),
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn is_backup(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Healthy, not ejected, and not drained by the operator: may receive new requests.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected() && self.admin_state() == AdminState::Ready
    }

    pub fn admin_state(&self) -> AdminState {
        self.capacity.admin_state()
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    pub fn failures_total(&self) -> u64 {
        self.failures_total.load(Ordering::Relaxed)
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// Forgets what active checks found: healthy, no run of results. A backend in `maint`
    /// stays unhealthy.
    pub(crate) fn reset_health(&self) {
        if self.admin_state() == AdminState::Maint {
            return;
        }
        self.check_successes.store(0, Ordering::Relaxed);
        self.check_failures.store(0, Ordering::Relaxed);
        self.healthy.store(true, Ordering::Release);
    }

    /// Counts a failed exchange with this backend (connect error, timeout, broken response).
    pub fn record_failure(&self) {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a request as sent to this backend until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: Arc::clone(self),
        }
    }
}

/// Holds one in-flight request on a backend; dropping it (request done, failed, or the client
/// gone) gives the slot back, so counts cannot leak.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(waiters) = self.backend.capacity.waiters.get() {
            waiters.slot_freed();
        }
    }
}

/// Sticky-session settings of a pool with each backend's cookie id.
#[derive(Debug)]
pub struct StickyPool {
    pub codec: StickyCodec,
    ids: Vec<BackendId>,
}

/// The backends of one upstream and how to choose among them.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub strategy: Strategy,
    pub backends: Vec<Arc<Backend>>,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub hash_key: HashKey,
    pub retry: RetryPolicy,
    pub passive_health: Option<PassiveHealth>,
    pub sticky: Option<StickyPool>,
    /// Requests in flight to this upstream at once.
    pub max_in_flight: Option<u64>,
    /// TLS to the backends, with the `ca` certificates ready for Pingora's connector.
    pub tls: Option<PeerTls>,
    /// HTTP/2 to the backends.
    pub http2: bool,
    /// Requests refused because `max_in_flight` was reached.
    overloaded: AtomicU64,
    /// Slow start, the wait queue's settings, keep-alive.
    pub capacity: config::Capacity,
    /// Requests waiting for a backend below its `max_conns`; kept across reloads.
    pub waiters: Arc<WaitQueue>,
    /// The ramp starts this pool's schedule has seen ([`capacity::ramp_starts`]).
    ramp_seen: AtomicU64,
    /// When the next ramp step is due ([`capacity::now_ms`]); `u64::MAX`: none.
    ramp_next: AtomicU64,
    rr: RoundRobin,
    ring: Option<ArcSwap<Ring>>,
}

/// An upstream's TLS settings as the connector takes them.
pub struct PeerTls {
    pub conf: config::UpstreamTls,
    /// `conf.ca` parsed for Pingora (`None`: the system roots).
    pub ca: Option<Arc<CaType>>,
    /// The client certificate for Pingora's connector (mTLS).
    pub client: Option<Arc<CertKey>>,
    /// The health checks' TLS connector, with the same roots and verification.
    pub checks: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("conf", &self.conf).finish()
    }
}

impl PeerTls {
    fn new(conf: &config::UpstreamTls) -> PeerTls {
        // The certificates were parsed when the config loaded, so `parse_x509` cannot fail.
        let ca = conf.ca.as_ref().map(|ders| {
            let certs: Vec<WrappedX509> = ders
                .iter()
                .map(|der| WrappedX509::new(der.clone(), parse_x509))
                .collect();
            Arc::<CaType>::from(certs)
        });
        PeerTls {
            conf: conf.clone(),
            ca,
            client: conf
                .client
                .as_ref()
                .map(|c| Arc::new(CertKey::new(c.chain.clone(), c.key.clone()))),
            checks: check_tls::connector(conf),
        }
    }

    /// Sets TLS on `peer` for the backend named `backend_name`.
    pub fn apply(&self, peer: &mut HttpPeer, backend_name: &str) {
        peer.sni = self.conf.sni_for(backend_name);
        peer.options.verify_cert = self.conf.verify;
        peer.options.verify_hostname = self.conf.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
    }
}

impl Pool {
    pub fn new(name: &str, conf: &config::Upstream) -> Pool {
        Pool::with_previous(name, conf, None)
    }

    /// Builds the pool for `conf`, keeping the live state (health, ejection, in-flight
    /// counts, counters) of every backend `previous` already had under the same address.
    pub fn with_previous(name: &str, conf: &config::Upstream, previous: Option<&Pool>) -> Pool {
        let backends: Vec<Arc<Backend>> = conf
            .backends
            .iter()
            .map(|spec| {
                let kept = previous.and_then(|p| {
                    p.backends
                        .iter()
                        .find(|b| b.name == spec.name && b.addr == spec.addr)
                });
                match kept {
                    Some(backend) => {
                        // A weight set through the admin API gives way to the file's.
                        backend.weight.store(spec.weight, Ordering::Relaxed);
                        backend.backup.store(spec.backup, Ordering::Relaxed);
                        if conf.health_check.is_none() {
                            // Nothing would ever check it again: a pool without checks
                            // counts every backend healthy (passive ejection still applies).
                            backend.reset_health();
                        }
                        Arc::clone(backend)
                    }
                    None => {
                        let backend = Arc::new(Backend::new(spec));
                        backend
                            .capacity
                            .configure(spec.max_conns, conf.capacity.slow_start);
                        if previous.is_some() {
                            // Joined a running upstream: ramp up.
                            backend.capacity.begin_ramp(capacity::now_ms());
                        }
                        backend
                    }
                }
            })
            .collect();
        let waiters = previous.map_or_else(Arc::default, |p| Arc::clone(&p.waiters));
        for (backend, spec) in backends.iter().zip(&conf.backends) {
            backend
                .capacity
                .configure(spec.max_conns, conf.capacity.slow_start);
            // A backend stays in its upstream, so its queue never changes.
            let _ = backend.capacity.waiters.set(Arc::clone(&waiters));
        }
        let ring = (conf.strategy == Strategy::IpHash)
            .then(|| ArcSwap::from_pointee(control::ring_of(&backends)));
        let sticky = conf.sticky.as_ref().map(|s| {
            let codec = StickyCodec::new(s);
            let ids = backends
                .iter()
                .map(|b| codec.backend_id(name, &b.name))
                .collect();
            StickyPool { codec, ids }
        });
        let pool = Pool {
            tls: conf.tls.as_ref().map(PeerTls::new),
            http2: conf.http2,
            name: name.to_string(),
            strategy: conf.strategy,
            backends,
            health_check: conf.health_check.clone(),
            connect_timeout: conf.connect_timeout,
            read_timeout: conf.read_timeout,
            hash_key: conf.hash_key.clone(),
            retry: conf.retry.clone(),
            passive_health: conf.passive_health.clone(),
            sticky,
            max_in_flight: conf.max_in_flight,
            overloaded: AtomicU64::new(0),
            capacity: conf.capacity.clone(),
            waiters,
            ramp_seen: AtomicU64::new(capacity::ramp_starts()),
            ramp_next: AtomicU64::new(u64::MAX),
            rr: RoundRobin::default(),
            ring,
        };
        pool.rebuild();
        pool
    }

    /// Picks an available backend not yet `tried` by this request and below its
    /// `max_conns`. `hash` is the request's key hash for `ip_hash` (round-robin is used
    /// without one).
    pub fn select(&self, hash: Option<u64>, tried: &[usize]) -> Option<(usize, &Arc<Backend>)> {
        self.select_at(capacity::now_ms(), hash, tried)
    }

    /// [`Pool::select`] at time `now` ([`capacity::now_ms`]), which slow start reads.
    pub fn select_at(
        &self,
        now: u64,
        hash: Option<u64>,
        tried: &[usize],
    ) -> Option<(usize, &Arc<Backend>)> {
        self.refresh_ramps(now);
        // The schedule holds the backends active checks pass; ejection, drain and
        // `max_conns` are checked here, so that a change is seen by every pool that shares
        // the backend.
        // Backups take part only while no primary is available (tried ones count as gone, so
        // a retry after every primary failed may go to a backup).
        let backups = self.use_backups(tried);
        let skip = |i: usize| {
            let b = &self.backends[i];
            tried.contains(&i) || !b.is_available() || b.is_full() || b.is_backup() != backups
        };
        let index = match (self.strategy, hash, &self.ring) {
            (Strategy::LeastConnections, _, _) => {
                least_conn::select(&self.backends, &self.rr, skip)
            }
            (Strategy::IpHash, Some(hash), Some(ring)) => ring.load().select(hash, skip),
            _ if tried.is_empty() => self.rr.select(skip),
            _ => self.rr.peek(skip),
        }?;
        Some((index, &self.backends[index]))
    }

    /// Whether no primary backend is left for this request, so the backups serve it. A
    /// primary at its `max_conns` counts as gone, as in nginx.
    pub fn use_backups(&self, tried: &[usize]) -> bool {
        !self
            .backends
            .iter()
            .enumerate()
            .any(|(i, b)| !b.is_backup() && b.is_available() && !b.is_full() && !tried.contains(&i))
    }

    pub fn count_overload(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests refused because `max_in_flight` was reached.
    pub fn overloaded(&self) -> u64 {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Whether a backend is left for a retry.
    pub fn has_candidate(&self, tried: &[usize]) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| b.is_available() && !tried.contains(&i))
    }

    /// The backend a sticky cookie value names, if it is valid and the backend is available,
    /// with whether the cookie should be issued again.
    pub fn sticky_backend(&self, value: &str, now_unix: u64) -> Option<(usize, bool)> {
        let sticky = self.sticky.as_ref()?;
        let (id, expires) = sticky.codec.decode(value, now_unix)?;
        let index = sticky.ids.iter().position(|known| *known == id)?;
        let backend = &self.backends[index];
        // A client pinned to a backup moves back once a primary is available again.
        (backend.is_available() && (!backend.is_backup() || self.use_backups(&[])))
            .then(|| (index, sticky.codec.wants_refresh(expires, now_unix)))
    }

    /// The `Set-Cookie` value pinning a client to backend `index`.
    pub fn sticky_cookie(&self, index: usize, now_unix: u64) -> Option<String> {
        let sticky = self.sticky.as_ref()?;
        let value = sticky.codec.encode(&sticky.ids[index], now_unix);
        Some(sticky.codec.set_cookie(&value))
    }

    /// Sets a backend's active health; rebuilds the schedule and returns true when it changed.
    pub fn set_healthy(&self, index: usize, healthy: bool) -> bool {
        let backend = &self.backends[index];
        if backend.healthy.swap(healthy, Ordering::AcqRel) == healthy {
            return false;
        }
        if healthy {
            backend.capacity.begin_ramp(capacity::now_ms());
        }
        self.rebuild();
        true
    }

    /// Feeds a live-traffic result to passive health: `ok` resets the run of failures; enough
    /// failures in a row eject the backend for `ejection_time`. The last available backend is
    /// never ejected (a pool with nothing left would only answer 503).
    pub fn report(self: &Arc<Self>, index: usize, ok: bool) {
        let Some(passive) = &self.passive_health else {
            return;
        };
        let backend = &self.backends[index];
        if ok {
            backend.passive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = backend.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < passive.consecutive_failures || backend.is_ejected() {
            return;
        }
        {
            // Checking that another backend is left and ejecting this one is one step: two
            // backends failing at once must not both see the other one still available.
            // Process-wide, so that the old and the new pool of a reload (which share their
            // backends) cannot race either; it is taken only on an ejection decision.
            let _decide = EJECTION.lock().unwrap_or_else(|e| e.into_inner());
            let others_available = self
                .backends
                .iter()
                .enumerate()
                .any(|(i, b)| i != index && b.is_available());
            if !others_available || backend.ejected.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        backend.passive_failures.store(0, Ordering::Relaxed);
        backend.ejections_total.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "upstream {} backend {} ejected for {:?} after {failures} failures in a row",
            self.name,
            backend.name,
            passive.ejection_time
        );
        let backend = Arc::clone(backend);
        let upstream = self.name.clone();
        let wait = passive.ejection_time;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(wait).await;
                readmit(&upstream, &backend);
            });
        }
    }

    /// Recomputes the round-robin cycle from the backends active checks pass and the
    /// operator has not drained, with their weights as slow start has them now.
    pub fn rebuild(&self) {
        self.rebuild_at(capacity::now_ms());
    }
}

/// Serializes ejection decisions (see [`Pool::report`]).
static EJECTION: Mutex<()> = Mutex::new(());

/// Ends an ejection.
pub fn readmit(upstream: &str, backend: &Backend) {
    if backend.ejected.swap(false, Ordering::AcqRel) {
        backend.capacity.begin_ramp(capacity::now_ms());
        log::info!(
            "upstream {upstream} backend {} back from ejection",
            backend.name
        );
    }
}

#[cfg(test)]
mod tests;
