//! Hostile and broken traffic: malformed requests, limits, slow clients, dying backends,
//! aborted clients. Each case asserts the answer and that the proxy keeps serving.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{
    client, pool_config, spawn_origin, spawn_origin_at, spawn_pool, spawn_proxy, upstream,
    wait_until, Proxy,
};

/// Sends raw bytes and returns the status of the answer (0 when the connection closed
/// without one) and the head of the answer.
async fn raw(proxy: &Proxy, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

async fn proxy_with(origin: &crate::common::Origin, server: &str, extra: &str) -> Proxy {
    spawn_proxy(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n{server}{}",
        pool_config(&[(origin.addr, 1)], extra)
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_and_are_never_forwarded() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "  max_header_size: 8KiB\n  max_body_size: 1KiB\n", "").await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("bad header name", b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".to_vec(), 400),
        ("oversize header", big_header.into_bytes(), 431),
        ("body over max_body_size", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n".to_vec(), 413),
        ("invalid Host", b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n".to_vec(), 400),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            "Content-Length and Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            400,
        ),
        (
            "differing Content-Length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
            400,
        ),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n".to_vec(), 400),
        ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n".to_vec(), 400),
    ];
    for (name, bytes, expected) in cases {
        let (status, head) = raw(&proxy, &bytes).await;
        assert!(
            status == expected || (expected == 400 && (400..500).contains(&status)),
            "{name}: got {status} ({head})"
        );
        assert!(
            !head.contains("127.0.0.1"),
            "{name}: answer names an address"
        );
    }
    assert_eq!(o.hits(), 0, "a rejected request reached the origin");
    // A chunked body over the limit is cut off with 413.
    let chunk = "x".repeat(900);
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n384\r\n{chunk}\r\n384\r\n{chunk}\r\n0\r\n\r\n"
    );
    let (status, _) = raw(&proxy, chunked.as_bytes()).await;
    assert_eq!(status, 413);
    // Still serving, with its own Server header.
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["server"], "switchyard");
}

