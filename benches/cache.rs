//! Cache lookup and hit read for 1 KiB and 100 KiB objects in the memory storage, and the hit
//! ratio of its eviction on a Zipf-distributed key stream, with and without TinyLFU admission.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_http::ResponseHeader;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard::cache::storage::TieredStorage;
use tinyufo::TinyUfo;

fn meta() -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    h.insert_header("Content-Type", "application/json").unwrap();
    h.insert_header("Cache-Control", "max-age=600").unwrap();
    h.insert_header("ETag", "\"v1\"").unwrap();
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(600), now, 0, 0, h)
}

fn hits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let storage = TieredStorage::leak(256 << 20, 8 << 20, None);
    let trace = Span::inactive().handle();
    let mut group = c.benchmark_group("cache_hit");
    for size in [1usize << 10, 100 << 10] {
        let key = CacheKey::new(format!("bench.example.com/item/{size}"), "");
        rt.block_on(async {
            let mut miss = storage
                .get_miss_handler(&key, &meta(), &trace)
                .await
                .unwrap();
            miss.write_body(Bytes::from(vec![b'x'; size]), true)
                .await
                .unwrap();
            miss.finish().await.unwrap();
        });
        group.bench_with_input(BenchmarkId::new("lookup_and_read", size), &key, |b, key| {
            b.iter(|| {
                rt.block_on(async {
                    let (meta, mut hit) = storage.lookup(key, &trace).await.unwrap().unwrap();
                    let mut read = 0;
                    while let Some(chunk) = hit.read_body().await.unwrap() {
                        read += chunk.len();
                    }
                    black_box((meta, read))
                })
            })
        });
    }
    group.finish();
}

/// Keys `0..n` drawn with probability proportional to `1 / (rank + 1)^s`, by inverse CDF
/// (`rand_distr` is not a dependency; this is a dozen lines).
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|rank| {
                total += 1.0 / ((rank + 1) as f64).powf(s);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut StdRng) -> u64 {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.random::<f64>() * total;
        self.cumulative.partition_point(|&c| c < x) as u64
    }
}

/// Replays `requests` Zipf keys through a TinyUFO of `capacity` equal-weight entries: a miss
/// inserts, with `force_put` (what `TieredStorage` does) or `put` (TinyLFU admission first).
/// Returns the hit ratio.
fn hit_ratio(zipf: &Zipf, capacity: usize, requests: usize, admission: bool) -> f64 {
    let cache: TinyUfo<u64, ()> = TinyUfo::new(capacity, capacity);
    let mut rng = StdRng::seed_from_u64(7);
    let mut hits = 0usize;
    for _ in 0..requests {
        let key = zipf.sample(&mut rng);
        if cache.get(&key).is_some() {
            hits += 1;
        } else if admission {
            cache.put(key, (), 1);
        } else {
            cache.force_put(key, (), 1);
        }
    }
    hits as f64 / requests as f64
}

/// Prints the hit ratios (the number that matters here), then times the replay.
fn zipf(c: &mut Criterion) {
    let keys = 100_000;
    println!("zipf hit ratio, {keys} keys, 1,000,000 requests (capacity in entries):");
    for s in [0.8, 1.0] {
        let zipf = Zipf::new(keys, s);
        for capacity in [1_000, 10_000] {
            let forced = hit_ratio(&zipf, capacity, 1_000_000, false);
            let admitted = hit_ratio(&zipf, capacity, 1_000_000, true);
            println!(
                "  s={s} capacity={capacity}: force_put {:.1}%, put (TinyLFU admission) {:.1}%",
                forced * 100.0,
                admitted * 100.0
            );
        }
    }
    let zipf = Zipf::new(keys, 1.0);
    let mut group = c.benchmark_group("zipf_replay_10k");
    for admission in [false, true] {
        let name = if admission { "put" } else { "force_put" };
        group.bench_function(name, |b| {
            b.iter(|| black_box(hit_ratio(&zipf, 1_000, 10_000, admission)))
        });
    }
    group.finish();
}

criterion_group!(benches, hits, zipf);
criterion_main!(benches);
