//! Traffic policy end to end: route matching, path normalisation against access rules, access
//! behind trusted proxies, rate limits, header rules (cache hits included), and their metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{client, serve_http1, spawn_origin, spawn_proxy, upstream, Proxy};

/// An origin that answers with the request target and its fields in the body, and counts.
pub(crate) struct Echo {
    pub(crate) addr: SocketAddr,
    pub(crate) hits: Arc<AtomicU64>,
}

pub(crate) async fn spawn_echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&hits);
    serve_http1(listener, move |req: Request<Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut body = format!("{}\n", req.uri());
        for (name, value) in req.headers() {
            body.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
        }
        let mut resp = Response::builder().header("x-origin", "echo");
        if req.uri().path().starts_with("/cached/") {
            resp = resp.header("cache-control", "max-age=60");
        }
        let resp = resp.body(Full::new(Bytes::from(body))).unwrap();
        async move { Ok::<_, Infallible>(resp) }
    });
    Echo { addr, hits }
}

/// One raw HTTP/1.1 request for `target` (sent as written: no client-side normalisation);
/// (status, whole answer).
pub(crate) async fn raw_get(proxy: &Proxy, target: &str, fields: &str) -> (u16, String) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: example.com\r\n{fields}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_by_exact_path_regex_method_header_and_query() {
    let names = ["exact", "regex", "post", "tenant", "default"];
    let mut origins = Vec::new();
    for name in names {
        origins.push(spawn_origin(name).await);
    }
    let upstreams: String = names
        .iter()
        .zip(&origins)
        .map(|(name, o)| upstream(name, &[(o.addr, 1)], ""))
        .collect();
    let routes = [
        "routes:",
        "  - match: { path_prefix: / }",
        "    upstream: default",
        "  - name: users",
        "    match: { path_regex: \"^/v[0-9]+/users/[0-9]+$\" }",
        "    upstream: regex",
        "  - match: { path_exact: /v1/users/7 }",
        "    upstream: exact",
        "  - match: { path_prefix: /api/, methods: [POST] }",
        "    upstream: post",
        "  - match: { path_prefix: /api/, headers: { X-Tenant: \"~^acme\" }, query: { version: \"2\" } }",
        "    upstream: tenant",
    ]
    .join("\n");
    let proxy = spawn_proxy(&format!("upstreams:\n{upstreams}{routes}\n")).await;
    let via = |resp: reqwest::Response| {
        let origin = resp.headers()["x-origin"].to_str().unwrap().to_string();
        origin
    };
    let c = client();
    assert_eq!(
        via(c.get(proxy.url("/v1/users/7")).send().await.unwrap()),
        "exact"
    );
    assert_eq!(
        via(c.get(proxy.url("/v2/users/8")).send().await.unwrap()),
        "regex"
    );
    assert_eq!(
        via(c.get(proxy.url("/v2/users/x")).send().await.unwrap()),
        "default"
    );
    assert_eq!(
        via(c.post(proxy.url("/api/x")).send().await.unwrap()),
        "post"
    );
    assert_eq!(
        via(c.get(proxy.url("/api/x")).send().await.unwrap()),
        "default"
    );
    let tenant = c
        .get(proxy.url("/api/x?version=2"))
        .header("x-tenant", "acme-eu");
    assert_eq!(via(tenant.send().await.unwrap()), "tenant");
    let other = c
        .get(proxy.url("/api/x?version=2"))
        .header("x-tenant", "globex");
    assert_eq!(via(other.send().await.unwrap()), "default");
    // The route's name is its label.
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            "switchyard_requests_total{code=\"200\",route=\"users\",upstream=\"regex\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalised_paths_cannot_slip_past_an_access_rule() {
    let echo = spawn_echo().await;
    let config = format!(
        "upstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: echo\n  - name: admin\n    match: {{ path_prefix: /admin/ }}\n    upstream: echo\n    access: {{ allow: [192.0.2.0/24] }}\n",
        upstream("echo", &[(echo.addr, 1)], "")
    );
    let proxy = spawn_proxy(&config).await;
    let attacks = [
        "/admin/x",
        "/public/../admin/x",
        "/%61dmin/x",
        "/%61%64MIN/../admin/x",
        "//admin/x",
        "/%2e%2e/admin/x",
        "/%2E%2e/./admin//x",
        "/public/%2e%2E/%61dmin/x",
    ];
    for target in attacks {
        let (status, text) = raw_get(&proxy, target, "").await;
        assert_eq!(status, 403, "{target} got through: {text}");
    }
    assert_eq!(echo.hits.load(Ordering::SeqCst), 0, "no upstream contact");
    // Allowed paths are forwarded in their normal form; %2F is never a separator.
    let (status, text) = raw_get(&proxy, "/public/./a/../%62%2fc?q=%2e%2e", "").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\r\n\r\n/public/b%2Fc?q=%2e%2e\n"), "{text}");
    let (status, _) = raw_get(&proxy, "/admin%2Fx", "").await;
    assert_eq!(status, 200, "/admin%2Fx is one segment, not under /admin/");
    let (status, _) = raw_get(&proxy, "/bad%zz", "").await;
    assert_eq!(status, 400);
    let metrics = proxy.metrics().await;
    let line = format!(
        "switchyard_policy_refused_total{{reason=\"access\",route=\"admin\"}} {}",
        attacks.len()
    );
    assert!(metrics.contains(&line), "{metrics}");
    let stats = proxy.stats().await;
    let admin = stats["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "admin")
        .unwrap()
        .clone();
    assert_eq!(admin["refused"]["access"], attacks.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_sees_the_client_behind_trusted_proxies_and_reloads() {
    let echo = spawn_echo().await;
    let config = |allow: &str| {
        format!(
            "server:\n  listen: [\"127.0.0.1:0\"]\n  trusted_proxies: [127.0.0.1]\n  access: {{ deny: [198.51.100.0/24] }}\nupstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: echo\n    access: {{ allow: [{allow}] }}\n",
            upstream("echo", &[(echo.addr, 1)], "")
        )
    };
    let proxy = spawn_proxy(&config("203.0.113.0/24")).await;
    let from = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    assert_eq!(raw_get(&proxy, "/x", &from("203.0.113.9")).await.0, 200);
    assert_eq!(raw_get(&proxy, "/x", &from("192.0.2.1")).await.0, 403);
    // The server's deny list applies whatever the route allows.
    assert_eq!(raw_get(&proxy, "/x", &from("198.51.100.7")).await.0, 403);
    assert_eq!(raw_get(&proxy, "/x", "").await.0, 403, "127.0.0.1 itself");
    assert_eq!(echo.hits.load(Ordering::SeqCst), 1);
    proxy.rewrite_config(&config("192.0.2.0/24, 127.0.0.1"));
    let (status, body) = proxy.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(raw_get(&proxy, "/x", &from("192.0.2.1")).await.0, 200);
    assert_eq!(raw_get(&proxy, "/x", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_admits_rate_times_time_plus_burst_per_key() {
    let echo = spawn_echo().await;
    let config = format!(
        "upstreams:\n{}routes:\n  - name: api\n    match: {{ path_prefix: / }}\n    upstream: echo\n    rate_limit: {{ rate: 20/s, burst: 5, key: \"header:X-Key\" }}\n",
        upstream("echo", &[(echo.addr, 1)], "")
    );
    let proxy = spawn_proxy(&config).await;
    let c = client();
    let started = Instant::now();
    let (mut admitted, mut refused) = (0u64, 0u64);
    let mut refusal = None;
    while started.elapsed() < Duration::from_millis(1000) {
        let resp = c
            .get(proxy.url("/x"))
            .header("x-key", "a")
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => admitted += 1,
            429 => {
                refused += 1;
                refusal.get_or_insert(resp);
            }
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = 20.0 * elapsed + 5.0;
    assert!(
        (admitted as f64 - expected).abs() <= 3.0,
        "admitted {admitted}, expected about {expected:.1} over {elapsed:.2}s"
    );
    assert!(refused > 0);
    let refusal = refusal.unwrap();
    let h = refusal.headers();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["ratelimit-policy"], "\"route\";q=20;w=1");
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"route\";r=0;t="));
    assert_eq!(
        echo.hits.load(Ordering::SeqCst),
        admitted,
        "refusals never reach the origin"
    );
    // Another key has its own budget.
    for _ in 0..5 {
        let resp = c
            .get(proxy.url("/x"))
            .header("x-key", "b")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(&format!(
            "switchyard_policy_refused_total{{reason=\"rate_limit\",route=\"api\"}} {refused}"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_apply_upstream_and_to_cache_hits() {
    let echo = spawn_echo().await;
    let config = format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  request_headers: {{ set: {{ X-Edge: \"$scheme://$host\" }} }}\n  response_headers: {{ set: {{ X-Frame-Options: DENY }} }}\nupstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: echo\n    cache: {{ enabled: true }}\n    request_headers:\n      set: {{ X-Client: \"$client_ip\", X-Request: \"id=$request_id\" }}\n      add: {{ X-Tag: route }}\n      remove: [X-Secret]\n    response_headers: {{ add: {{ X-Route: main }}, remove: [X-Origin] }}\n",
        upstream("echo", &[(echo.addr, 1)], "")
    );
    let proxy = spawn_proxy(&config).await;
    let c = client();
    for round in 0..2 {
        let resp = c
            .get(proxy.url("/cached/a"))
            .header("x-secret", "s")
            .header("x-tag", "client")
            .header("x-request-id", "r-1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers().clone();
        assert_eq!(h["x-frame-options"], "DENY", "round {round}");
        assert_eq!(h["x-route"], "main", "round {round}");
        assert!(h.get("x-origin").is_none(), "round {round}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("x-client: 127.0.0.1\n"), "{body}");
        assert!(
            body.contains(&format!("x-edge: http://{}\n", proxy.addr)),
            "{body}"
        );
        // 127.0.0.1 is no trusted proxy: its `X-Request-Id` is replaced by the proxy's own.
        let id = body
            .lines()
            .find_map(|l| l.strip_prefix("x-request: id="))
            .unwrap_or_else(|| panic!("no x-request line in {body}"));
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{body}"
        );
        assert!(body.contains("x-tag: client\nx-tag: route\n"), "{body}");
        assert!(!body.contains("x-secret"), "{body}");
    }
    assert_eq!(
        echo.hits.load(Ordering::SeqCst),
        1,
        "the second answer was a cache hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_upstream_host_change_only_the_upstream_request() {
    let echo = spawn_echo().await;
    let config = format!(
        "upstreams:\n{}routes:\n  - match: {{ path_prefix: /v1/ }}\n    upstream: echo\n    strip_prefix: /v1\n    upstream_host: api.internal\n    cache: {{ enabled: true }}\n",
        upstream("echo", &[(echo.addr, 1)], "")
    );
    let proxy = spawn_proxy(&config).await;
    for _ in 0..2 {
        let (status, text) = raw_get(&proxy, "/v1/cached/users?x=1", "").await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\r\n\r\n/cached/users?x=1\n"), "{text}");
        assert!(text.contains("host: api.internal\n"), "{text}");
    }
    // Cached under the client's host and path: the second request was a hit.
    assert_eq!(echo.hits.load(Ordering::SeqCst), 1);
    let (status, text) = raw_get(&proxy, "/v1/x", "").await;
    assert_eq!(status, 200);
    assert!(text.contains("\r\n\r\n/x\n"), "{text}");
}
