//! HTTP/2 to backends over real sockets: an origin (h2c, or TLS with ALPN h2) that streams a
//! body and ends it with gRPC-style trailers; they reach an HTTP/2 client through the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{HeaderMap, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use std::sync::Arc;

use crate::common::{spawn_proxy, upstream};
use crate::tls::Ca;

/// An origin speaking HTTP/2 only (with prior knowledge, or over TLS with ALPN `h2` when
/// `tls` is given); every answer is `hello world` in two frames, then the trailers
/// `grpc-status: 0` and `grpc-message: ok`.
async fn spawn_h2_origin_on(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", "ok".parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"hello "))),
                        Ok(Frame::data(Bytes::from_static(b"world"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .header("x-origin-version", format!("{:?}", req.version()))
                            .body(body)
                            .unwrap(),
                    )
                });
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    addr
}

async fn spawn_h2_origin() -> SocketAddr {
    spawn_h2_origin_on(None).await
}

/// An acceptor for `origin.test`, signed by `ca`, offering only `h2`.
fn h2_acceptor(ca: &Ca) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let leaf = ca.leaf(&["origin.test"]);
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_from_an_h2_backend_reach_an_h2_client() {
    let origin = spawn_h2_origin().await;
    trailers_through(origin, "    http2: true\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_to_a_backend_negotiates_h2() {
    let ca = Ca::new("private ca");
    let origin = spawn_h2_origin_on(Some(h2_acceptor(&ca))).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let extra = format!(
        "    http2: true\n    tls: {{ sni: origin.test, ca: {} }}\n",
        ca_file.display()
    );
    trailers_through(origin, &extra).await;
}

/// Three gRPC-style calls from a raw h2c client through a proxy whose upstream is `origin`
/// with `extra` upstream keys: each gets the body and the trailers.
async fn trailers_through(origin: SocketAddr, extra: &str) {
    let proxy = spawn_proxy(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  h2c: true\nupstreams:\n{}routes:\n  - upstream: pool\n",
        upstream("pool", &[(origin, 1)], extra)
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        let mut send = send.clone().ready().await.unwrap();
        let req = http::Request::post("http://g.test/pkg.Service/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = send.send_request(req, false).unwrap();
        body.send_data(Bytes::from_static(b"\0\0\0\0\0"), true)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-origin-version"], "HTTP/2.0");
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        assert_eq!(bytes, b"hello world");
        let trailers = body.trailers().await.unwrap().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "ok");
    }
}
