//! The runtime upstream API: drain, maint and ready per backend, weights without a reload,
//! what survives a reload, errors and the token.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{
    client, pool_config, spawn_origin, spawn_pool, spawn_proxy, wait_until, Proxy,
};

const CHECK: &str = "    health_check:\n      type: http\n      path: /health\n      expect_status: 200\n      interval: 100ms\n      timeout: 500ms\n      unhealthy_threshold: 1\n      healthy_threshold: 2\n";

/// `POST` JSON to the admin `path`: (status, JSON answer).
async fn post(proxy: &Proxy, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(proxy.admin_url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn set_state(proxy: &Proxy, backend: SocketAddr, state: &str) -> (u16, Value) {
    post(
        proxy,
        &format!("/upstreams/pool/backends/{backend}"),
        json!({ "state": state }),
        None,
    )
    .await
}

/// The `/stats` entry of `backend` in the upstream `pool`.
async fn backend_stats(proxy: &Proxy, backend: SocketAddr) -> Value {
    let stats = proxy.stats().await;
    stats["upstreams"]["pool"]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == backend.to_string())
        .cloned()
        .expect("backend listed")
}

/// How many of `n` requests each origin name answered.
async fn split(proxy: &Proxy, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (status, origin) = proxy.get("/").await;
        assert_eq!(status, 200);
        *seen.entry(origin).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_requests_finish_and_sends_new_ones_elsewhere() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let proxy = spawn_pool(&[(a.addr, 1), (b.addr, 1)], "").await;
    let url = proxy.url("/slow/1500");
    let slow = tokio::spawn(async move {
        let resp = client().get(url).send().await.expect("slow request");
        let origin = resp.headers()["x-origin"].to_str().unwrap().to_string();
        (resp.status().as_u16(), origin)
    });
    let mut busy = None;
    let started = std::time::Instant::now();
    while busy.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "slow request not seen"
        );
        for addr in [a.addr, b.addr] {
            if backend_stats(&proxy, addr).await["in_flight"] == 1 {
                busy = Some(addr);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = busy.expect("a backend has the slow request");
    let (busy_name, other) = if busy == a.addr { ("a", &b) } else { ("b", &a) };

    let (status, answer) = set_state(&proxy, busy, "drain").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["admin_state"], "drain");
    assert_eq!(answer["previous"], "ready");
    assert_eq!(answer["in_flight"], 1);
    let before = other.hits();
    let seen = split(&proxy, 10).await;
    assert_eq!(
        seen.get(busy_name),
        None,
        "a drained backend got new requests: {seen:?}"
    );
    assert_eq!(other.hits(), before + 10);
    let stats = backend_stats(&proxy, busy).await;
    assert_eq!(stats["admin_state"], "drain");
    assert_eq!(stats["healthy"], true);

    // The request in flight finishes where it was.
    assert_eq!(slow.await.expect("slow task"), (200, busy_name.to_string()));
    assert_eq!(backend_stats(&proxy, busy).await["in_flight"], 0);
    // The other backend keeps the upstream ready.
    let ready = client()
        .get(proxy.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // Ready again: it takes its share.
    let (status, answer) = set_state(&proxy, busy, "ready").await;
    assert_eq!((status, &answer["previous"]), (200, &json!("drain")));
    let seen = split(&proxy, 10).await;
    assert_eq!(seen.get(busy_name), Some(&5), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_of_a_drained_backend_move() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let proxy = spawn_pool(&[(a.addr, 1), (b.addr, 1)], "    sticky: {}\n").await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    let pinned = resp.headers()["x-origin"].to_str().unwrap().to_string();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let pinned_addr = if pinned == "a" { a.addr } else { b.addr };
    assert_eq!(set_state(&proxy, pinned_addr, "drain").await.0, 200);
    for _ in 0..5 {
        let resp = client()
            .get(proxy.url("/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_ne!(resp.headers()["x-origin"], pinned.as_str());
        assert!(resp.headers().contains_key("set-cookie"), "re-pinned");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_fails_health_stops_checks_and_ready_needs_another_backend() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let proxy = spawn_pool(&[(a.addr, 1), (b.addr, 1)], CHECK).await;
    wait_until(Duration::from_secs(5), || async { a.health_checks() > 0 }).await;

    assert_eq!(set_state(&proxy, a.addr, "maint").await.0, 200);
    let stats = backend_stats(&proxy, a.addr).await;
    assert_eq!(stats["admin_state"], "maint");
    assert_eq!(stats["healthy"], false);
    let checks = a.health_checks();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        a.health_checks() <= checks + 1,
        "a backend in maint is still checked"
    );
    assert_eq!(split(&proxy, 6).await.get("a"), None);
    let metrics = proxy.metrics().await;
    let line = format!(
        "switchyard_upstream_backend_ready{{upstream=\"pool\",backend=\"{}\"}} 0",
        a.addr
    );
    assert!(metrics.contains(&line), "{line} missing");

    // Only drained or maint backends left: not ready.
    assert_eq!(set_state(&proxy, b.addr, "drain").await.0, 200);
    let ready = client()
        .get(proxy.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(proxy.get("/").await.0, 503);

    // Back from maint: checked again, healthy after its next passing check.
    assert_eq!(set_state(&proxy, a.addr, "ready").await.0, 200);
    wait_until(Duration::from_secs(5), || async {
        proxy.backend_healthy("pool", a.addr).await
    })
    .await;
    assert!(a.health_checks() > checks, "checked again");
    let ready = client()
        .get(proxy.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(split(&proxy, 4).await.get("a"), Some(&4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_change_the_split_until_a_reload_and_admin_states_survive_it() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let c = spawn_origin("c").await;
    let backends = [(a.addr, 1), (b.addr, 1), (c.addr, 1)];
    let proxy = spawn_pool(&backends, "").await;
    assert_eq!(set_state(&proxy, c.addr, "drain").await.0, 200);
    let weights = json!({ a.addr.to_string(): 3, b.addr.to_string(): 1 });
    let (status, answer) = post(&proxy, "/upstreams/pool/weights", weights, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["weights"][a.addr.to_string()], 3);
    let seen = split(&proxy, 40).await;
    assert_eq!(
        (seen.get("a"), seen.get("b")),
        (Some(&30), Some(&10)),
        "{seen:?}"
    );
    assert_eq!(backend_stats(&proxy, a.addr).await["weight"], 3);

    // A reload restores the file's weights and keeps the drain.
    proxy.rewrite_config(&pool_config(&backends, "    retries: 1\n"));
    assert_eq!(proxy.reload().await.0, 200);
    assert_eq!(backend_stats(&proxy, a.addr).await["weight"], 1);
    assert_eq!(backend_stats(&proxy, c.addr).await["admin_state"], "drain");
    let seen = split(&proxy, 40).await;
    assert_eq!(
        (seen.get("a"), seen.get("b"), seen.get("c")),
        (Some(&20), Some(&20), None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_bad_bodies_are_refused_with_the_reason() {
    let a = spawn_origin("a").await;
    let proxy = spawn_pool(&[(a.addr, 1)], "").await;
    let (status, answer) = post(&proxy, "/upstreams/nope/weights", json!({"x": 1}), None).await;
    assert_eq!(status, 404);
    assert_eq!(answer["error"], "no upstream `nope`");
    let (status, answer) = set_state(&proxy, "10.9.9.9:1".parse().unwrap(), "drain").await;
    assert_eq!(status, 404);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("no backend `10.9.9.9:1`"));
    let (status, answer) = post(
        &proxy,
        "/upstreams/pool/weights",
        json!({"10.9.9.9:1": 2}),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("no backend"),
        "{answer}"
    );
    let zero = json!({ a.addr.to_string(): 0 });
    let (status, answer) = post(&proxy, "/upstreams/pool/weights", zero, None).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("1 to 1000"),
        "{answer}"
    );
    let (status, _) = set_state(&proxy, a.addr, "sleeping").await;
    assert_eq!(status, 400);
    assert_eq!(backend_stats(&proxy, a.addr).await["admin_state"], "ready");
    let get = client()
        .get(proxy.admin_url("/upstreams/pool/weights"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_api_needs_the_token() {
    let a = spawn_origin("a").await;
    let config = format!(
        "admin:\n  listen: 127.0.0.1:0\n  token: s3cret\n{}",
        pool_config(&[(a.addr, 1)], "")
    );
    let proxy = spawn_proxy(&config).await;
    let path = format!("/upstreams/pool/backends/{}", a.addr);
    let body = json!({"state": "drain"});
    assert_eq!(post(&proxy, &path, body.clone(), None).await.0, 401);
    assert_eq!(
        post(&proxy, &path, body.clone(), Some("wrong")).await.0,
        401
    );
    let weights = json!({ a.addr.to_string(): 2 });
    assert_eq!(
        post(&proxy, "/upstreams/pool/weights", weights, None)
            .await
            .0,
        401
    );
    assert_eq!(proxy.get("/").await.0, 200, "nothing changed");
    assert_eq!(post(&proxy, &path, body, Some("s3cret")).await.0, 200);
    assert_eq!(proxy.get("/").await.0, 503);
}
