//! Front-end refusals: a header over `max_header_size` (431), a malformed head (400) and
//! connections over `max_connections` or `max_connections_per_ip` (503) each get an access
//! log line; the per-address limit is counted in `/stats` and the metrics, and reloads live.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{spawn_origin, spawn_proxy, upstream, wait_until, Proxy};

/// A connection to `to` from the address `from` (any port).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends `bytes` on `s` and returns what came back up to the end of the answer's header
/// (empty when the connection closed without one, or after 5 s).
async fn answer_head(s: &mut TcpStream, bytes: &[u8]) -> String {
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends `bytes` from a connection bound to `from` (any port) and returns the answer's status
/// (0 when the connection closed without one).
async fn send_from(from: &str, to: SocketAddr, bytes: &[u8]) -> u16 {
    let mut s = connect_from(from, to).await;
    answer_head(&mut s, bytes)
        .await
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The log's JSON lines, once `pred` holds for one of them (or after 5 s).
async fn log_lines(log: &Path, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let read = || -> Vec<Value> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    };
    let limit = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < limit && !read().iter().any(&pred) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    read()
}

fn config(log: &Path, server: &str, origin: SocketAddr) -> String {
    format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  grace_period: 5s\n{server}access_log:\n  path: {}\nupstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n",
        log.display(),
        upstream("pool", &[(origin, 1)], ""),
    )
}

/// Opens `n` keep-alive connections from `from`, each answered once and then left idle (each
/// holds a slot).
async fn idle(from: &str, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut stream = connect_from(from, to).await;
        // A request answered on it proves the proxy has counted it before the next one opens
        // (connections are taken up on two threads, not always in the order they arrived).
        let head = answer_head(&mut stream, GET).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(stream);
    }
    held
}

const GET: &[u8] = b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_end_refusals_have_access_log_lines() {
    let o = spawn_origin("o").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let server = "  max_header_size: 8KiB\n  max_connections: 3\n";
    let proxy = spawn_proxy(&config(&log, server, o.addr)).await;
    let big = format!(
        "GET /big?q=1 HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(
        send_from("127.0.0.1", proxy.addr, big.as_bytes()).await,
        431
    );
    let garbage = b"GARBAGE\r\n\r\n";
    assert_eq!(send_from("127.0.0.1", proxy.addr, garbage).await, 400);
    let bad_field = b"POST /form HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n";
    assert_eq!(send_from("127.0.0.1", proxy.addr, bad_field).await, 400);
    let held = idle("127.0.0.1", proxy.addr, 3).await;
    assert_eq!(send_from("127.0.0.1", proxy.addr, GET).await, 503);
    drop(held);

    let lines = log_lines(&log, |l| l["status"] == 503).await;
    let find = |status: u16, path: &str| {
        lines
            .iter()
            .find(|l| l["status"] == status && l["path"] == path)
            .unwrap_or_else(|| panic!("no {status} {path:?} line in {lines:#?}"))
    };
    let too_large = find(431, "/big");
    assert_eq!(too_large["method"], "GET");
    assert_eq!(too_large["query"], "q=1");
    assert_eq!(too_large["client_ip"], "127.0.0.1");
    assert_eq!(too_large["error"], "request header too large");
    assert!(too_large["time"].as_str().unwrap().ends_with('Z'));
    let malformed = find(400, "");
    assert_eq!(malformed["error"], "malformed request header");
    assert_eq!(malformed["client_ip"], "127.0.0.1");
    let bad_field = find(400, "/form");
    assert_eq!(bad_field["method"], "POST");
    let over = find(503, "/ok");
    assert_eq!(over["error"], "too many connections");
    assert_eq!(over["method"], "GET");
    // The proxy's own count: a client of a test that ended may still knock on a reused port.
    let stats = proxy.stats().await;
    let sent = &stats["upstreams"]["pool"]["backends"][0]["requests_total"];
    // Only the three held connections' requests (see `idle`).
    assert_eq!(sent, 3, "a refused request reached the origin");
    assert_eq!(stats["connections_refused"]["max_connections"], 1);
    assert_eq!(stats["refused_connections"], 1);
}

async fn refused_per_ip(proxy: &Proxy) -> u64 {
    proxy.stats().await["connections_refused"]["max_connections_per_ip"]
        .as_u64()
        .expect("connections_refused.max_connections_per_ip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_refuses_one_address_and_reloads() {
    let o = spawn_origin("o").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = spawn_proxy(&config(&log, "  max_connections_per_ip: 2\n", o.addr)).await;
    let held = idle("127.0.0.1", proxy.addr, 2).await;
    // A third connection from the same address is refused; another address is served.
    assert_eq!(send_from("127.0.0.1", proxy.addr, GET).await, 503);
    assert_eq!(send_from("127.0.0.2", proxy.addr, GET).await, 200);
    assert_eq!(refused_per_ip(&proxy).await, 1);
    assert!(proxy
        .metrics()
        .await
        .contains("switchyard_connections_refused_total{reason=\"max_connections_per_ip\"} 1"));
    let lines = log_lines(&log, |l| l["status"] == 503).await;
    let line = lines.iter().find(|l| l["status"] == 503).unwrap();
    assert_eq!(line["error"], "too many connections from this address");
    assert_eq!(line["client_ip"], "127.0.0.1");
    // Closed connections give their slots back.
    drop(held);
    wait_until(Duration::from_secs(3), || async {
        send_from("127.0.0.1", proxy.addr, GET).await == 200
    })
    .await;
    // A reload raises the limit for connections already open.
    let held = idle("127.0.0.1", proxy.addr, 2).await;
    let refused = refused_per_ip(&proxy).await;
    proxy.rewrite_config(&config(&log, "  max_connections_per_ip: 5\n", o.addr));
    let (status, body) = proxy.reload().await;
    assert_eq!(status, 200, "{body}");
    let changed = body["changed"].as_array().unwrap();
    assert!(
        changed.iter().any(|c| c == "server.max_connections_per_ip"),
        "{body}"
    );
    assert_eq!(send_from("127.0.0.1", proxy.addr, GET).await, 200);
    assert_eq!(refused_per_ip(&proxy).await, refused);
    // An invalid value is refused at load and the running limit stays.
    proxy.rewrite_config(&config(&log, "  max_connections_per_ip: 0\n", o.addr));
    let (status, body) = proxy.reload().await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("server.max_connections_per_ip"), "{error}");
    assert!(error.contains("at least 1"), "{error}");
    assert_eq!(send_from("127.0.0.1", proxy.addr, GET).await, 200);
    drop(held);
}
