//! TLS termination over real sockets: SNI choice, ALPN, certificate reload (file watch and
//! config reload), X-Forwarded-Proto, https_redirect and HSTS. Certificates are made here
//! with rcgen, signed by a CA made for the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use reqwest::Version;

use crate::common::{client, spawn_origin, spawn_proxy, upstream, wait_until, Proxy};

/// A certificate authority made for one test.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names`: (certificate PEM, key PEM, certificate DER).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Leaf {
    /// Writes `<dir>/<name>.pem` and `<dir>/<name>.key` the way a deploy does (write, rename).
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        for (path, text) in [(&cert, &self.cert_pem), (&key, &self.key_pem)] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (cert, key)
    }
}

/// A `tls` block on port 0 over `pairs` (cert, key) with `extra` lines (indented 2).
pub fn tls_block(pairs: &[(PathBuf, PathBuf)], extra: &str) -> String {
    let mut s = String::from("tls:\n  listen: [\"127.0.0.1:0\"]\n  certificates:\n");
    for (cert, key) in pairs {
        s.push_str(&format!(
            "    - cert: {}\n      key: {}\n",
            cert.display(),
            key.display()
        ));
    }
    s.push_str(extra);
    s
}

/// A client that trusts only `ca`, sends `host` to the proxy's TLS port, and keeps the
/// connection's certificate in each response.
pub fn tls_client(ca: Option<&Ca>, host: &str, addr: SocketAddr) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .resolve(host, addr);
    builder = match ca {
        Some(ca) => builder
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()),
        None => builder.danger_accept_invalid_certs(true),
    };
    builder
}

/// The DER certificate the server presented for this response.
pub fn peer_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("TLS info with the peer certificate")
        .to_vec()
}

fn https(proxy: &Proxy, host: &str, path: &str) -> String {
    format!(
        "https://{host}:{}{path}",
        proxy.tls.expect("TLS listener").port()
    )
}

