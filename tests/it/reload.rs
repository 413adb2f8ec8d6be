//! Live reload: swaps under load without failed requests, keeps the running config on errors,
//! drains removed backends, carries health over, watches the file, and leaks nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{client, spawn_origin, spawn_proxy, upstream, wait_until, Origin, Proxy};

fn pool_config(backends: &[(&Origin, u32)], extra: &str) -> String {
    let list: Vec<_> = backends.iter().map(|(o, w)| (o.addr, *w)).collect();
    crate::common::pool_config(&list, extra)
}

async fn origins_seen(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let (status, origin) = proxy.get("/").await;
        assert_eq!(status, 200);
        seen.push(origin);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nothing_and_follow_the_new_weights() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let c = spawn_origin("c").await;
    let first = pool_config(&[(&a, 3), (&b, 1)], "");
    let second = pool_config(&[(&b, 1), (&c, 2)], "");
    let proxy = Arc::new(spawn_proxy(&first).await);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (proxy, stop, ok, failed) = (
                Arc::clone(&proxy),
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
            );
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let good = match c.get(proxy.url("/")).send().await {
                        Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    let counter = if good { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for i in 0..20 {
        let to_second = i % 2 == 0;
        proxy.rewrite_config(if to_second { &second } else { &first });
        let (status, body) = proxy.reload().await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], i + 2);
        assert_eq!(
            body["changed"],
            serde_json::json!(["upstreams.pool.backends"])
        );
        let seen = origins_seen(&proxy, 12).await;
        if to_second {
            assert!(
                !seen.contains(&"a".to_string()),
                "a removed backend got traffic: {seen:?}"
            );
            assert!(seen.contains(&"c".to_string()), "{seen:?}");
        } else {
            assert!(
                !seen.contains(&"c".to_string()),
                "a removed backend got traffic: {seen:?}"
            );
            assert!(seen.contains(&"a".to_string()), "{seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "the load ran");
    assert_eq!(proxy.stats().await["version"], 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_change_nothing() {
    let a = spawn_origin("a").await;
    let good = pool_config(&[(&a, 1)], "");
    let proxy = spawn_proxy(&good).await;

    proxy.rewrite_config("upstreams: [\n  nope");
    let (status, body) = proxy.reload().await;
    assert_eq!(status, 422);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("switchyard.yaml: line"), "{error}");

    proxy.rewrite_config(&good.replace("upstream: pool", "upstream: missing"));
    let (status, body) = proxy.reload().await;
    assert_eq!(status, 422);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("switchyard.yaml: routes[0].upstream: upstream `missing` is not defined"),
        "{error}"
    );

    let stats = proxy.stats().await;
    assert_eq!(stats["version"], 1);
    assert_eq!(stats["last_reload"]["ok"], false);
    assert_eq!(stats["last_reload"]["error"], error);
    assert!(stats["last_reload"]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(proxy.get("/").await, (200, "a".to_string()));
    let metrics = proxy.metrics().await;
    assert!(metrics.contains("switchyard_config_reloads_total{result=\"error\"} 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_finishes_its_requests_and_gets_no_new_ones() {
    let old = spawn_origin("old").await;
    let new = spawn_origin("new").await;
    let proxy = spawn_proxy(&pool_config(&[(&old, 1)], "")).await;
    let slow = tokio::spawn(client().get(proxy.url("/slow/1500")).send());
    wait_until(Duration::from_secs(5), || async { old.hits() == 1 }).await;

    proxy.rewrite_config(&pool_config(&[(&new, 1)], ""));
    assert_eq!(proxy.reload().await.0, 200);
    let stats = proxy.stats().await;
    assert_eq!(stats["draining"][0]["address"], old.addr.to_string());
    assert_eq!(stats["draining"][0]["in_flight"], 1);
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await, (200, "new".to_string()));
    }
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "old");
    assert_eq!(old.hits(), 1, "the removed backend got a new request");
    wait_until(Duration::from_secs(2), || async {
        proxy.stats().await["draining"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_a_reload_of_another_upstream() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let q1 = spawn_origin("q1").await;
    let q2 = spawn_origin("q2").await;
    // Slow checks: after the reload, the first new check must not be what restores the state.
    let check = "    health_check: { path: /health, interval: 300ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 3 }\n";
    let config = |q: &Origin| {
        format!(
            "upstreams:\n{}{}routes:\n  - match: {{ path_prefix: /q/ }}\n    upstream: q\n  - match: {{ path_prefix: / }}\n    upstream: pool\n",
            upstream("pool", &[(a.addr, 1), (b.addr, 1)], check),
            upstream("q", &[(q.addr, 1)], ""),
        )
    };
    let proxy = spawn_proxy(&config(&q1)).await;
    b.set_health(503);
    wait_until(Duration::from_secs(5), || async {
        !proxy.backend_healthy("pool", b.addr).await
    })
    .await;
    proxy.rewrite_config(&config(&q2));
    let (status, body) = proxy.reload().await;
    assert_eq!(status, 200);
    assert_eq!(body["changed"], serde_json::json!(["upstreams.q.backends"]));
    assert!(
        !proxy.backend_healthy("pool", b.addr).await,
        "b flapped back to healthy"
    );
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await, (200, "a".to_string()));
    }
    assert_eq!(proxy.get("/q/x").await, (200, "q2".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watch_and_sighup_reload() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let watched = "server:\n  listen: [\"127.0.0.1:0\"]\n  watch_config: true\n";
    let proxy = spawn_proxy(&format!("{watched}{}", pool_config(&[(&a, 1)], ""))).await;
    assert_eq!(proxy.get("/").await.1, "a");

    let start = Instant::now();
    proxy.rewrite_config(&format!("{watched}{}", pool_config(&[(&b, 1)], "")));
    wait_until(Duration::from_secs(2), || async {
        proxy.get("/").await.1 == "b"
    })
    .await;
    println!("file watch reload took effect in {:?}", start.elapsed());
    assert_eq!(proxy.stats().await["version"], 2);

    // SIGHUP reloads the same file again: a new version, same routing.
    let status = std::process::Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(Duration::from_secs(2), || async {
        proxy.stats().await["version"] == 3
    })
    .await;
    assert_eq!(proxy.get("/").await.1, "b");
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reloads_leak_no_tasks_or_memory() {
    let a = spawn_origin("a").await;
    // 40 backends on ip_hash with health checks: each runtime holds a 6,400-point ring
    // (~100 KiB) and 40 check tasks, so a leak of runtimes or tasks would be plain.
    let mut backends: Vec<(std::net::SocketAddr, u32)> = vec![(a.addr, 1)];
    for port in 1..40u16 {
        backends.push((format!("127.0.0.2:{}", 40000 + port).parse().unwrap(), 1));
    }
    let check =
        "    strategy: ip_hash\n    health_check: { type: tcp, interval: 1s, timeout: 100ms }\n";
    let configs: Vec<String> = (1..=2)
        .map(|w| {
            let list: Vec<_> = backends.iter().map(|(addr, _)| (*addr, w)).collect();
            crate::common::pool_config(&list, check)
        })
        .collect();
    let proxy = spawn_proxy(&configs[0]).await;
    let pid = proxy.child.id();
    for i in 0..100 {
        proxy.rewrite_config(&configs[i % 2]);
        assert_eq!(proxy.reload().await.0, 200);
    }
    let rss_before = rss_kib(pid);
    let threads_before = threads(pid);
    for i in 0..1000 {
        proxy.rewrite_config(&configs[i % 2]);
        assert_eq!(proxy.reload().await.0, 200);
    }
    let stats = proxy.stats().await;
    assert_eq!(stats["version"], 1101);
    assert_eq!(stats["health_check_tasks"], 40, "health-check tasks leaked");
    // Reloads run on tokio's blocking pool, which may start or retire a thread or two; a
    // leak per reload would add hundreds.
    let threads_after = threads(pid);
    assert!(
        threads_after <= threads_before + 4,
        "threads grew from {threads_before} to {threads_after}"
    );
    let growth = rss_kib(pid).saturating_sub(rss_before);
    println!("RSS {rss_before} KiB before, growth {growth} KiB over 1,000 reloads");
    // 1,000 leaked runtimes would hold ~100 MiB of rings alone; allocator noise stays far
    // below 16 MiB.
    assert!(
        growth < 16 * 1024,
        "RSS grew {growth} KiB over 1,000 reloads"
    );
    assert_eq!(proxy.get("/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_checks_brings_a_down_backend_back_and_changed_names_every_key() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let check = "    health_check: { path: /health, interval: 100ms, timeout: 200ms, unhealthy_threshold: 1 }\n";
    let proxy = spawn_proxy(&pool_config(&[(&a, 1), (&b, 1)], check)).await;
    b.set_health(503);
    wait_until(Duration::from_secs(5), || async {
        !proxy.backend_healthy("pool", b.addr).await
    })
    .await;
    // Same backends, no checks, and keys the old hand-kept list did not know.
    proxy.rewrite_config(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  grace_period: 5s\n  header_timeout: 3s\n{}",
        pool_config(
            &[(&a, 1), (&b, 1)],
            "    max_in_flight: 100\n    read_timeout: 7s\n"
        )
    ));
    let (status, body) = proxy.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["changed"],
        serde_json::json!([
            "server.header_timeout",
            "upstreams.pool.health_check",
            "upstreams.pool.max_in_flight",
            "upstreams.pool.read_timeout",
        ])
    );
    assert_eq!(body["requires_restart"], serde_json::json!([]));
    assert!(
        proxy.backend_healthy("pool", b.addr).await,
        "b stays down with nothing left to check it"
    );
    let seen = origins_seen(&proxy, 10).await;
    assert_eq!(seen.iter().filter(|o| *o == "b").count(), 5, "{seen:?}");
}
