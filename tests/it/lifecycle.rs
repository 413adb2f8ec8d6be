//! Process lifecycle: SIGTERM closes idle connections, lets in-flight requests finish, then
//! exits 0.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{client, spawn_origin, spawn_pool};

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let a = spawn_origin("a").await;
    let mut proxy = spawn_pool(&[(a.addr, 1)], "").await;
    // A keep-alive connection that has finished its request and sits idle.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let slow = tokio::spawn(client().get(proxy.url("/slow/2000")).send());
    // Let the slow request reach the origin.
    let start = Instant::now();
    while a.hits() < 2 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(proxy.child.id(), "TERM");
    // The idle connection is closed at once, while the slow request is still in flight.
    let closed = tokio::time::timeout(Duration::from_millis(1500), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "idle keep-alive connection not closed on SIGTERM: {closed:?}"
    );
    assert!(!slow.is_finished());
    let resp = slow.await.unwrap().expect("in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "a");

    let start = Instant::now();
    let status = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "did not exit within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    // New connections are refused once it is gone.
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_a_request_whose_header_is_still_arriving() {
    let a = spawn_origin("a").await;
    let mut proxy = spawn_pool(&[(a.addr, 1)], "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Half: ")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(proxy.child.id(), "TERM");
    // Long enough for a drain that ignores the half-read request to have exited.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"yes\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        matches!(read, Ok(Ok(_))) && text.starts_with("HTTP/1.1 200"),
        "the request was not answered: {read:?} {text:?}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(8), "did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}
