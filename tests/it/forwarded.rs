//! Forwarding fields towards the origin: what an untrusted client claims never reaches it (nor
//! a stored page), what a trusted proxy saw of the client is kept.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;

use crate::common::{client, serve_http1, spawn_proxy, upstream, Proxy};

/// An origin that answers with every request field it got, one `name: value` line each, in a
/// cacheable response: what a framework building links from them would put in a page.
async fn echo_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    serve_http1(listener, |req: Request<Incoming>| async move {
        let mut body = String::new();
        for (name, value) in req.headers() {
            body.push_str(&format!(
                "{name}: {}\n",
                value.to_str().unwrap_or("<bytes>")
            ));
        }
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(Full::new(Bytes::from(body)))
                .expect("response"),
        )
    });
    addr
}

async fn proxy(origin: SocketAddr, server: &str) -> Proxy {
    spawn_proxy(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n{server}upstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n    cache: {{ enabled: true }}\n",
        upstream("pool", &[(origin, 1)], "")
    ))
    .await
}

/// The value of `name` in an echoed body.
fn seen<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .collect()
}

const CLAIMS: [(&str, &str); 12] = [
    ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-port", "444"),
    ("x-forwarded-scheme", "https"),
    ("x-forwarded-prefix", "/evil"),
    ("x-forwarded-server", "evil.example"),
    ("x-real-ip", "6.6.6.6"),
    ("x-original-url", "/admin"),
    ("x-rewrite-url", "/admin"),
    ("x-host", "evil.example"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_forwarding_claims_never_reach_the_origin_or_the_cache() {
    let origin = echo_origin().await;
    let proxy = proxy(origin, "").await;
    let mut request = client()
        .get(proxy.url("/page"))
        .header("host", "shop.example.com");
    for (name, value) in CLAIMS {
        request = request.header(name, value);
    }
    let body = request.send().await.unwrap().text().await.unwrap();
    // Random ids and the proxy's own port may contain any digits: they are checked apart.
    let fields: String = body
        .lines()
        .filter(|l| {
            !["traceparent:", "x-request-id:", "x-forwarded-port:"]
                .iter()
                .any(|name| l.starts_with(name))
        })
        .collect::<Vec<_>>()
        .join("\n");
    for bad in ["evil", "6.6.6.6", "/admin", "444", "https"] {
        assert!(!fields.contains(bad), "{bad} reached the origin:\n{body}");
    }
    assert_eq!(seen(&body, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen(&body, "x-forwarded-proto"), ["http"]);
    assert_eq!(seen(&body, "x-forwarded-host"), ["shop.example.com"]);
    assert_eq!(
        seen(&body, "x-forwarded-port"),
        [proxy.addr.port().to_string()]
    );
    assert_eq!(
        seen(&body, "forwarded"),
        ["for=127.0.0.1;proto=http;host=shop.example.com"]
    );
    // The page a second, honest client gets from the cache is the clean one.
    let resp = client()
        .get(proxy.url("/page"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    assert_eq!(resp.text().await.unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_keeps_what_it_saw_of_the_client() {
    let origin = echo_origin().await;
    let proxy = proxy(origin, "  trusted_proxies: [\"127.0.0.1/32\"]\n").await;
    let body = client()
        .get(proxy.url("/trusted"))
        .header("host", "shop.example.com")
        .header("forwarded", "for=\"[2001:db8::7]\";proto=https")
        .header("x-forwarded-for", "2001:db8::7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-port", "443")
        .header("x-real-ip", "2001:db8::7")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(seen(&body, "x-forwarded-for"), ["2001:db8::7, 127.0.0.1"]);
    assert_eq!(
        seen(&body, "forwarded"),
        ["for=\"[2001:db8::7]\";proto=https, for=127.0.0.1;proto=http;host=shop.example.com"]
    );
    assert_eq!(seen(&body, "x-forwarded-proto"), ["https"]);
    assert_eq!(seen(&body, "x-forwarded-port"), ["443"]);
    assert_eq!(seen(&body, "x-forwarded-host"), ["shop.example.com"]);
    assert_eq!(seen(&body, "x-real-ip"), ["2001:db8::7"]);
}
