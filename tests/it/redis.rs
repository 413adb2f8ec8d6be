//! The shared Redis tier with a real `redis-server`: two proxy instances, purges across them,
//! Redis down, slow and corrupt.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    client, free_port, spawn_origin, spawn_proxy, upstream, wait_until, Origin, Proxy,
};

/// A `redis-server` of the test's own on a free loopback port.
pub(crate) struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one, or returns `None` (loudly) when `redis-server` is not installed; with `CI`
    /// or `SWITCHYARD_REQUIRE_REDIS` set a missing server fails the test instead.
    pub(crate) fn start() -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let required = std::env::var_os("CI").is_some()
                || std::env::var_os("SWITCHYARD_REQUIRE_REDIS").is_some();
            assert!(!required, "redis-server is required (CI or SWITCHYARD_REQUIRE_REDIS is set) but not installed");
            eprintln!("\n!!! SKIPPING Redis tier test: redis-server is not installed (apt-get install redis-server) !!!\n");
            return None;
        }
        let port = free_port().port();
        let mut server = RedisServer {
            child: Self::spawn(port),
            port,
        };
        server.wait_ready();
        Some(server)
    }

    fn spawn(port: u16) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while self.connection().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn connection(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url()).ok()?.get_connection().ok()
    }

    pub(crate) fn command(&self, cmd: &mut redis::Cmd) -> redis::Value {
        let mut conn = self.connection().expect("redis connection");
        cmd.query(&mut conn).expect("redis command")
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.port);
        self.wait_ready();
    }

    pub(crate) fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal_quietly();
        self.stop();
    }
}

impl RedisServer {
    fn signal_quietly(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
    }
}

async fn instance(origin: &Origin, redis: &RedisServer) -> Proxy {
    spawn_proxy(&format!(
        "cache:\n  redis:\n    url: {}\n    key_prefix: \"sy:\"\n    timeout: 50ms\n    pool_size: 2\nupstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n    cache: {{ enabled: true }}\n",
        redis.url(),
        upstream("pool", &[(origin.addr, 1)], "")
    ))
    .await
}

/// Two instances on one Redis, both subscribed.
async fn two_instances(origin: &Origin, redis: &RedisServer) -> (Proxy, Proxy) {
    let a = instance(origin, redis).await;
    let b = instance(origin, redis).await;
    connected(&a).await;
    connected(&b).await;
    (a, b)
}

