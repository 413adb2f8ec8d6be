//! HTTP/2 to backends over real sockets: an h2c origin that streams a body and ends it with
//! gRPC-style trailers; they reach an HTTP/2 client through the proxy.

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

use crate::common::{spawn_proxy, upstream};

/// An origin speaking HTTP/2 with prior knowledge only; every answer is `hello world` in two
/// frames, then the trailers `grpc-status: 0` and `grpc-message: ok`.
async fn spawn_h2_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
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
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_from_an_h2_backend_reach_an_h2_client() {
    let origin = spawn_h2_origin().await;
    let proxy = spawn_proxy(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  h2c: true\nupstreams:\n{}routes:\n  - upstream: pool\n",
        upstream("pool", &[(origin, 1)], "    http2: true\n")
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
