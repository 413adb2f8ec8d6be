//! Cost of the per-request header rewrites: `X-Forwarded-*` on the way up, hop-by-hop fields
//! stripped on the way down.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora_http::{RequestHeader, ResponseHeader};
use switchyard::proxy::headers::{add_forwarded, strip_hop_by_hop, Hop};

/// What a client such as a browser or wrk sends.
fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/api/items?page=2", None).unwrap();
    req.insert_header("Host", "api.example.com").unwrap();
    req.insert_header("User-Agent", "Mozilla/5.0").unwrap();
    req.insert_header("Accept", "application/json").unwrap();
    req
}

/// What nginx answers by default; `keep_alive` adds its `Connection: keep-alive`.
fn response(keep_alive: bool) -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("Server", "nginx").unwrap();
    resp.insert_header("Date", "Sat, 21 Nov 2026 23:35:00 GMT")
        .unwrap();
    resp.insert_header("Content-Type", "application/json")
        .unwrap();
    resp.insert_header("Content-Length", "1024").unwrap();
    resp.insert_header("Last-Modified", "Sat, 21 Nov 2026 20:00:00 GMT")
        .unwrap();
    resp.insert_header("ETag", "\"6740a1b0-400\"").unwrap();
    resp.insert_header("Cache-Control", "max-age=60").unwrap();
    if keep_alive {
        resp.insert_header("Connection", "keep-alive").unwrap();
    }
    resp
}

fn headers(c: &mut Criterion) {
    let peer = Some("192.0.2.10".parse().unwrap());
    c.bench_function("add_forwarded", |b| {
        b.iter_batched(
            request,
            |mut req| {
                let hop = Hop {
                    peer,
                    trusted: false,
                    host: Some("api.example.com"),
                    proto: "http",
                    port: Some(80),
                };
                add_forwarded(&mut req, &hop).unwrap();
                req
            },
            criterion::BatchSize::SmallInput,
        )
    });
    for (name, keep_alive) in [
        ("strip_hop_by_hop/none", false),
        ("strip_hop_by_hop/keep_alive", true),
    ] {
        c.bench_function(name, |b| {
            b.iter_batched(
                || response(keep_alive),
                |mut resp| {
                    strip_hop_by_hop(black_box(&mut resp));
                    resp
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, headers);
criterion_main!(benches);
