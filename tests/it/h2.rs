//! HTTP/2 to clients over real sockets: h2c with prior knowledge on a plain listener, the
//! cache, compression, conditional requests and sticky sessions over h2 (TLS, ALPN), floods of
//! resets and control frames, and GOAWAY on graceful shutdown.

use std::time::Duration;

use reqwest::Version;

use crate::common::{client, h2c_client, spawn_origin, spawn_proxy, upstream, wait_until, Proxy};
use crate::tls::{tls_block, tls_client, Ca};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_only_when_enabled() {
    let origin = spawn_origin("o").await;
    let config = |h2c: bool| {
        format!(
            "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  h2c: {h2c}\nupstreams:\n{}routes:\n  - upstream: pool\n",
            upstream("pool", &[(origin.addr, 1)], "")
        )
    };
    let proxy = spawn_proxy(&config(true)).await;
    for path in ["/a", "/PRI", "/b"] {
        let resp = h2c_client().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.headers()["x-seen-forwarded-proto"], "http");
    }
    // HTTP/1.1 still works on the same port, including a method that starts with P.
    let resp = client()
        .put(proxy.url("/p"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_11);
    // Counted when each request is logged, just after its response.
    wait_until(Duration::from_secs(5), || async {
        proxy
            .metrics()
            .await
            .contains("switchyard_client_requests_total{protocol=\"h2\",tls=\"false\"} 3")
    })
    .await;

    let off = spawn_proxy(&config(false)).await;
    assert!(h2c_client().get(off.url("/a")).send().await.is_err());
    assert_eq!(
        client().get(off.url("/a")).send().await.unwrap().status(),
        200
    );
}

