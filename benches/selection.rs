//! Cost of one backend selection per strategy and pool size.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard::config::{BackendSpec, Strategy, Upstream};
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
        },
    )
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for n in [3, 16, 256] {
        let p = pool(n, Strategy::RoundRobin);
        group.bench_with_input(BenchmarkId::new("round_robin", n), &p, |b, p| {
            b.iter(|| black_box(p.select(black_box(&[])).map(|(i, _)| i)))
        });
    }
    group.finish();
}

criterion_group!(benches, select);
criterion_main!(benches);