/// A proxy with one upstream over `origin`, the route lines `route` and the `tls` block.
async fn tls_proxy(origin: SocketAddr, route: &str, tls: &str) -> Proxy {
    spawn_proxy(&format!(
        "{tls}upstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n{route}",
        upstream("pool", &[(origin, 1)], "")
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_each_hosts_certificate_and_the_default_for_other_names() {
    let origin = spawn_origin("o").await;
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, ca_b) = (Ca::new("ca a"), Ca::new("ca b"));
    let a = ca_a.leaf(&["a.test"]);
    let b = ca_b.leaf(&["*.b.test"]);
    let pairs = [a.write(dir.path(), "a"), b.write(dir.path(), "b")];
    let proxy = tls_proxy(
        origin.addr,
        "",
        &tls_block(&pairs, "  default_certificate: 1\n"),
    )
    .await;
    let addr = proxy.tls.unwrap();
    for (host, ca, want) in [("a.test", &ca_a, &a.der), ("www.b.test", &ca_b, &b.der)] {
        // A client that trusts only this host's CA completes the handshake and verifies it.
        let resp = tls_client(Some(ca), host, addr)
            .build()
            .unwrap()
            .get(https(&proxy, host, "/"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(resp.status(), 200);
        assert_eq!(&peer_cert(&resp), want, "{host}");
    }
    // The other CA's client refuses: a.test did not get b's certificate.
    let wrong = tls_client(Some(&ca_b), "a.test", addr)
        .build()
        .unwrap()
        .get(https(&proxy, "a.test", "/"))
        .send()
        .await;
    assert!(wrong.is_err());
    // An unknown name and a deeper name than the wildcard get the default (index 1).
    for host in ["unknown.test", "x.y.b.test"] {
        let resp = tls_client(None, host, addr)
            .build()
            .unwrap()
            .get(https(&proxy, host, "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(peer_cert(&resp), b.der, "{host}");
    }
    let stats = proxy.stats().await;
    assert_eq!(stats["tls"]["certificates"][0]["names"][0], "a.test");
    assert!(proxy
        .metrics()
        .await
        .contains("switchyard_tls_certificate_expiry_seconds{name=\"*.b.test\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_offers_h2_and_http1_on_one_port() {
    let origin = spawn_origin("o").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let pair = ca.leaf(&["h.test"]).write(dir.path(), "h");
    let proxy = tls_proxy(origin.addr, "", &tls_block(&[pair], "")).await;
    let addr = proxy.tls.unwrap();
    let h2 = tls_client(Some(&ca), "h.test", addr).build().unwrap();
    let h1 = tls_client(Some(&ca), "h.test", addr)
        .http1_only()
        .build()
        .unwrap();
    for (client, version) in [(h2, Version::HTTP_2), (h1, Version::HTTP_11)] {
        let resp = client
            .get(https(&proxy, "h.test", "/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), version);
        assert_eq!(resp.headers()["x-origin"], "o");
        // X-Forwarded-Proto says how the request reached the proxy.
        assert_eq!(resp.headers()["x-seen-forwarded-proto"], "https");
    }
    let plain = client().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(plain.headers()["x-seen-forwarded-proto"], "http");
    // Counted when each request is logged, just after its response.
    for series in [
        "switchyard_client_requests_total{protocol=\"h2\",tls=\"true\"} 1",
        "switchyard_client_requests_total{protocol=\"http/1.1\",tls=\"true\"} 1",
        "switchyard_client_requests_total{protocol=\"http/1.1\",tls=\"false\"} 1",
    ] {
        wait_until(Duration::from_secs(5), || async {
            proxy.metrics().await.contains(series)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_only_alpn_and_plain_http_to_the_tls_port() {
    let origin = spawn_origin("o").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let pair = ca.leaf(&["h.test"]).write(dir.path(), "h");
    let tls = tls_block(&[pair], "  alpn: [http/1.1]\n  min_version: \"1.3\"\n");
    let proxy = tls_proxy(origin.addr, "", &tls).await;
    let addr = proxy.tls.unwrap();
    let resp = tls_client(Some(&ca), "h.test", addr)
        .build()
        .unwrap()
        .get(https(&proxy, "h.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_11);
    // TLS 1.2 is below min_version.
    let old = tls_client(Some(&ca), "h.test", addr)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap()
        .get(https(&proxy, "h.test", "/"))
        .send()
        .await;
    assert!(old.is_err(), "a TLS 1.2 handshake succeeded");
    // Plain HTTP to the TLS port is answered in plain text, and counted.
    let plain = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    for reason in ["plain_http", "version"] {
        let series = format!("switchyard_tls_handshake_errors_total{{reason=\"{reason}\"}} 1");
        wait_until(Duration::from_secs(5), || async {
            proxy.metrics().await.contains(&series)
        })
        .await;
    }
    // The proxy still serves.
    let again = tls_client(Some(&ca), "h.test", addr)
        .build()
        .unwrap()
        .get(https(&proxy, "h.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_certificate_serves_new_handshakes_while_old_connections_go_on() {
    let origin = spawn_origin("o").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let first = ca.leaf(&["r.test"]);
    let pair = first.write(dir.path(), "r");
    let proxy = tls_proxy(origin.addr, "", &tls_block(&[pair], "  watch: true\n")).await;
    let addr = proxy.tls.unwrap();
    let old = tls_client(Some(&ca), "r.test", addr).build().unwrap();
    let resp = old.get(https(&proxy, "r.test", "/")).send().await.unwrap();
    assert_eq!(peer_cert(&resp), first.der);
    let second = ca.leaf(&["r.test"]);
    second.write(dir.path(), "r");
    wait_until(Duration::from_secs(5), || async {
        let fresh = tls_client(Some(&ca), "r.test", addr).build().unwrap();
        match fresh.get(https(&proxy, "r.test", "/")).send().await {
            Ok(resp) => peer_cert(&resp) == second.der,
            Err(_) => false,
        }
    })
    .await;
    // The connection made before the change is still served, on its own certificate.
    let resp = old.get(https(&proxy, "r.test", "/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(peer_cert(&resp), first.der);
    assert_eq!(resp.version(), Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_match_keeps_the_running_certificate_and_is_reported() {
    let origin = spawn_origin("o").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let good = ca.leaf(&["k.test"]);
    let pair = good.write(dir.path(), "k");
    let proxy = tls_proxy(origin.addr, "", &tls_block(&[pair], "  watch: false\n")).await;
    let addr = proxy.tls.unwrap();
    // A new certificate whose key file holds another key.
    let other = ca.leaf(&["k.test"]);
    std::fs::write(dir.path().join("k.pem"), &other.cert_pem).unwrap();
    let (status, body) = proxy.reload().await;
    assert_ne!(status, 200, "{body}");
    let error = body.to_string();
    assert!(
        error.contains("tls.certificates[0].key") && error.contains("does not match"),
        "{error}"
    );
    assert!(error.contains("k.key"), "{error}");
    let stats = proxy.stats().await;
    assert_eq!(stats["last_reload"]["ok"], false);
    let resp = tls_client(Some(&ca), "k.test", addr)
        .build()
        .unwrap()
        .get(https(&proxy, "k.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&resp), good.der);
    // Fixed, the reload takes the new pair.
    std::fs::write(dir.path().join("k.key"), &other.key_pem).unwrap();
    let (status, body) = proxy.reload().await;
    assert_eq!(status, 200, "{body}");
    let resp = tls_client(Some(&ca), "k.test", addr)
        .build()
        .unwrap()
        .get(https(&proxy, "k.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&resp), other.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_and_hsts_only_where_they_belong() {
    let origin = spawn_origin("o").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let pair = ca.leaf(&["s.test", "open.test"]).write(dir.path(), "s");
    let route = "    hsts: \"max-age=600\"\n  - match: { host: s.test }\n    upstream: pool\n    https_redirect: true\n    hsts: \"max-age=31536000; includeSubDomains\"\n";
    let proxy = tls_proxy(origin.addr, route, &tls_block(&[pair], "")).await;
    let addr = proxy.tls.unwrap();
    let no_follow = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_follow
        .get(proxy.url("/a/b?x=1&y=2"))
        .header("host", "S.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        format!("https://s.test:{}/a/b?x=1&y=2", addr.port()).as_str()
    );
    assert!(resp.headers().get("strict-transport-security").is_none());
    assert_eq!(origin.hits(), 0);
    // The route without https_redirect is served over plain HTTP, without HSTS.
    let resp = no_follow
        .get(proxy.url("/"))
        .header("host", "open.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("strict-transport-security").is_none());
    // Over TLS: no redirect, and each route's HSTS value.
    for (host, hsts) in [
        ("s.test", "max-age=31536000; includeSubDomains"),
        ("open.test", "max-age=600"),
    ] {
        let resp = tls_client(Some(&ca), host, addr)
            .build()
            .unwrap()
            .get(https(&proxy, host, "/p"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
        assert_eq!(resp.headers()["strict-transport-security"], hsts, "{host}");
    }
}
