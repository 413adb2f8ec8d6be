//! Retries on another backend and passive health (outlier ejection) over real origins.

use std::time::Duration;

use crate::chaos::{rounds, DyingOrigin, KeepAlive, Outcome};
use crate::common::{client, closed_port, spawn_origin, spawn_pool, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_fail_over_to_the_other_backend() {
    let live = spawn_origin("live").await;
    let proxy = spawn_pool(&[(closed_port(), 1), (live.addr, 1)], "    retries: 2\n").await;
    for _ in 0..100 {
        assert_eq!(proxy.get("/").await, (200, "live".to_string()));
    }
    assert_eq!(live.hits(), 100);
    let stats = proxy.stats().await;
    let failures = stats["upstreams"]["pool"]["backends"][0]["failures_total"]
        .as_u64()
        .unwrap();
    assert_eq!(
        failures, 50,
        "every other request tried the dead backend first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_statuses_retry_idempotent_requests_only() {
    let bad = spawn_origin("bad").await;
    let good = spawn_origin("good").await;
    bad.set_status(502);
    let proxy = spawn_pool(
        &[(bad.addr, 1), (good.addr, 1)],
        "    retries: 1\n    retry_on: [connect_failure, 502]\n",
    )
    .await;
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await, (200, "good".to_string()));
    }
    assert_eq!(bad.hits(), 5);

    let (bad_before, good_before) = (bad.hits(), good.hits());
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let resp = client()
            .post(proxy.url("/submit"))
            .body("answer=42")
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    let sent = (bad.hits() - bad_before) + (good.hits() - good_before);
    assert_eq!(sent, 10, "a POST with a body was sent twice");
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        5,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_statuses_pass_through() {
    let bad = spawn_origin("bad").await;
    let good = spawn_origin("good").await;
    bad.set_status(503);
    let proxy = spawn_pool(
        &[(bad.addr, 1), (good.addr, 1)],
        "    retries: 1\n    retry_on: [502]\n",
    )
    .await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(proxy.get("/").await.0);
        }
        v
    };
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        2,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_retry_when_listed() {
    let slow = spawn_origin("slow").await;
    let fast = spawn_origin("fast").await;
    slow.set_delay(Duration::from_secs(3));
    let proxy = spawn_pool(
        &[(slow.addr, 1), (fast.addr, 1)],
        "    read_timeout: 300ms\n    retries: 1\n    retry_on: [timeout]\n",
    )
    .await;
    for _ in 0..4 {
        assert_eq!(proxy.get("/").await, (200, "fast".to_string()));
    }
    assert_eq!(slow.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_health_ejects_a_failing_backend_and_readmits_it() {
    let flaky = spawn_origin("flaky").await;
    let steady = spawn_origin("steady").await;
    flaky.set_status(502);
    let proxy = spawn_pool(
        &[(flaky.addr, 1), (steady.addr, 1)],
        "    retries: 0\n    passive_health: { consecutive_failures: 3, ejection_time: 1s }\n",
    )
    .await;
    let mut failures = 0;
    while flaky.hits() < 3 {
        if proxy.get("/").await.0 == 502 {
            failures += 1;
        }
    }
    assert_eq!(failures, 3);
    let stats = proxy.stats().await;
    assert_eq!(stats["upstreams"]["pool"]["backends"][0]["ejected"], true);
    assert_eq!(
        stats["upstreams"]["pool"]["backends"][0]["ejections_total"],
        1
    );
    for _ in 0..20 {
        assert_eq!(proxy.get("/").await, (200, "steady".to_string()));
    }
    assert_eq!(flaky.hits(), 3, "an ejected backend received traffic");
    let metrics = proxy.metrics().await;
    assert!(metrics.contains(&format!(
        "switchyard_upstream_backend_ejections_total{{upstream=\"pool\",backend=\"{}\"}} 1",
        flaky.addr
    )));

    flaky.set_status(200);
    wait_until(Duration::from_secs(3), || async {
        proxy.stats().await["upstreams"]["pool"]["backends"][0]["ejected"] == false
    })
    .await;
    let mut back = false;
    for _ in 0..4 {
        back |= proxy.get("/").await.1 == "flaky";
    }
    assert!(back, "the backend returns after ejection_time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connections_are_retried_whatever_retries_says() {
    let restarted = DyingOrigin::spawn("restarted").await;
    let steady = spawn_origin("steady").await;
    let proxy = spawn_pool(&[(restarted.addr, 1), (steady.addr, 1)], "    retries: 0\n").await;
    // Eight clients at once leave several upstream connections to each backend in the pool.
    let mut clients: Vec<KeepAlive> = (0..8).map(|_| KeepAlive::new(proxy.addr)).collect();
    rounds(&mut clients, 4).await;

    // The backend restarts: every pooled connection to it now fails before any response byte.
    // Two clients now: more stale connections are pooled than requests take at once.
    restarted.drop_open_connections();
    let mut two: Vec<KeepAlive> = clients.drain(..2).collect();
    let outcomes = rounds(&mut two, 10).await;
    assert!(restarted.dropped() >= 2, "too few stale connections met");
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status() != Some(200))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(&format!(
            "switchyard_upstream_connects_total{{backend=\"{}\",reused=\"true\",upstream=\"pool\"}}",
            restarted.addr
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_retried_after_a_stale_pooled_connection_keeps_its_body() {
    let restarted = DyingOrigin::spawn("restarted").await;
    let steady = DyingOrigin::spawn("steady").await;
    let proxy = spawn_pool(&[(restarted.addr, 1), (steady.addr, 1)], "    retries: 0\n").await;
    let mut clients: Vec<KeepAlive> = (0..8).map(|_| KeepAlive::new(proxy.addr)).collect();
    rounds(&mut clients, 4).await;

    restarted.drop_open_connections();
    let mut client = clients.remove(0);
    for i in 0..6 {
        let body = format!("-put-{i}");
        match client.put("/doc", &body).await {
            Outcome::Answered {
                status: 200,
                body: got,
                ..
            } => {
                assert!(
                    got.ends_with(&body),
                    "sent {body:?}, the origin read {got:?}"
                )
            }
            other => panic!("PUT {i}: {other:?}"),
        }
    }
    assert!(restarted.dropped() >= 1, "no PUT met a stale connection");
}
