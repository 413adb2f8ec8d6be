//! The PROXY protocol over real sockets: v1 and v2 headers name the client on plain and TLS
//! listeners, a connection without one is closed, and a header where none is expected is a 400.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{spawn_origin, spawn_proxy, upstream, Proxy};
use crate::tls::{tls_block, Ca};

const REQUEST: &[u8] = b"GET /who HTTP/1.1\r\nHost: p.test\r\nConnection: close\r\n\r\n";

/// A v2 PROXY header for a TCP over IPv4 client `src`.
fn v2(src: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(src) = src else {
        panic!("IPv4 only")
    };
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&src.ip().octets());
    out.extend_from_slice(&[127, 0, 0, 1]);
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&80u16.to_be_bytes());
    out
}

/// Writes `bytes`, then reads everything the proxy answers (empty when it just closed).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, bytes: &[u8]) -> String {
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

fn forwarded_for(answer: &str) -> Option<&str> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-seen-forwarded-for: "))
}

async fn proxy(origin: SocketAddr, server_proxy_protocol: bool, tls: &str) -> Proxy {
    spawn_proxy(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  proxy_protocol: {server_proxy_protocol}\n{tls}upstreams:\n{}routes:\n  - upstream: pool\n",
        upstream("pool", &[(origin, 1)], "")
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_headers_set_the_client_address() {
    let origin = spawn_origin("o").await;
    let proxy = proxy(origin.addr, true, "").await;
    let connect = || async { TcpStream::connect(proxy.addr).await.unwrap() };
    let v1 = [
        b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".as_slice(),
        REQUEST,
    ]
    .concat();
    let answer = exchange(connect().await, &v1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&answer), Some("203.0.113.7"), "{answer}");

    let v2 = [v2("198.51.100.9:4242".parse().unwrap()), REQUEST.to_vec()].concat();
    let answer = exchange(connect().await, &v2).await;
    assert_eq!(forwarded_for(&answer), Some("198.51.100.9"), "{answer}");

    // Sent in pieces, the header still counts.
    let mut stream = connect().await;
    stream.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = exchange(
        stream,
        &[b"127.0.0.1 1 80\r\n".as_slice(), REQUEST].concat(),
    )
    .await;
    assert_eq!(forwarded_for(&answer), Some("192.0.2.1"), "{answer}");

    // No header: closed without an answer.
    let answer = exchange(connect().await, REQUEST).await;
    assert_eq!(answer, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_where_none_is_expected_is_a_bad_request() {
    let origin = spawn_origin("o").await;
    let proxy = proxy(origin.addr, false, "").await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let v1 = [
        b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".as_slice(),
        REQUEST,
    ]
    .concat();
    let answer = exchange(stream, &v1).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_comes_before_the_tls_client_hello() {
    let origin = spawn_origin("o").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let pair = ca.leaf(&["p.test"]).write(dir.path(), "p");
    let tls = tls_block(&[pair], "  proxy_protocol: true\n");
    let proxy = proxy(origin.addr, false, &tls).await;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pki_types::pem::PemObject::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls_addr = proxy.tls.unwrap();

    let mut tcp = TcpStream::connect(tls_addr).await.unwrap();
    tcp.write_all(&v2("198.51.100.20:1000".parse().unwrap()))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("p.test").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let answer = exchange(stream, REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&answer), Some("198.51.100.20"), "{answer}");
    assert!(answer.contains("x-seen-forwarded-proto: https"), "{answer}");

    // Without the header the TLS handshake never starts.
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("p.test").unwrap();
    let handshake = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp));
    assert!(matches!(handshake.await, Ok(Err(_))));
}
