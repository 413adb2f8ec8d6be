//! Changing a pool while it runs: the operator's admin state and weights (from the admin
//! API), slow-start steps, and `max_conns` (full backends and the slots they free).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::capacity::{self, AdminState};
use super::selection::Ring;
use super::{Backend, InFlight, Pool};

impl Backend {
    /// At its `max_conns`: takes no request until one of its own finishes.
    pub fn is_full(&self) -> bool {
        self.capacity
            .max_conns()
            .is_some_and(|max| self.in_flight() >= u64::from(max))
    }

    /// Like [`Backend::start_request`], unless the backend is at its `max_conns` (checked
    /// and counted in one step, so that racing requests cannot pass the limit).
    pub fn try_start_request(self: &Arc<Self>) -> Option<InFlight> {
        let Some(max) = self.capacity.max_conns() else {
            return Some(self.start_request());
        };
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < u64::from(max)).then_some(n + 1)
            })
            .ok()?;
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            backend: Arc::clone(self),
        })
    }
}

/// The `ip_hash` ring of `backends` at their weights now (slow start does not apply: a
/// backend's points on the ring are its whole share or nothing).
pub(super) fn ring_of(backends: &[Arc<Backend>]) -> Ring {
    Ring::build(
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b.name.as_str(), b.weight())),
    )
}

