//! A fleet: three instances on one `redis-server` share purges, a cluster rate limit and the
//! Redis tier (a restarted instance starts warm); the `deploy/` configs are valid.

use std::time::{Duration, Instant};

use crate::cluster_limits::hammer;
use crate::common::{
    binary, client, full_config, spawn_origin, spawn_proxy, spawn_proxy_env, upstream, wait_until,
    Origin, Proxy,
};
use crate::redis::RedisServer;

/// One instance's config: the Redis tier, and a cluster rate limit on `/limited/` whose Redis
/// server is the tier's (`rate_limits.redis.url` left out).
fn config(origin: &Origin, redis: &RedisServer) -> String {
    format!(
        "cache:\n  redis:\n    url: {}\n    key_prefix: \"fleet:\"\n    timeout: 50ms\n    pool_size: 2\nupstreams:\n{}routes:\n  - name: limited\n    match: {{ path_prefix: /limited/ }}\n    upstream: pool\n    rate_limit: {{ rate: 30/s, burst: 5, key: \"header:X-Key\", scope: cluster }}\n  - match: {{ path_prefix: / }}\n    upstream: pool\n    cache: {{ enabled: true }}\n",
        redis.url(),
        upstream("pool", &[(origin.addr, 1)], "")
    )
}

/// An instance started from `config`, once its Redis tier and its cluster limiter are
/// connected (the first cluster check starts that connection; the local limiter answers it).
async fn member(config: &str) -> Proxy {
    let proxy = spawn_proxy(config).await;
    // Generous: the whole suite may be starting processes on two cores at the same time.
    wait_until(Duration::from_secs(30), || async {
        let _ = client()
            .get(proxy.url("/limited/warm"))
            .header("x-key", "warm-up")
            .send()
            .await;
        let stats = proxy.stats().await;
        stats["cache"]["redis"]["connected"] == true
            && stats["rate_limits"]["cluster"]["connected"] == true
    })
    .await;
    proxy
}

async fn fleet(origin: &Origin, redis: &RedisServer) -> Vec<Proxy> {
    let config = config(origin, redis);
    let (a, b, c) = tokio::join!(member(&config), member(&config), member(&config));
    vec![a, b, c]
}

