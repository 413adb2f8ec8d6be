//! Pool behaviour: health, ejection, sticky lookups, tried backends.

use super::*;
use crate::config::BackendSpec;

fn upstream(weights: &[u32], strategy: Strategy) -> config::Upstream {
    let backends = weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| BackendSpec {
            name: format!("127.0.0.1:{}", 9000 + i),
            host: format!("127.0.0.1:{}", 9000 + i),
            addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
            weight,
            backup: false,
            discovered: false,
            max_conns: None,
        })
        .collect();
    config::Upstream {
        strategy,
        backends,
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
        capacity: config::Capacity::default(),
    }
}

fn pool(weights: &[u32]) -> Pool {
    Pool::new("p", &upstream(weights, Strategy::RoundRobin))
}

#[test]
fn unhealthy_backends_are_skipped_and_return() {
    let p = pool(&[1, 1, 1]);
    assert!(p.set_healthy(1, false));
    assert!(!p.set_healthy(1, false));
    let picks: Vec<usize> = (0..30).map(|_| p.select(None, &[]).unwrap().0).collect();
    assert!(!picks.contains(&1));
    assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 15);
    assert!(p.set_healthy(1, true));
    let picks: Vec<usize> = (0..30).map(|_| p.select(None, &[]).unwrap().0).collect();
    assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 10);
}

#[test]
fn all_down_selects_none() {
    let p = pool(&[2, 1]);
    p.set_healthy(0, false);
    p.set_healthy(1, false);
    assert!(p.select(None, &[]).is_none());
    assert!(!p.has_candidate(&[]));
}

#[test]
fn tried_backends_are_not_picked_again() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::IpHash,
    ] {
        let p = Pool::new("p", &upstream(&[1, 1], strategy));
        for _ in 0..10 {
            assert_eq!(p.select(Some(42), &[0]).unwrap().0, 1, "{strategy:?}");
        }
        assert!(p.select(Some(42), &[0, 1]).is_none());
        assert!(p.has_candidate(&[0]));
        assert!(!p.has_candidate(&[0, 1]));
    }
}

