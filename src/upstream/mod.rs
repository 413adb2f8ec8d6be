//! Upstream pools: the backends of one upstream, their live state, and picking one for a request.

pub mod health;
pub mod selection;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, HealthCheck, Strategy};
use selection::RoundRobin;

/// One backend and its counters. Shared by the pool, in-flight guards and health checks.
#[derive(Debug)]
pub struct Backend {
    /// The address as written in the config.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    healthy: AtomicBool,
    in_flight: AtomicU64,
    requests_total: AtomicU64,
    failures_total: AtomicU64,
    /// Consecutive health-check results, counted by the health checker only.
    pub(crate) check_successes: AtomicU32,
    pub(crate) check_failures: AtomicU32,
}

impl Backend {
    pub fn new(spec: &config::BackendSpec) -> Backend {
        Backend {
            name: spec.name.clone(),
            addr: spec.addr,
            weight: spec.weight,
            healthy: AtomicBool::new(true),
            in_flight: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
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
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
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
    selector: RoundRobin,
}

impl Pool {
    pub fn new(name: &str, conf: &config::Upstream) -> Pool {
        let pool = Pool {
            name: name.to_string(),
            strategy: conf.strategy,
            backends: conf
                .backends
                .iter()
                .map(|spec| Arc::new(Backend::new(spec)))
                .collect(),
            health_check: conf.health_check.clone(),
            connect_timeout: conf.connect_timeout,
            read_timeout: conf.read_timeout,
            selector: RoundRobin::default(),
        };
        pool.rebuild();
        pool
    }

    /// Picks a healthy backend not yet `tried` by this request.
    pub fn select(&self, tried: &[usize]) -> Option<(usize, &Arc<Backend>)> {
        let index = self.selector.select(|i| tried.contains(&i))?;
        Some((index, &self.backends[index]))
    }

    /// Sets a backend's health; rebuilds the schedule and returns true when it changed.
    pub fn set_healthy(&self, index: usize, healthy: bool) -> bool {
        let backend = &self.backends[index];
        if backend.healthy.swap(healthy, Ordering::AcqRel) == healthy {
            return false;
        }
        self.rebuild();
        true
    }

    fn rebuild(&self) {
        let members: Vec<(usize, u32)> = self
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_healthy())
            .map(|(i, b)| (i, b.weight))
            .collect();
        self.selector.rebuild(&members);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32]) -> Pool {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| config::BackendSpec {
                name: format!("127.0.0.1:{}", 9000 + i),
                addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                weight,
            })
            .collect();
        Pool::new(
            "p",
            &config::Upstream {
                strategy: Strategy::RoundRobin,
                backends,
                health_check: None,
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
            },
        )
    }

    #[test]
    fn unhealthy_backends_are_skipped_and_return() {
        let p = pool(&[1, 1, 1]);
        assert!(p.set_healthy(1, false));
        assert!(!p.set_healthy(1, false));
        let picks: Vec<usize> = (0..30).map(|_| p.select(&[]).unwrap().0).collect();
        assert!(!picks.contains(&1));
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 15);
        assert!(p.set_healthy(1, true));
        let picks: Vec<usize> = (0..30).map(|_| p.select(&[]).unwrap().0).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 10);
    }

    #[test]
    fn all_down_selects_none() {
        let p = pool(&[2, 1]);
        p.set_healthy(0, false);
        p.set_healthy(1, false);
        assert!(p.select(&[]).is_none());
    }

    #[test]
    fn tried_backends_are_not_picked_again() {
        let p = pool(&[1, 1]);
        for _ in 0..10 {
            assert_eq!(p.select(&[0]).unwrap().0, 1);
        }
        assert!(p.select(&[0, 1]).is_none());
    }

    #[test]
    fn in_flight_guard_counts_and_releases() {
        let p = pool(&[1]);
        let b = Arc::clone(&p.backends[0]);
        let g1 = b.start_request();
        let g2 = b.start_request();
        assert_eq!(b.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.requests_total(), 2);
    }
}
