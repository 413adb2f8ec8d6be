//! The request path under hostile or unusual clients: one deadline for a whole request header,
//! the cut-off at `max_header_size`, pipelined requests, keep-alive connections kept after an
//! error answer, and retried bodies against `max_body_size`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{client, pool_config, spawn_origin, spawn_proxy, wait_until, Origin, Proxy};

async fn proxy_with(origin: &Origin, server: &str, extra: &str) -> Proxy {
    spawn_proxy(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n{server}{}",
        pool_config(&[(origin.addr, 1)], extra)
    ))
    .await
}

/// Reads one response with a `Content-Length` body from a kept-alive connection: (status,
/// body); status 0 when the connection closed first.
async fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]);
                    let answer = (status, body.to_string());
                    buf.drain(..end + 4 + length);
                    return answer;
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return (0, String::new()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.unwrap_or((0, String::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_header_is_closed_at_header_timeout() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "  header_timeout: 2s\n", "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let start = Instant::now();
    let header = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "
        .iter()
        .chain(b"a".repeat(100).iter())
        .copied()
        .collect::<Vec<u8>>();
    let mut closed_after = None;
    for byte in header {
        if s.write_all(&[byte]).await.is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
        {
            closed_after = Some(start.elapsed());
            break;
        }
        if start.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let closed_after = closed_after.expect("a trickling client was never closed");
    assert!(
        closed_after < Duration::from_secs(3),
        "closed only after {closed_after:?}"
    );
    assert_eq!(proxy.get("/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_header_gets_431_once_past_max_header_size() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "  max_header_size: 8KiB\n  header_timeout: 10s\n", "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
        .await
        .unwrap();
    // More than max_header_size with no end of header, and the client keeps the header open:
    // the answer must come now, not after Pingora's 1 MiB buffer or the header timeout.
    s.write_all(&b"a".repeat(9000)).await.unwrap();
    let start = Instant::now();
    let (status, _) = read_response(&mut s).await;
    assert_eq!(status, 431);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(o.hits(), 0);
    assert_eq!(proxy.get("/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "", "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /one?n=1 HTTP/1.1\r\nHost: a\r\n\r\nPUT /two?n=2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /three?n=3 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    for path in ["/one?n=1", "/two?n=2", "/three?n=3"] {
        let (status, body) = read_response(&mut s).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(path), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_503_keeps_the_keep_alive_connection() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "", "    max_in_flight: 1\n").await;
    let slow = tokio::spawn(client().get(proxy.url("/slow/1000")).send());
    wait_until(Duration::from_secs(3), || async {
        proxy.stats().await["upstreams"]["pool"]["backends"][0]["in_flight"] == 1
    })
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.0, 503);
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    // The same connection serves the next request.
    s.write_all(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_body_counts_once_against_max_body_size() {
    let bad = spawn_origin("bad").await;
    let good = spawn_origin("good").await;
    bad.set_status(502);
    let proxy = spawn_proxy(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  max_body_size: 1KiB\n{}",
        pool_config(
            &[(bad.addr, 1), (good.addr, 1)],
            "    retries: 1\n    retry_on: [502]\n"
        )
    ))
    .await;
    // 700 bytes: under the limit once, over it if the replayed copy is counted again.
    let body = "x".repeat(700);
    for _ in 0..4 {
        let resp = client()
            .put(proxy.url("/upload"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(
        bad.hits(),
        2,
        "half the requests went to the failing backend first"
    );
}