impl Pool {
    /// The index of the backend named `name` (its address as written in the config, or the
    /// address it resolved to).
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends
            .iter()
            .position(|b| b.name == name)
            .or_else(|| {
                self.backends
                    .iter()
                    .position(|b| b.addr.to_string() == name)
            })
    }

    /// Whether the request waits in the queue: a backend it could use is only full.
    pub fn waits_for_slot(&self, tried: &[usize]) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| !tried.contains(&i) && b.is_available() && b.is_full())
    }

    /// Sets a backend's admin state and returns the one before. `maint` also marks it
    /// unhealthy (its checks pause); back to `ready` from `maint` it is healthy at once
    /// without active checks, else after its next passing check. Back to `ready` it ramps up
    /// under slow start.
    pub fn set_admin_state(&self, index: usize, state: AdminState) -> AdminState {
        let backend = &self.backends[index];
        let before = backend.capacity.swap_admin_state(state);
        if before == state {
            return before;
        }
        match (before, state) {
            (_, AdminState::Maint) => {
                backend.check_successes.store(0, Ordering::Relaxed);
                backend.check_failures.store(0, Ordering::Relaxed);
                backend.healthy.store(false, Ordering::Release);
            }
            (AdminState::Maint, _) => match &self.health_check {
                Some(check) => {
                    backend.check_failures.store(0, Ordering::Relaxed);
                    let one_more = check.healthy_threshold.saturating_sub(1);
                    backend.check_successes.store(one_more, Ordering::Relaxed);
                }
                None => backend.healthy.store(true, Ordering::Release),
            },
            _ => {}
        }
        if state == AdminState::Ready && backend.is_healthy() {
            backend.capacity.begin_ramp(capacity::now_ms());
        }
        self.rebuild();
        log::info!(
            "upstream {} backend {}: admin state {} (was {})",
            self.name,
            backend.name,
            state.as_str(),
            before.as_str()
        );
        before
    }

    /// Sets the weights of backends by index (1 to `MAX_WEIGHT`, checked by the caller)
    /// until the next reload, which restores the file's.
    pub fn set_weights(&self, weights: &[(usize, u32)]) {
        for &(index, weight) in weights {
            self.backends[index].weight.store(weight, Ordering::Relaxed);
        }
        if let Some(ring) = &self.ring {
            ring.store(Arc::new(ring_of(&self.backends)));
        }
        self.rebuild();
        let list: Vec<String> = weights
            .iter()
            .map(|&(i, w)| format!("{}={w}", self.backends[i].name))
            .collect();
        log::info!("upstream {}: weights set: {}", self.name, list.join(", "));
    }

    /// Rebuilds the schedule when a backend began a ramp or a ramp step is due.
    pub(super) fn refresh_ramps(&self, now: u64) {
        if self.capacity.slow_start.is_none() {
            return;
        }
        let starts = capacity::ramp_starts();
        let started = self.ramp_seen.swap(starts, Ordering::AcqRel) != starts;
        let due = self.ramp_next.load(Ordering::Acquire);
        // One request claims a due step; the others go on with the current schedule.
        let stepped = now >= due
            && self
                .ramp_next
                .compare_exchange(due, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if started || stepped {
            self.rebuild_at(now);
        }
    }

    /// [`Pool::rebuild`] at time `now`.
    pub fn rebuild_at(&self, now: u64) {
        let mut next = u64::MAX;
        let members: Vec<(usize, u32)> = self
            .backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                if let Some(due) = b.capacity.update(b.weight(), now) {
                    next = next.min(due);
                }
                (b.is_healthy() && b.admin_state() == AdminState::Ready)
                    .then(|| (i, b.capacity.effective()))
            })
            .collect();
        self.ramp_next.store(next, Ordering::Release);
        self.rr.rebuild(&members);
        // Health, drain or weights changed: waiting requests look again.
        self.waiters.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{self, BackendSpec, HashKey, RetryPolicy, Strategy};

    fn upstream(weights: &[u32], strategy: Strategy, slow_start: Option<u64>) -> config::Upstream {
        config::Upstream {
            strategy,
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| BackendSpec {
                    name: format!("127.0.0.1:{}", 9000 + i),
                    addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    host: format!("127.0.0.1:{}", 9000 + i),
                    weight,
                    backup: false,
                    discovered: false,
                    max_conns: None,
                })
                .collect(),
            health_check: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            hash_key: HashKey::ClientIp,
            sticky: None,
            retry: RetryPolicy::default(),
            passive_health: None,
            required: true,
            max_in_flight: None,
            tls: None,
            http2: false,
            discover: Vec::new(),
            discovery: config::Discovery::default(),
            discovery_due: None,
            capacity: config::Capacity {
                slow_start: slow_start.map(Duration::from_secs),
                ..config::Capacity::default()
            },
        }
    }

    /// How many of `n` picks at time `now` go to backend `index`.
    fn share(p: &Pool, now: u64, n: usize, index: usize) -> usize {
        (0..n)
            .filter(|_| p.select_at(now, None, &[]).unwrap().0 == index)
            .count()
    }

    /// A time far from the real clock, so that only the test's times count.
    const T0: u64 = 1 << 40;

    #[test]
    fn a_recovered_backend_ramps_from_a_tenth_to_its_full_share() {
        let p = Pool::new("p", &upstream(&[1, 1], Strategy::RoundRobin, Some(10)));
        assert!(!p.backends[1].capacity.is_ramping(), "not at first start");
        p.set_healthy(1, false);
        p.set_healthy(1, true);
        p.backends[1].capacity.begin_ramp(T0);
        // Weights 10:1 in tenths: 1 of every 11.
        assert_eq!(share(&p, T0, 110, 1), 10);
        // Half way (step 5): 1/10 + 45/100 of the weight, 10:5.
        assert_eq!(share(&p, T0 + 5_000, 111, 1), 37);
        // Done: 1:1.
        assert_eq!(share(&p, T0 + 10_000, 110, 1), 55);
        assert!(!p.backends[1].capacity.is_ramping());
    }

    #[test]
    fn without_slow_start_a_recovered_backend_gets_its_share_at_once() {
        let p = Pool::new("p", &upstream(&[1, 1], Strategy::RoundRobin, None));
        p.set_healthy(1, false);
        p.set_healthy(1, true);
        p.backends[1].capacity.begin_ramp(T0);
        assert_eq!(share(&p, T0, 110, 1), 55);
    }

    #[test]
    fn a_backend_joining_on_reload_ramps_and_the_others_do_not() {
        let before = Pool::new("p", &upstream(&[1], Strategy::RoundRobin, Some(10)));
        let after = Pool::with_previous(
            "p",
            &upstream(&[1, 1], Strategy::RoundRobin, Some(10)),
            Some(&before),
        );
        assert!(!after.backends[0].capacity.is_ramping());
        assert!(after.backends[1].capacity.is_ramping());
        after.backends[1].capacity.begin_ramp(T0);
        assert_eq!(share(&after, T0, 110, 1), 10);
    }

    #[test]
    fn least_connections_weighs_a_ramping_backends_connections() {
        let p = Pool::new(
            "p",
            &upstream(&[1, 1], Strategy::LeastConnections, Some(10)),
        );
        p.backends[1].capacity.begin_ramp(T0);
        p.rebuild_at(T0);
        let _busy: Vec<_> = (0..5).map(|_| p.backends[0].start_request()).collect();
        let _one = p.backends[1].start_request();
        // 5 on weight 1 beats 1 on weight 1/10.
        assert_eq!(p.select_at(T0, None, &[]).unwrap().0, 0);
        // Ramped up, 1 beats 5.
        assert_eq!(p.select_at(T0 + 10_000, None, &[]).unwrap().0, 1);
    }

    #[test]
    fn full_backends_are_skipped_and_make_the_request_wait() {
        let mut conf = upstream(&[1, 1], Strategy::RoundRobin, None);
        conf.backends[0].max_conns = Some(1);
        conf.backends[1].max_conns = Some(1);
        let p = Pool::new("p", &conf);
        let a = p.backends[0].try_start_request().expect("room");
        assert!(p.backends[0].try_start_request().is_none());
        assert!(p.backends[0].is_full());
        for _ in 0..4 {
            assert_eq!(p.select(None, &[]).unwrap().0, 1);
        }
        let _b = p.backends[1].try_start_request().expect("room");
        assert!(p.select(None, &[]).is_none());
        assert!(p.waits_for_slot(&[]));
        assert!(!p.waits_for_slot(&[0, 1]));
        drop(a);
        assert_eq!(p.select(None, &[]).unwrap().0, 0);
    }

    #[test]
    fn drain_and_maint_take_a_backend_out_and_ready_returns_it() {
        for strategy in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::IpHash,
        ] {
            let p = Pool::new("p", &upstream(&[1, 1], strategy, None));
            assert_eq!(p.set_admin_state(0, AdminState::Drain), AdminState::Ready);
            assert!(p.backends[0].is_healthy() && !p.backends[0].is_available());
            for key in 0..20 {
                assert_eq!(p.select(Some(key), &[]).unwrap().0, 1, "{strategy:?}");
            }
            p.set_admin_state(0, AdminState::Maint);
            assert!(!p.backends[0].is_healthy());
            p.backends[0].reset_health();
            assert!(!p.backends[0].is_healthy(), "maint stays down");
            p.set_admin_state(0, AdminState::Ready);
            assert!(p.backends[0].is_available());
            let picked: Vec<usize> = (0..20).map(|k| p.select(Some(k), &[]).unwrap().0).collect();
            assert!(picked.contains(&0), "{strategy:?}: {picked:?}");
        }
    }

    #[test]
    fn weights_change_the_split_and_the_ring() {
        let p = Pool::new("p", &upstream(&[1, 1], Strategy::RoundRobin, None));
        p.set_weights(&[(0, 3)]);
        assert_eq!(share(&p, 0, 40, 0), 30);
        let ring = Pool::new("p", &upstream(&[1, 1], Strategy::IpHash, None));
        ring.set_weights(&[(0, 9)]);
        let heavy = (0..1000u64)
            .filter(|k| {
                let key = crate::upstream::selection::ring::hash_key(&k.to_be_bytes());
                ring.select(Some(key), &[]).unwrap().0 == 0
            })
            .count();
        assert!(heavy > 800, "{heavy}");
        assert_eq!(ring.backend_index("127.0.0.1:9001"), Some(1));
        assert_eq!(ring.backend_index("10.0.0.1:1"), None);
    }
}