#[test]
fn ip_hash_is_stable_and_walks_past_unhealthy() {
    let p = Pool::new("p", &upstream(&[1, 1, 1], Strategy::IpHash));
    let first = p.select(Some(7), &[]).unwrap().0;
    for _ in 0..20 {
        assert_eq!(p.select(Some(7), &[]).unwrap().0, first);
    }
    p.set_healthy(first, false);
    let other = p.select(Some(7), &[]).unwrap().0;
    assert_ne!(other, first);
    p.set_healthy(first, true);
    assert_eq!(p.select(Some(7), &[]).unwrap().0, first);
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

#[test]
fn passive_failures_eject_but_never_the_last_backend() {
    let mut conf = upstream(&[1, 1], Strategy::RoundRobin);
    conf.passive_health = Some(PassiveHealth {
        consecutive_failures: 3,
        ejection_time: Duration::from_secs(60),
    });
    let p = Arc::new(Pool::new("p", &conf));
    p.report(0, false);
    p.report(0, false);
    p.report(0, true);
    p.report(0, false);
    p.report(0, false);
    assert!(!p.backends[0].is_ejected(), "a success resets the run");
    p.report(0, false);
    assert!(p.backends[0].is_ejected());
    assert_eq!(p.backends[0].ejections_total(), 1);
    for _ in 0..5 {
        assert_eq!(p.select(None, &[]).unwrap().0, 1);
    }
    for _ in 0..5 {
        p.report(1, false);
    }
    assert!(
        !p.backends[1].is_ejected(),
        "the last available backend stays"
    );
    readmit("p", &p.backends[0]);
    assert!(p.backends[0].is_available());
}

#[test]
fn sticky_cookie_names_a_backend_until_it_is_down() {
    let mut conf = upstream(&[1, 1], Strategy::RoundRobin);
    conf.sticky = Some(config::Sticky {
        cookie: "SID".into(),
        ttl: Duration::from_secs(100),
        secret: Some("s".into()),
    });
    let p = Pool::new("p", &conf);
    let header = p.sticky_cookie(1, 1_000).unwrap();
    let value = header
        .strip_prefix("SID=")
        .and_then(|v| v.split(';').next())
        .unwrap();
    assert_eq!(p.sticky_backend(value, 1_010), Some((1, false)));
    assert_eq!(
        p.sticky_backend(value, 1_060),
        Some((1, true)),
        "refresh past half the ttl"
    );
    p.set_healthy(1, false);
    assert_eq!(p.sticky_backend(value, 1_010), None);
    assert_eq!(p.sticky_backend("garbage", 1_010), None);
}

#[test]
fn state_carries_over_to_the_next_pool() {
    let first = Pool::new("p", &upstream(&[1, 1, 1], Strategy::RoundRobin));
    first.set_healthy(1, false);
    let held = first.backends[0].start_request();
    let mut conf = upstream(&[5, 1], Strategy::RoundRobin);
    conf.backends[1].name = "127.0.0.1:9999".into();
    conf.backends[1].addr = "127.0.0.1:9999".parse().unwrap();
    let second = Pool::with_previous("p", &conf, Some(&first));
    assert!(Arc::ptr_eq(&first.backends[0], &second.backends[0]));
    assert_eq!(second.backends[0].in_flight(), 1);
    assert_eq!(second.backends[0].weight(), 5);
    assert!(
        second.backends[1].is_healthy(),
        "a new backend starts healthy"
    );
    drop(held);
    assert_eq!(second.backends[0].in_flight(), 0);

    // With checks still configured, a backend known down stays down.
    let mut checked = upstream(&[1, 1, 1], Strategy::RoundRobin);
    checked.health_check = Some(check());
    let third = Pool::with_previous("p", &checked, Some(&first));
    assert!(!third.backends[1].is_healthy());
    assert!((0..10).all(|_| third.select(None, &[]).unwrap().0 != 1));
}

fn check() -> config::HealthCheck {
    config::HealthCheck {
        kind: config::CheckKind::Tcp,
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
    }
}

#[test]
fn removing_health_checks_brings_every_backend_back() {
    let mut checked = upstream(&[1, 1, 1], Strategy::RoundRobin);
    checked.health_check = Some(check());
    let first = Pool::new("p", &checked);
    first.set_healthy(1, false);
    first.backends[1].check_failures.store(5, Ordering::Relaxed);
    // The same backends, no checks: nothing would ever put backend 1 back.
    let second = Pool::with_previous(
        "p",
        &upstream(&[1, 1, 1], Strategy::RoundRobin),
        Some(&first),
    );
    assert!(second.backends[1].is_healthy());
    assert!(second.has_candidate(&[0, 2]));
    let picks: Vec<usize> = (0..30)
        .map(|_| second.select(None, &[]).unwrap().0)
        .collect();
    assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 10);
    // A check that was still running when the checks stopped cannot leave it down either.
    let second = Arc::new(second);
    second.backends[1].healthy.store(false, Ordering::Release);
    let tasks = super::health::spawn_all([&second]);
    assert!(tasks.is_empty());
    assert!(second.backends[1].is_healthy());
}

#[test]
fn concurrent_failures_never_eject_the_last_backend() {
    let mut conf = upstream(&[1, 1], Strategy::RoundRobin);
    conf.passive_health = Some(PassiveHealth {
        consecutive_failures: 1,
        ejection_time: Duration::from_secs(60),
    });
    // Both backends fail at the same moment, many times over: one of them must stay.
    let pools: Arc<Vec<Arc<Pool>>> = Arc::new(
        (0..20_000)
            .map(|_| Arc::new(Pool::new("p", &conf)))
            .collect(),
    );
    let start = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (pools, start) = (Arc::clone(&pools), Arc::clone(&start));
            std::thread::spawn(move || {
                for p in pools.iter() {
                    start.wait();
                    p.report(i, false);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let both = pools
        .iter()
        .filter(|p| p.backends.iter().all(|b| b.is_ejected()))
        .count();
    assert_eq!(both, 0, "both backends ejected in {both} rounds");
}

#[test]
fn backups_serve_only_while_no_primary_is_available() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::IpHash,
    ] {
        let mut conf = upstream(&[1, 1, 1], strategy);
        conf.backends[2].backup = true;
        let p = Pool::new("p", &conf);
        for k in 0..20 {
            assert_ne!(p.select(Some(k), &[]).unwrap().0, 2, "{strategy:?}");
        }
        p.set_healthy(0, false);
        assert_eq!(p.select(Some(1), &[]).unwrap().0, 1, "{strategy:?}");
        // A retry after the last primary failed goes to the backup.
        assert_eq!(p.select(Some(1), &[1]).unwrap().0, 2, "{strategy:?}");
        p.set_healthy(1, false);
        for k in 0..10 {
            assert_eq!(p.select(Some(k), &[]).unwrap().0, 2, "{strategy:?}");
        }
        p.set_healthy(1, true);
        for k in 0..10 {
            assert_eq!(p.select(Some(k), &[]).unwrap().0, 1, "{strategy:?}");
        }
    }
}
