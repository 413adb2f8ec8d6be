//! TLS to backends over real sockets: an origin with a certificate from a private CA, checked
//! against that CA, refused with another CA (502), and accepted unchecked with `verify: false`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::common::{client, spawn_proxy, wait_until};
use crate::tls::Ca;

/// An HTTPS origin on 127.0.0.1 whose certificate names `origin.test`, signed by `ca`.
async fn spawn_tls_origin(ca: &Ca) -> SocketAddr {
    spawn_tls_origin_with(ca, None).await
}

/// Like [`spawn_tls_origin`]; with `clients`, it requires a client certificate signed by it.
async fn spawn_tls_origin_with(ca: &Ca, clients: Option<&Ca>) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let leaf = ca.leaf(&["origin.test"]);
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in rustls_pki_types::CertificateDer::pem_slice_iter(clients.pem().as_bytes()) {
                roots.add(der.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("x-origin", "tls-origin")
                            .body(Full::new(Bytes::from_static(b"over tls")))
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

async fn status_through(origin: SocketAddr, tls: &str) -> (u16, String) {
    let proxy = spawn_proxy(&format!(
        "upstreams:\n  pool:\n    backends: [{{address: \"{origin}\"}}]\n    tls: {tls}\nroutes:\n  - upstream: pool\n"
    ))
    .await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_tls_are_verified_against_the_configured_ca() {
    let ca = Ca::new("private ca");
    let other = Ca::new("other ca");
    let origin = spawn_tls_origin(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let other_file = dir.path().join("other.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&other_file, other.pem()).unwrap();

    let good = format!("{{ sni: origin.test, ca: {} }}", ca_file.display());
    assert_eq!(
        status_through(origin, &good).await,
        (200, "over tls".to_string())
    );
    // The wrong CA, or the right CA with a name the certificate does not carry: 502.
    let wrong_ca = format!("{{ sni: origin.test, ca: {} }}", other_file.display());
    assert_eq!(status_through(origin, &wrong_ca).await.0, 502);
    let wrong_name = format!("{{ sni: elsewhere.test, ca: {} }}", ca_file.display());
    assert_eq!(status_through(origin, &wrong_name).await.0, 502);
    // Not verified: accepted whatever signed it.
    let unchecked = "{ sni: origin.test, verify: false }";
    assert_eq!(status_through(origin, unchecked).await.0, 200);
    // Plain HTTP to a TLS backend fails as before.
    assert_eq!(status_through(origin, "false").await.0, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_use_the_upstreams_tls_settings() {
    let ca = Ca::new("private ca");
    let other = Ca::new("other ca");
    let origin = spawn_tls_origin(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, other_file) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&other_file, other.pem()).unwrap();
    let check = "    health_check: { path: /health, interval: 100ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }\n";
    let config = |file: &std::path::Path| {
        format!(
            "upstreams:\n  pool:\n    backends: [{{address: \"{origin}\"}}]\n    tls: {{ sni: origin.test, ca: {} }}\n{check}routes:\n  - upstream: pool\n",
            file.display()
        )
    };
    let good = spawn_proxy(&config(&ca_file)).await;
    let bad = spawn_proxy(&config(&other_file)).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(good.backend_healthy("pool", origin).await);
    wait_until(std::time::Duration::from_secs(5), || async {
        !bad.backend_healthy("pool", origin).await
    })
    .await;
    assert!(good.backend_healthy("pool", origin).await);
    assert_eq!(
        client().get(good.url("/")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_shown_to_backends_that_require_one() {
    let ca = Ca::new("private ca");
    let clients = Ca::new("client ca");
    let origin = spawn_tls_origin_with(&ca, Some(&clients)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cert, key) = clients
        .leaf(&["switchyard.test"])
        .write(dir.path(), "client");
    let base = format!("sni: origin.test, ca: {}", ca_file.display());
    assert_eq!(
        status_through(origin, &format!("{{ {base} }}")).await.0,
        502
    );
    let with_client = format!(
        "{{ {base}, client_cert: {}, client_key: {} }}",
        cert.display(),
        key.display()
    );
    assert_eq!(
        status_through(origin, &with_client).await,
        (200, "over tls".to_string())
    );
}
