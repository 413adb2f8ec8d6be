//! The admin endpoint: stats shape and counters, Prometheus names, token protection.

use std::time::Duration;

use crate::common::{client, spawn_origin, spawn_proxy, spawn_proxy_env, upstream, wait_until};

fn config(addrs: &[std::net::SocketAddr]) -> String {
    let backends: Vec<_> = addrs.iter().map(|a| (*a, 2)).collect();
    format!(
        "upstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: assessments\n",
        upstream("assessments", &backends, "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_have_the_documented_shape_and_counters_move() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let proxy = spawn_proxy(&config(&[a.addr, b.addr])).await;
    let before = proxy.stats().await;
    assert_eq!(before["version"], 1);
    // Seconds since this process started: positive, small, and moving.
    let uptime = before["uptime_seconds"].as_f64().unwrap();
    assert!(uptime > 0.0 && uptime < 30.0, "uptime {uptime}");
    assert_eq!(before["requests_total"], 0);
    let up = &before["upstreams"]["assessments"];
    assert_eq!(up["strategy"], "round_robin");
    let backends = up["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    for (backend, origin) in backends.iter().zip([&a, &b]) {
        assert_eq!(backend["address"], origin.addr.to_string());
        assert_eq!(backend["weight"], 2);
        assert_eq!(backend["healthy"], true);
        assert_eq!(backend["in_flight"], 0);
        assert_eq!(backend["requests_total"], 0);
        assert_eq!(backend["failures_total"], 0);
    }

    for _ in 0..6 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    let after = proxy.stats().await;
    assert!(after["uptime_seconds"].as_f64().unwrap() > uptime);
    assert_eq!(after["requests_total"], 6);
    let backends = after["upstreams"]["assessments"]["backends"]
        .as_array()
        .unwrap();
    assert_eq!(backends[0]["requests_total"], 3);
    assert_eq!(backends[1]["requests_total"], 3);
    assert!(after["uptime_seconds"].as_f64() > before["uptime_seconds"].as_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_documented_series() {
    let a = spawn_origin("a").await;
    let proxy = spawn_proxy(&config(&[a.addr])).await;
    assert_eq!(proxy.get("/x").await.0, 200);
    // The request is counted once its log phase ran, just after the client got the answer.
    let fetch = || async {
        let resp = client()
            .get(proxy.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(kind.starts_with("text/plain"), "{kind}");
        resp.text().await.unwrap()
    };
    wait_until(Duration::from_secs(5), || async {
        fetch().await.contains("switchyard_requests_total{")
    })
    .await;
    let text = fetch().await;
    for expected in [
        "switchyard_requests_total{code=\"200\",route=\"/\",upstream=\"assessments\"} 1",
        "# TYPE switchyard_request_duration_seconds histogram",
        "switchyard_request_duration_seconds_count{route=\"/\"} 1",
        &format!("switchyard_upstream_backend_healthy{{upstream=\"assessments\",backend=\"{}\"}} 1", a.addr),
        &format!("switchyard_upstream_backend_in_flight{{upstream=\"assessments\",backend=\"{}\"}} 0", a.addr),
        &format!("switchyard_upstream_backend_requests_total{{upstream=\"assessments\",backend=\"{}\"}} 1", a.addr),
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_every_path_but_health() {
    let a = spawn_origin("a").await;
    let text = format!(
        "admin:\n  listen: 127.0.0.1:0\n  token: \"${{TEST_ADMIN_TOKEN}}\"\n{}",
        config(&[a.addr])
    );
    let proxy = spawn_proxy_env(&text, &[("TEST_ADMIN_TOKEN", "let-me-in")]).await;
    let c = client();
    for path in ["/stats", "/metrics"] {
        let none = c.get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path} without a token");
        let wrong = c
            .get(proxy.admin_url(path))
            .bearer_auth("let-me-out")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let right = c
            .get(proxy.admin_url(path))
            .bearer_auth("let-me-in")
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path} with the token");
    }
    let health = c.get(proxy.admin_url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_admin_paths_are_404() {
    let a = spawn_origin("a").await;
    let proxy = spawn_proxy(&config(&[a.addr])).await;
    let resp = client().get(proxy.admin_url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client()
        .post(proxy.admin_url("/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

/// The status of a POST to the admin endpoint.
async fn admin_post(
    proxy: &crate::common::Proxy,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> u16 {
    let mut request = client().post(proxy.admin_url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_and_rebound_requests_are_refused() {
    let a = spawn_origin("a").await;
    let proxy = spawn_proxy(&format!(
        "admin:\n  listen: 127.0.0.1:0\n  hosts: [admin.internal]\n{}",
        config(&[a.addr])
    ))
    .await;
    let own = format!("http://{}", proxy.admin);
    let purge = r#"{"prefix": "127.0.0.1/"}"#;
    // What a page in a local browser can send: a form post, a simple fetch, a rebound name.
    assert_eq!(
        admin_post(
            &proxy,
            "/reload",
            &[("origin", "http://evil.example")],
            None
        )
        .await,
        403
    );
    assert_eq!(
        admin_post(&proxy, "/reload", &[("origin", "null")], None).await,
        403
    );
    for form in ["text/plain", "application/x-www-form-urlencoded"] {
        assert_eq!(
            admin_post(
                &proxy,
                "/cache/purge",
                &[("content-type", form)],
                Some(purge)
            )
            .await,
            415,
            "{form}"
        );
    }
    assert_eq!(
        admin_post(&proxy, "/cache/purge", &[], Some(purge)).await,
        415
    );
    let rebound = format!("evil.example:{}", proxy.admin.port());
    assert_eq!(
        admin_post(&proxy, "/reload", &[("host", &rebound)], None).await,
        403
    );
    let stats = client()
        .get(proxy.admin_url("/stats"))
        .header("host", &rebound)
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 403, "a rebound page could read /stats");
    assert_eq!(proxy.stats().await["version"], 1, "a refused reload ran");

    // The admin's own requests.
    let json = ("content-type", "application/json");
    assert_eq!(admin_post(&proxy, "/reload", &[], None).await, 200);
    assert_eq!(
        admin_post(&proxy, "/reload", &[("origin", &own)], None).await,
        200
    );
    assert_eq!(
        admin_post(&proxy, "/cache/purge", &[json], Some(purge)).await,
        200
    );
    let port = proxy.admin.port();
    for host in [
        format!("localhost:{port}"),
        format!("admin.internal:{port}"),
    ] {
        assert_eq!(
            admin_post(
                &proxy,
                "/cache/purge",
                &[json, ("host", &host)],
                Some(purge)
            )
            .await,
            200,
            "{host}"
        );
    }
    assert_eq!(proxy.stats().await["version"], 3);
}