async fn cache_status(proxy: &Proxy, path: &str) -> (u16, String, String) {
    let resp = client().get(proxy.url(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    let cs = resp.headers()["cache-status"].to_str().unwrap().to_string();
    (status, cs, resp.text().await.unwrap())
}

async fn redis_stats(proxy: &Proxy) -> serde_json::Value {
    proxy.stats().await["cache"]["redis"].clone()
}

async fn connected(proxy: &Proxy) {
    wait_until(Duration::from_secs(10), || async {
        redis_stats(proxy).await["connected"] == true
    })
    .await;
}

fn redis_has(redis: &RedisServer, key: &str) -> bool {
    redis.command(redis::cmd("EXISTS").arg(key)) == redis::Value::Int(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_on_one_instance_is_a_redis_hit_on_the_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let (a, b) = two_instances(&o, &redis).await;
    let path = "/shared?cc=max-age=60";
    let (_, cs, body_a) = cache_status(&a, path).await;
    assert_eq!(cs, "switchyard; fwd=miss; stored");
    let key = "sy:obj:127.0.0.1/shared?cc=max-age=60#-";
    wait_until(Duration::from_secs(2), || async { redis_has(&redis, key) }).await;
    let ttl = redis.command(redis::cmd("PTTL").arg(key));
    assert!(
        matches!(ttl, redis::Value::Int(ms) if ms > 50_000 && ms <= 60_000),
        "{ttl:?}"
    );
    let (_, cs, body_b) = cache_status(&b, path).await;
    assert!(cs.ends_with("detail=redis"), "{cs}");
    assert_eq!(body_b, body_a);
    assert_eq!(o.hits(), 1);
    // Now in B's memory.
    let (_, cs, _) = cache_status(&b, path).await;
    assert!(
        cs.starts_with("switchyard; hit") && !cs.contains("redis"),
        "{cs}"
    );
    assert_eq!(redis_stats(&b).await["hits"], 1);

    // A hit from the tier carries the stored `Date`, as a memory hit does (RFC 9111 §4).
    let (old, param) = crate::dates::date_ago(Duration::from_secs(10));
    let dated = format!("/dated?cc=max-age=60&date={param}");
    let (_, date, _, _) = crate::dates::fetch(&client(), &a, &dated, &[]).await;
    assert_eq!(date, old);
    wait_until(Duration::from_secs(2), || async {
        let keys = redis.command(redis::cmd("KEYS").arg("sy:obj:*dated*"));
        matches!(keys, redis::Value::Array(k) if !k.is_empty())
    })
    .await;
    let (_, from_tier, cs, _) = crate::dates::fetch(&client(), &b, &dated, &[]).await;
    assert!(cs.ends_with("detail=redis"), "{cs}");
    assert_eq!(from_tier, old, "a Redis-tier hit carries the stored Date");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_reach_every_instance() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let (a, b) = two_instances(&o, &redis).await;
    let cases = [
        (
            "/pk?cc=max-age=60",
            serde_json::json!({"key": "127.0.0.1/pk?cc=max-age=60"}),
        ),
        (
            "/pp/x?cc=max-age=60",
            serde_json::json!({"prefix": "127.0.0.1/pp/"}),
        ),
        (
            "/pt?cc=max-age=60&tag=red%20blue",
            serde_json::json!({"tag": "blue"}),
        ),
        (
            "/pg/7/profile?cc=max-age=60",
            serde_json::json!({"pattern": "127.0.0.1/pg/*/profile?cc=max-age=60"}),
        ),
    ];
    for (i, (path, purge)) in cases.into_iter().enumerate() {
        cache_status(&a, path).await;
        let key = format!("sy:obj:127.0.0.1{path}#-");
        wait_until(Duration::from_secs(2), || async { redis_has(&redis, &key) }).await;
        cache_status(&b, path).await; // redis hit, now in B's memory
        assert!(cache_status(&b, path)
            .await
            .1
            .starts_with("switchyard; hit"));
        let hits = o.hits();

        let start = Instant::now();
        let resp = client()
            .post(a.admin_url("/cache/purge"))
            .json(&purge)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["purged"], 1, "{body}");
        assert!(body["redis_deleted"].as_u64().unwrap() >= 1, "{body}");
        assert!(!redis_has(&redis, &key));
        wait_until(Duration::from_secs(1), || async {
            redis_stats(&b).await["purges_received"] == i as u64 + 1
        })
        .await;
        println!(
            "purge by {purge} reached the other instance in {:?}",
            start.elapsed()
        );
        let (_, cs, _) = cache_status(&b, path).await;
        assert_eq!(cs, "switchyard; fwd=miss; stored", "{purge}");
        assert_eq!(o.hits(), hits + 1);
    }
    assert_eq!(redis_stats(&a).await["purges_published"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_slow_and_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let a = instance(&o, &redis).await;
    let b = instance(&o, &redis).await;
    connected(&a).await;
    cache_status(&a, "/warm?cc=max-age=60").await;

    redis.stop();
    for i in 0..5 {
        let (status, cs, _) = cache_status(&a, &format!("/down/{i}?cc=max-age=60")).await;
        assert_eq!(status, 200);
        assert_eq!(cs, "switchyard; fwd=miss; stored");
    }
    assert!(cache_status(&a, "/warm?cc=max-age=60")
        .await
        .1
        .starts_with("switchyard; hit"));
    wait_until(Duration::from_secs(3), || async {
        redis_stats(&a).await["errors"].as_u64().unwrap() > 0
    })
    .await;
    let metrics = a.metrics().await;
    assert!(metrics.contains("switchyard_cache_redis_errors_total{op=\"get\"}"));

    redis.restart();
    connected(&a).await;
    connected(&b).await;
    // The restarted (empty) Redis: a new object is a miss, stored, then a hit.
    let (status, cs, _) = cache_status(&a, "/back?cc=max-age=60").await;
    assert_eq!(status, 200);
    assert_eq!(cs, "switchyard; fwd=miss; stored");
    assert!(cache_status(&a, "/back?cc=max-age=60")
        .await
        .1
        .starts_with("switchyard; hit"));
    wait_until(Duration::from_secs(10), || async {
        let path = format!("/back/{}?cc=max-age=60", rand_suffix());
        cache_status(&a, &path).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        cache_status(&b, &path).await.1.ends_with("detail=redis")
    })
    .await;

    // A paused Redis (accepts, never answers): latency stays bounded by the timeout.
    redis.signal("STOP");
    let start = Instant::now();
    let (status, _, _) = cache_status(&b, "/paused?cc=max-age=60").await;
    let took = start.elapsed();
    redis.signal("CONT");
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(800),
        "a paused Redis held a request for {took:?}"
    );
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_is_a_miss() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let a = instance(&o, &redis).await;
    connected(&a).await;
    redis.command(
        redis::cmd("SET")
            .arg("sy:obj:127.0.0.1/bad?cc=max-age=60#-")
            .arg("this is not an entry"),
    );
    let (status, cs, body) = cache_status(&a, "/bad?cc=max-age=60").await;
    assert_eq!(status, 200);
    assert_eq!(cs, "switchyard; fwd=miss; stored");
    assert!(body.starts_with("o 1 "), "{body}");
    assert_eq!(o.hits(), 1);
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("switchyard_cache_redis_errors_total{op=\"decode\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_wins_over_a_fill_that_started_before_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let (a, b) = two_instances(&o, &redis).await;
    let cases = [
        (
            "/slow/600?cc=max-age=60&k",
            serde_json::json!({"key": "127.0.0.1/slow/600?cc=max-age=60&k"}),
        ),
        (
            "/slow/600?cc=max-age=60&p",
            serde_json::json!({"prefix": "127.0.0.1/slow/"}),
        ),
        (
            "/slow/600?cc=max-age=60&tag=red",
            serde_json::json!({"tag": "red"}),
        ),
    ];
    for (path, purge) in cases {
        // B starts a fill; A purges while the origin is still answering it.
        let hits = o.hits();
        let url = b.url(path);
        let fill =
            tokio::spawn(async move { client().get(url).send().await.unwrap().text().await });
        wait_until(Duration::from_secs(2), || async { o.hits() == hits + 1 }).await;
        let resp = client()
            .post(a.admin_url("/cache/purge"))
            .json(&purge)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{purge}");
        let old = fill.await.unwrap().unwrap();
        // Time for a write to Redis from the background to land, if one were made.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let key = format!("sy:obj:127.0.0.1{path}#-");
        assert!(
            !redis_has(&redis, &key),
            "{purge}: the purged object is back in redis"
        );
        // Neither tier kept the old fill: A fetches anew, and B gets A's fresh copy.
        let (_, cs, fresh) = cache_status(&a, path).await;
        assert_eq!(cs, "switchyard; fwd=miss; stored", "{purge}");
        assert_ne!(fresh, old, "{purge}");
        let key = key.clone();
        wait_until(Duration::from_secs(2), || async { redis_has(&redis, &key) }).await;
        let (_, cs, body) = cache_status(&b, path).await;
        assert!(cs.ends_with("detail=redis"), "{purge}: {cs}");
        assert_eq!(body, fresh, "{purge}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_purge_answers_503_with_what_was_done() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let a = instance(&o, &redis).await;
    connected(&a).await;
    cache_status(&a, "/pp/1?cc=max-age=60").await;
    let purge = || async {
        let resp = client()
            .post(a.admin_url("/cache/purge"))
            .json(&serde_json::json!({"prefix": "127.0.0.1/pp/"}))
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await.unwrap(),
        )
    };
    // Redis answers nothing for a while: every step times out (50 ms), the scan included.
    redis.command(redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("ALL"));
    let (status, body) = purge().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["purged"], 1, "{body}");
    assert_eq!(body["redis_deleted"], 0, "{body}");
    let failed = body["incomplete"].as_array().unwrap();
    assert!(failed.contains(&serde_json::json!("scan")), "{body}");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, body) = purge().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("incomplete").is_none(), "{body}");
}

/// The tier alone, on a real Redis: a fill that started before a purge is refused by Redis
/// itself, whatever the order its write and the purge arrive in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refuses_a_fill_older_than_a_matching_purge() {
    use std::sync::Arc;
    use switchyard::cache::purge::PurgeMatch;
    use switchyard::cache::redis::RedisTier;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let tier = Arc::new(
        RedisTier::new(switchyard::config::RedisTier {
            url: redis.url(),
            key_prefix: "t:".into(),
            max_object_size: 1 << 20,
            timeout: Duration::from_millis(500),
            pool_size: 1,
        })
        .unwrap(),
    );
    tokio::spawn(Arc::clone(&tier).run(|_| {}));
    let ready = Arc::clone(&tier);
    wait_until(Duration::from_secs(5), || {
        let t = Arc::clone(&ready);
        async move { t.stats.connected.load(std::sync::atomic::Ordering::Relaxed) }
    })
    .await;
    let ttl = Duration::from_secs(60);
    let tags = vec!["red".to_string()];
    let cases = [
        ("h/key", PurgeMatch::Key("h/key".into())),
        ("h/pre/x", PurgeMatch::Prefix("h/pre/".into())),
        ("h/tagged", PurgeMatch::Tag("red".into())),
    ];
    for (primary, target) in cases {
        let stored = |p: &str| redis_has(&redis, &format!("t:obj:{p}#-"));
        let before = tier.generation();
        let shared = tier.purge(&target).await;
        assert!(shared.complete(), "{shared:?}");
        assert!(tier.generation() > before);
        // Started before the purge, written after it: refused.
        tier.set(primary, None, &tags, b"old".to_vec(), ttl, before)
            .await;
        assert!(
            !stored(primary),
            "{target:?}: a fill older than the purge was stored"
        );
        // Started after it: stored. Another key is not held back by the purge.
        tier.set(
            primary,
            None,
            &tags,
            b"new".to_vec(),
            ttl,
            tier.generation(),
        )
        .await;
        assert!(stored(primary), "{target:?}");
        tier.set("h/other", None, &[], b"x".to_vec(), ttl, before)
            .await;
        assert!(stored("h/other"), "{target:?}");
        redis.command(redis::cmd("DEL").arg("t:obj:h/other#-"));
    }
    let refused = tier
        .stats
        .fills_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 3);
}
