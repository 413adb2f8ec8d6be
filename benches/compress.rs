//! Compressing a 100 KiB HTML page with each algorithm at the default levels (throughput and,
//! printed once, ratio), and Accept-Encoding negotiation.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use switchyard::compress::encoder::{sample_html, Encoder};
use switchyard::compress::negotiate::negotiate;
use switchyard::compress::{Algorithm, Levels};

fn compress(page: &[u8], alg: Algorithm) -> usize {
    let mut enc = Encoder::new(alg, &Levels::default()).expect("encoder");
    let mut out = 0;
    for chunk in page.chunks(16 << 10) {
        out += enc.encode(chunk).expect("encode").len();
    }
    out + enc.finish().expect("finish").len()
}

fn encoders(c: &mut Criterion) {
    let page = sample_html(100 << 10);
    let mut group = c.benchmark_group("compress_100k_html");
    group.throughput(Throughput::Bytes(page.len() as u64));
    for alg in Algorithm::ALL {
        let size = compress(&page, alg);
        println!(
            "{}: {} -> {} bytes ({:.1}%)",
            alg.name(),
            page.len(),
            size,
            100.0 * size as f64 / page.len() as f64
        );
        group.bench_function(alg.name(), |b| b.iter(|| compress(black_box(&page), alg)));
    }
    group.finish();
}

fn negotiation(c: &mut Criterion) {
    c.bench_function("negotiate_accept_encoding", |b| {
        b.iter(|| {
            negotiate(
                black_box(Some("gzip, deflate, br;q=0.9, zstd;q=0.8, *;q=0.1")),
                &Algorithm::ALL,
            )
        })
    });
}

criterion_group!(benches, encoders, negotiation);
criterion_main!(benches);
