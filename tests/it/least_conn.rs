//! least_connections over real origins: busy backends are avoided, ties alternate, counts
//! return to zero.

use std::time::Duration;

use crate::common::{client, spawn_origin, spawn_pool, wait_until, Proxy};

/// The sticky cookie the proxy sets for `/`, and the backend it names.
async fn cookie_for_a_backend(proxy: &Proxy) -> (String, String) {
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    let origin = resp.headers()["x-origin"].to_str().unwrap().to_string();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    let pair = cookie.split(';').next().unwrap().to_string();
    (pair, origin)
}

fn in_flight(stats: &serde_json::Value) -> Vec<u64> {
    stats["upstreams"]["pool"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["in_flight"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_backend_is_avoided_and_ties_alternate() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let c = spawn_origin("c").await;
    let proxy = spawn_pool(
        &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
        "    strategy: least_connections\n    sticky: { cookie: PIN, secret: test }\n",
    )
    .await;
    // Pin three slow requests to one backend with its sticky cookie.
    let (cookie, busy) = cookie_for_a_backend(&proxy).await;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let request = client()
                .get(proxy.url("/slow/1500"))
                .header("cookie", cookie.clone());
            tokio::spawn(request.send())
        })
        .collect();
    wait_until(Duration::from_secs(5), || async {
        in_flight(&proxy.stats().await).iter().sum::<u64>() == 3
    })
    .await;
    assert_eq!(in_flight(&proxy.stats().await).iter().max(), Some(&3));

    let mut sequence = Vec::new();
    for _ in 0..20 {
        let (status, origin) = proxy.get("/").await;
        assert_eq!(status, 200);
        assert_ne!(origin, busy, "a request went to the busy backend");
        sequence.push(origin);
    }
    assert!(
        sequence.windows(2).all(|w| w[0] != w[1]),
        "idle backends should alternate: {sequence:?}"
    );
    for request in slow {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(in_flight(&proxy.stats().await), vec![0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_returns_to_zero_after_a_burst() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let proxy = spawn_pool(
        &[(a.addr, 1), (b.addr, 1)],
        "    strategy: least_connections\n",
    )
    .await;
    let c = client();
    let burst: Vec<_> = (0..200)
        .map(|_| tokio::spawn(c.get(proxy.url("/slow/50")).send()))
        .collect();
    let mut ok = 0;
    for request in burst {
        if request.await.unwrap().unwrap().status() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 200);
    assert_eq!(a.hits() + b.hits(), 200);
    // Slots are given back as each exchange ends, which may trail the client by a moment.
    wait_until(Duration::from_secs(2), || async {
        in_flight(&proxy.stats().await) == vec![0, 0]
    })
    .await;
    let metrics = proxy.metrics().await;
    let gauges: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_upstream_backend_in_flight{"))
        .collect();
    assert_eq!(gauges.len(), 2);
    assert!(gauges.iter().all(|l| l.ends_with(" 0")), "{gauges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_two_to_one_share_about_two_to_one_under_load() {
    let heavy = spawn_origin("heavy").await;
    let light = spawn_origin("light").await;
    let proxy = std::sync::Arc::new(
        spawn_pool(
            &[(heavy.addr, 2), (light.addr, 1)],
            "    strategy: least_connections\n",
        )
        .await,
    );
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let proxy = std::sync::Arc::clone(&proxy);
            tokio::spawn(async move {
                for _ in 0..40 {
                    assert_eq!(proxy.get("/slow/5").await.0, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let share = heavy.hits() as f64 / (heavy.hits() + light.hits()) as f64;
    assert!(
        (0.58..=0.75).contains(&share),
        "heavy share {share:.2} ({} vs {})",
        heavy.hits(),
        light.hits()
    );
}
