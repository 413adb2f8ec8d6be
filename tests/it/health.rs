//! Active health checks take failing backends out and put them back.

use std::time::Duration;

use crate::common::{closed_port, spawn_origin, spawn_pool, wait_until};

const CHECK: &str = "    health_check:\n      type: http\n      path: /health\n      expect_status: 200\n      interval: 100ms\n      timeout: 500ms\n      unhealthy_threshold: 3\n      healthy_threshold: 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_removes_and_restores_a_backend() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let proxy = spawn_pool(&[(a.addr, 1), (b.addr, 1)], CHECK).await;
    // Both start healthy and take traffic.
    for _ in 0..4 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    assert_eq!(b.hits(), 2);

    let checks_before = b.health_checks();
    b.set_health(503);
    wait_until(Duration::from_secs(5), || async {
        !proxy.backend_healthy("pool", b.addr).await
    })
    .await;
    // It took the configured run of failures, not one.
    assert!(
        b.health_checks() - checks_before >= 3,
        "taken out after {} checks",
        b.health_checks() - checks_before
    );
    let hits_b = b.hits();
    for _ in 0..20 {
        let (status, origin) = proxy.get("/").await;
        assert_eq!((status, origin.as_str()), (200, "a"));
    }
    assert_eq!(b.hits(), hits_b, "an unhealthy backend received traffic");

    let checks_before = b.health_checks();
    b.set_health(200);
    wait_until(Duration::from_secs(5), || async {
        proxy.backend_healthy("pool", b.addr).await
    })
    .await;
    assert!(b.health_checks() - checks_before >= 2);
    let mut back = 0;
    for _ in 0..10 {
        if proxy.get("/").await.1 == "b" {
            back += 1;
        }
    }
    assert_eq!(back, 5, "a restored backend takes its share again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_is_detected_and_no_request_fails_after() {
    let a = spawn_origin("a").await;
    let dead = closed_port();
    let proxy = spawn_pool(
        &[(a.addr, 1), (dead, 1)],
        &CHECK
            .replace("type: http", "type: tcp")
            .replace("      path: /health\n      expect_status: 200\n", ""),
    )
    .await;
    wait_until(Duration::from_secs(5), || async {
        !proxy.backend_healthy("pool", dead).await
    })
    .await;
    for _ in 0..50 {
        let (status, origin) = proxy.get("/").await;
        assert_eq!((status, origin.as_str()), (200, "a"));
    }
    let stats = proxy.stats().await;
    assert_eq!(stats["upstreams"]["pool"]["backends"][1]["healthy"], false);
}
