//! Cost of one backend selection per strategy and pool size.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard::config::{Config, Strategy};
use switchyard::upstream::selection::ring::hash_key;
use switchyard::upstream::Pool;

/// A pool of `n` backends with weights 1 to 5, built from YAML as a user would write it.
fn pool(n: usize, strategy: Strategy) -> Pool {
    let backends: String = (0..n)
        .map(|i| {
            format!(
                "      - {{ address: \"10.0.{}.{}:8080\", weight: {} }}\n",
                i / 250,
                i % 250,
                1 + i % 5
            )
        })
        .collect();
    let yaml = format!(
        "upstreams:\n  bench:\n    strategy: {}\n    backends:\n{backends}routes:\n  - upstream: bench\n",
        strategy.as_str()
    );
    let config = Config::parse(&yaml, "bench.yaml").expect("bench config");
    Pool::new("bench", &config.upstreams["bench"])
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