/// An origin that answers every connection with `answer` and then closes.
async fn scripted_origin(answer: &'static [u8], hold: Option<Duration>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                if let Some(hold) = hold {
                    tokio::time::sleep(hold).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_backends_get_clean_errors() {
    let malformed = scripted_origin(b"NOT HTTP AT ALL\r\n\r\n", None).await;
    let cut = scripted_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: text/plain\r\n\r\npartial",
        None,
    )
    .await;
    let silent = scripted_origin(b"", Some(Duration::from_secs(10))).await;
    let good = spawn_origin("good").await;
    let config = format!(
        "upstreams:\n{}{}{}{}routes:\n  - match: {{ path_prefix: /malformed }}\n    upstream: malformed\n  - match: {{ path_prefix: /cut }}\n    upstream: cut\n  - match: {{ path_prefix: /silent }}\n    upstream: silent\n  - match: {{ path_prefix: / }}\n    upstream: good\n",
        upstream("malformed", &[(malformed, 1)], "    retries: 0\n"),
        upstream("cut", &[(cut, 1)], "    retries: 0\n"),
        upstream("silent", &[(silent, 1)], "    read_timeout: 500ms\n    retries: 0\n"),
        upstream("good", &[(good.addr, 1)], ""),
    );
    let proxy = spawn_proxy(&config).await;
    let resp = client().get(proxy.url("/malformed")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let resp = client().get(proxy.url("/silent")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    // Killed mid-response: the client sees the body end early, never a complete answer.
    let cut_result = match client().get(proxy.url("/cut")).send().await {
        Ok(resp) => resp.bytes().await.map(|b| b.len()),
        Err(e) => Err(e),
    };
    assert!(cut_result.is_err() || cut_result.is_ok_and(|n| n < 100000));
    // In-flight counts return to zero and the proxy keeps serving.
    wait_until(Duration::from_secs(3), || async {
        let stats = proxy.stats().await;
        ["malformed", "cut", "silent", "good"]
            .iter()
            .all(|u| stats["upstreams"][*u]["backends"][0]["in_flight"] == 0)
    })
    .await;
    assert_eq!(proxy.get("/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_clients_leak_nothing() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "", "").await;
    // Mid-download: ask for a slow big answer, read a little, hang up.
    for _ in 0..5 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /slow/300?size=2000000 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    // Mid-upload: promise a body, send part of it, hang up.
    for _ in 0..5 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\npartial")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    wait_until(Duration::from_secs(5), || async {
        let stats = proxy.stats().await;
        stats["active_requests"] == 0 && stats["upstreams"]["pool"]["backends"][0]["in_flight"] == 0
    })
    .await;
    assert_eq!(proxy.get("/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_503_with_retry_after_and_admin_stays_up() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "  max_connections: 4\n", "    max_in_flight: 2\n").await;
    // max_in_flight: two slow requests fill the upstream.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client().get(proxy.url("/slow/800")).send()))
        .collect();
    wait_until(Duration::from_secs(3), || async {
        proxy.stats().await["upstreams"]["pool"]["backends"][0]["in_flight"] == 2
    })
    .await;
    let start = Instant::now();
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(start.elapsed() < Duration::from_millis(500), "no hang");
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().status(), 200);
    }
    // max_connections: four idle connections hold every slot; the fifth is refused.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, head) = raw(&proxy, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let health = client()
        .get(proxy.admin_url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(proxy.stats().await["refused_connections"].as_u64().unwrap() >= 1);
    drop(idle);
    wait_until(Duration::from_secs(3), || async {
        proxy.get("/").await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_and_do_not_block_others() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "  header_timeout: 1s\n", "").await;
    // 200 connections that send half a header and stall.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(s);
    }
    // Normal traffic flows meanwhile.
    for _ in 0..20 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    // The stalled ones are closed after the header timeout.
    let start = Instant::now();
    let mut closed = 0;
    for s in stalled.iter_mut() {
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 200);
    assert!(start.elapsed() < Duration::from_secs(4));
}

/// Reads until the peer closes (`true`) or `within` passes (`false`), discarding data.
async fn closes_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_their_timeouts() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "  header_timeout: 1s\n  keepalive_timeout: 2s\n", "").await;
    // A connection that never sends a byte waits header_timeout, not longer.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(!closes_within(&mut silent, Duration::from_millis(500)).await);
    assert!(closes_within(&mut silent, Duration::from_secs(3)).await);

    // A keep-alive connection serves its next request while idle less than keepalive_timeout,
    // and is closed once idle longer.
    let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
    let request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    for _ in 0..2 {
        kept.write_all(request).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert!(!closes_within(&mut kept, Duration::from_millis(300)).await);
    assert!(closes_within(&mut kept, Duration::from_secs(3)).await);
    assert_eq!(proxy.get("/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_backend_costs_almost_no_errors() {
    let steady = spawn_origin("steady").await;
    let flapping = spawn_origin("flap").await;
    let flap_addr = flapping.addr;
    let proxy = std::sync::Arc::new(
        spawn_pool(
            &[(steady.addr, 1), (flap_addr, 1)],
            "    retries: 2\n    retry_on: [connect_failure, timeout, 502, 503, 504]\n    health_check: { type: tcp, interval: 200ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1 }\n    passive_health: { consecutive_failures: 1, ejection_time: 1s }\n",
        )
        .await,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (proxy, stop) = (proxy.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                let c = client();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match c.get(proxy.url("/")).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut origin = Some(flapping);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        origin = match origin.take() {
            Some(o) => {
                o.stop();
                drop(o);
                None
            }
            None => Some(spawn_origin_at("flap", flap_addr).await),
        };
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for t in load {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed += f;
    }
    let rate = failed as f64 / (ok + failed) as f64;
    println!(
        "flapping backend: {failed} failed of {} ({:.4}%)",
        ok + failed,
        rate * 100.0
    );
    assert!(ok > 500, "the load ran ({ok})");
    assert!(
        rate < 0.001,
        "error rate {:.4}% ({failed} of {})",
        rate * 100.0,
        ok + failed
    );
}