/// A TLS proxy whose route caches, compresses and pins with a sticky cookie.
async fn full_proxy(origins: &[std::net::SocketAddr], ca: &Ca, dir: &std::path::Path) -> Proxy {
    let pair = ca.leaf(&["c.test"]).write(dir, "c");
    let backends: Vec<_> = origins.iter().map(|a| (*a, 1)).collect();
    spawn_proxy(&format!(
        "{}compression:\n  algorithms: [gzip]\n  min_size: 1024\nupstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n    cache: {{ enabled: true }}\n",
        tls_block(&[pair], ""),
        upstream(
            "pool",
            &backends,
            "    sticky:\n      cookie: PIN\n      ttl: 1h\n      secret: s3cret\n"
        )
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_compression_etag_and_sticky_work_over_h2() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let proxy = full_proxy(&[a.addr, b.addr], &ca, dir.path()).await;
    let tls = proxy.tls.unwrap();
    let h2 = tls_client(Some(&ca), "c.test", tls).build().unwrap();
    let url = |path: &str| format!("https://c.test:{}{path}", tls.port());

    // A miss, then a hit, both over h2.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let resp = h2.get(url("/c?cc=max-age=60")).send().await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        statuses.push(resp.headers()["cache-status"].to_str().unwrap().to_string());
    }
    assert!(statuses[0].contains("miss"), "{statuses:?}");
    assert!(statuses[1].contains("hit"), "{statuses:?}");
    assert_eq!(a.hits() + b.hits(), 1);

    // Compressed.
    let resp = h2
        .get(url("/page?page=20000&type=text/html&cc=no-store"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let body = resp.bytes().await.unwrap();
    assert!(body.len() < 20000 && body.starts_with(&[0x1f, 0x8b]));

    // A conditional request answered 304 from the cache.
    let first = h2
        .get(url("/e?etag=v1&cc=max-age=60"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.headers()["etag"], "\"v1\"");
    let resp = h2
        .get(url("/e?etag=v1&cc=max-age=60"))
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 304);

    // Sticky: the cookie from an h2 response pins the next h2 requests.
    let resp = h2.get(url("/s?cc=no-store")).send().await.unwrap();
    let pinned = resp.headers()["x-origin"].to_str().unwrap().to_string();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    for _ in 0..6 {
        let resp = h2
            .get(url("/s?cc=no-store"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.headers()["x-origin"], pinned.as_str());
    }
}

/// A raw HTTP/2 client connection (h2c prior knowledge) and the task driving it.
async fn raw_h2(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(connection))
}

fn h2c_config(origin: std::net::SocketAddr, grace: &str) -> String {
    format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  h2c: true\n  grace_period: {grace}\n  h2_max_concurrent_streams: 10\nupstreams:\n{}routes:\n  - upstream: pool\n",
        upstream("pool", &[(origin, 1)], "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_resets_and_settings_floods_do_not_stop_other_clients() {
    let origin = spawn_origin("o").await;
    let proxy = spawn_proxy(&h2c_config(origin.addr, "5s")).await;
    let (send, _abuser) = raw_h2(proxy.addr).await;
    let flood = tokio::spawn(async move {
        let mut send = send;
        for _ in 0..3000 {
            let Ok(ready) = send.ready().await else {
                return;
            };
            send = ready;
            let req = http::Request::get("http://f.test/slow/100")
                .body(())
                .unwrap();
            match send.send_request(req, true) {
                // Dropping the response at once resets the stream (RST_STREAM CANCEL).
                Ok((response, _)) => drop(response),
                Err(_) => return,
            }
        }
    });
    // A SETTINGS and PING flood on a raw socket.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for i in 0..5000u32 {
        if i % 2 == 0 {
            frames.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 10]);
        } else {
            frames.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
            frames.extend_from_slice(&i.to_be_bytes());
            frames.extend_from_slice(&[0; 4]);
        }
    }
    let flooder = tokio::spawn(async move {
        let _ = raw.write_all(&frames).await;
        raw
    });
    // Meanwhile another client keeps getting answers.
    let good = h2c_client();
    for i in 0..20 {
        let resp = good
            .get(proxy.url(&format!("/ok{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), flood).await;
    let _ = flooder.await;
    let resp = good.get(proxy.url("/after")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sends_goaway_and_finishes_the_stream_in_flight() {
    let origin = spawn_origin("o").await;
    let mut proxy = spawn_proxy(&h2c_config(origin.addr, "10s")).await;
    let (send, connection) = raw_h2(proxy.addr).await;
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get("http://g.test/slow/1500")
        .body(())
        .unwrap();
    let (response, _) = send.send_request(req, true).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the in-flight stream finished")
        .expect("the in-flight stream was answered");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(bytes, b"o");
    // GOAWAY: the connection ends cleanly, and no new stream is accepted on it.
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(matches!(ended, Ok(Ok(_))), "{ended:?}");
    let exit = tokio::task::spawn_blocking(move || proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_resetting_streams_faster_than_they_finish_is_sent_goaway() {
    let origin = spawn_origin("o").await;
    // At most 10 concurrent streams: a client that resets over 20 streams, more than it let
    // finish, is flooding.
    let proxy = spawn_proxy(&h2c_config(origin.addr, "5s")).await;
    let (mut send, connection) = raw_h2(proxy.addr).await;
    let mut opened = 0;
    for _ in 0..300 {
        let Ok(ready) = send.ready().await else {
            break;
        };
        send = ready;
        let req = http::Request::get("http://f.test/slow/1000")
            .body(())
            .unwrap();
        let Ok((response, _)) = send.send_request(req, true) else {
            break;
        };
        opened += 1;
        // Reset once the proxy took the stream up: a stream reset before that is counted by
        // the HTTP/2 codec itself (`max_pending_accept_reset_streams`).
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(response);
    }
    assert!(opened > 20, "the client could open {opened} streams");
    // GOAWAY: the connection ends once the handlers it started are done.
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "the flooding connection was not closed");
    // The streams over the line never reached the backend.
    let reached = origin.hits();
    assert!(
        reached <= 25,
        "{reached} of {opened} reset streams reached the backend"
    );
    let metrics = proxy.metrics().await;
    let floods: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_h2_reset_floods_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(floods, 1, "opened {opened}, reached {reached}");
    // Other connections are served as before.
    let resp = h2c_client().get(proxy.url("/after")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
