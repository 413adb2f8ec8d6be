//! Cost of one backend selection per strategy and pool size.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard::config::{BackendSpec, HashKey, RetryPolicy, Strategy, Upstream};
use switchyard::upstream::selection::ring::hash_key;
use switchyard::upstream::Pool;

fn pool(n: usize, strategy: Strategy) -> Pool {
    let backends = (0..n)
        .map(|i| BackendSpec {
            name: format!("10.0.{}.{}:8080", i / 250, i % 250),
            addr: format!("10.0.{}.{}:8080", i / 250, i % 250)
                .parse()
                .unwrap(),
            weight: 1 + (i % 5) as u32,
        })
        .collect();
    Pool::new(
        "bench",
        &Upstream {
            strategy,
            backends,
            health_check: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            hash_key: HashKey::ClientIp,
            sticky: None,
            retry: RetryPolicy::default(),
            passive_health: None,
            max_in_flight: None,
        },
    )
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for n in [3, 16, 256] {
        for strategy in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::IpHash,
        ] {
            let p = pool(n, strategy);
            // Some in-flight load so least-connections compares real counts.
            let _held: Vec<_> = p
                .backends
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 == 0)
                .map(|(_, b)| b.start_request())
                .collect();
            let mut k = 0u32;
            group.bench_with_input(BenchmarkId::new(strategy.as_str(), n), &p, |b, p| {
                b.iter(|| {
                    k = k.wrapping_add(1);
                    let hash = hash_key(&k.to_le_bytes());
                    black_box(p.select(Some(hash), black_box(&[])).map(|(i, _)| i))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, select);
criterion_main!(benches);
