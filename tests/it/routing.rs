//! Routing by Host and longest prefix, and the status of every kind of failure.

use std::time::Duration;

use crate::common::{client, closed_port, spawn_origin, spawn_proxy, upstream, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_longest_prefix() {
    let api = spawn_origin("api").await;
    let wild = spawn_origin("wild").await;
    let stat = spawn_origin("static").await;
    let default = spawn_origin("default").await;
    let routes = [
        "routes:",
        "  - match: { host: api.example.com }",
        "    upstream: api",
        "  - match: { host: \"*.example.com\" }",
        "    upstream: wild",
        "  - match: { path_prefix: /static/ }",
        "    upstream: static",
        "  - match: { path_prefix: /static/img/ }",
        "    upstream: default",
        "  - match: { path_prefix: / }",
        "    upstream: default",
    ]
    .join("\n");
    let config = format!(
        "upstreams:\n{}{}{}{}{routes}\n",
        upstream("api", &[(api.addr, 1)], ""),
        upstream("wild", &[(wild.addr, 1)], ""),
        upstream("static", &[(stat.addr, 1)], ""),
        upstream("default", &[(default.addr, 1)], ""),
    );
    let proxy = spawn_proxy(&config).await;
    let cases = [
        ("api.example.com", "/static/x", "api"),
        ("API.example.com:8080", "/", "api"),
        ("www.example.com", "/static/x", "wild"),
        ("other.org", "/static/x", "static"),
        ("other.org", "/static/img/a.png", "default"),
        ("other.org", "/", "default"),
        ("example.com", "/static", "default"),
    ];
    for (host, path, expected) in cases {
        let resp = client()
            .get(proxy.url(path))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}{path}");
        assert_eq!(resp.headers()["x-origin"], expected, "{host}{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_with_a_text_body() {
    let a = spawn_origin("a").await;
    let config = format!(
        "upstreams:\n{}routes:\n  - match: {{ path_prefix: /api/ }}\n    upstream: pool\n",
        upstream("pool", &[(a.addr, 1)], "")
    );
    let proxy = spawn_proxy(&config).await;
    let resp = client().get(proxy.url("/elsewhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(resp.text().await.unwrap().starts_with("404 Not Found"));
    assert_eq!(a.hits(), 0);
    // The proxy still serves.
    assert_eq!(proxy.get("/api/x").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_down_is_503_and_the_proxy_keeps_serving() {
    let live = spawn_origin("live").await;
    let config = format!(
        "upstreams:\n{}{}routes:\n  - match: {{ path_prefix: /down/ }}\n    upstream: down\n  - match: {{ path_prefix: / }}\n    upstream: up\n",
        upstream(
            "down",
            &[(closed_port(), 1), (closed_port(), 1)],
            "    health_check: { type: tcp, interval: 100ms, timeout: 200ms, unhealthy_threshold: 1 }\n"
        ),
        upstream("up", &[(live.addr, 1)], ""),
    );
    let proxy = spawn_proxy(&config).await;
    wait_until(Duration::from_secs(5), || async {
        let stats = proxy.stats().await;
        stats["upstreams"]["down"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["healthy"] == false)
    })
    .await;
    let resp = client().get(proxy.url("/down/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.starts_with("503 Service Unavailable"), "{body}");
    assert!(
        !body.contains("127.0.0.1"),
        "error body leaks an address: {body}"
    );
    assert_eq!(proxy.get("/").await, (200, "live".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_502_and_timeout_is_504() {
    let slow = spawn_origin("slow").await;
    let config = format!(
        "upstreams:\n{}{}routes:\n  - match: {{ path_prefix: /refused/ }}\n    upstream: refused\n  - match: {{ path_prefix: / }}\n    upstream: slow\n",
        upstream("refused", &[(closed_port(), 1)], ""),
        upstream("slow", &[(slow.addr, 1)], "    read_timeout: 300ms\n"),
    );
    let proxy = spawn_proxy(&config).await;
    let resp = client().get(proxy.url("/refused/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().starts_with("502 Bad Gateway"));
    let resp = client().get(proxy.url("/slow/2000")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(resp
        .text()
        .await
        .unwrap()
        .starts_with("504 Gateway Timeout"));
    // Still serving, and the failures are counted on the backends.
    assert_eq!(proxy.get("/slow/0").await.0, 200);
    let stats = proxy.stats().await;
    assert_eq!(
        stats["upstreams"]["refused"]["backends"][0]["failures_total"],
        1
    );
    assert_eq!(
        stats["upstreams"]["slow"]["backends"][0]["failures_total"],
        1
    );
    assert_eq!(stats["upstreams"]["slow"]["backends"][0]["in_flight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_stripped() {
    let a = spawn_origin("a").await;
    let routes = "routes:\n  - match: { path_prefix: / }\n    upstream: pool\n";
    let pool = upstream("pool", &[(a.addr, 1)], "");
    // Behind a trusted peer the chain is extended.
    let trusted = spawn_proxy(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  trusted_proxies: [\"127.0.0.1/32\"]\nupstreams:\n{pool}{routes}"
    ))
    .await;
    let resp = client()
        .get(trusted.url("/hop"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["x-seen-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-seen-forwarded-proto"], "http");
    assert_eq!(h["x-seen-forwarded-host"], "shop.example.com");
    assert_eq!(h["x-seen-host"], "shop.example.com");
    assert!(
        h.get("x-internal").is_none(),
        "Connection-nominated header leaked"
    );
    assert!(h.get("keep-alive").is_none());
    assert!(h.get("proxy-authenticate").is_none());

    // From an untrusted peer a forged chain is replaced.
    let untrusted = spawn_proxy(&format!("upstreams:\n{pool}{routes}")).await;
    let resp = client()
        .get(untrusted.url("/"))
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-seen-forwarded-for"], "127.0.0.1");
}