async fn cache_status(proxy: &Proxy, path: &str) -> String {
    let resp = client().get(proxy.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["cache-status"].to_str().unwrap().to_string()
}

/// Waits until the entry for `path` is in the shared tier (stores reach it in the background).
async fn shared(redis: &RedisServer, path: &str) {
    let key = format!("fleet:obj:127.0.0.1{path}#-");
    wait_until(Duration::from_secs(5), || async {
        redis.command(redis::cmd("EXISTS").arg(&key)) == redis::Value::Int(1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_instance_reaches_all_within_100_ms() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let fleet = fleet(&o, &redis).await;
    let path = "/fleet/purged?cc=max-age=60";
    assert!(cache_status(&fleet[0], path).await.contains("stored"));
    shared(&redis, path).await;
    // The others fill their memory from the shared tier, then hit memory.
    for proxy in &fleet[1..] {
        assert!(cache_status(proxy, path).await.contains("detail=redis"));
        assert!(cache_status(proxy, path)
            .await
            .starts_with("switchyard; hit"));
    }
    let started = Instant::now();
    let resp = client()
        .post(fleet[0].admin_url("/cache/purge"))
        .json(&serde_json::json!({ "key": "127.0.0.1/fleet/purged?cc=max-age=60" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Each other instance answers a miss from the moment the purge reaches it.
    let seen = |proxy: &Proxy| {
        let url = proxy.url(path);
        async move {
            loop {
                let resp = client().get(&url).send().await.unwrap();
                let status = resp.headers()["cache-status"].to_str().unwrap().to_string();
                if status.contains("fwd=miss") {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "never purged: {status}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let (b, c) = tokio::join!(seen(&fleet[1]), seen(&fleet[2]));
    eprintln!("purge seen by the other instances after {b:?} and {c:?}");
    assert!(b <= Duration::from_millis(100), "{b:?}");
    assert!(c <= Duration::from_millis(100), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rate_limit_holds_across_three_instances() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let fleet = fleet(&o, &redis).await;
    let started = Instant::now();
    let (admitted, refused, _) = hammer(
        &[&fleet[0], &fleet[1], &fleet[2]],
        "/limited/x",
        "three",
        Duration::from_millis(1500),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let expected = 30.0 * elapsed + 5.0;
    eprintln!("cluster limit 30/s burst 5, three instances, {elapsed:.2}s: {admitted} admitted (expected {expected:.1}), {refused} refused");
    // Three local budgets would admit three times as much.
    assert!(
        (admitted as f64 - expected).abs() <= 8.0,
        "admitted {admitted}, expected about {expected:.1}"
    );
    for proxy in &fleet {
        let stats = proxy.stats().await["rate_limits"]["cluster"].clone();
        assert!(stats["checks"].as_u64().unwrap() > 10, "{stats}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_rejoins_with_a_warm_shared_tier() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let o = spawn_origin("o").await;
    let mut fleet = fleet(&o, &redis).await;
    let path = "/fleet/warm?cc=max-age=60";
    assert!(cache_status(&fleet[0], path).await.contains("stored"));
    shared(&redis, path).await;
    let mut killed = fleet.pop().expect("three instances");
    killed.child.kill().expect("SIGKILL");
    killed.child.wait().expect("reaped");
    drop(killed);
    let restarted = member(&config(&o, &redis)).await;
    let hits = o.hits();
    let status = cache_status(&restarted, path).await;
    assert!(
        status.starts_with("switchyard; hit") && status.contains("detail=redis"),
        "{status}"
    );
    assert_eq!(o.hits(), hits, "the restarted instance went to the origin");
}

/// The token every deploy config reads from the environment.
const TOKEN: (&str, &str) = ("SWITCHYARD_ADMIN_TOKEN", "t");

/// `switchyard --check` on a deploy config, with the fleet's host names made loopback.
fn check(name: &str, text: &str) {
    let text = [
        "origins:8080",
        "redis://redis:",
        "switchyard-redis:",
        "app:80",
    ]
    .iter()
    .fold(text.to_string(), |t, host| {
        let local = match *host {
            "origins:8080" => "127.0.0.1:8080",
            "app:80" => "127.0.0.1:80",
            "redis://redis:" => "redis://127.0.0.1:",
            _ => "127.0.0.1:",
        };
        t.replace(host, local)
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.yaml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(binary())
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .env(TOKEN.0, TOKEN.1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn deploy_configs_are_valid() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for file in ["compose/switchyard.yaml", "compose/origins.yaml"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        check(file, &text);
    }
    let manifest = std::fs::read_to_string(deploy.join("k8s/configmap.yaml")).unwrap();
    let map: serde_yaml::Value = serde_yaml::from_str(&manifest).unwrap();
    let text = map["data"]["switchyard.yaml"]
        .as_str()
        .expect("config in the ConfigMap");
    check("k8s/configmap.yaml", text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_a_probe_without_the_token_with_the_verdict_alone() {
    let o = spawn_origin("o").await;
    let check = "    health_check: { type: http, path: /health, interval: 100ms, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 1 }\n";
    let proxy = spawn_proxy_env(
        &format!(
            "admin:\n  listen: 127.0.0.1:0\n  token: \"${{SWITCHYARD_ADMIN_TOKEN}}\"\nupstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n",
            upstream("pool", &[(o.addr, 1)], check)
        ),
        &[TOKEN],
    )
    .await;
    let probe = || async {
        let resp = client()
            .get(proxy.admin_url("/ready"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(probe().await, (200, serde_json::json!({"ready": true})));
    let stats = client()
        .get(proxy.admin_url("/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 401);
    o.set_health(503);
    wait_until(Duration::from_secs(5), || async { probe().await.0 == 503 }).await;
    assert_eq!(probe().await.1, serde_json::json!({"ready": false}));
    let with_token = client()
        .get(proxy.admin_url("/ready"))
        .bearer_auth(TOKEN.1)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 503);
    let doc: serde_json::Value = with_token.json().await.unwrap();
    assert!(
        doc["reasons"][0].as_str().unwrap().contains("pool"),
        "{doc}"
    );
}

/// Updates `dir` the way the kubelet updates a ConfigMap volume: the files are symlinks
/// through `..data`, and an update writes a new directory and swaps `..data` by rename.
fn configmap_update(dir: &std::path::Path, generation: u32, config: &str) {
    let data = format!("..2026_{generation}");
    std::fs::create_dir(dir.join(&data)).unwrap();
    std::fs::write(dir.join(&data).join("switchyard.yaml"), config).unwrap();
    std::os::unix::fs::symlink(&data, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_reloads_a_watching_instance() {
    let o = spawn_origin("o").await;
    let config = |generation: u32| {
        full_config(&format!(
            "server:\n  listen: [\"127.0.0.1:0\"]\n  watch_config: true\nupstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n    response_headers: {{ set: {{ X-Generation: \"{generation}\" }} }}\n",
            upstream("pool", &[(o.addr, 1)], "")
        ))
    };
    let proxy = spawn_proxy(&config(0)).await;
    let path = proxy.config_path();
    let dir = path.parent().unwrap();
    // The volume's layout, with the same config: no reload.
    configmap_update(dir, 1, &std::fs::read_to_string(&path).unwrap());
    std::os::unix::fs::symlink("..data/switchyard.yaml", dir.join("link.tmp")).unwrap();
    std::fs::rename(dir.join("link.tmp"), &path).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.stats().await["version"], 1);
    configmap_update(dir, 2, &config(1));
    wait_until(Duration::from_secs(5), || async {
        proxy.stats().await["version"] == 2
    })
    .await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.headers()["x-generation"], "1");
}
