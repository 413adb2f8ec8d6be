//! `rate_limit.scope: cluster` with a real `redis-server`: instances share one budget, and the
//! local limiter answers while Redis is slow or down.

use std::time::{Duration, Instant};

use crate::common::{client, spawn_origin, spawn_proxy, upstream, wait_until, Origin, Proxy};
use crate::redis::RedisServer;

/// An instance whose route `api` allows `rate` with `burst`, counted in the cluster by the
/// `X-Key` field.
pub(crate) async fn limited(origin: &Origin, redis: &RedisServer, rate: &str, burst: u32) -> Proxy {
    spawn_proxy(&format!(
        "rate_limits:\n  redis: {{ url: \"{}\", key_prefix: \"rl:\", timeout: 50ms }}\nupstreams:\n{}routes:\n  - name: api\n    match: {{ path_prefix: / }}\n    upstream: pool\n    rate_limit: {{ rate: {rate}, burst: {burst}, key: \"header:X-Key\", scope: cluster }}\n",
        redis.url(),
        upstream("pool", &[(origin.addr, 1)], "")
    ))
    .await
}

pub(crate) async fn cluster_stats(proxy: &Proxy) -> serde_json::Value {
    proxy.stats().await["rate_limits"]["cluster"].clone()
}

/// Sends one request with a warm-up key (its own budget) until the instance's Redis
/// connection is up.
pub(crate) async fn connected(proxy: &Proxy) {
    wait_until(Duration::from_secs(10), || async {
        let _ = client()
            .get(proxy.url("/warm"))
            .header("x-key", "warm-up")
            .send()
            .await;
        cluster_stats(proxy).await["connected"] == true
    })
    .await;
}

/// Sends requests for `path` with `key` to each proxy in turn until `for_how_long` has passed;
/// returns (admitted, refused, one refusal's headers).
pub(crate) async fn hammer(
    proxies: &[&Proxy],
    path: &str,
    key: &str,
    for_how_long: Duration,
) -> (u64, u64, Option<reqwest::header::HeaderMap>) {
    let c = client();
    let started = Instant::now();
    let (mut admitted, mut refused, mut refusal) = (0, 0, None);
    let mut i = 0;
    while started.elapsed() < for_how_long {
        let proxy = proxies[i % proxies.len()];
        i += 1;
        let resp = c
            .get(proxy.url(path))
            .header("x-key", key)
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => admitted += 1,
            429 => {
                refused += 1;
                refusal.get_or_insert_with(|| resp.headers().clone());
            }
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (admitted, refused, refusal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_cluster_budget() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let a = limited(&o, &redis, "50/s", 10).await;
    let b = limited(&o, &redis, "50/s", 10).await;
    connected(&a).await;
    connected(&b).await;
    // The warm-up's first check came before the connection: the local limiter answered it.
    let fallbacks = [
        cluster_stats(&a).await["fallbacks"].clone(),
        cluster_stats(&b).await["fallbacks"].clone(),
    ];
    let before = o.hits();
    let started = Instant::now();
    let (admitted, refused, refusal) =
        hammer(&[&a, &b], "/x", "shared", Duration::from_secs(2)).await;
    let elapsed = started.elapsed().as_secs_f64();
    // GCRA: the burst at once, then the rate. Each instance alone would admit this much again.
    let expected = 50.0 * elapsed + 10.0;
    eprintln!("cluster limit 50/s burst 10, two instances, {elapsed:.2}s: {admitted} admitted (expected {expected:.1}), {refused} refused");
    assert!(
        (admitted as f64 - expected).abs() <= 10.0,
        "admitted {admitted}, expected about {expected:.1} over {elapsed:.2}s"
    );
    assert_eq!(o.hits() - before, admitted);
    let h = refusal.expect("some requests were refused");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(h["ratelimit-policy"], "\"route\";q=50;w=1");
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"route\";r=0;t="));
    // The counter is prefixed, named by route and key, and expires with the GCRA horizon
    // (at most the burst's 10 periods of 20 ms).
    let keys = redis.command(redis::cmd("KEYS").arg("rl:api:*"));
    let redis::Value::Array(keys) = keys else {
        panic!("{keys:?}");
    };
    assert!(!keys.is_empty());
    for key in &keys {
        let redis::Value::BulkString(name) = key else {
            panic!("{key:?}");
        };
        let ttl = redis.command(redis::cmd("PTTL").arg(name.as_slice()));
        assert!(
            matches!(ttl, redis::Value::Int(ms) if (0..=201).contains(&ms))
                || ttl == redis::Value::Int(-2),
            "{ttl:?}"
        );
    }
    for (proxy, fallbacks) in [&a, &b].into_iter().zip(fallbacks) {
        let stats = cluster_stats(proxy).await;
        assert_eq!(stats["fallbacks"], fallbacks, "{stats}");
        assert!(stats["checks"].as_u64().unwrap() > 100, "{stats}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_dead_redis_falls_back_to_the_local_limiter() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let a = limited(&o, &redis, "1000/s", 1000).await;
    connected(&a).await;
    let c = client();
    let timed = |path: &'static str| {
        let c = c.clone();
        let url = a.url(path);
        async move {
            let started = Instant::now();
            let resp = c.get(url).header("x-key", "k").send().await.unwrap();
            (resp.status().as_u16(), started.elapsed())
        }
    };
    // Slow: a stopped server answers nothing; each check gives up after the 50 ms timeout.
    redis.signal("STOP");
    for _ in 0..5 {
        let (status, took) = timed("/slow").await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }
    redis.signal("CONT");
    let slow = cluster_stats(&a).await["fallbacks"].as_u64().unwrap();
    assert!(slow >= 5, "{slow}");
    // Down: requests keep flowing, each one counted.
    redis.stop();
    for _ in 0..20 {
        assert_eq!(timed("/down").await.0, 200);
    }
    let stats = cluster_stats(&a).await;
    assert!(stats["fallbacks"].as_u64().unwrap() >= slow + 20, "{stats}");
    assert_eq!(stats["connected"], false, "{stats}");
    let metrics = a.metrics().await;
    let fallbacks = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_rate_limit_fallback_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("fallback counter");
    assert!(fallbacks >= slow + 20, "{fallbacks}");
    // Back: the script is gone with the old server (NOSCRIPT), so the check sends it again.
    redis.restart();
    let checks = stats["checks"].as_u64().unwrap();
    wait_until(Duration::from_secs(10), || async {
        let _ = timed("/back").await;
        cluster_stats(&a).await["checks"].as_u64().unwrap() > checks
    })
    .await;
    assert_eq!(cluster_stats(&a).await["connected"], true);
}
