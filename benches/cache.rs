//! Cache lookup and hit read for 1 KiB and 100 KiB objects in the memory storage.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_http::ResponseHeader;
use switchyard::cache::storage::MemoryStorage;

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
    let storage = MemoryStorage::leak(256 << 20, 8 << 20, None);
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

criterion_group!(benches, hits);
criterion_main!(benches);
