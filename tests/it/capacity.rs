//! Capacity controls: backup backends take traffic only while no primary is healthy.

use std::time::Duration;

use crate::common::{pool_config, spawn_origin, spawn_proxy, wait_until};

const CHECK: &str = "    health_check:\n      type: http\n      path: /health\n      expect_status: 200\n      interval: 100ms\n      timeout: 500ms\n      unhealthy_threshold: 2\n      healthy_threshold: 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_serves_only_while_every_primary_is_down() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let spare = spawn_origin("spare").await;
    let spare_line = format!("      - address: {}\n        weight: 1\n", spare.addr);
    let config = pool_config(&[(a.addr, 1), (b.addr, 1), (spare.addr, 1)], CHECK)
        .replace(&spare_line, &format!("{spare_line}        backup: true\n"));
    let proxy = spawn_proxy(&config).await;
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    assert_eq!(
        spare.hits(),
        0,
        "a backup took traffic while primaries were up"
    );
    let stats = proxy.stats().await;
    assert_eq!(stats["upstreams"]["pool"]["backends"][2]["backup"], true);
    assert_eq!(stats["upstreams"]["pool"]["backends"][0]["backup"], false);

    // One primary down: the other takes everything, the backup still nothing.
    a.set_health(503);
    wait_until(Duration::from_secs(5), || async {
        !proxy.backend_healthy("pool", a.addr).await
    })
    .await;
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await, (200, "b".to_string()));
    }
    assert_eq!(spare.hits(), 0);

    // Every primary down: the backup serves.
    b.set_health(503);
    wait_until(Duration::from_secs(5), || async {
        !proxy.backend_healthy("pool", b.addr).await
    })
    .await;
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await, (200, "spare".to_string()));
    }

    // One primary back: the backup is left at once.
    b.set_health(200);
    wait_until(Duration::from_secs(5), || async {
        proxy.backend_healthy("pool", b.addr).await
    })
    .await;
    let spare_hits = spare.hits();
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await, (200, "b".to_string()));
    }
    assert_eq!(spare.hits(), spare_hits);
}
